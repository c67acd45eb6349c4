"""`toolchain ensemble`: the mean of several runs' class probabilities (seed groups expanded, any methods),
members aligned by label name, mismatched runs refused; NER over the same word pieces."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from toolchain.core.artifacts import ArtifactError, load_run
from toolchain.cli import main
from toolchain.data.dataset import read_file
from toolchain.core.config import DataConfig


def trained(overrides, out, *extra, seeds=None):
    args = ["train", "--config", "sentiment-full", *[o for o in overrides if not o.startswith("output_dir=")],
            f"output_dir={out}", *extra]
    assert main(args + (["--seeds", str(seeds)] if seeds else [])) == 0
    return out


@pytest.fixture(scope="module")
def members(tmp_path_factory, tiny_bert, tiny_data):
    """A seed group of two full runs and a LoRA run, on the tiny data."""
    root = tmp_path_factory.mktemp("ensemble")
    overrides = [f"model.base={tiny_bert}", f"data.train={tiny_data['train']}", f"data.dev={tiny_data['dev']}",
                 f"data.test={tiny_data['test']}", "train.epochs=2", "train.batch_size=8", "train.eval_steps=15",
                 "train.learning_rate=3e-3", "data.max_length=32", "train.early_stopping_patience=0"]
    group = trained(overrides, root / "group", seeds=2)
    lora = trained(overrides, root / "lora", "method.name=lora", "train.seed=7")
    return {"group": group, "runs": [group / "seed-42", group / "seed-43"], "lora": lora, "data": tiny_data}


def probabilities_by_hand(run_dir, texts: list[str]) -> tuple[np.ndarray, list[str]]:
    """softmax of the run's model on each text alone (no batching, no padding), columns as its labels."""
    from toolchain.inference.run_model import load_run_model

    run = load_run(run_dir)
    model, tokenizer = load_run_model(run)
    rows = []
    with torch.no_grad():
        for text in texts:
            encoded = tokenizer(text, truncation=True, max_length=run.max_length, return_tensors="pt")
            rows.append(torch.softmax(model(**encoded).logits.float(), -1)[0].numpy())
    return np.array(rows), run.labels


def test_ensemble_probabilities_are_the_mean_of_the_members(members):
    from toolchain.inference.members import ensemble_probabilities, expand_members

    runs = expand_members([str(members["group"]), str(members["lora"])])
    assert [r.path for r in runs] == [*members["runs"], members["lora"]]   # the group stands for its runs
    examples = read_file(DataConfig(), str(members["data"]["test"]))
    labels = runs[0].labels
    mean, each = ensemble_probabilities(runs, examples, labels)
    by_hand = [probabilities_by_hand(r.path, [ex.text for ex in examples])[0] for r in runs]
    np.testing.assert_allclose(mean, np.mean(by_hand, axis=0), atol=1e-5)
    for got, expected in zip(each, by_hand):
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert mean.shape == (30, 3) and np.allclose(mean.sum(-1), 1.0)
    assert np.abs(by_hand[0] - by_hand[2]).max() > 1e-3   # members differ: the mean is not one of them


def test_cli_reports_members_and_ensemble_on_the_first_runs_test_split(members, tmp_path, capsys):
    from toolchain.evaluate import evaluate_file

    out = tmp_path / "ensemble.json"
    assert main(["ensemble", str(members["group"]), str(members["lora"]), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ensemble (3)" in printed and "group/seed-42" in printed and "lora" in printed
    result = json.loads(out.read_text())
    assert result["data"] == str(members["data"]["test"].resolve())
    for member in result["members"]:
        alone = evaluate_file(member["run"], None)
        assert member["metrics"]["accuracy"] == pytest.approx(alone["accuracy"])
    texts = [json.loads(line) for line in members["data"]["test"].read_text().splitlines()]
    by_hand = np.mean([probabilities_by_hand(r, [t["text"] for t in texts])[0]
                       for r in [*members["runs"], members["lora"]]], axis=0)
    labels = result["labels"]
    accuracy = np.mean([labels[i] == t["label"] for i, t in zip(by_hand.argmax(-1), texts)])
    assert result["ensemble"]["accuracy"] == pytest.approx(accuracy)
    assert [m["method"] for m in result["members"]] == ["full", "full", "lora"]


def relabelled_copy(run_dir, target, labels=None, order=None, **manifest):
    """A copy of a run with other label names, or its classes in another order (head rows permuted too)."""
    shutil.copytree(run_dir, target)
    path = target / "toolchain.yaml"
    data = yaml.safe_load(path.read_text())
    if order is not None:
        from safetensors.torch import load_file, save_file

        weights = load_file(target / "model" / "model.safetensors")
        for key in ("classifier.weight", "classifier.bias"):
            weights[key] = weights[key][order].contiguous()
        save_file(weights, target / "model" / "model.safetensors", metadata={"format": "pt"})
        labels = [data["labels"][i] for i in order]
        config = json.loads((target / "model" / "config.json").read_text())
        config["id2label"] = {str(i): label for i, label in enumerate(labels)}
        config["label2id"] = {label: i for i, label in enumerate(labels)}
        (target / "model" / "config.json").write_text(json.dumps(config))
    data["labels"] = labels
    data.update(manifest)
    path.write_text(yaml.safe_dump(data))
    return target


def test_members_are_aligned_by_label_name(members, tmp_path):
    """A member whose classes are in another order gives the same ensemble once its columns are aligned."""
    from toolchain.inference.members import ensemble_probabilities, expand_members

    first = members["runs"][0]
    permuted = relabelled_copy(first, tmp_path / "permuted", order=[2, 0, 1])
    examples = read_file(DataConfig(), str(members["data"]["test"]))
    runs = expand_members([str(first), str(permuted)])
    mean, (a, b) = ensemble_probabilities(runs, examples, runs[0].labels)
    np.testing.assert_allclose(a, b, atol=1e-5)
    raw, raw_labels = probabilities_by_hand(permuted, [ex.text for ex in examples[:3]])
    assert raw_labels != runs[0].labels and not np.allclose(raw, a[:3], atol=1e-3)


def test_mismatched_labels_and_tasks_are_refused_naming_both(members, tmp_path):
    first = members["runs"][0]
    other = relabelled_copy(first, tmp_path / "bullish", labels=["bearish", "neutral", "bullish"])
    with pytest.raises(ArtifactError, match=r"bullish.*has labels \['bearish'.*seed-42 has labels \['negative'"):
        main_ensemble([first, other])
    ner = relabelled_copy(first, tmp_path / "ner", labels=["negative", "neutral", "positive"],
                          task="token-classification")
    with pytest.raises(ArtifactError, match="ner is a token-classification run and .*seed-42 a "
                                            "sequence-classification"):
        main_ensemble([first, ner])
    assert main(["ensemble", str(first), str(other)]) == 2   # the CLI: one clear line, exit status 2


def main_ensemble(paths):
    from toolchain.ensemble import evaluate_ensemble
    return evaluate_ensemble([str(p) for p in paths])


# --------------------------------------------------------------------------- token classification

@pytest.fixture(scope="module")
def ner_members(tmp_path_factory, tiny_bert, tiny_conll):
    root = tmp_path_factory.mktemp("ner-ensemble")
    runs = []
    for seed in (1, 2):
        out = root / f"ner-{seed}"
        args = [f"model.base={tiny_bert}", f"data.train={tiny_conll['train']}", f"data.dev={tiny_conll['dev']}",
                f"data.test={tiny_conll['test']}", f"output_dir={out}", "train.epochs=2", "train.batch_size=8",
                "train.eval_steps=20", "train.learning_rate=5e-3", "data.max_length=32",
                "train.early_stopping_patience=0", f"train.seed={seed}"]
        assert main(["train", "--config", "ner-conll-full", *args]) == 0
        runs.append(out)
    return runs


def test_ner_ensemble_averages_per_token_probabilities(ner_members, tiny_conll):
    from toolchain.ensemble import evaluate_ensemble
    from toolchain.inference.members import ensemble_probabilities, expand_members, member_probabilities
    from toolchain.tasks.token_classification import IGNORE

    runs = expand_members([str(r) for r in ner_members])
    examples = read_file(DataConfig(tag_scheme="auto"), str(tiny_conll["test"]))
    mean, _ = ensemble_probabilities(runs, examples, runs[0].labels)
    each = [member_probabilities(r, examples, runs[0].labels) for r in runs]
    np.testing.assert_allclose(mean, (each[0] + each[1]) / 2, atol=1e-6)
    result = evaluate_ensemble([str(r) for r in ner_members])
    assert 0.0 <= result["ensemble"]["f1"] <= 1.0 and len(result["members"]) == 2
    from toolchain.ensemble import gold_ids
    gold = gold_ids(runs[0], examples, runs[0].labels)
    assert mean.shape[:2] == gold.shape and (gold != IGNORE).sum() > 100


def test_ner_members_with_other_word_pieces_are_refused(ner_members, tmp_path):
    other = relabelled_copy(ner_members[1], tmp_path / "ner-24", labels=load_run(ner_members[1]).labels)
    data = yaml.safe_load((other / "toolchain.yaml").read_text())
    data["config"]["data"]["max_length"] = 24   # the long test sentences are windowed differently
    (other / "toolchain.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ArtifactError, match="different word pieces"):
        main_ensemble([ner_members[0], other])
