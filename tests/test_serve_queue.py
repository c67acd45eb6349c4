"""The model queue: batching only where it merges work, a bound in seconds of queued model work, fast refusals.

Unit tests of :mod:`toolchain.serve.model_queue` (no server), then the tiny model's real server: a per-text variant
served without a batching wait, a bulk request served under the bound and refused over it (503 + Retry-After) while
the probes keep answering.
"""
from __future__ import annotations

import asyncio
import json
import os
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from test_serve_support import PLAIN_KEY, Server, built, metric_samples, metric_total, toolchain_env, write_keys  # noqa: F401
from toolchain.inference.runtime import plan_calls
from toolchain.serve.model_queue import ModelQueue, TextCost, measured_cost, model_cost
from toolchain.serve.settings import load_settings
from toolchain.serve.validation import RequestRejected

REPORT = {"layout": {"variant": "int8", "by_threads": {"1": {"b1_ms": 8.0, "b32_texts_per_s": 200.0},
                                                       "2": {"b1_ms": 6.0, "b32_texts_per_s": 300.0}}},
          "selection": {"served": {"fp32": {"1": {"median_ms_per_request": 12.0}, "32": {"texts_per_s": 125.0}}}}}


# --------------------------------------------------------------------------- what a request costs

def test_cost_comes_from_the_exports_measured_figures_for_the_variant_and_threads():
    per_text = measured_cost(REPORT, "int8", threads=1, per_text=True)
    assert per_text.b1_s == pytest.approx(0.008) and per_text.batched_text_s is None
    assert per_text.seconds(32) == pytest.approx(32 * 0.008)          # one model call per text
    on_two = measured_cost(REPORT, "int8", threads=4, per_text=True)    # the nearest thread count measured below
    assert on_two.b1_s == pytest.approx(0.006) and "2 thread" in on_two.source
    batched = measured_cost(REPORT, "fp32", threads=1, per_text=False)  # not the layout's variant: the ranking's
    assert batched.b1_s == pytest.approx(0.012) and batched.batched_text_s == pytest.approx(1 / 125)
    assert batched.seconds(1) == pytest.approx(0.012) and batched.seconds(32) == pytest.approx(32 / 125)
    assert measured_cost(REPORT, "int8-static", threads=1, per_text=False) is None
    both = per_text.plus(batched)
    assert both.seconds(2) == pytest.approx(2 * 0.008 + 2 * 0.012)


def test_a_configured_cost_wins_and_a_missing_report_means_none(tmp_path):
    class Model:
        per_text, variant, export = True, "int8", None

    assert model_cost(Model(), 1, configured_ms=5).seconds(4) == pytest.approx(0.02)
    assert model_cost(Model(), 1) is None


def test_the_queue_bound_setting_and_its_former_name():
    assert load_settings({}).queue_bound_s == 3.0
    assert load_settings({"TOOLCHAIN_MAX_LATENCY_MS": "300"}).queue_bound_s == pytest.approx(0.3)
    assert load_settings({"TOOLCHAIN_MAX_QUEUE_S": "1.5", "TOOLCHAIN_MAX_LATENCY_MS": "300"}).queue_bound_s == 1.5


def test_model_calls_of_a_batch_invariant_variant_keep_to_the_token_budget():
    lengths = [10] * 40 + [100] * 10 + [600]
    calls = plan_calls(lengths, per_text=False, max_texts=32, max_tokens=1024)
    assert sorted(i for c in calls for i in c) == list(range(len(lengths)))
    for call in calls:
        width = max(-(-lengths[i] // 16) * 16 for i in call)
        assert len(call) <= 32 and (len(call) * width <= 1024 or len(call) == 1)
    assert [len(c) for c in calls] == [32, 8, 9, 1, 1]   # 16-token texts: 32 a call; 112-token: 9; 608: alone


def test_bentoml_layers_the_inference_routes_do_without_follow_the_settings():
    from toolchain.serve.service import INFERENCE_PATHS, served_paths_config
    from toolchain.serve.settings import ServeSettings

    config = served_paths_config(ServeSettings())
    assert config == {"logging": {"access": {"enabled": False}}, "tracing": {"excluded_urls": INFERENCE_PATHS}}
    assert served_paths_config(ServeSettings(access_log=True, tracing=True)) == {}


def test_the_feeder_cannot_trigger_its_own_503_on_an_idle_service():
    """toolchain monitor sends one request at a time (nothing of its own queued ahead of it) of at most its batch
    size, within the service's item limit; an idle worker takes any legal request (see the queue tests below)."""
    from toolchain.monitor.feeder import FeedOptions
    from toolchain.serve.settings import ServeSettings

    assert FeedOptions().batch_size <= ServeSettings().max_batch_items


# --------------------------------------------------------------------------- the queue

class Model:
    """A model whose calls wait until released; records the rounds it was given."""

    def __init__(self):
        self.rounds: list[list[list[str]]] = []
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, requests: list[list[str]]) -> list:
        self.started.set()
        self.release.wait(10)
        if any("FAIL" in text for request in requests for text in request):
            raise ValueError("a bad text")
        self.rounds.append(requests)
        return [f"answer to {request}" for request in requests]


def run_jobs(merge: bool, texts: list[list[str]], bound_s: float = 100.0):
    """Submit a job that holds the model, then ``texts`` behind it; returns (model, outcomes, queue)."""
    model = Model()
    queue = ModelQueue(model, TextCost(0.01, None, "test"), bound_s, merge, round_texts=32)

    async def main():
        first = queue.submit(["hold"])
        await asyncio.get_running_loop().run_in_executor(None, model.started.wait, 5)
        jobs = [queue.submit(t) for t in texts]
        assert queue.queued_s() == pytest.approx(0.01 * sum(map(len, texts)), abs=0.011)
        model.release.set()
        return await asyncio.gather(first.future, *(j.future for j in jobs), return_exceptions=True)

    return model, asyncio.run(main()), queue


def test_a_per_text_variant_runs_each_request_alone_in_order():
    model, outcomes, _ = run_jobs(merge=False, texts=[["a"], ["b", "c"], ["d"]])
    assert model.rounds == [[["hold"]], [["a"]], [["b", "c"]], [["d"]]]
    assert outcomes[1:] == ["answer to ['a']", "answer to ['b', 'c']", "answer to ['d']"]


def test_a_batch_invariant_variant_merges_what_queued_while_the_model_was_busy():
    model, outcomes, _ = run_jobs(merge=True, texts=[["a"], ["b", "c"], ["d"]])
    assert model.rounds == [[["hold"]], [["a"], ["b", "c"], ["d"]]]   # no wait for company: the first ran alone
    assert outcomes[1:] == ["answer to ['a']", "answer to ['b', 'c']", "answer to ['d']"]


def test_a_failing_request_in_a_merged_round_fails_alone():
    from toolchain.serve.model_queue import ModelError

    model, outcomes, _ = run_jobs(merge=True, texts=[["a"], ["FAIL"], ["d"]])
    assert outcomes[1] == "answer to ['a']" and outcomes[3] == "answer to ['d']"
    assert isinstance(outcomes[2], ModelError) and "a bad text" in str(outcomes[2].cause)


def test_over_the_bound_a_request_is_refused_with_retry_after_from_the_queue():
    model = Model()
    queue = ModelQueue(model, TextCost(0.5, None, "test"), bound_s=1.0, merge=False)

    async def main():
        queue.submit(["hold"])                          # the model is busy with it
        await asyncio.get_running_loop().run_in_executor(None, model.started.wait, 5)
        bulk = queue.submit(["t"] * 5)                  # 2.5 s of work: admitted, the queue was under the bound
        assert queue.refusal() is not None
        with pytest.raises(RequestRejected) as refused:
            queue.submit(["one more"])
        queue.drop(bulk)                                # its client went away: its work leaves the queue
        assert queue.queued_s() <= 0.5 and queue.refusal() is None
        model.release.set()
        return refused.value

    refused = asyncio.run(main())
    assert refused.status == 503 and refused.error == "overloaded" and refused.reason == "overload"
    assert refused.retry_after == 2 and "TOOLCHAIN_MAX_QUEUE_S" in refused.message   # ceil(2.5 + 0.5 - 1.0)
    time.sleep(0.2)
    assert [r for r in model.rounds] == [[["hold"]]]   # the dropped job never reached the model


def test_an_idle_queue_takes_a_request_of_any_size():
    queue = ModelQueue(lambda requests: [len(r) for r in requests], TextCost(1.0, None, "test"), bound_s=0.5,
                       merge=False)

    async def main():
        return await queue.submit(["t"] * 64).future   # 64 s of estimated work, over the bound, on an idle queue

    assert asyncio.run(main()) == 64


def test_an_answered_round_no_longer_counts_when_its_answer_is_posted(monkeypatch):
    """The estimate of a round that ran faster than estimated must be gone before its client hears back: a client
    that sends again at once would otherwise be refused by the work of its own answered request."""
    from toolchain.serve import model_queue

    queued_at_post = []
    real_post = model_queue.post

    def recording_post(job, result, error):
        queued_at_post.append(queue.queued_s())
        real_post(job, result, error)

    monkeypatch.setattr(model_queue, "post", recording_post)
    queue = ModelQueue(lambda requests: [len(r) for r in requests], TextCost(1.0, None, "test"), bound_s=0.5,
                       merge=False)

    async def main():
        answer = await queue.submit(["t"] * 64).future   # 64 s estimated, answered in microseconds
        return answer, queue.refusal()

    answer, refusal = asyncio.run(main())
    assert answer == 64 and refusal is None
    assert queued_at_post == [0.0]


def test_admission_control_refuses_on_the_headers_when_the_queue_is_full():
    """The 503 comes before the body is read or parsed, with the queue's Retry-After, and is counted."""
    from toolchain.serve.admission import AdmissionControl, Route
    from toolchain.serve.classify import parse_request, predicted_labels
    from toolchain.serve.metrics import service_metrics
    from toolchain.serve.settings import ServeSettings

    class Full:
        def refusal(self):
            return RequestRejected(503, "overloaded", "the model queue is full (TOOLCHAIN_MAX_QUEUE_S)",
                                   reason="overload", retry_after=4)

    async def app(scope, receive, send):
        raise AssertionError("the app must not be reached")

    read = []

    async def receive():
        read.append(1)
        return {"type": "http.request", "body": b'{"texts": ["a"]}', "more_body": False}

    sent = []

    async def send(message):
        sent.append(message)

    admission = AdmissionControl(app, {"/classify": Route("sequence-classification", parse_request, predicted_labels,
                                                          queued=True)}, ServeSettings(auth=False),
                                 model_queue=lambda: Full())
    before = service_metrics().rejected.labels(reason="overload")._value.get()
    scope = {"type": "http", "method": "POST", "path": "/classify", "headers": [(b"content-type", b"application/json")]}
    asyncio.run(admission(scope, receive, send))
    assert sent[0]["status"] == 503 and (b"retry-after", b"4") in sent[0]["headers"] and not read
    assert json.loads(sent[1]["body"])["error"] == "overloaded"
    assert service_metrics().rejected.labels(reason="overload")._value.get() == before + 1


# --------------------------------------------------------------------------- a real server

SLOW_SERVICE = '''
"""Test only: the real service; a text "FAULT slow SECONDS" holds the model that long."""
import time

from toolchain.inference import runtime
from toolchain.serve.service import ToolchainService  # noqa: F401  (what bentoml serves)

_infer = runtime.OnnxModel.infer


def infer(self, texts):
    for text in texts:
        if text.startswith("FAULT slow "):
            time.sleep(float(text.split()[2]))
    return _infer(self, texts)


runtime.OnnxModel.infer = infer
'''
TEXT_COST_MS, QUEUE_S = 20, 1.0   # a 64-text request is 1.28 s of queued work by this count: over the bound


def slow_server(built, root, **settings) -> Server:
    (root / "slow_service.py").write_text(textwrap.dedent(SLOW_SERVICE))
    env = toolchain_env(built.home, TOOLCHAIN_EXPORT_DIR=str(built.export_dir), TOOLCHAIN_API_KEYS_FILE=str(
        write_keys(root / "keys")), TOOLCHAIN_WORKERS="1", TOOLCHAIN_THREADS="1", TOOLCHAIN_TIMEOUT_S="20",
        **settings)
    env["PYTHONPATH"] = f"{root}{os.pathsep}{env['PYTHONPATH']}"
    return Server("slow_service:ToolchainService", env, root / "server.log").wait_ready()


def post(server, texts, timeout=30):
    return httpx.post(server.url + "/classify", json={"texts": texts}, timeout=timeout,
                      headers={"Authorization": f"Bearer {PLAIN_KEY}"})


def scrape(server) -> str:
    return httpx.get(server.url + "/metrics", timeout=10).text


@pytest.fixture(scope="module")
def per_text_server(built, tmp_path_factory):
    """The dynamic int8 variant: one text per model call."""
    running = slow_server(built, tmp_path_factory.mktemp("per-text"), TOOLCHAIN_VARIANT="int8")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def bounded_server(built, tmp_path_factory):
    running = slow_server(built, tmp_path_factory.mktemp("bounded"), TOOLCHAIN_VARIANT="fp32",
                          TOOLCHAIN_TEXT_COST_MS=str(TEXT_COST_MS), TOOLCHAIN_MAX_QUEUE_S=str(QUEUE_S))
    yield running
    running.stop()


@pytest.mark.server
def test_a_per_text_variant_is_served_without_batching_and_without_a_batching_wait(per_text_server):
    text = scrape(per_text_server)
    (info,) = [dict(k) for k, v in metric_samples(text, "toolchain_model_info").items() if v == 1]
    assert info["variant"] == "int8" and info["batching"] == "off" and info["call_pattern"] == "per-text"
    assert "model queue: batching off" in per_text_server.output() and "no batching wait" in per_text_server.output()
    before = scrape(per_text_server)
    for sentence in ("profit rose", "sales fell", "the board met"):   # one at a time: nothing ahead of them
        assert post(per_text_server, [sentence]).status_code == 200
    after = scrape(per_text_server)

    def grew(name, **labels):
        return metric_total(after, name, **labels) - metric_total(before, name, **labels)

    assert grew("toolchain_queue_wait_seconds_count") == 3
    assert grew("toolchain_queue_wait_seconds_bucket", le="0.25") == 3   # no window waiting for company
    start = threading.Barrier(6, timeout=30)

    def together(i):
        start.wait()
        return post(per_text_server, [f"profit rose {i}"]).status_code

    with ThreadPoolExecutor(6) as pool:   # concurrent 1-text requests are never merged: every round holds 1 text
        assert list(pool.map(together, range(6))) == [200] * 6
    final = scrape(per_text_server)
    assert metric_total(final, "toolchain_batch_size_count") == metric_total(final, "toolchain_batch_size_bucket",
                                                                             le="1.0")


@pytest.mark.server
def test_bulk_requests_are_served_under_the_bound_and_refused_fast_over_it(bounded_server):
    text = scrape(bounded_server)
    (info,) = [dict(k) for k, v in metric_samples(text, "toolchain_model_info").items() if v == 1]
    assert info["batching"] == "on" and info["call_pattern"] == "length-grouped"
    bulk = [f"profit rose in quarter {i}" for i in range(64)]
    assert post(bounded_server, bulk).status_code == 200       # an idle worker takes a request of any size
    overload_before = metric_total(text, "toolchain_rejected_requests_total", reason="overload")
    client = httpx.Client(base_url=bounded_server.url, timeout=30, headers={"Authorization": f"Bearer {PLAIN_KEY}"})
    with client, ThreadPoolExecutor(3) as pool:
        holding = pool.submit(post, bounded_server, ["FAULT slow 3"])
        time.sleep(0.5)
        queued = pool.submit(post, bounded_server, bulk)       # behind the slow one: 1.28 s of work, admitted
        time.sleep(0.5)
        started = time.perf_counter()
        refused = client.post("/classify", json={"texts": ["one more"]})   # refused on its headers
        refused_after = time.perf_counter() - started
        probes = [httpx.get(bounded_server.url + path, timeout=5) for path in ("/readyz", "/livez", "/metrics")]
        assert holding.result().status_code == 200 and queued.result().status_code == 200
        again = client.post("/classify", json={"texts": ["profit rose"]})   # the same keep-alive connection
        assert again.status_code == 200 and again.json()[0]["label"]
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "overloaded" and "TOOLCHAIN_MAX_QUEUE_S" in refused.json()["message"]
    assert refused.headers["retry-after"] == "1"               # ceil(1.28 - 1.0): the queue's own estimate
    assert refused_after < 1.0                                 # refused at once, not after waiting
    assert [p.status_code for p in probes] == [200, 200, 200]  # readiness holds under overload
    assert metric_total(scrape(bounded_server), "toolchain_rejected_requests_total", reason="overload") == \
        overload_before + 1
    assert post(bounded_server, ["profit rose"]).status_code == 200   # and the queue drained
