"""The training loop on a real Fashion-MNIST subset: reproducible, monitored, honest on failure."""

import pytest
import torch

from engine.errors import StudyError
from engine.runner import load_data_for
from engine.store import Store
from engine.study import load_study
from engine.train import Diverged, resolve_device, train_run


def small_config(method: str = "lba", seed: int = 0, **train) -> dict:
    overrides = ["data.train_subset=1000", "train.epochs=2", f"grid.seed=[{seed}]",
                 "attacks.paper.n=200", "attacks.paper.pgd={eps=0.02, step_size=0.005, steps=3}"]
    overrides += [f"train.{k}={v}" for k, v in train.items()]
    study = load_study(None, overrides)
    return study.run_config(method, 3, seed)


def train(store: Store, config: dict) -> int:
    run_id = store.create_run(study="t", method=config["method"]["name"], depth=3,
                              seed=config["train"]["seed"], dataset="fashion-mnist", arch="mlp",
                              epochs=config["train"]["epochs"], config=config)
    train_run(store, run_id, config, load_data_for(config), torch.device("cpu"))
    return run_id


def metrics(store: Store, run_id: int) -> list[tuple]:
    return [(e["loss"], e["train_acc"], e["test_acc"], e["log10_lb"], e["lba_layer"],
             e["draws_json"]) for e in store.epochs(run_id)]


def test_same_seed_on_cpu_gives_the_same_numbers(tmp_path):
    store = Store(tmp_path / "a.db")
    first = train(store, small_config())
    second = train(store, small_config())
    other = train(store, small_config(seed=1))
    assert metrics(store, first) == metrics(store, second)
    assert metrics(store, first) != metrics(store, other)
    strip = lambda rows: [(r["attack"], r["eps"], r["correct"]) for r in rows]  # noqa: E731
    assert strip(store.attacks(first)) == strip(store.attacks(second))


def test_bound_and_sigmas_are_recorded_every_epoch(tmp_path):
    store = Store(tmp_path / "a.db")
    run_id = train(store, small_config("none"))
    epochs = store.epochs(run_id)
    sigmas = store.sigmas(run_id)
    assert [s["name"] for s in sigmas if s["epoch"] == 1] == ["in", "res1", "res2", "res3", "out"]
    for epoch in epochs:
        # the residual bound is at least the plain product: each block adds 1 to its sigma
        assert epoch["log10_lb"] >= epoch["log10_prod"]
        assert epoch["lba_layer"] is None and epoch["penalty"] == 0.0
    assert store.run(run_id)["status"] == "done"


def test_a_diverging_run_fails_with_the_reason(tmp_path):
    store = Store(tmp_path / "a.db")
    with pytest.raises(Diverged):
        train(store, small_config("none", lr=1e30))
    run = store.runs()[0]
    assert run["status"] == "failed" and "loss became" in run["error"]


def test_device_auto_falls_back_to_cpu_and_unknown_devices_are_refused():
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(StudyError, match="this machine has no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(StudyError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
