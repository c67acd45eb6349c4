"""`toolchain predict EXPORT_DIR|BENTO_TAG --input PATH_OR_GLOB... --output DIR`: score archives in bulk (see
:mod:`toolchain.predict`; this module is its CLI handler)."""
from __future__ import annotations

import argparse
from pathlib import Path

from toolchain.commands.options import add_json_option, add_output_option, emit_json, human_output

EPILOG = ("Output: OUTPUT/shards/*.parquet (file, row, id, text masked unless --no-mask, label, score, score_<class> "
          "for each class, truncated, topic and topic_score for a model with a topic head or a topic model beside it, "
          "the --keep columns), OUTPUT/bad-rows.jsonl, OUTPUT/summary.json. Rerun the same command after a kill: "
          "finished shards are skipped, no row is lost or doubled.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument("target", metavar="EXPORT_DIR|BENTO_TAG", help="export dir, or a Bento built by toolchain build")
    p.add_argument("--input", "-i", dest="inputs", nargs="+", required=True, metavar="PATH_OR_GLOB",
                   help="JSONL, CSV/TSV or Parquet files, or globs of them (quote a glob: 'news/*.jsonl')")
    add_output_option(p, "output dir: Parquet shards, bad rows, summary (a rerun resumes it)")
    p.add_argument("--format", dest="fmt", choices=("auto", "jsonl", "csv", "parquet"), default="auto",
                   help="input format (default: from the file name)")
    p.add_argument("--text-column", default="text", help="column/key holding the text (as data.text_column)")
    p.add_argument("--id-column", default="id", help="column/key of the input's own id, written as `id` (null "
                   "where a row has none; '' for none)")
    p.add_argument("--keep", default="", metavar="COL,COL", help="input columns carried over as they are (as text), "
                   "e.g. date,source")
    p.add_argument("--no-mask", action="store_true", help="write texts as they are (default: e-mail addresses, "
                   "phone, card, IBAN and account numbers masked, as the monitor's files are)")
    p.add_argument("--no-text", action="store_true", help="leave the text out of the output")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: one process per usable core (default); ray: a Ray Data pipeline (needs the ray extra)")
    p.add_argument("--address", help="--engine ray: the cluster (ray://HOST:10001, auto); default: a local Ray "
                   "started for this run")
    p.add_argument("--workers", type=int, help="processes (local) or actors (a local Ray); default: usable cores")
    p.add_argument("--shard-rows", type=int, default=10_000, help="rows per output shard (bounds each worker's "
                   "memory; fixed for the life of an output dir)")
    p.add_argument("--batch-size", type=int, default=512, help="texts tokenized together and grouped by length "
                   "into model calls (at most 32 texts a call, as the service; one a call for a run-time int8 model)")
    p.add_argument("--variant", help="ONNX variant (default: the export's or the Bento's served one)")
    p.add_argument("--topic-export-dir", metavar="DIR", help="a topic model's export dir scored beside an export "
                   "dir (as TOOLCHAIN_TOPIC_EXPORT_DIR for the service)")
    p.add_argument("--topic-variant", help="the topic model's variant (default: its served one)")
    p.add_argument("--trend", metavar="COLUMN", help="a date/time column (ISO 8601 or Unix seconds): also write "
                   "the daily negative share per predicted topic (trend.csv, trend.png) and print the days the "
                   "surge alert would have fired")
    p.add_argument("--alert-settings", metavar="FILE", help="the surge rule's settings for --trend (default: "
                   "deploy/prometheus/alert-settings.yaml)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_option(p, "the summary")


def options_of(args):
    from toolchain.core.errors import ConfigError
    from toolchain.predict.job import PredictOptions

    if not args.output:
        raise ConfigError("give the output dir: --output DIR")
    keep = tuple(name.strip() for name in args.keep.split(",") if name.strip())
    return PredictOptions(args.target, args.inputs, Path(args.output), args.fmt, args.text_column,
                          args.id_column or None, keep, not args.no_mask, not args.no_text, args.shard_rows,
                          args.batch_size, args.engine, args.workers, args.address, args.variant,
                          args.topic_export_dir, args.topic_variant, args.trend, args.alert_settings,
                          not args.no_progress)


def run(args) -> int:
    from toolchain.predict.job import predict

    options = options_of(args)
    with human_output(args):
        summary = predict(options, report=lambda line: print(line, flush=True))
    emit_json(args, summary)
    return 0
