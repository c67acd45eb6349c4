"""Tag schemes for token classification: detect IO vs IOB2, convert IO (or IOB1) to IOB2, validate IOB2."""
from __future__ import annotations

from toolchain.core.errors import DataError


def detect_scheme(tags: list[str]) -> str:
    """'iob2' when any B- tag appears, else 'io' (a file with only I-X and O tags)."""
    return "iob2" if any(t.startswith("B-") for t in tags) else "io"


def io_to_iob2(tags: list[str]) -> list[str]:
    """An I-X after O or after a different type starts an entity, so it becomes B-X."""
    out, previous = [], "O"
    for tag in tags:
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            out.append("B-" + tag[2:])
        else:
            out.append(tag)
        previous = tag
    return out


def validate_iob2(tags: list[str], location: str) -> None:
    """Tags are O, B-TYPE or I-TYPE, and an I-TYPE follows B-TYPE or I-TYPE of the same type."""
    previous = "O"
    for i, tag in enumerate(tags):
        if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
            raise DataError(f"{location}: token {i + 1} has tag {tag!r}; expected O, B-TYPE or I-TYPE")
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            raise DataError(f"{location}: token {i + 1} has tag {tag!r} after {previous!r}, which is not IOB2 "
                            f"(an entity starts with B-); use data.tag_scheme=auto to convert IO/IOB1 tags")
        previous = tag
