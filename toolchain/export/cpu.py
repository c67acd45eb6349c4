"""Which int8 preset this CPU can run: arm64, avx2, avx512 or avx512_vnni, detected at run time."""
from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from toolchain.config import ConfigError

# preset -> /proc/cpuinfo flags it needs (x86); ordered from most to least capable
X86_PRESETS = (("avx512_vnni", {"avx512f", "avx512_vnni"}), ("avx512", {"avx512f"}), ("avx2", {"avx2"}))


@dataclass
class CpuInfo:
    machine: str
    isa: str | None        # best preset the CPU runs, None when it runs none
    flags: frozenset

    @property
    def has_vnni(self) -> bool:
        return "avx512_vnni" in self.flags or "avx_vnni" in self.flags

    def runnable(self) -> list[str]:
        if self.machine in ("arm64", "aarch64"):
            return ["arm64"]
        return [name for name, needed in X86_PRESETS if needed <= self.flags]


def cpu_flags(cpuinfo: str) -> frozenset:
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def detect_cpu(cpuinfo_path: str = "/proc/cpuinfo", machine: str | None = None) -> CpuInfo:
    machine = (machine or platform.machine()).lower()
    path = Path(cpuinfo_path)
    flags = cpu_flags(path.read_text(errors="replace")) if path.exists() else frozenset()
    info = CpuInfo(machine, None, flags)
    runnable = info.runnable()
    info.isa = runnable[0] if runnable else None
    return info


def choose_preset(requested: str, cpu: CpuInfo) -> str:
    """The quantization preset to use: the detected one for 'auto', else the requested one if this CPU runs it."""
    if requested == "auto":
        if cpu.isa is None:
            raise ConfigError(f"quantize.isa=auto: this CPU ({cpu.machine}) has none of arm64/avx2/avx512; "
                              "int8 quantization needs one of them (drop the int8 variants from 'variants')")
        return cpu.isa
    if requested not in cpu.runnable():
        raise ConfigError(f"quantize.isa={requested!r}: this CPU ({cpu.machine}, detected "
                          f"{cpu.isa or 'no supported ISA'}) cannot run it; use quantize.isa=auto or one of: "
                          f"{', '.join(cpu.runnable()) or 'none'}")
    return requested
