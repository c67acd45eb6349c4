"""`toolchain tune --config PRESET [key=value ...] --trials N [--timeout MIN] [--space SPACE] [--output DIR]`

A hyper-parameter search (Optuna, seeded TPE) scored on the dev metric only; every trial is a run dir
OUTPUT/trial-K, the study is OUTPUT/study.db (rerun the command to continue it), and the best trial's
config is written as a training preset (OUTPUT/best.yaml).
"""
from __future__ import annotations

import argparse

from toolchain.commands.options import add_output_option, add_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="sentiment-full",
                   help="training preset or YAML file the trials start from (default: sentiment-full)")
    add_overrides(p, "key=value overrides: fixed for every trial and left out of the search")
    p.add_argument("--trials", type=int, required=True, metavar="N",
                   help="size of the study: trials run until N have finished (a rerun continues the study)")
    p.add_argument("--timeout", type=float, metavar="MINUTES", help="start no trial after this many minutes")
    p.add_argument("--space", metavar="SPACE",
                   help="search space: a tune-space-* preset or YAML file (default: tune-space-sentiment for "
                   "sequence classification, tune-space-ner for token classification)")
    add_output_option(p, "study folder (default: runs/tune-PRESET)")
    p.add_argument("--preset-out", metavar="FILE", help="where the best config is written (default: OUTPUT/best.yaml)")


def run(args) -> int:
    from toolchain.core.config import ConfigError
    from toolchain.train.tune import plan_study, run_study, trial_table, write_best_preset

    if args.trials <= 0:
        raise ConfigError(f"--trials: expected a positive number of trials, got {args.trials}")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"--timeout: expected a positive number of minutes, got {args.timeout:g}")
    plan = plan_study(args.config, args.overrides, space=args.space, output=args.output)
    print(f"study {plan.study_path}: searching {', '.join(plan.space.keys())} from {plan.space.name_or_path}, "
          f"scored on dev {plan.metric}", flush=True)
    study = run_study(plan, args.trials, args.timeout)
    print(trial_table(study, plan.metric))
    if not any(t.value is not None for t in study.trials):
        raise ConfigError(f"{plan.study_path}: no trial has finished, so there is no best configuration yet")
    best = study.best_trial
    path = write_best_preset(study, plan, args.preset_out)
    print(f"best: trial {best.number}, dev {plan.metric} {best.value:.4f}, run dir {best.user_attrs.get('run_dir')}")
    print(f"preset: {path}    (toolchain train --config {path})")
    return 0
