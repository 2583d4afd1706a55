"""A run's training curves: loss (and the penalty), train and test accuracy with their gap."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Container

from lba_tui.glyphs import UNICODE, Glyphs
from lba_tui.reader import RunDetail
from lba_tui.widgets.chart import Chart, ChartSpec, Series

EPOCH_COLUMNS = (
    "epoch",
    "loss",
    "penalty",
    "train_acc",
    "val_acc",
    "test_acc",
    "test_loss",
    "gap",
    "log10_lb",
    "log10_prod",
    "lr",
    "seconds",
)


def column(epochs: list[dict], key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
    """Epoch numbers and values of one metric, skipping epochs where it is missing."""
    xs, ys = [], []
    for row in epochs:
        value = row.get(key)
        if value is not None:
            xs.append(row["epoch"])
            ys.append(value * scale)
    return xs, ys


class CurvesPanel(Container):
    """Two charts: the loss, and the accuracies with the train-test gap on the right axis."""

    def __init__(self, glyphs: Glyphs = UNICODE, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="pair")
        self.glyphs = glyphs
        self.epochs: list[dict] = []

    def compose(self) -> ComposeResult:
        yield Chart(self.glyphs, id="loss-chart")
        yield Chart(self.glyphs, id="accuracy-chart")

    def show_run(self, detail: RunDetail) -> None:
        """Redraw from every epoch recorded so far."""
        self.epochs = detail.epochs
        epochs = detail.epochs
        loss = [Series(*column(epochs, "loss"), "train loss", color=0)]
        test_loss = column(epochs, "test_loss")
        if test_loss[0]:
            loss.append(Series(*test_loss, "test loss", color=1))
        penalty = column(epochs, "penalty")
        if any(penalty[1]):
            loss.append(Series(*penalty, "penalty", color=2, right=True))
        self.query_one("#loss-chart", Chart).show(
            ChartSpec(loss, title="loss", xlabel="epoch", empty="no epoch recorded yet")
        )
        accuracy = [
            Series(*column(epochs, "train_acc", 100), "train %", color=0),
            Series(*column(epochs, "test_acc", 100), "test %", color=1),
        ]
        val = column(epochs, "val_acc", 100)
        if val[0]:
            accuracy.append(Series(*val, "val %", color=3))
        accuracy.append(Series(*column(epochs, "gap", 100), "gap", color=2, right=True))
        last = epochs[-1] if epochs else {}
        title = "accuracy"
        if last.get("test_acc") is not None and last.get("gap") is not None:
            title = f"accuracy (gap {100 * last['gap']:.1f})"
        self.query_one("#accuracy-chart", Chart).show(
            ChartSpec(accuracy, title=title, xlabel="epoch", empty="no epoch recorded yet")
        )

    def export_table(self) -> tuple[str, list[str], list[list[Any]]]:
        """The epochs as rows, for CSV."""
        rows = [[row.get(key) for key in EPOCH_COLUMNS] for row in self.epochs]
        return "epochs", list(EPOCH_COLUMNS), rows
