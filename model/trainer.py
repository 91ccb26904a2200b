"""Stage training for KALoRA. Stage 1 (knowledge warm-up): only the knowledge modules train, on
``knowledge/``, with LM loss plus the contrastive knowledge loss; the base model is frozen."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from model.config import ModelConfig, StageConfig
from model.data import ShardDataset, collate, read_shard_manifest
from model.kalora import KALoRAModel, build_base_model, load_entity_table
from pipelines.artifacts import ArtifactLayout, Timer, atomic_write_json, record_stage, staged_dir

log = logging.getLogger(__name__)


def _cosine_with_warmup(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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
    entity_vectors, version = load_entity_table(manifest)
    out = layout.adapters
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
        base = build_base_model(model_config, len(tokenizer), tokenizer.pad_token_id)
    model = KALoRAModel(base, entity_vectors, version, model_config.knowledge_heads)
    return tokenizer, model, manifest


def _gate_stats(gates: list[tuple[float, float]]) -> dict[str, float]:
    linked = [g for g, _ in gates if not np.isnan(g)]
    other = [g for _, g in gates if not np.isnan(g)]
    return {"gate_mean_linked_tokens": float(np.mean(linked)) if linked else float("nan"),
            "gate_mean_other_tokens": float(np.mean(other)) if other else float("nan")}


def train_stage1(layout: ArtifactLayout, model_config: ModelConfig = ModelConfig(),
                 config: StageConfig = StageConfig(), *, progress: bool = False) -> dict[str, Any]:
    torch.manual_seed(config.seed)
    with Timer() as timer:
        tokenizer, model, manifest = prepare(layout, model_config)
        for p in model.base.parameters():
            p.requires_grad_(False)
        params = model.knowledge_parameters()
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.01)
        scheduler = _cosine_with_warmup(optimizer, config.warmup_steps, config.max_steps)
        dataset = ShardDataset(layout.shards, "knowledge", tokenizer, max_length=model_config.max_length)
        loader = DataLoader(dataset, batch_size=config.batch_size, collate_fn=lambda b: collate(b, tokenizer.pad_token_id))
        history: list[dict[str, float]] = []
        gates: list[tuple[float, float]] = []
        model.train()
        batches = iter(loader)
        steps = range(config.max_steps)
        if progress:
            from rich.progress import track

            steps = track(steps, description="stage 1 (knowledge warm-up)")
        for step in steps:
            optimizer.zero_grad(set_to_none=True)
            lm_total = k_total = 0.0
            for _ in range(config.gradient_accumulation):
                try:
                    batch = next(batches)
                except StopIteration:
                    batches = iter(loader)
                    batch = next(batches)
                out, k_loss, gate = model(**batch)
                loss = (out.loss + config.knowledge_loss_weight * k_loss) / config.gradient_accumulation
                loss.backward()
                lm_total += out.loss.item() / config.gradient_accumulation
                k_total += k_loss.item() / config.gradient_accumulation
                linked = (batch["entity_ids"] > 0) & (batch["attention_mask"] > 0)
                other = (batch["entity_ids"] == 0) & (batch["attention_mask"] > 0)
                g = gate.squeeze(-1)
                gates.append((g[linked].mean().item() if linked.any() else float("nan"),
                              g[other].mean().item() if other.any() else float("nan")))
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            history.append({"step": step + 1, "lm_loss": lm_total, "knowledge_loss": k_total,
                            "lr": scheduler.get_last_lr()[0]})
        metrics = {"steps": config.max_steps, "first": history[0], "last": history[-1],
                   **_gate_stats(gates[-10:]), "history": history}
        with staged_dir(layout.adapters / "stage1") as tmp:
            model.save_knowledge(tmp)
            atomic_write_json(tmp / "metrics.json", metrics)
            atomic_write_json(tmp / "config.json", {"model": asdict(model_config), "stage": config.to_dict(),
                                                    "embedding_version": model.embedding_version})
            _plot(history, tmp / "loss.png")
        if not (layout.adapters / "tokenizer").exists():
            tokenizer.save_pretrained(str(layout.adapters / "tokenizer"))
        if not model_config.base_model and not (layout.adapters / "base_model").exists():
            model.base.save_pretrained(str(layout.adapters / "base_model"), safe_serialization=True)
        atomic_write_json(layout.adapters / "kalora.json", {"embedding_version": model.embedding_version,
                                                            "model": asdict(model_config),
                                                            "shards_embedding_version": manifest["embedding_version"]})
    log.info("stage 1: knowledge loss %.3f → %.3f, LM loss %.3f → %.3f over %d steps",
             history[0]["knowledge_loss"], history[-1]["knowledge_loss"], history[0]["lm_loss"],
             history[-1]["lm_loss"], config.max_steps)
    return record_stage(layout, "train:stage1", parameters={"model": asdict(model_config), "stage": config.to_dict()},
                        outputs={"adapters": str(layout.adapters), "embedding_version": model.embedding_version},
                        metrics={k: v for k, v in metrics.items() if k != "history"}, wall_time_s=timer.seconds)


def _plot(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["lm_loss"] for h in history], label="LM loss")
    ax.plot(steps, [h["knowledge_loss"] for h in history], label="knowledge loss")
    ax.set_xlabel("step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
