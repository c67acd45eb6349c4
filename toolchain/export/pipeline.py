"""`toolchain export`: run dir -> export dir (merged model, ONNX variants, report), gated and atomic.

The export dir is built under a temporary name next to the target and renamed into place only after
every gate passed; a failed gate leaves ``NAME.failed`` (status: failed, not loadable) for inspection.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from toolchain.artifacts import (ARTIFACT_VERSION, INCOMPLETE, MANIFEST, RunInfo, load_run, mark_incomplete,
                                 replace_dir, write_yaml)
from toolchain.config import config_hash, to_dict
from toolchain.export.config import ExportConfig
from toolchain.export.gate import GateError, check_parity

log = logging.getLogger(__name__)
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
    serve_variant: str | None = None               # chosen by the gate and the throughput ranking
    served: dict = field(default_factory=dict)     # (variant, threads) -> serving-runtime model, loaded once

    def onnx_dir(self, name: str) -> Path:
        return self.out / "onnx" / name


def default_output_dir(run: RunInfo) -> Path:
    return Path("exports") / run.path.name


def export(run_dir: str | Path, out_dir: str | Path | None = None, cfg: ExportConfig | None = None) -> Path:
    """Build the export dir for ``run_dir`` and return its final path (see docs/ARTIFACTS.md)."""
    from toolchain.export.cpu import choose_preset, detect_cpu
    from toolchain.export.onnx_export import check_optimize_level
    from toolchain.export.scoring import run_task

    cfg = cfg or ExportConfig()
    run = load_run(run_dir)
    cpu = detect_cpu(cuda=True)
    needs_int8 = any(v in INT8_VARIANTS for v in cfg.variant_list())
    preset = choose_preset(cfg.quantize.isa, cpu) if needs_int8 else None
    if "optimized" in cfg.variant_list():
        check_optimize_level(cfg.optimize.level)
    final = Path(out_dir or cfg.output_dir or default_output_dir(run)).resolve()
    remove_stale_builds(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    mark_incomplete(tmp, "export in progress")
    job = ExportJob(run, run_task(run), cfg, tmp, cpu, preset)
    try:
        report = build(job)
    except GateError as exc:
        keep_failed(job, final, str(exc))
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_yaml(tmp / MANIFEST, manifest(job, report, "complete"))
    (tmp / INCOMPLETE).unlink()
    replace_dir(tmp, final)
    shutil.rmtree(final.with_name(final.name + ".failed"), ignore_errors=True)
    return final


def remove_stale_builds(final: Path) -> None:
    """Delete temporary build dirs of this target left by killed exports (their process is gone)."""
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not Path(f"/proc/{pid}").exists()):
            shutil.rmtree(stale, ignore_errors=True)


def keep_failed(job: ExportJob, final: Path, why: str) -> None:
    """Leave the failed build as NAME.failed (status: failed, INCOMPLETE marker) for inspection."""
    failed = final.with_name(final.name + ".failed")
    write_yaml(job.out / MANIFEST, {**manifest(job, None, "failed"), "failure": why})
    mark_incomplete(job.out, f"gate failed: {why}")
    shutil.rmtree(failed, ignore_errors=True)
    os.replace(job.out, failed)


def build(job: ExportJob) -> dict:
    """Every stage in order; returns the report (also written to report.json)."""
    from toolchain.export.drift_reference import write_drift_references
    from toolchain.export.merge import merge_run
    from toolchain.export.scoring import load_run_splits

    started = time.time()
    job.splits = load_run_splits(job.run)
    merged = merge_run(job.run, job.task, job.splits.dev, job.cfg.gate.merge_atol, job.cfg.eval_batch_size)
    job.model, job.tokenizer = merged.model, merged.tokenizer
    job.extra["merge"] = {"peft": job.run.is_peft, "max_abs_diff": merged.max_abs_diff}
    save_merged(job)
    for name in job.cfg.variant_list():
        log.info("building variant %s", name)
        VARIANT_BUILDERS[name](job)
    report = evaluate_variants(job)
    write_drift_references(job, report)
    report["wall_seconds"] = round(time.time() - started, 1)
    return report


def save_merged(job: ExportJob) -> None:
    job.model.save_pretrained(job.out / "merged", safe_serialization=True)
    job.tokenizer.save_pretrained(job.out / "merged")
    job.tokenizer.save_pretrained(job.out / "tokenizer")


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
    from toolchain.evaluate import predict_logits

    if (key, split) not in job.logits:
        model = job.model if key == "pytorch" else job.pruned_model
        job.logits[key, split] = predict_logits(model, job.tokenizer, job.task, getattr(job.splits, split),
                                                job.run.max_length, job.cfg.eval_batch_size)
    return job.logits[key, split]


def variant_logits(job: ExportJob, name: str, split: str) -> np.ndarray:
    """Logits of an ONNX variant on a split, computed as the service computes them (cached): its runtime,
    tokenizer, truncation, threads and call pattern (toolchain.serve.runtime)."""
    if (name, split) not in job.logits:
        examples = getattr(job.splits, split)
        job.logits[name, split] = served_logits(served_model(job, name), job.task, examples, job.tokenizer,
                                                job.run.max_length)
    return job.logits[name, split]


def served_model(job: ExportJob, name: str, threads: int | None = None):
    """The serving runtime's model for a variant of the export being built (one session per variant and
    thread count, shared by scoring, ranking and the layout measurement)."""
    from toolchain.serve.runtime import OnnxModel

    threads = threads or job.cfg.serve_threads
    if (name, threads) not in job.served:
        rel_dir, file_name = job.variants[name]
        job.served[name, threads] = OnnxModel.from_files(job.out / rel_dir / file_name, job.out / "tokenizer",
                                                         job.run.max_length, job.run.labels, name, threads=threads)
    return job.served[name, threads]


def served_logits(model, task, examples, tokenizer, max_length: int) -> np.ndarray:
    """Sequence tasks: the service's own ``infer`` on the texts. Token tasks: the task's windows (as the
    gold labels are laid out), run through the runtime's call pattern; rows padded to a common width."""
    from toolchain.serve.runtime import Features

    if task.name != "token-classification":
        return np.stack(model.infer([ex.text for ex in examples]).logits)
    features = task.encode(examples, tokenizer, None, max_length).features
    rows, _ = model.run_encoded([Features(f) for f in features])
    width = max(r.shape[0] for r in rows)
    return np.stack([np.pad(r, ((0, width - r.shape[0]), (0, 0))) for r in rows])


def served_texts(task, examples) -> list[str]:
    return [" ".join(ex.text) if isinstance(ex.text, list) else ex.text for ex in examples]


def _register(job: ExportJob, name: str, path: Path) -> None:
    job.variants[name] = (str(path.parent.relative_to(job.out)), path.name)


def build_fp32(job: ExportJob) -> None:
    from toolchain.export.onnx_export import export_onnx

    _register(job, "fp32", export_onnx(job.model, job.onnx_dir("fp32"), job.task, job.cfg.opset))
    diff = parity_diff(job, "pytorch", "fp32")
    job.parity["fp32_vs_pytorch"] = diff
    check_parity("fp32", diff, job.cfg.gate.parity_atol, "ONNX fp32 vs PyTorch")


def build_optimized(job: ExportJob) -> None:
    from toolchain.export.onnx_export import optimize_onnx

    _register(job, "optimized", optimize_onnx(job.onnx_dir("fp32"), job.onnx_dir("optimized"),
                                              job.cfg.optimize.level))
    job.parity["optimized_vs_pytorch"] = parity_diff(job, "pytorch", "optimized")


def quantize_source(job: ExportJob, pruned: bool) -> tuple[Path, str]:
    """The fp32 graph the int8 variants start from. (The ORTOptimizer graph is not used: its fused
    com.microsoft ops defeat the quantizer's shape inference in this ONNX Runtime.)"""
    name = "pruned" if pruned else "fp32"
    return job.onnx_dir(name), job.variants[name][1]


def build_int8(job: ExportJob, name: str = "int8", pruned: bool = False) -> None:
    from toolchain.export.quantize import quantize_dynamic

    source_dir, source_file = quantize_source(job, pruned)
    _register(job, name, quantize_dynamic(source_dir, source_file, job.onnx_dir(name), job.cfg.quantize,
                                          job.preset, job.cpu))


def build_int8_static(job: ExportJob) -> None:
    from toolchain.export.quantize import quantize_static

    rng = np.random.default_rng(CALIBRATION_SEED)
    train = job.splits.train
    picked = [train[i] for i in rng.permutation(len(train))[: job.cfg.quantize.static_samples]]
    features = job.task.encode(picked, job.tokenizer, None, job.run.max_length).features
    source_dir, source_file = quantize_source(job, False)
    _register(job, "int8-static", quantize_static(source_dir, source_file, job.onnx_dir("int8-static"),
                                                  job.cfg.quantize, job.preset, job.cpu, features, job.out))


def build_pruned(job: ExportJob) -> None:
    from toolchain.export.onnx_export import export_onnx
    from toolchain.export.prune import prune_and_recover, save_pruned

    job.pruned_model, job.extra["pruning"] = prune_and_recover(job)
    save_pruned(job.pruned_model, job.extra["pruning"], job.out / "pruned")
    _register(job, "pruned", export_onnx(job.pruned_model, job.onnx_dir("pruned"), job.task, job.cfg.opset))
    diff = parity_diff(job, "pruned-pytorch", "pruned")
    job.parity["pruned_vs_pruned_pytorch"] = diff
    check_parity("pruned", diff, job.cfg.gate.parity_atol, "ONNX pruned vs pruned PyTorch")


VARIANT_BUILDERS = {
    "fp32": build_fp32,
    "optimized": build_optimized,
    "int8": build_int8,
    "int8-static": build_int8_static,
    "pruned": build_pruned,
    "pruned-int8": lambda job: build_int8(job, "pruned-int8", pruned=True),
}


def evaluate_variants(job: ExportJob) -> dict:
    """Score every variant on dev/test as served, gate each, choose the serve variant, time, write the report."""
    from toolchain.export.report import cpu_line, selection_lines, summary, variant_table, write_report
    from toolchain.export.scoring import gold_ids, headline_metric, score

    run, task, cfg = job.run, job.task, job.cfg
    rows = {}
    for split in ("dev", "test"):  # test last: its gold labels are the gate's
        gold = gold_ids(task, getattr(job.splits, split), run.labels, job.tokenizer, run.max_length)
        reference = torch_logits(job, "pytorch", split)
        rows.setdefault("pytorch", {})[split] = score(task, reference, gold, run.labels, None)
        for name in job.variants:
            rows.setdefault(name, {})[split] = score(task, variant_logits(job, name, split), gold, run.labels,
                                                     reference)
    rows["pytorch"]["bytes"] = sum(f.stat().st_size for f in (job.out / "merged").glob("*.safetensors"))
    for name, (rel_dir, file_name) in job.variants.items():
        rows[name]["bytes"] = (job.out / rel_dir / file_name).stat().st_size
    metric = headline_metric(task, cfg.gate.metric, rows["pytorch"]["test"])
    report = base_report(job, rows, metric)
    report["gates"] = gate_variants(job, rows, metric, gold)
    if job.cfg.calibrate and job.task.name == "sequence-classification":
        report["calibration"] = calibrate_variants(job)
    report["latency"], report["latency_conditions"] = measure_latency(job)
    report["summary"] = summary(report, metric)
    print(cpu_line(report["cpu"]))
    print(variant_table(report, metric))
    write_report(report, metric, job.out)  # written before the choice so a failed dir explains itself
    report["selection"] = choose_serve_variant(job, report["gates"])
    job.serve_variant = report["serve_variant"] = report["selection"]["variant"]
    report["gate"] = report["gates"][job.serve_variant]
    report["layout"] = measure_layout(job)
    print("\n".join(selection_lines(report)), flush=True)
    for head, c in report.get("calibration", {}).get(job.serve_variant, {}).items():
        print(f"calibration ({job.serve_variant}, {head} head): temperature {c['temperature']:.3f} fitted on dev "
              f"({c['objective']}); "
              f"test ECE {c['test_ece_before']:.4f} -> {c['test_ece_after']:.4f}", flush=True)
    write_report(report, metric, job.out)
    return report


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


def gate_variants(job: ExportJob, rows: dict, metric: str, gold: np.ndarray) -> dict:
    """The accuracy gate's verdict on every ONNX variant (test split, paired with fp32 PyTorch)."""
    from toolchain.export.gate import GateCriteria, judge_variant

    g = job.cfg.gate
    criteria = GateCriteria(metric, g.max_drop, g.alpha, g.min_agreement, g.bootstrap_resamples)
    reference = torch_logits(job, "pytorch", "test")
    return {name: judge_variant(name, job.task, reference, variant_logits(job, name, "test"), gold, job.run.labels,
                                rows[name]["test"]["agreement"], criteria)
            for name in job.variants}


def choose_serve_variant(job: ExportJob, verdicts: dict) -> dict:
    """The pinned variant if it passes; on auto, the passing variant with the highest served throughput."""
    from toolchain.export.gate import closest_failure, gate_error
    from toolchain.measure import served_rates

    pinned = job.cfg.serve_variant
    if pinned != "auto":
        if not verdicts[pinned]["passed"]:
            raise gate_error(verdicts[pinned])
        return {"mode": "pinned", "variant": pinned, "why": f"serve_variant={pinned} (pinned); it passed the gate"}
    passing = [name for name, verdict in verdicts.items() if verdict["passed"]]
    if not passing:
        raise GateError(closest_failure(verdicts))
    texts = served_texts(job.task, job.splits.test)
    # every variant is timed (the report shows what each would serve here); only passing ones are ranked
    rates = served_rates({name: served_model(job, name) for name in verdicts}, texts, (1, 32), job.cfg.rank_rounds)
    ranked = sorted(passing, key=lambda name: -rates[name][32]["texts_per_s"])
    best = ranked[0]
    failed = {name: verdict["problems"] for name, verdict in verdicts.items() if not verdict["passed"]}
    others = ", ".join(f"{name} {rates[name][32]['texts_per_s']:.0f}" for name in ranked[1:])
    why = (f"{best} passed the gate and serves the most: {rates[best][32]['texts_per_s']:.0f} texts/s in 32-text "
           f"calls on {job.cfg.serve_threads} thread(s) (others passing: {others or 'none'}"
           + (f"; failed the gate: {', '.join(failed)}" if failed else "") + ")")
    return {"mode": "auto", "variant": best, "ranked": ranked, "failed": failed, "why": why,
            "criterion": "texts/s of the serving runtime at 32 texts per call (what the adaptive batcher forms "
                         "under load), per worker thread",
            "served": {name: {str(bs): stats for bs, stats in per_bs.items()} for name, per_bs in rates.items()}}


def measure_layout(job: ExportJob) -> dict:
    """The served variant's batch-1 latency and 32-text rate on 1 thread and on every core: whether more
    threads per worker pay (they rarely do for a small encoder), for the service's worker layout."""
    from toolchain.measure import served_rates
    from toolchain.serve.settings import available_cpus

    cpus = available_cpus()
    models = {"1": served_model(job, job.serve_variant, 1)}
    if cpus > 1:
        models[str(cpus)] = served_model(job, job.serve_variant, cpus)
    texts = served_texts(job.task, job.splits.test)[:64]
    rates = served_rates(models, texts, (1, 32), job.cfg.rank_rounds)
    return {"variant": job.serve_variant, "cpus": cpus, "call_pattern": models["1"].call_pattern,
            "by_threads": {threads: {"b1_ms": per_bs[1]["median_ms_per_request"],
                                     "b32_texts_per_s": per_bs[32]["texts_per_s"]} for threads, per_bs in rates.items()}}


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

    from toolchain.measure import measure_interleaved, onnx_runner, onnx_session, text_batches, torch_runner

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
    results = measure_interleaved(runners, inputs, cfg.rounds, cfg.warmup, progress=True)
    conditions = {"threads": threads, "rounds": cfg.rounds, "interleaved": True, "ort_spinning": False,
                  "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    return {name: {str(bs): stats for bs, stats in per_bs.items()} for name, per_bs in results.items()}, conditions


def manifest(job: ExportJob, report: dict | None, status: str) -> dict:
    """The export dir's toolchain.yaml (docs/ARTIFACTS.md): variants, checksums, configs."""
    from toolchain import __version__
    from toolchain.data.dataset import sha256_file

    variants, files = {}, {}
    for name, (rel_dir, file_name) in job.variants.items():
        path = job.out / rel_dir / file_name
        if path.exists():
            variants[name] = {"dir": rel_dir, "file": file_name, "sha256": sha256_file(path),
                              "bytes": path.stat().st_size}
    for path in sorted(job.out.rglob("*")):
        if path.is_file() and path.suffix in (".onnx", ".safetensors", ".json", ".txt") and path.name != "report.json":
            files[str(path.relative_to(job.out))] = sha256_file(path)
    run = job.run
    return {
        "artifact_version": ARTIFACT_VERSION, "stage": "export", "status": status, "toolchain_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "task": run.task, "labels": run.labels,
        "max_length": run.max_length, "base_model": run.base_model, "run_dir": str(run.path.resolve()),
        "run_config_hash": run.manifest.get("config_hash"), "export_config_hash": config_hash(replace(job.cfg, output_dir=None)),
        "serve_variant": job.serve_variant, "metric": report["metric"] if report else None,
        "cpu": cpu_section(job), "variants": variants, **manifest_extra(job), **lineage_section(run), "files": files,
        "config": {"run": run.config, "export": to_dict(job.cfg)},
    }


def lineage_section(run) -> dict:
    """The run's ancestry (``toolchain update``), nearest first, and whether its update may be promoted."""
    section = {"lineage": run.manifest.get("lineage") or []}
    if "promotable" in run.manifest:
        section["promotable"] = bool(run.manifest["promotable"])
    return section


def manifest_extra(job: ExportJob) -> dict:
    """Sections a reload needs: the pruned model's shape (see toolchain.export.prune.load_pruned)."""
    pruning = job.extra.get("pruning")
    extra = {"pruned": {"dir": "pruned", **pruning}} if pruning else {}
    if "calibration" in job.extra:   # {variant: {head: temperature}}: the service divides the logits by it
        extra["calibration"] = job.extra["calibration"]
    return extra
