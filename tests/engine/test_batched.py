"""Batched training is a speed-up only: the same runs, one at a time or stacked, agree."""

import pytest
import torch

from engine.batched import batch_key, train_group
from engine.errors import RunPruned
from engine.runner import load_data_for, plan_tasks
from engine.store import Store
from engine.study import load_study
from engine.train import train_run

METHODS = ["none", "lba", "l2", "l1", "dropout"]


def cells(epochs: int = 2, methods: list[str] = METHODS, depths: str = "[2, 3]", **extra) -> list:
    overrides = [
        "data.train_subset=1000",
        f"train.epochs={epochs}",
        f"grid.method={methods!r}",
        f"grid.depth={depths}",
        "attacks.paper.n=200",
        "attacks.paper.pgd={eps=0.02, step_size=0.005, steps=3}",
    ]
    overrides += [f"{key}={value}" for key, value in extra.items()]
    return load_study("studies/paper-fmnist.toml", overrides).cells()


def queue(store: Store, study_cells: list) -> list[tuple[int, dict]]:
    return [
        (
            store.create_run(
                study="t",
                method=c.method,
                depth=c.depth,
                seed=c.seed,
                dataset="fashion-mnist",
                arch="mlp",
                epochs=c.config["train"]["epochs"],
                config=c.config,
            ),
            c.config,
        )
        for c in study_cells
    ]


def one_by_one(store: Store, runs: list[tuple[int, dict]]) -> None:
    for run_id, config in runs:
        train_run(store, run_id, config, load_data_for(config), torch.device("cpu"))


def batched(store: Store, runs: list[tuple[int, dict]], **kwargs) -> dict:
    return train_group(store, runs, load_data_for(runs[0][1]), torch.device("cpu"), **kwargs)


EXACT = ("epoch", "lba_layer", "draws_json")
CLOSE = (
    "loss",
    "penalty",
    "train_acc",
    "test_acc",
    "test_loss",
    "gap",
    "log10_lb",
    "log10_prod",
    "lba_sigma",
)


def assert_same_epochs(store: Store, reference: int, candidate: int) -> None:
    expected, got = store.epochs(reference), store.epochs(candidate)
    assert len(expected) == len(got)
    for want, have in zip(expected, got):
        assert {k: have[k] for k in EXACT} == {k: want[k] for k in EXACT}
        for key in CLOSE:
            if want[key] is None:
                assert have[key] is None, key
            else:
                assert have[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    sigmas = [(s["epoch"], s["name"], s["sigma"]) for s in store.sigmas(reference)]
    again = [(s["epoch"], s["name"], s["sigma"]) for s in store.sigmas(candidate)]
    assert [s[:2] for s in again] == [s[:2] for s in sigmas]
    assert [s[2] for s in again] == pytest.approx([s[2] for s in sigmas], rel=1e-6)


def test_batched_runs_match_the_single_run_loop_epoch_by_epoch(tmp_path):
    store = Store(tmp_path / "a.db")
    study_cells = cells()
    reference = queue(store, study_cells)
    together = queue(store, study_cells)

    one_by_one(store, reference)
    batched(store, together)

    for (ref_id, config), (run_id, _) in zip(reference, together):
        assert store.run(run_id)["status"] == "done"
        assert_same_epochs(store, ref_id, run_id)
        strip = [(a["protocol"], a["attack"], a["eps"]) for a in store.attacks(ref_id)]
        assert [(a["protocol"], a["attack"], a["eps"]) for a in store.attacks(run_id)] == strip
        # robust counts are argmaxes of float sums: a sample on the boundary may flip
        for want, have in zip(store.attacks(ref_id), store.attacks(run_id)):
            assert abs(want["correct"] - have["correct"]) <= 1, config["method"]["name"]


def test_draws_and_masks_match_at_every_depth_and_draw_mode(tmp_path):
    store = Store(tmp_path / "a.db")
    study_cells = cells(epochs=2, methods=["lba", "dropout"], depths="[0, 1, 2]")
    study_cells += cells(
        epochs=2,
        methods=["lba"],
        depths="[2]",
        **{"methods.lba": "{draw='epoch', pool='hidden', norm='fro2half'}"},
    )
    reference = queue(store, study_cells)
    together = queue(store, study_cells)

    one_by_one(store, reference)
    batched(store, together)

    for (ref_id, _), (run_id, _) in zip(reference, together):
        assert_same_epochs(store, ref_id, run_id)


def test_momentum_adam_and_lr_per_run_match_the_single_run_loop(tmp_path):
    store = Store(tmp_path / "a.db")
    sgd = cells(epochs=2, methods=["none", "l2"], depths="[1]", **{"train.momentum": 0.9})
    adam = cells(
        epochs=2,
        methods=["none", "lba"],
        depths="[1, 2]",
        **{"train.optimizer": '"adam"', "train.lr": 0.001},
    )
    for group in (sgd, adam):
        reference = queue(store, group)
        together = queue(store, group)
        one_by_one(store, reference)
        batched(store, together)
        for (ref_id, _), (run_id, _) in zip(reference, together):
            assert_same_epochs(store, ref_id, run_id)


def test_a_diverging_run_fails_alone_and_the_others_finish(tmp_path):
    store = Store(tmp_path / "a.db")
    runs = queue(store, cells(epochs=2, methods=["none", "lba"], depths="[1]"))
    runs[1][1]["train"]["lr"] = 1e30  # same batch key: lr is per run

    results = batched(store, runs)

    healthy, broken = store.run(runs[0][0]), store.run(runs[1][0])
    assert healthy["status"] == "done" and healthy["epoch"] == 2
    assert broken["status"] == "failed" and "loss became" in broken["error"]
    assert results[runs[1][0]] is None and results[runs[0][0]]["epoch"] == 2
    assert store.epochs(broken["id"]) == []
    assert len(store.attacks(healthy["id"])) == 5


def test_a_pruned_run_stops_and_the_others_go_on(tmp_path):
    store = Store(tmp_path / "a.db")
    runs = queue(store, cells(epochs=3, methods=["none", "l2", "lba"], depths="[1]"))
    victim = runs[1][0]

    def prune(report):
        if report.run_id == victim and report.epoch == 1:
            raise RunPruned("worse than the median")

    batched(store, runs, on_epoch=prune)

    assert store.run(victim)["status"] == "pruned"
    assert [e["epoch"] for e in store.epochs(victim)] == [1]
    assert {store.run(r)["status"] for r, _ in runs if r != victim} == {"done"}


def test_ctrl_c_marks_every_open_run_interrupted_and_keeps_finished_epochs(tmp_path):
    store = Store(tmp_path / "a.db")
    runs = queue(store, cells(epochs=5, methods=["none", "lba"], depths="[1]"))

    def stop(report):
        if report.epoch == 2 and report.run_id == runs[-1][0]:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batched(store, runs, on_epoch=stop)

    for run_id, _ in runs:
        run = store.run(run_id)
        assert run["status"] == "interrupted" and run["error"] == "stopped by the user"
        assert [e["epoch"] for e in store.epochs(run_id)] == [1, 2]


def test_runs_group_by_data_order_and_the_rest_train_alone():
    study_cells = cells(methods=["none", "lba", "lba_2025", "lba_global"], depths="[1, 2]")
    study_cells += cells(methods=["none"], depths="[1]", **{"grid.seed": "[1]"})
    todo = [(i, c.config) for i, c in enumerate(study_cells)]

    tasks = plan_tasks(todo)

    sizes = sorted(len(task) for task in tasks)
    # seed 0: none and lba at two depths together; lba_2025 and lba_global alone; seed 1 alone
    assert sizes == [1, 1, 1, 1, 1, 4]
    assert batch_key(study_cells[2].config) is None  # lba_2025
    cnn = dict(study_cells[0].config, model=dict(study_cells[0].config["model"], arch="cnn"))
    assert batch_key(cnn) is None


def test_a_study_of_one_seed_is_one_group_whatever_the_depths_and_methods():
    study_cells = cells(methods=METHODS, depths="[1, 2, 3]")
    todo = [(i, c.config) for i, c in enumerate(study_cells)]

    (task,) = plan_tasks(todo)

    assert sorted(run_id for run_id, _ in task) == list(range(15))


def test_jobs_split_a_lone_group_into_halves_of_mixed_depth():
    study_cells = cells(methods=METHODS, depths="[1, 2, 3]")
    todo = [(i, c.config) for i, c in enumerate(study_cells)]

    tasks = plan_tasks(todo, jobs=2)

    assert sorted(len(task) for task in tasks) == [7, 8]
    for task in tasks:
        assert {config["model"]["depth"] for _, config in task} == {1, 2, 3}
