"""Certified radii from the Lipschitz bound, and the empirical lower bounds beneath it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from engine import certify
from engine.errors import LbaError
from engine.lipschitz import spectral_norm_exact
from engine.models import ResidualMLP
from engine.robustness import l2_pgd


def test_two_class_linear_model_radius_is_the_exact_distance_to_its_boundary() -> None:
    # Logits w.x + b1 and -w.x + b2: the boundary is the hyperplane 2 w.x + b1 - b2 = 0.
    torch.manual_seed(1)
    w = torch.randn(20, dtype=torch.float64)
    b = torch.tensor([0.3, -0.2], dtype=torch.float64)
    weight = torch.stack([w, -w])
    x = torch.randn(50, 20, dtype=torch.float64)
    logits = x @ weight.T + b
    labels = logits.argmax(dim=1)
    distance = (2 * x @ w + b[0] - b[1]).abs() / (2 * w.norm())

    log10_lb = math.log10(float(spectral_norm_exact(weight)))
    radius = certify.certified_radius(logits, labels, log10_lb)
    assert torch.allclose(radius, distance, rtol=1e-12, atol=0)
    # the pairwise bound with an identity body (constant 1) gives the same distance
    pairwise = certify.pairwise_radius(logits, labels, 0.0, weight)
    assert torch.allclose(pairwise, distance, rtol=1e-12, atol=0)
    # and a misclassified sample gets no certificate
    assert certify.certified_radius(logits, 1 - labels, log10_lb).eq(0).all()


def test_huge_zero_and_nan_bounds() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    tiny = certify.certified_radius(logits, labels, 400.0)
    assert tiny[0] == 0 or tiny[0] < 1e-390  # underflows to 0, never to nan or inf
    assert tiny[1] == 0  # a tie certifies nothing
    assert certify.certified_radius(logits, labels, -math.inf)[0] == math.inf
    with pytest.raises(LbaError, match="log10_lb = nan is not a bound"):
        certify.certified_radius(logits, labels, math.nan)


@pytest.fixture(scope="module")
def models() -> list[ResidualMLP]:
    """Random residual MLPs of several depths, one with in-model normalization."""
    out = []
    for seed, depth in enumerate((0, 2, 4)):
        torch.manual_seed(seed)
        out.append(ResidualMLP(64, 5, width=12, depth=depth).eval())
    torch.manual_seed(9)
    out.append(ResidualMLP(64, 5, width=12, depth=3, mean=0.5, std=0.3).eval())
    return out


def test_empirical_lower_bounds_never_exceed_the_upper_bound(models) -> None:
    x = torch.rand(200, 64)
    for model in models:
        with torch.no_grad():
            y = model(x).argmax(dim=1)
        cert = certify.certify(model, x, y, batch_size=64)
        upper = 10**cert.bounds.log10_residual
        assert 0 < cert.lower["margin_gradient"] <= cert.lower["jacobian"] <= upper * (1 + 1e-9)
        _, adv = l2_pgd(model, x, y, 0.5, steps=5)
        assert 0 < certify.pair_ratio(model, x, adv) <= upper * (1 + 1e-9)


def test_the_plain_product_is_no_bound_for_a_residual_net() -> None:
    # Near-zero residual kernels make the product tiny while the skips carry the signal.
    torch.manual_seed(0)
    model = ResidualMLP(16, 3, width=8, depth=3).eval()
    with torch.no_grad():
        for layer in model.residual:
            layer.weight.mul_(1e-4)
    x = torch.rand(100, 16)
    cert = certify.certify(model, x, torch.zeros(100, dtype=torch.long))
    assert 10**cert.bounds.log10_product < cert.lower["jacobian"]
    assert cert.lower["jacobian"] <= 10**cert.bounds.log10_residual


def test_certified_accuracy_never_exceeds_l2_pgd_on_the_same_samples(models) -> None:
    torch.manual_seed(3)
    x = torch.rand(300, 64)
    for model in models[1:]:
        with torch.no_grad():
            y = model(x).argmax(dim=1)
        y[::3] = (y[::3] + 1) % 5
        cert = certify.certify(model, x, y)
        median = cert.median_radius("pairwise")
        for radius in (0.0, median / 4, median / 2, median, 2 * median):
            survived, _ = l2_pgd(model, x, y, radius, steps=10, restarts=2, clip=None)
            for bound in certify.BOUNDS:
                certified = cert.radii[bound] > radius
                # per sample, not only in total: a certified sample is never broken
                assert not (certified & ~survived).any(), (bound, radius)
        assert (cert.radii["pairwise"] >= cert.radii["residual"] * (1 - 1e-12)).all()


def test_certified_rows_cover_both_bounds_and_every_radius(models) -> None:
    x = torch.rand(50, 64)
    y = torch.zeros(50, dtype=torch.long)
    cert = certify.certify(models[1], x, y)
    rows = certify.certified_rows(cert)
    assert [(r["bound"], r["radius"]) for r in rows] == [
        (b, r) for b in certify.BOUNDS for r in certify.RADII
    ]
    at_zero = [r for r in rows if r["radius"] == 0.0]
    with torch.no_grad():
        clean = int((models[1](x).argmax(dim=1) == y).sum())
    assert all(r["correct"] <= clean for r in at_zero)
    kinds = {r["kind"]: r["valid"] for r in certify.estimate_rows(cert)}
    assert kinds == {"residual": 1, "product": 0, "jacobian": 1, "margin_gradient": 1}


def test_a_model_without_layers_is_refused() -> None:
    with pytest.raises(LbaError, match="certification needs an lba model .* got Linear"):
        certify.upper_bounds(nn.Linear(3, 2))
