"""Drift signals on the real service with a real PhraseBank model and real data.

PhraseBank test sentences (in-domain) keep every drift signal within its bar from alert-settings.yaml; SEC
loan-agreement sentences (another domain) take the unseen-token share past its bar and, since the model
answers almost all of them neutral, the predicted-label distance past its bar too; CoNLL-2003 news takes the
unseen-token share past its bar.

The model: $TOOLCHAIN_TEST_EXPORT if set (a sentiment export with a drift reference), else the small encoder
that tests/test_monitor_e2e.py trains on allagree (minutes on a busy 2-core machine).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from conftest import DATA_ROOT, PHRASEBANK, requires_phrasebank
from test_alerts import load_render_rules
from test_drift import reference_of
from test_serve_support import PLAIN_KEY, Server, metric_samples, metric_total, toolchain_env

CONLL = DATA_ROOT / "conll2003" / "test.txt"
SEC = DATA_ROOT / "sec_filings_ner" / "FIN3.txt"
TASK = "sequence-classification"

pytestmark = [pytest.mark.server, pytest.mark.integration, requires_phrasebank(),
              pytest.mark.skipif(not (CONLL.is_file() and SEC.is_file()),
                                 reason=f"out-of-domain data not found at {CONLL} and {SEC}")]


def column_sentences(path: Path, limit: int, min_words: int = 6) -> list[str]:
    """Sentences of a CoNLL-style column file (first column), joined with spaces."""
    sentences, words = [], []
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        if not line.strip() or line.startswith("-DOCSTART-"):
            if len(words) >= min_words:
                sentences.append(" ".join(words))
            words = []
        else:
            words.append(line.split()[0])
    return sentences[:limit]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    from test_monitor_e2e import sentiment_export, train_small_export

    given = os.environ.get("TOOLCHAIN_TEST_EXPORT")
    if given:
        assert sentiment_export(Path(given)), f"TOOLCHAIN_TEST_EXPORT={given} is not a complete sentiment export"
        return Path(given)
    return train_small_export(tmp_path_factory.mktemp("drift-model"))


@pytest.fixture(scope="module")
def server(export_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("drift-real-server")
    env = toolchain_env(root / "bentoml", TOOLCHAIN_API_KEYS=PLAIN_KEY, TOOLCHAIN_EXPORT_DIR=str(export_dir),
                        TOOLCHAIN_WORKERS="1", TOOLCHAIN_THREADS="1")
    running = Server("toolchain.serve.service:ToolchainService", env, root / "server.log").wait_ready()
    yield running
    running.stop()


def counters(server) -> dict:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    labels = {dict(k)["label"]: v for k, v in metric_samples(text, "toolchain_predictions_total").items()}
    return {"labels": labels, "scored": metric_total(text, "toolchain_prediction_confidence_count", task=TASK),
            "score_sum": metric_total(text, "toolchain_prediction_confidence_sum", task=TASK),
            "low": metric_total(text, "toolchain_low_confidence_predictions_total", task=TASK),
            "seen": metric_total(text, "toolchain_drift_tokens_total", task=TASK, vocabulary="seen"),
            "unseen": metric_total(text, "toolchain_drift_tokens_total", task=TASK, vocabulary="unseen")}


def signals_of(server, texts: list[str], shares: dict) -> dict:
    """The four drift signals of ``texts`` as the service counts them (the increase of its counters)."""
    before = counters(server)
    for start in range(0, len(texts), 16):
        response = httpx.post(server.url + "/classify", json={"texts": texts[start:start + 16]}, timeout=60,
                              headers={"Authorization": f"Bearer {PLAIN_KEY}"})
        assert response.status_code == 200, response.text
    after = counters(server)
    scored = after["scored"] - before["scored"]
    assert scored == len(texts)
    live = {label: (after["labels"].get(label, 0) - before["labels"].get(label, 0)) / scored for label in shares}
    tokens = (after["seen"] - before["seen"]) + (after["unseen"] - before["unseen"])
    return {"label_distance": 0.5 * sum(abs(live[label] - shares[label]) for label in shares),
            "mean_confidence": (after["score_sum"] - before["score_sum"]) / scored,
            "low_share": (after["low"] - before["low"]) / scored,
            "unseen_share": (after["unseen"] - before["unseen"]) / tokens}


def test_in_domain_news_stays_within_every_bar_and_other_domains_pass_theirs(server, export_dir):
    from toolchain.core.artifacts import load_export

    settings = load_render_rules().load_settings()
    reference = reference_of(export_dir, load_export(export_dir).serve_variant)
    shares = reference["labels"]
    unseen_bar = reference["tokens"]["unseen_share"] + settings.drift_unseen_token_margin
    texts = [json.loads(line)["text"] for line in (PHRASEBANK / "allagree" / "test.jsonl").read_text().splitlines()]
    usual = signals_of(server, texts, shares)
    assert usual["unseen_share"] <= unseen_bar, usual
    assert usual["label_distance"] <= settings.drift_label_distance, usual
    assert usual["mean_confidence"] >= reference["confidence"]["mean"] - settings.drift_confidence_drop, usual
    assert usual["low_share"] <= reference["confidence"]["low_share"] + settings.drift_low_confidence_margin, usual
    filings = signals_of(server, column_sentences(SEC, 200), shares)
    assert filings["unseen_share"] > unseen_bar, filings
    assert filings["label_distance"] > settings.drift_label_distance, filings
    news = signals_of(server, column_sentences(CONLL, 200), shares)
    assert news["unseen_share"] > unseen_bar, news
