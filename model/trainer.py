"""The three KALoRA stages, each resumable from its own checkpoint and started from the previous
stage's saved output:

1. knowledge warm-up — only the knowledge modules train, on ``knowledge/``: LM loss + knowledge loss;
2. joint — the peft adapter (LoRA by default), the knowledge modules and the domain adapter train on
   ``joint/``: task loss + knowledge loss, weighted by a fixed weight or learned (uncertainty);
3. alignment — DPO on ``alignment/`` against the frozen stage-2 model, whose log-probabilities are
   computed once before training and stored next to the adapters.

Each stage writes ``adapters/stageN/`` atomically: ``knowledge.safetensors`` (tagged with the
embedding version), ``adapter/`` (peft ``save_pretrained``, stages 2–3), ``config.json``,
``metrics.json``, ``loss.png``.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from model.config import AdapterConfig, ModelConfig, StageConfig, TrainConfig
from model.data import ShardDataset, collate, read_shard_manifest
from model.kalora import KALoRAModel, build_base_model, load_entity_table
from model.loop import device_of_choice, run_loop
from model.report import gate_stats, plot_history, summarize
from pipelines.artifacts import ArtifactLayout, Timer, atomic_write_json, file_sha256, record_stage, staged_dir
from pipelines.errors import ArtifactError, ConfigError
from pipelines.integrity import verify

log = logging.getLogger(__name__)


def _corpus_sample(shards: Path, limit: int = 20_000) -> list[str]:
    import pyarrow.parquet as pq

    texts: list[str] = []
    for name in ("knowledge", "joint"):
        for f in sorted((shards / name).glob("part-*.parquet")):
            texts += pq.read_table(f, columns=["text"]).column("text").to_pylist()[: limit - len(texts)]
            if len(texts) >= limit:
                return texts
    return texts


def prepare(layout: ArtifactLayout, model_config: ModelConfig):
    """Tokenizer, KALoRA model and shard manifest of one build (reusing a saved tokenizer/base)."""
    from model.tokenizer import load_tokenizer, train_bpe_tokenizer

    manifest = read_shard_manifest(layout.shards)
    # the embeddings the shards name, and what stage 1 saved for the later stages, as recorded
    out = layout.adapters
    verify(layout, [Path(manifest["entity_vectors"]).parent, out / "tokenizer", out / "base_model"])
    entity_vectors, version = load_entity_table(manifest)
    if (out / "tokenizer").exists():
        tokenizer = load_tokenizer(out / "tokenizer")
    elif model_config.tokenizer:
        tokenizer = load_tokenizer(model_config.tokenizer)
    else:
        tokenizer = train_bpe_tokenizer(_corpus_sample(layout.shards), model_config.vocab_size)
    if (out / "base_model").exists() and not model_config.base_model:
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(str(out / "base_model"))
    else:
        # on a forked random state: the knowledge modules below start from the same state whether
        # the base model is built here or loaded from a finished stage 1 (a rerun, a resumed kill)
        with torch.random.fork_rng(devices=[]):
            base = build_base_model(model_config, len(tokenizer), tokenizer.pad_token_id)
    model = KALoRAModel(base, entity_vectors, version, model_config.knowledge_heads, model_config.domain_adapter_rank)
    return tokenizer, model.to(device_of_choice()), manifest


def _stream(dataset, batch_size: int, collate_fn, skip: int, what: str) -> Iterator[dict[str, torch.Tensor]]:
    """Micro-batches forever (epoch after epoch, same order), the first ``skip`` dropped (resume).

    Each DataLoader iterator draws a base seed from its generator; from the global one, that draw
    would happen at a different moment in a resumed run (after the checkpoint's RNG state is
    restored) than in an uninterrupted one, and shift every dropout mask after it. A private
    generator keeps the global stream to the model alone."""
    seen = 0
    while True:
        empty = True
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn,
                                generator=torch.Generator().manual_seed(0)):
            empty = False
            seen += 1
            if seen > skip:
                yield batch
        if empty:
            raise ArtifactError(f"{what} has no training rows: rebuild the shards (`kalora shards`, "
                                "with --corpus / --preferences for joint/ and alignment/)")


def _gate_logs(batch: dict[str, torch.Tensor], gate: torch.Tensor) -> dict[str, float]:
    g = gate.squeeze(-1).float()
    linked = (batch["entity_ids"] > 0) & (batch["attention_mask"] > 0)
    other = (batch["entity_ids"] == 0) & (batch["attention_mask"] > 0)
    return {"gate_linked": g[linked].mean().item() if linked.any() else float("nan"),
            "gate_other": g[other].mean().item() if other.any() else float("nan")}


def _write_stage(layout: ArtifactLayout, stage: str, model: KALoRAModel, history: list[dict[str, float]],
                 metrics: dict[str, Any], configs: dict[str, Any], plot_keys: list[str],
                 extra_files: dict[str, Path] | None = None) -> None:
    with staged_dir(layout.adapters / stage) as tmp:
        model.save(tmp, {"stage": stage})
        atomic_write_json(tmp / "metrics.json", {**metrics, "history": history})
        atomic_write_json(tmp / "config.json", {**configs, "embedding_version": model.embedding_version})
        plot_history(history, plot_keys, tmp / "loss.png", title=stage)
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
    for checkpoint in (f".checkpoint-{stage}", f".checkpoint-{stage}.old"):
        shutil.rmtree(layout.adapters / checkpoint, ignore_errors=True)


def _saved_model_config(layout: ArtifactLayout, stage: str, given: ModelConfig | None) -> ModelConfig:
    """The model config ``stage`` was trained with; a different explicit one is refused."""
    path = layout.adapters / stage / "config.json"
    if not path.exists():
        raise ArtifactError(f"{path} does not exist: train {stage} first (`kalora train --stage {stage[-1]}`)")
    saved = ModelConfig.from_dict(json.loads(path.read_text())["model"])
    if given is not None and given != saved:
        diff = sorted(k for k in asdict(saved) if getattr(saved, k) != getattr(given, k))
        raise ConfigError(f"[train -> model] {diff} differ from the config {path} was trained with; "
                          "leave the model section out or retrain from stage 1")
    return saved


def _fingerprint(*parts: Any) -> dict[str, Any]:
    return json.loads(json.dumps({"parts": parts}, default=str))


# -- stage 1 ----------------------------------------------------------------------------------
def train_stage1(layout: ArtifactLayout, model_config: ModelConfig = ModelConfig(),
                 config: StageConfig = StageConfig(), *, progress: bool = False) -> dict[str, Any]:
    torch.manual_seed(config.seed)
    with Timer() as timer:
        tokenizer, model, manifest = prepare(layout, model_config)
        for p in model.base.parameters():
            p.requires_grad_(False)
        if model.domain_adapter is not None:
            model.domain_adapter.requires_grad_(False)
        optimizer = torch.optim.AdamW(model.knowledge_parameters(), lr=config.learning_rate,
                                      weight_decay=config.weight_decay)
        dataset = ShardDataset(layout.shards, "knowledge", tokenizer, max_length=model_config.max_length)

        def compute(batch):
            out, k_loss, gate = model(**batch)
            return out.loss + config.knowledge_loss_weight * k_loss, {
                "lm_loss": out.loss.item(), "knowledge_loss": k_loss.item(), **_gate_logs(batch, gate)}

        history = run_loop("stage 1 (knowledge warm-up)", model, optimizer, config,
                           lambda skip: _stream(dataset, config.batch_size, lambda b: collate(b, tokenizer.pad_token_id),
                                                skip, f"{layout.shards}/knowledge"),
                           compute, layout.adapters / ".checkpoint-stage1",
                           _fingerprint("stage1", model_config, config, manifest["embedding_version"]), progress=progress)
        metrics = {"steps": config.max_steps, **summarize(history, ["lm_loss", "knowledge_loss"]),
                   **gate_stats(history)}
        # staged, then renamed: a run killed mid-save must not leave a partial directory that the
        # next run takes for a finished one
        if not (layout.adapters / "tokenizer").exists():
            with staged_dir(layout.adapters / "tokenizer") as tmp:
                tokenizer.save_pretrained(str(tmp))
        if not model_config.base_model and not (layout.adapters / "base_model").exists():
            with staged_dir(layout.adapters / "base_model") as tmp:
                model.base.save_pretrained(str(tmp), safe_serialization=True)
        _write_stage(layout, "stage1", model, history, metrics, {"model": asdict(model_config), "stage": config.to_dict()},
                     ["lm_loss", "knowledge_loss"])
        atomic_write_json(layout.adapters / "kalora.json", {"embedding_version": model.embedding_version,
                                                            "model": asdict(model_config),
                                                            "shards_embedding_version": manifest["embedding_version"]})
    log.info("stage 1: knowledge loss %.3f → %.3f, LM loss %.3f → %.3f over %d steps",
             metrics["first"]["knowledge_loss"], metrics["last"]["knowledge_loss"], metrics["first"]["lm_loss"],
             metrics["last"]["lm_loss"], config.max_steps)
    return record_stage(layout, "train:stage1", parameters={"model": asdict(model_config), "stage": config.to_dict()},
                        outputs={"adapters": str(layout.adapters / "stage1"), "embedding_version": model.embedding_version},
                        metrics=metrics, wall_time_s=timer.seconds)


# -- stage 2 ----------------------------------------------------------------------------------
def _stage2_optimizer(model: KALoRAModel, adapter: AdapterConfig, config: StageConfig, extra=()):
    from model.adapters import parameter_groups

    return torch.optim.AdamW(parameter_groups(model, config.learning_rate, config.weight_decay,
                                              adapter.loraplus_lr_ratio, list(extra)))


def train_stage2(layout: ArtifactLayout, model_config: ModelConfig | None = None,
                 adapter: AdapterConfig = AdapterConfig(), config: StageConfig = TrainConfig().stage2, *,
                 progress: bool = False) -> dict[str, Any]:
    from model.modules import UncertaintyWeighting

    torch.manual_seed(config.seed)
    with Timer() as timer:
        verify(layout, [layout.adapters / "stage1"])
        model_config = _saved_model_config(layout, "stage1", model_config)
        tokenizer, model, manifest = prepare(layout, model_config)
        model.load_knowledge(layout.adapters / "stage1")
        for p in model.base.parameters():
            p.requires_grad_(False)
        model.add_adapter(adapter, config.max_steps)
        weighting = UncertaintyWeighting(("task", "knowledge")).to(next(model.parameters()).device) \
            if config.loss_weighting == "uncertainty" else None
        if weighting is not None:  # the log-variances are trainable state too: checkpointed with the model
            model.loss_weighting = weighting
        optimizer = _stage2_optimizer(model, adapter, config, weighting.parameters() if weighting else ())
        dataset = ShardDataset(layout.shards, "joint", tokenizer, max_length=model_config.max_length, with_targets=True)

        def compute(batch):
            out, k_loss, gate = model(**batch)
            if weighting is not None:
                loss = weighting({"task": out.loss, "knowledge": k_loss})
            else:
                loss = out.loss + config.knowledge_loss_weight * k_loss
            return loss, {"task_loss": out.loss.item(), "knowledge_loss": k_loss.item(), **_gate_logs(batch, gate)}

        def after_step(step: int) -> dict[str, float]:
            if adapter.method == "adalora":
                model.base.base_model.update_and_allocate(step)
            if weighting is None:
                return {"weight_task": 1.0, "weight_knowledge": config.knowledge_loss_weight}
            return {f"weight_{k}": v for k, v in weighting.weights().items()}

        history = run_loop("stage 2 (joint)", model, optimizer, config,
                           lambda skip: _stream(dataset, config.batch_size, lambda b: collate(b, tokenizer.pad_token_id),
                                                skip, f"{layout.shards}/joint"),
                           compute, layout.adapters / ".checkpoint-stage2",
                           _fingerprint("stage2", model_config, adapter, config, manifest["embedding_version"],
                                        file_sha256(layout.adapters / "stage1" / "knowledge.safetensors")),
                           after_step=after_step, progress=progress)
        metrics = {"steps": config.max_steps, "peft_method": adapter.method,
                   "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                   **summarize(history, ["task_loss", "knowledge_loss", "weight_task", "weight_knowledge"]),
                   **gate_stats(history)}
        _write_stage(layout, "stage2", model, history, metrics,
                     {"model": asdict(model_config), "peft": asdict(adapter), "stage": config.to_dict()},
                     ["task_loss", "knowledge_loss", "weight_knowledge"])
    log.info("stage 2: task loss %.3f → %.3f, knowledge loss %.3f → %.3f over %d steps",
             metrics["first"]["task_loss"], metrics["last"]["task_loss"], metrics["first"]["knowledge_loss"],
             metrics["last"]["knowledge_loss"], config.max_steps)
    return record_stage(layout, "train:stage2", parameters={"model": asdict(model_config), "peft": asdict(adapter),
                                                            "stage": config.to_dict()},
                        outputs={"adapters": str(layout.adapters / "stage2"), "embedding_version": model.embedding_version},
                        metrics=metrics, wall_time_s=timer.seconds)


def load_stage(layout: ArtifactLayout, stage: str = "stage2", trainable: bool = False):
    """Tokenizer and KALoRA model as ``adapters/<stage>`` saved them (stage 2 or 3)."""
    path = layout.adapters / stage / "config.json"
    if not path.exists():
        raise ArtifactError(f"{path} does not exist: train {stage} first (`kalora train --stage {stage[-1]}`)")
    verify(layout, [layout.adapters / stage])
    saved = json.loads(path.read_text())
    model_config = ModelConfig.from_dict(saved["model"])
    adapter = AdapterConfig.from_dict(saved["peft"])
    tokenizer, model, _ = prepare(layout, model_config)
    if saved["embedding_version"] != model.embedding_version:
        raise ArtifactError(f"{path}: trained with embedding {saved['embedding_version']!r} but the shards now refer "
                            f"to {model.embedding_version!r}: retrain")
    for p in model.base.parameters():
        p.requires_grad_(False)
    model.load_adapter(layout.adapters / stage / "adapter", adapter, trainable=trainable)
    model.load_knowledge(layout.adapters / stage)
    return tokenizer, model.to(device_of_choice()), model_config, adapter


# -- stage 3 ----------------------------------------------------------------------------------
def train_stage3(layout: ArtifactLayout, config: StageConfig = TrainConfig().stage3, *,
                 progress: bool = False) -> dict[str, Any]:
    from model.dpo import dpo_loss, encode_pairs, pair_batches, preference_accuracy, reference_logprobs

    torch.manual_seed(config.seed)
    with Timer() as timer:
        tokenizer, model, model_config, adapter = load_stage(layout, "stage2", trainable=True)
        for m in model.modules():  # DPO compares log-probs of one model under two parameter sets: no dropout
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        pairs = encode_pairs(layout.shards, tokenizer, model_config.max_length)
        train = [p for p in pairs if p["split"] == "train"]
        valid = [p for p in pairs if p["split"] == "valid"]
        if not train:
            raise ArtifactError(f"{layout.shards}/alignment has no training pairs: rebuild the shards "
                                "(held-out facts or --preferences)")
        stage2_sha = file_sha256(layout.adapters / "stage2" / "knowledge.safetensors")
        ref_path, ref = reference_logprobs(model, pairs, tokenizer.pad_token_id, max(64, config.batch_size),
                                           layout.adapters / "reference_logps.safetensors",
                                           {"stage2": stage2_sha, "alignment": _alignment_sha(layout),
                                            "max_length": str(model_config.max_length)})
        before = preference_accuracy(ref, valid or train)
        beta = config.dpo_beta

        def compute(batch):
            return dpo_loss(model, batch, ref, beta)

        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        history = run_loop("stage 3 (DPO alignment)", model, optimizer, config,
                           lambda skip: pair_batches(train, config.batch_size, tokenizer.pad_token_id, config.seed, skip),
                           compute, layout.adapters / ".checkpoint-stage3",
                           _fingerprint("stage3", config, stage2_sha, _alignment_sha(layout)), progress=progress)
        model.eval()
        after = _policy_eval(model, valid or train, ref, tokenizer.pad_token_id, config)
        metrics = {"steps": config.max_steps, "pairs_train": len(train), "pairs_valid": len(valid),
                   "beta": beta, **summarize(history, ["dpo_loss", "reward_margin", "reward_accuracy"]),
                   "eval_split": "valid" if valid else "train",
                   "reference_prefers_chosen": before, **after}
        _write_stage(layout, "stage3", model, history, metrics,
                     {"model": asdict(model_config), "peft": asdict(adapter), "stage": config.to_dict()},
                     ["dpo_loss", "reward_margin", "reward_accuracy"], {"reference_logps.safetensors": ref_path})
    log.info("stage 3: DPO loss %.3f → %.3f; held-out reward accuracy %.3f, policy prefers chosen %.3f (reference %.3f)",
             metrics["first"]["dpo_loss"], metrics["last"]["dpo_loss"], after["eval_reward_accuracy"],
             after["policy_prefers_chosen"], before)
    return record_stage(layout, "train:stage3", parameters={"stage": config.to_dict()},
                        outputs={"adapters": str(layout.adapters / "stage3"), "embedding_version": model.embedding_version},
                        metrics=metrics, wall_time_s=timer.seconds)


def _alignment_sha(layout: ArtifactLayout) -> str:
    manifest = read_shard_manifest(layout.shards, verify_checksums=False)
    return ",".join(p["sha256"] for p in manifest["sets"]["alignment"]["parts"])


@torch.no_grad()
def _policy_eval(model, pairs, ref, pad_id: int, config: StageConfig) -> dict[str, float]:
    from model.dpo import pair_logprobs

    logps = pair_logprobs(model, pairs, pad_id, max(64, config.batch_size))
    rows = torch.tensor([p["row"] for p in pairs])
    margin = config.dpo_beta * ((logps[:, 0] - ref[rows, 0]) - (logps[:, 1] - ref[rows, 1]))
    return {"eval_reward_accuracy": float((margin > 0).float().mean()), "eval_reward_margin": float(margin.mean()),
            "policy_prefers_chosen": float((logps[:, 0] > logps[:, 1]).float().mean())}


# -- all stages ---------------------------------------------------------------------------------
def train(layout: ArtifactLayout, config: TrainConfig = TrainConfig(), stages: tuple[int, ...] = (1, 2, 3), *,
          model_given: bool = True, progress: bool = False) -> dict[str, Any]:
    """Run ``stages`` in order; later stages start from the earlier ones' saved outputs."""
    results: dict[str, Any] = {}
    for s in stages:
        if s == 1:
            results["stage1"] = train_stage1(layout, config.model, config.stage1, progress=progress)
        elif s == 2:
            results["stage2"] = train_stage2(layout, config.model if model_given else None, config.peft, config.stage2,
                                             progress=progress)
        elif s == 3:
            results["stage3"] = train_stage3(layout, config.stage3, progress=progress)
    if len(stages) == 1:
        return results[f"stage{stages[0]}"]
    return {"outputs": {k: r["outputs"] for k, r in results.items()},
            "metrics": {k: r["metrics"] for k, r in results.items()},
            "wall_time_s": sum(r["wall_time_s"] for r in results.values()), "stages": results}

