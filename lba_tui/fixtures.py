"""Synthetic lba stores for the app's tests, its screenshots of layout and the scale benchmark.

The numbers follow the shape of real Fashion-MNIST runs (METHOD.md): the baseline fits the
training set and its Lipschitz bound grows, lba trades a little accuracy for a small gap, a
flat bound and robustness under FGSM and PGD. They are generated, not trained: nothing here
imports torch, and every value comes from one seeded generator, so a store is the same on
every machine. Timestamps are fixed for the same reason (snapshots must not change).

The real engine writes through :class:`engine.store.Store`; this module uses it to create the
schema, then fills the tables with ``executemany`` in one transaction, which is what makes a
store of 10,000 runs and 600,000 epochs take seconds rather than minutes.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from engine.store import Store

STAMP = "2025-06-01T12:00:00+00:00"
HOST = "gpu-box"

# Final (train, test) accuracy per method at n = 3, 5, 7 (the paper's table, as fractions).
FINAL_ACC: dict[str, dict[int, tuple[float, float]]] = {
    "none": {3: (0.8848, 0.8312), 5: (0.8749, 0.7992), 7: (0.8976, 0.8282)},
    "lba": {3: (0.7913, 0.7768), 5: (0.8146, 0.8028), 7: (0.8381, 0.8183)},
    "l2": {3: (0.8788, 0.8348), 5: (0.8752, 0.8284), 7: (0.8885, 0.8329)},
    "l1": {3: (0.8870, 0.8361), 5: (0.8674, 0.8350), 7: (0.8494, 0.8067)},
    "dropout": {3: (0.8141, 0.8306), 5: (0.8002, 0.8060), 7: (0.7731, 0.7819)},
}
# FGSM accuracy at eps 0.01 / 0.02 / 0.03 and PGD at 0.02, paper protocol, per method.
ROBUST: dict[str, tuple[float, float, float, float]] = {
    "none": (0.636, 0.405, 0.198, 0.30),
    "lba": (0.737, 0.673, 0.613, 0.62),
    "l2": (0.691, 0.490, 0.298, 0.38),
    "l1": (0.683, 0.466, 0.263, 0.36),
    "dropout": (0.717, 0.581, 0.458, 0.47),
}
REFERENCE = [
    {"method": m, "depth": n, "train": round(tr * 100, 2), "test": round(te * 100, 2)}
    for m, by_depth in FINAL_ACC.items()
    for n, (tr, te) in by_depth.items()
]


@dataclass
class RunSpec:
    """One synthetic run: where it sits in its study and how far it got."""

    study: str
    method: str
    depth: int
    seed: int
    status: str = "done"
    epochs: int = 20
    done: int = 20
    trial_number: int | None = None
    tune_study: str | None = None
    lr: float = 0.01
    lam: float | None = None
    pid: int | None = None


def layer_names(depth: int) -> list[str]:
    """The dense layers of a residual MLP of ``depth`` residual layers, input to output."""
    return ["in", *[f"res{r}" for r in range(1, depth + 1)], "out"]


def _config(spec: RunSpec) -> dict:
    method: dict = {"name": spec.method}
    if spec.lam is not None:
        method["lam"] = spec.lam
    elif spec.method in ("l1", "l2"):
        method["lam"] = 1e-3 if spec.method == "l2" or spec.depth == 5 else 1e-4
    if spec.method == "dropout":
        method["p"] = 0.2
    return {
        "data": {"dataset": "fashion-mnist", "train_subset": 10000, "val_size": 0.0},
        "model": {"arch": "mlp", "width": 20, "init": "glorot", "depth": spec.depth},
        "train": {
            "optimizer": "sgd",
            "lr": spec.lr,
            "batch_size": 100,
            "epochs": spec.epochs,
            "seed": spec.seed,
        },
        "method": method,
        "attacks": {"protocols": ["paper"]},
        "study": {"name": spec.study, "path": f"studies/{spec.study}.toml"},
    }


def _curves(spec: RunSpec, rng: random.Random, epochs: int) -> tuple[list[tuple], list[tuple]]:
    """Per-epoch rows and per-layer sigma rows of one run (without its id)."""
    final_train, final_test = FINAL_ACC.get(spec.method, FINAL_ACC["none"]).get(
        spec.depth, (0.85, 0.81)
    )
    # A tuning trial with a poor learning rate converges lower; the shape stays the same.
    quality = 1.0 - 0.125 * abs(math.log10(spec.lr / 0.01)) if spec.lr else 1.0
    final_train, final_test = final_train * quality, final_test * quality
    names = layer_names(spec.depth)
    width = len(names)
    smooth = spec.method in ("lba", "lba_2025")
    base = [(1.2 + 0.15 * i) if smooth else (1.3 + 0.35 * i) for i in range(width)]
    growth = 0.05 if smooth else 0.9
    gauss, log10 = rng.gauss, math.log10
    rows, sigma_rows = [], []
    for e in range(1, epochs + 1):
        t = 1.0 - math.exp(-e / 6.0)
        train = final_train * (0.72 + 0.28 * t) + gauss(0, 0.004)
        test = final_test * (0.74 + 0.26 * t) + gauss(0, 0.006)
        loss = 0.35 + 1.1 * math.exp(-e / 5.0) + (0.15 if smooth else 0.0) + gauss(0, 0.01)
        penalty = (0.8 + 0.2 * math.exp(-e / 10.0)) if smooth else 0.0
        jitter = gauss(0, 0.01)
        sigmas = [round(b + growth * t + jitter * (1 + i % 3), 4) for i, b in enumerate(base)]
        residual = sum(log10(1.0 + s) for s in sigmas[1:-1])
        log10_lb = log10(sigmas[0]) + residual + log10(sigmas[-1])
        log10_prod = sum(log10(s) for s in sigmas)
        layer, draws = None, None
        if smooth:
            # About 100 uniform draws per epoch: an even share each, a few moved at random.
            counts = [100 // width] * width
            counts[0] += 100 - sum(counts)
            for _ in range(3):
                i, j, k = rng.randrange(width), rng.randrange(width), rng.randrange(4)
                k = min(k, counts[j])
                counts[i], counts[j] = counts[i] + k, counts[j] - k
            layer = rng.randrange(width)
            draws = json.dumps(counts)
        rows.append(
            (
                e,
                round(loss, 4),
                round(penalty, 4),
                round(train, 4),
                None,
                round(test, 4),
                round(loss * 1.05, 4),
                round(train - test, 4),
                round(log10_lb, 4),
                round(log10_prod, 4),
                layer,
                sigmas[layer] if layer is not None else None,
                draws,
                spec.lr,
                1.9,
            )
        )
        sigma_rows.extend((e, i, name, s) for i, (name, s) in enumerate(zip(names, sigmas)))
    return rows, sigma_rows


def _attacks(spec: RunSpec, test_acc: float) -> list[tuple]:
    fgsm1, fgsm2, fgsm3, pgd = ROBUST.get(spec.method, ROBUST["none"])
    scale = test_acc / FINAL_ACC.get(spec.method, FINAL_ACC["none"]).get(spec.depth, (0, 0.8))[1]
    rows = [("paper", "clean", 0.0, 0, 0.0, 0, test_acc)]
    for eps, acc in ((0.01, fgsm1), (0.02, fgsm2), (0.03, fgsm3)):
        rows.append(("paper", "fgsm", eps, 1, eps, 0, acc * scale))
    rows.append(("paper", "pgd", 0.02, 10, 0.005, 1, pgd * scale))
    return [(*r[:6], round(min(r[6], 1.0), 4), round(min(r[6], 1.0) * 1000), 1000) for r in rows]


def paper_specs(seeds: int = 2, epochs: int = 20) -> list[RunSpec]:
    """The paper study's grid (methods x n = 3/5/7 x seeds), all finished."""
    return [
        RunSpec("paper-fmnist", method, depth, seed, epochs=epochs, done=epochs)
        for depth in (3, 5, 7)
        for method in FINAL_ACC
        for seed in range(seeds)
    ]


def demo_specs() -> list[RunSpec]:
    """A small store with every status, a tuning study and the paper grid (the test store)."""
    specs = [
        RunSpec("quickstart", "none", 3, 0, status="done", epochs=20, done=20),
        RunSpec("quickstart", "lba", 3, 0, status="running", epochs=20, done=12, pid=4242),
        RunSpec("quickstart", "l2", 3, 1, status="queued", epochs=20, done=0),
        RunSpec("quickstart", "l1", 3, 1, status="interrupted", epochs=20, done=7),
        RunSpec("quickstart", "dropout", 3, 1, status="failed", epochs=20, done=3),
    ]
    specs += paper_specs(seeds=2, epochs=20)
    for number, (lr, lam) in enumerate(
        [(0.01, 1e-3), (0.1, 1e-4), (0.001, 1e-2), (0.03, 1e-3), (0.003, 1e-4), (0.05, 1e-2)]
    ):
        status = "pruned" if number in (2, 4) else "done"
        specs.append(
            RunSpec(
                "tune-l2",
                "l2",
                3,
                0,
                status=status,
                epochs=12,
                done=4 if status == "pruned" else 12,
                trial_number=number,
                tune_study="tune-l2",
                lr=lr,
                lam=lam,
            )
        )
    return specs


def scale_specs(runs: int, epochs: int) -> list[RunSpec]:
    """``runs`` finished runs of ``epochs`` epochs each, spread over 20 studies."""
    methods = list(FINAL_ACC)
    return [
        RunSpec(
            f"sweep-{i % 20:02d}",
            methods[i % len(methods)],
            (3, 5, 7)[(i // len(methods)) % 3],
            i // 15,
            epochs=epochs,
            done=epochs,
        )
        for i in range(runs)
    ]


def build_store(
    path: str | Path,
    specs: list[RunSpec],
    *,
    seed: int = 0,
    sigmas: bool = True,
    attacks: bool = True,
    templates: bool = False,
) -> Path:
    """Write a store holding ``specs`` (the file must not exist yet) and return its path.

    Args:
        path: the SQLite file to create.
        specs: the runs to write, in id order.
        seed: seeds the generator, so the same arguments give the same file.
        sigmas: write per-layer spectral norms (the scale bench skips them to stay fast).
        attacks: write attack results for finished runs.
        templates: draw one curve per (method, depth, learning rate) and shift it per run,
            instead of drawing every run's curve; ten times faster, for the scale bench.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; build_store writes a new store only")
    rng = random.Random(seed)
    store = Store(path)
    studies = sorted({s.study for s in specs})
    run_rows, epoch_rows, sigma_rows, attack_rows = [], [], [], []
    cache: dict[tuple, tuple[list[tuple], list[tuple]]] = {}
    for run_id, spec in enumerate(specs, start=1):
        if templates:
            key = (spec.method, spec.depth, spec.lr, spec.done)
            if key not in cache:
                cache[key] = _curves(spec, rng, spec.done)
            shift = rng.gauss(0, 0.01)
            rows = [(*r[:3], r[3] + shift, r[4], r[5] + shift, *r[6:]) for r in cache[key][0]]
            srows = cache[key][1]
        else:
            rows, srows = _curves(spec, rng, spec.done)
        last = rows[-1] if rows else None
        finished = spec.status in ("done", "interrupted", "failed", "pruned")
        error = {
            "failed": "loss became NaN at epoch 3",
            "interrupted": "stopped by SIGINT",
        }.get(spec.status)
        run_rows.append(
            (
                run_id,
                spec.study,
                f"{spec.method} n={spec.depth} seed={spec.seed}",
                "fashion-mnist",
                "mlp",
                spec.method,
                spec.depth,
                spec.seed,
                spec.status,
                spec.done,
                spec.epochs,
                last[1] if last else None,
                last[3] if last else None,
                None,
                last[5] if last else None,
                last[7] if last else None,
                last[8] if last else None,
                json.dumps(_config(spec)),
                "cuda:0" if spec.status != "queued" else None,
                HOST if spec.status != "queued" else None,
                spec.pid,
                error,
                spec.trial_number,
                spec.tune_study,
                round(spec.done * 1.9, 1) if finished else None,
                STAMP,
                STAMP if spec.status != "queued" else None,
                STAMP if finished else None,
                STAMP if spec.status != "queued" else None,
            )
        )
        epoch_rows.extend((run_id, *r) for r in rows)
        if sigmas:
            sigma_rows.extend((run_id, *r) for r in srows)
        if attacks and spec.status == "done" and last:
            attack_rows.extend((run_id, *a, STAMP) for a in _attacks(spec, last[5]))

    with store.write() as db:
        conn = db.conn
        for name in studies:
            reference = REFERENCE if name == "paper-fmnist" else []
            conn.execute(
                "INSERT INTO study_files(name, path, description, config_json, reference_json, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    f"studies/{name}.toml",
                    f"synthetic study {name}",
                    "{}",
                    json.dumps(reference),
                    STAMP,
                    STAMP,
                ),
            )
        conn.executemany(
            "INSERT INTO runs(id, study, label, dataset, arch, method, depth, seed, status, "
            "epoch, epochs, loss, train_acc, val_acc, test_acc, gap, log10_lb, config_json, "
            "device, host, pid, error, trial_number, tune_study, seconds, created_at, "
            "started_at, finished_at, heartbeat_at) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            run_rows,
        )
        conn.executemany(
            "INSERT INTO epochs(run_id, epoch, loss, penalty, train_acc, val_acc, test_acc, "
            "test_loss, gap, log10_lb, log10_prod, lba_layer, lba_sigma, draws_json, lr, "
            "seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            epoch_rows,
        )
        conn.executemany(
            "INSERT INTO sigmas(run_id, epoch, layer, name, sigma) VALUES (?, ?, ?, ?, ?)",
            sigma_rows,
        )
        conn.executemany(
            "INSERT INTO attacks(run_id, protocol, attack, eps, steps, step_size, restarts, "
            "accuracy, correct, n, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            attack_rows,
        )
    store.close()
    return path


# Trials of the demo's two-objective Optuna study: (lr, draw, state, val_acc, log10_lb).
OPTUNA_TRIALS = [
    (0.01, "batch", "COMPLETE", 0.781, 1.58),
    (0.1, "epoch", "COMPLETE", 0.742, 1.21),
    (0.001, "batch", "PRUNED", None, None),
    (0.03, "batch", "COMPLETE", 0.805, 1.93),
    (0.003, "epoch", "PRUNED", None, None),
    (0.05, "epoch", "COMPLETE", 0.769, 1.33),
    (0.02, "batch", "COMPLETE", 0.798, 1.71),
    (0.2, "epoch", "FAIL", None, None),
]


def optuna_study(path: str | Path, name: str = "tune-lba:lba") -> None:
    """Add a two-objective Optuna study (val_acc up, log10_lb down) and its trial runs.

    Written by Optuna itself into the store's file, as ``lba tune`` does, so the app reads
    the real tables. Optuna is imported here only; the app never imports it.
    """
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=f"sqlite:///{Path(path).resolve()}",
        study_name=name,
        directions=["maximize", "minimize"],
    )
    study.set_user_attr("lba_objectives", ["val_acc", "log10_lb"])
    distributions = {
        "lr": FloatDistribution(1e-3, 0.3, log=True),
        "draw": CategoricalDistribution(["batch", "epoch"]),
    }
    specs = []
    for number, (lr, draw, state, val, bound) in enumerate(OPTUNA_TRIALS):
        stop = {"COMPLETE": 10, "PRUNED": 3, "FAIL": 1}[state]
        curve = {e: round((val or 0.70) * (0.8 + 0.2 * e / 10), 4) for e in range(1, stop + 1)}
        trial = optuna.trial.create_trial(
            params={"lr": lr, "draw": draw},
            distributions=distributions,
            values=[val, bound] if state == "COMPLETE" else None,
            intermediate_values=curve if state != "FAIL" else {},
            state=getattr(optuna.trial.TrialState, state),
        )
        study.add_trial(trial)
        status = {"COMPLETE": "done", "PRUNED": "pruned", "FAIL": "failed"}[state]
        specs.append((number, lr, status, stop))
    store = Store(path)
    with store.write() as db:
        base = db.execute("SELECT coalesce(max(id), 0) FROM runs").fetchone()[0]
        for number, lr, status, stop in specs:
            val, bound = OPTUNA_TRIALS[number][3], OPTUNA_TRIALS[number][4]
            db.execute(
                "INSERT INTO runs(id, study, label, dataset, arch, method, depth, seed, status, "
                "epoch, epochs, train_acc, val_acc, test_acc, gap, log10_lb, config_json, "
                "trial_number, tune_study, created_at) VALUES "
                "(?, ?, ?, 'fashion-mnist', 'mlp', 'lba', 3, 0, ?, ?, 10, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    base + number + 1,
                    name.partition(":")[0],
                    f"trial {number} lba n=3",
                    status,
                    stop,
                    None if val is None else val + 0.01,
                    val,
                    None if val is None else val - 0.005,
                    None if val is None else 0.015,
                    bound,
                    json.dumps(_config(RunSpec(name, "lba", 3, 0, epochs=10, lr=lr))),
                    number,
                    name,
                    STAMP,
                ],
            )
    store.close()


def demo_store(path: str | Path, *, tuning: bool = True) -> Path:
    """The small deterministic store the tests and the snapshot screens use.

    Args:
        tuning: also write a two-objective Optuna study (takes Optuna's import, ~1 s).
    """
    build_store(path, demo_specs())
    if tuning:
        optuna_study(path)
    return Path(path)


def scale_store(path: str | Path, runs: int = 10_000, epochs: int = 60) -> Path:
    """A store of ``runs`` runs with ``epochs`` epoch rows each (the scale benchmark's)."""
    return build_store(
        path, scale_specs(runs, epochs), sigmas=False, attacks=False, templates=True
    )


def append_epoch(path: str | Path, run_id: int, *, seed: int = 1) -> int:
    """Record one more epoch of a running run, as the trainer would; returns its number.

    Tests use it to watch the app pick up new rows while it is open.
    """
    store = Store(path)
    run = store.run(run_id)
    spec = RunSpec(run["study"], run["method"], run["depth"], run["seed"], epochs=run["epochs"])
    epoch = (run["epoch"] or 0) + 1
    rows, srows = _curves(spec, random.Random(seed), epoch)
    columns = [
        "epoch",
        "loss",
        "penalty",
        "train_acc",
        "val_acc",
        "test_acc",
        "test_loss",
        "gap",
        "log10_lb",
        "log10_prod",
        "lba_layer",
        "lba_sigma",
        "draws_json",
        "lr",
        "seconds",
    ]
    metrics = dict(zip(columns, rows[-1]))
    sigmas = [(name, sigma) for e, _, name, sigma in srows if e == epoch]
    store.record_epoch(run_id, metrics, sigmas)
    store.close()
    return epoch
