"""Engine versus the limit: an engine epoch against hand-written loops (issue 5, target 2).

What: one epoch of the paper's residual MLP (n = 3, width 20, method none, SGD lr 0.01, batch
100) on the first 10,000 Fashion-MNIST training images with test accuracy on all 10,000 test
images, four ways:

  minimal loop       tensors already on the device, a permutation and slices, forward,
                     cross-entropy, backward, torch.optim.SGD, test accuracy (bench/_baselines)
  engine, batched    `lba run`'s path for an MLP cell (engine/batched.py, the run alone), which
                     also computes every layer's exact sigma, the Lipschitz bound, train
                     metrics and writes the epoch to the SQLite store
  engine, one run    the single-run reference loop (engine/train.py), same extras
  DataLoader port    the same model fed by torchvision's FashionMNIST + ToTensor + DataLoader

Targets: engine at most 1.1x the minimal loop; the DataLoader port at least 2x the engine.
Timed: whole epochs after the first (uncounted warm-up). Each engine epoch is followed by a
minimal-loop epoch (and, in the first round, a DataLoader epoch) run from the engine's epoch
callback, so every ratio compares two epochs timed back to back; the medians of those paired
ratios over ``--repeat`` rounds of ``--epochs`` epochs are reported.

Where and when: docs/performance.md has the last figures (machine, versions, date).
Run: .venv/bin/python bench/engine_vs_loop.py [--quick] [--repeat N] [--epochs N]
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# _common first: it sets OpenMP's wait policy, which must precede loading torch
from _common import arguments, describe, machine, median, paper_config, save, spread, table

# isort: split
import torch
from _baselines import MinimalMLP, dataloader_epoch, dataloaders, minimal_epoch, torchvision_root

from engine.batched import train_group
from engine.runner import load_data_for
from engine.store import Store
from engine.train import EpochReport, train_run

CPU = torch.device("cpu")


def main() -> None:
    args = arguments(
        __doc__,
        **{"--repeat": {"type": int, "default": None}, "--epochs": {"type": int, "default": None}},
    )
    repeat = args.repeat or (1 if args.quick else 3)
    epochs = args.epochs or (3 if args.quick else 5)
    subset = 2000 if args.quick else 10000
    info = machine()
    config = paper_config(3, "none", **{"train.epochs": epochs, "data.train_subset": subset})
    data = load_data_for(config)
    x, y = data.x_train.flatten(1), data.y_train
    x_test, y_test = data.x_test.flatten(1), data.y_test
    times: dict[str, list[float]] = {
        "minimal loop": [],
        "engine, batched": [],
        "engine, one run": [],
        "DataLoader port": [],
    }
    ratios: dict[str, list[float]] = {
        "engine, batched": [],
        "engine, one run": [],
        "DataLoader port": [],
    }
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "bench.db")
        train_loader, test_loader = dataloaders(torchvision_root(Path(folder)), subset)
        torch.manual_seed(0)
        model = MinimalMLP(20, 3)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

        def timed(epoch: Callable[[], object]) -> float:
            start = time.perf_counter()
            epoch()
            return time.perf_counter() - start

        def minimal() -> float:
            return timed(lambda: minimal_epoch(model, optimizer, x, y, x_test, y_test))

        def port() -> float:
            return timed(
                lambda: dataloader_epoch(model, optimizer, train_loader, test_loader, CPU)
            )

        def engine(path: str, with_port: bool) -> None:
            """An engine run whose epochs alternate with hand-written ones, each pair timed
            back to back so the machine's load changes little between them."""
            label = "engine, batched" if path == "batched" else "engine, one run"
            last = [time.perf_counter()]

            def between(report: EpochReport) -> None:
                engine_s = time.perf_counter() - last[0]
                minimal_s = minimal()
                if report.epoch > 1:  # epoch 1 builds the model: the uncounted warm-up
                    times[label].append(engine_s)
                    times["minimal loop"].append(minimal_s)
                    ratios[label].append(engine_s / minimal_s)
                    if with_port:
                        port_s = port()
                        times["DataLoader port"].append(port_s)
                        ratios["DataLoader port"].append(port_s / engine_s)
                last[0] = time.perf_counter()

            run_id = store.create_run(
                study="bench",
                method="none",
                depth=3,
                seed=0,
                dataset="fashion-mnist",
                arch="mlp",
                epochs=epochs,
                config=config,
            )
            if path == "batched":
                train_group(store, [(run_id, config)], data, CPU, on_epoch=between)
            else:
                train_run(store, run_id, config, data, CPU, on_epoch=between)

        minimal()  # warm-up of the hand-written loop
        for round_ in range(repeat):
            engine("batched", with_port=round_ == 0)
            engine("single", with_port=False)
        store.close()

    rows = [
        [
            "minimal loop",
            median(times["minimal loop"]),
            "1.00x",
            "-",
            spread(times["minimal loop"]),
            len(times["minimal loop"]),
        ],
        [
            "engine, batched",
            median(times["engine, batched"]),
            f"{median(ratios['engine, batched']):.2f}x",
            "1.00x",
            spread(ratios["engine, batched"]),
            len(ratios["engine, batched"]),
        ],
        [
            "engine, one run",
            median(times["engine, one run"]),
            f"{median(ratios['engine, one run']):.2f}x",
            "-",
            spread(ratios["engine, one run"]),
            len(ratios["engine, one run"]),
        ],
        [
            "DataLoader port",
            median(times["DataLoader port"]),
            "-",
            f"{median(ratios['DataLoader port']):.2f}x",
            spread(ratios["DataLoader port"]),
            len(ratios["DataLoader port"]),
        ],
    ]
    print(describe(info))
    print(
        table(
            f"epoch seconds, {subset} training images + {len(x_test)} test images; ratios are "
            "medians of back-to-back pairs (targets: engine <= 1.1x minimal, DataLoader >= 2x "
            "engine)",
            [
                ("loop", 16),
                ("epoch s", 8),
                ("vs minimal", 10),
                ("vs engine", 9),
                ("ratio spread", 12),
                ("n", 3),
            ],
            rows,
        )
    )
    results = {"times": times, "ratios": ratios}
    print(f"saved {save('engine_vs_loop', args, info, results)}")


if __name__ == "__main__":
    main()
