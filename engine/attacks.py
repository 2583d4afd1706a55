"""FGSM and PGD in two protocols: the paper's own, and the standard one.

``paper`` repeats what the published robustness numbers measured: the loss is Keras'
cross-entropy on the softmax output (probabilities clipped to [1e-7, 1 - 1e-7] before the log,
so a confidently classified sample has a zero gradient and is never moved: gradient masking),
nothing is clipped to [0, 1], and each attacked image is then min-max rescaled to [0, 1] (a
contrast stretch, so the threat is not an eps-ball) and judged alone, as the paper did.
``standard`` is what robustness researchers expect: cross-entropy on the logits, every iterate
clipped to the data range and projected to the l-inf eps-ball, and a sample counts as robust
only if the model is right on the clean input and on every point the attack visited.

Both run the model in eval mode and hand it back with every submodule's train/eval flag as
they found it; BatchNorm statistics are never updated. ``eps = 0`` is the identity attack in
both protocols: no gradient, no clipping and no rescale, so it reports clean accuracy exactly.
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import LbaError, StudyError

PROTOCOLS = ("paper", "standard")

# Keras clips probabilities to [epsilon, 1 - epsilon] before the log; its default epsilon.
_KERAS_EPSILON = 1e-7

PAPER_GRID: dict[str, object] = {
    "fgsm_eps": [0.01, 0.02, 0.03],
    "pgd": {"eps": 0.02, "step_size": 0.005, "steps": 10, "random_start": False, "restarts": 1},
    "n": 1000,
}
"""The paper's attacks: keyword arguments for ``run_attacks(..., protocol="paper")``."""

STANDARD_GRIDS: dict[str, dict[str, object]] = {
    "mnist": {
        "fgsm_eps": [0.1, 0.2, 0.3],
        "pgd": {"eps": 0.3, "step_size": 0.01, "steps": 40, "random_start": True, "restarts": 1},
        "n": None,
        "clip": (0.0, 1.0),
    },
    "fashion-mnist": {
        "fgsm_eps": [0.05, 0.1, 0.2],
        "pgd": {"eps": 0.1, "step_size": 0.01, "steps": 40, "random_start": True, "restarts": 1},
        "n": None,
        "clip": (0.0, 1.0),
    },
    "cifar10": {
        "fgsm_eps": [2 / 255, 4 / 255, 8 / 255],
        "pgd": {
            "eps": 8 / 255,
            "step_size": 2 / 255,
            "steps": 20,
            "random_start": True,
            "restarts": 1,
        },
        "n": None,
        "clip": (0.0, 1.0),
    },
    # Tabular and synthetic features are standardized or raw coordinates, not pixels: eps is in
    # feature units and nothing bounds the range, so no clipping.
    "wine": {
        "fgsm_eps": [0.05, 0.1, 0.2],
        "pgd": {"eps": 0.1, "step_size": 0.01, "steps": 40, "random_start": True, "restarts": 1},
        "n": None,
        "clip": None,
    },
    "circles": {
        "fgsm_eps": [0.05, 0.1, 0.2],
        "pgd": {"eps": 0.1, "step_size": 0.01, "steps": 40, "random_start": True, "restarts": 1},
        "n": None,
        "clip": None,
    },
}
"""Usual budgets per dataset: keyword arguments for ``run_attacks(..., protocol="standard")``."""

_PGD_KEYS = ("eps", "steps", "step_size", "random_start", "restarts")


@dataclass
class AttackResult:
    """Accuracy of a model under one attack setting.

    Attributes:
        protocol: ``paper`` or ``standard``.
        attack: ``clean``, ``fgsm`` or ``pgd``.
        eps: l-inf budget in input units (0 for clean).
        steps: Gradient steps (0 for clean, 1 for FGSM).
        step_size: Size of each step (``eps`` for FGSM).
        restarts: Attack runs per sample; a sample is robust only if it survives all.
        accuracy: ``correct / n``.
        n: Samples attacked.
        correct: Samples still classified correctly.
    """

    protocol: str
    attack: str
    eps: float
    steps: int
    step_size: float
    restarts: int
    accuracy: float
    n: int
    correct: int


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode, then give every submodule back its own train/eval flag."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _paper_loss(logits: Tensor, y: Tensor) -> Tensor:
    # Keras categorical_crossentropy(from_logits=False) on a softmax output: the probability
    # is clipped before the log, and float32 softmax rounds confident samples to exactly 1,
    # so their gradient is zero and FGSM's sign(0) leaves them unperturbed (gradient masking).
    prob = logits.softmax(dim=1).gather(1, y[:, None]).squeeze(1)
    return -prob.clamp(_KERAS_EPSILON, 1 - _KERAS_EPSILON).log().sum()


def _input_gradient(
    model: nn.Module, x: Tensor, y: Tensor, protocol: str
) -> tuple[Tensor, Tensor]:
    """Gradient of the summed loss w.r.t. the input, and which samples are right at x."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        if protocol == "paper":
            loss = _paper_loss(logits, y)
        else:
            loss = F.cross_entropy(logits, y, reduction="sum")
        # Only the input's gradient: parameter .grad fields stay as the trainer left them.
        (grad,) = torch.autograd.grad(loss, x)
    return grad, logits.detach().argmax(dim=1) == y


def _is_correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1) == y


def _minmax_rescale(x: Tensor) -> Tensor:
    flat = x.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = (flat.max(dim=1, keepdim=True).values - low).clamp_min(1e-12)
    return ((flat - low) / span).reshape(x.shape)


def _clip(x: Tensor, clip: tuple[float, float] | None) -> Tensor:
    return x if clip is None else x.clamp(clip[0], clip[1])


def _model_device(model: nn.Module) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def _batches(x: Tensor, y: Tensor, batch_size: int, device: torch.device) -> Iterator:
    for start in range(0, len(x), batch_size):
        stop = start + batch_size
        yield x[start:stop].to(device), y[start:stop].to(device=device, dtype=torch.long)


def _check(protocol: str, x: Tensor, y: Tensor, eps: float, batch_size: int) -> None:
    if protocol not in PROTOCOLS:
        raise StudyError(f"attack protocol = {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps >= 0):
        raise StudyError(f"attack eps = {eps!r} must be a finite number >= 0")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LbaError(f"attack batch_size = {batch_size!r} must be a positive integer")
    if len(x) == 0 or len(x) != len(y):
        raise LbaError(
            f"attack needs as many labels as samples, and some: got {len(x)} and {len(y)}"
        )


def _result(
    protocol: str,
    attack: str,
    eps: float,
    steps: int,
    step_size: float,
    restarts: int,
    correct: int,
    n: int,
) -> AttackResult:
    return AttackResult(
        protocol, attack, float(eps), steps, float(step_size), restarts, correct / n, n, correct
    )


def clean(
    model: nn.Module, x: Tensor, y: Tensor, *, protocol: str, batch_size: int = 1000
) -> AttackResult:
    """Accuracy on the unperturbed samples, in eval mode.

    Args:
        model: Classifier returning logits.
        x: Inputs ``(N, ...)``.
        y: Integer labels ``(N,)``.
        protocol: ``paper`` or ``standard`` (recorded only).
        batch_size: Samples per forward pass.
    """
    _check(protocol, x, y, 0.0, batch_size)
    correct = 0
    with _eval_mode(model):
        for xb, yb in _batches(x, y, batch_size, _model_device(model)):
            correct += int(_is_correct(model, xb, yb).sum())
    return _result(protocol, "clean", 0.0, 0, 0.0, 0, correct, len(x))


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    protocol: str,
    batch_size: int = 1000,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> AttackResult:
    """Fast gradient sign attack: one step of size ``eps`` along the sign of the loss gradient.

    In the paper protocol the stepped image is min-max rescaled to [0, 1] and unclipped; in the
    standard one it is clipped to ``clip`` and a sample also has to be right when clean.
    ``eps = 0`` skips the attack (and the rescale) and returns clean accuracy exactly.

    Args:
        model: Classifier returning logits.
        x: Inputs ``(N, ...)``, in the units ``eps`` is given in.
        y: Integer labels ``(N,)``.
        eps: l-inf step size, >= 0.
        protocol: ``paper`` or ``standard``.
        batch_size: Samples attacked together.
        clip: Data range the standard protocol clips to, or None (tabular data).

    Raises:
        StudyError: The protocol or eps is invalid.
    """
    (result,) = _fgsm_budgets(model, x, y, [eps], protocol, batch_size, clip)
    return result


def _fgsm_robust(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    budgets: list[float],
    protocol: str,
    clip: tuple[float, float] | None,
) -> list[Tensor]:
    """Which samples of one batch survive FGSM at each eps (> 0), from one gradient.

    The gradient at the clean input does not depend on eps, so every budget reuses it: the
    same arithmetic per budget as one call each, for one backward pass instead of several.
    """
    grad, right = _input_gradient(model, x, y, protocol)
    direction = grad.sign_()
    robust = []
    for eps in budgets:
        adv = x + eps * direction
        if protocol == "paper":
            robust.append(_is_correct(model, _minmax_rescale(adv), y))
        else:
            robust.append(right & _is_correct(model, _clip(adv, clip), y))
    return robust


def _fgsm_budgets(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    budgets: list[float],
    protocol: str,
    batch_size: int,
    clip: tuple[float, float] | None,
) -> list[AttackResult]:
    """FGSM at several budgets, one result each; ``fgsm`` and ``run_attacks`` use it."""
    for eps in budgets:
        _check(protocol, x, y, eps, batch_size)
    attacked = [eps for eps in budgets if eps != 0]
    correct = dict.fromkeys(attacked, 0)
    if attacked:
        with _eval_mode(model):
            for xb, yb in _batches(x, y, batch_size, _model_device(model)):
                robust = _fgsm_robust(model, xb, yb, attacked, protocol, clip)
                for eps, right in zip(attacked, robust):
                    correct[eps] += int(right.sum())
    results = []
    for eps in budgets:
        if eps == 0:
            # the identity attack: no gradient and no rescale, exactly the clean accuracy
            clean_result = clean(model, x, y, protocol=protocol, batch_size=batch_size)
            results.append(_result(protocol, "fgsm", 0.0, 1, 0.0, 1, clean_result.correct, len(x)))
        else:
            results.append(_result(protocol, "fgsm", eps, 1, eps, 1, correct[eps], len(x)))
    return results


def _pgd_iterate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    step_size: float,
    start: Tensor,
    protocol: str,
    clip: tuple[float, float] | None,
) -> tuple[Tensor, Tensor]:
    """One PGD run from ``start``: the last iterate, and which samples every iterate left
    right (standard protocol; all True in the paper one, which judges the last one only)."""
    # Projecting onto the eps-ball and then clipping to the data range is one projection onto
    # the clipped ball bounds (clipping is monotone, so it commutes with the projection): the
    # same numbers as two projections, with bounds computed once per batch, not every step.
    lower, upper = x - eps, x + eps
    if protocol == "standard" and clip is not None:
        lower, upper = _clip(lower, clip), _clip(upper, clip)
    # Every step works in place on one buffer: on the CPU a fresh tensor of a batch's size is
    # a fresh mapping whose pages fault in, which cost more than the arithmetic on them.
    adv = start.clone()
    survived = torch.ones_like(y, dtype=torch.bool)
    for _ in range(steps):
        grad, right = _input_gradient(model, adv, y, protocol)
        if protocol == "standard":
            # Any iterate that fools the model is an adversarial example inside the ball, so
            # more steps from the same start can only break more samples.
            survived &= right
        adv.add_(grad.sign_(), alpha=step_size)
        torch.maximum(adv, lower, out=adv)
        torch.minimum(adv, upper, out=adv)
    return adv, survived


def _pgd_run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    step_size: float,
    start: Tensor,
    protocol: str,
    clip: tuple[float, float] | None,
    skip_broken: bool = False,
) -> Tensor:
    """One PGD run from ``start``; which samples it failed to break."""
    if protocol == "standard" and skip_broken:
        return _pgd_standard(model, x, y, eps, steps, step_size, start, clip)
    adv, survived = _pgd_iterate(model, x, y, eps, steps, step_size, start, protocol, clip)
    if protocol == "paper":
        return _is_correct(model, _minmax_rescale(adv), y)
    return survived & _is_correct(model, adv, y)


def _pgd_standard(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    step_size: float,
    start: Tensor,
    clip: tuple[float, float] | None,
) -> Tensor:
    """The standard protocol's PGD run, attacking only the samples not yet broken.

    A sample misclassified at any iterate is broken for good in this protocol, so its later
    steps cannot change the result: it leaves the batch, and each step costs only what is
    still standing (a few percent of the batch after some steps on an undefended model). The
    samples that stay see exactly the arithmetic of :func:`_pgd_iterate`.
    """
    lower, upper = x - eps, x + eps
    if clip is not None:
        lower, upper = _clip(lower, clip), _clip(upper, clip)
    adv, alive = start.clone(), torch.arange(len(y), device=y.device)
    for _ in range(steps):
        grad, right = _input_gradient(model, adv, y, "standard")
        if not bool(right.all()):
            keep = right.nonzero().squeeze(1)
            alive, adv, grad, lower, upper, y = (
                t.index_select(0, keep) for t in (alive, adv, grad, lower, upper, y)
            )
            if len(alive) == 0:
                break
        adv.add_(grad.sign_(), alpha=step_size)
        torch.maximum(adv, lower, out=adv)
        torch.minimum(adv, upper, out=adv)
    robust = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    if len(alive):
        robust[alive] = _is_correct(model, adv, y)
    return robust


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    steps: int,
    step_size: float,
    random_start: bool,
    restarts: int = 1,
    protocol: str,
    batch_size: int = 1000,
    generator: torch.Generator | None = None,
    clip: tuple[float, float] | None = (0.0, 1.0),
    skip_broken: bool = False,
) -> AttackResult:
    """Projected gradient descent in the l-inf ball of radius ``eps``.

    Each step moves ``step_size`` along the sign of the loss gradient and projects back to the
    ball (and, in the standard protocol, to ``clip``). The paper protocol judges only the final
    iterate after a min-max rescale; the standard one counts a sample as broken if the clean
    input, the start or any iterate is misclassified. A sample is robust only if it survives
    every restart. Without a random start the restarts would repeat the same run, so one run is
    made and ``restarts`` is reported as 1. ``eps = 0`` returns clean accuracy exactly.

    Args:
        model: Classifier returning logits.
        x: Inputs ``(N, ...)``, in the units ``eps`` is given in.
        y: Integer labels ``(N,)``.
        eps: l-inf radius, >= 0.
        steps: Gradient steps per run.
        step_size: l-inf size of each step.
        random_start: Start uniformly in the ball instead of at ``x``.
        restarts: Runs per sample.
        protocol: ``paper`` or ``standard``.
        batch_size: Samples attacked together.
        generator: Draws the random starts; None uses a fresh generator seeded 0, so the
            attack is reproducible and leaves torch's global RNG alone.
        clip: Data range the standard protocol clips to, or None (tabular data).
        skip_broken: Standard protocol only: stop attacking a sample once an iterate breaks
            it (its result cannot change), so a step costs only the samples still standing;
            the result is the same. Off by default, so the model sees every batch whole at
            every step (what tools that record its inputs expect); ``run_attacks`` turns it on.

    Raises:
        StudyError: The protocol, eps, steps, step_size or restarts is invalid.
    """
    _check(protocol, x, y, eps, batch_size)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise StudyError(f"pgd steps = {steps!r} must be an integer >= 0")
    if not (isinstance(step_size, int | float) and step_size >= 0):
        raise StudyError(f"pgd step_size = {step_size!r} must be a number >= 0")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise StudyError(f"pgd restarts = {restarts!r} must be an integer >= 1")
    if eps == 0:
        result = clean(model, x, y, protocol=protocol, batch_size=batch_size)
        return _result(protocol, "pgd", 0.0, steps, step_size, 1, result.correct, result.n)
    runs = restarts if random_start else 1
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    correct = 0
    with _eval_mode(model):
        for xb, yb in _batches(x, y, batch_size, _model_device(model)):
            robust = torch.ones_like(yb, dtype=torch.bool)
            if protocol == "standard":
                robust &= _is_correct(model, xb, yb)
            for _ in range(runs):
                start = xb
                if random_start:
                    noise = torch.rand(xb.shape, generator=generator, device=generator.device)
                    start = xb + eps * (2 * noise.to(xb) - 1)
                    if protocol == "standard":
                        start = _clip(start, clip)
                robust &= _pgd_run(
                    model, xb, yb, eps, steps, step_size, start, protocol, clip, skip_broken
                )
            correct += int(robust.sum())
    return _result(protocol, "pgd", eps, steps, step_size, runs, correct, len(x))


# run_attacks takes a parameter named pgd, which hides the function inside it.
_pgd_attack = pgd


def run_attacks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    protocol: str,
    fgsm_eps: list[float],
    pgd: dict | None,
    n: int | None,
    seed: int,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> list[AttackResult]:
    """Clean accuracy, FGSM at each eps and PGD, on the first ``n`` samples.

    Args:
        model: Classifier returning logits.
        x: Inputs ``(N, ...)``.
        y: Integer labels ``(N,)``.
        protocol: ``paper`` or ``standard``.
        fgsm_eps: FGSM budgets.
        pgd: ``eps`` (a float or a list), ``steps``, ``step_size`` and optionally
            ``random_start`` (default: standard protocol only) and ``restarts`` (1); None skips
            PGD.
        n: Samples to attack; None takes 1000 in the paper protocol and all in the standard one.
        seed: Seeds PGD's random starts (re-seeded for each eps, so budgets share starts).
        clip: Data range the standard protocol clips to, or None.

    Returns:
        One row for clean accuracy, then one per FGSM eps, then one per PGD eps.

    Raises:
        StudyError: The protocol, a budget or a PGD key is invalid.
    """
    if protocol not in PROTOCOLS:
        raise StudyError(f"attack protocol = {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if n is None:
        n = 1000 if protocol == "paper" else len(x)
    x, y = x[:n], y[:n]
    results = [clean(model, x, y, protocol=protocol)]
    results += _fgsm_budgets(model, x, y, list(fgsm_eps), protocol, 1000, clip)
    if not pgd:
        return results
    unknown = sorted(set(pgd) - set(_PGD_KEYS))
    missing = sorted({"eps", "steps", "step_size"} - set(pgd))
    if unknown or missing:
        raise StudyError(
            f"pgd settings {sorted(pgd)} have unknown keys {unknown} and lack {missing}; "
            f"allowed keys are {', '.join(_PGD_KEYS)}"
        )
    budgets = pgd["eps"] if isinstance(pgd["eps"], list | tuple) else [pgd["eps"]]
    for eps in budgets:
        results.append(
            _pgd_attack(
                model,
                x,
                y,
                eps,
                steps=pgd["steps"],
                step_size=pgd["step_size"],
                random_start=pgd.get("random_start", protocol == "standard"),
                restarts=pgd.get("restarts", 1),
                protocol=protocol,
                generator=torch.Generator().manual_seed(seed),
                clip=clip,
                skip_broken=True,
            )
        )
    return results
