"""Where the configs of the compared runs differ: one row per key, one column per run."""

from __future__ import annotations

import json
from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import DataTable, Static

from lba_tui.reader import RunDetail, varying_keys


def differences(configs: list[dict]) -> list[tuple[str, list[Any]]]:
    """Dotted keys whose values are not the same in every config, with each config's value."""
    return varying_keys(configs, ignored=("study.path",))


class ConfigDiffPanel(Vertical):
    """A table of the config keys that differ between the compared runs."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="table-panel")
        self.rows: list[tuple[str, list[Any]]] = []
        self.run_ids: list[int] = []

    def compose(self) -> ComposeResult:
        yield Static(id="diff-note", classes="note")
        yield DataTable(id="diff-table", cursor_type="row", zebra_stripes=True)

    def show_runs(self, details: list[RunDetail]) -> None:
        """Compare these runs' resolved configs."""
        run_ids = [d.run["id"] for d in details]
        rows = differences([d.run.get("config") or {} for d in details])
        if (run_ids, rows) == (self.run_ids, self.rows):
            return  # unchanged: keep the cursor where the user left it
        self.run_ids, self.rows = run_ids, rows
        table = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_columns("key", *(f"run {i}" for i in self.run_ids))
        for key, values in self.rows:
            table.add_row(key, *("-" if v is None else json.dumps(v) for v in values))
        same = "the configs are identical" if not self.rows else f"{len(self.rows)} keys differ"
        self.query_one("#diff-note", Static).update(Content(f"{len(details)} runs: {same}"))

    def export_table(self) -> tuple[str, list[str], list[list[Any]]]:
        """The differing keys, for CSV."""
        headers = ["key", *(f"run {i}" for i in self.run_ids)]
        rows = [[key, *(json.dumps(v) for v in values)] for key, values in self.rows]
        return "config-diff", headers, rows
