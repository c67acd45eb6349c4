"""What the service's drift signals cost per request: served time with and without them, in the same run.

    python benchmarks/drift_signal_cost.py --export-dir EXPORT_DIR [--data TEST.jsonl] [--rounds 600]

Each round serves one text twice, as ``ToolchainService.predict`` serves it (tokenize, model call, response,
metrics), once with the drift observation (toolchain.inference.drift: low-confidence count and the unseen-token
lookup) and once without, which of the two goes first alternating so that each text goes first either way; the medians of both and their ratio, and the
median of the per-round ratios (each round's two requests serve the same text back to back, so this one is less
moved by other jobs on the machine). The drift observation is also timed alone, on one text and on 32. Writes
benchmarks/results/drift_signal_cost.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from toolchain.core.artifacts import load_export  # noqa: E402
from toolchain.core.config import data_root  # noqa: E402
from toolchain.serve import classify  # noqa: E402
from toolchain.inference.drift import drift_monitor  # noqa: E402
from toolchain.serve.metrics import service_metrics  # noqa: E402
from toolchain.inference.runtime import OnnxModel  # noqa: E402

TASK = classify.TASK


def serve_once(model, metrics, monitor, texts: list[str], drift: bool) -> float:
    """Seconds to serve ``texts`` the way the service's predict does, with or without the drift signals."""
    started = time.perf_counter()
    output = classify.infer(model, texts)
    result = classify.results(texts, output.logits, output.encodings, model.labels, output.truncated)
    metrics.observe_model_call(TASK, output.seconds, output.tokens, sum(output.truncated))
    metrics.observe_confidence(TASK, classify.scores(result))
    if drift:
        monitor.observe(classify.scores(result), output.encodings)
    return time.perf_counter() - started


def observe_alone(model, monitor, texts: list[str], rounds: int) -> float:
    """Median seconds of the drift observation alone for one batch of ``texts``."""
    output = model.infer(texts)
    scores = classify.scores(classify.results(texts, output.logits, output.encodings, model.labels,
                                              output.truncated))
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        monitor.observe(scores, output.encodings)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(model, texts: list[str], rounds: int) -> dict:
    metrics = service_metrics()
    monitor = drift_monitor(metrics, model)
    if monitor.reference is None:
        raise SystemExit(f"{model.export.path}: variant {model.variant} has no drift reference; re-export it")
    for text in texts[:20]:   # warm-up
        serve_once(model, metrics, monitor, [text], True)
    timed = {True: [], False: []}
    load_before = os.getloadavg()[0]
    for i in range(rounds):
        text = [texts[i % len(texts)]]
        first = (i + i // len(texts)) % 2 == 1   # each text goes first with and without the signals alike
        for drift in (first, not first):
            timed[drift].append(serve_once(model, metrics, monitor, text, drift))
    with_ms, without_ms = (1000 * statistics.median(timed[d]) for d in (True, False))
    alone_us = {"1": 1e6 * observe_alone(model, monitor, texts[:1], rounds),
                "32": 1e6 * observe_alone(model, monitor, texts[:32], rounds)}
    return {"rounds": rounds, "median_ms_with": with_ms, "median_ms_without": without_ms,
            "ratio_with_vs_without": with_ms / without_ms,
            "median_paired_ratio": statistics.median(w / o for w, o in zip(timed[True], timed[False])),
            "observe_alone_us": alone_us, "observe_alone_vs_served": alone_us["1"] / (1000 * without_ms),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def read_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export-dir", type=Path, required=True)
    p.add_argument("--variant", default=None, help="default: the export's serve_variant")
    p.add_argument("--data", type=Path, default=None, help="JSONL with a text field (default: PhraseBank allagree test)")
    p.add_argument("--rounds", type=int, default=600)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "drift_signal_cost.json")
    args = p.parse_args(argv)
    data = args.data or (data_root() or Path("../shared/data")) / "financial_phrasebank/splits/allagree/test.jsonl"
    if not data.is_file():
        raise SystemExit(f"{data}: no such file; give --data TEST.jsonl")
    export = load_export(args.export_dir)
    model = OnnxModel(export, args.variant or export.serve_variant, "cpu", threads=1)
    result = {"export": str(args.export_dir), "variant": model.variant, "call_pattern": model.call_pattern,
              "threads": 1, "data": str(data), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"),
              **measure(model, read_texts(data), args.rounds)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{model.variant}: served one text in {result['median_ms_with']:.3f} ms with the drift signals, "
          f"{result['median_ms_without']:.3f} ms without (medians of {args.rounds} rounds): "
          f"{result['ratio_with_vs_without']:.3f}x (median per-round ratio {result['median_paired_ratio']:.3f}x); "
          f"the observation alone "
          f"{result['observe_alone_us']['1']:.1f} us for 1 text, {result['observe_alone_us']['32']:.1f} us for 32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
