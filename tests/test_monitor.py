"""The news feeder: parsing, positions, durable state, retries, rejections and restarts.

Retry and failure paths run against a small stdlib HTTP server on 127.0.0.1 that answers like the
service's `/classify` (and, when told, 401/422/429/503); the real service is exercised by
tests/test_monitor_e2e.py.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from toolchain.cli import main
from toolchain.monitor.client import Backoff
from toolchain.monitor.inputs import BadLine, FileCursor, FolderInput, NewsItem, parse_line
from toolchain.monitor.state import FeedState, StateError
from toolchain.monitor.table import RollingShare

REPO = Path(__file__).resolve().parent.parent


class StubService:
    """`POST /classify` on 127.0.0.1: scripted failures first, then one prediction per text.

    A text containing "fell" is negative, "rose" positive, anything else neutral; a text containing
    "REJECT" is refused with 422 and ``field: texts[i]`` as the real service does. With ``topics``, each
    prediction also carries a predicted topic, as from a model with a topic head: "Earnings" for a text
    containing "earnings", "Energy | Oil" for "oil", else "Markets". A script entry is a
    status (answered with a JSON error and ``Retry-After: 0.3``) or ``(status, raw body bytes)``.
    A request carrying an ``Idempotency-Key`` already answered with 200 gets the stored answer again
    and is not counted twice (what the real service is asked to do; see toolchain/monitor/feeder.py).
    """

    def __init__(self, port: int = 0, script: list[int] | None = None, key: str | None = None, topics: bool = False):
        self.script = list(script or [])
        self.key, self.topics = key, topics
        self.received: Counter = Counter()       # texts counted, like toolchain_predictions_total
        self.requests = self.replays = 0
        self.answered: dict[str, list] = {}      # Idempotency-Key -> the 200 answer given
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with stub.lock:
                    stub.requests += 1
                    self.reply(*stub.answer_once(body, self.headers.get("authorization"),
                                                 self.headers.get("idempotency-key")))

            def reply(self, status, payload, headers=()):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer_once(self, body: dict, authorization: str | None, key: str | None):
        if key is not None and key in self.answered and not (self.key and authorization != f"Bearer {self.key}"):
            self.replays += 1
            return 200, self.answered[key]
        answer = self.answer(body, authorization)
        if key is not None and answer[0] == 200 and not isinstance(answer[1], bytes):   # a proxy's page is not stored
            self.answered[key] = answer[1]
        return answer

    def answer(self, body: dict, authorization: str | None):
        if self.key and authorization != f"Bearer {self.key}":
            return 401, {"error": "unauthorized", "message": "missing or invalid API key"}
        if self.script:
            entry = self.script.pop(0)
            if isinstance(entry, tuple):
                return entry
            return entry, {"error": "overloaded", "message": "retry shortly"}, [("retry-after", "0.3")]
        for i, text in enumerate(body["texts"]):
            if "REJECT" in text:
                return 422, {"error": "invalid_request", "message": f"texts[{i}] is refused", "field": f"texts[{i}]"}
        labels = ["negative" if "fell" in t else "positive" if "rose" in t else "neutral" for t in body["texts"]]
        for text in body["texts"]:
            self.received[(body.get("source"), text)] += 1
        answer = [{"label": label, "score": 0.9} for label in labels]
        if self.topics:
            for prediction, text in zip(answer, body["texts"]):
                prediction["topic"] = {"label": stub_topic(text), "score": 0.8}
        return 200, answer

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def stub_topic(text: str) -> str:
    return "Earnings" if "earnings" in text else "Energy | Oil" if "oil" in text else "Markets"


@pytest.fixture
def stub():
    service = StubService()
    yield service
    service.close()


def news(path: Path, rows: list, source: str | None = "markets") -> Path:
    """A JSONL file: each str becomes an item with ``source``; bytes are written as the raw line."""
    lines = [r.decode() if isinstance(r, bytes) else json.dumps({"text": r, **({"source": source} if source else {})})
             for r in rows]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def monitor(*args: str) -> int:
    return main(["monitor", "--give-up-after", "60", *args, "--table-every", "0", "--backoff-max", "0.5",
                 "--flush-seconds", "0.2"])


# -- parsing and positions ---------------------------------------------------------------------

@pytest.mark.parametrize("raw, reason", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a JSON object but list"),
    (b'{"topic": "x"}', "'text' must be a non-blank string, got None"),
    (b'{"text": "   "}', "'text' must be a non-blank string"),
    (b'{"text": "ok", "topic": 7}', "'topic' must be a string, got 7"),
    (b'{"text": "ok", "source": ["a"]}', "'source' must be a string, got ['a']"),
    (b'{"text": "ok", "source": "reuters", "topic": "Earnings"}',
     "'source' 'reuters' and its former name 'topic' 'Earnings' differ: give the item's source as 'source' only"),
    (b'{"text": "ok", "timestamp": "yesterday"}', "'timestamp' must be ISO 8601 or Unix seconds, got 'yesterday'"),
    (b'{"text": "caf\xe9"}', "not UTF-8 (byte 13: b'\\xe9')"),
])
def test_bad_lines_name_the_problem(raw, reason):
    record = parse_line(raw + b"\n", "wire.jsonl", 7, 99)
    assert isinstance(record, BadLine) and record.location == "wire.jsonl:7"
    assert reason in record.reason


def test_good_lines_and_blank_lines():
    item = parse_line(b'{"text": "Sales fell", "source": "banks", "timestamp": "2024-05-01T09:30:00Z", "id": 5}\n',
                      "f", 1, 10)
    assert isinstance(item, NewsItem) and (item.text, item.news_source, item.item_id) == ("Sales fell", "banks", "5")
    for line in (b'{"text": "x", "topic": "banks"}\n', b'{"text": "x", "topic": "banks", "source": "banks"}\n'):
        assert parse_line(line, "f", 1, 10).news_source == "banks"          # the key's former name
    assert item.timestamp == 1714555800.0
    assert parse_line(b'{"text": "x", "timestamp": 1714555800}\n', "f", 1, 1).timestamp == 1714555800.0
    assert parse_line(b"   \n", "f", 2, 14) is None


def test_a_line_still_being_written_waits_for_its_newline(tmp_path):
    path = tmp_path / "wire.jsonl"
    path.write_bytes(b'{"text": "one"}\n{"text": "tw')
    cursor = FileCursor(path)
    assert [r.text for r in cursor.read(10, final=False)] == ["one"]
    assert cursor.offset == len(b'{"text": "one"}\n')
    with open(path, "ab") as out:
        out.write(b'o"}\n')
    assert [(r.text, r.line) for r in cursor.read(10, final=False)] == [("two", 2)]


def test_folder_input_picks_up_new_files_and_appended_lines(tmp_path):
    news(tmp_path / "b.jsonl", ["b1"])
    news(tmp_path / "a.jsonl", ["a1", "a2"])
    (tmp_path / "notes.txt").write_text("ignored\n")
    folder = FolderInput(tmp_path, {}, "*.jsonl", follow=True, warn=print)
    assert [r.text for r in folder.read(10)] == ["a1", "a2", "b1"]
    news(tmp_path / "c.jsonl", ["c1"])
    with open(tmp_path / "a.jsonl", "a") as out:
        out.write(json.dumps({"text": "a3"}) + "\n")
    assert [r.text for r in folder.read(10)] == ["a3", "c1"]
    assert folder.read(10) == [] and not folder.exhausted


def test_state_survives_a_round_trip_and_bad_files_are_named(tmp_path):
    path = tmp_path / "state.json"
    state = FeedState()
    state.begin([], {"/news/a.jsonl": {"offset": 10, "line": 1, "inode": 5}}, {}, bad_lines=1)
    state.pending["acked"].append({"key": state.next_key(), "items": [0, 1, 2], "rows": []})
    state.commit({})
    state.save(path)
    loaded = FeedState.load(path)
    assert loaded.positions == {"/news/a.jsonl": {"offset": 10, "line": 1, "inode": 5}} and loaded.sent_items == 3
    assert loaded.bad_lines == 1 and loaded.feed_id == state.feed_id and loaded.batches == 1
    assert not list(tmp_path.glob(".state.json.*"))          # no temp file left behind
    path.write_text(json.dumps({"version": 1, "positions": {"/n.jsonl": {"offset": 4, "line": 1, "inode": 2}},
                                "pending": None, "sent_items": 1, "bad_lines": 0, "rejected_items": 0}))
    assert FeedState.load(path).positions["/n.jsonl"]["offset"] == 4      # a version-1 file is upgraded
    path.write_text("{truncated")
    with pytest.raises(StateError, match=str(path)):
        FeedState.load(path)
    path.write_text(json.dumps({"version": 99}))
    with pytest.raises(StateError, match="version 99"):
        FeedState.load(path)


def test_backoff_grows_with_jitter_and_honours_retry_after():
    import random

    backoff, rng = Backoff(initial_s=0.5, max_s=4.0), random.Random(0)
    delays = [backoff.delay(attempt, None, rng) for attempt in range(1, 40)]
    assert all(0 <= d <= 4.0 for d in delays) and max(delays) > 2.0
    assert all(backoff.delay(1, None, rng) <= 0.5 for _ in range(50))
    assert backoff.delay(1, 3.0, rng) >= 3.0 and backoff.delay(1, 60.0, rng) == 4.0


def test_rolling_table_without_topics_shows_shares_by_source():
    table = RollingShare(window=4)
    for label in ("negative", "negative", "neutral", "positive", "negative"):
        table.add("banks", label)
    table.add(None, "positive", timestamp=1714555800)
    text = table.render(now=1714555800)
    banks = next(line for line in text.splitlines() if line.startswith("banks"))
    assert banks.split()[1:6] == ["5", "4", "50.0%", "25.0%", "25.0%"]
    assert "(none)" in text and "2024-05-01 09:30" in text and text.splitlines()[-1].startswith("all sources")
    assert text.startswith("sentiment share by source, last 4 items per source") and "by topic" not in text
    assert table.summary() == ""                                      # no predicted topic: no topic summary


def row_of(text: str, name: str) -> list[str]:
    """The cells after the name of the table row starting with ``name``."""
    line = next(line for line in text.splitlines() if line.startswith(name))
    return line[len(name):].split()


def test_rolling_table_shows_shares_by_predicted_topic_then_by_source():
    table = RollingShare(window=3)
    for topic, source, label in [("Earnings", "reuters", "negative"), ("Earnings", "bloomberg", "positive"),
                                 ("Energy | Oil", "reuters", "neutral"), ("Earnings", "reuters", "negative"),
                                 ("Earnings", "reuters", "negative")]:
        table.add(source, label, predicted_topic=topic)
    text = table.render(now=1714555800)
    by_topic, by_source = text.split("\n\n")
    assert by_topic.startswith("sentiment share by topic, last 3 items per topic")
    assert row_of(by_topic, "Earnings")[:5] == ["4", "3", "66.7%", "0.0%", "33.3%"]     # its last 3 of 4
    assert row_of(by_topic, "Energy | Oil")[:5] == ["1", "1", "0.0%", "100.0%", "0.0%"]
    assert by_topic.splitlines()[-1].startswith("all topics")
    assert by_source.startswith("sentiment share by source")
    assert row_of(by_source, "reuters")[:5] == ["4", "3", "66.7%", "33.3%", "0.0%"]
    assert by_source.splitlines()[-1].startswith("all sources")


def test_summary_names_the_topics_whose_negative_share_rose_most():
    """First half vs second half of each topic's own items: Earnings 10% -> 90%, Markets 20% -> 30%,
    Macro falls (not named), IPO has too few items to be judged."""
    table = RollingShare(window=5)

    def feed(topic: str, negatives: list[int]) -> None:
        for negative in negatives:
            table.add("wire", "negative" if negative else "neutral", predicted_topic=topic)
    feed("Earnings", [1] + [0] * 9 + [1] * 9 + [0])
    feed("Markets", [1, 1] + [0] * 8 + [1, 1, 1] + [0] * 7)
    feed("Macro", [1] * 5 + [0] * 5 + [0] * 10)
    feed("IPO", [0] * 5 + [1] * 5)
    rises = table.rising(min_items=10)
    assert [(r.predicted_topic, r.before, r.after) for r in rises] == [("Earnings", 0.1, 0.9), ("Markets", 0.2, 0.3)]
    assert round(rises[0].points, 6) == 80.0 and rises[0].items == 20
    summary = table.summary(min_items=10)
    lines = summary.splitlines()
    assert lines[0] == "negative share rising most, first half vs second half of each topic's items this run:"
    assert lines[1].split() == ["Earnings", "10.0%", "->", "90.0%", "(+80.0", "points,", "20", "items)"]
    assert lines[2].split()[0] == "Markets" and len(lines) == 3
    assert [r.predicted_topic for r in table.rising(min_items=10, top=1)] == ["Earnings"]
    assert [r.predicted_topic for r in table.rising(min_items=5)] == ["IPO", "Earnings", "Markets"]   # IPO 0% -> 100%
    quiet = RollingShare()
    quiet.add("wire", "negative", predicted_topic="Macro")
    assert quiet.summary() == ("negative share rising most, first half vs second half of each topic's items this "
                               "run: none rose (a topic needs 10 items in each half; 1 topics seen)")


# -- against a stub service --------------------------------------------------------------------

@pytest.mark.parametrize("option", ["--source", "--topic"])     # --topic: the option's former name
def test_items_are_sent_by_source_and_bad_lines_reported(stub, tmp_path, capsys, option):
    wire = news(tmp_path / "wire.jsonl", ["Profit rose", b"not json at all", b'{"text": "Sales fell", "source": "banks"}',
                                         b'{"text": "No source here"}', b'{"text": "Profit fell", "topic": "old"}'])
    bad = tmp_path / "bad.jsonl"
    assert monitor(str(wire), "--url", stub.url, option, "general", "--bad-lines", str(bad)) == 0
    assert stub.received == Counter({("markets", "Profit rose"): 1, ("banks", "Sales fell"): 1,
                                     ("general", "No source here"): 1, ("old", "Profit fell"): 1})
    out, err = capsys.readouterr()
    assert f"{wire}:2: skipped bad line: not JSON" in err
    assert ("--topic is deprecated" in err) == (option == "--topic")
    bad_line = json.loads(bad.read_text())
    assert bad_line["line"] == 2 and bad_line["file"] == bad_line["source"] == str(wire)
    assert "sent 4 items this run (4 in all); 1 bad lines skipped" in out
    assert "general" in out and "banks" in out


def test_with_a_topic_head_the_run_shows_topics_and_the_predictions_carry_them(tmp_path, capsys):
    """A service whose model has a topic head: the table is by predicted topic (then by source), the
    summary names the topic whose negative share rose, each predictions row holds its topic."""
    service = StubService(topics=True)
    calm = [f"oil output {i} stable" for i in range(12)] + [f"earnings call {i} held" for i in range(12)]
    burst = [f"oil price {i} steady" for i in range(12)] + [f"earnings {i} fell" for i in range(12)]
    wire = news(tmp_path / "wire.jsonl", calm + burst, source="reuters")
    predictions = tmp_path / "pred.jsonl"
    try:
        assert monitor(str(wire), "--url", service.url, "--predictions", str(predictions), "--batch-size", "8") == 0
    finally:
        service.close()
    out = capsys.readouterr().out
    assert "sentiment share by topic, last 200 items per topic" in out and "sentiment share by source" in out
    assert row_of(out, "Earnings")[:5] == ["24", "24", "50.0%", "50.0%", "0.0%"]
    assert row_of(out, "Energy | Oil")[:5] == ["24", "24", "0.0%", "100.0%", "0.0%"]
    assert row_of(out, "reuters")[:2] == ["48", "48"]
    assert ("negative share rising most, first half vs second half of each topic's items this run:\n"
            "  Earnings") in out
    assert row_of(out, "  Earnings")[:3] == ["0.0%", "->", "100.0%"] and "Energy | Oil  " not in out.split("rising most")[1]
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 48 and {r["news_source"] for r in rows} == {"reuters"}
    assert rows[0]["file"] == str(wire) and rows[0]["line"] == 1
    assert Counter(r["predicted_topic"] for r in rows) == Counter({"Earnings": 24, "Energy | Oil": 24})
    assert {r["predicted_topic_score"] for r in rows} == {0.8}
    burst_rows = {(r["label"], r["predicted_topic"]) for r in rows if r["line"] > 36}
    assert burst_rows == {("negative", "Earnings")}
    # the former key names are written too, for one release: source = file, topic(_score) = predicted_topic(_score)
    assert all((r["source"], r["topic"], r["topic_score"])
               == (r["file"], r["predicted_topic"], r["predicted_topic_score"]) for r in rows)


def test_without_a_topic_head_the_predictions_have_no_topic(stub, tmp_path, capsys):
    wire, predictions = news(tmp_path / "wire.jsonl", ["Profit rose", "Sales fell"]), tmp_path / "pred.jsonl"
    assert monitor(str(wire), "--url", stub.url, "--predictions", str(predictions)) == 0
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [(r["news_source"], r["label"], r["predicted_topic"], r["predicted_topic_score"]) for r in rows] == [
        ("markets", "positive", None, None), ("markets", "negative", None, None)]
    out = capsys.readouterr().out
    assert "sentiment share by source" in out and "by topic" not in out and "rising most" not in out


def test_overload_answers_are_retried_with_backoff(tmp_path, capsys):
    service = StubService(script=[503, 429, 503])
    try:
        wire = news(tmp_path / "wire.jsonl", [f"item {i}" for i in range(5)])
        started = time.monotonic()
        assert monitor(str(wire), "--url", service.url) == 0
        assert time.monotonic() - started >= 0.9          # three Retry-After: 0.3 floors
    finally:
        service.close()
    assert sum(service.received.values()) == 5 and set(service.received.values()) == {1}
    err = capsys.readouterr().err
    assert "HTTP 503 retry shortly; retrying 5 items" in err and "HTTP 429" in err


def test_with_a_retry_limit_the_feeder_gives_up_without_losing_its_place(tmp_path, capsys):
    service = StubService(script=[503] * 10)
    wire, state = news(tmp_path / "wire.jsonl", ["a", "b"]), tmp_path / "state.json"
    try:
        assert monitor(str(wire), "--url", service.url, "--state", str(state), "--max-retries", "2") == 1
    finally:
        service.close()
    assert "gave up" in capsys.readouterr().err and service.requests == 2
    saved = json.loads(state.read_text())
    assert saved["sent_items"] == 0 and saved["pending"]["attempting"] is None
    assert saved["pending"]["ranges"][0]["records"] == 2


def test_connection_errors_are_retried_until_the_service_appears(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    wire = news(tmp_path / "wire.jsonl", ["a", "b", "c"])
    holder = {}
    threading.Timer(1.0, lambda: holder.setdefault("service", StubService(port=port))).start()
    try:
        assert monitor(str(wire), "--url", f"http://127.0.0.1:{port}") == 0
    finally:
        time.sleep(0.1)
        holder["service"].close()
    assert sum(holder["service"].received.values()) == 3


def test_a_refused_item_is_reported_and_the_rest_delivered(stub, tmp_path, capsys):
    wire = news(tmp_path / "wire.jsonl", ["ok 1", "REJECT me", "ok 2", "ok 3"])
    assert monitor(str(wire), "--url", stub.url) == 0
    assert sorted(text for _, text in stub.received) == ["ok 1", "ok 2", "ok 3"]
    assert f"{wire}:2: rejected by the service (HTTP 422): texts[1] is refused" in capsys.readouterr().err


def test_a_wrong_key_stops_the_feeder(tmp_path, capsys):
    service = StubService(key="right")
    try:
        wire = news(tmp_path / "wire.jsonl", ["a"])
        key = tmp_path / "key.txt"
        key.write_text("wrong\n")
        assert monitor(str(wire), "--url", service.url, "--api-key-file", str(key)) == 2
        assert "refused the API key (HTTP 401" in capsys.readouterr().err
        key.write_text("right\n")
        assert monitor(str(wire), "--url", service.url, "--api-key-file", str(key)) == 0
    finally:
        service.close()
    assert sum(service.received.values()) == 1


def test_a_service_that_does_not_take_source_is_named(tmp_path, capsys):
    service = StubService(script=[(422, {"error": "invalid_request", "message": "unknown field 'source'",
                                         "field": "source"})])
    try:
        assert monitor(str(news(tmp_path / "wire.jsonl", ["a"])), "--url", service.url) == 2
    finally:
        service.close()
    err = capsys.readouterr().err
    assert "refused the request's 'source' field (unknown field 'source')" in err and "upgrade the service" in err


def test_bad_arguments_name_the_value(tmp_path, capsys):
    wire = news(tmp_path / "wire.jsonl", ["a"])
    assert monitor(str(wire), "--batch-size", "0") == 2
    assert "--batch-size must be at least 1, got 0" in capsys.readouterr().err
    assert monitor(str(tmp_path / "missing.jsonl")) == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err
    assert monitor(str(wire), "--source", "s" * 201) == 2
    assert "--source has 201 characters; the service takes at most 200" in capsys.readouterr().err


def test_a_restart_sends_only_lines_not_acknowledged(stub, tmp_path):
    wire, state = news(tmp_path / "wire.jsonl", [f"first {i}" for i in range(7)]), tmp_path / "state.json"
    assert monitor(str(wire), "--url", stub.url, "--state", str(state), "--batch-size", "3") == 0
    with open(wire, "a") as out:
        out.write("".join(json.dumps({"text": f"second {i}"}) + "\n" for i in range(4)))
    assert monitor(str(wire), "--url", stub.url, "--state", str(state), "--batch-size", "3") == 0
    assert len(stub.received) == 11 and set(stub.received.values()) == {1}
    saved = json.loads(state.read_text())
    assert saved["pending"] is None and saved["sent_items"] == 11
    assert saved["positions"][str(wire)]["line"] == 11


def pending_state(path: Path, wire: Path, records: int, sent: list[str], attempting: str | None) -> None:
    """The state (version 1, as the previous feeder wrote it) a hard kill leaves while a batch of
    ``records`` lines is being sent; a restart upgrades it."""
    end = {"offset": len(b"".join(wire.read_bytes().splitlines(keepends=True)[:records])), "line": records,
           "inode": os.stat(wire).st_ino}
    path.write_text(json.dumps({"version": 1, "positions": {}, "sent_items": 0, "bad_lines": 0, "rejected_items": 0,
                                "pending": {"end": {str(wire): end}, "records": records, "sent": sent,
                                            "attempting": attempting}}))


@pytest.mark.parametrize("policy, resent", [("resend", True), ("skip", False)])
def test_after_a_hard_kill_the_group_in_flight_is_reported(stub, tmp_path, capsys, policy, resent):
    wire = tmp_path / "wire.jsonl"
    wire.write_text("".join(json.dumps({"text": f"{t} {i}", "topic": t}) + "\n"
                            for i, t in enumerate(["a", "b", "a", "b", "c", "c"])))
    state = tmp_path / "state.json"
    pending_state(state, wire, records=4, sent=["a"], attempting="b")   # group "a" acknowledged, "b" in flight
    assert monitor(str(wire), "--url", stub.url, "--state", str(state), "--uncertain", policy) == 0
    got = sorted(text for _, text in stub.received)
    assert got == (["b 1", "b 3"] if resent else []) + ["c 4", "c 5"]
    err = capsys.readouterr().err
    verb = "resending" if resent else "not resending"
    assert f"{verb} 2 items of source b ({wire}:2 .. {wire}:4)" in err


def test_a_pending_batch_written_before_sources_existed_is_finished(stub, tmp_path, capsys):
    """A state an earlier version left mid-batch names the request's source `topic` (in its write-ahead and
    its answered rows): the restart sends the rest under that source and writes the rows in today's form."""
    from toolchain.monitor.batch import describe
    from toolchain.monitor.inputs import FileInput

    wire = tmp_path / "wire.jsonl"
    wire.write_text("".join(json.dumps({"text": f"{t} {i}", "topic": t}) + "\n" for i, t in enumerate("abab")))
    records, ranges, end = describe(FileInput(wire, {}, False, print).read(10))
    state, predictions = FeedState(), tmp_path / "pred.jsonl"
    state.begin(ranges, end, {str(predictions.resolve()): 0}, 0)
    old_row = {"source": str(wire), "line": 1, "id": None, "topic": "a", "label": "neutral", "score": 0.9}
    state.pending["acked"].append({"key": state.next_key(), "items": [0, 2], "rows": [old_row, {**old_row, "line": 3}]})
    state.pending["attempting"] = {"key": state.next_key(), "items": [1, 3], "topic": "b"}
    state.save(tmp_path / "state.json")
    assert monitor(str(wire), "--url", stub.url, "--state", str(tmp_path / "state.json"),
                   "--predictions", str(predictions)) == 0
    assert stub.received == Counter({("b", "b 1"): 1, ("b", "b 3"): 1})
    assert "resending 2 items of source b" in capsys.readouterr().err
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [(r["line"], r["news_source"], r["predicted_topic"]) for r in rows] == [(1, "a", None), (3, "a", None),
                                                                        (2, "b", None), (4, "b", None)]


def test_a_pending_batch_written_before_the_file_was_called_file_is_finished(stub, tmp_path):
    """The previous version's write-ahead names a range's file `source` and keeps answered rows with `source` (the
    file) and `topic`/`topic_score` (the predicted topic): the restart replays its lines and writes today's rows."""
    from toolchain.monitor.batch import describe
    from toolchain.monitor.inputs import FileInput

    wire = news(tmp_path / "wire.jsonl", ["a 0", "a 1", "a 2"], source="a")
    records, ranges, end = describe(FileInput(wire, {}, False, print).read(10))
    ranges = [{("source" if key == "file" else key): value for key, value in r.items()} for r in ranges]
    state, predictions = FeedState(), tmp_path / "pred.jsonl"
    state.begin(ranges, end, {str(predictions.resolve()): 0}, 0)
    old_row = {"source": str(wire), "line": 1, "id": None, "news_source": "a", "label": "neutral", "score": 0.9,
               "topic": "Earnings", "topic_score": 0.7}
    state.pending["acked"].append({"key": state.next_key(), "items": [0], "rows": [old_row]})
    state.save(tmp_path / "state.json")
    assert monitor(str(wire), "--url", stub.url, "--state", str(tmp_path / "state.json"),
                   "--predictions", str(predictions)) == 0
    assert stub.received == Counter({("a", "a 1"): 1, ("a", "a 2"): 1})
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [(r["file"], r["line"], r["predicted_topic"], r["predicted_topic_score"]) for r in rows] == [
        (str(wire), 1, "Earnings", 0.7), (str(wire), 2, None, None), (str(wire), 3, None, None)]


def test_stdin_lines_stored_before_the_rename_are_restored():
    from toolchain.monitor.batch import restored, stored

    item = parse_line(b'{"text": "x", "source": "a"}\n', "<stdin>", 3, 3)
    old = {("source" if key == "file" else key): value for key, value in stored(item).items()}
    assert restored(old) == item and restored(stored(item)) == item and item.location == "<stdin>:3"

def test_sigterm_while_the_service_is_down_parks_and_loses_nothing(tmp_path):
    service = StubService(script=[503] * 1000)
    wire = news(tmp_path / "wire.jsonl", [f"item {i}" for i in range(6)])
    state = tmp_path / "state.json"
    command = [sys.executable, "-m", "toolchain.cli", "monitor", str(wire), "--url", service.url, "--state",
               str(state), "--batch-size", "4", "--backoff-max", "0.3", "--table-every", "0"]
    feeder = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while service.requests < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        feeder.send_signal(signal.SIGTERM)
        out, err = feeder.communicate(timeout=30)
    finally:
        feeder.kill()
        service.close()
    assert feeder.returncode == 0, err
    assert "stopped while the service was unavailable" in err
    assert json.loads(state.read_text())["pending"]["attempting"] is None      # nothing in doubt
    service = StubService()
    try:
        assert monitor(str(wire), "--url", service.url, "--state", str(state), "--batch-size", "4") == 0
    finally:
        service.close()
    assert len(service.received) == 6 and set(service.received.values()) == {1}


def test_help_imports_no_heavy_modules():
    code = ("import sys; from toolchain.cli import parser; parser('monitor').parse_args(['monitor', 'x']); "
            "print(sorted(m for m in ('torch', 'transformers', 'httpx', 'bentoml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


# -- personal data in what the feeder writes and prints ------------------------------------------

KONE = "Kone 's net sales rose by some 14 % year-on-year in the first nine months of 2008 ."   # PhraseBank allagree
EBIT = "EBIT margin was up from 1.4 % to 5.1 % ."


def feed_with_personal_data(stub, tmp_path, *options: str) -> tuple[list[dict], list[dict]]:
    """Two items (one with an e-mail address and a phone number) and a bad line quoting an e-mail address,
    through the real feeder; the rows of the predictions and bad-lines files."""
    wire = tmp_path / "wire.jsonl"
    rows = [{"id": "kone-1", "text": f"{KONE} Contact ir@kone.example.com or +358 9 2311 4567 ."},
            {"id": "ebit-2", "text": EBIT}]
    wire.write_text("".join(json.dumps(row) + "\n" for row in rows) + "not json: write to jane.doe@example.org\n")
    predictions, bad = tmp_path / "pred.jsonl", tmp_path / "bad.jsonl"
    assert monitor(str(wire), "--url", stub.url, "--predictions", str(predictions), "--bad-lines", str(bad),
                   *options) == 0
    read = lambda path: [json.loads(line) for line in path.read_text().splitlines()]   # noqa: E731
    return read(predictions), read(bad)


def test_predictions_and_bad_lines_hold_masked_text_and_the_service_gets_it_whole(stub, tmp_path, capsys):
    predictions, bad = feed_with_personal_data(stub, tmp_path)
    err = capsys.readouterr().err
    assert {text for _, text in stub.received} == {f"{KONE} Contact ir@kone.example.com or +358 9 2311 4567 .", EBIT}
    assert [(row["id"], row["line"], row["label"], row["text"]) for row in predictions] == [
        ("kone-1", 1, "positive", f"{KONE} Contact [EMAIL] or [PHONE] ."), ("ebit-2", 2, "neutral", EBIT)]
    assert [(row["line"], row["reason"]) for row in bad] == [
        (3, "not JSON (Expecting value at column 1): 'not json: write to [EMAIL]'")]
    assert "skipped bad line: not JSON (Expecting value at column 1): 'not json: write to [EMAIL]'" in err
    written = (tmp_path / "pred.jsonl").read_text() + (tmp_path / "bad.jsonl").read_text() + err
    assert "example" not in written and "2311" not in written


def test_no_mask_writes_texts_as_they_are(stub, tmp_path, capsys):
    predictions, bad = feed_with_personal_data(stub, tmp_path, "--no-mask")
    assert predictions[0]["text"] == f"{KONE} Contact ir@kone.example.com or +358 9 2311 4567 ."
    assert bad[0]["reason"].endswith("'not json: write to jane.doe@example.org'")
    assert "jane.doe@example.org" in capsys.readouterr().err
