"""`toolchain export`: run dir -> export dir (merged model, ONNX variants, report), checked and atomic.

The export dir is built under a temporary name next to the target and renamed into place only after
the accuracy gate passed; a failed accuracy gate leaves ``NAME.failed`` (status: failed, not loadable) for
inspection.
An existing target is replaced only when it is an export dir (or an empty folder): anything else (the run
dir, the current folder, a folder of user files) is refused before the export starts.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path


from toolchain.core.artifacts import (ARTIFACT_VERSION, INCOMPLETE, MANIFEST, load_run, mark_incomplete, replace_dir,
                                      write_json, write_yaml)
from toolchain.core.run_dirs import check_export_target
from toolchain.core.config import config_hash, to_dict
from toolchain.export.config import ExportConfig
from toolchain.export.builders import VARIANT_BUILDERS, save_merged
from toolchain.export.accuracy_gate import AccuracyGateError
from toolchain.export.job import INT8_VARIANTS, ExportJob, default_output_dir
from toolchain.export.selection import cpu_section, evaluate_variants

log = logging.getLogger(__name__)


def export(run_dir: str | Path, out_dir: str | Path | None = None, cfg: ExportConfig | None = None) -> Path:
    """Build the export dir for ``run_dir`` and return its final path (see docs/ARTIFACTS.md)."""
    from toolchain.export.cpu import choose_preset, detect_cpu
    from toolchain.export.onnx_export import check_optimize_level
    from toolchain.export.scoring import run_task

    cfg = cfg or ExportConfig()
    run = load_run(run_dir)
    final = Path(out_dir or cfg.output_dir or default_output_dir(run)).resolve()
    check_export_target(final, run.path)   # before any work: only an export dir the toolchain wrote is replaced
    cpu = detect_cpu(cuda=True)
    needs_int8 = any(v in INT8_VARIANTS for v in cfg.variant_list())
    preset = choose_preset(cfg.quantize.isa, cpu) if needs_int8 else None
    if "optimized" in cfg.variant_list():
        check_optimize_level(cfg.optimize.level)
    if any(name.startswith("pruned") for name in cfg.variant_list()):
        from toolchain.export.prune import check_prunable

        check_prunable(run)   # an architecture pruning cannot handle is refused before any work
    remove_stale_builds(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    mark_incomplete(tmp, "export in progress")
    job = ExportJob(run, run_task(run), cfg, tmp, cpu, preset)
    try:
        report = build(job)
    except AccuracyGateError as exc:
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
    mark_incomplete(job.out, f"accuracy gate failed: {why}")
    shutil.rmtree(failed, ignore_errors=True)
    os.replace(job.out, failed)


def build(job: ExportJob) -> dict:
    """Every stage in order; returns the report (also written to report.json)."""
    from toolchain.export.drift_reference import write_drift_references
    from toolchain.export.merge import merge_run
    from toolchain.export.scoring import load_run_splits

    started = time.time()
    job.splits = load_run_splits(job.run)
    merged = merge_run(job.run, job.task, job.splits.dev, job.cfg.accuracy_gate.merge_atol, job.cfg.eval_batch_size)
    job.model, job.tokenizer = merged.model, merged.tokenizer
    job.extra["merge"] = {"peft": job.run.is_peft, "max_abs_diff": merged.max_abs_diff}
    save_merged(job)
    build_variants(job)
    report = evaluate_variants(job)
    write_drift_references(job, report)
    report["wall_seconds"] = round(time.time() - started, 1)
    write_json(job.out / "report.json", report)
    return report


# variant -> the variant it is built from (a variant whose source was skipped is skipped too)
BUILT_FROM = {"optimized": "fp32", "int8": "fp32", "int8-static": "fp32", "pruned-int8": "pruned"}


def build_variants(job: ExportJob) -> None:
    """Every asked-for variant. One that cannot be built (a library refusing the graph, e.g. static int8 of a
    graph with subgraphs) is skipped, its reason (the library's message) recorded in ``job.extra["skipped"]``;
    the others still go through the accuracy gate and the ranking. fp32 is the reference every other variant is
    judged against: its failure, and a failed parity check, stop the export."""
    skipped = job.extra.setdefault("skipped", {})
    for name in job.cfg.variant_list():
        source = BUILT_FROM.get(name)
        if source in skipped:
            skipped[name] = f"built from {source}, which was skipped"
            continue
        log.info("building variant %s", name)
        try:
            VARIANT_BUILDERS[name](job)
        except (AccuracyGateError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - any library error skips this variant only
            if name == "fp32":
                raise
            skipped[name] = f"{type(exc).__name__}: {exc}".strip()[:500]
            job.variants.pop(name, None)
            shutil.rmtree(job.onnx_dir(name), ignore_errors=True)
            log.warning("variant %s skipped: %s", name, skipped[name])
    if not skipped:
        job.extra.pop("skipped")


def manifest(job: ExportJob, report: dict | None, status: str) -> dict:
    """The export dir's toolchain.yaml (docs/ARTIFACTS.md): variants, checksums, configs."""
    from toolchain import __version__
    from toolchain.core.artifacts import sha256_file

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
