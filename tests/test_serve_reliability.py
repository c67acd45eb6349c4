"""Reliability of admission control: every response counted, malformed JSON, honest 503s, key rotation,
idempotent retries.

The unit tests need no server. The server tests run a real `bentoml serve` on 127.0.0.1 of the tiny
model's export, through a test-only module (``faulty_service``) that wraps the real service with faults
injected on request: a model call slower than the timeout, a ServiceUnavailable from the model, an
exception inside admission control. Everything else is the production code path.
"""
from __future__ import annotations

import json
import logging
import os
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from test_serve_support import (HASHED_KEY, PLAIN_KEY, Server, built, metric_total,  # noqa: F401
                                toolchain_env, write_keys)
from toolchain.serve import auth
from toolchain.serve.classify import parse_request
from toolchain.serve.validation import Limits, RequestRejected

LIMITS = Limits(max_items=4, max_chars=50)
TIMEOUT_S = 2.0
MAX_LATENCY_MS = 300    # the former name of the model queue's bound (TOOLCHAIN_MAX_QUEUE_S): still honoured
TEXT_COST_MS = 10       # the model queue's cost per text here: a 40-text request is 0.4 s of queued work


# --------------------------------------------------------------------------- item 6: every malformed body is a 400

MALFORMED = [
    ("5000-digit int", b'{"texts": ["a"], "topic": ' + b"1" * 5000 + b"}"),
    ("5000-digit int in texts", b'{"texts": [' + b"9" * 5000 + b"]}"),
    ("negative huge int", b'{"texts": [-' + b"9" * 4400 + b"]}"),
    ("NaN", b'{"texts": [NaN]}'),
    ("Infinity", b'{"texts": ["a"], "topic": Infinity}'),
    ("-Infinity", b'{"texts": [-Infinity]}'),
    ("duplicate keys", b'{"texts": ["a"], "texts": ["b"]}'),
    ("duplicate nested keys", b'{"texts": [{"x": 1, "x": 2}]}'),
    ("arrays 100k deep", b"[" * 100_000 + b"]" * 100_000),
    ("objects 100k deep", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    ("trailing garbage", b'{"texts": ["a"]} trailing'),
    ("two objects", b'{"texts": ["a"]}{"texts": ["b"]}'),
    ("truncated", b'{"texts": ["a'),
    ("single quotes", b"{'texts': ['a']}"),
    ("non-UTF-8", b'{"texts": ["\xc3\x28"]}'),
    ("UTF-16", '{"texts": ["a"]}'.encode("utf-16")),
    ("NUL bytes", b"\x00\x00\x00"),
]


@pytest.mark.parametrize("name, body", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_every_malformed_body_is_a_400_with_a_clear_message(name, body):
    with pytest.raises(RequestRejected) as error:
        parse_request(body, LIMITS)
    rejected = error.value
    assert rejected.status == 400, (rejected.status, rejected.message)
    assert rejected.error in ("invalid_json", "invalid_encoding") and 20 < len(rejected.message) < 400
    assert rejected.reason == "validation"


def test_huge_int_message_says_what_is_wrong():
    with pytest.raises(RequestRejected, match="digits"):
        parse_request(b'{"texts": [' + b"7" * 5000 + b"]}", LIMITS)
    with pytest.raises(RequestRejected, match="duplicate key 'texts'"):
        parse_request(b'{"texts": ["a"], "texts": ["b"]}', LIMITS)
    with pytest.raises(RequestRejected, match="NaN"):
        parse_request(b'{"texts": [NaN]}', LIMITS)


def test_legal_json_edge_cases_are_accepted():
    assert parse_request(b'\xef\xbb\xbf{"texts": ["a"]}', LIMITS).texts == ["a"]  # a UTF-8 BOM (RFC 8259: may ignore)
    assert parse_request(b' \r\n{"texts" : [ "a" , "\\u00e9" ] }\n', LIMITS).texts == ["a", "é"]
    with pytest.raises(RequestRejected) as error:   # a small int is legal JSON, just the wrong type: 422
        parse_request(b'{"texts": [12]}', LIMITS)
    assert error.value.status == 422 and error.value.field == "texts[0]"


# --------------------------------------------------------------------------- item 9: key formats and reloading

def test_plain_prefix_makes_a_hash_looking_key_unambiguous(tmp_path):
    looks_like_a_hash = "sha256:" + "ab" * 32
    ring = auth.load_keys({auth.KEYS_ENV: f"plain:{looks_like_a_hash}, plain:  spaced:key , {auth.hash_key('h')}"})
    assert ring.check(looks_like_a_hash) and ring.check("spaced:key") and ring.check("h")
    assert not ring.check("plain:" + looks_like_a_hash)
    bare = auth.load_keys({auth.KEYS_ENV: looks_like_a_hash})  # documented: a bare sha256:<64 hex> is a hash
    assert not bare.check(looks_like_a_hash)
    keys_file = tmp_path / "keys"
    keys_file.write_text("old-style-plain-key\nteam:secret\n")    # backward compatible: bare lines are plain keys
    ring = auth.load_keys({auth.KEYS_FILE_ENV: str(keys_file)})
    assert ring.check("old-style-plain-key") and ring.check("team:secret")


@pytest.mark.parametrize("line, hint", [("sha256:not-hex", "plain:"), ("SHA256:" + "ab" * 31, "plain:"),
                                        ("sha512:" + "ab" * 64, "plain:"), ("md5:" + "ab" * 16, "plain:"),
                                        ("plain:", "empty"), ("plain:   ", "empty")])
def test_ambiguous_or_malformed_key_lines_are_refused_with_a_clear_message(tmp_path, line, hint):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"good\n{line}\n")
    with pytest.raises(auth.AuthConfigError) as error:
        auth.load_keys({auth.KEYS_FILE_ENV: str(keys_file)})
    assert hint in str(error.value) and "line 2" in str(error.value)
    assert len(line.strip()) <= 8 or line.strip() not in str(error.value)  # never echo a whole (secret) line


def test_a_credential_header_sent_twice_presents_no_key():
    assert auth.presented_key([(b"authorization", b"Bearer k1"), (b"x-api-key", b"k2")]) == "k1"
    assert auth.presented_key([(b"authorization", b"Bearer wrong"), (b"authorization", b"Bearer k1")]) is None
    assert auth.presented_key([(b"x-api-key", b"k2"), (b"x-api-key", b"k2")]) is None
    assert auth.presented_key([(b"authorization", b"Basic x"), (b"x-api-key", b"k2")]) == "k2"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_key_file_is_reloaded_when_it_changes(tmp_path, caplog):
    keys_file = tmp_path / "keys"
    keys_file.write_text("first\n")
    clock = Clock()
    keys = auth.ReloadingKeys({auth.KEYS_FILE_ENV: str(keys_file), auth.KEYS_ENV: "from-env"}, check_every_s=5,
                              clock=clock)
    assert keys.check("first") and keys.check("from-env") and not keys.check("second")
    replace(keys_file, "second\n")
    clock.now += 1
    assert keys.check("first") and not keys.check("second")   # not looked at again within check_every_s
    clock.now += 5
    assert keys.check("second") and keys.check("from-env") and not keys.check("first")
    with caplog.at_level(logging.ERROR, logger="toolchain.serve"):
        replace(keys_file, "second\nsha256:broken\n")     # a bad new file: the old keys stay, an error is logged
        clock.now += 6
        assert keys.check("second") and not keys.check("first")
    assert "keeping the" in caplog.text and "line 2" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="toolchain.serve"):
        clock.now += 6
        assert keys.check("second")
    assert caplog.text == ""   # the same bad file is reported once, not on every check
    replace(keys_file, "")    # empty (e.g. caught mid-write) is refused too
    clock.now += 6
    assert keys.check("second")
    keys_file.unlink()        # a missing file keeps the keys
    clock.now += 6
    assert keys.check("second")
    keys_file.write_text("third\n")
    clock.now += 6
    assert keys.check("third") and not keys.check("second")


def test_kubernetes_secret_symlink_swap_is_seen(tmp_path):
    """A mounted Secret is keys -> ..data/keys, and an update swaps the ..data symlink atomically."""
    for version, key in (("v1", "one"), ("v2", "two")):
        (tmp_path / version).mkdir()
        (tmp_path / version / "keys").write_text(key + "\n")
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "keys").symlink_to("..data/keys")
    clock = Clock()
    keys = auth.ReloadingKeys({auth.KEYS_FILE_ENV: str(tmp_path / "keys")}, check_every_s=1, clock=clock)
    assert keys.check("one")
    (tmp_path / "..data_tmp").symlink_to("v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    clock.now += 2
    assert keys.check("two") and not keys.check("one")


def replace(path, text: str) -> None:
    """Write a new version of a file the way a careful writer does (new inode, atomic rename)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


# --------------------------------------------------------------------------- idempotency store

def test_idempotency_store_replays_expires_and_stays_bounded():
    from toolchain.serve.idempotency import IdempotencyStore

    clock = Clock()
    store = IdempotencyStore(ttl_s=60, max_entries=3, max_bytes=10_000, clock=clock)
    scope = store.scope("client", "/classify", "k1")
    assert scope != store.scope("other-client", "/classify", "k1") != store.scope("client", "/ner", "k1")
    assert store.begin(scope, b"body") is None
    with pytest.raises(RequestRejected) as in_flight:
        store.begin(scope, b"body")
    assert in_flight.value.status == 409
    store.finish(scope, 200, [(b"content-type", b"application/json")], b"[1]")
    assert store.begin(scope, b"body").body == b"[1]"
    with pytest.raises(RequestRejected) as reused:
        store.begin(scope, b"another body")
    assert reused.value.status == 422
    clock.now += 61
    assert store.begin(scope, b"another body") is None     # expired: a new request
    store.finish(scope, 500, [], b"error")                  # errors are not stored: a retry runs again
    assert store.begin(scope, b"another body") is None
    store.abandon(scope)
    for i in range(10):
        key = store.scope("client", "/classify", f"many-{i}")
        store.begin(key, b"b")
        store.finish(key, 200, [], b"x" * 3000)
    assert len(store.entries) <= 3 and store.bytes <= 10_000
    assert store.begin(store.scope("client", "/classify", "many-9"), b"b").body == b"x" * 3000
    assert store.begin(store.scope("client", "/classify", "many-0"), b"b") is None   # evicted


def test_shared_idempotency_store_spans_the_workers_of_a_server(tmp_path, monkeypatch):
    """Two workers (two stores on one file): a key run by one is in flight, then replayed, for the other."""
    from toolchain.serve.idempotency import IdempotencyStore, SharedIdempotencyStore, store_for_workers

    clock = Clock()
    path = str(tmp_path / "idem.sqlite")
    first, second = (SharedIdempotencyStore(path, ttl_s=60, max_entries=3, max_bytes=10_000, clock=clock)
                     for _ in range(2))
    scope = first.scope("client", "/classify", "k1")
    assert first.begin(scope, b"body") is None
    with pytest.raises(RequestRejected) as in_flight:
        second.begin(scope, b"body")
    assert in_flight.value.status == 409
    first.finish(scope, 200, [(b"content-type", b"application/json")], b"[1]")
    replay = second.begin(scope, b"body")
    assert replay.body == b"[1]" and replay.headers == ((b"content-type", b"application/json"),)
    with pytest.raises(RequestRejected) as reused:
        second.begin(scope, b"another body")
    assert reused.value.status == 422
    clock.now += 61
    assert second.begin(scope, b"another body") is None       # expired: a new request
    second.finish(scope, 503, [], b"busy")                      # errors are not stored
    assert first.begin(scope, b"another body") is None
    first.abandon(scope)
    for i in range(10):
        key = first.scope("client", "/classify", f"many-{i}")
        first.begin(key, b"b")
        first.finish(key, 200, [], b"x" * 3000)
    count, size = first.db.execute("SELECT COUNT(*), SUM(LENGTH(body)) FROM responses").fetchone()
    assert count <= 3 and size <= 10_000
    assert second.begin(first.scope("client", "/classify", "many-9"), b"b").body == b"x" * 3000
    # the server's workers share one file in BentoML's multiprocess folder; without it, a per-process LRU
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert isinstance(store_for_workers(), SharedIdempotencyStore)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    assert type(store_for_workers()) is IdempotencyStore


# --------------------------------------------------------------------------- a real server with faults on request

FAULTY_SERVICE = '''
"""Test only: the real service, with faults injected by magic texts and one header."""
import time

import bentoml

from toolchain.inference import runtime
from toolchain.serve import admission
from toolchain.serve.service import ToolchainService  # noqa: F401  (what bentoml serves)

_infer = runtime.OnnxModel.infer
_admit = admission.AdmissionControl.admit


def infer(self, texts):
    for text in texts:
        if text.startswith("FAULT slow "):
            time.sleep(float(text.split()[2]))
        elif text == "FAULT unavailable":
            raise bentoml.exceptions.ServiceUnavailable("the model is being reloaded")
        elif text == "FAULT error":
            raise RuntimeError("the model exploded")
    return _infer(self, texts)


def admit(self, scope):
    if (b"x-fault", b"admission") in scope["headers"]:
        raise RuntimeError("admission control exploded")
    return _admit(self, scope)


runtime.OnnxModel.infer = infer
admission.AdmissionControl.admit = admit
'''


@pytest.fixture(scope="module")
def faulty(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty-server")
    (root / "faulty_service.py").write_text(textwrap.dedent(FAULTY_SERVICE))
    env = toolchain_env(built.home, TOOLCHAIN_EXPORT_DIR=str(built.export_dir), TOOLCHAIN_VARIANT="fp32",
                        TOOLCHAIN_API_KEYS_FILE=str(write_keys(root / "keys")), TOOLCHAIN_WORKERS="1",
                        TOOLCHAIN_THREADS="1", TOOLCHAIN_TIMEOUT_S=str(TIMEOUT_S),
                        TOOLCHAIN_MAX_LATENCY_MS=str(MAX_LATENCY_MS), TOOLCHAIN_TEXT_COST_MS=str(TEXT_COST_MS),
                        TOOLCHAIN_TOPICS="AAPL")
    env["PYTHONPATH"] = f"{root}{os.pathsep}{env['PYTHONPATH']}"
    running = Server("faulty_service:ToolchainService", env, root / "server.log").wait_ready()
    running.keys_file = root / "keys"
    yield running
    running.stop()


def post(server, texts, key=PLAIN_KEY, headers=None, timeout=30, **extra):
    return httpx.post(server.url + "/classify", json={"texts": texts, **extra}, timeout=timeout,
                      headers={"Authorization": f"Bearer {key}", **(headers or {})})


def counted(server, status: int, route: str = "/classify") -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return metric_total(text, "toolchain_requests_total", route=route, status=str(status))


def metric(server, name: str, **labels) -> float:
    return metric_total(httpx.get(server.url + "/metrics", timeout=10).text, name, **labels)


def assert_still_serving(server):
    response = post(server, ["profit rose"])
    assert response.status_code == 200 and response.json()[0]["label"], response.text


@pytest.mark.server
def test_timeout_504_is_counted(faulty):
    before = counted(faulty, 504)
    started = time.perf_counter()
    response = post(faulty, [f"FAULT slow {TIMEOUT_S + 1.5}"])
    took = time.perf_counter() - started
    assert response.status_code == 504 and took < TIMEOUT_S + 1
    assert counted(faulty, 504) == before + 1
    assert response.json()["error"] == "timeout" and "TOOLCHAIN_TIMEOUT_S" in response.json()["message"]
    time.sleep(2)  # the slow model call still holds the batching slot
    assert_still_serving(faulty)


@pytest.mark.server
def test_exception_inside_admission_control_is_a_counted_json_500(faulty):
    before = counted(faulty, 500)
    response = post(faulty, ["profit rose"], headers={"X-Fault": "admission"})
    assert response.status_code == 500 and response.json()["error"] == "internal_error"
    assert "admission control exploded" not in response.text          # internals stay in the log
    assert counted(faulty, 500) == before + 1
    assert "admission control exploded" in faulty.output()
    assert_still_serving(faulty)


@pytest.mark.server
def test_model_exception_is_a_counted_500(faulty):
    before = counted(faulty, 500)
    response = post(faulty, ["FAULT error"])
    assert response.status_code == 500
    assert counted(faulty, 500) == before + 1
    assert_still_serving(faulty)


@pytest.mark.server
def test_other_503s_say_what_happened_not_batching_queue(faulty):
    before_overload = metric(faulty, "toolchain_rejected_requests_total", reason="overload")
    before = counted(faulty, 503)
    response = post(faulty, ["FAULT unavailable"])
    assert response.status_code == 503
    error = response.json()
    assert error["error"] == "unavailable" and "batching queue" not in error["message"]
    assert "being reloaded" in error["message"]
    assert counted(faulty, 503) == before + 1
    assert metric(faulty, "toolchain_rejected_requests_total", reason="overload") == before_overload
    assert_still_serving(faulty)


@pytest.mark.server
def test_model_queue_503_says_so(faulty):
    """Over the model queue's bound (here the former TOOLCHAIN_MAX_LATENCY_MS, 0.3 s of queued model work), a
    request is refused at once with the queue's Retry-After, and the message names the queue and its setting."""
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(post, faulty, ["FAULT slow 1.5"])
        time.sleep(0.3)
        bulk = pool.submit(post, faulty, [f"profit rose {i}" for i in range(40)])   # 0.4 s of work: admitted
        time.sleep(0.2)
        queued = post(faulty, ["profit rose"])
        assert slow.result().status_code == 200 and bulk.result().status_code == 200
    assert queued.status_code == 503, queued.text
    assert queued.json()["error"] == "overloaded" and "model queue" in queued.json()["message"]
    assert "TOOLCHAIN_MAX_QUEUE_S" in queued.json()["message"] and queued.headers["retry-after"] == "1"
    assert_still_serving(faulty)


@pytest.mark.server
def test_idempotency_key_replays_without_counting_predictions_again(faulty):
    body = ["profit rose", "sales fell"]
    key = {"Idempotency-Key": f"feed-item-{time.time_ns()}"}
    before = metric(faulty, "toolchain_predictions_total")
    first = post(faulty, body, headers=key)
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    assert metric(faulty, "toolchain_predictions_total") == before + 2
    replies_before = counted(faulty, 200)
    again = post(faulty, body, headers=key)
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert metric(faulty, "toolchain_predictions_total") == before + 2     # not counted again
    assert counted(faulty, 200) == replies_before + 1                      # but the response is
    other_body = post(faulty, ["different"], headers=key)
    assert other_body.status_code == 422 and other_body.json()["error"] == "idempotency_key_reused"
    other_client = post(faulty, body, key=HASHED_KEY, headers=key)         # keys are scoped per API key
    assert other_client.status_code == 200 and "idempotent-replayed" not in other_client.headers
    bad = post(faulty, body, headers={"Idempotency-Key": "x" * 300})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_idempotency_key"


@pytest.mark.server
def test_rotated_key_file_is_picked_up_without_a_restart_or_a_dropped_request(faulty):
    keys_file = faulty.keys_file
    rotated = "rotated-key-" + str(time.time_ns())
    assert post(faulty, ["profit rose"], key=rotated).status_code == 401
    statuses, stop = [], threading.Event()

    def traffic():
        while not stop.is_set():
            statuses.append(post(faulty, ["profit rose"], key=HASHED_KEY).status_code)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        replace(keys_file, f"{rotated}\n{auth.hash_key(HASHED_KEY)}\n")
        assert wait_for(lambda: post(faulty, ["profit rose"], key=rotated).status_code == 200)
        assert post(faulty, ["profit rose"], key=PLAIN_KEY).status_code == 401     # the removed key is gone
        replace(keys_file, f"{rotated}\nsha256:not-a-hash\n")                       # a bad new file
        assert wait_for(lambda: "keeping the" in faulty.output())
        assert post(faulty, ["profit rose"], key=rotated).status_code == 200        # the old keys stay
    finally:
        stop.set()
        worker.join()
        replace(keys_file, f"{PLAIN_KEY}\n{auth.hash_key(HASHED_KEY)}\n")
    assert statuses and set(statuses) == {200}
    assert wait_for(lambda: post(faulty, ["profit rose"], key=PLAIN_KEY).status_code == 200)


def wait_for(condition, timeout: float = 8.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.server
def test_every_status_on_inference_routes_is_counted(faulty):
    """Whatever produced it: admission control's rejections, BentoML's own answers (405), model results."""
    cases = [(lambda: httpx.get(faulty.url + "/classify", timeout=10), 405),
             (lambda: post(faulty, ["profit rose"], key="wrong"), 401),
             (lambda: httpx.post(faulty.url + "/classify", content=b'{"texts": [NaN]}', timeout=10,
                                 headers={"X-API-Key": PLAIN_KEY, "Content-Type": "application/json"}), 400)]
    for call, status in cases:
        before = counted(faulty, status)
        assert call().status_code == status
        assert counted(faulty, status) == before + 1, status
