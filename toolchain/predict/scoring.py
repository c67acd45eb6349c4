"""Score one shard and write it: what every engine's worker (a local process, a Ray actor) runs per shard.

The output row of a text holds its key (``file``, ``row``, the input's ``id``), its ``text`` (masked when
masking is on, as the monitor's feeder writes texts: :func:`toolchain.core.privacy.mask`), the ``/classify``
answer flattened (``label``, ``score``, ``score_<class>`` for every class of the main head, ``truncated``,
and ``topic`` / ``topic_score`` for a model with a topic head or a topic model beside it), then the carried
columns (``--keep``) as they are. A bad row's ``reason`` is masked too (it may quote the row).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from toolchain.core.privacy import masker
from toolchain.inference.predictions import main_labels
from toolchain.predict.inputs import Shard
from toolchain.predict.model import ModelSource, classify, load_classifier
from toolchain.predict.reader import Columns, ShardRows, read_shard
from toolchain.predict.shards import write_shard
from toolchain.tasks.joint import has_topic_head

KEY_COLUMNS = ("file", "row", "id")
ANSWER_COLUMNS = ("text", "label", "score", "truncated", "topic", "topic_score")
SCORE_PREFIX = "score_"


@dataclass(frozen=True)
class OutputSpec:
    labels: tuple[str, ...]       # the classifier's output labels (a topic head's as topic:NAME after the main ones)
    keep: tuple[str, ...] = ()
    write_text: bool = True
    mask: bool = True

    @property
    def classes(self) -> list[str]:
        return main_labels(list(self.labels))

    @property
    def topics(self) -> bool:
        return has_topic_head(list(self.labels))

    def names(self) -> list[str]:
        names = ["file", "row", "id"] + (["text"] if self.write_text else []) + ["label", "score"]
        names += [SCORE_PREFIX + c for c in self.classes] + ["truncated"]
        return names + (["topic", "topic_score"] if self.topics else []) + list(self.keep)

    def schema(self):
        import pyarrow as pa

        types = {"row": pa.int64(), "score": pa.float64(), "topic_score": pa.float64(), "truncated": pa.bool_()}
        types.update({SCORE_PREFIX + c: pa.float64() for c in self.classes})
        return pa.schema([(name, types.get(name, pa.string())) for name in self.names()])


@dataclass(frozen=True)
class ScoringContext:
    """What a worker needs, all plain values (a worker process or a Ray actor loads the model itself)."""
    source: ModelSource
    columns: Columns
    spec: OutputSpec
    output: str
    batch_size: int = 512


@dataclass
class ShardResult:
    name: str
    rows: int
    bad: int
    seconds: float


def table_of(spec: OutputSpec, shard: Shard, rows: ShardRows, answers: list, redact):
    import pyarrow as pa

    data = {"file": [shard.file.path] * len(rows.rows), "row": rows.rows, "id": rows.ids,
            "label": [a.label for a in answers], "score": [a.score for a in answers],
            "truncated": [a.truncated for a in answers]}
    if spec.write_text:
        data["text"] = [redact(text) for text in rows.texts]
    for name in spec.classes:
        data[SCORE_PREFIX + name] = [a.scores[name] for a in answers]
    if spec.topics:
        data["topic"] = [a.topic.label for a in answers]
        data["topic_score"] = [a.topic.score for a in answers]
    data.update({name: rows.kept[name] for name in spec.keep})
    schema = spec.schema()
    return pa.table([pa.array(data[name], type=schema.field(name).type) for name in schema.names], schema=schema)


def single_threaded() -> None:
    """One core per worker: the tokenizer's and BLAS's own thread pools off (ONNX Runtime gets threads=1)."""
    for name in ("TOKENIZERS_PARALLELISM",):
        os.environ[name] = "false"
    for name in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")


class ShardScorer:
    """Loads the model once; then reads, scores and writes one shard per call."""

    def __init__(self, context: ScoringContext):
        single_threaded()
        self.context = context
        self.classifier = load_classifier(context.source)
        self.redact = masker(context.spec.mask)

    def __call__(self, shard: Shard, progress=None) -> ShardResult:
        from pathlib import Path

        started = time.perf_counter()
        rows = read_shard(shard, self.context.columns)
        answers, size = [], self.context.batch_size
        for start in range(0, len(rows.texts), size):
            answers += classify(self.classifier, rows.texts[start:start + size])
            if progress:
                progress(min(size, len(rows.texts) - start))
        table = table_of(self.context.spec, shard, rows, answers, self.redact)
        bad = [{**row.record(), "reason": self.redact(row.reason)} for row in rows.bad]
        write_shard(Path(self.context.output), shard, table, bad)
        if progress and rows.bad:
            progress(len(rows.bad))
        return ShardResult(shard.name, len(rows.rows), len(rows.bad), time.perf_counter() - started)
