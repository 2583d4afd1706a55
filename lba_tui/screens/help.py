"""The keys screen (``?``): every key the screen below answers, and how to filter."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Label, Static

EVERYWHERE = [
    ("esc", "Back"),
    ("^p", "Command palette"),
    ("q", "Quit (training started from here keeps running)"),
]
KEY_NAMES = {
    "question_mark": "?",
    "slash": "/",
    "left_square_bracket": "[",
    "right_square_bracket": "]",
    "escape": "esc",
    "pageup": "pgup",
    "pagedown": "pgdn",
}


def key_lines(bindings: list[Binding]) -> list[tuple[str, str]]:
    """(keys, description) per binding, keys spelled in ASCII: ``up/k``, ``?``, ``^c``."""
    lines = []
    for binding in bindings:
        if not binding.description:
            continue
        keys = [KEY_NAMES.get(k.strip(), k.strip()) for k in binding.key.split(",")]
        keys = [k.replace("ctrl+", "^") for k in keys]
        lines.append(("/".join(keys), binding.description))
    return lines


class HelpScreen(ModalScreen[None]):
    """A list of keys over the current screen; any of esc, q or ? closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "close", "Close"),
        Binding("j,down", "scroll(1)", show=False),
        Binding("k,up", "scroll(-1)", show=False),
    ]

    def __init__(self, keys: list[tuple[str, str]], note: str = "") -> None:
        super().__init__()
        self.keys = keys
        self.note = note

    def compose(self) -> ComposeResult:
        seen = set()
        lines = []
        for key, description in [*self.keys, *EVERYWHERE]:
            if description in seen:
                continue
            seen.add(description)
            lines.append(f"  {key:<14} {description}")
        with VerticalScroll(id="dialog"):
            yield Label("Keys", id="dialog-title")
            yield Static(Content("\n".join(lines)), id="keys")
            if self.note:
                yield Static(Content(self.note), id="keys-note")
            yield Label("esc, q or ? closes", classes="hint")

    def action_close(self) -> None:
        self.dismiss(None)

    def action_scroll(self, step: int) -> None:
        self.query_one(VerticalScroll).scroll_relative(y=step, animate=False)
