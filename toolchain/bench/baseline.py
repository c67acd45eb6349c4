"""benchmarks/baseline.json: the gate's reference ratios, their tolerances and the machine they came from.

Written only by `toolchain bench update-baseline` (one explicit command); read by `toolchain bench gate`.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

BASELINE_VERSION = 1


def read_baseline(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"gate baseline {path} not found; record one with: toolchain bench update-baseline "
                                f"--baseline {path}")
    baseline = json.loads(path.read_text(encoding="utf-8"))
    if baseline.get("version") != BASELINE_VERSION or "ratios" not in baseline:
        raise ValueError(f"{path}: not a gate baseline of version {BASELINE_VERSION} (keys: {sorted(baseline)})")
    return baseline


def previous_tolerances(path: Path) -> tuple[dict, list]:
    """Tolerances and notes of the baseline being replaced: they are reviewed decisions, kept when the
    figures are re-recorded (``--tolerance`` replaces them all)."""
    try:
        old = read_baseline(path)
    except (FileNotFoundError, ValueError):
        return {}, []
    return {name: r["tolerance"] for name, r in old["ratios"].items() if "tolerance" in r}, old.get("notes", [])


def baseline_document(measured: dict, settings: dict, machine: dict, tolerances: dict, command: str) -> dict:
    """The baseline: each ratio's median, spread, figures and tolerance, and where it was measured.
    ``tolerances`` overrides the ratios' default tolerances by name."""
    from toolchain.bench.gate import SPECS

    ratios = {}
    for name, entry in measured.items():
        spec = SPECS[name]
        ratios[name] = {"value": round(entry["value"], 4), "tolerance": tolerances.get(name, spec.tolerance),
                        "better": spec.better, "what": spec.what,
                        "spread": [round(x, 4) for x in entry["spread"]], "repeats": entry["repeats"],
                        "figures": {k: round(v, 3) for k, v in entry["figures"].items()}}
    return {"version": BASELINE_VERSION, "recorded": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": command, "machine": machine, "load_average_1min": round(os.getloadavg()[0], 2),
            "settings": settings, "ratios": ratios}


def write_baseline(path: Path, document: dict) -> None:
    from toolchain.artifacts import write_json

    write_json(path, document)


def machine_differences(recorded: dict, current: dict) -> list[str]:
    """What differs between the baseline's machine and this one (ratios move with the ISA and cores)."""
    keys = ("model", "flags", "cores", "threads_per_core")
    notes = [f"{k}: baseline {recorded.get(k)!r}, here {current.get(k)!r}" for k in keys
             if recorded.get(k) != current.get(k)]
    for lib in ("torch", "transformers", "onnxruntime"):
        was, now = recorded.get("versions", {}).get(lib), current.get("versions", {}).get(lib)
        if was != now:
            notes.append(f"{lib}: baseline {was}, here {now}")
    return notes
