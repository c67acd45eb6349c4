"""A model's structure, found from what it declares (its config and module types), not from one family's
attribute names: the stack of transformer blocks."""
from __future__ import annotations

import torch


def encoder_layers(model) -> torch.nn.ModuleList:
    """The stack of transformer blocks of a BERT-family model (the ModuleList with num_hidden_layers entries)."""
    count = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"cannot find the {count} encoder layers of {type(model).__name__}")
