"""The compare screen (curves overlaid, config differences, the study table) and the tuning
screen (trials, history, importance, Pareto front), at 80x24 and 120x40."""

from __future__ import annotations

import csv
from pathlib import Path

from lba_tui.screens.compare import CompareScreen
from lba_tui.screens.tune import TuneScreen
from lba_tui.widgets.chart import Chart
from lba_tui.widgets.overlay import OverlayPanel
from tests.lba_tui.conftest import RecordingApp, screen_text, settle


async def test_compare_overlays_curves_and_lists_config_differences(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.push_screen(CompareScreen([6, 8, 16]))
        await settle(pilot)
        chart = app.screen.query_one("#overlay-chart", Chart)
        assert [s.label for s in chart.spec.series] == [
            "#6 none n=3 s0",
            "#8 lba n=3 s0",
            "#16 none n=5 s0",
        ]
        assert "test accuracy %" in screen_text(app)
        await pilot.press("m")
        assert app.screen.query_one(OverlayPanel).metric == 1
        assert "train accuracy %" in screen_text(app)
        await pilot.press("2")
        await pilot.pause()
        text = screen_text(app)
        assert "method.name" in text and "model.depth" in text and "keys differ" in text
        assert "data.dataset" not in text  # the same in every run


async def test_study_table_shows_mean_std_and_published_values(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press(*["j"] * 5, "p")  # run 6 belongs to paper-fmnist
        await settle(pilot)
        text = screen_text(app)
        assert "study paper-fmnist" in text
        assert "±" in text and "(77.68)" in text  # lba n=3: ours ± std (published)
        await pilot.press("right_square_bracket")
        await settle(pilot)
        assert "study quickstart" in screen_text(app)


async def test_compare_exports_the_study_table_as_numbers(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.push_screen(CompareScreen([], study="paper-fmnist", tab="table"))
        await settle(pilot)
        await pilot.press("e")
        await settle(pilot)
    path = Path("lba-study-paper-fmnist-20250601-120000.csv").resolve()
    assert any(str(path) in m for m in app.messages)
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    lba3 = next(r for r in rows if r["method"] == "lba" and r["depth"] == "3")
    assert lba3["runs"] == "2" and lba3["test_ref"] == "77.68"


async def test_tuning_screen_reads_an_optuna_study(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("t")
        await settle(pilot)
        assert isinstance(app.screen, TuneScreen)
        assert app.screen.names == ["tune-l2", "tune-lba:lba"]
        await pilot.press("right_square_bracket")
        await settle(pilot)
        text = screen_text(app)
        assert "tune-lba:lba" in text and "from Optuna" in text
        assert "PRUNED" in text and "COMPLETE" in text and "FAIL" in text
        assert "maximize val_acc, minimize log10_lb" in text
        await pilot.press("2")
        await pilot.pause()
        pruned = [
            s
            for s in app.screen.query_one("#intermediate-chart", Chart).spec.series
            if s.marker == "x"
        ]
        assert len(pruned) == 2  # each pruned trial marked where it stopped
        await pilot.press("3")
        await pilot.pause()
        assert "importance for val_acc" in screen_text(app)
        await pilot.press("4")
        await pilot.pause()
        front = app.screen.query_one("#pareto-chart", Chart).spec.series[1]
        assert front.label == "Pareto front" and len(front.x) >= 2


async def test_tuning_screen_falls_back_to_the_runs_table(demo_db: Path) -> None:
    app = RecordingApp(demo_db)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.push_screen(TuneScreen("tune-l2"))
        await settle(pilot)
        text = screen_text(app)
        assert "from runs table" in text and "train.lr" in text and "method.lam" in text
        await pilot.press("e")
        await settle(pilot)
    assert any("lba-trials-tune-l2-20250601-120000.csv" in m for m in app.messages)


async def test_tuning_screen_without_tuning_says_how_to_start(tmp_path: Path) -> None:
    from lba_tui.fixtures import build_store, paper_specs

    path = build_store(tmp_path / "plain.db", paper_specs(seeds=1, epochs=2))
    app = RecordingApp(path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("t")
        await settle(pilot)
        assert "lba tune STUDY --trials N" in screen_text(app)
