"""`toolchain build [--config PRESET] [key=value ...] [--json [PATH]]`: the main job (see toolchain.build for the
stages)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from toolchain.build import (build_bento, check_data, check_topic_configs, check_topic_exports, ensure_export,
                             ensure_run, packed_variant_line, plan, plan_topic, print_summary, register_model)
from toolchain.commands.options import add_json_option, add_overrides, emit_json, human_output
from toolchain.core.config import ConfigError
from toolchain.core.errors import CheckFailed


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="sentiment-full",
                   help="training preset or YAML (default: sentiment-full, finance sentiment on PhraseBank allagree)")
    add_overrides(p, "key=value overrides of the run config (e.g. output_dir=DIR: the run dir); export.KEY=VALUE "
                  "goes to the export config (of both models, with a topic model)")
    p.add_argument("--export-config", metavar="PRESET", help="export preset or YAML (default: built-in defaults)")
    p.add_argument("--export-dir", metavar="DIR", help="build from this export dir (skips train and export)")
    p.add_argument("--variant", help="ONNX variant to pack (default: the export's serve_variant)")
    p.add_argument("--allow-unpromotable", action="store_true",
                   help="build from an update run that forgot more than update.max_forgetting allows")
    topic = p.add_argument_group("topic model", "a single-task topic model served beside the main one: POST "
                                 "/classify then answers the main model's label and the topic per text")
    topic.add_argument("--topic-config", metavar="PRESET",
                       help="training preset or YAML of the topic model (e.g. topic-full); trained and exported "
                            "like the main model, with the same export preset and export.KEY=VALUE overrides")
    topic.add_argument("--topic-override", action="append", default=[], metavar="KEY=VALUE",
                       help="override of the topic model's run config, or with export. of its export config only "
                            "(repeatable; after the shared export. overrides)")
    topic.add_argument("--topic-export-dir", metavar="DIR", help="pack this topic export dir (skips its train and "
                                                                 "export)")
    topic.add_argument("--topic-variant", help="ONNX variant of the topic model to pack (default: its serve_variant)")
    add_json_option(p, "the Bento tag, the model tags, export dirs and variants")


def check_topic_arguments(args) -> None:
    if args.topic_config and args.topic_export_dir:
        raise ConfigError("give --topic-config PRESET (train and export the topic model) or --topic-export-dir DIR "
                          "(an existing topic export), not both")
    if not args.topic_config and args.topic_override:
        raise ConfigError(f"--topic-override {args.topic_override[0]}: there is no topic model to override; add "
                          "--topic-config PRESET (e.g. topic-full)")
    if not (args.topic_config or args.topic_export_dir) and args.topic_variant:
        raise ConfigError("--topic-variant: there is no topic model; add --topic-config PRESET or --topic-export-dir")


def prepare(args):
    """The main and topic stages to run (None where an export dir is given), checked before anything runs."""
    main = None if args.export_dir else plan(args.config, args.overrides, args.export_config)
    topic = plan_topic(args.topic_config, args.overrides, args.topic_override, args.export_config) \
        if args.topic_config else None
    if topic is not None:
        check_topic_configs(main.run_cfg if main else None, topic.run_cfg)
    for stages, option in ((main, ""), (topic, "--topic-override ")):
        if stages is not None and stages.run_state != "up to date":
            check_data(stages.run_cfg, option)   # before a long job, for both models
    return main, topic


def export_dirs(args, main, topic) -> tuple[Path, Path | None]:
    """Run the missing stages (main model first) and return (main export dir, topic export dir or None)."""
    from toolchain.export.accuracy_gate import AccuracyGateError

    if main is None:
        print(f"export  given         {args.export_dir}", flush=True)
    else:
        print(f"train   {main.run_state:<13} {main.run_dir}\n"
              f"export  {main.export_state:<13} {main.export_dir}", flush=True)
    if topic is not None:
        print(f"topic-train   {topic.run_state:<13} {topic.run_dir}\n"
              f"topic-export  {topic.export_state:<13} {topic.export_dir}", flush=True)
    elif args.topic_export_dir:
        print(f"topic-export  given         {args.topic_export_dir}", flush=True)
    for stages, which in ((main, "model"), (topic, "topic model")):
        if stages is not None:
            ensure_run(stages)
            try:
                ensure_export(stages)
            except AccuracyGateError as exc:
                where = f"{which} {stages.run_dir}: " if which != "model" else ""
                raise CheckFailed(f"the export's accuracy gate failed: {where}{exc}") from exc
    topic_dir = topic.export_dir if topic else (Path(args.topic_export_dir) if args.topic_export_dir else None)
    return (main.export_dir if main else Path(args.export_dir)), topic_dir


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_topic_arguments(args)
    with human_output(args):
        result = build(args)
    emit_json(args, result)
    return 0


def build(args) -> dict:
    """Check, run the missing stages, register the models, build the Bento; what was built (for --json)."""
    main, topic = prepare(args)
    export_dir, topic_dir = export_dirs(args, main, topic)
    if topic_dir is not None:
        check_topic_exports(export_dir, topic_dir)
    model, variant = register_model(export_dir, args.variant, args.allow_unpromotable)
    print(packed_variant_line(export_dir, variant, bool(args.variant)), flush=True)
    topic_model = topic_variant = None
    if topic_dir is not None:
        topic_model, topic_variant = register_model(topic_dir, args.topic_variant, args.allow_unpromotable)
        print(packed_variant_line(topic_dir, topic_variant, bool(args.topic_variant), "topic variant",
                                  "--topic-variant"), flush=True)
    bento = build_bento(model, variant, (topic_model, topic_variant) if topic_model is not None else None)
    print_summary(bento, model, topic_model)
    result = {"bento": str(bento.tag), "model": str(model.tag), "export_dir": str(export_dir), "variant": variant}
    if topic_model is not None:
        result.update(topic_model=str(topic_model.tag), topic_export_dir=str(topic_dir), topic_variant=topic_variant)
    return result
