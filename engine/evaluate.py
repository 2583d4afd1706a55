"""``lba eval``: natural shifts, certificates and robustness of stored runs, without retraining.

A finished run's weights are in the store (schema v2); this module rebuilds the run's model
from its config, loads them, and runs the evaluations asked for on the run's test set:

- ``shift``: :mod:`engine.shifts`, into the ``shifts`` table;
- ``certify``: :mod:`engine.certify`, into ``certified`` and ``lipschitz_estimates``;
- ``robust``: :mod:`engine.robustness`, into ``attacks`` (protocols ``robust``, ``masking``,
  ``paper``), ``pgd_curve`` and the ``attack_pairs`` row of ``lipschitz_estimates``.

Each evaluation replaces the run's earlier rows of the same kind, so evaluating again never
duplicates anything. Random draws (shift parameters, attack starts) come from the evaluation's
seed, not the run's, so every method of a study is evaluated on the same images.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from engine.certify import certified_rows, certify, estimate_rows
from engine.data import Dataset
from engine.errors import LbaError
from engine.robustness import RobustnessPlan, evaluate_robustness
from engine.runner import load_data_for
from engine.shifts import ShiftResult, evaluate_shifts, worst_case_lighting
from engine.store import Store
from engine.train import build_for, resolve_device

log = logging.getLogger("lba")

EVALUATIONS = ("shift", "certify", "robust")
IMAGE_DATASETS = ("fashion-mnist", "mnist", "cifar10")
# Kinds of lipschitz_estimates each evaluation writes (and so replaces).
CERTIFY_KINDS = ["residual", "product", "jacobian", "margin_gradient"]
ROBUST_KINDS = ["attack_pairs"]


@dataclass
class EvalReport:
    """What one run's evaluation found, for the command line's summary line.

    Attributes:
        run_id: The run.
        done: Evaluations run, in order.
        seconds: Wall time of each.
        summary: Headline numbers (fractions), e.g. ``shift_mean``, ``light_worst``.
    """

    run_id: int
    done: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)


def applicable(run: dict, what: Sequence[str] | None) -> list[str]:
    """The evaluations to run on a run: ``what``, or all that suit its data when None.

    Raises:
        LbaError: An evaluation is unknown, or ``shift`` is asked for tabular data.
    """
    images = run["dataset"] in IMAGE_DATASETS
    if what is None:
        return [w for w in EVALUATIONS if images or w != "shift"]
    unknown = [w for w in what if w not in EVALUATIONS]
    if unknown:
        raise LbaError(f"evaluation {unknown[0]!r} is not one of {', '.join(EVALUATIONS)}")
    if "shift" in what and not images:
        raise LbaError(
            f"run {run['id']} is on {run['dataset']}, tabular data: shifts need images; "
            "drop --shift"
        )
    return [w for w in EVALUATIONS if w in what]


def check_evaluable(store: Store, run: dict) -> None:
    """Raise unless a run is finished and has its weights in the store.

    Raises:
        LbaError: The run is not done, or was trained before lba kept weights.
    """
    if run["status"] != "done":
        raise LbaError(
            f"run {run['id']} is {run['status']}, not done: only finished runs can be evaluated"
        )
    if store.weights(run["id"]) is None:
        raise LbaError(
            f"run {run['id']} has no saved weights (it was trained before lba kept them); "
            f"train it again with `lba run {run['study']} --rerun`"
        )


def load_run_model(
    store: Store, run: dict, device: torch.device
) -> tuple[torch.nn.Module, Dataset]:
    """A finished run's model with its trained weights, in eval mode, and its dataset.

    Raises:
        LbaError: The run has no weights, or they do not fit the model its config builds.
    """
    check_evaluable(store, run)
    config = run["config"]
    data = load_data_for(config)
    model = build_for(config, data)
    state = torch.load(io.BytesIO(store.weights(run["id"])), map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise LbaError(
            f"run {run['id']}: the stored weights do not fit its model config ({first})"
        ) from None
    return model.to(device).eval(), data


def _shift_row(result: ShiftResult) -> dict:
    return {
        "shift": result.shift,
        "severity": result.severity,
        "level": result.level,
        "params_json": json.dumps(result.params),
        "accuracy": result.accuracy,
        "correct": result.correct,
        "n": result.n,
        "seed": result.seed,
    }


def evaluate_run(
    store: Store,
    run_id: int,
    *,
    what: Sequence[str] | None = None,
    n: int | None = None,
    seed: int = 0,
    device: str = "auto",
    plan: RobustnessPlan | None = None,
    on_step: Callable[[int, str, float], None] | None = None,
) -> EvalReport:
    """Evaluate one stored run and write the results to the store, replacing earlier ones.

    Args:
        store: The store holding the run and its weights.
        run_id: The run.
        what: Evaluations among :data:`EVALUATIONS`; None runs every one that suits the data.
        n: Evaluate the first ``n`` test samples (all when None).
        seed: Seeds shift draws and attack starts.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        plan: Robustness settings (the dataset's standard budgets when None).
        on_step: Called with ``(run_id, evaluation, seconds)`` after each evaluation.

    Returns:
        The evaluations done, their timings and headline numbers.

    Raises:
        LbaError: No such run, it is not finished, has no weights, or an option is invalid.
    """
    run = store.run(run_id)
    if run is None:
        raise LbaError(f"no run {run_id} in {store.path}; `lba ls` lists the runs")
    todo = applicable(run, what)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise LbaError(f"--n = {n!r} must be a positive integer (samples to evaluate)")
    target = resolve_device(device)
    model, data = load_run_model(store, run, target)
    x, y = data.x_test[:n], data.y_test[:n]
    report = EvalReport(run_id)

    for evaluation in todo:
        tick = time.perf_counter()
        if evaluation == "shift":
            results = evaluate_shifts(model, x, y, seed=seed)
            worst, grid = worst_case_lighting(model, x, y)
            rows = [_shift_row(r) for r in [*results, worst, *grid]]
            store.replace_rows("shifts", run_id, rows)
            shifted = [r.accuracy for r in results if r.severity > 0]
            report.summary["shift_mean"] = sum(shifted) / len(shifted)
            report.summary["light_worst"] = worst.accuracy
        elif evaluation == "certify":
            cert = certify(model, x, y)
            store.replace_rows("certified", run_id, certified_rows(cert))
            store.replace_rows(
                "lipschitz_estimates", run_id, estimate_rows(cert), where={"kind": CERTIFY_KINDS}
            )
            report.summary["median_radius"] = cert.median_radius("pairwise")
            report.summary["log10_upper"] = cert.bounds.log10_residual
            report.summary["log10_lower"] = _log10(max(cert.lower.values()))
        else:
            plan_used = plan or RobustnessPlan.for_dataset(run["dataset"])
            result = evaluate_robustness(model, x, y, plan_used, seed=seed)
            for protocol, rows in result.attacks.items():
                store.record_attacks(run_id, rows, protocol=protocol)
            store.replace_rows("pgd_curve", run_id, result.curves)
            pairs = {
                "kind": "attack_pairs",
                "side": "lower",
                "valid": 1,
                "n": len(x),
                "log10_value": _log10(result.pair_ratio),
            }
            store.replace_rows(
                "lipschitz_estimates", run_id, [pairs], where={"kind": ROBUST_KINDS}
            )
            pgd = [r for r in result.attacks["robust"] if r["attack"] == "pgd"]
            if pgd:
                report.summary["pgd"] = pgd[-1]["accuracy"]
        report.done.append(evaluation)
        report.seconds[evaluation] = time.perf_counter() - tick
        if on_step:
            on_step(run_id, evaluation, report.seconds[evaluation])
        log.info("run %d: %s in %.1f s", run_id, evaluation, report.seconds[evaluation])
    return report


def _log10(value: float) -> float:
    return math.log10(value) if value > 0 else -math.inf
