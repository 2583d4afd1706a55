"""Dialogs for the process actions: start a study run or a tuning job, confirm a stop."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Input, Label, Static

from lba_tui.launcher import log_path, run_command, tune_command
from lba_tui.reader import StoreMissing, StoreReader, StoreUnreadable

if TYPE_CHECKING:
    from lba_tui.app import LbaApp


@dataclass
class StartRequest:
    """What the start dialog asks for."""

    mode: str  # run or tune
    study: str
    overrides: list[str]
    trials: int = 20


def shipped_studies() -> list[str]:
    """Names of the study files that ship with lba (``studies/*.toml``)."""
    from engine.study import STUDIES_DIR

    return sorted(p.stem for p in STUDIES_DIR.glob("*.toml"))


class StartDialog(ModalScreen[StartRequest | None]):
    """Asks which study to run (or tune) and with which ``--set`` overrides."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, mode: str, studies: list[str], db: str) -> None:
        super().__init__()
        self.mode = mode
        self.studies = studies
        self.db = db

    def compose(self) -> ComposeResult:
        verb = "Tune a study (lba tune)" if self.mode == "tune" else "Run a study (lba run)"
        with Vertical(id="dialog"):
            yield Label(verb, id="dialog-title")
            yield Label("study (a shipped name or a .toml path)")
            yield Input(
                value="quickstart",
                suggester=SuggestFromList(self.studies, case_sensitive=False),
                id="study",
            )
            yield Label(Content("overrides, space separated (train.epochs=5 grid.seed=[0,1])"))
            yield Input(placeholder="key=value ...", id="overrides")
            if self.mode == "tune":
                yield Label("trials")
                yield Input(value="20", type="integer", id="trials")
            yield Static(id="command")
            yield Label(
                "enter: start (detached: it outlives the app)   esc: cancel",
                classes="hint",
            )

    def on_mount(self) -> None:
        self.query_one("#study", Input).focus()
        self._preview()

    def request(self) -> StartRequest | None:
        """The request as typed so far, or None when the overrides do not parse."""
        study = self.query_one("#study", Input).value.strip()
        try:
            overrides = shlex.split(self.query_one("#overrides", Input).value)
        except ValueError:
            return None
        trials = 20
        if self.mode == "tune":
            text = self.query_one("#trials", Input).value.strip()
            trials = int(text) if text.isdigit() and int(text) > 0 else 0
        return StartRequest(self.mode, study, overrides, trials)

    @on(Input.Changed)
    def _preview(self) -> None:
        request = self.request()
        if request is None:
            text = "overrides: unbalanced quotes"
        else:
            argv = ["lba", request.mode]
            if request.study:
                argv.append(request.study)
            if request.mode == "tune":
                argv += ["--trials", str(request.trials)]
            for item in request.overrides:
                argv += ["--set", item]
            text = "$ " + shlex.join([*argv, "--db", self.db])
        self.query_one("#command", Static).update(Content(text))

    @on(Input.Submitted)
    def _submit(self) -> None:
        request = self.request()
        if request is None or (request.mode == "tune" and request.trials < 1):
            self.notify("fix the overrides (or the trial count) first", severity="warning")
            return
        if request.mode == "tune" and not request.study:
            self.notify("a tuning job needs a study", severity="warning")
            return
        self.dismiss(request)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    """A yes/no question: y or enter says yes, n or escape says no."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y,enter", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Content(self.question))
            yield Label("y / enter: yes    n / esc: no", classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


def start_dialog(app: LbaApp, mode: str) -> None:
    """Ask for a study, then start ``lba run`` (or ``lba tune``) as a detached process."""
    try:
        studies = shipped_studies()
    except OSError:
        studies = []

    def started(request: StartRequest | None) -> None:
        if request is None:
            return
        if request.mode == "tune":
            argv = tune_command(request.study, request.trials, request.overrides, app.db_path)
        else:
            argv = run_command(request.study, request.overrides, app.db_path)
        log = log_path(app.db_path, request.mode, request.study, app.clock())
        try:
            launch = app.launcher.start(argv, log)
        except OSError as exc:
            app.notify(f"cannot start lba {request.mode}: {exc}", severity="error")
            return
        app.notify(
            f"started lba {request.mode} {request.study} (pid {launch.pid}); log: {launch.log}",
            title="Started",
            timeout=10,
        )

    app.push_screen(StartDialog(mode, studies, str(app.db_path)), started)


def stop_run_id(app: LbaApp, run_id: int) -> None:
    """Read the run's process from the store, ask, then send it SIGINT (in a worker)."""
    app.run_worker(_stop(app, run_id), group="stop", exclusive=True)


async def _stop(app: LbaApp, run_id: int) -> None:
    try:
        run = await app.reader.fetch(StoreReader.process_of, run_id)
        via = None
        if run is not None and run["status"] == "queued":
            via = await app.reader.fetch(StoreReader.running_in_study, run["study"])
    except (StoreMissing, StoreUnreadable) as exc:
        app.notify(f"cannot read the store: {exc}", severity="error")
        return
    if run is None:
        app.notify(f"run {run_id} is not in the store", severity="warning")
        return
    confirm_stop(app, run, via)


def confirm_stop(app: LbaApp, run: dict, via: dict | None = None) -> None:
    """Ask, then send SIGINT to the process training ``run``; it marks the run interrupted.

    A queued run has no process of its own: ``via``, the running run of the same study, is
    offered instead; stopping it stops the queued runs behind it too.
    """
    target = run
    if run["status"] == "queued":
        if via is None:
            app.notify(
                f"run {run['id']} is queued and no run of its study is running", severity="warning"
            )
            return
        target = via
    elif run["status"] != "running":
        app.notify(f"run {run['id']} is {run['status']}; only a running run can be stopped")
        return
    pid, host = target.get("pid"), target.get("host")
    if not pid:
        app.notify(f"run {target['id']} recorded no process id", severity="warning")
        return
    if host and host != app.hostname:
        app.notify(
            f"run {target['id']} trains on {host}, not here ({app.hostname}); stop it there",
            severity="warning",
        )
        return
    question = (
        f"Stop run {target['id']} ({target['label']}, study {target['study']}), pid {pid}?\n"
        "It is marked interrupted; its finished epochs are kept."
    )
    if target is not run:
        question = f"Run {run['id']} is queued behind run {target['id']}.\n" + question

    def answered(yes: bool | None) -> None:
        if not yes:
            return
        try:
            app.launcher.stop(pid)
        except ProcessLookupError:
            app.notify(f"process {pid} is gone already", severity="warning")
        except PermissionError as exc:
            app.notify(f"cannot stop pid {pid}: {exc}", severity="error")
        else:
            app.notify(f"sent SIGINT to pid {pid} (run {target['id']})", title="Stopping")

    app.push_screen(ConfirmDialog(question), answered)
