"""Natural shifts: lighting, noise and blur applied to test images, and worst-case lighting.

The method was motivated by an inspector that failed when the light on the production line
changed; these transforms ask whether a trained network survives that. Every shift works in
pixel space on a batch ``(N, C, H, W)`` with values in [0, 1] and clips its result to [0, 1].
Each has a severity grid, :data:`SEVERITIES`, whose level 0 is the identity: the unshifted
images, returned untouched, so severity 0 reports clean accuracy exactly.

Lighting is modelled as an additive field ``l(u)`` over the pixel coordinates ``u`` (both axes
scaled to [-1, 1]): ``x' = clip(x + l(u))``. On Fashion-MNIST's black background a change of
light shows up as a change of the background, which a multiplicative gain would leave black.

- ``brightness``: ``l = b``, a uniform offset.
- ``contrast``: ``x' = m + c (x - m)`` with ``m`` each image's mean, ``c`` < 1 flattening it.
- ``gamma``: ``x' = x ** g``, ``g`` > 1 darkening the mid-tones.
- ``ramp``: ``l = s * t(u)``, a linear gradient across the image along an angle, ``t`` running
  from -1 on one side to +1 on the other (one side brightened, the other darkened).
- ``spotlight``: ``l = s * exp(-|u - c|^2 / (2 r^2))``, a soft spot of radius ``r`` = 0.35.
- ``noise``: ``x + sigma * e``, ``e`` standard normal per pixel.
- ``blur``: a Gaussian blur of standard deviation ``sigma`` pixels (edges replicated).

The ramp's angle, the spot's centre and the noise are drawn per image from a generator seeded
by the evaluation seed and the shift's name, once for all severities: two models evaluated
with the same seed see the same images, and a higher severity is the same perturbation made
stronger. Worst-case lighting (:func:`worst_case_lighting`) is a threat model beside the
eps-ball: an image counts only if the model is right on it unshifted and under every setting
of a small grid of ramps (angle x strength) on top of a brightness offset.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import LbaError

SEVERITIES: dict[str, tuple[float, ...]] = {
    "brightness": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (1.0, 0.8, 0.6, 0.45, 0.3, 0.2),
    "gamma": (1.0, 1.3, 1.6, 2.0, 2.5, 3.0),
    "ramp": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
    "spotlight": (0.0, 0.2, 0.35, 0.5, 0.65, 0.8),
    "noise": (0.0, 0.02, 0.05, 0.08, 0.12, 0.16),
    "blur": (0.0, 0.5, 0.75, 1.0, 1.5, 2.0),
}
"""Parameter of each shift per severity 0..5; severity 0 is the identity."""

SHIFTS = tuple(SEVERITIES)
SPOT_RADIUS = 0.35
# The spot's centre stays where it lights part of the object, not only a corner.
SPOT_CENTRE_RANGE = 0.6

LIGHTING_ANGLES = tuple(float(a) for a in range(0, 360, 45))
LIGHTING_STRENGTHS = (0.1, 0.2)
LIGHTING_BRIGHTNESS = (-0.1, 0.0, 0.1)


@dataclass
class ShiftResult:
    """Accuracy of a model on shifted images.

    Attributes:
        shift: A name of :data:`SHIFTS`, ``lighting_grid`` (one setting of the worst-case
            grid) or ``lighting_worst``.
        severity: Index into the shift's grid (0 = unshifted), or the grid setting's index.
        level: The shift's parameter at that severity (the ramp strength for a grid setting).
        params: Every parameter that defines the images, for the record.
        correct: Images still classified correctly.
        n: Images evaluated.
        seed: Seed of the random draws.
    """

    shift: str
    severity: int
    level: float
    params: dict
    correct: int
    n: int
    seed: int
    accuracy: float = field(init=False)

    def __post_init__(self) -> None:
        self.accuracy = self.correct / self.n


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run a model in eval mode, then give every submodule back its own train/eval flag."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for an empty model)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def _check_images(x: Tensor, y: Tensor) -> None:
    if x.dim() != 4:
        raise LbaError(f"shifts need images (N, C, H, W); got a tensor of shape {tuple(x.shape)}")
    if len(x) == 0 or len(x) != len(y):
        raise LbaError(f"shifts need as many labels as images, and some: got {len(x)}, {len(y)}")


def _grid(height: int, width: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel coordinates scaled to [-1, 1]: ``(u_x, u_y)``, each ``(1, 1, H, W)``."""
    ys = torch.linspace(-1.0, 1.0, height, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=like.device, dtype=like.dtype)
    uy, ux = torch.meshgrid(ys, xs, indexing="ij")
    return ux[None, None], uy[None, None]


def ramp_field(angle: Tensor, height: int, width: int, like: Tensor) -> Tensor:
    """A linear gradient from -1 to +1 across the image along ``angle`` (degrees), per image.

    Args:
        angle: Angles ``(N,)`` in degrees; 0 brightens the right side, 90 the bottom.
        height: Image height.
        width: Image width.
        like: A tensor whose device and dtype the field takes.

    Returns:
        ``(N, 1, H, W)`` with values in [-1, 1], reaching both ends at opposite corners or
        edges.
    """
    ux, uy = _grid(height, width, like)
    theta = torch.deg2rad(angle.to(like)).reshape(-1, 1, 1, 1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # |u . d| is largest at a corner of the square, where it equals |cos| + |sin|.
    return (ux * cos + uy * sin) / (cos.abs() + sin.abs())


def spot_field(centre: Tensor, height: int, width: int, like: Tensor) -> Tensor:
    """A Gaussian spot of peak 1 and radius :data:`SPOT_RADIUS` at each image's ``centre``.

    Args:
        centre: ``(N, 2)`` centres ``(u_x, u_y)`` in [-1, 1] coordinates.
        height: Image height.
        width: Image width.
        like: A tensor whose device and dtype the field takes.
    """
    ux, uy = _grid(height, width, like)
    centre = centre.to(like)
    cx, cy = centre[:, 0].reshape(-1, 1, 1, 1), centre[:, 1].reshape(-1, 1, 1, 1)
    return torch.exp(-((ux - cx) ** 2 + (uy - cy) ** 2) / (2 * SPOT_RADIUS**2))


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Blur each channel with a Gaussian of ``sigma`` pixels, the edges replicated."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    # Separable: a row pass then a column pass, one depthwise convolution each.
    rows = kernel.reshape(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    cols = kernel.reshape(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    padded = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(padded, rows, groups=channels)
    padded = F.pad(x, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(padded, cols, groups=channels)


def shift_seed(seed: int, shift: str) -> int:
    """The seed of one shift's draws: stable across processes and Python versions."""
    return (seed * 1_000_003 + zlib.crc32(shift.encode())) % (2**63)


def draws(shift: str, x: Tensor, seed: int) -> dict[str, Tensor]:
    """The random quantities of a shift for every image of ``x``, drawn once on the CPU.

    Drawing all images at once, on the CPU, makes the images independent of the batch size
    and of the device.

    Returns:
        ``angle`` for ``ramp``, ``centre`` for ``spotlight``, ``noise`` for ``noise``; an
        empty dictionary for the deterministic shifts.
    """
    generator = torch.Generator().manual_seed(shift_seed(seed, shift))
    n = len(x)
    if shift == "ramp":
        return {"angle": torch.rand(n, generator=generator, dtype=torch.float64) * 360.0}
    if shift == "spotlight":
        unit = torch.rand((n, 2), generator=generator, dtype=torch.float64)
        return {"centre": (2 * unit - 1) * SPOT_CENTRE_RANGE}
    if shift == "noise":
        return {"noise": torch.randn(tuple(x.shape), generator=generator)}
    return {}


def shift_field(shift: str, x: Tensor, drawn: dict[str, Tensor]) -> Tensor | None:
    """The part of a shift that does not depend on its level, computed once per batch.

    Returns:
        The unit lighting field ``(N, 1, H, W)`` of ``ramp`` and ``spotlight``, the noise of
        ``noise``; None for the other shifts.
    """
    _, _, height, width = x.shape
    if shift == "ramp":
        return ramp_field(drawn["angle"], height, width, x)
    if shift == "spotlight":
        return spot_field(drawn["centre"], height, width, x)
    if shift == "noise":
        return drawn["noise"].to(x)
    return None


def apply_shift(
    x: Tensor,
    shift: str,
    level: float,
    drawn: dict[str, Tensor],
    unit_field: Tensor | None = None,
) -> Tensor:
    """Shift a batch of images at one level; the identity level returns ``x`` itself.

    Args:
        x: Images ``(N, C, H, W)`` in [0, 1].
        shift: A name of :data:`SHIFTS`.
        level: The shift's parameter (see :data:`SEVERITIES`).
        drawn: This batch's slice of :func:`draws`.
        unit_field: :func:`shift_field` of this batch, to reuse across levels (computed if None).

    Returns:
        The shifted images, clipped to [0, 1].

    Raises:
        LbaError: The shift is unknown or the level is out of its range.
    """
    if shift not in SEVERITIES:
        raise LbaError(f"shift {shift!r} is not one of {', '.join(SHIFTS)}")
    if not math.isfinite(level):
        raise LbaError(f"shift {shift} level = {level!r} must be a finite number")
    if level == SEVERITIES[shift][0]:
        return x
    if shift in ("contrast", "blur") and level < 0:
        raise LbaError(f"{shift} level = {level!r} must be >= 0")
    if shift == "gamma" and level <= 0:
        raise LbaError(f"gamma level = {level!r} must be > 0")
    if unit_field is None:
        unit_field = shift_field(shift, x, drawn)
    if shift == "brightness":
        out = x + level
    elif shift == "contrast":
        mean = x.mean(dim=(2, 3), keepdim=True)
        out = mean + level * (x - mean)
    elif shift == "gamma":
        out = x.clamp_min(0.0) ** level
    elif shift == "blur":
        out = gaussian_blur(x, level)
    else:
        # ramp, spotlight and noise add their level times a fixed field
        out = x + level * unit_field
    return out.clamp(0.0, 1.0)


def relight(x: Tensor, angle: float, strength: float, brightness: float) -> Tensor:
    """One lighting setting of the worst-case grid: a ramp on top of a brightness offset."""
    _, _, height, width = x.shape
    ramp = ramp_field(torch.tensor([float(angle)]), height, width, x)
    return (x + brightness + strength * ramp).clamp(0.0, 1.0)


def lighting_grid(
    angles: Sequence[float] = LIGHTING_ANGLES,
    strengths: Sequence[float] = LIGHTING_STRENGTHS,
    brightness: Sequence[float] = LIGHTING_BRIGHTNESS,
) -> list[dict[str, float]]:
    """Every (angle, strength, brightness) setting of the worst-case lighting threat model."""
    return [
        {"angle": float(a), "strength": float(s), "brightness": float(b)}
        for a in angles
        for s in strengths
        for b in brightness
    ]


def _correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1) == y


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, start + batch_size)


def evaluate_shifts(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    seed: int = 0,
    shifts: Sequence[str] = SHIFTS,
    batch_size: int = 2000,
) -> list[ShiftResult]:
    """Accuracy of a model under every shift at every severity of :data:`SEVERITIES`.

    Args:
        model: Classifier returning logits, taking images in [0, 1].
        x: Test images ``(N, C, H, W)``.
        y: Labels ``(N,)``.
        seed: Seeds the random draws (ramp angles, spot centres, noise).
        shifts: Which shifts to run.
        batch_size: Images per forward pass.

    Returns:
        One result per shift and severity, severity 0 (the unshifted images) included.

    Raises:
        LbaError: The inputs are not a batch of labelled images, or a shift is unknown.
    """
    _check_images(x, y)
    unknown = [s for s in shifts if s not in SEVERITIES]
    if unknown:
        raise LbaError(f"shifts {unknown} are not among {', '.join(SHIFTS)}")
    device = model_device(model)
    results = []
    with eval_mode(model):
        for shift in shifts:
            drawn = draws(shift, x, seed)
            correct = [0] * len(SEVERITIES[shift])
            for part in _batches(len(x), batch_size):
                xb, yb = x[part].to(device), y[part].to(device)
                batch_draws = {k: v[part] for k, v in drawn.items()}
                unit_field = shift_field(shift, xb, batch_draws)
                for severity, level in enumerate(SEVERITIES[shift]):
                    shifted = apply_shift(xb, shift, level, batch_draws, unit_field)
                    correct[severity] += int(_correct(model, shifted, yb).sum())
            for severity, level in enumerate(SEVERITIES[shift]):
                params = {"shift": shift, "level": level}
                if shift == "spotlight":
                    params["radius"] = SPOT_RADIUS
                results.append(
                    ShiftResult(shift, severity, level, params, correct[severity], len(x), seed)
                )
    return results


def worst_case_lighting(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    grid: list[dict[str, float]] | None = None,
    batch_size: int = 2000,
) -> tuple[ShiftResult, list[ShiftResult]]:
    """Per image, the worst result over a grid of lighting settings.

    An image counts as correct only if the model is right on it unshifted and under every
    setting of the grid, so the worst-case accuracy never exceeds clean accuracy nor any one
    setting's accuracy.

    Args:
        model: Classifier returning logits, taking images in [0, 1].
        x: Test images ``(N, C, H, W)``.
        y: Labels ``(N,)``.
        grid: Settings from :func:`lighting_grid` (its default when None).
        batch_size: Images per forward pass.

    Returns:
        ``(worst, per_setting)``: the worst-case result and one result per grid setting.
    """
    _check_images(x, y)
    grid = lighting_grid() if grid is None else grid
    if not grid:
        raise LbaError("worst-case lighting needs at least one lighting setting")
    device = model_device(model)
    per_setting = [0] * len(grid)
    worst = 0
    with eval_mode(model):
        for part in _batches(len(x), batch_size):
            xb, yb = x[part].to(device), y[part].to(device)
            survived = _correct(model, xb, yb)
            for i, setting in enumerate(grid):
                right = _correct(model, relight(xb, **setting), yb)
                per_setting[i] += int(right.sum())
                survived &= right
            worst += int(survived.sum())
    settings = [
        ShiftResult("lighting_grid", i, s["strength"], dict(s), per_setting[i], len(x), 0)
        for i, s in enumerate(grid)
    ]
    summary = {
        "angles": sorted({s["angle"] for s in grid}),
        "strengths": sorted({s["strength"] for s in grid}),
        "brightness": sorted({s["brightness"] for s in grid}),
        "settings": len(grid),
    }
    return ShiftResult("lighting_worst", 0, float(len(grid)), summary, worst, len(x), 0), settings
