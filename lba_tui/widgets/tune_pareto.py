"""The trade-off a tuning study found, with its Pareto front (the trials no other trial beats
on every objective). With two objectives they are the axes; with one, the front is drawn for
test accuracy against the Lipschitz bound of the trials' runs."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical

from lba_tui.glyphs import UNICODE, Glyphs
from lba_tui.reader import TuneData
from lba_tui.widgets.chart import Chart, ChartSpec, Series
from lba_tui.widgets.tune_trials import scale


def pareto_front(
    points: list[tuple[float, float]], directions: tuple[str, str] = ("minimize", "maximize")
) -> list[tuple[float, float]]:
    """The non-dominated points, ordered along x."""
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    ordered = sorted(points, key=lambda p: (signs[0] * p[0], signs[1] * p[1]))
    front: list[tuple[float, float]] = []
    for x, y in ordered:
        if not front or signs[1] * y < signs[1] * front[-1][1]:
            front.append((x, y))
    return sorted(front)


def trade_off(data: TuneData) -> tuple[list[tuple[float, float]], tuple[str, str], str, str]:
    """The points to plot, their directions and the axis names (x first)."""
    done = [t for t in data.trials if t.state == "COMPLETE"]
    if len(data.objectives) >= 2:
        (ny, nx), (dy, dx) = data.objectives[:2], data.directions[:2]
        points = [
            (t.values[1] * scale(nx), t.values[0] * scale(ny))
            for t in done
            if t.values[0] is not None and t.values[1] is not None
        ]
        return points, (dx, dy), nx, ny
    points = [
        (t.run["log10_lb"], 100 * t.run["test_acc"])
        for t in done
        if t.run and t.run.get("log10_lb") is not None and t.run.get("test_acc") is not None
    ]
    return points, ("minimize", "maximize"), "log10 LB", "test %"


class ParetoPanel(Vertical):
    """Every complete trial as a point; the front as a line through its points."""

    def __init__(self, glyphs: Glyphs = UNICODE, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.glyphs = glyphs

    def compose(self) -> ComposeResult:
        yield Chart(self.glyphs, id="pareto-chart")

    def show_trials(self, data: TuneData) -> None:
        """Redraw."""
        points, directions, x_name, y_name = trade_off(data)
        front = pareto_front(points, directions)
        series = []
        if points:
            series = [
                Series(
                    [p[0] for p in points], [p[1] for p in points], "trial", color=0, kind="points"
                ),
                Series(
                    [p[0] for p in front],
                    [p[1] for p in front],
                    "Pareto front",
                    color=3,
                    kind="points",
                    marker="*",
                ),
            ]
            if len(front) > 1:
                series.append(Series([p[0] for p in front], [p[1] for p in front], "", color=3))
        self.query_one(Chart).show(
            ChartSpec(
                series,
                title=f"{y_name} ({directions[1][:3]}) vs {x_name} ({directions[0][:3]})",
                xlabel=x_name,
                empty="no complete trial to place yet",
            )
        )
