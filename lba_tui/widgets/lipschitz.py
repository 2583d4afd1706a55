"""A run's Lipschitz-bound trace: log10 LB per epoch and each layer's spectral norm."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Container

from lba_tui.glyphs import UNICODE, Glyphs
from lba_tui.reader import RunDetail
from lba_tui.widgets.chart import Chart, ChartSpec, Series
from lba_tui.widgets.curves import column


def sigma_series(sigmas: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """Per layer name (in layer order), its epochs and sigmas."""
    by_layer: dict[int, tuple[str, list[int], list[float]]] = {}
    for row in sigmas:
        if row["sigma"] is None:
            continue
        _, xs, ys = by_layer.setdefault(row["layer"], (row["name"], [], []))
        xs.append(row["epoch"])
        ys.append(row["sigma"])
    return {name: (xs, ys) for _, (name, xs, ys) in sorted(by_layer.items())}


class LipschitzPanel(Container):
    """Two charts: log10 of the bound (and of the plain product), and sigma per layer."""

    def __init__(self, glyphs: Glyphs = UNICODE, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="pair")
        self.glyphs = glyphs
        self.sigmas: list[dict] = []

    def compose(self) -> ComposeResult:
        yield Chart(self.glyphs, id="bound-chart")
        yield Chart(self.glyphs, id="sigma-chart")

    def show_run(self, detail: RunDetail) -> None:
        """Redraw from every epoch and norm recorded so far."""
        self.sigmas = detail.sigmas
        bound = [Series(*column(detail.epochs, "log10_lb"), "log10 LB", color=0)]
        product = column(detail.epochs, "log10_prod")
        if product[0]:
            bound.append(Series(*product, "log10 prod sigma", color=4))
        last = detail.epochs[-1].get("log10_lb") if detail.epochs else None
        title = "Lipschitz bound" + (f" (log10 {last:.2f})" if last is not None else "")
        self.query_one("#bound-chart", Chart).show(
            ChartSpec(bound, title=title, xlabel="epoch", empty="no epoch recorded yet")
        )
        layers = sigma_series(detail.sigmas)
        series = [
            Series(xs, ys, name, color=i) for i, (name, (xs, ys)) in enumerate(layers.items())
        ]
        self.query_one("#sigma-chart", Chart).show(
            ChartSpec(series, title="sigma", xlabel="epoch", empty="no spectral norms recorded")
        )

    def export_table(self) -> tuple[str, list[str], list[list[Any]]]:
        """The spectral norms as rows, for CSV."""
        headers = ["epoch", "layer", "name", "sigma"]
        return "sigmas", headers, [[row[h] for h in headers] for row in self.sigmas]
