"""One session per terminal size that drives every screen and action from the keyboard, as a
user would: runs, filter, sort, marks, compare, the study table, tuning, a run's five tabs,
export, stop, start, the keys screen and quit. The other test files go into each in depth."""

from __future__ import annotations

from pathlib import Path

import pytest

from lba_tui.screens.compare import CompareScreen
from lba_tui.screens.dialogs import ConfirmDialog, StartDialog
from lba_tui.screens.help import HelpScreen
from lba_tui.screens.run import RunScreen
from lba_tui.screens.runs import RunsScreen
from lba_tui.screens.tune import TuneScreen
from lba_tui.widgets.run_table import RunTable
from tests.lba_tui.conftest import SIZES, RecordingApp, screen_text, settle
from tests.lba_tui.test_app_run import set_running_here


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
async def test_every_screen_and_action_from_the_keyboard(demo_db: Path, size) -> None:
    app = RecordingApp(demo_db)
    set_running_here(demo_db, 2, app, pid=4321)
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        assert len(table.rows) == 49 and table.virtual_size.width <= size[0]

        # Filter, sort, mark two runs, compare them.
        await pilot.press("slash", *"lba", "enter")
        assert {r.method for r in table.view} == {"lba"}
        await pilot.press("s", "S", "space", "space", "c")
        await settle(pilot)
        assert isinstance(app.screen, CompareScreen) and len(app.screen.run_ids) == 2
        await pilot.press("m", "2")
        await settle(pilot)
        assert "keys differ" in screen_text(app)
        await pilot.press("escape", "escape", "escape")  # back, clear filter, clear marks
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen) and not table.marked
        assert len(table.view) == 49

        # The study table of the run under the cursor.
        await pilot.press("g", "s", "S", "g")  # sort by study, descending: paper-fmnist first
        await pilot.press("p")
        await settle(pilot)
        assert "study quickstart" in screen_text(app) or "study paper-fmnist" in screen_text(app)
        await pilot.press("e", "escape")
        await settle(pilot)

        # Tuning: four tabs, two studies.
        await pilot.press("t")
        await settle(pilot)
        assert isinstance(app.screen, TuneScreen)
        for key in ("right_square_bracket", "2", "3", "4", "1", "e"):
            await pilot.press(key)
            await settle(pilot)
        assert "tune-lba:lba" in screen_text(app)
        await pilot.press("escape")
        await settle(pilot)

        # A running run: five tabs, export, stop (asked, then SIGINT to its pid).
        await pilot.press("s", "g", "j", "enter")  # back to id order; run 2
        await settle(pilot)
        assert isinstance(app.screen, RunScreen) and app.screen.run_id == 2
        for key in ("2", "3", "4", "5", "1"):
            await pilot.press(key)
            await pilot.pause()
        await pilot.press("e", "x")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await settle(pilot)
        assert app.launcher.stopped == [(4321, 2)]
        await pilot.press("escape")
        await settle(pilot)

        # Start a study run (detached), the keys screen, quit.
        await pilot.press("r")
        assert isinstance(app.screen, StartDialog)
        await pilot.press("enter")
        await settle(pilot)
        assert app.launcher.launched[0].argv[3:5] == ["run", "quickstart"]
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape", "q")
        await pilot.pause()
    assert not app.is_running
    assert len(app.exported) == 3 and all(p.exists() for p in app.exported)
    assert sum("wrote" in m for m in app.messages) == 3
