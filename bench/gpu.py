"""GPU: the paper study and two epochs of CIFAR-10 on one GPU (issue 5, target 6).

What: studies/paper-fmnist.toml (15 runs x 60 epochs + the paper's attacks) trained by the
engine on the GPU as `lba run` trains it (batched groups, data resident on the device), in
float32 and with bf16 autocast (attacks stay float32), then with torch.compile on a shortened
study (compilation takes a while and is paid once per shape); then studies/cifar10.toml cut
to 2 epochs (4 CNN runs, the single-run loop). For each: wall seconds, training samples per
second (runs x epochs x training images / seconds), peak GPU memory (torch's allocator), and
the ratio to a minimal hand-written loop on the same GPU (bench/_baselines.minimal_epoch, its
per-epoch time scaled to the same runs and epochs; attacks not included in it). Targets: the
paper study under 30 s; the whole script under 5 minutes.

Timed: everything from the first run's start to the last run's end, CUDA synchronized; the
minimal loop's first epoch is an uncounted warm-up. CIFAR-10 needs its files where
engine.data looks (``$LBA_DATA`` ...); it is skipped, saying so, when they are missing.

Where and when: docs/performance.md records what it printed and on which GPU.
Run: bench/gpu.sh (checks for a GPU, then runs this) or
     .venv/bin/python bench/gpu.py [--quick] [--device cpu]   (cpu: a dry run of the script)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

# _common first: it sets OpenMP's wait policy, which must precede loading torch
from _common import ROOT, arguments, describe, machine, save, table

# isort: split
import torch
from _baselines import MinimalMLP, minimal_epoch

from engine.errors import DataError
from engine.runner import load_data_for, plan_tasks, train_task
from engine.store import Store
from engine.study import load_study


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_study(
    path: str, sets: list[str], device: torch.device, folder: Path, **train: object
) -> dict:
    """Train a study through the engine's planner on ``device``; seconds, samples, memory."""
    study = load_study(ROOT / path, sets)
    store = Store(folder / f"{study.name}-{len(list(folder.iterdir()))}.db")
    todo = []
    for cell in study.cells():
        cell.config["train"].update(device=str(device), **train)
        run_id = store.create_run(
            study=study.name,
            method=cell.method,
            depth=cell.depth,
            seed=cell.seed,
            dataset=cell.config["data"]["dataset"],
            arch=cell.config["model"]["arch"],
            epochs=cell.config["train"]["epochs"],
            config=cell.config,
        )
        todo.append((run_id, cell.config))
    data = load_data_for(todo[0][1])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    for task in plan_tasks(todo):
        train_task(store, task)
    sync(device)
    seconds = time.perf_counter() - start
    epochs = todo[0][1]["train"]["epochs"]
    store.close()
    return {
        "seconds": seconds,
        "samples": len(todo) * epochs * len(data.x_train),
        "runs": len(todo),
        "epochs": epochs,
        "memory": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0,
    }


def minimal_seconds(device: torch.device, train_subset: int, epochs: int = 4) -> float:
    """Seconds per epoch of the hand-written loop on ``device`` (first epoch uncounted)."""
    config = (
        load_study(ROOT / "studies/paper-fmnist.toml", [f"data.train_subset={train_subset}"])
        .cells()[0]
        .config
    )
    data = load_data_for(config)
    x, y = data.x_train.flatten(1).to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.flatten(1).to(device), data.y_test.to(device)
    torch.manual_seed(0)
    model = MinimalMLP(20, 3).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    seconds = []
    for _ in range(epochs):
        sync(device)
        start = time.perf_counter()
        minimal_epoch(model, optimizer, x, y, x_test, y_test)
        sync(device)
        seconds.append(time.perf_counter() - start)
    return sum(seconds[1:]) / len(seconds[1:])


def main() -> None:
    args = arguments(__doc__, **{"--device": {"default": "cuda"}})
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA GPU (or --device cpu for a dry run)")
    info = machine()
    started = time.perf_counter()
    epochs = 2 if args.quick else 60
    subset = 1000 if args.quick else 10000
    paper = ["data.train_subset=" + str(subset), f"train.epochs={epochs}"]
    if args.quick:
        paper.append("attacks.paper.n=200")
    per_epoch = minimal_seconds(device, subset)
    rows, results = [], {"minimal_epoch_s": per_epoch}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        variants = [
            ("paper study, float32", "studies/paper-fmnist.toml", paper, {}),
            ("paper study, bf16", "studies/paper-fmnist.toml", paper, {"precision": "bf16"}),
            (
                f"paper study, compile, {2 if args.quick else 5} ep",
                "studies/paper-fmnist.toml",
                [*paper, f"train.epochs={2 if args.quick else 5}"],
                {"compile": True},
            ),
            (
                "cifar10, 2 epochs",
                "studies/cifar10.toml",
                ["train.epochs=1", "data.train_subset=500"] if args.quick else ["train.epochs=2"],
                {},
            ),
        ]
        for label, path, sets, train in variants:
            try:
                measured = train_study(path, sets, device, folder, **train)
            except DataError as exc:
                rows.append([label, "-", "-", "-", "-", f"skipped: {str(exc)[:60]}"])
                results[label] = {"skipped": str(exc)}
                continue
            minimal = per_epoch * measured["runs"] * measured["epochs"]
            ratio = "-" if "cifar" in label else f"{minimal / measured['seconds']:.1f}x"
            rows.append(
                [
                    label,
                    measured["seconds"],
                    f"{measured['samples'] / measured['seconds']:,.0f}",
                    f"{measured['memory'] / 2**20:.0f}",
                    ratio,
                    "",
                ]
            )
            results[label] = measured
    total = time.perf_counter() - started
    results["total_seconds"] = total
    print(describe(info))
    print(
        table(
            f"on {device}: wall seconds, training samples/s, peak memory (MiB), speed-up over the "
            f"minimal loop ({per_epoch:.3f} s/epoch); targets: paper study < 30 s, all < 5 min",
            [
                ("variant", 27),
                ("seconds", 8),
                ("samples/s", 11),
                ("MiB", 6),
                ("vs minimal", 10),
                ("note", 20),
            ],
            rows,
        )
    )
    print(f"total {total:.0f} s")
    print(f"saved {save('gpu', args, info, results)}")


if __name__ == "__main__":
    main()
