"""What KALoRA costs: training-step time against plain peft LoRA on the same model and batch, and a
torch.profiler summary (time and memory) of one step of each stage.

    .venv/bin/python benchmarks/kalora_cost.py                    # GPT-2-small shape and the demo shape
    .venv/bin/python benchmarks/kalora_cost.py --shapes demo --steps 10

Models are GPT-2-shaped and built from a config (random weights; no hub download): "gpt2-small"
(12 layers, d=768, vocab 50257, 124M parameters) and "demo" (the `kalora run hpo` default: 2 layers,
d=128, vocab 4000). Batch: 8 sequences × 64 tokens, a 2-token entity mention every 8 tokens
(entity table: 10,000 entities × 200 dims, like a ComplEx export).

Step = forward, backward, clip, AdamW update. "LoRA" is the peft model alone (r=8 on c_attn,
``use_knowledge=False``: the base model's own forward). "KALoRA stage 2" is the same peft model plus
knowledge injection, knowledge head (contrastive, 255 sampled negatives), domain adapter (r=8) and
the knowledge loss. The two are timed alternately (ABAB…) in one process and the ratio is of medians.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from model.adapters import parameter_groups
from model.config import AdapterConfig
from model.data import collate_pairs
from model.dpo import dpo_loss
from model.kalora import KALoRAModel

SHAPES = {"gpt2-small": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257),
          "demo": dict(n_layer=2, n_head=4, n_embd=128, vocab_size=4000)}


def make_model(shape: str, domain_rank: int, seed: int = 0) -> KALoRAModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_positions=128, loss_type="ForCausalLM", **SHAPES[shape])
    model = KALoRAModel(GPT2LMHeadModel(cfg), torch.randn(10_001, 200), "bench", 4, domain_adapter_rank=domain_rank)
    model.base.requires_grad_(False)
    model.add_adapter(AdapterConfig(r=8, alpha=16, target_modules=("c_attn",)), 100)
    return model


def make_batch(vocab: int, batch: int = 8, length: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    ents = torch.zeros_like(ids)
    for b in range(batch):
        for start in range(3, length - 2, 8):
            ents[b, start:start + 2] = int(torch.randint(1, 10_001, (1,), generator=g))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "entity_ids": ents, "labels": ids.clone()}


def step_fn(model: KALoRAModel, kind: str, batch: dict[str, torch.Tensor]):
    if kind == "stage1":
        model.domain_adapter.requires_grad_(False)
        for n, p in model.base.named_parameters():
            p.requires_grad_(False)
        params = model.knowledge_parameters()
        opt = torch.optim.AdamW(params, lr=1e-4)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(parameter_groups(model, 1e-4, 0.01))
    pairs = None
    if kind == "stage3":
        n = batch["input_ids"].shape[0] // 2
        pairs = [{"row": i,
                  "chosen": {"input_ids": batch["input_ids"][i].tolist(), "entity_ids": batch["entity_ids"][i].tolist(),
                             "loss_mask": [0] * 48 + [1] * 16},
                  "rejected": {"input_ids": batch["input_ids"][n + i].tolist(),
                               "entity_ids": batch["entity_ids"][n + i].tolist(), "loss_mask": [0] * 48 + [1] * 16}}
                 for i in range(n)]
        pairs = collate_pairs(pairs, 0)
        reference = torch.zeros((n, 2)) - 50.0

    def step():
        opt.zero_grad(set_to_none=True)
        if kind == "lora":
            out, _, _ = model(**batch, use_knowledge=False)
            loss = out.loss
        elif kind == "stage3":
            loss, _ = dpo_loss(model, pairs, reference, 0.1)
        else:
            out, k_loss, _ = model(**batch)
            loss = out.loss + (1.0 if kind == "stage1" else 0.5) * k_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return step


def timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def compare(shape: str, steps: int) -> None:
    batch = make_batch(SHAPES[shape]["vocab_size"])
    lora_model, kal_model = make_model(shape, 0), make_model(shape, 8)
    lora, kal = step_fn(lora_model, "lora", batch), step_fn(kal_model, "stage2", batch)
    for _ in range(2):  # warm-up
        lora(), kal()
    a, b = [], []
    for _ in range(steps):
        a.append(timed(lora))
        b.append(timed(kal))
    ratios = [y / x for x, y in zip(a, b)]
    print(f"| {shape} | {statistics.median(a) * 1000:.0f} | {statistics.median(b) * 1000:.0f} | "
          f"{statistics.median(b) / statistics.median(a):.2f} | {statistics.median(ratios):.2f} | "
          f"{trainable(lora_model, False) / 1e6:.2f} M | {trainable(kal_model, True) / 1e6:.2f} M | {steps} |", flush=True)


def trainable(model: KALoRAModel, knowledge: bool) -> int:
    """Parameters the step updates: the peft adapter alone for LoRA (the unused knowledge modules of
    the wrapper get no gradient), everything trainable for KALoRA."""
    modules = [model] if knowledge else [model.base]
    return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)


def profile(shape: str, steps: int, top: int) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    batch = make_batch(SHAPES[shape]["vocab_size"])
    for kind in ("lora", "stage1", "stage2", "stage3"):
        model = make_model(shape, 0 if kind == "lora" else 8)
        step = step_fn(model, kind, batch)
        step()
        times = [timed(step) for _ in range(steps)]
        with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        events = prof.key_averages()
        allocated = sum(max(e.self_cpu_memory_usage, 0) for e in events)
        print(f"\n#### {shape} — {kind}: median step {statistics.median(times) * 1000:.0f} ms over {steps} steps; "
              f"{allocated / 2**20:.0f} MiB allocated by ops in one profiled step; "
              f"process peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB\n")
        print("```")
        print(events.table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40))
        print("```", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["gpt2-small", "demo"], choices=list(SHAPES))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--profile-shape", default="gpt2-small", choices=list(SHAPES))
    ap.add_argument("--profile-steps", type=int, default=5)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print("| model | LoRA step ms (median) | KALoRA stage-2 step ms (median) | ratio of medians | median of paired ratios "
          "| LoRA trainable | KALoRA trainable | steps |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        compare(shape, args.steps)
    if not args.no_profile:
        profile(args.profile_shape, args.profile_steps, args.top)


if __name__ == "__main__":
    main()
