"""Token classification through `train`, `evaluate` and `compare` on a tiny BERT and tiny CoNLL files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import make_ner_sentences, write_conll
from toolchain.core.config import load_config
from toolchain.evaluate import compare_runs, evaluate_file
from toolchain.train.runner import train

METHODS = {
    "full": [],
    "head": ["method.name=head"],
    "top-k": ["method.name=top-k", "method.top_k=1"],
    "lora": ["method.name=lora", "method.lora_r=4", "method.lora_alpha=8"],
    "adalora": ["method.name=adalora", "method.lora_r=2", "method.adalora_init_r=4", "method.adalora_delta_t=2"],
    "ia3": ["method.name=ia3"],
    "fgm": ["adversarial.kind=fgm", "adversarial.epsilon=0.5"],
    "lora-pgd": ["method.name=lora", "method.lora_r=4", "adversarial.kind=pgd", "adversarial.steps=2"],
}


def _run(overrides: list[str]) -> tuple[Path, dict]:
    run_dir = train(load_config("ner-conll-full", overrides), overwrite=True)
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def full_run(tiny_bert, tiny_conll, tmp_path_factory) -> Path:
    """One tiny full fine-tuning run shared by the tests that start from a trained NER model."""
    out = tmp_path_factory.mktemp("ner-full") / "run"
    overrides = [f"model.base={tiny_bert}", f"data.train={tiny_conll['train']}", f"data.dev={tiny_conll['dev']}",
                 f"data.test={tiny_conll['test']}", f"output_dir={out}", "train.epochs=6", "train.batch_size=8",
                 "train.eval_steps=30", "train.learning_rate=5e-3", "data.max_length=32",
                 "train.early_stopping_patience=0", "train.logging_steps=10"]
    return _run(overrides)[0]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_ner(method, tiny_ner_overrides):
    run_dir, metrics = _run(tiny_ner_overrides + ["train.max_steps=6", "train.eval_steps=6"] + METHODS[method])
    manifest = yaml.safe_load((run_dir / "toolchain.yaml").read_text())
    assert manifest["status"] == "complete" and manifest["task"] == "token-classification"
    assert manifest["labels"] == ["B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O"]
    test = metrics["test"]
    assert set(test["per_type"]) == {"LOC", "ORG", "PER"} and 0.0 <= test["f1"] <= 1.0
    assert test["entities"] == 20 * 3 + 4  # every test entity is scored, also in the 4 windowed sentences
    assert "confusion_matrix" not in test
    peft = method in ("lora", "adalora", "ia3", "lora-pgd")
    assert (run_dir / "model" / ("adapter_config.json" if peft else "config.json")).exists()
    fraction = metrics["parameters"]["trainable_fraction"]
    assert fraction == 1.0 if method in ("full", "fgm") else fraction < 0.5
    # the saved model, reloaded, scores the test file exactly as training reported
    assert evaluate_file(str(run_dir), None)["f1"] == pytest.approx(test["f1"], abs=1e-9)


def test_full_fine_tuning_learns_the_entities(full_run):
    metrics = json.loads((full_run / "metrics.json").read_text())
    assert metrics["test"]["f1"] > 0.6, metrics["test"]  # an untrained head scores about 0
    assert metrics["test"]["sentences"] > 20  # the 4 long test sentences take several windows at max_length 32


def test_train_from_ner_run_reuses_label_map(full_run, tiny_ner_overrides, tmp_path):
    """FIN5-like data (IO tags, no LOC) on top of a trained NER model keeps the model's labels and head."""
    sentences = [[(w, t) for w, t in s if not t.endswith("LOC")] for s in make_ner_sentences(40, 7)]
    io_file = write_conll(tmp_path / "io.txt", sentences, io_tags=True)
    overrides = tiny_ner_overrides + [f"model.base={full_run / 'model'}", f"data.train={io_file}", "data.dev=null",
                                      "data.tag_scheme=auto",
                                      "train.epochs=1", "train.learning_rate=1e-4"]
    run_dir, metrics = _run(overrides)
    manifest = yaml.safe_load((run_dir / "toolchain.yaml").read_text())
    assert manifest["label_source"] == "base model"
    assert manifest["labels"] == yaml.safe_load((full_run / "toolchain.yaml").read_text())["labels"]
    assert metrics["test"]["per_type"]["LOC"]["f1"] > 0.5  # the reused head still finds LOC


def test_train_from_ner_run_with_new_labels_gets_a_new_head(full_run, tiny_ner_overrides, tmp_path):
    sentences = [[(w, t.replace("ORG", "COMPANY")) for w, t in s] for s in make_ner_sentences(40, 8)]
    files = {name: write_conll(tmp_path / f"{name}.txt", sentences) for name in ("train", "dev", "test")}
    overrides = tiny_ner_overrides + [f"model.base={full_run / 'model'}", "train.max_steps=2"] + \
        [f"data.{name}={path}" for name, path in files.items()]
    run_dir, _ = _run(overrides)
    manifest = yaml.safe_load((run_dir / "toolchain.yaml").read_text())
    assert manifest["label_source"].startswith("train data (new head")
    assert "B-COMPANY" in manifest["labels"]


def test_evaluate_on_another_file_and_compare(full_run, tmp_path):
    io_file = write_conll(tmp_path / "other.txt", make_ner_sentences(12, 11), io_tags=True)
    metrics = evaluate_file(str(full_run), str(io_file))
    assert metrics["data"] == str(io_file) and metrics["entities"] == 36
    table = compare_runs([str(full_run), str(full_run)], data=str(io_file))
    header = table.splitlines()[0].split()
    assert header[:5] == ["run", "method", "base", "trainable", "f1"] and "f1:PER" in header
    assert f"{metrics['f1']:.4f}" in table.splitlines()[2]


def test_token_run_without_a_preset_evaluates_with_the_entity_f1(tiny_ner_overrides):
    """No preset, no train.metric: the dev metric follows the task (seqeval micro entity F1), so the first
    evaluation (and the best-model pick) works instead of failing on a missing 'eval_macro_f1'."""
    cfg = load_config(None, tiny_ner_overrides + ["model.task=token-classification", "data.format=conll",
                                                  "train.max_steps=4", "train.eval_steps=2"])
    run_dir = train(cfg, overwrite=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["metric_for_best_model"] == "f1"
    assert metrics["train"]["best_checkpoint"]
