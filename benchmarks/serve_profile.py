"""Where one request's time goes on the served path: a cProfile of the real service, in process, under a fixed load.

    python benchmarks/serve_profile.py --export-dir EXPORT_DIR [--variant int8] [--requests 1000] [--texts 1]
        [--clients 1] [--code DIR] [--server ours|bare] [--env TOOLCHAIN_X=VALUE]
        [--out benchmarks/results/serve_profile]

The service is loaded exactly as a ``bentoml serve`` worker loads it (``service.to_asgi(is_main=True)`` behind
uvicorn, with BentoML's middlewares, a Prometheus multiprocess folder, auth on with a throw-away key, 1 worker x
1 ONNX Runtime thread), here in this process so that it can be profiled: the event-loop thread with cProfile,
and every other Python thread the server starts (the API's worker thread, the model queue's thread) with a
cProfile of its own, installed by ``threading.setprofile`` when the measured phase begins. A client in a
subprocess (plain sockets, keep-alive) sends ``--warm-up`` requests, then exactly ``--requests`` requests of
``--texts`` real sentences each from ``--clients`` connections; only those are profiled.

Every function is put in a stage by where its code lives (uvicorn/h11 = HTTP, opentelemetry = tracing,
toolchain/serve/admission.py = admission control, ONNX Runtime's ``run`` = the model call, ...), and the table
gives, per request: Python function calls (a count: it does not depend on the machine's load, and it is what
the service's own Python costs) and own time (cProfile's, so inflated for Python-heavy stages and meaningless on
a busy machine; use the shares on an idle one). ``--code DIR`` profiles the toolchain package of another checkout
(a worktree of an older commit: the "before" of a change) with this script; ``--server bare`` profiles the floor,
benchmarks/peer/bare_asgi.py (uvicorn, the model, nothing else), under the same requests.

Results: OUT.json (every stage and the 40 costliest functions) and OUT.md.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (stage, substrings of the code's file name or of a built-in's name); the first match wins.
STAGES = [
    ("waiting (idle: no CPU)", ("'poll' of 'select.epoll'", "'acquire' of '_thread.lock'", "built-in method time.sleep",
                                "'get' of '_queue.SimpleQueue'")),
    ("model call (ONNX Runtime)", ("onnxruntime",)),
    ("tokenization (tokenizers)", ("tokenizers", "encode_batch")),
    ("HTTP (uvicorn, h11, sockets)", ("uvicorn/", "h11/", "'send' of '_socket.socket'", "'recv' of '_socket.socket'",
                                      "asyncio/selector_events.py", "asyncio/transports.py")),
    ("tracing middleware (OpenTelemetry)", ("opentelemetry/",)),
    ("BentoML metrics middleware", ("bentoml/_internal/server/http/instruments.py",)),
    ("access log", ("bentoml/_internal/server/http/access.py",)),
    ("BentoML adaptive batcher", ("bentoml/_internal/marshal/",)),
    ("BentoML timeout/concurrency/context", ("bentoml/_internal/server/http/traffic.py", "bentoml/_internal/context.py",
                                             "bentoml/_internal/server/http_app.py", "_bentoml_impl/server/app.py")),
    ("BentoML IO (serde, pydantic models)", ("_bentoml_impl/serde.py", "_bentoml_sdk/", "bentoml/_internal/")),
    ("Starlette (routing, requests, responses)", ("starlette/",)),
    ("pydantic (validation, serialization)", ("pydantic", "model_dump", "dump_json", "validate_python")),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("auth", ("toolchain/serve/auth.py", "compare_digest", "sha256", "_hashlib")),
    ("request validation", ("toolchain/serve/validation.py", "toolchain/serve/classify.py",
                            "toolchain/serve/ner.py", "toolchain/core/privacy.py")),
    ("idempotency", ("toolchain/serve/idempotency.py",)),
    ("model queue (batching, admission by queued work)", ("toolchain/serve/model_queue.py",)),
    ("admission control", ("toolchain/serve/admission.py", "toolchain/serve/responses.py")),
    ("service metrics, drift (ours)", ("toolchain/serve/metrics.py", "toolchain/inference/drift.py")),
    ("post-processing (softmax, predictions)", ("toolchain/inference/predictions.py", "toolchain/core/probability.py",
                                                "toolchain/tasks/", "numpy")),
    ("runtime (planning, padding)", ("toolchain/inference/runtime.py",)),
    ("service (predict)", ("toolchain/serve/",)),
    ("JSON", ("json/", "'loads'", "'dumps'", "_json")),
    ("logging", ("logging/", "'write' of '_io.TextIOWrapper'")),
    ("event loop, tasks, threads", ("asyncio/", "anyio/", "threading.py", "concurrent/", "selectors.py", "queue.py",
                                    "contextvars", "sniffio", "'wait'")),
]
OTHER = "other"
WAITING = STAGES[0][0]


def stage_of(func: tuple) -> str:
    filename, _, name = func
    where = f"{filename}:{name}" if filename != "~" else name
    for stage, marks in STAGES:
        if any(mark in where for mark in marks):
            return stage
    return OTHER


# --------------------------------------------------------------------------- profilers of every thread

class Profilers:
    """cProfile of the event-loop thread plus one per other Python thread, all on from ``start`` to ``stop``."""

    def __init__(self):
        self.on = False
        self.main = cProfile.Profile()
        self.threads: list[cProfile.Profile] = []
        self.lock = threading.Lock()

    def install(self) -> None:
        """Call before the server starts any thread: each new thread profiles itself once ``on`` is set."""
        def hook(frame, event, arg):
            if self.on:
                profile = cProfile.Profile()
                with self.lock:
                    self.threads.append(profile)
                profile.enable()   # replaces this hook in this thread
        threading.setprofile(hook)

    def start(self) -> None:
        self.on = True
        self.main.enable()

    def stop(self) -> pstats.Stats:
        self.main.disable()
        self.on = False
        stats = pstats.Stats(self.main)
        for profile in self.threads:   # their threads are idle now (the load is over): read, do not disable
            profile.snapshot_stats()
            stats.add(Snapshot(profile.stats))
        return stats


class Snapshot:
    """What pstats.Stats.add accepts: an object with ``create_stats`` and ``stats``."""

    def __init__(self, stats: dict):
        self.stats = stats

    def create_stats(self) -> None:
        pass


# --------------------------------------------------------------------------- the client (a subprocess)

CLIENT = r'''
import json, socket, sys, threading, time
port, key = int(sys.argv[1]), sys.argv[2]
requests, warm, clients = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
bodies = json.loads(sys.stdin.readline())

def payload(i):
    body = bodies[i % len(bodies)].encode()
    return (f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

def status_of(sock, buffer):
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split(b" ")[1]), rest[length:]

def loop(count, statuses, start):
    sock = socket.create_connection(("127.0.0.1", port))
    buffer = b""
    for i in range(count):
        sock.sendall(payload(start + i))
        status, buffer = status_of(sock, buffer)
        statuses.append(status)
    sock.close()

def run(total):
    statuses, threads = [], []
    share = [total // clients + (1 if c < total % clients else 0) for c in range(clients)]
    for c in range(clients):
        threads.append(threading.Thread(target=loop, args=(share[c], statuses, c * 7919)))
        threads[-1].start()
    for t in threads:
        t.join()
    return statuses

run(warm)
print("warm", flush=True)
sys.stdin.readline()
statuses = run(requests)
print(json.dumps({"statuses": {str(s): statuses.count(s) for s in set(statuses)}}), flush=True)
'''


def real_texts(export, count: int) -> list[str]:
    try:
        from toolchain.core.artifacts import load_run
        from toolchain.export.scoring import load_run_splits

        texts = [ex.text for ex in load_run_splits(load_run(export.manifest["run_dir"])).test]
    except Exception:   # the run dir is gone: the profile does not need its exact sentences
        texts = []
    return texts or ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007 ."]


# --------------------------------------------------------------------------- the server, in this process

def service_app(args):
    """The service's ASGI app as a ``bentoml serve`` worker builds it."""
    from _bentoml_impl.loader import import_service
    from bentoml._internal.context import server_context
    from bentoml._internal.log import configure_server_logging

    configure_server_logging()
    service = import_service("toolchain.serve.service:ToolchainService", working_dir=str(args.code))
    server_context.service_name = server_context.bento_name = service.name
    server_context.bento_version = "not available"
    server_context.service_type = "entry_service"
    server_context.worker_index = 1
    server_context.service_routes = [api.route for api in service.apis.values()]
    return service.to_asgi(is_main=True)


def bare_app(export, variant: str):
    """The floor: benchmarks/peer/bare_asgi.py on the same variant (uvicorn, the model, nothing else)."""
    os.environ.update(PEER_MODEL_FILE=str(export.variant_file(variant).resolve()),
                      PEER_TOKENIZER_DIR=str(export.tokenizer_dir.resolve()), PEER_MAX_LENGTH=str(export.max_length),
                      PEER_LABELS=",".join(export.labels))
    sys.path.insert(0, str(REPO / "benchmarks" / "peer"))
    import bare_asgi

    return bare_asgi.app


def serve_and_profile(args, key: str, bodies: list[str], export) -> tuple[pstats.Stats, dict, dict]:
    import uvicorn

    app = bare_app(export, args.variant or export.serve_variant) if args.server == "bare" else service_app(args)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app=app, log_config=None, workers=1, server_header=False, lifespan="on")
    server = uvicorn.Server(config)
    profilers = Profilers()
    profilers.install()
    result: dict = {}

    async def main():
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.05)
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, str(port), key, str(args.requests), str(args.warm_up), str(args.clients),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        client.stdin.write((json.dumps(bodies) + "\n").encode())
        await client.stdin.drain()
        assert (await client.stdout.readline()).strip() == b"warm", "the client failed during the warm-up"
        cpu, wall = time.process_time(), time.perf_counter()
        profilers.start()
        client.stdin.write(b"go\n")
        await client.stdin.drain()
        line = await client.stdout.readline()
        stats = profilers.stop()
        result.update(cpu_s=time.process_time() - cpu, wall_s=time.perf_counter() - wall, stats=stats,
                      client=json.loads(line or b"{}"))
        await client.wait()
        server.should_exit = True
        await serving

    asyncio.run(main())
    return result.pop("stats"), result, {}


def attributed(stats: dict, func: tuple, depth: int = 4) -> dict[str, float]:
    """{stage: weight} of a function: its own stage, or for a built-in or generic standard-library function
    (``isinstance``, ``inspect``, ``typing``) the stages of its callers, weighted by the calls they made."""
    stage = stage_of(func)
    callers = stats[func][4] if func in stats else {}
    if stage != OTHER or depth == 0 or not callers:
        return {stage: 1.0}
    total = sum(c[1] for c in callers.values()) or 1
    weights: dict[str, float] = {}
    for caller, figures in callers.items():
        for name, weight in attributed(stats, caller, depth - 1).items():
            weights[name] = weights.get(name, 0.0) + weight * figures[1] / total
    return weights


@contextlib.contextmanager
def output_to(path: Path):
    """This process's stdout and stderr (file descriptors 1 and 2) into ``path`` meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "wb") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def summarize(stats: pstats.Stats, requests: int) -> dict:
    stages: dict[str, dict] = {}
    functions = []
    for func, (primitive, calls, own, cumulative, _) in stats.stats.items():
        for stage, weight in attributed(stats.stats, func).items():
            entry = stages.setdefault(stage, {"calls": 0, "own_s": 0.0})
            entry["calls"] += calls * weight
            entry["own_s"] += own * weight
        stage = stage_of(func)
        functions.append({"function": pstats.func_std_string(func), "stage": stage, "calls": calls, "own_s": own,
                          "cumulative_s": cumulative})
    total_calls = sum(s["calls"] for s in stages.values())
    busy = sum(s["own_s"] for name, s in stages.items() if name != WAITING) or 1e-12   # waiting is not work
    rows = [{"stage": name, "calls_per_request": s["calls"] / requests,
             "own_us_per_request": 1e6 * s["own_s"] / requests,
             "share_of_own_time": 0.0 if name == WAITING else s["own_s"] / busy} for name, s in stages.items()]
    rows.sort(key=lambda r: (r["stage"] == WAITING, -r["own_us_per_request"]))
    functions = [f for f in functions if f["stage"] != WAITING]
    functions.sort(key=lambda f: -f["own_s"])
    for f in functions:
        f["calls_per_request"] = f.pop("calls") / requests
        f["own_us_per_request"] = 1e6 * f.pop("own_s") / requests
        f["cumulative_us_per_request"] = 1e6 * f.pop("cumulative_s") / requests
    other = [f for f in functions if f["stage"] == OTHER][:15]
    by_calls = sorted(functions, key=lambda f: -f["calls_per_request"])
    most_called = {row["stage"]: [{"function": f["function"], "calls_per_request": f["calls_per_request"]}
                                  for f in by_calls if f["stage"] == row["stage"]][:12] for row in rows}
    return {"calls_per_request": total_calls / requests, "stages": rows, "top_functions": functions[:40],
            "top_other_functions": other, "most_called_by_stage": most_called}


def markdown(result: dict) -> str:
    lines = [f"# Served path profile: {'the bare ASGI peer' if result['server'] == 'bare' else 'the service'} "
             f"({result['variant']}, {result['texts']} text(s) per request)", "",
             f"Command: `{result['command']}`", "",
             f"{result['requests']} requests from {result['clients']} client(s) after {result['warm_up']} warm-up "
             f"ones; statuses {result['statuses']}; code profiled: {result['code']} ({result['code_commit']}). "
             f"Load average at the end: {result['load_average']:.1f}.", "",
             f"**Python function calls per request: {result['profile']['calls_per_request']:.0f}** "
             "(a count: the same on "
             "a busy and an idle machine). Own time is cProfile's (inflated for Python, and only meaningful on an idle "
             "machine); process CPU per request under the profiler: "
             f"{1000 * result['cpu_s'] / result['requests']:.2f} ms.", "",
             "| stage | calls / request | own us / request | share of own time (waiting excluded) |",
             "|---|---|---|---|"]
    for row in result["profile"]["stages"]:
        lines.append(f"| {row['stage']} | {row['calls_per_request']:.1f} | {row['own_us_per_request']:.0f} | "
                     f"{100 * row['share_of_own_time']:.1f}% |")
    lines += ["", "| function (costliest own time) | stage | calls / request | own us / request |", "|---|---|---|---|"]
    top = result["profile"]["top_functions"][:25]
    for f in top + [f for f in result["profile"]["top_other_functions"] if f not in top]:
        lines.append(f"| `{f['function']}` | {f['stage']} | {f['calls_per_request']:.2f} | "
                     f"{f['own_us_per_request']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export-dir", required=True, type=Path)
    p.add_argument("--variant", default=None, help="variant to serve (default: the export's serve_variant)")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--warm-up", type=int, default=100)
    p.add_argument("--texts", type=int, default=1, help="real sentences per request")
    p.add_argument("--clients", type=int, default=1, help="connections sending at once")
    p.add_argument("--code", type=Path, default=REPO, help="checkout whose toolchain package is profiled")
    p.add_argument("--server", choices=("ours", "bare"), default="ours",
                   help="bare: profile benchmarks/peer/bare_asgi.py instead (the floor, same requests)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve_profile")
    p.add_argument("--env", action="append", default=[], metavar="TOOLCHAIN_X=VALUE",
                   help="a service setting for the profiled server (repeatable)")
    args = p.parse_args(argv)
    args.code = args.code.resolve()
    sys.path.insert(0, str(args.code))
    key = secrets.token_hex(16)
    multiproc = tempfile.mkdtemp(prefix="serve-profile-metrics-")
    for name in [n for n in os.environ if n.startswith("TOOLCHAIN_")]:
        del os.environ[name]
    os.environ.update(TOOLCHAIN_EXPORT_DIR=str(args.export_dir.resolve()), TOOLCHAIN_API_KEYS=key,
                      TOOLCHAIN_WORKERS="1", TOOLCHAIN_THREADS="1", PROMETHEUS_MULTIPROC_DIR=multiproc,
                      BENTOML_DO_NOT_TRACK="true", TOKENIZERS_PARALLELISM="false")
    if args.variant:
        os.environ["TOOLCHAIN_VARIANT"] = args.variant
    for setting in args.env:
        name, _, value = setting.partition("=")
        os.environ[name] = value
    from toolchain.core.artifacts import load_export

    export = load_export(args.export_dir)
    texts = real_texts(export, args.texts)
    bodies = [json.dumps({"texts": [texts[(i * args.texts + j) % len(texts)] for j in range(args.texts)]})
              for i in range(64)]
    log = args.out.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"server log (access log included, as a worker writes it): {log}", flush=True)
    with output_to(log):
        stats, measured, _ = serve_and_profile(args, key, bodies, export)
    commit = subprocess.run(["git", "-C", str(args.code), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    result = {"command": "python benchmarks/serve_profile.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "server": args.server, "variant": args.variant or export.serve_variant, "texts": args.texts,
              "requests": args.requests,
              "warm_up": args.warm_up, "clients": args.clients, "code": str(args.code), "code_commit": commit,
              "statuses": measured["client"].get("statuses"), "cpu_s": measured["cpu_s"], "wall_s": measured["wall_s"],
              "load_average": os.getloadavg()[0], "profile": summarize(stats, args.requests)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
