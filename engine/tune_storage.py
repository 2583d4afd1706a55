"""Optuna storages for tuning: URLs checked up front, storages opened for lba, tunings read back.

A storage is the store's own SQLite file (the default) or a PostgreSQL database that workers on
many machines share. On SQLite every Optuna transaction starts with ``BEGIN IMMEDIATE``, as the
store's writes do: with several writers, a transaction that read first and then wanted to write
could otherwise fail at once with "database is locked" instead of waiting for the lock. Reading
a tuning back (``lba tune --show``, ``lba export --what trials``) needs only the storage, never
the workers' local stores.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from engine.errors import LbaError
from engine.study import TUNE_OBJECTIVES

# Optuna reports every trial at INFO and every failure with a traceback; lba logs its own.
optuna.logging.set_verbosity(optuna.logging.ERROR)

SQLITE_TIMEOUT_S = 60
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class TuneError(LbaError):
    """A tuning request that cannot be served: the storage, the study name, the budget."""


def optuna_name(tuning: str, method: str) -> str:
    """The Optuna study of one method of a tuning."""
    return f"{tuning}:{method}"


# ---------------------------------------------------------------------------------------------
# Storage URLs


def default_storage_url(db_path: str | os.PathLike) -> str:
    """The store's own file as an Optuna storage URL."""
    return f"sqlite:///{Path(db_path).resolve()}"


def shown(url: str) -> str:
    """A storage URL for messages, its password hidden."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return url


def is_memory(url: str) -> bool:
    """Whether a (checked) storage URL is an in-memory SQLite database."""
    return url == "sqlite:///:memory:"


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///") or is_memory(url):
        return None
    return Path(url.removeprefix("sqlite:///"))


def check_storage_url(
    url: str, *, jobs: int = 1, db_path: str | os.PathLike | None = None, writing: bool = True
) -> str:
    """Refuse an unusable storage URL before anything is written anywhere.

    Args:
        url: ``sqlite:///FILE`` or ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE``.
        jobs: Worker processes that will share it; an in-memory database serves one only.
        db_path: The store; a SQLite storage must exist already unless it is this file.
        writing: Whether trials will be written (an in-memory storage is empty otherwise).

    Returns:
        The URL with a SQLite path made absolute, or ``sqlite:///:memory:``.

    Raises:
        TuneError: a bad scheme, a missing or non-SQLite file, an in-memory database with
            several workers or for reading, a missing driver or an unreachable server.
    """
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise TuneError(
            f"--storage {url!r} is not a storage URL; use sqlite:///FILE or "
            "postgresql://USER@HOST/DATABASE"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
            if jobs > 1:
                raise TuneError(
                    f"--storage {url} is an in-memory database, which {jobs} worker processes "
                    "cannot share; use a file (sqlite:///lba.db) or a PostgreSQL server"
                )
            if not writing:
                raise TuneError(
                    f"--storage {url} is an in-memory database: it is empty in every new "
                    "command; point at the file or server the study was tuned in"
                )
            return "sqlite:///:memory:"
        path = Path(database).expanduser().absolute()
        is_store = db_path is not None and path.resolve() == Path(db_path).resolve()
        if path.is_dir():
            raise TuneError(f"--storage {url}: {path} is a folder, not an SQLite file")
        if not path.exists() and not is_store:
            raise TuneError(
                f"--storage {url}: no file {path}; a SQLite storage must exist already, or be "
                "the store itself (the default; pick it with --db)"
            )
        if path.exists() and path.stat().st_size > 0:
            with open(path, "rb") as handle:
                if handle.read(16) != b"SQLite format 3\x00":
                    raise TuneError(f"--storage {url}: {path} is not an SQLite database")
        if writing and path.exists() and not os.access(path, os.W_OK):
            raise TuneError(f"--storage {url}: cannot write {path}: permission denied")
        return f"sqlite:///{path}"
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; lba ships psycopg2.
            driver = "psycopg" if _importable("psycopg") else "psycopg2"
            parsed = parsed.set(drivername=f"postgresql+{driver}")
            url = parsed.render_as_string(hide_password=False)
        try:
            parsed.get_dialect().import_dbapi()
        except ImportError:
            raise TuneError(
                f"--storage {shown(url)} needs the {parsed.get_driver_name()} driver: pip "
                "install 'lba[postgres]'"
            ) from None
        engine = sqlalchemy.create_engine(
            url, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": 10}
        )
        try:
            with engine.connect():
                pass
        except sqlalchemy.exc.DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise TuneError(f"cannot use the PostgreSQL storage {shown(url)}: {reason}") from None
        finally:
            engine.dispose()
        return url
    raise TuneError(
        f"--storage {shown(url)}: unsupported scheme {parsed.drivername!r}; use sqlite:///FILE "
        "or postgresql://USER@HOST/DATABASE"
    )


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _begin_immediate(connection: sqlalchemy.engine.Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def open_storage(
    url: str,
    *,
    heartbeat: int | None = None,
    grace: int | None = None,
    on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> optuna.storages.BaseStorage:
    """An Optuna storage for a checked URL; with ``heartbeat``, running trials send one."""
    if is_memory(url):
        return optuna.storages.InMemoryStorage()
    sqlite = url.startswith("sqlite:")
    if sqlite:
        # The driver leaves transactions alone; the "begin" listener opens each one IMMEDIATE.
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S, "isolation_level": None}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat,
                    grace_period=grace,
                    heartbeat_stale_trial_callback=on_stale,
                )
            break
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Workers that start together on an empty database all create Optuna's tables;
            # the losers find them made when they try again.
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))
    if sqlite:
        sqlalchemy.event.listen(storage.engine, "begin", _begin_immediate)
        with storage.engine.connect() as connection:
            # WAL lets the terminal app and `lba ls` read while workers write (persistent).
            connection.exec_driver_sql("PRAGMA journal_mode = wal")
    return storage


def study_names(url: str) -> list[str]:
    """Every Optuna study name in a checked storage (none where the SQLite file is absent)."""
    path = _sqlite_path(url)
    if is_memory(url) or (path is not None and not path.exists()):
        return []
    if path is not None:
        # Read-only, so asking about a store never adds Optuna's tables to it.
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            if not conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'studies'"
            ).fetchone():
                return []
            return [name for (name,) in conn.execute("SELECT study_name FROM studies")]
    return optuna.get_all_study_names(open_storage(url))


def tuning_names(names: list[str]) -> list[str]:
    """The lba tunings among Optuna study names (``<name>:<method>`` -> ``name``)."""
    return sorted({n.rpartition(":")[0] for n in names if ":" in n})


def unknown_tuning(name: str, url: str) -> TuneError:
    """The error for a tuning name that the storage does not hold, listing those it does."""
    names = study_names(url)
    tunings = ", ".join(tuning_names(names)) or "none"
    others = sorted(n for n in names if ":" not in n)
    extra = f"; other Optuna studies: {', '.join(others)}" if others else ""
    return TuneError(
        f"no tuning {name!r} in {shown(url)}; tunings there: {tunings}{extra} (start one by "
        "passing the study file)"
    )


# ---------------------------------------------------------------------------------------------
# Reading a tuning back: --show and export


def load_studies(url: str, name: str, methods: list[str]) -> dict[str, optuna.Study]:
    """The Optuna studies of a tuning, for reading."""
    storage = open_storage(url)
    return {
        m: optuna.load_study(study_name=optuna_name(name, m), storage=storage) for m in methods
    }


def pick_best(study: optuna.Study, objectives: list[str]) -> FrozenTrial | None:
    """The best complete trial; with several objectives, the Pareto trial best on the first."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    if len(objectives) == 1:
        return study.best_trial
    sign = 1 if TUNE_OBJECTIVES[objectives[0]] == "maximize" else -1
    return max(study.best_trials, key=lambda t: sign * t.values[0])


def _trial_dict(trial: FrozenTrial, objectives: list[str]) -> dict[str, Any]:
    values = dict(zip(objectives, trial.values)) if trial.values else {}
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "values": values,
        "params": dict(trial.params),
        "attrs": dict(trial.user_attrs),
    }


def report(
    url: str, name: str, methods: list[str], objectives: list[str], with_importances: bool = True
) -> list[dict]:
    """What ``lba tune --show`` prints, per method: trial counts, the best trial, the Pareto
    front (several objectives), and parameter importances per objective."""
    out = []
    for method, study in load_studies(url, name, methods).items():
        trials = study.get_trials(deepcopy=False)
        counts = {s.name.lower(): 0 for s in TrialState}
        for trial in trials:
            counts[trial.state.name.lower()] += 1
        best = pick_best(study, objectives)
        front = []
        if len(objectives) > 1 and best is not None:
            sign = 1 if TUNE_OBJECTIVES[objectives[0]] == "maximize" else -1
            pareto = sorted(study.best_trials, key=lambda t: -sign * t.values[0])
            front = [_trial_dict(t, objectives) for t in pareto]
        importances = {}
        for i, objective in enumerate(objectives if with_importances else []):
            # The evaluator ranks what makes a target low: a maximized one is negated.
            sign = -1.0 if TUNE_OBJECTIVES[objective] == "maximize" else 1.0
            target = None if len(objectives) == 1 else (lambda t, i=i, s=sign: s * t.values[i])
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    importances[objective] = optuna.importance.get_param_importances(
                        study, target=target
                    )
            except (RuntimeError, ValueError):
                # Fewer than two complete trials, or no parameter that varies.
                importances[objective] = {}
        out.append(
            {
                "method": method,
                "study": study.study_name,
                "counts": counts,
                "best": None if best is None else _trial_dict(best, objectives),
                "front": front,
                "importances": importances,
            }
        )
    return out


_METRICS = ("epoch", "train_acc", "val_acc", "val_pgd_acc", "test_acc", "gap", "log10_lb")


def _metric_order(key: str) -> tuple:
    # The accuracies first, then the attacks by name (fgsm@0.01, ..., pgd@0.02), seconds last.
    if key in _METRICS:
        return (0, _METRICS.index(key), "")
    return (2 if key == "seconds" else 1, 0, key)


def trial_rows(
    url: str, name: str, methods: list[str], objectives: list[str]
) -> tuple[list[str], list[list[Any]]]:
    """Every trial of a tuning with its state, objective values, parameters and metrics."""
    rows = []
    params: dict[str, None] = {}
    attrs: set[str] = set()
    hidden = {"fail_reason", "host", "pid", "db", "run_id"}
    for method, study in load_studies(url, name, methods).items():
        study_attrs = study.user_attrs
        for trial in study.get_trials(deepcopy=False):
            params.update(dict.fromkeys(trial.params))
            attrs.update(k for k in trial.user_attrs if k not in hidden)
            rows.append((method, study, study_attrs, trial))
    metrics = sorted(attrs, key=_metric_order)
    headers = [
        "tuning", "method", "optuna_study", "trial", "state",
        *(f"value:{o}" for o in objectives),
        *(f"param:{p}" for p in params),
        *metrics, "run_id", "host", "fail_reason", "started", "finished", "duration_s",
    ]  # fmt: skip
    out = []
    for method, study, study_attrs, trial in rows:
        values = list(trial.values) if trial.values else [None] * len(objectives)
        start, end = trial.datetime_start, trial.datetime_complete
        out.append(
            [
                name, method, study.study_name, trial.number, trial.state.name.lower(),
                *values,
                *(trial.params.get(p) for p in params),
                *(trial.user_attrs.get(a) for a in metrics),
                trial.user_attrs.get("run_id"), trial.user_attrs.get("host"),
                fail_reason(study_attrs, trial) or None,
                start.isoformat(timespec="seconds") if start else None,
                end.isoformat(timespec="seconds") if end else None,
                round((end - start).total_seconds(), 3) if start and end else None,
            ]
        )  # fmt: skip
    return headers, out


def fail_reason(study_attrs: dict[str, Any], trial: FrozenTrial) -> str:
    """Why a trial failed, as recorded by its worker (a trial attribute) or by whoever found
    it dead (an attribute of its study, ``study_attrs``, once the trial was closed)."""
    return (
        trial.user_attrs.get("fail_reason")
        or study_attrs.get(f"fail_reason:{trial.number}")
        or ("" if trial.state != TrialState.FAIL else "no reason recorded")
    )
