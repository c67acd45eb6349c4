"""The drift reference of every variant: ``onnx/NAME/drift_reference.json`` (read by toolchain.inference.drift).

Computed once the variants are scored, from what the service will compare live traffic with:

- ``labels``: the share of each label in the run's train split (the main head's, with a topic head);
- ``confidence``: the variant's mean score of the predicted label on dev and the share of dev predictions
  scored below ``low_below``, from its dev logits as the service computes them (its runtime, tokenizer,
  truncation, call pattern and the export's temperature scaling; main-head examples only);
- ``tokens``: the token ids that the training texts hold (special tokens excluded), tokenized by the
  serving tokenizer, and the share of dev tokens outside them.

It is written into each variant's folder before the manifest, so the manifest's checksums cover it and
the Bento, which packs the served variant's folder, carries it. Sequence classification only: a
token-classification export has no reference, and the service serves it without drift signals.
"""
from __future__ import annotations

import logging

import numpy as np

from toolchain.core.artifacts import write_json
from toolchain.inference.drift import (DRIFT_TASK, REFERENCE_FILE, REFERENCE_VERSION, count_tokens, main_labels,
                                   seen_ids_of, token_codes)
from toolchain.tasks.joint import TOPIC_PREFIX, main_head_probabilities

log = logging.getLogger(__name__)
LOW_CONFIDENCE_BELOW = 0.6   # a 3-class prediction scored under 0.6 is close to a tie between two labels


def is_main(example) -> bool:
    """An example of the main head (a topic head's examples carry the ``topic:`` label prefix)."""
    return not str(example.label).startswith(TOPIC_PREFIX)


def label_shares(examples: list, labels: list[str]) -> dict:
    """Share of each label among ``examples`` (every label listed, 0 for one without examples)."""
    counts = {label: 0 for label in labels}
    for example in examples:
        counts[example.label] += 1
    total = sum(counts.values())
    if not total:
        raise ValueError("drift reference: the train split holds no example of the main head")
    return {label: count / total for label, count in counts.items()}


def confidence_reference(logits: np.ndarray, labels: list[str]) -> dict:
    """Mean predicted-label score and low-confidence share of dev logits, scored as /classify scores them."""
    scores = main_head_probabilities(logits, labels).max(axis=-1)
    return {"split": "dev", "examples": int(scores.size), "mean": float(scores.mean()),
            "low_below": LOW_CONFIDENCE_BELOW, "low_share": float(np.mean(scores < LOW_CONFIDENCE_BELOW))}


def token_reference(encoder, train_texts: list[str], dev_texts: list[str]) -> dict:
    """Token ids of the training texts and the share of dev tokens outside them, as the service tokenizes."""
    seen = seen_ids_of(encoder.tokenize(train_texts), encoder.tokenizer)
    known, unseen = count_tokens(encoder.tokenize(dev_texts), token_codes(seen, encoder.tokenizer))
    return {"split": "dev", "texts": len(dev_texts), "counted": known + unseen,
            "unseen_share": unseen / max(1, known + unseen), "train_texts": len(train_texts),
            "vocabulary_size": encoder.tokenizer.get_vocab_size(), "seen_ids": seen}


def served_dev_logits(job, name: str) -> np.ndarray:
    """A variant's dev logits as the service will score them: with the temperatures the export fitted (the
    manifest's ``calibration``, applied by toolchain.inference.runtime), when it fitted any."""
    from toolchain.core.artifacts import ExportInfo
    from toolchain.export.job import variant_logits
    from toolchain.inference.runtime import temperature_scale

    logits = variant_logits(job, name, "dev")
    planned = ExportInfo(job.out, {"task": job.run.task, "labels": job.run.labels,
                                   "calibration": job.extra.get("calibration")})
    scale = temperature_scale(planned, name)
    return logits if scale is None else logits * scale


def write_drift_references(job, report: dict) -> None:
    """Write every variant's drift reference into its folder (before the manifest lists the files); add their
    figures (without the token ids) to the report as ``drift_reference`` and print them."""
    from toolchain.export.job import served_model

    if job.task.name != DRIFT_TASK:
        log.info("no drift reference for a %s export (sequence classification only)", job.task.name)
        return
    labels = main_labels(job.run.labels)
    train = [ex for ex in job.splits.train if is_main(ex)]
    shares = label_shares(train, labels)
    main_dev = [i for i, ex in enumerate(job.splits.dev) if is_main(ex)]
    encoder = served_model(job, next(iter(job.variants))).encoder   # every variant shares tokenizer/
    tokens = token_reference(encoder, [ex.text for ex in job.splits.train], [ex.text for ex in job.splits.dev])
    confidence = {}
    for name, (rel_dir, _) in job.variants.items():
        confidence[name] = confidence_reference(served_dev_logits(job, name)[main_dev], job.run.labels)
        write_json(job.out / rel_dir / REFERENCE_FILE, {
            "reference_version": REFERENCE_VERSION, "task": DRIFT_TASK, "variant": name, "labels": shares,
            "label_source": {"split": "train", "examples": len(train)}, "confidence": confidence[name],
            "tokens": tokens})
    report["drift_reference"] = {"file": f"onnx/NAME/{REFERENCE_FILE}", "labels": shares,
                                 "unseen_token_share": tokens["unseen_share"], "confidence": confidence}
    write_json(job.out / "report.json", report)
    print(reference_line(report["drift_reference"], job.serve_variant), flush=True)


def reference_line(section: dict, variant: str) -> str:
    """The reference in one line, for the terminal."""
    shares = ", ".join(f"{label} {share:.1%}" for label, share in section["labels"].items())
    served = section["confidence"][variant]
    return (f"drift reference: train labels {shares}; dev tokens unseen in training "
            f"{section['unseen_token_share']:.1%}; {variant} dev confidence mean {served['mean']:.3f}, "
            f"below {served['low_below']:g}: {served['low_share']:.1%}")
