"""Distillation into the served student: the loss formula, unlabeled texts on the soft loss only, the mixin's
composition, the config checks, and a tiny distilled run that follows its teacher, records it and exports."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from toolchain.cli import main
from toolchain.core.config import ConfigError, load_config
from toolchain.data.readers import DataError, Example
from toolchain.train.distill import (IGNORE, TEACHER_KEY, DistillLoss, TeacherCollator, check_no_overlap,
                                     read_unlabeled)


def crafted_batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(5, 3, generator=generator) * 2
    labels = torch.tensor([0, 2, IGNORE, 1, IGNORE])
    teacher = torch.softmax(torch.randn(5, 3, generator=generator), -1)
    return logits, labels, teacher


def formula(logits, labels, teacher, alpha: float, temperature: float) -> float:
    """alpha * T^2 * mean_i KL(teacher_i || softmax(z_i / T)) + (1 - alpha) * CE over the labelled items, by hand."""
    z, p = logits.double().numpy(), teacher.double().numpy()
    q = np.exp(z / temperature) / np.exp(z / temperature).sum(-1, keepdims=True)
    kl = np.mean([sum(p[i, c] * math.log(p[i, c] / q[i, c]) for c in range(3)) for i in range(len(z))])
    full = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    labelled = [i for i, y in enumerate(labels.tolist()) if y != IGNORE]
    ce = np.mean([-math.log(full[i, labels[i]]) for i in labelled])
    return alpha * temperature ** 2 * kl + (1 - alpha) * ce


@pytest.mark.parametrize("alpha, temperature", [(0.3, 2.0), (0.9, 4.0), (1.0, 1.0)])
def test_loss_equals_the_formula_on_a_crafted_batch(alpha, temperature):
    logits, labels, teacher = crafted_batch()
    loss = DistillLoss(alpha, temperature)(logits, labels, teacher)
    assert loss.item() == pytest.approx(formula(logits, labels, teacher, alpha, temperature), rel=1e-5)


def test_alpha_zero_is_the_plain_cross_entropy():
    logits, labels, teacher = crafted_batch(1)
    labelled = labels != IGNORE
    plain = F.cross_entropy(logits[labelled], labels[labelled])
    assert DistillLoss(0.0, 2.0)(logits, labels, teacher).item() == pytest.approx(plain.item(), rel=1e-6)
    all_labelled = torch.tensor([0, 2, 1, 1, 0])
    assert DistillLoss(0.0, 3.0)(logits, all_labelled, teacher).item() == pytest.approx(
        F.cross_entropy(logits, all_labelled).item(), rel=1e-6)
    # dev and test batches carry no teacher probabilities: the hard loss only
    assert DistillLoss(0.7, 2.0)(logits, all_labelled, None).item() == pytest.approx(
        F.cross_entropy(logits, all_labelled).item(), rel=1e-6)
    assert DistillLoss(0.7, 2.0)(logits, labels, teacher).item() != pytest.approx(plain.item(), rel=1e-3)


def test_token_loss_is_the_mean_kl_over_the_tokens_with_a_teacher_row():
    """NER: per-token KL, averaged over the tokens whose teacher row is set (padding and unlabelled pieces are
    zero rows); the hard part is the cross-entropy over the labelled tokens."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 3, generator=generator)
    labels = torch.tensor([[IGNORE, 0, 2, IGNORE], [IGNORE, 1, IGNORE, IGNORE]])
    teacher = torch.softmax(torch.randn(2, 4, 3, generator=generator), -1) * (labels != IGNORE)[..., None]
    loss = DistillLoss(alpha=0.6, temperature=2.0)
    kept = [(0, 1), (0, 2), (1, 1)]
    flat_logits = torch.stack([logits[i, j] for i, j in kept])
    flat_labels = torch.tensor([labels[i, j] for i, j in kept])
    flat_teacher = torch.stack([teacher[i, j] for i, j in kept])
    expected = formula(flat_logits, flat_labels, flat_teacher, 0.6, 2.0)
    assert float(loss(logits, labels, teacher)) == pytest.approx(expected, rel=1e-5)
    assert loss.soft(logits, teacher).shape == (3,)


def test_collator_pads_per_token_teacher_rows_to_the_batch(tiny_bert):
    from transformers import AutoTokenizer, DataCollatorForTokenClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    collate = TeacherCollator(DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE))
    features = [{"input_ids": [2, 5, 6, 3], "attention_mask": [1] * 4, "labels": [IGNORE, 0, 1, IGNORE],
                 TEACHER_KEY: [[0, 0], [0.9, 0.1], [0.2, 0.8], [0, 0]]},
                {"input_ids": [2, 7, 3], "attention_mask": [1] * 3, "labels": [IGNORE, 1, IGNORE],
                 TEACHER_KEY: [[0, 0], [0.3, 0.7], [0, 0]]}]
    batch = collate(features)
    assert batch[TEACHER_KEY].shape == (2, 4, 2) and batch["labels"].shape == (2, 4)
    assert batch[TEACHER_KEY][1, 3].tolist() == [0.0, 0.0]
    assert batch[TEACHER_KEY][1, 1].tolist() == pytest.approx([0.3, 0.7])


def test_unlabeled_examples_get_only_the_soft_loss():
    """d loss / d z of an unlabeled item is alpha * T * (softmax(z/T) - teacher) / batch: the soft term alone; an
    unlabeled item that already matches its teacher pulls nothing, a labelled one with the same logits does."""
    alpha, T = 0.6, 2.0
    logits, labels, teacher = crafted_batch(2)
    logits[2] = T * torch.log(teacher[2]) + 1.5      # item 2 (unlabeled) already matches its teacher at T
    logits[1] = logits[2]
    teacher[1] = teacher[2]                         # item 1 (labelled) has the same logits and teacher
    logits.requires_grad_(True)
    DistillLoss(alpha, T)(logits, labels, teacher).backward()
    grad = logits.grad
    assert grad[2].abs().max() < 1e-6 and grad[1].abs().max() > 1e-2
    q4 = torch.softmax(logits[4].detach() / T, -1)
    torch.testing.assert_close(grad[4], alpha * T * (q4 - teacher[4]) / len(labels), rtol=1e-5, atol=1e-7)
    only_unlabeled = torch.full((5,), IGNORE)
    loss = DistillLoss(alpha, T)(logits.detach(), only_unlabeled, teacher)
    assert loss.item() == pytest.approx(alpha * DistillLoss(alpha, T).soft(logits.detach(), teacher).mean().item())


def test_head_loss_gives_the_hard_part_when_set():
    from toolchain.train.loss import HeadLoss

    logits, labels, teacher = crafted_batch(3)
    head = HeadLoss(["a", "b", "c"], np.array([0.5, 1.0, 2.0]))
    labelled = labels != IGNORE
    expected = head(logits[labelled], labels[labelled]).item()
    assert DistillLoss(0.0, 2.0)(logits, labels, teacher, head).item() == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(F.cross_entropy(logits[labelled], labels[labelled]).item(), rel=1e-3)


def test_collator_stacks_teacher_probabilities_beside_the_batch(tiny_bert):
    from transformers import AutoTokenizer, DataCollatorWithPadding

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    collate = TeacherCollator(DataCollatorWithPadding(tokenizer))
    features = [{**tokenizer(text), "labels": label, TEACHER_KEY: probs}
                for text, label, probs in (("profit rose", 2, [0.1, 0.2, 0.7]), ("sales fell sharply", IGNORE,
                                                                                  [0.8, 0.1, 0.1]))]
    batch = collate(features)
    torch.testing.assert_close(batch[TEACHER_KEY], torch.tensor([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]]))
    assert batch["labels"].tolist() == [2, IGNORE] and batch["input_ids"].shape[0] == 2
    plain = collate([{k: v for k, v in f.items() if k != TEACHER_KEY} for f in features])
    assert TEACHER_KEY not in plain


def test_mixin_composes_with_the_head_loss_trainer(tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer
    from transformers import TrainingArguments

    from toolchain.train.distill import with_distillation
    from toolchain.train.loss import HeadLoss, trainer_class
    from toolchain.train.update import ParentPenalty, with_penalty

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    head = HeadLoss(["a", "b", "c"], np.array([0.5, 1.0, 2.0]))
    cls = with_penalty(with_distillation(trainer_class(Trainer, True)))
    trainer = cls(model=model, args=TrainingArguments(str(tmp_path), use_cpu=True, report_to=[]),
                  data_collator=DataCollatorWithPadding(tokenizer), head_loss=head,
                  distill_loss=DistillLoss(0.5, 2.0), parent_penalty=ParentPenalty(model, 1.0))
    assert isinstance(trainer.data_collator, TeacherCollator)
    features = [{**tokenizer(t), "labels": y, TEACHER_KEY: p} for t, y, p in
                (("profit rose", 2, [0.1, 0.2, 0.7]), ("sales fell", 0, [0.6, 0.3, 0.1]),
                 ("it was", IGNORE, [0.3, 0.4, 0.3]))]
    batch = trainer.data_collator(features)
    model.eval()
    loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    expected = DistillLoss(0.5, 2.0)(outputs.logits, batch["labels"], batch[TEACHER_KEY], head)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# --------------------------------------------------------------------------- config and data checks

def test_config_errors_name_the_key(tiny_overrides):
    with pytest.raises(ConfigError, match="distill.unlabeled: needs distill.teacher"):
        load_config("sentiment-full", ["distill.unlabeled=u.jsonl"])
    assert load_config("ner-conll-full", ["distill.teacher=runs/x"]).distill.teacher == "runs/x"
    with pytest.raises(ConfigError, match="distill.unlabeled: unlabeled texts are for sequence classification"):
        load_config("ner-conll-full", ["distill.teacher=runs/x", "distill.unlabeled=u.jsonl"])
    with pytest.raises(ConfigError, match="distill.alpha: 1.5 is above the maximum"):
        load_config("sentiment-full", ["distill.teacher=runs/x", "distill.alpha=1.5"])
    with pytest.raises(ConfigError, match="distill.temperature: 0.0 is below the minimum"):
        load_config("sentiment-full", ["distill.teacher=runs/x", "distill.temperature=0"])


def test_unlabeled_texts_read_from_jsonl_or_lines(tmp_path):
    jsonl = tmp_path / "u.jsonl"
    jsonl.write_text('{"text": "profit rose", "source": "x"}\n\n{"text": "sales fell"}\n')
    lines = tmp_path / "u.txt"
    lines.write_text("profit rose\n\n  sales fell  \nshares jumped\n")
    assert [e.text for e in read_unlabeled(str(jsonl))] == ["profit rose", "sales fell"]
    assert [e.text for e in read_unlabeled(str(lines), limit=2)] == ["profit rose", "sales fell"]
    assert all(e.label is None for e in read_unlabeled(str(lines)))
    with pytest.raises(DataError, match="no-such.jsonl: file not found.*benchmarks/unlabeled_text.py"):
        read_unlabeled(str(tmp_path / "no-such.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1: missing key 'text'"):
        read_unlabeled(str(tmp_path / "bad.jsonl"))


def test_unlabeled_texts_that_are_test_texts_are_refused():
    test = [Example("Profit rose  in Q3 .", "positive", "test.jsonl:4")]
    unlabeled = [Example("sales fell", None, "u.txt:1"), Example("profit rose in q3 .", None, "u.txt:2")]
    with pytest.raises(DataError, match=r"1 texts are also in the test split, e\.g\. u\.txt:2"):
        check_no_overlap(unlabeled, {"dev": [], "test": test})
    check_no_overlap(unlabeled[:1], {"test": test})


# --------------------------------------------------------------------------- a tiny distilled run

SWAP = {"positive": "negative", "negative": "positive", "neutral": "neutral"}


def swapped(path, target):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    target.write_text("".join(json.dumps({**r, "label": SWAP[r["label"]]}) + "\n" for r in rows))
    return target


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, tiny_bert, tiny_data):
    """A teacher trained on swapped labels (positive <-> negative), and two students of the true labels with
    the same seed and settings (class weights, FGM): one plain, one distilled from that teacher with unlabeled
    texts."""
    from conftest import FILLER, NEGATIVE, NEUTRAL, POSITIVE

    root = tmp_path_factory.mktemp("distill")
    common = [f"model.base={tiny_bert}", "train.batch_size=8", "train.eval_steps=15", "train.learning_rate=3e-3",
              "data.max_length=32", "train.early_stopping_patience=0", "train.precision=fp32"]
    data = [f"data.{s}={tiny_data[s]}" for s in ("train", "dev", "test")]
    teacher_data = [f"data.{s}={swapped(tiny_data[s], root / f'swapped-{s}.jsonl')}" for s in ("train", "dev", "test")]
    assert main(["train", "--config", "sentiment-full", *common, *teacher_data, "train.epochs=6",
                 f"output_dir={root / 'teacher'}"]) == 0
    unlabeled = root / "unlabeled.txt"   # two fillers a sentence: never a dev/test text
    unlabeled.write_text("".join(f"{p} {FILLER[i % 6]} {FILLER[(i + 1) % 6]} .\n"
                                 for i, p in enumerate((POSITIVE + NEGATIVE + NEUTRAL) * 2)))
    student = [*common, *data, "train.epochs=3", "train.class_weights=balanced", "adversarial.kind=fgm"]
    assert main(["train", "--config", "sentiment-full", *student, f"output_dir={root / 'plain'}"]) == 0
    assert main(["train", "--config", "sentiment-full", *student, f"output_dir={root / 'student'}",
                 f"distill.teacher={root / 'teacher'}", "distill.alpha=0.9", "distill.temperature=2",
                 f"distill.unlabeled={unlabeled}"]) == 0
    return {"teacher": root / "teacher", "plain": root / "plain", "student": root / "student", "unlabeled": unlabeled,
            "data": tiny_data}


def probabilities(run_dir, path):
    from toolchain.core.artifacts import load_run
    from toolchain.core.config import DataConfig
    from toolchain.data.dataset import read_file
    from toolchain.inference.members import member_probabilities

    run = load_run(run_dir)
    return member_probabilities(run, read_file(DataConfig(), str(path)), ["negative", "neutral", "positive"])


def test_distilled_student_moves_towards_its_teacher(distilled):
    test = distilled["data"]["test"]
    teacher, plain, student = (probabilities(distilled[k], test) for k in ("teacher", "plain", "student"))

    def agreement(p):
        return float(np.mean(p.argmax(-1) == teacher.argmax(-1)))

    def kl(p):
        return float(np.mean((teacher * (np.log(teacher) - np.log(p))).sum(-1)))

    # the teacher swapped positive and negative: the plain student follows the true labels, the distilled one the
    # teacher (measured: agreement 0.67 against 0.00)
    assert agreement(student) >= agreement(plain) + 0.3, (agreement(student), agreement(plain))
    recorded = json.loads((distilled["student"] / "metrics.json").read_text())["distill"]
    assert recorded["student_test_agreement"] == pytest.approx(agreement(student), abs=0.05)
    assert recorded["student_test_kl"] == pytest.approx(kl(student), rel=0.1, abs=0.02)


def test_distilled_run_records_its_teacher_and_trains_on_the_unlabeled_texts(distilled):
    manifest = yaml.safe_load((distilled["student"] / "toolchain.yaml").read_text())
    teacher_manifest = yaml.safe_load((distilled["teacher"] / "toolchain.yaml").read_text())
    teacher_metrics = json.loads((distilled["teacher"] / "metrics.json").read_text())
    record = manifest["distill"]
    assert record["teachers"] == [{"run": str(distilled["teacher"]), "config_hash": teacher_manifest["config_hash"],
                                   "method": "full", "base_model": teacher_manifest["base_model"],
                                   "test": {k: teacher_metrics["test"][k] for k in ("accuracy", "macro_f1")}}]
    assert record["alpha"] == 0.9 and record["temperature"] == 2.0 and record["train_examples"] == 120
    assert record["unlabeled"]["examples"] == 36 and record["unlabeled"]["path"] == str(distilled["unlabeled"])
    assert manifest["config"]["distill"]["teacher"] == str(distilled["teacher"])
    metrics = json.loads((distilled["student"] / "metrics.json").read_text())
    plain = json.loads((distilled["plain"] / "metrics.json").read_text())
    assert metrics["distill"]["teachers"] == record["teachers"] and "teacher_test" in metrics["distill"]
    assert plain["train"]["global_step"] == 3 * math.ceil(120 / 8)
    assert metrics["train"]["global_step"] == 3 * math.ceil((120 + 36) / 8)   # the unlabeled texts are trained on
    assert "distill" not in yaml.safe_load((distilled["plain"] / "toolchain.yaml").read_text())


def test_teacher_with_other_labels_is_refused(distilled, tiny_overrides, tmp_path):
    import shutil

    other = tmp_path / "other-teacher"
    shutil.copytree(distilled["teacher"], other)
    manifest = yaml.safe_load((other / "toolchain.yaml").read_text())
    manifest["labels"] = ["bearish", "neutral", "bullish"]
    (other / "toolchain.yaml").write_text(yaml.safe_dump(manifest))
    from toolchain.train.runner import train

    with pytest.raises(ConfigError, match=r"distill.teacher: .*other-teacher has labels \['bearish'.*this run has "
                                          r"labels \['negative'"):
        train(load_config("sentiment-full", [*tiny_overrides, f"distill.teacher={other}"]))
    with pytest.raises(ConfigError, match=r"distill.teacher: .*other-teacher has labels \['bearish'.* and .*teacher "
                                          r"has labels \['negative'"):
        train(load_config("sentiment-full", [*tiny_overrides, f"distill.teacher={distilled['teacher']},{other}"]))
    assert not (tmp_path / "run").exists()   # refused before the run dir is written


def test_export_compresses_the_distilled_student(distilled, tmp_path):
    from toolchain.core.artifacts import load_export
    from toolchain.export.config import load_export_config
    from toolchain.export.pipeline import export

    cfg = load_export_config(None, ["variants=fp32", "serve_variant=fp32", "latency.rounds=2", "latency.warmup=1",
                                    "latency.batch_sizes=1", "rank_rounds=1"])
    out = export(distilled["student"], tmp_path / "export", cfg)
    info = load_export(out)
    info.verify()
    report = json.loads((out / "report.json").read_text())
    assert report["gate"]["passed"]


@pytest.mark.server
def test_served_student_scores_what_its_export_measured(distilled, tmp_path):
    """benchmarks/served_accuracy.py: a real server on 127.0.0.1 answers the test set with the export's own
    accuracy, and its scores are the calibrated probabilities (their ECE is the export's calibrated ECE)."""
    import sys
    from pathlib import Path

    from toolchain.export.config import load_export_config
    from toolchain.export.pipeline import export

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import served_accuracy

    cfg = load_export_config(None, ["variants=int8", "serve_variant=int8", "latency.rounds=2", "latency.warmup=1",
                                    "latency.batch_sizes=1", "rank_rounds=1", "accuracy_gate.max_drop=100"])
    out = export(distilled["student"], tmp_path / "export", cfg)
    assert served_accuracy.main([str(out), "--json", str(tmp_path / "served.json")]) == 0
    result = json.loads((tmp_path / "served.json").read_text())
    report = json.loads((out / "report.json").read_text())
    calibration = report["calibration"]["int8"]["main"]
    assert result["items"] == 30 and result["variant"] == "int8"
    assert result["served"]["accuracy"] == pytest.approx(report["variants"]["int8"]["test"]["accuracy"], abs=1e-9)
    assert calibration["temperature"] != pytest.approx(1.0, abs=1e-3)
    assert result["served"]["ece"] == pytest.approx(calibration["test_ece_after"], abs=1e-5)


# --------------------------------------------------------------------------- NER

def swapped_tags(path, target):
    """The CoNLL file with PER and ORG swapped in every tag."""
    swap = {"PER": "ORG", "ORG": "PER"}
    lines = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3][2:] in swap:
            parts[3] = parts[3][:2] + swap[parts[3][2:]]
        lines.append(" ".join(parts))
    target.write_text("\n".join(lines) + "\n")
    return target


@pytest.fixture(scope="module")
def ner_distilled(tmp_path_factory, tiny_bert, tiny_conll):
    """A NER teacher trained with PER and ORG swapped, then two students of the true tags with the same seed
    and settings: one plain, one distilled from that teacher (alpha 0.9)."""
    root = tmp_path_factory.mktemp("ner-distill")
    common = [f"model.base={tiny_bert}", "train.batch_size=8", "train.eval_steps=20", "train.learning_rate=5e-3",
              "data.max_length=32", "train.early_stopping_patience=0", "train.precision=fp32", "train.epochs=4"]
    teacher_data = [f"data.{s}={swapped_tags(tiny_conll[s], root / f'swapped-{s}.txt')}" for s in ("train", "dev", "test")]
    assert main(["train", "--config", "ner-conll-full", *common, *teacher_data, f"output_dir={root / 'teacher'}"]) == 0
    student = [*common, *(f"data.{s}={tiny_conll[s]}" for s in ("train", "dev", "test")), "data.subtoken_labels=all"]
    assert main(["train", "--config", "ner-conll-full", *student, f"output_dir={root / 'plain'}"]) == 0
    assert main(["train", "--config", "ner-conll-full", *student, f"output_dir={root / 'student'}",
                 f"distill.teacher={root / 'teacher'}", "distill.alpha=0.9", "distill.temperature=1"]) == 0
    return {k: root / k for k in ("teacher", "plain", "student")}


def test_ner_student_follows_its_teacher_token_by_token(ner_distilled, tiny_conll):
    from toolchain.ensemble import gold_ids, labelled_examples
    from toolchain.inference.members import ensemble_probabilities
    from toolchain.core.artifacts import load_run

    teacher_run = load_run(ner_distilled["teacher"])
    labels = list(teacher_run.labels)
    examples, _ = labelled_examples(teacher_run, None, "test")
    gold = gold_ids(teacher_run, examples, labels)
    scored = gold != IGNORE

    def probs(name):
        return ensemble_probabilities([load_run(ner_distilled[name])], examples, labels)[0]

    teacher, plain, student = probs("teacher"), probs("plain"), probs("student")
    width = gold.shape[1]

    def agreement(p):
        return float(np.mean((p[:, :width].argmax(-1) == teacher[:, :width].argmax(-1))[scored]))

    # the teacher swapped PER and ORG: the plain student follows the true tags, the distilled one the teacher
    assert agreement(student) >= agreement(plain) + 0.1, (agreement(student), agreement(plain))
    record = json.loads((ner_distilled["student"] / "metrics.json").read_text())["distill"]
    assert record["student_test_agreement"] == pytest.approx(agreement(student), abs=0.02)
    assert set(record["teacher_test"]) == {"f1", "precision", "recall"}
    from toolchain.evaluate import evaluate_file

    on_student_test = evaluate_file(str(ner_distilled["teacher"]), str(tiny_conll["test"]))   # the true tags
    assert record["teacher_test"]["f1"] == pytest.approx(on_student_test["f1"], abs=1e-6)
    assert record["train_examples"] == 80 and record["unlabeled"] is None


def test_ner_test_predictions_keep_the_test_files_order(ner_distilled, tiny_conll):
    """ner-conll-full batches by length (group_by_length), which also reorders transformers' evaluation batches:
    the final predictions must still follow the test file, window by window."""
    from toolchain.core.artifacts import load_run
    from toolchain.ensemble import labelled_examples

    run = load_run(ner_distilled["plain"])
    assert run.config["train"]["group_by_length"] is True
    examples, _ = labelled_examples(run, None, "test")
    recorded = json.loads((ner_distilled["plain"] / "test_predictions.json").read_text())["gold"]
    words = [tag for ex in examples for tag in ex.label]
    assert [tag for window in recorded for tag in window] == words


def test_ner_teacher_with_another_vocabulary_is_refused(ner_distilled, tiny_ner_overrides, tmp_path):
    import shutil

    from toolchain.train.runner import train

    other = tmp_path / "other-teacher"
    shutil.copytree(ner_distilled["teacher"], other)
    vocab = other / "model" / "vocab.txt"
    words = vocab.read_text().splitlines()
    vocab.write_text("\n".join(words[:-1] + ["zzzunseen"]) + "\n")
    (other / "model" / "tokenizer.json").unlink(missing_ok=True)   # rebuilt from vocab.txt
    with pytest.raises(ConfigError, match=r"other-teacher has another vocabulary"):
        train(load_config("ner-conll-full", [*tiny_ner_overrides, f"distill.teacher={other}"]))
