"""What an explanation is: a score per word (and per token) for one target class or one entity."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from toolchain.core.probability import softmax
from toolchain.data.readers import DataError
from toolchain.data.words import token_words, word_spans


class ExplainError(DataError):
    """Bad input to an explanation: an empty text, an unknown target label, a bad texts file."""


@dataclass
class WordScore:
    word: str
    start: int          # character offsets into the text as given
    end: int
    attribution: float  # > 0: the word pushes towards the target; < 0: away from it


@dataclass
class TokenScore:
    token: str
    start: int
    end: int
    word: int | None    # index into Explanation.words (None: a special token)
    attribution: float


@dataclass
class Explanation:
    text: str
    task: str
    method: str                 # integrated-gradients | occlusion
    unit: str                   # logit (gradients) | probability (occlusion)
    label: str                  # the predicted class (sequence) or the entity's type (token)
    target: str                 # the class explained (the predicted one unless asked otherwise)
    probability: float          # the model's probability of the target (sequence) or the entity's score
    scores: dict[str, float]    # every class's probability (sequence classification)
    words: list[WordScore]
    tokens: list[TokenScore] = field(default_factory=list)
    truncated: bool = False     # the text was cut to the model's max length; later words are not scored
    entity: dict | None = None  # token classification: type, text, start, end, score
    details: dict = field(default_factory=dict)   # method figures: steps, completeness, variant, ...

    def to_dict(self) -> dict:
        return asdict(self)

    def top_words(self, k: int = 3, sign: int = 1) -> list[WordScore]:
        """The ``k`` words with the largest attribution towards (``sign=1``) or against (-1) the target."""
        ranked = sorted(self.words, key=lambda w: -sign * w.attribution)
        return [w for w in ranked[:k] if sign * w.attribution > 0]


@dataclass(frozen=True)
class Choice:
    """The classes of the head being explained (all of them, or one head of a joint model) and the picks."""
    labels: list[str]   # the head's classes
    start: int          # its first column in the model's output
    predicted: int      # index within the head
    target: int         # index within the head

    @property
    def column(self) -> int:
        return self.start + self.target

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Softmax over the head's own columns (a joint model's heads are separate softmaxes)."""
        return softmax(np.asarray(logits)[..., self.start:self.start + len(self.labels)])


def class_heads(labels: list[str]) -> list[tuple[list[str], int]]:
    """(classes, first column) per head: one head, or a joint model's main and topic heads."""
    from toolchain.tasks.joint import has_topic_head, heads_of

    if not has_topic_head(labels):
        return [(list(labels), 0)]
    return [(list(head.labels), head.start) for head in heads_of(labels)]


def choose(labels: list[str], target: str | None, logits: np.ndarray) -> Choice:
    """The head and class to explain for one input's logits: ``target`` (a class of the main head, else of
    the topic head, with or without its ``topic:`` prefix), or the main head's predicted class."""
    heads = class_heads(labels)
    name = target[len("topic:"):] if target and target.startswith("topic:") else target
    head = heads[0] if target is None or target in heads[0][0] else next(
        (h for h in heads[1:] if name in h[0]), None)
    if head is None:
        raise ExplainError(f"unknown target label {target!r}; the model's labels: {', '.join(labels)}")
    classes, start = head
    predicted = int(np.asarray(logits)[start:start + len(classes)].argmax())
    return Choice(classes, start, predicted, predicted if target is None else classes.index(name))


def check_text(text: object, where: str = "text") -> str:
    if not isinstance(text, str):
        raise ExplainError(f"{where} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ExplainError(f"{where} is empty or whitespace only; give a sentence to explain")
    return text


def word_scores(text: str, offsets, token_scores) -> tuple[list[WordScore], list[TokenScore], list[int | None]]:
    """Word scores (the sum of their tokens') for the words the encoding covers, the token scores, and the
    word index of each token. ``offsets`` are the encoding's (start, end) per token (specials: (0, 0))."""
    spans = word_spans(text)
    token_word = token_words(text, offsets)
    covered = sorted({w for w in token_word if w is not None})
    index = {w: i for i, w in enumerate(covered)}
    totals = np.zeros(len(covered))
    tokens = []
    for (start, end), word, score in zip(offsets, token_word, token_scores):
        local = index.get(word) if word is not None else None
        if local is not None:
            totals[local] += float(score)
        tokens.append(TokenScore(text[start:end], int(start), int(end), local, float(score)))
    words = [WordScore(text[spans[w][0]:spans[w][1]], spans[w][0], spans[w][1], float(totals[i]))
             for i, w in enumerate(covered)]
    return words, tokens, token_word


def without_words(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with the character spans removed (the words deleted), spaces around them collapsed."""
    kept, cursor = [], 0
    for start, end in sorted(spans):
        kept.append(text[cursor:start])
        cursor = max(cursor, end)
    kept.append(text[cursor:])
    return " ".join("".join(kept).split())


