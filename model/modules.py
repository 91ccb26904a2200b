"""Knowledge modules of KALoRA (the design's DynamicKnowledgeEmbedding and DomainKnowledgeAdapter,
made real).

:class:`KnowledgeInjection`: every token state attends over the projected KG embeddings of the
entities linked in its sequence *up to and including its own position* (causal: a token never sees
an entity that is only mentioned later, so the LM cannot read the answer it is asked to predict);
a per-token sigmoid gate decides how much of that knowledge context is added. The output projection
is zero-initialised, so at initialisation the module is the identity and stage 1 starts exactly
from the base model; a token with no linked entity at or before it is never changed.

:class:`KnowledgeHead`: the knowledge loss. At the token *before* a linked mention it predicts the
entity that is about to be mentioned, contrastively against the projected entity table — the
non-trivial direction (predicting the entity a token is already part of would be copying the
injected vector).

:class:`DomainAdapter`: a gated low-rank residual on the final hidden state (before the LM head).

:class:`UncertaintyWeighting`: automatic loss weights (Kendall et al. 2018).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mention_starts(entity_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the first token of each linked mention."""
    prev = F.pad(entity_ids[:, :-1], (1, 0), value=0)
    return (entity_ids > 0) & (entity_ids != prev)


class KnowledgeInjection(nn.Module):
    def __init__(self, entity_vectors: torch.Tensor, hidden_size: int, num_heads: int = 4,
                 freeze_entities: bool = True):
        super().__init__()
        kg_dim = entity_vectors.shape[1]
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.entity_table = nn.Embedding.from_pretrained(entity_vectors.float(), freeze=freeze_entities, padding_idx=0)
        self.entity_proj = nn.Sequential(nn.Linear(kg_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.gate = nn.Linear(hidden_size, 1)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        self.last_gate: torch.Tensor | None = None

    def project_entities(self, indices: torch.Tensor) -> torch.Tensor:
        return self.entity_proj(self.entity_table(indices))

    def project_unique(self, entity_ids: torch.Tensor) -> torch.Tensor:
        """Projected vectors for every position of ``entity_ids``, computing each distinct entity once."""
        uniq, inverse = torch.unique(entity_ids, return_inverse=True)
        return self.project_entities(uniq)[inverse]

    def forward(self, hidden: torch.Tensor, entity_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden``: (B, T, H); ``entity_ids``: (B, T) KG index per token, 0 where none.
        Returns the new states and the gate values (B, T, 1)."""
        b, t, h = hidden.shape
        starts = mention_starts(entity_ids)                       # one key per mention
        causal = torch.ones(t, t, dtype=torch.bool, device=hidden.device).tril()
        allowed = causal.unsqueeze(0) & starts.unsqueeze(1)        # (B, T query, T key)
        sees_any = allowed.any(-1, keepdim=True)                   # (B, T, 1)
        gate = torch.sigmoid(self.gate(hidden))
        self.last_gate = gate.detach()
        if not bool(starts.any()):
            return hidden, gate
        keys = self.project_unique(entity_ids).to(hidden.dtype)
        d = h // self.num_heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, t, self.num_heads, d).transpose(1, 2)

        # a query with no visible mention would get an all-masked row (NaN); let it see key 0 and zero it below
        mask = (allowed | ~sees_any).unsqueeze(1)
        context = F.scaled_dot_product_attention(heads(self.query(hidden)), heads(self.key(keys)),
                                                 heads(self.value(keys)), attn_mask=mask)
        context = context.transpose(1, 2).reshape(b, t, h) * sees_any
        return hidden + gate * self.out_proj(context), gate


class KnowledgeHead(nn.Module):
    """At each token followed by the start of a linked mention, predict that entity from the hidden
    state, contrastively against the projected entity table (the gold entity versus the batch's
    entities and ``num_negatives`` sampled ones)."""

    def __init__(self, hidden_size: int, temperature: float = 0.1, num_negatives: int = 255):
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size)
        self.temperature = temperature
        self.num_negatives = num_negatives

    @staticmethod
    def targets(entity_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) entity the *next* token starts (0 where none): the positions the loss uses."""
        nxt = F.pad(entity_ids[:, 1:], (0, 1), value=0)
        starts = F.pad(mention_starts(entity_ids)[:, 1:], (0, 1), value=False)
        return nxt * starts

    def forward(self, hidden: torch.Tensor, entity_ids: torch.Tensor, injection: KnowledgeInjection) -> torch.Tensor:
        target = self.targets(entity_ids)
        pos = target > 0
        if not bool(pos.any()):
            return hidden.sum() * 0.0
        gold = target[pos]
        num_entities = injection.entity_table.num_embeddings
        sampled = torch.randint(1, num_entities, (min(self.num_negatives, num_entities - 1),), device=gold.device)
        cands = torch.unique(torch.cat([gold, sampled]))
        labels = torch.searchsorted(cands, gold)
        q = F.normalize(self.query(hidden[pos].float()), dim=-1)
        k = F.normalize(injection.project_entities(cands).float(), dim=-1)
        return F.cross_entropy(q @ k.T / self.temperature, labels)


class DomainAdapter(nn.Module):
    """Gated low-rank residual: ``h + g(h) · up(down(h))`` with ``up`` zero-initialised (identity at
    initialisation) and a per-token sigmoid gate. Applied to the final hidden state before the LM head."""

    def __init__(self, hidden_size: int, rank: int = 8):
        super().__init__()
        self.down = nn.Linear(hidden_size, rank, bias=False)
        self.up = nn.Linear(rank, hidden_size, bias=False)
        self.gate = nn.Sequential(nn.Linear(hidden_size, max(1, hidden_size // 4)), nn.ReLU(),
                                  nn.Linear(max(1, hidden_size // 4), 1))
        nn.init.zeros_(self.up.weight)
        self.last_gate: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate(hidden))
        self.last_gate = gate.detach()
        return hidden + gate * self.up(self.down(hidden))


class UncertaintyWeighting(nn.Module):
    """Homoscedastic-uncertainty loss weighting: ``Σ exp(-s_i) L_i + s_i`` with learned ``s_i``
    (log variances, initialised to 0 = weight 1). ``weights()`` is the trajectory the trainer logs."""

    def __init__(self, names: tuple[str, ...]):
        super().__init__()
        self.names = names
        self.log_vars = nn.Parameter(torch.zeros(len(names)))

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        total = self.log_vars.new_zeros(())
        for i, name in enumerate(self.names):
            total = total + torch.exp(-self.log_vars[i]) * losses[name] + self.log_vars[i]
        return total

    def weights(self) -> dict[str, float]:
        return {n: float(torch.exp(-self.log_vars[i]).item()) for i, n in enumerate(self.names)}
