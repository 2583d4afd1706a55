"""The penalties compared against LBA, and LBA itself.

LBA adds ``sg[sigma(W_a)] * ||W_a||_F`` for one kernel ``W_a`` drawn uniformly at random: the
spectral norm is a detached weight, so the gradient only shrinks the drawn kernel along itself,
harder the larger its norm. The draw has its own seeded generator, so a run is reproducible
and independent of how the data are shuffled.
"""

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.errors import StudyError
from engine.lipschitz import (
    conv_power_iteration,
    layer_sigmas,
    log10_bounds,
    power_iteration,
    spectral_norm_exact,
    top_singular_vector,
)

METHODS = ("none", "l1", "l2", "dropout", "lba", "lba_2025", "lba_global")
POOLS = ("all", "hidden", "conv_except_first")
DRAWS = ("batch", "epoch")
NORMS = ("fro", "fro2half")
SIGMAS = ("exact", "power", "tracked")
ARCHS = ("mlp", "cnn")

# sigma = "exact" on a convolution: block power iteration (see lipschitz.conv_power_iteration),
# 50 steps the first time a layer is drawn and 10 warm-started steps after that.
_EXACT_BLOCK = 8
_EXACT_COLD_ITERS = 50
_EXACT_WARM_ITERS = 10

# sigma = "tracked": a layer whose warm estimate drifted further than this from the exact sigma
# at an epoch's end starts again from its exact top singular vector.
_TRACKED_TOLERANCE = 1e-3
_TRACKED_ITERS = 3

# METHOD.md defaults; a study's explicit values override them. l1 takes the paper's n = 3 / 7
# strength, l2 the paper's only one.
_DEFAULTS: dict[str, dict[str, object]] = {
    "none": {},
    "l1": {"lam": 1e-4},
    "l2": {"lam": 1e-3},
    "dropout": {"p": 0.2},
    "lba": {"lam": 1.0, "pool": "all", "draw": "batch", "norm": "fro", "sigma": "exact"},
    "lba_2025": {
        "lam": 1.0,
        "pool": "hidden",
        "draw": "epoch",
        "norm": "fro2half",
        "sigma": "power",
        "power_iters": 10,
    },
    "lba_global": {"lam": 1.0},
}


def _check_choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise StudyError(f"regularizer {key} = {value!r} is not one of {', '.join(allowed)}")


@dataclass
class RegularizerSpec:
    """What to add to the batch loss, and how LBA picks its layer.

    Attributes:
        method: One of ``none, l1, l2, dropout, lba, lba_2025, lba_global``.
        lam: Strength (LBA's paper value is 1; for ``lba_global`` it is ``lam0``).
        p: Dropout probability, read by the trainer when it builds the model.
        pool: Layers LBA draws from: ``all``, ``hidden`` (residual layers) or
            ``conv_except_first``.
        draw: ``batch`` (a new layer every mini-batch) or ``epoch`` (one per epoch).
        norm: ``fro`` (``||W||_F``) or ``fro2half`` (``0.5 * ||W||_F^2``).
        sigma: ``exact`` (the top eigenvalue of the kernel's Gram matrix in float64; for a
            convolution, block power iteration on its input shape, warm-started from the
            previous call) or ``power`` (``power_iters`` steps of plain power iteration
            warm-started from the previous call) or ``tracked`` (for wide layers, where an
            exact eigenproblem per step costs more than the step: power iteration whose vector
            starts at the layer's exact top singular vector and is refined by ``power_iters``
            steps at every draw; each epoch :meth:`Regularizer.check_sigmas` compares it with
            the exact sigma and restarts a layer that drifted past 1e-3. Measured within
            5e-4 of the exact sigma at width 512 with 3 steps, 5e-5 with 10:
            docs/performance.md). A convolution gets its ``exact`` block power iteration
            under ``tracked``.
        power_iters: Steps per call when ``sigma`` is ``power`` or ``tracked``
            (:meth:`for_method` fills in 3 for ``tracked``; the field's default is 10).
    """

    method: str
    lam: float = 1.0
    p: float = 0.2
    pool: str = "all"
    draw: str = "batch"
    norm: str = "fro"
    sigma: str = "exact"
    power_iters: int = 10

    def __post_init__(self) -> None:
        _check_choice("method", self.method, METHODS)
        _check_choice("pool", self.pool, POOLS)
        _check_choice("draw", self.draw, DRAWS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("sigma", self.sigma, SIGMAS)
        if not (isinstance(self.lam, int | float) and math.isfinite(self.lam) and self.lam >= 0):
            raise StudyError(f"regularizer lam = {self.lam!r} must be a finite number >= 0")
        if not (isinstance(self.p, int | float) and 0 <= self.p < 1):
            raise StudyError(f"regularizer p = {self.p!r} must lie in [0, 1)")
        iters = self.power_iters
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise StudyError(f"regularizer power_iters = {iters!r} must be an integer >= 1")

    @classmethod
    def for_method(
        cls, method: str, *, arch: str = "mlp", **overrides: object
    ) -> "RegularizerSpec":
        """The METHOD.md settings of a method, with a study's overrides on top.

        Args:
            method: Regularizer name.
            arch: ``mlp`` or ``cnn``; only ``lba_2025`` differs (the CNN draws per batch).
            **overrides: Field values that replace the defaults.

        Raises:
            StudyError: The method, arch, an override's name or its value is invalid.
        """
        _check_choice("method", method, METHODS)
        _check_choice("arch", arch, ARCHS)
        fields = [f.name for f in dataclasses.fields(cls) if f.name != "method"]
        for key in overrides:
            _check_choice("field", key, tuple(fields))
        values = dict(_DEFAULTS[method])
        if method == "lba_2025" and arch == "cnn":
            values["draw"] = "batch"
        values.update(overrides)
        if values.get("sigma") == "tracked":
            # Started at the exact vector, 3 steps a draw stay within 5e-4 at width 512 and
            # cost a third of 10 (docs/performance.md).
            values.setdefault("power_iters", _TRACKED_ITERS)
        return cls(method=method, **values)


class Regularizer:
    """Computes one method's penalty each mini-batch and remembers what it drew.

    Build it with :func:`make_regularizer`. After every :meth:`penalty` call ``last_layer``,
    ``last_sigma`` and ``last_penalty`` describe that call (python values, converted only when
    read, so training does not wait on the GPU every step), and ``draw_counts`` counts this
    epoch's draws per kernel layer.
    """

    def __init__(self, spec: RegularizerSpec, model: nn.Module, seed: int) -> None:
        self.spec = spec
        self.model = model
        self.layers: list[nn.Module] = model.kernel_layers()
        self.input_shapes: list[tuple[int, ...]] = model.layer_input_shapes()
        self.hidden: list[int] = model.hidden_layer_indices()
        self.pool = self._resolve_pool()
        # A CPU generator of its own: the draws repeat for a seed whatever else uses torch's RNG.
        self.generator = torch.Generator().manual_seed(seed)
        self.draw_counts = [0] * len(self.layers)
        self.last_layer: int | None = None
        self._epoch_layer: int | None = None
        self._last_sigma: Tensor | None = None
        self._last_penalty: Tensor | None = None
        self._power_state: dict[int, Tensor] = {}

    @property
    def last_sigma(self) -> float | None:
        """Detached sigma of the last LBA penalty; the bound LB for ``lba_global``; else None."""
        return None if self._last_sigma is None else float(self._last_sigma)

    @property
    def last_sigma_tensor(self) -> Tensor | None:
        """``last_sigma`` as a 0-dim tensor on the model's device, to sum without a GPU sync."""
        return self._last_sigma

    @property
    def last_penalty(self) -> float:
        """Value of the last penalty (0.0 before the first call)."""
        return 0.0 if self._last_penalty is None else float(self._last_penalty)

    def _resolve_pool(self) -> list[int]:
        if self.spec.method not in ("lba", "lba_2025"):
            return list(range(len(self.layers)))
        pool = self.spec.pool
        convs = [i for i, layer in enumerate(self.layers) if isinstance(layer, nn.Conv2d)]
        if pool == "all":
            indices = list(range(len(self.layers)))
        elif pool == "hidden":
            # The model says which layers are residual; in our CNN these are exactly the
            # "conv layers except the first" that the 2025 CIFAR-10 runs drew from.
            indices = list(self.hidden)
        else:
            indices = convs[1:]
        if not indices:
            raise StudyError(
                f"regularizer pool = {pool!r} selects no layer of this "
                f"{len(self.layers)}-layer model; use pool 'all' or add residual layers"
            )
        return indices

    def _draw(self) -> int:
        slot = int(torch.randint(len(self.pool), (1,), generator=self.generator))
        layer = self.pool[slot]
        self.draw_counts[layer] += 1
        return layer

    def start_epoch(self, epoch: int) -> None:
        """Reset the per-epoch draw counts; with ``draw = epoch``, draw this epoch's layer."""
        self.draw_counts = [0] * len(self.layers)
        self._epoch_layer = None
        if self.spec.method in ("lba", "lba_2025") and self.spec.draw == "epoch":
            self._epoch_layer = self._draw()

    def _sigma(self, index: int) -> Tensor:
        layer, spec = self.layers[index], self.spec
        if isinstance(layer, nn.Conv2d):
            return self._conv_sigma(index, layer)
        if spec.sigma == "exact":
            # The top eigenvalue of the smaller Gram matrix in float64: exact to rounding, and
            # for a 20 x 784 kernel about 5x faster than an SVD (it runs every mini-batch).
            return spectral_norm_exact(layer.weight)
        u = self._power_state.get(index)
        if u is None and spec.sigma == "tracked":
            # One exact eigenproblem per layer, then a few warm steps per draw keep up with
            # SGD; from a random start 10 steps leave the estimate ~4% low at width 512.
            u = top_singular_vector(layer.weight)
        sigma, self._power_state[index] = power_iteration(layer.weight, u, spec.power_iters)
        return sigma

    def check_sigmas(self, exact: list[float]) -> float | None:
        """Largest relative gap between the warm power-iteration sigmas and the exact ones.

        With ``sigma = "power"`` or ``"tracked"`` each dense layer drawn so far keeps its
        power-iteration vector between draws. This evaluates the estimate that vector gives
        now (no new steps) against ``exact`` (the monitor's sigmas, one per kernel layer), so
        a trainer can record how far the sigma it penalizes with is from the true one. Under
        ``tracked`` a layer found more than 1e-3 off restarts from its exact top vector.

        Returns:
            ``max |sigma_hat - sigma| / sigma`` over the layers with a vector (before any
            restart), or None when the regularizer keeps none (exact sigma, nothing drawn).
        """
        gaps = []
        for index, u in list(self._power_state.items()):
            layer = self.layers[index]
            if isinstance(layer, nn.Conv2d) or not exact[index] > 0:
                continue
            estimate, _ = power_iteration(layer.weight, u, 0)
            gap = abs(float(estimate) - exact[index]) / exact[index]
            if self.spec.sigma == "tracked" and gap > _TRACKED_TOLERANCE:
                self._power_state[index] = top_singular_vector(layer.weight)
            gaps.append(gap)
        return max(gaps) if gaps else None

    def _conv_sigma(self, index: int, conv: nn.Conv2d) -> Tensor:
        shape, exact = self.input_shapes[index], self.spec.sigma in ("exact", "tracked")
        block = self._power_state.get(index)
        if block is not None:
            # Warm start: the previous block is still near the top singular vectors, since a
            # few SGD steps barely move the kernel.
            iters = _EXACT_WARM_ITERS if exact else self.spec.power_iters
        else:
            # Seeded by the layer index, not drawn from self.generator: the layer draws must
            # not depend on which sigma method is in use.
            local = torch.Generator().manual_seed(index)
            size = min(_EXACT_BLOCK, math.prod(shape)) if exact else 1
            block = torch.randn((size, *shape), generator=local).to(conv.weight)
            iters = _EXACT_COLD_ITERS if exact else self.spec.power_iters
        sigma, self._power_state[index] = conv_power_iteration(conv, block, iters)
        return sigma

    def _kernel_norm(self, weight: Tensor) -> Tensor:
        if self.spec.norm == "fro":
            return torch.linalg.vector_norm(weight)
        return 0.5 * weight.pow(2).sum()

    def penalty(self) -> Tensor:
        """The penalty to add to this mini-batch's mean loss (call once per mini-batch).

        Returns:
            A 0-dim tensor on the model's device carrying gradients to the kernels only.
        """
        spec, kernels = self.spec, [layer.weight for layer in self.layers]
        self.last_layer, self._last_sigma = None, None
        if spec.method in ("none", "dropout"):
            value = torch.zeros((), device=kernels[0].device, dtype=kernels[0].dtype)
        elif spec.method == "l2":
            value = spec.lam * sum(w.pow(2).sum() for w in kernels)
        elif spec.method == "l1":
            value = spec.lam * sum(w.abs().sum() for w in kernels)
        elif spec.method == "lba_global":
            # Recomputes every layer's norm each step and reads them back to the CPU: fine for
            # the MLPs, slow for a CNN (every conv's norm, every mini-batch).
            residual_log10, _ = log10_bounds(layer_sigmas(self.model), self.hidden)
            # torch's pow gives inf past float64 where python's raises OverflowError.
            bound = torch.pow(10.0, torch.tensor(residual_log10, dtype=torch.float64))
            bound = bound.to(device=kernels[0].device, dtype=kernels[0].dtype)
            theta = torch.linalg.vector_norm(torch.cat([w.flatten() for w in kernels]))
            self._last_sigma = bound
            value = spec.lam * bound * theta
        else:
            if spec.draw == "batch":
                index = self._draw()
            elif self._epoch_layer is None:
                # A trainer that forgot start_epoch still gets an epoch draw, not a crash.
                self._epoch_layer = index = self._draw()
            else:
                index = self._epoch_layer
            sigma = self._sigma(index).detach()
            self.last_layer, self._last_sigma = index, sigma
            value = spec.lam * sigma * self._kernel_norm(kernels[index])
        self._last_penalty = value.detach()
        return value


def make_regularizer(spec: RegularizerSpec, model: nn.Module, seed: int) -> Regularizer:
    """Build the regularizer of ``spec`` for ``model``, its layer draws seeded with ``seed``.

    Raises:
        StudyError: The spec's pool selects no layer of the model.
    """
    return Regularizer(spec, model, seed)
