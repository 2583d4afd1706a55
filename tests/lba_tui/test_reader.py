"""The app's store reader: what it reads, how little it reads on a refresh, and that it
tolerates stores with tables missing."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from lba_tui.fixtures import RunSpec, append_epoch, build_store
from lba_tui.reader import StoreMissing, StoreReader, StoreUnreadable, study_table


def read(reader: StoreReader, query, *args):
    return asyncio.run(reader.fetch(query, *args))


def test_runs_carry_the_headline_attack_accuracies(demo_template: Path) -> None:
    reader = StoreReader(demo_template)
    rows = {r.id: r for r in read(reader, StoreReader.runs)}
    reader.close()
    assert rows[1].status == "done" and rows[1].fgsm is not None and rows[1].pgd is not None
    assert rows[2].status == "running" and rows[2].fgsm is None
    # FGSM is reported at the largest budget attacked (0.03 in the paper protocol).
    conn = sqlite3.connect(demo_template)
    (expected,) = conn.execute(
        "SELECT accuracy FROM attacks WHERE run_id = 1 AND attack = 'fgsm' AND eps = 0.03"
    ).fetchone()
    assert rows[1].fgsm == expected


def test_a_refresh_reads_only_new_and_active_runs(tmp_path: Path) -> None:
    specs = [RunSpec("s", "lba", 3, seed, epochs=5, done=5) for seed in range(50)]
    specs.append(RunSpec("s", "none", 3, 0, status="running", epochs=5, done=2))
    path = build_store(tmp_path / "s.db", specs)
    reader = StoreReader(path)
    everything = read(reader, StoreReader.runs)
    append_epoch(path, 51)
    changed, all_rows, count = read(reader, StoreReader.runs_changed, 51, [51])
    reader.close()
    assert len(everything) == 51 and count == 51 and not all_rows
    assert [r.id for r in changed] == [51] and changed[0].epoch == 3


def test_data_version_changes_only_when_another_connection_commits(demo_db: Path) -> None:
    reader = StoreReader(demo_db)
    first = read(reader, StoreReader.version)
    assert read(reader, StoreReader.version) == first
    append_epoch(demo_db, 2)
    assert read(reader, StoreReader.version) != first
    reader.close()


def test_a_missing_file_and_a_junk_file_raise_the_app_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreMissing):
        read(StoreReader(tmp_path / "none.db"), StoreReader.runs)
    junk = tmp_path / "junk.db"
    junk.write_text("not a database " * 100)
    with pytest.raises(StoreUnreadable):
        read(StoreReader(junk), StoreReader.runs)


def test_a_store_without_the_optional_tables_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "bare.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE runs (id INTEGER PRIMARY KEY, study TEXT, method TEXT, "
            "depth INT, seed INT, status TEXT, epoch INT, epochs INT, train_acc REAL, "
            "test_acc REAL, gap REAL, log10_lb REAL, label TEXT, config_json TEXT)"
        )
        conn.execute(
            "INSERT INTO runs VALUES (1, 's', 'lba', 3, 0, 'done', 2, 2, 0.8, 0.7, "
            "0.1, 1.5, 'x', '{}')"
        )
    reader = StoreReader(path)
    (row,) = read(reader, StoreReader.runs)
    detail = read(reader, StoreReader.run_detail, 1, 0)
    assert row.fgsm is None and detail.epochs == [] and detail.attacks == []
    assert read(reader, StoreReader.study_table, "s") == []
    reader.close()


def test_the_study_table_comes_from_engine_report(demo_template: Path) -> None:
    reader = StoreReader(demo_template)
    table = read(reader, study_table, "paper-fmnist", "+-")
    reader.close()
    assert table.headers[:3] == ["Method", "n", "Runs"]
    assert len(table.cells) == 15 and "+-" in table.cells[0][3]


def test_the_reader_keeps_no_transaction_open_between_reads(demo_db: Path) -> None:
    reader = StoreReader(demo_db)
    read(reader, StoreReader.runs)
    # A writer that needs the whole file (an exclusive lock) gets it at once.
    conn = sqlite3.connect(demo_db, timeout=0.5)
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("COMMIT")
    conn.close()
    reader.close()


def test_importing_the_app_leaves_torch_out() -> None:
    code = (
        "import sys, lba_tui.app, lba_tui.screens.run, lba_tui.screens.compare, "
        "lba_tui.screens.tune, lba_tui.reader, lba_tui.launcher\n"
        "bad = [m for m in ('torch', 'engine.train', 'engine.models', 'engine.attacks', "
        "'optuna') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
