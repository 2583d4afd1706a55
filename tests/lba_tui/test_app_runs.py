"""The runs screen driven by a pilot at 80x24 and 120x40: loading, moving, sorting,
filtering, marking, exporting, the keys screen and the empty-store note."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pytest

from lba_tui.fixtures import append_epoch
from lba_tui.widgets.empty import EmptyStore
from lba_tui.widgets.run_table import RunTable
from tests.lba_tui.conftest import SIZES, RecordingApp, screen_text, settle


async def test_runs_table_lists_every_run_with_its_columns(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        assert len(table.rows) == 49
        text = screen_text(app)
        for header in (
            "id",
            "study",
            "method",
            "seed",
            "status",
            "epoch",
            "train",
            "test",
            "gap",
            "logLB",
            "FGSM",
            "PGD",
        ):
            assert header in text
        assert "quickstart" in text and "running" in text and "12/20" in text
        # Every column fits 80 cells: nothing scrolls sideways.
        assert table.virtual_size.width <= 80


async def test_j_and_k_move_the_cursor_and_enter_opens_the_run(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        await pilot.press("j", "j", "k")
        assert table.current_id == 2
        await pilot.press("enter")
        await settle(pilot)
        assert app.screen.run_id == 2
        assert "run 2" in screen_text(app)
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen.query_one(RunTable).current_id == 2


async def test_s_cycles_the_sort_column_and_S_reverses_it(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        await pilot.press("s")
        assert table.sort_key == "study"
        studies = [r.study for r in table.view]
        assert studies == sorted(studies)
        await pilot.press("s", "s", "s", "s", "s", "s", "s")
        assert table.sort_key == "test"
        await pilot.press("S")
        tests = [r.test for r in table.view if r.test is not None]
        assert tests == sorted(tests, reverse=True)
        # Runs without a test accuracy (queued) go last in both directions.
        assert table.view[-1].test is None
        assert "sort test" in screen_text(app)


async def test_clicking_a_header_sorts_by_that_column(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        header = screen_text(app).splitlines()[1]
        await pilot.click(RunTable, offset=(header.index("method") + 1, 0))
        assert table.sort_key == "method"
        await pilot.click(RunTable, offset=(header.index("method") + 1, 0))
        assert table.reverse


@pytest.mark.parametrize("size", SIZES)
async def test_slash_filters_live_and_escape_clears(demo_db: Path, size) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        await pilot.press("slash", *"lba")
        assert {r.method for r in table.view} == {"lba"}
        app.screen.query_one("#filter").value = "method:lba test>78"
        await pilot.press("enter")
        assert {r.method for r in table.view} == {"lba"}
        assert all(r.test * 100 > 78 for r in table.view)
        assert "shown" in screen_text(app)
        assert table.has_focus
        await pilot.press("escape")
        assert len(table.view) == len(table.rows)


async def test_space_marks_runs_and_c_compares_them(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        assert any("mark two" in m for m in app.messages)
        await pilot.press("space", "space")
        table = app.screen.query_one(RunTable)
        assert table.marked == [1, 2]
        assert "2 marked" in screen_text(app)
        await pilot.press("c")
        await settle(pilot)
        assert type(app.screen).__name__ == "CompareScreen"
        assert app.screen.run_ids == [1, 2]


async def test_e_exports_the_shown_runs_and_says_where(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("slash")
        app.screen.query_one("#filter").value = "study:quick"
        await pilot.press("enter", "e")
        await settle(pilot)
    written = Path("lba-runs-20250601-120000.csv").resolve()
    assert any(str(written) in m for m in app.messages)
    rows = list(csv.reader(written.open(encoding="utf-8")))
    assert rows[0][:3] == ["id", "study", "method"]
    assert len(rows) == 1 + 5 and {r[1] for r in rows[1:]} == {"quickstart"}


async def test_question_mark_lists_the_keys_of_the_screen(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        text = screen_text(app)
        assert "Keys" in text and "Filter" in text and "up/k" in text
        await pilot.press("escape")
        assert "Keys" not in screen_text(app)


@pytest.mark.parametrize("size", SIZES)
async def test_a_missing_store_shows_how_to_start(tmp_path: Path, size, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = RecordingApp(Path("nowhere.db"))
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        text = screen_text(app)
        assert "No store at nowhere.db" in text
        assert "lba run --db nowhere.db" in text
        assert app.screen.query_one(EmptyStore).display


async def test_an_empty_store_says_so_and_fills_in_when_runs_arrive(tmp_path: Path) -> None:
    from engine.store import Store

    path = tmp_path / "empty.db"
    Store(path).close()
    app = RecordingApp(path, poll_seconds=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "No runs in" in screen_text(app)
        with Store(path) as store:
            store.create_run(
                study="s",
                method="lba",
                depth=3,
                seed=0,
                dataset="fashion-mnist",
                arch="mlp",
                epochs=5,
                config={},
            )
        for _ in range(30):
            await pilot.pause(0.1)
            if app.screen.query_one(RunTable).rows:
                break
        await settle(pilot)
        assert "queued" in screen_text(app)


async def test_a_file_that_is_not_a_store_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    app = RecordingApp(path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "Cannot read" in screen_text(app)


async def test_a_store_from_a_newer_lba_is_refused(demo_db: Path) -> None:
    with sqlite3.connect(demo_db) as conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    app = RecordingApp(demo_db, poll_seconds=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(40):
            await pilot.pause(0.05)
            if app.store_state == "unreadable":
                break
        await settle(pilot)
        assert "newer than" in screen_text(app)


async def test_a_new_epoch_updates_its_row_within_a_poll(demo_db: Path) -> None:
    app = RecordingApp(demo_db, poll_seconds=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        table = app.screen.query_one(RunTable)
        assert table.rows[2].epoch == 12
        epoch = append_epoch(demo_db, 2)
        for _ in range(30):
            await pilot.pause(0.1)
            if table.rows[2].epoch == epoch:
                break
        await settle(pilot)
        assert f"{epoch}/20" in screen_text(app)
