"""`POST /explain` on a real `bentoml serve` of the tiny Bento: the served prediction, auth, validation,
metrics, and its own concurrency cap (a fast 503 while /classify keeps answering)."""
from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from test_serve_support import (PLAIN_KEY, Server, built, metric_total, read_response, toolchain_env,  # noqa: F401
                                write_keys)

pytestmark = pytest.mark.server

TEXT = "loss widened this quarter according to the ceo ."


@pytest.fixture(scope="module")
def server(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("explain-server")
    env = toolchain_env(built.home, TOOLCHAIN_API_KEYS_FILE=str(write_keys(root / "keys")), TOOLCHAIN_WORKERS="1",
                        TOOLCHAIN_THREADS="1", TOOLCHAIN_EXPLAIN_CONCURRENCY="1", TOOLCHAIN_TIMEOUT_S="20")
    running = Server(built.tag, env, root / "server.log").wait_ready()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {PLAIN_KEY}"}) as c:
        yield c


def scrape(server) -> str:
    return httpx.get(server.url + "/metrics", timeout=10).text


def test_explains_the_served_prediction_without_counting_it(server, client):
    before = scrape(server)
    classified = client.post("/classify", json={"texts": [TEXT]}).json()[0]
    response = client.post("/explain", json={"texts": [TEXT, "profit rose"], "source": "AAPL"})
    assert response.status_code == 200, response.text
    first = response.json()[0]
    assert (first["label"], first["score"], first["scores"]) == (classified["label"], classified["score"],
                                                                  classified["scores"])
    assert first["method"] == "occlusion" and first["unit"] == "probability" and first["target"] == first["label"]
    assert [w["word"] for w in first["words"]] == TEXT.split()
    assert all(TEXT[w["start"]:w["end"]] == w["word"] for w in first["words"])
    after = scrape(server)
    assert metric_total(after, "toolchain_requests_total", route="/explain", status="200") == \
        metric_total(before, "toolchain_requests_total", route="/explain", status="200") + 1
    # the /classify call counts one prediction; the explanation of two texts adds none
    assert metric_total(after, "toolchain_predictions_total") == metric_total(before, "toolchain_predictions_total") + 1


def test_target_and_request_checks(client, server):
    chosen = client.post("/explain", json={"texts": [TEXT], "target": "positive"}).json()[0]
    assert chosen["target"] == "positive" and chosen["target_score"] == chosen["scores"]["positive"]
    cases = [({"texts": [TEXT], "target": "bullish"}, "target", "not a label of the served model"),
             ({"texts": [TEXT], "target": 1}, "target", "must be a label"),
             ({"texts": ["x"] * 17}, "texts", "at most 16 per request"),
             ({"texts": [" "]}, "texts[0]", "empty or whitespace"),
             ({"texts": [TEXT], "why": 1}, "why", "unknown field")]
    for body, field, message in cases:
        response = client.post("/explain", json=body)
        assert response.status_code == 422 and response.json()["field"] == field, response.text
        assert message in response.json()["message"]
    assert httpx.post(server.url + "/explain", json={"texts": [TEXT]}, timeout=10).status_code == 401


def hold_explain_slot(port: int, body: bytes) -> socket.socket:
    """An /explain request whose body has not finished arriving: it holds the route's one slot."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall((f"POST /explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  f"Authorization: Bearer {PLAIN_KEY}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body[:5])
    return sock


def test_over_its_cap_explain_gets_a_fast_503_and_classify_is_unaffected(server, client):
    body = json.dumps({"texts": [TEXT]}).encode()
    before = metric_total(scrape(server), "toolchain_rejected_requests_total", reason="overload")
    held = hold_explain_slot(server.port, body)
    try:
        time.sleep(0.5)   # admission control has admitted it and waits for the rest of its body
        started = time.perf_counter()
        refused = client.post("/explain", json={"texts": [TEXT]})
        took = time.perf_counter() - started
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
        assert refused.json()["error"] == "overloaded" and "TOOLCHAIN_EXPLAIN_CONCURRENCY" in refused.json()["message"]
        assert took < 1.0, f"the refusal took {took:.2f} s"
        for _ in range(3):
            assert client.post("/classify", json={"texts": [TEXT]}).status_code == 200
        held.sendall(body[5:])
        status, answer = read_response(held)
        assert status == 200 and answer[0]["words"], answer
    finally:
        held.close()
    assert client.post("/explain", json={"texts": [TEXT]}).status_code == 200   # the slot is free again
    assert metric_total(scrape(server), "toolchain_rejected_requests_total", reason="overload") == before + 1
