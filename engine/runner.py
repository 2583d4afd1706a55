"""Running the cells of a study: batched groups and single runs, here or in worker processes.

MLP runs that share their data order train together as one batched group (``engine.batched``);
CNNs and the methods the batched step lacks train one at a time (``engine.train``). Each
worker opens its own connection to the store and loads the data once; progress travels only
through the store, so any reader (the command line's progress display, the terminal app)
sees the same thing whether the runs train here or in another process.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any

from engine.store import Store

log = logging.getLogger("lba")

# OpenMP threads spin while they wait for work; on a machine whose cores are shared with other
# jobs a spinning thread holds a core its partner needs, and a 2-thread epoch of the paper MLP
# was measured at 50 s against 2 s with passive waiting (docs/performance.md). torch loads
# after this module in `lba run`, so the default applies there and in every worker process;
# a user's own OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_DATA_CACHE: dict[str, Any] = {}


def load_data_for(config: dict) -> Any:
    """The dataset of a run config, loaded once per process and data config."""
    from engine.data import load_dataset

    data_cfg = config["data"]
    key = repr(sorted(data_cfg.items())) + str(config["train"]["seed"] if _seeded(config) else "")
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_dataset(
            data_cfg["dataset"],
            data_dir=data_cfg["data_dir"] or None,
            train_subset=data_cfg["train_subset"] or None,
            val_size=data_cfg["val_size"],
            seed=config["train"]["seed"],
            normalize=data_cfg["normalize"],
        )
    return _DATA_CACHE[key]


def _seeded(config: dict) -> bool:
    # The tabular sets are split with the run's seed, and a validation split is drawn with it.
    return config["data"]["dataset"] in ("wine", "circles") or bool(config["data"]["val_size"])


def train_one(store: Store, run_id: int, config: dict) -> dict | None:
    """Load the data and train one stored run in this process.

    A run whose loss diverges is already marked failed with the reason; the study goes on.
    """
    from engine.train import Diverged, resolve_device, train_run

    device = resolve_device(config["train"]["device"])
    try:
        return train_run(store, run_id, config, load_data_for(config), device)
    except Diverged as exc:
        log.warning("run %d failed: %s", run_id, exc)
        return None


def train_task(store: Store, task: list[tuple[int, dict]]) -> None:
    """Train one task of :func:`plan_tasks`: a batched group, or a single run."""
    if len(task) == 1 and _batch_key(task[0][1]) is None:
        run_id, config = task[0]
        train_one(store, run_id, config)
        return
    import torch

    from engine.batched import train_group
    from engine.train import resolve_device

    config = task[0][1]
    device = resolve_device(config["train"]["device"])
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # A width-20 group's operations are too small to share between threads: measured on
        # 2 cores, one thread ran an epoch of the paper study in 0.5 s, two in 0.9 s.
        torch.set_num_threads(1)
    try:
        train_group(store, task, load_data_for(config), device)
    finally:
        torch.set_num_threads(threads)


def _batch_key(config: dict) -> str | None:
    from engine.batched import batch_key

    return batch_key(config)


def plan_tasks(todo: list[tuple[int, dict]], jobs: int = 1) -> list[list[tuple[int, dict]]]:
    """Split queued runs ``(run_id, config)`` into tasks: batched groups and single runs.

    Runs that share a ``batched.batch_key`` (same data order, width, optimizer, ...) form one
    group trained in one stacked step, whatever their depth and method; the rest (CNNs,
    lba_2025, lba_global) are tasks of one. With ``jobs > 1`` the largest groups are halved
    until every worker has a task (a group trains on one thread, so a second core needs a
    second process), deep and shallow runs dealt alternately so the halves cost about the
    same. Largest tasks come first, so a pool of workers finishes them together.
    """
    groups: dict[str, list[tuple[int, dict]]] = {}
    tasks: list[list[tuple[int, dict]]] = []
    for run_id, config in todo:
        key = _batch_key(config)
        if key is None:
            tasks.append([(run_id, config)])
        else:
            groups.setdefault(key, []).append((run_id, config))
    tasks += groups.values()
    tasks.sort(key=_cost, reverse=True)
    while len(tasks) < jobs and len(tasks[0]) > 1 and _batch_key(tasks[0][0][1]) is not None:
        largest = sorted(tasks.pop(0), key=lambda run: -run[1]["model"]["depth"])
        tasks += [largest[0::2], largest[1::2]]
        tasks.sort(key=_cost, reverse=True)
    return tasks


def _cost(task: list[tuple[int, dict]]) -> float:
    # Epochs times layers is a fair guess for the MLPs; nothing here needs to be exact.
    return sum(c["train"]["epochs"] * (c["model"]["depth"] + 2) for _, c in task)


def _worker(db_path: str, task: list[tuple[int, dict]], threads: int, gpu: int | None) -> None:
    import torch

    torch.set_num_threads(threads)
    for _, config in task:
        if gpu is not None and config["train"]["device"] in ("auto", "cuda"):
            config["train"]["device"] = f"cuda:{gpu}"
    with Store(db_path) as store:
        train_task(store, task)


def run_cells(store: Store, todo: list[tuple[int, Any]], *, jobs: int = 1) -> None:
    """Train queued runs ``(run_id, cell)``; with ``jobs > 1`` in that many processes.

    Compatible MLP runs are trained together as batched groups (see :func:`plan_tasks` and
    ``engine.batched``); the rest one at a time.
    """
    tasks = plan_tasks([(run_id, cell.config) for run_id, cell in todo], jobs)
    run_tasks(store, tasks, jobs=jobs)


def run_tasks(store: Store, tasks: list[list[tuple[int, dict]]], *, jobs: int = 1) -> None:
    """Train tasks (groups or single runs) here, or with ``jobs > 1`` in worker processes.

    The CPU threads are split between the workers; on a machine with several GPUs, worker i
    trains on GPU i (modulo the count). One task trains here whatever ``jobs`` says: a worker
    would only add its start-up.
    """
    if jobs == 1 or len(tasks) == 1:
        for task in tasks:
            train_task(store, task)
        return
    import torch

    gpus = torch.cuda.device_count()
    workers = min(jobs, len(tasks))
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [
            pool.submit(_worker, str(store.path), task, threads, i % gpus if gpus else None)
            for i, task in enumerate(tasks)
        ]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        except KeyboardInterrupt:
            for future in futures:
                future.cancel()
            raise
        for future in done:
            future.result()


def close_queued(store: Store, run_ids: list[int], status: str = "interrupted") -> int:
    """Close the runs of a stopped study that never started (interrupted, or failed)."""
    with store.write() as db:
        cursor = db.execute(
            f"UPDATE runs SET status = ?, error = 'not started: the study was stopped' "
            f"WHERE status = 'queued' AND id IN ({', '.join('?' * len(run_ids))})",
            [status, *run_ids],
        )
        return cursor.rowcount
