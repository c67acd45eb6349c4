"""Adaptation methods: which parameters train, and PEFT wrappers (LoRA, AdaLoRA, IA3)."""
from __future__ import annotations

import math

from toolchain.core.config import MethodConfig
from toolchain.core.errors import ConfigError
from toolchain.inference.architecture import PRUNABLE_FAMILIES, block_parts, encoder_layers

PEFT_METHODS = ("lora", "adalora", "ia3")


def head_parameter_names(model) -> set[str]:
    """The parameters every method trains: those outside the encoder body, where the body is the base model's
    modules that hold the input embeddings or the stack of blocks. So the task head (DistilBERT's pre_classifier
    and classifier, DeBERTa's pooler and classifier, ...) and a pooler the base model carries beside its encoder
    (BERT's)."""
    base = getattr(model, model.base_model_prefix, model)
    embeddings, layers = model.get_input_embeddings(), encoder_layers(model)
    body = [child for _, child in base.named_children()
            if any(module is embeddings or module is layers for module in child.modules())]
    inside = {id(p) for module in body for p in module.parameters()}
    return {name for name, p in model.named_parameters() if id(p) not in inside}


def freeze_all_but(model, trainable) -> None:
    for name, param in model.named_parameters():
        param.requires_grad = trainable(name)


def apply_top_k(model, k: int) -> None:
    """Freeze the embeddings and all but the top ``k`` encoder layers; the head stays trainable."""
    layers = encoder_layers(model)
    if k > len(layers):
        raise ValueError(f"method.top_k={k} exceeds the model's {len(layers)} layers")
    keep = {id(p) for layer in list(layers)[len(layers) - k:] for p in layer.parameters()}
    head = head_parameter_names(model)
    for name, param in model.named_parameters():
        param.requires_grad = id(param) in keep or name in head


def _target_modules(cfg: MethodConfig):
    if cfg.target_modules == "all-linear":
        return "all-linear"
    return [m.strip() for m in cfg.target_modules.split(",") if m.strip()]


def head_modules(model) -> list[str]:
    """The task head: the model's top-level modules with weights outside its base model (``base_model_prefix``),
    e.g. DistilBERT's pre_classifier and classifier, DeBERTa's pooler and classifier. PEFT trains and saves them
    whole (``modules_to_save``), so no adapter wraps them."""
    base = getattr(model, model.base_model_prefix, None)
    return [name for name, module in model.named_children()
            if module is not base and any(True for _ in module.parameters())]


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
        if cfg.target_modules == "all-linear":
            targets, feedforward = ia3_modules(model)
        else:
            targets = _target_modules(cfg)
            feedforward = [m for m in targets if m.endswith(cfg.ia3_feedforward)]
        return peft.IA3Config(target_modules=targets, feedforward_modules=feedforward, **common)
    raise ValueError(f"{cfg.name!r} is not a PEFT method")


def ia3_modules(model) -> tuple[list[str], list[str]]:
    """IA3's targets (Liu et al. 2022: keys, values and the feed-forward's inner activations), found in each
    block's structure (``block_parts``): the projections into head space after the query (built first in every
    supported layout) and the feed-forward's narrowing layer, whose input IA3 scales. Full module names."""
    try:
        parts = block_parts(model)
    except ConfigError:
        raise ConfigError(f"method ia3: cannot find the attention projections and feed-forward layers in the blocks "
                          f"of {type(model).__name__} (found for the layouts of {PRUNABLE_FAMILIES}); give "
                          "method.target_modules as a comma list of module names") from None
    names = {id(module): name for name, module in model.named_modules()}
    keys_values = [names[id(slot.linear)] for part in parts for slot in part.into_heads[1:]]
    feedforward = [names[id(part.ffn_out.linear)] for part in parts]
    return keys_values + feedforward, feedforward


def apply_method(model, cfg: MethodConfig, task_type: str, total_steps: int):
    """Return the model prepared for ``cfg.name`` (PEFT methods wrap it)."""
    if cfg.name == "full":
        freeze_all_but(model, lambda name: True)
    elif cfg.name == "head":
        head = head_parameter_names(model)
        freeze_all_but(model, lambda name: name in head)
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
