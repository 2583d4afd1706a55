"""Standard-protocol robustness: l2 PGD, the gradient-masking check, the evaluation's rows."""

from __future__ import annotations

import pytest
import torch

from engine.errors import StudyError
from engine.models import ResidualMLP
from engine.robustness import RobustnessPlan, evaluate_robustness, l2_pgd, traced_pgd


@pytest.fixture(scope="module")
def setup() -> tuple[ResidualMLP, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = ResidualMLP(100, 4, width=16, depth=2).eval()
    x = torch.rand(200, 1, 10, 10)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[::4] = (y[::4] + 1) % 4
    return model, x, y


def test_l2_pgd_stays_in_the_ball_and_the_data_range(setup) -> None:
    model, x, y = setup
    for radius in (0.1, 1.0, 5.0):
        _, adv = l2_pgd(model, x, y, radius, steps=8, restarts=2)
        distance = (adv - x).flatten(1).norm(dim=1)
        assert (distance <= radius * (1 + 1e-5)).all()
        assert adv.min() >= 0 and adv.max() <= 1


def test_l2_pgd_at_radius_zero_is_clean_accuracy_and_never_rises_with_restarts(setup) -> None:
    model, x, y = setup
    survived, _adv = l2_pgd(model, x, y, 0.0)
    with torch.no_grad():
        assert torch.equal(survived, model(x).argmax(dim=1) == y)
    one, _ = l2_pgd(
        model, x, y, 1.0, steps=10, restarts=1, generator=torch.Generator().manual_seed(4)
    )
    three, _ = l2_pgd(
        model, x, y, 1.0, steps=10, restarts=3, generator=torch.Generator().manual_seed(4)
    )
    assert not (three & ~one).any()


def test_the_paper_loss_masks_the_gradient_of_confident_samples(setup) -> None:
    model, x, _y = setup
    confident = ResidualMLP(100, 4, width=16, depth=2).eval()
    confident.load_state_dict(model.state_dict())
    with torch.no_grad():
        # margins of about 16: the softmax of the label rounds past the Keras clip at
        # 1 - 1e-7, while the other classes' probabilities stay far from underflow
        confident.output_layer.weight.mul_(60.0)
        labels = confident(x).argmax(dim=1)
    softmax_robust, softmax_trace = traced_pgd(
        confident, x, labels, 0.05, steps=5, step_size=0.01, loss="softmax"
    )
    logit_robust, logit_trace = traced_pgd(
        confident, x, labels, 0.05, steps=5, step_size=0.01, loss="logit"
    )
    assert softmax_trace[0]["zero_grad"] > 0.4 * len(x)
    assert logit_trace[0]["zero_grad"] == 0
    assert softmax_robust.sum() > logit_robust.sum()
    assert [t["step"] for t in logit_trace] == list(range(6))
    # every step's record is consistent: robust never exceeds the iterate's accuracy
    assert all(t["robust"] <= t["correct"] for t in logit_trace)


def test_evaluation_writes_every_protocol_and_hands_the_model_back_as_it_was(setup) -> None:
    model, x, y = setup
    model.train()
    plan = RobustnessPlan(
        fgsm_eps=(0.05,),
        pgd_eps=(0.05,),
        pgd_steps=3,
        pgd_step_size=0.02,
        restarts=2,
        l2_radii=(0.25, 1.0),
        l2_steps=3,
        l2_restarts=1,
        masking=((0.02, 2, 0.01),),
    )
    report = evaluate_robustness(model, x.flatten(1), y, plan, seed=1, batch_size=64)
    assert model.training
    model.eval()
    robust = report.attacks["robust"]
    assert [(r["attack"], r["eps"]) for r in robust] == [
        ("clean", 0.0),
        ("fgsm", 0.05),
        ("pgd", 0.05),
        ("pgd_l2", 0.25),
        ("pgd_l2", 1.0),
    ]
    assert robust[2]["restarts"] == 2 and all(r["n"] == len(x) for r in robust)
    assert all(r["accuracy"] <= robust[0]["accuracy"] for r in robust)
    assert [r["attack"] for r in report.attacks["masking"]] == ["pgd_logit", "pgd_softmax"]
    assert [r["attack"] for r in report.attacks["paper"]] == [
        "clean",
        "fgsm",
        "fgsm",
        "fgsm",
        "pgd",
    ]
    assert len(report.curves) == 2 * 3 and report.pair_ratio > 0
    # the same seed gives the same result
    again = evaluate_robustness(model, x.flatten(1), y, plan, seed=1, batch_size=64)
    assert again.attacks == report.attacks


def test_the_plan_follows_the_dataset_budgets() -> None:
    plan = RobustnessPlan.for_dataset("fashion-mnist")
    assert plan.fgsm_eps == (0.05, 0.1, 0.2) and plan.pgd_eps == (0.1,)
    assert (plan.pgd_steps, plan.pgd_step_size, plan.restarts) == (40, 0.01, 5)
    assert plan.masking == ((0.02, 10, 0.005),)
    assert RobustnessPlan.for_dataset("wine").clip is None
    with pytest.raises(StudyError, match="dataset 'svhn' has no standard attack budgets"):
        RobustnessPlan.for_dataset("svhn")
