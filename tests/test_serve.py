"""The served Bento, end to end: a real `bentoml serve` of the tiny model's Bento on 127.0.0.1.

Covers the reliability checklist of DESIGN.md section 5: auth, bad input, body cap, overload,
graceful shutdown, a tampered model file, metrics (two workers), and predictions that match the
export dir offline and do not depend on batching.
"""
from __future__ import annotations

import json
import shutil
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from test_serve_support import (HASHED_KEY, PLAIN_KEY, Server, built, flip_middle_byte, never_ready, metric_samples, metric_total,  # noqa: F401
                                raw_request, read_response, toolchain_env, write_keys)

pytestmark = pytest.mark.server

MAX_CONCURRENCY = 6           # per worker
MAX_ITEMS, MAX_CHARS, MAX_BODY = 16, 2000, 262_144
TEXTS = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .", "sales fell in the period .",
         "the board met in helsinki on monday .", "record earnings this quarter", "shares plunged",
         "the company said it will publish the report", "loss widened according to the ceo", "beat forecasts"]


@pytest.fixture(scope="module")
def server(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    env = toolchain_env(built.home, TOOLCHAIN_API_KEYS_FILE=str(write_keys(root / "keys")), TOOLCHAIN_WORKERS="2",
                        TOOLCHAIN_THREADS="1", TOOLCHAIN_TOPICS="AAPL,MSFT", TOOLCHAIN_MAX_CONCURRENCY=str(MAX_CONCURRENCY),
                        TOOLCHAIN_MAX_BATCH_ITEMS=str(MAX_ITEMS), TOOLCHAIN_MAX_TEXT_CHARS=str(MAX_CHARS),
                        TOOLCHAIN_MAX_BODY_BYTES=str(MAX_BODY), TOOLCHAIN_MAX_BATCH_SIZE="16")
    running = Server(built.tag, env, root / "server.log").wait_ready()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {PLAIN_KEY}"}) as c:
        yield c


def classify(client, texts, headers=None, **extra):
    response = client.post("/classify", json={"texts": texts, **extra}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def scrape(server) -> str:
    return httpx.get(server.url + "/metrics", timeout=10).text


# --------------------------------------------------------------------------- auth and probes

def test_probes_and_metrics_are_open(server):
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(server.url + path, timeout=10).status_code == 200, path


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"},
                                     {"Authorization": f"Basic {PLAIN_KEY}"}, {"Authorization": "Bearer"},
                                     {"X-API-Key": "sha256:" + "0" * 64}])
def test_missing_or_wrong_key_is_401_json(server, headers):
    before = metric_total(scrape(server), "toolchain_rejected_requests_total", reason="auth")
    response = httpx.post(server.url + "/classify", json={"texts": ["profit rose"]}, headers=headers, timeout=10)
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    assert metric_total(scrape(server), "toolchain_rejected_requests_total", reason="auth") == before + 1


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {PLAIN_KEY}"}, {"X-API-Key": PLAIN_KEY},
                                     {"Authorization": f"Bearer {HASHED_KEY}"}, {"X-API-Key": HASHED_KEY}])
def test_right_key_in_either_header_is_served(server, headers):
    response = httpx.post(server.url + "/classify", json={"texts": ["profit rose"]}, headers=headers, timeout=10)
    assert response.status_code == 200 and len(response.json()) == 1


def test_auth_comes_before_validation(server):
    response = httpx.post(server.url + "/classify", content=b"not json", timeout=10)
    assert response.status_code == 401


# --------------------------------------------------------------------------- bad input

BAD_BODIES = [
    ("empty list", b'{"texts": []}', 422, "texts"),
    ("whitespace text", b'{"texts": ["fine", " \\t\\n"]}', 422, "texts[1]"),
    ("empty text", b'{"texts": [""]}', 422, "texts[0]"),
    ("number in list", b'{"texts": ["fine", 3]}', 422, "texts[1]"),
    ("texts not a list", b'{"texts": "profit rose"}', 422, "texts"),
    ("null texts", b'{"texts": null}', 422, "texts"),
    ("topic not a string", b'{"texts": ["fine"], "topic": ["AAPL"]}', 422, "topic"),
    ("unknown field", b'{"texts": ["fine"], "lang": "en"}', 422, "lang"),
    ("body is a list", b'["fine"]', 422, None),
    ("too many items", json.dumps({"texts": ["fine"] * (MAX_ITEMS + 1)}).encode(), 422, "texts"),
    ("text over max chars", json.dumps({"texts": ["x" * (MAX_CHARS + 1)]}).encode(), 422, "texts[0]"),
    ("lone surrogate", b'{"texts": ["\\udc80"]}', 422, "texts[0]"),
    ("non-UTF-8", b'{"texts": ["caf\xe9"]}', 400, None),
    ("malformed JSON", b'{"texts": ["fine"', 400, None),
    ("empty body", b"", 400, None),
]


@pytest.mark.parametrize("name, body, status, field", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_input_is_a_clear_4xx_and_the_server_keeps_serving(server, client, name, body, status, field):
    response = client.post("/classify", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()
    assert error["error"] and error.get("field") == field and len(error["message"]) > 15
    assert classify(client, ["profit rose"])[0]["label"]


def test_wrong_media_types_are_415_including_bentoml_pickle(client):
    for media in ("text/plain", "application/vnd.bentoml+pickle", "application/x-www-form-urlencoded"):
        response = client.post("/classify", content=b'{"texts": ["a"]}', headers={"Content-Type": media})
        assert response.status_code == 415 and "application/json" in response.json()["message"]


def test_oversize_bodies_get_a_fast_413(server, client):
    before = metric_total(scrape(server), "toolchain_rejected_requests_total", reason="size")
    ten_mb = b'{"texts": ["' + b"a" * 10_000_000 + b'"]}'

    def chunks():
        for start in range(0, len(ten_mb), 65536):
            yield ten_mb[start:start + 65536]

    for content in (ten_mb, chunks()):  # declared Content-Length, then chunked without one
        started = time.perf_counter()
        response = client.post("/classify", content=content, headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and response.json()["error"] == "payload_too_large"
        assert time.perf_counter() - started < 5
    huge = json.dumps({"texts": ["a"] * 100_000}).encode()  # the 100,000-item request
    assert client.post("/classify", content=huge, headers={"Content-Type": "application/json"}).status_code == 413
    started = time.perf_counter()
    assert classify(client, ["profit rose"]) and time.perf_counter() - started < 2
    assert metric_total(scrape(server), "toolchain_rejected_requests_total", reason="size") == before + 3


# --------------------------------------------------------------------------- predictions

def served_variant(export_dir) -> str:
    """The variant the Bento packs and serves: the export's serve_variant (its own auto choice on this machine)."""
    from toolchain.core.artifacts import load_export

    return load_export(export_dir).serve_variant


def served_temperature(export, variant: str) -> float:
    """The temperature the export fitted on dev for the variant (1 without calibration)."""
    return float(((export.manifest.get("calibration") or {}).get(variant) or {}).get("main", 1.0))


def offline_scores(export_dir, texts):
    """The export dir's served variant run offline: transformers tokenizer + onnxruntime, one text per call."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from toolchain.core.artifacts import load_export

    export = load_export(export_dir)
    tokenizer = AutoTokenizer.from_pretrained(export.tokenizer_dir)
    session = ort.InferenceSession(str(export.variant_file(served_variant(export_dir))), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    temperature = served_temperature(export, served_variant(export_dir))
    rows = []
    for text in texts:
        encoded = tokenizer(text, truncation=True, max_length=export.max_length, return_tensors="np")
        logits = session.run(None, {n: encoded[n].astype(np.int64) for n in names})[0][0].astype(np.float64)
        logits = logits / temperature   # the service returns temperature-scaled (calibrated) scores
        probs = np.exp(logits - logits.max())
        rows.append(probs / probs.sum())
    return export.labels, np.array(rows)


def test_response_has_label_score_and_all_class_scores_in_input_order(client, built):
    from toolchain.core.artifacts import load_export

    labels = load_export(built.export_dir).labels
    result = classify(client, TEXTS)
    assert len(result) == len(TEXTS)
    for item in result:
        assert set(item) == {"label", "score", "scores", "truncated"} and list(item["scores"]) == labels
        assert item["label"] == max(item["scores"], key=item["scores"].get) and item["score"] == item["scores"][item["label"]]
        assert abs(sum(item["scores"].values()) - 1) < 1e-6
    reversed_result = classify(client, TEXTS[::-1])
    assert [r["label"] for r in reversed_result] == [r["label"] for r in result][::-1]


def test_served_predictions_equal_offline_predictions(client, built):
    texts = TEXTS + ["word " * 300]
    labels, offline = offline_scores(built.export_dir, texts)
    served = [classify(client, [text])[0] for text in texts]
    for text, item, probs in zip(texts, served, offline):
        assert item["label"] == labels[int(probs.argmax())], text
        assert np.allclose([item["scores"][name] for name in labels], probs, atol=1e-6, rtol=0), text


def test_export_gate_scores_are_the_served_scores(client, built):
    """The accuracy gate scores a variant with the export's own path (toolchain.export.job.served_logits);
    the running Bento must answer exactly those scores for the same texts, alone and in one request."""
    from types import SimpleNamespace

    from toolchain.core.artifacts import load_export
    from toolchain.export.job import served_logits
    from toolchain.inference.runtime import OnnxModel
    from toolchain.tasks import get_task

    export = load_export(built.export_dir)
    texts = TEXTS + ["word " * 300]
    gate_model = OnnxModel.from_files(export.variant_file(), export.tokenizer_dir, export.max_length, export.labels,
                                      export.serve_variant, threads=1)
    logits = served_logits(gate_model, get_task(export.task), [SimpleNamespace(text=t) for t in texts], None,
                           export.max_length) / served_temperature(export, export.serve_variant)
    gate = np.exp(logits - logits.max(axis=1, keepdims=True))
    gate /= gate.sum(axis=1, keepdims=True)
    for served in ([classify(client, [text])[0] for text in texts], classify(client, texts)):
        got = np.array([[item["scores"][name] for name in export.labels] for item in served])
        assert np.allclose(got, gate, atol=1e-6, rtol=0)
        assert [item["label"] for item in served] == [export.labels[i] for i in gate.argmax(axis=1)]


def test_predictions_do_not_depend_on_batching(server, client):
    """Alone, in one request, or as concurrent requests that adaptive batching merges: same output."""
    import threading

    texts = TEXTS + ["word " * 300]
    alone = [classify(client, [text])[0] for text in texts]
    assert classify(client, texts) == alone

    def merged_batches() -> float:
        """Model calls so far that held more than one text (every request below carries one)."""
        scraped = scrape(server)
        assert any(("le", "1.0") in key for key in metric_samples(scraped, "toolchain_batch_size_bucket"))
        return (metric_total(scraped, "toolchain_batch_size_count")
                - metric_total(scraped, "toolchain_batch_size_bucket", le="1.0"))

    # When the batcher starts merging depends on the machine (it first learns the model's timing): waves of
    # concurrent single-text requests, released together, until the batch-size histogram records a merged
    # batch and every text went in some wave, within a deadline generous enough for a slow, loaded machine.
    # A wave holds MAX_CONCURRENCY requests, so it is within the limit even if all reach one worker.
    deadline, waves, sent = time.monotonic() + 300, 0, set()
    before = merged_batches()
    while merged_batches() == before or len(sent) < len(texts):
        assert time.monotonic() < deadline, f"no two concurrent requests were batched together in {waves} waves"
        wave = [(waves * MAX_CONCURRENCY + j) % len(texts) for j in range(MAX_CONCURRENCY)]
        start = threading.Barrier(len(wave), timeout=60)

        def together(i):
            start.wait()
            return classify(client, [texts[i]])[0]

        with ThreadPoolExecutor(len(wave)) as pool:
            concurrent = list(pool.map(together, wave))
        assert concurrent == [alone[i] for i in wave]
        sent.update(wave)
        waves += 1


def test_long_text_within_cap_is_truncated_and_counted(server, client):
    before = metric_total(scrape(server), "toolchain_truncated_inputs_total")
    result = classify(client, ["profit rose " * 150, "profit rose"])
    assert [r["truncated"] for r in result] == [True, False]
    assert metric_total(scrape(server), "toolchain_truncated_inputs_total") == before + 1


# --------------------------------------------------------------------------- metrics

def test_metrics_are_present_increase_and_sum_over_both_workers(server, client, built):
    before = scrape(server)
    sent = 0
    for i in range(24):
        texts = TEXTS[: 1 + i % 4]
        topic = ["AAPL", "MSFT", "unlisted", None][i % 4]
        classify(client, texts, headers={"Connection": "close"}, **({"topic": topic} if topic else {}))
        sent += len(texts)
    after = scrape(server)
    grew = {name: metric_total(after, name) - metric_total(before, name) for name in (
        "toolchain_predictions_total", "toolchain_input_tokens_count", "toolchain_prediction_confidence_count")}
    assert grew == {name: sent for name in grew}
    assert metric_total(after, "toolchain_requests_total", route="/classify", status="200") - \
        metric_total(before, "toolchain_requests_total", route="/classify", status="200") == 24
    for name in ("toolchain_inference_seconds_count", "toolchain_batch_size_count", "toolchain_request_seconds_count"):
        assert metric_total(after, name) > metric_total(before, name), name
    # BentoML's last-request gauge keeps one series per worker process (multiprocess mode "all": a pid label)
    workers = {dict(k).get("pid") for k, v in
               metric_samples(after, "bentoml_service_last_request_timestamp_seconds").items() if v}
    assert len(workers) == 2, "both workers served requests, and their counts were summed above"


def test_source_label_is_bounded_by_the_allow_list(server, client):
    classify(client, ["profit rose"], source="AAPL")
    classify(client, ["profit rose"], topic="MSFT")            # the field's former name
    classify(client, ["profit rose"], source="TSLA-not-listed")
    samples = [dict(k) for k in metric_samples(scrape(server), "toolchain_predictions_total")]
    sources = {s["source"] for s in samples}
    assert {"AAPL", "MSFT", "other"} <= sources and sources <= {"AAPL", "MSFT", "other"}
    assert {s["topic"] for s in samples} == {"none"}          # a single-task model predicts no topic


def test_model_info_and_readiness_gauges(server, built):
    from toolchain.core.artifacts import load_export

    text = scrape(server)
    (info,) = [dict(k) for k, v in metric_samples(text, "toolchain_model_info").items() if v == 1]
    assert info["variant"] == served_variant(built.export_dir) and info["provider"] == "cpu"
    assert info["config_hash"] == load_export(built.export_dir).manifest["run_config_hash"]
    assert metric_total(text, "toolchain_model_ready") == 1


# --------------------------------------------------------------------------- overload

def test_overload_gets_fast_503_while_probes_answer(server):
    """Requests stuck mid-body fill every worker's slots; further requests are refused at once."""
    before = metric_total(scrape(server), "toolchain_rejected_requests_total", reason="overload")
    body = json.dumps({"texts": ["profit rose"]}).encode()
    opened = [raw_request(server.port, body, send=5) for _ in range(3 * MAX_CONCURRENCY)]
    time.sleep(1.0)
    refused, held = [], []
    for sock in opened:
        sock.settimeout(0.2)
        try:
            refused.append(read_response(sock))
        except socket.timeout:
            held.append(sock)
    assert len(refused) >= MAX_CONCURRENCY and len(held) <= 2 * MAX_CONCURRENCY
    assert all(status == 503 and error["error"] == "overloaded" for status, error in refused)
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(server.url + path, timeout=3).status_code == 200
    for sock in held:  # the held requests still complete normally
        sock.settimeout(30)
        sock.sendall(body[5:])
        status, result = read_response(sock)
        assert status == 200 and result[0]["label"]
    for sock in opened:
        sock.close()
    assert metric_total(scrape(server), "toolchain_rejected_requests_total", reason="overload") == before + len(refused)


# --------------------------------------------------------------------------- start-up and shutdown

def test_sigterm_lets_in_flight_requests_finish(built, tmp_path):
    """(This server also protects /metrics with the API key.)"""
    env = toolchain_env(built.home, TOOLCHAIN_API_KEYS=PLAIN_KEY, TOOLCHAIN_WORKERS="1", TOOLCHAIN_METRICS_AUTH="true")
    running = Server(built.tag, env, tmp_path / "server.log").wait_ready()
    assert httpx.get(running.url + "/metrics", timeout=10).status_code == 401
    assert httpx.get(running.url + "/metrics", headers={"X-API-Key": PLAIN_KEY}, timeout=10).status_code == 200
    assert httpx.get(running.url + "/readyz", timeout=10).status_code == 200
    body = json.dumps({"texts": TEXTS}).encode()
    in_flight = [raw_request(running.port, body, send=len(body) // 2) for _ in range(3)]
    time.sleep(0.5)
    running.process.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert running.process.poll() is None  # still draining
    results = []
    for sock in in_flight:
        sock.sendall(body[len(body) // 2:])
        results.append(read_response(sock))
        sock.close()
    assert [status for status, _ in results] == [200, 200, 200] and all(len(r) == len(TEXTS) for _, r in results)
    assert running.process.wait(timeout=30) == 0
    running.stop()


def test_tampered_model_file_stops_startup_loudly(built, tmp_path):
    from toolchain.core.artifacts import load_export

    copy = tmp_path / "export"
    shutil.copytree(built.export_dir, copy)
    model_file = load_export(copy).variant_file(served_variant(copy))
    flip_middle_byte(model_file)
    env = toolchain_env(built.home, TOOLCHAIN_API_KEYS=PLAIN_KEY, TOOLCHAIN_EXPORT_DIR=str(copy),
                        BENTOML_CONTAINERIZED="true")  # as in the container image: no worker respawn
    running = Server(built.tag, env, tmp_path / "server.log")
    stayed_unready, code = never_ready(running)
    assert stayed_unready and code != 0
    output = running.output()
    assert f"{model_file.name}: sha256" in output and "does not match the manifest" in output
