"""What every bench script shares: the machine record, the timer, the table, the saved results.

Timing rules (airbench's): a warm-up pass that is not counted, only the measured work inside
the timer (a CUDA synchronize closes it on a GPU), the variants of one comparison interleaved
in rotation so a noisy neighbour slows them all alike, ratios taken within one run, and the
median reported with the spread beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

# OpenMP threads that spin while waiting make a shared, oversubscribed machine 20-50x slower
# (measured: a 2-thread epoch took 50 s spinning, 2 s passive); engine.runner sets the same
# default for `lba run`. Set before torch loads; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def arguments(description: str, **extra: dict) -> argparse.Namespace:
    """``--quick`` (the CI smoke size), ``--out DIR`` (where the JSON goes), plus ``extra``."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds not minutes")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the JSON results (default: $LBA_BENCH_OUT, else bench/results; "
        "--quick runs go to the system's temporary folder)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: fastest for these small models on this machine, for "
        "the engine and for the loops it is compared with alike)",
    )
    for flag, options in extra.items():
        parser.add_argument(flag, **options)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.out is None:
        quick = Path(tempfile.gettempdir()) / "lba-bench"
        args.out = Path(os.environ.get("LBA_BENCH_OUT") or (quick if args.quick else RESULTS))
    return args


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def commit() -> str:
    """The commit the bench ran on, ``+dirty`` when the working tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    """Where and when: cores, CPU, GPU, load, versions, date and commit."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "gpu": gpu,
        "load_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "python": platform.python_version(),
        "commit": commit(),
    }


def describe(info: dict) -> str:
    gpu = f", {info['gpu']}" if info["gpu"] else ""
    return (
        f"{info['date']}  {info['nproc']} x {info['cpu']}{gpu}  torch {info['torch']} "
        f"({info['threads']} threads, OMP {info['omp_wait_policy']})  "
        f"load {info['load_1min']:.1f}  commit {info['commit']}"
    )


def sync(device: str = "cpu") -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def interleave(
    variants: dict[str, Callable[[], float | None]], repeat: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Call each variant in rotation ``repeat`` times after ``warmup`` uncounted rounds.

    A variant returns the seconds it measured itself (when only part of its work counts),
    or None to be timed whole here.
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(warmup + repeat):
        for name, run in variants.items():
            start = time.perf_counter()
            measured = run()
            elapsed = time.perf_counter() - start if measured is None else measured
            if round_ >= warmup:
                times[name].append(elapsed)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """Min-max of the repeats relative to their median, e.g. ``-3%/+8%``."""
    mid = statistics.median(values)
    return f"-{100 * (1 - min(values) / mid):.0f}%/+{100 * (max(values) / mid - 1):.0f}%"


def table(title: str, columns: list[tuple[str, int]], rows: list[list]) -> str:
    """A fixed-width text table: a title line, a header, a rule, the rows."""

    def cell(value: object, width: int) -> str:
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        return text.rjust(width) if isinstance(value, int | float) else text.ljust(width)

    lines = [title, "  ".join(name.ljust(width) for name, width in columns)]
    lines.append("  ".join("-" * width for _, width in columns))
    lines += ["  ".join(cell(v, w) for v, (_, w) in zip(row, columns)) for row in rows]
    return "\n".join(lines)


def save(name: str, args: argparse.Namespace, info: dict, results: dict) -> Path:
    """Write ``<out>/<name>[-quick].json``: the machine, the settings and the figures."""
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name}{'-quick' if args.quick else ''}.json"
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"bench": name, "machine": info, "settings": settings, "results": results}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def paper_config(depth: int = 3, method: str = "none", **overrides: object) -> dict:
    """One run config of studies/paper-fmnist.toml, with ``--set`` style overrides."""
    from engine.study import load_study

    sets = [f"{key}={value}" for key, value in overrides.items()]
    return load_study(ROOT / "studies" / "paper-fmnist.toml", sets).run_config(method, depth, 0)


def tree_memory(pid: int) -> tuple[int, int, int]:
    """Memory of a process and its descendants, from /proc (Linux), in bytes.

    Returns:
        ``(sum of RSS, sum of PSS, largest single RSS)``. RSS counts the shared libraries
        (torch's are ~300 MB) once per process; PSS splits shared pages between the processes
        that map them, so its sum is the tree's share of physical memory.
    """
    rss = pss = largest = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        # the kernel's own list of a task's children: no walk over every process on the host
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(child) for child in task.read_text().split()]
            except (OSError, ValueError):
                continue
        try:
            lines = (Path("/proc") / str(current) / "smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        values = {line.split()[0]: int(line.split()[1]) * 1024 for line in lines[1:]}
        rss += values.get("Rss:", 0)
        pss += values.get("Pss:", 0)
        largest = max(largest, values.get("Rss:", 0))
    return rss, pss, largest


def run_measured(
    command: list[str], *, env: dict | None = None, poll_s: float = 0.2
) -> tuple[float, dict, str]:
    """Run a command; its wall seconds, the peaks of its process tree's memory, its output.

    Memory peaks (bytes): ``rss`` (RSS summed over the tree), ``pss`` (PSS summed) and
    ``largest`` (the biggest single process, what ``/usr/bin/time -v`` calls maximum
    resident set size). /proc is read every ``poll_s``; a shorter peak can be missed.
    """
    with tempfile.TemporaryFile(mode="w+") as log:
        start = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        peak = {"rss": 0, "pss": 0, "largest": 0}
        while process.poll() is None:
            for key, value in zip(peak, tree_memory(process.pid)):
                peak[key] = max(peak[key], value)
            time.sleep(poll_s)
        seconds = time.perf_counter() - start
        log.seek(0)
        output = log.read()
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n{output[-3000:]}")
    return seconds, peak, output
