"""How much a text's scores move when it shares a model call with other texts, per ONNX variant.

    python benchmarks/serve_drift.py --export-dir EXPORT_DIR --data TEST.jsonl [--texts 240]

Each text is scored alone, then padded together with its neighbours in calls of 8 and 32 texts
(what grouping concurrent requests into one model call would do). fp32 and graph-optimized models
give bit-identical scores (the attention mask hides the padding); a dynamically quantized model
measures its activation ranges over the whole call, so its scores move with the company they keep.
The service therefore runs such variants one text per call (TOOLCHAIN_MODEL_CALLS=auto).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from toolchain.core.artifacts import load_export  # noqa: E402
from toolchain.core.probability import softmax  # noqa: E402
from toolchain.inference.runtime import OnnxModel  # noqa: E402


def scores_of_call(model: OnnxModel, texts: list[str]) -> np.ndarray:
    return softmax(model.run(model.encoder.pad(model.encoder.tokenize(texts)))[0])


def drift(model: OnnxModel, texts: list[str]) -> dict:
    alone = np.concatenate([scores_of_call(model, [t]) for t in texts])
    row = {"variant": model.variant, "texts": len(texts), "quantizes_at_run_time": model.per_text}
    for size in (8, 32):
        grouped = np.concatenate([scores_of_call(model, texts[i:i + size]) for i in range(0, len(texts), size)])
        row[f"max_score_diff_calls_of_{size}"] = float(np.abs(grouped - alone).max())
        row[f"label_changes_calls_of_{size}"] = int((grouped.argmax(1) != alone.argmax(1)).sum())
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export-dir", required=True)
    parser.add_argument("--data", required=True, help="jsonl file with a 'text' field per line")
    parser.add_argument("--texts", type=int, default=240, help="texts scored (default 240)")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    export = load_export(args.export_dir)
    lines = Path(args.data).read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines if line.strip()][: args.texts]
    rows = [drift(OnnxModel(export, name, threads=1), texts) for name in export.variant_names()]
    for row in rows:
        print(json.dumps(row))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
