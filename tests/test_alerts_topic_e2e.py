"""End to end per predicted topic: a real service serving a tiny joint (sentiment + topic) model, a real
Prometheus with the rendered rules at test-sized windows, and the feeder streaming headlines.

The model: a 2-layer, hidden-64 encoder (the tiny BERT fixture's tokenizer and layout, twice as wide:
at hidden 32 the two heads took turns, one of them at chance, on these texts) trained here for 8
epochs (about a minute) on headlines whose words decide both classes, exported with the fp32 variant
only, served by `toolchain serve`. Ordinary news is a fixed cycle over four topics, each 20% negative.

1. Ordinary mixed news flows for NORMAL_SECONDS: no NegativeSentimentSurge in any state.
2. The Earnings items turn negative (the other topics go on as before): the topic="Earnings" alert
   fires within FIRE_WITHIN_S, and no other alert of the rule (other topics, overall, sources) becomes
   active: Earnings is a sixth of the news, so the overall share stays under its bar.
3. The feeder, stopped, prints its tables by predicted topic and by source, and names Earnings as the
   topic whose negative share rose most.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
import yaml

from conftest import REPO, write_jsonl
from test_alerts import load_render_rules
from test_monitor_e2e import KEY, free_port, query, start_feeder, stop_process, wait_for

pytestmark = [pytest.mark.server,
              pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (Debian: "
                                 "apt-get install prometheus; CI's .ci/run installs it)")]

SOURCES = ("reuters", "bloomberg")
# Test-sized windows: the shipped rules (5m / 10m per topic / 1h / for 5m) scaled down about 30x.
TEST_ALERTS = {"short_window": "10s", "topic_window": "20s", "baseline_window": "120s", "surge_factor": 2.0,
               "surge_floor": 0.35, "surge_min_items": 30, "topic_min_items": 12, "source_min_items": 20,
               "surge_for": "3s", "not_ready_for": "10s", "evaluation_interval": "1s"}
RATE = 6.0                 # items per second written to the wire: Earnings gets 1 of them
NORMAL_SECONDS = 50
FIRE_WITHIN_S = 60

# Each headline is a topic phrase, a sentiment word and at most one filler word: short texts whose words
# decide both classes, so that the 2-layer, hidden-32 encoder learns both heads in a few epochs.
TOPIC_WORDS = {"Earnings": ["earnings", "quarterly earnings"], "Energy | Oil": ["oil", "crude oil"],
               "Macro": ["inflation", "gdp"], "Markets": ["stocks", "stock index"]}
SENTIMENT_WORDS = {"negative": ["plunged", "slumped"], "neutral": ["published", "scheduled"],
                   "positive": ["jumped", "soared"]}
FILLER = ["today", "again", ""]
# One cycle of ordinary news: 6 items, Earnings and Energy once, Markets and Macro twice; each topic's own
# items cycle through 5 sentiments, one negative (20%).
CYCLE_TOPICS = ["Markets", "Macro", "Earnings", "Markets", "Energy | Oil", "Macro"]
CYCLE_SENTIMENTS = ["neutral", "positive", "negative", "positive", "neutral"]


def headline(topic: str, sentiment: str, rng: random.Random) -> str:
    words = [rng.choice(TOPIC_WORDS[topic]), rng.choice(SENTIMENT_WORDS[sentiment]), rng.choice(FILLER)]
    return " ".join(w for w in words if w) + " ."


def labelled(n: int, seed: int, head: str) -> list[dict]:
    """``n`` headlines with every topic and sentiment mixed, labelled for ``head`` ("sentiment" or "topic")."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic, sentiment = sorted(TOPIC_WORDS)[i % 4], sorted(SENTIMENT_WORDS)[(i // 4) % 3]
        rows.append({"text": headline(topic, sentiment, rng), "label": sentiment if head == "sentiment" else topic})
    rng.shuffle(rows)
    return rows


def ordinary_news(n: int, seed: int = 11) -> list[dict]:
    rng, seen = random.Random(seed), {topic: 0 for topic in TOPIC_WORDS}
    rows = []
    for i in range(n):
        topic = CYCLE_TOPICS[i % len(CYCLE_TOPICS)]
        sentiment = CYCLE_SENTIMENTS[seen[topic] % len(CYCLE_SENTIMENTS)]
        seen[topic] += 1
        source = SOURCES[i // len(CYCLE_TOPICS) % 2]     # whole cycles alternate: each source gets every topic
        rows.append({"text": headline(topic, sentiment, rng), "source": source, "want": (sentiment, topic)})
    return rows


def earnings_burst(n: int, seed: int = 12) -> list[dict]:
    """Ordinary news, except that every Earnings item is negative."""
    rng = random.Random(seed)
    rows = ordinary_news(n, seed)
    for row in rows:
        if row["want"][1] == "Earnings":
            row["text"], row["want"] = headline("Earnings", "negative", rng), ("negative", "Earnings")
    return rows


# -- the model, the service and Prometheus ----------------------------------------------------------

def small_encoder(path: Path) -> Path:
    """A randomly initialised 2-layer, hidden-64 BERT with the packaged model's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from toolchain.inference.modeling import packaged_model_dir

    tokenizer = AutoTokenizer.from_pretrained(packaged_model_dir("all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=128)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def joint_export(tmp_path_factory) -> Path:
    from toolchain.core.config import load_config
    from toolchain.export.config import load_export_config
    from toolchain.export.pipeline import export
    from toolchain.train.runner import train

    root = tmp_path_factory.mktemp("topic-e2e-model")
    files = {f"{prefix}.{split}": write_jsonl(root / f"{head}-{split}.jsonl", labelled(n, seed, head))
             for prefix, head in (("data", "sentiment"), ("topic", "topic"))
             for split, n, seed in (("train", 300, 1 if head == "sentiment" else 2), ("dev", 60, 3), ("test", 60, 4))}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # a tiny model on a shared machine: more threads only wait for each other
    try:
        run = train(load_config("sentiment-full", [
            f"model.base={small_encoder(root / 'encoder')}", f"output_dir={root / 'run'}", "train.epochs=8",
            "train.batch_size=16", "train.eval_steps=1000", "train.learning_rate=3e-3", "data.max_length=16",
            "train.early_stopping_patience=0", *(f"{key}={path}" for key, path in files.items())]))
        cfg = load_export_config(None, ["variants=fp32", "serve_variant=fp32", "latency.rounds=2", "latency.warmup=1",
                                        "latency.batch_sizes=1,4", "rank_rounds=1"])
        return export(run, root / "export", cfg)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def service(joint_export, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("topic-e2e-service")
    keys = root / "api-keys"
    keys.write_text(f"sha256:{hashlib.sha256(KEY.encode()).hexdigest()}\n")
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TOOLCHAIN_")},
           "TOOLCHAIN_API_KEYS_FILE": str(keys), "TOOLCHAIN_SOURCES": ",".join(SOURCES),
           "BENTOML_HOME": str(root / "bentoml"), "BENTOML_DO_NOT_TRACK": "true", "TOOLCHAIN_THREADS": "1"}
    log = open(root / "service.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "toolchain.cli", "serve", str(joint_export), "--port", str(port)],
                               cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is None and httpx.get(url + "/readyz", timeout=2).status_code == 200, 180,
                 f"service ready (log: {root / 'service.log'})")
        yield url
    finally:
        stop_process(process)
        log.close()


def start_prometheus(root: Path, target: str, settings: dict):
    """A Prometheus on 127.0.0.1 scraping ``target`` every second, with the rules rendered from ``settings``."""
    rules = load_render_rules()
    (root / "rules.yml").write_text(rules.plain_rule_file(rules.load_settings(overrides=settings)))
    (root / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(root / "rules.yml")],
        "scrape_configs": [{"job_name": "toolchain", "static_configs": [{"targets": [target]}]}]}))
    port = free_port()
    log = open(root / "prometheus.log", "w")
    process = subprocess.Popen(["prometheus", f"--config.file={root / 'prometheus.yml'}",
                                f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return process, log, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def prometheus(service, tmp_path_factory) -> str:
    process, log, url = start_prometheus(tmp_path_factory.mktemp("topic-e2e-prometheus"),
                                         service.removeprefix("http://"), TEST_ALERTS)
    try:
        wait_for(lambda: httpx.get(url + "/-/ready", timeout=2).status_code == 200, 60, "prometheus ready")
        wait_for(lambda: query(url, 'up{job="toolchain"}') == 1.0, 30, "prometheus scraping the service")
        yield url
    finally:
        stop_process(process)
        log.close()


def surge_alerts(prometheus: str) -> list[dict]:
    alerts = httpx.get(prometheus + "/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == "NegativeSentimentSurge"]


def alert_name(alert: dict) -> str:
    labels = alert["labels"]
    return f"{labels['scope']}:{labels.get('topic') or labels.get('source') or '-'}:{alert['state']}"


# -- the wire ------------------------------------------------------------------------------------------

class Wire:
    """Appends news items to a file at a steady rate; remembers which ones it wrote."""

    def __init__(self, folder: Path):
        self.path = folder / "wire-0001.jsonl"
        self.stop = threading.Event()
        self.written = 0

    def play(self, rows: list[dict], seconds: float) -> None:
        started = time.monotonic()
        for n, row in enumerate(rows, 1):
            if self.stop.is_set() or time.monotonic() - started >= seconds:
                return
            with open(self.path, "a") as out:
                out.write(json.dumps({"text": row["text"], "source": row["source"], "timestamp": time.time()}) + "\n")
            self.written += 1
            self.stop.wait(max(0.0, started + n / RATE - time.monotonic()))


# -- the tests -----------------------------------------------------------------------------------------

def test_the_served_joint_model_answers_sentiment_and_topic(service):
    """A precondition of the alert test: the tiny model gets the synthetic news right, and the service counts
    each prediction under its predicted topic and the caller's source."""
    rows = ordinary_news(36, seed=5) + earnings_burst(24, seed=6)
    answer = httpx.post(service + "/classify", json={"texts": [r["text"] for r in rows], "source": "reuters"},
                        headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    got = [(p["label"], p["topic"]["label"]) for p in answer.json()]
    wrong = [(r["text"], r["want"], g) for r, g in zip(rows, got) if g != r["want"]]
    assert len(wrong) <= 2, f"the tiny joint model misreads {len(wrong)} of {len(rows)} headlines: {wrong[:5]}"
    metrics = httpx.get(service + "/metrics", timeout=5).text
    assert 'topic="Earnings"' in metrics and 'source="reuters"' in metrics


def test_negative_earnings_burst_fires_the_earnings_alert_only(service, prometheus, tmp_path):
    wire_dir = tmp_path / "wire"
    wire_dir.mkdir()
    wire = Wire(wire_dir)
    feeder = start_feeder(wire_dir, service, tmp_path, "--batch-size", "8", "--flush-seconds", "0.5",
                          "--poll-seconds", "0.2", "--table-every", "10", "--predictions", str(tmp_path / "pred.jsonl"))
    figures = {}
    try:
        figures["normal"] = watch(wire, prometheus, ordinary_news(int(RATE * NORMAL_SECONDS) + 60), NORMAL_SECONDS)
        figures["burst"] = watch(wire, prometheus, earnings_burst(int(RATE * FIRE_WITHIN_S) + 60), FIRE_WITHIN_S,
                                 until="topic:Earnings:firing")
        figures["dashboard"] = check_dashboard_queries(prometheus)
    finally:
        wire.stop.set()
        stop_process(feeder)
    output = (tmp_path / "feeder.out").read_text()
    print("\nend-to-end figures:", json.dumps(figures, indent=1))
    print("\nthe feeder's last table and summary:\n" + output[output.rfind("sentiment share by topic"):])
    assert feeder.returncode == 0, (tmp_path / "feeder.err").read_text()[-2000:]
    normal, burst = figures["normal"], figures["burst"]
    assert normal["alerts_seen"] == [], "NegativeSentimentSurge became active on ordinary news"
    assert 0.1 < normal["earnings_share"] < TEST_ALERTS["surge_floor"], normal
    assert burst["seconds_to_until"] is not None, f"no firing Earnings alert {FIRE_WITHIN_S}s into the burst: {burst}"
    assert set(burst["alerts_seen"]) <= {"topic:Earnings:pending", "topic:Earnings:firing"}, burst
    assert "sentiment share by topic" in output and "sentiment share by source" in output
    summary = output[output.rfind("negative share rising most"):].splitlines()
    assert summary[1].split()[0] == "Earnings", summary


def watch(wire: Wire, prometheus: str, rows: list[dict], seconds: float, until: str | None = None) -> dict:
    """Play ``rows``; poll the surge alerts (any state) and Earnings' negative share each half second."""
    started = time.monotonic()
    player = threading.Thread(target=wire.play, args=(rows, seconds))
    player.start()
    seen, shares, reached = set(), [], None
    while player.is_alive() and reached is None:
        names = {alert_name(a) for a in surge_alerts(prometheus)}
        seen |= names
        if until in names:
            reached = time.monotonic() - started
        share = query(prometheus, f'job_topic:toolchain_negative_share:ratio_rate{TEST_ALERTS["topic_window"]}'
                                  '{topic="Earnings"}')
        if share is not None and not math.isnan(share):      # NaN: no Earnings item in the window yet
            shares.append(share)
        time.sleep(0.5)
    if until is not None:
        wire.stop.set()
    player.join()
    assert shares, "the per-topic recording rule produced no value for Earnings"
    topics = httpx.get(prometheus + "/api/v1/query", timeout=5, params={
        "query": f'job_topic:toolchain_predictions:rate{TEST_ALERTS["topic_window"]}'}).json()["data"]["result"]
    return {"items_written": wire.written, "alerts_seen": sorted(seen), "seconds_to_until": reached and round(reached, 1),
            "earnings_share": round(sum(shares) / len(shares), 3), "earnings_share_last": round(shares[-1], 3),
            "topics_recorded": sorted(t["metric"]["topic"] for t in topics)}


def check_dashboard_queries(prometheus: str) -> dict:
    """The dashboard's topic panels have data on the live Prometheus (windows swapped for the test's)."""
    board = json.loads((REPO / "deploy" / "grafana" / "toolchain-sentiment.json").read_text())
    swaps = {"$__rate_interval": "10s", '"$job"': '"toolchain"', '"$topic"': '"Earnings"', '"$source"': '".*"',
             "rate10m": f"rate{TEST_ALERTS['topic_window']}", "rate5m": f"rate{TEST_ALERTS['short_window']}",
             "rate1h": f"rate{TEST_ALERTS['baseline_window']}", "* 600": "* 20"}
    series = {}
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for old, new in swaps.items():
                expr = expr.replace(old, new)
            result = httpx.get(prometheus + "/api/v1/query", params={"query": expr}, timeout=5).json()
            assert result["status"] == "success", (panel["title"], expr, result)
            series[panel["title"]] = series.get(panel["title"], 0) + len(result["data"]["result"])
    for title in ("Negative share by topic", "Items classified per second by topic",
                  "Negative share vs the surge bar: $topic", "Negative share by source"):
        assert series.get(title), f"dashboard panel {title!r} has no data"
    return {title: n for title, n in series.items() if "topic" in title.lower() or "source" in title.lower()}
