"""KALoRA stages 2 and 3, the shared loop (accumulation, resume), peft methods, DPO, config errors."""

import json
import shutil

import pytest
import torch

from model.config import AdapterConfig, ModelConfig, StageConfig, TrainConfig
from model.kalora import KALoRAModel, build_base_model
from model.modules import DomainAdapter, KnowledgeHead, KnowledgeInjection, UncertaintyWeighting
from model.tokenizer import train_bpe_tokenizer
from pipelines.artifacts import ArtifactLayout, atomic_write_json, read_manifest
from pipelines.errors import ArtifactError, ConfigError

TEXTS = ["Lens opacity is a abnormality of the eye.", "Seizure is a abnormality of the nervous system."] * 20
TINY = dict(n_layer=1, n_head=2, n_embd=32, vocab_size=300, max_length=48, knowledge_heads=2, domain_adapter_rank=4)


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS, vocab_size=300)


def _model(tokenizer, rank=4):
    base = build_base_model(ModelConfig(n_layer=1, n_head=2, n_embd=32), len(tokenizer), tokenizer.pad_token_id)
    return KALoRAModel(base, torch.randn(6, 8), "v1", num_heads=2, domain_adapter_rank=rank)


@pytest.fixture()
def build(tiny_build, tmp_path):
    """A private copy of the tiny build, so stage outputs do not leak between tests."""
    shutil.copytree(tiny_build.base, tmp_path / "tiny")
    shutil.rmtree(tmp_path / "tiny" / "adapters", ignore_errors=True)
    layout = ArtifactLayout(tmp_path, "tiny")
    # other tests train on the shared tiny build: their manifest entries go with the adapters
    manifest = read_manifest(layout)
    manifest["stages"] = {k: v for k, v in manifest["stages"].items() if not k.startswith("train:")}
    atomic_write_json(layout.manifest, manifest)
    return layout


# -- modules ----------------------------------------------------------------------------------
def test_injection_is_causal_and_leaves_unlinked_prefix_unchanged():
    torch.manual_seed(0)
    inj = KnowledgeInjection(torch.randn(6, 8), 16, num_heads=2)
    torch.nn.init.normal_(inj.out_proj.weight)
    hidden = torch.randn(1, 5, 16)
    a, _ = inj(hidden, torch.tensor([[0, 2, 2, 0, 4]]))
    b, _ = inj(hidden, torch.tensor([[0, 2, 2, 0, 5]]))  # only the last mention differs
    assert torch.equal(a[:, 0], hidden[:, 0]), "a token before any mention is unchanged"
    assert torch.allclose(a[:, :4], b[:, :4]), "earlier tokens never see a later entity"
    assert not torch.allclose(a[:, 4], b[:, 4])
    assert not torch.allclose(a[:, 1:4], hidden[:, 1:4])


def test_knowledge_head_predicts_the_next_mention():
    ents = torch.tensor([[0, 0, 3, 3, 0, 5, 5, 5]])
    assert KnowledgeHead.targets(ents).tolist() == [[0, 3, 0, 0, 5, 0, 0, 0]]


def test_domain_adapter_is_identity_at_init_and_exposes_gate(tokenizer):
    model = _model(tokenizer).eval()
    enc = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        out, _, _ = model(enc["input_ids"], enc["attention_mask"], torch.zeros_like(enc["input_ids"]))
        base = model.base(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    assert torch.equal(out.logits, base.logits)
    gate = model.domain_adapter.last_gate
    assert gate is not None and gate.shape[-1] == 1 and 0 <= gate.min() and gate.max() <= 1
    torch.nn.init.normal_(model.domain_adapter.up.weight)
    with torch.no_grad():
        changed, _, _ = model(enc["input_ids"], enc["attention_mask"], torch.zeros_like(enc["input_ids"]))
    assert not torch.allclose(changed.logits, base.logits)


def test_uncertainty_weighting_down_weights_the_larger_loss():
    uw = UncertaintyWeighting(("task", "knowledge"))
    opt = torch.optim.SGD(uw.parameters(), lr=0.1)
    for _ in range(50):
        opt.zero_grad()
        uw({"task": torch.tensor(0.1), "knowledge": torch.tensor(5.0)}).backward()
        opt.step()
    w = uw.weights()
    assert w["knowledge"] < 1 < w["task"]


@pytest.mark.parametrize("method", ["lora", "adalora", "prefix", "prompt"])
def test_peft_methods_train_through_the_knowledge_path(tokenizer, method):
    model = _model(tokenizer)
    for p in model.base.parameters():
        p.requires_grad_(False)
    model.add_adapter(AdapterConfig(method=method, r=4, alpha=8, num_virtual_tokens=3, adalora_target_r=2), 10)
    enc = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    ents = torch.zeros_like(enc["input_ids"])
    ents[:, 3:5] = 2
    out, k_loss, gate = model(enc["input_ids"], enc["attention_mask"], ents, labels=enc["input_ids"])
    assert out.logits.shape[:2] == enc["input_ids"].shape, "prompt-tuning positions are sliced off"
    (out.loss + k_loss).backward()
    peft_grads = [p.grad for n, p in model.base.named_parameters() if p.requires_grad]
    assert peft_grads and any(g is not None and g.abs().sum() > 0 for g in peft_grads)


def test_loraplus_gives_b_matrices_the_larger_learning_rate(tokenizer):
    from model.adapters import parameter_groups

    model = _model(tokenizer)
    for p in model.base.parameters():
        p.requires_grad_(False)
    model.add_adapter(AdapterConfig(r=4, loraplus_lr_ratio=16), 10)
    groups = parameter_groups(model, 1e-3, 0.01, 16)
    b_group = [g for g in groups if g["lr"] == pytest.approx(1.6e-2)]
    assert len(b_group) == 1
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("lora_B" in names[id(p)] for p in b_group[0]["params"])
    assert not any("lora_B" in names[id(p)] for g in groups if g is not b_group[0] for p in g["params"])


def test_train_config_rejects_bad_values_with_their_location():
    with pytest.raises(ConfigError, match=r"\[train -> peft -> method\] unknown method 'ia3'"):
        TrainConfig.from_dict({"peft": {"method": "ia3"}})
    with pytest.raises(ConfigError, match=r"\[train -> stage2\] unknown key"):
        TrainConfig.from_dict({"stage2": {"steps": 3}})
    with pytest.raises(ConfigError, match="loraplus_lr_ratio"):
        TrainConfig.from_dict({"peft": {"method": "prefix", "loraplus_lr_ratio": 4}})
    cfg = TrainConfig.from_dict({"stage3": {"max_steps": 7}})
    assert cfg.stage3.max_steps == 7 and cfg.stage3.learning_rate == TrainConfig().stage3.learning_rate


# -- loop ------------------------------------------------------------------------------------
def _toy_run(tmp_path, crash_after=None, checkpoint_every=0, accumulation=1, precision="auto"):
    from model.loop import run_loop

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    data = torch.Generator().manual_seed(1)
    xs = torch.randn(64, 4, generator=data)

    def batches(skip):
        for i in range(skip, 10_000):
            if crash_after is not None and i >= crash_after:
                raise KeyboardInterrupt("simulated crash")
            yield {"x": xs[(2 * i) % 64:(2 * i) % 64 + 2]}

    def compute(batch):
        loss = (model(batch["x"]) - batch["x"].sum(1, keepdim=True)).pow(2).mean()
        return loss, {"loss": loss.item()}

    cfg = StageConfig(max_steps=6, batch_size=2, gradient_accumulation=accumulation, warmup_steps=2,
                      checkpoint_every=checkpoint_every, precision=precision)
    history = run_loop("toy", model, opt, cfg, batches, compute, tmp_path / "ckpt", {"run": "toy"})
    return model, history


def test_loop_resumes_exactly_from_its_checkpoint(tmp_path):
    reference, ref_hist = _toy_run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _toy_run(tmp_path / "b", crash_after=9, checkpoint_every=2, accumulation=2)  # dies during step 5
    assert json.loads((tmp_path / "b" / "ckpt" / "state.json").read_text())["step"] == 4
    resumed, hist = _toy_run(tmp_path / "b", checkpoint_every=2, accumulation=2)
    straight, straight_hist = _toy_run(tmp_path / "c", accumulation=2)
    assert [h["step"] for h in hist] == list(range(1, 7))
    assert torch.equal(resumed.weight, straight.weight) and hist == straight_hist
    assert not torch.equal(reference.weight, straight.weight)  # accumulation changed the run: the test can tell


def test_loop_autocasts_in_bf16_where_asked_and_refuses_fp16_on_cpu(tmp_path):
    from model.loop import autocast_dtype

    _, hist = _toy_run(tmp_path / "bf16", precision="bf16")
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError, match=r"\[train -> stage -> precision\] fp16 autocast needs a CUDA device"):
        _toy_run(tmp_path / "fp16", precision="fp16")


# -- DPO ---------------------------------------------------------------------------------------
class _FixedLogps(torch.nn.Module):
    def __init__(self, logps):
        super().__init__()
        self.logps = torch.nn.Parameter(logps)

    def sequence_logprobs(self, *args):
        return self.logps


def test_dpo_loss_matches_the_formula():
    from model.dpo import dpo_loss

    policy = _FixedLogps(torch.tensor([-1.0, -2.0, -3.0, -1.5]))  # chosen ×2, then rejected ×2
    reference = torch.tensor([[-2.0, -2.0], [-2.0, -1.0]])
    batch = {"input_ids": None, "attention_mask": None, "entity_ids": None, "response_mask": None,
             "row": torch.tensor([0, 1])}
    loss, logs = dpo_loss(policy, batch, reference, beta=0.5)
    margins = 0.5 * torch.tensor([(-1 + 2) - (-3 + 2), (-2 + 2) - (-1.5 + 1)])
    assert loss.item() == pytest.approx(float(-torch.nn.functional.logsigmoid(margins).mean()))
    assert logs["reward_accuracy"] == 1.0 and logs["reward_margin"] == pytest.approx(float(margins.mean()))


# -- stages on the tiny build -------------------------------------------------------------------
def test_stages_2_and_3_train_save_reload_and_reuse_the_reference(build, caplog):
    from model.trainer import load_stage, train

    cfg = TrainConfig.from_dict({"model": TINY,
                                 "stage1": {"max_steps": 3, "batch_size": 8},
                                 "stage2": {"max_steps": 8, "batch_size": 8, "learning_rate": 5e-3,
                                            "loss_weighting": "uncertainty"},
                                 "stage3": {"max_steps": 4, "batch_size": 4, "learning_rate": 5e-3}})
    out = train(build, cfg, (1, 2, 3))
    m2, m3 = out["metrics"]["stage2"], out["metrics"]["stage3"]
    hist2 = json.loads((build.adapters / "stage2" / "metrics.json").read_text())["history"]
    assert hist2[-1]["weight_knowledge"] != 1.0, "the uncertainty weights are learned and logged per step"
    assert all(torch.isfinite(torch.tensor(h["task_loss"])) for h in hist2)
    assert 0 <= m2["gate_mean_linked_tokens"] <= 1
    for stage in ("stage2", "stage3"):
        d = build.adapters / stage
        assert (d / "adapter" / "adapter_config.json").exists() and (d / "knowledge.safetensors").exists()
        assert (d / "loss.png").exists() and json.loads((d / "config.json").read_text())["peft"]["method"] == "lora"
    assert {"eval_reward_accuracy", "eval_reward_margin", "reference_prefers_chosen"} <= set(m3)
    assert (build.adapters / "stage3" / "reference_logps.safetensors").exists()
    # the saved LoRA is trained (B ≠ 0) and changes the model's output
    tok, model, _, _ = load_stage(build, "stage3")
    b = [p for n, p in model.base.named_parameters() if "lora_B" in n]
    assert b and any(p.abs().sum() > 0 for p in b)
    # a second stage 3 reuses the stored reference log-probs instead of recomputing them
    from model.trainer import train_stage3

    with caplog.at_level("INFO", logger="model.dpo"):
        train_stage3(build, cfg.stage3)
    assert "reused" in caplog.text


def test_stage1_killed_after_a_checkpoint_resumes_to_the_same_weights(build, monkeypatch):
    """Dropout and the shard stream together: a DataLoader iterator created after the checkpoint's
    RNG state was restored used to draw from the global RNG and shift every later dropout mask."""
    import model.loop as loop
    from model.trainer import train_stage1
    from pipelines.artifacts import file_sha256

    model_cfg, stage = ModelConfig(**TINY), StageConfig(max_steps=3, batch_size=4, checkpoint_every=1)
    train_stage1(build, model_cfg, stage)
    straight = file_sha256(build.adapters / "stage1" / "knowledge.safetensors")
    shutil.rmtree(build.adapters)  # and its manifest entry: the next run starts from nothing
    manifest = read_manifest(build)
    del manifest["stages"]["train:stage1"]
    atomic_write_json(build.manifest, manifest)
    real, saved = loop.save_loop_checkpoint, []

    def killed_after_the_second(*args, **kwargs):
        real(*args, **kwargs)
        saved.append(1)
        if len(saved) == 2:
            raise KeyboardInterrupt("killed")
    monkeypatch.setattr(loop, "save_loop_checkpoint", killed_after_the_second)
    with pytest.raises(KeyboardInterrupt):
        train_stage1(build, model_cfg, stage)
    monkeypatch.setattr(loop, "save_loop_checkpoint", real)
    assert not (build.adapters / "stage1").exists()
    train_stage1(build, model_cfg, stage)  # resumes at step 2
    assert file_sha256(build.adapters / "stage1" / "knowledge.safetensors") == straight


def test_stage3_refuses_other_embedding_version(build):
    from model.trainer import load_stage, train
    from pipelines.artifacts import record_stage

    train(build, TrainConfig.from_dict({"model": TINY, "stage1": {"max_steps": 1, "batch_size": 4},
                                        "stage2": {"max_steps": 1, "batch_size": 4}}), (1, 2))
    cfg_path = build.adapters / "stage2" / "config.json"
    saved = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**saved, "embedding_version": "transe-other"}))
    record_stage(build, "train:stage2")  # recorded as written (else the changed digest is refused first)
    with pytest.raises(ArtifactError, match="trained with embedding 'transe-other'"):
        load_stage(build, "stage2")


def test_cli_stage_2_before_stage_1_is_a_one_line_user_error(build, capsys):
    from flows.cli import main

    rc = main(["train", "--name", "tiny", "--root", str(build.root), "--stage", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "stage1/config.json does not exist" in err[0]


def test_docs_train_config_example_is_valid():
    import re
    from pathlib import Path

    import yaml

    page = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    block = re.search(r"# Training KALoRA.*?```yaml\n(.*?)```", page, re.S).group(1)
    cfg = TrainConfig.from_dict(yaml.safe_load(block)["train"])
    assert cfg.peft.method == "lora" and cfg.stage2.knowledge_loss_weight == 0.5 and cfg.stage3.dpo_beta == 0.1
