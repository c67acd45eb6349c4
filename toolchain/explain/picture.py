"""A PNG of a batch of explanations: each text's words on coloured boxes, wrapped, one block per text."""
from __future__ import annotations

from pathlib import Path

from toolchain.explain.render import RGB, headline, peak_of, strongest
from toolchain.explain.result import Explanation

WIDTH_IN, MARGIN_IN, DPI = 11.0, 0.3, 120
WORD_PT, NOTE_PT = 13, 8.5
LINE_IN, NOTE_IN, GAP_IN, SPACE_IN = 0.34, 0.22, 0.25, 0.06


def box_colour(score: float, peak: float) -> tuple[float, float, float, float]:
    ratio = min(1.0, abs(score) / peak) if peak > 0 else 0.0
    return (*RGB[1 if score > 0 else -1], 0.85 * ratio)


class Layout:
    """Places text artists top-down in inches; the figure's height is known only at the end."""

    def __init__(self, figure):
        self.figure, self.renderer = figure, figure.canvas.get_renderer()
        self.placed: list[tuple[object, float]] = []
        self.y = MARGIN_IN

    def note(self, text: str, **style) -> None:
        self.placed.append((self.figure.text(MARGIN_IN, 0, text, fontsize=NOTE_PT, va="top", wrap=False,
                                             transform=self.figure.dpi_scale_trans, **style), self.y))
        self.y += NOTE_IN

    def words(self, e: Explanation) -> None:
        x, peak = MARGIN_IN, peak_of(e)
        for w in e.words:
            artist = self.figure.text(x, 0, w.word, fontsize=WORD_PT, va="top", transform=self.figure.dpi_scale_trans,
                                      bbox={"facecolor": box_colour(w.attribution, peak), "edgecolor": "none",
                                            "boxstyle": "round,pad=0.2"})
            width = artist.get_window_extent(self.renderer).width / DPI
            if x > MARGIN_IN and x + width > WIDTH_IN - MARGIN_IN:
                x, self.y = MARGIN_IN, self.y + LINE_IN
                artist.set_x(x)
            self.placed.append((artist, self.y))
            x += width + SPACE_IN
        self.y += LINE_IN

    def finish(self) -> None:
        height = self.y + MARGIN_IN
        self.figure.set_size_inches(WIDTH_IN, height)
        for artist, top in self.placed:
            artist.set_y(height - top)


def write_png(explanations: list[Explanation], path: str | Path) -> Path:
    """One block per explanation: its headline, its words on boxes coloured by sign and strength, the
    strongest words; a legend at the top."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(WIDTH_IN, 2), dpi=DPI)
    try:
        layout = Layout(figure)
        layout.note("green: towards the explained class, red: away from it; darker = stronger (relative to the "
                    "text's strongest word)", color="#444")
        layout.y += GAP_IN / 2
        for e in explanations:
            layout.note(headline(e), color="#222", weight="bold")
            layout.words(e)
            layout.note(strongest(e), color="#555")
            layout.y += GAP_IN
        layout.finish()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        figure.savefig(tmp, dpi=DPI)
        tmp.replace(path)
    finally:
        plt.close(figure)
    return path
