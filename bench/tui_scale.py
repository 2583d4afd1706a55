"""lba-tui at scale: a store of 10,000 runs and 600,000 epoch rows.

What: how long the app takes to show the runs table, and to refresh it when runs change,
against the targets of issue 4 (open under 1 s, refresh under 100 ms). The store is
synthetic (lba_tui.fixtures.scale_store: 20 studies, 60 epochs a run, 1 run in 500 still
running); the app is the real one, headless (Textual's run_test), at 120x40.

Measured, each after one warm-up (imports, SQLite page cache) that is not counted:
  open (in process)  LbaApp(db).run_test() until the runs table holds every run and has
                     painted once; Python and its imports already loaded.
  open (new process) a fresh interpreter started with `python -c` until the same point:
                     what a user waits for after typing lba-tui, imports included.
  refresh            an epoch committed by another connection to 5 running runs, then
                     the screen's reload: read what changed, update the rows, repaint.
  full reload        the same, reading all 10,000 rows (what a first load costs).
  sort / filter      re-sorting 10,000 rows by test accuracy; applying `method:lba test>80`.

Where and when: see docs/tui.md for the figures of the last run (machine, versions, date).
Run: .venv/bin/python bench/tui_scale.py [--quick] [--runs N] [--repeat N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import textual

from lba_tui.app import LbaApp
from lba_tui.fixtures import RunSpec, build_store, scale_specs
from lba_tui.widgets.run_table import RunTable

SIZE = (120, 40)
OPEN_TARGET_S = 1.0
REFRESH_TARGET_S = 0.100


def make_store(path: Path, runs: int, epochs: int) -> float:
    """Write the scale store; 1 run in 500 is left running. Returns seconds taken."""
    specs = scale_specs(runs, epochs)
    for i in range(0, runs, 500):
        spec = specs[i]
        specs[i] = RunSpec(
            spec.study,
            spec.method,
            spec.depth,
            spec.seed,
            status="running",
            epochs=epochs * 2,
            done=epochs,
        )
    started = time.perf_counter()
    build_store(path, specs, sigmas=False, attacks=False, templates=True)
    return time.perf_counter() - started


async def wait_rows(pilot, count: int) -> None:
    while True:
        tables = pilot.app.screen.query(RunTable)
        if tables and len(tables.first().rows) >= count:
            break
        await asyncio.sleep(0.002)
    await pilot.pause()  # one paint


async def open_once(db: Path, count: int) -> float:
    started = time.perf_counter()
    app = LbaApp(db, poll_seconds=3600)
    async with app.run_test(size=SIZE) as pilot:
        await wait_rows(pilot, count)
        elapsed = time.perf_counter() - started
    return elapsed


def open_new_process(db: Path, count: int) -> float:
    code = (
        "import asyncio, sys, time\n"
        "from lba_tui.app import LbaApp\n"
        "from lba_tui.widgets.run_table import RunTable\n"
        "async def main():\n"
        f"    app = LbaApp({str(db)!r}, poll_seconds=3600)\n"
        f"    async with app.run_test(size={SIZE}) as pilot:\n"
        "        while True:\n"
        "            tables = app.screen.query(RunTable)\n"
        f"            if tables and len(tables.first().rows) >= {count}:\n"
        "                break\n"
        "            await asyncio.sleep(0.002)\n"
        "        await pilot.pause()\n"
        "        print(time.time(), flush=True)\n"
        "        app.exit()\n"
        "asyncio.run(main())\n"
    )
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return float(out.stdout.split()[0]) - started


def commit_epochs(db: Path, run_ids: list[int]) -> None:
    """What trainers do each epoch, from another connection: bump epoch and metrics."""
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "UPDATE runs SET epoch = epoch + 1, test_acc = test_acc + 0.0001 WHERE id = ?",
            [(i,) for i in run_ids],
        )


async def refresh_times(db: Path, count: int, repeat: int) -> dict[str, list[float]]:
    app = LbaApp(db, poll_seconds=3600)
    running = [i for i in range(1, count + 1, 500)][:5]
    times: dict[str, list[float]] = {"refresh": [], "full": [], "sort": [], "filter": []}
    async with app.run_test(size=SIZE) as pilot:
        await wait_rows(pilot, count)
        screen = app.screen
        table = screen.query_one(RunTable)

        async def reload(full: bool) -> float:
            commit_epochs(db, running)
            want = table.rows[running[0]].epoch + 1
            if full:
                screen.state = "stale"  # forces the read of every row
            started = time.perf_counter()
            screen.reload()
            while table.rows[running[0]].epoch != want:
                await asyncio.sleep(0.001)
            await pilot.pause()
            return time.perf_counter() - started

        for kind in ("refresh", "full"):
            await reload(kind == "full")  # warm-up
            for _ in range(repeat):
                times[kind].append(await reload(kind == "full"))
        for _ in range(repeat + 1):
            started = time.perf_counter()
            table.sort_by("test", reverse=not table.reverse)
            await pilot.pause()
            times["sort"].append(time.perf_counter() - started)
            started = time.perf_counter()
            table.set_filter("method:lba test>80" if not table.filter_text else "")
            await pilot.pause()
            times["filter"].append(time.perf_counter() - started)
        times["sort"].pop(0)
        times["filter"].pop(0)
    return times


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} cores ({model}), load {load:.1f}; Python {platform.python_version()}, "
        f"Textual {textual.__version__}, SQLite {sqlite3.sqlite_version}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 runs, 2 repeats (CI smoke)")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None, help="write the store here and keep it")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.repeat = 1_000, 2

    folder = Path(tempfile.mkdtemp(prefix="lba-bench-")) if args.keep is None else args.keep
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / f"scale-{args.runs}.db"
    if db.exists():
        build_s = float("nan")
    else:
        build_s = make_store(db, args.runs, args.epochs)
    with sqlite3.connect(db) as conn:
        runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        epochs = conn.execute("SELECT count(*) FROM epochs").fetchone()[0]

    asyncio.run(open_once(db, runs))  # warm-up
    opened = [asyncio.run(open_once(db, runs)) for _ in range(args.repeat)]
    open_new_process(db, runs)  # warm-up
    cold = [open_new_process(db, runs) for _ in range(args.repeat)]
    times = asyncio.run(refresh_times(db, runs, args.repeat))

    print(f"lba-tui scale bench: {runs:,} runs, {epochs:,} epoch rows, {SIZE[0]}x{SIZE[1]}")
    print(f"store written in {build_s:.1f} s; {machine()}")
    print()
    print(f"{'measure':<22}{'n':>3}{'median':>11}{'min':>11}{'target':>10}{'median/target':>15}")
    rows = [
        ("open (in process)", opened, OPEN_TARGET_S),
        ("open (new process)", cold, OPEN_TARGET_S),
        ("refresh (5 runs)", times["refresh"], REFRESH_TARGET_S),
        ("full reload", times["full"], REFRESH_TARGET_S),
        (f"sort {runs:,} by test", times["sort"], REFRESH_TARGET_S),
        ("filter", times["filter"], REFRESH_TARGET_S),
    ]
    for name, values, target in rows:
        median = statistics.median(values)
        print(
            f"{name:<22}{len(values):>3}{1000 * median:>9.0f}ms{1000 * min(values):>9.0f}ms"
            f"{1000 * target:>8.0f}ms{median / target:>15.2f}"
        )
    if args.keep is None:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


if __name__ == "__main__":
    main()
