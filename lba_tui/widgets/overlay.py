"""The curves of several runs on one chart, one metric at a time."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive

from lba_tui.glyphs import UNICODE, Glyphs
from lba_tui.reader import RunDetail
from lba_tui.widgets.chart import Chart, ChartSpec, Series
from lba_tui.widgets.curves import column

# (epochs column, label, scale)
METRICS = (
    ("test_acc", "test accuracy %", 100.0),
    ("train_acc", "train accuracy %", 100.0),
    ("gap", "train-test gap", 100.0),
    ("loss", "train loss", 1.0),
    ("log10_lb", "log10 Lipschitz bound", 1.0),
)


def run_name(run: dict) -> str:
    """A short legend label: ``#12 lba n=3 s0``."""
    return f"#{run['id']} {run.get('method')} n={run.get('depth')} s{run.get('seed')}"


class OverlayPanel(Vertical):
    """One chart with a line per run; ``metric`` indexes :data:`METRICS`."""

    metric: reactive[int] = reactive(0)

    def __init__(self, glyphs: Glyphs = UNICODE, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.glyphs = glyphs
        self.details: list[RunDetail] = []

    def compose(self) -> ComposeResult:
        yield Chart(self.glyphs, id="overlay-chart")

    def show_runs(self, details: list[RunDetail]) -> None:
        """Draw these runs' curves."""
        self.details = details
        self._draw()

    def next_metric(self) -> None:
        """Show the next metric."""
        self.metric = (self.metric + 1) % len(METRICS)

    def watch_metric(self) -> None:
        self._draw()

    def _draw(self) -> None:
        if not self.is_mounted:
            return
        key, label, scale = METRICS[self.metric]
        series = [
            Series(*column(d.epochs, key, scale), run_name(d.run), color=i)
            for i, d in enumerate(self.details)
        ]
        self.query_one(Chart).show(
            ChartSpec(series, title=f"{label} (m: next metric)", xlabel="epoch")
        )

    def export_table(self) -> tuple[str, list[str], list[list[Any]]]:
        """The shown metric per epoch, a column per run, for CSV."""
        key = METRICS[self.metric][0]
        epochs = sorted({e["epoch"] for d in self.details for e in d.epochs})
        by_run = [{e["epoch"]: e.get(key) for e in d.epochs} for d in self.details]
        headers = ["epoch", *(f"run {d.run['id']} {key}" for d in self.details)]
        rows = [[epoch, *(values.get(epoch) for values in by_run)] for epoch in epochs]
        return f"compare-{key}", headers, rows
