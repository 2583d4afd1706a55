import math

import pytest
import torch
from torch import nn

from engine.errors import LbaError
from engine.lipschitz import (
    conv_operator_norm,
    layer_sigmas,
    log10_bounds,
    normalization_gain,
    power_iteration,
    spectral_norm_exact,
)
from engine.models import ResidualCNN, ResidualMLP


def _dense_matrix_of(conv: nn.Conv2d, input_shape: tuple[int, int, int]) -> torch.Tensor:
    """The conv (bias left out) as an explicit matrix: its response to every basis image."""
    size = math.prod(input_shape)
    basis = torch.eye(size, dtype=torch.float64).reshape(size, *input_shape)
    with torch.no_grad():
        columns = conv._conv_forward(basis, conv.weight.double(), None)
    return columns.reshape(size, -1).T


def test_spectral_norm_exact_is_the_largest_singular_value() -> None:
    torch.manual_seed(0)
    weight = torch.randn(7, 4)

    expected = torch.linalg.svdvals(weight)[0]

    torch.testing.assert_close(spectral_norm_exact(weight), expected)


def test_power_iteration_converges_to_the_exact_sigma() -> None:
    torch.manual_seed(0)
    weight = torch.randn(20, 30, dtype=torch.float64)

    sigma, u = power_iteration(weight, iters=200)

    torch.testing.assert_close(sigma, spectral_norm_exact(weight), rtol=1e-8, atol=0)
    assert u.shape == (20,)


def test_power_iteration_refines_a_persistent_u_from_below() -> None:
    torch.manual_seed(0)
    weight = torch.randn(20, 20, dtype=torch.float64)
    exact = float(spectral_norm_exact(weight))

    estimates, u = [], None
    for _ in range(30):
        sigma, u = power_iteration(weight, u, iters=1)
        estimates.append(float(sigma))

    assert all(e <= exact * (1 + 1e-12) for e in estimates)
    assert estimates == sorted(estimates)
    assert estimates[-1] == pytest.approx(exact, rel=1e-3)


def test_power_iteration_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(3)
    expected = torch.rand(3)

    torch.manual_seed(3)
    power_iteration(torch.randn(5, 5), iters=3)
    torch.manual_seed(3)
    power_iteration(torch.ones(4, 4))

    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("stride", "padding", "padding_mode"),
    [(1, 1, "zeros"), (2, 1, "zeros"), (1, 0, "zeros"), (1, 1, "circular")],
)
def test_conv_operator_norm_matches_the_dense_matrix_of_the_conv(
    stride: int, padding: int, padding_mode: str
) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=stride, padding=padding, padding_mode=padding_mode)
    conv.double()
    shape = (2, 5, 5)

    exact = torch.linalg.matrix_norm(_dense_matrix_of(conv, shape), ord=2)

    torch.testing.assert_close(
        conv_operator_norm(conv, shape, iters=500), exact, rtol=1e-6, atol=0
    )


def test_reshaped_kernel_norm_understates_the_conv_operator_norm() -> None:
    # An all-ones 3x3 kernel is a box filter: its reshaped kernel has norm 3, yet a flat image
    # is amplified almost 9-fold.
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    nn.init.ones_(conv.weight)
    shape = (1, 8, 8)

    reshaped = float(spectral_norm_exact(conv.weight))
    operator = float(conv_operator_norm(conv, shape))
    exact = float(torch.linalg.matrix_norm(_dense_matrix_of(conv, shape), ord=2))

    assert reshaped == pytest.approx(3.0)
    assert operator == pytest.approx(exact, rel=1e-4)
    assert operator > 2.5 * reshaped


def test_layer_sigmas_are_exact_for_dense_and_operator_norms_for_convs() -> None:
    torch.manual_seed(0)
    model = ResidualCNN(1, 3, 4, filters=2, depth=1)

    sigmas = layer_sigmas(model)
    layers, shapes = model.kernel_layers(), model.layer_input_shapes()
    dense = [
        torch.linalg.matrix_norm(_dense_matrix_of(c, s), ord=2)
        for c, s in zip(layers[:2], shapes[:2], strict=True)
    ]

    assert len(sigmas) == 3
    assert sigmas[:2] == pytest.approx([float(d) for d in dense], rel=1e-4)
    assert sigmas[2] == pytest.approx(
        float(torch.linalg.svdvals(layers[2].weight.detach().double())[0])
    )


def test_residual_bound_of_zero_residual_kernels_is_input_times_output_sigma() -> None:
    torch.manual_seed(0)
    model = ResidualMLP(6, 3, width=5, depth=3)
    for layer in model.residual:
        nn.init.zeros_(layer.weight)

    sigmas = layer_sigmas(model)
    residual, plain = log10_bounds(sigmas, model.hidden_layer_indices())

    assert residual == pytest.approx(math.log10(sigmas[0] * sigmas[-1]))
    assert plain == -math.inf


def test_log10_bounds_do_not_overflow_for_200_layers_of_sigma_10() -> None:
    sigmas = [10.0] * 200

    residual, plain = log10_bounds(sigmas, list(range(1, 199)))

    assert plain == pytest.approx(200.0)
    assert residual == pytest.approx(2.0 + 198 * math.log10(11.0))


def test_log10_bounds_treat_only_hidden_layers_as_residual() -> None:
    residual, plain = log10_bounds([2.0, 3.0, 4.0, 5.0], [1, 2])

    assert residual == pytest.approx(math.log10(2.0 * 4.0 * 5.0 * 5.0))
    assert plain == pytest.approx(math.log10(120.0))


def test_log10_bounds_reject_a_hidden_index_outside_the_layers() -> None:
    with pytest.raises(LbaError, match=r"hidden indices \[5\] fall outside the 3 layers"):
        log10_bounds([1.0, 1.0, 1.0], [1, 5])


@pytest.mark.parametrize("model_kind", ["mlp", "cnn"])
def test_residual_bound_holds_on_random_input_pairs(model_kind: str) -> None:
    torch.manual_seed(0)
    if model_kind == "mlp":
        model, shape = ResidualMLP(12, 4, width=8, depth=4, mean=0.5, std=0.25), (12,)
    else:
        model, shape = ResidualCNN(2, 4, 6, filters=3, depth=2, std=(0.5, 0.25)), (2, 6, 6)
    model.eval()
    residual, _ = log10_bounds(layer_sigmas(model), model.hidden_layer_indices())
    bound = 10**residual * normalization_gain(model)

    x = torch.rand(256, *shape)
    x2 = x + 1e-2 * torch.randn_like(x)
    with torch.no_grad():
        ratio = (model(x) - model(x2)).norm(dim=1) / (x - x2).flatten(1).norm(dim=1)

    assert normalization_gain(model) == 4.0
    assert ratio.max() <= bound
