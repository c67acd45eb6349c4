"""ONNX export through Optimum (dynamic batch and sequence axes), loading and graph optimization."""
from __future__ import annotations

from pathlib import Path

ORT_CLASSES = {"text-classification": "ORTModelForSequenceClassification",
               "token-classification": "ORTModelForTokenClassification"}
FP32_FILE = "model.onnx"
OPTIMIZED_FILE = "model_optimized.onnx"


def export_onnx(model, out_dir: Path, task, opset: int | None) -> Path:
    """Export an in-memory transformers model (merged or pruned) to ``out_dir/model.onnx`` + config.json."""
    import warnings

    from optimum.exporters.onnx import onnx_export_from_model
    from torch.jit import TracerWarning

    with warnings.catch_warnings():  # the tracer's notes on constant masks do not apply to dynamic axes
        warnings.simplefilter("ignore", TracerWarning)
        onnx_export_from_model(model.eval(), out_dir, task=task.ort_task, opset=opset, do_validation=False)
    for extra in out_dir.iterdir():  # keep an ORTModel dir: config.json + the graph only
        if extra.name not in (FP32_FILE, "config.json"):
            extra.unlink()
    return out_dir / FP32_FILE


def session_options(threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def load_ort_model(model_dir: Path, file_name: str, task, threads: int = 0):
    """The variant as the service loads it: an Optimum ORTModel for the task, on the CPU provider."""
    import optimum.onnxruntime as ort

    cls = getattr(ort, ORT_CLASSES[task.ort_task])
    return cls.from_pretrained(model_dir, file_name=file_name, provider="CPUExecutionProvider",
                               session_options=session_options(threads))


def check_optimize_level(level: str) -> None:
    """O4 (fp16) runs only where a CUDA GPU and onnxruntime-gpu are present."""
    if level != "O4":
        return
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        from toolchain.core.config import ConfigError
        raise ConfigError("optimize.level=O4 (fp16) needs a CUDA GPU and onnxruntime-gpu; this machine has "
                          "none: use optimize.level=O1, O2 or O3")


def optimize_onnx(source_dir: Path, out_dir: Path, level: str) -> Path:
    """ORTOptimizer at an Optimum level (O1-O3 on CPU; O4 adds fp16 and needs a CUDA GPU)."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    check_optimize_level(level)
    optimizer = ORTOptimizer.from_pretrained(source_dir, file_names=[FP32_FILE])
    config = AutoOptimizationConfig.with_optimization_level(level, for_gpu=level == "O4")
    optimizer.optimize(optimization_config=config, save_dir=out_dir)
    return out_dir / OPTIMIZED_FILE
