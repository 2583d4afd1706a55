"""What the Lipschitz bound certifies, and how far below it the network's real constant lies.

If the logits map ``f`` is ``L``-Lipschitz in the l2 norm, each logit difference
``z_a - z_b = (e_a - e_b) . f`` is ``sqrt(2) L``-Lipschitz. A prediction whose margin (top
logit minus runner-up) is ``m`` therefore cannot change within the l2 ball of radius
``m / (sqrt(2) L)`` around the input: that is its certified radius. Certified accuracy at a
radius ``r`` is the share of samples classified correctly whose certified radius exceeds ``r``.

Two valid bounds are used (both in pixel units: the in-model normalization's gain is included):

- ``residual``: ``L = sigma_in * prod_r (1 + sigma_r) * sigma_out``, the bound the training loop
  monitors;
- ``pairwise``: the same product without the output layer bounds the last hidden layer ``h``,
  and ``z_a - z_b = (w_a - w_b) . h + c`` has constant ``|w_a - w_b| * L_hidden``, which is never
  more than ``sqrt(2) * sigma_out * L_hidden``; the radius is the smallest, over the other
  classes ``j``, of ``(z_y - z_j) / (|w_y - w_j| L_hidden)``. Always at least the residual one.

The plain product of the layer norms (``product``) ignores the identity skips and bounds
nothing; it is reported beside them, never used to certify. Margins are computed by a float64
copy of the model and bounds are handled as log10, so the radii are exact to float64 rounding.

Beside the upper bounds, two empirical lower bounds of ``L``: the largest spectral norm of the
input Jacobian over the test samples (``jacobian``), and the largest norm of the margin's input
gradient divided by ``sqrt(2)`` (``margin_gradient``). :func:`pair_ratio` gives a third from
attack pairs. The distance between upper and lower bound shows how loose the certificate is.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from engine.errors import LbaError
from engine.lipschitz import layer_sigmas, log10_bounds, normalization_gain
from engine.shifts import eval_mode, model_device

RADII = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5)
"""l2 radii (pixel units, images in [0, 1]) at which certified accuracy is reported."""

BOUNDS = ("residual", "pairwise")
SQRT2 = math.sqrt(2.0)


@dataclass
class UpperBounds:
    """The Lipschitz upper bounds of a residual network, in pixel units.

    Attributes:
        log10_residual: log10 of the residual bound of the logits map (valid).
        log10_product: log10 of the plain product of layer norms (not a bound for residual
            nets; reported for comparison).
        log10_hidden: log10 of the residual bound up to the last hidden layer (valid).
        out_weight: The output layer's kernel ``(classes, features)``, float64.
    """

    log10_residual: float
    log10_product: float
    log10_hidden: float
    out_weight: Tensor


@dataclass
class Certificate:
    """Certified radii of a set of samples under both bounds, and the lower bounds found.

    Attributes:
        bounds: The upper bounds used.
        radii: Per bound name, the certified radius of every sample (0 where the model is
            wrong), float64.
        lower: Per lower-bound kind, the largest value found (not log10).
        n: Samples certified.
    """

    bounds: UpperBounds
    radii: dict[str, Tensor]
    lower: dict[str, float] = field(default_factory=dict)
    n: int = 0

    def accuracy(self, bound: str, radius: float) -> tuple[int, float]:
        """``(correct, accuracy)``: samples whose certified radius under ``bound`` exceeds
        ``radius``."""
        correct = int((self.radii[bound] > radius).sum())
        return correct, correct / self.n

    def median_radius(self, bound: str) -> float:
        """The median certified radius (0 counts for every misclassified sample)."""
        return float(self.radii[bound].median())

    def log10_bound(self, bound: str) -> float:
        """log10 of the scalar constant behind a bound (for ``pairwise``, the largest pair's)."""
        if bound == "residual":
            return self.bounds.log10_residual
        pair = pair_distances(self.bounds.out_weight).max().item() / SQRT2
        return self.bounds.log10_hidden + (math.log10(pair) if pair > 0 else -math.inf)


def upper_bounds(model: nn.Module) -> UpperBounds:
    """The residual, pairwise and plain-product bounds of a model, from its weights now.

    Args:
        model: A :class:`~engine.models.ResidualMLP` or :class:`~engine.models.ResidualCNN`
            (anything with ``kernel_layers``, ``hidden_layer_indices`` and a dense
            ``output_layer`` last).

    Raises:
        LbaError: The model does not expose its layers.
    """
    if not hasattr(model, "kernel_layers") or not hasattr(model, "output_layer"):
        raise LbaError(
            f"certification needs an lba model with kernel_layers(); got {type(model).__name__}"
        )
    sigmas = layer_sigmas(model)
    hidden = model.hidden_layer_indices()
    gain = math.log10(normalization_gain(model))
    residual, product = log10_bounds(sigmas, hidden)
    body, _ = log10_bounds(sigmas[:-1], hidden)
    weight = model.output_layer.weight.detach().double().cpu()
    return UpperBounds(residual + gain, product + gain, body + gain, weight)


def margins(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Top logit minus runner-up, and whether the top class is the label.

    Args:
        logits: ``(N, K)`` with ``K`` >= 2.
        labels: ``(N,)``.

    Returns:
        ``(margin, correct)``; a tie gives margin 0.
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise LbaError(f"margins need logits (N, K >= 2); got shape {tuple(logits.shape)}")
    top2 = logits.topk(2, dim=1)
    margin = top2.values[:, 0] - top2.values[:, 1]
    return margin, top2.indices[:, 0] == labels


def certified_radius(logits: Tensor, labels: Tensor, log10_lb: float) -> Tensor:
    """The l2 radius ``m / (sqrt(2) L)`` within which each prediction cannot change.

    Args:
        logits: ``(N, K)`` logits, ideally float64.
        labels: ``(N,)`` true labels.
        log10_lb: log10 of an l2 Lipschitz bound of the logits map (``-inf`` for a constant
            map, which certifies every correct prediction at any radius).

    Returns:
        ``(N,)`` float64 radii; 0 for misclassified samples and ties.

    Raises:
        LbaError: The bound is NaN or the logits are not ``(N, K >= 2)``.
    """
    if math.isnan(log10_lb):
        raise LbaError("log10_lb = nan is not a bound; it must be a number or -inf")
    margin, correct = margins(logits.double(), labels)
    if log10_lb == -math.inf:
        radius = torch.full_like(margin, math.inf)
    else:
        # margin * 10^-log10_lb / sqrt(2), in log space so a huge bound cannot overflow.
        positive = margin.clamp_min(0.0)
        radius = torch.exp(torch.log(positive) - log10_lb * math.log(10.0)) / SQRT2
    return torch.where(correct & (margin > 0), radius, torch.zeros_like(radius))


def pair_distances(weight: Tensor) -> Tensor:
    """``|w_a - w_b|`` for every pair of rows, computed directly (``cdist`` may round down)."""
    return (weight[:, None, :] - weight[None, :, :]).norm(dim=2)


def pairwise_radius(
    logits: Tensor, labels: Tensor, log10_hidden: float, out_weight: Tensor
) -> Tensor:
    """Certified radius from each pair's own constant ``|w_y - w_j| * L_hidden``.

    Args:
        logits: ``(N, K)`` logits, ideally float64.
        labels: ``(N,)`` true labels.
        log10_hidden: log10 of an l2 Lipschitz bound of the map to the last hidden layer.
        out_weight: The output kernel ``(K, features)`` whose rows make the logits.

    Returns:
        ``(N,)`` float64 radii; 0 for misclassified samples and ties.
    """
    logits = logits.double()
    _, correct = margins(logits, labels)
    weight = out_weight.double().to(logits.device)
    own = logits.gather(1, labels[:, None])
    # |w_y - w_j| per sample and class; the label's own column is excluded below.
    pair_norm = pair_distances(weight)[labels]
    scale = math.exp(-log10_hidden * math.log(10.0)) if log10_hidden != -math.inf else math.inf
    with torch.no_grad():
        ratio = (own - logits) / pair_norm * scale
    ratio[torch.arange(len(labels)), labels] = math.inf
    # Two classes with identical weight rows can never be told apart by the margin's slope.
    ratio = torch.nan_to_num(ratio, nan=math.inf)
    radius = ratio.min(dim=1).values.clamp_min(0.0)
    return torch.where(correct & (radius > 0), radius, torch.zeros_like(radius))


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of a model in eval mode, for margins exact to float64 rounding."""
    return copy.deepcopy(model).double().eval()


def jacobian_norms(model: nn.Module, x: Tensor, *, classes: int) -> Tensor:
    """Spectral norm of the input Jacobian of the logits at each sample.

    For a ReLU network the logits are linear on a neighbourhood of almost every input, so each
    value is the Lipschitz constant of one linear piece: a lower bound of the network's.

    Args:
        model: Classifier returning ``classes`` logits.
        x: Inputs ``(N, ...)``, in the model's dtype.
        classes: Number of logits.

    Returns:
        ``(N,)`` norms, float64.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        rows = []
        for k in range(classes):
            (grad,) = torch.autograd.grad(logits[:, k].sum(), x, retain_graph=k < classes - 1)
            rows.append(grad.flatten(1))
    jac = torch.stack(rows, dim=1).double()
    gram = jac @ jac.transpose(1, 2)
    return torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0.0).sqrt()


def margin_gradient_norms(model: nn.Module, x: Tensor) -> Tensor:
    """Norm of the input gradient of the predicted margin (top minus runner-up logit).

    Returns:
        ``(N,)`` gradient norms, float64; divide by ``sqrt(2)`` for a lower bound of the
        logits' Lipschitz constant.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        top2 = logits.topk(2, dim=1).indices
        chosen = logits.gather(1, top2)
        (grad,) = torch.autograd.grad((chosen[:, 0] - chosen[:, 1]).sum(), x)
    return grad.flatten(1).double().norm(dim=1)


def pair_ratio(model: nn.Module, x: Tensor, x_adv: Tensor) -> float:
    """The largest ``|f(x') - f(x)| / |x' - x|`` over pairs: a lower bound of the constant.

    Computed in float64 (on a copy unless ``model`` already is float64); pairs closer than
    1e-6 are skipped, where rounding would dominate the ratio.
    """
    first = next(model.parameters(), None)
    model64 = model if first is not None and first.dtype == torch.float64 else float64_copy(model)
    device = model_device(model64)
    with torch.no_grad():
        x, x_adv = x.to(device).double(), x_adv.to(device).double()
        distance = (x_adv - x).flatten(1).norm(dim=1)
        change = (model64(x_adv) - model64(x)).norm(dim=1)
    keep = distance > 1e-6
    if not bool(keep.any()):
        return 0.0
    return float((change[keep] / distance[keep]).max())


def certify(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1000) -> Certificate:
    """Certified radii under both bounds, and the gradient lower bounds, for every sample.

    A sample is certified only if the float32 model (the one deployed) and its float64 copy
    both classify it correctly; the radius comes from the float64 margins.

    Args:
        model: An lba model (see :func:`upper_bounds`) returning logits.
        x: Inputs ``(N, ...)`` in pixel units.
        y: Labels ``(N,)``.
        batch_size: Samples per pass.

    Raises:
        LbaError: The model does not expose its layers, or x and y disagree in length.
    """
    if len(x) == 0 or len(x) != len(y):
        raise LbaError(f"certify needs as many labels as samples, and some: {len(x)}, {len(y)}")
    bounds = upper_bounds(model)
    model64 = float64_copy(model)
    device = model_device(model)
    radii: dict[str, list[Tensor]] = {name: [] for name in BOUNDS}
    jacobian = margin_grad = 0.0
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device)
            yb = y[start : start + batch_size].to(device=device, dtype=torch.long)
            with torch.no_grad():
                right32 = model(xb).argmax(dim=1) == yb
                logits = model64(xb.double())
            residual = certified_radius(logits, yb, bounds.log10_residual)
            pairwise = pairwise_radius(logits, yb, bounds.log10_hidden, bounds.out_weight)
            radii["residual"].append(torch.where(right32, residual, 0.0).cpu())
            radii["pairwise"].append(torch.where(right32, pairwise, 0.0).cpu())
            x64 = xb.double()
            classes = logits.shape[1]
            jacobian = max(jacobian, float(jacobian_norms(model64, x64, classes=classes).max()))
            margin_grad = max(margin_grad, float(margin_gradient_norms(model64, x64).max()))
    return Certificate(
        bounds,
        {name: torch.cat(parts) for name, parts in radii.items()},
        {"jacobian": jacobian, "margin_gradient": margin_grad / SQRT2},
        len(x),
    )


def certified_rows(cert: Certificate, radii: Sequence[float] = RADII) -> list[dict]:
    """Store rows (``certified`` table): accuracy per bound and radius."""
    rows = []
    for bound in BOUNDS:
        median = cert.median_radius(bound)
        log10_bound = cert.log10_bound(bound)
        for radius in radii:
            correct, accuracy = cert.accuracy(bound, radius)
            rows.append(
                {
                    "bound": bound,
                    "radius": float(radius),
                    "accuracy": accuracy,
                    "correct": correct,
                    "n": cert.n,
                    "log10_bound": log10_bound,
                    "median_radius": median,
                }
            )
    return rows


def estimate_rows(cert: Certificate) -> list[dict]:
    """Store rows (``lipschitz_estimates`` table): the upper bounds and the lower bounds."""
    rows = [
        {
            "kind": "residual",
            "side": "upper",
            "log10_value": cert.bounds.log10_residual,
            "valid": 1,
            "n": cert.n,
        },
        {
            "kind": "product",
            "side": "upper",
            "log10_value": cert.bounds.log10_product,
            "valid": 0,
            "n": cert.n,
        },
    ]
    for kind, value in cert.lower.items():
        log10 = math.log10(value) if value > 0 else -math.inf
        rows.append({"kind": kind, "side": "lower", "log10_value": log10, "valid": 1, "n": cert.n})
    return rows
