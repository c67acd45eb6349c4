"""Training throughput and peak memory: toolchain's full / lora / head against a plain transformers.Trainer.

    python benchmarks/train_throughput.py [--steps 60] [--subset allagree] [--out benchmarks/results/train_throughput.json]

Every variant trains the packaged MiniLM on the same PhraseBank sentences for the same number of
optimizer steps, in this one process, one after another; figures are samples/s over the timed
steps (the first steps are warm-up and not timed) and the peak resident memory growth while a
variant ran, after one untimed warm-up pass so that one-time costs fall on no variant. Ratios are against the plain Trainer measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolchain.core.config import data_root, load_config  # noqa: E402


class PeakRSS:
    """Samples this process's resident memory every 20 ms; peak growth over the starting value."""

    def __init__(self):
        self.process, self.peak, self.stop = psutil.Process(), 0, threading.Event()

    def __enter__(self):
        self.start = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    @property
    def growth_mb(self) -> float:
        return max(self.peak - self.start, 0) / 2**20


class StepTimer:
    """A TrainerCallback measuring wall time between the end of warm-up step W and the last step."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == warmup:
                    timer.start = time.perf_counter()
                timer.end, timer.steps = time.perf_counter(), state.global_step - warmup

        self.callback, self.start, self.end, self.steps = _Callback(), 0.0, 0.0, 0


def plain_trainer(cfg, steps: int, warmup: int, out: Path) -> dict:
    """What a user wiring Transformers by hand would run: AutoModel + Trainer, default settings."""
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

    from toolchain.data.dataset import label_list, load_splits
    from toolchain.inference.modeling import load_tokenizer, resolve_base_model
    from toolchain.tasks import get_task

    splits, base = load_splits(cfg.data), resolve_base_model(cfg.model.base)
    labels, tokenizer = label_list(splits.train), load_tokenizer(base)
    data = get_task("sequence-classification").encode(splits.train, tokenizer, {l: i for i, l in enumerate(labels)},
                                                      cfg.data.max_length)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=len(labels))
    timer = StepTimer(warmup)
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=cfg.train.batch_size,
                             learning_rate=cfg.train.learning_rate, report_to=[], save_strategy="no",
                             use_cpu=True, disable_tqdm=True, seed=cfg.train.seed)
    Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer),
            callbacks=[timer.callback]).train()
    return {"samples_per_second": timer.steps * cfg.train.batch_size / (timer.end - timer.start)}


def toolchain_run(preset: str, steps: int, warmup: int, out: Path) -> dict:
    """toolchain's own training path (the same `train()` the CLI calls), timed by the same callback."""
    import transformers

    from toolchain.train import runner

    cfg = load_config(preset, [f"output_dir={out}", f"train.max_steps={steps}", f"train.eval_steps={steps}",
                               "train.early_stopping_patience=0"])
    timer = StepTimer(warmup)
    original = transformers.Trainer.__init__

    def with_timer(self, *args, **kwargs):
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [timer.callback]
        original(self, *args, **kwargs)

    transformers.Trainer.__init__ = with_timer
    try:
        runner.train(cfg)
    finally:
        transformers.Trainer.__init__ = original
    return {"samples_per_second": timer.steps * cfg.train.batch_size / (timer.end - timer.start)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args()
    if data_root() is None:
        print("data not found: set TOOLCHAIN_DATA_DIR to the folder holding financial_phrasebank/", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # One untimed, unmeasured pass first: imports, tokenizer and allocator pools are paid for here,
        # not by whichever variant happens to run first.
        plain_trainer(load_config("sentiment-full"), 3, 1, Path(tmp) / "warm-up")
        variants = [("plain transformers.Trainer", lambda o: plain_trainer(load_config("sentiment-full"),
                                                                            args.steps, args.warmup, o))]
        variants += [(f"toolchain {p}", lambda o, p=p: toolchain_run(f"sentiment-{p}", args.steps, args.warmup, o))
                     for p in ("full", "lora", "head")]
        for name, run in variants:
            with PeakRSS() as memory:
                figures = run(Path(tmp) / name.replace(" ", "_"))
            results[name] = {**figures, "peak_rss_growth_mb": round(memory.growth_mb, 1)}
    base = results["plain transformers.Trainer"]
    for figures in results.values():
        figures["throughput_ratio_vs_plain"] = round(figures["samples_per_second"] / base["samples_per_second"], 3)
        figures["memory_ratio_vs_plain"] = round(figures["peak_rss_growth_mb"] / max(base["peak_rss_growth_mb"], 1), 3)
    report = {"steps": args.steps, "warmup_steps": args.warmup, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for name, figures in results.items():
        print(f"{name:30s} {figures['samples_per_second']:7.1f} samples/s  x{figures['throughput_ratio_vs_plain']:.2f}"
              f"  peak +{figures['peak_rss_growth_mb']:.0f} MB  x{figures['memory_ratio_vs_plain']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
