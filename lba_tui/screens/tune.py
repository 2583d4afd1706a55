"""Tuning studies (``lba tune``): trials, optimization history, intermediate values with the
pruned trials marked, parameter importances and the Pareto front."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from textual import work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.message import Message
from textual.widgets import Footer, Static, TabbedContent, TabPane

from lba_tui.reader import StoreMissing, StoreReader, StoreUnreadable, TuneData
from lba_tui.screens.base import LbaScreen
from lba_tui.widgets.tune_history import HistoryPanel
from lba_tui.widgets.tune_importance import ImportancePanel
from lba_tui.widgets.tune_pareto import ParetoPanel
from lba_tui.widgets.tune_trials import TrialsPanel

TABS = ("trials", "history", "importance", "pareto")
NO_TUNING = (
    "No tuning study in this store yet.\n\n"
    "Start one with  lba tune STUDY --trials N  (or press T on the runs screen);\n"
    "its trials appear here as they finish or are pruned."
)


class TuneLoaded(Message):
    """The tuning worker read the list of tuning studies and one of them."""

    def __init__(self, version: int | None, names: list[str], data: TuneData | None) -> None:
        super().__init__()
        self.version = version
        self.names = names
        self.data = data


class TuneScreen(LbaScreen):
    """One tuning study at a time; [ and ] step through them."""

    TITLE_WHERE = "tuning"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("1", "tab('trials')", "Trials", show=False),
        Binding("2", "tab('history')", "History", show=False),
        Binding("3", "tab('importance')", "Importance", show=False),
        Binding("4", "tab('pareto')", "Pareto", show=False),
        Binding("left_square_bracket", "study(-1)", "Previous study", show=False),
        Binding("right_square_bracket", "study(1)", "Next study", show=False),
        Binding("e", "export", "Export CSV"),
    ]
    HELP = "1-4 switch tabs; [ and ] step through tuning studies."

    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self.name_shown = name
        self.names: list[str] = []

    def compose(self) -> ComposeResult:
        glyphs = self.lba.glyphs
        yield from self.title_bar()
        yield Static(Content("reading ..."), id="tune-summary", classes="summary")
        with TabbedContent(initial="trials", id="tune-tabs"):
            with TabPane("1 Trials", id="trials"):
                yield TrialsPanel(id="trials-panel")
            with TabPane("2 History", id="history"):
                yield HistoryPanel(glyphs, id="history-panel")
            with TabPane("3 Importance", id="importance"):
                yield ImportancePanel(glyphs, id="importance-panel")
            with TabPane("4 Pareto", id="pareto"):
                yield ParetoPanel(glyphs, id="pareto-panel")
        yield Footer()

    def reload(self) -> None:
        self._load(self.name_shown)

    @work(exclusive=True, group="tune")
    async def _load(self, name: str | None) -> None:
        reader = self.lba.reader
        try:
            version, names = await reader.fetch(StoreReader.versioned, StoreReader.tune_studies)
            if name not in names:
                name = names[0] if names else None
            data = await reader.fetch(StoreReader.tune, name) if name else None
        except (StoreMissing, StoreUnreadable):
            version, names, data = None, [], None
        self.post_message(TuneLoaded(version, names, data))

    def on_tune_loaded(self, message: TuneLoaded) -> None:
        self.seen_version = message.version
        self.names = message.names
        summary = self.query_one("#tune-summary", Static)
        tabs = self.query_one(TabbedContent)
        if message.data is None:
            summary.update(Content(NO_TUNING))
            tabs.display = False
            return
        tabs.display = True
        data = message.data
        self.name_shown = data.name
        position = f"{self.names.index(data.name) + 1}/{len(self.names)}"
        source = "Optuna" if data.source == "optuna" else "runs table"
        summary.update(
            Content(f"tuning study {data.name} ({position}; [ ] other study; from {source})")
        )
        self.query_one(TrialsPanel).show_trials(data)
        self.query_one(HistoryPanel).show_trials(data)
        self.query_one(ImportancePanel).show_trials(data)
        self.query_one(ParetoPanel).show_trials(data)

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_tab(self, tab: str) -> None:
        """Show one tab."""
        self.query_one(TabbedContent).active = tab

    def action_study(self, step: int) -> None:
        """Show the previous or next tuning study."""
        if not self.names:
            return
        index = self.names.index(self.name_shown) if self.name_shown in self.names else 0
        self.name_shown = self.names[(index + step) % len(self.names)]
        self._load(self.name_shown)

    def action_export(self) -> None:
        """Write the trials table to CSV."""
        what, headers, rows = self.query_one(TrialsPanel).export_table()
        if not rows:
            self.notify("no trials to export", severity="warning")
            return
        self.lba.export_csv(f"{what}-{self.name_shown}", headers, rows)

    def commands(self) -> Iterable[SystemCommand]:
        yield SystemCommand("Export trials to CSV", "", self.action_export)
        yield SystemCommand("Next tuning study", "", lambda: self.action_study(1))
