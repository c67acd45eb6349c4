"""Load test of the served model from 127.0.0.1: latency percentiles, throughput and error rate with
1 and 64 concurrent clients, batching (merging queued requests) on and off in the same run.

    python benchmarks/serve_bench.py --export-dir EXPORT_DIR          # or --bento TAG
        [--seconds 20] [--clients 1,64] [--workers 1] [--out benchmarks/serve_results]

For each batching mode a server is started on a free 127.0.0.1 port (auth on, a throw-away key, the
model queue allowed 10 s of work so that slow phases measure capacity, not load shedding), warmed up,
then driven by closed-loop clients: each keeps one keep-alive connection and sends the
next one-sentence request as soon as the previous answer arrives, for a fixed time. The clients are
plain asyncio sockets so that the load generator takes as little of the shared CPU as possible.
Results go to OUT.json and OUT.md; the targets (single-client p50 <= 15 ms, batched throughput under
64 clients >= 2x unbatched) are checked and printed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SENTENCE = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007 ."
SERVICE = "toolchain.serve.service:ToolchainService"


MODES = {  # name -> (TOOLCHAIN_BATCHING: merge queued requests where that merges work, TOOLCHAIN_MODEL_CALLS)
    "on": (True, "auto"),
    "off": (False, "auto"),
    "on-batched-calls": (True, "batched"),
}


@dataclass
class PhaseResult:
    mode: str
    batching: bool
    clients: int
    seconds: float
    requests: int
    errors: int
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch_size: float
    model_ms_per_call: float
    server_cpu_ms_per_request: float   # CPU time of all server processes / answered requests
    load_average: float                # 1-minute load average at the end of the phase (other jobs included)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(target: str, env: dict[str, str], port: int, log: Path, extra: tuple = ()) -> subprocess.Popen:
    command = [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(port), *extra]
    return start_ready(command, env, port, log, "server", 180)


def start_ready(command: list[str], env: dict[str, str], port: int, log: Path, what: str,
                seconds: float) -> subprocess.Popen:
    """Start ``command`` (its output to ``log``) and wait until its /readyz on ``port`` answers 200."""
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}; see {log}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                return process
        except OSError:
            time.sleep(0.5)
    stop_server(process)
    raise SystemExit(f"{what} not ready after {seconds:g} s; see {log}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def request_bytes(key: str) -> bytes:
    body = json.dumps({"texts": [SENTENCE]}).encode()
    head = (f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def read_status(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    return status


async def client_loop(port: int, payload: bytes, stop_at: float, latencies: list, errors: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(payload)
            try:
                status = await read_status(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                errors.append("connection")
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            if status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors.append(status)
    finally:
        writer.close()


async def drive(port: int, payload: bytes, clients: int, seconds: float) -> tuple[list[float], list]:
    latencies, errors = [], []
    stop_at = time.perf_counter() + seconds
    await asyncio.gather(*(client_loop(port, payload, stop_at, latencies, errors) for _ in range(clients)))
    return latencies, errors


def scrape(port: int) -> dict[str, float]:
    """Sums of the model-call metrics, to report the batch size and model time of each phase."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    wanted = ("toolchain_batch_size_sum", "toolchain_batch_size_count", "toolchain_inference_seconds_sum")
    totals = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000 if len(values) > 1 else float("nan")


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server and all its worker processes."""
    import psutil

    root = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])


def measure(server: subprocess.Popen, port: int, payload: bytes, mode: str, clients: int, seconds: float) -> PhaseResult:
    asyncio.run(drive(port, payload, clients, min(3.0, seconds)))  # warm-up, not counted
    before, cpu_before = scrape(port), server_cpu_seconds(server.pid)
    latencies, errors = asyncio.run(drive(port, payload, clients, seconds))
    after, cpu = scrape(port), server_cpu_seconds(server.pid) - cpu_before
    calls = after["toolchain_batch_size_count"] - before["toolchain_batch_size_count"]
    texts = after["toolchain_batch_size_sum"] - before["toolchain_batch_size_sum"]
    model_seconds = after["toolchain_inference_seconds_sum"] - before["toolchain_inference_seconds_sum"]
    total = len(latencies) + len(errors)
    return PhaseResult(mode, MODES[mode][0], clients, seconds, total, len(errors), len(latencies) / seconds,
                       percentile(latencies, 50), percentile(latencies, 95), percentile(latencies, 99),
                       texts / calls if calls else float("nan"), 1000 * model_seconds / calls if calls else float("nan"),
                       1000 * cpu / max(len(latencies), 1), os.getloadavg()[0])


def run_mode(args, mode: str, log_dir: Path) -> list[PhaseResult]:
    key = secrets.token_urlsafe(24)
    batching, calls = MODES[mode]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLCHAIN_")}
    env.update(TOOLCHAIN_API_KEYS=key, TOOLCHAIN_BATCHING=str(batching).lower(), TOOLCHAIN_MODEL_CALLS=calls,
               TOOLCHAIN_WORKERS=str(args.workers), TOOLCHAIN_MAX_CONCURRENCY="256", TOKENIZERS_PARALLELISM="false",
               TOOLCHAIN_MAX_QUEUE_S=str(args.max_queue_s), PYTHONPATH=str(REPO))
    if args.export_dir:
        env["TOOLCHAIN_EXPORT_DIR"] = str(Path(args.export_dir).resolve())
    port = free_port()
    server = start_server(args.bento or SERVICE, env, port, log_dir / f"server-{mode}.log")
    try:
        return [measure(server, port, request_bytes(key), mode, clients, args.seconds) for clients in args.clients]
    finally:
        stop_server(server)


def model_cpu_per_text(export_dir: str) -> list[dict]:
    """Model-only CPU time per text, the sentence alone vs in one call of 32: the most batching can save."""
    sys.path.insert(0, str(REPO))
    from toolchain.core.artifacts import load_export
    from toolchain.inference.runtime import OnnxModel

    rows = []
    for threads in (1, 2):
        export = load_export(export_dir)
        model = OnnxModel(export, export.serve_variant, threads=threads)
        alone, batch = (model.encoder.pad(model.encoder.tokenize([SENTENCE] * n)) for n in (1, 32))
        for _ in range(3):
            model.run(alone), model.run(batch)
        started = time.process_time()
        for _ in range(64):
            model.run(alone)
        middle = time.process_time()
        for _ in range(4):
            model.run(batch)
        alone_ms, batch_ms = (middle - started) / 64 * 1000, (time.process_time() - middle) / 128 * 1000
        rows.append({"variant": model.variant, "threads": threads, "cpu_ms_alone": alone_ms,
                     "cpu_ms_in_batch_of_32": batch_ms, "saving": alone_ms / batch_ms})
    return rows


def report(results: list[PhaseResult], args) -> tuple[str, dict]:
    by = {(r.mode, r.clients): r for r in results}
    lines = ["| batching | clients | requests | errors | throughput (req/s) | p50 ms | p95 ms | p99 ms | texts/batch "
             "| model ms/batch | server CPU ms/req | load avg |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.mode} | {r.clients} | {r.requests} | {r.errors} "
                     f"({100 * r.errors / max(r.requests, 1):.2f}%) | {r.throughput_rps:.1f} | {r.p50_ms:.1f} | "
                     f"{r.p95_ms:.1f} | {r.p99_ms:.1f} | {r.mean_batch_size:.1f} | {r.model_ms_per_call:.1f} | "
                     f"{r.server_cpu_ms_per_request:.1f} | {r.load_average:.1f} |")
    single = by.get(("on", 1)) or by.get(("off", 1))
    top = max(args.clients)
    on, off = by.get(("on", top)), by.get(("off", top))
    targets = {"single_client_p50_ms": single.p50_ms if single else None,
               "single_client_p50_target_met": bool(single and single.p50_ms <= 15),
               "batched_over_unbatched_throughput": on.throughput_rps / off.throughput_rps if on and off else None}
    targets["throughput_target_met"] = bool(targets["batched_over_unbatched_throughput"]
                                            and targets["batched_over_unbatched_throughput"] >= 2)
    lines.append("")
    if single:
        lines.append(f"Single-client p50: {single.p50_ms:.1f} ms (target <= 15 ms: "
                     f"{'met' if targets['single_client_p50_target_met'] else 'NOT met'})")
    if targets["batched_over_unbatched_throughput"]:
        lines.append(f"Batched / unbatched throughput at {top} clients: {targets['batched_over_unbatched_throughput']:.2f}x "
                     f"(target >= 2x: {'met' if targets['throughput_target_met'] else 'NOT met'})")
    return "\n".join(lines), targets


def model_cpu_lines(rows: list[dict]) -> str:
    if not rows:
        return ""
    return "\n\nModel-only CPU per text (ONNX Runtime, the sentence alone vs in one call of 32):\n\n" + "\n".join(
        f"- {r['variant']}, {r['threads']} intra-op thread(s): {r['cpu_ms_alone']:.2f} ms alone, "
        f"{r['cpu_ms_in_batch_of_32']:.2f} ms in a batch ({r['saving']:.2f}x)" for r in rows)


def write_results(out: Path, args, argv, results: list[PhaseResult], model_cpu: list[dict]) -> str:
    table, targets = report(results, args)
    table += model_cpu_lines(model_cpu)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    meta = {"command": " ".join(["python benchmarks/serve_bench.py", *(argv or sys.argv[1:])]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "load_average_at_end": load, "sentence": SENTENCE, "model": args.export_dir or args.bento}
    out.with_suffix(".json").write_text(json.dumps({**meta, "targets": targets, "results": [asdict(r) for r in results],
                                                    "model_cpu_per_text": model_cpu}, indent=2) + "\n")
    out.with_suffix(".md").write_text(f"# Serving benchmark\n\n`{meta['command']}`\n\n{meta['date']}, {meta['cpu_count']} "
                                      f"CPUs, load average (1, 5, 15 min) at the end: {load}\n\n"
                                      f"Model: {meta['model']}\n\n{table}\n")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--export-dir", help="export dir to serve (its serve_variant, e.g. int8)")
    source.add_argument("--bento", help="Bento tag to serve")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per phase (default 20)")
    parser.add_argument("--clients", type=lambda s: [int(c) for c in s.split(",")], default=[1, 64])
    parser.add_argument("--workers", type=int, default=1, help="server workers (default 1)")
    parser.add_argument("--max-queue-s", type=float, default=10.0, help="TOOLCHAIN_MAX_QUEUE_S of the server "
                        "(default 10: measure capacity rather than load shedding)")
    parser.add_argument("--modes", default="on,off", help=f"comma list of {', '.join(MODES)} (default on,off); "
                        "on-batched-calls groups dynamic-int8 texts into one call (faster, batch-dependent scores)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "serve_results"), help="OUT.json / OUT.md prefix")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",")]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"--modes: unknown mode {unknown[0]!r}; modes: {', '.join(MODES)}")
    logs = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    results = [phase for mode in modes for phase in run_mode(args, mode, logs)]
    model_cpu = model_cpu_per_text(args.export_dir) if args.export_dir else []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(write_results(out, args, argv, results, model_cpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())
