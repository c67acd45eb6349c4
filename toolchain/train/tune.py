"""`toolchain tune`: a bounded hyper-parameter search, every trial a normal run dir, scored on dev only.

Optuna drives the search directly (ask/tell), and each trial is an ordinary ``train(cfg)`` into
``OUTPUT/trial-K``: the run dir a user can inspect, export or compare. ``Trainer.hyperparameter_search``
would not do: it re-creates one Trainer's model through ``model_init`` and varies only
TrainingArguments, while a trial here may change the method (full, top-k, LoRA, AdaLoRA), which changes
how the model is built and what the run dir holds.

- **Dev only.** A trial's value is ``metrics.json``'s ``dev[train.metric]`` (the metric that also picks
  its best checkpoint); the test metrics are never read here.
- **No pruning.** Trials differ in epochs and warmup, so at a given step one trial is at the end of its
  schedule and another is still warming up: a median pruner would favour short, hot schedules. Each
  run's own early stopping on the dev metric already ends a flat trial. The dev evaluations are
  recorded as the trial's intermediate values, so the curves stay in the study.
- **Reproducible and resumable.** The study lives in ``OUTPUT/study.db`` (SQLite, local). The TPE
  sampler of each trial is seeded with ``train.seed`` plus the number of finished trials, so a study
  interrupted and continued proposes what an uninterrupted one would have. ``--trials N`` is the size of
  the study: rerunning the command runs what is missing; an interrupted trial is recorded as failed and
  done again. A trial that raises stops the study, recorded with its error; it is not proposed again
  (it counts in the seed). One process runs a study at a time.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from toolchain.core.artifacts import ArtifactError, atomic_write_text
from toolchain.core.config import (ConfigError, RunConfig, apply_overrides, config_hash, from_dict, read_preset, to_dict,
                              train_metric)
from toolchain.train.tune_space import SearchSpace, default_space, load_space, with_values

STUDY_FILE = "study.db"
STUDY_NAME = "toolchain-tune"
BEST_FILE = "best.yaml"


@dataclass(frozen=True)
class TunePlan:
    """What a study searches: the base config (preset + fixed overrides), the space, the dev metric."""

    preset: str
    overrides: tuple[str, ...]
    output: Path
    base_raw: dict
    base: RunConfig
    space: SearchSpace
    metric: str

    @property
    def seed(self) -> int:
        return self.base.train.seed

    @property
    def study_path(self) -> Path:
        return self.output / STUDY_FILE


def plan_study(preset: str, overrides: list[str] | tuple = (), space: str | None = None,
               output: str | Path | None = None) -> TunePlan:
    """Check everything before the first trial: the base config, the space on it, the output folder."""
    output = Path(output or f"runs/tune-{Path(preset).stem}")
    raw = apply_overrides(read_preset(preset), list(overrides))
    raw["output_dir"] = str(output)
    base = from_dict(RunConfig, raw)
    fixed = {item.split("=", 1)[0].strip() for item in overrides}
    searched = load_space(space or default_space(base.model.task), base=raw).without(fixed)
    if not searched.keys():
        raise ConfigError(f"{searched.name_or_path}: nothing left to search (every option of the space is fixed by a "
                          f"key=value override)")
    if not (output / STUDY_FILE).exists() and any(output.glob("trial-*")):
        raise ArtifactError(f"{output} holds trial run dirs but no {STUDY_FILE}: pass --output NEW_DIR, or remove "
                            f"them to start a new study there")
    return TunePlan(preset, tuple(overrides), output, raw, base, searched, train_metric(base))


def trial_config(plan: TunePlan, number: int, values: dict[str, Any]) -> RunConfig:
    """The full training config of trial ``number``: the base with the trial's values, in OUTPUT/trial-K."""
    run_dir = plan.output / f"trial-{number}"
    return from_dict(RunConfig, with_values(plan.base_raw, {**values, "output_dir": str(run_dir)}))


# --------------------------------------------------------------------------- the study

def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("toolchain tune needs optuna: pip install optuna (it is a dependency of toolchain: "
                          "pip install -e .)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_storage(plan: TunePlan):
    """OUTPUT/study.db, opened once per command (opening SQLite storage checks its schema: seconds)."""
    optuna = _optuna()
    plan.output.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{plan.study_path.resolve()}")


def open_study(storage, plan: TunePlan, seed_offset: int = 0):
    """The study (created or loaded), its TPE sampler seeded with train.seed + ``seed_offset``."""
    optuna = _optuna()
    return optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True,
                               sampler=optuna.samplers.TPESampler(seed=plan.seed + seed_offset))


def study_identity(plan: TunePlan) -> dict:
    """What must not change between the runs of one study (the output folder may be named differently)."""
    identity = {"config_hash": config_hash(replace(plan.base, output_dir="")), "space": plan.space.to_dict(),
                "metric": plan.metric, "seed": plan.seed}
    return json.loads(json.dumps(identity))


def check_identity(study, plan: TunePlan) -> None:
    identity, stored = study_identity(plan), study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", identity)
        study.set_user_attr("command", {"preset": plan.preset, "overrides": list(plan.overrides)})
        return
    names = {"config_hash": "training config", "space": "search space", "metric": "dev metric", "seed": "seed"}
    changed = [names[key] for key in identity if identity[key] != stored.get(key)]
    if changed:
        started = study.user_attrs.get("command", {})
        raise ConfigError(f"{plan.study_path} holds a study of another {' and '.join(changed)} (started with --config "
                          f"{started.get('preset')} {' '.join(started.get('overrides', []))}); rerun that command to "
                          f"continue it, or pass --output NEW_DIR for a new study")


def finished_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def proposals_used(study) -> int:
    """Finished trials and those that failed with an error: the next trial's sampler seed offset. An
    interrupted trial does not count, so its proposal is made again; a failing one is not."""
    from optuna.trial import TrialState

    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    errors = [t for t in failed if t.user_attrs.get("error", "interrupted") != "interrupted"]
    return len(finished_trials(study)) + len(errors)


def fail_stale_trials(study) -> None:
    """Trials left running by a process that was killed: recorded as failed (their run dirs stay)."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)


def run_study(plan: TunePlan, trials: int, timeout_minutes: float | None = None):
    """Run trials until the study has ``trials`` finished ones (or ``timeout_minutes`` have passed)."""
    from tqdm.auto import tqdm

    if trials <= 0:
        raise ConfigError(f"--trials: expected a positive number of trials, got {trials}")
    storage = open_storage(plan)
    study = open_study(storage, plan)
    check_identity(study, plan)
    fail_stale_trials(study)
    remaining = trials - len(finished_trials(study))
    if remaining <= 0:
        print(f"{plan.study_path}: {trials} trials already finished; raise --trials to run more", flush=True)
        return study
    deadline = time.monotonic() + 60 * timeout_minutes if timeout_minutes else None
    with tqdm(total=remaining, desc="tune", unit="trial") as bar:
        for _ in range(remaining):
            if deadline is not None and time.monotonic() >= deadline:
                bar.write(f"--timeout {timeout_minutes:g} min reached: no further trial started")
                break
            done = run_trial(storage, plan)
            bar.update(1)
            bar.write(trial_line(open_study(storage, plan), done, plan.metric))
    return open_study(storage, plan)


def run_trial(storage, plan: TunePlan):
    """One trial: sample, train into OUTPUT/trial-K, score on dev. A trial that fails is recorded, then raised."""
    from optuna.trial import TrialState

    from toolchain.train import runner

    study = open_study(storage, plan, seed_offset=proposals_used(open_study(storage, plan)))
    trial = study.ask()
    try:
        values = plan.space.sample(trial, plan.base.method.name)
        trial.set_user_attr("overrides", values)
        cfg = trial_config(plan, trial.number, values)
        trial.set_user_attr("run_dir", cfg.output_dir)
        run_dir = runner.train(cfg)
        score = dev_score(run_dir, plan.metric)
        for step, value in dev_curve(run_dir, plan.metric).items():
            trial.report(value, step)
    except BaseException as exc:
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
        trial.set_user_attr("error", why[:500])
        study.tell(trial, state=TrialState.FAIL)
        raise
    return study.tell(trial, score)


def dev_score(run_dir: str | Path, metric: str) -> float:
    """The run's dev metric (never its test metric): what the study maximizes."""
    path = Path(run_dir) / "metrics.json"
    dev = json.loads(path.read_text(encoding="utf-8")).get("dev", {})
    if not isinstance(dev.get(metric), (int, float)):
        raise ArtifactError(f"{path}: no dev {metric!r} to score the trial on")
    return float(dev[metric])


def dev_curve(run_dir: str | Path, metric: str) -> dict[int, float]:
    """Step -> dev metric of the run's evaluations during training (history.json)."""
    path = Path(run_dir) / "history.json"
    history = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    return {int(h["step"]): float(h[f"eval_{metric}"]) for h in history if f"eval_{metric}" in h and "step" in h}


# --------------------------------------------------------------------------- reporting

def trial_minutes(trial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds() / 60


def trial_line(study, trial, metric: str) -> str:
    best = study.best_trial
    return (f"trial {trial.number}: dev {metric} {trial.value:.4f} in {trial_minutes(trial) or 0:.1f} min "
            f"(best: trial {best.number}, {best.value:.4f})")


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


def column_names(keys: list[str]) -> list[str]:
    """Short column names: ``lora_r`` for method.lora_r, ``method`` for method.name; full keys on a clash."""
    short = [key.split(".")[0] if key.endswith(".name") else key.split(".")[-1] for key in keys]
    return [s if short.count(s) == 1 else k for s, k in zip(short, keys)]


def trial_table(study, metric: str) -> str:
    """One row per trial, best dev metric first: trial, parameters, dev metric, state, minutes."""
    from optuna.trial import TrialState

    from toolchain.core.report import format_table

    trials = sorted(study.trials, key=lambda t: (t.state != TrialState.COMPLETE, -(t.value or 0.0), t.number))
    keys = list(dict.fromkeys(k for t in trials for k in t.user_attrs.get("overrides", {})))
    rows = []
    for t in trials:
        values = t.user_attrs.get("overrides", {})
        minutes = trial_minutes(t)
        rows.append([t.number, *(format_value(values.get(k)) for k in keys),
                     "-" if t.value is None else f"{t.value:.4f}", t.state.name.lower(),
                     "-" if minutes is None else f"{minutes:.1f}"])
    return format_table(["trial", *column_names(keys), f"dev {metric}", "state", "minutes"], rows)


def write_best_preset(study, plan: TunePlan, path: str | Path | None = None) -> Path:
    """The best trial's full config as a training preset (output_dir OUTPUT/best), saying how it was found."""
    import yaml

    path = Path(path or plan.output / BEST_FILE)
    best = study.best_trial
    values = best.user_attrs["overrides"]
    cfg = replace(trial_config(plan, best.number, values), output_dir=str(plan.output / "best"))
    found = " ".join(["toolchain tune --config", plan.preset, *plan.overrides, "--space", plan.space.name_or_path])
    header = [
        f"# toolchain train --config {path}    (best of {len(finished_trials(study))} finished trials of the study "
        f"{plan.study_path}: trial {best.number}, dev {plan.metric} {best.value:.4f})",
        f"# found by: {found}; scored on dev {plan.metric} only (the test split was not read for the choice)",
        f"# searched values: {', '.join(f'{k}={format_value(v)}' for k, v in values.items())}; the trial's run dir: "
        f"{best.user_attrs.get('run_dir')}",
    ]
    atomic_write_text(path, "\n".join(header) + "\n" + yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path
