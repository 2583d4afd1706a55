"""Study files: what to train, how, and which cells (depth x method x seed) to compare.

A study is a TOML file. Every key is checked against the defaults below; an unknown key, a
value of the wrong type or out of range stops the study with a message naming the file, the
key and what is allowed. ``--set key=value`` overrides use the same dotted keys. This module
imports no torch.
"""

from __future__ import annotations

import copy
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import StudyError

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"
DEFAULT_STUDY = STUDIES_DIR / "quickstart.toml"

METHODS = ("none", "l1", "l2", "dropout", "lba", "lba_2025", "lba_global")
DATASETS = ("fashion-mnist", "mnist", "cifar10", "wine", "circles")
PROTOCOLS = ("paper", "standard")

# Every allowed key with its default; the type of the default is the type required.
DEFAULTS: dict[str, Any] = {
    "study": {"name": "", "description": ""},
    "data": {
        "dataset": "fashion-mnist",
        "train_subset": 0,  # 0 = every training sample; N = the first N, as the paper does
        "val_size": 0.0,  # a fraction of the training data, or a count when >= 1
        "normalize": False,  # mean/std normalization inside the model
        "data_dir": "",
    },
    "model": {
        "arch": "mlp",
        "width": 20,
        "filters": 32,
        "init": "glorot",
    },
    "train": {
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.0,
        "batch_size": 100,
        "epochs": 60,
        "device": "auto",
        "test_every": 1,  # evaluate on the test set every k epochs (and always at the end)
    },
    "grid": {"depth": [3], "method": ["none", "lba"], "seed": [0]},
    "attacks": {"protocols": ["paper"], "paper": {}, "standard": {}},
}

METHOD_KEYS: dict[str, type | tuple[type, ...]] = {
    "lam": (int, float),
    "p": (int, float),
    "pool": str,
    "draw": str,
    "norm": str,
    "sigma": str,
    "power_iters": int,
}
ATTACK_KEYS: dict[str, type | tuple[type, ...]] = {
    "n": int,
    "fgsm_eps": list,
    "pgd": dict,
}
PGD_KEYS: dict[str, type | tuple[type, ...]] = {
    "eps": (int, float),
    "step_size": (int, float),
    "steps": int,
    "random_start": bool,
    "restarts": int,
}
REFERENCE_KEYS = ("method", "depth", "train", "test", "gap", "fgsm", "pgd", "log10_lb")

# The attack grids of METHOD.md, used where a study does not set its own.
PAPER_ATTACKS = {
    "n": 1000,
    "fgsm_eps": [0.01, 0.02, 0.03],
    "pgd": {"eps": 0.02, "step_size": 0.005, "steps": 10, "random_start": False, "restarts": 1},
}
STANDARD_ATTACKS = {
    "fashion-mnist": {
        "n": 0,
        "fgsm_eps": [0.05, 0.1, 0.2],
        "pgd": {"eps": 0.1, "step_size": 0.01, "steps": 40, "random_start": True, "restarts": 1},
    },
    "mnist": {
        "n": 0,
        "fgsm_eps": [0.1, 0.2, 0.3],
        "pgd": {"eps": 0.3, "step_size": 0.01, "steps": 40, "random_start": True, "restarts": 1},
    },
    "cifar10": {
        "n": 0,
        "fgsm_eps": [2 / 255, 4 / 255, 8 / 255],
        "pgd": {
            "eps": 8 / 255,
            "step_size": 2 / 255,
            "steps": 10,
            "random_start": True,
            "restarts": 1,
        },
    },
    # Standardized tabular features are not pixels; these budgets are in feature units.
    "wine": {
        "n": 0,
        "fgsm_eps": [0.05, 0.1, 0.2],
        "pgd": {"eps": 0.1, "step_size": 0.01, "steps": 40, "random_start": True, "restarts": 1},
    },
    "circles": {
        "n": 0,
        "fgsm_eps": [0.05, 0.1, 0.2],
        "pgd": {"eps": 0.1, "step_size": 0.01, "steps": 40, "random_start": True, "restarts": 1},
    },
}


@dataclass
class Cell:
    """One run of a study: a method at a depth with a seed, and its fully resolved config."""

    method: str
    depth: int
    seed: int
    config: dict

    @property
    def label(self) -> str:
        return f"{self.method} n={self.depth} seed={self.seed}"


@dataclass
class Study:
    """A parsed, validated study file."""

    name: str
    path: str
    description: str
    config: dict
    methods: dict[str, dict] = field(default_factory=dict)
    reference: list[dict] = field(default_factory=list)
    tune: dict = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        """Every (depth, method, seed) of the grid with its resolved run config."""
        grid = self.config["grid"]
        cells = []
        for depth, method, seed in itertools.product(
            grid["depth"], grid["method"], grid["seed"]
        ):
            cells.append(Cell(method, depth, seed, self.run_config(method, depth, seed)))
        return cells

    def run_config(self, method: str, depth: int, seed: int, **method_overrides: Any) -> dict:
        """The config of one run: data, model, train, attacks, and the method's settings."""
        config = {k: copy.deepcopy(v) for k, v in self.config.items() if k not in ("grid",)}
        settings = dict(self.methods.get(method, {}))
        per_depth = settings.pop("depth", {})
        settings.update(per_depth.get(str(depth), {}))
        settings.update(method_overrides)
        config["method"] = {"name": method, **settings}
        config["model"]["depth"] = depth
        config["train"]["seed"] = seed
        config["study"] = {"name": self.name, "path": self.path}
        return config


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "integer", float: "number", str: "string", bool: "true/false", list: "list",
             dict: "table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _check_type(where: str, key: str, value: Any, kind: type | tuple[type, ...]) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # TOML's true is a Python int subclass; it is never an acceptable number here.
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise StudyError(f"{where}: key '{key}' must be a {_type_name(kind)}, got {value!r}")


def _merge_section(where: str, prefix: str, defaults: dict, given: dict) -> dict:
    merged = copy.deepcopy(defaults)
    for key, value in given.items():
        dotted = f"{prefix}.{key}"
        if key not in defaults:
            raise StudyError(
                f"{where}: unknown key '{dotted}'; allowed in [{prefix}]: "
                f"{', '.join(sorted(defaults))}"
            )
        default = defaults[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise StudyError(f"{where}: key '{dotted}' must be a table, got {value!r}")
            merged[key] = value if not default else _merge_section(where, dotted, default, value)
        else:
            kind: type | tuple[type, ...] = type(default)
            if kind is float:
                kind = (int, float)
            _check_type(where, dotted, value, kind)
            merged[key] = value
    return merged


def _check_choice(where: str, key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise StudyError(
            f"{where}: key '{key}' is {value!r}; allowed: {', '.join(map(str, allowed))}"
        )


def _check_positive(where: str, key: str, value: float, *, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        rule = "0 or more" if zero_ok else "greater than 0"
        raise StudyError(f"{where}: key '{key}' must be {rule}, got {value!r}")


def _check_method(where: str, name: str, settings: dict) -> None:
    for key, value in settings.items():
        if key == "depth":
            if not isinstance(value, dict):
                raise StudyError(f"{where}: key 'methods.{name}.depth' must be a table")
            for depth, override in value.items():
                if not str(depth).isdigit() or not isinstance(override, dict):
                    raise StudyError(
                        f"{where}: key 'methods.{name}.depth.{depth}' must be a table keyed "
                        "by an integer depth, e.g. [methods.l1.depth.5]"
                    )
                _check_method(where, f"{name}.depth.{depth}", override)
            continue
        if key not in METHOD_KEYS:
            raise StudyError(
                f"{where}: unknown key 'methods.{name}.{key}'; allowed: "
                f"{', '.join(sorted([*METHOD_KEYS, 'depth']))}"
            )
        _check_type(where, f"methods.{name}.{key}", value, METHOD_KEYS[key])


def _check_attacks(where: str, section: str, given: dict) -> None:
    for key, value in given.items():
        dotted = f"attacks.{section}.{key}"
        if key not in ATTACK_KEYS:
            raise StudyError(
                f"{where}: unknown key '{dotted}'; allowed: {', '.join(sorted(ATTACK_KEYS))}"
            )
        _check_type(where, dotted, value, ATTACK_KEYS[key])
        if key == "fgsm_eps":
            for eps in value:
                _check_type(where, dotted, eps, (int, float))
                _check_positive(where, dotted, eps, zero_ok=True)
        if key == "pgd":
            for pkey, pvalue in value.items():
                if pkey not in PGD_KEYS:
                    raise StudyError(
                        f"{where}: unknown key '{dotted}.{pkey}'; allowed: "
                        f"{', '.join(sorted(PGD_KEYS))}"
                    )
                _check_type(where, f"{dotted}.{pkey}", pvalue, PGD_KEYS[pkey])


def attack_plan(config: dict) -> dict[str, dict]:
    """The attack settings per protocol of a run config, defaults filled in."""
    dataset = config["data"]["dataset"]
    plan = {}
    for protocol in config["attacks"]["protocols"]:
        base = copy.deepcopy(PAPER_ATTACKS if protocol == "paper" else STANDARD_ATTACKS[dataset])
        given = config["attacks"].get(protocol, {})
        base.update({k: v for k, v in given.items() if k != "pgd"})
        if "pgd" in given:
            base["pgd"] = {**base["pgd"], **given["pgd"]} if given["pgd"] else {}
        plan[protocol] = base
    return plan


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML reads it (``5``, ``0.1``, ``true``, ``[3, 5]``), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` overrides (dotted keys, e.g. ``train.epochs=5``) to a raw study."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise StudyError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=5")
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise StudyError(f"--set {item!r}: '{part}' is not a table")
        node[parts[-1]] = parse_value(value.strip())
    return raw


def load_study(path: str | Path | None = None, overrides: list[str] | None = None) -> Study:
    """Read, override and validate a study file.

    Args:
        path: the TOML file; None means the embedded quickstart. A bare name such as
            ``paper-fmnist`` is looked up in the shipped ``studies/`` folder.
        overrides: ``key=value`` strings, applied before validation.

    Raises:
        StudyError: the file is missing, not TOML, or breaks a rule; the message says which.
    """
    path = Path(path) if path else DEFAULT_STUDY
    if not path.exists() and not path.suffix and (STUDIES_DIR / f"{path}.toml").exists():
        path = STUDIES_DIR / f"{path}.toml"
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        shipped = ", ".join(sorted(p.stem for p in STUDIES_DIR.glob("*.toml")))
        raise StudyError(f"no study file {where}; shipped studies: {shipped}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise StudyError(f"{where}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise StudyError(f"cannot read study file {where}: {exc.strerror}") from None
    if overrides:
        raw = apply_overrides(raw, overrides)
    return validate(raw, where)


def validate(raw: dict, where: str) -> Study:
    """Check a raw study dictionary and resolve its defaults."""
    sections = set(DEFAULTS) | {"methods", "reference", "tune"}
    for key in raw:
        if key not in sections:
            raise StudyError(
                f"{where}: unknown section [{key}]; allowed: {', '.join(sorted(sections))}"
            )
    config = {}
    for section, defaults in DEFAULTS.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise StudyError(f"{where}: [{section}] must be a table, got {given!r}")
        if section == "attacks":
            unknown = set(given) - set(defaults)
            if unknown:
                raise StudyError(
                    f"{where}: unknown key 'attacks.{sorted(unknown)[0]}'; allowed: "
                    f"{', '.join(sorted(defaults))}"
                )
            config[section] = {**copy.deepcopy(defaults), **given}
            continue
        config[section] = _merge_section(where, section, defaults, given)

    name = config["study"]["name"] or Path(where).stem
    data, model, train, grid = config["data"], config["model"], config["train"], config["grid"]
    _check_choice(where, "data.dataset", data["dataset"], DATASETS)
    _check_positive(where, "data.train_subset", data["train_subset"], zero_ok=True)
    _check_positive(where, "data.val_size", data["val_size"], zero_ok=True)
    _check_choice(where, "model.arch", model["arch"], ("mlp", "cnn"))
    _check_choice(where, "model.init", model["init"], ("glorot", "torch"))
    _check_positive(where, "model.width", model["width"])
    _check_positive(where, "model.filters", model["filters"])
    _check_choice(where, "train.optimizer", train["optimizer"], ("sgd", "adam"))
    _check_positive(where, "train.lr", train["lr"])
    _check_positive(where, "train.momentum", train["momentum"], zero_ok=True)
    _check_positive(where, "train.batch_size", train["batch_size"])
    _check_positive(where, "train.epochs", train["epochs"])
    _check_positive(where, "train.test_every", train["test_every"])
    if train["device"] != "auto" and train["device"].split(":")[0] not in ("cpu", "cuda", "mps"):
        raise StudyError(
            f"{where}: key 'train.device' is {train['device']!r}; allowed: auto, cpu, cuda, "
            "cuda:N, mps"
        )
    for key in ("depth", "method", "seed"):
        values = grid[key]
        if not isinstance(values, list) or not values:
            raise StudyError(f"{where}: key 'grid.{key}' must be a non-empty list")
    for depth in grid["depth"]:
        _check_type(where, "grid.depth", depth, int)
        _check_positive(where, "grid.depth", depth, zero_ok=True)
    for seed in grid["seed"]:
        _check_type(where, "grid.seed", seed, int)
    for method in grid["method"]:
        _check_choice(where, "grid.method", method, METHODS)

    methods = raw.get("methods", {})
    if not isinstance(methods, dict):
        raise StudyError(f"{where}: [methods] must be a table of method names")
    for method, settings in methods.items():
        _check_choice(where, "methods", method, METHODS)
        if not isinstance(settings, dict):
            raise StudyError(f"{where}: [methods.{method}] must be a table")
        _check_method(where, method, settings)

    attacks = config["attacks"]
    protocols = attacks["protocols"]
    if not isinstance(protocols, list):
        raise StudyError(f"{where}: key 'attacks.protocols' must be a list, e.g. [\"paper\"]")
    for protocol in protocols:
        _check_choice(where, "attacks.protocols", protocol, PROTOCOLS)
    for protocol in PROTOCOLS:
        if not isinstance(attacks[protocol], dict):
            raise StudyError(f"{where}: [attacks.{protocol}] must be a table")
        _check_attacks(where, protocol, attacks[protocol])

    reference = raw.get("reference", [])
    if not isinstance(reference, list):
        raise StudyError(f"{where}: 'reference' must be an array of tables ([[reference]])")
    for i, row in enumerate(reference):
        if not isinstance(row, dict):
            raise StudyError(f"{where}: reference entry {i + 1} must be a table")
        for key in row:
            if key not in REFERENCE_KEYS:
                raise StudyError(
                    f"{where}: unknown key 'reference.{key}' in entry {i + 1}; allowed: "
                    f"{', '.join(REFERENCE_KEYS)}"
                )
        if "method" not in row or "depth" not in row:
            raise StudyError(f"{where}: reference entry {i + 1} needs 'method' and 'depth'")

    tune = raw.get("tune", {})
    if not isinstance(tune, dict):
        raise StudyError(f"{where}: [tune] must be a table")
    return Study(
        name=name,
        path=where,
        description=config["study"]["description"],
        config=config,
        methods=methods,
        reference=reference,
        tune=tune,
    )
