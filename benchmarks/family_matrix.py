"""The family x stage matrix: runs tests/test_families.py (tiny random BERT, RoBERTa, DistilBERT, MPNet, DeBERTa-v2
through every stage) and prints one markdown table, each cell "pass" (with what the test noted: a variant the
export skipped and why, a metric), the refusal message a family gets, or FAIL with pytest's one-line reason.

    python benchmarks/family_matrix.py [--json OUT] [-- extra pytest arguments]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FAMILIES = ("bert", "roberta", "distilbert", "mpnet", "deberta-v2")
STAGES = {"test_base_model_has_its_own_tokenizer_class": "base", "test_pretrain": "pretrain", "test_ner": "ner",
          "test_distill": "distill", "test_update": "update", "test_explain": "explain", "test_export": "export",
          "test_export_prune": "export-prune", "test_serve_classify": "serve"}
OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR) tests/test_families\.py::(\w+)\[([^\]]+)\](?: - (.*))?$")


def cell_of(test: str, params: str) -> tuple[str, str]:
    """(family, stage) of a test id: test_train[roberta-lora] -> ('roberta', 'train:lora')."""
    family = next(f for f in sorted(FAMILIES, key=len, reverse=True) if params == f or params.startswith(f + "-"))
    if test == "test_train":
        return family, "train:" + params[len(family) + 1:]
    return family, STAGES.get(test, test.removeprefix("test_"))


def run_tests(cells_file: Path, extra: list[str]) -> tuple[str, float]:
    env = {**os.environ, "FAMILY_MATRIX_JSON": str(cells_file), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "300"}   # wide: -rA's one-line reasons uncut
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "pytest", "tests/test_families.py", "-rA", "-q",
                             "-p", "no:cacheprovider", *extra], cwd=REPO, env=env, capture_output=True, text=True,
                            check=False)
    return result.stdout + result.stderr, time.time() - started


def describe(cell: dict) -> str:
    if cell["outcome"] == "refused":
        return f"refused: {cell['note']}"
    return f"pass ({cell['note']})" if cell["note"] else "pass"


def matrix(output: str, recorded: list[dict]) -> dict[tuple[str, str], str]:
    """The cells the tests recorded (a test records its cells when it passes; one test may record several, e.g.
    the export's variants), with FAIL and pytest's reason for each test that failed or errored."""
    cells = {(c["family"], c["stage"]): describe(c) for c in recorded}
    for line in output.splitlines():
        found = OUTCOME.match(line.strip())
        if not found:
            continue
        status, test, params, reason = found.groups()
        key = cell_of(test, params)
        if status != "PASSED":
            cells[key] = f"FAIL: {reason or status}"
        else:
            cells.setdefault(key, "pass")
    return cells


ORDER = ["base", *(f"train:{m}" for m in ("full", "head", "top-k", "lora", "adalora", "ia3", "fgm")), "pretrain",
         "ner", "distill", "update", "explain", "export", *(f"export:{v}" for v in ("fp32", "optimized", "int8", "int8-static")),
         "export-prune", "serve"]


def table(cells: dict[tuple[str, str], str]) -> str:
    found = {stage for _, stage in cells}
    stages = [s for s in ORDER if s in found] + sorted(found - set(ORDER))
    rows = ["| stage | " + " | ".join(FAMILIES) + " |", "|---|" + "---|" * len(FAMILIES)]
    for stage in stages:
        row = [cells.get((family, stage), "not run").replace("|", "/") for family in FAMILIES]
        rows.append(f"| {stage} | " + " | ".join(row) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="OUT", help="also write the cells as JSON")
    parser.add_argument("--log", metavar="OUT", help="also write pytest's whole output")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cells_file = Path(tmp) / "cells.json"
        output, seconds = run_tests(cells_file, args.pytest_args)
        recorded = json.loads(cells_file.read_text()) if cells_file.is_file() else []
    if args.log:
        Path(args.log).write_text(output)
    cells = matrix(output, recorded)
    summary = next((line for line in reversed(output.splitlines()) if re.search(r"\d+ (passed|failed)", line)), "")
    print(table(cells))
    print(f"\npytest: {summary.strip('= ')} (wall {seconds:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps([{"family": f, "stage": s, "cell": c} for (f, s), c in cells.items()],
                                              indent=1))
    return 0 if cells and not any(c.startswith("FAIL") for c in cells.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
