"""Typed config: every shipped preset loads; bad keys and values fail naming the key."""
from pathlib import Path

import pytest

from toolchain.core.config import PRESET_DIR, ConfigError, RunConfig, config_hash, load_config, read_yaml


def run_presets() -> list[str]:
    """Training presets (other stages' presets declare `kind:` and have their own loaders)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if "kind" not in read_yaml(p))


def other_presets() -> list[Path]:
    return sorted(p for p in PRESET_DIR.glob("*.yaml") if "kind" in read_yaml(p))


@pytest.mark.parametrize("name", run_presets())
def test_every_training_preset_loads(name):
    cfg = load_config(name)
    assert isinstance(cfg, RunConfig)
    assert cfg.output_dir and cfg.data.train, f"{name} sets no output_dir/data.train"
    first_line = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[0]
    assert first_line.startswith("# toolchain"), f"{name}.yaml must open with the command that uses it"


@pytest.mark.parametrize("path", other_presets(), ids=lambda p: p.stem)
def test_every_other_preset_loads_with_its_stage_loader(path):
    import importlib

    kind = read_yaml(path)["kind"]
    loaders = {"export": "toolchain.export.config:load_export_config",
               "pretrain": "toolchain.pretrain:load_pretrain_config",
               "serve": "toolchain.serve.config:load_serve_config",
               "tune-space": "toolchain.train.tune_space:load_space"}
    assert kind in loaders, f"{path.name}: unknown kind {kind!r}"
    module, function = loaders[kind].split(":")
    assert getattr(importlib.import_module(module), function)(path.stem) is not None


def test_presets_exist_for_every_method():
    methods = {load_config(name).method.name for name in run_presets()}
    assert {"full", "head", "top-k", "lora", "adalora", "ia3"} <= methods


def test_overrides_are_typed():
    cfg = load_config("sentiment-lora", ["train.epochs=2", "method.lora_r=4", "adversarial.kind=pgd"])
    assert cfg.train.epochs == 2.0 and cfg.method.lora_r == 4 and cfg.adversarial.kind == "pgd"
    assert cfg.method.name == "lora" and cfg.train.learning_rate == 5e-4  # inherited via extends + own value


@pytest.mark.parametrize("override, message", [
    ("trian.epochs=3", "unknown config key 'trian'; did you mean 'train'"),
    ("train.epoch=3", "did you mean 'train.epochs'"),
    ("method.name=lroa", "method.name: 'lroa' is not one of"),
    ("train.batch_size=zero", "train.batch_size: expected an integer"),
    ("train.batch_size=0", "train.batch_size: 0 is below the minimum 1"),
    ("train.warmup_ratio=1.5", "train.warmup_ratio: 1.5 is above the maximum"),
    ("epochs", "is not of the form key=value"),
])
def test_bad_override_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("sentiment-full", [override])


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="presets: .*sentiment-full"):
        load_config("no-such-preset")


def test_config_hash_changes_with_values():
    assert config_hash(load_config("sentiment-full")) == config_hash(load_config("sentiment-full"))
    assert config_hash(load_config("sentiment-full")) != config_hash(load_config("sentiment-full", ["train.seed=1"]))


def test_missing_data_root_gives_instructions(monkeypatch, tmp_path):
    from toolchain.core.config import expand_data_path
    import toolchain.core.config as config

    monkeypatch.delenv("TOOLCHAIN_DATA_DIR", raising=False)
    monkeypatch.setattr(config, "data_root", lambda: None)
    with pytest.raises(ConfigError, match="TOOLCHAIN_DATA_DIR"):
        expand_data_path("${data}/financial_phrasebank/splits/allagree/train.jsonl")


def test_train_metric_defaults_per_task_and_a_wrong_name_lists_the_valid_ones():
    from toolchain.core.config import train_metric

    assert train_metric(load_config(None, [])) == "macro_f1"
    assert train_metric(load_config(None, ["model.task=token-classification"])) == "f1"
    with pytest.raises(ConfigError, match="train.metric: 'macro_f1' is not a metric of token-classification; "
                                          "valid: auto, f1, precision, recall"):
        load_config(None, ["model.task=token-classification", "train.metric=macro_f1"])
    with pytest.raises(ConfigError, match="train.metric: 'f1' .*valid: auto, macro_f1, accuracy"):
        load_config("sentiment-full", ["train.metric=f1"])


@pytest.mark.parametrize("task_name", ["sequence-classification", "token-classification"])
def test_train_metric_names_are_the_ones_the_task_reports(task_name):
    """The Trainer sees ``task.summary(...)``; every valid train.metric must be one of its keys."""
    import numpy as np

    from toolchain.core.config import TASK_METRICS
    from toolchain.tasks import get_task

    task = get_task(task_name)
    if task_name == "sequence-classification":
        labels, logits, gold = ["a", "b"], np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1])
    else:
        labels, logits, gold = ["O", "B-X"], np.array([[[1.0, 0.0], [0.0, 1.0]]]), np.array([[0, 1]])
    reported = task.summary(task.metrics(logits, gold, labels))
    assert set(TASK_METRICS[task_name]) == set(reported) and TASK_METRICS[task_name][0] == task.default_metric


# --------------------------------------------------------------------------- `toolchain config` for every kind

def test_config_command_resolves_export_and_pretrain_presets(capsys):
    """`--list` shows every preset, so `--config` resolves every one, with the loader of its kind."""
    import yaml

    from toolchain.cli import main
    from toolchain.core.config import to_dict
    from toolchain.export.config import load_export_config

    assert main(["config", "--list"]) == 0
    assert "export-default" in capsys.readouterr().out
    assert main(["config", "--config", "export-default", "prune.amount=0.3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == to_dict(load_export_config("export-default", ["prune.amount=0.3"]))
    assert printed["kind"] == "export" and printed["prune"]["amount"] == 0.3
    assert main(["config", "--config", "pretrain-fomc"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["kind"] == "pretrain"
    assert main(["config", "--config", "export-default", "prune.amuont=0.3"]) == 2  # errors name the key
    assert "prune.amount" in capsys.readouterr().err


def test_config_command_lists_the_options_of_each_kind(capsys):
    from toolchain.cli import main

    assert main(["config"]) == 0  # run options, as before
    assert "train.metric" in capsys.readouterr().out
    assert main(["config", "--kind", "export"]) == 0
    listing = capsys.readouterr().out
    assert "prune.amount" in listing and "serve_variant" in listing and "train.metric" not in listing
    assert main(["config", "--config", "export-default", "serve_variant=int8", "--options"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("serve_variant "))
    assert line.split()[1] == "int8" and "variant the service uses" in line  # the resolved value, with help


# --------------------------------------------------------------------------- renamed keys (one release)

def test_the_former_gate_section_is_read_as_accuracy_gate_with_a_warning(tmp_path, capsys):
    """`gate.*` (a YAML section, a key=value override, `export.gate.*` in build) still works, naming the new key."""
    from toolchain.build import split_overrides
    from toolchain.export.config import load_export_config

    cfg = load_export_config(None, ["gate.max_drop=2.5"])
    assert cfg.accuracy_gate.max_drop == 2.5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'gate.max_drop' is deprecated" in err and "'accuracy_gate.max_drop'" in err
    assert load_export_config(None, split_overrides(["export.gate.alpha=0"])[1]).accuracy_gate.alpha == 0
    assert "use 'accuracy_gate.alpha'" in capsys.readouterr().err

    old = tmp_path / "old-export.yaml"
    old.write_text("kind: export\nextends: export-default\ngate:\n  max_drop: 3.0\n")
    cfg = load_export_config(str(old), ["accuracy_gate.alpha=0.01"])
    assert (cfg.accuracy_gate.max_drop, cfg.accuracy_gate.alpha, cfg.accuracy_gate.parity_atol) == (3.0, 0.01, 1e-4)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{old}: config key 'gate' is deprecated" in err and "'accuracy_gate'" in err
    with pytest.raises(ConfigError, match="accuracy_gate.max_drop"):
        load_export_config(None, ["gate.max_drop=-1"])          # checked under the current name


def test_the_rename_changes_no_export_config_hash():
    """Export dirs written before the rename stay up to date: the hash is taken under the former name."""
    from dataclasses import replace

    from toolchain.export.config import ExportConfig, load_export_config

    from toolchain.core.config import to_dict

    for cfg in (replace(ExportConfig(), output_dir=None), replace(load_export_config("export-prune"), output_dir=None)):
        before = to_dict(cfg)
        before["gate"] = before.pop("accuracy_gate")             # the same values as a pre-rename export recorded
        assert config_hash(cfg) == config_hash(before)
    assert (config_hash(load_export_config(None, ["accuracy_gate.max_drop=2"]))
            == config_hash(load_export_config(None, ["gate.max_drop=2"])))
