"""One export in progress: what the variant builders share, and every variant's logits as the service computes
them (its runtime, tokenizer, truncation and call pattern), cached per (variant, split)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolchain.core.artifacts import RunInfo
from toolchain.export.config import ExportConfig


INT8_VARIANTS = ("int8", "int8-static", "pruned-int8")


CALIBRATION_SEED = 13  # static int8 calibrates on the first N training examples of this seeded shuffle


@dataclass
class ExportJob:
    """Everything the variant builders share while one export dir is being written."""
    run: RunInfo
    task: object
    cfg: ExportConfig
    out: Path
    cpu: object
    preset: str | None
    splits: object = None
    tokenizer: object = None
    model: object = None              # merged fp32 PyTorch model (the reference)
    pruned_model: object = None
    variants: dict = field(default_factory=dict)   # name -> (dir relative to out, file name)
    parity: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)      # manifest/report sections (merge, pruning)
    logits: dict = field(default_factory=dict)     # (model or variant, split) -> logits
    serve_variant: str | None = None               # chosen by the accuracy gate and the throughput ranking
    served: dict = field(default_factory=dict)     # (variant, threads) -> serving-runtime model, loaded once

    def onnx_dir(self, name: str) -> Path:
        return self.out / "onnx" / name


def default_output_dir(run: RunInfo) -> Path:
    return Path("exports") / run.path.name


def parity_diff(job: ExportJob, torch_key: str, name: str) -> float:
    """Max abs logit difference between a variant's ONNX graph and its PyTorch model on dev (token tasks:
    at the real tokens of each row; padding positions carry no prediction)."""
    served, reference = variant_logits(job, name, "dev"), torch_logits(job, torch_key, "dev")
    if served.ndim == 3:
        width = min(served.shape[1], reference.shape[1])
        mask = real_tokens(job, "dev")[:, :width]
        return float(np.max(np.abs(served[:, :width][mask] - reference[:, :width][mask])))
    return float(np.max(np.abs(served - reference)))


def real_tokens(job: ExportJob, split: str) -> np.ndarray:
    """(rows, width) True at each encoded row's real tokens (token tasks), as the task encodes the split."""
    features = job.task.encode(getattr(job.splits, split), job.tokenizer, None, job.run.max_length).features
    width = max(len(f["input_ids"]) for f in features)
    return np.array([[i < len(f["input_ids"]) for i in range(width)] for f in features])


def torch_logits(job: ExportJob, key: str, split: str) -> np.ndarray:
    """Logits of the merged ('pytorch') or pruned ('pruned-pytorch') PyTorch model on a split, cached."""
    from toolchain.inference.run_model import predict_logits

    if (key, split) not in job.logits:
        model = job.model if key == "pytorch" else job.pruned_model
        job.logits[key, split] = predict_logits(model, job.tokenizer, job.task, getattr(job.splits, split),
                                                job.run.max_length, job.cfg.eval_batch_size)
    return job.logits[key, split]


def variant_logits(job: ExportJob, name: str, split: str) -> np.ndarray:
    """Logits of an ONNX variant on a split, computed as the service computes them (cached): its runtime,
    tokenizer, truncation, threads and call pattern (toolchain.inference.runtime)."""
    if (name, split) not in job.logits:
        examples = getattr(job.splits, split)
        job.logits[name, split] = served_logits(served_model(job, name), job.task, examples, job.tokenizer,
                                                job.run.max_length)
    return job.logits[name, split]


def served_model(job: ExportJob, name: str, threads: int | None = None):
    """The serving runtime's model for a variant of the export being built (one session per variant and
    thread count, shared by scoring, ranking and the layout measurement)."""
    from toolchain.inference.runtime import OnnxModel

    threads = threads or job.cfg.serve_threads
    if (name, threads) not in job.served:
        rel_dir, file_name = job.variants[name]
        job.served[name, threads] = OnnxModel.from_files(job.out / rel_dir / file_name, job.out / "tokenizer",
                                                         job.run.max_length, job.run.labels, name, threads=threads)
    return job.served[name, threads]


def served_logits(model, task, examples, tokenizer, max_length: int) -> np.ndarray:
    """Sequence tasks: the service's own ``infer`` on the texts. Token tasks: the task's windows (as the
    gold labels are laid out), run through the runtime's call pattern; rows padded to a common width."""
    from toolchain.inference.runtime import Features

    if task.name != "token-classification":
        return np.stack(model.infer([ex.text for ex in examples]).logits)
    features = task.encode(examples, tokenizer, None, max_length).features
    rows, _ = model.run_encoded([Features(f) for f in features])
    width = max(r.shape[0] for r in rows)
    return np.stack([np.pad(r, ((0, width - r.shape[0]), (0, 0))) for r in rows])


def served_texts(task, examples) -> list[str]:
    return [" ".join(ex.text) if isinstance(ex.text, list) else ex.text for ex in examples]
