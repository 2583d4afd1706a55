"""``lba eval``: natural shifts, certificates and robustness of stored runs, without retraining.

:func:`register` adds the command to the ``lba`` app (lba_tui/cli.py). The engine, and with it
torch, is imported only when the command runs, so ``lba --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from engine.errors import LbaError, StudyError

# The cli module that registered the command (``__main__`` under ``python -m lba_tui.cli``):
# its console and store helpers are the ones its main() knows.
_cli: Any = None


def register(app: typer.Typer, cli: ModuleType) -> None:
    """Add ``lba eval`` to ``app``; ``cli`` is the module that holds ``app``."""
    global _cli
    _cli = cli
    app.command("eval")(evaluate)


def evaluate(
    target: Annotated[
        str, typer.Argument(help="A run id (see `lba ls`), or a study name or file.")
    ],
    shift: Annotated[
        bool, typer.Option("--shift", help="Natural shifts: lighting, noise, blur.")
    ] = False,
    certify: Annotated[
        bool, typer.Option("--certify", help="Certified accuracy from the Lipschitz bound.")
    ] = False,
    robust: Annotated[
        bool,
        typer.Option("--robust", help="Standard-protocol attacks, l2 PGD, masking check."),
    ] = False,
    n: Annotated[
        int | None,
        typer.Option("--n", help="Evaluate the first N test samples (default: all)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of shift draws and attack starts.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    db: Annotated[
        Path | None,
        typer.Option("--db", help="The SQLite store (default: $LBA_DB, else ./lba.db)."),
    ] = None,
) -> None:
    """Evaluate finished runs from their stored weights: shifts, certificates, robustness.

    Without --shift, --certify or --robust, every evaluation that suits the data runs. Results
    replace the run's earlier ones in the store; `lba table` summarizes them and
    `lba export STUDY --what shifts|certified|lipschitz_estimates|pgd_curve --csv FILE` writes
    the rows. The same seed gives every method the same shifted images and attack starts.

    Example: lba eval verdict-fmnist --certify --n 2000
    """
    from engine.evaluate import EVALUATIONS

    if n is not None and n < 1:
        raise StudyError(f"--n must be 1 or more (samples to evaluate), got {n}")
    chosen = [w for w, on in zip(EVALUATIONS, (shift, certify, robust), strict=True) if on]
    store = _cli.open_store(db, readonly=True)
    study, runs = _targets(store, target)

    from engine.evaluate import applicable, check_evaluable, evaluate_run

    # Check every run before the first is evaluated: a bad one stops the command up front.
    todo, skipped = [], []
    for run in runs:
        try:
            check_evaluable(store, run)
            todo.append(run)
        except LbaError as exc:
            if study is None:
                raise
            skipped.append(str(exc))
    for note in skipped:
        _cli.err.print(f"skipping: {note}", markup=False, highlight=False)
    if not todo:
        raise StudyError(f"study {study!r} has no finished run with saved weights to evaluate")
    for run in todo:
        applicable(run, chosen or None)  # e.g. --shift on tabular data stops here

    what = ", ".join(chosen) if chosen else "all evaluations"
    _cli.console.print(f"evaluating {len(todo)} run(s) ({what}) into {store.path}")
    for run in todo:
        report = evaluate_run(store, run["id"], what=chosen or None, n=n, seed=seed, device=device)
        _cli.console.print(_summary_line(run, report), highlight=False)
    if study is not None:
        _cli._print_table(store, study)


def _targets(store: Any, target: str) -> tuple[str | None, list[dict]]:
    """``(study or None, runs)`` for a run id or a study name or file."""
    if target.isdigit():
        run = store.run(int(target))
        if run is None:
            raise StudyError(f"no run {target} in {store.path}; `lba ls` lists the runs")
        return None, [run]
    study = _cli._study_name(store, target)
    runs = [store.run(r["id"]) for r in store.runs(study) if r.get("trial_number") is None]
    if not runs:
        raise StudyError(f"study {study!r} has no runs; train it first with `lba run`")
    return study, runs


def _summary_line(run: dict, report: Any) -> str:
    parts = []
    names = (
        ("shift_mean", "shift {:.1f}%", 100),
        ("light_worst", "worst light {:.1f}%", 100),
        ("median_radius", "median radius {:.3f}", 1),
        ("pgd", "PGD {:.1f}%", 100),
    )
    for key, text, scale in names:
        if key in report.summary:
            parts.append(text.format(scale * report.summary[key]))
    seconds = sum(report.seconds.values())
    return f"{run['id']:>4} {run['label']}: {', '.join(parts)} ({seconds:.0f} s)"
