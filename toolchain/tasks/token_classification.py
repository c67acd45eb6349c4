"""Token classification (NER): sub-word alignment, long-sentence windows, seqeval metrics, entity decoding.

Alignment: each word's tag goes on its first sub-token; the other sub-tokens and the special tokens get
-100 (ignored by the loss), or, with ``data.subtoken_labels=all``, the word's I- tag while training.
Sentences longer than ``max_length`` are cut into windows: each window *owns* a run of words (labelled)
and carries neighbouring words as context (not labelled), so every word is labelled exactly once and
no word is dropped. Window borders never fall inside a gold entity.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from toolchain.core.probability import softmax
from toolchain.data.readers import Example
from toolchain.data.tags import io_to_iob2
from toolchain.data.words import content_offsets
from toolchain.tasks.base import FeatureDataset, Task

IGNORE = -100


@dataclass(frozen=True)
class Window:
    """Word indices of one encoded window: context [left, right), labelled words [start, end)."""
    left: int
    start: int
    end: int
    right: int


def _owned_end(lengths: list[int], tags: list[str] | None, start: int, room: int, budget: int) -> int:
    """The end of the words owned from ``start``: as many as fit in ``room`` sub-tokens, with the border
    moved before a gold entity it would split, or (for an entity that begins at ``start``) after its
    end while the whole ``budget`` allows."""
    end, used = start, 0
    while end < len(lengths) and (end == start or used + lengths[end] <= room):
        used += lengths[end]
        end += 1
    if tags is None or end == len(lengths) or not tags[end].startswith("I-"):
        return end
    border = end
    while border > start and tags[border].startswith("I-"):
        border -= 1
    if border > start:
        return border
    while end < len(lengths) and tags[end].startswith("I-") and used + lengths[end] <= budget:
        used += lengths[end]
        end += 1
    return end


def _with_context(lengths: list[int], start: int, end: int, budget: int) -> Window:
    """Grow [start, end) with context words on both sides, alternating, while the budget allows."""
    left, right, used = start, end, sum(lengths[start:end])
    grew = True
    while grew:
        grew = False
        if left > 0 and used + lengths[left - 1] <= budget:
            left, used, grew = left - 1, used + lengths[left - 1], True
        if right < len(lengths) and used + lengths[right] <= budget:
            right, used, grew = right + 1, used + lengths[right], True
    return Window(left, start, end, right)


def plan_windows(lengths: list[int], tags: list[str] | None, budget: int) -> list[Window]:
    """Windows covering every word of a sentence whose words have ``lengths`` sub-tokens.

    One window when the sentence fits; otherwise each window owns about half the budget and is
    filled with context words around it.
    """
    if sum(lengths) <= budget:
        return [Window(0, 0, len(lengths), len(lengths))]
    windows, start = [], 0
    while start < len(lengths):
        end = _owned_end(lengths, tags, start, max(1, budget // 2), budget)
        windows.append(_with_context(lengths, start, end, budget))
        start = end
    return windows


def word_pieces(tokenizer, sentences: list[list[str]]) -> list[list[list[int]]]:
    """Sub-token ids of every word as the tokenizer cuts it in running text, the way the service reads it: the
    words joined by spaces and tokenized together, each piece given to the word its characters fall in (a
    byte-level BPE cuts 'joined' after a space as 'Ġjoined', alone as 'j oin ed'; a SentencePiece '▁' of its own
    goes with the word after it). A word the tokenizer drops, e.g. U+FFFD, becomes [UNK]."""
    texts = [" ".join(words) for words in sentences]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True) if texts else {}
    unk = [tokenizer.unk_token_id]
    out = []
    for index, (words, text) in enumerate(zip(sentences, texts)):
        starts = np.cumsum([0] + [len(word) + 1 for word in words[:-1]])
        pieces: list[list[int]] = [[] for _ in words]
        for piece, (start, _) in zip(encoded["input_ids"][index],
                                     content_offsets(text, encoded["offset_mapping"][index])):
            pieces[max(int(np.searchsorted(starts, start, side="right")) - 1, 0)].append(piece)
        out.append([word or unk for word in pieces])
    return out


def continuation_tag(tag: str) -> str:
    """The tag of a word's later sub-tokens when every sub-token is labelled."""
    return "I-" + tag[2:] if tag.startswith("B-") else tag


class TokenClassification(Task):
    name = "token-classification"
    peft_task_type = "TOKEN_CLS"
    default_metric = "f1"
    ort_task = "token-classification"

    def __init__(self, subtoken_labels: str = "first"):
        self.subtoken_labels = subtoken_labels

    def configure(self, data_cfg) -> None:
        """Read the task's options from the data config (``data.subtoken_labels``)."""
        self.subtoken_labels = getattr(data_cfg, "subtoken_labels", "first")

    def auto_model_class(self):
        from transformers import AutoModelForTokenClassification
        return AutoModelForTokenClassification

    def collator(self, tokenizer):
        from transformers import DataCollatorForTokenClassification
        return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE)

    # ------------------------------------------------------------------ encoding

    def encode(self, examples: list[Example], tokenizer, label2id, max_length: int,
               training: bool = False) -> FeatureDataset:
        """One feature per window (one per sentence unless it is longer than ``max_length``)."""
        budget = max_length - tokenizer.num_special_tokens_to_add()
        pieces = word_pieces(tokenizer, [ex.text for ex in examples])
        features, split, clipped = [], 0, 0
        for ex, words in zip(examples, pieces):
            tags = ex.label if isinstance(ex.label, list) else None
            clipped += sum(len(w) > budget for w in words)
            words = [w[:budget] for w in words]
            windows = plan_windows([len(w) for w in words], tags, budget)
            split += len(windows) > 1
            for window in windows:
                label_ids = self._window_labels(words, tags, window, label2id, training)
                features.append(self._feature(tokenizer, words, window, label_ids))
        report_windows(len(examples), split, len(features), clipped, budget)
        return FeatureDataset(features)

    def _window_labels(self, words, tags, window: Window, label2id, training: bool) -> list[int] | None:
        if label2id is None or tags is None:
            return None
        every = training and self.subtoken_labels == "all"
        out = []
        for index in range(window.left, window.right):
            owned = window.start <= index < window.end
            first = label2id[tags[index]] if owned else IGNORE
            rest = label2id.get(continuation_tag(tags[index]), IGNORE) if owned and every else IGNORE
            out += [first] + [rest] * (len(words[index]) - 1)
        return out

    @staticmethod
    def _feature(tokenizer, words, window: Window, label_ids) -> dict:
        ids = [piece for word in words[window.left:window.right] for piece in word]
        input_ids = tokenizer.build_inputs_with_special_tokens(ids)
        item = {"input_ids": input_ids, "attention_mask": [1] * len(input_ids)}
        if "token_type_ids" in tokenizer.model_input_names:
            item["token_type_ids"] = tokenizer.create_token_type_ids_from_sequences(ids)
        if label_ids is not None:  # a sentinel marks where the word pieces land between the special tokens
            marked = tokenizer.build_inputs_with_special_tokens([-1] * len(ids))
            labels = iter(label_ids)
            item["labels"] = [next(labels) if value == -1 else IGNORE for value in marked]
        return item

    def encode_for_training(self, examples, tokenizer, label2id, max_length: int) -> FeatureDataset:
        return self.encode(examples, tokenizer, label2id, max_length, training=True)

    def gold_ids(self, examples: list[Example], labels: list[str], tokenizer, max_length: int) -> np.ndarray:
        """Gold label ids (rows as ``encode`` makes them, padded with -100), for ``metrics``."""
        dataset = self.encode(examples, tokenizer, {label: i for i, label in enumerate(labels)}, max_length)
        rows = [f["labels"] for f in dataset.features]
        width = max(len(r) for r in rows)
        return np.array([r + [IGNORE] * (width - len(r)) for r in rows], dtype=np.int64)

    # ------------------------------------------------------------------ scoring

    def metrics(self, logits, label_ids, labels: list[str]) -> dict:
        gold, predicted = tag_sequences(logits, label_ids, labels)
        return entity_metrics(gold, predicted)

    def summary(self, metrics: dict) -> dict:
        return {k: metrics[k] for k in ("f1", "precision", "recall") if k in metrics}


def report_windows(sentences: int, split: int, windows: int, clipped: int, budget: int) -> None:
    """Say when long sentences were windowed (or single words clipped), so nothing changes silently."""
    if split:
        print(f"token classification: {split} of {sentences} sentences exceed {budget} sub-tokens and were "
              f"split into windows ({windows} windows in all); every word is kept", file=sys.stderr)
    if clipped:
        print(f"token classification: {clipped} single words exceed {budget} sub-tokens and were clipped to "
              f"their first {budget} (their tag is kept on the first sub-token)", file=sys.stderr)


def tag_sequences(logits, label_ids, labels: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted IOB2 tags per row, at the positions whose gold id is not -100."""
    logits, label_ids = np.asarray(logits), np.asarray(label_ids)
    width = min(logits.shape[1], label_ids.shape[1])
    if (label_ids[:, width:] != IGNORE).any():
        raise ValueError(f"gold labels are wider ({label_ids.shape[1]}) than the logits ({logits.shape[1]})")
    predicted_ids = logits[:, :width].argmax(axis=-1)
    gold, predicted = [], []
    for gold_row, pred_row in zip(label_ids[:, :width], predicted_ids):
        keep = gold_row != IGNORE
        gold.append([labels[i] for i in gold_row[keep]])
        predicted.append([labels[i] for i in pred_row[keep]])
    return gold, predicted


def entity_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """Entity-level precision/recall/F1 (seqeval, strict IOB2), micro and macro, and per entity type.

    Predictions are read as the decoder reads them: an I-X after O or after another type starts an
    entity (``raw_f1`` is the strict score of the unrepaired predictions).
    """
    from seqeval.metrics import classification_report, f1_score
    from seqeval.scheme import IOB2

    repaired = [io_to_iob2(row) for row in predicted]
    report = classification_report(gold, repaired, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    micro, macro = report.pop("micro avg"), report.pop("macro avg")
    report.pop("weighted avg", None)
    return {
        "f1": float(micro["f1-score"]), "precision": float(micro["precision"]), "recall": float(micro["recall"]),
        "macro_f1": float(macro["f1-score"]),
        "raw_f1": float(f1_score(gold, predicted, mode="strict", scheme=IOB2, zero_division=0)),
        "entities": int(micro["support"]), "sentences": len(gold),
        "per_type": {name: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                            "f1": float(v["f1-score"]), "support": int(v["support"])}
                     for name, v in sorted(report.items())},
    }


# ---------------------------------------------------------------------- decoding to entities

def offset_words(text: str, offsets) -> list[int | None]:
    """Word index per token from character offsets alone: a token continues the previous word when it
    touches it and both sides are alphanumeric (a word piece); punctuation and spaced tokens start words.
    Special tokens (empty offsets) get None."""
    word_ids, word, previous_end = [], -1, None
    for start, end in offsets:
        if start == end:
            word_ids.append(None)
            continue
        glued = previous_end == start and text[start - 1].isalnum() and text[start].isalnum()
        word += 0 if glued else 1
        word_ids.append(word)
        previous_end = end
    return word_ids


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) word spans of IOB2 tags; an I-X after O or another type starts an entity."""
    spans: list[list] = []
    for index, tag in enumerate(io_to_iob2(tags)):
        if tag.startswith("B-"):
            spans.append([tag[2:], index, index])
        elif tag.startswith("I-") and spans and spans[-1][0] == tag[2:] and spans[-1][2] == index - 1:
            spans[-1][2] = index
    return [tuple(span) for span in spans]


def decode_entities(text: str, offsets, logits, labels: list[str], word_ids=None) -> list[dict]:
    """Word-level entities of one encoded text: type, text, character start/end and score.

    ``offsets`` are the tokenizer's (start, end) per token (``return_offsets_mapping=True``), ``logits``
    the model's (tokens, labels) output for the same encoding. Each word takes the prediction of its first
    sub-token; an entity's score is the mean probability of its words' tags. ``word_ids`` (from
    ``encoding.word_ids()``) may be given; otherwise words are recovered from the offsets.
    """
    logits = np.asarray(logits, dtype=np.float64)
    offsets = content_offsets(text, offsets)
    word_ids = list(word_ids) if word_ids is not None else offset_words(text, offsets)
    words: dict[int, dict] = {}
    for position, word in enumerate(word_ids):
        if word is None:
            continue
        if word not in words:
            probs = softmax(logits[position])
            best = int(probs.argmax())
            words[word] = {"tag": labels[best], "score": float(probs[best]), "start": offsets[position][0]}
        words[word]["end"] = offsets[position][1]
    ordered = [words[key] for key in sorted(words)]
    entities = []
    for kind, first, last in entity_spans([w["tag"] for w in ordered]):
        start, end = ordered[first]["start"], ordered[last]["end"]
        score = float(np.mean([w["score"] for w in ordered[first:last + 1]]))
        entities.append({"type": kind, "text": text[start:end], "start": start, "end": end, "score": score})
    return entities


def word_tags(logits, word_ids, labels: list[str]) -> list[str]:
    """One tag per word of a pre-tokenized input (the first sub-token's prediction)."""
    tags: dict[int, str] = {}
    for position, word in enumerate(word_ids):
        if word is not None and word not in tags:
            tags[word] = labels[int(np.asarray(logits[position]).argmax())]
    return [tags[key] for key in sorted(tags)]


def entity_counts(gold_tags: list[list[str]], pred_tags: list[list[str]], types: list[str]) -> np.ndarray:
    """(rows, types, 3) counts of strict IOB2 entities: true positives, predicted, gold (as seqeval counts).
    The one entity counter: the export's accuracy gate and the seed groups' comparison both use it."""
    from seqeval.scheme import IOB2, Entities

    gold_entities = Entities(gold_tags, IOB2, suffix=False).entities
    pred_entities = Entities([io_to_iob2(row) for row in pred_tags], IOB2, suffix=False).entities
    index = {t: i for i, t in enumerate(types)}
    counts = np.zeros((len(gold_tags), len(types), 3), dtype=np.int64)
    for row, (gold_row, pred_row) in enumerate(zip(gold_entities, pred_entities)):
        gold_set = {e.to_tuple() for e in gold_row}
        for entity in pred_row:
            if entity.tag in index:
                counts[row, index[entity.tag], 1] += 1
                counts[row, index[entity.tag], 0] += entity.to_tuple() in gold_set
        for entity in gold_row:
            if entity.tag in index:
                counts[row, index[entity.tag], 2] += 1
    return counts


def entity_types(tags: list[list[str]]) -> list[str]:
    """The entity types of IOB2/IO tag sequences, sorted."""
    return sorted({tag[2:] for row in tags for tag in row if tag[:2] in ("B-", "I-")})
