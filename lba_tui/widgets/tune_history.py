"""A tuning study over time: the first objective per trial with the best so far, and the
intermediate values of every trial, pruned trials in red and marked where they stopped."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Container

from lba_tui.glyphs import UNICODE, Glyphs
from lba_tui.reader import TuneData
from lba_tui.widgets.chart import Chart, ChartSpec, Series
from lba_tui.widgets.tune_trials import scale

COMPLETE, RUNNING, BEST, PRUNED = 0, 2, 3, 4  # palette: cyan, yellow, green, red


def best_so_far(data: TuneData) -> tuple[list[int], list[float]]:
    """Trial numbers and the best first-objective value reached up to each (scaled)."""
    pick = min if data.directions[0] == "minimize" else max
    factor = scale(data.objectives[0])
    xs, ys, best = [], [], None
    for t in sorted(data.trials, key=lambda t: t.number):
        value = t.values[0]
        if value is None or t.state != "COMPLETE":
            continue
        best = value if best is None else pick(best, value)
        xs.append(t.number)
        ys.append(best * factor)
    return xs, ys


class HistoryPanel(Container):
    """Optimization history beside the intermediate values of every trial."""

    def __init__(self, glyphs: Glyphs = UNICODE, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="pair")
        self.glyphs = glyphs

    def compose(self) -> ComposeResult:
        yield Chart(self.glyphs, id="history-chart")
        yield Chart(self.glyphs, id="intermediate-chart")

    def show_trials(self, data: TuneData) -> None:
        """Redraw both charts."""
        objective = data.objectives[0]
        factor = scale(objective)
        done = [t for t in data.trials if t.state == "COMPLETE" and t.values[0] is not None]
        history = [
            Series(
                [t.number for t in done],
                [t.values[0] * factor for t in done],
                "trial",
                color=COMPLETE,
                kind="points",
            ),
            Series(*best_so_far(data), "best", color=BEST),
        ]
        self.query_one("#history-chart", Chart).show(
            ChartSpec(
                history,
                title=f"history: {objective}",
                xlabel="trial",
                empty="no complete trial yet",
            )
        )
        curves: list[Series] = []
        labelled: set[str] = set()
        for t in data.trials:
            if not t.curve:
                continue
            color = {"PRUNED": PRUNED, "RUNNING": RUNNING}.get(t.state, COMPLETE)
            label = t.state.lower() if t.state not in labelled else ""
            labelled.add(t.state)
            xs = [step for step, _ in t.curve]
            ys = [value * factor for _, value in t.curve]
            curves.append(Series(xs, ys, label, color=color))
            if t.state == "PRUNED":
                curves.append(
                    Series(xs[-1:], ys[-1:], "", color=PRUNED, kind="points", marker="x")
                )
        self.query_one("#intermediate-chart", Chart).show(
            ChartSpec(
                curves,
                title="intermediate values",
                xlabel="epoch",
                empty="no intermediate values yet",
            )
        )
