"""Each benchmark of issue 5 runs in its quick version and prints its table; timing is never
asserted (these machines are noisy), only that the script ran and reported."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = ["lba_overhead", "engine_vs_loop", "study", "attacks", "monitor", "memory"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_quick_bench_runs_and_prints_its_table(name, tmp_path, capsys):
    if name == "attacks" and importlib.util.find_spec("torchattacks") is None:
        pytest.skip("torchattacks is a bench-only dependency: pip install -e '.[bench]'")
    done = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), "--quick"],
        env={**os.environ, "LBA_BENCH_OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    # a fixed-width table: a header, then a rule of dashes, then at least one row
    rule = next(i for i, line in enumerate(lines) if line.startswith("---"))
    assert rule >= 1 and len(lines) > rule + 1
    assert (tmp_path / f"{name}-quick.json").exists()
    with capsys.disabled():  # CI logs show the quick ratios
        print(f"\n{done.stdout}")
