"""The latency check (`toolchain bench latency-check`): ratios that stay stable on a noisy shared machine,
compared with a baseline.

Absolute milliseconds move with every other job on a shared CI machine; ratios of two things timed
in the same interleaved rounds do not (much). The latency check measures, with repeats:

- offline, end to end (tokenization included), single-threaded: int8 ONNX vs the plain transformers
  pipeline at batch 1 and 32, and int8 vs fp32 ONNX at batch 32 (quantization at work);
- served: the served single-client p50 and server CPU per request vs the same sentence run offline,
  and server throughput at 64 clients with adaptive batching on vs off (toolchain.bench.latency_check_serving).

Each ratio is the median over repeats; it is compared with benchmarks/baseline.json with the
tolerance stated there, in the direction that is a regression (slower latency ratio, lower
throughput ratio).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

BASELINE_FILE = "benchmarks/baseline.json"


@dataclass(frozen=True)
class RatioSpec:
    name: str
    better: str          # "lower" or "higher"
    tolerance: float     # relative: 0.35 = a regression is more than 35% worse than the baseline
    what: str
    portable: bool = False   # holds across CPU families (overhead of the service over the same model)


CROSS_FAMILY_TOLERANCE = 2.0   # a portable ratio judged against another family's baseline: tolerance x this

RATIOS = (
    RatioSpec("int8_vs_pytorch_b1", "lower", 0.35,
              "int8 ONNX / transformers pipeline fp32, median latency at batch 1"),
    RatioSpec("int8_vs_pytorch_b32", "lower", 0.35,
              "int8 ONNX / transformers pipeline fp32, median latency at batch 32"),
    RatioSpec("int8_vs_fp32_b32", "lower", 0.25,
              "int8 ONNX / fp32 ONNX, median latency at batch 32 (quantization at work)"),
    RatioSpec("served_vs_offline_b1", "lower", 0.60,
              "served p50 (1 client, no batching) / offline int8 p50, same sentence", portable=True),
    RatioSpec("served_vs_offline_cpu_b1", "lower", 0.35,
              "server CPU per request (1 client, no batching) / offline int8 CPU per call", portable=True),
    RatioSpec("batched_vs_unbatched_c64", "higher", 0.35,
              "server throughput at 64 clients, adaptive batching on / off", portable=True),
)
SPECS = {spec.name: spec for spec in RATIOS}
OFFLINE_RATIOS = {"int8_vs_pytorch_b1": ("int8", "pytorch", 1), "int8_vs_pytorch_b32": ("int8", "pytorch", 32),
                  "int8_vs_fp32_b32": ("int8", "fp32", 32)}
ROUNDS = {1: 40, 32: 6}


def ratio_entry(values: list[float], figures: dict) -> dict:
    """A measured ratio: median over repeats, the spread, and the figures it came from."""
    return {"value": statistics.median(values), "repeats": [round(v, 4) for v in values],
            "spread": [min(values), max(values)], "figures": figures}


def offline_ratios(export, repeats: int, threads: int = 1, progress: bool = True) -> dict:
    """The offline ratios: the latency check's sentences, all three variants interleaved, ``repeats`` times."""
    from transformers import AutoTokenizer

    from toolchain.core.measure import measure_interleaved
    from toolchain.bench.runners import export_runners
    from toolchain.bench.workloads import LATENCY_CHECK_SENTENCES, real_workload, sentence_batches

    tokenizer = AutoTokenizer.from_pretrained(export.tokenizer_dir)
    workload = real_workload("latency-check", tokenizer, [t for t, _ in LATENCY_CHECK_SENTENCES], export.max_length)
    runners = export_runners(export, ["pytorch", "fp32", "int8"], threads)
    medians: dict = {}
    for r in range(repeats):
        for bs, rounds in ROUNDS.items():
            inputs = {bs: sentence_batches(workload, bs, rounds, seed=100 * r + bs)}
            timed = measure_interleaved(runners, inputs, rounds, warmup=3 if r == 0 else 1, seed=r)
            for name, per_bs in timed.items():
                medians.setdefault((name, bs), []).append(per_bs[bs]["median_ms"])
        if progress:
            print(f"latency check offline repeat {r + 1}/{repeats}: " + ", ".join(
                f"{n} b{bs} {v[-1]:.1f} ms" for (n, bs), v in sorted(medians.items())), flush=True)
    return {name: ratio_entry([a / b for a, b in zip(medians[(num, bs)], medians[(den, bs)])],
                              {f"{num}_b{bs}_ms": statistics.median(medians[(num, bs)]),
                               f"{den}_b{bs}_ms": statistics.median(medians[(den, bs)])})
            for name, (num, den, bs) in OFFLINE_RATIOS.items()}


def limit_for(spec: RatioSpec, baseline: float, tolerance: float) -> float:
    return baseline * (1 + tolerance) if spec.better == "lower" else baseline * (1 - tolerance)


def judge(name: str, measured: dict, baseline: dict | None, other_family: str | None = None) -> dict:
    """One row of the verdict: measured vs baseline within tolerance, in the ratio's bad direction.

    ``other_family`` names the CPU family of a baseline recorded on a different family: then only a
    portable ratio is judged (with a wider tolerance); the others are shown, not judged."""
    spec = SPECS[name]
    if baseline is None or (other_family and not spec.portable):
        why = "new (no baseline)" if baseline is None else f"not judged (CPU-specific; baseline from {other_family})"
        return {"ratio": name, "measured": measured["value"], "baseline": baseline and baseline["value"],
                "tolerance": spec.tolerance, "limit": None, "change": None, "result": why}
    base, tolerance = baseline["value"], baseline.get("tolerance", spec.tolerance)
    if other_family:
        tolerance *= CROSS_FAMILY_TOLERANCE
    limit = limit_for(spec, base, tolerance)
    value = measured["value"]
    regressed = value > limit if spec.better == "lower" else value < limit
    improved = value < base * (1 - tolerance) if spec.better == "lower" else value > base * (1 + tolerance)
    result = "REGRESSION" if regressed else ("pass (improved: update the baseline)" if improved else "pass")
    return {"ratio": name, "measured": value, "baseline": base, "tolerance": tolerance, "limit": limit,
            "change": value / base - 1, "result": result}


def compare(measured: dict, baseline: dict) -> list[dict]:
    other = None if baseline.get("same_family", True) else baseline.get("family", "another CPU family")
    return [judge(name, entry, baseline.get("ratios", {}).get(name), other) for name, entry in measured.items()]


def verdict_table(rows: list[dict]) -> str:
    from toolchain.core.report import format_table

    def pct(x):
        return "-" if x is None else f"{x:+.0%}"
    body = [[r["ratio"], SPECS[r["ratio"]].better, f"{r['measured']:.3f}",
             "-" if r["baseline"] is None else f"{r['baseline']:.3f}", f"±{r['tolerance']:.0%}",
             "-" if r["limit"] is None else f"{r['limit']:.3f}", pct(r["change"]), r["result"]] for r in rows]
    return format_table(["ratio", "better", "measured", "baseline", "tolerance", "limit", "change", "result"], body)


def regression_lines(rows: list[dict], measured: dict) -> list[str]:
    """One line per regressed ratio: what, by how much, and the figures behind it."""
    lines = []
    for row in rows:
        if row["result"] != "REGRESSION":
            continue
        entry, spec = measured[row["ratio"]], SPECS[row["ratio"]]
        figures = ", ".join(f"{k} {v:.2f}" for k, v in entry["figures"].items())
        sign = "+" if spec.better == "lower" else "-"
        lines.append(f"REGRESSION {row['ratio']} ({spec.what}): {row['measured']:.3f} vs baseline "
                     f"{row['baseline']:.3f} ({row['change']:+.0%}; allowed {sign}{row['tolerance']:.0%}); "
                     f"repeats {entry['repeats']}; {figures}")
    return lines
