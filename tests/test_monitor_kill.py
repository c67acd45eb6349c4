"""Exactly once under real kills: the feeder, as a subprocess, is SIGKILLed at random moments (and
sometimes right after the service counted a request, before it answered) 20 times and SIGTERMed 3
times, restarted each time, while a writer keeps appending to a folder of files and adds new ones; then it drains.
Every item id must have been counted by the service exactly once and be in the predictions file
exactly once; every bad line in the bad-lines file exactly once.

The service is a threaded http.server on 127.0.0.1 that imitates ``POST /classify`` (request and
response JSON, the API key, 422 for a blank text) and honours ``Idempotency-Key`` as the service is asked
to (toolchain/monitor/feeder.py; toolchain/serve/idempotency.py): a stored 200 is replayed, another
body with the same key is a 422. It counts each accepted item id itself. A second,
shorter run (10 SIGKILLs, 2 SIGTERMs) answers 500 with ``Retry-After`` for 1 s of every 2 s.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KEY = "kill-test-key"
ID = re.compile(r"\bid=(\S+)")

pytestmark = pytest.mark.server


class CountingService:
    """``POST /classify``: counts every accepted item id; replays a stored answer for a known key."""

    def __init__(self, failing: bool):
        self.failing, self.started = failing, time.monotonic()
        self.counted: Counter = Counter()
        self.answers: dict[str, list] = {}
        self.requests = self.replays = self.reused = self.failures = self.handler_kills = 0
        self.victim: subprocess.Popen | None = None     # SIGKILLed right after its next counted request
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handler(self):
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                with service.lock:
                    status, payload, headers = service.answer(body, self.headers)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for name, value in headers:
                        self.send_header(name, value)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass                                     # the feeder was killed meanwhile

            def log_message(self, *args):
                pass

        return Handler

    def in_failing_stretch(self) -> bool:
        """Failing runs: 500 for 1 s of every 2 s."""
        return self.failing and (time.monotonic() - self.started) % 2.0 < 1.0

    def answer(self, raw: bytes, headers):
        self.requests += 1
        if headers.get("authorization") != f"Bearer {KEY}":
            return 401, {"error": "unauthorized", "message": "missing or invalid API key"}, []
        key, body = headers.get("idempotency-key"), json.loads(raw)
        if key in self.answers:
            if self.answers[key][0] != raw:
                self.reused += 1
                return 422, {"error": "idempotency_key_reused", "message": "another body with this key"}, []
            self.replays += 1
            return 200, self.answers[key][1], [("idempotent-replayed", "true")]
        if self.in_failing_stretch():
            self.failures += 1
            return 500, {"error": "internal", "message": "transient failure"}, [("retry-after", "0.2")]
        for i, text in enumerate(body["texts"]):
            if not text.strip():
                return 422, {"error": "invalid_request", "message": f"texts[{i}] is empty", "field": f"texts[{i}]"}, []
        self.counted.update(ID.search(text).group(1) for text in body["texts"])
        answer = [{"label": ("negative", "neutral", "positive")[len(t) % 3], "score": 0.9, "scores": {},
                   "truncated": False} for t in body["texts"]]
        if key:
            self.answers[key] = (raw, answer)
        if self.victim is not None:                          # counted, and killed before it hears the answer
            self.victim.send_signal(signal.SIGKILL)
            self.victim, self.handler_kills = None, self.handler_kills + 1
        return 200, answer, []

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Writer(threading.Thread):
    """Appends items with unique ids to the files of a folder, sometimes in two writes (a line is
    complete only with its newline), sometimes a bad line; adds new files as it goes."""

    def __init__(self, folder: Path, seed: int, per_second: float = 60):
        super().__init__(daemon=True)
        self.folder, self.pause, self.rng = folder, 1 / per_second, random.Random(seed)
        self.stop = threading.Event()
        self.files = [folder / f"wire-{n}.jsonl" for n in (1, 2, 3)]
        self.ids: list[str] = []
        self.bad: list[tuple[str, int]] = []
        self.line_count: Counter = Counter()

    def run(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            if n == 300:
                self.files.append(self.folder / "wire-4.jsonl")      # sorts after the others
            if n == 900:
                self.files.append(self.folder / "wire-0.jsonl")      # sorts before them
            path = self.rng.choice(self.files)
            line = self.line(n, path)
            with open(path, "ab") as out:
                if self.rng.random() < 0.1:                          # a line still being written
                    out.write(line[:7])
                    out.flush()
                    time.sleep(0.005)
                    line = line[7:]
                out.write(line)
            self.stop.wait(self.pause)

    def line(self, n: int, path: Path) -> bytes:
        self.line_count[path] += 1
        if n % 97 == 50:
            self.bad.append((str(path), self.line_count[path]))
            return b'{"text": "broken\n'
        item_id = f"{path.stem}-{n}"
        self.ids.append(item_id)
        topic = self.rng.choice(["markets", "macro", "energy"])
        return (json.dumps({"text": f"news id={item_id} " + "x" * self.rng.randrange(40), "topic": topic,
                            "id": item_id}) + "\n").encode()


def feeder(folder: Path, root: Path, url: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "toolchain.cli", "monitor", str(folder), "--url", url,
               "--api-key-file", str(root / "key.txt"), "--state", str(root / "state.json"),
               "--predictions", str(root / "predictions.jsonl"), "--bad-lines", str(root / "bad.jsonl"),
               "--batch-size", "16", "--flush-seconds", "0.1", "--poll-seconds", "0.05", "--table-every", "0",
               "--backoff-max", "0.5", "--give-up-after", "60", *extra]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(root / "feeder.err", "a"))


def wait_for_requests(service: CountingService, more_than: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while service.requests <= more_than and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize("failing, rounds, sigterm_rounds", [(False, 23, {4, 12, 20}), (True, 12, {3, 8})],
                         ids=["healthy", "500s"])
def test_kills_and_restarts_lose_and_repeat_nothing(tmp_path, failing, rounds, sigterm_rounds):
    rng = random.Random(1 if failing else 0)
    folder = tmp_path / "news"
    folder.mkdir()
    (tmp_path / "key.txt").write_text(KEY + "\n")
    service = CountingService(failing)
    writer = Writer(folder, seed=2 if failing else 3)
    writer.start()
    kills = Counter()
    try:
        for round_ in range(rounds):
            process = feeder(folder, tmp_path, service.url)
            how = "SIGTERM" if round_ in sigterm_rounds else "SIGKILL in the service" if round_ % 3 == 2 else "SIGKILL"
            if how == "SIGKILL in the service":
                wait_for_requests(service, service.requests)
                service.victim = process
                rc = process.wait(30)
            else:
                wait_for_requests(service, service.requests)
                time.sleep(rng.uniform(0, 0.3))
                process.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
                rc = process.wait(30)
                assert how != "SIGTERM" or rc == 0, (tmp_path / "feeder.err").read_text()[-3000:]
            kills[how if rc != 0 or how == "SIGTERM" else "exited before the kill"] += 1
        writer.stop.set()
        writer.join(10)
        drain = feeder(folder, tmp_path, service.url, "--once")
        assert drain.wait(120) == 0, (tmp_path / "feeder.err").read_text()[-3000:]
    finally:
        service.victim = None
        service.close()
    predicted = Counter(json.loads(line)["id"] for line in (tmp_path / "predictions.jsonl").read_text().splitlines())
    bad = Counter((row["file"], row["line"]) for row in map(json.loads, (tmp_path / "bad.jsonl").read_text().splitlines()))
    state = json.loads((tmp_path / "state.json").read_text())
    written = Counter(writer.ids)
    figures = {"kills": dict(kills), "items": len(written), "bad lines": len(writer.bad),
               "requests": service.requests, "answers replayed by key": service.replays,
               "500s": service.failures, "lost": len(written - service.counted),
               "duplicated": sum((service.counted - written).values()),
               "predictions lost": len(written - predicted), "predictions duplicated": sum((predicted - written).values())}
    print(f"\nkill test ({'500s' if failing else 'healthy'}):", json.dumps(figures))
    assert sum(n for how, n in kills.items() if how.startswith("SIGKILL")) == rounds - len(sigterm_rounds), kills
    assert kills["SIGTERM"] == len(sigterm_rounds), kills
    assert service.counted == written, figures
    assert predicted == written, figures
    assert bad == Counter(writer.bad), figures
    assert state["pending"] is None and state["sent_items"] == len(written) and state["bad_lines"] == len(writer.bad)
    assert service.replays >= service.handler_kills > 0 and service.reused == 0   # the window after counting held
    assert not failing or service.failures > 0
