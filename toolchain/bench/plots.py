"""The benchmark PNGs: latency vs batch size, and latency vs accuracy, of every offline variant."""
from __future__ import annotations

from pathlib import Path

from toolchain.core.report import pyplot

REAL = "phrasebank-test"
LABEL_OFFSETS = ((6, 8), (6, -14), (6, 22), (6, -28))


def plot_latency_vs_batch(offline: dict, path: Path, workload: str = REAL) -> None:
    """Median milliseconds per call against batch size, one line per variant (log-log)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, per_bs in offline["latency"][workload].items():
        sizes = sorted(int(bs) for bs in per_bs)
        ax.plot(sizes, [per_bs[str(bs)]["median_ms"] for bs in sizes], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (sentences per call)")
    ax.set_ylabel("median latency per call (ms)")
    ax.set_title(f"offline latency vs batch size ({workload}, tokenization included)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_latency_vs_accuracy(offline: dict, path: Path, batch_size: str = "1", workload: str = REAL) -> None:
    """Median batch latency (x) against the test metric (y), one labelled point per variant."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    metric, placed = offline["metric"], 0
    for name, facts in offline["variants"].items():
        stats = offline["latency"][workload].get(name, {}).get(batch_size)
        if stats is None or facts.get("test_metric") is None:
            continue
        x, y = stats["median_ms"], 100 * facts["test_metric"]
        ax.scatter(x, y, s=36)
        offset = LABEL_OFFSETS[placed % len(LABEL_OFFSETS)]   # neighbours with equal accuracy stay readable
        ax.annotate(f"{name} ({(facts['bytes'] or 0) / 1e6:.0f} MB)", (x, y), textcoords="offset points",
                    xytext=offset, fontsize=8, arrowprops={"arrowstyle": "-", "lw": 0.5})
        placed += 1
    ax.margins(x=0.15, y=0.25)
    ax.set_xlabel(f"median latency at batch {batch_size} (ms, {workload})")
    ax.set_ylabel(f"test {metric} (%)")
    ax.set_title("offline variants: latency vs task metric", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_plots(offline: dict, results_dir: Path) -> list[Path]:
    paths = [results_dir / "latency_vs_batch.png", results_dir / "latency_vs_accuracy.png"]
    plot_latency_vs_batch(offline, paths[0])
    plot_latency_vs_accuracy(offline, paths[1])
    return paths
