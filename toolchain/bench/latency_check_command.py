"""`toolchain bench latency-check` and `toolchain bench update-baseline`: measure the latency check's ratios,
then judge them against the baseline (exit 1 on a regression) or record them as the new baseline."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

PARTS = ("offline", "serve")


def parse_parts(value: str) -> list[str]:
    parts = [p.strip() for p in value.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"--parts {value!r}: expected a comma list of {', '.join(PARTS)}")
    return parts


def measure(args, parts: list[str], timings: dict) -> tuple[dict, str]:
    """The ratios of ``parts`` on the given export dir, or on the quick model built in a temporary dir."""
    from toolchain.core.artifacts import load_export
    from toolchain.bench.quick_model import build_quick_export

    with tempfile.TemporaryDirectory(prefix="bench-latency-check-") as tmp:
        started = time.time()
        if args.export_dir:
            export_dir, model = args.export_dir, str(args.export_dir)
        else:
            print("latency check: building the quick model (packaged MiniLM, head trained 1 step; fp32 + int8 ONNX)",
                  flush=True)
            export_dir = build_quick_export(Path(tmp))
            model = "quick model: packaged MiniLM, 1-step head, export-default fp32+int8"
            timings["build_s"] = round(time.time() - started, 1)
        return measure_parts(args, load_export(export_dir), parts, timings), model


def measure_parts(args, export, parts: list[str], timings: dict) -> dict:
    """Offline ratios, then served ones; the servers start in the background while offline runs."""
    from toolchain.bench.latency_check import offline_ratios
    from toolchain.bench.latency_check_serving import served_ratios
    from toolchain.bench.serving import ServerPair, load_serve_bench

    pair, measured = None, {}
    if "serve" in parts:
        pair = ServerPair(load_serve_bench(), export.path, args.threads)
        pair.start()
    try:
        if "offline" in parts:
            started = time.time()
            measured.update(offline_ratios(export, args.repeats, args.threads))
            timings["offline_s"] = round(time.time() - started, 1)
        if pair:
            started = time.time()
            measured.update(served_ratios(pair.wait(), export, args.serve_repeats, args.seconds, args.threads))
            timings["serve_s"] = round(time.time() - started, 1)
    finally:
        if pair:
            pair.stop()
    return measured


def settings_of(args, parts: list[str], model: str) -> dict:
    from toolchain.bench.latency_check import ROUNDS

    return {"parts": parts, "model": model, "threads": args.threads, "repeats": args.repeats,
            "rounds_per_repeat": {str(k): v for k, v in ROUNDS.items()}, "serve_repeats": args.serve_repeats,
            "serve_seconds": args.seconds}


def conditions_line(timings: dict, load_start: float) -> str:
    parts = ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in timings.items() if k != "total_s")
    return (f"latency check wall time {timings['total_s']:.0f} s ({parts}); 1-min load average {load_start:.1f} "
            f"at start, {os.getloadavg()[0]:.1f} at end, on {os.cpu_count()} CPUs")


def run_latency_check(args, update: bool) -> int:
    from toolchain.bench.baseline import baseline_document, previous_tolerances, read_baseline, write_baseline
    from toolchain.bench.machine import detect_machine

    parts, started, load_start = parse_parts(args.parts), time.time(), os.getloadavg()[0]
    baseline = None if update else read_baseline(args.baseline)   # fail fast, before minutes of measuring
    timings: dict = {}
    measured, model = measure(args, parts, timings)
    timings["total_s"] = round(time.time() - started, 1)
    machine = detect_machine().to_dict()
    if update:
        tail = sys.argv[sys.argv.index("update-baseline") + 1:] if "update-baseline" in sys.argv else []
        command = " ".join(["toolchain bench update-baseline", *tail])
        kept, notes = previous_tolerances(args.baseline)
        tolerances = dict.fromkeys(measured, args.tolerance) if args.tolerance is not None else kept
        document = baseline_document(measured, settings_of(args, parts, model), machine, tolerances, command)
        document["check_seconds"] = timings
        if notes:
            document["notes"] = notes
        write_baseline(args.baseline, document)
        print_recorded(document, args.baseline)
        print(conditions_line(timings, load_start))
        return 0
    return report_verdict(args, measured, baseline, machine, conditions_line(timings, load_start))


def print_recorded(document: dict, path: Path) -> None:
    print(f"\nbaseline written to {path} (machine: {document['machine']['model']}, {document['machine']['flags']})")
    for name, entry in document["ratios"].items():
        print(f"  {name:28s} {entry['value']:.4f}  tolerance ±{entry['tolerance']:.0%}  spread {entry['spread']}")


def report_verdict(args, measured: dict, baseline: dict, machine: dict, conditions: str) -> int:
    from toolchain.bench.baseline import machine_differences
    from toolchain.bench.latency_check import compare, regression_lines, verdict_table

    rows = compare(measured, baseline)
    from toolchain.bench.baseline import cpu_family

    here = cpu_family(machine)
    print(f"\nlatency check vs {args.baseline}, CPU family {baseline['family']} (recorded "
          f"{baseline['recorded']} on {baseline['machine']['model']}); this machine: {here}")
    if not baseline["same_family"]:
        print(f"note: no baseline for CPU family {here}: CPU-specific ratios are shown, not judged; ratios that hold "
              "across CPUs are judged with a doubled tolerance. Record this family's with: toolchain bench "
              "update-baseline")
    for note in machine_differences(baseline["machine"], machine):
        print(f"note: machine differs from the baseline's: {note}")
    load_now, load_then = os.getloadavg()[0], baseline.get("load_average_1min", 0.0)
    if abs(load_now - load_then) > machine["cores"]:
        print(f"note: 1-min load average {load_now:.1f} here, {load_then:.1f} when the baseline was recorded; "
              "wall-clock ratios shift with load (the CPU-time ratio much less)")
    print(verdict_table(rows))
    for name, entry in measured.items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in entry["figures"].items())
              + f"; repeats {entry['repeats']}")
    print(conditions)
    failures = regression_lines(rows, measured)
    if args.out:
        args.out.write_text(json.dumps({"measured": measured, "verdict": rows, "conditions": conditions}, indent=2))
    if failures:
        print("\n" + "\n".join(failures))
        print(f"latency check: FAILED ({len(failures)} regression(s)); if the slowdown is intended, record a new "
              "baseline with: toolchain bench update-baseline")
        return 1
    print("latency check: passed")
    return 0
