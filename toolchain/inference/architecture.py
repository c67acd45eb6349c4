"""A model's structure, found from what it declares (its config, its module types and the shapes of its linear
layers), not from one family's attribute names: the stack of transformer blocks and, in each block, the parts
structured pruning works on.

Per block: the attention module (the first submodule whose type is an attention type), its projections into
per-head space (query, key, value and, for DeBERTa, the relative-position projections: every linear layer of the
attention module but the last), the projection of the heads' context back to the hidden size (the attention
module's last linear layer), the module that holds the head count, and the feed-forward pair (the linear layer
that widens the hidden size and the one that narrows it back). BERT, RoBERTa, DistilBERT, MPNet and DeBERTa-v2
lay their blocks out this way; an attention type that has not been checked to is refused before any work.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from toolchain.core.errors import ConfigError

# Attention module types whose head count, width and projections are found below and whose forward pass reads
# only those (checked by the family tests: every stage on tiny random models of these families).
PRUNABLE_ATTENTION = (
    "BertSelfAttention", "BertSdpaSelfAttention", "RobertaSelfAttention", "RobertaSdpaSelfAttention",
    "XLMRobertaSelfAttention", "XLMRobertaSdpaSelfAttention", "MultiHeadSelfAttention", "DistilBertSdpaAttention",
    "MPNetSelfAttention", "DisentangledSelfAttention",
)
PRUNABLE_FAMILIES = "BERT, RoBERTa, XLM-RoBERTa, DistilBERT, MPNet, DeBERTa-v2"
HEAD_COUNT = ("num_attention_heads", "n_heads")   # what an attention module calls its number of heads
HEAD_WIDTH = ("all_head_size", "dim")             # ... and the width of all its heads together


def encoder_layers(model) -> torch.nn.ModuleList:
    """The stack of transformer blocks of an encoder (the ModuleList with num_hidden_layers entries)."""
    count = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"cannot find the {count} encoder layers of {type(model).__name__}")


def hidden_size(model) -> int:
    """The width of the residual stream, from the input embeddings the model declares."""
    return getattr(model.config, "hidden_size", None) or model.get_input_embeddings().embedding_dim


@dataclass
class Slot:
    """Where a linear layer lives, so a pruned copy can take its place."""
    parent: torch.nn.Module
    name: str

    @property
    def linear(self) -> torch.nn.Linear:
        return getattr(self.parent, self.name)

    def replace(self, linear: torch.nn.Linear) -> None:
        setattr(self.parent, self.name, linear)


@dataclass
class BlockParts:
    heads: torch.nn.Module       # the module holding the head count and width attributes
    into_heads: list[Slot]       # projections whose output rows are laid out head after head
    from_heads: Slot             # the projection of the heads' context back to the hidden size
    ffn_in: Slot
    ffn_out: Slot

    @property
    def head_count(self) -> int:
        return next(getattr(self.heads, a) for a in HEAD_COUNT if hasattr(self.heads, a))

    @property
    def head_size(self) -> int:
        return self.from_heads.linear.in_features // self.head_count

    def set_head_count(self, count: int) -> None:
        for attribute in HEAD_COUNT:
            if hasattr(self.heads, attribute):
                setattr(self.heads, attribute, count)
        for attribute in HEAD_WIDTH:
            if hasattr(self.heads, attribute):
                setattr(self.heads, attribute, count * self.head_size_before)

    head_size_before: int = 0


def linear_slots(module: torch.nn.Module) -> list[Slot]:
    """Every linear layer under ``module``, in registration order (the order the model was built in)."""
    slots = []
    for _, parent in module.named_modules():
        slots += [Slot(parent, name) for name, child in parent.named_children() if isinstance(child, torch.nn.Linear)]
    return slots


def attention_module(block: torch.nn.Module) -> torch.nn.Module | None:
    """The block's first submodule whose type is an attention type (BertAttention, MultiHeadSelfAttention, ...)."""
    return next((m for _, m in block.named_children() if "Attention" in type(m).__name__), None)


def block_parts(model) -> list[BlockParts]:
    """The prunable parts of every block, or a ConfigError naming the architecture and what is supported
    (raised before any work)."""
    hidden = hidden_size(model)
    try:
        blocks = encoder_layers(model)
    except ValueError as exc:
        raise ConfigError(f"pruning does not support {type(model).__name__}: {exc} (shared or grouped layers); "
                          f"it supports the block layouts of {PRUNABLE_FAMILIES}") from None
    parts = []
    for index, block in enumerate(blocks):
        attention = attention_module(block)
        holder = next((m for _, m in attention.named_modules() if type(m).__name__ in PRUNABLE_ATTENTION), None) \
            if attention is not None else None
        if holder is None:
            found = sorted({type(m).__name__ for _, m in block.named_modules() if "Attention" in type(m).__name__})
            raise ConfigError(f"pruning does not support {type(model).__name__} (attention {', '.join(found) or 'none'}"
                              f" in block {index}); it supports the block layouts of {PRUNABLE_FAMILIES}: drop "
                              f"'pruned' from export.variants or prune.amount")
        attention_linears = linear_slots(attention)
        rest = [s for s in linear_slots(block) if not any(s.linear is a.linear for a in attention_linears)]
        ffn_in = next((s for s in rest if s.linear.in_features == hidden and s.linear.out_features != hidden), None)
        ffn_out = next((s for s in rest if ffn_in and s.linear.in_features == ffn_in.linear.out_features
                        and s.linear.out_features == hidden), None)
        if ffn_in is None or ffn_out is None:
            raise ConfigError(f"pruning: block {index} of {type(model).__name__} has no feed-forward pair "
                              f"(hidden {hidden} -> wider -> {hidden}); supported: {PRUNABLE_FAMILIES}")
        block_part = BlockParts(holder, attention_linears[:-1], attention_linears[-1], ffn_in, ffn_out)
        block_part.head_size_before = block_part.head_size
        parts.append(block_part)
    return parts
