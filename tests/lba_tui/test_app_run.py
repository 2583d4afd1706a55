"""The run screen: its five tabs at 80x24 and 120x40, live epochs, export and stop."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pytest

from lba_tui.fixtures import append_epoch
from lba_tui.screens.run import RunScreen
from lba_tui.widgets.chart import Chart
from tests.lba_tui.conftest import SIZES, RecordingApp, screen_text, settle


async def open_run(pilot, run_id: int) -> RunScreen:
    await settle(pilot)
    pilot.app.push_screen(RunScreen(run_id))
    await settle(pilot)
    return pilot.app.screen


@pytest.mark.parametrize("size", SIZES)
async def test_every_tab_of_a_finished_run_shows_its_data(demo_db: Path, size) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=size) as pilot:
        screen = await open_run(pilot, 8)  # paper-fmnist lba n=3 seed 0, done, attacked
        text = screen_text(app)
        assert "run 8" in text and "done" in text and "epoch 20/20" in text
        assert "train loss" in text and "test %" in text and "gap" in text
        await pilot.press("2")
        await pilot.pause()
        assert "log10 LB" in screen_text(app) and "res3" in screen_text(app)
        await pilot.press("3")
        await pilot.pause()
        assert "layer draws" in screen_text(app)
        await pilot.press("4")
        await pilot.pause()
        text = screen_text(app)
        assert "fgsm" in text and "pgd" in text and "accuracy % vs eps" in text
        await pilot.press("5")
        await pilot.pause()
        assert "model.depth" in screen_text(app) and "cuda:0" in screen_text(app)
        assert screen.query_one("#sigma-chart", Chart).spec.series
        await pilot.press("escape")
        assert not isinstance(app.screen, RunScreen)


async def test_a_baseline_run_says_it_draws_no_layer(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_run(pilot, 6)
        await pilot.press("3")
        await pilot.pause()
        assert "draws no layer" in screen_text(app)


async def test_new_epochs_appear_while_the_run_trains(demo_db: Path) -> None:
    app = RecordingApp(demo_db, poll_seconds=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_run(pilot, 2)
        assert "epoch 12/20" in screen_text(app)
        for _ in range(3):
            epoch = append_epoch(demo_db, 2)
        for _ in range(30):
            await pilot.pause(0.1)
            if screen.detail and screen.detail.epochs[-1]["epoch"] == epoch:
                break
        await settle(pilot)
        assert f"epoch {epoch}/20" in screen_text(app)
        assert [e["epoch"] for e in screen.detail.epochs] == list(range(1, epoch + 1))
        x, _ = screen.query_one("#accuracy-chart", Chart).spec.series[0].x, None
        assert list(x)[-1] == epoch


async def test_e_exports_the_table_behind_the_tab(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_run(pilot, 8)
        await pilot.press("e", "4", "e")
        await settle(pilot)
    epochs = Path("lba-run8-epochs-20250601-120000.csv").resolve()
    attacks = Path("lba-run8-attacks-20250601-120000.csv").resolve()
    assert any(str(epochs) in m for m in app.messages)
    assert any(str(attacks) in m for m in app.messages)
    rows = list(csv.reader(epochs.open(encoding="utf-8")))
    assert rows[0][:3] == ["epoch", "loss", "penalty"] and len(rows) == 21
    rows = list(csv.reader(attacks.open(encoding="utf-8")))
    assert [r[1] for r in rows[1:]] == ["clean", "fgsm", "fgsm", "fgsm", "pgd"]


def set_running_here(db: Path, run_id: int, app: RecordingApp, pid: int = 4242) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE runs SET host = ?, pid = ?, status = 'running' WHERE id = ?",
            [app.hostname, pid, run_id],
        )


async def test_x_asks_then_sends_sigint_to_the_run_process(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    set_running_here(demo_db, 2, app)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_run(pilot, 2)
        await pilot.press("x")
        await settle(pilot)
        assert "Stop run 2" in screen_text(app) and "pid 4242" in screen_text(app)
        await pilot.press("n")
        assert app.launcher.stopped == []
        await pilot.press("x")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
    assert app.launcher.stopped == [(4242, 2)]
    assert any("sent SIGINT to pid 4242" in m for m in app.messages)


async def test_x_refuses_a_run_on_another_host(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_run(pilot, 2)  # the demo's running run trains on gpu-box
        await pilot.press("x")
        await settle(pilot)
    assert app.launcher.stopped == []
    assert any("trains on gpu-box" in m for m in app.messages)


async def test_x_on_a_queued_run_offers_its_study_process(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    set_running_here(demo_db, 2, app, pid=777)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("j", "j", "x")  # run 3: queued behind run 2 in quickstart
        await settle(pilot)
        assert "queued behind run 2" in screen_text(app)
        await pilot.press("enter")
        await settle(pilot)
    assert app.launcher.stopped == [(777, 2)]


async def test_x_on_a_finished_run_explains(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("x")
        await settle(pilot)
    assert any("only a running run can be stopped" in m for m in app.messages)


async def test_v_starts_lba_eval_on_the_run_and_shows_the_evaluation_tab(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_run(pilot, 8)
        await pilot.press("v")
        await settle(pilot)
        assert "no evaluation yet" in screen_text(app)
    (launch,) = app.launcher.launched
    assert launch.argv[1:] == ["-m", "lba_tui.cli", "eval", "8", "--db", str(demo_db)]
    assert any("evaluating run 8" in m for m in app.messages)
