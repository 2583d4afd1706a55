"""lba costs nothing: an epoch with lba against the same epoch with no regularizer (target 1).

What: whole engine epochs (training, the Lipschitz monitor, test accuracy, the store write) of
the paper's residual MLP (n = 3, width 20, 10,000 Fashion-MNIST images, batch 100, SGD) with
method none and with lba (a layer drawn per batch, its exact sigma), on the two training paths:
the single-run loop (engine/train.py) and the batched step (engine/batched.py, one run alone).
Then a width-512 MLP, where an exact eigenproblem per step is costly: none, lba with exact
sigma, and lba with ``sigma = "tracked"`` (power iteration that starts at the exact top
singular vector and takes 3 warm steps per draw, its default; "tracked 10": 10 steps).
Targets: width 20 at most 1.05x, width 512 at most 1.10x.

Timed: the time between successive epoch callbacks (epoch 1, which builds everything, is the
uncounted warm-up), variants interleaved run by run, ``--repeat`` rounds, medians compared.
Sigma check: the engine's end-of-epoch gap between the tracked estimates and the exact sigmas
(``Regularizer.check_sigmas``), and, stepping a width-512 model by hand, the sigma each
penalty used against the exact sigma of the drawn layer at that step.

Where and when: docs/performance.md has the last figures (machine, versions, date).
Run: .venv/bin/python bench/lba_overhead.py [--quick] [--repeat N]
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

# _common first: it sets OpenMP's wait policy, which must precede loading torch
from _common import arguments, describe, machine, median, paper_config, save, spread, table

# isort: split
import torch
import torch.nn.functional as F

from engine.batched import train_group
from engine.lipschitz import spectral_norm_exact
from engine.regularizers import RegularizerSpec, make_regularizer
from engine.runner import load_data_for
from engine.store import Store
from engine.train import EpochReport, build_for, train_run

CPU = torch.device("cpu")


def epoch_times(path: str, config: dict, store: Store) -> tuple[list[float], list[float]]:
    """Train one run; the seconds of every epoch after the first, and any sigma errors."""
    marks, errors = [], []

    def mark(report: EpochReport) -> None:
        marks.append(time.perf_counter())
        if "sigma_error" in report.metrics:
            errors.append(report.metrics["sigma_error"])

    run_id = store.create_run(
        study="bench",
        method=config["method"]["name"],
        depth=config["model"]["depth"],
        seed=0,
        dataset="fashion-mnist",
        arch="mlp",
        epochs=config["train"]["epochs"],
        config=config,
    )
    data = load_data_for(config)
    if path == "single-run loop":
        train_run(store, run_id, config, data, CPU, on_epoch=mark)
    else:
        train_group(store, [(run_id, config)], data, CPU, on_epoch=mark)
    return [b - a for a, b in itertools.pairwise(marks)], errors


def compare(variants: dict[str, tuple[str, dict]], repeat: int, store: Store) -> dict:
    times: dict[str, list[float]] = {name: [] for name in variants}
    errors: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, (path, config) in variants.items():
            seconds, gaps = epoch_times(path, config, store)
            times[name] += seconds
            errors[name] += gaps
    return {"times": times, "sigma_errors": errors}


def used_against_exact(width: int, steps: int, iters: int) -> float:
    """Largest relative error of the sigma lba's tracked mode used, over ``steps`` SGD steps."""
    config = paper_config(3, "lba", **{"model.width": width, "data.train_subset": 100 * steps})
    data = load_data_for(config)
    model = build_for(config, data)
    spec = RegularizerSpec.for_method("lba", sigma="tracked", power_iters=iters)
    regularizer = make_regularizer(spec, model, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    worst = 0.0
    for start in range(0, 100 * steps, 100):
        x, y = data.x_train[start : start + 100], data.y_train[start : start + 100]
        loss = F.cross_entropy(model(x), y) + regularizer.penalty()
        drawn = model.kernel_layers()[regularizer.last_layer].weight
        exact = float(spectral_norm_exact(drawn))
        worst = max(worst, abs(regularizer.last_sigma - exact) / exact)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return worst


def main() -> None:
    args = arguments(__doc__, **{"--repeat": {"type": int, "default": None}})
    repeat = args.repeat or (1 if args.quick else 3)
    info = machine()
    small = {
        "train.epochs": 3 if args.quick else 6,
        "data.train_subset": 2000 if args.quick else 10000,
    }
    wide = {
        "train.epochs": 2 if args.quick else 3,
        "model.width": 512,
        "data.train_subset": 1000 if args.quick else 10000,
    }
    tracked = {"methods.lba": "{sigma='tracked'}"}
    tracked10 = {"methods.lba": "{sigma='tracked', power_iters=10}"}
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "bench.db")
        for label, variants, base in (
            (
                "width 20, single-run loop",
                {
                    "none": ("single-run loop", paper_config(3, "none", **small)),
                    "lba exact": ("single-run loop", paper_config(3, "lba", **small)),
                },
                "none",
            ),
            (
                "width 20, batched step",
                {
                    "none": ("batched", paper_config(3, "none", **small)),
                    "lba exact": ("batched", paper_config(3, "lba", **small)),
                },
                "none",
            ),
            (
                "width 512, single-run loop",
                {
                    "none": ("single-run loop", paper_config(3, "none", **wide)),
                    "lba exact": ("single-run loop", paper_config(3, "lba", **wide)),
                    "lba tracked": ("single-run loop", paper_config(3, "lba", **wide, **tracked)),
                    "lba tracked 10": (
                        "single-run loop",
                        paper_config(3, "lba", **wide, **tracked10),
                    ),
                },
                "none",
            ),
        ):
            measured = compare(variants, repeat, store)
            results[label] = measured
            reference = median(measured["times"][base])
            for name, times in measured["times"].items():
                errors = measured["sigma_errors"][name]
                rows.append(
                    [
                        label,
                        name,
                        median(times),
                        f"{median(times) / reference:.3f}x",
                        f"{max(errors):.1e}" if errors else "-",
                        spread(times),
                        len(times),
                    ]
                )
        store.close()
    check_steps = 20 if args.quick else 200
    worst = {iters: used_against_exact(512, check_steps, iters) for iters in (10, 3)}
    results["tracked sigma used vs exact, width 512"] = {"steps": check_steps, "max_rel": worst}
    print(describe(info))
    print(
        table(
            f"epoch seconds, median of {repeat} run(s) per variant (epoch 1 uncounted); targets: "
            "width 20 <= 1.05x, width 512 <= 1.10x",
            [
                ("model, path", 26),
                ("method", 13),
                ("epoch s", 8),
                ("vs none", 7),
                ("sigma err", 9),
                ("spread", 10),
                ("n", 3),
            ],
            rows,
        )
    )
    for iters, error in worst.items():
        print(
            f"sigma the tracked mode used vs exact, width 512, {iters} steps per draw, "
            f"{check_steps} SGD steps: max relative error {error:.1e} (target 1e-3)"
        )
    print(f"saved {save('lba_overhead', args, info, results)}")


if __name__ == "__main__":
    main()
