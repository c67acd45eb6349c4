#!/usr/bin/env python3
"""What each accuracy lever contributes on PhraseBank allagree, 3 seeds each, with its cost in training minutes.

Every lever is the ``sentiment-full`` preset plus a few overrides (``LEVERS``); each seed is its own run dir
``runs/abl/LEVER/seed-S`` and each lever a seed group (``seeds.json``), so ``toolchain compare`` and
``toolchain ensemble`` read them directly. Every run is also scored on SEntFiN test (out of domain, never
trained on). ``export`` compresses a lever's runs with the export preset (int8 through the accuracy gate,
temperature fitted on dev) and reads the served variant's test metrics and calibration error from each report.

    python benchmarks/ablation.py pretrain                          # DAPT base: runs/abl/pretrain/model
    python benchmarks/ablation.py train --levers baseline eda dapt --jobs 2
    python benchmarks/ablation.py ensemble --name baseline3 --members baseline    # the teacher of distill
    python benchmarks/ablation.py ensemble --name dapt3 --members dapt            # the teacher of all
    python benchmarks/ablation.py train --levers distill all        # teacher: the ensemble's members
    python benchmarks/ablation.py export --levers baseline distill
    python benchmarks/ablation.py table                             # results/ablation.{json,md}

The teacher round (110M MPNet teachers, one seed each, and the 22M students distilled from them):

    python benchmarks/ablation.py train --levers mpnet-teacher topic-mpnet-teacher 50agree-mpnet-teacher
    python benchmarks/ablation.py train --levers baseline distill-mpnet distill-mpnet-sentfin topic-distill-mpnet \\
        joint-distill-mpnet 50agree-distill-mpnet
    python benchmarks/ablation.py export --levers distill-mpnet joint-distill-mpnet topic-distill-mpnet ...

A lever whose run dirs are not here keeps the figures recorded for it in results/ablation.json, marked
"earlier round" in the table.

Each training is one process with one thread (``--jobs 2`` runs two at once on two cores).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from toolchain.core.artifacts import atomic_write_text
from update_scenario import data_root, mean_std, run_logged

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "abl"
EXPORTS = ROOT / "exports" / "abl"
RESULTS = ROOT / "benchmarks" / "results"
DAPT = RUNS / "pretrain" / "model"
UNLABELED = ROOT / "runs" / "unlabeled-finance.jsonl"                   # unlabeled_text.py --tweets -1
UNLABELED_SENTFIN = ROOT / "runs" / "unlabeled-finance-sentfin.jsonl"   # ... --sentfin -1 (SEntFiN train texts)
UNLABELED_50AGREE = ROOT / "runs" / "unlabeled-finance-50agree.jsonl"   # ... excluding the 50agree splits
UNLABELED_NOTWEETS = ROOT / "runs" / "unlabeled-finance-notweets.jsonl" # ... --tweets 0 (the joint run has them)
UNLABELED_ARGS = {UNLABELED: ["--tweets", "-1"], UNLABELED_SENTFIN: ["--tweets", "-1", "--sentfin", "-1"],
                  UNLABELED_NOTWEETS: ["--tweets", "0"]}
SEEDS = (42, 43, 44)


def teacher(ensemble: str) -> str:
    """The comma list of an ensemble's member runs (written by the ``ensemble`` step)."""
    path = RUNS / f"ensemble-{ensemble}.json"
    if not path.is_file():
        raise SystemExit(f"{path}: run `ensemble --name {ensemble} --members ...` first")
    return ",".join(json.loads(path.read_text())["runs"])


# lever -> (preset, overrides); callables are resolved when the lever is trained (its inputs exist by then)
LEVERS = {
    "baseline": ("sentiment-full", []),
    "eda": ("sentiment-full", ["augment.method=eda", "augment.copies=1", "augment.p=0.1"]),
    "mlm": ("sentiment-full", ["augment.method=mlm", "augment.copies=1", "augment.p=0.15", f"augment.mlm_model={DAPT}"]),
    "fgm": ("sentiment-fgm", []),
    "lora": ("sentiment-lora", []),
    "dapt": ("sentiment-full", [f"model.base={DAPT}"]),
    "distill": ("sentiment-distill", [lambda: f"distill.teacher={teacher('baseline3')}", f"distill.unlabeled={UNLABELED}"]),
    "all": ("sentiment-distill", [f"model.base={DAPT}", "augment.method=eda", "augment.copies=1", "augment.p=0.1",
                                  lambda: f"distill.teacher={teacher('dapt3')}", f"distill.unlabeled={UNLABELED}"]),
    # the 50agree splits (all PhraseBank sentences; 3,870 train, 483 dev, 483 test): the packaged base and DAPT
    "50agree": ("sentiment-50agree", []),
    "50agree-dapt": ("sentiment-50agree", [f"model.base={DAPT}"]),
    # the 110M MPNet teachers (one seed each) and the 22M MiniLM students distilled from them
    "mpnet-teacher": ("sentiment-mpnet", []),
    "distill-mpnet": ("sentiment-student", [f"distill.teacher={RUNS / 'mpnet-teacher' / 'seed-42'}",
                                            f"distill.unlabeled={UNLABELED}"]),
    "distill-mpnet-sentfin": ("sentiment-student", [f"distill.teacher={RUNS / 'mpnet-teacher' / 'seed-42'}",
                                                    f"distill.unlabeled={UNLABELED_SENTFIN}"]),
    "50agree-mpnet-teacher": ("sentiment-50agree-mpnet", []),
    "50agree-distill-mpnet": ("sentiment-50agree-student",
                              [f"distill.teacher={RUNS / '50agree-mpnet-teacher' / 'seed-42'}",
                               f"distill.unlabeled={UNLABELED_50AGREE}"]),
    "topic": ("topic-full", []),
    "topic-mpnet-teacher": ("topic-mpnet", []),
    "topic-distill-mpnet": ("topic-student", [f"distill.teacher={RUNS / 'topic-mpnet-teacher' / 'seed-42'}"]),
    "joint": ("news-topic-sentiment", []),
    "joint-distill-mpnet": ("news-topic-sentiment-student",
                            [f"distill.teacher={RUNS / 'mpnet-teacher' / 'seed-42'}",
                             f"distill.topic_teacher={RUNS / 'topic-mpnet-teacher' / 'seed-42'}",
                             f"distill.unlabeled={UNLABELED_NOTWEETS}"]),
}
# what a lever is scored on: PhraseBank allagree (sentiment), 50agree, the topic tweets, or both heads (joint)
KIND = {**{lever: "sentiment" for lever in LEVERS}, "50agree": "50agree", "50agree-dapt": "50agree",
        "50agree-mpnet-teacher": "50agree", "50agree-distill-mpnet": "50agree", "topic": "topic",
        "topic-mpnet-teacher": "topic", "topic-distill-mpnet": "topic", "joint": "joint", "joint-distill-mpnet": "joint"}
# the lever each one is compared with (paired bootstrap on the same test items)
BASELINE = {"sentiment": "baseline", "50agree": "50agree", "topic": "topic", "joint": "joint"}
TEACHERS = ("mpnet-teacher", "50agree-mpnet-teacher", "topic-mpnet-teacher")   # one seed each (42)


def resolved(lever: str) -> tuple[str, list[str]]:
    preset, overrides = LEVERS[lever]
    return preset, [o() if callable(o) else o for o in overrides]


def sentfin() -> Path:
    return data_root() / "sentfin" / "test.jsonl"


def train_one(lever: str, seed: int) -> None:
    out = RUNS / lever / f"seed-{seed}"
    if not (out / "metrics.json").is_file():
        preset, overrides = resolved(lever)
        run_logged(["toolchain", "train", "--config", preset, f"output_dir={out}", f"train.seed={seed}", *overrides],
                   ROOT / "logs" / f"abl-{lever}-s{seed}.log")
    if KIND[lever] in ("sentiment", "50agree") and not (out / "sentfin.json").is_file():
        run_logged(["toolchain", "evaluate", str(out), "--data", str(sentfin()), "--json", str(out / "sentfin.json")],
                   ROOT / "logs" / f"abl-{lever}-s{seed}-sentfin.log")


def summarize_group(lever: str) -> None:
    from toolchain.core.artifacts import GROUP_FILE
    from toolchain.train.seeds import summarize

    runs = sorted(str(p.parent) for p in (RUNS / lever).glob("seed-*/metrics.json"))
    if runs:
        (RUNS / lever / GROUP_FILE).write_text(json.dumps(summarize(runs), indent=2) + "\n")


def ensemble(name: str, members: list[str]) -> None:
    """Average the members' probabilities on allagree test and on SEntFiN: runs/abl/ensemble-NAME.json."""
    runs = sorted(str(p.parent) for m in members for p in (RUNS / m).glob("seed-*/metrics.json"))
    result = {"members": members, "runs": runs}
    for split, data in (("test", None), ("sentfin", sentfin())):
        out = RUNS / f"ensemble-{name}-{split}.json"
        cmd = ["toolchain", "ensemble", *runs, "--json", str(out)] + (["--data", str(data)] if data else [])
        run_logged(cmd, ROOT / "logs" / f"abl-ensemble-{name}-{split}.log")
        result[split] = json.loads(out.read_text())["ensemble"]
    (RUNS / f"ensemble-{name}.json").write_text(json.dumps(result, indent=2) + "\n")


def export_one(lever: str, seed: int) -> None:
    out = EXPORTS / f"{lever}-s{seed}"
    if not (out / "report.json").is_file():
        run_logged(["toolchain", "export", str(RUNS / lever / f"seed-{seed}"), "--output", str(out), "latency.rounds=5"],
                   ROOT / "logs" / f"abl-export-{lever}-s{seed}.log")


def served_row(lever: str) -> dict:
    """The served variant's test metrics, ECE (before / after temperature) and one-thread batch-1 latency of each
    exported seed (a joint model: each head's figures)."""
    row = {"variant": [], "acc": [], "f1": [], "wf1": [], "topic_acc": [], "topic_f1": [], "topic_wf1": [],
           "ece_before": [], "ece_after": [], "temperature": [], "b1_ms": []}
    for report_file in sorted(EXPORTS.glob(f"{lever}-s[0-9]*/report.json")):   # not distill-mpnet-sentfin's
        report = json.loads(report_file.read_text())
        variant = report["serve_variant"]
        test = report["variants"][variant]["test"]
        row["variant"].append(variant)
        for short, key in HEADS[KIND[lever]]:
            if key in test:
                row[short].append(test[key])
        calibration = report.get("calibration", {}).get(variant, {}).get("main", {})
        for key, name in (("ece_before", "test_ece_before"), ("ece_after", "test_ece_after"), ("temperature", "temperature")):
            if name in calibration:
                row[key].append(calibration[name])
        layout = (report.get("layout") or {}).get("by_threads", {}).get("1")
        if layout:
            row["b1_ms"].append(layout["b1_ms"])
    return row


HEADS = {"sentiment": [("acc", "accuracy"), ("f1", "macro_f1")], "50agree": [("acc", "accuracy"), ("f1", "macro_f1")],
         "topic": [("acc", "accuracy"), ("f1", "macro_f1"), ("wf1", "weighted_f1")],
         "joint": [("acc", "main_accuracy"), ("f1", "main_macro_f1"), ("topic_acc", "topic_accuracy"),
                   ("topic_f1", "topic_macro_f1"), ("topic_wf1", "topic_weighted_f1")]}


def test_figures(metrics: dict, kind: str) -> dict:
    test = metrics["test"]
    flat = dict(test)
    for head, m in test.get("heads", {}).items():   # a joint run: each head's figures
        flat.update({f"{head}_{k}": v for k, v in m.items() if isinstance(v, float)})
    return {short: flat[key] for short, key in HEADS[kind] if key in flat}


def machine_name() -> str:
    """The CPU a row was measured on, e.g. "AMD EPYC (2 cores; avx512f,avx512_vnni,avx512_bf16,avx2)"."""
    from toolchain.bench.machine import detect_machine

    m = detect_machine()
    return f"{m.model} ({m.cores:g} cores; {m.isa_summary()})"


def collect() -> dict:
    earlier = json.loads((RESULTS / "ablation.json").read_text()) if (RESULTS / "ablation.json").is_file() else {}
    before = earlier.get("levers", {})
    machine = machine_name()
    rows = {key: r for key, r in before.items() if key not in LEVERS}   # rows kept from rounds before those
    for lever in LEVERS:
        runs = sorted((RUNS / lever).glob("seed-*/metrics.json"))
        if not runs:
            if lever in before:   # measured in an earlier round; its run dirs are not here
                rows[lever] = {**before[lever], "earlier_round": True}
            continue
        kind = KIND[lever]
        row = {"kind": kind, "lever": lever, "machine": machine, "run_ids": [], "seeds": [], "sf_acc": [],
               "sf_f1": [], "train_minutes": [], **{short: [] for short, _ in HEADS[kind]}}
        for metrics_file in runs:
            raw = metrics_file.read_bytes()
            row["run_ids"].append(hashlib.sha256(raw).hexdigest()[:16])
            metrics = json.loads(raw)
            row["seeds"].append(int(metrics_file.parent.name.split("-")[1]))
            for short, value in test_figures(metrics, kind).items():
                row[short].append(value)
            row["train_minutes"].append(metrics["train"]["wall_seconds"] / 60)
            sf_file = metrics_file.parent / "sentfin.json"
            if sf_file.is_file():
                sf = json.loads(sf_file.read_text())
                row["sf_acc"].append(sf["accuracy"])
                row["sf_f1"].append(sf["macro_f1"])
            passes = (metrics.get("distill") or {}).get("teacher_passes")
            if passes:
                row.setdefault("teacher_passes", []).append(passes)
        row["overrides"] = resolved_safely(lever)
        row["served"] = served_row(lever)
        row["versus"] = versus_baseline(lever)
        rows[lever] = row
        old = before.get(lever)
        if old and not set(old.get("run_ids", [])) & set(row["run_ids"]):   # another round's runs: kept beside
            rows[f"{lever}@{short_machine(old.get('machine', 'unrecorded machine'))}"] = {
                **old, "lever": lever, "earlier_round": True}
    ensembles = {p.stem.removeprefix("ensemble-"): json.loads(p.read_text())
                 for p in sorted(RUNS.glob("ensemble-*.json")) if p.stem.count("-") == 1}
    for name, e in earlier.get("ensembles", {}).items():
        ensembles.setdefault(name, {**e, "earlier_round": True})
    return {"machine": machine, "levers": rows, "ensembles": ensembles}


def versus_baseline(lever: str) -> dict | None:
    """Paired bootstrap of the lever's seeds against its baseline's on the same test items (PyTorch test
    predictions, seed-averaged accuracy); None where either side's runs are not here or the run has two heads."""
    from toolchain.train.comparison import paired_bootstrap

    base = BASELINE[KIND[lever]]
    mine = sorted(str(p.parent) for p in (RUNS / lever).glob("seed-*/test_predictions.json"))
    theirs = sorted(str(p.parent) for p in (RUNS / base).glob("seed-*/test_predictions.json"))
    if lever == base or not mine or not theirs:
        return None
    try:
        return {"baseline": base, **paired_bootstrap(theirs, mine, resamples=10000)}
    except Exception as exc:   # e.g. tested on another test file: say so in the table
        return {"baseline": base, "error": str(exc)}


def resolved_safely(lever: str) -> list[str]:
    try:
        return resolved(lever)[1]
    except SystemExit:
        return [o if isinstance(o, str) else "distill.teacher=(ensemble members)" for o in LEVERS[lever][1]]


def cell(values: list[float]) -> str:
    return mean_std(values) if values else "-"


def versus_cell(r: dict) -> str:
    v = r.get("versus")
    if not v:
        return "-"
    if "error" in v:
        return f"n/a ({v['error'][:40]})"
    low, high = v["ci95"]
    return f"{100 * v['difference']:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] p={v['p_value']:.3f}"


def minutes(r: dict) -> str:
    return f"{statistics.median(r['train_minutes']):.1f}" if r.get("train_minutes") else "-"


def earlier_label(r: dict) -> str | None:
    """ "earlier round, MACHINE" for a row of an earlier round, None for this round's."""
    if not r.get("earlier_round"):
        return None
    return f"earlier round, {short_machine(r['machine'])}" if r.get("machine") else "earlier round"


def name_cell(key: str, r: dict) -> str:
    label = earlier_label(r)
    return r.get("lever", key) + (f" ({label})" if label else "")


def row_order(key: str, r: dict) -> tuple[int, int]:
    """LEVERS order; a lever's rows from earlier rounds just before its row from this one."""
    lever = r.get("lever", key)
    return list(LEVERS).index(lever) if lever in LEVERS else len(LEVERS), 0 if r.get("earlier_round") else 1


def rows_of(result: dict, lever: str) -> list[str]:
    """The keys of a lever's rows: this round's first, then earlier rounds' (``lever@machine``); ``[lever]`` when
    it has none (its targets then read "not run")."""
    keys = sorted((k for k, r in result["levers"].items() if r.get("lever", k) == lever),
                  key=lambda k: result["levers"][k].get("earlier_round", False))
    return keys or [lever]


def round_label(result: dict, key: str) -> str:
    label = earlier_label(result["levers"].get(key, {}))
    return f" [{label}]" if label else ""


def short_machine(machine: str) -> str:
    """ "Intel(R) Xeon(R) Processor (2 cores; ...,amx_bf16,...)" -> "Intel Xeon, AMX" """
    name = "AMD EPYC" if "AMD" in machine else "Intel Xeon" if "Xeon" in machine else machine.split(" (")[0]
    if "; " not in machine:   # recorded without its instruction sets
        return name
    isa = machine.split("; ")[-1]
    best = next(label for flag, label in (("amx", "AMX"), ("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"),
                                          ("", "AVX2")) if flag in isa)
    return f"{name}, {best}"


COLUMNS = {
    "sentiment": ("PhraseBank acc | macro-F1 | served acc | served macro-F1 | served ECE raw -> calibrated | "
                  "SEntFiN acc | SEntFiN macro-F1", ("acc", "f1"), ("acc", "f1"), True),
    "50agree": ("50agree acc | macro-F1 | served acc | served macro-F1 | served ECE raw -> calibrated | SEntFiN acc | "
                "SEntFiN macro-F1", ("acc", "f1"), ("acc", "f1"), True),
    "topic": ("topic acc | macro-F1 | weighted-F1 | served acc | served macro-F1 | served weighted-F1 | served ECE raw "
              "-> calibrated", ("acc", "f1", "wf1"), ("acc", "f1", "wf1"), False),
    "joint": ("sentiment acc | sentiment macro-F1 | topic acc | topic macro-F1 | topic weighted-F1 | served sentiment "
              "acc | served topic acc | served topic weighted-F1 | served ECE raw -> calibrated",
              ("acc", "f1", "topic_acc", "topic_f1", "topic_wf1"), ("acc", "topic_acc", "topic_wf1"), False),
}


def table(result: dict) -> str:
    out = []
    for kind, (header, trained, served, sentfin) in COLUMNS.items():
        levers = dict(sorted(((k, r) for k, r in result["levers"].items() if KIND.get(r.get("lever", k)) == kind),
                             key=lambda kr: row_order(*kr)))
        if not levers:
            continue
        width = header.count("|") + 1 + 5
        lines = [f"| lever | seeds | {header} | vs {BASELINE[kind]}: points [95% CI] p | train min (median) | "
                 f"served batch-1 ms (1 thread) |", "|" + "---|" * width]
        for lever, r in levers.items():
            s_ = r.get("served", {})
            ece = f"{cell(s_['ece_before'])} -> {cell(s_['ece_after'])}" if s_.get("ece_after") else "-"
            cells = [cell(r.get(k, [])) for k in trained] + [cell(s_.get(k, [])) for k in served] + [ece]
            if sentfin:
                cells += [cell(r.get("sf_acc", [])), cell(r.get("sf_f1", []))]
            b1 = f"{statistics.median(s_['b1_ms']):.2f}" if s_.get("b1_ms") else "-"
            variants = sorted(set(s_.get("variant", [])))
            serves = f" (serves {'/'.join(variants)})" if any("int8" not in v for v in variants) else ""
            lines.append(f"| {name_cell(lever, r)}{serves} | {len(r['seeds'])} | {' | '.join(cells)} | "
                         f"{versus_cell(r)} | {minutes(r)} | {b1} |")
        out.append(f"### {kind}\n\n" + "\n".join(lines))
    ens = [f"| ensemble {name}{' (earlier round)' if e.get('earlier_round') else ''} ({len(e['runs'])} runs: "
           f"{'+'.join(e['members'])}) | {100 * e['test']['accuracy']:.2f} | {100 * e['test']['macro_f1']:.2f} | "
           f"{100 * e['sentfin']['accuracy']:.2f} | {100 * e['sentfin']['macro_f1']:.2f} |"
           for name, e in result["ensembles"].items()]
    if ens:
        out.append("### ensembles (PyTorch, allagree test)\n\n| ensemble | acc | macro-F1 | SEntFiN acc | SEntFiN macro-F1 |\n"
                   "|---|---|---|---|---|\n" + "\n".join(ens))
    return "\n\n".join(out)


def mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def figure(result: dict, lever: str, key: str, served_first: bool = True) -> tuple[float | None, str]:
    """(mean over seeds, where from): the served int8 figure where the lever was exported, else PyTorch's."""
    r = result["levers"].get(lever)
    if not r:
        return None, "not run"
    served = mean(r.get("served", {}).get(key, []))
    if served_first and served is not None:
        return served, f"served {'/'.join(sorted(set(r['served']['variant'])))}, {len(r['served'][key])} seed(s)"
    value = mean(r.get(key, []))
    return value, (f"PyTorch, {len(r.get(key, []))} seed(s)" if value is not None else "not measured")


def verdict(name: str, value: float | None, target: float, source: str, above: bool = True) -> str:
    if value is None:
        return f"| {name} | {target:g} | - | not measured ({source}) |"
    met = value >= target if above else value <= target
    gap = value - target
    return f"| {name} | {target:g} | {value:.4f} ({source}) | {'met' if met else 'not met'} by {abs(gap):.4f} |"


def targets(result: dict) -> str:
    """Each target of the teacher round, met or not and by how much (fractions, not percent)."""
    rows = []
    for name, lever, key, target in (
            ("MPNet teacher allagree accuracy", "mpnet-teacher", "acc", 0.98),
            ("MPNet teacher topic accuracy", "topic-mpnet-teacher", "acc", 0.92),
            ("MPNet teacher topic weighted-F1", "topic-mpnet-teacher", "wf1", 0.92),
            ("sentiment student allagree accuracy", "distill-mpnet", "acc", 0.975),
            ("sentiment student allagree macro-F1", "distill-mpnet", "f1", 0.965),
            ("sentiment student 50agree accuracy", "50agree-distill-mpnet", "acc", 0.875),
            ("topic student accuracy", "topic-distill-mpnet", "acc", 0.91),
            ("topic student weighted-F1", "topic-distill-mpnet", "wf1", 0.91)):
        for k in rows_of(result, lever):
            value, source = figure(result, k, key)
            rows.append(verdict(name + round_label(result, k), value, target, source))
    for name, lever, target in (("MPNet teacher SEntFiN macro-F1 (no SEntFiN labels)", "mpnet-teacher", 0.80),
                                ("sentiment student SEntFiN macro-F1 (no SEntFiN labels)", "distill-mpnet", 0.78),
                                ("... with SEntFiN train texts as unlabeled text", "distill-mpnet-sentfin", 0.78)):
        for k in rows_of(result, lever):
            value, source = figure(result, k, "sf_f1", served_first=False)
            rows.append(verdict(name + round_label(result, k), value, target, source))
    for k in rows_of(result, "distill-mpnet"):
        ece, source = figure(result, k, "ece_after")
        ece = None if source.startswith("PyTorch") else ece
        rows.append(verdict("sentiment student served ECE (calibrated)" + round_label(result, k), ece, 0.02, source,
                            above=False))
    for jk in rows_of(result, "joint-distill-mpnet"):
        machine = result["levers"].get(jk, {}).get("machine")
        for head, key in (("sentiment", "acc"), ("topic", "topic_acc")):
            joint, source = figure(result, jk, key)
            single_lever = "distill-mpnet" if head == "sentiment" else "topic-distill-mpnet"
            same = [k for k in rows_of(result, single_lever) if result["levers"].get(k, {}).get("machine") == machine]
            single, _ = figure(result, same[0] if same else single_lever, "acc")
            gap = None if joint is None or single is None else joint - single
            rows.append(verdict(f"joint student {head} head minus its single-task student (same round)"
                                + round_label(result, jk), gap, -0.005, source))
    cost_file = RESULTS / "topic_sentiment_students.json"   # topic_sentiment.py --out results/topic_sentiment_students
    cost = json.loads(cost_file.read_text())["cost"] if cost_file.is_file() else {}
    for bs in ("1", "32"):
        ratio = cost.get(f"ratio_b{bs}", {}).get("joint_vs_sentiment")
        rows.append(verdict(f"joint student served cost per text over sentiment alone, {bs} text(s) a call", ratio,
                            1.15, "topic_sentiment_students.json, interleaved" if ratio else "not measured",
                            above=False))
    return "| target | bound | measured | verdict |\n|---|---|---|---|\n" + "\n".join(rows)


def page(result: dict, text: str) -> str:
    """benchmarks/results/ablation.md (RESULTS.md takes it as its "Accuracy levers" section)."""
    levers = "\n".join(f"- `{name}`: `{LEVERS[name][0]}` {' '.join(f'`{o}`' for o in r['overrides'])}".rstrip()
                       for name, r in result["levers"].items() if name in LEVERS).replace(f"{ROOT}/", "")
    machine = short_machine(result["machine"])
    return f"""# Accuracy levers

PhraseBank allagree (frozen splits: 1,800 train, 225 dev, 240 test; one test sentence = 0.42 points; the
`50agree` rows train and test on the 50agree splits instead: 3,870 / 483 / 483) and SEntFiN test (out of
domain, never trained on). Each lever is the `sentiment-full` recipe plus its overrides, trained
with seeds 42, 43 and 44 (mean ± sample std over the seeds, in %). "served int8" is the export's served
variant (`toolchain export`, default preset: int8 through the accuracy gate, temperature fitted on dev) on
the same test set (a row whose export serves another variant, because the gate refused int8, names it);
ECE is its expected calibration error (15 bins) before and after the temperature.
Training minutes are wall time per run, one thread each, two runs at a time on 2 cores (when measured
here: up to three, with exports and tests beside them at times, so they are upper bounds). Reproduce with
`python benchmarks/ablation.py` (steps in its `--help`).

The teacher round: `mpnet-teacher`, `50agree-mpnet-teacher` and `topic-mpnet-teacher` are the 110M MPNet teachers
(one seed, bf16 autocast where the CPU has native bf16); the `*distill-mpnet*` students are the 22M MiniLM
distilled from them (their teacher logits read from the cache after the first seed). A row whose run dirs are
here was trained on this table's machine ({machine}); a row marked "earlier round" was measured in an earlier
round on the machine it names, its run dirs are not here, and its figures (its paired figure too, made against
the baseline of its own round) are kept as recorded. "vs baseline" is the paired bootstrap (10,000 resamples of
the test items, seed-averaged accuracy, PyTorch test predictions) against the baseline lever's seeds trained in
the same round.
Served batch-1 latency is the export's one-thread figure, measured while other trainings ran (an upper bound).

{levers}

{text}
"""


def write_unlabeled(levers: list[str]) -> None:
    """The unlabeled files the levers name, written by unlabeled_text.py where missing."""
    args = {**UNLABELED_ARGS, UNLABELED_50AGREE: ["--tweets", "-1", "--exclude", *(
        str(data_root() / "financial_phrasebank" / "splits" / "50agree" / f"{split}.jsonl")
        for split in ("train", "dev", "test"))]}
    for lever in levers:
        for path, extra in args.items():
            if any(str(path) in o for o in LEVERS[lever][1] if isinstance(o, str)) and not path.is_file():
                subprocess.check_call([sys.executable, str(ROOT / "benchmarks" / "unlabeled_text.py"), "--output",
                                       str(path), *extra])
    if any(lever in ("distill", "all") for lever in levers) and not UNLABELED.is_file():
        subprocess.check_call([sys.executable, str(ROOT / "benchmarks" / "unlabeled_text.py"), "--output",
                               str(UNLABELED), *UNLABELED_ARGS[UNLABELED]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("pretrain", "train", "ensemble", "export", "table"))
    parser.add_argument("--levers", nargs="+", default=["baseline"], choices=list(LEVERS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--name", help="ensemble step: its name (baseline3 and dapt3: the teachers of distill and all)")
    parser.add_argument("--members", nargs="+", default=[], help="ensemble step: levers whose seeds it averages")
    args = parser.parse_args(argv)
    if args.step == "pretrain" and not (DAPT / "config.json").is_file():
        run_logged(["toolchain", "pretrain", "--config", "pretrain-finance-news", f"output_dir={DAPT.parent}"],
                   ROOT / "logs" / "abl-pretrain.log")
    if args.step == "train":
        write_unlabeled(args.levers)
    jobs = [(lever, seed) for lever in args.levers for seed in (args.seeds[:1] if lever in TEACHERS else args.seeds)]
    if args.step in ("train", "export"):
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda job: (train_one if args.step == "train" else export_one)(*job), jobs))
        for lever in args.levers:
            summarize_group(lever)
    if args.step == "ensemble":
        if not args.name or not args.members:
            parser.error("ensemble: needs --name and --members")
        ensemble(args.name, args.members)
    result = collect()
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = table(result) + "\n\n### targets of the teacher round\n\n" + targets(result)
    # written whole and then renamed: two steps running at once (one training, one exporting) never read half a file
    atomic_write_text(RESULTS / "ablation.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(RESULTS / "ablation.md", page(result, text))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
