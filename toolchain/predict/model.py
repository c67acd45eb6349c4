"""The model a predict run scores with: the service's runtime on an export dir or on a Bento's model(s).

``EXPORT_DIR`` (optionally with ``--topic-export-dir``) or ``BENTO_TAG`` (a Bento built by ``toolchain build``,
whose arguments name its model, its variant and any topic model beside it) resolve to a :class:`ModelSource`:
plain paths and names that a worker process or a Ray actor loads on its own. Each loads
:class:`toolchain.inference.runtime.OnnxModel` exactly as a service worker does (the checksums verified, the
export's served variant, tokenizer, truncation, calibration temperature and call plan), on one ONNX Runtime
thread, and a topic model beside it as a ``TopicPair``; the answer for each text is built by
:func:`toolchain.inference.predictions.results`, the function ``POST /classify`` answers with.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from toolchain.core.artifacts import load_export
from toolchain.core.errors import ArtifactError
from toolchain.inference.predictions import results

SEQUENCE_CLASSIFICATION = "sequence-classification"


@dataclass(frozen=True)
class ModelSource:
    export_dir: str
    variant: str
    topic_dir: str | None = None
    topic_variant: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def resolve(target: str, variant: str | None = None, topic_dir: str | None = None,
            topic_variant: str | None = None) -> ModelSource:
    """An export dir as it is; a Bento tag through the BentoML store (its model, variant, topic model)."""
    if Path(target).is_dir():
        export = load_export(target)
        source = ModelSource(str(export.path.resolve()), variant or export.serve_variant)
    elif os.sep in target or target.startswith("."):
        raise ArtifactError(f"{target}: no such export dir")
    else:
        source = bento_source(target, variant)
    if topic_dir:
        topic = load_export(topic_dir)
        source = ModelSource(source.export_dir, source.variant, str(topic.path.resolve()),
                             topic_variant or topic.serve_variant)
    check(source)
    return source


def bento_source(tag: str, variant: str | None) -> ModelSource:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        args = dict(bentoml.bentos.get(tag).info.args or {})
        if "model_tag" not in args:
            raise ArtifactError(f"{tag}: this Bento names no model (built by `toolchain build`?)")
        model = bentoml.models.get(args["model_tag"])
        topic = bentoml.models.get(args["topic_model_tag"]) if args.get("topic_model_tag") else None
    except NotFound as exc:
        raise ArtifactError(f"{tag}: not in the BentoML store ({exc}); give an export dir or a tag from "
                            "`bentoml list`") from None
    return ModelSource(str(model.path), variant or args.get("variant") or load_export(model.path).serve_variant,
                       str(topic.path) if topic else None,
                       (args.get("topic_variant") or load_export(topic.path).serve_variant) if topic else None)


def check(source: ModelSource) -> None:
    """A classifier: predict writes labels and scores (NER exports are served on /ner, not scored here)."""
    from toolchain.inference.runtime import check_topic_pair, verify_variant

    export = load_export(source.export_dir)
    if export.task != SEQUENCE_CLASSIFICATION:
        raise ArtifactError(f"{source.export_dir}: a {export.task} export; toolchain predict scores "
                            f"{SEQUENCE_CLASSIFICATION} exports")
    verify_variant(export, source.variant)
    if source.topic_dir:
        topic = load_export(source.topic_dir)
        check_topic_pair(export, topic)
        verify_variant(topic, source.topic_variant)


def labels_of(source: ModelSource) -> list[str]:
    """The classifier's output labels (a topic model's as ``topic:`` classes after the main ones)."""
    from toolchain.tasks.joint import joint_labels

    labels = load_export(source.export_dir).labels
    return joint_labels(labels, load_export(source.topic_dir).labels) if source.topic_dir else list(labels)


def describe(source: ModelSource) -> dict:
    """The model as the output's manifest records it: a rerun into the same output must use the same one."""
    def one(path: str, variant: str) -> dict:
        export = load_export(path)
        calibration = (export.manifest.get("calibration") or {}).get(variant)
        return {"export_dir": path, "variant": variant, "run_config_hash": export.manifest.get("run_config_hash"),
                "export_config_hash": export.manifest.get("export_config_hash"), "calibration": calibration}
    out = {"main": one(source.export_dir, source.variant)}
    if source.topic_dir:
        out["topic"] = one(source.topic_dir, source.topic_variant)
    return out


def load_classifier(source: ModelSource):
    """What a service worker runs for this source, on one ONNX Runtime thread, CPU provider."""
    from toolchain.inference.runtime import OnnxModel, TopicPair

    main = OnnxModel(load_export(source.export_dir), source.variant, provider="cpu", threads=1)
    if not source.topic_dir:
        return main
    return TopicPair(main, OnnxModel(load_export(source.topic_dir), source.topic_variant, provider="cpu", threads=1))


def classify(classifier, texts: list[str]) -> list:
    """The ``/classify`` answer for each text (``Prediction``): the service's two steps, infer then results."""
    output = classifier.infer(texts)
    return results(texts, output.logits, output.encodings, classifier.labels, output.truncated)
