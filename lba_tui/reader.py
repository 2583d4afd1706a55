"""The app's read-only view of the store: one background thread, one connection, short reads.

Training processes write the store while the app is open, so the app must never make them wait.
Every read here runs on a single worker thread that owns a read-only connection in autocommit
mode: a query is its own transaction, and a read that needs several queries to agree opens a
deferred ``BEGIN`` and commits as soon as the rows are in memory. In WAL mode such a reader
holds no lock a writer waits on. Whether anything changed is asked with ``PRAGMA
data_version``, which costs microseconds, so polling every second is free even at 10,000 runs.

``engine.store`` (and with it sqlite-utils, which loads pandas when it is installed) is imported
on that thread at the first read, so the first screen paints while the import runs. Nothing
here imports Textual or torch; the screens call :meth:`StoreReader.fetch` from their workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")


class StoreMissing(Exception):
    """The store file does not exist (yet): the app shows how to start one."""


class StoreUnreadable(Exception):
    """The file exists but cannot be read as an lba store; the message says why."""


class RunRow(NamedTuple):
    """One line of the runs table: a run's identity, status and latest summary metrics."""

    id: int
    study: str
    method: str
    depth: int
    seed: int
    status: str
    epoch: int
    epochs: int
    train: float | None
    test: float | None
    gap: float | None
    log10_lb: float | None
    fgsm: float | None
    pgd: float | None
    label: str


# Only columns stored before config_json: reading past it walks overflow pages, and made the
# query of 10,000 runs three times slower. host and pid are read when a run is stopped.
RUN_COLUMNS = (
    "id, study, method, depth, seed, status, epoch, epochs, train_acc, test_acc, gap, "
    "log10_lb, label"
)
ACTIVE = ("queued", "running")


@dataclass
class RunDetail:
    """What the run screen needs: the run, and the epochs and norms newer than it has seen."""

    run: dict
    epochs: list[dict] = field(default_factory=list)
    sigmas: list[dict] = field(default_factory=list)
    attacks: list[dict] = field(default_factory=list)


@dataclass
class TrialRecord:
    """One trial of a tuning study.

    Attributes:
        number: the trial number.
        state: Optuna's state name: COMPLETE, PRUNED, FAIL, RUNNING or WAITING.
        values: one value per objective (None where the trial has none).
        params: the sampled parameters.
        curve: (epoch, intermediate value) reported while it trained.
        run: the lba run that trained it (id, status, epoch, epochs, accuracies, log10_lb).
    """

    number: int
    state: str
    values: list[float | None]
    params: dict[str, Any]
    curve: list[tuple[int, float]] = field(default_factory=list)
    run: dict | None = None


@dataclass
class TuneData:
    """A tuning study: its objectives (name and direction) and its trials.

    ``source`` is ``optuna`` when Optuna's own tables hold the study, ``runs`` when only the
    runs that trained the trials are there (then the objective is the final validation, or
    test, accuracy and the parameters are the config keys that differ between trials).
    """

    name: str
    source: str
    objectives: list[str]
    directions: list[str]
    trials: list[TrialRecord]


# A run's status as the trial state Optuna would give it.
RUN_STATES = {
    "done": "COMPLETE",
    "pruned": "PRUNED",
    "failed": "FAIL",
    "interrupted": "FAIL",
    "running": "RUNNING",
    "queued": "WAITING",
}
TRIAL_RUN_COLUMNS = (
    "id, study, tune_study, trial_number, status, epoch, epochs, train_acc, val_acc, test_acc, "
    "gap, log10_lb"
)


class StoreReader:
    """Reads one lba store on a private thread.

    Args:
        path: the SQLite file; it may not exist yet (the reader keeps looking for it).
    """

    BUSY_MS = 2000

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lba-store")
        self._conn: sqlite3.Connection | None = None
        self._store: Any = None
        self._tables: set[str] = set()
        self._tables_version: int | None = None
        self._attack_key: tuple | None = None
        self._attack_summary: dict[int, tuple[float | None, float | None]] = {}
        self._refused = ""

    # -- plumbing --------------------------------------------------------------------------

    async def fetch(self, query: Callable[..., T], *args: Any) -> T:
        """Run ``query(self, *args)`` on the reader thread and return its result.

        Raises:
            StoreMissing: there is no file at the path.
            StoreUnreadable: the file is not an lba store this version reads.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(self._call, query, *args))

    def _call(self, query: Callable[..., T], *args: Any) -> T:
        self._open()
        if self._refused:
            raise StoreUnreadable(self._refused)
        try:
            return query(self, *args)
        except sqlite3.DatabaseError as exc:
            raise StoreUnreadable(f"{self.path}: {exc}") from None

    def _open(self) -> None:
        if self._conn is not None:
            return
        if not self.path.exists():
            raise StoreMissing(str(self.path))
        # The same read-only open as engine.store.Store(readonly=True), without importing
        # it: sqlite-utils loads pandas when installed, a second on a small machine. The
        # schema version is checked by check_schema once the first screen is up.
        try:
            uri = f"file:{self.path.resolve()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {self.BUSY_MS}")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreUnreadable(f"cannot open {self.path} as an lba store: {exc}") from None
        self._conn = conn

    def check_schema(self) -> None:
        """Refuse a store written by a newer lba (``engine.store``'s rule).

        Raises:
            StoreUnreadable: the file's schema version is newer than this lba reads.
        """
        from engine.store import SCHEMA_VERSION

        if not self.has("meta"):
            return
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            self._refused = (
                f"{self.path} has schema version {version}, newer than the {SCHEMA_VERSION} "
                "this lba reads; upgrade lba to open it"
            )
            raise StoreUnreadable(self._refused)

    @property
    def store(self) -> Any:
        """A read-only :class:`engine.store.Store` for ``engine.report`` (reader thread only)."""
        if self._store is None:
            from engine.store import Store

            self._store = Store(self.path, readonly=True)
        return self._store

    @property
    def conn(self) -> sqlite3.Connection:
        """The raw read-only connection (reader thread only)."""
        assert self._conn is not None, "the reader opens its connection in fetch"
        return self._conn

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """One consistent read: ``BEGIN`` ... ``COMMIT`` around a few queries, nothing more."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connections on their thread and stop the thread."""

        def shut() -> None:
            if self._store is not None:
                self._store.close()
                self._store = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        # The app is closing: a connection that will not close in time is left to the OS.
        with contextlib.suppress(TimeoutError, RuntimeError, sqlite3.Error):
            self._pool.submit(shut).result(timeout=5)
        self._pool.shutdown(wait=False)

    # -- queries (each runs on the reader thread) ------------------------------------------

    def version(self) -> int:
        """A number that changes whenever another connection commits (``PRAGMA data_version``)."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def versioned(self, query: Callable[..., T], *args: Any) -> tuple[int, T]:
        """``(version(), query(self, *args))``: data and the version it was read at."""
        return self.version(), query(self, *args)

    def tables(self) -> set[str]:
        """The tables the file holds; panels whose table is absent show nothing."""
        version = self.version()
        if version != self._tables_version:
            rows = self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            self._tables = {name for (name,) in rows}
            self._tables_version = version
        return self._tables

    def has(self, *names: str) -> bool:
        """Whether every named table exists."""
        tables = self.tables()
        return all(name in tables for name in names)

    def runs(self) -> list[RunRow]:
        """Every run as a table row, in id order, with its headline attack accuracies."""
        if not self.has("runs"):
            return []
        with self.snapshot() as conn:
            rows = conn.execute(f"SELECT {RUN_COLUMNS} FROM runs ORDER BY id").fetchall()
            attacks = self._attacks_by_run(conn)
        none = (None, None)
        make = RunRow._make
        return [make(row[:12] + attacks.get(row[0], none) + row[12:]) for row in rows]

    def runs_changed(self, after_id: int, active: list[int]) -> tuple[list[RunRow], bool, int]:
        """Rows that may have changed: new runs, runs queued or running, and ``active`` ones.

        A finished run does not change again (a re-run is a new row), so a refresh reads a
        handful of rows through the status index instead of the whole table.

        Returns:
            The rows; whether the attack summary changed (then every row is returned); and
            how many runs the store holds, so a caller can tell when rows went missing.
        """
        if not self.has("runs"):
            return [], False, 0
        with self.snapshot() as conn:
            key = self._attack_key
            attacks = self._attacks_by_run(conn)
            if key != self._attack_key:
                rows = conn.execute(f"SELECT {RUN_COLUMNS} FROM runs ORDER BY id").fetchall()
            else:
                marks = ", ".join("?" for _ in active) or "NULL"
                rows = conn.execute(
                    f"SELECT {RUN_COLUMNS} FROM runs WHERE status IN ('queued', 'running') "
                    f"UNION SELECT {RUN_COLUMNS} FROM runs WHERE id > ? "
                    f"UNION SELECT {RUN_COLUMNS} FROM runs WHERE id IN ({marks})",
                    [after_id, *active],
                ).fetchall()
            count = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        none = (None, None)
        make = RunRow._make
        changed = [make(row[:12] + attacks.get(row[0], none) + row[12:]) for row in rows]
        return changed, key != self._attack_key, count

    def run_count(self) -> int:
        """How many runs the store holds."""
        if not self.has("runs"):
            return 0
        return int(self.conn.execute("SELECT count(*) FROM runs").fetchone()[0])

    def process_of(self, run_id: int) -> dict | None:
        """A run's status, host and pid as stored now (to stop it), or None."""
        return self._row(
            self.conn,
            "SELECT id, study, label, status, host, pid FROM runs WHERE id = ?",
            [run_id],
        )

    def running_in_study(self, study: str) -> dict | None:
        """The first running run of a study with a recorded pid, or None."""
        return self._row(
            self.conn,
            "SELECT id, study, label, status, host, pid FROM runs WHERE study = ? "
            "AND status = 'running' AND pid IS NOT NULL ORDER BY id LIMIT 1",
            [study],
        )

    def _attacks_by_run(self, conn: sqlite3.Connection) -> dict:
        """Per run, FGSM and PGD accuracy at the largest budget attacked (paper protocol first).

        Cached until the attacks table changes: it only does when a run finishes.
        """
        if "attacks" not in self.tables():
            return {}
        key = conn.execute("SELECT count(*), max(rowid) FROM attacks").fetchone()
        if key == self._attack_key:
            return self._attack_summary
        # SQLite returns the bare columns of the row that holds max(eps).
        rows = conn.execute(
            "SELECT run_id, protocol, attack, max(eps), accuracy FROM attacks "
            "WHERE attack IN ('fgsm', 'pgd') GROUP BY run_id, protocol, attack "
            "ORDER BY run_id, protocol DESC"
        ).fetchall()
        summary: dict[int, list] = {}
        for run_id, _protocol, attack, _eps, accuracy in rows:
            # 'standard' sorts before 'paper' descending, so paper values land last and win.
            pair = summary.setdefault(run_id, [None, None])
            pair[0 if attack == "fgsm" else 1] = accuracy
        self._attack_key = key
        self._attack_summary = {k: tuple(v) for k, v in summary.items()}
        return self._attack_summary

    def run_detail(self, run_id: int, after_epoch: int = 0) -> RunDetail | None:
        """A run with its epochs and spectral norms after ``after_epoch``, and its attacks."""
        if not self.has("runs"):
            return None
        with self.snapshot() as conn:
            run = self._row(conn, "SELECT * FROM runs WHERE id = ?", [run_id])
            if run is None:
                return None
            run["config"] = _loads(run.get("config_json"), {})
            detail = RunDetail(run)
            if "epochs" in self._tables:
                detail.epochs = self._rows(
                    conn,
                    "SELECT * FROM epochs WHERE run_id = ? AND epoch > ? ORDER BY epoch",
                    [run_id, after_epoch],
                )
            if "sigmas" in self._tables:
                detail.sigmas = self._rows(
                    conn,
                    "SELECT epoch, layer, name, sigma FROM sigmas WHERE run_id = ? AND epoch > ? "
                    "ORDER BY epoch, layer",
                    [run_id, after_epoch],
                )
            if "attacks" in self._tables:
                detail.attacks = self._rows(
                    conn,
                    "SELECT * FROM attacks WHERE run_id = ? ORDER BY protocol, attack, eps, steps",
                    [run_id],
                )
        return detail

    def compare(self, run_ids: list[int]) -> list[RunDetail]:
        """Several runs with all their epochs (no norms), in the order asked."""
        details = []
        for run_id in run_ids:
            detail = self.run_detail(run_id)
            if detail is not None:
                detail.sigmas = []
                details.append(detail)
        return details

    def studies(self) -> list[str]:
        """Study names, from the studies table and from the runs (tuning studies excluded)."""
        names: set[str] = set()
        if self.has("study_files"):
            names |= {n for (n,) in self.conn.execute("SELECT name FROM study_files")}
        if self.has("runs"):
            names |= {
                n
                for (n,) in self.conn.execute(
                    "SELECT DISTINCT study FROM runs WHERE trial_number IS NULL"
                )
            }
        return sorted(names)

    def study_table(self, study: str) -> list[dict]:
        """The paper-style table of a study (``engine.report.study_table``)."""
        from engine.report import study_table

        if not self.has("runs", "study_files", "attacks"):
            return []
        return study_table(self.store, study)

    def _optuna(self) -> bool:
        """Whether Optuna's tables are in the file (they share it with ours)."""
        if not self.has("studies", "trials", "trial_values", "study_directions"):
            return False
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(studies)")}
        return "study_name" in columns

    def tune_studies(self) -> list[str]:
        """Names of the tuning studies: Optuna's, and those only the runs table knows."""
        names: list[str] = []
        if self._optuna():
            names += [n for (n,) in self.conn.execute("SELECT study_name FROM studies")]
        if self.has("runs"):
            for (name,) in self.conn.execute(
                "SELECT DISTINCT tune_study FROM runs WHERE tune_study IS NOT NULL"
            ):
                if name not in names and not any(n.startswith(f"{name}:") for n in names):
                    names.append(name)
        return sorted(names)

    def tune(self, name: str) -> TuneData:
        """One tuning study with its trials, from Optuna's tables where they hold it."""
        with self.snapshot():
            if self._optuna():
                row = self.conn.execute(
                    "SELECT study_id FROM studies WHERE study_name = ?", [name]
                ).fetchone()
                if row is not None:
                    return self._tune_optuna(name, row[0])
            return self._tune_runs(name)

    def _trial_runs(self, name: str) -> dict[int, dict]:
        """The runs of a tuning study by trial number (``name`` or ``base:method``)."""
        if not self.has("runs"):
            return {}
        base, _, method = name.partition(":")
        rows = self._rows(
            self.conn,
            f"SELECT {TRIAL_RUN_COLUMNS}, method FROM runs WHERE tune_study IN (?, ?) "
            "AND trial_number IS NOT NULL ORDER BY id",
            [name, base],
        )
        runs = {}
        for run in rows:
            if run["tune_study"] == name or not method or run["method"] == method:
                runs[run["trial_number"]] = run
        return runs

    def _tune_optuna(self, name: str, study_id: int) -> TuneData:
        conn = self.conn
        directions = [
            d.lower()
            for (d,) in conn.execute(
                "SELECT direction FROM study_directions WHERE study_id = ? ORDER BY objective",
                [study_id],
            )
        ]
        objectives = [f"objective {i}" for i in range(len(directions))]
        if len(directions) == 1:
            objectives = ["value"]
        if self.has("study_user_attributes"):
            row = conn.execute(
                # lba tune names its objectives in the study's user attributes.
                "SELECT value_json FROM study_user_attributes WHERE study_id = ? "
                "AND key IN ('lba_objectives', 'objectives') ORDER BY key LIMIT 1",
                [study_id],
            ).fetchone()
            named = _loads(row[0], None) if row else None
            if isinstance(named, list) and len(named) == len(directions):
                objectives = [str(n) for n in named]
        trials: dict[int, TrialRecord] = {}
        for trial_id, number, state in conn.execute(
            "SELECT trial_id, number, state FROM trials WHERE study_id = ? ORDER BY number",
            [study_id],
        ):
            trials[trial_id] = TrialRecord(number, state, [None] * len(directions), {})
        for trial_id, objective, value, kind in conn.execute(
            "SELECT v.trial_id, v.objective, v.value, v.value_type FROM trial_values v "
            "JOIN trials t ON t.trial_id = v.trial_id WHERE t.study_id = ?",
            [study_id],
        ):
            if trial_id in trials and 0 <= objective < len(directions):
                trials[trial_id].values[objective] = _optuna_float(value, kind)
        if self.has("trial_params"):
            for trial_id, param, value, distribution in conn.execute(
                "SELECT p.trial_id, p.param_name, p.param_value, p.distribution_json "
                "FROM trial_params p JOIN trials t ON t.trial_id = p.trial_id "
                "WHERE t.study_id = ?",
                [study_id],
            ):
                if trial_id in trials:
                    trials[trial_id].params[param] = _optuna_param(value, distribution)
        if self.has("trial_intermediate_values"):
            for trial_id, step, value in conn.execute(
                "SELECT i.trial_id, i.step, i.intermediate_value FROM trial_intermediate_values i "
                "JOIN trials t ON t.trial_id = i.trial_id WHERE t.study_id = ? ORDER BY i.step",
                [study_id],
            ):
                if trial_id in trials and value is not None:
                    trials[trial_id].curve.append((step, value))
        runs = self._trial_runs(name)
        for trial in trials.values():
            trial.run = runs.get(trial.number)
        return TuneData(name, "optuna", objectives, directions, list(trials.values()))

    def _tune_runs(self, name: str) -> TuneData:
        runs = self._rows(
            self.conn,
            f"SELECT {TRIAL_RUN_COLUMNS}, config_json FROM runs WHERE tune_study = ? "
            "ORDER BY trial_number, id",
            [name],
        )
        validation = any(r["val_acc"] is not None for r in runs)
        objective = "val_acc" if validation else "test_acc"
        curves: dict[int, list[tuple[int, float]]] = {}
        if runs and "epochs" in self.tables():
            marks = ", ".join("?" for _ in runs)
            for run_id, epoch, value in self.conn.execute(
                f"SELECT run_id, epoch, {objective} FROM epochs WHERE run_id IN ({marks}) "
                "ORDER BY run_id, epoch",
                [r["id"] for r in runs],
            ):
                if value is not None:
                    curves.setdefault(run_id, []).append((epoch, value))
        configs = [_loads(r.pop("config_json"), {}) for r in runs]
        varying = varying_keys(configs)
        trials = []
        for i, run in enumerate(runs):
            state = RUN_STATES.get(run["status"], run["status"].upper())
            value = run[objective] if state in ("COMPLETE", "PRUNED", "RUNNING") else None
            number = run["trial_number"] if run["trial_number"] is not None else i
            params = {key: values[i] for key, values in varying}
            trials.append(
                TrialRecord(number, state, [value], params, curves.get(run["id"], []), run)
            )
        return TuneData(name, "runs", [objective], ["maximize"], trials)

    @staticmethod
    def _rows(conn: sqlite3.Connection, sql: str, params: list) -> list[dict]:
        cursor = conn.execute(sql, params)
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def _row(self, conn: sqlite3.Connection, sql: str, params: list) -> dict | None:
        rows = self._rows(conn, sql, params)
        return rows[0] if rows else None


def _optuna_float(value: float | None, kind: str | None) -> float | None:
    if kind == "INF_POS":
        return math.inf
    if kind == "INF_NEG":
        return -math.inf
    return value


def _optuna_param(value: float, distribution: str | None) -> Any:
    """A parameter as sampled: Optuna stores a categorical choice as its index."""
    spec = _loads(distribution, {}) or {}
    kind = spec.get("name", "")
    attributes = spec.get("attributes", {})
    if kind == "CategoricalDistribution":
        choices = attributes.get("choices", [])
        index = int(value)
        return choices[index] if 0 <= index < len(choices) else value
    if kind == "IntDistribution" or (kind.startswith("Int") and value is not None):
        return int(value)
    return value


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"dotted.key": value}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


IGNORED_PARAMS = ("train.seed", "study.name", "study.path")


def varying_keys(
    configs: list[dict], ignored: tuple[str, ...] = IGNORED_PARAMS
) -> list[tuple[str, list[Any]]]:
    """Dotted config keys whose values differ between ``configs``, with each one's value."""
    flat = [flatten(c) for c in configs]
    keys = sorted({k for f in flat for k in f} - set(ignored))
    out = []
    for key in keys:
        values = [f.get(key) for f in flat]
        if len({json.dumps(v, sort_keys=True) for v in values}) > 1:
            out.append((key, values))
    return out


def _loads(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


@dataclass
class StudyTable:
    """A study's paper-style table, formatted on the reader thread (``engine.report``)."""

    study: str
    rows: list[dict]
    headers: list[str]
    cells: list[list[str]]
    csv_headers: list[str]
    csv_rows: list[list[Any]]


def study_table(reader: StoreReader, study: str, plus_minus: str = "±") -> StudyTable:
    """The table of ``study``: methods x depth, mean and std over seeds, published values."""
    from engine.report import format_table, table_csv_rows

    rows = reader.study_table(study)
    headers, cells = format_table(rows, plus_minus=plus_minus) if rows else ([], [])
    csv_headers, csv_rows = table_csv_rows(rows) if rows else ([], [])
    return StudyTable(study, rows, headers, cells, csv_headers, csv_rows)
