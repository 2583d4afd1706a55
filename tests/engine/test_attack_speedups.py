"""The fast attack paths decide every sample as the plain ones do.

The plain versions below are the attacks as first written: one gradient per FGSM budget, the
eps-ball projection and the clip as separate out-of-place steps every PGD step, every sample
attacked to the last step. The engine shares one gradient across FGSM budgets, projects onto
the clipped ball in place, and (``skip_broken``) stops attacking samples already broken.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine import attacks
from engine.data import load_dataset
from engine.models import ResidualMLP

CLIP = (0.0, 1.0)


@pytest.fixture(scope="module")
def task() -> tuple:
    """The paper's MLP after one epoch on 2,000 real Fashion-MNIST images; 1,000 test images."""
    data = load_dataset("fashion-mnist", train_subset=2000)
    torch.manual_seed(0)
    model = ResidualMLP(784, 10, width=20, depth=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for start in range(0, 2000, 100):
        loss = F.cross_entropy(
            model(data.x_train[start : start + 100]), data.y_train[start : start + 100]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), data.x_test[:1000], data.y_test[:1000]


def plain_gradient(model: nn.Module, x: Tensor, y: Tensor, protocol: str) -> tuple:
    x = x.detach().requires_grad_(True)
    logits = model(x)
    if protocol == "paper":
        loss = attacks._paper_loss(logits, y)
    else:
        loss = F.cross_entropy(logits, y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad, logits.detach().argmax(1) == y


def correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def plain_fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, protocol: str) -> Tensor:
    grad, right = plain_gradient(model, x, y, protocol)
    adv = x + eps * grad.sign()
    if protocol == "paper":
        return correct(model, attacks._minmax_rescale(adv), y)
    return right & correct(model, adv.clamp(*CLIP), y)


def plain_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    step_size: float,
    start: Tensor,
    protocol: str,
) -> Tensor:
    adv, survived = start, torch.ones_like(y, dtype=torch.bool)
    for _ in range(steps):
        grad, right = plain_gradient(model, adv, y, protocol)
        if protocol == "standard":
            survived = survived & right
        adv = adv + step_size * grad.sign()
        adv = torch.minimum(torch.maximum(adv, x - eps), x + eps)
        if protocol == "standard":
            adv = adv.clamp(*CLIP)
    if protocol == "paper":
        return correct(model, attacks._minmax_rescale(adv), y)
    return survived & correct(model, adv, y)


@pytest.mark.parametrize("protocol", ["paper", "standard"])
def test_fgsm_budgets_from_one_gradient_match_one_gradient_each(task, protocol):
    model, x, y = task
    budgets = [0.01, 0.05, 0.1, 0.2]

    with torch.enable_grad():
        fast = attacks._fgsm_robust(model, x, y, budgets, protocol, CLIP)

    for eps, robust in zip(budgets, fast):
        assert torch.equal(robust, plain_fgsm(model, x, y, eps, protocol)), eps


@pytest.mark.parametrize("protocol", ["paper", "standard"])
@pytest.mark.parametrize("random_start", [False, True])
@pytest.mark.parametrize("skip_broken", [False, True])
def test_pgd_matches_the_plain_loop_sample_by_sample(task, protocol, random_start, skip_broken):
    model, x, y = task
    eps, steps, step_size = (0.1, 20, 0.01) if protocol == "standard" else (0.02, 10, 0.005)
    start = x
    if random_start:
        noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
        start = (x + eps * (2 * noise - 1)).clamp(*CLIP)

    fast = attacks._pgd_run(model, x, y, eps, steps, step_size, start, protocol, CLIP, skip_broken)

    expected = plain_pgd(model, x, y, eps, steps, step_size, start, protocol)
    assert torch.equal(fast, expected)
    assert 0 < int(expected.sum()) < len(y)  # the attack decided some samples each way


def test_run_attacks_counts_equal_separate_calls(task):
    model, x, y = task
    pgd_settings = {"eps": 0.1, "steps": 10, "step_size": 0.01}

    rows = attacks.run_attacks(
        model,
        x,
        y,
        protocol="standard",
        fgsm_eps=[0.0, 0.05, 0.1],
        pgd=pgd_settings,
        n=None,
        seed=3,
    )

    alone = [attacks.clean(model, x, y, protocol="standard")]
    alone += [attacks.fgsm(model, x, y, eps, protocol="standard") for eps in (0.0, 0.05, 0.1)]
    alone.append(
        attacks.pgd(
            model,
            x,
            y,
            0.1,
            steps=10,
            step_size=0.01,
            random_start=True,
            protocol="standard",
            generator=torch.Generator().manual_seed(3),
        )
    )
    assert rows == alone
