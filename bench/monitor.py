"""Monitoring: the per-layer Lipschitz bounds every epoch against the epoch (issue 5, target 5).

What: the engine computes every kernel layer's exact sigma (float64 Gram eigenvalue) and the
residual bound after each epoch. Timed here: that computation alone, next to the epoch it
belongs to, for the paper's MLP (n = 3, width 20, 10,000 images) on the single-run loop, for
the 15 runs of studies/paper-fmnist.toml trained as one batched group (the batched monitor
solves all 15 runs' layers in three batched eigenproblems), and for a width-512 MLP.
Target: under 5% of the epoch.

Timed: inside the engine's epoch callback, the monitor of a same-shaped model (the median of
``--calls`` calls) right after the epoch just measured, so each ratio pairs two timings taken
back to back; epoch 1 is the uncounted warm-up; medians of the ratios are reported.

Where and when: docs/performance.md has the last figures (machine, versions, date).
Run: .venv/bin/python bench/monitor.py [--quick] [--calls N]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# _common first: it sets OpenMP's wait policy, which must precede loading torch
from _common import arguments, describe, machine, median, paper_config, save, spread, table

# isort: split
import torch

from engine.batched import _Group, _prepare, train_group
from engine.lipschitz import layer_sigmas, log10_bounds
from engine.runner import load_data_for
from engine.store import Store
from engine.train import EpochReport, build_for, train_run

CPU = torch.device("cpu")


def timed_median(fn: Callable[[], object], calls: int) -> float:
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    args = arguments(__doc__, **{"--calls": {"type": int, "default": 20}})
    info = machine()
    epochs = 3 if args.quick else 5
    small = {"train.epochs": epochs, "data.train_subset": 2000 if args.quick else 10000}
    wide = {
        "train.epochs": 2 if args.quick else 3,
        "model.width": 512,
        "data.train_subset": 1000 if args.quick else 10000,
    }
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "bench.db")

        def single(label: str, config: dict) -> None:
            data = load_data_for(config)
            model = build_for(config, data)
            hidden = model.hidden_layer_indices()

            def monitor() -> None:
                log10_bounds(layer_sigmas(model), hidden)

            pairs = _pairs(
                lambda mark: train_run(
                    store, _queue(store, config), config, data, CPU, on_epoch=mark
                ),
                lambda: timed_median(monitor, args.calls),
                per_epoch=1,
            )
            _row(rows, results, label, pairs)

        single("width 20, single-run loop", paper_config(3, "none", **small))

        # the paper study's 15 runs as one group; its monitor is the group's batched one
        configs = [
            paper_config(depth, method, **small)
            for depth in (3, 5, 7)
            for method in ("none", "lba", "l2", "l1", "dropout")
        ]
        data = load_data_for(configs[0])
        runs = [(_queue(store, config), config) for config in configs]
        prepared, models = _prepare(runs, data)
        stack = _Group(prepared, models, CPU).stack
        pairs = _pairs(
            lambda mark: train_group(store, runs, data, CPU, on_epoch=mark),
            lambda: timed_median(stack.layer_sigmas, args.calls),
            per_epoch=len(runs),
        )
        _row(rows, results, "width 20, 15 runs batched", pairs)

        single("width 512, single-run loop", paper_config(3, "none", **wide))
        store.close()
    print(describe(info))
    print(
        table(
            f"monitor (every layer's exact sigma + the bound) against its epoch; median of "
            f"{args.calls} monitor calls per epoch (target: < 5%)",
            [
                ("model, path", 26),
                ("epoch s", 8),
                ("monitor s", 9),
                ("share", 6),
                ("share spread", 12),
                ("n", 3),
            ],
            rows,
        )
    )
    print(f"saved {save('monitor', args, info, results)}")


def _queue(store: Store, config: dict) -> int:
    return store.create_run(
        study="bench",
        method=config["method"]["name"],
        depth=config["model"]["depth"],
        seed=0,
        dataset="fashion-mnist",
        arch="mlp",
        epochs=config["train"]["epochs"],
        config=config,
    )


def _pairs(
    train: Callable[[Callable], object], monitor: Callable[[], float], per_epoch: int
) -> list[tuple[float, float]]:
    """(epoch seconds, monitor seconds) for every epoch after the first."""
    pairs: list[tuple[float, float]] = []
    state = {"last": time.perf_counter(), "calls": 0}

    def mark(report: EpochReport) -> None:
        state["calls"] += 1
        if state["calls"] % per_epoch:  # a group reports once per run: time the last one
            return
        epoch_s = time.perf_counter() - state["last"]
        monitor_s = monitor()
        if report.epoch > 1:
            pairs.append((epoch_s, monitor_s))
        state["last"] = time.perf_counter()

    train(mark)
    return pairs


def _row(rows: list, results: dict, label: str, pairs: list[tuple[float, float]]) -> None:
    shares = [m / e for e, m in pairs]
    rows.append(
        [
            label,
            median([e for e, _ in pairs]),
            median([m for _, m in pairs]),
            f"{100 * median(shares):.2f}%",
            spread(shares),
            len(pairs),
        ]
    )
    results[label] = {"pairs": pairs, "share": median(shares)}


if __name__ == "__main__":
    main()
