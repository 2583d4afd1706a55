"""The ``lba`` command line: a thin layer over ``engine`` (training) and the store (reading).

Every command that trains imports the engine inside its body, so ``lba --help`` and the
reading commands never load torch. Input a user can fix ends in one ``Error:`` line and exit
code 2; a run stopped with Ctrl-C (or SIGTERM) is marked ``interrupted`` and exits 130.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine.errors import LbaError, StoreError, StudyError
from engine.store import Store, resolve_db_path

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="lba: train, attack and compare Lipschitz-bound regularized networks.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Piped output (a log, a file) keeps wide tables on one line instead of folding them at 80.
console = Console() if sys.stdout.isatty() else Console(width=160)
err = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=160)

DbOption = Annotated[
    Optional[Path],
    typer.Option("--db", help="The SQLite store (default: $LBA_DB, else ./lba.db)."),
]


class Stopped(Exception):
    """The user stopped the command; its runs are already marked interrupted."""


def open_store(db: Path | None, *, readonly: bool = False) -> Store:
    """Open the store; reading commands reap runs whose process died first."""
    path = resolve_db_path(db)
    if readonly and not path.exists():
        raise StoreError(f"no store at {path}; train something first with `lba run`")
    store = Store(path)
    reaped = store.reap_stale()
    if reaped:
        err.print(
            f"[yellow]marked {len(reaped)} run(s) interrupted: their process is gone "
            f"(ids {', '.join(map(str, reaped))})[/yellow]"
        )
    return store


def _latest_study(store: Store) -> str:
    studies = store.studies()
    if not studies:
        raise StoreError(f"{store.path} holds no study yet; start one with `lba run`")
    return studies[0]["name"]


def _check_study(store: Store, name: str) -> str:
    if store.study(name) is None:
        known = ", ".join(s["name"] for s in store.studies()) or "none"
        raise StudyError(f"no study {name!r} in {store.path}; studies there: {known}")
    return name


def _study_name(store: Store, study: str | None) -> str:
    """A study argument may be a name in the store or a study file's path."""
    if study is None:
        return _latest_study(store)
    if store.study(study) is None and (study.endswith(".toml") or Path(study).exists()):
        from engine.study import load_study

        return _check_study(store, load_study(study).name)
    return _check_study(store, study)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


# ---------------------------------------------------------------------------------------------
# lba run


@app.command()
def run(
    study: Annotated[
        Optional[str], typer.Argument(help="A study file (default: quickstart).")
    ] = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="Override a study key, e.g. --set train.epochs=5."),
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Runs trained in parallel.")] = 1,
    device: Annotated[
        Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N or mps (overrides the study).")
    ] = None,
    data_dir: Annotated[
        Optional[Path], typer.Option("--data-dir", help="Where the dataset files are.")
    ] = None,
    rerun: Annotated[
        bool, typer.Option("--rerun", help="Train cells again even if a finished run matches.")
    ] = False,
    db: DbOption = None,
) -> None:
    """Train every run of a study and attack the results.

    Cells (depth x method x seed) that already have a finished run with the same resolved
    config are skipped, so re-running a stopped study resumes it.

    Example: lba run studies/paper-fmnist.toml --set train.epochs=20 --jobs 2
    """
    from engine.study import load_study

    if jobs < 1:
        raise StudyError(f"--jobs must be 1 or more, got {jobs}")
    overrides = list(set_ or [])
    if device:
        overrides.append(f'train.device="{device}"')
    if data_dir:
        overrides.append(f"data.data_dir={json.dumps(str(data_dir))}")
    spec = load_study(study, overrides)
    store = open_store(db)
    from engine import runner

    # Load the data before any run is recorded: missing or corrupt files stop here.
    for cell in spec.cells():
        runner.load_data_for(cell.config)
    store.save_study(spec.name, path=spec.path, description=spec.description,
                     config=spec.config, reference=spec.reference)

    todo = []
    skipped = 0
    for cell in spec.cells():
        if not rerun and _finished(store, spec.name, cell.config):
            skipped += 1
            continue
        run_id = store.create_run(
            study=spec.name, method=cell.method, depth=cell.depth, seed=cell.seed,
            dataset=cell.config["data"]["dataset"], arch=cell.config["model"]["arch"],
            epochs=cell.config["train"]["epochs"], config=cell.config, label=cell.label,
        )
        todo.append((run_id, cell))
    if skipped:
        err.print(f"skipping {skipped} finished run(s) with the same config (--rerun trains "
                  "them again)")
    if not todo:
        console.print(f"study {spec.name}: nothing to train; `lba table {spec.name}` shows it")
        return

    console.print(f"study [bold]{spec.name}[/bold]: {len(todo)} run(s) into {store.path}")
    try:
        with _progress(store, [run_id for run_id, _ in todo]):
            runner.run_cells(store, todo, jobs=jobs)
    except KeyboardInterrupt:
        runner.close_queued(store, [run_id for run_id, _ in todo])
        raise Stopped() from None
    except BaseException:
        runner.close_queued(store, [run_id for run_id, _ in todo], status="failed")
        raise
    _print_table(store, spec.name)


@contextmanager
def _progress(store: Store, run_ids: list[int]) -> Iterator[None]:
    """Show the runs' epochs as they land in the store (the trainers may be other processes)."""
    stop = threading.Event()
    marks = ", ".join("?" * len(run_ids))
    sql = f"SELECT id, label, status, epoch, epochs, test_acc FROM runs WHERE id IN ({marks})"

    def poll() -> None:
        reader = Store(store.path, readonly=True)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[note]}"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            tasks: dict[int, int] = {}
            total = progress.add_task("all runs", total=len(run_ids), note="")
            last = False
            while not last:
                last = stop.wait(0.5)
                rows = reader.query(sql, run_ids)
                for r in rows:
                    if r["status"] == "queued":
                        continue
                    if r["id"] not in tasks:
                        tasks[r["id"]] = progress.add_task(f"{r['id']:>4} {r['label']}",
                                                           total=r["epochs"], note="")
                    note = r["status"] if r["status"] != "running" else (
                        f"test {_pct(r['test_acc'])}" if r["test_acc"] is not None else "")
                    progress.update(tasks[r["id"]], completed=r["epoch"], note=note)
                finished = sum(r["status"] not in ("queued", "running") for r in rows)
                progress.update(total, completed=finished)
        reader.close()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _finished(store: Store, study: str, config: dict) -> bool:
    wanted = json.dumps(config, sort_keys=True)
    for row in store.query(
        "SELECT config_json FROM runs WHERE study = ? AND status = 'done' "
        "AND trial_number IS NULL",
        [study],
    ):
        if json.dumps(json.loads(row["config_json"]), sort_keys=True) == wanted:
            return True
    return False


# ---------------------------------------------------------------------------------------------
# lba ls / show


@app.command("ls")
def list_runs(
    study: Annotated[Optional[str], typer.Argument(help="Only this study's runs.")] = None,
    status: Annotated[Optional[str], typer.Option(help="Only runs with this status.")] = None,
    db: DbOption = None,
) -> None:
    """List runs with their status and latest metrics.

    Example: lba ls paper-fmnist --status done
    """
    from engine.store import STATUSES

    if status is not None and status not in STATUSES:
        raise StudyError(f"--status is {status!r}; allowed: {', '.join(STATUSES)}")
    store = open_store(db, readonly=True)
    if study is not None:
        study = _study_name(store, study)
    rows = store.runs(study, status=status)
    if not rows:
        console.print(f"no runs in {store.path}; start one with `lba run`")
        return
    table = Table("id", "study", "method", "n", "seed", "status", "epoch", "train", "test",
                  "gap", "log10 LB", header_style="bold")
    for r in rows:
        table.add_row(str(r["id"]), r["study"], r["method"], str(r["depth"]), str(r["seed"]),
                      r["status"], f"{r['epoch']}/{r['epochs']}", _pct(r["train_acc"]),
                      _pct(r["test_acc"]), _pct(r["gap"]),
                      "-" if r["log10_lb"] is None else f"{r['log10_lb']:.2f}")
    console.print(table)


@app.command()
def show(
    run_id: Annotated[int, typer.Argument(help="The run id (see `lba ls`).")],
    db: DbOption = None,
) -> None:
    """Show one run: its config, its last epochs, its spectral norms and its attacks.

    Example: lba show 3
    """
    store = open_store(db, readonly=True)
    r = store.run(run_id)
    if r is None:
        raise StudyError(f"no run {run_id} in {store.path}; `lba ls` lists the runs")
    console.print(f"[bold]run {r['id']}[/bold] {r['label']} ({r['study']}) status "
                  f"[bold]{r['status']}[/bold] epoch {r['epoch']}/{r['epochs']} on "
                  f"{r['device'] or '-'}" + (f"\n  error: {r['error']}" if r["error"] else ""))
    cfg = r["config"]
    console.print(f"  data {cfg['data']}\n  model {cfg['model']}\n  train {cfg['train']}\n"
                  f"  method {cfg['method']}")
    epochs = store.epochs(run_id)
    if epochs:
        table = Table("epoch", "loss", "penalty", "train", "test", "gap", "log10 LB",
                      "log10 prod", "lba layer", header_style="bold")
        for e in epochs[-10:]:
            table.add_row(str(e["epoch"]), f"{e['loss']:.4f}" if e["loss"] is not None else "-",
                          f"{e['penalty']:.4f}" if e["penalty"] is not None else "-",
                          _pct(e["train_acc"]), _pct(e["test_acc"]), _pct(e["gap"]),
                          f"{e['log10_lb']:.2f}", f"{e['log10_prod']:.2f}",
                          "-" if e["lba_layer"] is None else str(e["lba_layer"]))
        console.print(table)
        last = [s for s in store.sigmas(run_id) if s["epoch"] == epochs[-1]["epoch"]]
        console.print("  sigma per layer: " + ", ".join(
            f"{s['name']} {s['sigma']:.3f}" for s in last))
    attacks = store.attacks(run_id)
    if attacks:
        table = Table("protocol", "attack", "eps", "steps", "accuracy", "n", header_style="bold")
        for a in attacks:
            table.add_row(a["protocol"], a["attack"], f"{a['eps']:g}", str(a["steps"]),
                          _pct(a["accuracy"]), str(a["n"]))
        console.print(table)


# ---------------------------------------------------------------------------------------------
# lba table / export


def _print_table(store: Store, study: str) -> None:
    from engine.report import format_table, study_table

    rows = study_table(store, study)
    if not rows:
        console.print(f"study {study} has no finished run yet")
        return
    headers, cells = format_table(rows, reference="row")
    table = Table(*headers, title=f"{study}: accuracy % (mean ± std over seeds)",
                  header_style="bold")
    for line in cells:
        table.add_row(*line, style="dim" if line[0] == "  published" else None)
    console.print(table)


@app.command("table")
def table_(
    study: Annotated[
        Optional[str], typer.Argument(help="Study name or file (default: latest).")
    ] = None,
    db: DbOption = None,
) -> None:
    """Print the paper-style table of a study: methods x depth, mean ± std over seeds.

    Example: lba table paper-fmnist
    """
    store = open_store(db, readonly=True)
    _print_table(store, _study_name(store, study))


@app.command()
def export(
    study: Annotated[str, typer.Argument(help="Study name or file.")],
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Write CSV here.")] = None,
    markdown: Annotated[
        Optional[Path], typer.Option("--markdown", help="Write Markdown here.")
    ] = None,
    latex: Annotated[Optional[Path], typer.Option("--latex", help="Write LaTeX here.")] = None,
    what: Annotated[
        str, typer.Option(help="table, or raw rows: runs, epochs, attacks, trials (CSV only).")
    ] = "table",
    storage: Annotated[
        Optional[str], typer.Option(help="--what trials: the Optuna storage URL (see lba tune).")
    ] = None,
    db: DbOption = None,
) -> None:
    """Write a study's table (or its raw rows) as CSV, Markdown or LaTeX.

    CSV is RFC 4180, UTF-8; empty fields are missing values, and non-finite numbers are
    written nan, inf and -inf.

    Example: lba export paper-fmnist --csv table.csv --latex table.tex
    """
    from engine import report

    if not (csv or markdown or latex):
        raise StudyError("export needs --csv FILE, --markdown FILE or --latex FILE")
    allowed = ("table", *report.RAW_EXPORTS, "trials")
    if what not in allowed:
        raise StudyError(f"--what is {what!r}; allowed: {', '.join(allowed)}")
    if what != "table" and (markdown or latex):
        raise StudyError(f"--what {what} writes CSV only; drop --markdown/--latex")
    for target in (csv, markdown, latex):
        if target is not None and not target.resolve().parent.is_dir():
            raise StudyError(f"cannot write {target}: folder {target.parent} does not exist")
        if target is not None and target.is_dir():
            raise StudyError(f"cannot write {target}: it is a folder; name a file in it")
    if what == "trials":
        from lba_tui.tune_cmd import export_trials

        return export_trials(study, csv, storage, db)
    if storage:
        raise StudyError("--storage is read by --what trials only; drop it")
    store = open_store(db, readonly=True)
    name = _study_name(store, study)
    written = []
    if what == "table":
        rows = report.study_table(store, name)
        if csv:
            headers, values = report.table_csv_rows(rows)
            written.append((csv, report.write_csv(csv, headers, values)))
        if markdown:
            markdown.write_text(report.to_markdown(rows), encoding="utf-8")
            written.append((markdown, len(rows)))
        if latex:
            latex.write_text(report.to_latex(rows, caption=name), encoding="utf-8")
            written.append((latex, len(rows)))
    else:
        headers, values = report.raw_rows(store, name, what)
        written.append((csv, report.write_csv(csv, headers, values)))
    for path, count in written:
        console.print(f"wrote {path} ({count} rows)")


# `lba tune` lives in lba_tui/tune_cmd.py; it uses this module's helpers, so it comes last.
from lba_tui import tune_cmd  # noqa: E402

tune_cmd.register(app, sys.modules[__name__])
from lba_tui import eval_cmd  # noqa: E402  (`lba eval`, lba_tui/eval_cmd.py)

eval_cmd.register(app, sys.modules[__name__])


# ---------------------------------------------------------------------------------------------
# entry point


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Run the command line; user errors print one line and exit 2, Ctrl-C exits 130."""
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        # standalone: Click itself prints usage errors (exit 2) and help
        app(prog_name="lba")
    except LbaError as exc:
        err.print(f"Error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except Stopped:
        err.print("Stopped: the run in progress is marked interrupted (its finished epochs are "
                  "kept); the same command again trains the cells not yet finished, the "
                  "stopped one from its first epoch.", soft_wrap=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
