"""Pure pieces of the widgets: the filter language, sorting, glyph choice, tuning maths."""

from __future__ import annotations

import math

from lba_tui.glyphs import ASCII, BOX_TO_ASCII, clip, wants_ascii
from lba_tui.reader import RunRow, TrialRecord, TuneData
from lba_tui.widgets.run_table import parse_filter, sort_rows
from lba_tui.widgets.tune_importance import importances
from lba_tui.widgets.tune_pareto import pareto_front


def row(id: int, study="paper", method="lba", depth=3, status="done", test=0.8) -> RunRow:
    return RunRow(
        id,
        study,
        method,
        depth,
        0,
        status,
        5,
        5,
        0.85,
        test,
        0.05,
        1.5,
        None,
        None,
        f"{method} n={depth}",
    )


ROWS = [
    row(1),
    row(2, method="none", test=0.83),
    row(3, study="quick", depth=5, status="running", test=None),
    row(4, method="l2", depth=7, test=0.79),
]


def ids(text: str) -> list[int]:
    keep = parse_filter(text)
    return [r.id for r in ROWS if keep(r)]


def test_filter_words_fields_comparisons_and_negation() -> None:
    assert ids("") == [1, 2, 3, 4]
    assert ids("quick") == [3]
    assert ids("method:lba") == [1, 3]
    assert ids("n:3,7") == [1, 2, 4]
    assert ids("test>80") == [2]
    assert ids("test<=80") == [1, 4]
    assert ids("-status:done") == [3]
    assert ids("lba -study:quick") == [1]
    assert ids("test>abc") == []


def test_sorting_puts_missing_values_last_both_ways() -> None:
    assert [r.id for r in sort_rows(ROWS, "test", False)] == [4, 1, 2, 3]
    assert [r.id for r in sort_rows(ROWS, "test", True)] == [2, 1, 4, 3]
    assert [r.id for r in sort_rows(ROWS, "id", True)] == [4, 3, 2, 1]


def test_ascii_is_chosen_from_the_locale_as_the_terminal_sees_it() -> None:
    assert wants_ascii({"LANG": "C"})
    assert wants_ascii({"LANG": "C", "LC_CTYPE": "C.UTF-8"})  # Python's own coercion
    assert not wants_ascii({"LANG": "en_US.UTF-8", "LC_CTYPE": "C.UTF-8"})
    assert not wants_ascii({"LC_ALL": "C.UTF-8", "LANG": "C"})
    assert wants_ascii({"LANG": "en_US.UTF-8", "LBA_ASCII": "1"})
    assert wants_ascii({})


def test_box_drawing_translates_to_ascii_one_for_one() -> None:
    frame = "┌──┐│•│└──┘▇"
    text = frame.translate(BOX_TO_ASCII)
    assert text == "+--+|o|+--+#" and len(text) == len(frame)
    assert clip("paper-fmnist", 8, ASCII) == "paper-f~"


def trial(number, state, value, **params) -> TrialRecord:
    return TrialRecord(number, state, [value], params)


def test_importance_is_the_share_of_variance_a_parameter_explains() -> None:
    data = TuneData(
        "t",
        "runs",
        ["val_acc"],
        ["maximize"],
        [
            trial(0, "COMPLETE", 0.9, opt="sgd", width=20),
            trial(1, "COMPLETE", 0.9, opt="sgd", width=50),
            trial(2, "COMPLETE", 0.5, opt="adam", width=20),
            trial(3, "COMPLETE", 0.5, opt="adam", width=50),
            trial(4, "PRUNED", None, opt="adam", width=20),
        ],
    )
    values = importances(data)
    assert math.isclose(values["opt"], 1.0) and math.isclose(values["width"], 0.0)


def test_pareto_front_keeps_the_undominated_points() -> None:
    points = [(1.0, 70.0), (2.0, 80.0), (2.5, 75.0), (3.0, 81.0), (1.5, 60.0)]
    assert pareto_front(points) == [(1.0, 70.0), (2.0, 80.0), (3.0, 81.0)]
    assert pareto_front(points, ("maximize", "maximize")) == [(3.0, 81.0)]
