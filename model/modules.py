"""Knowledge modules of KALoRA (the design's DynamicKnowledgeEmbedding, made real).

:class:`KnowledgeInjection`: every token state attends over the projected KG embeddings of the
entities linked anywhere in its sequence; a per-token sigmoid gate decides how much of that
knowledge context is added. The output projection is zero-initialised, so at initialisation the
module is the identity and stage 1 starts exactly from the base model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KnowledgeInjection(nn.Module):
    def __init__(self, entity_vectors: torch.Tensor, hidden_size: int, num_heads: int = 4,
                 freeze_entities: bool = True):
        super().__init__()
        kg_dim = entity_vectors.shape[1]
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.entity_table = nn.Embedding.from_pretrained(entity_vectors.float(), freeze=freeze_entities, padding_idx=0)
        self.entity_proj = nn.Sequential(nn.Linear(kg_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.gate = nn.Linear(hidden_size, 1)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        self.last_gate: torch.Tensor | None = None

    def project_entities(self, indices: torch.Tensor) -> torch.Tensor:
        return self.entity_proj(self.entity_table(indices))

    def forward(self, hidden: torch.Tensor, entity_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden``: (B, T, H); ``entity_ids``: (B, T) KG index per token, 0 where none.
        Returns the new states and the gate values (B, T, 1)."""
        keys_idx, key_mask = self._sequence_entities(entity_ids)
        keys = self.project_entities(keys_idx)
        context, _ = self.attention(hidden, keys, keys, key_padding_mask=~key_mask, need_weights=False)
        has_any = key_mask[:, 1:].any(dim=1).view(-1, 1, 1)  # slot 0 is the always-present null slot
        context = context * has_any
        gate = torch.sigmoid(self.gate(hidden))
        self.last_gate = gate.detach()
        return hidden + gate * self.out_proj(context), gate

    @staticmethod
    def _sequence_entities(entity_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unique linked entities per sequence, padded, with a leading null slot (index 0) so that
        sequences without entities still have a valid (zero-valued) attention target."""
        rows = [torch.unique(r[r > 0]) for r in entity_ids]
        width = 1 + max((len(r) for r in rows), default=0)
        idx = torch.zeros((len(rows), width), dtype=torch.long, device=entity_ids.device)
        mask = torch.zeros((len(rows), width), dtype=torch.bool, device=entity_ids.device)
        mask[:, 0] = True
        for i, r in enumerate(rows):
            idx[i, 1:1 + len(r)] = r
            mask[i, 1:1 + len(r)] = True
        return idx, mask


class KnowledgeHead(nn.Module):
    """Predicts the linked entity of a token from its hidden state, contrastively against the
    projected entity table (the gold entity versus in-batch and sampled negatives)."""

    def __init__(self, hidden_size: int, temperature: float = 0.1, num_negatives: int = 1023):
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size)
        self.temperature = temperature
        self.num_negatives = num_negatives

    def forward(self, hidden: torch.Tensor, entity_ids: torch.Tensor, injection: KnowledgeInjection) -> torch.Tensor:
        pos = entity_ids > 0
        if not pos.any():
            return hidden.sum() * 0.0
        gold = entity_ids[pos]
        num_entities = injection.entity_table.num_embeddings
        sampled = torch.randint(1, num_entities, (self.num_negatives,), device=gold.device)
        cands = torch.unique(torch.cat([gold, sampled]))
        targets = torch.searchsorted(cands, gold)
        q = F.normalize(self.query(hidden[pos]), dim=-1)
        k = F.normalize(injection.project_entities(cands), dim=-1)
        return F.cross_entropy(q @ k.T / self.temperature, targets)
