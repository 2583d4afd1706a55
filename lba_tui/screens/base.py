"""What every screen of the app shares: the store-changed message and reload on return."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from textual.app import ComposeResult, SystemCommand
from textual.content import Content
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Static

if TYPE_CHECKING:
    from lba_tui.app import LbaApp


class StoreChanged(Message):
    """Another process committed to the store (``version`` is its ``data_version``)."""

    def __init__(self, version: int | None) -> None:
        super().__init__()
        self.version = version


class TitleBar(Static):
    """The top line: app, store path, what this screen shows, and a live note."""

    DEFAULT_CSS = """
    TitleBar {
        dock: top;
        height: 1;
        background: $panel;
        color: $text;
        padding: 0 1;
    }
    """

    note: reactive[str] = reactive("")

    def __init__(self, where: str, db: str) -> None:
        super().__init__()
        self.where = where
        self.db = db

    def render(self) -> Content:
        text = f"lba  {self.where}  [{self.db}]"
        return Content(f"{text}  {self.note}" if self.note else text)


class LbaScreen(Screen):
    """A screen that reads the store: it reloads when the store changes or when it returns.

    Subclasses implement :meth:`reload`, which starts a worker; the worker posts its rows back
    as a message, so the screen never waits on the database.
    """

    TITLE_WHERE = ""
    HELP = ""

    def __init__(self) -> None:
        super().__init__()
        self.seen_version: int | None = -1

    @property
    def lba(self) -> LbaApp:
        """The app, typed."""
        return cast("LbaApp", self.app)

    def title_bar(self) -> ComposeResult:
        """The screen's title line."""
        yield TitleBar(self.TITLE_WHERE, str(self.lba.db_path))

    def commands(self) -> Iterable[SystemCommand]:
        """Entries this screen adds to the command palette."""
        return ()

    def on_screen_resume(self) -> None:
        if self.seen_version == -1 or self.seen_version != self.lba.store_version:
            self.seen_version = self.lba.store_version
            self.reload()

    def on_store_changed(self, message: StoreChanged) -> None:
        if self.seen_version != message.version or message.version is None:
            self.seen_version = message.version
            self.reload()

    def reload(self) -> None:
        """Read what this screen shows, in a worker; called on changes and on return."""
