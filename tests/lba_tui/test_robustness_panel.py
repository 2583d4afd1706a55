"""The evaluation panel: it reads `lba eval`'s rows from the store and starts `lba eval`."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Static

from engine.store import Store
from lba_tui.reader import StoreReader
from lba_tui.widgets.robustness import EvaluationPanel, attack_series, shift_table
from tests.lba_tui.conftest import FakeLauncher

CLOCK = datetime(2025, 6, 1, 12, 0, 0)


def evaluated_store(path: Path) -> Path:
    """A store with one evaluated run (1) and one run without evaluation (2); no torch."""
    store = Store(path)
    for method in ("lba", "none"):
        run_id = store.create_run(
            study="s",
            method=method,
            depth=3,
            seed=0,
            dataset="fashion-mnist",
            arch="mlp",
            epochs=1,
            config={},
        )
        store.finish_run(run_id, "done")
    shifts = [
        {
            "shift": shift,
            "severity": s,
            "level": 0.1 * s,
            "params_json": "{}",
            "accuracy": 0.8 - 0.05 * s,
            "correct": 80 - 5 * s,
            "n": 100,
            "seed": 0,
        }
        for shift in ("brightness", "blur")
        for s in range(6)
    ]
    shifts.append(
        {
            "shift": "lighting_worst",
            "severity": 0,
            "level": 48.0,
            "params_json": json.dumps({"settings": 48}),
            "accuracy": 0.42,
            "correct": 42,
            "n": 100,
            "seed": 0,
        }
    )
    store.replace_rows("shifts", 1, shifts)
    store.replace_rows(
        "certified",
        1,
        [
            {
                "bound": bound,
                "radius": r,
                "accuracy": acc,
                "correct": int(100 * acc),
                "n": 100,
                "log10_bound": 0.4,
                "median_radius": 0.3 if bound == "residual" else 0.5,
            }
            for bound, scale in (("residual", 0.5), ("pairwise", 0.7))
            for r, acc in ((0.0, 0.8), (0.5, 0.8 * scale))
        ],
    )
    store.replace_rows(
        "lipschitz_estimates",
        1,
        [
            {"kind": "residual", "side": "upper", "log10_value": 0.4, "valid": 1, "n": 100},
            {"kind": "product", "side": "upper", "log10_value": -1.0, "valid": 0, "n": 100},
            {"kind": "jacobian", "side": "lower", "log10_value": 0.3, "valid": 1, "n": 100},
        ],
    )
    store.record_attacks(
        1,
        [
            {"attack": "clean", "eps": 0.0, "accuracy": 0.8, "correct": 80, "n": 100},
            {
                "attack": "pgd",
                "eps": 0.1,
                "steps": 40,
                "step_size": 0.01,
                "restarts": 5,
                "accuracy": 0.25,
                "correct": 25,
                "n": 100,
            },
            {
                "attack": "pgd_l2",
                "eps": 0.5,
                "steps": 20,
                "restarts": 2,
                "accuracy": 0.6,
                "correct": 60,
                "n": 100,
            },
        ],
        protocol="robust",
    )
    store.record_attacks(
        1,
        [
            {
                "attack": f"pgd_{loss}",
                "eps": 0.02,
                "steps": 10,
                "accuracy": 0.7,
                "correct": 70,
                "n": 100,
            }
            for loss in ("logit", "softmax")
        ],
        protocol="masking",
    )
    store.close()
    return path


class PanelApp(App):
    """A bare app holding one panel, with the attributes the panel uses to start processes."""

    def __init__(self, db: Path, run_id: int) -> None:
        super().__init__()
        self.db_path = db
        self.reader = StoreReader(db)
        self.launcher = FakeLauncher()
        self.clock = lambda: CLOCK
        self.run_id = run_id
        self.loaded: list[int] = []

    def compose(self) -> ComposeResult:
        yield EvaluationPanel(self.reader, self.run_id)

    def on_evaluation_panel_loaded(self, message: EvaluationPanel.Loaded) -> None:
        self.loaded.append(message.run_id)

    async def on_unmount(self) -> None:
        self.reader.close()


async def wait_loaded(pilot, app: PanelApp, count: int = 1) -> None:
    for _ in range(200):
        await pilot.pause(0.02)
        if len(app.loaded) >= count:
            break
    await pilot.pause()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return evaluated_store(tmp_path / "eval.db")


async def test_panel_shows_shifts_certificates_and_bounds(db: Path) -> None:
    app = PanelApp(db, 1)
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_loaded(pilot, app)
        shifts = app.query_one("#rb-shifts", DataTable)
        assert shifts.row_count == 3  # brightness, blur, worst light
        assert shifts.get_row_at(0) == [
            "brightness",
            "80.0",
            "75.0",
            "70.0",
            "65.0",
            "60.0",
            "55.0",
            "65.0",
        ]
        assert shifts.get_row_at(2)[-1] == "42.0"
        cert = app.query_one("#rb-certified", DataTable)
        assert [cert.get_row_at(i) for i in range(cert.row_count)] == [
            ["0", "80.0", "80.0", "80.0"],
            ["0.5", "40.0", "56.0", "60.0"],
        ]
        text = str(app.query_one("#rb-lipschitz", Static).render())
        assert "residual bound 2.51" in text and "plain product (not a bound) 0.1" in text
        assert "1.26x the largest found" in text
        attacks = str(app.query_one("#rb-attacks", Static).render())
        assert "PGD 0.1 x5 25.0%" in attacks and "eps 0.02 70.0 vs 70.0" in attacks


async def test_a_run_without_evaluation_says_how_to_start_one(db: Path) -> None:
    app = PanelApp(db, 2)
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_loaded(pilot, app)
        hint = str(app.query_one("#rb-hint", Static).render())
        assert hint == "Run 2 has no evaluation yet: press v to run `lba eval 2`."
        assert app.query_one("#rb-shifts", DataTable).row_count == 0


async def test_v_starts_lba_eval_on_the_run_and_reload_follows_a_new_run(db: Path) -> None:
    app = PanelApp(db, 1)
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_loaded(pilot, app)
        app.query_one(EvaluationPanel).focus()
        await pilot.press("v")
        await pilot.pause()
        (launch,) = app.launcher.launched
        assert launch.argv[-5:] == ["lba_tui.cli", "eval", "1", "--db", str(db)]
        assert launch.log.name == "eval-eval-run1-20250601-120000.log"
        app.query_one(EvaluationPanel).show_run(2)
        await wait_loaded(pilot, app, 2)
        assert app.loaded == [1, 2]


def test_pure_helpers_order_shifts_and_skip_l2_radii_in_the_attack_chart() -> None:
    rows = [
        {"shift": "blur", "severity": 0, "accuracy": 0.9},
        {"shift": "gamma", "severity": 1, "accuracy": 0.5},
        {"shift": "gamma", "severity": 0, "accuracy": 0.9},
    ]
    assert shift_table(rows) == [("gamma", [0.9, 0.5], 0.5), ("blur", [0.9], None)]
    attacks = [
        {"protocol": "robust", "attack": "clean", "eps": 0.0, "accuracy": 0.8},
        {"protocol": "robust", "attack": "pgd_l2", "eps": 0.5, "accuracy": 0.6},
        {"protocol": "robust", "attack": "fgsm", "eps": 0.1, "accuracy": 0.3},
    ]
    (series,) = attack_series(attacks)
    assert (list(series.x), list(series.y), series.label) == (
        [0.0, 0.1],
        [80.0, 30.0],
        "robust fgsm",
    )
