"""Faithfulness of the explanations on the real model and test set, and the cost of POST /explain.

    python benchmarks/explain_faithfulness.py faithfulness --run-dir RUN_DIR [--export-dir EXPORT_DIR]
        [--data TEST.jsonl] [--steps 50] [--ks 1,2,3] [--draws 5] [--out benchmarks/results/explain_faithfulness.json]
    python benchmarks/explain_faithfulness.py serve --bento TAG [--bentoml-home DIR] [--requests 50]
        [--burst 8] [--out benchmarks/results/explain_serve.json]

faithfulness: integrated gradients (fp32 PyTorch model of the run dir) for every test sentence, for its
predicted class: the completeness error (|sum of scores - (logit(input) - logit(baseline))|) at the steps
used, and deletion deltas (the predicted class's probability drop when the k top-attributed words are
deleted, against k random words, mean of DRAWS draws), on the same model. With --export-dir, the same for
leave-one-word-out occlusion on the export's serve variant through the serving runtime (what POST
/explain returns), scored on that ONNX model; for k = 1 its top word is by construction the one whose
deletion moves the served model most. Three correctly predicted test sentences, one per class, are rendered
(benchmarks/results/explain_examples.{txt,html,png}).

serve: starts the Bento on 127.0.0.1 (1 worker, auth on), measures the p50/p95 of one-sentence /explain
and /classify requests one at a time, then a burst of BURST concurrent /explain requests with /classify
requests sent during it: statuses, how fast the refusals come, /classify latency under the burst.
Every result records the machine's load average: other jobs share this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "financial_phrasebank" / "splits" / "allagree" / "test.jsonl"
RESULTS = REPO / "benchmarks" / "results"
SENTENCE = "Operating profit fell to EUR 1.2 mn from EUR 3.4 mn in the corresponding period ."


def conditions() -> dict:
    return {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}


def read_test(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows or "text" not in rows[0]:
        raise SystemExit(f"{path}: expected JSONL rows with a 'text' field")
    return rows


# --------------------------------------------------------------------------- faithfulness

def completeness_summary(explanations) -> dict:
    figures = [e.details["completeness"] for e in explanations]
    errors = [f["error"] for f in figures]
    relative = [f["error"] / abs(f["logit_delta"]) for f in figures if abs(f["logit_delta"]) > 1e-6]
    steps = [f["steps"] for f in figures]
    return {"texts": len(figures), "abs_error_mean": statistics.mean(errors), "abs_error_median": statistics.median(errors),
            "abs_error_max": max(errors), "relative_error_median": statistics.median(relative),
            "relative_error_max": max(relative),
            "within_tolerance": sum(f["within_tolerance"] for f in figures),
            "tolerance": "error <= 0.02 * |logit change| + 0.01",
            "steps_used": {str(s): steps.count(s) for s in sorted(set(steps))},
            "logit_change_abs_median": statistics.median(abs(f["logit_delta"]) for f in figures)}


def deletion_summaries(explanations, probabilities, ks: list[int], draws: int) -> list[dict]:
    from toolchain.explain.faithfulness import deletion_deltas

    return [deletion_deltas(explanations, probabilities, k, draws).summary() for k in ks]


def onnx_probabilities(model):
    """texts -> served-variant probabilities, each text run as the service runs it."""
    import numpy as np

    from toolchain.core.probability import softmax

    return lambda texts: softmax(np.stack(model.infer(texts).logits))


def rank_agreement(ig, occ) -> dict:
    """How often the two methods agree on the strongest word, and their mean Spearman correlation over words."""
    from scipy.stats import spearmanr

    same_top, rhos = 0, []
    for a, b in zip(ig, occ):
        sa, sb = [w.attribution for w in a.words], [w.attribution for w in b.words]
        if len(sa) != len(sb) or len(sa) < 3:
            continue
        same_top += int(max(range(len(sa)), key=sa.__getitem__) == max(range(len(sb)), key=sb.__getitem__))
        rho = spearmanr(sa, sb).statistic
        rhos.append(0.0 if rho != rho else float(rho))
    return {"texts": len(rhos), "same_top_word": same_top, "spearman_mean": statistics.mean(rhos)}


def pick_examples(rows, explanations) -> list[int]:
    """The first correctly predicted test sentence of each class with at most 25 words, in file order."""
    chosen = {}
    for i, (row, e) in enumerate(zip(rows, explanations)):
        if row.get("label") == e.label and e.label not in chosen and len(e.words) <= 25:
            chosen[e.label] = i
    return [chosen[label] for label in ("positive", "neutral", "negative") if label in chosen]


def write_examples(rows, ig, occ, indices: list[int]) -> None:
    from toolchain.explain.picture import write_png
    from toolchain.explain.render import legend, terminal_view, write_html

    picked = [e for i in indices for e in ([ig[i]] + ([occ[i]] if occ else []))]
    lines = [legend(False), ""]
    for i in indices:
        lines += [f"gold: {rows[i]['label']}", terminal_view(ig[i], False)]
        lines += [terminal_view(occ[i], False)] if occ else []
        lines.append("")
    (RESULTS / "explain_examples.txt").write_text("\n".join(lines))
    write_html(picked, RESULTS / "explain_examples.html", "explanations of PhraseBank allagree test sentences")
    write_png(picked, RESULTS / "explain_examples.png")


def run_faithfulness(args) -> dict:
    from tqdm import tqdm

    from toolchain.explain.gradients import Quadrature, explain_sequence
    from toolchain.explain.model import load_explained_model

    rows = read_test(Path(args.data))[: args.limit or None]
    texts = [row["text"] for row in rows]
    ks = [int(k) for k in args.ks.split(",")]
    model = load_explained_model(args.run_dir)
    started = time.perf_counter()
    ig = [explain_sequence(model, t, quadrature=Quadrature(steps=args.steps)) for t in tqdm(texts, desc="ig")]
    ig_seconds = time.perf_counter() - started
    result = {"conditions": conditions(), "data": str(args.data), "run_dir": str(args.run_dir),
              "integrated_gradients": {"model": model.description, "seconds_per_text": ig_seconds / len(texts),
                                       "accuracy_vs_gold": accuracy(rows, ig),
                                       "completeness": completeness_summary(ig),
                                       "deletion": deletion_summaries(ig, model.probabilities, ks, args.draws)}}
    occ = run_occlusion(args, texts, ks, result) if args.export_dir else []
    if occ:
        result["ig_vs_occlusion"] = rank_agreement(ig, occ)
    write_examples(rows, ig, occ, pick_examples(rows, ig))
    return result


def accuracy(rows, explanations) -> float | None:
    if "label" not in rows[0]:
        return None
    return sum(row["label"] == e.label for row, e in zip(rows, explanations)) / len(rows)


def run_occlusion(args, texts, ks, result) -> list:
    from tqdm import tqdm

    from toolchain.core.artifacts import load_export
    from toolchain.explain.occlusion import explain_text
    from toolchain.inference.runtime import OnnxModel

    export = load_export(args.export_dir)
    model = OnnxModel(export, export.serve_variant, "cpu", 1)
    started = time.perf_counter()
    occ = [explain_text(model, t) for t in tqdm(texts, desc="occlusion")]
    result["occlusion"] = {"model": f"{export.path} ONNX {model.variant} ({model.call_pattern} calls)",
                           "seconds_per_text": (time.perf_counter() - started) / len(texts),
                           "deletion": deletion_summaries(occ, onnx_probabilities(model), ks, args.draws)}
    return occ


# --------------------------------------------------------------------------- serving

def post(url: str, key: str, body: dict, timeout: float = 30) -> tuple[int, float, dict]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json",
                                                              "Authorization": f"Bearer {key}"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, time.perf_counter() - started, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, time.perf_counter() - started, json.loads(error.read() or b"{}")


def sequential(url: str, key: str, body: dict, n: int) -> dict:
    for _ in range(3):
        post(url, key, body)  # warm-up
    latencies = [post(url, key, body)[1] for _ in range(n)]
    return {"requests": n, "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * statistics.quantiles(latencies, n=20)[18], "load_average_1": round(os.getloadavg()[0], 2)}


def burst(base: str, key: str, size: int) -> dict:
    """``size`` /explain requests at once (each a 16-text request, to last), and /classify requests meanwhile."""
    long_body = {"texts": [SENTENCE] * 16}
    outcomes, classify = [], []
    barrier = threading.Barrier(size)

    def explain_once():
        barrier.wait()
        status, seconds, answer = post(base + "/explain", key, long_body)
        outcomes.append((status, seconds, answer.get("error") if isinstance(answer, dict) else None))

    threads = [threading.Thread(target=explain_once) for _ in range(size)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    while any(t.is_alive() for t in threads):
        classify.append(post(base + "/classify", key, {"texts": [SENTENCE]})[:2])
    for thread in threads:
        thread.join()
    refused = [s for status, s, _ in outcomes if status == 503]
    served = [s for status, s, _ in outcomes if status == 200]
    return {"explain_requests": size, "texts_per_explain_request": 16,
            "statuses": {str(c): sum(1 for s, _, _ in outcomes if s == c) for c in sorted({s for s, _, _ in outcomes})},
            "errors": sorted({e for _, _, e in outcomes if e}),
            "refusal_ms_max": 1000 * max(refused) if refused else None,
            "served_ms_max": 1000 * max(served) if served else None,
            "classify_during_burst": {"requests": len(classify),
                                      "statuses": sorted({s for s, _ in classify}),
                                      "p50_ms": 1000 * statistics.median([s for _, s in classify]) if classify else None,
                                      "max_ms": 1000 * max(s for _, s in classify) if classify else None},
            "load_average_1": round(os.getloadavg()[0], 2)}


def run_serve(args) -> dict:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from serve_bench import free_port, start_server, stop_server

    key = secrets.token_hex(16)
    keys = Path(tempfile.mkdtemp()) / "keys"
    keys.write_text(key + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLCHAIN_")}
    env.update(TOOLCHAIN_API_KEYS_FILE=str(keys), TOOLCHAIN_WORKERS="1", TOOLCHAIN_THREADS="1",
               TOOLCHAIN_EXPLAIN_CONCURRENCY="1", BENTOML_DO_NOT_TRACK="true", HF_HUB_OFFLINE="1")
    if args.bentoml_home:
        env["BENTOML_HOME"] = args.bentoml_home
    port = free_port()
    server = start_server(args.bento, env, port, keys.parent / "server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        one = {"texts": [SENTENCE]}
        explained = post(base + "/explain", key, one)[2][0]
        return {"conditions": conditions(), "bento": args.bento, "sentence": SENTENCE,
                "words": len(explained["words"]), "variant": explained["variant"],
                "settings": {"workers": 1, "onnx_threads": 1, "explain_concurrency": 1},
                "explain_one_sentence": sequential(base + "/explain", key, one, args.requests),
                "classify_one_sentence": sequential(base + "/classify", key, one, args.requests),
                "burst": burst(base, key, args.burst)}
    finally:
        stop_server(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("faithfulness")
    f.add_argument("--run-dir", required=True)
    f.add_argument("--export-dir")
    f.add_argument("--data", default=str(DEFAULT_DATA))
    f.add_argument("--steps", type=int, default=50)
    f.add_argument("--ks", default="1,2,3")
    f.add_argument("--draws", type=int, default=5)
    f.add_argument("--limit", type=int, default=0, help="only the first N sentences (0: all)")
    f.add_argument("--out", default=str(RESULTS / "explain_faithfulness.json"))
    s = sub.add_parser("serve")
    s.add_argument("--bento", required=True)
    s.add_argument("--bentoml-home")
    s.add_argument("--requests", type=int, default=50)
    s.add_argument("--burst", type=int, default=8)
    s.add_argument("--out", default=str(RESULTS / "explain_serve.json"))
    args = parser.parse_args(argv)
    result = run_faithfulness(args) if args.mode == "faithfulness" else run_serve(args)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
