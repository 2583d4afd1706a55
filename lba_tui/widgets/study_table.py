"""The paper-style table of a study: methods x depth, mean ± std over seeds, published values."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import DataTable, Static

from lba_tui.glyphs import UNICODE, Glyphs
from lba_tui.reader import StudyTable


class StudyTablePanel(Vertical):
    """The table ``lba table STUDY`` prints, as a scrollable grid; [ and ] switch study."""

    def __init__(self, glyphs: Glyphs = UNICODE, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="table-panel")
        self.glyphs = glyphs
        self.table: StudyTable | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="study-note", classes="note")
        yield DataTable(id="study-grid", cursor_type="row", zebra_stripes=True)

    def show_table(self, table: StudyTable, studies: list[str]) -> None:
        """Show one study's table; ``studies`` are the others [ and ] step through."""
        if self.table == table:
            return  # unchanged: keep the cursor where the user left it
        self.table = table
        grid = self.query_one(DataTable)
        grid.clear(columns=True)
        note = self.query_one("#study-note", Static)
        position = (
            f"{studies.index(table.study) + 1}/{len(studies)}" if table.study in studies else ""
        )
        head = f"study {table.study} {position}  ([ ] other study)"
        if not table.rows:
            note.update(Content(f"{head}\nno finished run in this study yet"))
            return
        pm = self.glyphs.plus_minus
        note.update(Content(f"{head}\naccuracy %, mean {pm} std over seeds (published value)"))
        grid.add_columns(*table.headers)
        for cells in table.cells:
            grid.add_row(*cells)

    def export_table(self) -> tuple[str, list[str], list[list[Any]]]:
        """The table as numbers (mean, std, published per metric), for CSV."""
        if self.table is None:
            return "study", [], []
        return f"study-{self.table.study}", self.table.csv_headers, self.table.csv_rows
