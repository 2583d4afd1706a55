"""Running the cells of a study: one after another, or in parallel worker processes.

Each worker opens its own connection to the store and loads the data once; progress travels
only through the store, so any reader (the command line's progress display, the terminal app)
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


def _worker(db_path: str, run_id: int, config: dict, threads: int, gpu: int | None) -> None:
    import torch

    torch.set_num_threads(threads)
    if gpu is not None and config["train"]["device"] in ("auto", "cuda"):
        config["train"]["device"] = f"cuda:{gpu}"
    with Store(db_path) as store:
        train_one(store, run_id, config)


def run_cells(store: Store, todo: list[tuple[int, Any]], *, jobs: int = 1) -> None:
    """Train queued runs ``(run_id, cell)``; with ``jobs > 1`` in that many processes.

    The CPU threads are split between the workers; on a machine with several GPUs, worker i
    trains on GPU i (modulo the count).
    """
    if jobs == 1 or len(todo) == 1:
        for run_id, cell in todo:
            train_one(store, run_id, cell.config)
        return
    import torch

    gpus = torch.cuda.device_count()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [
            pool.submit(
                _worker, str(store.path), run_id, cell.config, threads, i % gpus if gpus else None
            )
            for i, (run_id, cell) in enumerate(todo)
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
