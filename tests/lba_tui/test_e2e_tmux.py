"""End to end in a real terminal: lba-tui runs in tmux while `lba run` trains Fashion-MNIST in
another process; the test types keys and reads the screen with capture-pane.

The run is long (EPOCHS) on purpose: the test watches a few epochs land, then stops the run
from the app (x, y), which sends SIGINT to the trainer, and sees it marked interrupted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
EPOCHS = 300

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (make test-system)"),
]


class Terminal:
    """A tmux server of our own (its own socket) with one window running a command."""

    def __init__(self, name: str, command: str, env: dict[str, str], size=(120, 40)) -> None:
        self.socket = f"lba-e2e-{os.getpid()}-{name}"
        self.tmux(
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            str(size[0]),
            "-y",
            str(size[1]),
            command,
            env=env,
        )
        self.tmux("set-option", "-t", name, "remain-on-exit", "on")
        self.name = name

    def tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        return result.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.screen())
            if match:
                return match
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} never showed; the screen:\n{self.screen()}")

    def dead(self) -> bool:
        return self.tmux("display-message", "-p", "-t", self.name, "#{pane_dead}").strip() == "1"

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False
        )


def app_env(tmp_path: Path, lang: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LBA_", "TEXTUAL"))}
    env.update(LANG=lang, TERM="xterm-256color", HOME=str(tmp_path))
    return env


def app_command(db: Path) -> str:
    return f"{sys.executable} -m lba_tui.app --db {db}"


@pytest.mark.skipif(not (ROOT / "lba_tui" / "cli.py").exists(), reason="needs the lba CLI")
@pytest.mark.skipif(not DATA.exists(), reason="needs Fashion-MNIST (make data)")
def test_new_epochs_appear_on_screen_while_lba_run_trains(tmp_path: Path) -> None:
    db = tmp_path / "e2e.db"
    terminal = Terminal("watch", app_command(db), app_env(tmp_path, "C.UTF-8"))
    trainer = None
    try:
        terminal.wait_for(r"No store at .*e2e\.db")
        trainer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lba_tui.cli",
                "run",
                "quickstart",
                "--set",
                f"train.epochs={EPOCHS}",
                "--set",
                'grid.method=["lba"]',
                "--db",
                str(db),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        # The runs table: the run's epoch column counts up while it trains.
        seen: list[int] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(set(seen)) < 3:  # data loading included
            match = re.search(
                rf"quickstart\s+lba\s+3\s+0\s+\w+\s+(\d+)/{EPOCHS}", terminal.screen()
            )
            if match:
                seen.append(int(match.group(1)))
            time.sleep(0.2)
        assert len(set(seen)) >= 3, f"epochs seen: {seen}\n{terminal.screen()}"
        assert seen == sorted(seen)

        # Enter opens the run; its summary line and curves follow the training too.
        terminal.keys("Enter")
        first = int(terminal.wait_for(rf"epoch (\d+)/{EPOCHS}").group(1))
        terminal.wait_for("train loss")
        later = first
        deadline = time.monotonic() + 30
        while later <= first and time.monotonic() < deadline:
            time.sleep(0.3)
            later = int(terminal.wait_for(rf"epoch (\d+)/{EPOCHS}").group(1))
        assert later > first

        # x asks, y sends SIGINT to the trainer's pid; the trainer marks the run interrupted.
        terminal.keys("x")
        terminal.wait_for(rf"Stop run 1 .*pid {trainer.pid}")
        terminal.keys("y")
        assert trainer.wait(timeout=60) == 130
        terminal.wait_for(r"run 1 .*interrupted", timeout=10)
        terminal.keys("Escape")
        terminal.wait_for(rf"interr\s+\d+/{EPOCHS}")

        terminal.keys("q")
        deadline = time.monotonic() + 10
        while not terminal.dead() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert terminal.dead()
        assert "lba  runs" not in terminal.screen()  # the alternate screen is gone
    finally:
        if trainer is not None and trainer.poll() is None:
            trainer.kill()
        terminal.close()


def test_lang_c_draws_ascii_only_and_q_restores_the_terminal(tmp_path: Path) -> None:
    from lba_tui.fixtures import demo_store

    db = demo_store(tmp_path / "demo.db", tuning=False)
    terminal = Terminal("ascii", app_command(db), app_env(tmp_path, "C"))
    try:
        terminal.wait_for(r"paper-fmnist")
        terminal.keys("j", "Enter")
        terminal.wait_for("train loss")
        screen = terminal.screen()
        assert screen.isascii(), screen
        # Escape and the next key go separately: sent together they read as Alt+key.
        terminal.keys("Escape")
        terminal.wait_for(r"lba  runs")
        terminal.keys("?")
        terminal.wait_for("Keys")
        assert terminal.screen().isascii()
        terminal.keys("Escape")
        time.sleep(0.3)
        terminal.keys("q")
        deadline = time.monotonic() + 10
        while not terminal.dead() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert terminal.dead()
    finally:
        terminal.close()
