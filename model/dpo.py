"""Stage 3: Direct Preference Optimization (Rafailov et al. 2023) on ``alignment/``.

The reference model is the frozen stage-2 model. Its log-probabilities of every pair (train and
valid) are computed once, before the first update, and stored as safetensors next to the adapters
with the fingerprint of what produced them (stage-2 weights, alignment shard checksums, max
length); a resumed or repeated stage 3 reuses them instead of keeping a second model in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from model.data import collate_pairs, encode_pair, read_alignment

log = logging.getLogger(__name__)


def encode_pairs(shards_dir: Path, tokenizer, max_length: int) -> list[dict[str, Any]]:
    """Every alignment pair, tokenised; ``row`` indexes the reference table, ``split`` is kept."""
    out, dropped = [], 0
    for row in read_alignment(shards_dir, split=None):
        enc = encode_pair(row, tokenizer, max_length)
        if enc is None:
            dropped += 1
            continue
        out.append({**enc, "split": row["split"]})
    if dropped:
        log.warning("alignment: %d pairs dropped (no response token left within max_length %d)", dropped, max_length)
    return out


@torch.no_grad()
def pair_logprobs(model, pairs: list[dict[str, Any]], pad_id: int, batch_size: int) -> torch.Tensor:
    """(len(pairs), 2): summed response log-probs of chosen and rejected, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(pairs), batch_size):
        batch = {k: v.to(device) for k, v in collate_pairs(pairs[i:i + batch_size], pad_id).items()}
        logp = model.sequence_logprobs(batch["input_ids"], batch["attention_mask"], batch["entity_ids"],
                                       batch["response_mask"]).float().cpu()
        n = len(logp) // 2
        out.append(torch.stack([logp[:n], logp[n:]], dim=1))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros((0, 2))


def reference_logprobs(model, pairs: list[dict[str, Any]], pad_id: int, batch_size: int, path: Path,
                       fingerprint: dict[str, str]) -> tuple[Path, torch.Tensor]:
    """The reference table indexed by pair ``row``: loaded from ``path`` when its fingerprint
    matches, else computed now (one pass) and written atomically."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    from pipelines.artifacts import atomic_write_bytes

    size = 1 + max(p["row"] for p in pairs)
    if path.exists():
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        if meta == fingerprint:
            table = load_file(str(path))["reference_logps"]
            if len(table) == size:
                log.info("stage 3: reference log-probs reused from %s", path)
                return path, table
    logps = pair_logprobs(model, pairs, pad_id, batch_size)
    table = torch.full((size, 2), float("nan"))
    table[torch.tensor([p["row"] for p in pairs])] = logps
    atomic_write_bytes(path, save({"reference_logps": table.contiguous()}, metadata=fingerprint))
    log.info("stage 3: reference log-probs of %d pairs computed once, stored at %s", len(pairs), path)
    return path, table


def pair_batches(pairs: list[dict[str, Any]], batch_size: int, pad_id: int, seed: int,
                 skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of pairs forever, reshuffled each epoch with a seeded permutation; first ``skip`` dropped."""
    seen, epoch = 0, 0
    while True:
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for i in range(0, len(order), batch_size):
            seen += 1
            if seen > skip:
                yield collate_pairs([pairs[j] for j in order[i:i + batch_size]], pad_id)
        epoch += 1


def dpo_loss(model, batch: dict[str, torch.Tensor], reference: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    logp = model.sequence_logprobs(batch["input_ids"], batch["attention_mask"], batch["entity_ids"],
                                   batch["response_mask"]).float()
    n = len(logp) // 2
    ref = reference.to(logp.device)[batch["row"]]
    chosen = beta * (logp[:n] - ref[:, 0])
    rejected = beta * (logp[n:] - ref[:, 1])
    margin = chosen - rejected
    loss = -F.logsigmoid(margin).mean()
    return loss, {"dpo_loss": loss.item(), "reward_margin": margin.mean().item(),
                  "reward_accuracy": (margin > 0).float().mean().item(),
                  "reward_chosen": chosen.mean().item(), "reward_rejected": rejected.mean().item()}


def preference_accuracy(logps: torch.Tensor, pairs: list[dict[str, Any]]) -> float:
    """Share of pairs whose chosen response is more likely than the rejected one."""
    rows = torch.tensor([p["row"] for p in pairs])
    return float((logps[rows, 0] > logps[rows, 1]).float().mean())
