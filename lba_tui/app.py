"""``lba-tui``: watch, compare, start and stop LBA experiments from a terminal.

The app reads the SQLite store that ``lba run`` writes (``--db FILE``, else ``$LBA_DB``, else
``./lba.db``), polls it once a second for commits, and redraws only what changed. It starts
training as separate ``lba`` processes that keep running when it closes. It never imports
torch: the store and the study files are all it needs.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.scrollbar import ScrollBar, ScrollBarRender

from lba_tui.glyphs import ASCII, UNICODE, Glyphs, wants_ascii
from lba_tui.launcher import Launcher
from lba_tui.reader import StoreMissing, StoreReader, StoreUnreadable
from lba_tui.screens.base import LbaScreen, StoreChanged

POLL_SECONDS = 1.0


class AsciiScrollBarRender(ScrollBarRender):
    """Scrollbars drawn with spaces only (the default ends use block glyphs)."""

    VERTICAL_BARS = [" "] * 8
    HORIZONTAL_BARS = [" "] * 8


def default_db() -> Path:
    """``$LBA_DB`` if set, else ``./lba.db`` (the same rule as ``lba``)."""
    return Path(os.environ.get("LBA_DB") or "lba.db")


class LbaApp(App):
    """The terminal app over one store.

    Args:
        db: the store to read; it may not exist yet.
        launcher: starts and signals training processes (tests pass a fake).
        clock: the current time, for export and log file names (tests pass a fixed one).
        poll_seconds: how often to ask the store whether anything changed.
        ascii: draw with ASCII only; None decides from the locale.
        ansi: use the terminal's 16-colour palette (``main`` sets it on 16-colour terminals).
    """

    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "lba"
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-narrow"), (100, "-wide")]
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("question_mark", "help", "Keys"),
    ]

    def __init__(
        self,
        db: str | os.PathLike | None = None,
        *,
        launcher: Launcher | None = None,
        clock: Callable[[], datetime] | None = None,
        poll_seconds: float = POLL_SECONDS,
        ascii: bool | None = None,
        ansi: bool = False,
    ) -> None:
        super().__init__()
        self.db_path = Path(db) if db is not None else default_db()
        self.reader = StoreReader(self.db_path)
        self.launcher = launcher or Launcher()
        self.clock = clock or datetime.now
        self.poll_seconds = poll_seconds
        self.glyphs: Glyphs = ASCII if (wants_ascii() if ascii is None else ascii) else UNICODE
        self.ansi = ansi
        self.store_version: int | None = None
        self.store_state = "loading"  # loading, missing, unreadable, ready
        self.store_problem = ""
        self.hostname = socket.gethostname()
        self._schema_checked = False
        self._polling = False
        self.exported: list[Path] = []
        # One app per process: the scrollbar glyphs are a class setting.
        ScrollBar.renderer = AsciiScrollBarRender if self.glyphs.ascii else ScrollBarRender

    # -- lifecycle -------------------------------------------------------------------------

    def on_mount(self) -> None:
        from lba_tui.screens.runs import RunsScreen

        if self.glyphs.ascii:
            self.add_class("-ascii")
        if self.ansi:
            # 16 colours: use the terminal's own palette rather than approximating RGB.
            self.theme = "ansi-dark"
        self.push_screen(RunsScreen())
        self.set_interval(self.poll_seconds, self.poll_store)

    async def on_unmount(self) -> None:
        self.reader.close()

    def poll_store(self) -> None:
        """Ask the store whether it changed (a worker; never blocks the screen).

        A poll still running (a slow disk, a loaded machine) is left to finish rather than
        cancelled, so a poll always completes.
        """
        if not self._polling:
            self._polling = True
            self._poll()

    @work(group="poll")
    async def _poll(self) -> None:
        try:
            await self._poll_once()
        finally:
            self._polling = False

    async def _poll_once(self) -> None:
        previous = self.store_state
        try:
            version = await self.reader.fetch(StoreReader.version)
            state = "ready"
            if not self._schema_checked:
                await self.reader.fetch(StoreReader.check_schema)
                self._schema_checked = True
        except StoreMissing:
            version, state = None, "missing"
        except StoreUnreadable as exc:
            version, state = None, "unreadable"
            if self.store_problem != str(exc):
                self.notify(str(exc), severity="error", timeout=10)
            self.store_problem = str(exc)
        self.store_state = state
        for launch in self.launcher.reap():
            if launch.returncode:
                self.notify(
                    f"{' '.join(launch.argv[3:5])} exited with code {launch.returncode}; "
                    f"log: {launch.log}",
                    severity="error",
                    timeout=10,
                )
        if version != self.store_version or state != previous:
            self.store_version = version
            self.screen.post_message(StoreChanged(version))

    # -- shared actions --------------------------------------------------------------------

    def action_help(self) -> None:
        """Show the keys of the current screen (and of the focused lba widget)."""
        from lba_tui.screens.help import HelpScreen, key_lines

        if isinstance(self.screen, HelpScreen):
            self.pop_screen()
            return
        sources = [type(self.screen)]
        focused = self.screen.focused
        if focused is not None and type(focused).__module__.startswith("lba_tui"):
            sources.append(type(focused))
        sources.append(LbaApp)
        bindings = [b for source in sources for b in source.BINDINGS if isinstance(b, Binding)]
        self.push_screen(HelpScreen(key_lines(bindings), getattr(self.screen, "HELP", "")))

    def export_csv(self, what: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Write a table to ``<store folder>/lba-<what>-<time>.csv`` (in a thread), say where."""
        stamp = self.clock().strftime("%Y%m%d-%H%M%S")
        path = self.db_path.resolve().parent / f"lba-{what}-{stamp}.csv"
        self._write_csv(path, list(headers), [list(r) for r in rows])

    @work(thread=True, group="export")
    def _write_csv(self, path: Path, headers: list[str], rows: list[list[Any]]) -> None:
        # engine.report writes RFC 4180 like `lba export`; importing it loads sqlite-utils,
        # which is why this runs on a thread rather than the event loop.
        from engine.report import write_csv

        try:
            count = write_csv(path, headers, rows)
        except OSError as exc:
            self.call_from_thread(
                self.notify, f"cannot write {path}: {exc.strerror}", severity="error"
            )
            return
        self.exported.append(path)
        self.call_from_thread(
            self.notify, f"wrote {count} rows to {path}", title="CSV export", timeout=8
        )

    def get_key_display(self, binding: Binding) -> str:
        if self.glyphs.ascii and not binding.key_display:
            key = binding.key.split(",")[0]
            names = {"question_mark": "?", "slash": "/", "space": "space", "escape": "esc"}
            return names.get(key, key.replace("ctrl+", "^"))
        return super().get_key_display(binding)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if isinstance(screen, LbaScreen):
            yield from screen.commands()
        yield SystemCommand("Keys", "Show the keys of this screen", self.action_help)


def main(argv: list[str] | None = None) -> None:
    """The ``lba-tui`` console script."""
    parser = argparse.ArgumentParser(
        prog="lba-tui",
        description="Watch, compare, start and stop lba experiments in the terminal.",
    )
    parser.add_argument(
        "--db", type=Path, default=None, help="the store (default: $LBA_DB, else ./lba.db)"
    )
    glyphs = parser.add_mutually_exclusive_group()
    glyphs.add_argument("--ascii", action="store_true", default=None, help="draw in ASCII only")
    glyphs.add_argument(
        "--unicode", dest="ascii", action="store_false", help="draw with Unicode glyphs"
    )
    args = parser.parse_args(argv)
    from rich.console import Console

    sixteen = Console(force_terminal=True).color_system == "standard"
    LbaApp(args.db, ascii=args.ascii, ansi=sixteen).run()


if __name__ == "__main__":
    main()
