"""Served throughput against the model-only ceiling, and against a plain BentoML + Optimum peer, in one run.

    python benchmarks/serve_targets.py --export-dir EXPORT_DIR [--seconds 10] [--out benchmarks/results/serve_targets]

1. Model-only figures on this machine, through the serving runtime (toolchain.inference.runtime), real
   test sentences: every variant that passed the export's accuracy gate, one text per call on 1 thread
   (the ceiling is the best of these x the usable CPUs) and 32-text calls on all CPUs.
2. The service with default settings (its own worker layout) on 127.0.0.1, loaded with Debian's
   ``wrk`` (keep-alive; each request one real sentence, rotating): 64 clients, 1 client, and
   32-text requests from 2 clients.
3. The peer (benchmarks/peer/service.py: Optimum ORTModel + transformers pipeline behind a batchable
   BentoML API, library defaults) on the same variant, the same phases.

Targets checked: 64 clients >= 0.75x the ceiling at 0 errors; 32-text requests >= 0.85x the best
32-text model rate; 1-client p50 <= model-only batch-1 latency + 1 ms; >= 2x the peer at 0 errors.
Results go to OUT.json and OUT.md. Nothing else should run on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from serve_bench import free_port, start_server, stop_server  # noqa: E402


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


def lua_script(path: Path, texts: list[str], per_request: int, key: str | None) -> Path:
    bodies = [json.dumps({"texts": [texts[(i * per_request + j) % len(texts)] for j in range(per_request)]})
              for i in range(64)]
    headers = '["Content-Type"] = "application/json"' + (f', ["Authorization"] = "Bearer {key}"' if key else "")
    lines = ["local bodies = {"] + [f"  [==[{b}]==]," for b in bodies] + ["}", "local i = 0",
             "request = function()", "  i = i % #bodies + 1",
             f'  return wrk.format("POST", "/classify", {{{headers}}}, bodies[i])', "end"]
    path.write_text("\n".join(lines) + "\n")
    return path


def parse_wrk(out: str) -> dict:
    def grab(pattern, default=0.0):
        match = re.search(pattern, out)
        return float(match.group(1)) if match else default

    def ms(value: str, unit: str) -> float:
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": grab(r"Requests/sec:\s+([\d.]+)"), "requests": int(grab(r"(\d+) requests in")),
            "non_2xx": int(grab(r"Non-2xx or 3xx responses: (\d+)")),
            "socket_errors": sum(int(g) for g in socket.groups()) if socket else 0,
            "p50_ms": ms(*p50.groups()) if p50 else None, "p99_ms": ms(*p99.groups()) if p99 else None}


def drive(port: int, script: Path, clients: int, seconds: float) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--latency", "--timeout", "10s",
                          "-s", str(script), f"http://127.0.0.1:{port}/classify"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    result = parse_wrk(out)
    result["errors"] = result["non_2xx"] + result["socket_errors"]
    return result


def phases(port: int, work: Path, texts: list[str], key: str | None, seconds: float) -> dict:
    one, many = lua_script(work / "one.lua", texts, 1, key), lua_script(work / "many.lua", texts, 32, key)
    drive(port, one, 1, 2)  # warm-up, not recorded
    # the lone client first: after a burst, BentoML's adaptive batcher has learned to wait for company
    results = {"c1": drive(port, one, 1, seconds), "c64": drive(port, one, 64, seconds)}
    # 32-text requests from 2 clients: two requests in flight per worker pair, no queueing past the cap
    results["b32_c2"] = drive(port, many, 2, seconds)
    results["b32_c2"]["texts_per_s"] = results["b32_c2"]["rps"] * 32
    return results


def run_ours(export_dir: Path, work: Path, texts: list[str], seconds: float) -> dict:
    key = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLCHAIN_")}
    env.update(TOOLCHAIN_EXPORT_DIR=str(export_dir), TOOLCHAIN_API_KEYS=key, BENTOML_DO_NOT_TRACK="true",
               PYTHONPATH=str(REPO))
    port = free_port()
    server = start_server("toolchain.serve.service:ToolchainService", env, port, work / "ours.log")
    try:
        results = phases(port, work, texts, key, seconds)
    finally:
        stop_server(server)
    layout = re.search(r"serving layout: (.*)", (work / "ours.log").read_text(errors="replace"))
    results["layout"] = layout.group(1).strip() if layout else None
    return results


def run_peer(export, variant: str, work: Path, texts: list[str], seconds: float) -> dict:
    env = dict(os.environ, PEER_MODEL_DIR=str(export.variant_dir(variant).resolve()), BENTOML_DO_NOT_TRACK="true",
               PEER_FILE_NAME=export.variant_file(variant).name,
               PEER_TOKENIZER_DIR=str(export.tokenizer_dir.resolve()))
    port = free_port()
    server = start_server("service:PeerService", env, port, work / "peer.log",
                          ("--working-dir", str(REPO / "benchmarks" / "peer")))
    try:
        return phases(port, work, texts, None, seconds)
    finally:
        stop_server(server)


def targets(model: dict, ours: dict, peer: dict) -> list[dict]:
    def row(name, value, target, ok, note):
        return {"target": name, "measured": value, "target_value": target, "met": bool(ok), "note": note}
    c64, c1, b32 = ours["c64"], ours["c1"], ours["b32_c2"]
    return [
        row("64 clients / model-only ceiling", c64["rps"] / model["ceiling_rps"], 0.75,
            c64["rps"] >= 0.75 * model["ceiling_rps"] and c64["errors"] == 0,
            f"{c64['rps']:.0f} req/s, {c64['errors']} errors; ceiling {model['ceiling_rps']:.0f} "
            f"({model['best_b1']} b1 on 1 thread x {model['cpus']})"),
        row("32-text requests / best model batch-32 rate", b32["texts_per_s"] / model["b32_ceiling_texts_per_s"],
            0.85, b32["texts_per_s"] >= 0.85 * model["b32_ceiling_texts_per_s"] and b32["errors"] == 0,
            f"{b32['texts_per_s']:.0f} texts/s; model {model['b32_ceiling_texts_per_s']:.0f} ({model['best_b32']})"),
        row("1-client p50 - model-only b1 latency (ms)", c1["p50_ms"] - model["b1_latency_ms"], 1.0,
            c1["p50_ms"] <= model["b1_latency_ms"] + 1.0,
            f"p50 {c1['p50_ms']:.2f} ms vs model {model['b1_latency_ms']:.2f} ms"),
        row("64 clients vs plain BentoML + Optimum", c64["rps"] / max(peer["c64"]["rps"], 1e-9), 2.0,
            c64["rps"] >= 2 * peer["c64"]["rps"] and c64["errors"] == 0,
            f"{c64['rps']:.0f} vs {peer['c64']['rps']:.0f} req/s; peer errors {peer['c64']['errors']}"),
    ]


def markdown(result: dict) -> str:
    lines = [f"# Serving targets ({result['machine']})", "", f"Command: `{result['command']}`", "",
             f"Layout chosen by the service: {result['ours']['layout']}", "",
             "| target | measured | target | met | figures |", "|---|---|---|---|---|"]
    for r in result["targets"]:
        lines.append(f"| {r['target']} | {r['measured']:.2f} | {r['target_value']:g} | "
                     f"{'yes' if r['met'] else 'NO'} | {r['note']} |")
    lines += ["", "| server | phase | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for who in ("ours", "peer"):
        for phase in ("c1", "c64", "b32_c2"):
            f = result[who][phase]
            lines.append(f"| {who} | {phase} | {f['rps']:.0f} | {f['p50_ms'] or 0:.2f} | {f['p99_ms'] or 0:.2f} | "
                         f"{f['errors']} |")
    m = result["model_only"]
    lines += ["", "Model only (serving runtime, real sentences): " + ", ".join(
        f"{n} b1 {m['b1_1thread_texts_per_s'][n]:.0f}/s on 1 thread, b32 {m['b32_all_threads_texts_per_s'][n]:.0f}/s "
        f"on {m['cpus']}" for n in m["variants"]), ""]
    return "\n".join(lines)


def main() -> int:
    from toolchain.core.artifacts import load_export, load_run
    from toolchain.bench.machine import detect_machine
    from toolchain.export.scoring import load_run_splits
    from toolchain.core.hardware import available_cpus

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export-dir", required=True, type=Path)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve_targets")
    args = p.parse_args()
    export = load_export(args.export_dir)
    texts = [ex.text for ex in load_run_splits(load_run(export.manifest["run_dir"])).test]
    machine = detect_machine()
    model = model_only(export, texts, available_cpus())
    print(f"model only: {json.dumps(model)}", flush=True)
    work = REPO / "benchmarks" / "out" / "serve-targets"   # server logs kept for inspection (ignored by git)
    work.mkdir(parents=True, exist_ok=True)
    ours = run_ours(export.path.resolve(), work, texts, args.seconds)
    print(f"ours: {json.dumps(ours)}", flush=True)
    peer = run_peer(export, export.serve_variant, work, texts, args.seconds)
    print(f"peer: {json.dumps(peer)}", flush=True)
    result = {"machine": f"{machine.model}, {machine.isa_summary()}, {machine.cores:g} CPUs",
              "command": "python benchmarks/serve_targets.py " + " ".join(sys.argv[1:]),
              "served_variant": export.serve_variant, "model_only": model, "ours": ours, "peer": peer,
              "targets": targets(model, ours, peer), "load_average_1min": os.getloadavg()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
