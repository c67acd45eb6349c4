"""End to end on this machine: the real service, a real Prometheus with the shipped rules at test-sized
windows, and the feeder streaming real PhraseBank sentences.

1. A normal mix (PhraseBank allagree dev+test) flows for 45 s: NegativeSentimentSurge stays inactive.
2. A burst of PhraseBank negative sentences follows: the alert must be firing within a bounded time.
3. The feeder is killed mid-stream and restarted: the service's counters hold every item once.

The model: $TOOLCHAIN_TEST_EXPORT if set, else the newest complete sentiment export under exports/,
else a small encoder trained here on allagree (minutes on a busy 2-core machine).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import PHRASEBANK, REPO, requires_phrasebank
from test_alerts import load_render_rules

pytestmark = [pytest.mark.server, pytest.mark.integration, requires_phrasebank(),
              pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (Debian: "
                                 "apt-get install prometheus; CI's .ci/run installs it)")]

KEY = "e2e-feeder-key"
SOURCES = "markets,macro,restart,graceful"
# Test-sized windows: the shipped rules (5m / 1h / for 5m) scaled down about 30x.
TEST_ALERTS = {"short_window": "10s", "baseline_window": "90s", "surge_factor": 2.0, "surge_floor": 0.35,
               "surge_min_items": 30, "topic_window": "20s", "topic_min_items": 20, "source_min_items": 20,
               "surge_for": "3s", "not_ready_for": "10s",
               "evaluation_interval": "1s"}
RATE = 6.0                 # items per second written to the wire
NORMAL_SECONDS = 45
FIRE_WITHIN_S = 45


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (httpx.HTTPError, OSError, ValueError):
            pass
        time.sleep(interval_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f}s")


def stop_process(process: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM to the process group this test started, then SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


# -- the model ---------------------------------------------------------------------------------

def sentiment_export(path: Path) -> bool:
    from toolchain.core.artifacts import ArtifactError, load_export

    try:
        return set(load_export(path).labels) == {"negative", "neutral", "positive"}
    except (ArtifactError, OSError, KeyError, ValueError):
        return False


def train_small_export(root: Path) -> Path:
    """A 2-layer, hidden-64 encoder trained on allagree (about 85% test accuracy), exported as fp32 ONNX."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from toolchain.core.config import load_config
    from toolchain.export.config import load_export_config
    from toolchain.export.pipeline import export
    from toolchain.inference.modeling import packaged_model_dir
    from toolchain.train.runner import train

    base = root / "encoder"
    tokenizer = AutoTokenizer.from_pretrained(packaged_model_dir("all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=128)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    run = train(load_config("sentiment-full", [
        f"model.base={base}", f"output_dir={root / 'run'}", "train.epochs=5", "train.batch_size=32",
        "train.eval_steps=1000", "train.learning_rate=3e-3", "data.max_length=64", "train.warmup_ratio=0.0",
        "train.early_stopping_patience=0"]))
    cfg = load_export_config(None, ["variants=fp32", "serve_variant=fp32", "latency.rounds=3", "latency.warmup=1",
                                    "latency.batch_sizes=1,4"])
    return export(run, root / "export", cfg)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    given = os.environ.get("TOOLCHAIN_TEST_EXPORT")
    if given:
        assert sentiment_export(Path(given)), f"TOOLCHAIN_TEST_EXPORT={given} is not a complete sentiment export"
        return Path(given)
    found = sorted((p.parent for p in (REPO / "exports").glob("*/toolchain.yaml") if sentiment_export(p.parent)),
                   key=lambda p: p.stat().st_mtime)
    return found[-1] if found else train_small_export(tmp_path_factory.mktemp("e2e-model"))


# -- the service and Prometheus ----------------------------------------------------------------

@pytest.fixture(scope="module")
def service(export_dir, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("service")
    keys = root / "api-keys"
    keys.write_text(f"# the feeder's key, stored hashed as in the Kubernetes Secret\nsha256:{hashlib.sha256(KEY.encode()).hexdigest()}\n")
    port = free_port()
    env = {**os.environ, "TOOLCHAIN_API_KEYS_FILE": str(keys), "TOOLCHAIN_SOURCES": SOURCES,
           "BENTOML_HOME": str(root / "bentoml"), "BENTOML_DO_NOT_TRACK": "true", "TOOLCHAIN_THREADS": "1"}
    log = open(root / "service.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "toolchain.cli", "serve", str(export_dir), "--port", str(port)],
                               cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is None and httpx.get(url + "/readyz", timeout=2).status_code == 200, 180,
                 f"service ready (log: {root / 'service.log'})")
        yield url
    finally:
        stop_process(process)
        log.close()


@pytest.fixture(scope="module")
def prometheus(service, tmp_path_factory) -> str:
    rules = load_render_rules()
    root = tmp_path_factory.mktemp("prometheus")
    (root / "rules.yml").write_text(rules.plain_rule_file(rules.load_settings(overrides=TEST_ALERTS)))
    target = service.removeprefix("http://")
    (root / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(root / "rules.yml")],
        "scrape_configs": [{"job_name": "toolchain", "static_configs": [{"targets": [target]}]}]}))
    port = free_port()
    log = open(root / "prometheus.log", "w")
    process = subprocess.Popen(["prometheus", f"--config.file={root / 'prometheus.yml'}",
                                f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(url + "/-/ready", timeout=2).status_code == 200, 60, "prometheus ready")
        wait_for(lambda: query(url, 'up{job="toolchain"}') == 1.0, 30, "prometheus scraping the service")
        yield url
    finally:
        stop_process(process)
        log.close()


def query(prometheus: str, expr: str) -> float | None:
    """The value of a one-series instant query, or None when it is empty."""
    result = httpx.get(prometheus + "/api/v1/query", params={"query": expr}, timeout=5).json()
    assert result["status"] == "success", result
    series = result["data"]["result"]
    return float(series[0]["value"][1]) if series else None


def surge_alerts(prometheus: str) -> list[dict]:
    alerts = httpx.get(prometheus + "/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == "NegativeSentimentSurge"]


# -- news ----------------------------------------------------------------------------------------

def phrasebank(*files: str) -> list[dict]:
    return [json.loads(line) for name in files for line in (PHRASEBANK / name).read_text().splitlines() if line]


def normal_mix() -> list[dict]:
    rows = phrasebank("allagree/dev.jsonl", "allagree/test.jsonl")
    random.Random(7).shuffle(rows)
    return [{"text": r["text"], "source": ("markets", "macro")[i % 2]} for i, r in enumerate(rows)]


def negative_burst() -> list[dict]:
    rows = [r for r in phrasebank("allagree/train.jsonl", "allagree/dev.jsonl", "allagree/test.jsonl")
            if r["label"] == "negative"]
    random.Random(7).shuffle(rows)
    return [{"text": r["text"], "source": "markets"} for r in rows]


class Wire:
    """Appends news items to a file in a folder at a steady rate, like a news wire."""

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
                out.write(json.dumps({**row, "timestamp": time.time()}) + "\n")
            self.written += 1
            self.stop.wait(max(0.0, started + n / RATE - time.monotonic()))


def start_feeder(source: Path, url: str, root: Path, *extra: str) -> subprocess.Popen:
    (root / "key.txt").write_text(KEY + "\n")
    command = [sys.executable, "-m", "toolchain.cli", "monitor", str(source), "--url", url, "--api-key-file",
               str(root / "key.txt"), "--state", str(root / "state.json"), *extra]
    return subprocess.Popen(command, cwd=REPO, stdout=open(root / "feeder.out", "a"),
                            stderr=open(root / "feeder.err", "a"), start_new_session=True)


# -- the tests ---------------------------------------------------------------------------------

def test_negative_burst_fires_the_surge_alert_and_normal_news_does_not(service, prometheus, tmp_path):
    wire_dir = tmp_path / "wire"
    wire_dir.mkdir()
    wire = Wire(wire_dir)
    feeder = start_feeder(wire_dir, service, tmp_path, "--batch-size", "16", "--flush-seconds", "0.5",
                          "--poll-seconds", "0.2", "--table-every", "5", "--predictions", str(tmp_path / "pred.jsonl"))
    figures = {}
    try:
        figures["normal"] = watch_normal_mix(wire, prometheus)
        figures["burst"] = watch_burst(wire, prometheus)
        check_dashboard_queries(prometheus)
    finally:
        wire.stop.set()
        stop_process(feeder)
    print("\nend-to-end figures:", json.dumps(figures, indent=1))
    assert feeder.returncode == 0, (tmp_path / "feeder.err").read_text()[-2000:]
    assert "markets" in (tmp_path / "feeder.out").read_text()
    normal = figures["normal"]
    assert normal["surge_alert_states_seen"] == [], "NegativeSentimentSurge became active on normal news"
    # A 10 s window holding a few items can spike (the alert's volume minimum is what keeps it silent);
    # over the whole normal phase the negative share stays under the surge floor.
    assert normal["mean_negative_share"] < TEST_ALERTS["surge_floor"]
    burst = figures["burst"]
    assert burst["seconds_to_firing"] is not None, f"no firing alert {FIRE_WITHIN_S}s into the burst: {burst}"
    assert {"overall", "source"} & set(burst["firing_scopes"])


def watch_normal_mix(wire: Wire, prometheus: str) -> dict:
    """Play the normal mix; poll the alert (any state) and the short-window negative share each second."""
    player = threading.Thread(target=wire.play, args=(normal_mix(), NORMAL_SECONDS))
    player.start()
    states, shares = set(), []
    while player.is_alive():
        states |= {a["state"] for a in surge_alerts(prometheus)}
        share = query(prometheus, "job:toolchain_negative_share:ratio_rate10s")
        if share is not None:
            shares.append(share)
        time.sleep(1)
    assert len(shares) > NORMAL_SECONDS / 2, "the negative-share recording rule produced too few values"
    items = query(prometheus, 'sum(toolchain_predictions_total{source=~"markets|macro"})')
    return {"items_written": wire.written, "items_counted": items, "surge_alert_states_seen": sorted(states),
            "max_negative_share": round(max(shares), 3), "mean_negative_share": round(sum(shares) / len(shares), 3)}


def watch_burst(wire: Wire, prometheus: str) -> dict:
    """Play the negative burst until the alert fires (or FIRE_WITHIN_S passes)."""
    started = time.monotonic()
    player = threading.Thread(target=wire.play, args=(negative_burst(), FIRE_WITHIN_S))
    player.start()
    pending_at = firing_at = None
    firing = []
    while firing_at is None and time.monotonic() - started < FIRE_WITHIN_S:
        alerts = surge_alerts(prometheus)
        if pending_at is None and alerts:
            pending_at = time.monotonic() - started
        firing = [a for a in alerts if a["state"] == "firing"]
        if firing:
            firing_at = time.monotonic() - started
        time.sleep(0.5)
    share = query(prometheus, "job:toolchain_negative_share:ratio_rate10s")
    baseline = query(prometheus, "job:toolchain_negative_share:ratio_rate90s")
    wire.stop.set()
    player.join()
    return {"seconds_to_pending": pending_at and round(pending_at, 1), "seconds_to_firing": firing_at and round(firing_at, 1),
            "firing_scopes": sorted(a["labels"]["scope"] for a in firing),
            "firing_sources": sorted(a["labels"].get("source", "-") for a in firing),
            "negative_share_at_fire": share and round(share, 3), "baseline_at_fire": baseline and round(baseline, 3)}


def check_dashboard_queries(prometheus: str) -> None:
    """Every dashboard query runs on the live Prometheus; the sentiment and volume panels have data."""
    board = json.loads((REPO / "deploy" / "grafana" / "toolchain-sentiment.json").read_text())
    empty = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = (target["expr"].replace("$__rate_interval", "10s").replace('"$job"', '"toolchain"')
                    .replace('"$topic"', '".*"').replace('"$source"', '".*"'))
            result = httpx.get(prometheus + "/api/v1/query", params={"query": expr}, timeout=5).json()
            assert result["status"] == "success", (panel["title"], expr, result)
            if not result["data"]["result"]:
                empty.append(panel["title"])
    # A sentiment-only model: its items carry topic="none", so the by-topic panels stay empty and the
    # by-source panels carry the picture (tests/test_alerts_topic_e2e.py checks the topic panels).
    for title in ("Negative share by source", "Items classified per second by source", "Request latency (/classify)",
                  "Batch size (texts per model call)", "Pods ready"):
        assert title not in empty, f"dashboard panel {title!r} has no data"


def metric_total(url: str, source: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=5).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "toolchain_predictions_total" and s.labels.get("source") == source)


@pytest.mark.parametrize("kill_signal, news_source", [(signal.SIGKILL, "restart"), (signal.SIGTERM, "graceful")])
def test_feeder_restart_counts_every_item_once(service, tmp_path, kill_signal, news_source):
    rows = phrasebank("allagree/test.jsonl")
    lines = [json.dumps({"text": r["text"], "source": news_source}) for r in rows]
    lines[10:10] = ["{broken json", json.dumps({"text": ""})]         # reported and skipped, never counted
    source = tmp_path / "news.jsonl"
    source.write_text("\n".join(lines) + "\n")
    before = metric_total(service, news_source)
    feeder = start_feeder(source, service, tmp_path, "--batch-size", "4", "--table-every", "0")
    state = tmp_path / "state.json"
    wait_for(lambda: json.loads(state.read_text())["sent_items"] >= 60, 120, "feeder mid-stream", 0.01)
    os.killpg(feeder.pid, kill_signal)
    feeder.wait(30)
    stopped_at = json.loads(state.read_text())["sent_items"]
    assert stopped_at < len(rows), "the feeder finished before it was stopped"
    again = start_feeder(source, service, tmp_path, "--batch-size", "4", "--table-every", "0")
    assert again.wait(180) == 0, (tmp_path / "feeder.err").read_text()[-2000:]
    err = (tmp_path / "feeder.err").read_text()
    resent = [line for line in err.splitlines() if "resending" in line]
    doubled = int(resent[0].split("resending ")[1].split()[0]) if resent else 0
    counted = metric_total(service, news_source) - before
    print(f"\n{signal.Signals(kill_signal).name} after {stopped_at} items: counted {counted:.0f} of {len(rows)}; "
          f"group in doubt resent: {doubled}")
    assert err.count("skipped bad line") >= 2 and "news.jsonl:11: skipped bad line: not JSON" in err
    if kill_signal == signal.SIGTERM:
        assert counted == len(rows) and not resent
    else:
        # A hard kill can fall after the service counted a group and before the state was written:
        # that group, and only it, is resent and reported; every other item is counted exactly once.
        assert counted in (len(rows), len(rows) + doubled)
    assert json.loads(state.read_text())["sent_items"] == len(rows)
