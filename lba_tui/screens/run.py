"""One run: live curves, the Lipschitz trace, the layer draws, robustness and the config."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from textual import work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.message import Message
from textual.widgets import Footer, Static, TabbedContent, TabPane

from lba_tui.glyphs import num, pct
from lba_tui.reader import RunDetail, StoreMissing, StoreReader, StoreUnreadable
from lba_tui.screens.base import LbaScreen
from lba_tui.widgets.curves import CurvesPanel
from lba_tui.widgets.draws import DrawsPanel
from lba_tui.widgets.lipschitz import LipschitzPanel
from lba_tui.widgets.robustness import EvaluationPanel, RobustnessPanel
from lba_tui.widgets.run_info import RunInfoPanel

TABS = ("curves", "lipschitz", "draws", "robustness", "config")


def summary_text(run: dict) -> str:
    """One line on a run: identity, status, progress and latest metrics."""
    parts = [
        f"run {run['id']}",
        run.get("study") or "",
        run.get("label") or f"{run.get('method')} n={run.get('depth')} seed={run.get('seed')}",
        run.get("status") or "",
        f"epoch {run.get('epoch') or 0}/{run.get('epochs') or '?'}",
        f"train {pct(run.get('train_acc'))}",
        f"test {pct(run.get('test_acc'))}",
        f"gap {pct(run.get('gap'))}",
        f"log10 LB {num(run.get('log10_lb'))}",
    ]
    return "  ".join(p for p in parts if p)


class RunLoaded(Message):
    """The run worker read the run and what it recorded after ``after_epoch``."""

    def __init__(self, version: int | None, detail: RunDetail | None, after_epoch: int) -> None:
        super().__init__()
        self.version = version
        self.detail = detail
        self.after_epoch = after_epoch


class RunScreen(LbaScreen):
    """A run, refreshed while it trains: new epochs appear within a poll of being written."""

    TITLE_WHERE = "run"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("1", "tab('curves')", "Curves", show=False),
        Binding("2", "tab('lipschitz')", "Lipschitz", show=False),
        Binding("3", "tab('draws')", "Draws", show=False),
        Binding("4", "tab('robustness')", "Robustness", show=False),
        Binding("5", "tab('config')", "Config", show=False),
        Binding("6", "tab('evaluation')", "Evaluation", show=False),
        Binding("x", "stop", "Stop run"),
        Binding("v", "evaluate", "Evaluate"),
        Binding("e", "export", "Export CSV"),
    ]
    HELP = "1-5 or left/right switch tabs: curves, Lipschitz, draws, robustness, config."

    def __init__(self, run_id: int) -> None:
        super().__init__()
        self.run_id = run_id
        self.TITLE_WHERE = f"run {run_id}"
        self.detail: RunDetail | None = None

    def compose(self) -> ComposeResult:
        glyphs = self.lba.glyphs
        yield from self.title_bar()
        yield Static(
            Content(f"run {self.run_id}: reading ..."), id="run-summary", classes="summary"
        )
        with TabbedContent(initial="curves"):
            with TabPane("1 Curves", id="curves"):
                yield CurvesPanel(glyphs, id="curves-panel")
            with TabPane("2 Lipschitz", id="lipschitz"):
                yield LipschitzPanel(glyphs, id="lipschitz-panel")
            with TabPane("3 Draws", id="draws"):
                yield DrawsPanel(glyphs, id="draws-panel")
            with TabPane("4 Robustness", id="robustness"):
                yield RobustnessPanel(glyphs, id="robustness-panel")
            with TabPane("5 Config", id="config"):
                yield RunInfoPanel(id="config-panel")
            with TabPane("6 Eval", id="evaluation"):
                yield EvaluationPanel(self.lba.reader, self.run_id, glyphs, id="evaluation-panel")
        yield Footer()

    def reload(self) -> None:
        after = self.detail.epochs[-1]["epoch"] if self.detail and self.detail.epochs else 0
        self._load(after)

    @work(exclusive=True, group="run")
    async def _load(self, after_epoch: int) -> None:
        try:
            version, detail = await self.lba.reader.fetch(
                StoreReader.versioned, StoreReader.run_detail, self.run_id, after_epoch
            )
        except (StoreMissing, StoreUnreadable):
            version, detail = None, None
        self.post_message(RunLoaded(version, detail, after_epoch))

    def on_run_loaded(self, message: RunLoaded) -> None:
        self.seen_version = message.version
        summary = self.query_one("#run-summary", Static)
        if message.detail is None:
            summary.update(Content(f"run {self.run_id} is not in {self.lba.db_path}"))
            return
        fresh = message.detail
        if self.detail is None or message.after_epoch == 0:
            self.detail = fresh
        else:
            # Keep what was read before; add the epochs and norms written since.
            self.detail.run = fresh.run
            self.detail.attacks = fresh.attacks
            self.detail.epochs += [e for e in fresh.epochs if e["epoch"] > message.after_epoch]
            self.detail.sigmas += [s for s in fresh.sigmas if s["epoch"] > message.after_epoch]
        summary.update(Content(summary_text(self.detail.run)))
        for panel in self.panels():
            panel.show_run(self.detail)
        # shifts and certificates come from `lba eval`, which may have written since
        self.query_one(EvaluationPanel).reload()

    def panels(self) -> list:
        """The five panels, in tab order."""
        return [
            self.query_one(CurvesPanel),
            self.query_one(LipschitzPanel),
            self.query_one(DrawsPanel),
            self.query_one(RobustnessPanel),
            self.query_one(RunInfoPanel),
        ]

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_tab(self, tab: str) -> None:
        """Show one tab."""
        self.query_one(TabbedContent).active = tab

    def action_export(self) -> None:
        """Write the table behind the current tab to CSV."""
        active = self.query_one(TabbedContent).active
        panel = self.panels()[TABS.index(active)] if active in TABS else None
        if panel is None:
            self.notify("export evaluations with `lba export STUDY --what shifts --csv FILE` "
                        "(or certified)", severity="warning")
            return
        what, headers, rows = panel.export_table()
        if not rows:
            self.notify(f"nothing to export in {active} yet", severity="warning")
            return
        self.lba.export_csv(f"run{self.run_id}-{what}", headers, rows)

    def action_evaluate(self) -> None:
        """Start `lba eval` on this run (shifts, certificates, standard attacks), detached."""
        self.action_tab("evaluation")
        self.query_one(EvaluationPanel).action_evaluate()

    def action_stop(self) -> None:
        """Stop this run (asks first)."""
        from lba_tui.screens.dialogs import stop_run_id

        stop_run_id(self.lba, self.run_id)

    def commands(self) -> Iterable[SystemCommand]:
        yield SystemCommand("Export this tab to CSV", "", self.action_export)
        yield SystemCommand("Stop this run", "SIGINT to its process", self.action_stop)
        for tab in TABS:
            yield SystemCommand(f"Show {tab}", "", lambda tab=tab: self.action_tab(tab))
