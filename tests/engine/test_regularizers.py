import pytest
import torch
from torch import nn

from engine.errors import StudyError
from engine.lipschitz import layer_sigmas, log10_bounds, spectral_norm_exact
from engine.models import ResidualCNN, ResidualMLP
from engine.regularizers import Regularizer, RegularizerSpec, make_regularizer


def _mlp(depth: int = 3, seed: int = 0) -> ResidualMLP:
    torch.manual_seed(seed)
    return ResidualMLP(6, 3, width=5, depth=depth)


def _draws(regularizer: Regularizer, count: int) -> list[int]:
    layers = []
    for _ in range(count):
        regularizer.penalty()
        layers.append(regularizer.last_layer)
    return layers


def test_lba_gradient_is_sigma_times_the_unit_kernel_on_the_drawn_layer_only() -> None:
    model = _mlp()
    regularizer = make_regularizer(RegularizerSpec.for_method("lba"), model, seed=0)

    regularizer.penalty().backward()

    drawn = model.kernel_layers()[regularizer.last_layer]
    weight = drawn.weight.detach()
    sigma = spectral_norm_exact(weight)
    torch.testing.assert_close(drawn.weight.grad, sigma * weight / weight.norm())
    assert regularizer.last_sigma == pytest.approx(float(sigma))
    assert regularizer.last_penalty == pytest.approx(float(sigma * weight.norm()))
    for parameter in model.parameters():
        if parameter is not drawn.weight:
            assert parameter.grad is None or not parameter.grad.any()


def test_lba_2025_gradient_is_sigma_hat_times_the_kernel() -> None:
    model = _mlp()
    regularizer = make_regularizer(RegularizerSpec.for_method("lba_2025"), model, seed=0)
    regularizer.start_epoch(1)

    regularizer.penalty().backward()

    drawn = model.kernel_layers()[regularizer.last_layer]
    torch.testing.assert_close(drawn.weight.grad, regularizer.last_sigma * drawn.weight.detach())


def test_layer_draws_repeat_for_the_same_seed() -> None:
    spec = RegularizerSpec.for_method("lba")

    first = _draws(make_regularizer(spec, _mlp(), seed=7), 50)
    again = _draws(make_regularizer(spec, _mlp(), seed=7), 50)
    other = _draws(make_regularizer(spec, _mlp(), seed=8), 50)

    assert first == again
    assert first != other


def test_layer_draws_are_uniform_over_all_layers() -> None:
    regularizer = make_regularizer(RegularizerSpec.for_method("lba"), _mlp(depth=3), seed=0)
    regularizer.start_epoch(1)

    _draws(regularizer, 5000)

    counts = torch.tensor(regularizer.draw_counts, dtype=torch.float64)
    expected = 5000 / 5
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    # 18.47 is the 0.999 quantile of chi-square with 4 degrees of freedom.
    assert counts.sum() == 5000
    assert chi_square < 18.47


def test_layer_draws_ignore_torch_global_rng() -> None:
    spec = RegularizerSpec.for_method("lba")

    torch.manual_seed(1)
    first = _draws(make_regularizer(spec, _mlp(), seed=3), 40)
    torch.manual_seed(2)
    torch.rand(1000)
    second = _draws(make_regularizer(spec, _mlp(), seed=3), 40)

    assert first == second


def test_epoch_draw_keeps_one_hidden_layer_per_epoch_and_resets_counts() -> None:
    regularizer = make_regularizer(RegularizerSpec.for_method("lba_2025"), _mlp(), seed=0)

    chosen = []
    for epoch in range(1, 21):
        regularizer.start_epoch(epoch)
        layers = set(_draws(regularizer, 5))
        assert len(layers) == 1
        assert sum(regularizer.draw_counts) == 1
        chosen.append(layers.pop())

    assert set(chosen) == {1, 2, 3}


def test_start_epoch_resets_batch_draw_counts() -> None:
    regularizer = make_regularizer(RegularizerSpec.for_method("lba"), _mlp(), seed=0)
    regularizer.start_epoch(1)
    _draws(regularizer, 10)

    regularizer.start_epoch(2)

    assert regularizer.draw_counts == [0, 0, 0, 0, 0]


def test_power_sigma_converges_to_exact_over_successive_batches() -> None:
    model = _mlp(depth=1)
    spec = RegularizerSpec.for_method("lba", pool="hidden", sigma="power", power_iters=1)
    regularizer = make_regularizer(spec, model, seed=0)

    _draws(regularizer, 100)

    exact = float(spectral_norm_exact(model.residual[0].weight))
    assert regularizer.last_sigma == pytest.approx(exact, rel=1e-4)


def test_cnn_hidden_pool_is_every_conv_but_the_first() -> None:
    torch.manual_seed(0)
    model = ResidualCNN(1, 3, 4, filters=2, depth=3)
    spec = RegularizerSpec.for_method("lba_2025", arch="cnn")
    regularizer = make_regularizer(spec, model, seed=0)
    regularizer.start_epoch(1)

    layers = set(_draws(regularizer, 60))

    assert spec.draw == "batch"
    assert layers == {1, 2, 3}
    assert regularizer.last_sigma > 0


def test_exact_conv_sigma_tracks_the_operator_norm_as_the_kernel_moves() -> None:
    torch.manual_seed(0)
    model = ResidualCNN(1, 3, 4, filters=2, depth=1)
    spec = RegularizerSpec.for_method("lba", pool="conv_except_first")
    regularizer = make_regularizer(spec, model, seed=0)

    regularizer.penalty()
    first = regularizer.last_sigma
    with torch.no_grad():
        model.residual[0].weight.mul_(1.1).add_(0.05 * torch.randn(2, 2, 3, 3))
    regularizer.penalty()

    assert regularizer.last_layer == 1
    assert first != regularizer.last_sigma
    assert regularizer.last_sigma == pytest.approx(layer_sigmas(model)[1], rel=1e-4)


def test_l2_step_matches_sgd_weight_decay_of_twice_lam_on_kernels() -> None:
    lam, lr = 0.05, 0.1
    penalized, decayed = _mlp(), _mlp()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    regularizer = make_regularizer(RegularizerSpec.for_method("l2", lam=lam), penalized, seed=0)

    loss = nn.functional.cross_entropy(penalized(x), y) + regularizer.penalty()
    loss.backward()
    torch.optim.SGD(penalized.parameters(), lr=lr).step()

    kernels = [layer.weight for layer in decayed.kernel_layers()]
    biases = [layer.bias for layer in decayed.kernel_layers()]
    nn.functional.cross_entropy(decayed(x), y).backward()
    groups = [{"params": kernels, "weight_decay": 2 * lam}, {"params": biases, "weight_decay": 0}]
    torch.optim.SGD(groups, lr=lr).step()

    pairs = zip(penalized.parameters(), decayed.parameters(), strict=True)
    for after_penalty, after_decay in pairs:
        torch.testing.assert_close(after_penalty, after_decay)


def test_l1_penalty_is_lam_times_the_absolute_sum_of_kernels() -> None:
    model = _mlp()
    regularizer = make_regularizer(RegularizerSpec("l1", lam=0.01), model, seed=0)

    expected = 0.01 * sum(layer.weight.abs().sum() for layer in model.kernel_layers())

    torch.testing.assert_close(regularizer.penalty(), expected)


def test_lba_global_is_lam_times_the_bound_times_the_kernel_norm() -> None:
    model = _mlp()
    regularizer = make_regularizer(RegularizerSpec("lba_global", lam=0.1), model, seed=0)

    bound = 10 ** log10_bounds(layer_sigmas(model), model.hidden_layer_indices())[0]
    theta = torch.cat([layer.weight.flatten() for layer in model.kernel_layers()]).norm()

    assert regularizer.penalty().item() == pytest.approx(0.1 * bound * theta.item(), rel=1e-5)
    assert regularizer.last_sigma == pytest.approx(bound, rel=1e-5)


@pytest.mark.parametrize("method", ["none", "dropout"])
def test_none_and_dropout_add_no_penalty(method: str) -> None:
    regularizer = make_regularizer(RegularizerSpec.for_method(method), _mlp(), seed=0)

    assert regularizer.penalty().item() == 0.0
    assert regularizer.last_layer is None
    assert regularizer.last_sigma is None
    assert regularizer.last_penalty == 0.0


def test_for_method_fills_the_method_defaults() -> None:
    lba = RegularizerSpec.for_method("lba")
    lba_2025 = RegularizerSpec.for_method("lba_2025")

    assert (lba.lam, lba.pool, lba.draw, lba.norm, lba.sigma) == (
        1.0,
        "all",
        "batch",
        "fro",
        "exact",
    )
    assert (lba_2025.pool, lba_2025.draw, lba_2025.norm) == ("hidden", "epoch", "fro2half")
    assert (lba_2025.sigma, lba_2025.power_iters) == ("power", 10)
    assert RegularizerSpec.for_method("dropout").p == 0.2
    assert RegularizerSpec.for_method("l2", lam=0.5).lam == 0.5


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"method": "l3"}, r"method = 'l3' is not one of none, l1, l2"),
        ({"method": "lba", "pool": "first"}, r"pool = 'first' is not one of all, hidden"),
        ({"method": "lba", "draw": "step"}, r"draw = 'step' is not one of batch, epoch"),
        ({"method": "lba", "norm": "nuc"}, r"norm = 'nuc' is not one of fro, fro2half"),
        ({"method": "lba", "sigma": "fft"}, r"sigma = 'fft' is not one of exact, power"),
        ({"method": "l2", "lam": -1.0}, r"lam = -1.0 must be a finite number >= 0"),
        ({"method": "dropout", "p": 1.5}, r"p = 1.5 must lie in \[0, 1\)"),
        ({"method": "lba", "power_iters": 0}, r"power_iters = 0 must be an integer >= 1"),
    ],
)
def test_spec_rejects_bad_values_naming_key_value_and_rule(fields: dict, message: str) -> None:
    with pytest.raises(StudyError, match=message):
        RegularizerSpec(**fields)


def test_for_method_rejects_an_unknown_override() -> None:
    with pytest.raises(StudyError, match=r"field = 'lambda' is not one of lam, p, pool"):
        RegularizerSpec.for_method("l2", **{"lambda": 0.1})


def test_a_pool_that_selects_no_layer_is_rejected() -> None:
    with pytest.raises(StudyError, match=r"pool = 'hidden' selects no layer"):
        make_regularizer(RegularizerSpec.for_method("lba_2025"), _mlp(depth=0), seed=0)
