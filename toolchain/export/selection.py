"""Which variant to serve: every variant scored on dev and test as served, judged by the accuracy gate,
calibrated, timed, and the passing variant that serves the most chosen (or the pinned one checked)."""
from __future__ import annotations

import os
import time

import numpy as np

from toolchain.export.accuracy_gate import AccuracyGateError
from toolchain.export.job import ExportJob, served_model, served_texts, torch_logits, variant_logits


def evaluate_variants(job: ExportJob) -> dict:
    """Score every variant on dev/test as served, judge each by the accuracy gate, calibrate, time, choose the serve
    variant; the report is written to report.json (also when no variant passes, so a failed dir explains itself)."""
    from toolchain.export.report import write_report
    from toolchain.export.scoring import headline_metric

    rows, gold = score_variants(job)
    metric = headline_metric(job.task, job.cfg.accuracy_gate.metric, rows["pytorch"]["test"])
    report = base_report(job, rows, metric)
    report["gates"] = accuracy_gate_verdicts(job, rows, metric, gold)   # report key: "gates"
    if job.cfg.calibrate and job.task.name == "sequence-classification":
        report["calibration"] = calibrate_variants(job)
    report["latency"], report["latency_conditions"] = measure_latency(job)
    print_variant_table(report, metric)
    try:
        select_serve_variant(job, report)
    finally:
        write_report(report, metric, job.out)
    print_selection(job, report)
    return report


def score_variants(job: ExportJob) -> tuple[dict, np.ndarray]:
    """Per variant (and fp32 PyTorch): dev and test metrics as served, and its size; with the test gold ids."""
    from toolchain.export.scoring import gold_ids, score

    run, task, rows = job.run, job.task, {}
    for split in ("dev", "test"):  # test last: its gold labels are the accuracy gate's
        gold = gold_ids(task, getattr(job.splits, split), run.labels, job.tokenizer, run.max_length)
        reference = torch_logits(job, "pytorch", split)
        rows.setdefault("pytorch", {})[split] = score(task, reference, gold, run.labels, None)
        for name in job.variants:
            rows.setdefault(name, {})[split] = score(task, variant_logits(job, name, split), gold, run.labels,
                                                     reference)
    rows["pytorch"]["bytes"] = sum(f.stat().st_size for f in (job.out / "merged").glob("*.safetensors"))
    for name, (rel_dir, file_name) in job.variants.items():
        rows[name]["bytes"] = (job.out / rel_dir / file_name).stat().st_size
    return rows, gold


def print_variant_table(report: dict, metric: str) -> None:
    from toolchain.export.report import cpu_line, summary, variant_table

    report["summary"] = summary(report, metric)
    print(cpu_line(report["cpu"]))
    print(variant_table(report, metric))
    c = report["latency_conditions"]
    print(f"timing: {c['rounds']} interleaved rounds (at most {c['max_rounds']}, time budget {c['time_budget_s']:g} s) "
          f"took {c['seconds']:.0f} s on {c['threads']} thread(s)", flush=True)


def select_serve_variant(job: ExportJob, report: dict) -> None:
    """The chosen variant, its accuracy-gate verdict and the worker layout measured for it, into the report."""
    report["selection"] = choose_serve_variant(job, report["gates"])
    job.serve_variant = report["serve_variant"] = report["selection"]["variant"]
    report["gate"] = report["gates"][job.serve_variant]
    report["layout"] = measure_layout(job)


def print_selection(job: ExportJob, report: dict) -> None:
    from toolchain.export.report import selection_lines

    print("\n".join(selection_lines(report)), flush=True)
    for head, c in report.get("calibration", {}).get(job.serve_variant, {}).items():
        print(f"calibration ({job.serve_variant}, {head} head): temperature {c['temperature']:.3f} fitted on dev "
              f"({c['objective']}); test ECE {c['test_ece_before']:.4f} -> {c['test_ece_after']:.4f}", flush=True)


def calibrate_variants(job: ExportJob) -> dict:
    """Temperature per head fitted on each variant's own dev logits, with test ECE before/after
    (toolchain.export.calibration); the manifest stores the temperatures for the service."""
    from toolchain.export.calibration import calibrate_logits, temperatures
    from toolchain.export.scoring import gold_ids

    run = job.run
    gold = {split: gold_ids(job.task, getattr(job.splits, split), run.labels, job.tokenizer, run.max_length)
            for split in ("dev", "test")}
    objective = job.cfg.calibrate_objective
    calibration = {"pytorch": calibrate_logits(run.labels, (torch_logits(job, "pytorch", "dev"), gold["dev"]),
                                               (torch_logits(job, "pytorch", "test"), gold["test"]), objective)}
    for name in job.variants:
        calibration[name] = calibrate_logits(run.labels, (variant_logits(job, name, "dev"), gold["dev"]),
                                             (variant_logits(job, name, "test"), gold["test"]), objective)
    job.extra["calibration"] = temperatures(calibration)
    return calibration


def accuracy_gate_verdicts(job: ExportJob, rows: dict, metric: str, gold: np.ndarray) -> dict:
    """The accuracy gate's verdict on every ONNX variant (test split, paired with fp32 PyTorch)."""
    from toolchain.export.accuracy_gate import AccuracyGateCriteria, judge_variant

    g = job.cfg.accuracy_gate
    criteria = AccuracyGateCriteria(metric, g.max_drop, g.alpha, g.min_agreement, g.bootstrap_resamples)
    reference = torch_logits(job, "pytorch", "test")
    return {name: judge_variant(name, job.task, reference, variant_logits(job, name, "test"), gold, job.run.labels,
                                rows[name]["test"]["agreement"], criteria)
            for name in job.variants}


def choose_serve_variant(job: ExportJob, verdicts: dict) -> dict:
    """The pinned variant if it passes; on auto, the passing variant with the highest served throughput."""
    from toolchain.export.accuracy_gate import accuracy_gate_error, closest_failure
    from toolchain.core.measure import served_rates

    pinned = job.cfg.serve_variant
    if pinned != "auto":
        if not verdicts[pinned]["passed"]:
            raise accuracy_gate_error(verdicts[pinned])
        return {"mode": "pinned", "variant": pinned,
                "why": f"serve_variant={pinned} (pinned); it passed the accuracy gate"}
    passing = [name for name, verdict in verdicts.items() if verdict["passed"]]
    if not passing:
        raise AccuracyGateError(closest_failure(verdicts))
    texts, started = rank_sample(job), time.perf_counter()
    # every variant is timed (the report shows what each would serve here); only passing ones are ranked
    rates = served_rates({name: served_model(job, name) for name in verdicts}, texts, (1, 32), job.cfg.rank_rounds)
    seconds = round(time.perf_counter() - started, 1)
    ranked = sorted(passing, key=lambda name: -rates[name][32]["texts_per_s"])
    best = ranked[0]
    failed = {name: verdict["problems"] for name, verdict in verdicts.items() if not verdict["passed"]}
    others = ", ".join(f"{name} {rates[name][32]['texts_per_s']:.0f}" for name in ranked[1:])
    why = (f"{best} passed the accuracy gate and serves the most: {rates[best][32]['texts_per_s']:.0f} texts/s in "
           f"32-text calls on {job.cfg.serve_threads} thread(s) (others passing: {others or 'none'}"
           + (f"; failed the accuracy gate: {', '.join(failed)}" if failed else "") + ")")
    return {"mode": "auto", "variant": best, "ranked": ranked, "failed": failed, "why": why,
            "criterion": "texts/s of the serving runtime at 32 texts per call (what the adaptive batcher forms "
                         "under load), per worker thread",
            "sample": {"texts": len(texts), "of": len(job.splits.test), "rounds": job.cfg.rank_rounds,
                       "how": "seeded sample of the test texts (rank_texts)", "seconds": seconds},
            "served": {name: {str(bs): stats for bs, stats in per_bs.items()} for name, per_bs in rates.items()}}


def measure_layout(job: ExportJob) -> dict:
    """The served variant's batch-1 latency and 32-text rate on 1 thread and on every core: whether more
    threads per worker pay (they rarely do for a small encoder), for the service's worker layout."""
    from toolchain.core.measure import served_rates
    from toolchain.core.hardware import available_cpus

    cpus = available_cpus()
    models = {"1": served_model(job, job.serve_variant, 1)}
    if cpus > 1:
        models[str(cpus)] = served_model(job, job.serve_variant, cpus)
    texts, started = rank_sample(job)[:64], time.perf_counter()
    rates = served_rates(models, texts, (1, 32), job.cfg.rank_rounds)
    seconds = round(time.perf_counter() - started, 1)
    return {"variant": job.serve_variant, "cpus": cpus, "call_pattern": models["1"].call_pattern,
            "texts": len(texts), "seconds": seconds, "by_threads": {threads: {"b1_ms": per_bs[1]["median_ms_per_request"],
                                                          "b32_texts_per_s": per_bs[32]["texts_per_s"]}
                                                for threads, per_bs in rates.items()}}


def base_report(job: ExportJob, rows: dict, metric: str) -> dict:
    return {"run": str(job.run.path), "task": job.run.task, "metric": metric, "serve_variant": job.cfg.serve_variant,
            "cpu": cpu_section(job), "parity": job.parity, **job.extra, "variants": rows,
            "batch_sizes": job.cfg.latency_batch_sizes(), "gate": None}


def cpu_section(job: ExportJob) -> dict:
    from toolchain.export.quantize import reduce_range

    section = {**job.cpu.summary(), "preset": job.preset, "threads": job.cfg.latency.threads or os.cpu_count()}
    if job.preset:
        section["reduce_range"] = reduce_range(job.cfg.quantize, job.cpu, job.preset)
        section["weights"] = "uint8" if job.preset == "avx2" else "int8"
    return section


def measure_latency(job: ExportJob) -> tuple[dict, dict]:
    """Median/p95 per variant and batch size, all variants interleaved in the same rounds."""
    import torch

    from toolchain.core.measure import measure_interleaved, onnx_runner, onnx_session, text_batches, torch_runner

    cfg = job.cfg.latency
    threads = cfg.threads or os.cpu_count()
    torch.set_num_threads(threads)
    runners = {"pytorch": torch_runner(job.model)} if cfg.pytorch else {}
    for name, (rel_dir, file_name) in job.variants.items():
        runners[name] = onnx_runner(onnx_session(job.out / rel_dir / file_name, threads))
    load_before = os.getloadavg()[0]
    texts = [ex.text for ex in job.splits.test]
    inputs = {bs: text_batches(job.tokenizer, texts, bs, min(cfg.rounds, 16), job.run.max_length)
              for bs in job.cfg.latency_batch_sizes()}
    started = time.perf_counter()
    results = measure_interleaved(runners, inputs, cfg.rounds, cfg.warmup, progress=True,
                                  time_budget=cfg.time_budget, min_rounds=cfg.min_rounds)
    rounds_run = min(stats["calls"] for per_bs in results.values() for stats in per_bs.values())
    conditions = {"threads": threads, "rounds": rounds_run, "max_rounds": cfg.rounds, "time_budget_s": cfg.time_budget,
                  "seconds": round(time.perf_counter() - started, 1), "interleaved": True, "ort_spinning": False,
                  "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    return {name: {str(bs): stats for bs, stats in per_bs.items()} for name, per_bs in results.items()}, conditions


def rank_sample(job: ExportJob) -> list[str]:
    """The test texts the throughput ranking and the layout measurement time: a seeded sample of
    ``rank_texts`` (all when 0 or fewer exist), so a large model's export spends minutes, not a quarter of an
    hour, on timing; the accuracy gate scores every test text regardless."""
    texts = served_texts(job.task, job.splits.test)
    if not job.cfg.rank_texts or len(texts) <= job.cfg.rank_texts:
        return texts
    picked = np.random.default_rng(13).choice(len(texts), job.cfg.rank_texts, replace=False)
    return [texts[i] for i in sorted(picked)]
