"""What a finished run writes besides the model: metrics.json, history, PNG plots, a summary table."""
from __future__ import annotations

from pathlib import Path

from toolchain.core.artifacts import write_json


def finish_run(run_dir: Path, log_history: list[dict], metrics: dict, labels: list[str], task) -> None:
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "history.json", log_history)
    write_json(run_dir / "labels.json", {"labels": labels})
    plot_curves(log_history, run_dir / "curves.png")
    if "confusion_matrix" in metrics["test"]:
        plot_confusion(metrics["test"]["confusion_matrix"], labels, run_dir / "confusion_test.png")
    for name, head in metrics["test"].get("heads", {}).items():  # a model with a topic head: one per head
        plot_confusion(head["confusion_matrix"], head["labels"], run_dir / f"confusion_test_{name}.png",
                       title=f"test confusion matrix: {name} head")
    print(summary_table(metrics, task))
    if "per_type" in metrics["test"]:
        print(per_type_table(metrics["test"]))


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed): every PNG the toolchain writes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(history: list[dict], path: Path) -> None:
    plt = pyplot()
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    dev_loss = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    dev_metrics = sorted({k for h in history for k in h if k.startswith("eval_") and k not in (
        "eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_epoch")})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        left.plot(*zip(*train), label="train loss")
    if dev_loss:
        left.plot(*zip(*dev_loss), marker="o", label="dev loss")
    left.set_xlabel("optimizer step"), left.set_ylabel("loss"), left.legend(), left.grid(alpha=0.3)
    for key in dev_metrics:
        points = [(h["step"], h[key]) for h in history if key in h]
        right.plot(*zip(*points), marker="o", label=key.replace("eval_", "dev "))
    right.set_xlabel("optimizer step"), right.set_ylabel("metric"), right.grid(alpha=0.3)
    if dev_metrics:
        right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(matrix: list[list[int]], labels: list[str], path: Path, title: str = "test confusion matrix") -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.1 * len(labels) + 2))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title)
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(header: list[str], rows: list[list]) -> str:
    cells = [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    line = lambda values: "  ".join(str(v).ljust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in cells])


def summary_table(metrics: dict, task) -> str:
    rows = []
    for split in ("dev", "test"):
        rows.append([split, *task.summary(metrics[split]).values()])
    header = ["split", *task.summary(metrics["test"]).keys()]
    params = metrics.get("parameters", {})
    train = metrics.get("train", {})
    tail = (f"\nmethod={metrics.get('method')} adversarial={metrics.get('adversarial')} "
            f"trainable={params.get('trainable', 0):,}/{params.get('total', 0):,} "
            f"steps={train.get('global_step')} wall={train.get('wall_seconds', 0):.0f}s")
    return format_table(header, rows) + tail


def per_type_table(metrics: dict) -> str:
    """Entity-level scores per entity type (token classification)."""
    rows = [[name, v["precision"], v["recall"], v["f1"], v["support"]] for name, v in metrics["per_type"].items()]
    rows.append(["micro", metrics["precision"], metrics["recall"], metrics["f1"], metrics["entities"]])
    return format_table(["test entity type", "precision", "recall", "f1", "support"], rows)


def base_name(base_model: str) -> str:
    """A short name of a base model; a run's model/ dir is shown as RUN/model."""
    path = Path(base_model)
    return f"{path.parent.name}/{path.name}" if path.name == "model" else path.name
