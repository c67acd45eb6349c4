"""Adaptation methods: which parameters train, and PEFT wrappers (LoRA, AdaLoRA, IA3)."""
from __future__ import annotations

import math
import re


from toolchain.core.config import MethodConfig
from toolchain.inference.architecture import encoder_layers

PEFT_METHODS = ("lora", "adalora", "ia3")
# Module names of task heads (trained by every method, saved with PEFT adapters via modules_to_save).
HEAD_NAMES = ("classifier", "score", "pooler", "pre_classifier")


def is_head_parameter(name: str) -> bool:
    return any(part in HEAD_NAMES for part in name.split("."))


def freeze_all_but(model, trainable) -> None:
    for name, param in model.named_parameters():
        param.requires_grad = trainable(name)


def apply_top_k(model, k: int) -> None:
    """Freeze the embeddings and all but the top ``k`` encoder layers; the head stays trainable."""
    layers = encoder_layers(model)
    if k > len(layers):
        raise ValueError(f"method.top_k={k} exceeds the model's {len(layers)} layers")
    keep = {id(p) for layer in list(layers)[len(layers) - k:] for p in layer.parameters()}
    for name, param in model.named_parameters():
        param.requires_grad = id(param) in keep or is_head_parameter(name)


def _target_modules(cfg: MethodConfig):
    if cfg.target_modules == "all-linear":
        return "all-linear"
    return [m.strip() for m in cfg.target_modules.split(",") if m.strip()]


def head_modules(model) -> list[str]:
    names = {name.split(".")[0] for name, _ in model.named_children()}
    found = [n for n in ("classifier", "score") if n in names]
    return found


def peft_config(cfg: MethodConfig, task_type: str, model, total_steps: int):
    import peft

    common = {"task_type": task_type, "modules_to_save": head_modules(model)}
    if cfg.name == "lora":
        return peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                               target_modules=_target_modules(cfg), **common)
    if cfg.name == "adalora":
        return peft.AdaLoraConfig(
            init_r=cfg.adalora_init_r, target_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout, target_modules=_target_modules(cfg),
            tinit=math.floor(cfg.adalora_tinit * total_steps), tfinal=math.floor(cfg.adalora_tfinal * total_steps),
            deltaT=cfg.adalora_delta_t, total_step=max(total_steps, 1), **common)
    if cfg.name == "ia3":
        # BERT: key/value projections and the FFN output; attention.output.dense is not a feed-forward layer.
        ff_name = re.escape(cfg.ia3_feedforward)
        feedforward = rf".*layer\.\d+\.{ff_name}$"
        targets = cfg.target_modules
        if targets == "all-linear":
            targets = rf".*\.(key|value)$|{feedforward}"
        else:
            targets = _target_modules(cfg)
            feedforward = [m for m in targets if m.endswith(cfg.ia3_feedforward)]
        return peft.IA3Config(target_modules=targets, feedforward_modules=feedforward, **common)
    raise ValueError(f"{cfg.name!r} is not a PEFT method")


def apply_method(model, cfg: MethodConfig, task_type: str, total_steps: int):
    """Return the model prepared for ``cfg.name`` (PEFT methods wrap it)."""
    if cfg.name == "full":
        freeze_all_but(model, lambda name: True)
    elif cfg.name == "head":
        freeze_all_but(model, is_head_parameter)
    elif cfg.name == "top-k":
        apply_top_k(model, cfg.top_k)
    elif cfg.name in PEFT_METHODS:
        import peft
        model = peft.get_peft_model(model, peft_config(cfg, task_type, model, total_steps))
    else:
        raise ValueError(f"unknown method {cfg.name!r}")
    return model


def parameter_counts(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": int(total), "trainable": int(trainable), "trainable_fraction": trainable / max(total, 1)}
