"""Compare runs: their curves overlaid, where their configs differ, and a study's table."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from textual import work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.message import Message
from textual.widgets import Footer, Static, TabbedContent, TabPane

from lba_tui.reader import (
    RunDetail,
    StoreMissing,
    StoreReader,
    StoreUnreadable,
    StudyTable,
    study_table,
)
from lba_tui.screens.base import LbaScreen
from lba_tui.widgets.config_diff import ConfigDiffPanel
from lba_tui.widgets.overlay import OverlayPanel
from lba_tui.widgets.study_table import StudyTablePanel

TABS = ("curves", "configs", "table")


class CompareLoaded(Message):
    """The compare worker read the runs, the study list and one study's table."""

    def __init__(
        self,
        version: int | None,
        details: list[RunDetail],
        studies: list[str],
        table: StudyTable | None,
    ) -> None:
        super().__init__()
        self.version = version
        self.details = details
        self.studies = studies
        self.table = table


class CompareScreen(LbaScreen):
    """Marked runs side by side, and the paper-style table of a study.

    Args:
        run_ids: the runs to compare (may be empty when only the table is wanted).
        study: the study whose table to show; default the first run's.
        tab: the tab to open on (``curves``, ``configs`` or ``table``).
    """

    TITLE_WHERE = "compare"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("1", "tab('curves')", "Curves", show=False),
        Binding("2", "tab('configs')", "Configs", show=False),
        Binding("3", "tab('table')", "Study table", show=False),
        Binding("m", "metric", "Next metric"),
        Binding("left_square_bracket", "study(-1)", "Previous study", show=False),
        Binding("right_square_bracket", "study(1)", "Next study", show=False),
        Binding("e", "export", "Export CSV"),
    ]
    HELP = "1-3 switch tabs; m cycles the overlaid metric; [ and ] step through studies."

    def __init__(
        self, run_ids: list[int], *, study: str | None = None, tab: str = "curves"
    ) -> None:
        super().__init__()
        self.run_ids = list(run_ids)
        self.study = study
        self.tab = tab
        self.studies: list[str] = []

    def compose(self) -> ComposeResult:
        glyphs = self.lba.glyphs
        yield from self.title_bar()
        ids = ", ".join(map(str, self.run_ids)) or "none marked"
        yield Static(Content(f"comparing runs {ids}"), id="compare-summary", classes="summary")
        with TabbedContent(initial=self.tab):
            with TabPane("1 Curves", id="curves"):
                yield OverlayPanel(glyphs, id="overlay-panel")
            with TabPane("2 Config diff", id="configs"):
                yield ConfigDiffPanel(id="diff-panel")
            with TabPane("3 Study table", id="table"):
                yield StudyTablePanel(glyphs, id="study-panel")
        yield Footer()

    def reload(self) -> None:
        self._load(self.study)

    @work(exclusive=True, group="compare")
    async def _load(self, study: str | None) -> None:
        reader = self.lba.reader
        try:
            version, details = await reader.fetch(
                StoreReader.versioned, StoreReader.compare, self.run_ids
            )
            studies = await reader.fetch(StoreReader.studies)
            if study is None:
                study = details[0].run["study"] if details else (studies[0] if studies else None)
            table = None
            if study is not None:
                table = await reader.fetch(study_table, study, self.lba.glyphs.plus_minus)
        except (StoreMissing, StoreUnreadable):
            version, details, studies, table = None, [], [], None
        self.post_message(CompareLoaded(version, details, studies, table))

    def on_compare_loaded(self, message: CompareLoaded) -> None:
        self.seen_version = message.version
        self.studies = message.studies
        if message.details:
            self.query_one(OverlayPanel).show_runs(message.details)
            self.query_one(ConfigDiffPanel).show_runs(message.details)
        if message.table is not None:
            self.study = message.table.study
            self.query_one(StudyTablePanel).show_table(message.table, message.studies)
        labels = [f"#{d.run['id']} {d.run.get('label', '')}" for d in message.details]
        text = (
            "comparing " + "; ".join(labels)
            if labels
            else "no runs to compare: mark them with space on the runs screen, then press c"
        )
        self.query_one("#compare-summary", Static).update(Content(text))

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_tab(self, tab: str) -> None:
        """Show one tab."""
        self.query_one(TabbedContent).active = tab

    def action_metric(self) -> None:
        """Overlay the next metric."""
        self.query_one(OverlayPanel).next_metric()

    def action_study(self, step: int) -> None:
        """Show the previous or next study's table."""
        if not self.studies:
            return
        index = self.studies.index(self.study) if self.study in self.studies else -step
        self.study = self.studies[(index + step) % len(self.studies)]
        self.action_tab("table")
        self._load(self.study)

    def action_export(self) -> None:
        """Write the table behind the current tab to CSV."""
        active = self.query_one(TabbedContent).active
        panel = {
            "curves": self.query_one(OverlayPanel),
            "configs": self.query_one(ConfigDiffPanel),
            "table": self.query_one(StudyTablePanel),
        }[active]
        what, headers, rows = panel.export_table()
        if not rows:
            self.notify(f"nothing to export in {active}", severity="warning")
            return
        self.lba.export_csv(what, headers, rows)

    def commands(self) -> Iterable[SystemCommand]:
        yield SystemCommand("Export this tab to CSV", "", self.action_export)
        yield SystemCommand("Next overlaid metric", "", self.action_metric)
        yield SystemCommand("Next study table", "", lambda: self.action_study(1))
