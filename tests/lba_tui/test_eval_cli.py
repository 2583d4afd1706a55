"""`lba eval` on real Fashion-MNIST runs: rows land in the store, a re-run replaces them."""

from __future__ import annotations

import sys

import pandas as pd
import pytest

from engine.store import Store
from lba_tui import cli

STUDY = """
[study]
name = "tiny"
[data]
dataset = "fashion-mnist"
train_subset = 1000
[train]
epochs = 2
[grid]
depth = [2]
method = ["none", "lba"]
seed = [0]
[attacks]
protocols = ["paper"]
[attacks.paper]
n = 100
"""


def call(*args: str) -> int:
    """Run the command line in-process and return its exit code."""
    saved = sys.argv
    sys.argv = ["lba", *args]
    try:
        cli.main()
        return 0
    except SystemExit as exc:
        return exc.code or 0
    finally:
        sys.argv = saved


def lba(capsys, *args: str) -> tuple[int, str, str]:
    """Run the command line in-process; return exit code, stdout, stderr."""
    code = call(*args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Two runs of two epochs on 1,000 training images, then `lba eval` on 300 test images."""
    folder = tmp_path_factory.mktemp("eval")
    study, db = folder / "tiny.toml", folder / "lba.db"
    study.write_text(STUDY)
    assert call("run", str(study), "--db", str(db)) == 0
    assert call("eval", "tiny", "--n", "300", "--db", str(db)) == 0
    return db


def counts(store: Store, run_id: int) -> dict[str, int]:
    tables = ("shifts", "certified", "lipschitz_estimates", "pgd_curve")
    out = {t: len(store.evaluation(t, run_id)) for t in tables}
    out["attacks"] = len(store.attacks(run_id))
    return out


def test_eval_writes_every_table_for_every_run(evaluated) -> None:
    store = Store(evaluated, readonly=True)
    for run in store.runs():
        assert store.weights(run["id"]) is not None
        rows = counts(store, run["id"])
        # 7 shifts x 6 severities, the worst case and its 48 settings
        assert rows["shifts"] == 7 * 6 + 1 + 48
        assert rows["certified"] == 2 * 7
        assert rows["lipschitz_estimates"] == 5
        assert rows["pgd_curve"] == 2 * 11  # two losses, steps 0..10
        protocols = {a["protocol"] for a in store.attacks(run["id"])}
        assert protocols == {"paper", "robust", "masking"}
        shifts = store.evaluation("shifts", run["id"])
        clean = [s["accuracy"] for s in shifts if s["severity"] == 0 and s["level"] in (0, 1)]
        robust_clean = next(
            a
            for a in store.attacks(run["id"])
            if a["protocol"] == "robust" and a["attack"] == "clean"
        )
        assert set(clean) == {robust_clean["accuracy"]} and robust_clean["n"] == 300


def test_re_running_replaces_rows_and_never_duplicates(evaluated, capsys) -> None:
    store = Store(evaluated)
    before = counts(store, 2)
    code, out, _ = lba(
        capsys, "eval", "2", "--certify", "--shift", "--n", "300", "--db", str(evaluated)
    )
    assert code == 0 and "lba n=2 seed=0: shift" in out
    assert counts(store, 2) == before


def test_table_and_csv_exports_show_the_evaluations(evaluated, capsys, tmp_path) -> None:
    code, out, _ = lba(capsys, "table", "tiny", "--db", str(evaluated))
    assert code == 0
    for header in ("Shift", "Light WC", "Cert .5", "L2PGD .5", "rPGD .1", "log10 low"):
        assert header in out
    for what in ("shifts", "certified", "lipschitz_estimates", "pgd_curve"):
        target = tmp_path / f"{what}.csv"
        code, _, err = lba(
            capsys, "export", "tiny", "--what", what, "--csv", str(target), "--db", str(evaluated)
        )
        assert code == 0, err
        assert set(pd.read_csv(target)["run_id"]) == {1, 2}
    code, _, _ = lba(
        capsys, "export", "tiny", "--csv", str(tmp_path / "t.csv"), "--db", str(evaluated)
    )
    assert {"shift_mean", "light_mean", "cert@0.5_mean"} <= set(pd.read_csv(tmp_path / "t.csv"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "99"], "Error: no run 99 in "),
        (["eval", "nope"], "Error: no study 'nope' in "),
        (["eval", "1", "--n", "0"], "Error: --n must be 1 or more (samples to evaluate), got 0"),
    ],
)
def test_bad_targets_end_in_one_error_line_and_exit_2(evaluated, capsys, args, message) -> None:
    code, _, err = lba(capsys, *args, "--db", str(evaluated))
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1, err


def test_a_run_without_weights_is_refused_by_name(evaluated, capsys, tmp_path) -> None:
    copy = tmp_path / "copy.db"
    source = Store(evaluated, readonly=True)
    source.db.conn.execute(f"VACUUM INTO '{copy}'")
    store = Store(copy)
    with store.write() as db:
        db.execute("DELETE FROM weights WHERE run_id = 1")
    code, _, err = lba(capsys, "eval", "1", "--db", str(copy))
    assert code == 2
    assert err == (
        "Error: run 1 has no saved weights (it was trained before lba kept them); train it "
        "again with `lba run tiny --rerun`\n"
    )
