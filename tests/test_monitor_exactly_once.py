"""The feeder loses and repeats nothing: crash recovery, transient failures, predictions, plain http.

A crash is simulated in-process by raising :class:`Crash` (a BaseException nothing catches) at a
chosen point: nothing after it runs, as after a SIGKILL there. tests/test_monitor_kill.py does the same
with real SIGKILLs against a growing folder.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from test_monitor import StubService, monitor
from toolchain.monitor.client import ServiceClient
from toolchain.monitor.state import FeedState


class Crash(BaseException):
    """Stands for a SIGKILL at that point."""


class Crasher:
    """Crashes the feeder at the ``call``-th request: before it is sent, right after its answer came
    back, or right after the state was saved following its answer."""

    def __init__(self, monkeypatch):
        self.call, self.when, self.calls, self.answered = 0, None, 0, False
        send, save = ServiceClient.classify, FeedState.save
        crasher = self

        def classify(client, *args, **kwargs):
            crasher.calls += 1
            armed = crasher.calls == crasher.call
            if armed and crasher.when == "before":
                raise Crash()
            result = send(client, *args, **kwargs)
            if armed and crasher.when == "answered":
                raise Crash()
            crasher.answered = armed
            return result

        def save_state(state, path):
            save(state, path)
            if crasher.answered and crasher.when == "saved":
                crasher.answered = False
                raise Crash()

        monkeypatch.setattr(ServiceClient, "classify", classify)
        monkeypatch.setattr(FeedState, "save", save_state)

    def arm(self, call: int, when: str) -> None:
        self.call, self.when, self.calls = call, when, 0

    def disarm(self) -> None:
        self.call, self.when = 0, None


@pytest.fixture
def crasher(monkeypatch):
    return Crasher(monkeypatch)


@pytest.fixture
def stub():
    service = StubService()
    yield service
    service.close()


def write(path: Path, ids: list[str], topic: str, mode: str = "w") -> None:
    with open(path, mode) as out:
        out.write("".join(json.dumps({"text": f"item {i}", "topic": topic, "id": i}) + "\n" for i in ids))


def texts(service: StubService) -> Counter:
    return Counter({text: n for (_, text), n in service.received.items()})


def prediction_ids(path: Path) -> Counter:
    return Counter(json.loads(line)["id"] for line in path.read_text().splitlines())


# -- 1. recovery replays exactly the pending batch -------------------------------------------------

@pytest.mark.parametrize("layout", ["folder", "two files"])
def test_recovery_replays_the_pending_batch_although_files_grew_and_appeared(stub, crasher, tmp_path, layout):
    news = tmp_path / "news"
    news.mkdir()
    write(news / "a.jsonl", ["a1", "a2", "a3"], "x")
    write(news / "b.jsonl", ["b1", "b2", "b3"], "y")
    sources = [str(news)] if layout == "folder" else [str(news / "a.jsonl"), str(news / "b.jsonl")]
    args = [*sources, "--once", "--url", stub.url, "--state", str(tmp_path / "state.json"), "--batch-size", "10"]
    crasher.arm(call=2, when="before")              # source x acknowledged, the kill before source y is sent
    with pytest.raises(Crash):
        monitor(*args)
    write(news / "a.jsonl", ["a4", "a5"], "x", mode="a")    # the sources change while the feeder is down
    write(news / "a2.jsonl", ["c1", "c2"], "y")
    crasher.disarm()
    assert monitor(*args) == 0
    expected = {f"item {i}" for i in ["a1", "a2", "a3", "a4", "a5", "b1", "b2", "b3"]}
    if layout == "folder":
        expected |= {"item c1", "item c2"}
    assert texts(stub) == Counter({text: 1 for text in expected})


# -- 2. a transient 5xx is retried, never a rejection ------------------------------------------------

def test_a_transient_500_is_retried_and_nothing_is_rejected(tmp_path, capsys):
    service = StubService(script=[500, 500, 502])
    wire = tmp_path / "wire.jsonl"
    write(wire, ["1", "2", "3"], "x")
    try:
        assert monitor(str(wire), "--url", service.url, "--state", str(tmp_path / "state.json")) == 0
    finally:
        service.close()
    assert texts(service) == Counter({"item 1": 1, "item 2": 1, "item 3": 1})
    out, err = capsys.readouterr()
    assert "rejected by the service" not in err and "0 items rejected" in out
    assert "HTTP 500 retry shortly; retrying 3 items" in err


def test_a_lasting_5xx_gives_up_after_the_bounded_wait_and_keeps_the_position(tmp_path, capsys):
    service = StubService(script=[500] * 1000)
    wire, state = tmp_path / "wire.jsonl", tmp_path / "state.json"
    write(wire, ["1", "2"], "x")
    try:
        assert monitor(str(wire), "--url", service.url, "--state", str(state), "--give-up-after", "1") == 1
    finally:
        service.close()
    err = capsys.readouterr().err
    assert "gave up" in err and "HTTP 500" in err and "position is saved" in err
    saved = json.loads(state.read_text())
    assert saved["sent_items"] == 0 and saved["rejected_items"] == 0 and saved["pending"] is not None
    service = StubService()
    try:
        assert monitor(str(wire), "--url", service.url, "--state", str(state)) == 0
    finally:
        service.close()
    assert texts(service) == Counter({"item 1": 1, "item 2": 1})


# -- 3. predictions exactly once; a 200 that is not JSON ---------------------------------------------

@pytest.mark.parametrize("when", ["answered", "saved"])
def test_a_crash_after_the_answer_repeats_and_loses_nothing(stub, crasher, tmp_path, when):
    """The kill falls after the service counted a request: nothing is counted twice (the request is
    resent with its Idempotency-Key) and the predictions file holds every item once."""
    wire, predictions = tmp_path / "wire.jsonl", tmp_path / "pred.jsonl"
    write(wire, [str(i) for i in range(5)], "x")
    write(wire, [str(i) for i in range(5, 9)], "y", mode="a")
    args = [str(wire), "--url", stub.url, "--state", str(tmp_path / "state.json"), "--batch-size", "6",
            "--predictions", str(predictions)]
    crasher.arm(call=1, when=when)
    with pytest.raises(Crash):
        monitor(*args)
    crasher.disarm()
    assert monitor(*args) == 0
    assert texts(stub) == Counter({f"item {i}": 1 for i in range(9)})
    assert prediction_ids(predictions) == Counter({str(i): 1 for i in range(9)})


def test_a_200_that_is_not_json_is_retried_with_the_position_kept(tmp_path, capsys):
    service = StubService(script=[(200, b"<html>gateway</html>")])
    wire, predictions = tmp_path / "wire.jsonl", tmp_path / "pred.jsonl"
    write(wire, ["1", "2"], "x")
    try:
        assert monitor(str(wire), "--url", service.url, "--state", str(tmp_path / "state.json"),
                       "--predictions", str(predictions)) == 0
    finally:
        service.close()
    assert "not JSON" in capsys.readouterr().err
    assert prediction_ids(predictions) == Counter({"1": 1, "2": 1})


# -- 4. the key never travels over plain http to another host ----------------------------------------

def test_plain_http_to_a_remote_host_is_refused(tmp_path, capsys):
    wire = tmp_path / "wire.jsonl"
    write(wire, ["1"], "x")
    assert monitor(str(wire), "--url", "http://192.0.2.1:9", "--max-retries", "1", "--timeout", "0.5") == 2
    err = capsys.readouterr().err
    assert "http://192.0.2.1:9" in err and "--allow-insecure-http" in err and "https://" in err


@pytest.mark.parametrize("url, allowed", [
    ("http://127.0.0.1:3000", True), ("http://127.8.9.10", True), ("http://localhost:3000", True),
    ("http://[::1]:3000", True), ("http://[::ffff:127.0.0.1]:3000", True), ("https://sentiment.example.com", True),
    ("http://sentiment.example.com", False), ("http://10.0.0.5:3000", False), ("http://[2001:db8::1]", False),
    ("http://localhost.example.com", False), ("ftp://127.0.0.1", False), ("http://", False),
])
def test_only_loopback_may_use_plain_http(url, allowed):
    from toolchain.monitor import check_url
    from toolchain.monitor.client import MonitorError

    if allowed:
        check_url(url)
    else:
        with pytest.raises(MonitorError):
            check_url(url)
        if url.startswith("http://") and url != "http://":
            check_url(url, allow_insecure_http=True)        # the explicit flag lets it through


# -- more of the protocol ------------------------------------------------------------------------------

def test_uncertain_skip_drops_the_request_in_doubt_and_says_so(stub, crasher, tmp_path, capsys):
    wire, predictions = tmp_path / "wire.jsonl", tmp_path / "pred.jsonl"
    write(wire, [str(i) for i in range(3)], "x")
    write(wire, [str(i) for i in range(3, 5)], "y", mode="a")
    args = [str(wire), "--url", stub.url, "--state", str(tmp_path / "state.json"), "--predictions", str(predictions)]
    crasher.arm(call=1, when="answered")
    with pytest.raises(Crash):
        monitor(*args)
    crasher.disarm()
    assert monitor(*args, "--uncertain", "skip") == 0
    out, err = capsys.readouterr()
    assert f"not resending 3 items of source x ({wire}:1 .. {wire}:3)" in err
    assert "3 items in doubt not resent" in out
    assert texts(stub) == Counter({f"item {i}": 1 for i in range(5)})      # the first attempt had been counted
    assert prediction_ids(predictions) == Counter({"3": 1, "4": 1})       # its answer never arrived


def test_the_request_in_doubt_is_resent_with_its_key(stub, crasher, tmp_path, capsys):
    wire = tmp_path / "wire.jsonl"
    write(wire, [str(i) for i in range(3)], "x")
    args = [str(wire), "--url", stub.url, "--state", str(tmp_path / "state.json")]
    crasher.arm(call=1, when="answered")
    with pytest.raises(Crash):
        monitor(*args)
    crasher.disarm()
    assert monitor(*args) == 0
    assert f"resending 3 items of source x ({wire}:1 .. {wire}:3) with the same Idempotency-Key" in capsys.readouterr().err
    assert stub.replays == 1 and texts(stub) == Counter({f"item {i}": 1 for i in range(3)})


def test_a_crash_after_the_outputs_were_written_writes_them_once(stub, monkeypatch, tmp_path):
    from toolchain.monitor.outputs import Outputs

    wire, predictions, bad = tmp_path / "wire.jsonl", tmp_path / "pred.jsonl", tmp_path / "bad.jsonl"
    write(wire, ["1", "2"], "x")
    with open(wire, "a") as out:
        out.write("not json\n")
    args = [str(wire), "--url", stub.url, "--state", str(tmp_path / "state.json"), "--predictions", str(predictions),
            "--bad-lines", str(bad)]
    sync = Outputs.sync

    def crash(self):
        raise Crash()
    monkeypatch.setattr(Outputs, "sync", crash)          # appended, not yet committed
    with pytest.raises(Crash):
        monitor(*args)
    assert prediction_ids(predictions) == Counter({"1": 1, "2": 1})
    monkeypatch.setattr(Outputs, "sync", sync)
    assert monitor(*args) == 0
    assert prediction_ids(predictions) == Counter({"1": 1, "2": 1})
    assert [json.loads(line)["line"] for line in bad.read_text().splitlines()] == [3]
    assert json.loads((tmp_path / "state.json").read_text())["bad_lines"] == 1


def test_a_413_or_a_422_on_the_whole_list_splits_the_request_and_rejects_nothing(tmp_path, capsys):
    service = StubService(script=[413, (422, {"error": "invalid_request", "message": "texts has 2 items; at most 1",
                                              "field": "texts"})])
    wire = tmp_path / "wire.jsonl"
    write(wire, ["1", "2", "3", "4"], "x")
    try:
        assert monitor(str(wire), "--url", service.url) == 0
    finally:
        service.close()
    assert texts(service) == Counter({f"item {i}": 1 for i in "1234"})
    assert "0 items rejected" in capsys.readouterr().out


def test_a_413_on_a_single_item_rejects_that_item(tmp_path, capsys):
    service = StubService(script=[413])
    wire = tmp_path / "wire.jsonl"
    write(wire, ["huge"], "x")
    try:
        assert monitor(str(wire), "--url", service.url) == 0
    finally:
        service.close()
    out, err = capsys.readouterr()
    assert f"{wire}:1: rejected by the service (HTTP 413)" in err and "1 items rejected" in out


@pytest.mark.parametrize("answer, message", [
    (400, "answered HTTP 400"),
    ((422, {"error": "invalid_request", "message": "unknown field 'topic'", "field": "topic"}), "without naming an item"),
])
def test_a_4xx_that_names_no_item_stops_with_the_position_kept(tmp_path, capsys, answer, message):
    service = StubService(script=[answer])
    wire, state = tmp_path / "wire.jsonl", tmp_path / "state.json"
    write(wire, ["1", "2"], "x")
    try:
        assert monitor(str(wire), "--url", service.url, "--state", str(state)) == 2
        assert message in capsys.readouterr().err and not service.received
        saved = json.loads(state.read_text())
        assert saved["sent_items"] == saved["rejected_items"] == 0 and saved["pending"]["attempting"] is None
        assert monitor(str(wire), "--url", service.url, "--state", str(state)) == 0
    finally:
        service.close()
    assert texts(service) == Counter({"item 1": 1, "item 2": 1})


def test_retry_after_as_seconds_or_http_date():
    from email.utils import formatdate

    from toolchain.monitor.client import _retry_after

    class Answer:
        def __init__(self, value):
            self.headers = {"retry-after": value}
    assert _retry_after(Answer("2.5")) == 2.5 and _retry_after(Answer("soon")) is None
    assert 8 < _retry_after(Answer(formatdate(time.time() + 10, usegmt=True))) <= 10


def test_a_topic_longer_than_the_service_takes_is_a_bad_line():
    from toolchain.monitor.inputs import BadLine, parse_line

    record = parse_line(json.dumps({"text": "ok", "topic": "t" * 201}).encode() + b"\n", "f", 1, 10)
    assert isinstance(record, BadLine) and "at most 200" in record.reason


def test_stdin_lines_of_the_pending_batch_are_kept_in_the_state(stub, crasher, monkeypatch, tmp_path):
    """Stdin cannot be read again: the pending batch's lines are replayed from the state, and a replayed
    stream is read on after them."""
    import io

    data = "".join(json.dumps({"text": f"item {i}", "topic": "xy"[i % 2], "id": str(i)}) + "\n" for i in range(6))
    from toolchain.monitor import inputs

    opened = inputs.open_input
    monkeypatch.setattr(inputs, "open_input", lambda spec, *args: opened(spec, *args, stdin=io.BytesIO(data.encode())))
    predictions = tmp_path / "pred.jsonl"
    args = ["-", "--url", stub.url, "--state", str(tmp_path / "state.json"), "--batch-size", "4",
            "--predictions", str(predictions)]
    crasher.arm(call=2, when="before")
    with pytest.raises(Crash):
        monitor(*args)
    crasher.disarm()
    assert monitor(*args) == 0
    assert texts(stub) == Counter({f"item {i}": 1 for i in range(6)})
    assert prediction_ids(predictions) == Counter({str(i): 1 for i in range(6)})
