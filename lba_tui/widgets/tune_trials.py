"""A tuning study's trials: state, objective values and sampled parameters."""

from __future__ import annotations

import json
import math
from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import DataTable, Static

from lba_tui.reader import TrialRecord, TuneData


def scale(objective: str) -> float:
    """Accuracies are stored as fractions and shown in percent."""
    return 100.0 if "acc" in objective else 1.0


def show_value(value: float | None, objective: str) -> str:
    """An objective value as the tables print it."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value * scale(objective):.2f}" if "acc" in objective else f"{value:.4g}"


def best_trial(data: TuneData) -> TrialRecord | None:
    """The best complete trial on the first objective."""
    done = [t for t in data.trials if t.state == "COMPLETE" and t.values[0] is not None]
    if not done:
        return None
    pick = min if data.directions[0] == "minimize" else max
    return pick(done, key=lambda t: t.values[0])


def param_names(data: TuneData) -> list[str]:
    """Every parameter any trial sampled, in name order."""
    return sorted({name for t in data.trials for name in t.params})


class TrialsPanel(Vertical):
    """Every trial with its state, objective values and parameters."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="table-panel")
        self.data: TuneData | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="trials-note", classes="note")
        yield DataTable(id="trials-table", cursor_type="row", zebra_stripes=True)

    def show_trials(self, data: TuneData) -> None:
        """Fill the table."""
        if self.data == data:
            return  # unchanged: keep the cursor where the user left it
        self.data = data
        params = param_names(data)
        objectives = [
            f"{name} {'%' if scale(name) != 1 else ''}".strip() for name in data.objectives
        ]
        table = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_columns("trial", "state", *objectives, "epochs", *params)
        for t in data.trials:
            run = t.run or {}
            epochs = f"{run.get('epoch') or 0}/{run.get('epochs') or '?'}" if run else "-"
            table.add_row(
                str(t.number),
                t.state,
                *(show_value(v, o) for v, o in zip(t.values, data.objectives)),
                epochs,
                *(_param_text(t.params.get(p)) for p in params),
            )
        counts: dict[str, int] = {}
        for t in data.trials:
            counts[t.state] = counts.get(t.state, 0) + 1
        summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        goals = ", ".join(f"{d} {o}" for o, d in zip(data.objectives, data.directions))
        best = best_trial(data)
        best_text = (
            f"; best: trial {best.number} ({show_value(best.values[0], data.objectives[0])})"
            if best
            else ""
        )
        self.query_one("#trials-note", Static).update(
            Content(f"{len(data.trials)} trials ({summary}); {goals}{best_text}")
        )

    def export_table(self) -> tuple[str, list[str], list[list[Any]]]:
        """The trials, for CSV (objective values as stored)."""
        if self.data is None:
            return "trials", [], []
        params = param_names(self.data)
        headers = ["trial", "state", *self.data.objectives, *params]
        rows = [
            [t.number, t.state, *t.values, *(t.params.get(p) for p in params)]
            for t in self.data.trials
        ]
        return "trials", headers, rows


def _param_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)
