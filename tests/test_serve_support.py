"""Shared pieces of the serving and build tests: one tiny `toolchain build` per session, and servers.

``toolchain build`` runs once (train the tiny BERT -> export fp32 + int8 -> BentoML model -> Bento)
with its own BENTOML_HOME; every test module that needs it gets the same result from ``built``.
Servers are real ``bentoml serve`` processes on a free 127.0.0.1 port.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PLAIN_KEY = "plain-key-for-tests"
HASHED_KEY = "hashed-key-for-tests"
_PIPELINE: dict = {}


@dataclass
class Pipeline:
    home: Path            # BENTOML_HOME holding the model and the Bento
    tag: str              # the Bento tag
    run_dir: Path
    export_dir: Path
    output: str           # what `toolchain build` printed
    overrides: list[str]


def build_overrides(tiny_bert: Path, tiny_data: dict, root: Path) -> list[str]:
    return [f"model.base={tiny_bert}", f"data.train={tiny_data['train']}", f"data.dev={tiny_data['dev']}",
            f"data.test={tiny_data['test']}", f"output_dir={root / 'runs' / 'tiny'}", "train.epochs=3",
            "train.batch_size=8", "train.eval_steps=15", "train.learning_rate=3e-3", "data.max_length=32",
            "train.early_stopping_patience=0", "train.logging_steps=5", "export.variants=fp32,int8",
            "export.latency.rounds=2", "export.latency.warmup=1", "export.latency.pytorch=false"]


def toolchain_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLCHAIN_") or k == "TOOLCHAIN_DATA_DIR"}
    env.update(BENTOML_HOME=str(home), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               BENTOML_DO_NOT_TRACK="true", PYTHONPATH=str(REPO), **extra)
    return env


def run_build(tiny_bert: Path, tiny_data: dict, root: Path) -> Pipeline:
    """`toolchain build` as a user runs it, once per session."""
    if "pipeline" in _PIPELINE:
        return _PIPELINE["pipeline"]
    overrides = build_overrides(tiny_bert, tiny_data, root)
    home = root / "bentoml"
    result = subprocess.run([sys.executable, "-m", "toolchain.cli", "build", "--config", "sentiment-full",
                             *overrides], cwd=root, env=toolchain_env(home), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"toolchain build failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    out = result.stdout
    tag = re.search(r"^bento: (\S+)$", out, re.M).group(1)
    run_dir = Path(re.search(r"^train\s.*?\s(/\S+)$", out, re.M).group(1))
    export_dir = Path(re.search(r"^export\s.*?\s(/\S+)$", out, re.M).group(1))
    _PIPELINE["pipeline"] = Pipeline(home, tag, run_dir, export_dir, out, overrides)
    return _PIPELINE["pipeline"]


@pytest.fixture(scope="session")
def built(tiny_bert, tiny_data, tmp_path_factory) -> Pipeline:
    return run_build(tiny_bert, tiny_data, tmp_path_factory.mktemp("build"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_keys(path: Path) -> Path:
    from toolchain.serve.auth import hash_key

    path.write_text(f"# test keys\n{PLAIN_KEY}\n{hash_key(HASHED_KEY)}\n")
    return path


class Server:
    """A `bentoml serve` process on 127.0.0.1; stopped with SIGTERM (then SIGKILL) at the end."""

    def __init__(self, target: str, env: dict[str, str], log_file: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = log_file
        self.log = open(log_file, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_file.read_text(errors="replace")

    def ready(self) -> bool:
        import httpx

        try:
            return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 120) -> "Server":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.output()[-4000:]}")
            if self.ready():
                return self
            time.sleep(0.3)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.output()[-4000:]}")

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()
        return self.process.returncode


def flip_middle_byte(path: Path) -> None:
    """Alter a model file in place: one byte in the middle of the weights inverted."""
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))


def never_ready(running: "Server", seconds: float = 120) -> tuple[bool, int]:
    """(whether the server ever answered ready, its exit code): polls until it exits or the time is up."""
    ever_ready, deadline = False, time.time() + seconds
    while running.process.poll() is None and not ever_ready and time.time() < deadline:
        ever_ready = running.ready()
        time.sleep(0.3)
    return not ever_ready, running.stop()


def metric_samples(text: str, name: str) -> dict[tuple, float]:
    """{sorted label items: value} of one metric in Prometheus text format."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                samples[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def metric_total(text: str, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for key, v in metric_samples(text, name).items() if wanted <= set(key))


def raw_request(port: int, body: bytes, send: int | None = None, key: str = PLAIN_KEY) -> socket.socket:
    """Open a connection and send headers plus the first ``send`` body bytes (all when None)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    sock.sendall(head + body[:send if send is not None else len(body)])
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict | list]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, json.loads(body)
