"""Hardware detection and the choices made from it: int8 preset, training precision."""
from __future__ import annotations

import pytest

SAPPHIRE_RAPIDS = ("flags : fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile "
                   "amx_int8\n")
EPYC_AVX2 = "flags : fpu sse2 avx avx2 fma\n"
GRAVITON3 = "Features : fp asimd evtstrm aes sha1 crc32 asimddp sve bf16 i8mm\n"


def cpu(tmp_path, text: str, machine: str):
    from toolchain.core.hardware import detect_cpu

    path = tmp_path / f"cpuinfo-{machine}-{len(text)}"
    path.write_text(text)
    return detect_cpu(str(path), machine=machine)


def test_features_per_cpu_family(tmp_path):
    intel, amd, arm = (cpu(tmp_path, SAPPHIRE_RAPIDS, "x86_64"), cpu(tmp_path, EPYC_AVX2, "x86_64"),
                       cpu(tmp_path, GRAVITON3, "aarch64"))
    assert intel.isa == "avx512_vnni" and {"amx_int8", "amx_bf16", "avx512_bf16", "vnni"} <= set(intel.features())
    assert intel.has_bf16 and not amd.has_bf16
    assert amd.isa == "avx2" and amd.features() == ["avx2"] and not amd.has_vnni
    assert arm.isa == "arm64" and arm.has_bf16 and {"neon", "arm_dotprod"} <= set(arm.features())
    # x86 'bf16' is not a flag name there; ARM feature names never count on x86
    assert not cpu(tmp_path, "flags : avx2 bf16\n", "x86_64").has_bf16
    assert intel.summary()["features"] == intel.features() and intel.summary()["cuda"] is None


@pytest.mark.parametrize("text, expected", [(SAPPHIRE_RAPIDS, "bf16"), (EPYC_AVX2, "fp32")])
def test_training_precision_auto_follows_the_cpu(tmp_path, monkeypatch, text, expected):
    import torch

    from toolchain.core import hardware
    from toolchain.core.hardware import precision_flags

    info = cpu(tmp_path, text, "x86_64")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "detect_cpu", lambda *a, **k: info)
    flags = precision_flags("auto")
    assert flags["resolved_precision"] == expected and flags["bf16"] == (expected == "bf16")
    assert precision_flags("fp32")["resolved_precision"] == "fp32"       # an explicit choice wins


def test_default_optimizer_is_the_fused_adamw():
    from toolchain.core.config import TrainConfig

    assert TrainConfig().optimizer == "adamw_torch_fused"
