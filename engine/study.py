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

# [tune]: what `lba tune` searches and how (engine/tune.py runs it). Keys left out take these
# defaults; methods, depth and seed default to the grid's (its first depth and seed).
TUNE_DEFAULTS: dict[str, Any] = {
    "name": "",  # the tuning's name (default: the study's); Optuna studies are <name>:<method>
    "trials": 20,  # finished trials per method when --trials is not given
    "objectives": ["val_acc"],
    "sampler": "tpe",
    "sampler_seed": 0,  # 0 = unseeded
    "pruner": "median",  # "none" where there are several objectives
    "pruner_startup": 5,  # finished trials before the pruner may stop one
    "pruner_warmup": 2,  # epochs every trial trains before it may be pruned
    "pruner_percentile": 25.0,
    "heartbeat": 30,  # seconds between a running trial's heartbeats
    "grace": 0,  # seconds without a heartbeat before a trial is failed (0 = 4 x heartbeat)
}
# Each objective is maximized or minimized; the per-epoch ones can drive a pruner.
TUNE_OBJECTIVES = {
    "val_acc": "maximize",  # validation accuracy
    "val_gap": "minimize",  # train accuracy minus validation accuracy
    "val_pgd_acc": "maximize",  # PGD accuracy on validation images (the study's PGD budget)
    "log10_lb": "minimize",  # log10 of the Lipschitz bound
}
PER_EPOCH_OBJECTIVES = ("val_acc", "val_gap", "log10_lb")
TUNE_SAMPLERS = ("tpe", "random", "nsga2")
TUNE_PRUNERS = ("median", "percentile", "hyperband", "none")
# What a search space may vary: training settings shared by every method, and each method's own.
TUNE_SPACE_KEYS: dict[str, tuple[str, ...]] = {
    "train": ("lr", "momentum", "batch_size", "optimizer"),
    "model": ("width",),
    "none": (),
    "l1": ("lam",),
    "l2": ("lam",),
    "dropout": ("p",),
    "lba": ("lam", "pool", "draw", "norm", "sigma", "power_iters"),
    "lba_2025": ("lam", "pool", "draw", "norm", "sigma", "power_iters"),
    "lba_global": ("lam",),
}
_SPACE_KINDS = {
    "lam": float,
    "p": float,
    "lr": float,
    "momentum": float,
    "power_iters": int,
    "batch_size": int,
    "width": int,
}  # every other key takes strings
_SPACE_LOW = {"lam": 0, "p": 0, "momentum": 0, "power_iters": 1, "batch_size": 1, "width": 1}
DISTRIBUTIONS = ("log", "uniform", "int", "categorical")

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

    def run_config(
        self,
        method: str,
        depth: int,
        seed: int,
        *,
        overrides: dict[str, dict] | None = None,
        **method_overrides: Any,
    ) -> dict:
        """The config of one run: data, model, train, attacks, and the method's settings.

        Args:
            method: The regularizer.
            depth: The number of residual layers.
            seed: The run's seed.
            overrides: Values replacing the study's, by section, e.g. ``{"train": {"lr": 0.1}}``
                (a tuning trial's training settings).
            **method_overrides: Method settings replacing the study's (``lam``, ``p``, ...).
        """
        config = {k: copy.deepcopy(v) for k, v in self.config.items() if k not in ("grid",)}
        for section, values in (overrides or {}).items():
            config[section].update(copy.deepcopy(values))
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
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _check_type(where: str, key: str, value: Any, kind: type | tuple[type, ...]) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # TOML's true is a Python int subclass; it is never an acceptable number here.
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise StudyError(f"{where}: key '{key}' must be {_type_name(kind)}, got {value!r}")


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


def _check_distribution(where: str, key: str, kind: type, dist: Any) -> None:
    if not isinstance(dist, dict):
        raise StudyError(
            f"{where}: key '{key}' must be a table such as {{ type = \"log\", low = 1e-5, "
            f"high = 1e-2 }}, got {dist!r}"
        )
    kind_name = {float: "number", int: "integer", str: "string"}[kind]
    allowed = {
        "log": ("low", "high"),
        "uniform": ("low", "high", "step"),
        "int": ("low", "high", "step", "log"),
        "categorical": ("choices",),
    }
    shape = dist.get("type")
    _check_choice(where, f"{key}.type", shape, DISTRIBUTIONS)
    if (kind is str and shape != "categorical") or (kind is int and shape in ("log", "uniform")):
        fits = "categorical" if kind is str else "int or categorical"
        raise StudyError(f"{where}: key '{key}' takes {kind_name}s; its type must be {fits}")
    if kind is float and shape == "int":
        raise StudyError(
            f"{where}: key '{key}' takes numbers; its type must be log, uniform or categorical"
        )
    for field_name in dist:
        if field_name != "type" and field_name not in allowed[shape]:
            raise StudyError(
                f"{where}: unknown key '{key}.{field_name}' for type {shape!r}; "
                f"allowed: {', '.join(allowed[shape])}"
            )
    name = key.rsplit(".", 1)[-1]
    if shape == "categorical":
        choices = dist.get("choices")
        if not isinstance(choices, list) or not choices:
            raise StudyError(f"{where}: key '{key}.choices' must be a non-empty list")
        for choice in choices:
            _check_type(where, f"{key}.choices", choice, (int, float) if kind is float else kind)
            if kind is not str:
                _check_range(where, f"{key}.choices", name, choice, choice)
        return
    for bound in ("low", "high"):
        if bound not in dist:
            raise StudyError(f"{where}: key '{key}' of type {shape!r} needs low and high")
        _check_type(where, f"{key}.{bound}", dist[bound], int if kind is int else (int, float))
    low, high = dist["low"], dist["high"]
    if not low < high:
        raise StudyError(f"{where}: key '{key}' needs low < high, got low {low!r}, high {high!r}")
    if (shape == "log" or dist.get("log")) and low <= 0:
        raise StudyError(
            f"{where}: key '{key}' is log-uniform, so low must be greater than 0, got {low!r}"
        )
    _check_range(where, key, name, low, high)
    if "step" in dist:
        _check_type(where, f"{key}.step", dist["step"], int if kind is int else (int, float))
        _check_positive(where, f"{key}.step", dist["step"])
    if "log" in dist:
        _check_type(where, f"{key}.log", dist["log"], bool)
        if dist["log"] and dist.get("step", 1) != 1:
            raise StudyError(f"{where}: key '{key}' cannot be log-scaled with a step other than 1")


def _check_range(where: str, key: str, name: str, low: float, high: float) -> None:
    # The smallest value each tunable setting accepts (lr and p also have an open end).
    if name == "lr" and low <= 0:
        raise StudyError(f"{where}: key '{key}' must be greater than 0, got {low!r}")
    if low < _SPACE_LOW.get(name, low):
        raise StudyError(f"{where}: key '{key}' must be {_SPACE_LOW[name]} or more, got {low!r}")
    if name == "p" and high >= 1:
        raise StudyError(
            f"{where}: key '{key}' must be below 1 (a dropout probability), got {high!r}"
        )


def _check_tune(where: str, given: dict, config: dict, study_name: str) -> dict:
    """The [tune] section with its defaults filled in; see TUNE_DEFAULTS and docs/tune.md."""
    nested = ("methods", "depth", "seed", "data", "train", "space", "final")
    for key in given:
        if key not in TUNE_DEFAULTS and key not in nested:
            raise StudyError(
                f"{where}: unknown key 'tune.{key}'; allowed in [tune]: "
                f"{', '.join(sorted([*TUNE_DEFAULTS, *nested]))}"
            )
    tune = _merge_section(
        where, "tune", TUNE_DEFAULTS, {k: v for k, v in given.items() if k not in nested}
    )
    grid = config["grid"]
    # Optuna's study names are <name>:<method>, split at the last colon.
    tune["name"] = tune["name"] or study_name
    if ":" in tune["name"]:
        raise StudyError(
            f"{where}: the tuning name {tune['name']!r} must not contain ':'; "
            'set another with [tune] name = "..."'
        )
    tune["methods"] = given.get("methods", list(grid["method"]))
    if not isinstance(tune["methods"], list) or not tune["methods"]:
        raise StudyError(f"{where}: key 'tune.methods' must be a non-empty list of methods")
    for method in tune["methods"]:
        _check_choice(where, "tune.methods", method, METHODS)
    if len(set(tune["methods"])) != len(tune["methods"]):
        raise StudyError(f"{where}: key 'tune.methods' lists a method twice: {tune['methods']}")
    for key in ("depth", "seed"):
        tune[key] = given.get(key, grid[key][0])
        _check_type(where, f"tune.{key}", tune[key], int)
    _check_positive(where, "tune.depth", tune["depth"], zero_ok=True)

    # Training and data settings of every trial, on top of the study's.
    tune["data"] = given.get("data", {})
    tune["train"] = given.get("train", {})
    for section, keys in (
        ("data", ("train_subset", "val_size")),
        ("train", tuple(DEFAULTS["train"])),
    ):
        values = tune[section]
        if not isinstance(values, dict):
            raise StudyError(f"{where}: [tune.{section}] must be a table")
        for key in values:
            if key not in keys:
                raise StudyError(
                    f"{where}: unknown key 'tune.{section}.{key}'; allowed: {', '.join(keys)}"
                )
        _merge_section(where, f"tune.{section}", DEFAULTS[section], values)
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                zero_ok = key in ("momentum", "train_subset", "val_size")
                _check_positive(where, f"tune.{section}.{key}", value, zero_ok=zero_ok)
    if "optimizer" in tune["train"]:
        _check_choice(where, "tune.train.optimizer", tune["train"]["optimizer"], ("sgd", "adam"))

    objectives = tune["objectives"]
    if not isinstance(objectives, list) or not objectives:
        raise StudyError(
            f"{where}: key 'tune.objectives' must be a non-empty list, e.g. [\"val_acc\"]"
        )
    for objective in objectives:
        _check_choice(where, "tune.objectives", objective, tuple(TUNE_OBJECTIVES))
    if len(set(objectives)) != len(objectives):
        raise StudyError(f"{where}: key 'tune.objectives' lists an objective twice")
    val_size = tune["data"].get("val_size", config["data"]["val_size"])
    if not val_size and any(o.startswith("val_") for o in objectives):
        raise StudyError(
            f"{where}: objective '{objectives[0]}' needs validation data carved from the "
            "training data; set val_size in [tune.data] or [data], e.g. val_size = 5000"
        )
    if "val_pgd_acc" in objectives and not any(
        plan.get("pgd") for plan in attack_plan(config).values()
    ):
        raise StudyError(f"{where}: objective 'val_pgd_acc' needs a PGD attack in [attacks]")
    _check_choice(where, "tune.sampler", tune["sampler"], TUNE_SAMPLERS)
    if tune["sampler"] == "nsga2" and len(objectives) < 2:
        raise StudyError(f"{where}: sampler 'nsga2' is for several objectives; use 'tpe'")
    _check_choice(where, "tune.pruner", tune["pruner"], TUNE_PRUNERS)
    if len(objectives) > 1:
        if "pruner" in given and tune["pruner"] != "none":
            raise StudyError(
                f"{where}: key 'tune.pruner' must be 'none' with several "
                f"objectives ({', '.join(objectives)}); Optuna prunes one only"
            )
        tune["pruner"] = "none"
    elif tune["pruner"] != "none" and objectives[0] not in PER_EPOCH_OBJECTIVES:
        raise StudyError(
            f"{where}: objective '{objectives[0]}' is measured once, after "
            'training, so it cannot drive a pruner; set pruner = "none"'
        )
    for key in ("trials", "heartbeat", "pruner_startup"):
        _check_positive(where, f"tune.{key}", tune[key], zero_ok=key == "pruner_startup")
    for key in ("grace", "pruner_warmup", "sampler_seed"):
        _check_positive(where, f"tune.{key}", tune[key], zero_ok=True)
    if not 0 < tune["pruner_percentile"] < 100:
        raise StudyError(
            f"{where}: key 'tune.pruner_percentile' must lie in (0, 100), got "
            f"{tune['pruner_percentile']!r}"
        )
    tune["grace"] = tune["grace"] or 4 * tune["heartbeat"]
    if tune["grace"] <= tune["heartbeat"]:
        raise StudyError(
            f"{where}: key 'tune.grace' ({tune['grace']} s) must exceed "
            f"'tune.heartbeat' ({tune['heartbeat']} s)"
        )

    space = given.get("space", {})
    if not isinstance(space, dict):
        raise StudyError(f"{where}: [tune.space] must be a table of tables, e.g. [tune.space.l2]")
    for group, params in space.items():
        _check_choice(where, "tune.space", group, tuple(TUNE_SPACE_KEYS))
        if not isinstance(params, dict):
            raise StudyError(f"{where}: [tune.space.{group}] must be a table")
        for key, dist in params.items():
            if key not in TUNE_SPACE_KEYS[group]:
                allowed = ", ".join(TUNE_SPACE_KEYS[group]) or "nothing (no setting to tune)"
                raise StudyError(
                    f"{where}: unknown key 'tune.space.{group}.{key}'; allowed: {allowed}"
                )
            _check_distribution(
                where, f"tune.space.{group}.{key}", _SPACE_KINDS.get(key, str), dist
            )
    if "optimizer" in space.get("train", {}):
        for choice in space["train"]["optimizer"]["choices"]:
            _check_choice(where, "tune.space.train.optimizer.choices", choice, ("sgd", "adam"))
    tune["space"] = space

    final = given.get("final", {})
    if not isinstance(final, dict):
        raise StudyError(f"{where}: [tune.final] must be a table")
    for key in final:
        if key not in ("seeds", "depths"):
            raise StudyError(f"{where}: unknown key 'tune.final.{key}'; allowed: depths, seeds")
    final = {
        "seeds": final.get("seeds", [0, 1, 2]),
        "depths": final.get("depths", [tune["depth"]]),
    }
    for key, values in final.items():
        if not isinstance(values, list) or not values:
            raise StudyError(f"{where}: key 'tune.final.{key}' must be a non-empty list")
        for value in values:
            _check_type(where, f"tune.final.{key}", value, int)
            if key == "depths":
                _check_positive(where, "tune.final.depths", value, zero_ok=True)
    tune["final"] = final
    return tune


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

    tune = raw.get("tune")
    if tune is not None and not isinstance(tune, dict):
        raise StudyError(f"{where}: [tune] must be a table")
    tune = _check_tune(where, tune, config, name) if tune is not None else {}
    return Study(
        name=name,
        path=where,
        description=config["study"]["description"],
        config=config,
        methods=methods,
        reference=reference,
        tune=tune,
    )
