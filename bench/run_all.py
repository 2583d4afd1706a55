"""Every bench script's quick version, one after another: what `make bench` and CI print.

What: runs each ``bench/*.py`` (helpers starting with ``_`` and this file excepted) with
``--quick`` in its own process and prints its table as it comes. The quick sizes are smoke
tests: they show that a bench runs and roughly where its ratios sit; the figures to quote come
from the full runs (without ``--quick``), recorded in docs/performance.md. Timing never fails
this script; a bench that crashes does (exit 1), and one whose optional dependency is missing
(torchattacks: pip install -e '.[bench]') is reported and skipped. bench/gpu.sh is separate: it
needs a CUDA GPU.

Run: .venv/bin/python bench/run_all.py [--out DIR] [--only NAME ...] [--full]
(``--full``: every script at its full size, what docs/performance.md quotes; tens of minutes.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def scripts() -> list[Path]:
    # gpu.py needs a CUDA GPU: bench/gpu.sh runs it (or dry-runs it on the CPU).
    return sorted(
        p
        for p in BENCH.glob("*.py")
        if not p.name.startswith("_") and p.name not in ("run_all.py", "gpu.py")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Run every bench script's quick version.")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON results")
    parser.add_argument("--only", nargs="*", default=None, help="script names, e.g. study")
    parser.add_argument("--full", action="store_true", help="the full sizes (tens of minutes)")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.out:
        env["LBA_BENCH_OUT"] = str(args.out)
    failed = []
    for script in scripts():
        if args.only and script.stem not in args.only:
            continue
        size = [] if args.full else ["--quick"]
        print(f"== {script.name} {' '.join(size)}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(script), *size],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        print(done.stdout, end="", flush=True)
        if done.returncode and "No module named 'torchattacks'" in done.stderr:
            print("skipped: torchattacks is not installed (pip install -e '.[bench]')")
        elif done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            failed.append(script.name)
        print(f"({time.perf_counter() - start:.0f} s)\n", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
