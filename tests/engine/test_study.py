"""Study files: the shipped ones load, overrides apply, and every mistake names file and key."""

import pytest

from engine.errors import StudyError
from engine.study import STUDIES_DIR, attack_plan, load_study


@pytest.mark.parametrize("path", sorted(STUDIES_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_study_loads_and_has_cells(path):
    study = load_study(path)
    assert study.cells()
    for cell in study.cells():
        assert cell.config["method"]["name"] == cell.method
        assert attack_plan(cell.config)


def test_paper_study_has_fifteen_cells_and_per_depth_l1_strength():
    study = load_study("paper-fmnist")
    assert len(study.cells()) == 15
    lam = {c.depth: c.config["method"]["lam"] for c in study.cells() if c.method == "l1"}
    assert lam == {3: 1e-4, 5: 1e-3, 7: 1e-4}
    assert len(study.reference) == 15


def test_overrides_use_dotted_keys_and_toml_values():
    study = load_study(None, ["train.epochs=5", "grid.method=['lba']", "data.normalize=true"])
    assert study.config["train"]["epochs"] == 5
    assert [c.method for c in study.cells()] == ["lba"]
    assert study.config["data"]["normalize"] is True


def write(tmp_path, text):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[train]\nlrr = 0.1\n", "bad.toml: unknown key 'train.lrr'; allowed in [train]: "),
        ("[train]\nepochs = 'ten'\n", "bad.toml: key 'train.epochs' must be an integer, got 'ten'"),
        ("[train]\nepochs = 0\n", "bad.toml: key 'train.epochs' must be greater than 0, got 0"),
        (
            "[grid]\nmethod = ['lba', 'magic']\n",
            "bad.toml: key 'grid.method' is 'magic'; allowed: none, l1, l2, dropout, lba",
        ),
        ("[data]\ndataset = 'imagenet'\n", "bad.toml: key 'data.dataset' is 'imagenet'"),
        ("[methods.l1]\nlamda = 1\n", "bad.toml: unknown key 'methods.l1.lamda'"),
        ("[trian]\n", "bad.toml: unknown section [trian]"),
        ("[train\n", "bad.toml: not valid TOML"),
        ("[attacks]\nprotocols = ['strong']\n", "key 'attacks.protocols' is 'strong'"),
        ("[[reference]]\nmethod = 'lba'\n", "reference entry 1 needs 'method' and 'depth'"),
        ("[train]\ndevice = 'tpu'\n", "key 'train.device' is 'tpu'; allowed: auto, cpu"),
    ],
)
def test_malformed_study_names_file_key_and_what_is_allowed(tmp_path, text, message):
    with pytest.raises(StudyError) as info:
        load_study(write(tmp_path, text))
    assert message in str(info.value)


def test_missing_study_lists_the_shipped_ones(tmp_path):
    with pytest.raises(
        StudyError, match="no study file .*nope.toml; shipped studies: .*quickstart"
    ):
        load_study(tmp_path / "nope.toml")


def test_bad_override_syntax_is_explained():
    with pytest.raises(StudyError, match="expected key=value, e.g. --set train.epochs=5"):
        load_study(None, ["train.epochs"])
