"""The machine a benchmark ran on, and its peak arithmetic rate (the physical limit efficiency is measured against).

Peak rates are derived, not measured: usable cores x clock x operations per cycle per core, where the
operations per cycle follow from the widest vector ISA found in /proc/cpuinfo. Every assumption is
returned as text next to the numbers, so a reader can redo the arithmetic or disagree with it.
"""
from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

# (flags needed, fp32 FLOP/cycle/core, why): the first row whose flags are all present applies
FP32_RULES = (
    ({"avx512f"}, 64, "AVX-512: 2 FMA units x 16 fp32 lanes x 2 FLOP (multiply + add)"),
    ({"avx2", "fma"}, 32, "AVX2+FMA: 2 FMA units x 8 fp32 lanes x 2 FLOP (multiply + add)"),
    ({"avx"}, 16, "AVX without FMA: 1 add + 1 multiply unit x 8 fp32 lanes"),
    ({"asimd"}, 16, "ARM NEON: 2 FMA units x 4 fp32 lanes x 2 FLOP"),
    (set(), 8, "SSE: 1 add + 1 multiply unit x 4 fp32 lanes"),
)
# (flags needed, int8 ops/cycle/core, why); one multiply-accumulate = 2 ops
INT8_RULES = (
    ({"avx512_vnni"}, 256, "AVX-512 VNNI: vpdpbusd, 2 units x 64 u8*s8 MACs x 2 ops"),
    ({"avx_vnni"}, 128, "AVX-VNNI: vpdpbusd ymm, 2 units x 32 u8*s8 MACs x 2 ops"),
    ({"avx512bw"}, 128, "AVX-512BW without VNNI: vpmaddubsw + vpmaddwd per 64 MACs, 2 vector multiply units"),
    ({"avx2"}, 64, "AVX2 without VNNI: vpmaddubsw + vpmaddwd (2 multiply instructions) per 32 u8*s8 MACs, "
                   "2 vector multiply units -> 32 MACs x 2 ops per cycle"),
    ({"asimddp"}, 128, "ARM dot product (sdot): 2 units x 16 MACs x 2 ops x 2"),
    (set(), 32, "no int8 dot-product instructions: assumed 2x the SSE fp32 rate"),
)


@dataclass
class Machine:
    model: str
    arch: str
    cores: float              # usable cores: CPU affinity, capped by a cgroup CPU quota
    logical_cpus: int
    threads_per_core: int
    clock_mhz: float
    clock_source: str
    flags: list[str] = field(default_factory=list)
    versions: dict = field(default_factory=dict)

    def isa_summary(self) -> str:
        wanted = ("avx512f", "avx512_vnni", "avx_vnni", "avx512bw", "avx512_bf16", "amx_int8", "amx_bf16", "avx2",
                  "fma", "avx", "asimd", "asimddp")
        return ",".join(f for f in wanted if f in self.flags) or "none of avx/avx2/avx512/neon"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["flags"] = self.isa_summary()
        return data


def cpuinfo_field(text: str, name: str) -> str | None:
    match = re.search(rf"^{re.escape(name)}\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """CPUs granted by a cgroup v2 quota ('200000 100000' -> 2.0); None when unlimited or unknown."""
    try:
        quota, period = Path(path).read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def clock_mhz(cpuinfo: str) -> tuple[float, str]:
    """The highest 'cpu MHz' over cores in /proc/cpuinfo (a VM reports its nominal clock there)."""
    values = [float(v) for v in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.MULTILINE)]
    max_path = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if max_path.exists():
        return int(max_path.read_text()) / 1000, f"{max_path} (maximum, turbo included)"
    if values:
        return max(values), "/proc/cpuinfo 'cpu MHz' (no cpufreq maximum exposed: nominal clock, turbo not counted)"
    return 2000.0, "unknown clock: 2000 MHz assumed"


def library_versions() -> dict:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "onnxruntime", "optimum", "bentoml", "toolchain"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def detect_machine(cpuinfo_path: str = "/proc/cpuinfo") -> Machine:
    text = Path(cpuinfo_path).read_text(errors="replace") if Path(cpuinfo_path).exists() else ""
    from toolchain.core.hardware import cpu_flags

    flags = sorted(cpu_flags(text))
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit()
    siblings, cores_per_socket = cpuinfo_field(text, "siblings"), cpuinfo_field(text, "cpu cores")
    per_core = int(siblings) // int(cores_per_socket) if siblings and cores_per_socket else 1
    mhz, source = clock_mhz(text)
    model = cpuinfo_field(text, "model name") or platform.processor() or platform.machine()
    return Machine(model, platform.machine(), min(logical, quota) if quota else float(logical), logical,
                   max(per_core, 1), mhz, source, flags, library_versions())


def rule_for(rules: tuple, flags: set) -> tuple[int, str]:
    for needed, per_cycle, why in rules:
        if needed <= flags:
            return per_cycle, why
    raise ValueError(f"no peak-rate rule matches the CPU flags {sorted(flags)[:10]}...")


def peak_rates(machine: Machine, threads: int | None = None) -> dict:
    """Peak fp32 FLOP/s and int8 op/s of the cores a benchmark used (``threads``, at most the usable
    cores), with the assumptions that produce them."""
    flags = set(machine.flags)
    fp32, fp32_why = rule_for(FP32_RULES, flags)
    int8, int8_why = rule_for(INT8_RULES, flags)
    used = min(threads or machine.cores, machine.cores)
    physical = max(used / machine.threads_per_core, 1.0)
    hz = machine.clock_mhz * 1e6
    return {
        "fp32_flops": physical * hz * fp32, "int8_ops": physical * hz * int8,
        "fp32_per_cycle_per_core": fp32, "int8_per_cycle_per_core": int8,
        "assumptions": [
            f"CPU: {machine.model} ({machine.arch}), ISA flags {machine.isa_summary()}",
            f"cores: {machine.cores:g} usable (CPU affinity {machine.logical_cpus}, cgroup quota applied), "
            f"{machine.threads_per_core} thread(s) per core; {used:g} thread(s) used -> {physical:g} core(s) of "
            "vector units",
            f"clock: {machine.clock_mhz:.0f} MHz from {machine.clock_source}",
            f"fp32: {fp32} FLOP/cycle/core ({fp32_why})",
            f"int8: {int8} op/cycle/core ({int8_why})",
        ],
    }
