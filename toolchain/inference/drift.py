"""Drift signals of the served model, against the training-time reference stored with its variant.

The export writes ``onnx/NAME/drift_reference.json`` for every sequence-classification variant
(:mod:`toolchain.export.drift_reference`): the train split's label shares, the variant's mean confidence
and low-confidence share on dev, the token ids the training texts hold and the share of dev tokens outside
them. The file sits in the variant's folder, so the Bento carries it with the model and the checksum
manifest covers it. The service exposes those values as ``toolchain_reference_*`` gauges and counts, per
request, the live side: predictions scored below the reference's low-confidence threshold and input tokens
by whether the training texts hold them (``toolchain_drift_tokens_total{vocabulary="seen"|"unseen"}``).
Label shares and mean confidence come from the existing prediction counter and confidence histogram.

An export without the file (older exports, token classification) serves as before, with
``toolchain_drift_reference`` 0 and no drift counters.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from itertools import chain

import numpy as np

from toolchain.core.artifacts import ArtifactError, ExportInfo
from toolchain.tasks.joint import has_topic_head, heads_of

log = logging.getLogger("toolchain.serve")

REFERENCE_FILE = "drift_reference.json"
REFERENCE_VERSION = 1
DRIFT_TASK = "sequence-classification"   # the only task with a reference
UNSEEN, SEEN, SPECIAL = 0, 1, 2          # token codes: not in any training text, in one, added by the tokenizer


@dataclass(frozen=True)
class DriftReference:
    task: str
    label_shares: dict[str, float]      # main head's labels -> share of the train split
    confidence_mean: float              # mean score of the predicted label on dev
    low_confidence_below: float         # a prediction scored below this is "low confidence"
    low_confidence_share: float         # share of dev predictions below it
    unseen_token_share: float           # share of dev tokens that no training text holds
    codes: np.ndarray                   # per token id: UNSEEN, SEEN or SPECIAL


def main_labels(labels: list[str]) -> list[str]:
    """The labels ``/classify`` answers in ``label`` (the main head's, with a topic head)."""
    return list(heads_of(labels)[0].labels) if has_topic_head(labels) else list(labels)


def special_ids(tokenizer) -> list[int]:
    """The ids the tokenizer adds around every text ([CLS], [SEP] for BERT): never counted."""
    empty = tokenizer.encode("")
    return [i for i, real in zip(empty.ids, empty.attention_mask) if real]   # padding, if set, left out


def token_codes(seen_ids, tokenizer) -> np.ndarray:
    """UNSEEN/SEEN/SPECIAL per token id of ``tokenizer``'s vocabulary, ``seen_ids`` being the training tokens."""
    codes = np.full(tokenizer.get_vocab_size(), UNSEEN, dtype=np.uint8)
    codes[np.asarray(seen_ids, dtype=np.int64)] = SEEN
    codes[special_ids(tokenizer)] = SPECIAL
    return codes


def flat_ids(encodings) -> np.ndarray:
    return np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.intp)


def seen_ids_of(encodings, tokenizer) -> list[int]:
    """Sorted ids of the tokens ``encodings`` (tokenizers.Encoding) hold, the tokenizer's added ones excluded."""
    found = np.zeros(tokenizer.get_vocab_size(), dtype=bool)
    found[flat_ids(encodings)] = True
    found[special_ids(tokenizer)] = False
    return [int(i) for i in np.flatnonzero(found)]


def count_tokens(encodings, codes: np.ndarray) -> tuple[int, int]:
    """(seen, unseen) token counts of ``encodings`` (the tokenizer's added tokens excluded): one lookup per token."""
    counts = np.bincount(codes[flat_ids(encodings)], minlength=3)
    return int(counts[SEEN]), int(counts[UNSEEN])


def _share(section: dict, key: str, where: str) -> float:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ArtifactError(f"{where}: {key} must be a share in [0, 1], got {value!r}")
    return float(value)


def _section(data: dict, key: str, where: str) -> dict:
    if not isinstance(data.get(key), dict):
        raise ArtifactError(f"{where}: missing section {key!r}; re-export to rebuild the drift reference")
    return data[key]


def parse_reference(data, where: str, labels: list[str], tokenizer) -> DriftReference:
    """A reference read from JSON, checked against the served model's labels and tokenizer."""
    if not isinstance(data, dict) or data.get("reference_version") != REFERENCE_VERSION:
        version = data.get("reference_version") if isinstance(data, dict) else None
        raise ArtifactError(f"{where}: reference_version {version!r} is not supported (expected {REFERENCE_VERSION})")
    shares = _section(data, "labels", where)
    if sorted(shares) != sorted(main_labels(labels)):
        raise ArtifactError(f"{where}: labels {sorted(shares)} differ from the model's {sorted(main_labels(labels))}")
    confidence, tokens = _section(data, "confidence", where), _section(data, "tokens", where)
    ids, vocabulary_size = tokens.get("seen_ids"), tokenizer.get_vocab_size()
    if tokens.get("vocabulary_size") != vocabulary_size or not isinstance(ids, list) \
            or not all(isinstance(i, int) and 0 <= i < vocabulary_size for i in ids):
        raise ArtifactError(f"{where}: tokens.seen_ids must be token ids of the model's {vocabulary_size}-token "
                            f"vocabulary (vocabulary_size {tokens.get('vocabulary_size')!r})")
    return DriftReference(data.get("task", DRIFT_TASK), {k: _share(shares, k, where + ": labels") for k in shares},
                          _share(confidence, "mean", where + ": confidence"),
                          _share(confidence, "low_below", where + ": confidence"),
                          _share(confidence, "low_share", where + ": confidence"),
                          _share(tokens, "unseen_share", where + ": tokens"), token_codes(ids, tokenizer))


def load_reference(export: ExportInfo, variant: str, tokenizer) -> DriftReference | None:
    """The variant's reference; None when the export has none. A file the checksum manifest does not list, or
    whose sha256 differs, stops start-up (as an altered model file does)."""
    rel = f"{export.manifest['variants'][variant]['dir'].rstrip('/')}/{REFERENCE_FILE}"
    path = export.path / rel
    if not path.is_file():
        return None
    if rel not in export.manifest.get("files", {}):
        raise ArtifactError(f"{path}: not in the export's checksum manifest (files); re-export, or remove the file "
                            "to serve without drift signals")
    export.verify(only=[rel])
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    return parse_reference(data, str(path), export.labels, tokenizer)


class DriftMonitor:
    """Counts the live drift signals of each batch the service scores (nothing without a reference)."""

    def __init__(self, metrics, task: str, reference: DriftReference | None):
        self.metrics, self.task, self.reference = metrics, task, reference
        metrics.set_drift_reference(task, reference)

    def observe(self, scores: list[float], encodings: list) -> None:
        if self.reference is None:
            return
        low = sum(1 for score in scores if score < self.reference.low_confidence_below)
        seen, unseen = count_tokens(encodings, self.reference.codes)
        self.metrics.observe_drift(self.task, low, seen, unseen)


def serving_tokenizer(export: ExportInfo):
    """The export's serving tokenizer (tokenizer/tokenizer.json, which the model was loaded with)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(export.tokenizer_dir / "tokenizer.json"))


def drift_monitor(metrics, model) -> DriftMonitor:
    """The monitor of a loaded model (``OnnxModel`` or a wrapper with its ``export`` and ``variant``): its
    variant's reference, when the export has one for its task."""
    reference = None
    if model.export is not None and model.export.task == DRIFT_TASK:
        reference = load_reference(model.export, model.variant, serving_tokenizer(model.export))
    if reference is None:
        log.info("no drift reference for variant %s: drift signals are off (toolchain_drift_reference 0)",
                 model.variant)
    return DriftMonitor(metrics, model.export.task if model.export is not None else DRIFT_TASK, reference)
