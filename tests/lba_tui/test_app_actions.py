"""Starting training from the app: the exact command lines, detached; and the palette."""

from __future__ import annotations

import sys
from pathlib import Path

from lba_tui.app import LbaApp
from lba_tui.screens.dialogs import StartDialog
from tests.lba_tui.conftest import RecordingApp, screen_text, settle


async def test_r_starts_lba_run_with_the_study_and_overrides(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("r")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, StartDialog)
        dialog.query_one("#study").value = "paper-fmnist"
        dialog.query_one("#overrides").value = "train.epochs=5 grid.seed=[0,1]"
        await pilot.pause()
        assert "$ lba run paper-fmnist --set train.epochs=5" in screen_text(app)
        await pilot.press("enter")
        await settle(pilot)
    (launch,) = app.launcher.launched
    assert launch.argv == [
        sys.executable,
        "-m",
        "lba_tui.cli",
        "run",
        "paper-fmnist",
        "--set",
        "train.epochs=5",
        "--set",
        "grid.seed=[0,1]",
        "--db",
        "demo.db",
    ]
    assert launch.log == Path("demo-run-paper-fmnist-20250601-120000.log").resolve()
    assert any("started lba run paper-fmnist (pid 4242)" in m for m in app.messages)


async def test_T_starts_lba_tune_with_a_trial_count(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("T")
        await pilot.pause()
        app.screen.query_one("#trials").value = "12"
        await pilot.press("enter")
        await settle(pilot)
    (launch,) = app.launcher.launched
    assert launch.argv[3:] == ["tune", "quickstart", "--trials", "12", "--db", "demo.db"]


async def test_escape_cancels_the_start_dialog(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("r", "escape")
        await settle(pilot)
        assert not isinstance(app.screen, StartDialog)
    assert app.launcher.launched == []


async def test_the_command_palette_offers_the_app_actions(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Start a study run" in titles and "Export runs to CSV" in titles
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"tuning s")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await settle(pilot)
        assert type(app.screen).__name__ == "TuneScreen"


async def test_q_quits(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0 and not app.is_running


async def test_sixteen_colours_use_the_terminal_palette(demo_db: Path) -> None:
    app = RecordingApp(demo_db, ansi=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("j", "enter")
        await settle(pilot)
        assert app.theme == "ansi-dark"
        assert "train loss" in screen_text(app)


def test_main_reads_db_from_the_option_then_the_environment(monkeypatch, tmp_path: Path) -> None:
    from lba_tui import app as app_module

    started: list[LbaApp] = []
    monkeypatch.setattr(app_module.LbaApp, "run", lambda self: started.append(self))
    monkeypatch.setenv("LBA_DB", str(tmp_path / "env.db"))
    monkeypatch.setenv("TERM", "xterm")  # 16 colours
    monkeypatch.delenv("COLORTERM", raising=False)
    app_module.main([])
    app_module.main(["--db", "other.db", "--ascii"])
    assert started[0].db_path == tmp_path / "env.db" and started[0].ansi
    assert started[1].db_path == Path("other.db") and started[1].glyphs.ascii
