"""The latency check's model, built from scratch in a minute or two so that CI needs no pre-built export.

The packaged MiniLM gets a classification head trained for a single optimizer step on the latency
check's own sentences (toolchain.bench.workloads.LATENCY_CHECK_SENTENCES): the head is as good as random, which does
not matter for latency ratios (the arithmetic is the same whatever the weights). It then goes through
the real `toolchain export` pipeline with the shipped export-default preset, restricted to the fp32
and dynamic int8 variants, so a change to export or quantization settings shows up in the latency check.
The export's accuracy gate is switched off (an untrained head has no accuracy to protect).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

PACKAGED_BASE = "packaged:all-MiniLM-L6-v2"
EXPORT_OVERRIDES = ["variants=fp32,int8", "serve_variant=int8", "accuracy_gate.min_agreement=0",
                    "accuracy_gate.max_drop=100",
                    "latency.rounds=1", "latency.warmup=0", "latency.batch_sizes=1", "latency.pytorch=false"]


def write_check_data(folder: Path) -> dict[str, Path]:
    """train: every latency-check sentence; dev and test: halves of them (each holds all three labels)."""
    from toolchain.bench.workloads import LATENCY_CHECK_SENTENCES

    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"text": text, "label": label} for text, label in LATENCY_CHECK_SENTENCES]
    half = len(rows) // 2
    paths = {}
    for split, part in (("train", rows), ("dev", rows[:half]), ("test", rows[half:])):
        paths[split] = folder / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    return paths


def train_overrides(data: dict[str, Path], run_dir: Path, base: str) -> list[str]:
    return [f"model.base={base}", f"data.train={data['train']}", f"data.dev={data['dev']}",
            f"data.test={data['test']}", f"output_dir={run_dir}", "train.max_steps=1", "train.eval_steps=1",
            "train.save_total_limit=1", "train.early_stopping_patience=0", "train.batch_size=8"]


def build_quick_export(work_dir: Path, base: str = PACKAGED_BASE) -> Path:
    """Train (one step, head only) and export fp32 + int8 under ``work_dir``; returns the export dir."""
    from toolchain.core.config import load_config
    from toolchain.export.config import load_export_config
    from toolchain.export.pipeline import export
    from toolchain.train.runner import train

    quiet = {name: logging.getLogger(name).level for name in ("", "onnxruntime", "optimum", "transformers")}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        data = write_check_data(work_dir / "data")
        run_dir = train(load_config("sentiment-head", train_overrides(data, work_dir / "run", base)), overwrite=True)
        return export(run_dir, work_dir / "export", load_export_config("export-default", EXPORT_OVERRIDES))
    finally:
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)
