"""Benchmark-side timing of a finished export dir (the measuring primitives live in toolchain.core.measure)."""
from __future__ import annotations

from toolchain.core.measure import (Runner, measure_interleaved, onnx_runner, onnx_session, summarize,  # noqa: F401
                               text_batches, torch_runner)


def measure_export_dir(export_dir, variants: list[str] | None = None, batch_sizes=(1, 32), rounds: int = 30,
                       threads: int = 0, pytorch: bool = True, warmup: int = 3) -> dict:
    """Time the variants of a finished export dir (and its merged PyTorch model) on its test texts.

    Returns ``{"latency": {variant: {batch_size: stats}}, "conditions": {...}}``.
    """
    import os

    import torch
    from transformers import AutoTokenizer

    from toolchain.core.artifacts import load_export, load_run
    from toolchain.export.scoring import load_run_splits, run_task

    info = load_export(export_dir)
    threads = threads or os.cpu_count()
    torch.set_num_threads(threads)
    runners = {}
    if pytorch:
        model = run_task(load_run(info.manifest["run_dir"])).auto_model_class().from_pretrained(
            info.path / "merged", use_safetensors=True).eval()
        runners["pytorch"] = torch_runner(model)
    for name in variants or info.variant_names():
        runners[name] = onnx_runner(onnx_session(info.variant_file(name), threads))
    texts = [ex.text for ex in load_run_splits(load_run(info.manifest["run_dir"])).test]
    tokenizer = AutoTokenizer.from_pretrained(info.tokenizer_dir)
    inputs = {bs: text_batches(tokenizer, texts, bs, min(rounds, 16), info.max_length) for bs in batch_sizes}
    load_before = os.getloadavg()[0]
    results = measure_interleaved(runners, inputs, rounds, warmup, progress=True)
    conditions = {"threads": threads, "rounds": rounds, "interleaved": True, "ort_spinning": False,
                  "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    return {"latency": {n: {str(b): s for b, s in r.items()} for n, r in results.items()}, "conditions": conditions}
