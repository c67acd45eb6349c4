"""The export report: report.json, the printed variant table and the latency-vs-metric PNG."""
from __future__ import annotations

from pathlib import Path

from toolchain.core.artifacts import write_json


def variant_rows(report: dict, metric: str) -> list[list]:
    """One table row per variant (PyTorch fp32 first): size, latency, metric, agreement."""
    from toolchain.export.config import VARIANTS

    rows = []
    latency = report.get("latency", {})
    sizes = report.get("batch_sizes", [])
    for name in ["pytorch", *VARIANTS]:
        row = report["variants"].get(name)
        if row is None:
            continue
        lat = latency.get(name, {})
        cells = [name, f"{row['bytes'] / 1e6:.1f}"]
        for bs in sizes:
            stats = lat.get(str(bs))
            cells += [f"{stats['median_ms']:.2f}", f"{stats['p95_ms']:.2f}"] if stats else ["-", "-"]
        ratio = report.get("summary", {}).get(name, {}).get("b1_latency_vs_pytorch")
        cells += [f"{ratio:.2f}x" if ratio else "-"]
        cells += [row["dev"][metric], row["test"][metric], *(row["test"][key] for key in head_keys(report, metric)),
                  f"{row['test']['agreement']:.2%}",
                  "reference" if name == "pytorch" else gate_cell(report.get("gates", {}).get(name))]
        rows.append(cells)
    width = len(rows[0]) if rows else 0
    for name, why in (report.get("skipped") or {}).items():   # asked for, not built: the library's reason
        rows.append([name, *["-" for _ in range(max(0, width - 2))], "skipped"])
    return rows


def head_keys(report: dict, metric: str) -> list[str]:
    """Per-head metric keys of a model with a topic head (``main_accuracy``, ``topic_accuracy``), else none."""
    sample = report["variants"]["pytorch"]["test"]
    return [key for key in (f"main_{metric}", f"topic_{metric}") if key in sample]


def _b1(report: dict, name: str) -> float | None:
    stats = report.get("latency", {}).get(name, {}).get(str(report["batch_sizes"][0]))
    return stats["median_ms"] if stats else None


def summary(report: dict, metric: str) -> dict:
    """Ratios people ask for: size vs fp32 ONNX, batch-1 latency vs PyTorch fp32, metric delta in points;
    and for the pruned variants, the speed-up over their unpruned counterpart."""
    rows, out = report["variants"], {}
    fp32_bytes, torch_b1 = rows.get("fp32", {}).get("bytes"), _b1(report, "pytorch")
    for name, row in rows.items():
        b1 = _b1(report, name)
        out[name] = {"size_vs_fp32_onnx": row["bytes"] / fp32_bytes if fp32_bytes else None,
                     "b1_latency_vs_pytorch": b1 / torch_b1 if b1 and torch_b1 else None,
                     "test_metric_delta_points": 100 * (row["test"][metric] - rows["pytorch"]["test"][metric])}
    for pruned, base in (("pruned", "fp32"), ("pruned-int8", "int8")):
        if pruned in rows and base in rows and _b1(report, pruned) and _b1(report, base):
            out[pruned]["b1_speedup_vs_" + base] = _b1(report, base) / _b1(report, pruned)
            out[pruned]["test_metric_delta_vs_" + base] = 100 * (rows[pruned]["test"][metric]
                                                                 - rows[base]["test"][metric])
    return out


def cpu_line(cpu: dict) -> str:
    vnni = ", ".join(cpu.get("features") or []) or ("with VNNI" if cpu.get("vnni") else "no VNNI")
    if cpu.get("cuda"):
        vnni += ", CUDA"
    preset = f"int8 preset {cpu['preset']} (reduce_range={cpu.get('reduce_range')})" if cpu.get("preset") else \
        "no int8 variant"
    return f"cpu: {cpu['machine']}, detected {cpu.get('isa') or 'no int8 ISA'} ({vnni}); {preset}; " \
           f"{cpu.get('threads')} threads"


def gate_cell(verdict: dict | None) -> str:
    if not verdict:
        return "-"
    return ("pass" if verdict["passed"] else "FAIL") + f" (p={verdict['p_value']:.2f})"


def selection_lines(report: dict) -> list[str]:
    """What was chosen to serve and why, for the terminal."""
    selection = report["selection"]
    lines = [f"serve variant: {selection['variant']} ({selection['mode']}): {selection['why']}"]
    if selection.get("sample"):
        sample = selection["sample"]
        lines.append(f"  ranked on {sample['texts']} of {sample['of']} test texts ({sample['how']}), "
                     f"{sample['rounds']} rounds")
    layout = report.get("layout") or {}
    for threads, figures in (layout.get("by_threads") or {}).items():
        lines.append(f"  {selection['variant']} on {threads} thread(s): batch-1 {figures['b1_ms']:.2f} ms, "
                     f"{figures['b32_texts_per_s']:.0f} texts/s in 32-text calls ({layout['call_pattern']} calls)")
    return lines


def variant_table(report: dict, metric: str) -> str:
    from toolchain.core.report import format_table

    header = ["variant", "MB"]
    for bs in report.get("batch_sizes", []):
        header += [f"b{bs} p50 ms", f"b{bs} p95 ms"]
    header += ["b1 vs pytorch", f"dev {metric}", f"test {metric}", *(f"test {k}" for k in head_keys(report, metric)),
               "agree", "gate"]
    skipped = [f"  {name} skipped: {why}" for name, why in (report.get("skipped") or {}).items()]
    return format_table(header, variant_rows(report, metric)) + ("\n" + "\n".join(skipped) if skipped else "")


def plot_latency_vs_metric(report: dict, metric: str, path: Path) -> None:
    """Median batch-1 latency (x) against test metric (y), one labelled point per variant."""
    from toolchain.core.report import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    bs = str(report["batch_sizes"][0]) if report.get("batch_sizes") else None
    for name, row in report["variants"].items():
        stats = report.get("latency", {}).get(name, {}).get(bs)
        if stats is None:
            continue
        ax.scatter(stats["median_ms"], 100 * row["test"][metric], s=40)
        ax.annotate(f"{name} ({row['bytes'] / 1e6:.0f} MB)", (stats["median_ms"], 100 * row["test"][metric]),
                    textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(f"median latency at batch {bs} (ms)")
    ax.set_ylabel(f"test {metric} (%)")
    ax.set_title("export variants: latency vs task metric")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, metric: str, out_dir: Path) -> None:
    write_json(out_dir / "report.json", report)
    if report.get("latency"):
        plot_latency_vs_metric(report, metric, out_dir / "latency_vs_metric.png")
