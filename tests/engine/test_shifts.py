"""Natural shifts: identity at severity 0, determinism, range, and the worst-case lighting."""

from __future__ import annotations

import pytest
import torch

from engine import shifts
from engine.errors import LbaError
from engine.models import ResidualMLP
from engine.shifts import SEVERITIES, SHIFTS


@pytest.fixture(scope="module")
def setup() -> tuple[ResidualMLP, torch.Tensor, torch.Tensor]:
    """A random residual MLP on 12x12 images; labels are its own clean predictions."""
    torch.manual_seed(0)
    model = ResidualMLP(144, 4, width=16, depth=2).eval()
    x = torch.rand(300, 1, 12, 12)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    # Half the labels wrong, so clean accuracy is neither 0 nor 1.
    y[::2] = (y[::2] + 1) % 4
    return model, x, y


def clean_correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    with torch.no_grad():
        return int((model(x).argmax(dim=1) == y).sum())


def test_zero_severity_gives_clean_accuracy_exactly(setup) -> None:
    model, x, y = setup
    results = shifts.evaluate_shifts(model, x, y, seed=3, batch_size=128)
    zero = [r for r in results if r.severity == 0]
    assert sorted(r.shift for r in zero) == sorted(SHIFTS)
    assert {r.correct for r in zero} == {clean_correct(model, x, y)}
    for shift in SHIFTS:
        assert shifts.apply_shift(x, shift, SEVERITIES[shift][0], shifts.draws(shift, x, 0)) is x


def test_shifts_are_deterministic_given_a_seed_and_differ_across_seeds(setup) -> None:
    _, x, _ = setup
    for shift in ("ramp", "spotlight", "noise"):
        level = SEVERITIES[shift][3]
        first = shifts.apply_shift(x, shift, level, shifts.draws(shift, x, 7))
        again = shifts.apply_shift(x, shift, level, shifts.draws(shift, x, 7))
        other = shifts.apply_shift(x, shift, level, shifts.draws(shift, x, 8))
        assert torch.equal(first, again), shift
        assert not torch.equal(first, other), shift


def test_results_do_not_depend_on_the_batch_size(setup) -> None:
    model, x, y = setup
    small = shifts.evaluate_shifts(model, x, y, seed=1, batch_size=37)
    large = shifts.evaluate_shifts(model, x, y, seed=1, batch_size=1000)
    assert [r.correct for r in small] == [r.correct for r in large]


def test_every_shift_stays_in_the_unit_range_and_changes_the_images(setup) -> None:
    _, x, _ = setup
    for shift in SHIFTS:
        drawn = shifts.draws(shift, x, 0)
        for level in SEVERITIES[shift][1:]:
            out = shifts.apply_shift(x, shift, level, drawn)
            assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1, shift
            assert not torch.equal(out, x), (shift, level)


def test_ramp_runs_from_minus_one_to_one_along_its_angle() -> None:
    like = torch.zeros(1)
    field = shifts.ramp_field(torch.tensor([0.0, 90.0, 45.0]), 5, 5, like)
    assert torch.allclose(field[0, 0, 2], torch.linspace(-1, 1, 5))  # left to right
    assert torch.allclose(field[1, 0, :, 2], torch.linspace(-1, 1, 5))  # top to bottom
    assert field[2].min() == pytest.approx(-1) and field[2].max() == pytest.approx(1)


def test_blur_keeps_a_constant_image_constant() -> None:
    x = torch.full((2, 1, 9, 9), 0.3)
    assert torch.allclose(shifts.gaussian_blur(x, 1.5), x)


def test_worst_case_lighting_never_exceeds_any_single_setting_nor_clean(setup) -> None:
    model, x, y = setup
    worst, settings = shifts.worst_case_lighting(model, x, y, batch_size=100)
    assert len(settings) == len(shifts.lighting_grid()) == 48
    assert worst.shift == "lighting_worst" and worst.n == len(x)
    assert all(worst.correct <= s.correct for s in settings)
    assert worst.correct <= clean_correct(model, x, y)
    # and per image: a setting's accuracy is computed on exactly that relit batch
    one = settings[5].params
    assert settings[5].correct == clean_correct(model, shifts.relight(x, **one), y)


def test_unknown_shift_and_bad_levels_name_the_value_and_the_rule(setup) -> None:
    _, x, y = setup
    with pytest.raises(LbaError, match="shift 'fog' is not one of brightness"):
        shifts.apply_shift(x, "fog", 0.1, {})
    with pytest.raises(LbaError, match=r"gamma level = -1.0 must be > 0"):
        shifts.apply_shift(x, "gamma", -1.0, {})
    with pytest.raises(LbaError, match=r"shifts need images \(N, C, H, W\)"):
        shifts.evaluate_shifts(torch.nn.Identity(), x.flatten(1), y)
