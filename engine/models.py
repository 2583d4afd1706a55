"""The residual networks LBA regularizes: a dense residual MLP and a small residual CNN.

Both expose their kernel layers in forward order, so the regularizer can draw one and the
Lipschitz monitor can bound the whole network layer by layer.
"""

import math

import torch
from torch import Tensor, nn

from engine.errors import StudyError

ARCHS = ("mlp", "cnn")
INITS = ("glorot", "torch")


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StudyError(f"{name} = {value!r} must be a positive integer")


def _check_common(depth: int, dropout: float, init: str) -> None:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise StudyError(f"depth = {depth!r} must be an integer >= 0")
    if not 0.0 <= dropout < 1.0:
        raise StudyError(f"dropout = {dropout!r} must lie in [0, 1)")
    if init not in INITS:
        raise StudyError(f"init = {init!r} is not one of {', '.join(INITS)}")


def _stat_buffer(name: str, value: object, size: int, shape: tuple[int, ...]) -> Tensor | None:
    """Turn a mean or std given as a float or a sequence into a broadcastable buffer."""
    if value is None:
        return None
    tensor = torch.as_tensor(value, dtype=torch.float32).flatten()
    if tensor.numel() not in (1, size):
        raise StudyError(f"{name} has {tensor.numel()} values; it needs 1 or {size}")
    if name == "std" and bool((tensor <= 0).any()):
        raise StudyError(f"std = {value!r} must be positive everywhere")
    return tensor.reshape(shape) if tensor.numel() == size else tensor.reshape(())


def _glorot(layers: list[nn.Module]) -> None:
    # Keras defaults (Glorot-uniform kernels, zero biases) are what the paper trained with;
    # torch's xavier_uniform_ counts conv fans as Keras does (receptive field * channels).
    for layer in layers:
        nn.init.xavier_uniform_(layer.weight)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


class ResidualMLP(nn.Module):
    """Dense residual network: an input layer, ``depth`` identity-skip blocks, an output layer.

    ``h0 = relu(W_in x + b)``, ``h_r = h_{r-1} + relu(W_r h_{r-1} + b_r)``, logits
    ``W_out h_depth + b_out``. Dropout (when ``dropout > 0``) follows the input layer and ends
    every residual branch.

    Args:
        in_features: Size of the flattened input.
        num_classes: Number of logits.
        width: Units of the input and residual layers.
        depth: Number of residual blocks (may be 0).
        dropout: Drop probability in [0, 1).
        init: ``"glorot"`` (Keras: Glorot-uniform kernels, zero biases) or ``"torch"``.
        mean: Input mean, a float or one value per feature; subtracted inside the model.
        std: Input std, a float or one value per feature; divides inside the model.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        width: int = 20,
        depth: int = 3,
        dropout: float = 0.0,
        init: str = "glorot",
        mean: float | None = None,
        std: float | None = None,
    ) -> None:
        super().__init__()
        _check_positive("in_features", in_features)
        _check_positive("num_classes", num_classes)
        _check_positive("width", width)
        _check_common(depth, dropout, init)
        self.in_features, self.width, self.depth = in_features, width, depth
        self.register_buffer("mean", _stat_buffer("mean", mean, in_features, (1, in_features)))
        self.register_buffer("std", _stat_buffer("std", std, in_features, (1, in_features)))
        self.input_layer = nn.Linear(in_features, width)
        self.residual = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.output_layer = nn.Linear(width, num_classes)
        self.dropout = nn.Dropout(dropout)
        if init == "glorot":
            _glorot(self.kernel_layers())

    def forward(self, x: Tensor) -> Tensor:
        """Map a batch ``(N, ...)`` to logits ``(N, num_classes)``."""
        x = x.flatten(1)
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        h = self.dropout(torch.relu(self.input_layer(x)))
        for layer in self.residual:
            h = h + self.dropout(torch.relu(layer(h)))
        return self.output_layer(h)

    def kernel_layers(self) -> list[nn.Module]:
        """All weight layers in forward order: input, residual blocks, output."""
        return [self.input_layer, *self.residual, self.output_layer]

    def layer_names(self) -> list[str]:
        """Short names matching :meth:`kernel_layers`: ``in``, ``res1`` ..., ``out``."""
        return ["in", *(f"res{r}" for r in range(1, self.depth + 1)), "out"]

    def hidden_layer_indices(self) -> list[int]:
        """Indices into :meth:`kernel_layers` of the residual layers."""
        return list(range(1, self.depth + 1))

    def layer_input_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample input shape each kernel layer sees."""
        return [(self.in_features,), *[(self.width,)] * self.depth, (self.width,)]


class ResidualCNN(nn.Module):
    """Residual CNN of the 2025 CIFAR-10 runs.

    A 3x3 'same' convolution with relu, ``depth`` blocks ``x + relu(conv3x3(x))``, a 2x2
    max-pool, then one dense layer to the classes. Dropout (when ``dropout > 0``) follows the
    input convolution and ends every residual branch, as in the MLP.

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of logits.
        image_size: Height and width of the (square) input images.
        filters: Channels of every convolution.
        depth: Number of residual blocks (may be 0).
        dropout: Drop probability in [0, 1).
        init: ``"glorot"`` (Keras: Glorot-uniform kernels, zero biases) or ``"torch"``.
        mean: Per-channel mean (or one float), subtracted inside the model.
        std: Per-channel std (or one float), divides inside the model.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        filters: int = 32,
        depth: int = 5,
        dropout: float = 0.0,
        init: str = "glorot",
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels)
        _check_positive("num_classes", num_classes)
        _check_positive("filters", filters)
        _check_common(depth, dropout, init)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 2:
            raise StudyError(f"image_size = {image_size!r} must be an integer >= 2")
        self.in_channels, self.image_size = in_channels, image_size
        self.filters, self.depth = filters, depth
        shape = (1, in_channels, 1, 1)
        self.register_buffer("mean", _stat_buffer("mean", mean, in_channels, shape))
        self.register_buffer("std", _stat_buffer("std", std, in_channels, shape))
        self.input_layer = nn.Conv2d(in_channels, filters, 3, padding=1)
        self.residual = nn.ModuleList(
            nn.Conv2d(filters, filters, 3, padding=1) for _ in range(depth)
        )
        self.pool = nn.MaxPool2d(2)
        self.pooled_features = filters * (image_size // 2) ** 2
        self.output_layer = nn.Linear(self.pooled_features, num_classes)
        self.dropout = nn.Dropout(dropout)
        if init == "glorot":
            _glorot(self.kernel_layers())

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(N, C, H, W)`` (or the same flattened) to logits."""
        x = x.reshape(-1, self.in_channels, self.image_size, self.image_size)
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        h = self.dropout(torch.relu(self.input_layer(x)))
        for conv in self.residual:
            h = h + self.dropout(torch.relu(conv(h)))
        return self.output_layer(self.pool(h).flatten(1))

    def kernel_layers(self) -> list[nn.Module]:
        """All weight layers in forward order: input conv, residual convs, dense output."""
        return [self.input_layer, *self.residual, self.output_layer]

    def layer_names(self) -> list[str]:
        """Short names matching :meth:`kernel_layers`: ``in``, ``res1`` ..., ``out``."""
        return ["in", *(f"res{r}" for r in range(1, self.depth + 1)), "out"]

    def hidden_layer_indices(self) -> list[int]:
        """Indices into :meth:`kernel_layers` of the residual convolutions."""
        return list(range(1, self.depth + 1))

    def layer_input_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample input shape each kernel layer sees (the convs need it for their norm)."""
        size = self.image_size
        return [
            (self.in_channels, size, size),
            *[(self.filters, size, size)] * self.depth,
            (self.pooled_features,),
        ]


def _per_feature(value: object, input_shape: tuple[int, ...]) -> object:
    """Spread per-channel image statistics over the pixels the MLP sees flattened."""
    if value is None or len(input_shape) != 3:
        return value
    tensor = torch.as_tensor(value, dtype=torch.float32).flatten()
    channels, height, width = input_shape
    if tensor.numel() == channels and channels > 1:
        return tensor.repeat_interleave(height * width)
    return value


def build_model(
    arch: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: int,
    depth: int,
    filters: int,
    dropout: float,
    init: str,
    mean: float | tuple[float, ...] | None,
    std: float | tuple[float, ...] | None,
) -> nn.Module:
    """Build the network a study asks for.

    Args:
        arch: ``"mlp"`` (flattens any input) or ``"cnn"`` (needs ``input_shape`` ``(C, S, S)``).
        input_shape: Per-sample shape of the data.
        num_classes: Number of logits.
        width: MLP width (ignored by the CNN).
        depth: Number of residual blocks.
        filters: CNN channels (ignored by the MLP).
        dropout: Drop probability in [0, 1).
        init: ``"glorot"`` or ``"torch"``.
        mean: Normalization mean applied inside the model, or None.
        std: Normalization std applied inside the model, or None.

    Returns:
        A :class:`ResidualMLP` or :class:`ResidualCNN`.

    Raises:
        StudyError: ``arch`` is unknown, or the shape or a hyperparameter is invalid.
    """
    if arch == "mlp":
        in_features = math.prod(input_shape)
        mean, std = _per_feature(mean, input_shape), _per_feature(std, input_shape)
        return ResidualMLP(in_features, num_classes, width, depth, dropout, init, mean, std)
    if arch == "cnn":
        if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
            raise StudyError(
                f"input_shape = {tuple(input_shape)} does not suit arch 'cnn', "
                "which needs square images (channels, size, size)"
            )
        channels, size, _ = input_shape
        return ResidualCNN(channels, num_classes, size, filters, depth, dropout, init, mean, std)
    raise StudyError(f"arch = {arch!r} is not one of {', '.join(ARCHS)}")
