"""Arithmetic per sentence of a BERT-family classifier, counted from its config (and pruning plan).

Only matrix multiplications are counted (2 FLOP per multiply-accumulate); embeddings, layer norms,
softmax and GELU are a few percent of the total and are left out, so efficiency figures are a
slight underestimate. Per layer, for T tokens, hidden size h, kept attention width a (heads x head
size) and FFN width f:

    projections  2*T*(3*h*a + a*h)        query/key/value in, attention output
    attention    2*2*T*T*a                scores Q.K^T and the weighted sum of V
    FFN          2*T*(2*h*f)              up and down projection

plus the pooler (2*h*h) and the classifier (2*h*labels) on the [CLS] token only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class EncoderShape:
    hidden: int
    head_size: int
    heads: list[int]          # kept attention heads per layer
    ffn: list[int]            # FFN width per layer
    labels: int

    @property
    def layers(self) -> int:
        return len(self.heads)


def encoder_shape(config: dict, pruning: dict | None = None) -> EncoderShape:
    """Shape from a Hugging Face config.json dict; ``pruning`` is a pruning.json plan (FFN widths)."""
    try:
        hidden, heads, layers = config["hidden_size"], config["num_attention_heads"], config["num_hidden_layers"]
        ffn = config["intermediate_size"]
    except KeyError as exc:
        raise ValueError(f"config has no {exc.args[0]!r}: not a BERT-family encoder config") from None
    removed = {int(layer): len(h) for layer, h in (config.get("pruned_heads") or {}).items()}
    widths = (pruning or {}).get("intermediate_sizes") or [ffn] * layers
    if len(widths) != layers:
        raise ValueError(f"pruning plan has {len(widths)} intermediate_sizes for {layers} layers")
    labels = len(config.get("id2label") or {}) or 2
    return EncoderShape(hidden, hidden // heads, [heads - removed.get(i, 0) for i in range(layers)],
                        list(widths), labels)


def flops_per_sentence(shape: EncoderShape, tokens: int) -> float:
    """Matrix-multiply FLOPs of one forward pass over one sentence of ``tokens`` tokens."""
    h, t = shape.hidden, tokens
    total = 0.0
    for heads, ffn in zip(shape.heads, shape.ffn):
        width = heads * shape.head_size
        total += 2 * t * (3 * h * width + width * h)
        total += 2 * 2 * t * t * width
        total += 2 * t * 2 * h * ffn
    return total + 2 * h * h + 2 * h * shape.labels


def mean_flops(shape: EncoderShape, token_counts: list[int]) -> float:
    if not token_counts:
        raise ValueError("mean_flops needs at least one sentence length")
    return sum(flops_per_sentence(shape, t) for t in token_counts) / len(token_counts)


def export_shape(export_dir: Path, variant: str) -> EncoderShape:
    """The shape of an export dir's variant: the pruned model's for pruned variants, else the merged one's."""
    if variant.startswith("pruned"):
        pruned = export_dir / "pruned"
        plan_path = pruned / "pruning.json"
        plan = json.loads(plan_path.read_text()) if plan_path.exists() else None
        return encoder_shape(json.loads((pruned / "config.json").read_text()), plan)
    return encoder_shape(json.loads((export_dir / "merged" / "config.json").read_text()))
