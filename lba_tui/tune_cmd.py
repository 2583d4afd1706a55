"""``lba tune``: search each method's settings with Optuna, show what it found, retrain the best.

:func:`register` adds the command to the ``lba`` app (lba_tui/cli.py). Neither torch nor Optuna
is imported before the command runs, so ``lba --help`` stays fast.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine.errors import StudyError
from engine.store import Store, resolve_db_path

if TYPE_CHECKING:
    from engine.study import Study

# The cli module that registered the command (``__main__`` under ``python -m lba_tui.cli``):
# its console, store helpers and Stopped exception are the ones its main() knows.
_cli: Any = None


def register(app: typer.Typer, cli: ModuleType) -> None:
    """Add ``lba tune`` to ``app``; ``cli`` is the module that holds ``app``."""
    global _cli
    _cli = cli
    app.command()(tune)


def tune(
    study: Annotated[
        str,
        typer.Argument(
            help="A study file with a \\[tune] section, or a tuning's name in the storage."
        ),
    ],
    trials: Annotated[
        int | None,
        typer.Option(
            "--trials", "-n", help="More finished trials per method (default: \\[tune])."
        ),
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes here.")] = 1,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage URL (default: the store's file), e.g. postgresql://lba@host/lba."
        ),
    ] = None,
    method: Annotated[
        list[str] | None, typer.Option("--method", "-m", help="Only this method (repeatable).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an existing tuning; never start one.")
    ] = False,
    show: Annotated[
        bool, typer.Option("--show", help="Print the best trials, Pareto fronts, importances.")
    ] = False,
    final: Annotated[
        bool,
        typer.Option("--final", help="Retrain each method's best setting; print the test table."),
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a study key, e.g. --set tune.train.epochs=5."),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps (overrides the study).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Where the dataset files are.")
    ] = None,
    db: Annotated[
        Path | None,
        typer.Option("--db", help="The SQLite store (default: $LBA_DB, else ./lba.db)."),
    ] = None,
) -> None:
    """Search each method's settings with Optuna, the same number of trials for every method.

    Each method of the study's \\[tune] section has its own Optuna study, <name>:<method>, and
    --trials N adds N finished (complete or pruned) trials to each one: every method gets the
    same budget, and TPE models only that method's settings. Running the same command again
    resumes. Each trial is a run in the store (its curves, attacks, trial number); its summary
    is also kept in the Optuna study. The objective is validation accuracy unless \\[tune] says
    otherwise; the test set is only for --final.

    --jobs N runs N worker processes (worker i on GPU i where there are several). --storage
    points at another Optuna storage: with postgresql://USER@HOST/DB, workers on many machines
    fill one study (pass the study file, or just the tuning's name, on each). --show prints the
    best trials, the Pareto fronts and the parameter importances; --final retrains each
    method's best setting on the \\[tune.final] seeds and depths and prints the paper-style table
    of the test set (study <name>-tuned).

    Example: lba tune studies/paper-fmnist.toml --trials 50 --jobs 2
    """
    from engine import tune_storage

    if trials is not None and trials < 1:
        raise StudyError(f"--trials must be 1 or more, got {trials}")
    if jobs < 1:
        raise StudyError(f"--jobs must be 1 or more, got {jobs}")
    if show and final:
        raise StudyError("--show and --final do different things; pass one of them")
    if (show or final) and (trials is not None or resume):
        given = "--trials" if trials is not None else "--resume"
        raise StudyError(
            f"{given} is for searching; drop it with {'--show' if show else '--final'}"
        )
    db_path = resolve_db_path(db)
    url = tune_storage.default_storage_url(db_path) if storage is None else storage
    url = tune_storage.check_storage_url(
        url, jobs=1 if final else jobs, db_path=db_path, writing=not (show or final)
    )
    spec, from_file = _resolve(study, list(set_ or []), url)
    if data_dir:
        spec.config["data"]["data_dir"] = str(data_dir)
    name = spec.tune["name"]
    tuned = [
        n.rpartition(":")[2] for n in tune_storage.study_names(url) if n.rpartition(":")[0] == name
    ]
    methods = list(spec.tune["methods"])
    if method:
        for m in method:
            if m not in methods:
                raise StudyError(
                    f"--method {m!r} is not tuned by {spec.path}; [tune] methods: "
                    f"{', '.join(methods)}"
                )
        methods = [m for m in methods if m in method]
    if show or final or resume or not from_file:
        if not tuned:
            raise tune_storage.unknown_tuning(name, url)
        missing = [m for m in methods if m not in tuned]
        if missing and (resume or not from_file or method):
            raise StudyError(
                f"tuning {name!r} in {tune_storage.shown(url)} has no study for "
                f"{', '.join(missing)}; tuned there: {', '.join(tuned)}"
            )
        methods = [m for m in methods if m in tuned]
    if show:
        _show(spec, url, methods)
    elif final:
        _final(spec, url, methods, jobs, db, device)
    else:
        _search(spec, url, db_path, db, methods, trials or spec.tune["trials"], jobs, device)


def _resolve(argument: str, overrides: list[str], url: str) -> tuple[Study, bool]:
    """The study of a file (True), or of a tuning already in the storage (False)."""
    from engine import tune as tuning
    from engine import tune_storage
    from engine.study import STUDIES_DIR, load_study

    path = Path(argument)
    shipped = not path.suffix and (STUDIES_DIR / f"{argument}.toml").exists()
    if path.exists() or argument.endswith(".toml") or shipped:
        spec = load_study(argument, overrides)
        if not spec.tune:
            raise StudyError(
                f"{spec.path} has no [tune] section; add one (docs/tune.md lists its keys)"
            )
        return spec, True
    if argument not in tune_storage.tuning_names(tune_storage.study_names(url)):
        raise tune_storage.unknown_tuning(argument, url)
    if overrides:
        raise StudyError("--set changes a study file; pass the file instead of the tuning's name")
    return tuning.load_tuned_study(url, argument)[0], False


def _search(
    spec: Study,
    url: str,
    db_path: Path,
    db: Path | None,
    methods: list[str],
    trials: int,
    jobs: int,
    device: str | None,
) -> None:
    from engine import runner, tune_storage
    from engine import tune as tuning

    # The store first: on a fresh file it sets WAL before Optuna's connections open.
    with Store(db_path) as store:
        tuner = tuning.Tuner(spec, url, db_path, methods=methods, device=device)
        reaped = tuning.reap_dead_trials(tuner.studies, store)
    if reaped:
        _cli.err.print(
            f"[yellow]marked {len(reaped)} trial(s) failed: their worker process is "
            f"gone ({', '.join(reaped)})[/yellow]"
        )
    store = _cli.open_store(db)
    store.save_study(
        spec.name,
        path=spec.path,
        description=spec.description,
        config=spec.config,
        reference=spec.reference,
    )
    # Load the data before any trial is recorded: missing or corrupt files stop here.
    runner.load_data_for(tuning.trial_config(spec, methods[0], {}))
    budget = tuner.plan(trials, jobs)
    _cli.console.print(
        f"tuning [bold]{spec.tune['name']}[/bold]: {trials} more trial(s) for each of "
        f"{', '.join(methods)} in {tune_storage.shown(url)} ({jobs} worker(s))"
    )
    try:
        with _progress(budget):
            tuner.run(budget, jobs)
    except KeyboardInterrupt:
        raise _cli.Stopped() from None
    _show(spec, url, methods, importances=False)


@contextmanager
def _progress(budget: Any) -> Iterator[None]:
    """One bar per method: finished trials of the target, running and failed, best so far."""
    stop = threading.Event()

    def poll() -> None:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=_cli.console) as progress:
            tasks = {
                row["method"]: progress.add_task(
                    f"{row['method']:<10}", total=row["target"], note=""
                )
                for row in budget.snapshot()
            }
            last = False
            while not last:
                last = stop.wait(0.5)
                for row in budget.snapshot():
                    note = f"{row['running']} running" if row["running"] else ""
                    if row["failed"]:
                        note += f" {row['failed']} failed"
                    if row["best"] is not None:
                        note += f" best {row['best']:.4f}"
                    progress.update(tasks[row["method"]], completed=row["done"], note=note)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _number(objective: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if objective == "log10_lb" else f"{100 * value:.2f}"


def _settings(params: dict[str, Any]) -> str:
    return (
        " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        or "-"
    )


def _show(spec: Study, url: str, methods: list[str], *, importances: bool = True) -> None:
    from engine import tune_storage

    objectives = spec.tune["objectives"]
    reports = tune_storage.report(url, spec.tune["name"], methods, objectives, importances)
    table = Table(
        "method",
        "trials",
        "pruned",
        "failed",
        "best #",
        *(f"{o}" for o in objectives),
        "train",
        "val",
        "log10 LB",
        "settings",
        title=f"tuning {spec.tune['name']}: best trial per method (% on validation "
        "data; the test set is for --final)",
        header_style="bold",
    )
    for r in reports:
        counts, best = r["counts"], r["best"]
        finished = counts["complete"] + counts["pruned"]
        if best is None:
            # no complete trial yet: the counts, and a dash for the rest
            dashes = ["-"] * (len(objectives) + 5)
            table.add_row(r["method"], str(finished), str(counts["pruned"]), str(counts["fail"]),
                          *dashes)  # fmt: skip
            continue
        attrs = best["attrs"]
        table.add_row(
            r["method"], str(finished), str(counts["pruned"]), str(counts["fail"]),
            str(best["number"]), *(_number(o, best["values"].get(o)) for o in objectives),
            _number("acc", attrs.get("train_acc")), _number("acc", attrs.get("val_acc")),
            _number("log10_lb", attrs.get("log10_lb")), _settings(best["params"]),
        )  # fmt: skip
    _cli.console.print(table)
    for r in reports:
        if not r["front"]:
            continue
        front = Table(
            "trial",
            *objectives,
            "settings",
            header_style="bold",
            title=f"{r['study']}: Pareto front ({len(r['front'])} trials)",
        )
        for trial in r["front"]:
            front.add_row(
                str(trial["number"]),
                *(_number(o, trial["values"].get(o)) for o in objectives),
                _settings(trial["params"]),
            )
        _cli.console.print(front)
    if not importances:
        return
    table = Table(
        "method",
        "objective",
        "parameter importances",
        header_style="bold",
        title="what mattered (normalized importances over the complete trials)",
    )
    for r in reports:
        for objective, values in r["importances"].items():
            text = ", ".join(f"{k} {v:.2f}" for k, v in values.items())
            table.add_row(r["method"], objective, text or "- (too few complete trials)")
    _cli.console.print(table)


def _final(
    spec: Study, url: str, methods: list[str], jobs: int, db: Path | None, device: str | None
) -> None:
    from engine import runner
    from engine import tune as tuning

    cells = tuning.final_cells(spec, url, methods)
    if device:
        for cell in cells:
            cell.config["train"]["device"] = device
    name = tuning.final_study_name(spec.tune["name"])
    final = spec.tune["final"]
    config = copy.deepcopy(spec.config)
    config["grid"] = {"depth": final["depths"], "method": methods, "seed": final["seeds"]}
    store = _cli.open_store(db)
    store.save_study(
        name,
        path=spec.path,
        config=config,
        reference=spec.reference,
        description=f"the best settings of tuning {spec.tune['name']}, retrained",
    )
    for cell in cells:
        runner.load_data_for(cell.config)
    todo = []
    for cell in cells:
        if _cli._finished(store, name, cell.config):
            continue
        run_id = store.create_run(
            study=name, method=cell.method, depth=cell.depth, seed=cell.seed,
            dataset=cell.config["data"]["dataset"], arch=cell.config["model"]["arch"],
            epochs=cell.config["train"]["epochs"], config=cell.config, label=cell.label,
        )  # fmt: skip
        todo.append((run_id, cell))
    if todo:
        _cli.console.print(
            f"study [bold]{name}[/bold]: {len(todo)} run(s) into {store.path} "
            f"({len(cells) - len(todo)} already done)"
        )
        try:
            with _cli._progress(store, [run_id for run_id, _ in todo]):
                runner.run_cells(store, todo, jobs=jobs)
        except KeyboardInterrupt:
            runner.close_queued(store, [run_id for run_id, _ in todo])
            raise _cli.Stopped() from None
        except BaseException:
            runner.close_queued(store, [run_id for run_id, _ in todo], status="failed")
            raise
    _cli._print_table(store, name)


def export_trials(study: str, csv: Path, storage: str | None, db: Path | None) -> None:
    """``lba export STUDY --what trials --csv FILE``: every trial of a tuning, one row each,
    with its state, objective values, parameters and metrics (read from the storage)."""
    from engine import tune_storage
    from engine.report import write_csv

    db_path = resolve_db_path(db)
    url = tune_storage.default_storage_url(db_path) if storage is None else storage
    url = tune_storage.check_storage_url(url, db_path=db_path, writing=False)
    spec, _ = _resolve(study, [], url)
    name = spec.tune["name"]
    tuned = [
        n.rpartition(":")[2] for n in tune_storage.study_names(url) if n.rpartition(":")[0] == name
    ]
    methods = [m for m in spec.tune["methods"] if m in tuned]
    if not methods:
        raise tune_storage.unknown_tuning(name, url)
    headers, rows = tune_storage.trial_rows(url, name, methods, spec.tune["objectives"])
    count = write_csv(csv, headers, rows)
    _cli.console.print(f"wrote {csv} ({count} rows)")
