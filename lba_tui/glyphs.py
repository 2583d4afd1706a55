"""Characters and number formats shared by the app's panels, with an ASCII fallback.

Over SSH with ``LANG=C`` the terminal (or tmux in front of it) cannot show box drawing,
braille or ``±``; every such character the app draws itself comes from :class:`Glyphs`, and
:func:`wants_ascii` decides which set a session gets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Glyphs:
    """The characters one session draws with."""

    ascii: bool
    plus_minus: str
    mark: str
    up: str
    down: str
    ellipsis: str
    rule: str
    bar: str
    cross: str
    line_marker: str
    point_marker: str


UNICODE = Glyphs(
    ascii=False,
    plus_minus="±",
    mark="●",
    up="▲",
    down="▼",
    ellipsis="…",
    rule="─",
    bar="█",
    cross="✕",
    line_marker="braille",
    point_marker="dot",
)
ASCII = Glyphs(
    ascii=True,
    plus_minus="+-",
    mark="*",
    up="^",
    down="v",
    ellipsis="~",
    rule="-",
    bar="#",
    cross="x",
    line_marker=".",
    point_marker="o",
)

# Plotext frames and ticks use box drawing; in ASCII mode the built chart is translated.
BOX_TO_ASCII = str.maketrans(
    {
        **dict.fromkeys("─━┄┈╌═", "-"),
        **dict.fromkeys("│┃┆┊╎║", "|"),
        **dict.fromkeys("┌┐└┘├┤┬┴┼╭╮╯╰╔╗╚╝╠╣╦╩╬", "+"),
        **dict.fromkeys("▁▂▃▄▅▆▇█▉▊▋▌▍▎▏▐▀", "#"),
        "•": "o",
        "·": ".",
        "…": "~",
        "—": "-",
        "–": "-",
    }
)


def wants_ascii(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the terminal's locale is not UTF-8, so the app should draw in ASCII.

    ``LBA_ASCII=1`` (or ``0``) decides outright. Otherwise the locale variables are read as
    the C library does (``LC_ALL``, then ``LC_CTYPE``, then ``LANG``), with one exception:
    Python turns a C locale into ``LC_CTYPE=C.UTF-8`` for itself (PEP 538), so that value is
    skipped when ``LANG`` says otherwise; the terminal still speaks what ``LANG`` says.
    """
    env = os.environ if environ is None else environ
    forced = env.get("LBA_ASCII", "")
    if forced in ("0", "1"):
        return forced == "1"
    for name in ("LC_ALL", "LC_CTYPE", "LANG"):
        value = env.get(name, "")
        if name == "LC_CTYPE" and value in ("C.UTF-8", "C.utf8") and env.get("LANG"):
            continue
        if value:
            return "utf8" not in value.lower().replace("-", "")
    return True


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage without the sign: ``0.7768`` -> ``77.7``."""
    return "-" if value is None else f"{100 * value:.{digits}f}"


def num(value: float | None, digits: int = 2) -> str:
    """A number with fixed decimals, or ``-`` when missing."""
    return "-" if value is None else f"{value:.{digits}f}"


def clip(text: str, width: int, glyphs: Glyphs) -> str:
    """``text`` cut to ``width`` cells, ending with an ellipsis when cut."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    return text[: width - len(glyphs.ellipsis)] + glyphs.ellipsis
