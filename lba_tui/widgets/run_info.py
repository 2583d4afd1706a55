"""A run's record: where and when it ran, why it stopped, and its resolved config."""

from __future__ import annotations

import json
from typing import Any

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import Static

from lba_tui.reader import RunDetail, flatten

FIELDS = (
    ("status", "status"),
    ("error", "error"),
    ("device", "device"),
    ("host", "host"),
    ("pid", "pid"),
    ("created_at", "created"),
    ("started_at", "started"),
    ("finished_at", "finished"),
    ("heartbeat_at", "last epoch at"),
    ("seconds", "seconds"),
    ("tune_study", "tuning study"),
    ("trial_number", "trial"),
)


class RunInfoPanel(VerticalScroll):
    """The run's fields and its config, one ``key  value`` line each."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.pairs: list[tuple[str, Any]] = []

    def compose(self) -> ComposeResult:
        yield Static(id="run-info-text")

    def show_run(self, detail: RunDetail) -> None:
        """Show the run record as read last."""
        run = detail.run
        pairs: list[tuple[str, Any]] = [
            (label, run.get(key)) for key, label in FIELDS if run.get(key) is not None
        ]
        pairs += list(flatten(run.get("config") or {}).items())
        self.pairs = pairs
        width = max((len(k) for k, _ in pairs), default=0)
        lines = [
            f"{key:<{width}}  {value if isinstance(value, str) else json.dumps(value)}"
            for key, value in pairs
        ]
        self.query_one("#run-info-text", Static).update(Content("\n".join(lines)))

    def export_table(self) -> tuple[str, list[str], list[list[Any]]]:
        """The fields and config, for CSV."""
        return "config", ["key", "value"], [[k, v] for k, v in self.pairs]
