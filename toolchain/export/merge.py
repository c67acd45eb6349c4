"""Merge a run's PEFT adapter into the base weights and check that the logits did not move."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolchain.core.artifacts import RunInfo
from toolchain.export.accuracy_gate import AccuracyGateError


@dataclass
class MergeResult:
    model: object           # merged transformers model, eval mode
    tokenizer: object
    max_abs_diff: float | None  # merged vs unmerged logits on dev; None for a full model


def merge_run(run: RunInfo, task, dev_examples, atol: float, batch_size: int = 64) -> MergeResult:
    """The run's model with any LoRA/AdaLoRA/IA3 adapter merged (head included), parity-checked on dev."""
    from toolchain.inference.run_model import load_run_model, predict_logits

    model, tokenizer = load_run_model(run, merge=False)
    if not run.is_peft:
        return MergeResult(model, tokenizer, None)
    before = predict_logits(model, tokenizer, task, dev_examples, run.max_length, batch_size)
    merged = model.merge_and_unload().eval()
    after = predict_logits(merged, tokenizer, task, dev_examples, run.max_length, batch_size)
    diff = float(np.max(np.abs(before - after)))
    if diff >= atol:
        raise AccuracyGateError(f"merging the adapter of {run.path} moved the dev logits by {diff:.3g} "
                                f"(accuracy_gate.merge_atol={atol:g}); the merged model does not match the trained one")
    return MergeResult(merged, tokenizer, diff)
