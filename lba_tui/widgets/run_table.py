"""The runs table: every run of the store in one scrolling, sortable, filterable list.

A store can hold 10,000 runs. Textual's ``DataTable`` keeps a renderable per cell and took
seconds to show that many, so this table keeps plain tuples and draws only the lines on screen
(the Line API): a refresh costs the rows that changed plus the visible lines, whatever the
store's size. Filtering and sorting are list operations on the rows.

Filter syntax (typed after ``/``): words match the study, method, status or label;
``field:value`` matches one field (``study:paper``, ``status:running``, ``n:3,5``);
``field>x`` / ``field<x`` compare numbers, accuracies in percent (``test>80``, ``lb<2``); a
leading ``-`` negates a term (``-status:done``).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from lba_tui.glyphs import UNICODE, Glyphs, clip, num, pct
from lba_tui.reader import RunRow

STATUS_LABEL = {"interrupted": "interr", "running": "running"}


@dataclass(frozen=True)
class Column:
    """One column: the RunRow field it shows and sorts by, its header and its widest width."""

    key: str
    label: str
    width: int
    right: bool
    fmt: Callable[[Any], str] = str

    def text(self, row: RunRow) -> str:
        """The cell of ``row`` in this column."""
        if self.key == "epoch":
            return f"{row.epoch}/{row.epochs}"
        return self.fmt(getattr(row, self.key))

    def natural_width(self, rows: list[RunRow]) -> int:
        """The width of the widest cell of ``rows``, found from their distinct values."""
        if not rows:
            return len(self.label)
        index = RunRow._fields.index(self.key)
        values = set(map(operator.itemgetter(index), rows))
        if self.key == "epoch":
            epochs = set(map(operator.attrgetter("epochs"), rows))
            return len(str(max(values))) + 1 + len(str(max(epochs)))
        present = [v for v in values if v is not None]
        if present and not isinstance(present[0], str):
            # Numbers: the widest text belongs to the smallest or the largest value.
            present = [min(present), max(present)]
        width = max((len(self.fmt(v)) for v in present), default=0)
        return max(width, 1 if None in values else 0)


def _status(status: str) -> str:
    return STATUS_LABEL.get(status, status)


COLUMNS: tuple[Column, ...] = (
    Column("id", "id", 6, True),
    Column("study", "study", 0, False),
    Column("method", "method", 8, False),
    Column("depth", "n", 2, True),
    Column("seed", "seed", 4, True),
    Column("status", "status", 7, False, _status),
    Column("epoch", "epoch", 9, True),
    Column("train", "train", 5, True, pct),
    Column("test", "test", 5, True, pct),
    Column("gap", "gap", 5, True, pct),
    Column("log10_lb", "logLB", 5, True, num),
    Column("fgsm", "FGSM", 5, True, pct),
    Column("pgd", "PGD", 5, True, pct),
)
COLUMN_KEYS = tuple(c.key for c in COLUMNS)
STUDY = COLUMN_KEYS.index("study")
STUDY_WIDTH = (6, 18)  # the study column shrinks to fit the screen, and grows to this

# Filter field names, with the short forms a user types.
ALIASES = {"n": "depth", "lb": "log10_lb", "logLB": "log10_lb", "loglb": "log10_lb"}
PERCENT_FIELDS = {"train", "test", "gap", "fgsm", "pgd"}
TEXT_FIELDS = {"study", "method", "status", "label"}
NUMBER_FIELDS = {"id", "depth", "seed", "epoch", "epochs", "log10_lb"} | PERCENT_FIELDS
TERM = re.compile(r"^(-?)([A-Za-z_0-9]+)(:|>=|<=|>|<|=)(.+)$")
COMPARE = {">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le}


def parse_filter(text: str) -> Callable[[RunRow], bool]:
    """A predicate for the filter syntax of this module; an empty filter keeps every run."""
    tests: list[Callable[[RunRow], bool]] = []
    for token in text.split():
        tests.append(_term(token))
    if not tests:
        return lambda row: True
    return lambda row: all(test(row) for test in tests)


def _term(token: str) -> Callable[[RunRow], bool]:
    match = TERM.match(token)
    field = ALIASES.get(match.group(2), match.group(2)) if match else ""
    if not match or field not in TEXT_FIELDS | NUMBER_FIELDS:
        negate = token.startswith("-") and len(token) > 1
        word = token[1:].lower() if negate else token.lower()

        def words(row: RunRow) -> bool:
            hay = f"{row.study} {row.method} {row.status} {row.label}".lower()
            return (word in hay) != negate

        return words
    negate, op, value = match.group(1) == "-", match.group(3), match.group(4)
    index = RunRow._fields.index(field)
    scale = 100.0 if field in PERCENT_FIELDS else 1.0
    test: Callable[[RunRow], bool]
    if op in COMPARE:
        try:
            bound = float(value)
        except ValueError:
            return lambda row: False
        compare = COMPARE[op]

        def test(row: RunRow) -> bool:
            cell = row[index]
            return cell is not None and compare(cell * scale, bound)

    elif field in TEXT_FIELDS:
        wanted = [v.lower() for v in value.split(",")]

        def test(row: RunRow) -> bool:
            cell = (row[index] or "").lower()
            return any(w in cell for w in wanted)

    else:
        try:
            numbers = [float(v) for v in value.split(",")]
        except ValueError:
            return lambda row: False

        def test(row: RunRow) -> bool:
            cell = row[index]
            return cell is not None and any(abs(cell * scale - n) < 1e-9 for n in numbers)

    if negate:
        return lambda row: not test(row)
    return test


def sort_rows(rows: Iterable[RunRow], key: str, reverse: bool) -> list[RunRow]:
    """Rows sorted by one field; missing values go last in either direction, ties by id."""
    rows = list(rows)
    if key == "id":
        rows.sort(key=operator.itemgetter(0), reverse=reverse)
        return rows
    index = RunRow._fields.index(key)
    present = [r for r in rows if r[index] is not None]
    missing = [r for r in rows if r[index] is None]
    present.sort(key=operator.itemgetter(index, 0), reverse=reverse)
    return present + missing


class RunTable(ScrollView, can_focus=True):
    """Runs, one per line, with a cursor, marks for comparing, a sort column and a filter."""

    DEFAULT_CSS = """
    RunTable {
        height: 1fr;
        scrollbar-size-vertical: 1;
        background: $surface;
    }
    RunTable > .run-table--header { text-style: bold; background: $panel; color: $text; }
    RunTable > .run-table--cursor { background: $primary 40%; }
    RunTable:focus > .run-table--cursor { background: $primary; color: $text; }
    RunTable > .run-table--marked { color: $accent; text-style: bold; }
    RunTable > .run-table--running { color: $success; text-style: bold; }
    RunTable > .run-table--queued { color: $text-muted; }
    RunTable > .run-table--failed { color: $error; }
    RunTable > .run-table--interrupted { color: $warning; }
    RunTable > .run-table--pruned { color: $text-muted; }
    RunTable > .run-table--empty { color: $text-muted; text-style: italic; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "run-table--header",
        "run-table--cursor",
        "run-table--marked",
        "run-table--running",
        "run-table--queued",
        "run-table--failed",
        "run-table--interrupted",
        "run-table--pruned",
        "run-table--empty",
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor_up", "Up", show=False),
        Binding("down,j", "cursor_down", "Down", show=False),
        Binding("pageup,ctrl+b", "page_up", "Page up", show=False),
        Binding("pagedown,ctrl+f", "page_down", "Page down", show=False),
        Binding("home,g", "first", "First", show=False),
        Binding("end,G", "last", "Last", show=False),
        Binding("enter", "open", "Open", show=True),
        Binding("space", "mark", "Mark", show=True),
    ]

    cursor: reactive[int] = reactive(0, always_update=True)

    class Opened(Message):
        """Enter (or a double click) on a run."""

        def __init__(self, run_id: int) -> None:
            super().__init__()
            self.run_id = run_id

    class Highlighted(Message):
        """The cursor moved to another run (None when the table is empty)."""

        def __init__(self, run_id: int | None) -> None:
            super().__init__()
            self.run_id = run_id

    class MarksChanged(Message):
        """The set of runs marked for comparison changed."""

        def __init__(self, run_ids: tuple[int, ...]) -> None:
            super().__init__()
            self.run_ids = run_ids

    class Sorted(Message):
        """The sort column or direction changed."""

        def __init__(self, key: str, reverse: bool) -> None:
            super().__init__()
            self.key = key
            self.reverse = reverse

    def __init__(
        self,
        glyphs: Glyphs = UNICODE,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.glyphs = glyphs
        self.rows: dict[int, RunRow] = {}
        self.view: list[RunRow] = []
        self.marked: list[int] = []
        self.sort_key = "id"
        self.reverse = False
        self.filter_text = ""
        self._predicate = parse_filter("")
        self._cells: dict[int, list[str]] = {}
        self._widths: list[int] = [c.width for c in COLUMNS]
        self._natural: list[int] = self._label_widths()
        self._last_highlight: int | None = -1

    # -- data ------------------------------------------------------------------------------

    def set_rows(self, rows: list[RunRow]) -> int:
        """Replace the table's runs with ``rows``. Returns how many changed, came or went."""
        seen = {row.id for row in rows}
        gone = [run_id for run_id in self.rows if run_id not in seen]
        for run_id in gone:
            del self.rows[run_id]
            self._cells.pop(run_id, None)
        if gone:
            self.marked = [m for m in self.marked if m in self.rows]
        return self.update_rows(rows, remeasure=True) + len(gone)

    def update_rows(self, rows: list[RunRow], *, remeasure: bool = False) -> int:
        """Add or update ``rows``, leaving the others as they are. Returns how many changed."""
        known = self.rows
        changed = [row for row in rows if known.get(row.id) != row]
        for row in changed:
            known[row.id] = row
            self._cells.pop(row.id, None)
        if remeasure:
            everything = list(known.values())
            self._natural = [
                max(label, c.natural_width(everything))
                for label, c in zip(self._label_widths(), COLUMNS)
            ]
        elif changed:
            self._natural = [
                max(n, c.natural_width(changed)) for n, c in zip(self._natural, COLUMNS)
            ]
        if changed or remeasure:
            self._rebuild()
        return len(changed)

    @property
    def active_ids(self) -> list[int]:
        """Runs that were queued or running at the last read (they may have changed since)."""
        return [r.id for r in self.rows.values() if r.status in ("queued", "running")]

    @property
    def max_id(self) -> int:
        """The largest run id in the table (0 when empty)."""
        return max(self.rows, default=0)

    @staticmethod
    def _label_widths() -> list[int]:
        # The id column keeps room for the sort arrow: ids are often one or two digits.
        return [len(c.label) + (c.key == "id") for c in COLUMNS]

    def set_filter(self, text: str) -> None:
        """Show only the runs matching ``text`` (see the module docstring for the syntax)."""
        self.filter_text = text
        self._predicate = parse_filter(text)
        self._rebuild()

    def sort_by(self, key: str, reverse: bool | None = None) -> None:
        """Sort by a column key; ``reverse`` None keeps the direction."""
        self.sort_key = key
        if reverse is not None:
            self.reverse = reverse
        self._rebuild()
        self.post_message(self.Sorted(self.sort_key, self.reverse))

    def cycle_sort(self, step: int = 1) -> None:
        """Sort by the next (or previous) column."""
        index = (COLUMN_KEYS.index(self.sort_key) + step) % len(COLUMN_KEYS)
        self.sort_by(COLUMN_KEYS[index])

    def toggle_reverse(self) -> None:
        """Flip the sort direction."""
        self.sort_by(self.sort_key, not self.reverse)

    def _rebuild(self) -> None:
        current = self.current_id
        rows = self.rows.values()
        kept = [r for r in rows if self._predicate(r)] if self.filter_text else rows
        self.view = sort_rows(kept, self.sort_key, self.reverse)
        self._layout_columns()
        if current is not None:
            for index, row in enumerate(self.view):
                if row.id == current:
                    self.cursor = index
                    break
            else:
                self.cursor = min(self.cursor, max(len(self.view) - 1, 0))
        else:
            self.cursor = 0
        self.refresh()

    @property
    def current_id(self) -> int | None:
        """The id of the run under the cursor."""
        if 0 <= self.cursor < len(self.view):
            return self.view[self.cursor].id
        return None

    def select_id(self, run_id: int) -> bool:
        """Move the cursor to a run if it is shown."""
        for index, row in enumerate(self.view):
            if row.id == run_id:
                self.cursor = index
                return True
        return False

    def table_text(self) -> tuple[list[str], list[list[str]]]:
        """Headers and cells of the shown rows, in the order shown (for CSV export)."""
        headers = [c.label for c in COLUMNS]
        return headers, [list(self._cells_of(r)) for r in self.view]

    def _cells_of(self, row: RunRow) -> list[str]:
        # Cells are formatted when first drawn, so 10,000 rows cost only the visible ones.
        cells = self._cells.get(row.id)
        if cells is None:
            cells = self._cells[row.id] = [c.text(row) for c in COLUMNS]
        return cells

    # -- layout and drawing ----------------------------------------------------------------

    def _layout_columns(self) -> None:
        # Each column is as wide as its widest cell (up to its limit); the study column takes
        # what is left of the screen, so 80 cells show every column.
        widths = [min(n, c.width) if c.width else 0 for n, c in zip(self._natural, COLUMNS)]
        fixed = sum(widths) + len(COLUMNS) + 1  # the mark, and a space before each column
        room = (self.scrollable_content_region.width or 80) - fixed
        natural = min(self._natural[STUDY], STUDY_WIDTH[1])
        widths[STUDY] = max(STUDY_WIDTH[0], min(natural, room))
        self._widths = widths
        self.virtual_size = Size(fixed + widths[STUDY], len(self.view) + 1)

    def on_resize(self, event: events.Resize) -> None:
        self._layout_columns()

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base = self.rich_style
        if y == 0:
            strip = self._header_strip()
        else:
            index = scroll_y + y - 1
            if index < len(self.view):
                strip = self._row_strip(index)
            elif index == 0:
                text = "  no runs match the filter" if self.rows else "  no runs yet"
                style = self.get_component_rich_style("run-table--empty")
                strip = Strip([Segment(text, style)])
            else:
                strip = Strip([])
        return strip.crop_extend(scroll_x, scroll_x + width, base)

    def _header_strip(self) -> Strip:
        style = self.get_component_rich_style("run-table--header")
        parts = [" "]
        for column, width in zip(COLUMNS, self._widths):
            label = column.label
            if column.key == self.sort_key:
                arrow = self.glyphs.down if self.reverse else self.glyphs.up
                label = (label if len(label) < width else label[: width - 1]) + arrow
            parts.append(label.rjust(width) if column.right else label.ljust(width))
        text = " ".join(parts)
        return Strip([Segment(text, style)]).extend_cell_length(self.virtual_size.width, style)

    def _row_strip(self, index: int) -> Strip:
        row = self.view[index]
        cells = self._cells_of(row)
        marked = row.id in self.marked
        base = Style()
        if marked:
            base += self.get_component_rich_style("run-table--marked", partial=True)
        if index == self.cursor:
            base += self.get_component_rich_style("run-table--cursor", partial=True)
        segments = [Segment(self.glyphs.mark if marked else " ", base), Segment(" ", base)]
        for i, (column, width, cell) in enumerate(zip(COLUMNS, self._widths, cells)):
            text = clip(cell, width, self.glyphs)
            text = text.rjust(width) if column.right else text.ljust(width)
            style = base
            if column.key == "status":
                status = self.get_component_rich_style(
                    f"run-table--{row.status}", partial=True, default=Style()
                )
                style = base + status if index != self.cursor else base
            segments.append(Segment(text, style))
            if i < len(COLUMNS) - 1:
                segments.append(Segment(" ", base))
        strip = Strip(segments)
        return strip.extend_cell_length(self.virtual_size.width, base)

    # -- cursor ----------------------------------------------------------------------------

    def validate_cursor(self, value: int) -> int:
        return max(0, min(value, len(self.view) - 1)) if self.view else 0

    def watch_cursor(self, value: int) -> None:
        body = max(self.size.height - 1, 1)
        top = self.scroll_offset.y
        if value < top:
            self.scroll_to(y=value, animate=False, immediate=True)
        elif value >= top + body:
            self.scroll_to(y=value - body + 1, animate=False, immediate=True)
        self.refresh()
        current = self.current_id
        if current != self._last_highlight:
            self._last_highlight = current
            self.post_message(self.Highlighted(current))

    def action_cursor_up(self) -> None:
        self.cursor -= 1

    def action_cursor_down(self) -> None:
        self.cursor += 1

    def action_page_up(self) -> None:
        self.cursor -= max(self.size.height - 2, 1)

    def action_page_down(self) -> None:
        self.cursor += max(self.size.height - 2, 1)

    def action_first(self) -> None:
        self.cursor = 0

    def action_last(self) -> None:
        self.cursor = len(self.view) - 1

    def action_open(self) -> None:
        if self.current_id is not None:
            self.post_message(self.Opened(self.current_id))

    def action_mark(self) -> None:
        """Mark (or unmark) the run under the cursor for comparison, then move down."""
        run_id = self.current_id
        if run_id is None:
            return
        if run_id in self.marked:
            self.marked.remove(run_id)
        else:
            self.marked.append(run_id)
        self.post_message(self.MarksChanged(tuple(self.marked)))
        self.cursor += 1
        self.refresh()

    def set_marks(self, run_ids: Iterable[int]) -> None:
        """Mark exactly these runs (ids not in the table are dropped)."""
        self.marked = [run_id for run_id in run_ids if run_id in self.rows]
        self.post_message(self.MarksChanged(tuple(self.marked)))
        self.refresh()

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:
            self._click_header(offset.x + self.scroll_offset.x)
            return
        index = self.scroll_offset.y + offset.y - 1
        if 0 <= index < len(self.view):
            self.cursor = index
            if event.chain >= 2:
                self.action_open()

    def _click_header(self, x: int) -> None:
        left = 2
        for column, width in zip(COLUMNS, self._widths):
            if left <= x < left + width + 1:
                if column.key == self.sort_key:
                    self.toggle_reverse()
                else:
                    self.sort_by(column.key, False)
                return
            left += width + 1
