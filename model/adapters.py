"""The peft side of KALoRA: one factory per method the config names, and optimizer parameter groups
(LoRA+ gives the B matrices a larger learning rate than A, Hayou et al. 2024)."""

from __future__ import annotations

from typing import Any

from torch import nn

from model.config import AdapterConfig


def peft_config(config: AdapterConfig, total_steps: int):
    from peft import AdaLoraConfig, LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType

    targets = list(config.target_modules) if config.target_modules else None
    if config.method == "lora":
        return LoraConfig(task_type=TaskType.CAUSAL_LM, r=config.r, lora_alpha=config.alpha,
                          lora_dropout=config.dropout, target_modules=targets)
    if config.method == "adalora":
        # AdaLoRA prunes the rank budget from r to adalora_target_r between tinit and total - tfinal
        return AdaLoraConfig(task_type=TaskType.CAUSAL_LM, init_r=config.r, target_r=config.adalora_target_r,
                             lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=targets,
                             total_step=total_steps, tinit=max(1, total_steps // 10), tfinal=max(1, total_steps // 5),
                             deltaT=1)
    if config.method == "prefix":
        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=config.num_virtual_tokens)
    return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=config.num_virtual_tokens)


def wrap_with_peft(base: nn.Module, config: AdapterConfig, total_steps: int):
    from peft import get_peft_model

    return get_peft_model(base, peft_config(config, total_steps))


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, loraplus_lr_ratio: float = 1.0,
                     extra: list[nn.Parameter] = ()) -> list[dict[str, Any]]:
    """AdamW groups: LoRA B matrices at ``lr × loraplus_lr_ratio``; biases, norms, gate scalars and
    ``extra`` (loss-weighting log-variances) without weight decay."""
    extra_ids = {id(p) for p in extra}
    groups: dict[str, list[nn.Parameter]] = {"b": [], "decay": [], "no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in extra_ids:
            continue
        if "lora_B" in name and loraplus_lr_ratio != 1:
            groups["b"].append(p)
        elif p.ndim < 2:
            groups["no_decay"].append(p)
        else:
            groups["decay"].append(p)
    out = [{"params": groups["decay"], "lr": lr, "weight_decay": weight_decay},
           {"params": groups["no_decay"] + list(extra), "lr": lr, "weight_decay": 0.0},
           {"params": groups["b"], "lr": lr * loraplus_lr_ratio, "weight_decay": weight_decay}]
    return [g for g in out if g["params"]]
