"""The SQLite store: schema versions, atomic epochs, stale runs, concurrent readers."""

import multiprocessing
import os
import sqlite3
import subprocess
import sys

import pytest

from engine.errors import StoreError
from engine.store import SCHEMA_VERSION, Store


def make_run(store: Store, **overrides) -> int:
    fields = dict(
        study="s",
        method="lba",
        depth=3,
        seed=0,
        dataset="fashion-mnist",
        arch="mlp",
        epochs=5,
        config={"x": 1},
    )
    fields.update(overrides)
    return store.create_run(**fields)


def test_new_store_records_schema_version_and_uses_wal(tmp_path):
    store = Store(tmp_path / "a.db")
    assert store.schema_version == SCHEMA_VERSION
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_written_by_newer_lba_is_refused(tmp_path):
    path = tmp_path / "a.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(
        "UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)]
    )
    conn.commit()
    conn.close()
    newer = f"newer than the {SCHEMA_VERSION} this lba reads; upgrade lba"
    with pytest.raises(StoreError, match=newer):
        Store(path)
    with pytest.raises(StoreError, match="upgrade lba"):
        Store(path, readonly=True)


def test_a_file_that_is_not_sqlite_gives_a_clear_error(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 50)
    with pytest.raises(StoreError, match="cannot open .*notes.db as an lba store"):
        Store(path)
    assert path.read_text().startswith("these are my notes")


def test_unwritable_location_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(StoreError, match=r"cannot open /proc/lba.db .*pass --db or set \$LBA_DB"):
        Store("/proc/lba.db")
    with pytest.raises(StoreError, match="folder .* does not exist"):
        Store(tmp_path / "missing" / "lba.db")


def test_epoch_rows_sigmas_and_run_summary_land_together(tmp_path):
    store = Store(tmp_path / "a.db")
    run_id = make_run(store)
    store.start_run(run_id, device="cpu", versions={"torch": "x"})
    store.record_epoch(
        run_id,
        {
            "epoch": 1,
            "loss": 1.5,
            "train_acc": 0.5,
            "test_acc": 0.4,
            "gap": 0.1,
            "log10_lb": 2.0,
            "log10_prod": 1.5,
            "draws_json": [1, 2, 3],
        },
        [("in", 3.0), ("res1", 1.0), ("out", 2.0)],
    )
    run = store.run(run_id)
    assert (run["status"], run["epoch"], run["test_acc"]) == ("running", 1, 0.4)
    assert [s["sigma"] for s in store.sigmas(run_id)] == [3.0, 1.0, 2.0]
    assert store.epochs(run_id)[0]["draws_json"] == "[1, 2, 3]"


def test_a_failed_epoch_write_leaves_nothing_half_written(tmp_path):
    store = Store(tmp_path / "a.db")
    run_id = make_run(store)
    with pytest.raises(sqlite3.Error):
        # the epoch row goes in first; the unbindable sigma fails the second statement
        store.record_epoch(run_id, {"epoch": 1, "loss": 1.0}, [("in", 1.0), ("out", object())])
    assert store.epochs(run_id) == []
    assert store.sigmas(run_id) == []
    assert store.run(run_id)["epoch"] == 0


def test_nan_metrics_are_stored_as_null(tmp_path):
    store = Store(tmp_path / "a.db")
    run_id = make_run(store)
    store.record_epoch(
        run_id,
        {"epoch": 1, "loss": float("nan"), "log10_lb": float("inf")},
        [("in", float("nan"))],
    )
    row = store.epochs(run_id)[0]
    assert row["loss"] is None and row["log10_lb"] is None


def test_attack_results_are_replaced_not_duplicated(tmp_path):
    store = Store(tmp_path / "a.db")
    run_id = make_run(store)
    rows = [{"attack": "fgsm", "eps": 0.01, "accuracy": 0.7, "correct": 70, "n": 100}]
    store.record_attacks(run_id, rows, protocol="paper")
    store.record_attacks(run_id, rows, protocol="paper")
    assert len(store.attacks(run_id)) == 1


def test_running_run_of_a_dead_process_is_reaped_as_interrupted(tmp_path):
    store = Store(tmp_path / "a.db")
    run_id = make_run(store)
    store.start_run(run_id, device="cpu", versions={})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.db.execute("UPDATE runs SET pid = ? WHERE id = ?", [dead.pid, run_id])
    alive = make_run(store)
    store.start_run(alive, device="cpu", versions={})
    assert store.reap_stale() == [run_id]
    assert store.run(run_id)["status"] == "interrupted"
    assert store.run(alive)["status"] == "running"


def test_readonly_store_refuses_writes_and_missing_files(tmp_path):
    with pytest.raises(StoreError, match="no store at .*lba run"):
        Store(tmp_path / "none.db", readonly=True)
    Store(tmp_path / "a.db").close()
    reader = Store(tmp_path / "a.db", readonly=True)
    with pytest.raises(StoreError, match="read-only"):
        make_run(reader)


def _writer(path: str, n: int) -> None:
    store = Store(path)
    for i in range(n):
        run_id = make_run(store, seed=i)
        store.start_run(run_id, device="cpu", versions={})
        for epoch in range(1, 4):
            store.record_epoch(
                run_id,
                {"epoch": epoch, "loss": 1.0 / epoch},
                [(f"l{k}", float(k)) for k in range(5)],
            )
        store.finish_run(run_id, "done")


def test_concurrent_writers_and_a_reader_never_see_a_locked_database(tmp_path):
    path = str(tmp_path / "a.db")
    Store(path).close()
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_writer, args=(path, 15)) for _ in range(3)]
    for w in writers:
        w.start()
    reader = Store(path, readonly=True)
    while any(w.is_alive() for w in writers):
        reader.query("SELECT count(*) FROM epochs")
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert reader.query("SELECT count(*) AS n FROM runs WHERE status = 'done'")[0]["n"] == 45
    assert reader.query("SELECT count(*) AS n FROM sigmas")[0]["n"] == 45 * 3 * 5


def test_store_imports_without_torch():
    code = "import sys, engine.store, engine.study, engine.report; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=os.getcwd(), check=True
    )
    assert out.stdout.strip() == "False"
