"""Explanations for people: a terminal view (colour by sign and strength, plain marks without a TTY),
an HTML page and a PNG picture of a batch of texts.

Colour (or the marks ``+``/``-``, one to three) says which way a word pushes and how hard, relative to the
strongest word of the same explanation: green (``+``) towards the target class, red (``-``) away from it.
"""
from __future__ import annotations

import html
from pathlib import Path

from toolchain.explain.result import Explanation

LEVELS = (0.15, 0.45, 0.75)      # |score| / max |score| at which a word gets 1, 2, 3 marks
ANSI_BACKGROUND = {1: (194, 114, 28), -1: (224, 210, 160)}   # 256-colour backgrounds, light to strong
RGB = {1: (0.13, 0.55, 0.13), -1: (0.80, 0.15, 0.15)}
RESET = "\033[0m"
FLOOR = {"logit": 0.05, "probability": 0.005}   # smallest colour scale per unit
CUT = " [cut: the model saw no further]"
HTML_LEGEND = ("green: towards the explained class, red: away from it; darker = stronger, relative to the "
               "text's strongest word (hover a word for its score)")
METHOD_NAMES = {"integrated-gradients": "integrated gradients", "occlusion": "leave-one-word-out occlusion"}


def strength(score: float, peak: float) -> int:
    """0 to 3: how strong a word is next to the strongest of its explanation."""
    ratio = abs(score) / peak if peak > 0 else 0.0
    return sum(ratio >= level for level in LEVELS)


def peak_of(explanation: Explanation) -> float:
    """The scale of an explanation's colours: its strongest word, but at least FLOOR of its unit, so that a
    text where no word matters (all scores near zero) shows no strong colours."""
    peak = max((abs(w.attribution) for w in explanation.words), default=0.0)
    return max(peak, FLOOR.get(explanation.unit, 0.0))


def headline(e: Explanation) -> str:
    """What was predicted, what is explained, by which method and how well it adds up."""
    subject = (f"entity {e.entity['text']!r} {e.label} ({e.probability:.3f})" if e.entity else
               f"{e.label} ({e.scores.get(e.label, e.probability):.3f})")
    target = "" if e.entity or e.target == e.label else f", explaining {e.target} ({e.probability:.3f})"
    method = METHOD_NAMES.get(e.method, e.method)
    figures = e.details.get("completeness")
    if figures:
        method += (f", {figures['steps']} steps, scores sum {figures['sum']:+.3f} vs logit change "
                   f"{figures['logit_delta']:+.3f}")
    elif "variant" in e.details:
        method += f" on the {e.details['variant']} model"
    return f"{subject}{target}  [{method}; unit: {e.unit}]" + ("  (truncated)" if e.truncated else "")


def coloured(word: str, score: float, peak: float) -> str:
    level = strength(score, peak)
    if level == 0:
        return word
    code = ANSI_BACKGROUND[1 if score > 0 else -1][level - 1]
    foreground = "97" if level == 3 else "30"
    return f"\033[48;5;{code};{foreground}m{word}{RESET}"


def marked(word: str, score: float, peak: float) -> str:
    level = strength(score, peak)
    return f"{word}[{('+' if score > 0 else '-') * level}]" if level else word


def highlighted(e: Explanation, colour: bool) -> str:
    """The text as given, each scored word highlighted in place (unscored parts, after truncation, kept)."""
    peak, paint = peak_of(e), (coloured if colour else marked)
    pieces, cursor = [], 0
    for w in e.words:
        pieces.append(e.text[cursor:w.start])
        pieces.append(paint(e.text[w.start:w.end], w.attribution, peak))
        cursor = w.end
    rest = e.text[cursor:]
    pieces.append(CUT + rest if e.truncated and rest.strip() else rest)
    return "".join(pieces)


def strongest(e: Explanation, k: int = 3) -> str:
    """The ``k`` strongest words each way (those that would print as +0.000 left out)."""
    def listed(sign: int) -> str:
        return ", ".join(f"{w.word} {w.attribution:+.3f}" for w in e.top_words(k, sign) if abs(w.attribution) >= 5e-4)

    towards, against = listed(1) or "none", listed(-1) or "none"
    return f"for {e.target}: {towards}   against: {against}"


def terminal_view(e: Explanation, colour: bool) -> str:
    return "\n".join([headline(e), "  " + highlighted(e, colour), "  " + strongest(e)])


def legend(colour: bool) -> str:
    if colour:
        return (f"{coloured('green', 1, 1)} pushes towards the explained class, {coloured('red', -1, 1)} away from "
                "it; darker = stronger (relative to the text's strongest word)")
    return ("word[+++] pushes towards the explained class, word[-] away from it; more marks = stronger "
            "(relative to the text's strongest word)")


# --------------------------------------------------------------------------- HTML and PNG

def css_colour(score: float, peak: float) -> str:
    ratio = min(1.0, abs(score) / peak) if peak > 0 else 0.0
    r, g, b = RGB[1 if score > 0 else -1]
    return f"rgba({int(r * 255)},{int(g * 255)},{int(b * 255)},{0.85 * ratio:.2f})"


def html_block(e: Explanation) -> str:
    peak = peak_of(e)
    pieces, cursor = [], 0
    for w in e.words:
        pieces.append(html.escape(e.text[cursor:w.start]))
        pieces.append(f'<span style="background:{css_colour(w.attribution, peak)}" '
                      f'title="{w.attribution:+.4f} {e.unit}">{html.escape(e.text[w.start:w.end])}</span>')
        cursor = w.end
    pieces.append(html.escape(e.text[cursor:]))
    return (f'<div class="x"><div class="h">{html.escape(headline(e))}</div><div class="t">{"".join(pieces)}</div>'
            f'<div class="s">{html.escape(strongest(e))}</div></div>')


def write_html(explanations: list[Explanation], path: str | Path, title: str = "toolchain explain") -> Path:
    from toolchain.core.artifacts import atomic_write_text

    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}.x{margin:1.2em 0}"
             ".h{font-size:85%;color:#444}.t{font-size:120%;line-height:1.8}.t span{padding:0 .15em;"
             "border-radius:.2em}.s{font-size:85%;color:#666}")
    body = "\n".join(html_block(e) for e in explanations)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><p>{HTML_LEGEND}</p>\n{body}\n</body></html>\n")
    atomic_write_text(path, page)
    return Path(path)
