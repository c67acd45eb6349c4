"""How long an export spends timing its variants, before and after the bounded sample, on one export dir.

    python benchmarks/export_timing.py EXPORT_DIR [--json OUT.json]

Runs, in one process on the same machine state, the export's two timing phases both ways:
- latency: interleaved rounds of every variant (and fp32 PyTorch) at batch 1 and 32: the former fixed
  30 rounds, and the bounded form (at most 30 rounds, stopped after `latency.time_budget` seconds once
  `latency.min_rounds` are done);
- ranking: served throughput of every variant through the serving runtime at 1 and 32 texts per call, on every
  test text (former) and on the seeded `rank_texts` sample (bounded).
It prints the seconds of each phase and the rounds/texts used; the accuracy gate (every test text) is not part
of either and is not re-run.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def timing_inputs(export):
    """Runners (PyTorch merged + every ONNX variant), tokenized batches and the test texts of an export dir."""
    import torch

    from toolchain.core.config import DataConfig, expand_data_path, from_dict
    from toolchain.core.measure import onnx_runner, onnx_session, text_batches, torch_runner
    from toolchain.data.dataset import read_file
    from toolchain.inference.modeling import load_tokenizer
    from toolchain.tasks import get_task

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    task = get_task(export.task, export.labels)
    model = task.auto_model_class().from_pretrained(export.path / "merged", use_safetensors=True).eval()
    runners = {"pytorch": torch_runner(model)}
    for name in export.manifest["variants"]:
        runners[name] = onnx_runner(onnx_session(export.variant_file(name), threads))
    data = export.manifest["config"]["run"]["data"]
    texts = [ex.text for ex in read_file(from_dict(DataConfig, data), expand_data_path(data["test"]))]
    tokenizer = load_tokenizer(str(export.path / "tokenizer"))
    inputs = {bs: text_batches(tokenizer, texts, bs, 16, export.max_length) for bs in (1, 32)}
    return runners, inputs, texts


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    from toolchain.core.artifacts import load_export
    from toolchain.core.measure import measure_interleaved, served_rates
    from toolchain.export.config import ExportConfig
    from toolchain.inference.runtime import OnnxModel

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    export = load_export(args.export_dir)
    defaults = ExportConfig()
    runners, inputs, texts = timing_inputs(export)
    served = {name: OnnxModel(export, name, provider="cpu", threads=1) for name in export.manifest["variants"]}
    sample = texts
    if defaults.rank_texts and len(texts) > defaults.rank_texts:
        import numpy as np
        picked = np.random.default_rng(13).choice(len(texts), defaults.rank_texts, replace=False)
        sample = [texts[i] for i in sorted(picked)]
    rows = {}
    rows["latency, fixed 30 rounds (before)"] = timed(lambda: measure_interleaved(runners, inputs, 30, 3))
    rows["latency, time budget (after)"] = timed(lambda: measure_interleaved(
        runners, inputs, defaults.latency.rounds, 3, time_budget=defaults.latency.time_budget,
        min_rounds=defaults.latency.min_rounds))
    rows[f"ranking, all {len(texts)} test texts (before)"] = timed(lambda: served_rates(served, texts, (1, 32), 3))
    rows[f"ranking, {len(sample)}-text sample (after)"] = timed(lambda: served_rates(served, sample, (1, 32), 3))
    figures = {}
    for phase, (seconds, result) in rows.items():
        rounds = min(s.get("calls", s.get("rounds", 0)) for per_bs in result.values() for s in per_bs.values())
        figures[phase] = {"seconds": round(seconds, 1), "rounds": rounds}
        print(f"{phase:45s} {seconds:7.1f} s   ({rounds} rounds)")
    before = sum(v["seconds"] for k, v in figures.items() if "before" in k)
    after = sum(v["seconds"] for k, v in figures.items() if "after" in k)
    print(f"timing phases: {before:.0f} s before, {after:.0f} s after ({export.path.name}, "
          f"{len(runners)} runners, {os.cpu_count()} CPUs)")
    if args.json:
        Path(args.json).write_text(json.dumps({"export": str(export.path), "phases": figures, "before_s": before,
                                               "after_s": after}, indent=2) + "\n")


if __name__ == "__main__":
    main()
