"""Tuning with Optuna: budgets per method, workers on SQLite and PostgreSQL, dead and diverged
trials, resuming, storage URLs, and reading a tuning back. Real Fashion-MNIST, tiny budgets."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from engine import tune as tuning
from engine import tune_storage
from engine.errors import StudyError
from engine.store import Store
from engine.study import load_study, validate
from lba_tui import cli

ROOT = Path(__file__).resolve().parents[2]

# The first 1,000 training images, 500 validation images drawn from the rest, 2 epochs, and
# attacks on 100 test images: a trial takes about a second on one core.
TINY = """
[study]
name = "tiny"

[data]
dataset = "fashion-mnist"
train_subset = 1000

[model]
width = 10

[train]
epochs = {epochs}
lr = 0.05

[grid]
depth = [1]
method = ["none", "l2"]

[attacks]
protocols = ["paper"]

[attacks.paper]
n = 100
pgd = {{ eps = 0.02, step_size = 0.005, steps = 3, random_start = false }}

[tune]
methods = {methods}
trials = 2
sampler_seed = 7
{tune}

[tune.data]
val_size = 500

[tune.space.train]
lr = {{ type = "log", low = 0.01, high = 0.3 }}

[tune.space.l2]
lam = {{ type = "log", low = 1e-5, high = 1e-2 }}
"""


def write_study(
    folder: Path, *, methods: str = '["l2"]', tune: str = "", epochs: int = 2, extra: str = ""
) -> Path:
    """A tiny tuning study file in ``folder``; ``extra`` tables go at its end."""
    path = folder / "tiny.toml"
    path.write_text(TINY.format(methods=methods, tune=tune, epochs=epochs) + extra)
    return path


def lba(capsys, *args: str) -> tuple[int, str, str]:
    """Run the command line in-process; return exit code, stdout, stderr."""
    saved = sys.argv
    sys.argv = ["lba", *map(str, args)]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = saved
    out = capsys.readouterr()
    return code, out.out, out.err


def lba_process(*args: str, **kwargs) -> subprocess.Popen:
    """Start the command line in its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "lba_tui.cli", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def trials_of(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def states(trials: list) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------
# The [tune] section


def test_tune_section_fills_its_defaults_from_the_grid(tmp_path):
    study = load_study(write_study(tmp_path, methods='["none", "l2"]'))
    tune = study.tune
    assert tune["name"] == "tiny" and tune["methods"] == ["none", "l2"]
    assert (tune["depth"], tune["seed"], tune["objectives"]) == (1, 0, ["val_acc"])
    assert (tune["sampler"], tune["pruner"], tune["grace"]) == ("tpe", "median", 120)
    assert tune["final"] == {"seeds": [0, 1, 2], "depths": [1]}
    assert load_study("quickstart").tune["methods"] == ["none", "lba"]


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({"objectives": ["test_acc"]}, "key 'tune.objectives' is 'test_acc'; allowed: val_acc"),
        ({"pruner": "wild"}, "key 'tune.pruner' is 'wild'; allowed: median, percentile"),
        (
            {"objectives": ["val_acc", "val_pgd_acc"], "pruner": "median"},
            "key 'tune.pruner' must be 'none' with several objectives (val_acc, val_pgd_acc)",
        ),
        (
            {"space": {"l2": {"lam": {"type": "log", "low": 0, "high": 1}}}},
            "key 'tune.space.l2.lam' is log-uniform, so low must be greater than 0, got 0",
        ),
        (
            {"space": {"l2": {"p": {"type": "uniform", "low": 0, "high": 0.5}}}},
            "unknown key 'tune.space.l2.p'; allowed: lam",
        ),
        (
            {"space": {"dropout": {"p": {"type": "uniform", "low": 0.1, "high": 1.0}}}},
            "key 'tune.space.dropout.p' must be below 1 (a dropout probability), got 1.0",
        ),
        (
            {"space": {"lba": {"pool": {"type": "log", "low": 1, "high": 2}}}},
            "key 'tune.space.lba.pool' takes strings; its type must be categorical",
        ),
        (
            {"space": {"train": {"lr": {"type": "uniform", "low": 0.1, "high": 0.01}}}},
            "key 'tune.space.train.lr' needs low < high, got low 0.1, high 0.01",
        ),
        ({"train": {"epochs": 0}}, "key 'tune.train.epochs' must be greater than 0, got 0"),
        ({"data": {"dataset": "mnist"}}, "unknown key 'tune.data.dataset'; allowed: train_subset"),
        ({"trails": 5}, "unknown key 'tune.trails'; allowed in [tune]: data, depth, final"),
        ({"name": "a:b"}, "the tuning name 'a:b' must not contain ':'"),
    ],
)
def test_malformed_tune_section_names_the_key_and_the_rule(tune, message):
    raw = {"data": {"val_size": 100}, "tune": tune}
    with pytest.raises(StudyError) as info:
        validate(raw, "bad.toml")
    assert message in str(info.value)


def test_validation_objective_needs_validation_data():
    with pytest.raises(StudyError, match="objective 'val_acc' needs validation data"):
        validate({"tune": {}}, "bad.toml")


def test_a_categorical_choice_the_regularizer_refuses_stops_before_any_trial(tmp_path):
    odd = '\n[tune.space.lba]\npool = { type = "categorical", choices = ["all", "odd"] }\n'
    path = write_study(tmp_path, methods='["lba"]', extra=odd)
    with pytest.raises(StudyError, match=r"\[tune.space\] method.pool = 'odd': regularizer pool"):
        tuning.check_space(load_study(path), ["lba"])


def test_suggestions_land_in_the_run_config_by_their_dotted_names(tmp_path):
    study = load_study(write_study(tmp_path))
    optuna_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = optuna_study.ask()
    params = tuning.suggest(trial, tuning.space_for(study, "l2"))
    assert sorted(params) == ["method.lam", "train.lr"]
    config = tuning.trial_config(study, "l2", params)
    assert config["train"]["lr"] == params["train.lr"]
    assert config["method"] == {"name": "l2", "lam": params["method.lam"]}
    assert config["data"]["val_size"] == 500 and config["model"]["depth"] == 1
    # the study's own settings are untouched
    assert study.run_config("l2", 1, 0)["train"]["lr"] == 0.05


# ---------------------------------------------------------------------------------------------
# Storage URLs


@pytest.mark.parametrize(
    ("url", "jobs", "message"),
    [
        ("redis://localhost/0", 1, "unsupported scheme 'redis'; use sqlite:///FILE or postgresql"),
        ("lba.db", 1, "--storage 'lba.db' is not a storage URL; use sqlite:///FILE"),
        ("sqlite:///{tmp}/none/x.db", 1, "no file {tmp}/none/x.db; a SQLite storage must exist"),
        ("sqlite:///:memory:", 2, "an in-memory database, which 2 worker processes cannot share"),
        ("sqlite://", 4, "an in-memory database, which 4 worker processes cannot share"),
        ("sqlite:///{tmp}/junk.db", 1, "{tmp}/junk.db is not an SQLite database"),
        (
            "postgresql://lba@127.0.0.1:9/lba",
            1,
            # a bare postgresql:// is read with psycopg2, the driver lba ships
            "storage postgresql+psycopg2://lba@127.0.0.1:9/lba: connection to server",
        ),
    ],
)
def test_unusable_storage_url_is_refused_and_nothing_is_written(tmp_path, url, jobs, message):
    (tmp_path / "junk.db").write_text("not a database")
    before = sorted(tmp_path.iterdir())
    with pytest.raises(tune_storage.TuneError) as info:
        tune_storage.check_storage_url(
            url.format(tmp=tmp_path), jobs=jobs, db_path=tmp_path / "lba.db"
        )
    assert message.format(tmp=tmp_path) in str(info.value)
    assert sorted(tmp_path.iterdir()) == before


def test_the_store_file_may_be_a_storage_before_it_exists(tmp_path):
    db = tmp_path / "lba.db"
    url = tune_storage.check_storage_url(f"sqlite:///{db}", db_path=db)
    assert url == f"sqlite:///{db}" and not db.exists()
    assert tune_storage.study_names(url) == [] and not db.exists()


# ---------------------------------------------------------------------------------------------
# Searching


@pytest.mark.slow
def test_four_workers_fill_the_sqlite_store_while_another_process_reads_it(tmp_path, capsys):
    """20 trials by 4 worker processes, a reader polling the file all along: no trial fails
    on a lock, every trial is a run linked by number, and WAL stays on."""
    study = write_study(tmp_path, tune="pruner_startup = 3\npruner_warmup = 1")
    db = tmp_path / "lba.db"
    Store(db).close()
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sqlite3, time, os
            reads = errors = 0
            while not os.path.exists({str(stop)!r}):
                try:
                    conn = sqlite3.connect({str(db)!r}, timeout=1)
                    conn.execute("SELECT count(*) FROM runs").fetchall()
                    conn.execute("SELECT * FROM epochs ORDER BY run_id DESC LIMIT 50").fetchall()
                    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'trials'").fetchone():
                        conn.execute("SELECT count(*) FROM trials").fetchall()
                    conn.close()
                    reads += 1
                except sqlite3.Error as exc:
                    errors += 1
                    print("reader:", exc, flush=True)
                time.sleep(0.005)
            print(reads, errors)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        code, out, err = lba(capsys, "tune", study, "--trials", 20, "--jobs", 4, "--db", db)
    finally:
        stop.touch()
        reads, errors = map(int, reader.communicate(timeout=30)[0].split()[-2:])
    assert code == 0, err
    assert errors == 0 and reads > 20
    url = tune_storage.default_storage_url(db)
    trials = trials_of(url, "tiny:l2")
    assert len(trials) == 20 and states(trials).get("FAIL", 0) == 0
    assert sum(t.state in tune_storage.FINISHED for t in trials) == 20
    store = Store(db, readonly=True)
    runs = {r["trial_number"]: r for r in store.runs("tiny")}
    assert sorted(runs) == list(range(20))
    for trial in trials:
        run = runs[trial.number]
        assert run["tune_study"] == "tiny:l2" and trial.user_attrs["run_id"] == run["id"]
        assert run["status"] == {"COMPLETE": "done", "PRUNED": "pruned"}[trial.state.name]
        if trial.state == TrialState.COMPLETE:
            assert trial.value == pytest.approx(run["val_acc"])
            # the summary travels with the study: accuracies, attacks, the bound
            assert {"test_acc", "fgsm@0.01", "pgd@0.02", "log10_lb"} <= set(trial.user_attrs)
            assert len(store.attacks(run["id"])) == 5
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert "tiny: best trial per method" in out


def test_killed_worker_leaves_a_trial_the_next_run_fails_and_the_count_still_finishes(
    tmp_path, capsys
):
    study = write_study(tmp_path, tune='pruner = "none"', epochs=12)
    db = tmp_path / "lba.db"
    worker = lba_process("tune", study, "--trials", 3, "--db", db)
    # wait until a trial has trained an epoch, then kill its worker outright
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(db) as conn:
                row = conn.execute(
                    "SELECT id FROM runs WHERE status = 'running' AND epoch >= 1"
                ).fetchone()
        except sqlite3.OperationalError:
            row = None  # the store is not made yet
        if row:
            break
        time.sleep(0.05)
    else:
        worker.kill()
        pytest.fail(f"no trial started: {worker.communicate()[1]}")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    killed_run = row[0]
    url = tune_storage.default_storage_url(db)
    before = trials_of(url, "tiny:l2")
    assert [t.state for t in before if t.user_attrs.get("run_id") == killed_run] == [
        TrialState.RUNNING
    ]
    finished_before = sum(t.state in tune_storage.FINISHED for t in before)

    code, _out, err = lba(capsys, "tune", study, "--trials", 2, "--db", db)
    assert code == 0, err
    assert "marked 1 trial(s) failed: their worker process is gone (tiny:l2 trial" in err
    optuna_study = optuna.load_study(study_name="tiny:l2", storage=url)
    trials = optuna_study.get_trials(deepcopy=False)
    dead = next(t for t in trials if t.user_attrs.get("run_id") == killed_run)
    assert dead.state == TrialState.FAIL
    assert "stopped mid-trial" in tune_storage.fail_reason(optuna_study.user_attrs, dead)
    assert sum(t.state in tune_storage.FINISHED for t in trials) == finished_before + 2
    run = Store(db, readonly=True).run(killed_run)
    assert run["status"] == "failed" and "stopped mid-trial" in run["error"]
    assert run["epoch"] >= 1  # its finished epochs stay


@pytest.mark.slow
def test_a_worker_killed_among_several_is_replaced_and_the_count_still_finishes(tmp_path):
    study = write_study(tmp_path, tune='pruner = "none"', epochs=12)
    db = tmp_path / "lba.db"
    command = lba_process("tune", study, "--trials", 3, "--jobs", 2, "--db", db)
    deadline = time.monotonic() + 180
    row = None
    while row is None and time.monotonic() < deadline and command.poll() is None:
        try:
            with sqlite3.connect(db) as conn:
                row = conn.execute(
                    "SELECT id, pid FROM runs WHERE status = 'running' AND epoch >= 1"
                ).fetchone()
        except sqlite3.OperationalError:
            pass  # the store is not made yet
        time.sleep(0.05)
    assert row is not None, command.communicate()[1]
    killed_run, worker_pid = row
    assert worker_pid != command.pid
    os.kill(worker_pid, signal.SIGKILL)
    _out, err = command.communicate(timeout=300)
    assert command.returncode == 0, err
    assert "tuning worker" in err and "was killed (signal 9); its trial is marked failed" in err
    url = tune_storage.default_storage_url(db)
    trials = trials_of(url, "tiny:l2")
    assert sum(t.state in tune_storage.FINISHED for t in trials) == 3
    assert [t.user_attrs["run_id"] for t in trials if t.state == TrialState.FAIL] == [killed_run]
    assert Store(db, readonly=True).run(killed_run)["status"] == "failed"


def test_stale_heartbeat_of_another_machine_fails_its_trial(tmp_path, capsys):
    """A worker elsewhere died: its trial stops sending heartbeats, and once the grace period
    has passed the next trial to start marks it failed."""
    study = write_study(tmp_path, tune="heartbeat = 1\ngrace = 2")
    db = tmp_path / "lba.db"
    assert lba(capsys, "tune", study, "--trials", 1, "--db", db)[0] == 0
    url = tune_storage.default_storage_url(db)
    # A process that claims a trial as another host, sends heartbeats, and hangs.
    hang = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time, optuna
            from engine import tune
            storage = tune.open_storage({url!r}, heartbeat=1, grace=2)
            study = optuna.load_study(study_name="tiny:l2", storage=storage)
            def objective(trial):
                trial.set_user_attr("host", "another-machine")
                time.sleep(1.5)  # mid-trial: it has sent heartbeats
                print("started", flush=True)
                time.sleep(600)
            study.optimize(objective, n_trials=1)
        """)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert hang.stdout.readline().strip() == "started"
    hang.kill()
    hang.wait()
    time.sleep(3)  # past the grace period
    assert lba(capsys, "tune", study, "--trials", 1, "--db", db)[0] == 0
    optuna_study = optuna.load_study(study_name="tiny:l2", storage=url)
    lost = [t for t in optuna_study.trials if t.user_attrs.get("host") == "another-machine"]
    assert [t.state for t in lost] == [TrialState.FAIL]
    assert (
        tune_storage.fail_reason(optuna_study.user_attrs, lost[0])
        == "no heartbeat for 2 s: its worker stopped"
    )


def test_diverged_trial_fails_with_its_reason_and_the_search_goes_on(tmp_path):
    path = write_study(tmp_path)
    path.write_text(path.read_text().replace("high = 0.3", "high = 100000.0"))
    study = load_study(path)
    db = tmp_path / "lba.db"
    Store(db).close()
    tuner = tuning.Tuner(study, tune_storage.default_storage_url(db), db)
    tuner.studies["l2"].enqueue_trial({"train.lr": 1e5, "method.lam": 1e-3})
    budget = tuner.plan(2)
    tuner.run(budget)
    trials = tuner.studies["l2"].get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    reason = trials[0].user_attrs["fail_reason"]
    assert reason.startswith("loss became") and "at epoch 1" in reason
    run = Store(db, readonly=True).run(trials[0].user_attrs["run_id"])
    assert run["status"] == "failed" and run["error"] == reason
    assert budget.snapshot()[0] | {"best": None} == {
        "method": "l2", "target": 2, "done": 2, "running": 0, "failed": 1, "best": None
    }  # fmt: skip


def test_pruned_trial_is_marked_and_keeps_its_curves(tmp_path):
    study = load_study(write_study(tmp_path, tune="pruner_startup = 1\npruner_warmup = 1",
                                   epochs=4))  # fmt: skip
    db = tmp_path / "lba.db"
    Store(db).close()
    tuner = tuning.Tuner(study, tune_storage.default_storage_url(db), db)
    tuner.studies["l2"].enqueue_trial({"train.lr": 0.3, "method.lam": 1e-5})
    tuner.studies["l2"].enqueue_trial({"train.lr": 0.01, "method.lam": 1e-2})
    tuner.run(tuner.plan(2))
    first, second = tuner.studies["l2"].get_trials(deepcopy=False)
    assert (first.state, second.state) == (TrialState.COMPLETE, TrialState.PRUNED)
    assert sorted(first.intermediate_values) == [1, 2, 3, 4]
    assert list(second.intermediate_values) == [1]
    store = Store(db, readonly=True)
    run = store.run(second.user_attrs["run_id"])
    assert run["status"] == "pruned" and run["error"].startswith("pruned at epoch 1: val_acc")
    assert [e["epoch"] for e in store.epochs(run["id"])] == [1]
    assert store.epochs(run["id"])[0]["val_acc"] == pytest.approx(second.intermediate_values[1])


def test_rerun_resumes_and_adds_the_requested_finished_trials(tmp_path, capsys):
    study = write_study(tmp_path, methods='["none", "l2"]')
    db = tmp_path / "lba.db"
    assert lba(capsys, "tune", study, "--trials", 1, "--db", db)[0] == 0
    code, _out, err = lba(capsys, "tune", study, "--trials", 2, "--resume", "--db", db)
    assert code == 0, err
    url = tune_storage.default_storage_url(db)
    for method in ("none", "l2"):
        trials = trials_of(url, f"tiny:{method}")
        assert [t.number for t in trials] == [0, 1, 2]
        assert all(t.state in tune_storage.FINISHED for t in trials)
    # the same tuning by name, as a worker without the study file would resume it
    code, _out, err = lba(capsys, "tune", "tiny", "--trials", 1, "--method", "l2", "--db", db)
    assert code == 0, err
    assert len(trials_of(url, "tiny:l2")) == 4 and len(trials_of(url, "tiny:none")) == 3
    # changed settings are refused rather than mixed into the study
    code, _out, err = lba(capsys, "tune", study, "--set", "tune.train.epochs=3", "--db", db)
    assert code == 2
    assert err.strip() == (
        "Error: tuning study 'tiny:none' was started with other settings (config.train.epochs "
        '2 -> 3); restore them, or start a new tuning with [tune] name = "..."'
    )


def test_the_study_opens_with_optuna_load_study_from_the_same_url(tmp_path, capsys):
    study = write_study(tmp_path)
    db = tmp_path / "lba.db"
    assert lba(capsys, "tune", study, "--trials", 1, "--db", db)[0] == 0
    loaded = optuna.load_study(study_name="tiny:l2", storage=f"sqlite:///{db}")
    assert loaded.direction == optuna.study.StudyDirection.MAXIMIZE
    assert loaded.user_attrs["lba_tuning"] == "tiny"
    assert loaded.best_trial.params.keys() == {"train.lr", "method.lam"}
    assert optuna.get_all_study_names(f"sqlite:///{db}") == ["tiny:l2"]


def test_multi_objective_tuning_has_a_pareto_front_and_no_pruner(tmp_path, capsys):
    tune = 'objectives = ["val_acc", "val_pgd_acc"]\nsampler = "random"'
    study = write_study(tmp_path, tune=tune)
    db = tmp_path / "lba.db"
    code, out, err = lba(capsys, "tune", study, "--trials", 3, "--db", db)
    assert code == 0, err
    assert load_study(study).tune["pruner"] == "none"
    url = tune_storage.default_storage_url(db)
    trials = trials_of(url, "tiny:l2")
    assert all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in trials)
    for trial in trials:
        # PGD on validation images for the objective; the test set's attacks stay a summary
        assert trial.values[1] == trial.user_attrs["val_pgd_acc"]
        assert 0 <= trial.values[1] <= trial.values[0] + 0.05
    [report] = tune_storage.report(url, "tiny", ["l2"], ["val_acc", "val_pgd_acc"])
    assert report["front"] and report["best"]["number"] in [t["number"] for t in report["front"]]
    code, out, err = lba(capsys, "tune", study, "--show", "--db", db)
    assert code == 0, err
    assert "tiny:l2: Pareto front" in out and "val_pgd_acc" in out


@pytest.mark.slow
def test_final_retrains_each_best_setting_on_seeds_and_prints_the_test_table(tmp_path, capsys):
    final = "\n[tune.final]\nseeds = [0, 1]\ndepths = [1]\n"
    study = write_study(tmp_path, methods='["none", "l2"]', extra=final)
    db = tmp_path / "lba.db"
    assert lba(capsys, "tune", study, "--trials", 2, "--db", db)[0] == 0
    code, out, err = lba(capsys, "tune", study, "--final", "--db", db)
    assert code == 0, err
    assert "tiny-tuned: accuracy % (mean ± std over seeds)" in out
    store = Store(db, readonly=True)
    runs = store.runs("tiny-tuned")
    assert sorted((r["method"], r["seed"], r["status"]) for r in runs) == [
        ("l2", 0, "done"), ("l2", 1, "done"), ("none", 0, "done"), ("none", 1, "done")
    ]  # fmt: skip
    url = tune_storage.default_storage_url(db)
    best = optuna.load_study(study_name="tiny:l2", storage=url).best_trial
    run = store.run(next(r["id"] for r in runs if r["method"] == "l2"))
    assert run["config"]["tuned"] == {"study": "tiny:l2", "trial": best.number,
                                      "params": best.params}  # fmt: skip
    assert run["config"]["train"]["lr"] == best.params["train.lr"] and run["test_acc"] > 0.3
    # a second --final finds every run done
    code, out, err = lba(capsys, "tune", study, "--final", "--db", db)
    assert code == 0 and len(store.runs("tiny-tuned")) == 4


def test_export_writes_every_trial_with_state_parameters_and_metrics(tmp_path, capsys):
    study = write_study(tmp_path, methods='["none", "l2"]')
    db = tmp_path / "lba.db"
    assert lba(capsys, "tune", study, "--trials", 2, "--db", db)[0] == 0
    target = tmp_path / "trials.csv"
    code, out, err = lba(capsys, "export", "tiny", "--what", "trials", "--csv", target, "--db", db)
    assert code == 0, err
    assert out.strip() == f"wrote {target} (4 rows)"
    rows = list(csv.DictReader(target.open(encoding="utf-8")))
    assert [(r["method"], r["trial"]) for r in rows] == [
        ("none", "0"), ("none", "1"), ("l2", "0"), ("l2", "1")
    ]  # fmt: skip
    for row in rows:
        assert row["state"] in ("complete", "pruned") and float(row["param:train.lr"]) > 0
        assert row["optuna_study"] == f"tiny:{row['method']}" and row["run_id"]
    complete = [r for r in rows if r["state"] == "complete"]
    assert all(float(r["value:val_acc"]) == float(r["val_acc"]) for r in complete)
    assert all(r["test_acc"] and r["fgsm@0.01"] for r in complete)
    assert [r["param:method.lam"] == "" for r in rows] == [True, True, False, False]


# ---------------------------------------------------------------------------------------------
# PostgreSQL: workers on several machines


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_fill_one_postgres_study_and_export_reads_it_back(
    tmp_path, capsys, postgres_url
):
    """Two `lba tune` processes, as on two machines (each with its own local store), share one
    study on a PostgreSQL server; `lba export` reads the trials back with no local store."""
    study = write_study(tmp_path, methods='["none", "l2"]')
    workers = [
        lba_process("tune", study, "--trials", 2, "--storage", postgres_url,
                    "--db", tmp_path / f"machine{i}.db")
        for i in range(2)
    ]  # fmt: skip
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    for method in ("none", "l2"):
        trials = trials_of(postgres_url, f"tiny:{method}")
        assert len(trials) == 4 and all(t.state in tune_storage.FINISHED for t in trials)
    # each machine's store has the runs it trained, linked to their trial numbers
    numbers = []
    for i in range(2):
        runs = Store(tmp_path / f"machine{i}.db", readonly=True).runs("tiny")
        assert len(runs) == 4
        numbers += [(r["tune_study"], r["trial_number"]) for r in runs]
    assert sorted(numbers) == sorted((f"tiny:{m}", n) for m in ("none", "l2") for n in range(4))

    target = tmp_path / "trials.csv"
    code, out, err = lba(capsys, "export", "tiny", "--what", "trials", "--csv", target,
                         "--storage", postgres_url, "--db", tmp_path / "absent.db")  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader(target.open(encoding="utf-8")))
    assert len(rows) == 8 and {r["state"] for r in rows} <= {"complete", "pruned"}
    assert all(r["val_acc"] and r["log10_lb"] for r in rows)
    assert not (tmp_path / "absent.db").exists()
    # and the tuning, by name, from the server alone
    code, out, err = lba(capsys, "tune", "tiny", "--show", "--storage", postgres_url,
                         "--db", tmp_path / "absent.db")  # fmt: skip
    assert code == 0, err
    assert "tiny: best trial per method" in out and not (tmp_path / "absent.db").exists()
    study_attrs = optuna.load_study(study_name="tiny:l2", storage=postgres_url).user_attrs
    assert json.dumps(study_attrs["lba_study"]["tune"]["space"]["l2"]) == json.dumps(
        {"lam": {"type": "log", "low": 1e-5, "high": 1e-2}}
    )
