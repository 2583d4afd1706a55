"""Which parameters of a tuning study matter: the share of the first objective's variance
each one explains (eta squared), computed here from the trials.

Optuna's default importance (fANOVA) fits a random forest and needs Optuna loaded; this is
the one-way version of the same idea, exact for one parameter at a time and blind to
interactions, so parameters that only matter together score low. Numeric parameters with
many values are cut into four bins by rank.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical

from lba_tui.glyphs import UNICODE, Glyphs
from lba_tui.reader import TuneData
from lba_tui.widgets.chart import Chart, ChartSpec, Series
from lba_tui.widgets.tune_trials import param_names

BINS = 4


def _groups(values: list[Any]) -> list[Any]:
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not numeric or len(set(values)) <= BINS:
        return [repr(v) for v in values]
    order = sorted(range(len(values)), key=lambda i: values[i])
    bins = [0] * len(values)
    for rank, i in enumerate(order):
        bins[i] = rank * BINS // len(values)
    return bins


def importances(data: TuneData) -> dict[str, float]:
    """Per parameter, the fraction (0..1) of the first objective's variance between groups."""
    done = [
        t
        for t in data.trials
        if t.state == "COMPLETE" and t.values[0] is not None and math.isfinite(t.values[0])
    ]
    if len(done) < 3:
        return {}
    values = [t.values[0] for t in done]
    mean = statistics.fmean(values)
    total = sum((v - mean) ** 2 for v in values)
    out = {}
    for name in param_names(data):
        groups: dict[Any, list[float]] = {}
        for key, t in zip(_groups([t.params.get(name) for t in done]), done):
            groups.setdefault(key, []).append(t.values[0])
        if len(groups) < 2:
            continue
        between = sum(len(g) * (statistics.fmean(g) - mean) ** 2 for g in groups.values())
        out[name] = between / total if total > 0 else 0.0
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


class ImportancePanel(Vertical):
    """A bar per parameter: how much of the objective's variance it explains alone."""

    def __init__(self, glyphs: Glyphs = UNICODE, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.glyphs = glyphs
        self.values: dict[str, float] = {}

    def compose(self) -> ComposeResult:
        yield Chart(self.glyphs, id="importance-chart")

    def show_trials(self, data: TuneData) -> None:
        """Recompute and redraw."""
        self.values = importances(data)
        bars = []
        if self.values:
            names = [n.split(".")[-1] for n in self.values]
            bars = [Series(names, list(self.values.values()), "", color=0, kind="bars")]
        self.query_one(Chart).show(
            ChartSpec(
                bars,
                title=f"importance for {data.objectives[0]} (variance explained, one at a time)",
                empty="needs three complete trials and a parameter that varies",
            )
        )
