"""The KALoRA model: a Hugging Face causal LM with gated knowledge injection on its input
embeddings, a contrastive knowledge head on its last hidden state, an optional gated low-rank
domain adapter before the LM head, and (from stage 2) a peft adapter on the transformer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.config import AdapterConfig, ModelConfig
from model.modules import DomainAdapter, KnowledgeHead, KnowledgeInjection
from pipelines.errors import ArtifactError
from pipelines.integrity import reading

KNOWLEDGE_FILE = "knowledge.safetensors"


def build_base_model(config: ModelConfig, vocab_size: int, pad_id: int):
    """A local/hub model when ``base_model`` is set, else a small GPT-2 built from a config."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    if config.base_model:
        try:
            return AutoModelForCausalLM.from_pretrained(config.base_model)
        except OSError as exc:
            raise ArtifactError(f"[train -> model -> base_model] {config.base_model!r}: cannot load a causal LM "
                                f"({str(exc).splitlines()[0]})") from None
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=max(128, config.max_length), n_layer=config.n_layer,
                     n_head=config.n_head, n_embd=config.n_embd, pad_token_id=pad_id, bos_token_id=0, eos_token_id=0,
                     loss_type="ForCausalLM")
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg)


class KALoRAModel(nn.Module):
    def __init__(self, base: nn.Module, entity_vectors: torch.Tensor, embedding_version: str, num_heads: int = 4,
                 domain_adapter_rank: int = 0):
        super().__init__()
        self.base = base
        hidden = base.get_input_embeddings().embedding_dim
        self.injection = KnowledgeInjection(entity_vectors, hidden, num_heads)
        self.knowledge_head = KnowledgeHead(hidden)
        self.domain_adapter = DomainAdapter(hidden, domain_adapter_rank) if domain_adapter_rank else None
        self.embedding_version = embedding_version
        self.adapter_config: AdapterConfig | None = None
        self._use_domain_adapter = True
        if self.domain_adapter is not None:
            base.get_output_embeddings().register_forward_pre_hook(self._adapt_final_hidden)

    def _adapt_final_hidden(self, module, args):
        if not self._use_domain_adapter:
            return None
        return (self.domain_adapter(args[0]),) + tuple(args[1:])

    # -- peft ------------------------------------------------------------------------------------
    def add_adapter(self, config: AdapterConfig, total_steps: int) -> None:
        from model.adapters import wrap_with_peft

        self.base = wrap_with_peft(self.base, config, total_steps)
        self.adapter_config = config

    def load_adapter(self, directory: Path, config: AdapterConfig, trainable: bool = True) -> None:
        from peft import PeftModel

        self.base = PeftModel.from_pretrained(self.base, str(directory), is_trainable=trainable)
        self.adapter_config = config

    @property
    def virtual_tokens(self) -> int:
        """Positions prompt tuning prepends to the outputs (prefix tuning uses past keys instead)."""
        c = self.adapter_config
        return c.num_virtual_tokens if c is not None and c.method == "prompt" else 0

    def knowledge_modules(self) -> list[nn.Module]:
        return [m for m in (self.injection, self.knowledge_head, self.domain_adapter) if m is not None]

    def knowledge_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.injection, self.knowledge_head) for p in m.parameters() if p.requires_grad]

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask, entity_ids, labels=None, use_knowledge: bool = True,
                knowledge_loss: bool = True):
        """Returns the LM output (logits/hidden states without prompt-tuning positions), the
        knowledge loss and the injection gate (None when ``use_knowledge`` is off, which runs the
        base model — with its peft adapter — and nothing else)."""
        self._use_domain_adapter = use_knowledge
        if not use_knowledge:
            return self.base(input_ids=input_ids, attention_mask=attention_mask, labels=labels), None, None
        embeds = self.base.get_input_embeddings()(input_ids)
        embeds, gate = self.injection(embeds, entity_ids)
        out = self.base(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels,
                        output_hidden_states=knowledge_loss)
        v = self.virtual_tokens
        if v:
            out.logits = out.logits[:, v:]
        k_loss = self.knowledge_head(out.hidden_states[-1][:, v:], entity_ids, self.injection) if knowledge_loss else None
        return out, k_loss, gate

    def sequence_logprobs(self, input_ids, attention_mask, entity_ids, response_mask,
                          use_knowledge: bool = True) -> torch.Tensor:
        """Sum of log p(token | prefix) over the tokens where ``response_mask`` is 1, per sequence."""
        out, _, _ = self(input_ids, attention_mask, entity_ids, use_knowledge=use_knowledge, knowledge_loss=False)
        logits = out.logits[:, :-1].float()
        target = input_ids[:, 1:]
        logp = torch.gather(F.log_softmax(logits, -1), 2, target.unsqueeze(-1)).squeeze(-1)
        return (logp * response_mask[:, 1:].to(logp.dtype)).sum(-1)

    # -- persistence: knowledge modules as safetensors, tagged with the embedding version ----------
    def knowledge_state(self) -> dict[str, torch.Tensor]:
        state = {f"injection.{k}": v for k, v in self.injection.state_dict().items() if not k.startswith("entity_table")}
        state.update({f"knowledge_head.{k}": v for k, v in self.knowledge_head.state_dict().items()})
        if self.domain_adapter is not None:
            state.update({f"domain_adapter.{k}": v for k, v in self.domain_adapter.state_dict().items()})
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def save_knowledge(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.knowledge_state(), str(directory / KNOWLEDGE_FILE),
                  metadata={"embedding_version": self.embedding_version})

    def load_knowledge(self, directory: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(directory) / KNOWLEDGE_FILE
        if not path.exists():
            raise ArtifactError(f"{path} does not exist: train the previous stage first")
        with safe_open(str(path), framework="pt") as fh:
            version = (fh.metadata() or {}).get("embedding_version")
        if version != self.embedding_version:
            raise ArtifactError(f"{path} was trained with embedding {version!r}; this model uses "
                                f"{self.embedding_version!r}: retrain or point at the matching embeddings")
        state = load_file(str(path))
        mine = set(self.knowledge_state())
        if set(state) - mine:
            raise ArtifactError(f"{path}: unexpected tensors {sorted(set(state) - mine)[:3]}: the model config "
                                "(hidden size, domain_adapter_rank) differs from the one it was saved with")
        for prefix, module in (("injection.", self.injection), ("knowledge_head.", self.knowledge_head),
                               ("domain_adapter.", self.domain_adapter)):
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if module is not None and part:
                missing, _ = module.load_state_dict(part, strict=False)
                missing = [m for m in missing if not m.startswith("entity_table")]
                if missing:
                    raise ArtifactError(f"{path}: missing tensors {missing[:3]} for {prefix.rstrip('.')}")

    def save(self, directory: Path, extra: dict[str, Any] | None = None) -> None:
        """Knowledge modules (safetensors), the peft adapter (``adapter/``) and ``kalora.json``."""
        directory = Path(directory)
        self.save_knowledge(directory)
        if self.adapter_config is not None:
            self.base.save_pretrained(str(directory / "adapter"), safe_serialization=True)
        info = {"embedding_version": self.embedding_version,
                "peft": None if self.adapter_config is None else self.adapter_config.__dict__ | {
                    "target_modules": list(self.adapter_config.target_modules or []) or None}, **(extra or {})}
        (directory / "kalora.json").write_text(json.dumps(info, indent=2, default=str))


def load_entity_table(shards_manifest: dict[str, Any]) -> tuple[torch.Tensor, str]:
    path = Path(shards_manifest["entity_vectors"])
    if not path.exists():
        raise ArtifactError(f"{path} (named by the shards manifest) does not exist: re-run `kalora embed`")
    with reading(path.parent, "re-run `kalora embed`"):
        vectors = np.load(path, allow_pickle=False)
        meta = json.loads((path.parent / "metrics.json").read_bytes().decode("utf-8"))
    if meta["embedding_version"] != shards_manifest["embedding_version"]:
        raise ArtifactError(f"{path.parent} holds embedding {meta['embedding_version']} but the shards were built "
                            f"from {shards_manifest['embedding_version']}: rebuild the shards")
    return torch.from_numpy(vectors), meta["embedding_version"]
