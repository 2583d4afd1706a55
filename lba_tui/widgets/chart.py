"""A terminal chart: Plotext lines, points and bars, with a legend line and an ASCII mode.

Every panel that plots builds on :class:`Chart`: it hands over :class:`Series` and the chart
draws them to its size on the next refresh. Colours are the eight ANSI names, so lines stay
distinct on a 16-colour terminal; in ASCII mode each series also gets its own marker
character and the frame is redrawn with ``-``, ``|`` and ``+``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.text import Text
from textual.app import RenderResult
from textual_plotext import PlotextPlot

from lba_tui.glyphs import BOX_TO_ASCII, UNICODE, Glyphs

# Plotext colour names and the Rich colour of the same ANSI slot, for the legend.
PALETTE = (
    ("cyan", "cyan"),
    ("magenta", "magenta"),
    ("yellow", "yellow"),
    ("green", "green"),
    ("red", "red"),
    ("blue+", "bright_blue"),
    ("cyan+", "bright_cyan"),
    ("magenta+", "bright_magenta"),
    ("yellow+", "bright_yellow"),
    ("green+", "bright_green"),
)
ASCII_MARKERS = ("*", "+", "o", "x", "#", "@", "%", "&", "=", "~")
PLOTEXT_EXTRA = str.maketrans({"⅃": "R", "▪": "#"})


@dataclass
class Series:
    """One line (or set of points, or bars) of a chart.

    Attributes:
        x: positions (numbers; for bars, labels).
        y: values, same length as ``x``.
        label: shown in the legend.
        color: index into the palette, or None to take the next one.
        kind: ``line``, ``points`` or ``bars``.
        right: plot against the right-hand axis.
    """

    x: Sequence
    y: Sequence[float]
    label: str
    color: int | None = None
    kind: str = "line"
    right: bool = False
    marker: str | None = None


@dataclass
class ChartSpec:
    """What a chart shows: its series and axis settings."""

    series: list[Series] = field(default_factory=list)
    title: str = ""
    xlabel: str = ""
    ylim: tuple[float | None, float | None] | None = None
    empty: str = "no data yet"


class Chart(PlotextPlot):
    """A Plotext chart with a one-line legend on top and an ASCII fallback."""

    DEFAULT_CSS = """
    Chart {
        width: 1fr;
        height: 1fr;
        min-height: 6;
    }
    """

    def __init__(
        self,
        glyphs: Glyphs = UNICODE,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.glyphs = glyphs
        self.spec = ChartSpec()

    def show(self, spec: ChartSpec) -> None:
        """Draw ``spec`` from the next refresh on."""
        self.spec = spec
        self.refresh()

    def legend(self) -> Text:
        """The legend line: a coloured swatch and the label of every labelled series."""
        text = Text(no_wrap=True, overflow="ellipsis")
        if self.spec.title:
            text.append(self.spec.title, style="bold")
        for index, series in enumerate(self.spec.series):
            if not series.label:
                continue
            color = PALETTE[self._color(series, index)][1]
            swatch = self._marker(series, index) if self.glyphs.ascii else self.glyphs.bar
            text.append("  ")
            text.append(swatch if len(swatch) == 1 else "*", style=color)
            text.append(" " + series.label + (" (right)" if series.right else ""))
        return text

    def _color(self, series: Series, index: int) -> int:
        return (series.color if series.color is not None else index) % len(PALETTE)

    def _marker(self, series: Series, index: int) -> str:
        if series.marker:
            return series.marker
        if self.glyphs.ascii:
            return ASCII_MARKERS[self._color(series, index) % len(ASCII_MARKERS)]
        if series.kind == "bars":
            return "sd"
        return self.glyphs.line_marker if series.kind == "line" else self.glyphs.point_marker

    def _draw(self, width: int, height: int) -> str:
        plt = self.plt
        plt.clear_figure()
        plt.plotsize(width, height)
        plt._set_size(width, height)
        plt.theme(self._get_plotext_theme_name(self.app.theme))
        for index, series in enumerate(self.spec.series):
            color = PALETTE[self._color(series, index)][0]
            marker = self._marker(series, index)
            side = "right" if series.right else "left"
            if series.kind == "bars":
                plt.bar(list(series.x), list(series.y), color=color, marker=marker, width=0.6)
            elif series.kind == "points":
                plt.scatter(list(series.x), list(series.y), color=color, marker=marker, yside=side)
            else:
                plt.plot(list(series.x), list(series.y), color=color, marker=marker, yside=side)
        if self.spec.xlabel and height >= 14:
            plt.xlabel(self.spec.xlabel)
        if self.spec.ylim is not None:
            plt.ylim(*self.spec.ylim)
        return plt.build()

    def render(self) -> RenderResult:
        width, height = self.size
        legend = self.legend()
        legend.truncate(width, overflow="ellipsis")
        has_data = any(len(s.x) for s in self.spec.series)
        if not has_data or height < 4 or width < 16:
            message = Text(self.spec.empty if not has_data else "(too small)", style="dim")
            return Text("\n").join([legend, message])
        chart = Text.from_ansi(self._draw(width, height - 1), no_wrap=True)
        if self.glyphs.ascii:
            # Same length in and out, so the colour spans stay where they were.
            chart.plain = chart.plain.translate(BOX_TO_ASCII).translate(PLOTEXT_EXTRA)
        return Text("\n").join([legend, chart])
