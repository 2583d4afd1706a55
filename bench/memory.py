"""Memory: the peak of `lba run studies/paper-fmnist.toml` (issue 5, target 7).

What: the real command in a fresh process, its process tree's memory read from /proc every
200 ms: the largest single process's RSS (what `/usr/bin/time -v` reports), the RSS summed over
the tree, and the PSS summed over the tree (shared pages split between the processes that map
them: the tree's share of physical memory). With ``--jobs 2`` the command spawns two worker
processes, each loading torch (~600 MB resident, ~300 MB of it shared libraries) and the data;
the paper study is one batched group, so the second row doubles its seeds to have two groups.
Target: under 1.5 GB (checked against the RSS sum, the most conservative of the three).

The peak is reached in the first epoch (model, data, store) and does not grow after it, so the
default shortens the study to ``--epochs 5`` (bench/study.py records the same figures for the
whole 60-epoch study). Not timed.

Where and when: docs/performance.md has the last figures (machine, versions, date).
Run: .venv/bin/python bench/memory.py [--quick] [--epochs N]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from _common import arguments, describe, machine, run_measured, save, table

STUDY = "studies/paper-fmnist.toml"


def main() -> None:
    args = arguments(__doc__, **{"--epochs": {"type": int, "default": None}})
    epochs = args.epochs or (1 if args.quick else 5)
    sets = ["--set", f"train.epochs={epochs}"]
    if args.quick:
        sets += ["--set", "data.train_subset=1000", "--set", "attacks.paper.n=200"]
    info = machine()
    rows, results = [], {}
    base = [sys.executable, "-m", "lba_tui.cli", "run", STUDY, *sets]
    variants = {
        "lba run": [],
        # two seeds make two groups, which --jobs 2 trains in two worker processes
        "2 seeds, --jobs 2": ["--set", "grid.seed=[0, 1]", "--jobs", "2"],
    }
    with tempfile.TemporaryDirectory() as folder:
        for i, (label, extra) in enumerate(variants.items()):
            db = str(Path(folder) / f"memory-{i}.db")
            seconds, peak, _ = run_measured([*base, *extra, "--db", db])
            gib = {key: value / 2**30 for key, value in peak.items()}
            row = [label, f"{gib['largest']:.2f}", f"{gib['rss']:.2f}", f"{gib['pss']:.2f}"]
            rows.append([*row, "yes" if peak["rss"] < 1.5e9 else "NO"])
            results[label] = {"peak_bytes": peak, "seconds": seconds}
    print(describe(info))
    print(
        table(
            f"{STUDY} ({epochs} epoch(s)), peak memory of the process tree in GiB "
            "(target: < 1.5 GB)",
            [("command", 17), ("max RSS", 7), ("RSS sum", 7), ("PSS sum", 7), ("< 1.5 GB", 8)],
            rows,
        )
    )
    print(f"saved {save('memory', args, info, results)}")


if __name__ == "__main__":
    main()
