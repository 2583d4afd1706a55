"""The paper-style table and its exports."""

import csv
import math

import pandas as pd

from engine.report import (
    config_differences,
    format_table,
    study_table,
    table_csv_rows,
    to_latex,
    to_markdown,
    write_csv,
)
from engine.store import Store


def fill(store: Store) -> None:
    store.save_study(
        "s",
        config={"grid": {"method": ["none", "lba"]}, "attacks": {"paper": {"fgsm_eps": [0.01]}}},
        reference=[{"method": "lba", "depth": 3, "train": 79.13, "test": 77.68, "fgsm": [73.7]}],
    )
    for method, seed, train, test, fgsm in [
        ("lba", 0, 0.80, 0.78, 0.70),
        ("lba", 1, 0.82, 0.78, 0.74),
        ("none", 0, 0.90, 0.83, 0.60),
    ]:
        run_id = store.create_run(
            study="s",
            method=method,
            depth=3,
            seed=seed,
            dataset="fashion-mnist",
            arch="mlp",
            epochs=1,
            config={},
        )
        store.record_epoch(
            run_id,
            {
                "epoch": 1,
                "train_acc": train,
                "test_acc": test,
                "gap": train - test,
                "log10_lb": 1.0,
            },
            [],
        )
        store.record_attacks(
            run_id,
            [
                {"attack": "clean", "eps": 0, "accuracy": test, "correct": 1, "n": 1},
                {"attack": "fgsm", "eps": 0.01, "accuracy": fgsm, "correct": 1, "n": 1},
            ],
            protocol="paper",
        )
        store.finish_run(run_id, "done")
    # an older finished run of the same seed is replaced by the newer one
    run_id = store.create_run(study="s", method="none", depth=3, seed=0, dataset="x",
                              arch="mlp", epochs=1, config={})
    store.record_epoch(run_id, {"epoch": 1, "train_acc": 0.2, "test_acc": 0.2}, [])
    store.finish_run(run_id, "done")
    store.db.execute("UPDATE runs SET id = 0 WHERE id = ?", [run_id])
    # an interrupted run never counts
    run_id = store.create_run(
        study="s", method="lba", depth=3, seed=2, dataset="x", arch="mlp", epochs=1, config={}
    )
    store.record_epoch(run_id, {"epoch": 1, "train_acc": 0.1, "test_acc": 0.1}, [])
    store.finish_run(run_id, "interrupted")


def test_table_averages_seeds_and_carries_published_values(tmp_path):
    store = Store(tmp_path / "a.db")
    fill(store)
    rows = study_table(store, "s")
    assert [(r["method"], r["runs"]) for r in rows] == [("none", 1), ("lba", 2)]
    lba = rows[1]
    mean, std, n = lba["fgsm@0.01"]
    assert (round(mean, 6), n) == (72.0, 2) and math.isclose(std, math.sqrt(8))
    assert lba["ref:test"] == 77.68 and lba["ref:fgsm@0.01"] == 73.7
    headers, cells = format_table(rows)
    assert headers[:6] == ["Method", "n", "Runs", "Train", "Test", "Gap"]
    assert cells[1][headers.index("FGSM .01")] == "72.0 ± 2.8 (73.7)"


def test_markdown_and_latex_bold_the_best_value_per_column(tmp_path):
    store = Store(tmp_path / "a.db")
    fill(store)
    rows = study_table(store, "s")
    md = to_markdown(rows)
    assert "**72.0 ± 2.8 (73.7)**" in md and "**90.0**" in md
    tex = to_latex(rows, caption="s")
    assert r"\toprule" in tex and r"\textbf{72.0 $\pm$ 2.8 (73.7)}" in tex
    # the smallest gap is the best one
    assert r"\textbf{3.0 $\pm$ 1.4 (1.45)}" in tex


def test_csv_round_trips_commas_quotes_newlines_and_non_ascii(tmp_path):
    names = ["a,b", 'say "hi"', "two\nlines", "Ñandú λ", "plain"]
    values = [1.5, float("nan"), float("inf"), float("-inf"), None]
    path = tmp_path / "out.csv"
    write_csv(path, ["name", "value"], zip(names, values))
    frame = pd.read_csv(path)
    assert list(frame["name"]) == names
    got = list(frame["value"])
    assert got[0] == 1.5 and math.isnan(got[1]) and got[2] == math.inf and got[3] == -math.inf
    assert math.isnan(got[4])  # a missing value is an empty field
    with open(path, newline="", encoding="utf-8") as handle:
        assert [row[0] for row in csv.reader(handle)][1:] == names
    assert path.read_bytes().count(b"\r\n") >= len(names) + 1


def test_table_csv_has_mean_std_and_reference_columns(tmp_path):
    store = Store(tmp_path / "a.db")
    fill(store)
    headers, rows = table_csv_rows(study_table(store, "s"))
    assert headers[:6] == ["method", "depth", "runs", "train_mean", "train_std", "train_ref"]
    assert rows[1][headers.index("test_ref")] == 77.68


def test_config_differences_lists_only_keys_that_differ():
    diff = config_differences([{"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}])
    assert diff == {"a.c": [2, 3]}
