#!/usr/bin/env python3
"""`toolchain predict` at scale: throughput per engine against the model-only ceiling, peak memory, resume after a
kill, and exactly once across 10 SIGKILLs.

The input is real finance text repeated to the asked size (200,000 rows by default): the finance-news topic tweets
(``twitter_financial_news_topic``, train + dev + test) and the SEntFiN headlines (``sentfin``, train + test), each
row labelled with its ``corpus`` and its ``repeat`` (so repeated texts are told apart), in shards of JSONL.

Parts (``--parts``, default all):

- ``throughput``: ``toolchain predict`` with each engine (local; ray where installed) on the whole input: rows/s,
  and the model-only ceiling: the served variant's rate in model calls alone (one ONNX Runtime thread; one text a
  call for a run-time int8 variant, else its length-grouped calls of up to 32 texts), on a sample of the input,
  times the usable cores. The ratio says what tokenizing, reading, masking and writing cost on top.
- ``memory``: the peak RSS of the whole process tree (the command and its workers) during the local run, per
  ``--shard-rows`` (a worker holds one shard at a time: memory is bounded by the shard size, not the input).
- ``resume``: a run SIGKILLed when half its shards are written, then the same command: how long the rerun takes
  to write its first new shard, its wall time, and the rows it had to redo (the shards in flight at the kill).
- ``kill``: 10 SIGKILLs at random moments (seeded), then a final run; every input row is, exactly once, in a
  shard or in bad-rows.jsonl.
- ``trend``: the backfill view on real dated text: every sentence of the 230 FOMC minutes (1996-2024), dated by
  its meeting (:func:`meeting_date`: the year and meeting exact, the day on the usual schedule).

Run on an idle machine (the numbers are meaningless while a training job shares the cores):

    python benchmarks/predict_bench.py --export-dir EXPORT_DIR [--topic-export-dir DIR] [--rows 200000]
    python benchmarks/predict_bench.py --export-dir EXPORT_DIR --quick      # tiny sizes: checks that it works
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolchain.core.config import data_root  # noqa: E402

PARTS = ("throughput", "memory", "resume", "kill", "trend")
CORPORA = {"topic-tweets": ["twitter_financial_news_topic/train.jsonl", "twitter_financial_news_topic/dev.jsonl",
                            "twitter_financial_news_topic/test.jsonl"],
           "sentfin": ["sentfin/train.jsonl", "sentfin/test.jsonl"]}


def corpus_texts(root: Path) -> list[tuple[str, str]]:
    texts = []
    for corpus, files in CORPORA.items():
        for name in files:
            lines = (root / name).read_text(encoding="utf-8").splitlines()
            texts += [(corpus, json.loads(line)["text"]) for line in lines if line.strip()]
    return texts


def write_input(folder: Path, rows: int, files: int = 4) -> list[Path]:
    """``rows`` rows over ``files`` JSONL files: the corpora's texts in order, repeated as often as needed."""
    texts = corpus_texts(data_root())
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"news-{i}.jsonl" for i in range(files)]
    handles = [open(path, "w", encoding="utf-8") for path in paths]
    for i in range(rows):
        corpus, text = texts[i % len(texts)]
        row = {"id": f"r{i}", "text": text, "corpus": corpus, "repeat": i // len(texts)}
        handles[i * files // rows].write(json.dumps(row) + "\n")
    for handle in handles:
        handle.close()
    return paths


FOMC = "fomc_minutes/fomc_minutes_1996_2024.one_doc_per_line.txt"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def meeting_date(index: int) -> date:
    """The FOMC minutes' documents are sorted by meeting date, 8 meetings a year 1996-2023 and 6 in 2024 (the data
    set's SOURCE.md; its texts carry no date line): the year and the meeting's number in it are exact, the day is
    placed on the usual schedule (the k-th meeting ~30 + 46k days into the year: Jan 31, Mar 17, May 2, Jun 17,
    Aug 2, Sep 17, Nov 2, Dec 18), so a date is right to the year and meeting, within about two weeks."""
    year, k = (1996 + index // 8, index % 8) if index < 224 else (2024, index - 224)
    return date(year, 1, 1) + timedelta(days=30 + 46 * k)


def dated_minutes(folder: Path, min_words: int = 6) -> Path:
    """Every sentence of the 230 FOMC minutes (1996-2024; real text) with its meeting's date."""
    documents = (data_root() / FOMC).read_text(encoding="utf-8").splitlines()
    path, n = folder / "fomc-sentences.jsonl", 0
    folder.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for index, document in enumerate(documents):
            day = meeting_date(index).isoformat()
            for sentence in SENTENCE_END.split(document.strip()):
                if len(sentence.split()) >= min_words:
                    handle.write(json.dumps({"id": f"m{index}-{n}", "text": sentence.strip(), "date": day,
                                             "meeting": index}) + "\n")
                    n += 1
    return path


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, bytes."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    family, total = {pid}, 0
    for _ in range(4):
        family |= {p for p, parent in parents.items() if parent in family}
    for member in family:
        try:
            total += int((Path(f"/proc/{member}/statm").read_text().split()[1])) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
    return total


def predict_command(args, inputs: list[Path], output: Path, engine: str = "local", extra=()) -> list[str]:
    command = [sys.executable, "-m", "toolchain.cli", "predict", args.export_dir, "--input", *map(str, inputs),
               "-o", str(output), "--engine", engine, "--shard-rows", str(args.shard_rows), "--no-progress",
               "--keep", "corpus", "--json", str(output.parent / f"{output.name}.summary.json"), *extra]
    if args.topic_export_dir:
        command += ["--topic-export-dir", args.topic_export_dir]
    return command


def run_watched(command: list[str], output: Path, kill_when=None) -> dict:
    """Run ``command``; sample the process tree's RSS; SIGKILL it once ``kill_when(shards written)`` is true."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started, peak, first_new, killed = time.perf_counter(), 0, None, False
    before = len(list((output / "shards").glob("*.parquet"))) if output.exists() else 0
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while process.poll() is None:
        peak = max(peak, tree_rss(process.pid))
        written = len(list((output / "shards").glob("*.parquet"))) if (output / "shards").exists() else 0
        if first_new is None and written > before:
            first_new = time.perf_counter() - started
        if kill_when and kill_when(written, time.perf_counter() - started):
            process.kill()
            killed = True
        time.sleep(0.2)
    log = process.stdout.read().decode(errors="replace")
    if process.returncode != 0 and not killed:
        raise SystemExit(f"{' '.join(command)} failed:\n{log[-3000:]}")
    return {"wall_s": time.perf_counter() - started, "peak_rss_mb": peak / 2**20, "first_new_shard_s": first_new,
            "killed": killed, "log": log[-2000:]}


def model_ceiling(args, inputs: list[Path], sample: int) -> dict:
    """The served variant's texts/s in model calls alone on one thread, and that times the usable cores."""
    from toolchain.core.hardware import available_cpus
    from toolchain.predict.model import load_classifier, resolve

    lines = [line for path in inputs for line in path.read_text().splitlines() if line.strip()]
    step = max(1, len(lines) // sample)   # spread over every input: the corpora differ in length
    texts = [json.loads(line)["text"] for line in lines[::step][:sample]]
    classifier = load_classifier(resolve(args.export_dir, None, args.topic_export_dir))
    classifier.infer(texts[:64])   # warm-up
    seconds = sum(classifier.infer(texts[i:i + 512]).seconds for i in range(0, len(texts), 512))
    main = getattr(classifier, "main", classifier)
    cores = available_cpus()
    return {"variant": main.variant, "calls": main.call_pattern, "sample_texts": len(texts), "one_thread_texts_per_s":
            len(texts) / seconds, "cores": cores, "ceiling_rows_per_s": cores * len(texts) / seconds}


def summary_of(output: Path) -> dict:
    return json.loads((output.parent / f"{output.name}.summary.json").read_text())


def throughput(args, inputs: list[Path], work: Path) -> dict:
    from importlib.util import find_spec

    ceiling = model_ceiling(args, inputs, 500 if args.quick else 5000)
    result = {"ceiling": ceiling, "engines": {}}
    for engine in [e for e in args.engines if e == "local" or find_spec("ray")]:
        output = work / f"out-{engine}"
        watched = run_watched(predict_command(args, inputs, output, engine), output)
        rate = summary_of(output)["this_run"]["rows_per_s"]
        result["engines"][engine] = {"rows_per_s": rate, "wall_s": watched["wall_s"], "peak_rss_mb":
                                     watched["peak_rss_mb"], "of_ceiling": rate / ceiling["ceiling_rows_per_s"]}
    return result


def memory(args, inputs: list[Path], work: Path) -> dict:
    """Peak RSS per shard size (a small input is enough: a worker holds one shard at a time)."""
    out = {}
    for rows in (args.shard_rows // 10, args.shard_rows, args.shard_rows * 4):
        output = work / f"memory-{rows}"
        extra = ["--shard-rows", str(rows)]
        out[rows] = round(run_watched(predict_command(args, inputs, output, extra=extra), output)["peak_rss_mb"], 1)
    return {"peak_rss_mb_by_shard_rows": out}


def resume(args, inputs: list[Path], work: Path, shards: int) -> dict:
    output = work / "resume"
    first = run_watched(predict_command(args, inputs, output), output, kill_when=lambda n, t: n >= shards // 2)
    done = len(list((output / "shards").glob("*.parquet")))
    second = run_watched(predict_command(args, inputs, output), output)
    return {"shards": shards, "written_at_kill": done, "killed_after_s": first["wall_s"],
            "rerun_first_new_shard_s": second["first_new_shard_s"], "rerun_wall_s": second["wall_s"],
            "rerun_rows_per_s": summary_of(output)["this_run"]["rows_per_s"]}


def exactly_once(output: Path, rows: int, inputs: list[Path]) -> dict:
    import pyarrow.dataset as ds

    table = ds.dataset(output / "shards").to_table(columns=["file", "row"])
    keys = Counter(zip(table.column("file").to_pylist(), table.column("row").to_pylist()))
    for line in (output / "bad-rows.jsonl").read_text().splitlines():
        keys[(json.loads(line)["file"], json.loads(line)["row"])] += 1
    expected = Counter()
    for path in inputs:
        expected.update((str(path), i) for i in range(sum(1 for line in open(path) if line.strip())))
    return {"rows": rows, "found": sum(keys.values()), "missing": len(expected - keys), "doubled": len(keys - expected),
            "exactly_once": keys == expected}


def kills(args, inputs: list[Path], work: Path) -> dict:
    output, rng, moments = work / "kill", random.Random(args.seed), []
    for _ in range(args.kills):
        delay = rng.uniform(1.0, args.kill_window)
        watched = run_watched(predict_command(args, inputs, output), output, kill_when=lambda n, t: t >= delay)
        moments.append({"after_s": round(delay, 2), "killed": watched["killed"],
                        "shards": len(list((output / "shards").glob("*.parquet")))})
    run_watched(predict_command(args, inputs, output), output)
    return {"kills": moments, **exactly_once(output, args.rows, inputs)}


def trend(args, work: Path) -> dict:
    path = dated_minutes(work / "fomc")
    output = work / "trend"
    command = predict_command(args, [path], output, extra=["--trend", "date", "--keep", "meeting"])
    watched = run_watched(command, output)
    return {"input": f"{path}: every sentence of the 230 FOMC minutes, dated by meeting (see meeting_date)",
            "summary": summary_of(output).get("trend"), "plot": str(output / "trend.png"), "log": watched["log"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export-dir", required=True, help="export dir (or Bento tag) to score with")
    p.add_argument("--topic-export-dir", help="a topic model's export dir beside it")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--shard-rows", type=int, default=10_000)
    p.add_argument("--engines", default="local,ray", type=lambda s: s.split(","))
    p.add_argument("--parts", default=",".join(PARTS), type=lambda s: s.split(","))
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--kill-window", type=float, default=60.0, help="kills come 1 to this many seconds into a run")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "predict")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "predict_bench.json")
    p.add_argument("--quick", action="store_true", help="tiny sizes (3,000 rows, shards of 200, 3 kills) to check "
                   "that every part works; not a measurement")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.shard_rows, args.kills, args.kill_window = 3000, 200, 3, 8.0
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    inputs = write_input(args.work / "input", args.rows)
    shards = sum(-(-sum(1 for _ in open(p)) // args.shard_rows) for p in inputs)
    results = {"rows": args.rows, "shard_rows": args.shard_rows, "quick": args.quick, "export_dir": args.export_dir,
               "input": "topic tweets + SEntFiN headlines, repeated (corpus, repeat columns)"}
    steps = {"throughput": lambda: throughput(args, inputs, args.work), "memory": lambda: memory(args, inputs[:1], args.work),
             "resume": lambda: resume(args, inputs, args.work, shards), "kill": lambda: kills(args, inputs, args.work),
             "trend": lambda: trend(args, args.work)}
    for part in [p for p in PARTS if p in args.parts]:
        results[part] = steps[part]()
        print(f"{part}: {json.dumps(results[part], indent=1, default=str)[:3000]}", flush=True)
    if not args.quick:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    ok = results.get("kill", {}).get("exactly_once", True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
