"""Two models in one Bento, end to end: `toolchain build --topic-config` packs the tiny sentiment model and a
tiny topic model, and a real `bentoml serve` on 127.0.0.1 answers sentiment and topic per text, counts
predictions by the predicted topic, turns ready only once both models answered, and refuses to start on an
altered topic model file. The same pair served from export dirs (TOOLCHAIN_TOPIC_EXPORT_DIR) answers the same."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from test_serve_support import PLAIN_KEY, Server, built, flip_middle_byte, metric_samples, never_ready, metric_total, toolchain_env, write_keys  # noqa: F401

pytestmark = pytest.mark.server

TOPICS = ["Earnings", "Energy | Oil", "Macro"]
SENTIMENT = ["negative", "neutral", "positive"]
TEXTS = ["quarterly earnings profit rose .", "crude oil sales fell .", "inflation data the board met .",
         "eps guidance shares plunged .", "opec output strong growth .", "jobs report the company said .",
         "brent futures weak demand .", "revenue report beat forecasts ."]


@dataclass
class TopicBuild:
    home: Path
    tag: str
    output: str
    export_dir: Path
    topic_export_dir: Path


def topic_overrides(tiny_bert: Path, tiny_topic_data: dict, root: Path) -> list[str]:
    return [f"model.base={tiny_bert}", *(f"data.{split}={path}" for split, path in tiny_topic_data.items()),
            f"output_dir={root / 'runs' / 'tiny-topic'}", "train.epochs=6", "train.batch_size=16",
            "train.eval_steps=20", "train.learning_rate=5e-3", "data.max_length=32",
            "train.early_stopping_patience=0", "train.logging_steps=10"]


@pytest.fixture(scope="module")
def topic_build(built, tiny_bert, tiny_topic_data, tmp_path_factory) -> TopicBuild:
    """`toolchain build` of the session's tiny sentiment model (reused: same configs) plus a tiny topic model."""
    root = tmp_path_factory.mktemp("topic-build")
    home = root / "bentoml"
    extra = [arg for override in topic_overrides(tiny_bert, tiny_topic_data, root)
             for arg in ("--topic-override", override)]
    result = subprocess.run([sys.executable, "-m", "toolchain.cli", "build", "--config", "sentiment-full",
                             *built.overrides, "--topic-config", "topic-full", *extra], cwd=root,
                            env=toolchain_env(home), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"toolchain build failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    out = result.stdout
    topic_dir = Path(re.search(r"^topic-export\s.*?\s(/\S+)$", out, re.M).group(1))
    return TopicBuild(home, re.search(r"^bento: (\S+)$", out, re.M).group(1), out, built.export_dir, topic_dir)


def bento_info(build: TopicBuild) -> dict:
    name, version = build.tag.split(":")
    return yaml.safe_load((build.home / "bentos" / name / version / "bento.yaml").read_text())


def offline(export_dir: Path, variant: str):
    from toolchain.core.artifacts import load_export
    from toolchain.inference.runtime import OnnxModel

    return OnnxModel(load_export(export_dir), variant)


def start(target: str, env: dict, log: Path) -> Server:
    return Server(target, env, log).wait_ready(timeout=180)


@pytest.fixture(scope="module")
def bento_server(topic_build, tmp_path_factory):
    root = tmp_path_factory.mktemp("two-models-server")
    env = toolchain_env(topic_build.home, TOOLCHAIN_API_KEYS_FILE=str(write_keys(root / "keys")),
                        TOOLCHAIN_WORKERS="1", TOOLCHAIN_THREADS="1", TOOLCHAIN_SOURCES="wire")
    running = start(topic_build.tag, env, root / "server.log")
    yield running
    running.stop()


def classify(server: Server, texts: list[str], **extra) -> list[dict]:
    response = httpx.post(server.url + "/classify", json={"texts": texts, **extra},
                          headers={"Authorization": f"Bearer {PLAIN_KEY}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_build_reuses_the_main_model_trains_the_topic_model_and_names_both(topic_build, built):
    out = topic_build.output
    assert f"train   up to date    {built.run_dir}" in out and f"export  up to date    {built.export_dir}" in out
    assert re.search(r"^topic-train   train\s+/\S+tiny-topic-[0-9a-f]{16}$", out, re.M), out
    assert re.search(r"^topic-export  export\s+/\S+tiny-topic-[0-9a-f]{16}-export-[0-9a-f]{16}$", out, re.M), out
    info = bento_info(topic_build)
    labels, args = info["labels"], info["args"]
    assert re.search(rf"^model   {re.escape(labels['model'])}   ", out, re.M)
    assert re.search(rf"^topic   {re.escape(labels['topic_model'])}   ", out, re.M)
    assert "topic variant " in out


def test_bento_carries_both_models_their_arguments_and_the_topic_models_metrics(topic_build):
    from toolchain.core.artifacts import load_export

    info = bento_info(topic_build)
    labels, args = info["labels"], info["args"]
    topic = load_export(topic_build.topic_export_dir)
    assert args == {"model_tag": labels["model"], "variant": labels["variant"],
                    "topic_model_tag": labels["topic_model"], "topic_variant": labels["topic_variant"]}
    assert labels["topic_variant"] == topic.serve_variant
    assert labels["topic_config_hash"] == topic.manifest["run_config_hash"]
    report = json.loads((topic.path / "report.json").read_text())
    assert float(labels["topic_test_accuracy"]) == pytest.approx(
        report["variants"][topic.serve_variant]["test"]["accuracy"], abs=1e-4)
    assert "topic_test_macro_f1" in labels and "test_accuracy" in labels           # the main model's stay
    assert {m["tag"] for m in info["services"][0]["models"]} == {labels["model"], labels["topic_model"]}


def test_classify_answers_sentiment_from_the_main_model_and_topic_from_the_topic_model(bento_server, topic_build):
    from toolchain.core.probability import softmax

    info = bento_info(topic_build)
    main = offline(topic_build.export_dir, info["args"]["variant"])
    topic = offline(topic_build.topic_export_dir, info["args"]["topic_variant"])
    served = classify(bento_server, TEXTS)
    assert len(served) == len(TEXTS) and sorted(main.labels) == SENTIMENT and sorted(topic.labels) == TOPICS
    for item, text in zip(served, TEXTS):
        assert set(item) == {"label", "score", "scores", "truncated", "topic"} and set(item["topic"]) == {"label",
                                                                                                          "score"}
        (main_logits,), (topic_logits,) = main.infer([text]).logits, topic.infer([text]).logits
        probs = softmax(main_logits)
        assert item["label"] == main.labels[int(probs.argmax())] and list(item["scores"]) == main.labels
        assert np.allclose([item["scores"][k] for k in main.labels], probs, atol=1e-6)
        topic_probs = softmax(topic_logits)
        assert item["topic"]["label"] == topic.labels[int(topic_probs.argmax())]
        assert item["topic"]["score"] == pytest.approx(float(topic_probs.max()), abs=1e-6)
    # the tiny topic model learnt its keywords: the topic comes from the topic model, not the sentiment one
    wanted = ["Earnings", "Energy | Oil", "Macro", "Earnings", "Energy | Oil", "Macro", "Energy | Oil", "Earnings"]
    assert np.mean([item["topic"]["label"] == want for item, want in zip(served, wanted)]) >= 0.75, served


def test_predictions_are_counted_by_the_predicted_topic(bento_server):
    def counts() -> Counter:
        samples = metric_samples(httpx.get(bento_server.url + "/metrics", timeout=10).text,
                                 "toolchain_predictions_total")
        counted = Counter()
        for key, value in samples.items():
            if dict(key)["source"] == "wire":
                counted[dict(key)["topic"]] += value
        return counted

    before = counts()
    served = classify(bento_server, TEXTS, source="wire")
    expected = Counter(item["topic"]["label"] for item in served)
    deadline = time.time() + 10
    while (counts() - before) != expected and time.time() < deadline:
        time.sleep(0.2)
    assert counts() - before == expected and "none" not in expected
    assert len(expected) >= 2                                   # counted by topic, not one bucket


def test_ready_once_both_models_answered_and_both_are_described(bento_server, topic_build):
    assert httpx.get(bento_server.url + "/readyz", timeout=10).status_code == 200
    text = httpx.get(bento_server.url + "/metrics", timeout=10).text
    assert metric_total(text, "toolchain_model_ready") == 1
    info = bento_info(topic_build)
    described = {dict(key)["model"]: dict(key) for key, value in metric_samples(text, "toolchain_model_info").items()
                 if value == 1}
    main_name, topic_name = info["args"]["model_tag"].split(":")[0], info["args"]["topic_model_tag"].split(":")[0]
    assert set(described) == {main_name, topic_name}
    assert described[topic_name]["variant"] == info["args"]["topic_variant"]
    log = bento_server.output()
    assert "main and topic model concurrently" in log and "topic model " in log


def test_explain_keeps_explaining_the_sentiment_model(bento_server):
    headers = {"Authorization": f"Bearer {PLAIN_KEY}"}
    response = httpx.post(bento_server.url + "/explain", json={"texts": [TEXTS[0]]}, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    (explanation,) = response.json()
    assert explanation["label"] in SENTIMENT and set(explanation["scores"]) == set(SENTIMENT)
    assert explanation["label"] == classify(bento_server, [TEXTS[0]])[0]["label"]
    topic_target = httpx.post(bento_server.url + "/explain", json={"texts": [TEXTS[0]], "target": "Earnings"},
                              headers=headers, timeout=30)
    assert topic_target.status_code == 422 and topic_target.json()["field"] == "target"


def test_export_dirs_served_with_topic_export_dir_answer_the_same(topic_build, bento_server, tmp_path):
    env = toolchain_env(tmp_path / "bentoml", TOOLCHAIN_API_KEYS=PLAIN_KEY, TOOLCHAIN_WORKERS="1",
                        TOOLCHAIN_THREADS="1", TOOLCHAIN_EXPORT_DIR=str(topic_build.export_dir),
                        TOOLCHAIN_TOPIC_EXPORT_DIR=str(topic_build.topic_export_dir),
                        TOOLCHAIN_VARIANT=bento_info(topic_build)["args"]["variant"],
                        TOOLCHAIN_TOPIC_VARIANT=bento_info(topic_build)["args"]["topic_variant"],
                        TOOLCHAIN_TOPIC_CALLS="sequential")
    running = start("toolchain.serve.service:ToolchainService", env, tmp_path / "server.log")
    try:
        assert classify(running, TEXTS) == classify(bento_server, TEXTS)
        assert "main and topic model sequential (TOOLCHAIN_TOPIC_CALLS)" in running.output()
    finally:
        running.stop()


def test_an_altered_topic_model_file_stops_startup_and_readiness_stays_false(topic_build, tmp_path):
    from toolchain.core.artifacts import load_export

    copy = tmp_path / "topic-export"
    shutil.copytree(topic_build.topic_export_dir, copy)
    model_file = load_export(copy).variant_file()
    flip_middle_byte(model_file)
    env = toolchain_env(topic_build.home, TOOLCHAIN_API_KEYS=PLAIN_KEY, TOOLCHAIN_TOPIC_EXPORT_DIR=str(copy),
                        BENTOML_CONTAINERIZED="true")   # as in the container image: no worker respawn
    running = Server(topic_build.tag, env, tmp_path / "server.log")
    stayed_unready, code = never_ready(running)
    assert stayed_unready and code != 0
    assert f"{model_file.name}: sha256" in running.output() and "does not match the manifest" in running.output()


def test_cost_benchmark_runs_on_the_two_exports(topic_build, tmp_path):
    """benchmarks/topic_sentiment.py --mode two-models: sentiment alone vs the pair, 1 and 32 texts per call."""
    from conftest import DATA_ROOT

    if not (DATA_ROOT / "twitter_financial_news_topic" / "test.jsonl").is_file():
        pytest.skip(f"real data not found at {DATA_ROOT}")
    out = tmp_path / "cost"
    result = subprocess.run([sys.executable, "benchmarks/topic_sentiment.py", "--mode", "two-models", "--sentiment",
                             str(topic_build.export_dir), "--topic", str(topic_build.topic_export_dir), "--rounds",
                             "1", "--texts", "64", "--out", str(out)], cwd=Path(__file__).resolve().parent.parent,
                            env=toolchain_env(tmp_path / "bentoml", TOOLCHAIN_DATA_DIR=str(DATA_ROOT)),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    cost = json.loads(out.with_name("cost_two_models.json").read_text())["cost"]
    assert set(cost) == {"sentiment", "sentiment + topic, sequential", "sentiment + topic, concurrent"}
    for row in cost.values():
        assert set(row) == {"1", "32"} and all(v["cpu_ms_per_text"] > 0 and v["wall_ms_per_text"] > 0
                                                for v in row.values())
    assert "| 32 | sentiment + topic, concurrent |" in out.with_name("cost_two_models.md").read_text()
