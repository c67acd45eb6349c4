"""Sliding windows for token classification at serving time: the windows training and evaluation use.

A text whose sub-tokens do not fit the model's max length is not truncated: its words are planned into
windows by :func:`toolchain.tasks.token_classification.plan_windows` (the function that encodes the
training and evaluation data), each window *owns* a run of words and carries neighbouring words as
context. Every window is one model input (grouped into calls as the model's texts are, see
:func:`toolchain.inference.runtime.plan_calls`), and every word is scored once, by the window that owns it.
The result is one row of logits per token of the whole text, aligned with a non-truncating encoding of
it, so character offsets come from the text as sent. A single word longer than a window keeps its
first sub-tokens (its tag is on the first one), as in training.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np

from toolchain.inference.runtime import BatchOutput
from toolchain.tasks.token_classification import plan_windows


@dataclass
class Tokens:
    """What the model input and the decoding need of one encoded sequence (a text or a window)."""
    ids: list[int]
    type_ids: list[int]
    offsets: list[tuple[int, int]]
    attention_mask: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.attention_mask = self.attention_mask or [1] * len(self.ids)


@dataclass
class Piece:
    """One window of one text: its input, and which of its rows score which tokens of the text."""
    text: int
    tokens: Tokens
    rows: list[int]        # rows of the window's logits that are scored ...
    positions: list[int]   # ... as these positions of the text's full encoding


class WindowEncoder:
    """A non-truncating copy of the served tokenizer, and the special tokens around one sequence."""

    def __init__(self, tokenizer, max_length: int):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        probe = self.tokenizer.encode("a")
        content = [i for i, special in enumerate(probe.special_tokens_mask) if not special]
        first, last = content[0], content[-1] + 1
        self.prefix = Tokens(probe.ids[:first], probe.type_ids[:first], [(0, 0)] * first)
        self.suffix = Tokens(probe.ids[last:], probe.type_ids[last:], [(0, 0)] * (len(probe.ids) - last))
        self.content_type = probe.type_ids[first]
        self.budget = max_length - len(self.prefix.ids) - len(self.suffix.ids)

    def content(self, text: str) -> Tokens:
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return Tokens(list(encoding.ids), [self.content_type] * len(encoding.ids), list(encoding.offsets))

    def wrap(self, ids: list[int], offsets: list[tuple[int, int]]) -> Tokens:
        """A sequence with the special tokens around it, as the tokenizer's post-processor adds them."""
        return Tokens(self.prefix.ids + ids + self.suffix.ids,
                      self.prefix.type_ids + [self.content_type] * len(ids) + self.suffix.type_ids,
                      self.prefix.offsets + offsets + self.suffix.offsets)


_ENCODERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def window_encoder(model) -> WindowEncoder:
    """One WindowEncoder per served model (its encoder holds the tokenizer and max length)."""
    encoder = model.encoder
    if encoder not in _ENCODERS:
        _ENCODERS[encoder] = WindowEncoder(encoder.tokenizer, encoder.max_length)
    return _ENCODERS[encoder]


def word_units(word_ids: list[int | None]) -> list[list[int]]:
    """Content-token positions grouped by word, in order; a token outside every word joins the word before."""
    units: list[list[int]] = []
    previous = object()
    for position, word in enumerate(word_ids):
        if units and (word == previous or word is None):
            units[-1].append(position)
        else:
            units.append([position])
        previous = word if word is not None else previous
    return units


def text_pieces(index: int, text: str, windows: WindowEncoder, words_of) -> tuple[Tokens, list[Piece]]:
    """The text's full encoding (with special tokens) and its windows."""
    content = windows.content(text)
    full = windows.wrap(content.ids, content.offsets)
    units = [unit[:windows.budget] for unit in word_units(words_of(text, content.offsets))]
    shift = len(windows.prefix.ids)
    pieces = []
    for window in plan_windows([len(unit) for unit in units], None, windows.budget):
        positions = [p for unit in units[window.left:window.right] for p in unit]
        owned = {p for unit in units[window.start:window.end] for p in unit}
        tokens = windows.wrap([content.ids[p] for p in positions], [content.offsets[p] for p in positions])
        rows = [shift + row for row, p in enumerate(positions) if p in owned]
        pieces.append(Piece(index, tokens, rows, [shift + p for p in positions if p in owned]))
    return full, pieces


def infer_windows(model, texts: list[str], words_of) -> BatchOutput:
    """Per-token logits of each whole text, every word scored once by the window that owns it.

    ``words_of(text, offsets)`` gives the word index of each token (the route's word splitting).
    """
    windows = window_encoder(model)
    encodings, pieces = [], []
    for index, text in enumerate(texts):
        full, text_windows = text_pieces(index, text, windows, words_of)
        encodings.append(full)
        pieces += text_windows
    logits: list = [None] * len(texts)
    seconds = 0.0
    for group in model.plan([len(piece.tokens.ids) for piece in pieces]):
        output, took = model.run(model.encoder.pad([pieces[i].tokens for i in group]))
        seconds += took
        for row, index in enumerate(group):
            piece = pieces[index]
            if logits[piece.text] is None:
                logits[piece.text] = np.zeros((len(encodings[piece.text].ids), output.shape[-1]), output.dtype)
            logits[piece.text][piece.positions] = output[row][piece.rows]
    return BatchOutput(logits, [len(e.ids) for e in encodings], [False] * len(texts), encodings, seconds)
