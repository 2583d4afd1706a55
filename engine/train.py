"""Training one run: the loop, the per-epoch Lipschitz monitor, the attacks, the store.

The step reads top to bottom: forward, cross-entropy, the regularizer's penalty (for lba, one
drawn layer weighted by its spectral norm), backward, step. The data stays on the device as
whole tensors; an epoch is a permutation and slices of it, with no per-sample Python work.
Metrics are accumulated on the device and read once per epoch, so a GPU is not synced per step.
"""

from __future__ import annotations

import io
import logging
import math
import platform
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine import __version__
from engine import attacks
from engine.data import Dataset
from engine.errors import LbaError, RunPruned, StudyError
from engine.lipschitz import layer_sigmas, log10_bounds
from engine.models import build_model
from engine.regularizers import RegularizerSpec, make_regularizer
from engine.store import Store
from engine.study import attack_plan

log = logging.getLogger("lba")


class Diverged(LbaError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochReport:
    """What the progress display needs after each epoch."""

    run_id: int
    epoch: int
    epochs: int
    metrics: dict


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else must be available here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise StudyError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StudyError(f"device {name!r} asked for, but this machine has no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise StudyError(f"device {name!r} asked for, but MPS is not available here")
    return device


def versions() -> dict:
    """The software a run was made with, stored beside its results."""
    return {
        "lba": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def build_for(config: dict, data: Dataset) -> torch.nn.Module:
    """The model a run config asks for, initialised from the run's seed."""
    model_cfg, method = config["model"], config["method"]
    torch.manual_seed(config["train"]["seed"])
    dropout = float(method.get("p", 0.2)) if method["name"] == "dropout" else 0.0
    return build_model(
        model_cfg["arch"],
        data.input_shape,
        data.num_classes,
        width=model_cfg["width"],
        depth=model_cfg["depth"],
        filters=model_cfg["filters"],
        dropout=dropout,
        init=model_cfg["init"],
        mean=data.mean,
        std=data.std,
    )


def weights_blob(model: torch.nn.Module) -> bytes:
    """A model's state dict as ``torch.save`` bytes (tensors on the CPU), for the store."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    return buffer.getvalue()


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast on ``device`` when ``precision`` is ``"bf16"``, else nothing.

    Raises:
        StudyError: ``precision`` is neither ``"float32"`` nor ``"bf16"``.
    """
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "float32":
        raise StudyError(f"train.precision = {precision!r} is not one of float32, bf16")
    return nullcontext()


def regularizer_spec(config: dict) -> RegularizerSpec:
    """The regularizer settings of a run config (method defaults, then the study's values)."""
    method = dict(config["method"])
    name = method.pop("name")
    return RegularizerSpec.for_method(name, arch=config["model"]["arch"], **method)


@torch.no_grad()
def accuracy(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy in eval mode, batched; the model's mode is restored."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=x.device)
    loss = torch.zeros((), device=x.device)
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        correct += (logits.argmax(1) == target).sum()
        loss += F.cross_entropy(logits, target, reduction="sum")
    model.train(was_training)
    return correct.item() / len(x), loss.item() / len(x)


def run_attacks(model: torch.nn.Module, data: Dataset, config: dict) -> dict[str, list[dict]]:
    """Every attack of the run's protocols on its test set, as store rows per protocol."""
    # Standardized tabular features have no [0, 1] range to clip to.
    clip = None if config["data"]["dataset"] in ("wine", "circles") else (0.0, 1.0)
    results = {}
    for protocol, plan in attack_plan(config).items():
        rows = attacks.run_attacks(
            model,
            data.x_test,
            data.y_test,
            protocol=protocol,
            fgsm_eps=[float(eps) for eps in plan["fgsm_eps"]],
            pgd=plan["pgd"] or None,
            n=plan["n"] or len(data.x_test),
            seed=config["train"]["seed"],
            clip=clip,
        )
        results[protocol] = [vars(row) for row in rows]
    return results


def train_run(
    store: Store,
    run_id: int,
    config: dict,
    data: Dataset,
    device: torch.device,
    *,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> dict:
    """Train one stored run to the end, writing every epoch and the attacks to the store.

    The run is marked ``running`` first. ``on_epoch`` may raise :class:`RunPruned` to stop
    a tuning trial early (the run is marked ``pruned``). A KeyboardInterrupt (Ctrl-C, or
    SIGTERM turned into one by the command line) marks it ``interrupted`` with every finished
    epoch kept; a NaN or infinite loss marks it ``failed`` with the reason; both are then
    re-raised.

    Returns:
        The last epoch's metrics.
    """
    train_cfg = config["train"]
    seed = train_cfg["seed"]
    store.start_run(run_id, device=str(device), versions=versions())
    started = time.perf_counter()
    try:
        metrics = _train(store, run_id, config, data, device, on_epoch)
    except KeyboardInterrupt:
        store.finish_run(
            run_id,
            "interrupted",
            error="stopped by the user",
            seconds=time.perf_counter() - started,
        )
        raise
    except Diverged as exc:
        store.finish_run(run_id, "failed", error=str(exc), seconds=time.perf_counter() - started)
        raise
    except RunPruned as exc:
        store.finish_run(run_id, "pruned", error=str(exc) or None,
                         seconds=time.perf_counter() - started)
        raise
    except Exception as exc:
        store.finish_run(
            run_id,
            "failed",
            error=f"{type(exc).__name__}: {exc}",
            seconds=time.perf_counter() - started,
        )
        raise
    store.finish_run(run_id, "done", seconds=time.perf_counter() - started)
    log.info("run %d (seed %d) done in %.1f s", run_id, seed, time.perf_counter() - started)
    return metrics


def _train(
    store: Store,
    run_id: int,
    config: dict,
    data: Dataset,
    device: torch.device,
    on_epoch: Callable[[EpochReport], None] | None,
) -> dict:
    train_cfg = config["train"]
    seed, epochs, batch_size = train_cfg["seed"], train_cfg["epochs"], train_cfg["batch_size"]
    data = data.to(device)
    model = build_for(config, data).to(device)
    regularizer = make_regularizer(regularizer_spec(config), model, seed)
    if train_cfg["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(), lr=train_cfg["lr"], momentum=train_cfg["momentum"]
        )
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg["lr"])
    # Optional GPU speed-ups: bf16 autocast for the training forward only (the monitor, the
    # evaluation and the attacks use the float32 model), and a compiled forward.
    precision = train_cfg.get("precision", "float32")
    forward = torch.compile(model) if train_cfg.get("compile", False) else model
    # Shuffling has its own generator, so the lba layer draws never depend on it.
    shuffle = torch.Generator().manual_seed(seed + 1)
    names = model.layer_names()
    hidden = model.hidden_layer_indices()
    n_train = len(data.x_train)
    metrics: dict = {}

    for epoch in range(1, epochs + 1):
        tick = time.perf_counter()
        model.train()
        regularizer.start_epoch(epoch)
        order = torch.randperm(n_train, generator=shuffle).to(device)
        loss_sum = torch.zeros((), device=device)
        penalty_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        sigma_sum = torch.zeros((), device=device, dtype=torch.float64)
        sigma_count, last_layer = 0, None
        steps = 0
        for start in range(0, n_train, batch_size):
            index = order[start : start + batch_size]
            # index_select: the same gather as x[index], about twice as fast on the CPU
            x, y = data.x_train.index_select(0, index), data.y_train.index_select(0, index)

            # forward, then the regularizer's penalty (lba: one drawn layer, sigma-weighted)
            with autocast(device, precision):
                logits = forward(x)
            ce = F.cross_entropy(logits.float(), y)
            penalty = regularizer.penalty()
            loss = ce + penalty

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            # accumulate on the device; read once per epoch
            loss_sum += ce.detach() * len(y)
            penalty_sum += torch.as_tensor(penalty).detach()
            correct += (logits.detach().argmax(1) == y).sum()
            if regularizer.last_sigma_tensor is not None:
                sigma_sum += regularizer.last_sigma_tensor
                sigma_count += 1
            steps += 1

        last_layer = regularizer.last_layer
        mean_loss = loss_sum.item() / n_train
        if not math.isfinite(mean_loss):
            raise Diverged(f"loss became {mean_loss} at epoch {epoch}")
        # "train accuracy" is the running mean over the epoch in training mode (the paper's)
        train_acc = correct.item() / n_train

        # the Lipschitz monitor: exact sigma per dense layer, operator norm per conv layer
        sigmas = layer_sigmas(model)
        log10_lb, log10_prod = log10_bounds(sigmas, hidden)
        # with power-iteration sigma: how far its warm estimates drifted from the exact ones
        gap = regularizer.check_sigmas(sigmas) if regularizer.spec.sigma != "exact" else None
        if gap is not None:
            log.info("run %d epoch %d: power sigma within %.1e of exact", run_id, epoch, gap)

        row = {
            "epoch": epoch,
            "loss": mean_loss,
            "penalty": penalty_sum.item() / steps,
            "train_acc": train_acc,
            "log10_lb": log10_lb,
            "log10_prod": log10_prod,
            "lba_layer": last_layer,
            "lba_sigma": sigma_sum.item() / sigma_count if sigma_count else None,
            "draws_json": list(regularizer.draw_counts),
            "lr": optimizer.param_groups[0]["lr"],
        }
        if data.x_val is not None:
            row["val_acc"], _ = accuracy(model, data.x_val, data.y_val)
        if epoch % train_cfg["test_every"] == 0 or epoch == epochs:
            row["test_acc"], row["test_loss"] = accuracy(model, data.x_test, data.y_test)
            row["gap"] = train_acc - row["test_acc"]
        row["seconds"] = time.perf_counter() - tick
        store.record_epoch(run_id, row, list(zip(names, sigmas)))
        # the caller (and on_epoch) gets the gap as sigma_error; no store column holds it yet
        metrics = row if gap is None else {**row, "sigma_error": gap}
        if on_epoch:
            on_epoch(EpochReport(run_id, epoch, epochs, metrics))

    for protocol, rows in run_attacks(model, data, config).items():
        store.record_attacks(run_id, rows, protocol=protocol)
    # the final weights, so `lba eval` can evaluate the run later without retraining it
    store.save_weights(run_id, weights_blob(model))
    return metrics
