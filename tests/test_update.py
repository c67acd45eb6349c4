"""`toolchain update`: continuing a parent run on new data, replay, the penalty towards the parent, forgetting."""
from __future__ import annotations

import json
import random

import pytest
import torch
import yaml

from conftest import FILLER, NEGATIVE, NEUTRAL, POSITIVE, write_jsonl
from toolchain.cli import main
from toolchain.core.config import ConfigError, load_config
from toolchain.data.dataset import Splits
from toolchain.data.readers import Example

# new publishers, new wording: the same three classes said differently
NEW_POSITIVE = ["outlook upgraded", "margins widened", "orders surged", "dividend raised"]
NEW_NEGATIVE = ["outlook cut", "margins shrank", "orders slumped", "dividend suspended"]
NEW_NEUTRAL = ["the filing lists", "the agenda covers", "the desk noted", "the venue hosts"]


def new_sentences(n: int, seed: int, flipped: bool = False) -> list[dict]:
    """Sentences of the new wording; ``flipped``: the parent's own phrases with every label rotated."""
    rng = random.Random(seed)
    kinds = ([("negative", POSITIVE), ("neutral", NEGATIVE), ("positive", NEUTRAL)] if flipped else
             [("positive", NEW_POSITIVE), ("negative", NEW_NEGATIVE), ("neutral", NEW_NEUTRAL)])
    rows = [{"text": f"{rng.choice(kinds[i % 3][1])} {rng.choice(FILLER)} .", "label": kinds[i % 3][0]}
            for i in range(n)]
    rng.shuffle(rows)
    return rows


def tiny_run_overrides(tiny_bert, tiny_data, output) -> list[str]:
    """tiny_overrides of conftest, for a module-scoped parent (trained once for every test here)."""
    return [f"model.base={tiny_bert}", f"data.train={tiny_data['train']}", f"data.dev={tiny_data['dev']}",
            f"data.test={tiny_data['test']}", f"output_dir={output}", "train.epochs=6", "train.batch_size=8",
            "train.eval_steps=15", "train.learning_rate=3e-3", "data.max_length=32",
            "train.early_stopping_patience=0", "train.logging_steps=5"]


@pytest.fixture(scope="module")
def parent_run(tiny_bert, tiny_data, tmp_path_factory):
    output = tmp_path_factory.mktemp("update-parent") / "parent"
    assert main(["train", "--config", "sentiment-full", *tiny_run_overrides(tiny_bert, tiny_data, output)]) == 0
    assert metrics(output)["test"]["accuracy"] >= 0.6   # a parent that learned its data
    return output


def new_data(tmp_path, flipped: bool = False) -> dict:
    folder = tmp_path / ("flipped" if flipped else "new")
    folder.mkdir()
    return {split: write_jsonl(folder / f"{split}.jsonl", new_sentences(n, seed, flipped))
            for split, n, seed in (("train", 90, 11), ("dev", 24, 12), ("test", 30, 13))}


def update(parent, data, output, *overrides) -> int:
    return main(["update", str(parent), "--data", str(data["train"]), "--dev", str(data["dev"]),
                 "--test", str(data["test"]), "--output", str(output), "train.epochs=2", *overrides])


def manifest(run_dir) -> dict:
    return yaml.safe_load((run_dir / "toolchain.yaml").read_text())


def metrics(run_dir) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_update_records_its_parent_and_scores_both_test_sets(parent_run, tmp_path, capsys):
    data = new_data(tmp_path)
    assert update(parent_run, data, tmp_path / "child", "update.replay=0.5") == 0
    child = tmp_path / "child"
    m, parent_m = manifest(child), manifest(parent_run)
    assert m["lineage"][0]["run"] == str(parent_run)
    assert m["lineage"][0]["config_hash"] == parent_m["config_hash"]
    assert m["lineage"][0]["test"]["accuracy"] == metrics(parent_run)["test"]["accuracy"]
    assert m["config"]["model"]["base"] == str(parent_run / "model")
    assert m["data_files"]["replay"]["examples"] == 45          # 0.5 x 90 new examples (given over the 0.3 default)
    assert m["config"]["update"]["replay"] == 0.5
    assert m["data_files"]["parent.test"]["sha256"] == parent_m["data_files"]["test"]["sha256"]
    report = metrics(child)["update"]
    # the parent's own figure on its test set is the stored one; the run's is a fresh score of the new model
    assert report["parent_test"]["parent"] == metrics(parent_run)["test"]["accuracy"]
    assert report["parent_test"]["run"] == metrics(child)["parent_test"]["accuracy"]
    assert report["new_test"]["run"] == metrics(child)["test"]["accuracy"]
    assert report["new_test"]["gain_points"] == pytest.approx(100 * (report["new_test"]["run"]
                                                                     - report["new_test"]["parent"]), abs=1e-3)
    # the score "before" is the parent model's own on the new test set (bf16 autocast may move one borderline text)
    from toolchain.evaluate import evaluate_file
    assert report["new_test"]["parent"] == pytest.approx(evaluate_file(str(parent_run), str(data["test"]))["accuracy"],
                                                         abs=1 / 30 + 1e-9)
    assert m["promotable"] == report["promotable"] == (report["parent_test"]["drop_points"] <= 0.5)
    out = capsys.readouterr().out
    assert "parent's test (accuracy)" in out and "new test (accuracy)" in out
    # the parent's model was the starting point: no head was re-initialised
    assert m["label_source"] == "base model"
    # the lineage of a grandchild names both ancestors, nearest first
    assert update(child, data, tmp_path / "grandchild") == 0
    assert [a["run"] for a in manifest(tmp_path / "grandchild")["lineage"]] == [str(child), str(parent_run)]
    assert manifest(tmp_path / "grandchild")["config"]["update"]["replay"] == 0.3   # the measured default
    # compare shows the ancestry and the update's figures
    assert main(["compare", str(parent_run), str(tmp_path / "grandchild")]) == 0
    shown = capsys.readouterr().out
    assert f"grandchild <- {child} (config" in shown and f"<- {parent_run} (config" in shown
    assert "parent's test" in shown and ("NOT promotable" in shown or "promotable" in shown)


def test_forgetting_over_the_limit_is_not_promotable(parent_run, tmp_path, capsys):
    """New data that contradicts the parent (its phrases with rotated labels) makes it forget."""
    flipped = new_data(tmp_path, flipped=True)
    assert update(parent_run, flipped, tmp_path / "child", "update.max_forgetting=1.0", "update.parent_dev=false",
                  "update.replay=0",
                  "train.epochs=6") == 1     # the forgetting limit is a failed check: exit 1, the run kept
    report = metrics(tmp_path / "child")["update"]
    assert report["parent_test"]["drop_points"] > 1.0
    assert report["promotable"] is False and manifest(tmp_path / "child")["promotable"] is False
    assert "dropped" in report["why_not_promotable"] and "update.max_forgetting=1" in report["why_not_promotable"]
    assert "NOT promotable" in capsys.readouterr().out


def weight_distance(run_a, run_b) -> float:
    from safetensors.torch import load_file

    a, b = load_file(run_a / "model" / "model.safetensors"), load_file(run_b / "model" / "model.safetensors")
    return sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in a if k in b) ** 0.5


def test_the_penalty_keeps_the_weights_near_the_parent(parent_run, tmp_path):
    data = new_data(tmp_path)
    assert update(parent_run, data, tmp_path / "free", "update.replay=0") == 0
    assert update(parent_run, data, tmp_path / "anchored", "update.replay=0", "update.l2sp=50") == 0
    free, anchored = weight_distance(parent_run, tmp_path / "free"), weight_distance(parent_run, tmp_path / "anchored")
    assert anchored < 0.5 * free, (anchored, free)


def test_penalty_value_is_half_the_weight_times_the_squared_distance():
    from toolchain.train.update import ParentPenalty

    model = torch.nn.Linear(3, 2)
    penalty = ParentPenalty(model, weight=0.2)
    assert float(penalty(model).detach()) == 0.0
    with torch.no_grad():
        model.weight += 0.5     # 6 entries moved by 0.5
        model.bias -= 1.0       # 2 entries moved by 1
    assert float(penalty(model).detach()) == pytest.approx(0.5 * 0.2 * (6 * 0.25 + 2 * 1.0))
    penalty(model).backward()
    assert torch.allclose(model.bias.grad, torch.full((2,), 0.2 * -1.0))


def test_replay_sample_is_seeded_and_capped():
    from toolchain.train.update import replay_sample, with_parent_data

    parent = [Example(f"s{i}", "neutral", f"p:{i}") for i in range(50)]
    assert replay_sample(parent, 40, 0.5, seed=1) == replay_sample(parent, 40, 0.5, seed=1)
    assert replay_sample(parent, 40, 0.5, seed=1) != replay_sample(parent, 40, 0.5, seed=2)
    assert len(replay_sample(parent, 40, 0.5, seed=1)) == 20
    assert len(replay_sample(parent, 40, 10.0, seed=1)) == 50   # never more than the parent has
    assert replay_sample(parent, 40, 0.0, seed=1) == []
    new = Splits([Example("n", "positive", "n:1")] * 10, [Example("d", "positive", "d:1")] * 3,
                 [Example("t", "positive", "t:1")] * 4, {})
    cfg = load_config("sentiment-full", ["update.parent=somewhere", "update.replay=0.3"])
    mixed = with_parent_data(cfg, new, Splits(parent, parent[:5], parent[:7], {}))
    assert len(mixed.train) == 13 and len(mixed.dev) == 8 and len(mixed.test) == 4


@pytest.mark.parametrize("key", ["update.replay=0.5", "update.l2sp=0.1"])
def test_update_settings_without_a_parent_are_refused(key):
    with pytest.raises(ConfigError, match=key.split("=")[0]):
        load_config("sentiment-full", [key])


def test_update_from_a_lora_parent_continues_its_merged_weights(tiny_overrides, tmp_path):
    assert main(["train", "--config", "sentiment-full", *tiny_overrides, "method.name=lora",
                 f"output_dir={tmp_path / 'lora'}"]) == 0
    data = new_data(tmp_path)
    assert update(tmp_path / "lora", data, tmp_path / "child", "method.name=full") == 0
    report = metrics(tmp_path / "child")["update"]
    # before training, the child's model is the parent's: its score on the new test set before is the parent's
    assert manifest(tmp_path / "child")["label_source"] == "base model"
    from toolchain.evaluate import evaluate_file
    assert report["new_test"]["parent"] == pytest.approx(
        evaluate_file(str(tmp_path / "lora"), str(data["test"]))["accuracy"], abs=1 / 30 + 1e-9)
    assert not (tmp_path / "child" / "parent-model").exists()   # a full child does not keep the merged copy


def test_missing_parent_is_a_clear_error(tmp_path, tiny_data, capsys):
    assert main(["update", str(tmp_path / "nowhere"), "--data", str(tiny_data["train"])]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_exports_and_bentos_carry_the_lineage_and_refuse_an_unpromotable_run(parent_run, tmp_path):
    from toolchain.core.artifacts import ArtifactError, ExportInfo, load_run
    from toolchain.build import check_promotable, lineage_labels
    from toolchain.export.pipeline import lineage_section

    data = new_data(tmp_path)
    assert update(parent_run, data, tmp_path / "child", "update.max_forgetting=0") == 0
    child = load_run(tmp_path / "child")
    section = lineage_section(child)
    assert section["lineage"] == child.manifest["lineage"] and section["promotable"] == child.manifest["promotable"]
    labels = lineage_labels(section)
    assert labels["generation"] == "1"
    assert labels["parent_config_hash"] == manifest(parent_run)["config_hash"]
    assert labels["lineage"] == manifest(parent_run)["config_hash"][:8]
    assert labels["promotable"] == str(section["promotable"]).lower()
    assert lineage_section(load_run(parent_run)) == {"lineage": []}
    check_promotable(ExportInfo(tmp_path, {"promotable": True}))
    with pytest.raises(ArtifactError, match="not promotable.*--allow-unpromotable"):
        check_promotable(ExportInfo(tmp_path, {"promotable": False, "run_dir": str(tmp_path / "child")}))
