"""Schema v2: trained weights and the tables of `lba eval`, replaced on a re-run."""

from __future__ import annotations

import sqlite3

import pytest
import sqlite_utils

from engine.errors import StoreError
from engine.report import evaluation_metrics, raw_rows
from engine.store import EVALUATION_TABLES, SCHEMA_VERSION, Store, _schema_v1


def make_run(store: Store) -> int:
    run_id = store.create_run(
        study="s",
        method="lba",
        depth=3,
        seed=0,
        dataset="fashion-mnist",
        arch="mlp",
        epochs=1,
        config={},
    )
    store.finish_run(run_id, "done")
    return run_id


def test_a_v1_file_is_migrated_and_keeps_its_runs(tmp_path) -> None:
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(sqlite3.connect(path))
    _schema_v1(db)
    db["meta"].insert({"key": "schema_version", "value": "1"})
    db["runs"].insert({"id": 1, "study": "s", "status": "done"})
    db.conn.commit()
    db.conn.close()

    reader = Store(path, readonly=True)  # read-only: nothing migrates, nothing breaks
    assert reader.weights(1) is None and reader.evaluation("shifts", 1) == []
    assert evaluation_metrics(reader, "s") == {}
    reader.close()

    store = Store(path)
    assert SCHEMA_VERSION == 2 and store.schema_version == 2
    assert all(store.db[table].exists() for table in ("weights", *EVALUATION_TABLES))
    assert [r["id"] for r in store.runs()] == [1]


def test_weights_round_trip_and_a_second_save_replaces_the_first(tmp_path) -> None:
    store = Store(tmp_path / "a.db")
    run_id = make_run(store)
    assert store.weights(run_id) is None
    store.save_weights(run_id, b"\x00first")
    store.save_weights(run_id, b"\x00\xffsecond")
    assert store.weights(run_id) == b"\x00\xffsecond"
    assert store.query("SELECT size FROM weights") == [{"size": 8}]


def test_replace_rows_never_duplicates_and_where_limits_what_is_replaced(tmp_path) -> None:
    store = Store(tmp_path / "a.db")
    run_id = make_run(store)
    upper = {"kind": "residual", "side": "upper", "log10_value": 0.4, "valid": 1, "n": 10}
    lower = {"kind": "attack_pairs", "side": "lower", "log10_value": 0.3, "valid": 1, "n": 10}
    store.replace_rows("lipschitz_estimates", run_id, [upper, lower])
    store.replace_rows(
        "lipschitz_estimates", run_id, [dict(upper, log10_value=0.5)], where={"kind": ["residual"]}
    )
    rows = {r["kind"]: r["log10_value"] for r in store.evaluation("lipschitz_estimates", run_id)}
    assert rows == {"residual": 0.5, "attack_pairs": 0.3}
    shift = {
        "shift": "blur",
        "severity": 1,
        "level": 0.5,
        "params_json": "{}",
        "accuracy": 0.7,
        "correct": 7,
        "n": 10,
        "seed": 0,
    }
    for _ in range(2):
        store.replace_rows("shifts", run_id, [shift, dict(shift, severity=2, accuracy=0.6)])
    assert len(store.evaluation("shifts", run_id)) == 2
    headers, values = raw_rows(store, "s", "shifts")
    assert "accuracy" in headers and len(values) == 2
    with pytest.raises(StoreError, match="table 'runs' is not one of shifts, certified"):
        store.replace_rows("runs", run_id, [])
