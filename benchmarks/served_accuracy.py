#!/usr/bin/env python3
"""Does the served model score what the export measured? A real server on 127.0.0.1, the test set over HTTP.

Serves the export as ``toolchain serve EXPORT_DIR`` does (auth on, a one-off key) on a free loopback port, sends every text of
the labelled file to ``/classify`` in batches, and compares the served labels and scores with the export's
own figures for the served variant (``report.json``: test accuracy, macro-F1 and, when the export fitted a
temperature, the calibrated test ECE). The served scores are the service's probabilities, so their ECE is
the calibration a client sees.

    python benchmarks/served_accuracy.py exports/abl/distill-s42 [--data FILE] [--json OUT]

Exits 1 when the served accuracy differs from the export's offline accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))   # serve_bench beside this file


def served_predictions(export_dir: Path, texts: list[str], log: Path, batch: int = 32) -> list[dict]:
    """Every text's prediction from a server on 127.0.0.1 (serve_bench's start/stop), ``batch`` texts a call."""
    import httpx

    from serve_bench import free_port, start_server, stop_server

    key, port = secrets.token_hex(16), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLCHAIN_")}
    env.update(TOOLCHAIN_EXPORT_DIR=str(export_dir.resolve()), TOOLCHAIN_API_KEYS=key, BENTOML_DO_NOT_TRACK="true",
               HF_HUB_OFFLINE="1")
    server = start_server("toolchain.serve.service:ToolchainService", env, port, log)
    try:
        predictions = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                          timeout=60) as client:
            for start in range(0, len(texts), batch):
                response = client.post("/classify", json={"texts": texts[start:start + batch]})
                response.raise_for_status()
                body = response.json()
                predictions += body["predictions"] if isinstance(body, dict) else body
        return predictions
    finally:
        stop_server(server)


def main(argv: list[str] | None = None) -> int:
    from toolchain.core.artifacts import load_export, load_run
    from toolchain.export.calibration import expected_calibration_error
    from toolchain.tasks.classification import classification_metrics

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--data", type=Path, help="labelled JSONL (default: the run's test split)")
    parser.add_argument("--json", type=Path, help="write the comparison as JSON")
    args = parser.parse_args(argv)

    report = json.loads((args.export_dir / "report.json").read_text())
    variant = report["serve_variant"]
    data = args.data or Path(load_run(load_export(args.export_dir).manifest["run_dir"]).manifest["data_files"]["test"]["path"])
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    started = time.time()
    served = served_predictions(args.export_dir, [r["text"] for r in rows],
                                args.export_dir.parent / f"{args.export_dir.name}-served.log")
    labels = list(served[0]["scores"])
    gold = np.array([labels.index(r["label"]) for r in rows])
    probs = np.array([[p["scores"][c] for c in labels] for p in served])
    metrics = classification_metrics(gold, probs.argmax(axis=-1), labels)
    result = {"export": str(args.export_dir), "variant": variant, "data": str(data), "items": len(rows),
              "seconds": round(time.time() - started, 1),
              "served": {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                         "ece": expected_calibration_error(probs, gold)}}
    if args.data is None:
        offline = report["variants"][variant]["test"]
        calibration = report.get("calibration", {}).get(variant, {}).get("main", {})
        head = "main_" if "main_accuracy" in offline else ""   # a joint model: its main head on the main test split
        result["offline"] = {"accuracy": offline[f"{head}accuracy"], "macro_f1": offline[f"{head}macro_f1"],
                             "ece": calibration.get("test_ece_after")}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if "offline" in result and abs(result["served"]["accuracy"] - result["offline"]["accuracy"]) > 1e-9:
        print("served accuracy differs from the export's offline accuracy", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
