"""Shared fixtures of the app's tests: a deterministic demo store, a fixed clock, a launcher
that records instead of starting processes, and helpers to drive the app with a pilot."""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest
from textual.pilot import Pilot

from lba_tui.app import LbaApp
from lba_tui.fixtures import demo_store
from lba_tui.launcher import Launch, Launcher

# Tab underlines and scrolling animate by default; tests wait for end states, not frames.
os.environ["TEXTUAL_ANIMATIONS"] = "none"

SIZES = [(80, 24), (120, 40)]
CLOCK = datetime(2025, 6, 1, 12, 0, 0)


class FakeLauncher(Launcher):
    """Records what the app would start or signal; starts and signals nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped: list[tuple[int, int]] = []

    def start(self, argv: list[str], log: Path) -> Launch:
        launch = Launch(argv, 4242 + len(self.launched), log)
        self.launched.append(launch)
        return launch

    def stop(self, pid: int, sig: int = 2) -> None:
        self.stopped.append((pid, sig))

    def reap(self) -> list[Launch]:
        return []


class RecordingApp(LbaApp):
    """The app, remembering every notification it showed."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("launcher", FakeLauncher())
        kwargs.setdefault("clock", lambda: CLOCK)
        kwargs.setdefault("ascii", False)
        super().__init__(*args, **kwargs)
        self.messages: list[str] = []

    def notify(self, message: str, **kwargs) -> None:  # type: ignore[override]
        self.messages.append(str(message))
        super().notify(message, **kwargs)


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo store, built once per session."""
    path = tmp_path_factory.mktemp("template") / "demo.db"
    return demo_store(path)


@pytest.fixture
def demo_db(demo_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the demo store as ``demo.db`` in the working directory.

    The app is given the relative name, so screens (and snapshots) show ``demo.db`` whatever
    the temporary folder is.
    """
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{demo_template}{suffix}")
        if source.exists():
            shutil.copy(source, tmp_path / f"demo.db{suffix}")
    monkeypatch.chdir(tmp_path)
    return Path("demo.db")


async def settle(pilot: Pilot, rounds: int = 6) -> None:
    """Let workers finish and their messages land (a read can start another read)."""
    for round in range(rounds):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        if round and all(w.is_finished for w in pilot.app.workers):
            break


def screen_text(app: LbaApp) -> str:
    """What the terminal shows, as plain text lines."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(segment.text for segment in strip) for strip in strips)
