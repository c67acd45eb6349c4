"""Sentiment and topic from two single-task models in one deployment: the pair's refusals (build and service),
the merged /classify response, and the worker layout for two models. No training here; the served pair is in
tests/test_two_models_serve.py."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from toolchain.core.artifacts import ArtifactError, ExportInfo
from toolchain.core.config import ConfigError, load_config
from toolchain.core.probability import softmax
from toolchain.serve.classify import joint_predictions, predictions, results
from toolchain.inference.runtime import BatchOutput, TopicPair, check_topic_pair
from toolchain.tasks.joint import joint_labels

from test_serve_support import toolchain_env

SENTIMENT = ["negative", "neutral", "positive"]
TOPICS = ["Earnings", "Energy | Oil", "Macro"]
NER = ["O", "B-ORG", "I-ORG"]


def export_info(path: str, task: str, labels: list[str]) -> ExportInfo:
    return ExportInfo(Path(path), {"task": task, "labels": labels})


SENTIMENT_EXPORT = export_info("exports/sentiment", "sequence-classification", SENTIMENT)
TOPIC_EXPORT = export_info("exports/topic", "sequence-classification", TOPICS)


# --------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("main, topic, message", [
    (export_info("exports/joint", "sequence-classification", joint_labels(SENTIMENT, TOPICS)), TOPIC_EXPORT,
     "exports/joint: the main model already has a topic head"),
    (SENTIMENT_EXPORT, export_info("exports/joint", "sequence-classification", joint_labels(SENTIMENT, TOPICS)),
     "exports/joint: the topic model is itself a joint model"),
    (export_info("exports/ner", "token-classification", NER), TOPIC_EXPORT,
     "exports/ner: the main model is a token-classification export"),
    (SENTIMENT_EXPORT, export_info("exports/ner", "token-classification", NER),
     "exports/ner: the topic model is a token-classification export"),
    (SENTIMENT_EXPORT, export_info("exports/sentiment-again", "sequence-classification", SENTIMENT),
     "not a topic model: negative, neutral, positive are classes of the main model too"),
    (SENTIMENT_EXPORT, export_info("exports/one", "sequence-classification", ["Earnings"]),
     "fewer than 2 classes"),
], ids=["main-joint", "topic-joint", "main-ner", "topic-ner", "topic-is-sentiment", "one-class"])
def test_a_pair_that_cannot_be_served_together_is_refused_naming_the_export(main, topic, message):
    with pytest.raises(ArtifactError, match=message.replace("|", r"\|")):
        check_topic_pair(main, topic)


def test_a_single_task_sentiment_and_topic_pair_is_accepted():
    check_topic_pair(SENTIMENT_EXPORT, TOPIC_EXPORT)


@pytest.mark.parametrize("main, topic, message", [
    (("sentiment-full", ["topic.train=topics.jsonl"]), ("topic-full", []), "main model already has a topic head"),
    (("sentiment-full", []), ("topic-full", ["topic.train=topics.jsonl"]), "would be a joint model itself"),
    (("ner-conll-full", []), ("topic-full", []), "main model is a token-classification (NER) model"),
    (("sentiment-full", []), ("ner-conll-full", []), "topic model is a token-classification (NER) model"),
])
def test_build_refuses_a_pair_from_the_configs_before_training(main, topic, message):
    from toolchain.build import check_topic_configs

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_topic_configs(load_config(*main), load_config(*topic))
    check_topic_configs(None, load_config("topic-full"))          # a given main export is checked later


def build_command(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = toolchain_env(tmp_path / "bentoml")
    return subprocess.run([sys.executable, "-m", "toolchain.cli", "build", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_build_cli_refuses_a_joint_main_model_with_a_topic_model_and_trains_nothing(tmp_path):
    result = build_command(tmp_path, "--config", "news-topic-sentiment", "--topic-config", "topic-full",
                           f"output_dir={tmp_path / 'runs' / 'joint'}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "the main model already has a topic head (topic.train=" in result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "bentoml").exists()


def write_export(path: Path, task: str, labels: list[str]) -> Path:
    path.mkdir(parents=True)
    (path / "toolchain.yaml").write_text(yaml.safe_dump({
        "artifact_version": 1, "stage": "export", "status": "complete", "task": task, "labels": labels,
        "max_length": 32, "serve_variant": "fp32", "variants": {"fp32": {"dir": "onnx/fp32", "file": "model.onnx"}}}))
    return path


@pytest.mark.parametrize("topic_task, topic_labels, message", [
    ("token-classification", NER, "the topic model is a token-classification export"),
    ("sequence-classification", joint_labels(SENTIMENT, TOPICS), "the topic model is itself a joint model"),
])
def test_build_cli_refuses_a_given_topic_export_that_is_not_a_topic_model(tmp_path, topic_task, topic_labels,
                                                                           message):
    main = write_export(tmp_path / "main-export", "sequence-classification", SENTIMENT)
    topic = write_export(tmp_path / "topic-export", topic_task, topic_labels)
    result = build_command(tmp_path, "--export-dir", str(main), "--topic-export-dir", str(topic))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{topic}: {message}" in result.stderr
    assert not (tmp_path / "bentoml").exists()


@pytest.mark.parametrize("args, message", [
    (["--topic-config", "topic-full", "--topic-export-dir", "x"], "not both"),
    (["--topic-override", "train.epochs=1"], "--topic-override train.epochs=1: there is no topic model"),
    (["--topic-variant", "int8"], "--topic-variant: there is no topic model"),
])
def test_build_cli_topic_arguments_that_do_not_fit_are_refused(tmp_path, args, message):
    result = build_command(tmp_path, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_topic_stages_share_the_export_overrides_and_take_their_own(tmp_path):
    from toolchain.build import plan, plan_topic

    overrides = [f"output_dir={tmp_path / 'sentiment'}", "train.epochs=2", "export.variants=fp32,int8"]
    topic = plan_topic("topic-full", overrides, [f"output_dir={tmp_path / 'topic'}", "export.serve_variant=fp32"])
    assert topic.run_cfg.train.epochs == load_config("topic-full").train.epochs    # run overrides: main only
    assert topic.export_cfg.variants == "fp32,int8"                                 # export overrides: both
    assert topic.export_cfg.serve_variant == "fp32"                                 # its own export override
    assert topic.run_dir.name.startswith("topic-") and topic.run_state == "train"
    assert plan("sentiment-full", overrides).export_cfg.serve_variant != "fp32"


# --------------------------------------------------------------------------- the merged response

class FixedModel:
    """A model whose logits per text are given: ``rows[text]`` (the shape of OnnxModel.infer's output)."""

    def __init__(self, labels: list[str], rows: dict[str, np.ndarray], cut: set[str] = frozenset(),
                 delay_s: float = 0.0):
        self.labels, self.rows, self.cut, self.delay_s, self.export = labels, rows, cut, delay_s, None
        self.threads: list[str] = []

    def infer(self, texts: list[str]) -> BatchOutput:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay_s)
        return BatchOutput([self.rows[t] for t in texts], [len(t.split()) + 2 for t in texts],
                           [t in self.cut for t in texts], [f"enc:{t}" for t in texts], self.delay_s)


TEXTS = ["profit rose on oil", "sales fell in the quarter", "inflation data due"]
MAIN_ROWS = {TEXTS[0]: np.array([-1.0, 0.5, 3.0]), TEXTS[1]: np.array([2.5, 0.1, -2.0]),
             TEXTS[2]: np.array([0.0, 1.5, 0.2])}
TOPIC_ROWS = {TEXTS[0]: np.array([0.2, 4.0, -1.0]), TEXTS[1]: np.array([3.0, -0.5, 0.0]),
              TEXTS[2]: np.array([-2.0, 0.0, 2.2])}


@pytest.mark.parametrize("concurrent", [False, True])
def test_pair_answers_the_main_models_prediction_and_the_topic_models_topic(concurrent):
    main, topic = FixedModel(SENTIMENT, MAIN_ROWS), FixedModel(TOPICS, TOPIC_ROWS, cut={TEXTS[2]})
    pair = TopicPair(main, topic, concurrent=concurrent)
    assert pair.labels == SENTIMENT + ["topic:" + t for t in TOPICS]
    output = pair.infer(TEXTS)
    served = results(TEXTS, output.logits, output.encodings, pair.labels, output.truncated)
    alone = predictions(np.stack([MAIN_ROWS[t] for t in TEXTS]), SENTIMENT, [False] * 3)
    for prediction, single, text in zip(served, alone, TEXTS):
        assert (prediction.label, prediction.score, prediction.scores) == (single.label, single.score, single.scores)
        probs = softmax(TOPIC_ROWS[text])
        assert prediction.topic.label == TOPICS[int(probs.argmax())]
        assert prediction.topic.score == pytest.approx(float(probs.max()))
    assert [p.topic.label for p in served] == ["Energy | Oil", "Earnings", "Macro"]
    assert [p.label for p in served] == ["positive", "negative", "neutral"]
    assert [p.truncated for p in served] == [False, False, True]          # cut by either model
    assert output.encodings == [f"enc:{t}" for t in TEXTS] and output.tokens == [6, 7, 5]   # the main model's
    body = [p.model_dump() for p in served]
    assert set(body[0]) == {"label", "score", "scores", "truncated", "topic"} and set(body[0]["topic"]) == {
        "label", "score"}


def test_pair_response_has_exactly_the_joint_models_shape():
    """The same logits from one joint model and from two models give the same response, field for field."""
    pair = TopicPair(FixedModel(SENTIMENT, MAIN_ROWS), FixedModel(TOPICS, TOPIC_ROWS))
    output = pair.infer(TEXTS)
    joint = joint_predictions(np.stack([np.concatenate([MAIN_ROWS[t], TOPIC_ROWS[t]]) for t in TEXTS]),
                              joint_labels(SENTIMENT, TOPICS), [False] * 3)
    served = results(TEXTS, output.logits, output.encodings, pair.labels, output.truncated)
    assert [p.model_dump() for p in served] == [p.model_dump() for p in joint]


def test_concurrent_pair_runs_the_topic_model_in_its_own_thread_at_the_same_time():
    main, topic = FixedModel(SENTIMENT, MAIN_ROWS, delay_s=0.3), FixedModel(TOPICS, TOPIC_ROWS, delay_s=0.3)
    sequential, concurrent = TopicPair(main, topic), TopicPair(main, topic, concurrent=True)
    started = time.perf_counter()
    sequential.infer(TEXTS)
    one_after_other = time.perf_counter() - started
    started = time.perf_counter()
    output = concurrent.infer(TEXTS)
    together = time.perf_counter() - started
    assert one_after_other >= 0.6 and together < 0.5, (one_after_other, together)
    assert output.seconds == pytest.approx(0.6)              # both models' model time
    assert main.threads == [threading.current_thread().name] * 2
    assert topic.threads[0] == threading.current_thread().name and topic.threads[1].startswith("topic-model")


def test_pair_load_verifies_the_topic_models_checksums(tmp_path):
    """A topic model file altered after export stops loading with an error naming it."""
    from toolchain.inference.runtime import load_topic_pair
    from toolchain.serve.settings import ServeSettings

    class Main:
        export = SENTIMENT_EXPORT

    root = tmp_path / "topic"
    write_export(root, "sequence-classification", TOPICS)
    manifest = yaml.safe_load((root / "toolchain.yaml").read_text())
    (root / "onnx" / "fp32").mkdir(parents=True)
    (root / "onnx" / "fp32" / "model.onnx").write_bytes(b"altered")
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    manifest["files"] = {"onnx/fp32/model.onnx": "0" * 64, "tokenizer/tokenizer.json": "0" * 64}
    (root / "toolchain.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(ArtifactError, match="onnx/fp32/model.onnx"):
        load_topic_pair(Main(), root, None, ServeSettings())


# --------------------------------------------------------------------------- layout for two models

GiB = 1 << 30
SMALL = {"variant": "int8", "by_threads": {"1": {"b1_ms": 2.1}, "2": {"b1_ms": 2.9}}}


def test_two_models_run_concurrently_when_there_is_a_cpu_for_the_second():
    from toolchain.serve.layout import choose_layout

    one = choose_layout(8, 64 * GiB, 23_000_000, SMALL)
    two = choose_layout(8, 64 * GiB, 46_000_000, SMALL, models=2)
    assert (two.workers, two.threads, two.concurrent_models, one.concurrent_models) == (8, 1, True, False)
    assert "concurrently" in two.why and "both models" in two.why
    single_cpu = choose_layout(1, 64 * GiB, 46_000_000, SMALL, models=2)
    assert not single_cpu.concurrent_models and "one after the other" in single_cpu.why
    assert not choose_layout(8, 64 * GiB, 1, SMALL, models=2, topic_calls="sequential").concurrent_models
    assert choose_layout(1, 64 * GiB, 1, SMALL, models=2, topic_calls="concurrent").concurrent_models


def test_memory_for_two_models_counts_both_files():
    from toolchain.serve.layout import choose_layout, slower_figures

    alone = choose_layout(64, 8 * GiB, 500_000_000, SMALL)
    both = choose_layout(64, 8 * GiB, 1_000_000_000, SMALL, models=2)
    assert both.workers < alone.workers and "memory" in both.why
    slow = {"variant": "fp32", "by_threads": {"1": {"b1_ms": 90.0}, "8": {"b1_ms": 16.0}}}
    assert slower_figures(SMALL, slow) is slow and slower_figures(slow, None) is slow
    assert slower_figures(None, SMALL) is SMALL


def test_topic_settings_are_read_from_the_environment():
    from toolchain.serve.settings import load_settings

    settings = load_settings({"TOOLCHAIN_TOPIC_EXPORT_DIR": "/exports/topic", "TOOLCHAIN_TOPIC_VARIANT": "int8",
                              "TOOLCHAIN_TOPIC_CALLS": "sequential"})
    assert (settings.topic_export_dir, settings.topic_variant, settings.topic_calls) == (
        "/exports/topic", "int8", "sequential")
    with pytest.raises(ConfigError, match="TOOLCHAIN_TOPIC_CALLS"):
        load_settings({"TOOLCHAIN_TOPIC_CALLS": "parallel"})
