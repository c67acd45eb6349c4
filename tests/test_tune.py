"""`toolchain tune`: a seeded Optuna study over training options, every trial a run dir, scored on dev only."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from toolchain.cli import main
from toolchain.core.config import ConfigError, load_config

pytest.importorskip("optuna")

SPACE = {
    "kind": "tune-space",
    "space": {"method.name": {"choices": ["full", "lora"]}, "train.warmup_ratio": {"low": 0.0, "high": 0.2}},
    "methods": {"full": {"train.learning_rate": {"low": 1.0e-3, "high": 1.0e-2, "log": True}},
                "lora": {"train.learning_rate": {"low": 3.0e-3, "high": 3.0e-2, "log": True},
                         "method.lora_r": {"choices": [2, 4]}}},
}


@pytest.fixture
def space_file(tmp_path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    return path


@pytest.fixture
def tune_overrides(tiny_bert, tiny_data) -> list[str]:
    """A tiny sentiment run (one epoch of 15 steps); the learning rate is left to the search."""
    return [f"model.base={tiny_bert}", f"data.train={tiny_data['train']}", f"data.dev={tiny_data['dev']}",
            f"data.test={tiny_data['test']}", "train.epochs=1", "train.batch_size=8", "train.eval_steps=5",
            "data.max_length=32", "train.early_stopping_patience=0", "train.logging_steps=5"]


@pytest.fixture
def fake_overrides(tmp_path) -> list[str]:
    """For the tests that never train (a fake train(), or a space that fails before the first trial)."""
    return [f"model.base={tmp_path / 'no-model'}", f"data.train={tmp_path / 'train.jsonl'}", "train.epochs=1"]


def tune(overrides, space, output, trials, *extra) -> int:
    return main(["tune", "--config", "sentiment-full", *overrides, "--trials", str(trials), "--space", str(space),
                 "--output", str(output), *extra])


def load_trials(output: Path):
    import optuna

    return optuna.load_study(study_name="toolchain-tune", storage=f"sqlite:///{output / 'study.db'}").trials


def dev_disagreeing_with_test(real_train, dev_values):
    """A train() that trains for real, then sets trial K's dev macro-F1 to dev_values[K] and its test
    macro-F1 to 1 - that: a search that looked at test would pick another trial."""
    def train(cfg, resume=False, overwrite=False):
        run_dir = real_train(cfg, resume=resume, overwrite=overwrite)
        number = int(Path(cfg.output_dir).name.split("-")[1])
        path = run_dir / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["dev"]["macro_f1"], metrics["test"]["macro_f1"] = dev_values[number], 1 - dev_values[number]
        path.write_text(json.dumps(metrics))
        return run_dir
    return train


def test_study_picks_the_best_dev_trial_and_writes_it_as_a_preset(tune_overrides, space_file, tmp_path,
                                                                   monkeypatch, capsys):
    from toolchain.train import runner

    dev_values = [0.5, 0.7, 0.6]
    monkeypatch.setattr(runner, "train", dev_disagreeing_with_test(runner.train, dev_values))
    output = tmp_path / "study"
    assert tune(tune_overrides, space_file, output, 3) == 0
    out = capsys.readouterr().out

    trials = load_trials(output)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert [t.value for t in trials] == dev_values            # the dev metric, never the test one
    for t in trials:                                         # every trial is a complete, normal run dir
        run_dir = output / f"trial-{t.number}"
        assert (run_dir / "metrics.json").is_file() and (run_dir / "model").is_dir()
        assert not (run_dir / "INCOMPLETE").exists()
        manifest = yaml.safe_load((run_dir / "toolchain.yaml").read_text())["config"]
        assert manifest["train"]["learning_rate"] == pytest.approx(t.user_attrs["overrides"]["train.learning_rate"])
        assert manifest["method"]["name"] == t.params["method.name"]
        assert t.intermediate_values, "the dev evaluations during training are recorded in the study"
    assert len({t.user_attrs["overrides"]["train.learning_rate"] for t in trials}) == 3

    table = out[out.index("trial  "):].splitlines()
    assert "dev macro_f1" in table[0] and "learning_rate" in table[0] and "state" in table[0]
    assert [int(line.split()[0]) for line in table[2:5]] == [1, 2, 0]     # sorted by the dev metric
    assert "best: trial 1, dev macro_f1 0.7000" in out

    best_file = output / "best.yaml"
    first_line = best_file.read_text().splitlines()[0]
    assert first_line.startswith(f"# toolchain train --config {best_file}") and "trial 1" in first_line
    assert "3 finished trials" in first_line and "dev macro_f1 0.7000" in first_line
    best = load_config(str(best_file))
    chosen = trials[1].user_attrs["overrides"]
    assert best.method.name == chosen["method.name"]
    assert best.train.learning_rate == pytest.approx(chosen["train.learning_rate"])
    assert best.train.warmup_ratio == pytest.approx(chosen["train.warmup_ratio"])
    assert best.model.base == tune_overrides[0].split("=", 1)[1] and best.train.epochs == 1
    assert best.output_dir == str(output / "best")


def test_rerunning_with_more_trials_continues_the_study(tune_overrides, space_file, tmp_path, capsys):
    output = tmp_path / "study"
    assert tune(tune_overrides, space_file, output, 2) == 0
    before = [(t.number, t.params, t.value, t.datetime_complete) for t in load_trials(output)]
    first_metrics = (output / "trial-0" / "metrics.json").stat().st_mtime_ns
    assert len(before) == 2

    assert tune(tune_overrides, space_file, output, 3) == 0
    after = load_trials(output)
    assert len(after) == 3 and all(t.state.name == "COMPLETE" for t in after)
    assert [(t.number, t.params, t.value, t.datetime_complete) for t in after[:2]] == before    # kept as they were
    assert (output / "trial-0" / "metrics.json").stat().st_mtime_ns == first_metrics            # not retrained
    assert (output / "trial-2" / "metrics.json").is_file()
    assert after[2].params not in [p for _, p, _, _ in before]

    capsys.readouterr()
    assert tune(tune_overrides, space_file, output, 3) == 0      # the study is complete: nothing more runs
    assert "3 trials already finished" in capsys.readouterr().out and len(load_trials(output)) == 3


# --------------------------------------------------------------------------- the study logic, without training

def fake_train(calls: list, interrupt_at: int | None = None, error: type = KeyboardInterrupt):
    """Writes a run dir whose dev metric depends on the trial's config (a smooth optimum in the learning rate)."""
    def train(cfg, resume=False, overwrite=False):
        calls.append(cfg)
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise error("out of memory") if error is not KeyboardInterrupt else error
        run_dir = Path(cfg.output_dir)
        run_dir.mkdir(parents=True)
        dev = 1 - abs(math.log10(cfg.train.learning_rate) + 2.2) / 3 - cfg.train.warmup_ratio / 10
        (run_dir / "metrics.json").write_text(json.dumps({"dev": {"macro_f1": dev}, "test": {"macro_f1": 1 - dev}}))
        (run_dir / "history.json").write_text(json.dumps([{"step": 5, "eval_macro_f1": dev / 2}]))
        return run_dir
    return train


def test_an_interrupted_study_continues_as_if_it_had_not_stopped(fake_overrides, space_file, tmp_path, monkeypatch):
    """Interrupted (Ctrl-C) once, then killed with a trial left running: the finished trials, past the random
    start-up into TPE, propose exactly what one uninterrupted study proposes."""
    from toolchain.train import runner
    from toolchain.train.tune import open_storage, open_study, plan_study

    monkeypatch.setattr(runner, "train", fake_train([]))
    assert tune(fake_overrides, space_file, tmp_path / "straight", 13) == 0
    straight = [t.params for t in load_trials(tmp_path / "straight")]

    output = tmp_path / "interrupted"
    monkeypatch.setattr(runner, "train", fake_train([], interrupt_at=6))
    assert tune(fake_overrides, space_file, output, 13) == 130
    plan = plan_study("sentiment-full", fake_overrides, str(space_file), output)
    open_study(open_storage(plan), plan).ask()                   # a trial left running by a killed process
    monkeypatch.setattr(runner, "train", fake_train([]))
    assert tune(fake_overrides, space_file, output, 13) == 0
    trials = load_trials(output)
    assert [t.state.name for t in trials].count("FAIL") == 2 and trials[5].user_attrs["error"] == "interrupted"
    assert [t.params for t in trials if t.state.name == "COMPLETE"] == straight
    assert len(set(map(str, straight))) == 13


def test_a_failing_trial_stops_the_study_and_is_not_proposed_again(fake_overrides, space_file, tmp_path,
                                                                   monkeypatch):
    from toolchain.train import runner

    monkeypatch.setattr(runner, "train", fake_train([], interrupt_at=2, error=RuntimeError))
    with pytest.raises(RuntimeError, match="out of memory"):
        tune(fake_overrides, space_file, tmp_path / "study", 3)
    monkeypatch.setattr(runner, "train", fake_train([]))
    assert tune(fake_overrides, space_file, tmp_path / "study", 3) == 0
    trials = load_trials(tmp_path / "study")
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].user_attrs["error"] == "RuntimeError: out of memory"
    assert trials[1].params and trials[1].params not in [t.params for t in trials[2:]]


def test_a_study_refuses_another_configuration(fake_overrides, space_file, tmp_path, monkeypatch, capsys):
    from toolchain.train import runner

    monkeypatch.setattr(runner, "train", fake_train([]))
    assert tune(fake_overrides, space_file, tmp_path / "study", 1) == 0
    capsys.readouterr()
    assert tune(fake_overrides + ["train.seed=7"], space_file, tmp_path / "study", 2) == 2
    assert "holds a study of another training config and seed" in capsys.readouterr().err
    assert len(load_trials(tmp_path / "study")) == 1


def test_timeout_starts_no_further_trial(fake_overrides, space_file, tmp_path, monkeypatch, capsys):
    from toolchain.train import runner

    import time

    quick = fake_train([])

    def slow_train(*args, **kwargs):   # a trial outlasts the 0.12 s budget on any machine
        time.sleep(0.3)
        return quick(*args, **kwargs)

    monkeypatch.setattr(runner, "train", slow_train)
    assert tune(fake_overrides, space_file, tmp_path / "study", 5, "--timeout", "0.002") == 0
    out = capsys.readouterr()
    assert "--timeout 0.002 min reached" in out.err + out.out and len(load_trials(tmp_path / "study")) == 1
    assert (tmp_path / "study" / "best.yaml").is_file()


@pytest.mark.parametrize("entry, message", [
    ({"train.learnig_rate": {"low": 1.0e-4, "high": 1.0e-3}}, "unknown option 'train.learnig_rate' in the search "
                                                             "space; did you mean 'train.learning_rate'"),
    ({"train.learning_rate": {"low": "1e-5", "high": 1.0e-3}}, "train.learning_rate: low '1e-5' is not a number"),
    ({"method.lora_r": {"low": 2.5, "high": 8}}, "method.lora_r: method.lora_r is an integer option; low 2.5"),
    ({"train.scheduler": {"low": 0, "high": 1}}, "train.scheduler: a range needs a numeric option"),
    ({"train.warmup_ratio": {"low": 0.0, "high": 1.5}}, "train.warmup_ratio=1.5 is not a valid value"),
    ({"method.name": {"choices": ["full", "lroa"]}}, "method.name='lroa' is not a valid value"),
    ({"train.epochs": {"low": 1, "hgh": 3}}, "train.epochs: unknown field 'hgh'"),
    ({"train.epochs": 3}, "train.epochs: expected {low: .., high: ..} or {choices: [..]}"),
    ({"train.epochs": {"low": 3, "high": 1}}, "train.epochs: low 3 must be below high 1"),
    ({"output_dir": {"choices": ["a", "b"]}}, "output_dir: not searchable"),
])
def test_a_bad_search_space_fails_naming_the_key(entry, message, fake_overrides, tmp_path, capsys):
    space = tmp_path / "bad.yaml"
    space.write_text(yaml.safe_dump({"kind": "tune-space", "space": entry}))
    assert tune(fake_overrides, space, tmp_path / "study", 3) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


def test_a_bad_method_section_fails_naming_it(fake_overrides, tmp_path, capsys):
    space = tmp_path / "bad.yaml"
    space.write_text(yaml.safe_dump({"kind": "tune-space", "methods": {"lroa": {"method.lora_r": {"choices": [4]}}}}))
    assert tune(fake_overrides, space, tmp_path / "study", 3) == 2
    assert "methods.lroa: unknown method" in capsys.readouterr().err


@pytest.mark.parametrize("trials", ["0", "-2"])
def test_trials_must_be_positive(trials, space_file, tmp_path, capsys):
    assert main(["tune", "--trials", trials, "--space", str(space_file), "--output", str(tmp_path / "s")]) == 2
    assert "--trials: expected a positive number of trials" in capsys.readouterr().err


@pytest.mark.parametrize("preset, metric", [("sentiment-full", "macro_f1"), ("ner-conll-full", "f1")])
def test_shipped_spaces_fit_their_presets(preset, metric, tmp_path):
    from toolchain.train.tune import plan_study

    plan = plan_study(preset, output=tmp_path / "s")
    assert plan.metric == metric and {"method.name", "train.learning_rate", "method.lora_r"} <= set(plan.space.keys())
    fixed = plan_study(preset, ["method.name=lora", "train.epochs=2"], output=tmp_path / "s")
    assert "method.name" not in fixed.space.keys() and "train.epochs" not in fixed.space.keys()
    assert "train.learning_rate" in fixed.space.per_method["lora"]


def test_space_loader_refuses_a_training_preset():
    from toolchain.train.tune_space import load_space

    with pytest.raises(ConfigError, match="unknown section"):
        load_space("sentiment-full")
