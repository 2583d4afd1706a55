"""The paper-style table of a study, and its exports (CSV, Markdown, LaTeX).

Rows are methods x depth; each metric is the mean and standard deviation over the seeds of the
finished runs of that cell, with the published value beside it where the study has one. All
accuracies are percentages here (the store keeps fractions). This module imports no torch.

CSV follows RFC 4180 (comma, double quotes, CRLF line ends, UTF-8). A missing value is an
empty field; non-finite numbers are written ``nan``, ``inf`` and ``-inf``, which pandas and
spreadsheets read back as floats.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from engine.store import EVALUATION_TABLES, Store

# Lower is better for these; higher for every accuracy.
LOWER_IS_BETTER = ("gap", "log10_lb")
# Neither: a measured lower bound of the Lipschitz constant is not a score.
NOT_RANKED = ("log10_low",)

# `lba eval` results summarized in the table (the full rows are in the raw exports): mean
# accuracy over every natural shift and severity, worst-case lighting accuracy, certified
# accuracy (residual bound) and l2 PGD at one radius, l-inf PGD with restarts, and the largest
# empirical lower bound of the Lipschitz constant.
TABLE_RADIUS = 0.5
_RADIUS = f"{TABLE_RADIUS:g}".removeprefix("0")
EVAL_COLUMNS = {
    "shift": "Shift",
    "light": "Light WC",
    f"cert@{TABLE_RADIUS:g}": f"Cert {_RADIUS}",
    f"l2pgd@{TABLE_RADIUS:g}": f"L2PGD {_RADIUS}",
    "rob:pgd": "rPGD",
    "log10_low": "log10 low",
}


def metric_key(protocol: str, attack: str, eps: float) -> str:
    """The column name of an attack result: ``fgsm@0.01`` (paper), ``std:pgd@0.1`` (standard)."""
    prefix = "" if protocol == "paper" else "std:"
    return f"{prefix}{attack}@{eps:g}"


def run_metrics(run: dict, attacks: Iterable[dict]) -> dict[str, float]:
    """One run's table metrics: train, test, gap, log10_lb and every attack, in percent."""
    metrics: dict[str, float] = {}
    for key, column, scale in (
        ("train", "train_acc", 100.0),
        ("test", "test_acc", 100.0),
        ("gap", "gap", 100.0),
        ("log10_lb", "log10_lb", 1.0),
    ):
        if run.get(column) is not None:
            metrics[key] = run[column] * scale
    for row in attacks:
        # `lba eval`'s own protocols are summarized by evaluation_metrics instead.
        if row["attack"] == "clean" or row["protocol"] not in ("paper", "standard"):
            continue
        metrics[metric_key(row["protocol"], row["attack"], row["eps"])] = 100.0 * row["accuracy"]
    return metrics


def _summary(values: list[float]) -> tuple[float, float, int]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std, len(values)


def _reference_metrics(entry: dict, fgsm_eps: Sequence[float], pgd_eps: float | None) -> dict:
    ref: dict[str, float] = {}
    for key in ("train", "test", "gap", "log10_lb"):
        if key in entry:
            ref[key] = float(entry[key])
    if "gap" not in ref and "train" in ref and "test" in ref:
        ref["gap"] = ref["train"] - ref["test"]
    for eps, value in zip(fgsm_eps, entry.get("fgsm", [])):
        ref[metric_key("paper", "fgsm", eps)] = float(value)
    if "pgd" in entry and pgd_eps is not None:
        ref[metric_key("paper", "pgd", pgd_eps)] = float(entry["pgd"])
    return ref


def study_table(store: Store, study: str) -> list[dict[str, Any]]:
    """Aggregate a study's finished runs into one row per method and depth.

    Returns:
        Rows with ``method``, ``depth``, ``runs`` and, per metric, ``(mean, std, n)``; the
        published value of a metric, where known, is under ``ref:<metric>``. Tuning trials are
        left out (they belong to their tuning study), and of several finished runs of one
        seed only the newest counts.
    """
    record = store.study(study) or {"config": {}, "reference": []}
    # The newest finished run of each (method, depth, seed): a --rerun replaces, never doubles.
    latest: dict[tuple, dict] = {}
    for run in store.runs(study, status="done"):
        if run.get("trial_number") is None:
            latest[(run["method"], run["depth"], run["seed"])] = run
    runs = list(latest.values())
    attacks_by_run: dict[int, list[dict]] = {}
    for row in store.attacks(study=study):
        attacks_by_run.setdefault(row["run_id"], []).append(row)

    evaluated = evaluation_metrics(store, study)
    cells: dict[tuple[str, int], list[dict[str, float]]] = {}
    for run in runs:
        metrics = run_metrics(run, attacks_by_run.get(run["id"], []))
        metrics.update(evaluated.get(run["id"], {}))
        cells.setdefault((run["method"], run["depth"]), []).append(metrics)

    config = record["config"]
    paper = (config.get("attacks") or {}).get("paper") or {}
    fgsm_eps = paper.get("fgsm_eps", [0.01, 0.02, 0.03])
    pgd_eps = (paper.get("pgd") or {}).get("eps", 0.02)
    references = {
        (entry["method"], int(entry["depth"])): _reference_metrics(entry, fgsm_eps, pgd_eps)
        for entry in record["reference"]
    }
    order = (config.get("grid") or {}).get("method") or []

    def sort_key(cell: tuple[str, int]) -> tuple:
        method, depth = cell
        rank = order.index(method) if method in order else len(order)
        return depth, rank, method

    rows = []
    for method, depth in sorted(cells, key=sort_key):
        per_run = cells[(method, depth)]
        row: dict[str, Any] = {"method": method, "depth": depth, "runs": len(per_run)}
        keys = sorted({k for m in per_run for k in m}, key=_column_order)
        for key in keys:
            row[key] = _summary([m[key] for m in per_run if key in m])
        for key, value in references.get((method, depth), {}).items():
            row[f"ref:{key}"] = value
        rows.append(row)
    return rows


def evaluation_metrics(store: Store, study: str) -> dict[int, dict[str, float]]:
    """Per run of a study, the :data:`EVAL_COLUMNS` its ``lba eval`` rows give (percent).

    A store written before ``lba eval`` existed (schema v1, opened read-only) has none.
    """
    out: dict[int, dict[str, float]] = {}

    def rows(table: str, sql: str, params: list) -> list[dict]:
        if not store.db[table].exists():
            return []
        return store.query(sql, params)

    join = "JOIN runs r ON r.id = t.run_id WHERE r.study = ?"
    shifted: dict[int, list[float]] = {}
    for row in rows("shifts", f"SELECT t.* FROM shifts t {join}", [study]):
        if row["shift"] == "lighting_worst":
            out.setdefault(row["run_id"], {})["light"] = 100.0 * row["accuracy"]
        elif not row["shift"].startswith("lighting_") and row["severity"] > 0:
            shifted.setdefault(row["run_id"], []).append(row["accuracy"])
    for run_id, values in shifted.items():
        out.setdefault(run_id, {})["shift"] = 100.0 * statistics.fmean(values)
    sql = f"SELECT t.* FROM certified t {join} AND t.bound = 'residual' AND t.radius = ?"
    for row in rows("certified", sql, [study, TABLE_RADIUS]):
        out.setdefault(row["run_id"], {})[f"cert@{TABLE_RADIUS:g}"] = 100.0 * row["accuracy"]
    sql = f"SELECT t.* FROM attacks t {join} AND t.protocol = 'robust' ORDER BY t.eps"
    for row in rows("attacks", sql, [study]):
        metrics = out.setdefault(row["run_id"], {})
        if row["attack"] == "pgd_l2" and row["eps"] == TABLE_RADIUS:
            metrics[f"l2pgd@{TABLE_RADIUS:g}"] = 100.0 * row["accuracy"]
        elif row["attack"] == "pgd":
            metrics[f"rob:pgd@{row['eps']:g}"] = 100.0 * row["accuracy"]
    sql = (
        f"SELECT t.run_id, max(t.log10_value) AS low FROM lipschitz_estimates t {join} "
        "AND t.side = 'lower' GROUP BY t.run_id"
    )
    for row in rows("lipschitz_estimates", sql, [study]):
        if row["low"] is not None:
            out.setdefault(row["run_id"], {})["log10_low"] = row["low"]
    return out


def _eval_key(key: str) -> str | None:
    """The :data:`EVAL_COLUMNS` entry a metric belongs to (``rob:pgd@0.1`` -> ``rob:pgd``)."""
    if key in EVAL_COLUMNS:
        return key
    if key.startswith("rob:pgd@"):
        return "rob:pgd"
    return None


def _column_order(key: str) -> tuple:
    fixed = ["train", "test", "gap"]
    if key in fixed:
        return (0, fixed.index(key), 0.0)
    eval_key = _eval_key(key)
    if eval_key is not None:
        eps = float(key.partition("@")[2] or 0) if eval_key == "rob:pgd" else 0.0
        return (4, list(EVAL_COLUMNS).index(eval_key), eps)
    if key == "log10_lb":
        return (3, 0, 0.0)
    protocol = 2 if key.startswith("std:") else 1
    attack, _, eps = key.removeprefix("std:").partition("@")
    return (protocol, 0 if attack == "fgsm" else 1, float(eps or 0))


def metric_columns(rows: Sequence[dict]) -> list[str]:
    """The metric names present in any row, in display order."""
    keys = {
        k
        for row in rows
        for k in row
        if k not in ("method", "depth", "runs") and not k.startswith("ref:")
    }
    return sorted(keys, key=_column_order)


def header(key: str) -> str:
    """A short display header for a metric: ``FGSM .01``, ``sPGD .1``, ``log10 LB``."""
    if key == "log10_lb":
        return "log10 LB"
    if key in EVAL_COLUMNS:
        return EVAL_COLUMNS[key]
    if key.startswith("rob:pgd@"):
        eps = key.partition("@")[2]
        return f"rPGD {eps[1:] if eps.startswith('0.') else eps}"
    if key in ("train", "test", "gap"):
        return key.capitalize()
    standard = key.startswith("std:")
    attack, _, eps = key.removeprefix("std:").partition("@")
    eps_text = eps[1:] if eps.startswith("0.") else eps
    return f"{'s' if standard else ''}{attack.upper()} {eps_text}"


def _score(key: str, mean: float) -> float:
    # A gap is best near zero (a negative one is not better); a bound is best small.
    if key == "gap":
        return -abs(mean)
    return -mean if key in LOWER_IS_BETTER else mean


def _best(rows: Sequence[dict], key: str) -> float | None:
    scores = [_score(key, row[key][0]) for row in rows
              if row.get(key) and math.isfinite(row[key][0])]
    return max(scores) if scores else None


def _number(value: float, digits: int) -> str:
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"{value:.{digits}f}"


def format_cell(
    value: tuple[float, float, int] | None,
    ref: float | None = None,
    *,
    digits: int = 1,
    plus_minus: str = "±",
) -> str:
    """``77.7 ± 0.3 (77.68)``: mean, std over seeds when there are several, published value."""
    if value is None:
        text = "-"
    else:
        mean, std, n = value
        text = _number(mean, digits)
        if n > 1:
            text += f" {plus_minus} {_number(std, digits)}"
    if ref is not None:
        text += f" ({ref:g})"
    return text


def format_table(
    rows: Sequence[dict], *, reference: str = "inline", plus_minus: str = "±"
) -> tuple[list[str], list[list[str]]]:
    """Headers and string cells of a study table, for a terminal.

    Args:
        rows: the output of :func:`study_table`.
        reference: ``inline`` puts a published value in parentheses after ours, ``row`` adds a
            ``published`` line under each row that has one, ``none`` leaves them out.
        plus_minus: the separator of mean and std (``+-`` where the terminal lacks ``±``).
    """
    columns = metric_columns(rows)
    headers = ["Method", "n", "Runs", *(header(k) for k in columns)]
    cells = []
    for row in rows:
        line = [row["method"], str(row["depth"]), str(row["runs"])]
        for key in columns:
            ref = row.get(f"ref:{key}") if reference == "inline" else None
            digits = 2 if key in ("log10_lb", "log10_low") else 1
            line.append(format_cell(row.get(key), ref, digits=digits, plus_minus=plus_minus))
        cells.append(line)
        refs = [row.get(f"ref:{key}") for key in columns]
        if reference == "row" and any(r is not None for r in refs):
            cells.append(["  published", "", "", *("-" if r is None else f"{r:g}" for r in refs)])
    return headers, cells


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_csv(path: str | Path, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Write rows as RFC 4180 CSV in UTF-8 and return how many were written."""
    count = 0
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(headers)
        for row in rows:
            writer.writerow([_csv_value(v) for v in row])
            count += 1
    return count


def table_csv_rows(rows: Sequence[dict]) -> tuple[list[str], list[list[Any]]]:
    """The study table as numbers: mean, std and published value per metric."""
    columns = metric_columns(rows)
    headers = ["method", "depth", "runs"]
    for key in columns:
        headers += [f"{key}_mean", f"{key}_std", f"{key}_ref"]
    out = []
    for row in rows:
        line: list[Any] = [row["method"], row["depth"], row["runs"]]
        for key in columns:
            mean, std, _ = row.get(key) or (None, None, 0)
            line += [mean, std, row.get(f"ref:{key}")]
        out.append(line)
    return headers, out


def _decorated(rows: Sequence[dict], bold: Any, plus_minus: str) -> tuple[list, list]:
    columns = metric_columns(rows)
    headers = ["Method", "n", *(header(k) for k in columns)]
    best = {key: _best(rows, key) for key in columns}
    cells = []
    for row in rows:
        line = [row["method"], str(row["depth"])]
        for key in columns:
            digits = 2 if key in ("log10_lb", "log10_low") else 1
            text = format_cell(
                row.get(key), row.get(f"ref:{key}"), digits=digits, plus_minus=plus_minus
            )
            value = row.get(key)
            if value is not None and best[key] is not None and _score(key, value[0]) == best[key]:
                text = bold(text)
            line.append(text)
        cells.append(line)
    return headers, cells


def to_markdown(rows: Sequence[dict]) -> str:
    """The table as GitHub Markdown, the best mean of each column in bold."""
    headers, cells = _decorated(rows, lambda t: f"**{t}**", "±")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for char, escaped in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
    ):
        text = text.replace(char, escaped)
    return text


def to_latex(rows: Sequence[dict], caption: str = "") -> str:
    """The table for a paper: booktabs rules, ``$\\pm$``, the best mean per column in bold."""
    headers, cells = _decorated(rows, lambda t: rf"\textbf{{{t}}}", "$\\pm$")
    spec = "ll" + "r" * (len(headers) - 2)
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{_latex_escape(caption)}}}")
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    lines.append(" & ".join(_latex_escape(h) for h in headers) + r" \\")
    lines.append(r"\midrule")
    for line in cells:
        texts = [_latex_escape(line[0]), line[1], *line[2:]]
        lines.append(" & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


RAW_EXPORTS = ("runs", "epochs", "attacks", *EVALUATION_TABLES)


def raw_rows(store: Store, study: str, what: str) -> tuple[list[str], list[list[Any]]]:
    """Every stored row of one kind (runs, epochs, attacks, or an ``lba eval`` table such as
    shifts or certified) for a study's runs."""
    if what == "runs":
        rows = store.query("SELECT * FROM runs WHERE study = ? ORDER BY id", [study])
    else:
        rows = store.query(
            f"SELECT t.* FROM {what} t JOIN runs r ON r.id = t.run_id WHERE r.study = ? "
            "ORDER BY t.rowid",
            [study],
        )
    if not rows:
        table = store.db[what]
        return [c.name for c in table.columns], []
    headers = list(rows[0])
    return headers, [[row[h] for h in headers] for row in rows]


def config_differences(configs: Sequence[dict]) -> dict[str, list[Any]]:
    """The dotted config keys whose values differ between runs, with each run's value."""
    flat = [_flatten(c) for c in configs]
    keys = sorted({k for f in flat for k in f})
    return {
        key: [f.get(key) for f in flat]
        for key in keys
        if len({json.dumps(f.get(key), sort_keys=True) for f in flat}) > 1
    }


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out
