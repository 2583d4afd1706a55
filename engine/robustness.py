"""Is the robustness real? Standard-protocol attacks with restarts, l2 PGD, a masking check.

The paper measured FGSM and PGD in its own protocol: a softmax loss that gives confident
samples a zero gradient, no clipping and a min-max rescale after the attack. This module asks
the question robustness researchers would: in eval mode, with the loss on the logits, every
iterate clipped to [0, 1], a sample robust only if the model is right on the clean input and on
every point the attack visited, and the best of several random restarts.

- ``robust`` protocol rows: l-inf FGSM at the dataset's usual budgets and l-inf PGD with
  ``restarts`` random restarts (both through :mod:`engine.attacks`), and l2 PGD at the radii
  where :mod:`engine.certify` reports certified accuracy (attack ``pgd_l2``), so the two can
  be compared sample for sample.
- ``masking`` protocol rows: the same l-inf PGD from the clean input (no random start), once
  with the paper's softmax loss (attack ``pgd_softmax``) and once with cross-entropy on the
  logits (``pgd_logit``), at the paper's budget (eps 0.02, 10 steps). A large gap between
  the two means the paper's loss hid the gradient. The per-step curve of each (mean logit
  cross-entropy, accuracy, share of samples whose input gradient is exactly zero) goes to the
  ``pgd_curve`` table: a masked attack's loss stays flat.
- ``paper`` protocol rows: the paper's own attacks, recomputed from the stored weights.

l2 PGD is not in :mod:`engine.attacks`; it is written here, as is the traced PGD of the masking
check (the public ``pgd`` reports only the final accuracy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine import attacks
from engine.certify import RADII, float64_copy, pair_ratio
from engine.errors import LbaError, StudyError
from engine.shifts import eval_mode, model_device

LOSSES = ("logit", "softmax")
# Keras clips probabilities to [epsilon, 1 - epsilon] before the log; its default epsilon.
KERAS_EPSILON = 1e-7


@dataclass
class RobustnessPlan:
    """What ``lba eval --robust`` runs; the defaults are METHOD.md's Fashion-MNIST budgets.

    Attributes:
        fgsm_eps: l-inf FGSM budgets.
        pgd_eps: l-inf PGD budgets.
        pgd_steps: Steps per PGD run.
        pgd_step_size: l-inf size of each step.
        restarts: Random restarts of l-inf PGD; a sample must survive all.
        l2_radii: l2 PGD radii (0 is skipped: it would be clean accuracy).
        l2_steps: Steps per l2 PGD run (step size ``2.5 * radius / steps``).
        l2_restarts: Random restarts of l2 PGD.
        masking: ``(eps, steps, step_size)`` of the masking check's PGD runs.
        clip: Data range, or None for unbounded (tabular) features.
        paper: Also recompute the paper's own protocol.
    """

    fgsm_eps: tuple[float, ...] = (0.05, 0.1, 0.2)
    pgd_eps: tuple[float, ...] = (0.1,)
    pgd_steps: int = 40
    pgd_step_size: float = 0.01
    restarts: int = 5
    l2_radii: tuple[float, ...] = tuple(r for r in RADII if r > 0)
    l2_steps: int = 20
    l2_restarts: int = 1
    masking: tuple[tuple[float, int, float], ...] = ((0.02, 10, 0.005),)
    clip: tuple[float, float] | None = (0.0, 1.0)
    paper: bool = True

    @classmethod
    def for_dataset(cls, dataset: str, **changes: object) -> RobustnessPlan:
        """The plan with a dataset's usual l-inf budgets (``attacks.STANDARD_GRIDS``)."""
        grid = attacks.STANDARD_GRIDS.get(dataset)
        if grid is None:
            raise StudyError(
                f"dataset {dataset!r} has no standard attack budgets; known: "
                f"{', '.join(attacks.STANDARD_GRIDS)}"
            )
        pgd = grid["pgd"]
        paper = attacks.PAPER_GRID["pgd"]
        plan = cls(
            fgsm_eps=tuple(float(e) for e in grid["fgsm_eps"]),
            pgd_eps=(float(pgd["eps"]),),
            pgd_steps=int(pgd["steps"]),
            pgd_step_size=float(pgd["step_size"]),
            masking=((float(paper["eps"]), int(paper["steps"]), float(paper["step_size"])),),
            clip=grid["clip"],
        )
        for key, value in changes.items():
            if not hasattr(plan, key):
                raise StudyError(f"robustness plan has no setting {key!r}")
            setattr(plan, key, value)
        return plan


@dataclass
class RobustnessReport:
    """What :func:`evaluate_robustness` measured.

    Attributes:
        attacks: Store rows (``attacks`` table) per protocol: ``robust``, ``masking``, and
            ``paper`` when the plan asks for it.
        curves: Store rows (``pgd_curve`` table) of the masking check.
        pair_ratio: Largest ``|f(x') - f(x)| / |x' - x|`` over the l2 PGD pairs.
        l2_robust: Per l2 radius, which samples survived (for comparing with certificates).
    """

    attacks: dict[str, list[dict]] = field(default_factory=dict)
    curves: list[dict] = field(default_factory=list)
    pair_ratio: float = 0.0
    l2_robust: dict[float, Tensor] = field(default_factory=dict)


def sample_losses(logits: Tensor, y: Tensor, loss: str) -> Tensor:
    """Per-sample attack loss: cross-entropy on the logits, or the paper's on the softmax.

    The paper's loss is Keras' cross-entropy on probabilities clipped to [1e-7, 1 - 1e-7]: a
    sample classified with probability rounded to 1 sits on the flat clipped part and has a
    zero gradient.
    """
    if loss == "logit":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "softmax":
        prob = logits.softmax(dim=1).gather(1, y[:, None]).squeeze(1)
        return -prob.clamp(KERAS_EPSILON, 1 - KERAS_EPSILON).log()
    raise LbaError(f"attack loss {loss!r} is not one of {', '.join(LOSSES)}")


def _gradient(model: nn.Module, x: Tensor, y: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    """Input gradient of the summed loss, and the logits at ``x``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        # Only the input's gradient: the parameters' .grad fields stay untouched.
        (grad,) = torch.autograd.grad(sample_losses(logits, y, loss).sum(), x)
    return grad, logits.detach()


def _clip(x: Tensor, clip: tuple[float, float] | None) -> Tensor:
    return x if clip is None else x.clamp(clip[0], clip[1])


def _l2_project(delta: Tensor, radius: float) -> Tensor:
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    scale = (radius / norm).clamp(max=1.0)
    return delta * scale.reshape(-1, *[1] * (delta.dim() - 1))


def _check_budget(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise StudyError(f"{name} = {value!r} must be a finite number >= 0")


def l2_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    radius: float,
    *,
    steps: int = 20,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> tuple[Tensor, Tensor]:
    """l2 PGD on the logit cross-entropy, from random starts in the ball, in eval mode.

    Each step moves ``2.5 * radius / steps`` along the normalized gradient, projects back to
    the ball and clips to ``clip``; clipping towards a point of the data range never leaves the
    ball. A sample is robust only if the model is right on it clean, at every start and at every
    iterate of every restart. ``radius = 0`` is clean accuracy exactly.

    Args:
        model: Classifier returning logits.
        x: One batch of inputs ``(N, ...)`` on the model's device.
        y: Labels ``(N,)``.
        radius: l2 radius, >= 0.
        steps: Steps per restart.
        restarts: Random starts; a sample must survive every one.
        generator: Draws the starts (a CPU generator seeded 0 when None).
        clip: Data range, or None.

    Returns:
        ``(robust, adversarial)``: which samples survived, and the last iterate of the last
        restart (for the lower bound of the Lipschitz constant).

    Raises:
        StudyError: The radius, steps or restarts are invalid.
    """
    _check_budget("l2 radius", radius)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise StudyError(f"l2 pgd steps = {steps!r} must be an integer >= 1")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise StudyError(f"l2 pgd restarts = {restarts!r} must be an integer >= 1")
    generator = generator or torch.Generator().manual_seed(0)
    with eval_mode(model), torch.no_grad():
        robust = model(x).argmax(dim=1) == y
    if radius == 0:
        return robust, x
    step_size = 2.5 * radius / steps
    adv = x
    with eval_mode(model):
        for _ in range(restarts):
            direction = torch.randn(x.shape, generator=generator).to(x)
            length = torch.rand(len(x), generator=generator).to(x) ** (1.0 / x[0].numel())
            delta = _l2_project(direction, 1.0) * (radius * length).reshape(
                -1, *[1] * (x.dim() - 1)
            )
            adv = _clip(x + delta, clip)
            for _ in range(steps):
                grad, logits = _gradient(model, adv, y, "logit")
                robust &= logits.argmax(dim=1) == y
                unit = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(
                    -1, *[1] * (x.dim() - 1)
                )
                adv = _clip(x + _l2_project(adv + step_size * unit - x, radius), clip)
            with torch.no_grad():
                robust &= model(adv).argmax(dim=1) == y
    return robust, adv


def traced_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    steps: int,
    step_size: float,
    loss: str,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> tuple[Tensor, list[dict]]:
    """l-inf PGD from the clean input with a chosen loss, recording every step.

    Judged as in the standard protocol (clipped iterates, any misclassified iterate breaks the
    sample), so only the loss differs between the two runs of the masking check.

    Args:
        model: Classifier returning logits.
        x: One batch of inputs on the model's device.
        y: Labels.
        eps: l-inf radius.
        steps: Gradient steps.
        step_size: l-inf size of each step.
        loss: ``logit`` or ``softmax`` (the paper's).
        clip: Data range, or None.

    Returns:
        ``(robust, trace)``: which samples survived, and per step 0..steps the sums
        ``ce`` (logit cross-entropy), ``correct`` (right at this iterate), ``robust`` (right
        at every iterate so far) and ``zero_grad`` (input gradient exactly zero).
    """
    _check_budget("pgd eps", eps)
    if loss not in LOSSES:
        raise LbaError(f"attack loss {loss!r} is not one of {', '.join(LOSSES)}")
    adv = x
    robust = torch.ones_like(y, dtype=torch.bool)
    trace = []
    with eval_mode(model):
        for step in range(steps + 1):
            grad, logits = _gradient(model, adv, y, loss)
            right = logits.argmax(dim=1) == y
            robust &= right
            trace.append(
                {
                    "step": step,
                    "ce": float(F.cross_entropy(logits, y, reduction="sum")),
                    "correct": int(right.sum()),
                    "robust": int(robust.sum()),
                    "zero_grad": int((grad.flatten(1) == 0).all(dim=1).sum()),
                }
            )
            if step == steps:
                break
            adv = adv + step_size * grad.sign()
            adv = _clip(torch.minimum(torch.maximum(adv, x - eps), x + eps), clip)
    return robust, trace


def _row(
    attack: str, eps: float, steps: int, step_size: float, restarts: int, correct: int, n: int
) -> dict:
    return {
        "attack": attack,
        "eps": float(eps),
        "steps": steps,
        "step_size": float(step_size),
        "restarts": restarts,
        "accuracy": correct / n,
        "correct": correct,
        "n": n,
    }


def evaluate_robustness(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    plan: RobustnessPlan | None = None,
    *,
    seed: int = 0,
    batch_size: int = 1000,
) -> RobustnessReport:
    """Run the standard-protocol attacks, l2 PGD, the masking check and the paper protocol.

    Args:
        model: Classifier returning logits (its train/eval flags are handed back unchanged).
        x: Test inputs in pixel units.
        y: Labels.
        plan: What to run (the Fashion-MNIST defaults when None).
        seed: Seeds every random start: two models evaluated with one seed face the same
            starts.
        batch_size: Samples attacked together.

    Raises:
        LbaError: x and y disagree in length, or a budget is invalid.
    """
    plan = plan or RobustnessPlan()
    if len(x) == 0 or len(x) != len(y):
        raise LbaError(f"robustness needs as many labels as samples, and some: {len(x)}, {len(y)}")
    n = len(x)
    report = RobustnessReport()

    # l-inf FGSM and PGD with restarts, through the engine's standard protocol
    rows = [vars(attacks.clean(model, x, y, protocol="standard", batch_size=batch_size))]
    for eps in plan.fgsm_eps:
        result = attacks.fgsm(
            model, x, y, eps, protocol="standard", batch_size=batch_size, clip=plan.clip
        )
        rows.append(vars(result))
    for eps in plan.pgd_eps:
        result = attacks.pgd(
            model,
            x,
            y,
            eps,
            steps=plan.pgd_steps,
            step_size=plan.pgd_step_size,
            random_start=True,
            restarts=plan.restarts,
            protocol="standard",
            batch_size=batch_size,
            generator=torch.Generator().manual_seed(seed),
            clip=plan.clip,
        )
        rows.append(vars(result))
    for row in rows:
        row.pop("protocol", None)

    # l2 PGD at the certified radii, and the attack pairs' lower bound of the constant
    device = model_device(model)
    model64 = float64_copy(model)
    survived: dict[float, list[Tensor]] = {radius: [] for radius in plan.l2_radii}
    ratio = 0.0
    for start in range(0, n, batch_size):
        xb = x[start : start + batch_size].to(device)
        yb = y[start : start + batch_size].to(device=device, dtype=torch.long)
        for radius in plan.l2_radii:
            generator = torch.Generator().manual_seed(seed * 7919 + start)
            robust, adv = l2_pgd(
                model,
                xb,
                yb,
                radius,
                steps=plan.l2_steps,
                restarts=plan.l2_restarts,
                generator=generator,
                clip=plan.clip,
            )
            survived[radius].append(robust.cpu())
            ratio = max(ratio, pair_ratio(model64, xb, adv))
    for radius in plan.l2_radii:
        robust = torch.cat(survived[radius])
        report.l2_robust[radius] = robust
        rows.append(
            _row(
                "pgd_l2",
                radius,
                plan.l2_steps,
                2.5 * radius / plan.l2_steps,
                plan.l2_restarts,
                int(robust.sum()),
                n,
            )
        )
    report.attacks["robust"] = rows
    report.pair_ratio = ratio

    # the masking check: the same PGD with the paper's softmax loss and with the logit loss
    masking = []
    for eps, steps, step_size in plan.masking:
        for loss in LOSSES:
            totals: list[dict] = []
            correct = 0
            for start in range(0, n, batch_size):
                xb = x[start : start + batch_size].to(device)
                yb = y[start : start + batch_size].to(device=device, dtype=torch.long)
                robust, trace = traced_pgd(
                    model, xb, yb, eps, steps=steps, step_size=step_size, loss=loss, clip=plan.clip
                )
                correct += int(robust.sum())
                if not totals:
                    totals = [dict(t) for t in trace]
                else:
                    for total, t in zip(totals, trace, strict=True):
                        for key in ("ce", "correct", "robust", "zero_grad"):
                            total[key] += t[key]
            masking.append(_row(f"pgd_{loss}", eps, steps, step_size, 1, correct, n))
            report.curves += [
                {
                    "loss": loss,
                    "eps": float(eps),
                    "step": t["step"],
                    "mean_ce": t["ce"] / n,
                    "accuracy": t["correct"] / n,
                    "robust": t["robust"] / n,
                    "zero_grad": t["zero_grad"] / n,
                    "n": n,
                }
                for t in totals
            ]
    report.attacks["masking"] = masking

    # the paper's own protocol beside them
    if plan.paper:
        grid = attacks.PAPER_GRID
        results = attacks.run_attacks(
            model,
            x,
            y,
            protocol="paper",
            fgsm_eps=list(grid["fgsm_eps"]),
            pgd=dict(grid["pgd"]),
            n=min(int(grid["n"]), n),
            seed=seed,
        )
        report.attacks["paper"] = [
            {k: v for k, v in vars(r).items() if k != "protocol"} for r in results
        ]
    return report
