"""A topic head beside the main head: layout, loss, metrics, training, export with a per-head accuracy gate, serving."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from toolchain.tasks.joint import JointClassification, has_topic_head, heads_of, joint_labels

LABELS = joint_labels(["negative", "neutral", "positive"], ["Earnings", "Energy | Oil", "Macro"])
FAST = ["latency.rounds=2", "latency.warmup=1", "latency.batch_sizes=1,4", "rank_rounds=1"]


def test_heads_are_contiguous_and_named():
    main, topic = heads_of(LABELS)
    assert (main.name, main.labels, main.start, main.stop) == ("main", ("negative", "neutral", "positive"), 0, 3)
    assert (topic.name, topic.labels, topic.start, topic.stop) == ("topic", ("Earnings", "Energy | Oil", "Macro"), 3, 6)
    assert has_topic_head(LABELS) and not has_topic_head(["negative", "positive"])
    with pytest.raises(ValueError, match="main classes first"):
        heads_of(["topic:Earnings", "negative"])


def test_head_loss_is_each_examples_own_head_cross_entropy():
    from toolchain.train.loss import HeadLoss

    torch.manual_seed(0)
    logits, labels = torch.randn(6, 6), torch.tensor([0, 2, 1, 3, 5, 4])
    expected = torch.stack([F.cross_entropy(logits[i:i + 1, :3], labels[i:i + 1]) if labels[i] < 3 else
                            F.cross_entropy(logits[i:i + 1, 3:], labels[i:i + 1] - 3) for i in range(6)]).mean()
    assert torch.allclose(HeadLoss(LABELS)(logits, labels), expected)
    # the other head's logits do not move the loss; the full-softmax loss would differ
    shifted = logits.clone()
    shifted[:3, 3:] += 5.0
    assert torch.allclose(HeadLoss(LABELS)(shifted, labels), expected)
    assert not torch.allclose(F.cross_entropy(logits, labels), expected)
    weighted = HeadLoss(LABELS, topic_weight=3.0)(logits, labels)
    per = torch.stack([F.cross_entropy(logits[i:i + 1, :3] if labels[i] < 3 else logits[i:i + 1, 3:],
                                       labels[i:i + 1] % 3) for i in range(6)])
    assert torch.allclose(weighted, (per * torch.tensor([1, 1, 1, 3, 3, 3.0])).mean())


def test_class_weights_favour_rare_classes_with_mean_one_per_head():
    from toolchain.train.loss import class_weights

    ids = [0] * 8 + [1] * 2 + [2] * 2 + [3] * 30 + [4] * 10 + [5] * 2
    counts = np.bincount(ids)
    for kind in ("balanced", "sqrt"):
        w = class_weights(ids, LABELS, kind)
        for head in heads_of(LABELS):
            cols = slice(head.start, head.stop)
            assert np.isclose((w[cols] * counts[cols]).sum() / counts[cols].sum(), 1.0)
        assert w[5] > w[4] > w[3] and w[1] > w[0]
    balanced, sqrt = class_weights(ids, LABELS, "balanced"), class_weights(ids, LABELS, "sqrt")
    assert balanced[5] / balanced[3] == pytest.approx(15.0) and sqrt[5] / sqrt[3] == pytest.approx(15 ** 0.5)
    assert np.all(class_weights(ids, LABELS, "none") == 1)


def test_joint_metrics_score_each_head_on_its_own_rows():
    logits = np.full((4, 6), -5.0)
    logits[0, 0] = logits[1, 2] = 5.0          # main rows: right, wrong (gold 1)
    logits[2, 3] = logits[3, 5] = 5.0          # topic rows: right, right
    logits[0, 4] = 9.0                         # a topic logit on a main row does not change the main answer
    metrics = JointClassification(LABELS).metrics(logits, np.array([0, 1, 3, 5]), LABELS)
    assert metrics["heads"]["main"]["accuracy"] == 0.5 and metrics["heads"]["topic"]["accuracy"] == 1.0
    assert metrics["accuracy"] == 0.75 and metrics["heads"]["topic"]["labels"] == ["Earnings", "Energy | Oil", "Macro"]
    summary = JointClassification(LABELS).summary(metrics)
    assert summary["main_accuracy"] == 0.5 and summary["topic_accuracy"] == 1.0 and list(summary)[0] == "accuracy"


def test_config_refuses_a_topic_head_on_token_classification():
    from toolchain.core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="topic.train"):
        load_config("ner-conll-full", ["topic.train=x.jsonl"])
    with pytest.raises(ConfigError, match="class_weights"):
        load_config("ner-conll-full", ["train.class_weights=balanced"])


@pytest.fixture(scope="module")
def joint_run(tiny_bert, tiny_data, tiny_topic_data, tmp_path_factory):
    from toolchain.core.config import load_config
    from toolchain.train.runner import train

    out = tmp_path_factory.mktemp("joint") / "run"
    overrides = [f"model.base={tiny_bert}", f"output_dir={out}", "train.epochs=10", "train.batch_size=16",
                 "train.eval_steps=20", "train.learning_rate=5e-3", "data.max_length=32",
                 "train.early_stopping_patience=0", "topic.main_repeat=2", "train.precision=fp32",
                 *(f"data.{s}={p}" for s, p in tiny_data.items()), *(f"topic.{s}={p}" for s, p in tiny_topic_data.items())]
    return train(load_config("sentiment-full", overrides))


def test_joint_run_learns_both_heads_and_records_them(joint_run):
    manifest = json.loads(json.dumps(__import__("yaml").safe_load((joint_run / "toolchain.yaml").read_text())))
    assert manifest["labels"] == LABELS
    assert {"train", "dev", "test", "topic.train", "topic.dev", "topic.test"} <= set(manifest["data_files"])
    assert manifest["data_files"]["topic.test"]["examples"] == 30
    test = json.loads((joint_run / "metrics.json").read_text())["test"]
    assert test["heads"]["main"]["examples"] == 30 and test["heads"]["topic"]["examples"] == 30
    # keyword data: a model that trains both heads separates both (chance is 1/3)
    assert test["heads"]["main"]["accuracy"] >= 0.8 and test["heads"]["topic"]["accuracy"] >= 0.8, test
    assert (joint_run / "confusion_test_topic.png").exists() and (joint_run / "confusion_test_main.png").exists()


def test_evaluate_scores_a_joint_run_per_head(joint_run, tiny_topic_data):
    from toolchain.evaluate import evaluate_file

    both = evaluate_file(str(joint_run), None)
    stored = json.loads((joint_run / "metrics.json").read_text())["test"]
    assert both["heads"]["topic"]["accuracy"] == pytest.approx(stored["heads"]["topic"]["accuracy"])
    from toolchain.evaluate import compare_runs

    table = compare_runs([str(joint_run)])
    assert "run [main]" in table and "run [topic]" in table
    topic_only = evaluate_file(str(joint_run), str(tiny_topic_data["test"]))
    assert topic_only["accuracy"] == pytest.approx(stored["heads"]["topic"]["accuracy"])
    assert topic_only["labels"] == ["Earnings", "Energy | Oil", "Macro"]


@pytest.fixture(scope="module")
def joint_export(joint_run, tmp_path_factory):
    from toolchain.export.config import load_export_config
    from toolchain.export.pipeline import export

    cfg = load_export_config(None, ["variants=fp32,int8", *FAST])
    return export(joint_run, tmp_path_factory.mktemp("joint-export") / "export", cfg)


def test_joint_export_gates_every_head_and_serves_both_answers(joint_export, tiny_topic_data):
    from toolchain.serve.classify import results
    from toolchain.inference.runtime import OnnxModel
    from toolchain.core.artifacts import load_export

    report = json.loads((joint_export / "report.json").read_text())
    for name in ("fp32", "int8"):
        assert set(report["gates"][name]["heads"]) == {"main", "topic"}
        assert report["gates"][name]["heads"]["topic"]["items"] == 30
    assert "topic_accuracy" in report["variants"]["int8"]["test"]
    info = load_export(joint_export)
    model = OnnxModel(info, info.manifest["serve_variant"])
    rows = [json.loads(line) for line in tiny_topic_data["test"].read_text().splitlines()]
    output = model.infer([r["text"] for r in rows])
    served = results([], output.logits, output.encodings, model.labels, output.truncated)
    assert all(p.label in ("negative", "neutral", "positive") and p.topic is not None for p in served)
    assert abs(sum(served[0].scores.values()) - 1) < 1e-9 and 0 < served[0].topic.score <= 1
    accuracy = np.mean([p.topic.label == r["label"] for p, r in zip(served, rows)])
    gate_value = report["variants"][info.manifest["serve_variant"]]["test"]["topic_accuracy"]
    assert accuracy == pytest.approx(gate_value)  # the accuracy gate scored exactly what the service answers


def test_accuracy_gate_fails_a_variant_worse_in_the_topic_head_only(joint_run, tmp_path, monkeypatch):
    """A variant whose topic rows are rotated (the main head untouched) fails, and the error names the head."""
    import copy

    from toolchain.export import pipeline
    from toolchain.export.config import load_export_config
    from toolchain.export.accuracy_gate import AccuracyGateError
    from toolchain.export.onnx_export import export_onnx

    def rotated_topic_int8(job):
        bad = copy.deepcopy(job.model)
        with torch.no_grad():
            bad.classifier.weight[3:] = bad.classifier.weight[3:].roll(1, dims=0)
            bad.classifier.bias[3:] = bad.classifier.bias[3:].roll(1, dims=0)
        path = export_onnx(bad, job.onnx_dir("int8"), job.task, None)
        job.variants["int8"] = ("onnx/int8", path.name)

    monkeypatch.setitem(pipeline.VARIANT_BUILDERS, "int8", rotated_topic_int8)
    cfg = load_export_config(None, ["variants=fp32,int8", "serve_variant=int8", *FAST])
    with pytest.raises(AccuracyGateError, match="topic head") as error:
        pipeline.export(joint_run, tmp_path / "bad", cfg)
    assert "main head" not in str(error.value)


@pytest.mark.parametrize("split", ["train", "dev"])
def test_every_main_example_is_checked_for_the_topic_prefix(tiny_data, tiny_topic_data, tmp_path, split):
    """A main label starting with 'topic:' anywhere in the main data (not only the first example) is refused,
    naming the file and line; it would otherwise train silently as a topic class."""
    from toolchain.core.config import load_config
    from toolchain.data.readers import DataError
    from toolchain.tasks.joint_data import load_run_splits

    lines = tiny_data[split].read_text().splitlines()
    lines[4] = json.dumps({"text": "profit rose this quarter .", "label": "topic:Earnings"})
    bad = tmp_path / f"{split}.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    files = {**tiny_data, split: bad}
    cfg = load_config("sentiment-full", [*(f"data.{s}={p}" for s, p in files.items()),
                                         *(f"topic.{s}={p}" for s, p in tiny_topic_data.items())])
    with pytest.raises(DataError, match=rf"{split}\.jsonl:5: main-head label 'topic:Earnings'"):
        load_run_splits(cfg)
