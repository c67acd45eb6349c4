"""``toolchain predict``, as a recipe: resolve the model, index the inputs, prepare the output, score the shards
not yet written (local processes or Ray), merge the bad rows, summarize, and the backfill trend if asked."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from toolchain.core.artifacts import write_json
from toolchain.core.errors import ConfigError, DataError
from toolchain.predict import inputs as input_files
from toolchain.predict.model import describe, labels_of, resolve
from toolchain.predict.reader import Columns
from toolchain.predict.scoring import OutputSpec, ScoringContext
from toolchain.predict.shards import SUMMARY, VERSION, finished, merge_bad_rows, prepare, remove_temporaries
from toolchain.predict.summary import render, summarize

ENGINES = ("local", "ray")


@dataclass
class PredictOptions:
    target: str                       # export dir or Bento tag
    inputs: list[str]
    output: Path
    fmt: str = "auto"
    text_column: str = "text"
    id_column: str | None = "id"
    keep: tuple[str, ...] = ()
    mask: bool = True
    write_text: bool = True
    shard_rows: int = 10_000
    batch_size: int = 512
    engine: str = "local"
    workers: int | None = None        # default: the usable cores
    address: str | None = None        # Ray cluster address (default: a local Ray started here)
    variant: str | None = None
    topic_export_dir: str | None = None
    topic_variant: str | None = None
    trend: str | None = None          # a date/time column: the daily negative share per topic
    alert_settings: str | None = None
    progress: bool = True


def check_options(options: PredictOptions) -> None:
    if options.shard_rows < 1 or options.batch_size < 1:
        raise ConfigError(f"--shard-rows and --batch-size must be at least 1, got {options.shard_rows} and "
                          f"{options.batch_size}")
    if options.workers is not None and options.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {options.workers}")
    if options.engine not in ENGINES:
        raise ConfigError(f"--engine {options.engine!r}: one of {', '.join(ENGINES)}")
    if options.address and options.engine != "ray":
        raise ConfigError("--address is the Ray cluster's: give it with --engine ray")
    if options.engine == "ray":
        from toolchain.predict.ray_engine import require_ray

        require_ray()


def output_spec(options: PredictOptions, labels: list[str]) -> tuple[OutputSpec, Columns]:
    keep = tuple(dict.fromkeys([*options.keep, *([options.trend] if options.trend else [])]))
    spec = OutputSpec(tuple(labels), keep, options.write_text, options.mask)
    fixed = OutputSpec(tuple(labels), (), True, options.mask).names()
    clashes = [name for name in keep if name in fixed]
    if clashes:
        raise ConfigError(f"--keep {', '.join(clashes)}: the output has a column of that name already "
                          f"({', '.join(fixed)}); rename the input column")
    return spec, Columns(options.text_column, options.id_column or None, keep)


def check_columns(plan: input_files.Plan, columns: Columns) -> None:
    """CSV and Parquet inputs name their columns up front: a missing text or --keep column stops the run."""
    for file in plan.files:
        if file.fmt == "jsonl":
            continue
        missing = [c for c in (columns.text, *columns.keep) if c not in file.columns]
        if missing:
            raise DataError(f"{file.path}: no column {', '.join(repr(c) for c in missing)} (columns: "
                            f"{', '.join(file.columns) or 'none'}); set --text-column / --keep")


def identity(options: PredictOptions, source, plan, spec: OutputSpec, columns: Columns) -> dict:
    """What a rerun into the same output must share with the run that began it."""
    return {"version": VERSION, "model": describe(source), "inputs": [f.identity() for f in plan.files],
            "shard_rows": options.shard_rows,
            "columns": {"text": columns.text, "id": columns.id, "keep": list(spec.keep), "write_text": spec.write_text,
                        "mask": spec.mask}}


def engine_results(options: PredictOptions, pending: list, context: ScoringContext, workers: int, progress):
    if options.engine == "ray":
        from toolchain.predict.ray_engine import run_ray

        return run_ray(pending, context, workers, options.address, progress)
    from toolchain.predict.local import run_local

    return run_local(pending, context, workers, progress)


def progress_bar(plan, done_rows: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=plan.rows, initial=done_rows, unit="rows", unit_scale=True, smoothing=0.05, file=sys.stderr,
                disable=not enabled, desc="predict", dynamic_ncols=True, mininterval=0.5)


def score(options: PredictOptions, plan, context: ScoringContext, workers: int) -> dict:
    """Score the shards not yet written; this run's figures."""
    pending = [shard for shard in plan.shards if not finished(Path(context.output), shard)]
    done_rows = plan.rows - sum(shard.rows for shard in pending)
    run = {"shards": len(pending), "skipped": len(plan.shards) - len(pending), "rows": 0, "bad": 0,
           "engine": options.engine, "workers": workers}
    started = time.perf_counter()
    with progress_bar(plan, done_rows, options.progress) as bar:
        for result in engine_results(options, pending, context, workers, bar.update):
            run["rows"] += result.rows
            run["bad"] += result.bad
    run["seconds"] = time.perf_counter() - started
    return run


def predict(options: PredictOptions, report=print) -> dict:
    """Run (or resume) a predict job; returns its summary (also written to OUTPUT/summary.json)."""
    from toolchain.core.hardware import available_cpus

    check_options(options)
    source = resolve(options.target, options.variant, options.topic_export_dir, options.topic_variant)
    spec, columns = output_spec(options, labels_of(source))
    plan = input_files.plan(options.inputs, options.fmt, options.shard_rows)
    check_columns(plan, columns)
    output = Path(options.output)
    if prepare(output, identity(options, source, plan, spec, columns)):
        report(f"resuming {output}: {sum(finished(output, s) for s in plan.shards)} of {len(plan.shards)} shards "
               f"done before ({remove_temporaries(output)} unfinished temporary files removed)")
    workers = options.workers or available_cpus()
    context = ScoringContext(source, columns, spec, str(output), options.batch_size)
    run = score(options, plan, context, workers)
    run["bad_total"] = merge_bad_rows(output, plan.shards)
    summary = summarize(output, plan, spec.topics, run)
    if options.trend:
        from toolchain.predict.trend import backfill

        summary["trend"] = backfill(output, plan, options.trend, spec, options.alert_settings, report)
    write_json(output / SUMMARY, summary)
    report(render(summary))
    return summary
