"""Offline inference benchmark of an export dir: every variant against the plain transformers pipeline.

Workloads: the real PhraseBank test sentences (their own length distribution) and fixed lengths
32/64/128 tokens; batch sizes 1, 8, 32. For each workload and batch size all variants are timed in
the same interleaved rounds (toolchain.bench.latency), so machine drift does not bias their ratios.
Each cell: median/p95/p99 latency per call, sentences/s, and the fraction of the machine's peak
arithmetic rate the variant achieved (toolchain.bench.machine, toolchain.bench.flops).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from toolchain.bench.runners import PYTORCH

VARIANT_ORDER = (PYTORCH, "fp32", "optimized", "int8", "int8-static", "pruned", "pruned-int8")
INT8_VARIANTS = ("int8", "int8-static", "pruned-int8")
BATCH_SIZES = (1, 8, 32)
FIXED_LENGTHS = (32, 64, 128)
ROUNDS = {1: 100, 8: 40, 32: 20}   # interleaved rounds per batch size (a p99 needs many calls: see calls)


def rounds_for(batch_size: int, scale: float) -> int:
    base = ROUNDS.get(batch_size, max(10, 600 // batch_size))
    return max(3, round(base * scale))


def variant_facts(export, variants: list[str], metric: str) -> dict:
    """Size and task metric of each variant, as the export stage measured them (report.json)."""
    import json

    report = json.loads((export.path / "report.json").read_text())
    facts = {}
    for name in variants:
        row = report["variants"].get(name, {})
        test = row.get("test", {})
        facts[name] = {"bytes": row.get("bytes"), "test_metric": test.get(metric),
                       "test_macro_f1": test.get("macro_f1"), "test_agreement": test.get("agreement"),
                       "precision": "int8" if name in INT8_VARIANTS else "fp32"}
    return facts


def build_workloads(export, data_root: Path | None) -> list:
    from transformers import AutoTokenizer

    from toolchain.bench.workloads import fixed_length_workload, read_real_sentences, real_workload

    tokenizer = AutoTokenizer.from_pretrained(export.tokenizer_dir)
    sentences = read_real_sentences(data_root)
    workloads = [real_workload("phrasebank-test", tokenizer, sentences, export.max_length)]
    workloads += [fixed_length_workload(tokenizer, sentences, n) for n in FIXED_LENGTHS if n <= export.max_length]
    return workloads


def time_workload(runners: dict, workload, batch_sizes: list[int], scale: float, threads: int,
                  progress: bool) -> dict:
    """{variant: {batch size: stats}} for one workload, every batch size its own interleaved rounds.

    ``cpu_share``: CPU seconds this process got per wall second and thread while timing (1.0 on an
    idle machine; less when other jobs compete for the cores)."""
    from toolchain.core.measure import measure_interleaved
    from toolchain.bench.workloads import sentence_batches

    results: dict = {name: {} for name in runners}
    for bs in batch_sizes:
        rounds = rounds_for(bs, scale)
        if progress:
            print(f"{workload.name}: batch {bs}, {rounds} interleaved rounds of {len(runners)} variants", flush=True)
        batches = {bs: sentence_batches(workload, bs, rounds, seed=bs)}
        cpu, wall = time.process_time(), time.perf_counter()
        timed = measure_interleaved(runners, batches, rounds, warmup=2, seed=bs)
        share = (time.process_time() - cpu) / (time.perf_counter() - wall) / threads
        for name, per_bs in timed.items():
            stats = per_bs[bs]
            stats["sentences_per_s"] = 1000.0 * bs / stats["median_ms"]
            stats["cpu_share"] = share
            results[name][str(bs)] = stats
    return results


def add_efficiency(latency: dict, facts: dict, flops: dict, peaks: dict) -> None:
    """Achieved FLOP/s (useful FLOPs of the real tokens x sentences/s) as a fraction of the peak rate, per
    wall second and per CPU second actually received (the machine is shared)."""
    for name, per_bs in latency.items():
        peak = peaks["int8_ops"] if facts[name]["precision"] == "int8" else peaks["fp32_flops"]
        for stats in per_bs.values():
            achieved = flops[name] * stats["sentences_per_s"]
            stats["achieved_gflops"] = achieved / 1e9
            stats["peak_fraction"] = achieved / peak
            stats["peak_fraction_per_cpu_second"] = achieved / peak / max(stats["cpu_share"], 1e-9)


def workload_flops(export, variants: list[str], workload) -> dict:
    from toolchain.bench.flops import export_shape, mean_flops

    return {name: mean_flops(export_shape(export.path, name), workload.token_counts) for name in variants}


def workload_summary(workload) -> dict:
    import numpy as np

    counts = np.asarray(workload.token_counts)
    return {"texts": len(workload.texts), "max_length": workload.max_length, "tokens_mean": float(counts.mean()),
            "tokens_p50": float(np.median(counts)), "tokens_p95": float(np.percentile(counts, 95)),
            "tokens_max": int(counts.max())}


def run_offline(export_dir: Path, data_root: Path | None, batch_sizes=BATCH_SIZES, scale: float = 1.0,
                threads: int = 0, progress: bool = True) -> dict:
    """The whole offline benchmark of one export dir; returns the results document."""
    from toolchain.core.artifacts import load_export
    from toolchain.bench.machine import detect_machine, peak_rates
    from toolchain.bench.runners import export_runners

    export = load_export(export_dir)
    machine = detect_machine()
    threads = threads or max(1, int(machine.cores))
    variants = [v for v in VARIANT_ORDER if v == PYTORCH or v in export.variant_names()]
    metric = export.manifest.get("metric") or "accuracy"
    facts, peaks = variant_facts(export, variants, metric), peak_rates(machine, threads)
    runners = export_runners(export, variants, threads)
    load_before, started = os.getloadavg(), time.time()
    latency, flops, workloads = {}, {}, {}
    for workload in build_workloads(export, data_root):
        latency[workload.name] = time_workload(runners, workload, list(batch_sizes), scale, threads, progress)
        flops[workload.name] = workload_flops(export, variants, workload)
        add_efficiency(latency[workload.name], facts, flops[workload.name], peaks)
        workloads[workload.name] = workload_summary(workload)
    conditions = {"threads": threads, "interleaved": True, "ort_spinning": False, "tokenization_included": True,
                  "rounds": {str(bs): rounds_for(bs, scale) for bs in batch_sizes},
                  "load_average_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
                  "wall_seconds": round(time.time() - started, 1)}
    return {"export_dir": str(export.path), "metric": metric, "variants": facts, "workloads": workloads,
            "flops_per_sentence": flops, "latency": latency, "machine": machine.to_dict(), "peak": peaks,
            "conditions": conditions, "date": time.strftime("%Y-%m-%d %H:%M")}
