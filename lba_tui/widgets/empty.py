"""What the app shows instead of runs: how to start when the store is missing or empty."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static


def start_hint(db: str, state: str, problem: str = "") -> str:
    """The text for a store that is ``missing``, ``unreadable``, ``empty`` or ``loading``."""
    if state == "loading":
        return f"Reading {db} ..."
    if state == "unreadable":
        return f"Cannot read {db}:\n{problem}\n\nOpen another store with: lba-tui --db FILE"
    head = f"No store at {db} yet." if state == "missing" else f"No runs in {db} yet."
    return (
        f"{head}\n\n"
        "Start training and the runs appear here as they go, e.g. the quickstart study:\n\n"
        f"    lba run --db {db}\n\n"
        "or another study:\n\n"
        f"    lba run studies/paper-fmnist.toml --db {db}\n\n"
        "Press r to start one from here, ? for the keys, q to quit."
    )


class EmptyStore(Static):
    """A centred note with the commands that fill the store."""

    DEFAULT_CSS = """
    EmptyStore {
        width: 1fr;
        height: 1fr;
        content-align: center middle;
        color: $text-muted;
        padding: 1 2;
    }
    """

    def show_state(self, db: str, state: str, problem: str = "") -> None:
        """Explain ``state`` for the store at ``db``."""
        self.update(Content(start_hint(db, state, problem)))
