"""Load one ONNX variant of an export dir for serving: checksums, ONNX Runtime session, tokenizer.

Only ONNX (protobuf), JSON and YAML are read: no pickle. The variant's model file and the tokenizer
files are checked against the export manifest's sha256 before anything is loaded, so an altered or
truncated file stops start-up with an error naming it.

A deployment that answers sentiment and topic with two single-task models wraps them in a
:class:`TopicPair`: one ``infer`` per batch runs both, and its output has the layout of a joint model
(:mod:`toolchain.tasks.joint`), so ``/classify`` answers exactly as it does for a joint model.
"""
from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.core.artifacts import ArtifactError, ExportInfo, load_export
from toolchain.tasks.joint import has_topic_head, head_columns, joint_labels

log = logging.getLogger("toolchain.serve")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_LABELS = {CUDA: "cuda", CPU: "cpu"}
BUCKET_TOKENS = 16
MAX_CALL_TEXTS = 32   # most texts in one model call (the service's default TOOLCHAIN_MAX_BATCH_SIZE)
SEQUENCE_CLASSIFICATION = "sequence-classification"


@dataclass
class BatchOutput:
    """The model's output for a list of texts, in input order, with per-text bookkeeping."""
    logits: list[np.ndarray]   # one array per text (its row of the model call it ran in)
    tokens: list[int]          # tokens per text after truncation (special tokens included)
    truncated: list[bool]      # text was cut to the model's max length
    encodings: list            # tokenizers.Encoding per text (offsets for token-level tasks)
    seconds: float             # time spent in model calls


class Encoder:
    """The export's fast tokenizer (tokenizer.json), truncating to the model's max length."""

    def __init__(self, tokenizer_dir: Path, max_length: int):
        from tokenizers import Tokenizer

        file = tokenizer_dir / "tokenizer.json"
        if not file.is_file():
            raise ArtifactError(f"{file}: missing; the export dir needs a fast tokenizer (tokenizer.json)")
        self.tokenizer = Tokenizer.from_file(str(file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)
        self.pad_id = pad_token_id(tokenizer_dir, self.tokenizer)
        self.max_length = max_length

    def tokenize(self, texts: list[str]) -> list:
        return self.tokenizer.encode_batch(texts)

    def pad(self, encodings: list) -> dict[str, np.ndarray]:
        """Model inputs: ids padded to the longest encoding, with its attention mask."""
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = enc.ids, enc.attention_mask, enc.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def plan_calls(lengths: list[int], per_text: bool, max_texts: int = MAX_CALL_TEXTS,
               max_tokens: int | None = None) -> list[list[int]]:
    """Text indices per model call: one text each, or texts of similar length together, at most
    ``max_texts`` per call and, with ``max_tokens``, at most that many padded tokens (texts x the bucket's
    width) per call (the token budget; a text over it still gets a call of its own).

    Grouping by length (in steps of BUCKET_TOKENS) keeps padding small: padding a short text to a
    long one costs compute (attention is quadratic) without changing a batch-invariant model's output.
    The caps bound a call's activations: ONNX Runtime's arena keeps the memory of its largest call, so
    one call over a whole test set (thousands of texts) would hold gigabytes for the session's life.
    """
    if per_text:
        return [[i] for i in range(len(lengths))]
    buckets: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        buckets.setdefault(-(-length // BUCKET_TOKENS), []).append(index)
    calls = []
    for key in sorted(buckets):
        size = max_texts if max_tokens is None else max(1, min(max_texts, max_tokens // (key * BUCKET_TOKENS or 1)))
        calls += [buckets[key][start:start + size] for start in range(0, len(buckets[key]), size)]
    return calls


def quantizes_at_run_time(model_file: Path) -> bool:
    """True for dynamically quantized graphs (DynamicQuantizeLinear / DynamicQuantizeMatMul nodes).

    Their activation ranges are measured over the whole model call, so a text's scores would move
    with the other texts (and the padding) of its call: such a model is called one text at a time.
    """
    with open(model_file, "rb") as handle:
        return any(b"DynamicQuantize" in chunk for chunk in iter(lambda: handle.read(1 << 22), b""))


def pad_token_id(tokenizer_dir: Path, tokenizer) -> int:
    """The pad token's id as transformers would use it (tokenizer_config.json, else [PAD], else 0)."""
    config_file = tokenizer_dir / "tokenizer_config.json"
    token = "[PAD]"
    if config_file.is_file():
        value = json.loads(config_file.read_text(encoding="utf-8")).get("pad_token", token)
        token = value.get("content", token) if isinstance(value, dict) else value or token
    found = tokenizer.token_to_id(token)
    return 0 if found is None else found


def choose_providers(requested: str, available: list[str]) -> list[str]:
    """CUDA first when asked for (or on auto) and this onnxruntime build has it; CPU always as fallback."""
    if requested == "cuda" and CUDA not in available:
        raise ArtifactError("TOOLCHAIN_PROVIDER=cuda but this onnxruntime has no CUDA provider "
                            f"(available: {', '.join(available)}); install onnxruntime-gpu or use auto/cpu")
    if requested in ("auto", "cuda") and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


def create_session(model_file: Path, providers: list[str], threads: int, spin: bool = False):
    """An ONNX Runtime session; with ``spin`` off, idle intra-op threads sleep instead of burning CPU."""
    import onnxruntime as ort

    if CUDA in providers and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from pip wheels (onnxruntime-gpu[cuda,cudnn])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(model_file), sess_options=options, providers=providers)


class OnnxModel:
    """One ONNX variant with its tokenizer; ``run`` maps a tokenized batch to logits, ``infer`` texts to logits.

    ``OnnxModel(export, variant)`` is what the service loads (checksums verified first);
    :meth:`from_files` builds the same runtime on files not yet in a finished export dir (the export's
    accuracy gate and throughput ranking score a variant exactly as the service will run it).
    """

    def __init__(self, export: ExportInfo, variant: str, provider: str = "auto", threads: int = 1,
                 spin: bool = False, calls: str = "auto"):
        verify_variant(export, variant)
        self.export = export
        self._setup(export.variant_file(variant), export.tokenizer_dir, export.max_length, export.labels, variant,
                    provider, threads, spin, calls)
        self.scale = temperature_scale(export, variant)
        log.info("loaded %s variant %s (%s) with ONNX Runtime provider %s, %d intra-op threads, %s model calls",
                 export.path, variant, self.model_file.name, self.provider, threads, self.call_pattern)

    @classmethod
    def from_files(cls, model_file: Path, tokenizer_dir: Path, max_length: int, labels: list[str],
                   variant: str, provider: str = "cpu", threads: int = 1, calls: str = "auto") -> "OnnxModel":
        model = cls.__new__(cls)
        model.export, model.scale = None, None
        model._setup(Path(model_file), Path(tokenizer_dir), max_length, labels, variant, provider, threads, False,
                     calls)
        return model

    def _setup(self, model_file: Path, tokenizer_dir: Path, max_length: int, labels: list[str], variant: str,
               provider: str, threads: int, spin: bool, calls: str) -> None:
        import onnxruntime as ort

        self.variant, self.model_file, self._labels, self.threads = variant, model_file, list(labels), threads
        providers = choose_providers(provider, ort.get_available_providers())
        self.session = create_session(model_file, providers, threads, spin)
        self.provider = PROVIDER_LABELS.get(self.session.get_providers()[0], self.session.get_providers()[0])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self.encoder = Encoder(tokenizer_dir, max_length)
        self.per_text = calls == "per-text" or (calls == "auto" and quantizes_at_run_time(model_file))
        self.max_call_texts, self.max_call_tokens = MAX_CALL_TEXTS, None   # the service sets its own limits

    def plan(self, lengths: list[int]) -> list[list[int]]:
        """Text indices per model call for encodings of these lengths (see :func:`plan_calls`)."""
        return plan_calls(lengths, self.per_text, self.max_call_texts, self.max_call_tokens)

    def limit_calls(self, max_texts: int, max_tokens: int | None = None) -> None:
        """At most ``max_texts`` texts and ``max_tokens`` padded tokens per model call (the service's batch limits)."""
        self.max_call_texts, self.max_call_tokens = max_texts, max_tokens

    @property
    def labels(self) -> list[str]:
        return self._labels

    @property
    def call_pattern(self) -> str:
        return "per-text" if self.per_text else "length-grouped"

    def run(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        """Logits of one padded model call (temperature-scaled where the export calibrated the variant) and the
        seconds it took."""
        feed = {name: inputs[name] for name in self.input_names}
        started = time.perf_counter()
        (logits,) = self.session.run([self.output_name], feed)
        seconds = time.perf_counter() - started
        if self.scale is not None and logits.ndim == 2:
            logits = logits * self.scale   # temperature scaling: calibrated scores, the same argmax
        return logits, seconds

    def run_encoded(self, encodings: list) -> tuple[list[np.ndarray], float]:
        """Logits per encoding (rows of its call, unpadded for token tasks), grouped into calls as the
        service groups them; and the seconds spent in model calls."""
        logits: list = [None] * len(encodings)
        seconds = 0.0
        for group in self.plan([len(e.ids) for e in encodings]):
            output, took = self.run(self.encoder.pad([encodings[i] for i in group]))
            seconds += took
            for row, index in enumerate(group):
                logits[index] = output[row] if output.ndim == 2 else output[row, :len(encodings[index].ids)]
        return logits, seconds

    def infer(self, texts: list[str]) -> BatchOutput:
        """Logits per text; how texts are grouped into model calls never changes a text's result."""
        encodings = self.encoder.tokenize(texts)
        logits, seconds = self.run_encoded(encodings)
        return BatchOutput(logits, [len(e.ids) for e in encodings], [bool(e.overflowing) for e in encodings],
                           encodings, seconds)


class Features:
    """Pre-tokenized model inputs (a task's encoded features) in the shape ``run_encoded`` takes."""

    def __init__(self, feature: dict):
        self.ids = list(feature["input_ids"])
        self.attention_mask = list(feature.get("attention_mask", [1] * len(self.ids)))
        self.type_ids = list(feature.get("token_type_ids", [0] * len(self.ids)))


def temperature_scale(export: ExportInfo, variant: str) -> np.ndarray | None:
    """1 / T per output column from the export's temperature scaling of this variant (each head its own T),
    or None when the export has none (older exports, NER, ``calibrate=false``)."""
    fitted = (export.manifest.get("calibration") or {}).get(variant)
    if not fitted or export.task != SEQUENCE_CLASSIFICATION:
        return None
    scale = np.ones(len(export.labels), dtype=np.float32)
    for head, columns in head_columns(export.labels).items():
        if head in fitted:
            scale[columns] = 1.0 / float(fitted[head])
    return scale


def verify_variant(export: ExportInfo, variant: str) -> None:
    """Check the variant's files and the tokenizer against the manifest; refuse files it does not list."""
    export.variant_file(variant)  # an unknown variant: the error names the ones there are
    entry = export.manifest["variants"][variant]
    model_rel = f"{entry['dir']}/{entry['file']}"
    if model_rel not in export.manifest.get("files", {}):
        raise ArtifactError(f"{export.path}: {model_rel} has no sha256 in the manifest's files; "
                            "re-export to get a checksum manifest")
    export.verify(only=[entry["dir"].rstrip("/") + "/", "tokenizer/"])


def load_model(export_dir: str | Path, variant: str | None, settings, threads: int = 1) -> OnnxModel:
    """The variant (default: the manifest's serve_variant) with the provider of ``settings`` on ``threads``
    intra-op threads (the worker layout's, see toolchain.serve.layout)."""
    export = load_export(export_dir)
    return OnnxModel(export, variant or export.serve_variant, settings.provider, threads, settings.spin,
                     settings.model_calls)


def listed(labels: list[str], most: int = 6) -> str:
    shown = ", ".join(labels[:most])
    return shown + (f", ... ({len(labels)} in all)" if len(labels) > most else "")


def check_topic_pair(main: ExportInfo, topic: ExportInfo) -> None:
    """Refuse a main model and a topic model that ``/classify`` cannot serve together as sentiment + topic:
    both must be single-task sequence-classification exports, and the topic model's labels topics (none of
    them a class of the main model). Raises ArtifactError naming the export and what to give instead."""
    if main.task != SEQUENCE_CLASSIFICATION:
        raise ArtifactError(f"{main.path}: the main model is a {main.task} export (NER is served on POST /ner); a "
                            f"topic model goes with a {SEQUENCE_CLASSIFICATION} main model (e.g. sentiment)")
    if topic.task != SEQUENCE_CLASSIFICATION:
        raise ArtifactError(f"{topic.path}: the topic model is a {topic.task} export; a topic model is a "
                            f"{SEQUENCE_CLASSIFICATION} export whose labels are topics (preset topic-full)")
    if has_topic_head(main.labels):
        raise ArtifactError(f"{main.path}: the main model already has a topic head (labels {listed(main.labels)}): "
                            "serve it alone (it answers the topic itself), or pair a single-task main model with "
                            "the topic model")
    if has_topic_head(topic.labels):
        raise ArtifactError(f"{topic.path}: the topic model is itself a joint model (main and topic heads, labels "
                            f"{listed(topic.labels)}); give a single-task topic export (preset topic-full)")
    shared = [label for label in topic.labels if label in main.labels]
    if len(topic.labels) < 2 or shared:
        why = f"{', '.join(shared)} are classes of the main model too" if shared else "it has fewer than 2 classes"
        raise ArtifactError(f"{topic.path}: not a topic model: {why} (its labels: {listed(topic.labels)}); give the "
                            "export of a topic classifier (preset topic-full)")


class TopicPair:
    """The main (e.g. sentiment) model and a single-task topic model, answering each batch together.

    ``infer`` has the output layout of a joint model (:mod:`toolchain.tasks.joint`): each text's row is the
    main model's logits followed by the topic model's, and ``labels`` are the main classes then ``topic:`` +
    each topic, so the route post-processing builds exactly the joint model's response, each softmax over
    its own model's classes. Each model tokenizes with its own tokenizer and max length; a text counts as
    truncated when either model cut it; ``tokens`` and ``encodings`` are the main model's; ``seconds`` is
    both models' model-call time.

    With ``concurrent`` the topic model runs in a thread of its own while the main model runs in the
    caller's (ONNX Runtime releases the GIL in a model call), so a batch waits for the slower model
    rather than for both in turn; the worker layout decides (see :mod:`toolchain.serve.layout`).
    """

    def __init__(self, main: OnnxModel, topic: OnnxModel, concurrent: bool = False):
        if main.export is not None and topic.export is not None:
            check_topic_pair(main.export, topic.export)
        self.main, self.topic, self.concurrent = main, topic, concurrent
        self._labels = joint_labels(main.labels, topic.labels)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="topic-model") if concurrent else None

    @property
    def labels(self) -> list[str]:
        return self._labels

    @property
    def export(self) -> ExportInfo | None:
        return self.main.export

    @property
    def variant(self) -> str:
        return self.main.variant

    @property
    def provider(self) -> str:
        return self.main.provider

    @property
    def per_text(self) -> bool:
        """One text per model call in either model: merging requests would merge no work."""
        return self.main.per_text or self.topic.per_text

    @property
    def call_pattern(self) -> str:
        return "per-text" if self.per_text else "length-grouped"

    def limit_calls(self, max_texts: int, max_tokens: int | None = None) -> None:
        self.main.limit_calls(max_texts, max_tokens)
        self.topic.limit_calls(max_texts, max_tokens)

    def infer(self, texts: list[str]) -> BatchOutput:
        if self._pool is None:
            main, topic = self.main.infer(texts), self.topic.infer(texts)
        else:
            pending = self._pool.submit(self.topic.infer, texts)
            main, topic = self.main.infer(texts), pending.result()
        return BatchOutput([np.concatenate([m, t]) for m, t in zip(main.logits, topic.logits)], main.tokens,
                           [a or b for a, b in zip(main.truncated, topic.truncated)], main.encodings,
                           main.seconds + topic.seconds)


def load_topic_pair(main: OnnxModel, topic_dir: str | Path, variant: str | None, settings, threads: int = 1,
                    concurrent: bool = False) -> TopicPair:
    """The main model paired with the topic export's variant (default: its serve_variant), checksums verified."""
    topic_export = load_export(topic_dir)
    check_topic_pair(main.export, topic_export)
    topic = OnnxModel(topic_export, variant or topic_export.serve_variant, settings.provider, threads, settings.spin,
                      settings.model_calls)
    return TopicPair(main, topic, concurrent)


def wants_gpu(provider: str) -> bool:
    """The provider setting will put the model on a CUDA GPU (without importing onnxruntime's CUDA libs)."""
    if provider == "cpu":
        return False
    try:
        import onnxruntime
        return CUDA in onnxruntime.get_available_providers()
    except ImportError:
        return False
