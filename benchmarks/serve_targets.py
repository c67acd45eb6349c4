"""The service against the floor of a Python stack and against a plain BentoML + Optimum peer, in one run.

    python benchmarks/serve_targets.py --export-dir EXPORT_DIR [--seconds 10] [--overload-seconds 15]
        [--servers ours,bare,peer] [--out benchmarks/results/serve_targets]

1. Model-only figures on this machine, through the serving runtime (toolchain.inference.runtime), real test
   sentences: every variant that passed the export's accuracy gate, one text per call on 1 thread (the ceiling
   is the best of these x the usable CPUs) and 32-text calls on all CPUs.
2. Three servers of the export's serve variant, one after the other, on 127.0.0.1, loaded with Debian's ``wrk``
   (keep-alive, one thread; each request real sentences, rotating), the same phases for each:
   ``c1`` (1 client, 1-text requests), ``c64`` (64 clients, 1-text requests), ``b32_c8`` (8 clients, 32-text
   requests):

   - ours: the service with default settings (its own worker layout, auth on);
   - bare: benchmarks/peer/bare_asgi.py, a one-file ASGI app under uvicorn with as many workers as ours, ONNX
     Runtime on 1 thread, ``tokenizers``, one model call per text, no auth or metrics: the floor;
   - peer: benchmarks/peer/service.py, Optimum ORTModel + transformers pipeline behind a batchable BentoML API,
     library defaults.
3. Overload of ours: 256 clients of 32-text requests for ``--overload-seconds``, while a probe sends a 32-text
   request and a ``GET /readyz`` every 100 ms without waiting for the earlier ones (their latencies, statuses and
   Retry-After); then,
   1 s after the load stops, five 1-text requests. wrk's Lua counts every response by status and every 503
   without ``Retry-After``.

Targets (printed as a table, also in OUT.md / OUT.json):

- 1 client: p50 <= bare p50 + 1.5 ms;
- 64 clients: goodput (2xx/s) >= 0.95x bare's and >= 0.75x the model-only ceiling, 0 errors;
- 8 clients of 32-text requests: 0 errors, texts/s >= 0.85x the best variant's model-only 32-text rate on all CPUs;
- overload: every refusal a 503 with Retry-After, answered within 50 ms (the probe's refusals), /readyz 200
  throughout (every probe within 1 s), and 1 s after the load stops a 1-text request at full speed (median of
  five <= 1.5x the 1-client p50 + 1 ms);
- 64 clients: goodput >= 2x the plain BentoML peer's.

Load stays on 127.0.0.1 and is bounded in connections and time. Nothing else should run on the machine meanwhile:
on a busy machine the figures mean nothing.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from serve_bench import free_port, start_ready, start_server, stop_server  # noqa: E402

SERVERS = ("ours", "bare", "peer")
PHASES = (("c1", 1, 1), ("c64", 64, 1), ("b32_c8", 8, 32))   # name, clients, texts per request


# --------------------------------------------------------------------------- model only

def model_only(export, texts: list[str], cpus: int) -> dict:
    from toolchain.core.measure import served_rates
    from toolchain.inference.runtime import OnnxModel

    report = json.loads((export.path / "report.json").read_text())
    names = [n for n, v in (report.get("gates") or {}).items() if v.get("passed")] or export.variant_names()
    one = served_rates({n: OnnxModel(export, n, "cpu", 1) for n in names}, texts, (1,), rounds=3)
    many = served_rates({n: OnnxModel(export, n, "cpu", cpus) for n in names}, texts, (32,), rounds=3)
    b1 = {n: one[n][1]["texts_per_s"] for n in names}
    b32 = {n: many[n][32]["texts_per_s"] for n in names}
    best1, best32 = max(b1, key=b1.get), max(b32, key=b32.get)
    return {"variants": names, "b1_1thread_texts_per_s": b1, "b32_all_threads_texts_per_s": b32,
            "best_b1": best1, "b1_latency_ms": 1000 / b1[best1], "ceiling_rps": b1[best1] * cpus,
            "best_b32": best32, "b32_ceiling_texts_per_s": b32[best32], "cpus": cpus}


# --------------------------------------------------------------------------- wrk

def request_bodies(texts: list[str], per_request: int, count: int = 64) -> list[str]:
    return [json.dumps({"texts": [texts[(i * per_request + j) % len(texts)] for j in range(per_request)]})
            for i in range(count)]


def lua_script(path: Path, texts: list[str], per_request: int, key: str | None) -> Path:
    """Rotating bodies; every response counted by status in each wrk thread, the 503s without Retry-After too;
    ``done`` prints the totals as one line."""
    bodies = request_bodies(texts, per_request)
    headers = '["Content-Type"] = "application/json"' + (f', ["Authorization"] = "Bearer {key}"' if key else "")
    lines = ["local bodies = {"] + [f"  [==[{b}]==]," for b in bodies] + ["}", "local threads = {}", "",
             "setup = function(thread) table.insert(threads, thread) end",
             "init = function(args) i = 0; statuses = {}; missing_retry_after = 0 end",
             "request = function()", "  i = i % #bodies + 1",
             f'  return wrk.format("POST", "/classify", {{{headers}}}, bodies[i])', "end",
             "response = function(status, headers, body)",
             "  statuses[status] = (statuses[status] or 0) + 1",
             '  if status == 503 and headers["retry-after"] == nil and headers["Retry-After"] == nil then',
             "    missing_retry_after = missing_retry_after + 1", "  end", "end",
             "done = function(summary, latency, requests)", "  local total, missing = {}, 0",
             "  for _, thread in ipairs(threads) do",
             '    for status, n in pairs(thread:get("statuses")) do total[status] = (total[status] or 0) + n end',
             '    missing = missing + thread:get("missing_retry_after")', "  end", "  local parts = {}",
             "  for status, n in pairs(total) do table.insert(parts, string.format('\"%d\": %d', status, n)) end",
             "  io.write(string.format('STATUSES {%s} MISSING_RETRY_AFTER %d\\n', table.concat(parts, ', '), missing))",
             "end"]
    path.write_text("\n".join(lines) + "\n")
    return path


def parse_wrk(out: str, seconds: float) -> dict:
    def grab(pattern, default=0.0):
        match = re.search(pattern, out)
        return float(match.group(1)) if match else default

    def ms(value: str, unit: str) -> float:
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    statuses = re.search(r"STATUSES (\{.*\}) MISSING_RETRY_AFTER (\d+)", out)
    counted = {int(k): v for k, v in json.loads(statuses.group(1)).items()} if statuses else {}
    requests = int(grab(r"(\d+) requests in"))
    ok = sum(v for k, v in counted.items() if 200 <= k < 300)
    result = {"rps": grab(r"Requests/sec:\s+([\d.]+)"), "requests": requests, "statuses": counted,
              "non_2xx": int(grab(r"Non-2xx or 3xx responses: (\d+)")),
              "socket_errors": sum(int(g) for g in socket_errors.groups()) if socket_errors else 0,
              "missing_retry_after": int(statuses.group(2)) if statuses else None,
              "p50_ms": ms(*p50.groups()) if p50 else None, "p99_ms": ms(*p99.groups()) if p99 else None,
              "goodput_rps": ok / seconds if counted else grab(r"Requests/sec:\s+([\d.]+)")}
    result["errors"] = result["non_2xx"] + result["socket_errors"]
    return result


def wrk_command(port: int, script: Path, clients: int, seconds: float) -> list[str]:
    return ["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--latency", "--timeout", "10s", "-s", str(script),
            f"http://127.0.0.1:{port}/classify"]


def drive(port: int, script: Path, clients: int, seconds: float) -> dict:
    out = subprocess.run(wrk_command(port, script, clients, seconds), capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    return parse_wrk(out, seconds)


def phases(port: int, work: Path, texts: list[str], key: str | None, seconds: float, who: str) -> dict:
    scripts = {per: lua_script(work / f"{who}-{per}.lua", texts, per, key) for per in {p[2] for p in PHASES}}
    drive(port, scripts[1], 1, 2)   # warm-up, not recorded
    results = {}
    for name, clients, per_request in PHASES:
        results[name] = drive(port, scripts[per_request], clients, seconds)
        results[name]["texts_per_s"] = results[name]["goodput_rps"] * per_request
        print(f"  {who} {name}: {json.dumps(results[name])}", flush=True)
    return results


# --------------------------------------------------------------------------- overload

class Probe(threading.Thread):
    """Every ``every_s``: one request, sent whether or not the earlier ones were answered (an admitted request may
    wait for seconds; refusals are sampled all the same), each sender thread on a keep-alive connection of its own;
    (status, latency s, Retry-After) of each is recorded."""

    def __init__(self, port: int, method: str, path: str, body: bytes | None, headers: dict, every_s: float = 0.1):
        super().__init__(daemon=True)
        self.port, self.method, self.path, self.body, self.headers = port, method, path, body, headers
        self.every_s = every_s
        self.results: list[tuple[int, float, str | None]] = []
        self.halt = threading.Event()
        self.local = threading.local()

    def one(self) -> None:
        if getattr(self.local, "connection", None) is None:   # each sender keeps a connection: connects not timed
            self.local.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self.local.connection.connect()
        started = time.perf_counter()
        try:
            self.local.connection.request(self.method, self.path, body=self.body, headers=self.headers)
            response = self.local.connection.getresponse()
            response.read()
            self.results.append((response.status, time.perf_counter() - started, response.getheader("retry-after")))
        except (OSError, http.client.HTTPException):
            self.results.append((0, time.perf_counter() - started, None))
            self.local.connection = None

    def run(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(64) as pool:
            while not self.halt.is_set():
                pool.submit(self.one)
                self.halt.wait(self.every_s)

def one_text_latencies(port: int, key: str, text: str, count: int = 5) -> list[tuple[int, float]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"texts": [text]}).encode()
    out = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("POST", "/classify", body=body, headers={"Content-Type": "application/json",
                                                                     "Authorization": f"Bearer {key}"})
        response = connection.getresponse()
        response.read()
        out.append((response.status, time.perf_counter() - started))
    connection.close()
    return out


def overload(port: int, work: Path, texts: list[str], key: str, seconds: float) -> dict:
    script = lua_script(work / "ours-overload.lua", texts, 32, key)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    probes = {"classify": Probe(port, "POST", "/classify", request_bodies(texts, 32, 1)[0].encode(), headers),
              "readyz": Probe(port, "GET", "/readyz", None, {})}
    load = subprocess.Popen(wrk_command(port, script, 256, seconds), stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)   # the queue fills first
    for probe in probes.values():
        probe.start()
    out, _ = load.communicate(timeout=seconds + 60)
    for probe in probes.values():
        probe.halt.set()
        probe.join(timeout=15)
    time.sleep(1.0)
    after = one_text_latencies(port, key, texts[0])
    wrk = parse_wrk(out, seconds)
    refusals = [(s, t, r) for s, t, r in probes["classify"].results if s != 200]
    served = [t for s, t, _ in probes["classify"].results if s == 200]
    ready = probes["readyz"].results
    return {"wrk": wrk, "probe_requests": len(probes["classify"].results), "probe_refusals": len(refusals),
            "probe_refusal_statuses": sorted({s for s, _, _ in refusals}),
            "probe_refusals_without_retry_after": sum(1 for _, _, r in refusals if not r),
            "probe_refusal_max_ms": 1000 * max((t for _, t, _ in refusals), default=0.0),
            "probe_refusal_p50_ms": 1000 * statistics.median([t for _, t, _ in refusals]) if refusals else None,
            "probe_served_p50_ms": 1000 * statistics.median(served) if served else None,
            "readyz_probes": len(ready), "readyz_not_200": sum(1 for s, _, _ in ready if s != 200),
            "readyz_max_ms": 1000 * max((t for _, t, _ in ready), default=0.0),
            "after_1s_statuses": [s for s, _ in after],
            "after_1s_median_ms": 1000 * statistics.median(t for _, t in after)}


# --------------------------------------------------------------------------- the three servers

def server_log_line(log: Path, pattern: str) -> str | None:
    match = re.search(pattern, log.read_text(errors="replace")) if log.is_file() else None
    return match.group(1).strip() if match else None


def run_ours(export_dir: Path, work: Path, texts: list[str], seconds: float, overload_s: float) -> dict:
    key = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLCHAIN_")}
    env.update(TOOLCHAIN_EXPORT_DIR=str(export_dir), TOOLCHAIN_API_KEYS=key, BENTOML_DO_NOT_TRACK="true",
               PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    port, log = free_port(), work / "ours.log"
    server = start_server("toolchain.serve.service:ToolchainService", env, port, log)
    try:
        results = phases(port, work, texts, key, seconds, "ours")
        if overload_s > 0:
            results["overload"] = overload(port, work, texts, key, overload_s)
            print(f"  ours overload: {json.dumps(results['overload'])}", flush=True)
    finally:
        stop_server(server)
    results["layout"] = server_log_line(log, r"serving layout: (.*)")
    results["model_queue"] = server_log_line(log, r"model queue: (.*)")
    workers = re.match(r"(\d+) worker", results["layout"] or "")
    results["workers"] = int(workers.group(1)) if workers else 1
    return results


def start_uvicorn(env: dict, port: int, workers: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "uvicorn", "bare_asgi:app", "--app-dir", str(REPO / "benchmarks" / "peer"),
               "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
               "--log-level", "warning"]
    return start_ready(command, env, port, log, "bare server", 120)


def run_bare(export, variant: str, workers: int, work: Path, texts: list[str], seconds: float) -> dict:
    env = dict(os.environ, PEER_MODEL_FILE=str(export.variant_file(variant).resolve()),
               PEER_TOKENIZER_DIR=str(export.tokenizer_dir.resolve()), PEER_MAX_LENGTH=str(export.max_length),
               PEER_LABELS=",".join(export.labels), TOKENIZERS_PARALLELISM="false")
    port = free_port()
    server = start_uvicorn(env, port, workers, work / "bare.log")
    try:
        results = phases(port, work, texts, None, seconds, "bare")
    finally:
        stop_server(server)
    results["workers"] = workers
    return results


def run_peer(export, variant: str, work: Path, texts: list[str], seconds: float) -> dict:
    env = dict(os.environ, PEER_MODEL_DIR=str(export.variant_dir(variant).resolve()), BENTOML_DO_NOT_TRACK="true",
               PEER_FILE_NAME=export.variant_file(variant).name,
               PEER_TOKENIZER_DIR=str(export.tokenizer_dir.resolve()))
    port = free_port()
    server = start_server("service:PeerService", env, port, work / "peer.log",
                          ("--working-dir", str(REPO / "benchmarks" / "peer")))
    try:
        return phases(port, work, texts, None, seconds, "peer")
    finally:
        stop_server(server)


# --------------------------------------------------------------------------- targets

def targets(model: dict, ours: dict, bare: dict | None, peer: dict | None) -> list[dict]:
    def row(name, value, target, ok, note):
        return {"target": name, "measured": value, "target_value": target, "met": bool(ok), "note": note}

    c1, c64, b32 = ours["c1"], ours["c64"], ours["b32_c8"]
    rows = []
    if bare:
        rows.append(row("1 client: p50 - bare p50 (ms)", c1["p50_ms"] - bare["c1"]["p50_ms"], 1.5,
                        c1["p50_ms"] <= bare["c1"]["p50_ms"] + 1.5,
                        f"p50 {c1['p50_ms']:.2f} ms vs bare {bare['c1']['p50_ms']:.2f} ms"))
        rows.append(row("64 clients: goodput / bare", c64["goodput_rps"] / max(bare["c64"]["goodput_rps"], 1e-9),
                        0.95, c64["goodput_rps"] >= 0.95 * bare["c64"]["goodput_rps"] and c64["errors"] == 0,
                        f"{c64['goodput_rps']:.0f} vs {bare['c64']['goodput_rps']:.0f} 2xx/s; {c64['errors']} errors"))
    rows.append(row("64 clients: goodput / model-only ceiling", c64["goodput_rps"] / model["ceiling_rps"], 0.75,
                    c64["goodput_rps"] >= 0.75 * model["ceiling_rps"] and c64["errors"] == 0,
                    f"{c64['goodput_rps']:.0f} 2xx/s; ceiling {model['ceiling_rps']:.0f} ({model['best_b1']} b1 on "
                    f"1 thread x {model['cpus']})"))
    rows.append(row("8 clients x 32 texts: texts/s / best model 32-text rate",
                    b32["texts_per_s"] / model["b32_ceiling_texts_per_s"], 0.85,
                    b32["texts_per_s"] >= 0.85 * model["b32_ceiling_texts_per_s"] and b32["errors"] == 0,
                    f"{b32['texts_per_s']:.0f} texts/s, {b32['errors']} errors {b32['statuses']}; model "
                    f"{model['b32_ceiling_texts_per_s']:.0f} ({model['best_b32']}, {model['cpus']} threads)"))
    over = ours.get("overload")
    if over:
        wrk = over["wrk"]
        refusals_ok = (set(wrk["statuses"]) <= {200, 503} and wrk["missing_retry_after"] == 0
                       and over["probe_refusals_without_retry_after"] == 0
                       and set(over["probe_refusal_statuses"]) <= {503})
        rows.append(row("overload: every refusal a 503 with Retry-After", float(refusals_ok), 1, refusals_ok,
                        f"wrk statuses {wrk['statuses']}, {wrk['missing_retry_after']} 503s without Retry-After, "
                        f"{wrk['socket_errors']} socket errors; probe: {over['probe_refusals']} of "
                        f"{over['probe_requests']} refused, statuses {over['probe_refusal_statuses']}"))
        rows.append(row("overload: slowest refusal (ms)", over["probe_refusal_max_ms"], 50,
                        over["probe_refusals"] > 0 and over["probe_refusal_max_ms"] <= 50,
                        f"probe refusals p50 {over['probe_refusal_p50_ms'] or 0:.1f} ms; admitted p50 "
                        f"{over['probe_served_p50_ms'] or 0:.0f} ms"))
        rows.append(row("overload: /readyz 200 throughout (slowest ms)", over["readyz_max_ms"], 1000,
                        over["readyz_not_200"] == 0 and over["readyz_max_ms"] <= 1000,
                        f"{over['readyz_probes']} probes, {over['readyz_not_200']} not 200"))
        full_speed = 1.5 * c1["p50_ms"] + 1.0
        rows.append(row("1 s after the load: 1-text median (ms)", over["after_1s_median_ms"], full_speed,
                        over["after_1s_median_ms"] <= full_speed and set(over["after_1s_statuses"]) == {200},
                        f"statuses {over['after_1s_statuses']}; 1-client p50 {c1['p50_ms']:.2f} ms"))
    if peer:
        rows.append(row("64 clients: goodput / plain BentoML peer",
                        c64["goodput_rps"] / max(peer["c64"]["goodput_rps"], 1e-9), 2.0,
                        c64["goodput_rps"] >= 2 * peer["c64"]["goodput_rps"] and c64["errors"] == 0,
                        f"{c64['goodput_rps']:.0f} vs {peer['c64']['goodput_rps']:.0f} 2xx/s; peer errors "
                        f"{peer['c64']['errors']}"))
    return rows


def markdown(result: dict) -> str:
    ours = result["servers"]["ours"]
    lines = [f"# Serving targets ({result['machine']})", "", f"Command: `{result['command']}`", "",
             f"Served variant: {result['served_variant']}. Layout chosen by the service: {ours.get('layout')}. "
             f"Model queue: {ours.get('model_queue')}. Load average (1 min) at the end: "
             f"{result['load_average_1min']:.1f}.", "",
             "| target | measured | target | met | figures |", "|---|---|---|---|---|"]
    for r in result["targets"]:
        lines.append(f"| {r['target']} | {r['measured']:.2f} | {r['target_value']:g} | "
                     f"{'yes' if r['met'] else 'NO'} | {r['note']} |")
    lines += ["", "| server | phase | req/s | 2xx/s | texts/s | p50 ms | p99 ms | errors | statuses |",
              "|---|---|---|---|---|---|---|---|---|"]
    for who, figures in result["servers"].items():
        for phase, _, _ in PHASES:
            f = figures[phase]
            lines.append(f"| {who} | {phase} | {f['rps']:.0f} | {f['goodput_rps']:.0f} | {f['texts_per_s']:.0f} | "
                         f"{f['p50_ms'] or 0:.2f} | {f['p99_ms'] or 0:.2f} | {f['errors']} | {f['statuses']} |")
    m = result["model_only"]
    lines += ["", "Model only (serving runtime, real sentences): " + ", ".join(
        f"{n} b1 {m['b1_1thread_texts_per_s'][n]:.0f}/s on 1 thread, b32 {m['b32_all_threads_texts_per_s'][n]:.0f}/s "
        f"on {m['cpus']}" for n in m["variants"]), ""]
    return "\n".join(lines)


def main() -> int:
    from toolchain.bench.machine import detect_machine
    from toolchain.core.artifacts import load_export, load_run
    from toolchain.core.hardware import available_cpus
    from toolchain.export.scoring import load_run_splits

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export-dir", required=True, type=Path)
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per phase (default 10)")
    p.add_argument("--overload-seconds", type=float, default=15.0, help="the overload phase of ours (0: skip it)")
    p.add_argument("--servers", default=",".join(SERVERS), help="comma list of ours, bare, peer (ours always runs)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve_targets")
    args = p.parse_args()
    wanted = {s.strip() for s in args.servers.split(",")} | {"ours"}
    export = load_export(args.export_dir)
    texts = [ex.text for ex in load_run_splits(load_run(export.manifest["run_dir"])).test]
    machine = detect_machine()
    model = model_only(export, texts, available_cpus())
    print(f"model only: {json.dumps(model)}", flush=True)
    work = REPO / "benchmarks" / "out" / "serve-targets"   # server logs kept for inspection (ignored by git)
    work.mkdir(parents=True, exist_ok=True)
    servers = {"ours": run_ours(export.path.resolve(), work, texts, args.seconds, args.overload_seconds)}
    if "bare" in wanted:
        servers["bare"] = run_bare(export, export.serve_variant, servers["ours"]["workers"], work, texts, args.seconds)
    if "peer" in wanted:
        servers["peer"] = run_peer(export, export.serve_variant, work, texts, args.seconds)
    result = {"machine": f"{machine.model}, {machine.isa_summary()}, {machine.cores:g} CPUs",
              "command": "python benchmarks/serve_targets.py " + " ".join(sys.argv[1:]),
              "served_variant": export.serve_variant, "model_only": model, "servers": servers,
              "targets": targets(model, servers["ours"], servers.get("bare"), servers.get("peer")),
              "load_average_1min": os.getloadavg()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
