"""The whole paper study: `lba run studies/paper-fmnist.toml` against one run after another
(issue 5, target 3; its peak memory is target 7, see also bench/memory.py).

What: the 15 runs of studies/paper-fmnist.toml (n = 3/5/7 x none/lba/l2/l1/dropout, width 20,
60 epochs of SGD on 10,000 Fashion-MNIST images, test accuracy every epoch, the paper's FGSM
and PGD at the end), each way in a fresh process, wall-clock from launch to exit:

  minimal loop, sequential   the 15 runs one after another, hand-written (bench/_baselines),
                             on one thread, its fastest setting here: the baseline
  minimal loop, 2 threads    the same on torch's default two threads (OpenMP waiting passive)
  engine, sequential         the 15 runs one after another through engine/train.py's loop
  batched by depth, 1 proc   engine/batched.py, one group per depth (3 groups of 5), in turn
  batched by depth, 2 procs  the same 3 groups shared by 2 worker processes
  lba run (one group)        the real command: all 15 runs in one batched group (one seed,
                             so one data order; depths 3/5/7 share the stacked step)
  lba run --jobs 2           the real command, the group halved over 2 worker processes

Target: `lba run` at least 4x faster than the minimal loop. The gaps between the rows say what
gave how much: the engine's own loop, batching runs of one shape, processes, and batching
runs of every depth into one group.
Timed: every process start, import and data load is inside its time, as a user sees it; one
round by default (a study takes minutes), ``--epochs`` shortens every variant alike.

Where and when: docs/performance.md has the last figures (machine, versions, date).
Run: .venv/bin/python bench/study.py [--quick] [--epochs N] [--rounds N]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from _common import ROOT, arguments, describe, machine, run_measured, save, table

STUDY = "studies/paper-fmnist.toml"


def overrides(epochs: int, quick: bool) -> list[str]:
    sets = [f"train.epochs={epochs}"]
    if quick:
        sets += ["data.train_subset=1000", "attacks.paper.n=200"]
    return sets


def inner(kind: str, epochs: int, quick: bool) -> None:
    """The sequential variants, run in the child process this script starts."""
    sys.path.insert(0, str(ROOT))
    import torch

    from engine.study import load_study

    study = load_study(ROOT / STUDY, overrides(epochs, quick))
    if kind.startswith("minimal"):
        from _baselines import minimal_study

        # its best: one thread (0.08 s an epoch here against 0.12-0.22 s with two)
        torch.set_num_threads(2 if kind == "minimal-2" else 1)

        from engine.runner import load_data_for

        minimal_study(load_data_for(study.cells()[0].config), epochs, 200 if quick else 1000)
        return
    from engine.runner import run_tasks, train_one
    from engine.store import Store

    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "bench.db")
        todo = []
        for cell in study.cells():
            run_id = store.create_run(
                study=study.name,
                method=cell.method,
                depth=cell.depth,
                seed=cell.seed,
                dataset="fashion-mnist",
                arch="mlp",
                epochs=epochs,
                config=cell.config,
            )
            todo.append((run_id, cell.config))
        if kind == "single":
            torch.set_num_threads(1)  # the single-run loop is faster on one thread too
            for run_id, config in todo:
                train_one(store, run_id, config)
        else:
            # batched, one group per depth (the same shapes only), in 1 or 2 processes
            depths = sorted({config["model"]["depth"] for _, config in todo}, reverse=True)
            tasks = [[run for run in todo if run[1]["model"]["depth"] == d] for d in depths]
            run_tasks(store, tasks, jobs=2 if kind == "per-depth-2" else 1)
        store.close()


def main() -> None:
    args = arguments(
        __doc__,
        **{
            "--epochs": {"type": int, "default": None},
            "--rounds": {"type": int, "default": 1},
            "--inner": {"default": None, "help": "internal"},
        },
    )
    epochs = args.epochs or (2 if args.quick else 60)
    if args.inner:
        inner(args.inner, epochs, args.quick)
        return
    info = machine()
    python = sys.executable
    me = [python, str(Path(__file__).resolve()), "--epochs", str(epochs)]
    me += ["--quick"] if args.quick else []
    sets = [item for s in overrides(epochs, args.quick) for item in ("--set", s)]
    lba_run = [python, "-m", "lba_tui.cli", "run", STUDY, *sets, "--db"]
    variants = {
        "minimal loop, sequential": lambda db: [*me, "--inner", "minimal"],
        "minimal loop, 2 threads": lambda db: [*me, "--inner", "minimal-2"],
        "engine, sequential": lambda db: [*me, "--inner", "single"],
        "batched by depth, 1 proc": lambda db: [*me, "--inner", "per-depth-1"],
        "batched by depth, 2 procs": lambda db: [*me, "--inner", "per-depth-2"],
        "lba run (one group)": lambda db: [*lba_run, db],
        "lba run --jobs 2": lambda db: [*lba_run, db, "--jobs", "2"],
    }
    measured: dict[str, list[tuple[float, dict]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.rounds):
            for i, (name, command) in enumerate(variants.items()):
                db = str(Path(folder) / f"study-{round_}-{i}.db")
                seconds, peak, _ = run_measured(command(db))
                measured[name].append((seconds, peak))
    base = min(s for s, _ in measured["minimal loop, sequential"])
    rows, results = [], {}
    for name, values in measured.items():
        seconds = min(s for s, _ in values)
        peak = {key: max(p[key] for _, p in values) for key in ("rss", "pss", "largest")}
        rows.append(
            [
                name,
                seconds,
                f"{base / seconds:.2f}x",
                f"{peak['pss'] / 2**30:.2f}",
                f"{peak['largest'] / 2**30:.2f}",
            ]
        )
        results[name] = {
            "seconds": [s for s, _ in values],
            "peak_bytes": peak,
            "speedup": base / seconds,
        }
    print(describe(info))
    print(
        table(
            f"{STUDY}: 15 runs x {epochs} epochs + attacks, wall seconds from launch to exit, best "
            f"of {args.rounds} (target: lba run >= 4x the minimal loop; memory < 1.5 GiB)",
            [("variant", 25), ("seconds", 8), ("speedup", 7), ("PSS GiB", 7), ("max RSS GiB", 11)],
            rows,
        )
    )
    print(f"saved {save('study', args, info, results)}")


if __name__ == "__main__":
    main()
