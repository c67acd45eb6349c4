"""The variant builders: each writes one ONNX variant of the merged (or pruned) model into the export being
built and registers it; parity with its PyTorch model is checked where the variant is a plain export."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain.export.accuracy_gate import check_parity
from toolchain.export.job import CALIBRATION_SEED, ExportJob, parity_diff


def save_merged(job: ExportJob) -> None:
    job.model.save_pretrained(job.out / "merged", safe_serialization=True)
    job.tokenizer.save_pretrained(job.out / "merged")
    job.tokenizer.save_pretrained(job.out / "tokenizer")


def _register(job: ExportJob, name: str, path: Path) -> None:
    job.variants[name] = (str(path.parent.relative_to(job.out)), path.name)


def build_fp32(job: ExportJob) -> None:
    from toolchain.export.onnx_export import export_onnx

    _register(job, "fp32", export_onnx(job.model, job.onnx_dir("fp32"), job.task, job.cfg.opset))
    diff = parity_diff(job, "pytorch", "fp32")
    job.parity["fp32_vs_pytorch"] = diff
    check_parity("fp32", diff, job.cfg.accuracy_gate.parity_atol, "ONNX fp32 vs PyTorch")


def build_optimized(job: ExportJob) -> None:
    from toolchain.export.onnx_export import optimize_onnx

    _register(job, "optimized", optimize_onnx(job.onnx_dir("fp32"), job.onnx_dir("optimized"),
                                              job.cfg.optimize.level))
    job.parity["optimized_vs_pytorch"] = parity_diff(job, "pytorch", "optimized")


def quantize_source(job: ExportJob, pruned: bool) -> tuple[Path, str]:
    """The fp32 graph the int8 variants start from. (The ORTOptimizer graph is not used: its fused
    com.microsoft ops defeat the quantizer's shape inference in this ONNX Runtime.)"""
    name = "pruned" if pruned else "fp32"
    return job.onnx_dir(name), job.variants[name][1]


def build_int8(job: ExportJob, name: str = "int8", pruned: bool = False) -> None:
    from toolchain.export.quantize import quantize_dynamic

    source_dir, source_file = quantize_source(job, pruned)
    _register(job, name, quantize_dynamic(source_dir, source_file, job.onnx_dir(name), job.cfg.quantize,
                                          job.preset, job.cpu))


def build_int8_static(job: ExportJob) -> None:
    from toolchain.export.quantize import quantize_static

    rng = np.random.default_rng(CALIBRATION_SEED)
    train = job.splits.train
    picked = [train[i] for i in rng.permutation(len(train))[: job.cfg.quantize.static_samples]]
    features = job.task.encode(picked, job.tokenizer, None, job.run.max_length).features
    source_dir, source_file = quantize_source(job, False)
    _register(job, "int8-static", quantize_static(source_dir, source_file, job.onnx_dir("int8-static"),
                                                  job.cfg.quantize, job.preset, job.cpu, features, job.out))


def build_pruned(job: ExportJob) -> None:
    from toolchain.export.onnx_export import export_onnx
    from toolchain.export.prune import prune_and_recover, save_pruned

    job.pruned_model, job.extra["pruning"] = prune_and_recover(job)
    save_pruned(job.pruned_model, job.extra["pruning"], job.out / "pruned")
    _register(job, "pruned", export_onnx(job.pruned_model, job.onnx_dir("pruned"), job.task, job.cfg.opset))
    diff = parity_diff(job, "pruned-pytorch", "pruned")
    job.parity["pruned_vs_pruned_pytorch"] = diff
    check_parity("pruned", diff, job.cfg.accuracy_gate.parity_atol, "ONNX pruned vs pruned PyTorch")


VARIANT_BUILDERS = {
    "fp32": build_fp32,
    "optimized": build_optimized,
    "int8": build_int8,
    "int8-static": build_int8_static,
    "pruned": build_pruned,
    "pruned-int8": lambda job: build_int8(job, "pruned-int8", pruned=True),
}
