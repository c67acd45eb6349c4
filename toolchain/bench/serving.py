"""Serving figures: the HTTP load benchmark (benchmarks/serve_bench.py) run whole, or its pieces driven
by the latency check (two real servers, batching on and off; see toolchain.bench.latency_check_serving)."""
from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
SERVE_BENCH = REPO / "benchmarks" / "serve_bench.py"


def load_serve_bench():
    """benchmarks/serve_bench.py as a module (it is a script, not part of the installed package)."""
    if not SERVE_BENCH.exists():
        raise FileNotFoundError(f"{SERVE_BENCH} not found: the serving benchmark ships with the repository "
                                "checkout, run from there")
    spec = importlib.util.spec_from_file_location("serve_bench", SERVE_BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("serve_bench", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_serve_benchmark(export_dir: Path, out_prefix: Path, seconds: float, modes: str = "on,off") -> int:
    """The serving stage's benchmark, unchanged, as a subprocess (1 and 64 clients, batching on/off)."""
    command = [sys.executable, str(SERVE_BENCH), "--export-dir", str(export_dir), "--seconds", str(seconds),
               "--clients", "1,64", "--modes", modes, "--out", str(out_prefix)]
    print("$ " + " ".join(command), flush=True)
    return subprocess.run(command, cwd=REPO).returncode


def server_env(export_dir: Path, key: str, batching: bool, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLCHAIN_") or k == "TOOLCHAIN_DATA_DIR"}
    env.update(TOOLCHAIN_API_KEYS=key, TOOLCHAIN_BATCHING=str(batching).lower(), TOOLCHAIN_WORKERS="1",
               TOOLCHAIN_THREADS=str(threads), TOOLCHAIN_MAX_CONCURRENCY="256", TOOLCHAIN_EXPORT_DIR=str(export_dir),
               TOKENIZERS_PARALLELISM="false", BENTOML_DO_NOT_TRACK="true", PYTHONPATH=str(REPO))
    return env


class ServerPair:
    """Two servers of one export dir, adaptive batching on and off, started together and kept up
    while the latency check alternates between them (an idle server's ONNX Runtime threads sleep)."""

    def __init__(self, bench, export_dir: Path, threads: int):
        self.bench, self.key = bench, secrets.token_urlsafe(24)
        self.logs = Path(tempfile.mkdtemp(prefix="bench-latency-check-servers-"))
        self.ports = {mode: bench.free_port() for mode in ("on", "off")}
        self.envs = {mode: server_env(export_dir.resolve(), self.key, mode == "on", threads) for mode in self.ports}
        self.servers: dict = {}

    def start(self) -> None:
        """Start both servers in the background (the latency check measures offline meanwhile); see wait()."""
        def one(mode):
            return mode, self.bench.start_server(self.bench.SERVICE, self.envs[mode], self.ports[mode],
                                                 self.logs / f"server-{mode}.log")
        self.pool = ThreadPoolExecutor(2)
        self.futures = [self.pool.submit(one, mode) for mode in self.ports]

    def wait(self) -> "ServerPair":
        self.servers = dict(f.result() for f in self.futures)
        return self

    def stop(self) -> None:
        """Stop every server that came up (waiting for one still starting, so none is left behind)."""
        for future in self.futures:
            try:
                self.bench.stop_server(future.result()[1])
            except BaseException:   # it failed to start: start_server has already stopped it
                continue
        self.pool.shutdown(wait=True)

    def drive(self, mode: str, clients: int, seconds: float) -> dict:
        """One closed-loop slice: answered latencies, errors, wall seconds and server CPU seconds."""
        import asyncio
        import time

        server, payload = self.servers[mode], self.bench.request_bytes(self.key)
        cpu, started = self.bench.server_cpu_seconds(server.pid), time.perf_counter()
        latencies, errors = asyncio.run(self.bench.drive(self.ports[mode], payload, clients, seconds))
        return {"latencies": latencies, "errors": len(errors), "wall": time.perf_counter() - started,
                "cpu": self.bench.server_cpu_seconds(server.pid) - cpu}


