"""One joint student (sentiment head + topic head) distilled from two single-task teachers: each example's soft
loss uses its own task's teacher (and the other head's teacher only with distill.cross_task), the teacher passes go
through the cache (a second student computes nothing), and an unlabeled text that is a dev or test text stops the
run before anything is written."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from toolchain.cli import main
from toolchain.core.config import ConfigError, load_config
from toolchain.data.readers import Example
from toolchain.tasks.joint import joint_labels
from toolchain.train import distill as distill_module
from toolchain.train.distill import Distillation, DistillLoss

MAIN = ["negative", "neutral", "positive"]
TOPICS = ["earnings", "macro"]
LABELS = joint_labels(MAIN, TOPICS)   # 3 main columns, then 2 topic columns


def kl(teacher: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    q = torch.log_softmax(logits / temperature, -1)
    return (teacher * (teacher.log() - q)).sum(-1) * temperature ** 2


def test_head_loss_is_one_kl_per_example_and_head_with_a_teacher_row():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, generator=generator)
    sentiment = torch.softmax(torch.randn(3, 3, generator=generator), -1)
    topic = torch.softmax(torch.randn(3, 2, generator=generator), -1)
    teacher = torch.zeros(3, 5)
    teacher[0, :3] = sentiment[0]                       # a sentence: its own head only
    teacher[1, 3:] = topic[1]                           # a tweet: its own head only
    teacher[2, :3], teacher[2, 3:] = sentiment[2], topic[2]   # cross-task (or unlabeled): both heads
    loss = DistillLoss(1.0, 2.0, [slice(0, 3), slice(3, 5)])
    expected = torch.stack([kl(sentiment[0], logits[0, :3], 2.0), kl(sentiment[2], logits[2, :3], 2.0),
                            kl(topic[1], logits[1, 3:], 2.0), kl(topic[2], logits[2, 3:], 2.0)]).mean()
    torch.testing.assert_close(loss(logits, None, teacher), expected)
    moved = logits.clone()
    moved[0, 3:] += 5.0     # the sentence's topic logits carry no teacher: its loss does not move
    moved[1, :3] -= 5.0     # nor do the tweet's sentiment logits
    torch.testing.assert_close(loss(moved, None, teacher), expected)


class FakeTeacher:
    def __init__(self, name, labels):
        self.path, self.labels, self.name = name, labels, name


@pytest.mark.parametrize("cross_task", [False, True])
def test_each_example_carries_its_own_tasks_teacher(monkeypatch, cross_task):
    """A sentence gets the sentiment teacher's probabilities in the sentiment columns, a tweet the topic teacher's
    in the topic columns; the other head's columns are zero unless cross_task; an unlabeled text gets both."""
    sentiment_teacher, topic_teacher = FakeTeacher("sentiment", MAIN), FakeTeacher("topic", TOPICS)
    seen_by = {}

    def fake_logits(runs, examples, labels, cache=None, passes=None, precision="fp32"):
        run = runs[0]
        seen_by[run.name] = [ex.text for ex in examples]
        marker = {"sentiment": [4.0, 0.0, 0.0], "topic": [0.0, 4.0]}[run.name]   # argmax names the teacher
        return [np.tile(marker, (len(examples), 1))]

    monkeypatch.setattr(distill_module, "teacher_logits", fake_logits)
    cfg = load_config("sentiment-full", ["topic.train=t.jsonl", "distill.teacher=s", "distill.topic_teacher=t",
                                         f"distill.cross_task={str(cross_task).lower()}", "distill.cache=off"])
    d = Distillation(cfg, LABELS, [sentiment_teacher], [], [topic_teacher])
    seen = [Example("profit rose", "positive", "a:1"), Example("fed holds rates", "topic:macro", "b:1"),
            Example("an unlabeled text", None, "u:1")]
    test = [Example("sales fell", "negative", "a:9"), Example("q3 beat", "topic:earnings", "b:9")]
    rows, test_rows = d.joint_probs(seen, 2, test)
    sentence, tweet, unlabeled = rows
    assert sentence[:3].argmax() == 0 and np.isclose(sentence[:3].sum(), 1)
    assert tweet[3:].argmax() == 1 and np.isclose(tweet[3:].sum(), 1)
    assert np.isclose(unlabeled[:3].sum(), 1) and np.isclose(unlabeled[3:].sum(), 1)
    if cross_task:
        assert np.isclose(sentence[3:].sum(), 1) and np.isclose(tweet[:3].sum(), 1)
        assert "fed holds rates" in seen_by["sentiment"] and "profit rose" in seen_by["topic"]
    else:
        assert not sentence[3:].any() and not tweet[:3].any()
        assert "fed holds rates" not in seen_by["sentiment"] and "profit rose" not in seen_by["topic"]
    # the test rows: each example's own head only (what the run's report compares the student with)
    assert test_rows[0, :3].argmax() == 0 and not test_rows[0, 3:].any()
    assert test_rows[1, 3:].argmax() == 1 and not test_rows[1, :3].any()


def test_config_checks_name_the_key():
    with pytest.raises(ConfigError, match="distill.topic_teacher: teaches a topic head"):
        load_config("sentiment-full", ["distill.teacher=a", "distill.topic_teacher=b"])
    with pytest.raises(ConfigError, match="needs distill.topic_teacher too"):
        load_config("sentiment-full", ["distill.teacher=a", "topic.train=t.jsonl"])


# --------------------------------------------------------------------------- tiny teachers and a joint student

@pytest.fixture(scope="module")
def teachers(tmp_path_factory, tiny_bert, tiny_data, tiny_topic_data):
    root = tmp_path_factory.mktemp("joint-teachers")
    common = [f"model.base={tiny_bert}", "train.batch_size=8", "train.eval_steps=20", "train.learning_rate=3e-3",
              "data.max_length=32", "train.early_stopping_patience=0", "train.precision=fp32", "train.epochs=4"]
    assert main(["train", "--config", "sentiment-full", *common, f"output_dir={root / 'sentiment'}",
                 *(f"data.{s}={p}" for s, p in tiny_data.items())]) == 0
    assert main(["train", "--config", "topic-full", *common, f"output_dir={root / 'topic'}",
                 *(f"data.{s}={p}" for s, p in tiny_topic_data.items())]) == 0
    return root


def joint_student(tiny_joint_overrides, teachers, out, cache, *extra):
    overrides = [o for o in tiny_joint_overrides if not o.startswith("output_dir=")]
    return main(["train", "--config", "sentiment-full", *overrides, "train.precision=fp32", "topic.main_repeat=1",
                 f"output_dir={out}", f"distill.teacher={teachers / 'sentiment'}",
                 f"distill.topic_teacher={teachers / 'topic'}", f"distill.cache={cache}", *extra])


def test_joint_student_learns_from_both_teachers_and_the_second_reads_the_cache(tiny_joint_overrides, teachers,
                                                                                   tmp_path):
    cache = tmp_path / "cache"
    assert joint_student(tiny_joint_overrides, teachers, tmp_path / "s1", cache) == 0
    record = json.loads((tmp_path / "s1" / "metrics.json").read_text())["distill"]
    assert [t["run"] for t in record["teachers"]] == [str(teachers / "sentiment")]
    assert [t["run"] for t in record["topic_teachers"]] == [str(teachers / "topic")]
    assert record["cross_task"] is True
    assert set(record["student_test_agreement"]) == {"main", "topic"}
    assert {"main_accuracy", "topic_accuracy"} <= set(record["teacher_test"])
    first = record["teacher_passes"]
    assert len(first) == 2 and all(p["computed"] > 0 and p["hits"] == 0 for p in first)
    assert joint_student(tiny_joint_overrides, teachers, tmp_path / "s2", cache, "train.seed=7") == 0
    second = json.loads((tmp_path / "s2" / "metrics.json").read_text())["distill"]["teacher_passes"]
    assert [p["texts"] for p in second] == [p["texts"] for p in first]
    assert all(p["computed"] == 0 and p["hits"] == p["texts"] for p in second)


def test_an_unlabeled_dev_or_test_text_stops_the_run_before_it_writes(tiny_joint_overrides, teachers, tiny_data,
                                                                       tmp_path, capsys):
    dev_text = json.loads(tiny_data["dev"].read_text().splitlines()[3])["text"]
    unlabeled = tmp_path / "unlabeled.txt"
    unlabeled.write_text(f"a text of its own .\n{dev_text.upper()}\n")
    out = tmp_path / "student"
    assert joint_student(tiny_joint_overrides, teachers, out, "off", f"distill.unlabeled={unlabeled}") == 2
    err = capsys.readouterr().err
    assert "texts are also in the dev split" in err and f"{unlabeled}:2" in err
    assert not out.exists()
