"""The first screen: every run in the store, live, with the actions that start from a run."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Footer, Input, Static

from lba_tui.reader import RunRow, StoreMissing, StoreReader, StoreUnreadable
from lba_tui.screens.base import LbaScreen, TitleBar
from lba_tui.widgets.empty import EmptyStore
from lba_tui.widgets.run_table import COLUMN_KEYS, RunTable

FILTER_HELP = (
    "Filter (/): words match study, method, status or label; field:value matches one field "
    "(study:paper status:running n:3,5 seed:0); field>x and field<x compare numbers, "
    "accuracies in percent (test>80 gap<5 lb<2); a leading - negates (-status:done; -trial "
    "hides tuning trials)."
)


class RunsLoaded(Message):
    """The runs worker read the store: every run, or (``partial``) those that may have changed.

    ``count`` is how many runs the store holds, -1 when unknown.
    """

    def __init__(
        self,
        version: int | None,
        rows: list[RunRow],
        state: str,
        problem: str = "",
        *,
        partial: bool = False,
        count: int = -1,
    ) -> None:
        super().__init__()
        self.version = version
        self.rows = rows
        self.state = state
        self.problem = problem
        self.partial = partial
        self.count = count


class RunsScreen(LbaScreen):
    """The runs table, its filter line and a status line."""

    TITLE_WHERE = "runs"
    HELP = FILTER_HELP
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort", "Sort"),
        Binding("S", "reverse", "Reverse sort", show=False),
        Binding("c", "compare", "Compare marked"),
        Binding("p", "study_table", "Study table", show=False),
        Binding("t", "tuning", "Tuning", show=False),
        Binding("r", "start_run", "Run study"),
        Binding("T", "start_tune", "Tune study", show=False),
        Binding("x", "stop", "Stop run"),
        Binding("e", "export", "Export CSV"),
        Binding("escape", "clear", "Clear filter and marks", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.state = "loading"

    def compose(self) -> ComposeResult:
        yield from self.title_bar()
        with Vertical(id="runs-body"):
            yield EmptyStore(id="empty")
            yield RunTable(self.lba.glyphs, id="runs")
            yield Input(
                placeholder="filter: study:paper status:running n:3 test>80 -method:none",
                id="filter",
            )
            yield Static(id="runs-status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(EmptyStore).show_state(str(self.lba.db_path), "loading")
        self.query_one("#filter").display = False
        self.query_one(RunTable).display = False

    @property
    def table(self) -> RunTable:
        """The runs table."""
        return self.query_one(RunTable)

    # -- reading ---------------------------------------------------------------------------

    def reload(self) -> None:
        self._load_runs()

    @work(exclusive=True, group="runs")
    async def _load_runs(self) -> None:
        table = self.table
        reader = self.lba.reader
        try:
            if table.rows and self.state == "ready":
                # Only new, queued and running runs can have changed since the last read.
                version, (rows, everything, count) = await reader.fetch(
                    StoreReader.versioned, StoreReader.runs_changed, table.max_id, table.active_ids
                )
                message = RunsLoaded(version, rows, "ready", partial=not everything, count=count)
            else:
                version, rows = await reader.fetch(StoreReader.versioned, StoreReader.runs)
                message = RunsLoaded(version, rows, "ready" if rows else "empty")
        except StoreMissing:
            message = RunsLoaded(None, [], "missing")
        except StoreUnreadable as exc:
            message = RunsLoaded(None, [], "unreadable", str(exc))
        self.post_message(message)

    def on_runs_loaded(self, message: RunsLoaded) -> None:
        self.seen_version = message.version
        self.state = message.state
        table, empty = self.table, self.query_one(EmptyStore)
        ready = message.state == "ready"
        if not ready:
            empty.show_state(str(self.lba.db_path), message.state, message.problem)
        empty.display = not ready
        table.display = ready
        if message.partial:
            table.update_rows(message.rows)
        else:
            table.set_rows(message.rows)
        if ready and (self.focused is None or self.focused is self.query_one(EmptyStore)):
            table.focus()
        self._update_status()
        if message.count >= 0 and message.count != len(table.rows):
            # Runs disappeared (another store file at the same path): read everything again.
            self.state = "stale"
            self.reload()

    def _update_status(self) -> None:
        table = self.table
        rows = table.rows.values()
        running = sum(r.status == "running" for r in rows)
        parts = [f"{len(table.rows)} runs"]
        if len(table.view) != len(table.rows):
            parts.append(f"{len(table.view)} shown")
        if running:
            parts.append(f"{running} running")
        if table.marked:
            parts.append(f"{len(table.marked)} marked")
        arrow = self.lba.glyphs.down if table.reverse else self.lba.glyphs.up
        parts.append(f"sort {table.sort_key} {arrow}")
        if table.filter_text:
            parts.append(f"filter: {table.filter_text}")
        self.query_one("#runs-status", Static).update(Content("  ".join(parts)))
        self.query_one(TitleBar).note = f"{running} running" if running else ""

    # -- table events ----------------------------------------------------------------------

    def on_run_table_opened(self, message: RunTable.Opened) -> None:
        from lba_tui.screens.run import RunScreen

        self.app.push_screen(RunScreen(message.run_id))

    def on_run_table_marks_changed(self, message: RunTable.MarksChanged) -> None:
        self._update_status()

    def on_run_table_sorted(self, message: RunTable.Sorted) -> None:
        self._update_status()

    # -- filter ----------------------------------------------------------------------------

    def action_filter(self) -> None:
        """Show the filter line and type into it."""
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.table.set_filter(event.value)
        self._update_status()

    @on(Input.Submitted, "#filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        if not event.value:
            event.input.display = False
        self.table.focus()

    def action_clear(self) -> None:
        """Escape: close the filter line and clear the filter, then the marks."""
        box = self.query_one("#filter", Input)
        if box.value or box.display:
            box.value = ""
            box.display = False
            self.table.set_filter("")
            self.table.focus()
        elif self.table.marked:
            self.table.set_marks([])
        self._update_status()

    # -- sorting ---------------------------------------------------------------------------

    def action_sort(self) -> None:
        """Sort by the next column."""
        self.table.cycle_sort()

    def action_reverse(self) -> None:
        """Flip the sort direction."""
        self.table.toggle_reverse()

    # -- other screens ---------------------------------------------------------------------

    def action_compare(self) -> None:
        """Compare the marked runs (at least two), or the study of the current run."""
        from lba_tui.screens.compare import CompareScreen

        marked = list(self.table.marked)
        if len(marked) < 2:
            self.notify("mark two or more runs with space to compare them", severity="warning")
            return
        self.app.push_screen(CompareScreen(marked))

    def action_study_table(self) -> None:
        """The paper-style table of the current run's study."""
        from lba_tui.screens.compare import CompareScreen

        current = self.table.current_id
        if current is None:
            self.notify("no run selected", severity="warning")
            return
        study = self.table.rows[current].study
        self.app.push_screen(CompareScreen(list(self.table.marked), study=study, tab="table"))

    def action_tuning(self) -> None:
        """The tuning studies."""
        from lba_tui.screens.tune import TuneScreen

        self.app.push_screen(TuneScreen())

    # -- actions on processes --------------------------------------------------------------

    def action_start_run(self) -> None:
        """Ask for a study and overrides, then start ``lba run`` detached."""
        from lba_tui.screens.dialogs import start_dialog

        start_dialog(self.lba, "run")

    def action_start_tune(self) -> None:
        """Ask for a study and a trial count, then start ``lba tune`` detached."""
        from lba_tui.screens.dialogs import start_dialog

        start_dialog(self.lba, "tune")

    def action_stop(self) -> None:
        """Stop the run under the cursor (asks first)."""
        from lba_tui.screens.dialogs import stop_run_id

        current = self.table.current_id
        if current is None:
            self.notify("no run selected", severity="warning")
            return
        stop_run_id(self.lba, current)

    def action_export(self) -> None:
        """Write the runs shown (filtered and sorted as on screen) to CSV."""
        headers, cells = self.table.table_text()
        if not cells:
            self.notify("no runs to export", severity="warning")
            return
        self.lba.export_csv("runs", headers, cells)

    def commands(self) -> Iterable[SystemCommand]:
        yield SystemCommand("Start a study run", "lba run STUDY, detached", self.action_start_run)
        yield SystemCommand("Start a tuning job", "lba tune STUDY", self.action_start_tune)
        yield SystemCommand("Export runs to CSV", "The table as shown", self.action_export)
        yield SystemCommand("Compare marked runs", "Curves and configs", self.action_compare)
        yield SystemCommand("Study table", "Paper-style table", self.action_study_table)
        yield SystemCommand("Tuning studies", "Trials, history, Pareto", self.action_tuning)
        for key in COLUMN_KEYS:
            yield SystemCommand(
                f"Sort runs by {key}", "", lambda key=key: self.table.sort_by(key), discover=False
            )
