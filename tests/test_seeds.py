"""Seeds as a setting: `train --seeds N` (mean ± std), and the paired bootstrap between two seed groups."""
from __future__ import annotations

import json
import statistics

import pytest

from toolchain.core.artifacts import ArtifactError, write_json
from toolchain.cli import main
from toolchain.core.artifacts import GROUP_FILE
from toolchain.train.comparison import PREDICTIONS_FILE, compare_groups, paired_bootstrap


def test_seeds_trains_each_seed_and_reports_mean_and_std(tiny_overrides, tmp_path, capsys):
    group = tmp_path / "group"
    overrides = [o for o in tiny_overrides if not o.startswith("output_dir=")] + [f"output_dir={group}"]
    assert main(["train", "--config", "sentiment-full", *overrides, "--seeds", "2"]) == 0
    runs = [group / "seed-42", group / "seed-43"]
    summary = json.loads((group / GROUP_FILE).read_text())
    assert summary["seeds"] == [42, 43] and summary["runs"] == [str(r) for r in runs]
    accuracies = [json.loads((r / "metrics.json").read_text())["test"]["accuracy"] for r in runs]
    stats = summary["metrics"]["test"]["accuracy"]
    assert stats["values"] == accuracies
    assert stats["mean"] == pytest.approx(statistics.fmean(accuracies))
    assert stats["std"] == pytest.approx(statistics.stdev(accuracies))
    predictions = json.loads((runs[0] / PREDICTIONS_FILE).read_text())
    assert len(predictions["gold"]) == len(predictions["predicted"]) == 30
    first = capsys.readouterr().out
    assert "mean ± std (2 seeds)" in first
    # a second call reuses the finished runs instead of training again
    assert main(["train", "--config", "sentiment-full", *overrides, "--seeds", "2"]) == 0
    again = capsys.readouterr().out
    assert again.count(": up to date ") == 2 and "training" not in again.split("seed group")[0].lower()


def fake_group(root, name, rows_per_run: list[list[bool]], test_sha="abc") -> str:
    """A seed group whose runs predicted right (True) or wrong per test item."""
    group = root / name
    runs = []
    for k, rights in enumerate(rows_per_run):
        run = group / f"seed-{k}"
        run.mkdir(parents=True)
        gold = ["positive"] * len(rights)
        write_json(run / PREDICTIONS_FILE, {"task": "sequence-classification", "test_sha256": test_sha, "gold": gold,
                                            "predicted": ["positive" if r else "negative" for r in rights]})
        accuracy = sum(rights) / len(rights)
        write_json(run / "metrics.json", {"dev": {"accuracy": accuracy}, "test": {"accuracy": accuracy}})
        runs.append(str(run))
    stats = lambda vals: {"mean": statistics.fmean(vals), "std": statistics.stdev(vals), "values": vals}  # noqa: E731
    accs = [sum(r) / len(r) for r in rows_per_run]
    write_json(group / GROUP_FILE, {"runs": runs, "seeds": list(range(len(runs))),
                                    "metrics": {"dev": {"accuracy": stats(accs)}, "test": {"accuracy": stats(accs)}}})
    return str(group)


def test_paired_bootstrap_separates_a_real_gain_from_noise(tmp_path):
    n = 200
    base = [[i % 4 != 0 for i in range(n)], [i % 4 != 1 for i in range(n)]]            # 75% each
    better = [[i % 10 != 0 for i in range(n)], [i % 10 != 1 for i in range(n)]]        # 90% each
    same = [[i % 4 != 2 for i in range(n)], [i % 4 != 3 for i in range(n)]]            # 75%, other items
    a, b, c = (fake_group(tmp_path, name, rows) for name, rows in (("a", base), ("b", better), ("c", same)))
    gain = paired_bootstrap(json.loads((tmp_path / "a" / GROUP_FILE).read_text())["runs"],
                            json.loads((tmp_path / "b" / GROUP_FILE).read_text())["runs"], resamples=2000)
    assert gain["difference"] == pytest.approx(0.15)
    assert gain["p_value"] < 0.01 and gain["ci95"][0] > 0
    noise = paired_bootstrap(json.loads((tmp_path / "a" / GROUP_FILE).read_text())["runs"],
                             json.loads((tmp_path / "c" / GROUP_FILE).read_text())["runs"], resamples=2000)
    assert noise["difference"] == pytest.approx(0.0) and noise["p_value"] > 0.5
    assert noise["ci95"][0] < 0 < noise["ci95"][1]
    text = compare_groups([a, b, c])
    assert "75.00 ± 0.00" in text and "90.00 ± 0.00" in text
    assert "b - a: accuracy +15.00 points" in text and "p = " in text


def test_groups_on_different_test_sets_are_not_compared(tmp_path):
    a = fake_group(tmp_path, "a", [[True, False] * 5] * 2, test_sha="one")
    b = fake_group(tmp_path, "b", [[True, True] * 5] * 2, test_sha="two")
    with pytest.raises(ArtifactError, match="different test sets"):
        compare_groups([a, b])


def test_ner_items_resample_entity_counts():
    from toolchain.train.comparison import entity_counts, group_score

    gold = [["B-ORG", "O"], ["B-PER", "I-PER"], ["O", "O"]]
    predicted = [["B-ORG", "O"], ["B-PER", "O"], ["B-LOC", "O"]]
    counts = entity_counts(gold, predicted)
    assert counts.tolist() == [[1, 1, 1], [0, 1, 1], [0, 1, 0]]
    # micro F1 over the items: tp 1, predicted 3, gold 2 -> 2/5
    assert group_score("f1", counts[:, None, :]) == pytest.approx(0.4)


def test_seeds_with_a_changed_option_refuse_to_replace_finished_runs_without_overwrite(tiny_overrides, tmp_path):
    """A finished seed run trained with another config (or data) is replaced only with --overwrite; without it the
    group stops before training anything, naming the seed dir (the single-run path refuses the same way)."""
    from toolchain.core.config import load_config
    from toolchain.train.seeds import train_seeds

    group = tmp_path / "group"
    overrides = [o for o in tiny_overrides if not o.startswith("output_dir=")] + [f"output_dir={group}",
                                                                                 "train.max_steps=2"]
    train_seeds(load_config("sentiment-full", overrides), 1)
    finished = (group / "seed-42" / "metrics.json").read_text()
    changed = load_config("sentiment-full", overrides + ["train.learning_rate=1e-3"])
    with pytest.raises(ArtifactError, match=r"seed-42.*--overwrite"):
        train_seeds(changed, 2)
    assert (group / "seed-42" / "metrics.json").read_text() == finished      # the finished run is kept
    assert not (group / "seed-43").exists()                                   # and nothing was trained
    train_seeds(changed, 2, overwrite=True)                                   # asked for: replaced
    manifest = _manifest_of(group / "seed-42")
    assert manifest["config"]["train"]["learning_rate"] == pytest.approx(1e-3)
    assert json.loads((group / GROUP_FILE).read_text())["seeds"] == [42, 43]


def _manifest_of(run_dir):
    import yaml

    return yaml.safe_load((run_dir / "toolchain.yaml").read_text())
