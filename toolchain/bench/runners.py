"""Text-in, labels-out runners for the variants of an export dir, as a user would call them.

Every runner takes a batch ``{"texts": [...], "max_length": N}`` and includes tokenization, so the
PyTorch reference (the plain ``transformers`` text-classification pipeline, what a user would run
instead of this toolchain) and the ONNX variants (the same fast tokenizer + ONNX Runtime + softmax)
do the same work end to end. Threads: all usable cores for both; idle ONNX Runtime threads sleep
rather than spin, so variants timed in one process do not steal each other's cores.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from toolchain.core.measure import Runner, onnx_runner

INJECT_DELAY_ENV = "TOOLCHAIN_BENCH_INJECT_DELAY_MS"
PYTORCH = "pytorch"


def pipeline_runner(model_dir: Path, threads: int) -> Runner:
    """The plain transformers pipeline on the merged fp32 model (CPU)."""
    import torch
    from transformers import pipeline

    torch.set_num_threads(threads)
    classify = pipeline("text-classification", model=str(model_dir), device=-1)

    def run(batch: dict):
        return classify(batch["texts"], batch_size=len(batch["texts"]), truncation=True,
                        max_length=batch["max_length"])
    return run


def ort_session(model_file: Path, threads: int):
    """A CPU session with ``threads`` intra-op threads that sleep when idle (no spinning)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])


def onnx_text_runner(model_file: Path, tokenizer, threads: int) -> Runner:
    """Tokenizer + ONNX Runtime session + softmax/argmax, as the service computes a prediction."""
    session = ort_session(model_file, threads)
    model = onnx_runner(session)

    def run(batch: dict):
        encoded = tokenizer(batch["texts"], padding=True, truncation=True, max_length=batch["max_length"],
                            return_tensors="np")
        logits = model({k: v.astype(np.int64) for k, v in encoded.items()})[0]
        scores = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return (scores / scores.sum(axis=-1, keepdims=True)).argmax(axis=-1)
    return run


def injected_delay(environ=None) -> tuple[str, float] | None:
    """Test hook for the latency check: ``TOOLCHAIN_BENCH_INJECT_DELAY_MS=MS`` (or ``VARIANT=MS``) adds
    MS milliseconds of sleep to every call of that variant (default int8). Read by nothing else."""
    value = (environ if environ is not None else os.environ).get(INJECT_DELAY_ENV, "").strip()
    if not value:
        return None
    variant, _, ms = value.rpartition("=")
    try:
        return variant or "int8", float(ms)
    except ValueError:
        raise ValueError(f"{INJECT_DELAY_ENV}={value!r}: expected milliseconds, e.g. 20 or int8=20") from None


def with_delay(runner: Runner, ms: float) -> Runner:
    def run(batch: dict):
        time.sleep(ms / 1000)
        return runner(batch)
    return run


def export_runners(export, variants: list[str], threads: int) -> dict[str, Runner]:
    """Runners for ``variants`` of an ExportInfo ('pytorch' = the pipeline on merged/)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export.tokenizer_dir)
    runners = {}
    for name in variants:
        if name == PYTORCH:
            runners[name] = pipeline_runner(export.path / "merged", threads)
        else:
            runners[name] = onnx_text_runner(export.variant_file(name), tokenizer, threads)
    delay = injected_delay()
    if delay and delay[0] in runners:
        print(f"note: {INJECT_DELAY_ENV} adds {delay[1]:g} ms to every call of variant {delay[0]} (test hook)")
        runners[delay[0]] = with_delay(runners[delay[0]], delay[1])
    return runners
