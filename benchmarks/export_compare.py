"""Several export dirs side by side: size, batch-1 and batch-32 latency and test accuracy of every variant,
as one markdown table and one accuracy-vs-latency plot (e.g. the 110M MPNet export beside the 22M MiniLM one).

    python benchmarks/export_compare.py NAME=EXPORT_DIR [NAME=EXPORT_DIR ...] [--out benchmarks/results/NAME]

Every figure comes from each export's own report.json (measured by `toolchain export` on the machine it ran on;
the table says which CPU and how many timing rounds); nothing is re-measured here.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

VARIANT_ORDER = ("pytorch", "fp32", "optimized", "int8", "int8-static", "pruned", "pruned-int8")


def load(spec: str) -> tuple[str, dict]:
    name, _, path = spec.partition("=")
    if not path:
        raise SystemExit(f"expected NAME=EXPORT_DIR, got {spec!r}")
    report_file = Path(path) / "report.json"
    if not report_file.is_file():
        raise SystemExit(f"{report_file} not found: give an export dir written by toolchain export")
    return name, json.loads(report_file.read_text(encoding="utf-8"))


def rows(name: str, report: dict) -> list[dict]:
    """One row per variant of one export: MB, p50 batch-1 and batch-32 ms, test metric, gate verdict."""
    metric, out = report["metric"], []
    for variant in [v for v in VARIANT_ORDER if v in report["variants"]]:
        row, latency = report["variants"][variant], report.get("latency", {}).get(variant, {})
        gate = "reference" if variant == "pytorch" else ("pass" if report["gates"][variant]["passed"] else "fail")
        out.append({"model": name, "variant": variant, "mb": row["bytes"] / 1e6,
                    "b1_ms": (latency.get("1") or {}).get("median_ms"), "b32_ms": (latency.get("32") or {}).get("median_ms"),
                    "metric": metric, "test": row["test"][metric], "gate": gate,
                    "served": variant == report.get("serve_variant")})
    out += [{"model": name, "variant": v, "skipped": why} for v, why in (report.get("skipped") or {}).items()]
    return out


def markdown(reports: dict[str, dict]) -> str:
    lines = ["| model | variant | MB | b1 p50 ms | b32 p50 ms | test metric | gate |", "|---|---|---|---|---|---|---|"]
    for name, report in reports.items():
        for r in rows(name, report):
            if "skipped" in r:
                lines.append(f"| {name} | {r['variant']} | - | - | - | - | skipped: {r['skipped'][:80]} |")
                continue
            fmt = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
            served = " (served)" if r["served"] else ""
            lines.append(f"| {name} | {r['variant']}{served} | {r['mb']:.1f} | {fmt(r['b1_ms'])} | {fmt(r['b32_ms'])} "
                         f"| {r['metric']} {r['test']:.4f} | {r['gate']} |")
    notes = []
    for name, report in reports.items():
        cpu, cond = report.get("cpu") or {}, report.get("latency_conditions") or {}
        notes.append(f"- {name}: {cpu.get('machine', '?')} ({', '.join(cpu.get('features') or [])}), "
                     f"{cond.get('threads')} thread(s), {cond.get('rounds')} interleaved timing rounds"
                     + (f" in {cond['seconds']:.0f} s (budget {cond.get('time_budget_s'):g} s)" if "seconds" in cond else "")
                     + f"; export wall time {report.get('wall_seconds', 0) / 60:.1f} min")
    return "\n".join(lines + [""] + notes) + "\n"


def plot(reports: dict[str, dict], path: Path) -> None:
    """Test metric (y) against batch-1 latency (x, log), one marker per model, one labelled point per variant."""
    from toolchain.core.report import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, report), marker in zip(reports.items(), "osD^v"):
        points = [r for r in rows(name, report) if "skipped" not in r and r["b1_ms"]]
        ax.scatter([r["b1_ms"] for r in points], [r["test"] for r in points], marker=marker, label=name)
        for r in points:
            ax.annotate(r["variant"], (r["b1_ms"], r["test"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("median latency at batch 1 (ms, log scale)")
    ax.set_ylabel(f"test {next(iter(reports.values()))['metric']}")
    ax.set_title("export variants: accuracy vs latency")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("exports", nargs="+", metavar="NAME=EXPORT_DIR")
    parser.add_argument("--out", default="benchmarks/results/export_compare", help="path stem of the .md and .png")
    args = parser.parse_args()
    reports = dict(load(spec) for spec in args.exports)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(reports)
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    plot(reports, out.with_suffix(".png"))
    print(text + f"\nwrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
