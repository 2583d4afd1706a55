"""Layer operator norms and the Lipschitz bound of a residual network.

The bound of a residual net is ``sigma_in * prod_r (1 + sigma_r) * sigma_out``: a block
``x + g(x)`` is ``(1 + Lip g)``-Lipschitz and relu is 1-Lipschitz. The plain product of all
sigmas, which ignores the skips, is reported beside it but bounds nothing. Bounds are kept as
log10 sums: a raw product of many layer norms overflows float64.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import LbaError

# Power iteration starts from a fixed seed so a norm does not depend on, nor advance, the
# global RNG that shuffles the data.
_START_SEED = 0


def _start_vector(shape: tuple[int, ...], like: Tensor) -> Tensor:
    generator = torch.Generator().manual_seed(_START_SEED)
    start = torch.randn(shape, generator=generator, dtype=torch.float64)
    return start.to(device=like.device, dtype=like.dtype)


def spectral_norm_exact(weight: Tensor) -> Tensor:
    """Largest singular value of a kernel.

    A kernel with more than two dimensions is reshaped to ``(out, -1)`` first; for a
    convolution that number is NOT a bound on the layer (see :func:`conv_operator_norm`).

    Args:
        weight: Kernel ``(out, in)``.

    Returns:
        A 0-dim tensor, detached, of the kernel's dtype and device.
    """
    matrix = weight.detach().reshape(weight.shape[0], -1).double()
    # sigma_max^2 is the top eigenvalue of the smaller Gram matrix; in float64 this is exact to
    # rounding and, for a 20 x 784 kernel, about 70x faster than an SVD per step.
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    top = torch.linalg.eigvalsh(gram)[-1].clamp_min(0.0)
    return top.sqrt().to(weight.dtype)


def top_singular_vector(weight: Tensor) -> Tensor:
    """Unit left singular vector of a 2-D kernel's largest singular value (float64 solve).

    A start for :func:`power_iteration` that is already converged: the top eigenvector of
    the smaller Gram matrix, mapped to the output space when that matrix is ``W^T W``.

    Args:
        weight: Kernel ``(out, in)``.

    Returns:
        A unit vector of length ``out`` in the kernel's dtype and device.
    """
    matrix = weight.detach().reshape(weight.shape[0], -1).double()
    if matrix.shape[0] <= matrix.shape[1]:
        u = torch.linalg.eigh(matrix @ matrix.T).eigenvectors[:, -1]
    else:
        v = torch.linalg.eigh(matrix.T @ matrix).eigenvectors[:, -1]
        u = F.normalize(matrix @ v, dim=0)
    return u.to(weight.dtype)


def power_iteration(
    weight: Tensor, u: Tensor | None = None, iters: int = 10
) -> tuple[Tensor, Tensor]:
    """Estimate the largest singular value of a 2-D kernel by power iteration.

    Each step maps ``u`` (output space) to ``v = W^T u / |W^T u|`` and back to
    ``u = W v / |W v|``. The estimate ``|W v|`` never exceeds the true value and approaches it
    from below; pass the returned ``u`` back in so successive calls keep refining it.

    Args:
        weight: Kernel ``(out, in)``.
        u: Unit vector of length ``out`` from a previous call, or None for a fixed-seed start.
        iters: Number of steps (0 only evaluates the estimate at ``u``).

    Returns:
        ``(sigma_hat, u)``: a detached 0-dim tensor and the updated unit vector.
    """
    with torch.no_grad():
        matrix = weight.detach().reshape(weight.shape[0], -1)
        if u is None:
            u = F.normalize(_start_vector((matrix.shape[0],), matrix), dim=0)
        u = u.to(device=matrix.device, dtype=matrix.dtype)
        for _ in range(iters):
            v = F.normalize(matrix.T @ u, dim=0)
            u = F.normalize(matrix @ v, dim=0)
        v = F.normalize(matrix.T @ u, dim=0)
        sigma = torch.linalg.vector_norm(matrix @ v)
    return sigma, u


def _orthonormal_rows(block: Tensor) -> Tensor:
    """Orthonormalize the k samples of a block ``(k, C, H, W)`` as k vectors."""
    q, _ = torch.linalg.qr(block.flatten(1).T)
    return q.T.reshape(block.shape)


def conv_power_iteration(
    conv: nn.Conv2d, x: Tensor, iters: int, weight: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Block power iteration on the linear map of a convolution (bias left out), from x.

    Each step applies ``A^T A`` to every vector of the block and orthonormalizes them; the
    estimate is the largest singular value of ``A`` restricted to the block's span, which never
    exceeds the true norm. With one vector this is plain power iteration; a block of k vectors
    converges at rate ``sigma_{k+1} / sigma_1`` instead of ``sigma_2 / sigma_1``, which matters
    because convolutions often have several nearly equal top singular values. The adjoint comes
    from autograd, which matches the forward's padding mode and stride without working out
    ``conv_transpose2d``'s output padding.

    Args:
        conv: The convolution.
        x: Start block ``(k, C, H, W)`` in the layer's input space (orthonormalized here).
        iters: Number of steps (0 only evaluates the estimate at ``x``).
        weight: Kernel to use instead of ``conv.weight`` (e.g. a float64 copy).

    Returns:
        ``(sigma_hat, x)``: a detached 0-dim tensor and the updated orthonormal block, to pass
        back in next time.
    """
    kernel = (conv.weight if weight is None else weight).detach()
    x = _orthonormal_rows(x.detach().to(device=kernel.device, dtype=kernel.dtype))

    def apply(inp: Tensor) -> Tensor:
        # _conv_forward honours padding_mode (zeros, reflect, circular) the way forward does.
        return conv._conv_forward(inp, kernel, None)

    with torch.enable_grad():
        for _ in range(iters):
            x = x.requires_grad_(True)
            y = apply(x)
            # The conv acts on each sample alone, so this is A^T A applied to every vector.
            (back,) = torch.autograd.grad(y, x, grad_outputs=y.detach())
            x = _orthonormal_rows(back.detach())
    with torch.no_grad():
        sigma = torch.linalg.matrix_norm(apply(x).flatten(1), ord=2)
    return sigma, x


def conv_operator_norm(
    conv: nn.Conv2d, input_shape: tuple[int, int, int], iters: int = 50, *, block: int = 8
) -> Tensor:
    """Operator (l2) norm of a convolution on inputs of a given shape.

    The convolution is a linear map on ``C*H*W`` numbers whose norm depends on the padding
    and the image size; the norm of the kernel reshaped to ``(out, in*k*k)`` can be several
    times smaller and is not a bound. Block power iteration with the convolution and its
    adjoint approaches the true norm from below (see :func:`conv_power_iteration`).

    Args:
        conv: The convolution (its bias is ignored: it does not change the Lipschitz constant).
        input_shape: Per-sample input ``(C, H, W)``.
        iters: Number of power-iteration steps.
        block: Vectors iterated together (capped at ``C*H*W``).

    Returns:
        A detached 0-dim tensor in the kernel's dtype.
    """
    size = min(block, math.prod(input_shape))
    start = _start_vector((size, *input_shape), conv.weight)
    sigma, _ = conv_power_iteration(conv, start, iters)
    return sigma


def layer_sigmas(model: nn.Module) -> list[float]:
    """Operator norm of every kernel layer of a model, in forward order.

    Dense kernels get their exact largest singular value, convolutions the block
    power-iteration norm on their real input shape (50 steps, 8 vectors); both in float64.

    Args:
        model: A model with ``kernel_layers()`` and ``layer_input_shapes()``.

    Returns:
        One python float per kernel layer.
    """
    sigmas = []
    layers, shapes = model.kernel_layers(), model.layer_input_shapes()
    with torch.no_grad():
        for layer, shape in zip(layers, shapes, strict=True):
            if isinstance(layer, nn.Conv2d):
                # A float64 copy of the kernel keeps the 50 steps from drifting in float32.
                size = min(8, math.prod(shape))
                x = _start_vector((size, *shape), layer.weight).double()
                sigma, _ = conv_power_iteration(layer, x, 50, layer.weight.double())
            else:
                sigma = spectral_norm_exact(layer.weight.double())
            sigmas.append(float(sigma))
    return sigmas


def normalization_gain(model: nn.Module) -> float:
    """Lipschitz constant of the in-model input normalization ``(x - mean) / std``.

    ``log10_bounds`` bounds the network from its normalized input; add ``log10`` of this gain
    to get the bound in pixel units, the units attacks use.
    """
    std = getattr(model, "std", None)
    if std is None:
        return 1.0
    return float(1.0 / std.min())


def _log10(value: float) -> float:
    if math.isnan(value) or value < 0:
        raise LbaError(f"sigma = {value!r} is not a norm; it must be a number >= 0")
    return math.log10(value) if value > 0 else -math.inf


def log10_bounds(sigmas: list[float], hidden: list[int]) -> tuple[float, float]:
    """Log10 of the residual Lipschitz bound and of the plain product of layer norms.

    Args:
        sigmas: Operator norm of each kernel layer, in forward order.
        hidden: Indices of the residual layers (``1 + sigma`` factors); all others multiply
            plainly.

    Returns:
        ``(log10 residual bound, log10 plain product)``, summed in log space so 200 layers of
        norm 10 give 200.0, not inf. A zero norm gives ``-inf``.

    Raises:
        LbaError: A hidden index is outside ``sigmas``, or a sigma is negative or NaN.
    """
    residual_set = set(hidden)
    outside = sorted(i for i in residual_set if not 0 <= i < len(sigmas))
    if outside:
        raise LbaError(f"hidden indices {outside} fall outside the {len(sigmas)} layers")
    residual = plain = 0.0
    for i, sigma in enumerate(sigmas):
        plain += _log10(sigma)
        residual += math.log10(1.0 + sigma) if i in residual_set else _log10(sigma)
    return residual, plain
