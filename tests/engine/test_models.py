import math

import pytest
import torch
from torch import nn

from engine.errors import StudyError
from engine.models import ResidualCNN, ResidualMLP, build_model


def _build(arch: str, input_shape: tuple[int, ...], **changes: object) -> nn.Module:
    options = {"width": 8, "depth": 3, "filters": 4, "dropout": 0.0, "init": "glorot"}
    options |= {"mean": None, "std": None}
    options.update(changes)
    return build_model(arch, input_shape, 3, **options)


def test_mlp_forward_follows_the_residual_formula() -> None:
    torch.manual_seed(0)
    model = ResidualMLP(6, 3, width=5, depth=2)
    x = torch.randn(4, 2, 3)

    flat = x.flatten(1)
    h = torch.relu(model.input_layer(flat))
    for layer in model.residual:
        h = h + torch.relu(layer(h))
    expected = model.output_layer(h)

    torch.testing.assert_close(model(x), expected)


def test_mlp_normalizes_its_input_inside_the_model() -> None:
    torch.manual_seed(0)
    mean, std = (0.5, -1.0, 2.0), (2.0, 0.5, 4.0)
    plain = ResidualMLP(3, 2, width=4, depth=1)
    normalizing = ResidualMLP(3, 2, width=4, depth=1, mean=mean, std=std)
    normalizing.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(5, 3)

    expected = plain((x - torch.tensor(mean)) / torch.tensor(std))

    torch.testing.assert_close(normalizing(x), expected)


def test_cnn_normalizes_each_channel_inside_the_model() -> None:
    torch.manual_seed(0)
    mean, std = (0.1, 0.2), (0.3, 0.4)
    plain = ResidualCNN(2, 3, 4, filters=3, depth=1)
    normalizing = ResidualCNN(2, 3, 4, filters=3, depth=1, mean=mean, std=std)
    normalizing.load_state_dict(plain.state_dict(), strict=False)
    x = torch.rand(2, 2, 4, 4)

    shift, scale = torch.tensor(mean).view(1, 2, 1, 1), torch.tensor(std).view(1, 2, 1, 1)

    torch.testing.assert_close(normalizing(x), plain((x - shift) / scale))


def test_build_model_spreads_per_channel_stats_over_a_flattened_image() -> None:
    model = _build("mlp", (2, 3, 3), mean=(0.25, 0.75), std=(1.0, 2.0))

    assert model.mean.shape == (1, 18)
    assert model.mean[0, :9].eq(0.25).all() and model.mean[0, 9:].eq(0.75).all()
    assert model.std[0, 9:].eq(2.0).all()


def test_glorot_init_keeps_kernels_within_the_glorot_limit_and_zeroes_biases() -> None:
    torch.manual_seed(0)
    model = ResidualCNN(3, 10, 8, filters=4, depth=2)

    for layer in model.kernel_layers():
        fan_in = layer.weight[0].numel()
        fan_out = layer.weight.shape[0] * layer.weight[0, 0].numel()
        limit = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= limit
        assert layer.weight.abs().max() > 0.5 * limit
        assert layer.bias.eq(0).all()


def test_torch_init_keeps_pytorch_default_nonzero_biases() -> None:
    torch.manual_seed(0)
    model = ResidualMLP(4, 2, width=6, depth=1, init="torch")

    assert model.input_layer.bias.abs().sum() > 0


@pytest.mark.parametrize(
    ("arch", "input_shape", "names"),
    [
        ("mlp", (1, 4, 4), ["in", "res1", "res2", "res3", "out"]),
        ("cnn", (2, 6, 6), ["in", "res1", "res2", "res3", "out"]),
    ],
)
def test_layer_metadata_matches_what_each_kernel_layer_sees(
    arch: str, input_shape: tuple[int, ...], names: list[str]
) -> None:
    model = _build(arch, input_shape)
    seen: list[tuple[int, ...]] = []
    hooks = [
        layer.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape[1:])))
        for layer in model.kernel_layers()
    ]

    model(torch.rand(2, *input_shape))
    for hook in hooks:
        hook.remove()

    assert model.layer_names() == names
    assert model.hidden_layer_indices() == [1, 2, 3]
    assert seen == model.layer_input_shapes()


def test_cnn_kernel_layers_are_convolutions_then_one_dense_layer() -> None:
    model = _build("cnn", (3, 8, 8), depth=2)

    kinds = [type(layer) for layer in model.kernel_layers()]

    assert kinds == [nn.Conv2d, nn.Conv2d, nn.Conv2d, nn.Linear]
    assert model(torch.rand(5, 3, 8, 8)).shape == (5, 3)


def test_dropout_acts_in_train_mode_only() -> None:
    torch.manual_seed(0)
    model = _build("mlp", (10,), dropout=0.5)
    x = torch.randn(8, 10)

    model.train()
    noisy = model(x), model(x)
    model.eval()
    quiet = model(x), model(x)

    assert not torch.equal(*noisy)
    assert torch.equal(*quiet)


def test_zero_depth_model_has_no_hidden_layers() -> None:
    model = _build("mlp", (4,), depth=0)

    assert model.layer_names() == ["in", "out"]
    assert model.hidden_layer_indices() == []


def test_build_model_rejects_an_unknown_arch_naming_it_and_the_allowed_ones() -> None:
    with pytest.raises(StudyError, match=r"arch = 'resnet' is not one of mlp, cnn"):
        _build("resnet", (4,))


def test_build_model_rejects_a_cnn_on_non_square_images() -> None:
    with pytest.raises(StudyError, match=r"input_shape = \(3, 4, 5\)"):
        _build("cnn", (3, 4, 5))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"init": "he"}, r"init = 'he' is not one of glorot, torch"),
        ({"dropout": 1.0}, r"dropout = 1.0 must lie in \[0, 1\)"),
        ({"depth": -1}, r"depth = -1 must be an integer >= 0"),
        ({"width": 0}, r"width = 0 must be a positive integer"),
        ({"std": (0.0,)}, r"std = \(0.0,\) must be positive"),
        ({"mean": (0.0, 1.0)}, r"mean has 2 values; it needs 1 or 4"),
    ],
)
def test_build_model_rejects_bad_hyperparameters(changes: dict, message: str) -> None:
    with pytest.raises(StudyError, match=message):
        _build("mlp", (4,), **changes)
