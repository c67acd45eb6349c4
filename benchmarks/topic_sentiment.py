"""Topic and sentiment in one model call vs separate models: served accuracy per head, out-of-domain
sentiment, and the served cost per text, all measured in one run.

    python benchmarks/topic_sentiment.py --sentiment EXPORT_DIR --topic EXPORT_DIR --joint EXPORT_DIR

- Accuracy: each export's served variant on its own test split(s), as the export's accuracy gate scored it through
  the serving runtime (report.json), beside the fp32 PyTorch reference.
- Out of domain: the served sentiment head (the single-task sentiment model's, the joint model's main head)
  on SEntFiN test (``${data}/sentfin/test.jsonl``; neither model trained on it).
- Cost: texts/s of each served variant through the serving runtime (its call pattern, one thread, 1 and 32
  texts per call), models interleaved in the same rounds on the same texts (half PhraseBank test sentences,
  half topic test tweets); the joint model's cost per text over the sentiment model's, and that of serving
  the two single-task models side by side (one call each per text).

Writes benchmarks/results/topic_sentiment.json and .md.

    python benchmarks/topic_sentiment.py --mode two-models --sentiment EXPORT_DIR --topic EXPORT_DIR

- Two models in one deployment (``toolchain build --topic-config``): what ``/classify`` costs per text with
  the sentiment model alone vs the sentiment model plus the topic model, as the service runs them (a
  ``TopicPair``: the two model calls of a batch one after the other, and concurrently), 1 and 32 texts per
  call, all interleaved in the same rounds on the same texts. Per text: CPU seconds of the process (the
  cost: what a loaded server pays) and wall seconds (what a lone request waits); medians over rounds and
  their ratios to sentiment alone. Writes benchmarks/results/topic_sentiment_two_models.json and .md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def served(export_dir: Path, variant: str | None = None):
    from toolchain.core.artifacts import load_export
    from toolchain.inference.runtime import OnnxModel

    info = load_export(export_dir)
    return OnnxModel(info, variant or info.serve_variant, "cpu", threads=1)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def report_rows(export_dir: Path) -> dict:
    """The served variant's and fp32 PyTorch's test metrics from the export report."""
    report = json.loads((export_dir / "report.json").read_text())
    variant = report["serve_variant"]
    keep = lambda row: {k: v for k, v in row["test"].items() if k not in ("examples", "agreement")}  # noqa: E731
    return {"variant": variant, "served": keep(report["variants"][variant]),
            "pytorch": keep(report["variants"]["pytorch"]), "gate": report["gates"][variant]["passed"]}


def sentiment_scores(model, rows: list[dict], head: str = "main") -> dict:
    """Accuracy, macro-F1 and weighted-F1 of a served head on labelled rows: the main head's label, or with
    ``head="topic"`` the topic (the topic head of a joint model, the label of a topic-only model)."""
    from toolchain.serve.classify import results
    from toolchain.tasks.classification import classification_metrics

    predicted = []
    for start in range(0, len(rows), 32):
        texts = [r["text"] for r in rows[start:start + 32]]
        output = model.infer(texts)
        served = results(texts, output.logits, output.encodings, model.labels, output.truncated)
        predicted += [p.topic.label if head == "topic" and p.topic else p.label for p in served]
    labels = sorted({r["label"] for r in rows})
    gold = np.array([labels.index(r["label"]) for r in rows])
    metrics = classification_metrics(gold, np.array([labels.index(p) for p in predicted]), labels)
    return {k: metrics[k] for k in ("accuracy", "macro_f1", "weighted_f1", "examples")}


def costs(models: dict, texts: list[str], rounds: int) -> dict:
    from toolchain.core.measure import served_rates

    rates = served_rates(models, texts, (1, 32), rounds)
    out = {name: {str(bs): {"texts_per_s": round(s["texts_per_s"], 1)} for bs, s in per.items()}
           for name, per in rates.items()}
    for bs in (1, 32):
        per_text = {name: 1.0 / rates[name][bs]["texts_per_s"] for name in rates}
        out[f"ratio_b{bs}"] = {"joint_vs_sentiment": per_text["joint"] / per_text["sentiment"]}
        if "topic" in per_text:   # without a topic export: no two-model figures
            out[f"ratio_b{bs}"].update({
                "two_models_vs_sentiment": (per_text["sentiment"] + per_text["topic"]) / per_text["sentiment"],
                "joint_vs_two_models": per_text["joint"] / (per_text["sentiment"] + per_text["topic"])})
    return out


def markdown(result: dict) -> str:
    acc = result["accuracy"]
    lines = ["# Topic and sentiment: one model call vs two models", "",
             f"Machine: {result['machine']}. Command: `{result['command']}`.", "",
             "| model | served variant | head | test accuracy | test macro-F1 | test weighted-F1 | fp32 PyTorch accuracy |",
             "|---|---|---|---|---|---|---|"]
    for name, row in acc.items():
        heads = [("main", "main_"), ("topic", "topic_")] if "topic_accuracy" in row["served"] else \
            [("topic" if name == "topic" else "main", "")]
        for head, prefix in heads:
            s, p = row["served"], row["pytorch"]
            weighted = f"{s[prefix + 'weighted_f1']:.4f}" if prefix + "weighted_f1" in s else "-"
            lines.append(f"| {name} | {row['variant']} | {head} | {s[prefix + 'accuracy']:.4f} | "
                         f"{s[prefix + 'macro_f1']:.4f} | {weighted} | {p[prefix + 'accuracy']:.4f} |")
    lines += ["", "Topic test split (4,117 tweets), served topic head recomputed here through the serving runtime:", "",
              "| model | accuracy | macro-F1 | weighted-F1 |", "|---|---|---|---|"]
    lines += [f"| {name} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {m['weighted_f1']:.4f} |"
              for name, m in result["topic_test"].items()]
    lines += ["", "SEntFiN test (out of domain, never trained on), served sentiment head:", "",
              "| model | accuracy | macro-F1 |", "|---|---|---|"]
    lines += [f"| {name} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} |" for name, m in result["sentfin"].items()]
    cost = result["cost"]
    lines += ["", f"Served cost per text ({cost['texts']} texts, {cost['rounds']} interleaved rounds, one thread):", "",
              "| texts per call | sentiment texts/s | joint texts/s | topic texts/s | joint / sentiment | "
              "two models / sentiment |", "|---|---|---|---|---|---|"]
    for bs in ("1", "32"):
        r = cost[f"ratio_b{bs}"]
        topic = cost["topic"][bs]["texts_per_s"] if "topic" in cost else "-"
        two = f"{r['two_models_vs_sentiment']:.3f}x" if "two_models_vs_sentiment" in r else "-"
        lines.append(f"| {bs} | {cost['sentiment'][bs]['texts_per_s']} | {cost['joint'][bs]['texts_per_s']} | "
                     f"{topic} | {r['joint_vs_sentiment']:.3f}x | {two} |")
    return "\n".join(lines) + "\n"


def two_model_costs(models: dict, texts: list[str], rounds: int, batch_sizes=(1, 32), seed: int = 0) -> dict:
    """{name: {batch size: per-text CPU and wall ms (medians over rounds)}} of ``infer``-able models, each round
    running every model over all ``texts`` in calls of the batch size, models in a shuffled order."""
    import random

    rng = random.Random(seed)
    for model in models.values():   # warm-up: first-call allocations are not part of serving
        model.infer(texts[:2])
    runs: dict = {name: {bs: {"cpu": [], "wall": []} for bs in batch_sizes} for name in models}
    for _ in range(rounds):
        for bs in batch_sizes:
            chunks = [texts[i:i + bs] for i in range(0, len(texts), bs)]
            order = list(models)
            rng.shuffle(order)
            for name in order:
                wall, cpu = time.perf_counter(), time.process_time()
                for chunk in chunks:
                    models[name].infer(chunk)
                runs[name][bs]["cpu"].append((time.process_time() - cpu) / len(texts))
                runs[name][bs]["wall"].append((time.perf_counter() - wall) / len(texts))
    return {name: {str(bs): {f"{kind}_ms_per_text": round(1000 * float(np.median(values)), 3)
                             for kind, values in per.items()} for bs, per in by_bs.items()}
            for name, by_bs in runs.items()}


def two_models_markdown(result: dict) -> str:
    cost = result["cost"]
    lines = ["# Sentiment alone vs sentiment + topic (two models in one deployment)", "",
             f"Machine: {result['machine']}, {result['cpus']} CPUs, 1-min load average {result['load_average']} at "
             f"the start. Command: `{result['command']}`.", "",
             f"Sentiment: `{result['exports']['sentiment']}` ({result['variants']['sentiment']}); topic: "
             f"`{result['exports']['topic']}` ({result['variants']['topic']}). {result['texts']} texts (half "
             f"PhraseBank test sentences, half topic test tweets), {result['rounds']} interleaved rounds, one ONNX "
             "Runtime thread per model; per text, medians over rounds.", "",
             "| texts per call | served | CPU ms / text | x sentiment | wall ms / text | x sentiment |",
             "|---|---|---|---|---|---|"]
    for bs in ("1", "32"):
        base = cost["sentiment"][bs]
        for name, row in cost.items():
            lines.append(f"| {bs} | {name} | {row[bs]['cpu_ms_per_text']:.3f} | "
                         f"{row[bs]['cpu_ms_per_text'] / base['cpu_ms_per_text']:.2f}x | "
                         f"{row[bs]['wall_ms_per_text']:.3f} | {row[bs]['wall_ms_per_text'] / base['wall_ms_per_text']:.2f}x |")
    return "\n".join(lines) + "\n"


def two_models(args, texts: list[str]) -> int:
    """Sentiment alone vs sentiment + topic as the service serves them (see the module docstring)."""
    import os

    from toolchain.core.hardware import detect_cpu
    from toolchain.inference.runtime import TopicPair

    sentiment, topic = served(args.sentiment), served(args.topic)
    models = {"sentiment": sentiment, "sentiment + topic, sequential": TopicPair(sentiment, topic),
              "sentiment + topic, concurrent": TopicPair(sentiment, topic, concurrent=True)}
    result = {"machine": detect_cpu().summary().get("isa") or "cpu", "cpus": len(os.sched_getaffinity(0)),
              "load_average": round(os.getloadavg()[0], 2), "command": "python " + " ".join(sys.argv),
              "exports": {"sentiment": str(args.sentiment), "topic": str(args.topic)},
              "variants": {"sentiment": sentiment.variant, "topic": topic.variant}, "texts": len(texts),
              "rounds": args.rounds, "cost": two_model_costs(models, texts, args.rounds)}
    out = args.out.with_name(args.out.name + "_two_models")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(two_models_markdown(result))
    print(two_models_markdown(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    from toolchain.core.config import data_root
    from toolchain.core.hardware import detect_cpu

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("full", "two-models"), default="full",
                        help="full: accuracy and cost of the three models; two-models: the served cost of "
                             "sentiment alone vs sentiment + topic (no --joint)")
    for name in ("sentiment", "topic", "joint"):
        parser.add_argument(f"--{name}", type=Path, help=f"export dir of the {name} model")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "topic_sentiment")
    args = parser.parse_args(argv)
    needed = ("sentiment", "topic") if args.mode == "two-models" else ("sentiment", "joint")   # full: --topic optional
    missing = [f"--{name}" for name in needed if getattr(args, name) is None]
    if missing:
        parser.error(f"--mode {args.mode} needs {', '.join(missing)} (export dirs)")
    root = data_root()
    if root is None:
        sys.exit("no data folder: set TOOLCHAIN_DATA_DIR (the folder holding sentfin/ and twitter_financial_news_topic/)")
    half = args.texts // 2
    texts = [r["text"] for r in read_jsonl(root / "financial_phrasebank" / "splits" / "allagree" / "test.jsonl")][:half]
    texts += [r["text"] for r in read_jsonl(root / "twitter_financial_news_topic" / "test.jsonl")][:half]
    if args.mode == "two-models":
        return two_models(args, texts)
    exports = {name: path for name, path in (("sentiment", args.sentiment), ("topic", args.topic),
                                             ("joint", args.joint)) if path is not None}
    models = {name: served(path) for name, path in exports.items()}
    sentfin = read_jsonl(root / "sentfin" / "test.jsonl")
    topic_rows = read_jsonl(root / "twitter_financial_news_topic" / "test.jsonl")
    started = time.time()
    result = {"machine": detect_cpu().summary().get("isa") or "cpu", "command": "python " + " ".join(sys.argv),
              "accuracy": {name: report_rows(path) for name, path in exports.items()},
              "sentfin": {name: sentiment_scores(models[name], sentfin) for name in ("sentiment", "joint")},
              "topic_test": {name: sentiment_scores(models[name], topic_rows, "topic") for name in ("topic", "joint")
                             if name in models},
              "cost": {"texts": len(texts), "rounds": args.rounds, **costs(models, texts, args.rounds)}}
    result["seconds"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
