"""The `lba` command line: real runs on Fashion-MNIST, exact error lines and exit codes."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from engine.store import Store
from lba_tui import cli


def lba(capsys, *args: str) -> tuple[int, str, str]:
    """Run the command line in-process; return exit code, stdout, stderr."""
    saved = sys.argv
    sys.argv = ["lba", *args]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = saved
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The quickstart on the real Fashion-MNIST subset, cut to 2 epochs, in a fresh store."""
    db = tmp_path_factory.mktemp("run") / "lba.db"
    done = subprocess.run(
        [sys.executable, "-m", "lba_tui.cli", "run", "--db", str(db), "--set", "train.epochs=2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return db, done.stdout


def test_quickstart_run_writes_runs_epochs_sigmas_and_attacks(trained):
    db, stdout = trained
    store = Store(db, readonly=True)
    runs = store.runs()
    assert [(r["method"], r["depth"], r["status"], r["epoch"]) for r in runs] == [
        ("none", 3, "done", 2),
        ("lba", 3, "done", 2),
    ]
    for run in runs:
        assert run["dataset"] == "fashion-mnist" and run["device"] == "cpu"
        assert 0.3 < run["test_acc"] < 1.0
        epochs = store.epochs(run["id"])
        assert [e["epoch"] for e in epochs] == [1, 2]
        # n = 3: input, three residual layers, output
        assert len(store.sigmas(run["id"])) == 2 * 5
        attacks = store.attacks(run["id"])
        assert sorted((a["attack"], a["eps"]) for a in attacks) == [
            ("clean", 0.0),
            ("fgsm", 0.01),
            ("fgsm", 0.02),
            ("fgsm", 0.03),
            ("pgd", 0.02),
        ]
        assert all(a["n"] == 1000 for a in attacks)
    lba_epochs = store.epochs(runs[1]["id"])
    assert all(e["lba_layer"] is not None and e["penalty"] > 0 for e in lba_epochs)
    assert sum(eval(lba_epochs[0]["draws_json"])) == 100  # one draw per batch of 100
    assert "FGSM .01" in stdout


def test_rerunning_a_finished_study_skips_its_runs(trained, capsys):
    db, _ = trained
    code, out, err = lba(capsys, "run", "--db", str(db), "--set", "train.epochs=2")
    assert code == 0
    assert "skipping 2 finished run(s)" in err and "nothing to train" in out


def test_ls_show_and_table_read_the_store(trained, capsys):
    db, _ = trained
    code, out, _ = lba(capsys, "ls", "--db", str(db))
    assert code == 0 and "quickstart" in out and "done" in out
    code, out, _ = lba(capsys, "show", "1", "--db", str(db))
    assert code == 0 and "sigma per layer: in" in out and "pgd" in out
    code, out, _ = lba(capsys, "table", "--db", str(db))
    assert code == 0 and "83.12" in out and "published" in out


def test_export_writes_csv_markdown_latex_and_raw_rows(trained, capsys, tmp_path):
    db, _ = trained
    code, out, _ = lba(
        capsys,
        "export",
        "quickstart",
        "--db",
        str(db),
        "--csv",
        str(tmp_path / "t.csv"),
        "--latex",
        str(tmp_path / "t.tex"),
        "--markdown",
        str(tmp_path / "t.md"),
    )
    assert code == 0 and "t.csv (2 rows)" in out
    table = pd.read_csv(tmp_path / "t.csv")
    assert list(table["method"]) == ["none", "lba"]
    assert table.loc[1, "fgsm@0.01_ref"] == 73.7
    assert r"\bottomrule" in (tmp_path / "t.tex").read_text()
    code, _, _ = lba(
        capsys,
        "export",
        "quickstart",
        "--db",
        str(db),
        "--what",
        "epochs",
        "--csv",
        str(tmp_path / "e.csv"),
    )
    assert code == 0 and len(pd.read_csv(tmp_path / "e.csv")) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "99"], "Error: no run 99 in "),
        (["table", "nope"], "Error: no study 'nope' in "),
        (
            ["export", "quickstart"],
            "Error: export needs --csv FILE, --markdown FILE or --latex FILE",
        ),
        (
            ["export", "quickstart", "--what", "weights", "--csv", "x.csv"],
            "Error: --what is 'weights'; allowed: table, runs, epochs, attacks, shifts, certified, "
            "lipschitz_estimates, pgd_curve, trials",
        ),
        (
            ["export", "quickstart", "--csv", "/no/such/dir/x.csv"],
            "Error: cannot write /no/such/dir/x.csv: folder /no/such/dir does not exist",
        ),
    ],
)
def test_bad_reads_end_in_one_error_line_and_exit_2(trained, capsys, args, message):
    db, _ = trained
    code, out, err = lba(capsys, *args, "--db", str(db))
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1, err


def test_bad_study_file_names_file_and_key(tmp_path, capsys):
    study = tmp_path / "bad.toml"
    study.write_text("[train]\nepochz = 3\n")
    code, _, err = lba(capsys, "run", str(study), "--db", str(tmp_path / "a.db"))
    assert code == 2
    assert err.startswith(f"Error: {study}: unknown key 'train.epochz'; allowed in [train]: ")


def test_missing_data_names_every_place_and_exits_2(tmp_path, capsys, monkeypatch):
    import engine.data

    monkeypatch.setattr(engine.data, "SYSTEM_DATA_DIR", tmp_path / "system")
    monkeypatch.setenv("LBA_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(name, root):
        raise OSError("network unreachable")

    monkeypatch.setattr(engine.data, "download_dataset", offline)
    for place in ("given", "env", "cache", "system"):
        (tmp_path / place).mkdir()
    code, _, err = lba(
        capsys, "run", "--db", str(tmp_path / "a.db"), "--data-dir", str(tmp_path / "given")
    )
    assert code == 2, err
    for place in ("given", "env", "cache", "system"):
        assert str(tmp_path / place) in err
    assert "Traceback" not in err
    # the data is checked before any run is recorded
    assert Store(tmp_path / "a.db", readonly=True).runs() == []


def test_unwritable_db_is_one_error_line(capsys):
    code, _, err = lba(capsys, "run", "--db", "/proc/lba.db")
    assert code == 2
    assert err.startswith("Error: cannot open /proc/lba.db as an lba store")


def test_help_does_not_import_torch():
    code = "import sys; from lba_tui import cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_sigint_marks_the_run_interrupted_and_keeps_finished_epochs(tmp_path):
    db = tmp_path / "a.db"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lba_tui.cli",
            "run",
            "--db",
            str(db),
            "--set",
            "train.epochs=500",
            "--set",
            "grid.method=['none']",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.5)
        if db.exists():
            # the file exists a moment before its schema is committed
            reader = Store(db, readonly=True)
            rows = reader.query("SELECT epoch FROM runs") if reader.schema_version else []
            if rows and rows[0]["epoch"] >= 2:
                break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "marked interrupted" in err and "Traceback" not in err
    assert "the stopped one from its first epoch" in err
    store = Store(db, readonly=True)
    run = store.runs()[0]
    assert run["status"] == "interrupted"
    assert [e["epoch"] for e in store.epochs(run["id"])] == list(range(1, run["epoch"] + 1))


def test_usage_errors_exit_2_without_a_traceback(capsys):
    for args in (["run", "--jobs", "x"], ["frobnicate"], ["show", "abc"]):
        code, _, err = lba(capsys, *args)
        assert code == 2, args
        assert "Traceback" not in err and "Try 'lba" in err
