"""The SQLite store: the contract between the engine, the command line and the terminal app.

One file holds studies, runs, per-epoch metrics, per-layer spectral norms and attack results,
and (schema v2) each finished run's trained weights and what ``lba eval`` measured on them:
natural shifts, certified accuracy, Lipschitz estimates and the gradient-masking curves.
It imports no torch, so the terminal app can read it without loading the engine.

Writers (training processes) and readers (the app, ``lba ls``) share the file safely: the
journal is WAL, every connection waits up to ``BUSY_TIMEOUT_S`` for a lock, and every write
is one short ``BEGIN IMMEDIATE`` transaction, so an epoch lands whole or not at all. A run
whose process died is found by :meth:`Store.reap_stale` and marked ``interrupted``.

Optuna keeps its tuning studies in the same file (its tables: ``studies``, ``trials``, ...);
ours never share a name with them, which is why study files live in ``study_files``.

Schema changes are appended to ``MIGRATIONS``; the file stores how many it has applied and a
file written by a newer lba is refused rather than misread.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

from engine.errors import StoreError

if TYPE_CHECKING:
    import sqlite_utils

DEFAULT_DB = "lba.db"
BUSY_TIMEOUT_S = 60.0

STATUSES = ("queued", "running", "done", "interrupted", "failed", "pruned")
# Tables `lba eval` fills (schema v2); a re-run replaces a run's rows.
EVALUATION_TABLES = ("shifts", "certified", "lipschitz_estimates", "pgd_curve")
ACTIVE = ("queued", "running")


def now() -> str:
    """The current UTC time as an ISO-8601 string, the format of every timestamp in the store."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def resolve_db_path(db: str | os.PathLike | None = None) -> Path:
    """The store to use: ``db`` if given, else ``$LBA_DB``, else ``./lba.db``."""
    return Path(db or os.environ.get("LBA_DB") or DEFAULT_DB)


def finite_or_none(value: Any) -> Any:
    """NaN and infinities become NULL: SQLite cannot hold NaN in a REAL column.

    A run whose loss went non-finite records why in its ``error`` column.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------
# Schema


def _schema_v1(db: sqlite_utils.Database) -> None:
    db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
    db["study_files"].create(
        {
            "name": str,
            "path": str,
            "description": str,
            "config_json": str,
            "reference_json": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="name",
        if_not_exists=True,
    )
    db["runs"].create(
        {
            "id": int,
            "study": str,
            "label": str,
            "dataset": str,
            "arch": str,
            "method": str,
            "depth": int,
            "seed": int,
            "status": str,
            "epoch": int,
            "epochs": int,
            "loss": float,
            "train_acc": float,
            "val_acc": float,
            "test_acc": float,
            "gap": float,
            "log10_lb": float,
            "config_json": str,
            "device": str,
            "host": str,
            "pid": int,
            "versions_json": str,
            "error": str,
            "trial_number": int,
            "tune_study": str,
            "seconds": float,
            "created_at": str,
            "started_at": str,
            "finished_at": str,
            "heartbeat_at": str,
        },
        pk="id",
        if_not_exists=True,
    )
    db["epochs"].create(
        {
            "run_id": int,
            "epoch": int,
            "loss": float,
            "penalty": float,
            "train_acc": float,
            "val_acc": float,
            "test_acc": float,
            "test_loss": float,
            "gap": float,
            "log10_lb": float,
            "log10_prod": float,
            "lba_layer": int,
            "lba_sigma": float,
            "draws_json": str,
            "lr": float,
            "seconds": float,
        },
        pk=("run_id", "epoch"),
        foreign_keys=[("run_id", "runs", "id")],
        if_not_exists=True,
    )
    db["sigmas"].create(
        {"run_id": int, "epoch": int, "layer": int, "name": str, "sigma": float},
        pk=("run_id", "epoch", "layer"),
        foreign_keys=[("run_id", "runs", "id")],
        if_not_exists=True,
    )
    db["attacks"].create(
        {
            "run_id": int,
            "protocol": str,
            "attack": str,
            "eps": float,
            "steps": int,
            "step_size": float,
            "restarts": int,
            "accuracy": float,
            "correct": int,
            "n": int,
            "created_at": str,
        },
        pk=("run_id", "protocol", "attack", "eps", "steps", "restarts"),
        foreign_keys=[("run_id", "runs", "id")],
        if_not_exists=True,
    )
    db["runs"].create_index(["study"], if_not_exists=True)
    db["runs"].create_index(["status"], if_not_exists=True)


def _schema_v2(db: sqlite_utils.Database) -> None:
    # Trained weights, so a run can be evaluated again without retraining; the blob is what
    # torch.save wrote (the store itself never imports torch).
    db["weights"].create(
        {"run_id": int, "format": str, "size": int, "blob": bytes, "created_at": str},
        pk="run_id",
        foreign_keys=[("run_id", "runs", "id")],
        if_not_exists=True,
    )
    # Natural shifts: one row per shift and severity (0 = the unshifted images); the
    # worst-case lighting accuracy is shift 'lighting_worst', its grid 'lighting_grid'.
    db["shifts"].create(
        {
            "run_id": int,
            "shift": str,
            "severity": int,
            "level": float,
            "params_json": str,
            "accuracy": float,
            "correct": int,
            "n": int,
            "seed": int,
            "created_at": str,
        },
        pk=("run_id", "shift", "severity"),
        foreign_keys=[("run_id", "runs", "id")],
        if_not_exists=True,
    )
    # Certified accuracy at each l2 radius, per bound; the bound's log10 and the median
    # certified radius repeat on each row so a CSV row stands on its own.
    db["certified"].create(
        {
            "run_id": int,
            "bound": str,
            "radius": float,
            "accuracy": float,
            "correct": int,
            "n": int,
            "log10_bound": float,
            "median_radius": float,
            "created_at": str,
        },
        pk=("run_id", "bound", "radius"),
        foreign_keys=[("run_id", "runs", "id")],
        if_not_exists=True,
    )
    # Upper bounds and empirical lower bounds of the l2 Lipschitz constant of the logits.
    db["lipschitz_estimates"].create(
        {
            "run_id": int,
            "kind": str,
            "side": str,
            "log10_value": float,
            "valid": int,
            "n": int,
            "created_at": str,
        },
        pk=("run_id", "kind"),
        foreign_keys=[("run_id", "runs", "id")],
        if_not_exists=True,
    )
    # The gradient-masking check: per PGD step, the mean logit cross-entropy and accuracy.
    db["pgd_curve"].create(
        {
            "run_id": int,
            "loss": str,
            "eps": float,
            "step": int,
            "mean_ce": float,
            "accuracy": float,
            "robust": float,
            "zero_grad": float,
            "n": int,
            "created_at": str,
        },
        pk=("run_id", "loss", "eps", "step"),
        foreign_keys=[("run_id", "runs", "id")],
        if_not_exists=True,
    )


# Each entry upgrades the schema by one version; append, never edit a released one.
MIGRATIONS: list[Callable[["sqlite_utils.Database"], None]] = [_schema_v1, _schema_v2]
SCHEMA_VERSION = len(MIGRATIONS)


# ---------------------------------------------------------------------------------------------
# The store


class Store:
    """One lba SQLite file, opened for reading and writing (or reading only).

    Args:
        path: the database file; created (with its schema) unless ``readonly``.
        readonly: open without creating or migrating anything, as the terminal app does.

    Raises:
        StoreError: the file cannot be created or opened, is not an SQLite database, or was
            written by a newer lba.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, readonly: bool = False) -> None:
        self.path = resolve_db_path(path)
        self.readonly = readonly
        if readonly and not self.path.exists():
            raise StoreError(f"no store at {self.path}: start one with `lba run`")
        if not readonly:
            parent = self.path.resolve().parent
            if not parent.is_dir():
                raise StoreError(f"cannot create {self.path}: folder {parent} does not exist")
            if not os.access(parent, os.W_OK) or (
                self.path.exists() and not os.access(self.path, os.W_OK)
            ):
                raise StoreError(
                    f"cannot write {self.path}: permission denied; pass --db or set $LBA_DB "
                    "to a writable file"
                )
        try:
            if readonly:
                uri = f"file:{self.path.resolve()}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            else:
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            # Imported here: sqlite-utils loads pandas when it is installed (about 0.5 s), which
            # `lba --help` and the app's first paint should not wait for.
            import sqlite_utils

            self.db = sqlite_utils.Database(conn)
            if not readonly:
                self._set_wal()
                self._migrate()
            else:
                self._check_version()
        except sqlite3.DatabaseError as exc:
            hint = "" if readonly else "; pass --db or set $LBA_DB to a writable file"
            raise StoreError(f"cannot open {self.path} as an lba store: {exc}{hint}") from None

    def _set_wal(self) -> None:
        mode = self.db.execute("PRAGMA journal_mode").fetchone()[0]
        if mode != "wal":
            self.db.execute("PRAGMA journal_mode = wal")
        self.db.execute("PRAGMA synchronous = NORMAL")

    @property
    def schema_version(self) -> int:
        """How many migrations this file has applied (0 for an empty file)."""
        if not self.db["meta"].exists():
            return 0
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _check_version(self) -> int:
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than the {SCHEMA_VERSION} this "
                "lba reads; upgrade lba to open it"
            )
        return version

    def _migrate(self) -> None:
        with self.write():
            version = self._check_version()
            for migration in MIGRATIONS[version:]:
                migration(self.db)
            if version < SCHEMA_VERSION:
                self.db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                    [str(SCHEMA_VERSION)],
                )

    @contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """One atomic write: ``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error.

        IMMEDIATE takes the write lock up front, so a transaction never fails half-way with
        "database is locked" when another writer committed in between; it waits instead.
        """
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only")
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"cannot write {self.path}: {exc}") from None
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self.db.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------

    def save_study(
        self,
        name: str,
        *,
        path: str = "",
        description: str = "",
        config: dict | None = None,
        reference: list | None = None,
    ) -> None:
        """Create or update a study's record (its resolved config and published values)."""
        stamp = now()
        with self.write() as db:
            db.execute(
                "INSERT INTO study_files(name, path, description, config_json, reference_json, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET path = excluded.path, "
                "description = excluded.description, config_json = excluded.config_json, "
                "reference_json = excluded.reference_json, updated_at = excluded.updated_at",
                [
                    name,
                    path,
                    description,
                    json.dumps(config or {}),
                    json.dumps(reference or []),
                    stamp,
                    stamp,
                ],
            )

    def create_run(
        self,
        *,
        study: str,
        method: str,
        depth: int,
        seed: int,
        dataset: str,
        arch: str,
        epochs: int,
        config: dict,
        label: str = "",
        trial_number: int | None = None,
        tune_study: str | None = None,
    ) -> int:
        """Add a queued run and return its id."""
        with self.write() as db:
            cursor = db.execute(
                "INSERT INTO runs(study, label, dataset, arch, method, depth, seed, status, "
                "epoch, epochs, config_json, trial_number, tune_study, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?)",
                [
                    study,
                    label or f"{method} n={depth} seed={seed}",
                    dataset,
                    arch,
                    method,
                    depth,
                    seed,
                    epochs,
                    json.dumps(config),
                    trial_number,
                    tune_study,
                    now(),
                ],
            )
            return int(cursor.lastrowid)

    def start_run(self, run_id: int, *, device: str, versions: dict) -> None:
        """Mark a run as running in this process."""
        stamp = now()
        with self.write() as db:
            db.execute(
                "UPDATE runs SET status = 'running', device = ?, host = ?, pid = ?, "
                "versions_json = ?, started_at = ?, heartbeat_at = ?, error = NULL WHERE id = ?",
                [device, socket.gethostname(), os.getpid(), json.dumps(versions), stamp, stamp,
                 run_id],
            )

    def record_epoch(self, run_id: int, metrics: dict, sigmas: list[tuple[str, float]]) -> None:
        """Write one epoch's metrics and spectral norms, and the run's summary, atomically."""
        row = {key: finite_or_none(value) for key, value in metrics.items()}
        row["run_id"] = run_id
        if isinstance(row.get("draws_json"), (list, dict)):
            row["draws_json"] = json.dumps(row["draws_json"])
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self.write() as db:
            db.execute(
                f"INSERT OR REPLACE INTO epochs({columns}) VALUES ({marks})", list(row.values())
            )
            db.conn.executemany(
                "INSERT OR REPLACE INTO sigmas(run_id, epoch, layer, name, sigma) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (run_id, row["epoch"], i, name, finite_or_none(sigma))
                    for i, (name, sigma) in enumerate(sigmas)
                ],
            )
            db.execute(
                "UPDATE runs SET epoch = ?, loss = ?, train_acc = ?, val_acc = ?, test_acc = ?, "
                "gap = ?, log10_lb = ?, heartbeat_at = ? WHERE id = ?",
                [
                    row["epoch"],
                    row.get("loss"),
                    row.get("train_acc"),
                    row.get("val_acc"),
                    row.get("test_acc"),
                    row.get("gap"),
                    row.get("log10_lb"),
                    now(),
                    run_id,
                ],
            )

    def record_attacks(self, run_id: int, rows: list[dict], *, protocol: str) -> None:
        """Replace a run's attack results for one protocol (a re-run never duplicates)."""
        stamp = now()
        with self.write() as db:
            db.execute("DELETE FROM attacks WHERE run_id = ? AND protocol = ?", [run_id, protocol])
            db.conn.executemany(
                "INSERT INTO attacks(run_id, protocol, attack, eps, steps, step_size, restarts, "
                "accuracy, correct, n, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        protocol,
                        r["attack"],
                        float(r["eps"]),
                        int(r.get("steps") or 0),
                        float(r.get("step_size") or 0.0),
                        int(r.get("restarts") or 0),
                        float(r["accuracy"]),
                        int(r["correct"]),
                        int(r["n"]),
                        stamp,
                    )
                    for r in rows
                ],
            )

    def save_weights(self, run_id: int, blob: bytes, *, format: str = "torch.save") -> None:
        """Keep a run's trained weights (the bytes of a serialized state dict), replacing any."""
        with self.write() as db:
            db.execute(
                "INSERT OR REPLACE INTO weights(run_id, format, size, blob, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [run_id, format, len(blob), sqlite3.Binary(blob), now()],
            )

    def replace_rows(
        self, table: str, run_id: int, rows: list[dict], *, where: dict[str, list] | None = None
    ) -> None:
        """Replace a run's rows of an evaluation table in one transaction (never duplicates).

        Args:
            table: ``shifts``, ``certified``, ``lipschitz_estimates`` or ``pgd_curve``.
            run_id: The run the rows belong to.
            rows: Column -> value; ``run_id`` and ``created_at`` are filled in.
            where: Only rows whose column holds one of the listed values are deleted first
                (e.g. the kinds being written); None deletes all of the run's rows in ``table``.
        """
        if table not in EVALUATION_TABLES:
            raise StoreError(f"table {table!r} is not one of {', '.join(EVALUATION_TABLES)}")
        stamp = now()
        clause, params = "", [run_id]
        for column, values in (where or {}).items():
            clause += f" AND {column} IN ({', '.join('?' for _ in values)})"
            params += list(values)
        with self.write() as db:
            db.execute(f"DELETE FROM {table} WHERE run_id = ?{clause}", params)
            for row in rows:
                row = {k: finite_or_none(v) for k, v in row.items()}
                row.update(run_id=run_id, created_at=stamp)
                columns = ", ".join(row)
                marks = ", ".join("?" for _ in row)
                db.execute(f"INSERT INTO {table}({columns}) VALUES ({marks})", list(row.values()))

    def finish_run(
        self, run_id: int, status: str, *, error: str | None = None, seconds: float | None = None
    ) -> None:
        """Close a run as done, interrupted, failed or pruned."""
        if status not in STATUSES:
            raise ValueError(f"unknown run status {status!r}; allowed: {', '.join(STATUSES)}")
        with self.write() as db:
            db.execute(
                "UPDATE runs SET status = ?, error = ?, finished_at = ?, "
                "seconds = COALESCE(?, seconds) WHERE id = ?",
                [status, error, now(), seconds, run_id],
            )

    def reap_stale(self) -> list[int]:
        """Mark as ``interrupted`` the running runs of this host whose process is gone.

        Returns:
            The ids of the runs marked.
        """
        host = socket.gethostname()
        rows = self.db.execute(
            "SELECT id, pid FROM runs WHERE status = 'running' AND host = ?", [host]
        ).fetchall()
        dead = [run_id for run_id, pid in rows if pid is None or not _alive(pid)]
        if dead and not self.readonly:
            with self.write() as db:
                for run_id in dead:
                    db.execute(
                        "UPDATE runs SET status = 'interrupted', finished_at = ?, "
                        "error = COALESCE(error, 'the process stopped without closing the run') "
                        "WHERE id = ? AND status = 'running'",
                        [now(), run_id],
                    )
        return dead

    # -- reading ---------------------------------------------------------------------------

    def query(self, sql: str, params: list | tuple = ()) -> list[dict]:
        """Rows of any SELECT as dictionaries."""
        return list(self.db.query(sql, params))

    def studies(self) -> list[dict]:
        """Every study, newest first."""
        return self.query("SELECT * FROM study_files ORDER BY updated_at DESC")

    def study(self, name: str) -> dict | None:
        """One study's record with its config and reference decoded, or None."""
        rows = self.query("SELECT * FROM study_files WHERE name = ?", [name])
        if not rows:
            return None
        row = rows[0]
        row["config"] = json.loads(row.pop("config_json") or "{}")
        row["reference"] = json.loads(row.pop("reference_json") or "[]")
        return row

    def runs(self, study: str | None = None, *, status: str | None = None) -> list[dict]:
        """Runs in id order, optionally of one study and one status."""
        where, params = [], []
        if study is not None:
            where.append("study = ?")
            params.append(study)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return self.query(f"SELECT * FROM runs{clause} ORDER BY id", params)

    def run(self, run_id: int) -> dict | None:
        """One run with its config decoded, or None."""
        rows = self.query("SELECT * FROM runs WHERE id = ?", [run_id])
        if not rows:
            return None
        row = rows[0]
        row["config"] = json.loads(row.get("config_json") or "{}")
        return row

    def epochs(self, run_id: int) -> list[dict]:
        """A run's per-epoch metrics in epoch order."""
        return self.query("SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", [run_id])

    def sigmas(self, run_id: int) -> list[dict]:
        """A run's per-layer spectral norms, by epoch then layer."""
        return self.query(
            "SELECT * FROM sigmas WHERE run_id = ? ORDER BY epoch, layer", [run_id]
        )

    def attacks(self, run_id: int | None = None, *, study: str | None = None) -> list[dict]:
        """Attack results of one run, or of every run of a study."""
        if run_id is not None:
            return self.query(
                "SELECT * FROM attacks WHERE run_id = ? ORDER BY protocol, attack, eps, steps",
                [run_id],
            )
        return self.query(
            "SELECT a.* FROM attacks a JOIN runs r ON r.id = a.run_id WHERE r.study = ? "
            "ORDER BY a.run_id, a.protocol, a.attack, a.eps, a.steps",
            [study],
        )

    def weights(self, run_id: int) -> bytes | None:
        """A run's saved weights, or None when it has none (it was trained before v2)."""
        if not self.db["weights"].exists():
            return None
        row = self.db.execute("SELECT blob FROM weights WHERE run_id = ?", [run_id]).fetchone()
        return bytes(row[0]) if row else None

    def evaluation(self, table: str, run_id: int) -> list[dict]:
        """A run's rows of one evaluation table (empty when the file predates the table)."""
        if table not in EVALUATION_TABLES:
            raise StoreError(f"table {table!r} is not one of {', '.join(EVALUATION_TABLES)}")
        if not self.db[table].exists():
            return []
        return self.query(f"SELECT * FROM {table} WHERE run_id = ? ORDER BY rowid", [run_id])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
