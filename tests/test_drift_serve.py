"""Drift signals on the real service: a `bentoml serve` of the tiny model's Bento on 127.0.0.1.

In-domain text (sentences from the training templates) keeps the unseen-token share under the alert's bar
(the reference's dev share plus `drift_unseen_token_margin` of alert-settings.yaml); out-of-domain text
(general news) moves it past the bar. An export without a reference keeps serving, with the drift metrics
marked absent. The model-info metric carries the model version.
"""
from __future__ import annotations

import shutil

import httpx
import pytest
import yaml

from conftest import make_sentences
from test_alerts import load_render_rules
from test_drift import reference_of, remove_reference
from test_serve_support import PLAIN_KEY, Server, built, metric_samples, metric_total, toolchain_env, write_keys  # noqa: F401
from toolchain.core.artifacts import load_export

pytestmark = pytest.mark.server

TASK = "sequence-classification"
OUT_OF_DOMAIN = [
    "The striker scored twice as the visitors won the cup final in Madrid.",
    "Heavy snow closed mountain roads and schools across the northern valleys.",
    "Astronomers spotted a comet that will be visible to the naked eye next week.",
    "The orchestra premiered a symphony written by a young Brazilian composer.",
    "Firefighters rescued a kitten stuck on a bridge over the river Thames.",
    "Voters queued for hours outside polling stations in the capital.",
    "A marathon runner broke the course record despite strong headwinds.",
    "Scientists sequenced the genome of an ancient wheat variety.",
    "The museum reopened its dinosaur gallery after a two-year renovation.",
    "Local farmers celebrated a bumper harvest of apples and pears.",
    "Rescue teams searched the flooded villages by boat overnight.",
    "The novelist won a literary prize for her debut about a fishing town.",
]


def in_domain_texts(n: int = 48) -> list[str]:
    return [row["text"] for row in make_sentences(n, seed=11)]   # the training templates, another seed


def send(server, texts: list[str]) -> None:
    for start in range(0, len(texts), 8):
        response = httpx.post(server.url + "/classify", json={"texts": texts[start:start + 8]}, timeout=30,
                              headers={"Authorization": f"Bearer {PLAIN_KEY}"})
        assert response.status_code == 200, response.text


def token_counts(server) -> tuple[float, float]:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return (metric_total(text, "toolchain_drift_tokens_total", task=TASK, vocabulary="seen"),
            metric_total(text, "toolchain_drift_tokens_total", task=TASK, vocabulary="unseen"))


def unseen_share_of(server, texts: list[str]) -> float:
    """The unseen-token share of ``texts`` as the service counts them (the counters' increase)."""
    seen_before, unseen_before = token_counts(server)
    send(server, texts)
    seen, unseen = token_counts(server)
    counted = (seen - seen_before) + (unseen - unseen_before)
    assert counted > 0, "the service counted no input tokens"
    return (unseen - unseen_before) / counted


def bento_model_version(built) -> str:
    name, version = built.tag.split(":")
    bento = yaml.safe_load((built.home / "bentos" / name / version / "bento.yaml").read_text())
    return bento["labels"]["model"].split(":", 1)[1]


@pytest.fixture(scope="module")
def server(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("drift-server")
    env = toolchain_env(built.home, TOOLCHAIN_API_KEYS_FILE=str(write_keys(root / "keys")), TOOLCHAIN_WORKERS="2",
                        TOOLCHAIN_THREADS="1")
    running = Server(built.tag, env, root / "server.log").wait_ready()
    yield running
    running.stop()


def test_in_domain_text_stays_under_the_bar_and_out_of_domain_text_passes_it(server, built):
    reference = reference_of(built.export_dir, load_export(built.export_dir).serve_variant)
    bar = reference["tokens"]["unseen_share"] + load_render_rules().load_settings().drift_unseen_token_margin
    in_domain = unseen_share_of(server, in_domain_texts())
    assert in_domain <= bar, f"in-domain unseen share {in_domain:.3f} over the bar {bar:.3f}"
    out_of_domain = unseen_share_of(server, OUT_OF_DOMAIN * 2)
    assert out_of_domain > bar, f"out-of-domain unseen share {out_of_domain:.3f} under the bar {bar:.3f}"


def test_reference_gauges_and_model_version(server, built):
    text = httpx.get(server.url + "/metrics", timeout=10).text
    reference = reference_of(built.export_dir, load_export(built.export_dir).serve_variant)
    assert metric_total(text, "toolchain_drift_reference", task=TASK) == 1       # two workers: max, not a sum
    shares = {dict(k)["label"]: v for k, v in metric_samples(text, "toolchain_reference_label_share").items()}
    assert shares == pytest.approx(reference["labels"])
    assert metric_total(text, "toolchain_reference_unseen_token_share", task=TASK) == \
        pytest.approx(reference["tokens"]["unseen_share"])
    assert metric_total(text, "toolchain_reference_confidence_mean", task=TASK) == \
        pytest.approx(reference["confidence"]["mean"])
    (info,) = [dict(k) for k, v in metric_samples(text, "toolchain_model_info").items() if v == 1]
    assert info["version"] == bento_model_version(built)


def test_an_export_without_a_reference_serves_with_drift_marked_absent(built, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(built.export_dir, copy)
    remove_reference(copy, load_export(copy).serve_variant)
    env = toolchain_env(built.home, TOOLCHAIN_API_KEYS=PLAIN_KEY, TOOLCHAIN_EXPORT_DIR=str(copy), TOOLCHAIN_WORKERS="1",
                        TOOLCHAIN_THREADS="1", TOOLCHAIN_MODEL_VERSION="2024.06-rc1")
    running = Server(built.tag, env, tmp_path / "server.log").wait_ready()
    try:
        send(running, OUT_OF_DOMAIN)
        text = httpx.get(running.url + "/metrics", timeout=10).text
    finally:
        running.stop()
    assert metric_total(text, "toolchain_drift_reference", task=TASK) == 0
    assert metric_total(text, "toolchain_predictions_total", task=TASK) == len(OUT_OF_DOMAIN)
    for name in ("toolchain_drift_tokens_total", "toolchain_low_confidence_predictions_total",
                 "toolchain_reference_label_share", "toolchain_reference_unseen_token_share"):
        assert not metric_samples(text, name), f"{name} present without a reference"
    (info,) = [dict(k) for k, v in metric_samples(text, "toolchain_model_info").items() if v == 1]
    assert info["version"] == "2024.06-rc1"
