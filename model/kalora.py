"""The KALoRA model: a Hugging Face causal LM with gated knowledge injection on its input
embeddings and a contrastive knowledge head on its last hidden state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.config import ModelConfig
from model.modules import KnowledgeHead, KnowledgeInjection
from pipelines.errors import ArtifactError


def build_base_model(config: ModelConfig, vocab_size: int, pad_id: int):
    """A local/hub model when ``base_model`` is set, else a small GPT-2 built from a config."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    if config.base_model:
        return AutoModelForCausalLM.from_pretrained(config.base_model)
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=max(128, config.max_length), n_layer=config.n_layer,
                     n_head=config.n_head, n_embd=config.n_embd, pad_token_id=pad_id, bos_token_id=0, eos_token_id=0,
                     loss_type="ForCausalLM")
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg)


class KALoRAModel(nn.Module):
    def __init__(self, base: nn.Module, entity_vectors: torch.Tensor, embedding_version: str, num_heads: int = 4):
        super().__init__()
        self.base = base
        hidden = base.get_input_embeddings().embedding_dim
        self.injection = KnowledgeInjection(entity_vectors, hidden, num_heads)
        self.knowledge_head = KnowledgeHead(hidden)
        self.embedding_version = embedding_version

    def knowledge_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.injection, self.knowledge_head) for p in m.parameters() if p.requires_grad]

    def forward(self, input_ids, attention_mask, entity_ids, labels=None, use_knowledge: bool = True):
        embeds = self.base.get_input_embeddings()(input_ids)
        gate = None
        if use_knowledge:
            embeds, gate = self.injection(embeds, entity_ids)
        out = self.base(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, output_hidden_states=True)
        k_loss = self.knowledge_head(out.hidden_states[-1], entity_ids, self.injection) if use_knowledge else None
        return out, k_loss, gate

    # -- persistence: knowledge modules as safetensors, tagged with the embedding version ----------
    def knowledge_state(self) -> dict[str, torch.Tensor]:
        state = {f"injection.{k}": v for k, v in self.injection.state_dict().items() if not k.startswith("entity_table")}
        state.update({f"knowledge_head.{k}": v for k, v in self.knowledge_head.state_dict().items()})
        return {k: v.detach().contiguous() for k, v in state.items()}

    def save_knowledge(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.knowledge_state(), str(directory / "knowledge.safetensors"),
                  metadata={"embedding_version": self.embedding_version})

    def load_knowledge(self, directory: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = directory / "knowledge.safetensors"
        with safe_open(str(path), framework="pt") as fh:
            version = (fh.metadata() or {}).get("embedding_version")
        if version != self.embedding_version:
            raise ArtifactError(f"{path} was trained with embedding {version!r}; this model uses "
                                f"{self.embedding_version!r}: retrain or point at the matching embeddings")
        state = load_file(str(path))
        self.injection.load_state_dict({k[len("injection."):]: v for k, v in state.items() if k.startswith("injection.")}, strict=False)
        self.knowledge_head.load_state_dict({k[len("knowledge_head."):]: v for k, v in state.items() if k.startswith("knowledge_head.")})


def load_entity_table(shards_manifest: dict[str, Any]) -> tuple[torch.Tensor, str]:
    path = Path(shards_manifest["entity_vectors"])
    if not path.exists():
        raise ArtifactError(f"{path} (named by the shards manifest) does not exist: re-run `kalora embed`")
    vectors = np.load(path, allow_pickle=False)
    meta = json.loads((path.parent / "metrics.json").read_text())
    if meta["embedding_version"] != shards_manifest["embedding_version"]:
        raise ArtifactError(f"{path.parent} holds embedding {meta['embedding_version']} but the shards were built "
                            f"from {shards_manifest['embedding_version']}: rebuild the shards")
    return torch.from_numpy(vectors), meta["embedding_version"]
