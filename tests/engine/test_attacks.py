import pytest
import torch
from torch import Tensor, nn

from engine.attacks import (
    PAPER_GRID,
    STANDARD_GRIDS,
    _input_gradient,
    clean,
    fgsm,
    pgd,
    run_attacks,
)
from engine.errors import StudyError
from engine.models import ResidualMLP

PROTOCOLS = ["paper", "standard"]


class Recorder(nn.Module):
    """Passes inputs to a model and keeps a copy of every batch it was shown."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        return self.model(x)


@pytest.fixture(scope="module")
def task() -> tuple[nn.Module, Tensor, Tensor]:
    """A tiny residual MLP trained on three blobs of 4x4 'images' with pixels in [0, 1]."""
    generator = torch.Generator().manual_seed(0)
    centers = torch.rand(3, 1, 4, 4, generator=generator)
    y = torch.arange(300) % 3
    noise = 0.4 * torch.randn(300, 1, 4, 4, generator=generator)
    x = (centers[y] + noise).clamp(0, 1)
    torch.manual_seed(0)
    model = ResidualMLP(16, 3, width=16, depth=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    return model, x, y


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_zero_eps_attacks_reproduce_clean_accuracy_exactly(task: tuple, protocol: str) -> None:
    model, x, y = task
    with torch.no_grad():
        expected = int((model(x).argmax(1) == y).sum())

    baseline = clean(model, x, y, protocol=protocol)
    by_fgsm = fgsm(model, x, y, 0.0, protocol=protocol)
    by_pgd = pgd(model, x, y, 0.0, steps=5, step_size=0.01, random_start=True, protocol=protocol)

    assert expected < len(y)
    assert baseline.correct == by_fgsm.correct == by_pgd.correct == expected
    assert baseline.accuracy == by_fgsm.accuracy == by_pgd.accuracy == expected / len(y)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_attacks_leave_train_mode_and_batchnorm_stats_untouched(protocol: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5)
    )
    model.append(nn.Linear(8, 3))
    model.train()
    model[4].eval()  # a mixed model: each flag must come back as it was
    model(torch.rand(32, 1, 4, 4))
    stats = {name: buffer.clone() for name, buffer in model.named_buffers()}
    flags = [module.training for module in model.modules()]
    x, y = torch.rand(20, 1, 4, 4), torch.randint(0, 3, (20,))

    fgsm(model, x, y, 0.1, protocol=protocol)
    pgd(model, x, y, 0.1, steps=3, step_size=0.05, random_start=True, protocol=protocol)
    run_attacks(model, x, y, protocol=protocol, fgsm_eps=[0.1], pgd=None, n=None, seed=0)

    assert [module.training for module in model.modules()] == flags
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, stats[name]), name
    assert all(parameter.grad is None for parameter in model.parameters())


def test_fgsm_stays_in_eps_ball_and_pixel_range(task: tuple) -> None:
    model, x, y = task
    recorder = Recorder(model)

    fgsm(recorder, x, y, 0.1, protocol="standard", batch_size=1000)

    adversarial = recorder.seen[-1]
    assert (adversarial - x).abs().max() <= 0.1 + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (adversarial - x).abs().max() > 0.09


def test_pgd_stays_in_eps_ball_and_pixel_range(task: tuple) -> None:
    model, x, y = task
    recorder = Recorder(model)

    pgd(
        recorder,
        x,
        y,
        0.05,
        steps=10,
        step_size=0.02,
        random_start=True,
        restarts=2,
        protocol="standard",
    )

    assert len(recorder.seen) > 10
    for visited in recorder.seen:
        assert (visited - x).abs().max() <= 0.05 + 1e-6
        assert visited.min() >= 0 and visited.max() <= 1


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_paper_protocol_rescales_each_attacked_image_to_unit_range(
    task: tuple, attack: str
) -> None:
    model, x, y = task
    recorder = Recorder(model)

    if attack == "fgsm":
        fgsm(recorder, x, y, 0.02, protocol="paper")
    else:
        pgd(recorder, x, y, 0.02, steps=10, step_size=0.005, random_start=False, protocol="paper")

    judged = recorder.seen[-1].flatten(1)
    torch.testing.assert_close(judged.min(1).values, torch.zeros(len(x)))
    torch.testing.assert_close(judged.max(1).values, torch.ones(len(x)))


def test_paper_loss_masks_the_gradient_of_a_confident_sample() -> None:
    # A logit margin of 40 rounds float32 softmax to exactly 1 for the true class, while
    # the logits still carry a (tiny) gradient.
    torch.manual_seed(0)
    model = nn.Linear(16, 3)
    with torch.no_grad():
        model.bias.copy_(torch.tensor([40.0, 0.0, 0.0]))
    x, y = torch.rand(5, 16), torch.zeros(5, dtype=torch.long)

    paper_grad, right = _input_gradient(model, x, y, "paper")
    standard_grad, _ = _input_gradient(model, x, y, "standard")

    assert right.all()
    assert not paper_grad.any()
    assert (standard_grad.abs().sum(1) > 0).all()


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_robust_accuracy_never_rises_with_eps(task: tuple, attack: str) -> None:
    model, x, y = task
    budgets = [0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3]

    if attack == "fgsm":
        results = [fgsm(model, x, y, eps, protocol="standard") for eps in budgets]
    else:
        results = [
            pgd(
                model,
                x,
                y,
                eps,
                steps=10,
                step_size=eps / 4,
                random_start=False,
                protocol="standard",
            )
            for eps in budgets
        ]

    accuracies = [result.accuracy for result in results]
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[-1] < accuracies[0]


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_with_more_steps_never_does_better_from_the_same_start(
    task: tuple, random_start: bool
) -> None:
    model, x, y = task

    accuracies = [
        pgd(
            model,
            x,
            y,
            0.1,
            steps=steps,
            step_size=0.005,
            random_start=random_start,
            protocol="standard",
            generator=torch.Generator().manual_seed(1),
        ).accuracy
        for steps in [0, 1, 2, 5, 10, 20]
    ]

    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[-1] < accuracies[0]


def test_more_restarts_never_raise_robust_accuracy(task: tuple) -> None:
    model, x, y = task

    def attack(restarts: int) -> float:
        generator = torch.Generator().manual_seed(2)
        return pgd(
            model,
            x,
            y,
            0.1,
            steps=3,
            step_size=0.02,
            random_start=True,
            restarts=restarts,
            protocol="standard",
            generator=generator,
        ).accuracy

    assert attack(4) <= attack(1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_batch_size_does_not_change_the_result(task: tuple, protocol: str) -> None:
    model, x, y = task

    whole = pgd(model, x, y, 0.05, steps=5, step_size=0.01, random_start=False, protocol=protocol)
    pieces = pgd(
        model,
        x,
        y,
        0.05,
        steps=5,
        step_size=0.01,
        random_start=False,
        protocol=protocol,
        batch_size=7,
    )

    assert whole == pieces


def test_restarts_without_random_start_run_once() -> None:
    model = ResidualMLP(4, 2, width=4, depth=1)
    recorder = Recorder(model)
    x, y = torch.rand(5, 4), torch.randint(0, 2, (5,))

    result = pgd(
        recorder,
        x,
        y,
        0.1,
        steps=2,
        step_size=0.05,
        random_start=False,
        restarts=5,
        protocol="paper",
    )

    assert result.restarts == 1
    assert len(recorder.seen) == 3


def test_run_attacks_reports_clean_then_fgsm_then_pgd_rows(task: tuple) -> None:
    model, x, y = task

    results = run_attacks(model, x, y, protocol="paper", seed=0, **PAPER_GRID)

    assert [(r.attack, r.eps) for r in results] == [
        ("clean", 0.0),
        ("fgsm", 0.01),
        ("fgsm", 0.02),
        ("fgsm", 0.03),
        ("pgd", 0.02),
    ]
    assert {r.n for r in results} == {len(x)}
    assert results[-1].steps == 10 and results[-1].step_size == 0.005


def test_run_attacks_takes_the_first_n_samples_and_each_pgd_eps(task: tuple) -> None:
    model, x, y = task
    settings = {"eps": [0.05, 0.1], "steps": 3, "step_size": 0.02}

    results = run_attacks(
        model, x, y, protocol="standard", fgsm_eps=[], pgd=settings, n=40, seed=0
    )

    assert [(r.attack, r.eps, r.n) for r in results] == [
        ("clean", 0.0, 40),
        ("pgd", 0.05, 40),
        ("pgd", 0.1, 40),
    ]
    assert results[0].correct == clean(model, x[:40], y[:40], protocol="standard").correct


def test_standard_grids_cover_every_dataset() -> None:
    assert set(STANDARD_GRIDS) == {"fashion-mnist", "mnist", "cifar10", "wine", "circles"}
    assert STANDARD_GRIDS["mnist"]["fgsm_eps"] == [0.1, 0.2, 0.3]
    assert PAPER_GRID["fgsm_eps"] == [0.01, 0.02, 0.03]


def test_unknown_protocol_is_rejected_naming_the_allowed_ones(task: tuple) -> None:
    model, x, y = task

    with pytest.raises(StudyError, match=r"protocol = 'madry' is not one of paper, standard"):
        fgsm(model, x, y, 0.1, protocol="madry")


def test_unknown_pgd_key_is_rejected(task: tuple) -> None:
    model, x, y = task
    settings = {"eps": 0.1, "steps": 3, "step_size": 0.02, "alpha": 0.1}

    with pytest.raises(StudyError, match=r"unknown keys \['alpha'\]"):
        run_attacks(model, x, y, protocol="standard", fgsm_eps=[], pgd=settings, n=10, seed=0)


def test_negative_eps_is_rejected(task: tuple) -> None:
    model, x, y = task

    with pytest.raises(StudyError, match=r"eps = -0.1 must be a finite number >= 0"):
        fgsm(model, x, y, -0.1, protocol="standard")
