"""`lba tune` and `lba export --what trials` on bad input: one exact `Error:` line, exit 2, and
nothing written. (The searches themselves are tested in tests/engine/test_tune.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lba_tui import cli

ROOT = Path(__file__).resolve().parents[2]
SCHEMES = "use sqlite:///FILE or postgresql://USER@HOST/DATABASE"


def lba(capsys, *args: object) -> tuple[int, str, str]:
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


@pytest.fixture
def folder(tmp_path):
    """An empty folder with a study file that has no [tune] section beside nothing else."""
    (tmp_path / "plain.toml").write_text('[study]\nname = "plain"\n')
    return tmp_path


def assert_error(result: tuple[int, str, str], line: str) -> None:
    code, out, err = result
    assert (code, out, err) == (2, "", f"Error: {line}\n")


def test_a_study_without_tune_section_is_refused(capsys, folder):
    plain = folder / "plain.toml"
    result = lba(capsys, "tune", plain, "--db", folder / "lba.db")
    assert_error(result, f"{plain} has no [tune] section; add one (docs/tune.md lists its keys)")
    assert sorted(p.name for p in folder.iterdir()) == ["plain.toml"]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--trials", "0"], "--trials must be 1 or more, got 0"),
        (["--jobs", "0"], "--jobs must be 1 or more, got 0"),
        (["--show", "--final"], "--show and --final do different things; pass one of them"),
        (["--show", "--trials", "3"], "--trials is for searching; drop it with --show"),
        (["--final", "--resume"], "--resume is for searching; drop it with --final"),
        (
            ["--storage", "redis://localhost/0"],
            f"--storage redis://localhost/0: unsupported scheme 'redis'; {SCHEMES}",
        ),
        (["--storage", "lba.db"], f"--storage 'lba.db' is not a storage URL; {SCHEMES}"),
        (
            ["--storage", "sqlite:///:memory:", "--jobs", "2"],
            (
                "--storage sqlite:///:memory: is an in-memory database, which 2 worker processes "
                "cannot share; use a file (sqlite:///lba.db) or a PostgreSQL server"
            ),
        ),
        (
            ["--storage", "sqlite://", "--show"],
            (
                "--storage sqlite:// is an in-memory database: it is empty in every new command; "
                "point at the file or server the study was tuned in"
            ),
        ),
        (
            ["--method", "magic"],
            "--method 'magic' is not tuned by {studies}/quickstart.toml; [tune] methods: none, lba",
        ),
    ],
)
def test_bad_options_end_in_one_error_line_and_leave_nothing(capsys, folder, args, line):
    from engine.study import STUDIES_DIR

    result = lba(capsys, "tune", "quickstart", *args, "--db", folder / "lba.db")
    assert_error(result, line.format(studies=STUDIES_DIR))
    assert sorted(p.name for p in folder.iterdir()) == ["plain.toml"]


def test_a_missing_sqlite_storage_file_is_refused(capsys, folder):
    url = f"sqlite:///{folder}/elsewhere/optuna.db"
    result = lba(capsys, "tune", "quickstart", "--storage", url, "--db", folder / "lba.db")
    assert_error(
        result,
        f"--storage {url}: no file {folder}/elsewhere/optuna.db; a SQLite storage must exist "
        "already, or be the store itself (the default; pick it with --db)",
    )
    assert sorted(p.name for p in folder.iterdir()) == ["plain.toml"]


@pytest.mark.parametrize(
    "args",
    [
        ["tune", "nosuch"],
        ["tune", "nosuch", "--show"],
        ["tune", "quickstart", "--resume"],
        ["tune", "quickstart", "--final"],
        ["export", "nosuch", "--what", "trials", "--csv", "{folder}/trials.csv"],
    ],
    ids=["name", "show", "resume", "final", "export"],
)
def test_an_unknown_tuning_is_not_created_and_the_known_ones_are_listed(capsys, folder, args):
    db = folder / "lba.db"
    name = "quickstart" if "quickstart" in args else "nosuch"
    args = [a.format(folder=folder) for a in args]
    result = lba(capsys, *args, "--db", db)
    assert_error(
        result,
        f"no tuning {name!r} in sqlite:///{db}; tunings there: none (start one by passing "
        "the study file)",
    )
    assert sorted(p.name for p in folder.iterdir()) == ["plain.toml"]


def test_export_of_trials_writes_csv_only(capsys, folder):
    result = lba(capsys, "export", "quickstart", "--what", "trials", "--markdown", folder / "t.md")
    assert_error(result, "--what trials writes CSV only; drop --markdown/--latex")


def test_help_lists_tune_without_loading_torch_or_optuna():
    probe = (
        "import sys; from lba_tui import cli; "
        "print('torch' in sys.modules, 'optuna' in sys.modules, 'sqlalchemy' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "False", "False"]
    done = subprocess.run(
        [sys.executable, "-m", "lba_tui.cli", "tune", "--help"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "Example: lba tune studies/paper-fmnist.toml --trials 50 --jobs 2" in done.stdout
    assert "--storage" in done.stdout and "--final" in done.stdout


def test_export_storage_option_belongs_to_trials(capsys, folder):
    result = lba(
        capsys, "export", "quickstart", "--what", "runs", "--csv", folder / "r.csv",
        "--storage", "sqlite:///x.db",
    )  # fmt: skip
    assert_error(result, "--storage is read by --what trials only; drop it")
