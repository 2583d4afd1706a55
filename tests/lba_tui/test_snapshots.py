"""What the main screens look like, on the deterministic demo store (SVG snapshots).

Update after an intended change with ``pytest tests/lba_tui/test_snapshots.py
--snapshot-update`` and look at the report before committing.
"""

from __future__ import annotations

from pathlib import Path

from lba_tui.screens.compare import CompareScreen
from lba_tui.screens.run import RunScreen
from lba_tui.screens.tune import TuneScreen
from tests.lba_tui.conftest import RecordingApp, settle


def opened(screen_factory=None, *keys: str):
    async def run_before(pilot) -> None:
        await settle(pilot)
        if screen_factory is not None:
            pilot.app.push_screen(screen_factory())
            await settle(pilot)
        for key in keys:
            await pilot.press(key)
        await settle(pilot)

    return run_before


def test_runs_80x24(snap_compare, demo_db: Path) -> None:
    assert snap_compare(RecordingApp(demo_db), terminal_size=(80, 24), run_before=opened())


def test_runs_120x40_sorted_by_test_with_marks(snap_compare, demo_db: Path) -> None:
    run_before = opened(None, "space", "j", "space", *["s"] * 8, "S")
    assert snap_compare(RecordingApp(demo_db), terminal_size=(120, 40), run_before=run_before)


def test_run_curves_80x24(snap_compare, demo_db: Path) -> None:
    run_before = opened(lambda: RunScreen(2))
    assert snap_compare(RecordingApp(demo_db), terminal_size=(80, 24), run_before=run_before)


def test_run_curves_120x40(snap_compare, demo_db: Path) -> None:
    run_before = opened(lambda: RunScreen(8))
    assert snap_compare(RecordingApp(demo_db), terminal_size=(120, 40), run_before=run_before)


def test_run_lipschitz_120x40(snap_compare, demo_db: Path) -> None:
    run_before = opened(lambda: RunScreen(16), "2")
    assert snap_compare(RecordingApp(demo_db), terminal_size=(120, 40), run_before=run_before)


def test_run_robustness_80x24(snap_compare, demo_db: Path) -> None:
    run_before = opened(lambda: RunScreen(8), "4")
    assert snap_compare(RecordingApp(demo_db), terminal_size=(80, 24), run_before=run_before)


def test_compare_curves_120x40(snap_compare, demo_db: Path) -> None:
    run_before = opened(lambda: CompareScreen([6, 8, 10, 12, 14]))
    assert snap_compare(RecordingApp(demo_db), terminal_size=(120, 40), run_before=run_before)


def test_study_table_120x40(snap_compare, demo_db: Path) -> None:
    run_before = opened(lambda: CompareScreen([], study="paper-fmnist", tab="table"))
    assert snap_compare(RecordingApp(demo_db), terminal_size=(120, 40), run_before=run_before)


def test_tuning_trials_80x24(snap_compare, demo_db: Path) -> None:
    run_before = opened(lambda: TuneScreen("tune-lba:lba"))
    assert snap_compare(RecordingApp(demo_db), terminal_size=(80, 24), run_before=run_before)


def test_tuning_history_120x40(snap_compare, demo_db: Path) -> None:
    run_before = opened(lambda: TuneScreen("tune-lba:lba"), "2")
    assert snap_compare(RecordingApp(demo_db), terminal_size=(120, 40), run_before=run_before)


def test_keys_80x24(snap_compare, demo_db: Path) -> None:
    run_before = opened(None, "question_mark")
    assert snap_compare(RecordingApp(demo_db), terminal_size=(80, 24), run_before=run_before)


def test_missing_store_80x24(snap_compare, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = RecordingApp(Path("lba.db"))
    assert snap_compare(app, terminal_size=(80, 24), run_before=opened())


def test_ascii_run_80x24(snap_compare, demo_db: Path) -> None:
    """LANG=C: every glyph the app draws is ASCII."""
    app = RecordingApp(demo_db, ascii=True)
    assert snap_compare(app, terminal_size=(80, 24), run_before=opened(lambda: RunScreen(2)))
