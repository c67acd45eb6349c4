"""benchmarks/baseline.json: the latency check's reference ratios, their tolerances and the machine they came from,
one baseline per CPU family.

Speed ratios move with the CPU: int8 vs fp32 is a different number with VNNI or AMX than with AVX2
alone. So the file keeps one baseline per family (``x86_64-avx2``, ``x86_64-avx512_vnni-amx``,
``aarch64-arm64``, ...); the latency check judges every ratio against its own family's, and on a family with
none only the ratios that hold across families (the service's overhead over the same model on the
same machine), against the most recent other family's. A faster or different machine never fails it.

Written only by `toolchain bench update-baseline` (one explicit command, which replaces this family's
entry and keeps the others); read by `toolchain bench latency-check`.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

BASELINE_VERSION = 2
FAMILY_VERSION = 1   # the shape of one family's entry (and of the whole file before families)


def cpu_family(machine: dict) -> str:
    """The CPU family a machine's ratios belong to: architecture, best int8 instructions, AMX."""
    flags = set(str(machine.get("flags", "")).split(","))
    arch = machine.get("arch") or "unknown"
    if arch in ("aarch64", "arm64"):
        return f"{arch}-{'dotprod' if 'asimddp' in flags else 'neon'}"
    isa = next((name for name, needed in (("avx512_vnni", "avx512_vnni"), ("avx_vnni", "avx_vnni"),
                                          ("avx512", "avx512f"), ("avx2", "avx2")) if needed in flags), "sse")
    return f"{arch}-{isa}" + ("-amx" if "amx_int8" in flags else "")


def read_families(path: Path) -> dict[str, dict]:
    """{family: baseline} of a baseline file (a file from before families holds one, its machine's)."""
    if not path.exists():
        raise FileNotFoundError(f"latency-check baseline {path} not found; record one with: toolchain bench "
                                f"update-baseline --baseline {path}")
    document = json.loads(path.read_text(encoding="utf-8"))
    if document.get("version") == FAMILY_VERSION and "ratios" in document:
        return {cpu_family(document["machine"]): document}
    if document.get("version") != BASELINE_VERSION or not isinstance(document.get("families"), dict):
        raise ValueError(f"{path}: not a latency-check baseline of version {BASELINE_VERSION} "
                         f"(keys: {sorted(document)})")
    return document["families"]


def read_baseline(path: Path, family: str | None = None) -> dict:
    """The baseline of ``family`` (default: this machine's). Without one for it, the most recent other
    family's, marked ``same_family: False`` so the latency check judges only the ratios that hold across CPUs."""
    from toolchain.bench.machine import detect_machine

    family = family or cpu_family(detect_machine().to_dict())
    families = read_families(path)
    if family in families:
        return {**families[family], "family": family, "same_family": True}
    if not families:
        raise ValueError(f"{path}: holds no baseline; record one with: toolchain bench update-baseline")
    other = max(families, key=lambda name: families[name].get("recorded", ""))
    return {**families[other], "family": other, "same_family": False}


def previous_tolerances(path: Path) -> tuple[dict, list]:
    """Tolerances and notes of the baseline being replaced: they are reviewed decisions, kept when the
    figures are re-recorded (``--tolerance`` replaces them all)."""
    try:
        old = read_baseline(path)
    except (FileNotFoundError, ValueError):
        return {}, []
    if not old["same_family"]:
        return {}, []
    return {name: r["tolerance"] for name, r in old["ratios"].items() if "tolerance" in r}, old.get("notes", [])


def baseline_document(measured: dict, settings: dict, machine: dict, tolerances: dict, command: str) -> dict:
    """The baseline: each ratio's median, spread, figures and tolerance, and where it was measured.
    ``tolerances`` overrides the ratios' default tolerances by name."""
    from toolchain.bench.latency_check import SPECS

    ratios = {}
    for name, entry in measured.items():
        spec = SPECS[name]
        ratios[name] = {"value": round(entry["value"], 4), "tolerance": tolerances.get(name, spec.tolerance),
                        "better": spec.better, "what": spec.what,
                        "spread": [round(x, 4) for x in entry["spread"]], "repeats": entry["repeats"],
                        "figures": {k: round(v, 3) for k, v in entry["figures"].items()}}
    return {"version": FAMILY_VERSION, "recorded": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": command, "machine": machine, "load_average_1min": round(os.getloadavg()[0], 2),
            "settings": settings, "ratios": ratios}


def write_baseline(path: Path, document: dict) -> None:
    """Store ``document`` as its machine's family's baseline, keeping the other families'."""
    from toolchain.core.artifacts import write_json

    try:
        families = read_families(path)
    except (FileNotFoundError, ValueError):
        families = {}
    entry = {k: v for k, v in document.items() if k not in ("family", "same_family")}
    families[cpu_family(document["machine"])] = entry
    write_json(path, {"version": BASELINE_VERSION, "families": dict(sorted(families.items()))})


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
