"""Starting and stopping training from the app, as processes that outlive it.

A study run or a tuning job started from the app is ``python -m lba_tui.cli run ...`` in a new
session (``start_new_session``), its output in a log file beside the store: closing the app,
or losing the SSH connection, does not stop it. Stopping sends SIGINT to the pid a run
recorded; the trainer marks the run ``interrupted`` and keeps the finished epochs.

The app takes a :class:`Launcher` so tests can check the exact command line without training.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path


@dataclass
class Launch:
    """A command the app started: its argument vector, pid and log file."""

    argv: list[str]
    pid: int
    log: Path
    returncode: int | None = None


def run_command(study: str, overrides: list[str], db: Path) -> list[str]:
    """The argument vector of ``lba run STUDY --set ... --db DB``."""
    argv = [sys.executable, "-m", "lba_tui.cli", "run"]
    if study:
        argv.append(study)
    for item in overrides:
        argv += ["--set", item]
    return [*argv, "--db", str(db)]


def tune_command(study: str, trials: int, overrides: list[str], db: Path) -> list[str]:
    """The argument vector of ``lba tune STUDY --trials N --set ... --db DB``."""
    argv = [sys.executable, "-m", "lba_tui.cli", "tune", study, "--trials", str(trials)]
    for item in overrides:
        argv += ["--set", item]
    return [*argv, "--db", str(db)]


def log_path(db: Path, kind: str, study: str, when: datetime) -> Path:
    """``<store folder>/<store>-<kind>-<study>-<YYYYmmdd-HHMMSS>.log``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(study).stem or "quickstart")
    stamp = when.strftime("%Y%m%d-%H%M%S")
    return db.resolve().parent / f"{db.stem}-{kind}-{safe}-{stamp}.log"


def _cmdline(pid: int) -> list[str] | None:
    """A process's arguments, or None when they cannot be read (gone, zombie, no /proc)."""
    for _ in range(10):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if raw:
            return raw.decode(errors="replace").split("\0")
        time.sleep(0.02)  # a process that has just exec'd shows empty arguments briefly
    return None


def _names_lba(argv: list[str]) -> bool:
    return any(Path(arg).name.startswith("lba") or "lba_tui" in arg for arg in argv)


def is_lba_process(pid: int) -> bool | None:
    """Whether ``pid`` runs lba (True/False), or None where the system cannot tell.

    A recorded pid can be reused by an unrelated process after a crash, so the app refuses
    to signal a process whose arguments do not name lba. A worker that ``lba run --jobs N``
    spawned names only multiprocessing; its parent is asked instead.
    """
    if not Path("/proc/self/cmdline").exists():
        return None
    argv = _cmdline(pid)
    if argv is None:
        return None
    if _names_lba(argv):
        return True
    if not any("multiprocessing" in arg for arg in argv):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        parent = _cmdline(int(stat.rsplit(")", 1)[1].split()[1]))
    except (OSError, ValueError, IndexError):
        return False
    return bool(parent and _names_lba(parent))


@dataclass
class Launcher:
    """Starts detached lba processes and signals them; replace it in tests.

    Attributes:
        launched: every process started in this session, oldest first.
    """

    launched: list[Launch] = field(default_factory=list)
    _processes: dict[int, subprocess.Popen] = field(default_factory=dict, repr=False)

    def start(self, argv: list[str], log: Path) -> Launch:
        """Start ``argv`` in its own session, stdout and stderr into ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        launch = Launch(argv, process.pid, log)
        self.launched.append(launch)
        self._processes[process.pid] = process
        return launch

    def reap(self) -> list[Launch]:
        """The processes started here that have exited since the last call (no zombies)."""
        ended = []
        for pid, process in list(self._processes.items()):
            code = process.poll()
            if code is not None:
                del self._processes[pid]
                for launch in self.launched:
                    if launch.pid == pid:
                        launch.returncode = code
                        ended.append(launch)
        return ended

    def stop(self, pid: int, sig: int = signal.SIGINT) -> None:
        """Send ``sig`` to ``pid``.

        Raises:
            ProcessLookupError: no such process.
            PermissionError: the process belongs to someone else, or is not lba.
        """
        if is_lba_process(pid) is False:
            raise PermissionError(f"process {pid} is not an lba process; not signalled")
        os.kill(pid, sig)
