"""Words of a raw text, CoNLL-style, and the word each token of a tokenizer's encoding falls in: how a sentence
sent to ``/ner`` or explained is cut into the words the NER model was trained on."""
from __future__ import annotations

import re

import numpy as np


ABBREVIATIONS = r"Inc|Corp|Ltd|Co|Cos|Bros|Plc|Mr|Mrs|Ms|Dr|Jr|Sr|St|Gov|Sen|Rep|Gen|Prof"


WORD = re.compile(rf"(?:[^\W\d_]\.){{2,}}|\b(?:{ABBREVIATIONS})\.(?!\w)|'[sS]\b|\w+(?:[-&.,]\w+|'(?![sS]\b)\w+)*"
                  r"|[^\w\s]")


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the words of ``text``, CoNLL-style."""
    return [match.span() for match in WORD.finditer(text)]


def content_offsets(text: str, offsets) -> list[tuple[int, int]]:
    """Token offsets without the whitespace some tokenizers include: a SentencePiece-style piece that carries the
    space before its word (DeBERTa-v2's '▁in' spans ' in') starts at the word; a piece of spaces only becomes
    empty, at the start of the word after it."""
    trimmed = []
    for start, end in offsets:
        start, end = int(start), int(end)
        while start < end and text[start].isspace():
            start += 1
        trimmed.append((start, end) if start < end else (start, start))
    return trimmed


def token_words(text: str, offsets) -> list[int | None]:
    """The word index of each token (None for special tokens), from the tokens' character offsets: a piece
    belongs to the word its first character other than a space falls in (a piece of spaces only, to the word
    after it, as training cuts words: ``tasks.token_classification.word_pieces``)."""
    spans = word_spans(text)
    starts = [start for start, _ in spans]
    word_ids: list[int | None] = []
    for (start, _), (given_start, given_end) in zip(content_offsets(text, offsets), offsets):
        if given_start == given_end:
            word_ids.append(None)
            continue
        index = int(np.searchsorted(starts, start, side="right")) - 1
        word_ids.append(index if index >= 0 and start < spans[index][1] else None)
    return word_ids
