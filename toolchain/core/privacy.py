"""Masking of personal data in texts before they are stored or logged.

:func:`mask` replaces each span of personal data with the token of its kind and leaves every other
character as it was (byte for byte). What each token stands for, exactly:

| token       | masked |
|-------------|--------|
| ``[EMAIL]``   | ``local@domain.tld``: a local part of letters, digits and ``._%+-`` (at most 64), a domain of 1-9 labels and an alphabetic top-level label |
| ``[IBAN]``    | a country code (upper case), two check digits and the account part, unbroken or in groups of four separated by single spaces, valid per ``stdnum.iban`` (the country's length and format, and the mod-97 check) |
| ``[CARD]``    | 13-19 digits starting with 2-6 (the payment networks' ranges) whose Luhn check digit is right (``stdnum.luhn``), unbroken or grouped as cards are printed: fours (the last group 1-4 digits), or 4-6-5 / 4-6-4, with one separator kind (space or hyphen) |
| ``[PHONE]``   | what libphonenumber (``phonenumbers``) finds and validates (``Leniency.VALID``) as a number of a region in :data:`PHONE_REGIONS`, or of any country when written with ``+`` and its country code |
| ``[ACCOUNT]`` | a *digit chain* (digits, groups joined by single spaces or hyphens) that follows an account word (:data:`ACCOUNT_WORD`: account, acct, a/c, IBAN, routing, ABA, sort code, optionally then no./number/#/:/is) and holds 8 or more digits (a sort code: 6 or more); or, with no such word, a digit chain of 2 or more groups and 12 or more digits that is neither a thousands grouping (``1 000 000 000 000``) nor grouped like a card (fours, 4-6-5, 4-6-4: there the card and IBAN checks alone decide) |

What stays: amounts and counts (``EUR 131 million``, ``2,000,000 shares``, ``1.4 %``), years, dates,
times, tickers, and long numbers that fail the checks above. Inside a URL only ``[EMAIL]``, ``[IBAN]``
and ``[CARD]`` are masked: URL paths are full of digit runs that look like phone or account numbers
(``t.co/4155550123``), and a masked link cannot be followed. The digits of an IBAN-shaped code
(``DE89 3704 ...``) are judged by the IBAN check alone: one that fails it is left as it is, never taken
for a card or an account number. Where two kinds match overlapping text, the first in :data:`KINDS` wins.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import phonenumbers
from stdnum import iban, luhn

KINDS = ("EMAIL", "IBAN", "CARD", "PHONE", "ACCOUNT")   # priority order where matches overlap
URL_SAFE_KINDS = frozenset({"PHONE", "ACCOUNT"})         # never masked inside a URL
DIGIT_KINDS = frozenset({"CARD", "PHONE", "ACCOUNT"})    # never masked inside an IBAN-shaped code
PHONE_REGIONS = ("US", "GB")   # national formats recognised; measured: no false match in the finance test sets
LONGEST_SPAN = 640             # the longest e-mail address the pattern takes (64 + 1 + 8 * 64 + 63); other spans
                               # of fixed kinds are shorter, and digit chains are never cut by clip()

EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,63}(?![\w-])")
URL = re.compile(r"(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)
IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?:[A-Z0-9]{1,30}|(?: [A-Z0-9]{1,4}){1,8})")
DIGIT_CHAIN = re.compile(r"(?<!\w)(?<![0-9][.,])[0-9]+(?:[ -][0-9]+)*")
ACCOUNT_WORD = re.compile(r"\b(?:accounts?|acct|a/c|iban|routing|aba|(?P<sort>sort[ -]?code))\b"
                          r"(?:\s*(?:number|num|nos?\.?|nr\.?|#|:|is))*\s*(?=[0-9])", re.IGNORECASE)
WORD = re.compile(r"\S+")
CARD_LAYOUTS = ((4, 6, 5), (4, 6, 4))   # Amex, Diners; other cards are printed in fours


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str

    def overlaps(self, other: "Span") -> bool:
        return self.start < other.end and other.start < self.end


def mask(text: str) -> str:
    """``text`` with each span of personal data replaced by ``[KIND]``; nothing else changes."""
    pieces, at = [], 0
    for span in find(text):
        pieces += [text[at:span.start], f"[{span.kind}]"]
        at = span.end
    return "".join(pieces) + text[at:] if pieces else text


def masker(enabled: bool) -> Callable[[str], str]:
    """:func:`mask`, or the identity where masking is turned off."""
    return mask if enabled else (lambda text: text)


def find(text: str) -> list[Span]:
    """The spans :func:`mask` replaces, in text order, none overlapping."""
    found = [*emails(text), *ibans(text), *cards(text), *phones(text), *accounts(text)]
    shelters = sheltered(text)
    found = [s for s in found if not any(s.kind in kinds and s.overlaps(where) for where, kinds in shelters)]
    chosen: list[Span] = []
    for span in sorted(found, key=lambda s: (KINDS.index(s.kind), s.start)):
        if not any(span.overlaps(other) for other in chosen):
            chosen.append(span)
    return sorted(chosen, key=lambda s: s.start)


def sheltered(text: str) -> list[tuple[Span, frozenset[str]]]:
    """Where some kinds are not looked for: URLs (phone, account numbers), and whatever is shaped like an IBAN,
    valid or not (its digits are the IBAN check's to judge: a failing IBAN is not a card or an account)."""
    urls = [(Span(*m.span(), "URL"), URL_SAFE_KINDS) for m in URL.finditer(text)]
    return urls + [(Span(*m.span(), "IBAN"), DIGIT_KINDS) for m in IBAN.finditer(text)]


def clip(text: str, width: int) -> str:
    """At most ``width`` characters of ``text``, cut before any word, digit chain or span :func:`mask` would
    replace that the cut would split, so that masking the clipped text leaves no piece of one in the clear."""
    if len(text) <= width:
        return text
    window = text[:width + LONGEST_SPAN]
    pieces = [*find(window), *(Span(*m.span(), "") for m in WORD.finditer(window)),
              *(Span(*m.span(), "") for m in DIGIT_CHAIN.finditer(window))]
    cut = width
    for piece in sorted(pieces, key=lambda p: p.start, reverse=True):   # a piece moves the cut before earlier ones
        if piece.start < cut < piece.end:
            cut = piece.start
    return text[:cut]


# --------------------------------------------------------------------------- the kinds

def emails(text: str) -> list[Span]:
    return [Span(*m.span(), "EMAIL") for m in EMAIL.finditer(text)] if "@" in text else []


def ibans(text: str) -> list[Span]:
    """IBAN candidates, each cut back group by group until stdnum accepts it (``... 00 EUR`` -> ``... 00``)."""
    spans = []
    for match in IBAN.finditer(text):
        candidate = match.group()
        while candidate:
            if 15 <= len(candidate.replace(" ", "")) <= 34 and iban.is_valid(candidate):
                spans.append(Span(match.start(), match.start() + len(candidate), "IBAN"))
                break
            candidate = candidate.rpartition(" ")[0]
    return spans


def digit_groups(chain: str) -> tuple[list[str], list[str]]:
    """A digit chain's groups and the separators between them."""
    parts = re.split(r"([ -])", chain)
    return parts[0::2], parts[1::2]


def cards(text: str) -> list[Span]:
    """Card numbers in each digit chain: every run of whole groups that reads as one (their union where
    runs overlap, so no piece of a number is left in the clear)."""
    spans = []
    for match in DIGIT_CHAIN.finditer(text):
        groups, separators = digit_groups(match.group())
        offsets = [match.start()]
        for group, separator in zip(groups, separators):
            offsets.append(offsets[-1] + len(group) + len(separator))
        for first in range(len(groups)):
            digits = 0
            for last in range(first, len(groups)):
                digits += len(groups[last])
                if digits > 19:
                    break
                if digits >= 13 and is_card(groups[first:last + 1], separators[first:last]):
                    spans.append(Span(offsets[first], offsets[last] + len(groups[last]), "CARD"))
    return merged(spans)


def is_card(groups: list[str], separators: list[str]) -> bool:
    digits = "".join(groups)
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456" or len(set(separators)) > 1:
        return False
    return (len(groups) == 1 or card_layout(groups)) and luhn.is_valid(digits)


def card_layout(groups: list[str]) -> bool:
    """Grouped as card numbers are printed: fours (the last group 1-4 digits), or 4-6-5 / 4-6-4."""
    sizes = tuple(len(g) for g in groups)
    return sizes in CARD_LAYOUTS or (all(size == 4 for size in sizes[:-1]) and 1 <= sizes[-1] <= 4)


def merged(spans: list[Span]) -> list[Span]:
    out: list[Span] = []
    for span in sorted(spans, key=lambda s: s.start):
        if out and span.start <= out[-1].end:
            out[-1] = Span(out[-1].start, max(out[-1].end, span.end), span.kind)
        else:
            out.append(span)
    return out


def phones(text: str) -> list[Span]:
    if sum(ch.isdigit() for ch in text) < 7:
        return []
    return [Span(m.start, m.end, "PHONE") for region in PHONE_REGIONS
            for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID)]


def accounts(text: str) -> list[Span]:
    """Digit chains after an account word (8+ digits; a sort code 6+), and long grouped chains anywhere
    (not those grouped like a card or an IBAN's tail: the checksums alone decide those)."""
    spans = []
    for word in ACCOUNT_WORD.finditer(text):
        chain = DIGIT_CHAIN.match(text, word.end())
        if chain and sum(ch.isdigit() for ch in chain.group()) >= (6 if word.group("sort") else 8):
            spans.append(Span(*chain.span(), "ACCOUNT"))
    for chain in DIGIT_CHAIN.finditer(text):
        groups, _ = digit_groups(chain.group())
        if len(groups) >= 2 and len("".join(groups)) >= 12 and not thousands(groups) and not card_layout(groups):
            spans.append(Span(*chain.span(), "ACCOUNT"))
    return spans


def thousands(groups: list[str]) -> bool:
    """``1 000 000``: a number written with a thousands separator."""
    return len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:])


# --------------------------------------------------------------------------- logs

class MaskingFilter(logging.Filter):
    """Masks the message, the traceback and the stack of every record that passes (a logger's filter sees
    the records logged on that logger; a handler's, all that the handler writes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


def install_log_masking(*loggers: logging.Logger) -> None:
    """A :class:`MaskingFilter` on each logger (once)."""
    for logger in loggers:
        if not any(isinstance(f, MaskingFilter) for f in logger.filters):
            logger.addFilter(MaskingFilter())
