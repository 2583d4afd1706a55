"""Robustness of one run: its attack results, and what ``lba eval`` found.

:class:`RobustnessPanel` is the run screen's robustness tab: every attack row the run recorded
(both protocols) as a table, and accuracy against eps per protocol and attack as a chart.

:class:`EvaluationPanel` shows ``lba eval``'s three answers, one block each: does the run
survive a change of light (accuracy per shift and severity, and the worst case over the
lighting grid), what does its Lipschitz bound certify (certified accuracy per l2 radius beside
l2 PGD at the same radius, and how far the bound lies above the constant measured from below),
and is its robustness real (l-inf PGD with restarts, the paper's protocol, and the
gradient-masking check). Pressing ``v`` starts ``lba eval RUN`` as a detached process; the
panel shows the new rows when the screen that holds it calls :meth:`EvaluationPanel.reload`
on a store change. It reads through the app's :class:`~lba_tui.reader.StoreReader` on its
thread and imports neither torch nor the engine's evaluation code.
"""

from __future__ import annotations

import re
import sqlite3
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Static

from lba_tui.glyphs import UNICODE, Glyphs, num, pct
from lba_tui.reader import RunDetail, StoreMissing, StoreUnreadable
from lba_tui.widgets.chart import Chart, ChartSpec, Series

SHIFT_ORDER = ("brightness", "contrast", "gamma", "ramp", "spotlight", "noise", "blur")
TABLES = ("shifts", "certified", "lipschitz_estimates", "attacks", "pgd_curve")


@dataclass
class RobustnessData:
    """One run's ``lba eval`` rows, as the panel shows them.

    Attributes:
        run_id: The run.
        label: The run's label, or empty when the run is unknown.
        shifts: Rows of the ``shifts`` table.
        certified: Rows of the ``certified`` table.
        estimates: Rows of ``lipschitz_estimates``.
        attacks: The run's ``attacks`` rows of every protocol.
        curves: Rows of ``pgd_curve``.
    """

    run_id: int
    label: str = ""
    shifts: list[dict] = field(default_factory=list)
    certified: list[dict] = field(default_factory=list)
    estimates: list[dict] = field(default_factory=list)
    attacks: list[dict] = field(default_factory=list)
    curves: list[dict] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """No evaluation of this run is in the store yet."""
        return not (self.shifts or self.certified or self.estimates)


def _rows(conn: sqlite3.Connection, sql: str, params: list) -> list[dict]:
    cursor = conn.execute(sql, params)
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def robustness_data(reader: Any, run_id: int) -> RobustnessData:
    """Read one run's evaluation rows (run it on the reader thread: ``reader.fetch``).

    Args:
        reader: A :class:`~lba_tui.reader.StoreReader`.
        run_id: The run.

    Returns:
        The rows; tables the store does not have (written before ``lba eval``) give none.
    """
    data = RobustnessData(run_id)
    if not reader.has("runs"):
        return data
    with reader.snapshot() as conn:
        run = _rows(conn, "SELECT label FROM runs WHERE id = ?", [run_id])
        data.label = run[0]["label"] if run else ""
        for table in TABLES:
            if reader.has(table):
                rows = _rows(
                    conn, f"SELECT * FROM {table} WHERE run_id = ? ORDER BY rowid", [run_id]
                )
                setattr(data, table if table != "lipschitz_estimates" else "estimates", rows)
    return data


def eval_command(run_id: int, db: Path) -> list[str]:
    """The argument vector of ``lba eval RUN --db DB``."""
    return [sys.executable, "-m", "lba_tui.cli", "eval", str(run_id), "--db", str(db)]


def eval_log_path(db: Path, run_id: int, when: datetime) -> Path:
    """``<store folder>/<store>-eval-run<N>-<YYYYmmdd-HHMMSS>.log``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", db.stem)
    return db.resolve().parent / f"{stem}-eval-run{run_id}-{when:%Y%m%d-%H%M%S}.log"


def shift_table(rows: list[dict]) -> list[tuple[str, list[float | None], float | None]]:
    """Per shift (in :data:`SHIFT_ORDER`), accuracy at each severity and the mean over 1..5."""
    by_shift: dict[str, dict[int, float]] = {}
    for row in rows:
        by_shift.setdefault(row["shift"], {})[row["severity"]] = row["accuracy"]
    out = []
    for shift in [s for s in SHIFT_ORDER if s in by_shift]:
        levels = by_shift[shift]
        values = [levels.get(s) for s in range(max(levels) + 1)]
        shifted = [v for s, v in levels.items() if s > 0]
        out.append((shift, values, sum(shifted) / len(shifted) if shifted else None))
    return out


def certified_table(
    data: RobustnessData,
) -> list[tuple[float, float | None, float | None, float | None]]:
    """Per radius: certified accuracy (residual, pairwise) and l2 PGD accuracy there."""
    cert: dict[float, dict[str, float]] = {}
    for row in data.certified:
        cert.setdefault(row["radius"], {})[row["bound"]] = row["accuracy"]
    l2 = {
        row["eps"]: row["accuracy"]
        for row in data.attacks
        if row["protocol"] == "robust" and row["attack"] == "pgd_l2"
    }
    clean = next(
        (
            r["accuracy"]
            for r in data.attacks
            if r["protocol"] == "robust" and r["attack"] == "clean"
        ),
        None,
    )
    if clean is not None:
        l2.setdefault(0.0, clean)
    return [
        (
            radius,
            cert.get(radius, {}).get("residual"),
            cert.get(radius, {}).get("pairwise"),
            l2.get(radius),
        )
        for radius in sorted(set(cert) | set(l2))
    ]


def lipschitz_text(data: RobustnessData) -> str:
    """The upper bounds, the lower bounds found, and how loose the valid bound is."""
    if not data.estimates:
        return ""
    values = {row["kind"]: row["log10_value"] for row in data.estimates}
    names = {
        "residual": "residual bound",
        "product": "plain product (not a bound)",
        "jacobian": "max Jacobian norm",
        "margin_gradient": "max margin gradient / sqrt 2",
        "attack_pairs": "max attack-pair ratio",
    }
    parts = [
        f"{names.get(kind, kind)} {10**value:.3g}"
        for kind, value in values.items()
        if value is not None
    ]
    text = "Lipschitz (l2, logits, pixel units): " + "; ".join(parts)
    lowers = [
        v
        for k, v in values.items()
        if k in ("jacobian", "margin_gradient", "attack_pairs") and v is not None
    ]
    if values.get("residual") is not None and lowers:
        text += (
            f". The bound is {10 ** (values['residual'] - max(lowers)):.2f}x the largest found."
        )
    medians = {r["bound"]: r["median_radius"] for r in data.certified}
    if medians:
        text += " Median certified radius: " + ", ".join(
            f"{bound} {num(value, 3)}" for bound, value in medians.items()
        )
    return text


def attacks_text(data: RobustnessData) -> str:
    """One line each: standard protocol with restarts, the masking check, the paper protocol."""
    lines = []
    robust = [
        r for r in data.attacks if r["protocol"] == "robust" and r["attack"] in ("fgsm", "pgd")
    ]
    if robust:
        lines.append(
            "standard: "
            + ", ".join(
                f"{r['attack'].upper()} {r['eps']:g}"
                + (f" x{r['restarts']}" if r["attack"] == "pgd" else "")
                + f" {pct(r['accuracy'])}%"
                for r in robust
            )
        )
    masking: dict[float, dict[str, float]] = {}
    for r in data.attacks:
        if r["protocol"] == "masking":
            masking.setdefault(r["eps"], {})[r["attack"]] = r["accuracy"]
    if masking:
        zero = {(c["loss"], c["eps"]): c["zero_grad"] for c in data.curves if c["step"] == 0}
        lines.append(
            "masking (PGD, softmax loss vs logit loss): "
            + ", ".join(
                f"eps {eps:g} {pct(m.get('pgd_softmax'))} vs {pct(m.get('pgd_logit'))}"
                f" ({pct(zero.get(('softmax', eps)), 2)}% zero gradients)"
                for eps, m in sorted(masking.items())
            )
        )
    paper = [r for r in data.attacks if r["protocol"] == "paper" and r["attack"] != "clean"]
    if paper:
        lines.append(
            "paper protocol: "
            + ", ".join(f"{r['attack'].upper()} {r['eps']:g} {pct(r['accuracy'])}%" for r in paper)
        )
    return "\n".join(lines)


ATTACK_COLUMNS = ("protocol", "attack", "eps", "steps", "restarts", "accuracy", "correct", "n")


def attack_series(attacks: list[dict]) -> list[Series]:
    """Accuracy % against eps per protocol and attack, each line starting at clean accuracy.

    Only the l-inf attacks (``fgsm``, ``pgd``) are drawn: an l2 radius or a masking check's
    loss variant is not on the same axis.
    """
    clean = {r["protocol"]: r["accuracy"] for r in attacks if r["attack"] == "clean"}
    lines: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row in attacks:
        if row["attack"] in ("fgsm", "pgd") and row["accuracy"] is not None:
            lines.setdefault((row["protocol"], row["attack"]), []).append(
                (row["eps"], 100 * row["accuracy"])
            )
    series = []
    for index, ((protocol, attack), points) in enumerate(sorted(lines.items())):
        if protocol in clean and all(eps > 0 for eps, _ in points):
            points = [(0.0, 100 * clean[protocol]), *points]
        points.sort()
        # PGD is usually run at one budget: points, where a line would join only two values.
        kind = "points" if attack == "pgd" else "line"
        xs, ys = [e for e, _ in points], [a for _, a in points]
        series.append(Series(xs, ys, f"{protocol} {attack}", color=index, kind=kind))
    return series


class RobustnessPanel(Container):
    """The run's attack results: a table of every row, and accuracy against eps."""

    def __init__(self, glyphs: Glyphs = UNICODE, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.glyphs = glyphs
        self.attacks: list[dict] = []

    def compose(self) -> ComposeResult:
        yield DataTable(id="robustness-table", cursor_type="row", zebra_stripes=True)
        yield Chart(self.glyphs, id="robustness-chart")

    def show_run(self, detail: RunDetail) -> None:
        """Show the attacks the run recorded (none until it finishes)."""
        if detail.attacks == self.attacks and self.attacks:
            return
        self.attacks = detail.attacks
        table = self.query_one("#robustness-table", DataTable)
        table.clear(columns=True)
        table.add_columns(*("accuracy %" if c == "accuracy" else c for c in ATTACK_COLUMNS))
        for row in detail.attacks:
            pgd = row["attack"].startswith("pgd")
            table.add_row(
                row["protocol"],
                row["attack"],
                f"{row['eps']:g}",
                str(row["steps"]) if row["steps"] else "",
                str(row["restarts"]) if pgd and row["restarts"] else "",
                pct(row["accuracy"]),
                str(row["correct"]),
                str(row["n"]),
            )
        status = detail.run.get("status")
        empty = (
            "attacks run when training ends"
            if status in ("queued", "running")
            else ("no attack recorded")
        )
        self.query_one("#robustness-chart", Chart).show(
            ChartSpec(
                attack_series(detail.attacks), title="accuracy % vs eps", xlabel="eps", empty=empty
            )
        )

    def export_table(self) -> tuple[str, list[str], list[list[Any]]]:
        """The attack rows, for CSV."""
        return (
            "attacks",
            list(ATTACK_COLUMNS),
            [[row.get(c) for c in ATTACK_COLUMNS] for row in self.attacks],
        )


class EvaluationPanel(VerticalScroll):
    """Natural shifts, certified accuracy and robustness of one run, from ``lba eval``.

    Args:
        reader: The app's store reader.
        run_id: The run to show.
        glyphs: The session's characters.
    """

    DEFAULT_CSS = """
    EvaluationPanel {
        height: 1fr;
    }
    EvaluationPanel DataTable {
        height: auto;
        max-height: 12;
        margin-bottom: 1;
    }
    EvaluationPanel .rb-heading {
        text-style: bold;
    }
    EvaluationPanel #rb-hint {
        color: $text-muted;
    }
    """

    BINDINGS = [Binding("v", "evaluate", "Evaluate run")]

    class Loaded(Message):
        """The panel read its run's evaluation rows."""

        def __init__(self, run_id: int, data: RobustnessData) -> None:
            super().__init__()
            self.run_id = run_id
            self.data = data

    class EvalStarted(Message):
        """``lba eval`` was started for the panel's run."""

        def __init__(self, run_id: int, argv: list[str], log: Path) -> None:
            super().__init__()
            self.run_id = run_id
            self.argv = argv
            self.log = log

    def __init__(
        self,
        reader: Any,
        run_id: int,
        glyphs: Glyphs = UNICODE,
        *,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.reader = reader
        self.run_id = run_id
        self.glyphs = glyphs
        self.data: RobustnessData | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="rb-hint")
        yield Static("Natural shifts: accuracy % per severity", classes="rb-heading")
        yield DataTable(id="rb-shifts", cursor_type="none", zebra_stripes=True)
        yield Static("Certified accuracy % by l2 radius, beside l2 PGD", classes="rb-heading")
        yield DataTable(id="rb-certified", cursor_type="none", zebra_stripes=True)
        yield Static("", id="rb-lipschitz")
        yield Static("", id="rb-attacks")

    def on_mount(self) -> None:
        self.reload()

    def show_run(self, run_id: int) -> None:
        """Switch to another run and read its rows."""
        self.run_id = run_id
        self.reload()

    def reload(self) -> None:
        """Read the run's rows again in a worker (call it when the store changes)."""
        self._load(self.run_id)

    @work(exclusive=True, group="robustness")
    async def _load(self, run_id: int) -> None:
        try:
            data = await self.reader.fetch(robustness_data, run_id)
        except (StoreMissing, StoreUnreadable):
            # the app's own poll reports a missing or unreadable store; show nothing here
            data = RobustnessData(run_id)
        self.post_message(self.Loaded(run_id, data))

    def on_evaluation_panel_loaded(self, message: Loaded) -> None:
        if message.run_id != self.run_id:
            return
        self.data = data = message.data
        hint = self.query_one("#rb-hint", Static)
        if data.empty:
            hint.update(
                f"Run {data.run_id} has no evaluation yet: press v to run "
                f"`lba eval {data.run_id}`."
            )
        else:
            hint.update(f"Run {data.run_id} {data.label}")
        self._fill_shifts(data)
        self._fill_certified(data)
        self.query_one("#rb-lipschitz", Static).update(lipschitz_text(data))
        self.query_one("#rb-attacks", Static).update(attacks_text(data))

    def _fill_shifts(self, data: RobustnessData) -> None:
        table = self.query_one("#rb-shifts", DataTable)
        table.clear(columns=True)
        rows = shift_table(data.shifts)
        worst = next((r for r in data.shifts if r["shift"] == "lighting_worst"), None)
        if not rows and worst is None:
            return
        severities = max((len(values) for _, values, _ in rows), default=1)
        table.add_columns("shift", *(str(s) for s in range(severities)), "mean 1+")
        for shift, values, mean in rows:
            cells = [pct(v) for v in values] + [""] * (severities - len(values))
            table.add_row(shift, *cells, pct(mean))
        if worst is not None:
            table.add_row("worst light", *[""] * severities, pct(worst["accuracy"]))

    def _fill_certified(self, data: RobustnessData) -> None:
        table = self.query_one("#rb-certified", DataTable)
        table.clear(columns=True)
        rows = certified_table(data)
        if not rows:
            return
        table.add_columns("radius", "residual", "pairwise", "l2 PGD")
        for radius, residual, pairwise, l2 in rows:
            table.add_row(f"{radius:g}", pct(residual), pct(pairwise), pct(l2))

    def action_evaluate(self) -> None:
        """Start ``lba eval`` on this run as a detached process, through the app's launcher."""
        launcher = getattr(self.app, "launcher", None)
        db = getattr(self.app, "db_path", None)
        if launcher is None or db is None:
            self.notify("this app cannot start processes", severity="error")
            return
        clock = getattr(self.app, "clock", datetime.now)
        argv = eval_command(self.run_id, Path(db))
        log = eval_log_path(Path(db), self.run_id, clock())
        try:
            launcher.start(argv, log)
        except OSError as exc:
            self.notify(f"cannot start lba eval: {exc.strerror}", severity="error")
            return
        self.notify(f"evaluating run {self.run_id}; log: {log}", title="lba eval")
        self.post_message(self.EvalStarted(self.run_id, argv, log))
