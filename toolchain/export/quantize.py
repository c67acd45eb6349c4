"""INT8 quantization with Optimum's ORTQuantizer: dynamic, and static calibrated on training data."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from toolchain.export.config import QuantizeConfig
from toolchain.export.cpu import CpuInfo

QUANTIZED_FILE = "model_quantized.onnx"


@contextmanager
def quiet_quantizer():
    """ONNX Runtime's quantizer logs one line per tensor on the root logger; keep only errors."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def reduce_range(cfg: QuantizeConfig, cpu: CpuInfo, preset: str) -> bool:
    """7-bit weights where signed int8 weights meet an x86 CPU without VNNI, unless configured.

    There ONNX Runtime multiplies u8 activations by s8 weights with VPMADDUBSW, whose 16-bit sums can
    saturate. The avx2 preset stores weights as uint8 (u8u8 kernels widen to 16 bits first and do not
    saturate), so it keeps the full 8-bit range; measured here, 7 bits cost label agreement on test.
    """
    if cfg.reduce_range is not None:
        return cfg.reduce_range
    return preset == "avx512" and not cpu.has_vnni


def quantization_config(cfg: QuantizeConfig, preset: str, is_static: bool, cpu: CpuInfo):
    """Optimum's AutoQuantizationConfig factory for the preset, with this config's options."""
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    factory = getattr(AutoQuantizationConfig, preset)
    kwargs = {"is_static": is_static, "per_channel": cfg.per_channel}
    if is_static:
        kwargs["operators_to_quantize"] = [op.strip() for op in cfg.static_operators.split(",") if op.strip()]
    if preset in ("avx2", "avx512"):
        kwargs["reduce_range"] = reduce_range(cfg, cpu, preset)
    return factory(**kwargs)


def quantize_dynamic(source_dir: Path, source_file: str, out_dir: Path, cfg: QuantizeConfig,
                     preset: str, cpu: CpuInfo) -> Path:
    """Weights int8 ahead of time, activations quantized on the fly: no calibration data needed."""
    from optimum.onnxruntime import ORTQuantizer

    quantizer = ORTQuantizer.from_pretrained(source_dir, file_name=source_file)
    with quiet_quantizer():
        quantizer.quantize(quantization_config=quantization_config(cfg, preset, False, cpu), save_dir=out_dir)
    return out_dir / QUANTIZED_FILE


class CalibrationRows:
    """The few parts of a ``datasets.Dataset`` that ORTQuantizer.fit uses: rows of model inputs.

    Fed one example per batch, unpadded, so padding tokens never widen the calibrated ranges.
    """

    def __init__(self, features: list[dict], input_names: list[str]):
        self.rows = [{n: np.asarray(f[n], dtype=np.int64) for n in input_names if n in f} for f in features]
        self.info = SimpleNamespace(builder_name="toolchain-train-split", config_name="default")
        self.split = "train"
        self.num_rows = len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return self.num_rows


def calibration_config(cfg: QuantizeConfig, dataset):
    from optimum.onnxruntime.configuration import AutoCalibrationConfig

    if cfg.static_method == "percentile":
        return AutoCalibrationConfig.percentiles(dataset, percentile=cfg.static_percentile)
    if cfg.static_method == "entropy":
        return AutoCalibrationConfig.entropy(dataset)
    return AutoCalibrationConfig.minmax(dataset)


def quantize_static(source_dir: Path, source_file: str, out_dir: Path, cfg: QuantizeConfig, preset: str,
                    cpu: CpuInfo, features: list[dict], work_dir: Path) -> Path:
    """Weights and activations int8 with ranges calibrated on ``features`` (tokenized training examples)."""
    import onnxruntime
    from optimum.onnxruntime import ORTQuantizer

    session = onnxruntime.InferenceSession(str(source_dir / source_file), providers=["CPUExecutionProvider"])
    dataset = CalibrationRows(features, [i.name for i in session.get_inputs()])
    qconfig = quantization_config(cfg, preset, True, cpu)
    quantizer = ORTQuantizer.from_pretrained(source_dir, file_name=source_file)
    try:   # the calibration graph goes, whether or not the variant could be built (DeBERTa's cannot)
        with quiet_quantizer():
            ranges = quantizer.fit(dataset=dataset, calibration_config=calibration_config(cfg, dataset),
                                   onnx_augmented_model_name=work_dir / "augmented_model.onnx",
                                   operators_to_quantize=qconfig.operators_to_quantize)
            quantizer.quantize(quantization_config=qconfig, save_dir=out_dir, calibration_tensors_range=ranges)
    finally:
        (work_dir / "augmented_model.onnx").unlink(missing_ok=True)
    return out_dir / QUANTIZED_FILE
