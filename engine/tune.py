"""Tuning: Optuna searches each method's settings, every method with the same trial budget.

A study file's ``[tune]`` section says what to search (see :mod:`engine.study`). Each method
gets its own Optuna study, ``<name>:<method>``, and the same number of finished trials, so no
method wins by being searched longer, and TPE models each method's own settings only. A trial
is an ordinary run in the store (``trial_number`` and ``tune_study`` link the two), trained by
:func:`engine.train.train_run` with its curves, spectral norms and attacks; its summary is also
kept as Optuna user attributes, so a study on a shared server is complete without the local
stores of the machines that trained it. Storages (the store's SQLite file by default, or
PostgreSQL) are opened and read back by :mod:`engine.tune_storage`.

Workers: ``jobs`` processes (spawned, each with its own storage and store connection) claim
trials from a shared :class:`Budget`, so exactly the requested number of trials finish
(complete or pruned) even when some fail or a worker dies. A running trial sends a heartbeat;
one whose worker was killed is failed when its process is found gone on this host, or by any
worker once its heartbeat is older than the grace period.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from engine.errors import LbaError, RunPruned
from engine.report import metric_key

# engine.runner sets OMP_WAIT_POLICY before torch loads; spawned workers inherit it.
from engine.runner import load_data_for
from engine.store import Store
from engine.study import PER_EPOCH_OBJECTIVES, TUNE_OBJECTIVES, Cell, Study, StudyError, validate
from engine.tune_storage import (
    FINISHED,
    TuneError,
    fail_reason,
    load_studies,
    open_storage,
    optuna_name,
    pick_best,
    unknown_tuning,
)

log = logging.getLogger("lba")


# ---------------------------------------------------------------------------------------------
# Search space and trial configs


def space_for(study: Study, method: str) -> dict[str, dict]:
    """A method's search space: the shared training settings, then the method's own."""
    space = study.tune["space"]
    out = {}
    for group in ("train", "model"):
        for key, dist in space.get(group, {}).items():
            out[f"{group}.{key}"] = dist
    for key, dist in space.get(method, {}).items():
        out[f"method.{key}"] = dist
    return out


def suggest(trial: optuna.Trial, space: dict[str, dict]) -> dict[str, Any]:
    """Draw a trial's settings; parameters are named ``train.lr``, ``method.lam``..."""
    params = {}
    for name, dist in space.items():
        kind = dist["type"]
        if kind == "log":
            params[name] = trial.suggest_float(name, dist["low"], dist["high"], log=True)
        elif kind == "uniform":
            params[name] = trial.suggest_float(
                name, dist["low"], dist["high"], step=dist.get("step")
            )
        elif kind == "int":
            params[name] = trial.suggest_int(
                name,
                dist["low"],
                dist["high"],
                step=dist.get("step", 1),
                log=dist.get("log", False),
            )
        else:
            params[name] = trial.suggest_categorical(name, dist["choices"])
    return params


def trial_config(
    study: Study,
    method: str,
    params: dict[str, Any],
    *,
    depth: int | None = None,
    seed: int | None = None,
) -> dict:
    """The run config of a trial (or of a final run): the study's, the [tune] data and train
    settings, then the trial's parameters.

    Every trial trains at the [tune] depth with the [tune] seed, so the search also fits that
    seed's initialisation and validation draw, and settings found at one depth are reused
    at the others by the final runs.
    """
    tune = study.tune
    overrides: dict[str, dict] = {"data": dict(tune["data"]), "train": dict(tune["train"])}
    settings = {}
    for name, value in params.items():
        group, _, key = name.partition(".")
        if group == "method":
            settings[key] = value
        else:
            overrides.setdefault(group, {})[key] = value
    return study.run_config(
        method,
        tune["depth"] if depth is None else depth,
        tune["seed"] if seed is None else seed,
        overrides=overrides,
        **settings,
    )


def check_space(study: Study, methods: list[str]) -> None:
    """Build the regularizer of every extreme of each method's space, so a bad choice (an
    unknown pool, say) stops the command before any trial is recorded."""
    from engine.train import regularizer_spec

    for method in methods:
        for name, dist in space_for(study, method).items():
            values = dist.get("choices") or [dist["low"], dist["high"]]
            for value in values:
                config = trial_config(study, method, {name: value})
                try:
                    regularizer_spec(config)
                except StudyError as exc:
                    raise StudyError(
                        f"{study.path}: [tune.space] {name} = {value!r}: {exc}"
                    ) from None


def signature(study: Study, method: str) -> dict:
    """What a method's trials depend on; a resumed study must have been started with it."""
    config = trial_config(study, method, {})
    # Where a machine keeps its data and what it trains on are its own business.
    config.pop("study")
    config["data"].pop("data_dir")
    config["train"].pop("device")
    return {
        "config": config,
        "space": space_for(study, method),
        "objectives": study.tune["objectives"],
    }


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _changes(old: dict, new: dict) -> list[str]:
    a, b = _flatten(json.loads(json.dumps(old))), _flatten(json.loads(json.dumps(new)))
    return [
        f"{key} {a.get(key, '-')!r} -> {b.get(key, '-')!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]


def study_to_raw(study: Study) -> dict:
    """A study as the TOML dictionary it validates from, for the storage's user attributes."""
    raw = {k: v for k, v in study.config.items()}
    raw["study"] = {**study.config["study"], "name": study.name}
    raw.update(methods=study.methods, reference=study.reference, tune=study.tune)
    return json.loads(json.dumps(raw))


# ---------------------------------------------------------------------------------------------
# Opening a tuning


def make_sampler(study: Study, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The [tune] sampler; a seeded one is offset per worker so workers draw differently.

    NSGA-II keeps Optuna's population of 50, so with fewer trials per method it is a random
    search.
    """
    tune = study.tune
    seed = tune["sampler_seed"] + worker if tune["sampler_seed"] else None
    if tune["sampler"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if tune["sampler"] == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(study: Study) -> optuna.pruners.BasePruner:
    """The [tune] pruner; steps are epochs, and no trial is pruned before ``pruner_warmup``."""
    tune = study.tune
    startup, warmup = tune["pruner_startup"], tune["pruner_warmup"]
    if tune["pruner"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if tune["pruner"] == "percentile":
        return optuna.pruners.PercentilePruner(
            tune["pruner_percentile"], n_startup_trials=startup, n_warmup_steps=warmup
        )
    if tune["pruner"] == "hyperband":
        epochs = trial_config(study, tune["methods"][0], {})["train"]["epochs"]
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup), max_resource=epochs)
    return optuna.pruners.NopPruner()


def open_studies(
    study: Study,
    storage: optuna.storages.BaseStorage,
    url: str,
    methods: list[str],
    *,
    create: bool,
    worker: int = 0,
) -> dict[str, optuna.Study]:
    """The Optuna study of each method, created where allowed.

    Raises:
        TuneError: a study is missing and ``create`` is False (the existing names are listed),
            or it was started from different settings (the changed keys are listed).
    """
    tuning = study.tune["name"]
    directions = [TUNE_OBJECTIVES[o] for o in study.tune["objectives"]]
    existing = {s.study_name: s for s in storage.get_all_studies()}
    studies = {}
    for method in methods:
        name = optuna_name(tuning, method)
        wanted = signature(study, method)
        if name in existing:
            stored = existing[name].user_attrs.get("lba_signature")
            # Another worker may have created the study a moment ago and be writing its attrs.
            for _ in range(50 if stored is None else 0):
                time.sleep(0.2)
                stored = storage.get_study_user_attrs(storage.get_study_id_from_name(name)).get(
                    "lba_signature"
                )
                if stored is not None:
                    break
            changes = _changes(stored, wanted) if stored is not None else ["(not an lba study)"]
            if changes:
                shown_changes = "; ".join(changes[:3]) + ("; ..." if len(changes) > 3 else "")
                raise TuneError(
                    f"tuning study {name!r} was started with other settings ({shown_changes}); "
                    'restore them, or start a new tuning with [tune] name = "..."'
                )
        elif not create:
            raise unknown_tuning(tuning, url)
        studies[method] = optuna.create_study(
            storage=storage,
            study_name=name,
            directions=directions,
            sampler=make_sampler(study, worker),
            pruner=make_pruner(study),
            load_if_exists=True,
        )
        if name not in existing:
            for key, value in (
                ("lba_tuning", tuning),
                ("lba_method", method),
                ("lba_objectives", study.tune["objectives"]),
                ("lba_study", study_to_raw(study)),
                ("lba_signature", wanted),  # last: other workers wait for it
            ):
                studies[method].set_user_attr(key, value)
    return studies


def load_tuned_study(url: str, name: str) -> tuple[Study, list[str]]:
    """A tuning's study, rebuilt from the storage, and the methods tuned there.

    Raises:
        TuneError: the storage holds no tuning of that name (the existing ones are listed).
    """
    storage = open_storage(url)
    studies = [
        s
        for s in storage.get_all_studies()
        if s.user_attrs.get("lba_tuning") == name and "lba_study" in s.user_attrs
    ]
    if not studies:
        raise unknown_tuning(name, url)
    raw = studies[0].user_attrs["lba_study"]
    study = validate(raw, raw["study"].get("path") or name)
    tuned = {s.user_attrs["lba_method"] for s in studies}
    return study, [m for m in study.tune["methods"] if m in tuned]


# ---------------------------------------------------------------------------------------------
# One trial


def epoch_objective(name: str, metrics: dict) -> float | None:
    """A per-epoch objective from an epoch's metrics (None where it was not measured)."""
    if name == "val_gap":
        if metrics.get("val_acc") is None:
            return None
        return metrics["train_acc"] - metrics["val_acc"]
    value = metrics.get(name)
    return None if value is None or not math.isfinite(value) else float(value)


def run_summary(store: Store, run_id: int) -> dict[str, Any]:
    """A run's final accuracies, attack accuracies (fractions) and log10 LB, for user attrs."""
    run = store.run(run_id) or {}
    summary = {
        key: run[key]
        for key in ("epoch", "train_acc", "val_acc", "test_acc", "gap", "log10_lb", "seconds")
        if run.get(key) is not None
    }
    for row in store.attacks(run_id):
        if row["attack"] != "clean":
            summary[metric_key(row["protocol"], row["attack"], row["eps"])] = row["accuracy"]
    return summary


def _validation_pgd(store: Store, run_id: int, config: dict, data: Any, device: Any) -> float:
    """PGD accuracy on the validation images, with the study's first PGD budget: the test
    images are kept for the final report."""
    import io

    import torch

    from engine.train import build_for, run_attacks

    blob = store.weights(run_id)
    if blob is None:
        raise TuneError(f"run {run_id} kept no weights; the objective val_pgd_acc needs them")
    model = build_for(config, data)
    model.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))
    model.to(device).eval()
    validation = dataclasses.replace(data, x_test=data.x_val, y_test=data.y_val).to(device)
    for rows in run_attacks(model, validation, config).values():
        for row in rows:
            if row["attack"] == "pgd":
                return float(row["accuracy"])
    raise TuneError("the objective val_pgd_acc needs a PGD attack in the study's [attacks]")


class TrialRunner:
    """Trains trials of one tuning in this process, each as a run in ``store``."""

    def __init__(self, study: Study, store: Store, device: str | None = None) -> None:
        self.study = study
        self.store = store
        self.device = device

    def objective(self, trial: optuna.Trial, method: str) -> float | list[float]:
        """Train one trial; return its objective value(s).

        Raises:
            optuna.TrialPruned: the pruner stopped it (its run is marked pruned).
            engine.train.Diverged: its loss became NaN or infinite (the run is marked failed).
        """
        from engine.train import Diverged, resolve_device, train_run

        tune = self.study.tune
        # Optuna's heartbeat thread writes its first beat a moment after the trial starts, and
        # a trial with no beat is never found stale: a worker killed in between would leave
        # it running for good. One beat now closes that gap.
        storage = trial.study._storage
        if optuna.storages._heartbeat.is_heartbeat_enabled(storage):
            storage.record_heartbeat(trial._trial_id)
        params = suggest(trial, space_for(self.study, method))
        config = trial_config(self.study, method, params)
        if self.device:
            config["train"]["device"] = self.device
        device = resolve_device(config["train"]["device"])
        data = load_data_for(config)
        run_id = self.store.create_run(
            study=self.study.name,
            method=method,
            depth=config["model"]["depth"],
            seed=config["train"]["seed"],
            dataset=config["data"]["dataset"],
            arch=config["model"]["arch"],
            epochs=config["train"]["epochs"],
            config=config,
            label=f"{method} n={config['model']['depth']} trial {trial.number}",
            trial_number=trial.number,
            tune_study=trial.study.study_name,
        )
        for key, value in (
            ("run_id", run_id),
            ("host", socket.gethostname()),
            ("pid", os.getpid()),
            ("db", str(self.store.path.resolve())),
        ):
            trial.set_user_attr(key, value)

        objectives = tune["objectives"]
        curve = (
            objectives[0]
            if len(objectives) == 1 and objectives[0] in PER_EPOCH_OBJECTIVES
            else None
        )

        def on_epoch(report: Any) -> None:
            # Each epoch's objective is the trial's curve in Optuna and what the pruner judges.
            value = epoch_objective(curve, report.metrics) if curve else None
            if value is None:
                return
            trial.report(value, report.epoch)
            if trial.should_prune():
                raise RunPruned(f"pruned at epoch {report.epoch}: {curve} {value:.4f}")

        try:
            metrics = train_run(self.store, run_id, config, data, device, on_epoch=on_epoch)
        except RunPruned as exc:
            self._keep_summary(trial, run_id)
            raise optuna.TrialPruned(str(exc)) from None
        except Diverged as exc:
            self._keep_summary(trial, run_id)
            trial.set_user_attr("fail_reason", str(exc))
            log.warning("%s trial %d failed: %s", trial.study.study_name, trial.number, exc)
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "stopped by the user")
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            raise
        summary = self._keep_summary(trial, run_id)

        values = []
        for name in objectives:
            if name == "val_pgd_acc":
                value = _validation_pgd(self.store, run_id, config, data, device)
                trial.set_user_attr("val_pgd_acc", value)
            else:
                value = epoch_objective(name, {**summary, **metrics})
            values.append(float("nan") if value is None else value)
        return values[0] if len(values) == 1 else values

    def _keep_summary(self, trial: optuna.Trial, run_id: int) -> dict[str, Any]:
        summary = run_summary(self.store, run_id)
        for key, value in summary.items():
            trial.set_user_attr(key, value)
        return summary


# ---------------------------------------------------------------------------------------------
# The budget and the workers


class Budget:
    """Trials still wanted per method, shared by the workers of one ``lba tune``.

    A worker claims a trial of the method furthest from its target before starting it, and
    releases the claim when the trial ends, so exactly ``targets[m]`` trials finish (complete
    or pruned) however many fail; a failed trial's slot goes back to the pool.
    """

    def __init__(self, methods: list[str], targets: list[int], jobs: int, max_failures: int):
        context = multiprocessing.get_context("spawn")
        self.methods = list(methods)
        self.targets = list(targets)
        self.max_failures = max_failures
        self._lock = context.Lock()
        self._done = context.Array("i", len(methods), lock=False)
        self._running = context.Array("i", len(methods), lock=False)
        self._failed = context.Array("i", len(methods), lock=False)
        self._best = context.Array("d", [math.nan] * len(methods), lock=False)
        self._held = context.Array("i", [-1] * jobs, lock=False)
        self._stopped = context.Value("i", 0, lock=False)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # A timeout, in case a worker was killed while it held the lock.
        if not self._lock.acquire(timeout=60):
            raise TuneError("the workers' shared trial count stayed locked for 60 s; run again")
        try:
            yield
        finally:
            self._lock.release()

    def claim(self, worker: int) -> int | None:
        """The index of the method whose next trial this worker runs, or None when done."""
        with self._locked():
            if self._stopped.value or sum(self._failed) >= self.max_failures:
                return None
            open_ = [
                (self._done[m] + self._running[m], m)
                for m in range(len(self.methods))
                if self._done[m] + self._running[m] < self.targets[m]
            ]
            if not open_:
                return None
            method = min(open_)[1]
            self._running[method] += 1
            self._held[worker] = method
            return method

    def release(self, worker: int, state: TrialState | None, best: float | None = None) -> None:
        """A worker's trial ended in ``state`` (None: it never got one)."""
        with self._locked():
            method = self._held[worker]
            if method < 0:
                return
            self._held[worker] = -1
            self._running[method] -= 1
            if state in FINISHED:
                self._done[method] += 1
            elif state is not None:
                self._failed[method] += 1
            if best is not None and math.isfinite(best):
                self._best[method] = best

    def abandon(self, worker: int) -> None:
        """A worker died: its trial, if any, counts as failed."""
        self.release(worker, TrialState.FAIL)

    def stop(self) -> None:
        """No worker claims another trial."""
        self._stopped.value = 1

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return bool(self._stopped.value)

    @property
    def failed(self) -> int:
        """Failed trials so far."""
        return sum(self._failed)

    @property
    def finished(self) -> bool:
        """Whether every method reached its target."""
        return all(self._done[m] >= self.targets[m] for m in range(len(self.methods)))

    def snapshot(self) -> list[dict[str, Any]]:
        """Per method: target, finished, running and failed trials, best value so far."""
        return [
            {
                "method": method,
                "target": self.targets[m],
                "done": self._done[m],
                "running": self._running[m],
                "failed": self._failed[m],
                "best": None if math.isnan(self._best[m]) else self._best[m],
            }
            for m, method in enumerate(self.methods)
        ]


@dataclass
class Plan:
    """Everything a worker process needs to run trials (picklable)."""

    study: Study
    url: str
    db_path: str
    methods: list[str]
    device: str | None
    threads: int


def _best_value(study: optuna.Study) -> float | None:
    if len(study.directions) > 1:
        return None
    try:
        return study.best_value
    except ValueError:
        return None


def _on_stale(db_path: str) -> Callable[[optuna.Study, FrozenTrial], None]:
    def fail_run(study: optuna.Study, trial: FrozenTrial) -> None:
        reason = f"no heartbeat for {study.user_attrs.get('lba_grace', '?')} s: its worker stopped"
        study.set_user_attr(f"fail_reason:{trial.number}", reason)
        if trial.user_attrs.get("host") == socket.gethostname() and trial.user_attrs.get(
            "db"
        ) == str(Path(db_path).resolve()):
            with Store(db_path) as store:
                _fail_run(store, trial.user_attrs.get("run_id"), reason)

    return fail_run


def _fail_run(store: Store, run_id: int | None, reason: str) -> None:
    run = store.run(run_id) if run_id is not None else None
    if run and run["status"] in ("running", "interrupted", "queued"):
        store.finish_run(run_id, "failed", error=reason)


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return True  # unknown: leave it to the heartbeat
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_trials(studies: dict[str, optuna.Study], store: Store | None) -> list[str]:
    """Fail this host's running trials whose worker process is gone, and their runs.

    Trials of other hosts are failed by their heartbeat going stale instead.

    Returns:
        ``<optuna study> trial <n>`` for each trial failed.
    """
    host = socket.gethostname()
    failed = []
    for study in studies.values():
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            attrs = trial.user_attrs
            if attrs.get("host") != host or _pid_alive(attrs.get("pid")):
                continue
            reason = f"its worker (pid {attrs['pid']} on {host}) stopped mid-trial"
            study.set_user_attr(f"fail_reason:{trial.number}", reason)
            try:
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                continue
            if store is not None and attrs.get("db") == str(store.path.resolve()):
                _fail_run(store, attrs.get("run_id"), reason)
            failed.append(f"{study.study_name} trial {trial.number}")
    return failed


def _run_trials(plan: Plan, budget: Budget, worker: int, storage: Any = None) -> None:
    """Claim and run trials until the budget is spent (one worker's loop)."""
    tune = plan.study.tune
    if storage is None:
        storage = open_storage(
            plan.url,
            heartbeat=tune["heartbeat"],
            grace=tune["grace"],
            on_stale=_on_stale(plan.db_path),
        )
    studies = open_studies(
        plan.study, storage, plan.url, plan.methods, create=False, worker=worker
    )
    with Store(plan.db_path) as store:
        runner = TrialRunner(plan.study, store, plan.device)
        while (index := budget.claim(worker)) is not None:
            method = plan.methods[index]
            try:
                state = _one_trial(studies[method], runner, method)
            except BaseException:
                budget.release(worker, TrialState.FAIL)
                raise
            budget.release(worker, state, _best_value(studies[method]))


def _one_trial(study: optuna.Study, runner: TrialRunner, method: str) -> TrialState | None:
    from engine.train import Diverged

    ended: list[FrozenTrial] = []
    # A diverged trial is failed with its reason and the search goes on; any other error
    # stops the worker.
    study.optimize(
        lambda trial: runner.objective(trial, method),
        n_trials=1,
        catch=(Diverged,),
        callbacks=[lambda _, trial: ended.append(trial)],
    )
    return ended[0].state if ended else None


def _worker_main(plan: Plan, budget: Budget, worker: int, errors: Any) -> None:
    # SIGINT (Ctrl-C in the terminal) goes to the parent, which asks each worker to stop with
    # SIGTERM; a worker then closes its run as interrupted, like a Ctrl-C in `lba run`.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    import torch

    torch.set_num_threads(plan.threads)
    device = plan.device or trial_config(plan.study, plan.methods[0], {})["train"]["device"]
    if device in ("auto", "cuda") and torch.cuda.device_count() > 1:
        plan.device = f"cuda:{worker % torch.cuda.device_count()}"
    try:
        _run_trials(plan, budget, worker)
    except KeyboardInterrupt:
        pass
    except LbaError as exc:
        errors.put((worker, True, str(exc)))
        raise SystemExit(1) from None
    except Exception as exc:  # noqa: BLE001 - the parent raises it, with this traceback
        import traceback

        errors.put((worker, False, "".join(traceback.format_exception(exc))))
        raise SystemExit(1) from None


# ---------------------------------------------------------------------------------------------
# A tuning command


class Tuner:
    """One ``lba tune`` run: open (or create) the studies, reap dead trials, plan, run.

    Args:
        study: The study with its [tune] section.
        url: A checked storage URL.
        db_path: The store, where this machine's trial runs go.
        methods: The methods to tune (default: all of [tune] methods).
        create: Whether missing Optuna studies may be created.
        device: Overrides the study's device.
    """

    def __init__(
        self,
        study: Study,
        url: str,
        db_path: str | os.PathLike,
        *,
        methods: list[str] | None = None,
        create: bool = True,
        device: str | None = None,
    ) -> None:
        if not study.tune:
            raise StudyError(
                f"{study.path} has no [tune] section; add one (docs/tune.md lists its keys)"
            )
        self.study = study
        self.url = url
        self.db_path = str(Path(db_path).resolve())
        self.methods = methods or list(study.tune["methods"])
        self.device = device
        check_space(study, self.methods)
        tune = study.tune
        self.storage = open_storage(
            url, heartbeat=tune["heartbeat"], grace=tune["grace"], on_stale=_on_stale(self.db_path)
        )
        self.studies = open_studies(study, self.storage, url, self.methods, create=create)
        for optuna_study in self.studies.values():
            optuna_study.set_user_attr("lba_grace", tune["grace"])

    def plan(self, trials: int, jobs: int = 1) -> Budget:
        """A budget of ``trials`` more finished trials per method (one in all for a method
        whose space is empty: its trials would all be the same run)."""
        targets = []
        for method in self.methods:
            if space_for(self.study, method):
                targets.append(trials)
            else:
                done = len(self.studies[method].get_trials(deepcopy=False, states=FINISHED))
                targets.append(max(0, 1 - done))
                log.info("%s has nothing to search: one trial in all", method)
        return Budget(self.methods, targets, jobs, max_failures=max(10, sum(targets)))

    def run(self, budget: Budget, jobs: int = 1) -> None:
        """Run trials until the budget is spent.

        Raises:
            TuneError: too many trials failed, or a worker stopped on an error.
            KeyboardInterrupt: the user stopped it; running trials are failed, their runs
                marked interrupted.
        """
        plan = Plan(
            self.study,
            self.url,
            self.db_path,
            self.methods,
            self.device,
            max(1, (os.cpu_count() or 1) // jobs),
        )
        if jobs == 1:
            _run_trials(plan, budget, 0, storage=self.storage)
        else:
            self._run_workers(plan, budget, jobs)
        if not budget.finished and budget.failed >= budget.max_failures:
            raise TuneError(
                f"stopped after {budget.failed} failed trials (last: {self.last_failure()}); "
                "fix the cause and run the same command again to resume"
            )

    def _run_workers(self, plan: Plan, budget: Budget, jobs: int) -> None:
        context = multiprocessing.get_context("spawn")
        errors = context.SimpleQueue()

        def start(i: int) -> multiprocessing.process.BaseProcess:
            worker = context.Process(
                target=_worker_main, args=(plan, budget, i, errors), name=f"lba-tune-{i}"
            )
            worker.start()
            return worker

        workers = [start(i) for i in range(jobs)]
        handled: set[int] = set()  # id() of the exited workers dealt with
        respawns = 0
        try:
            while True:
                for i, worker in enumerate(workers):
                    code = worker.exitcode
                    if code in (None, 0) or id(worker) in handled:
                        continue
                    handled.add(id(worker))
                    budget.abandon(i)
                    if code > 0:
                        budget.stop()  # it reported an error: the others finish their trial
                        continue
                    log.warning(
                        "tuning worker %d was killed (signal %d); its trial is marked failed",
                        i,
                        -code,
                    )
                    with Store(self.db_path) as store:
                        reap_dead_trials(self.studies, store)
                    # Another worker takes its place, so the budget is still met (a few times
                    # at most, in case something keeps killing them).
                    if respawns < jobs and not budget.finished and not budget.stopped:
                        respawns += 1
                        workers[i] = start(i)
                if all(w.exitcode is not None for w in workers) and all(
                    w.exitcode == 0 or id(w) in handled for w in workers
                ):
                    break
                time.sleep(0.2)
        except KeyboardInterrupt:
            budget.stop()
            for worker in workers:
                if worker.exitcode is None:
                    os.kill(worker.pid, signal.SIGTERM)
            for worker in workers:
                worker.join(timeout=60)
                if worker.exitcode is None:
                    worker.kill()
            raise
        while not errors.empty():
            index, user_error, message = errors.get()
            if user_error:
                raise TuneError(message)
            raise RuntimeError(f"tuning worker {index} failed:\n{message}")
        if not budget.finished and budget.failed < budget.max_failures:
            codes = ", ".join(str(w.exitcode) for w in workers)
            raise TuneError(
                f"the tuning workers stopped (exit codes {codes}) before every trial ran; run "
                "the same command again to resume"
            )

    def last_failure(self) -> str:
        """The recorded reason of the latest failed trial."""
        failed = [
            (trial.datetime_complete or datetime.min, fail_reason(study.user_attrs, trial))
            for study in self.studies.values()
            for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        ]
        return max(failed)[1] if failed else "no reason recorded"


# ---------------------------------------------------------------------------------------------
# The final runs


def final_study_name(tuning: str) -> str:
    """The study of the final runs of a tuning (its paper-style table)."""
    return f"{tuning}-tuned"


def final_cells(study: Study, url: str, methods: list[str]) -> list[Cell]:
    """Each method's best setting at the final depths and seeds, as runs to train.

    Raises:
        TuneError: a method has no complete trial yet.
    """
    tune = study.tune
    cells = []
    best = {}
    for method, optuna_study in load_studies(url, tune["name"], methods).items():
        trial = pick_best(optuna_study, tune["objectives"])
        if trial is None:
            raise TuneError(
                f"{optuna_study.study_name} has no complete trial yet; tune it first "
                f"(lba tune {study.path} --trials N)"
            )
        best[method] = (optuna_study.study_name, trial)
    for depth in tune["final"]["depths"]:
        for method in methods:
            name, trial = best[method]
            for seed in tune["final"]["seeds"]:
                config = trial_config(study, method, trial.params, depth=depth, seed=seed)
                config["study"]["name"] = final_study_name(tune["name"])
                config["tuned"] = {"study": name, "trial": trial.number, "params": trial.params}
                cells.append(Cell(method, depth, seed, config))
    return cells
