"""Processes started from the app outlive it; stop signals only lba processes."""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from lba_tui.launcher import Launcher, log_path, run_command, tune_command


def test_command_lines_and_log_names(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    assert run_command("", [], db) == [sys.executable, "-m", "lba_tui.cli", "run", "--db", str(db)]
    assert tune_command("paper-fmnist", 5, ["train.epochs=2"], db)[3:] == [
        "tune",
        "paper-fmnist",
        "--trials",
        "5",
        "--set",
        "train.epochs=2",
        "--db",
        str(db),
    ]
    when = datetime(2025, 6, 1, 12, 0, 0)
    assert log_path(db, "run", "studies/my study.toml", when).name == (
        "x-run-my_study-20250601-120000.log"
    )


def test_a_started_process_runs_in_its_own_session_and_logs(tmp_path: Path) -> None:
    launcher = Launcher()
    log = tmp_path / "out.log"
    launch = launcher.start([sys.executable, "-c", "print('hello from lba')"], log)
    assert os.getsid(launch.pid) == launch.pid  # a new session: closing the app leaves it be
    for _ in range(100):
        if launcher.reap():
            break
        time.sleep(0.05)
    assert launch.returncode == 0 and "hello from lba" in log.read_text()


def test_stop_refuses_a_process_that_is_not_lba(tmp_path: Path) -> None:
    launcher = Launcher()
    sleeper = launcher.start(
        [sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "sleep.log"
    )
    try:
        with pytest.raises(PermissionError):
            launcher.stop(sleeper.pid)
    finally:
        os.kill(sleeper.pid, signal.SIGKILL)


def test_stop_sends_sigint_to_an_lba_process(tmp_path: Path) -> None:
    launcher = Launcher()
    script = tmp_path / "lba_fake_trainer.py"
    script.write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *a: sys.exit(130))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    log = tmp_path / "fake.log"
    launch = launcher.start([sys.executable, str(script)], log)
    for _ in range(100):
        if "ready" in log.read_text():
            break
        time.sleep(0.05)
    launcher.stop(launch.pid)
    for _ in range(100):
        if launcher.reap():
            break
        time.sleep(0.05)
    assert launch.returncode == 130
