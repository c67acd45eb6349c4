"""A run dir's model in PyTorch and its logits on many texts, batched by length (every stage that scores a
run reads it through here: evaluate, ensemble members, distillation teachers, update, merge, explain)."""
from __future__ import annotations

import numpy as np
import torch

from toolchain.core.artifacts import RunInfo
from toolchain.inference.modeling import load_pretrained, load_tokenizer
from toolchain.tasks import get_task


def load_run_model(run: RunInfo, merge: bool = False):
    """The run's model in eval mode: a full model, or base + PEFT adapter (merged if asked)."""
    task = get_task(run.task)
    labels = run.labels
    if run.is_peft:
        from peft import PeftModel
        base = load_pretrained(task.auto_model_class(), run.base_model, num_labels=len(labels),
                               id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
        model = PeftModel.from_pretrained(base, str(run.model_dir))
        if merge:
            model = model.merge_and_unload()
    else:
        model = load_pretrained(task.auto_model_class(), str(run.model_dir))
    return model.eval(), load_tokenizer(str(run.model_dir))


@torch.no_grad()
def predict_logits(model, tokenizer, task, examples, max_length: int, batch_size: int = 64) -> np.ndarray:
    """Logits for examples in order (sequence tasks: (n, labels); token tasks: padded (n, len, labels))."""
    dataset = task.encode(examples, tokenizer, None, max_length)
    return feature_logits(model, task.collator(tokenizer), dataset.features, batch_size)


@torch.no_grad()
def feature_logits(model, collate, features: list[dict], batch_size: int = 64) -> np.ndarray:
    """Logits of already encoded features, in order (token tasks: padded to the longest feature). Batches are
    cut from the features sorted by length, so short texts are not padded to a long neighbour's length."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    outputs = []
    for start in range(0, len(order), batch_size):
        batch = collate([features[i] for i in order[start:start + batch_size]])
        batch = {k: v for k, v in batch.items() if k != "labels"}
        outputs.append(model(**batch).logits.float().cpu().numpy())
    if outputs and outputs[0].ndim == 3:  # token classification: pad to a common length
        width = max(o.shape[1] for o in outputs)
        outputs = [np.pad(o, ((0, 0), (0, width - o.shape[1]), (0, 0))) for o in outputs]
    if not outputs:
        return np.zeros((0,))
    stacked = np.concatenate(outputs)
    logits = np.empty_like(stacked)
    logits[order] = stacked   # back to the features' order
    return logits
