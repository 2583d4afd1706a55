"""The lba layer draws of a run: how often each layer was penalized, and the drawn sigma.

LBA draws one layer per mini-batch (or per epoch), uniformly; over a run every layer should
be drawn about equally often. A skewed bar chart points at a broken generator.
"""

from __future__ import annotations

import json
from typing import Any

from textual.app import ComposeResult
from textual.containers import Container

from lba_tui.glyphs import UNICODE, Glyphs
from lba_tui.reader import RunDetail
from lba_tui.widgets.chart import Chart, ChartSpec, Series
from lba_tui.widgets.curves import column


def draw_totals(epochs: list[dict]) -> list[int]:
    """Draws per layer summed over epochs (``draws_json`` holds one epoch's counts)."""
    totals: list[int] = []
    for row in epochs:
        try:
            counts = json.loads(row.get("draws_json") or "[]")
        except ValueError:
            continue
        if len(counts) > len(totals):
            totals += [0] * (len(counts) - len(totals))
        for i, count in enumerate(counts):
            totals[i] += int(count or 0)
    return totals


def layer_names(sigmas: list[dict], count: int) -> list[str]:
    """Layer names from the recorded norms, else L0, L1, ..."""
    names = {row["layer"]: row["name"] for row in sigmas}
    return [names.get(i, f"L{i}") for i in range(count)]


class DrawsPanel(Container):
    """Bars of draws per layer, and the sigma of the drawn layer per epoch."""

    def __init__(self, glyphs: Glyphs = UNICODE, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="pair")
        self.glyphs = glyphs
        self.totals: list[int] = []
        self.names: list[str] = []

    def compose(self) -> ComposeResult:
        yield Chart(self.glyphs, id="draws-chart")
        yield Chart(self.glyphs, id="drawn-sigma-chart")

    def show_run(self, detail: RunDetail) -> None:
        """Redraw from every epoch recorded so far."""
        method = (detail.run.get("method") or "").lower()
        self.totals = draw_totals(detail.epochs)
        self.names = layer_names(detail.sigmas, len(self.totals))
        drawn = sum(self.totals)
        empty = (
            "no draws recorded yet"
            if method.startswith("lba")
            else f"method {method or '?'} draws no layer (only lba does)"
        )
        bars = [Series(self.names, self.totals, "draws", color=0, kind="bars")] if drawn else []
        share = f" (uniform: {drawn / len(self.totals):.0f} each)" if drawn else ""
        self.query_one("#draws-chart", Chart).show(
            ChartSpec(bars, title=f"layer draws{share}", empty=empty)
        )
        sigma = column(detail.epochs, "lba_sigma")
        layer = column(detail.epochs, "lba_layer")
        series = []
        if sigma[0]:
            series.append(Series(*sigma, "sigma of drawn layer", color=1))
            series.append(Series(*layer, "layer", color=2, kind="points", right=True))
        self.query_one("#drawn-sigma-chart", Chart).show(
            ChartSpec(series, title="last draw", xlabel="epoch", empty=empty)
        )

    def export_table(self) -> tuple[str, list[str], list[list[Any]]]:
        """Draws per layer, for CSV."""
        rows = [[i, name, count] for i, (name, count) in enumerate(zip(self.names, self.totals))]
        return "draws", ["layer", "name", "draws"], rows
