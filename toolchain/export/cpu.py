"""Which int8 preset this CPU can run: arm64, avx2, avx512 or avx512_vnni (detection in toolchain.core.hardware)."""
from __future__ import annotations

from toolchain.core.config import ConfigError
from toolchain.core.hardware import X86_PRESETS, CpuInfo, cpu_flags, detect_cpu

__all__ = ["X86_PRESETS", "CpuInfo", "cpu_flags", "detect_cpu", "choose_preset"]


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
