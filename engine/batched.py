"""Training many small runs at once: same-width residual MLPs stacked into one set of tensors.

A width-20 MLP spends its step in per-operation overhead and in small matrix products, so
training the runs of a study one after another wastes the machine. Runs that share the data
order (same data, seed, batch size, epochs, optimizer, width and device) are trained here as one
*group*: the kernels of every run live in stacked tensors, the input layer of all runs is one
matrix product with the shared mini-batch (``R * width`` output rows instead of ``width``), the
residual layers are batched products over the runs (a run shallower than the deepest has zero
kernels and biases in its missing layers: ``h + relu(0 h + 0) = h`` exactly, their gradients
stay zero, and a width-20 residual product costs less than the slicing that would skip it),
the test set streams through memory once for all runs, and the optimizer updates everything
in a few foreach calls.

Each run keeps what makes it that run: its initialisation (built by ``train.build_for``, the
call the single-run loop makes), its lba layer draws (its own generator, same seed, same
sequence, drawn an epoch at a time), its dropout masks (drawn from the global-RNG state the
single-run loop would draw them from, in the same order), its penalty, ``lr`` and momentum, its
NaN check (a diverging run is marked failed and dropped; the others go on) and its rows in the
store, written as ``train_run`` writes them. Penalty gradients are added to the stacked
gradients by hand (``2 lam W``, ``lam sign W``, ``lam sigma W / ||W||_F``) rather than through
autograd: the same formulas in a handful of operations per step instead of several per layer.

Numbers agree with the single-run loop to float rounding, not bit for bit: the stacked matrix
products sum in another order. ``tests/engine/test_batched.py`` holds the two to that, epoch by
epoch, with the same layer draws. On a GPU the dropout masks are still drawn on the CPU, so a
batched CUDA run matches the CPU reference's masks rather than a single-run CUDA run's.

Not batched (they train in ``engine/train.py``'s loop): CNNs, ``lba_2025``, ``lba_global`` and
lba with ``sigma = "power"`` or ``"tracked"``; see :func:`batch_key`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.data import Dataset
from engine.errors import RunPruned
from engine.lipschitz import log10_bounds
from engine.regularizers import Regularizer, RegularizerSpec, make_regularizer
from engine.store import Store
from engine.train import (
    EpochReport,
    autocast,
    build_for,
    regularizer_spec,
    run_attacks,
    versions,
    weights_blob,
)

log = logging.getLogger("lba")

BATCHED_METHODS = ("none", "l1", "l2", "dropout", "lba")

# Indices into _Stack.params: kernels first, then biases. The residual tensors hold their
# layers on axis 0 and the runs on axis 1; every other tensor has the runs on axis 0.
_K_IN, _K_RES, _K_OUT, _B_IN, _B_RES, _B_OUT = range(6)
_LAYER_MAJOR = (_K_RES, _B_RES)


def batch_key(config: dict) -> str | None:
    """What runs must share to train in one group, or None for the single-run loop.

    Runs with equal keys see the same mini-batches in the same order, so one stacked step
    trains them all. Method, strength, dropout, depth, ``lr``, momentum and ``init`` may
    differ inside a group.

    Args:
        config: A resolved run config (``Study.run_config``).

    Returns:
        A string key, or None when the run is a CNN or uses ``lba_2025``, ``lba_global`` or
        lba with power-iteration sigma.
    """
    method, model, train = config["method"], config["model"], config["train"]
    if model["arch"] != "mlp" or method["name"] not in BATCHED_METHODS:
        return None
    if method["name"] == "lba" and method.get("sigma", "exact") != "exact":
        return None
    shared = {
        "data": config["data"],
        "width": model["width"],
        "seed": train["seed"],
        "batch_size": train["batch_size"],
        "epochs": train["epochs"],
        "optimizer": train["optimizer"],
        "device": train["device"],
        "test_every": train["test_every"],
        "precision": train.get("precision", "float32"),
        "compile": train.get("compile", False),
    }
    return json.dumps(shared, sort_keys=True)


@dataclass
class _Run:
    """One run of a group: its store id, config and method settings."""

    run_id: int
    config: dict
    depth: int
    regularizer: Regularizer
    lr: float
    momentum: float
    dropout: float
    noise: torch.Generator | None
    metrics: dict = field(default_factory=dict)

    @property
    def spec(self) -> RegularizerSpec:
        return self.regularizer.spec


def _top_sigma(kernels: Tensor) -> Tensor:
    """Exact largest singular value of each kernel of a stack ``(k, out, in)``, in float64.

    The batched form of ``lipschitz.spectral_norm_exact``: the top eigenvalue of the smaller
    Gram matrix, so a 20 x 784 kernel costs a 20 x 20 eigenproblem.
    """
    m = kernels.detach().double()
    # A diverging run's NaN kernel would make the eigensolver raise and stop every run of the
    # group; it reads as sigma 0 here and the run fails on its loss at the epoch's end.
    m = torch.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
    gram = m @ m.transpose(1, 2) if m.shape[1] <= m.shape[2] else m.transpose(1, 2) @ m
    return torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0.0).sqrt()


class _Stack:
    """The parameters of R runs with their gradient and optimizer buffers.

    Kernels and biases are six tensors: ``k_in (R, W, D)``, ``k_res (Dmax, R, W, W)``,
    ``k_out (R, C, W)`` and the three bias tensors shaped alike. Residual layers past a run's
    depth stay zero (see the module docstring). Autograd sees leaf views of these tensors
    whose ``.grad`` are views of the gradient tensors, so a backward pass accumulates straight
    into the stacked gradients and one foreach call updates every run.
    """

    def __init__(self, params: list[Tensor], depths: list[int]) -> None:
        self.params = params
        self.depths = depths
        self.grads = [torch.zeros_like(t) for t in params]
        self.state: list[list[Tensor]] = []  # the momentum buffers, or Adam's two moments
        self.steps = 0
        self._make_leaves()

    def _make_leaves(self) -> None:
        k_in, k_res, k_out, b_in, b_res, b_out = self.params
        g_in, g_res, g_out, gb_in, gb_res, gb_out = self.grads
        rows = k_in.shape[0] * k_in.shape[1]

        def leaf(param: Tensor, grad: Tensor) -> Tensor:
            param.requires_grad_(True)
            param.grad = grad
            return param

        self.w_in = leaf(k_in.view(rows, -1), g_in.view(rows, -1))
        self.b_in = leaf(b_in.view(rows, 1), gb_in.view(rows, 1))
        self.w_res = [leaf(k_res[j], g_res[j]) for j in range(k_res.shape[0])]
        self.b_res = [
            leaf(b_res[j].unsqueeze(-1), gb_res[j].unsqueeze(-1)) for j in range(k_res.shape[0])
        ]
        self.w_out = leaf(k_out.view(k_out.shape), g_out.view(g_out.shape))
        self.b_out = leaf(b_out.unsqueeze(-1), gb_out.unsqueeze(-1))

    def keep(self, rows: list[int]) -> None:
        """Keep only the runs at ``rows`` (ascending), with their gradients and state."""
        index = torch.tensor(rows, device=self.params[0].device)
        self.depths = [self.depths[r] for r in rows]
        dmax = max(self.depths)

        def take(tensors: list[Tensor]) -> list[Tensor]:
            out = []
            for i, t in enumerate(tensors):
                if i in _LAYER_MAJOR:
                    out.append(t.detach()[:dmax].index_select(1, index).contiguous())
                else:
                    out.append(t.detach().index_select(0, index).contiguous())
            return out

        self.params = take(self.params)
        self.grads = [torch.zeros_like(t) for t in self.params]
        self.state = [take(s) for s in self.state]
        self._make_leaves()

    def forward(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """Logits ``(R, C, b)`` of every run for one shared batch ``x (b, D)``.

        Activations are kept as ``(R, W, b)`` so every layer is a plain (batched) product
        with no transposes; ``masks[0]`` multiplies the input layer's output and
        ``masks[j]`` residual branch ``j``, as ``nn.Dropout`` does in ``ResidualMLP``.
        """
        runs = len(self.depths)
        h = torch.relu(torch.addmm(self.b_in, self.w_in, x.t())).view(runs, -1, x.shape[0])
        if masks is not None:
            h = h * masks[0]
        for j, (weight, bias) in enumerate(zip(self.w_res, self.b_res)):
            branch = torch.relu(torch.baddbmm(bias, weight, h))
            if masks is not None:
                branch = branch * masks[j + 1]
            h = h + branch
        return torch.baddbmm(self.b_out, self.w_out, h)

    @torch.no_grad()
    def layer_sigmas(self) -> list[list[float]]:
        """Exact sigma of every kernel of every run (float64), in each run's forward order."""
        k_in, k_res, k_out = (t.detach() for t in self.params[:3])
        dmax, runs, width = k_res.shape[0], k_res.shape[1], k_res.shape[2]
        first = _top_sigma(k_in).tolist()
        middle = [[] for _ in range(runs)]
        if dmax:
            solved = _top_sigma(k_res.reshape(dmax * runs, width, width)).view(dmax, runs)
            middle = solved.t().tolist()
        last = _top_sigma(k_out).tolist()
        return [[first[r], *middle[r][:d], last[r]] for r, d in enumerate(self.depths)]

    def copy_into(self, row: int, model: nn.Module) -> nn.Module:
        """Load run ``row``'s current weights into a single-run ``ResidualMLP``."""
        k_in, k_res, k_out, b_in, b_res, b_out = (t.detach() for t in self.params)
        with torch.no_grad():
            model.input_layer.weight.copy_(k_in[row])
            model.input_layer.bias.copy_(b_in[row])
            for j, layer in enumerate(model.residual):
                layer.weight.copy_(k_res[j, row])
                layer.bias.copy_(b_res[j, row])
            model.output_layer.weight.copy_(k_out[row])
            model.output_layer.bias.copy_(b_out[row])
        return model


class _Group:
    """R runs trained in one stacked step; see the module docstring."""

    def __init__(self, runs: list[_Run], models: list[nn.Module], device: torch.device) -> None:
        self.runs = runs
        self.device = device
        first = models[0]
        width, dim, classes = first.width, first.in_features, first.output_layer.out_features
        count, dmax = len(runs), max(run.depth for run in runs)
        params = [
            torch.zeros(count, width, dim),
            torch.zeros(dmax, count, width, width),
            torch.zeros(count, classes, width),
            torch.zeros(count, width),
            torch.zeros(dmax, count, width),
            torch.zeros(count, classes),
        ]
        k_in, k_res, k_out, b_in, b_res, b_out = params
        with torch.no_grad():
            for r, model in enumerate(models):
                k_in[r], b_in[r] = model.input_layer.weight, model.input_layer.bias
                for j, layer in enumerate(model.residual):
                    k_res[j, r], b_res[j, r] = layer.weight, layer.bias
                k_out[r], b_out[r] = model.output_layer.weight, model.output_layer.bias
        self.stack = _Stack([p.to(device) for p in params], [run.depth for run in runs])
        self.optimizer = runs[0].config["train"]["optimizer"]
        self._ones: dict[int, Tensor] = {}
        self._set_hyper()

    def _set_hyper(self) -> None:
        """Per-run lr, momentum and penalty strengths as device vectors."""
        runs, device = self.runs, self.device

        def vector(values: list[float]) -> Tensor:
            return torch.tensor(values, device=device, dtype=torch.float32)

        specs = [run.spec for run in runs]
        self.lr = vector([run.lr for run in runs])
        self.momentum = vector([run.momentum for run in runs])
        self.lam_l2 = vector([s.lam if s.method == "l2" else 0.0 for s in specs])
        self.lam_l1 = vector([s.lam if s.method == "l1" else 0.0 for s in specs])
        self.l2_rows = self._rows([r for r, s in enumerate(specs) if s.method == "l2" and s.lam])
        self.l1_rows = self._rows([r for r, s in enumerate(specs) if s.method == "l1" and s.lam])
        self.any_momentum = any(run.momentum for run in runs)
        self.same_lr = len({run.lr for run in runs}) == 1
        self.lba_rows = [r for r, s in enumerate(specs) if s.method == "lba"]
        self.dropout_rows = [r for r, run in enumerate(runs) if run.dropout > 0]
        self._dropout_index = torch.tensor(self.dropout_rows, device=device, dtype=torch.long)
        self._ones = {}  # the step mask buffers by batch size, for the current runs

    def _rows(self, rows: list[int]) -> Tensor | None:
        return torch.tensor(rows, device=self.device) if rows else None

    def _shape(self, values: Tensor, i: int) -> Tensor:
        """A per-run vector shaped to broadcast against stacked tensor ``i``."""
        dims = self.stack.params[i].dim()
        if i in _LAYER_MAJOR:
            return values.view(1, -1, *([1] * (dims - 2)))
        return values.view(-1, *([1] * (dims - 1)))

    def drop(self, rows: list[int]) -> None:
        """Remove runs (failed, pruned) from the group; the others go on unchanged."""
        keep = [r for r in range(len(self.runs)) if r not in set(rows)]
        self.runs = [self.runs[r] for r in keep]
        if self.runs:
            self.stack.keep(keep)
            self._set_hyper()

    # -- one epoch's random draws ------------------------------------------------------------

    def draw_layers(self, epoch: int, steps: int) -> dict[int, list[int]]:
        """Each lba run's layer for every step of the epoch, from its own generator.

        ``torch.randint`` on the CPU draws element after element, so ``steps`` values at once
        are the ``steps`` single draws the single-run regularizer makes, in order.
        """
        draws = {}
        for r in self.lba_rows:
            reg = self.runs[r].regularizer
            reg.start_epoch(epoch)
            if reg.spec.draw == "batch":
                slots = torch.randint(len(reg.pool), (steps,), generator=reg.generator)
                draws[r] = [reg.pool[s] for s in slots.tolist()]
                for layer in draws[r]:
                    reg.draw_counts[layer] += 1
            else:
                draws[r] = [reg._epoch_layer] * steps
        return draws

    def draw_masks(self, sizes: list[int]) -> Tensor | None:
        """The dropout runs' multipliers for the epoch: ``(sites, k, W, n)``, steps side by
        side on the last axis (step t owns its batch's columns); site 0 is the input layer's
        output and site j residual branch j, 1 where a run has no layer. None without dropout.

        A run's noise comes from its own generator, started from the global-RNG state that
        ``nn.Dropout`` would draw from after the model was built. One ``bernoulli_`` call for
        the epoch draws the same numbers, in the same order, as the per-layer calls of the
        single-run loop (the CPU generator fills element after element).
        """
        if not self.dropout_rows:
            return None
        width, sites = self.stack.params[_K_IN].shape[1], 1 + max(self.stack.depths)
        total = sum(sizes)
        blocks = torch.ones(sites, len(self.dropout_rows), width, total, device=self.device)
        for i, r in enumerate(self.dropout_rows):
            run = self.runs[r]
            keep, used = 1.0 - run.dropout, 1 + run.depth
            flat = torch.empty(used * width * total)
            flat = flat.bernoulli_(keep, generator=run.noise).div_(keep).to(self.device)
            start = 0
            for b in sorted(set(sizes), reverse=True):
                # nn.Dropout draws (site, sample, unit) per step; here it is (site, unit, sample)
                steps = sizes.count(b)
                chunk = flat[used * width * start : used * width * (start + steps * b)]
                chunk = chunk.view(steps, used, b, width).permute(1, 3, 0, 2)
                blocks[:used, i, :, start : start + steps * b] = chunk.reshape(used, width, -1)
                start += steps * b
        return blocks

    def mask(self, blocks: Tensor | None, start: int, size: int) -> Tensor | None:
        """Step multipliers ``(sites, R, W, b)`` for the batch at ``start``: ones, with the
        dropout runs' noise written in (one buffer per batch size, rewritten every step:
        the previous step's backward has used it by then)."""
        if blocks is None:
            return None
        buffer = self._ones.get(size)
        if buffer is None:
            sites, _, width, _ = blocks.shape
            shape = (sites, len(self.runs), width, size)
            buffer = self._ones[size] = torch.ones(shape, device=self.device)
        return buffer.index_copy_(1, self._dropout_index, blocks[..., start : start + size])

    # -- the step ----------------------------------------------------------------------------

    def penalties(self, draws: dict[int, list[int]], t: int) -> tuple[Tensor, Tensor] | None:
        """Add every run's penalty gradient to the stacked gradients; return the penalties.

        Returns:
            ``(penalty (R,), sigma (R,))``: this step's penalty per run and, for lba runs, the
            exact sigma of the drawn layer (0 elsewhere, float64); None when no run of the
            group has a penalty.
        """
        stack, runs = self.stack, len(self.runs)
        if self.l2_rows is None and self.l1_rows is None and not draws:
            return None
        penalty = torch.zeros(runs, device=self.device)
        sigma = torch.zeros(runs, device=self.device, dtype=torch.float64)
        kernels = [p.detach() for p in stack.params[:3]]
        for rows, lam, kind in (
            (self.l2_rows, self.lam_l2, "l2"),
            (self.l1_rows, self.lam_l1, "l1"),
        ):
            if rows is None:
                continue
            # l2: lam * sum ||W||^2 (Keras), gradient 2 lam W; l1: lam * sum |W|, lam sign W.
            # Only the rows of runs using them are touched: most of a study's runs do not.
            lam = lam.index_select(0, rows)
            for i, (w, g) in enumerate(zip(kernels, stack.grads)):
                axis = 1 if i in _LAYER_MAJOR else 0
                w = w.index_select(axis, rows)
                if kind == "l2":
                    g.index_add_(axis, rows, w * self._shape(2 * lam, i))
                    value = self._per_run(w.square(), i)
                else:
                    g.index_add_(axis, rows, w.sign() * self._shape(lam, i))
                    value = self._per_run(w.abs(), i)
                penalty.index_add_(0, rows, lam * value)
        if draws:
            self._lba(draws, t, kernels, penalty, sigma)
        return penalty, sigma

    @staticmethod
    def _per_run(values: Tensor, i: int) -> Tensor:
        return values.sum(dim=(0, 2, 3)) if i == _K_RES else values.flatten(1).sum(1)

    def _lba(
        self,
        draws: dict[int, list[int]],
        t: int,
        kernels: list[Tensor],
        penalty: Tensor,
        sigma: Tensor,
    ) -> None:
        """lba: ``lam * sg[sigma(W_a)] * ||W_a||_F`` on each lba run's drawn layer ``a``."""
        stack, device = self.stack, self.device
        # Kernels of one kind share a shape: one eigenproblem batch per kind and step.
        kinds: dict[int, list[tuple[int, int]]] = {_K_IN: [], _K_RES: [], _K_OUT: []}
        for r, layers in draws.items():
            a = layers[t]
            kind = _K_IN if a == 0 else _K_OUT if a == stack.depths[r] + 1 else _K_RES
            kinds[kind].append((r, a))
        for kind, pairs in kinds.items():
            if not pairs:
                continue
            rows = torch.tensor([r for r, _ in pairs], device=device)
            if kind == _K_RES:
                layers = torch.tensor([a - 1 for _, a in pairs], device=device)
                weight = kernels[_K_RES][layers, rows]
            else:
                weight = kernels[kind].index_select(0, rows)
            specs = [self.runs[r].spec for r, _ in pairs]
            lam = torch.tensor([s.lam for s in specs], device=device)
            top = _top_sigma(weight).to(weight.dtype)
            scale = lam * top
            flat = weight.flatten(1)
            fro = torch.linalg.vector_norm(flat, dim=1)
            if all(s.norm == "fro" for s in specs):
                # d/dW ||W||_F = W / ||W||_F (0 at W = 0, as autograd has it)
                norm, coef = fro, torch.where(fro > 0, scale / fro, 0.0)
            else:
                is_fro = torch.tensor([s.norm == "fro" for s in specs], device=device)
                norm = torch.where(is_fro, fro, 0.5 * flat.square().sum(1))
                coef = torch.where(is_fro, torch.where(fro > 0, scale / fro, 0.0), scale)
            step = weight * coef.view(-1, 1, 1)
            if kind == _K_RES:
                stack.grads[_K_RES].index_put_((layers, rows), step, accumulate=True)
            else:
                stack.grads[kind].index_add_(0, rows, step)
            penalty.index_add_(0, rows, scale * norm)
            sigma.index_add_(0, rows, top.double())

    def step(self) -> None:
        """One optimizer step for every run: SGD (momentum per run) or Adam, lr per run."""
        stack = self.stack
        params = [p.detach() for p in stack.params]
        grads = stack.grads
        if self.optimizer == "sgd":
            if self.any_momentum:
                # torch.optim.SGD: buf = momentum * buf + grad (buf = grad at the first step)
                if not stack.state:
                    stack.state = [[torch.zeros_like(p) for p in params]]
                for i, (buf, g) in enumerate(zip(stack.state[0], grads)):
                    buf.mul_(self._shape(self.momentum, i)).add_(g)
                grads = stack.state[0]
            if self.same_lr:
                # what torch.optim.SGD does to each parameter: p += -lr * grad
                torch._foreach_add_(params, grads, alpha=-self.runs[0].lr)
            else:
                for i, (p, g) in enumerate(zip(params, grads)):
                    p.addcmul_(g, self._shape(-self.lr, i))
            return
        # Adam as torch.optim.Adam computes it (betas 0.9, 0.999, eps 1e-8), lr per run
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        if not stack.state:
            stack.state = [[torch.zeros_like(p) for p in params] for _ in range(2)]
        stack.steps += 1
        correction1 = 1 - beta1**stack.steps
        root2 = math.sqrt(1 - beta2**stack.steps)
        for i, (p, g, m, v) in enumerate(zip(params, grads, *stack.state)):
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / root2).add_(eps)
            p.addcdiv_(m * self._shape(-self.lr / correction1, i), denom)

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor, batch_size: int = 2000) -> tuple[list, list]:
        """Accuracy and mean cross-entropy of every run on ``(x, y)``, as python lists."""
        runs = len(self.runs)
        correct = torch.zeros(runs, device=self.device)
        loss = torch.zeros(runs, device=self.device)
        for start in range(0, len(x), batch_size):
            logits = self.stack.forward(x[start : start + batch_size])
            target = y[start : start + batch_size].expand(runs, -1)
            correct += (_predictions(logits) == target).sum(1)
            loss += F.cross_entropy(logits, target, reduction="none").sum(1)
        return (correct / len(x)).tolist(), (loss / len(x)).tolist()


def _predictions(logits: Tensor) -> Tensor:
    """``logits.argmax(1)`` for ``(R, C, b)`` logits; argmax along a strided axis is ~5x slower
    on the CPU than along a contiguous one, and the copy is small."""
    return logits.transpose(1, 2).contiguous().argmax(-1)


def _inputs(model: nn.Module, x: Tensor) -> Tensor:
    """Flatten and normalize inputs once, as ``ResidualMLP.forward`` does to every batch."""
    x = x.flatten(1)
    if model.mean is not None:
        x = x - model.mean
    if model.std is not None:
        x = x / model.std
    return x


def _prepare(runs: list[tuple[int, dict]], data: Dataset) -> tuple[list[_Run], list[nn.Module]]:
    """Build each run's model and regularizer as the single-run loop does."""
    prepared, models = [], []
    for run_id, config in runs:
        train, method = config["train"], config["method"]
        model = build_for(config, data)
        # nn.Dropout would draw from the global RNG from here on; keep that state for the run.
        noise = None
        if method["name"] == "dropout" and float(method.get("p", 0.2)) > 0:
            noise = torch.Generator()
            noise.set_state(torch.get_rng_state())
        regularizer = make_regularizer(regularizer_spec(config), model, train["seed"])
        momentum = float(train["momentum"]) if train["optimizer"] == "sgd" else 0.0
        dropout = float(method.get("p", 0.2)) if noise is not None else 0.0
        prepared.append(
            _Run(
                run_id,
                config,
                config["model"]["depth"],
                regularizer,
                float(train["lr"]),
                momentum,
                dropout,
                noise,
            )
        )
        models.append(model)
    return prepared, models


def train_group(
    store: Store,
    runs: list[tuple[int, dict]],
    data: Dataset,
    device: torch.device,
    *,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> dict[int, dict | None]:
    """Train stored runs that share a :func:`batch_key` together, writing each to the store.

    Every run is marked ``running``, gets one row (metrics and per-layer sigmas) per epoch and
    its attack results, and is closed as ``train_run`` closes it: ``done``; ``failed`` with
    "loss became nan at epoch k" when its loss diverges (the others go on); ``pruned`` when
    ``on_epoch`` raises :class:`RunPruned` for it (the others go on). A KeyboardInterrupt
    marks every unfinished run ``interrupted`` and is re-raised; any other error marks them
    ``failed`` and is re-raised. An epoch row's ``seconds`` is the group's epoch time.

    Args:
        store: The open store.
        runs: ``(run_id, config)`` pairs with equal :func:`batch_key`.
        data: The dataset they share.
        device: Where to train.
        on_epoch: Called after each run's epoch, as in ``train_run``.

    Returns:
        Each run id's last epoch metrics, or None for a run that failed or was pruned.
    """
    started = time.perf_counter()
    for run_id, _ in runs:
        store.start_run(run_id, device=str(device), versions=versions())
    results: dict[int, dict | None] = {run_id: None for run_id, _ in runs}
    open_ids = [run_id for run_id, _ in runs]
    try:
        prepared, models = _prepare(runs, data)
        group = _Group(prepared, models, device)
        _train(store, group, data, device, models[0], on_epoch, results, open_ids, started)
    except KeyboardInterrupt:
        for run_id in open_ids:
            store.finish_run(
                run_id,
                "interrupted",
                error="stopped by the user",
                seconds=time.perf_counter() - started,
            )
        raise
    except Exception as exc:
        for run_id in open_ids:
            store.finish_run(
                run_id,
                "failed",
                error=f"{type(exc).__name__}: {exc}",
                seconds=time.perf_counter() - started,
            )
        raise
    return results


def _train(
    store: Store,
    group: _Group,
    data: Dataset,
    device: torch.device,
    model: nn.Module,
    on_epoch: Callable[[EpochReport], None] | None,
    results: dict,
    open_ids: list[int],
    started: float,
) -> None:
    train_cfg = group.runs[0].config["train"]
    seed, epochs, batch_size = train_cfg["seed"], train_cfg["epochs"], train_cfg["batch_size"]
    precision = train_cfg.get("precision", "float32")
    forward = group.stack.forward
    if train_cfg.get("compile", False):
        forward = torch.compile(forward)
    # The data stay on the device, flattened and normalized once for every run.
    x_train, y_train = _inputs(model, data.x_train).to(device), data.y_train.to(device)
    x_test, y_test = _inputs(model, data.x_test).to(device), data.y_test.to(device)
    x_val = None if data.x_val is None else _inputs(model, data.x_val).to(device)
    y_val = None if data.y_val is None else data.y_val.to(device)
    # One shuffle for the group: each run's own loop would seed its generator identically.
    shuffle = torch.Generator().manual_seed(seed + 1)
    n_train = len(x_train)
    sizes = [min(batch_size, n_train - s) for s in range(0, n_train, batch_size)]

    for epoch in range(1, epochs + 1):
        tick = time.perf_counter()
        runs = len(group.runs)
        order = torch.randperm(n_train, generator=shuffle).to(device)
        draws = group.draw_layers(epoch, len(sizes))
        masks = group.draw_masks(sizes)
        loss_sum = torch.zeros(runs, device=device)
        penalty_sum = torch.zeros(runs, device=device)
        correct = torch.zeros(runs, device=device)
        sigma_sum = torch.zeros(runs, device=device, dtype=torch.float64)
        for t, start in enumerate(range(0, n_train, batch_size)):
            index = order[start : start + batch_size]
            x, y = x_train.index_select(0, index), y_train.index_select(0, index)
            target = y.expand(runs, -1)

            # forward every run on the shared batch; each run's own mean cross-entropy
            with autocast(device, precision):
                logits = forward(x, group.mask(masks, start, len(y)))
            ce = F.cross_entropy(logits.float(), target, reduction="none").mean(1)

            # backward into the stacked gradients, then the penalties' gradients by hand
            torch._foreach_zero_(group.stack.grads)
            ce.sum().backward()
            with torch.no_grad():
                penalties = group.penalties(draws, t)
                group.step()

                # accumulate on the device; read once per epoch
                loss_sum += ce.detach() * len(y)
                correct += (_predictions(logits.detach()) == target).sum(1)
                if penalties is not None:
                    penalty_sum += penalties[0]
                    sigma_sum += penalties[1]

        # a diverging run fails here, before its epoch is recorded, as in train_run
        losses = (loss_sum / n_train).tolist()
        diverged = [r for r in range(runs) if not math.isfinite(losses[r])]
        for r in diverged:
            error = f"loss became {losses[r]} at epoch {epoch}"
            _finish(store, group.runs[r].run_id, "failed", error, open_ids, started)
            log.warning("run %d failed: %s", group.runs[r].run_id, error)
        steps = len(sizes)
        accs = (correct / n_train).tolist()
        penalties = (penalty_sum / steps).tolist()
        sigma_means = (sigma_sum / steps).tolist()
        if diverged:
            keep = [r for r in range(runs) if r not in diverged]
            losses, accs, penalties, sigma_means = (
                [values[r] for r in keep] for values in (losses, accs, penalties, sigma_means)
            )
            draws = {keep.index(r): d for r, d in draws.items() if r in keep}
            group.drop(diverged)
            if not group.runs:
                return

        # the Lipschitz monitor and the test set, for all runs at once
        sigmas = group.stack.layer_sigmas()
        tests = vals = None
        if epoch % train_cfg["test_every"] == 0 or epoch == epochs:
            tests = group.evaluate(x_test, y_test)
        if x_val is not None:
            vals = group.evaluate(x_val, y_val)
        seconds = time.perf_counter() - tick

        pruned = []
        for r, run in enumerate(group.runs):
            lba = run.spec.method == "lba"
            log10_lb, log10_prod = log10_bounds(sigmas[r], list(range(1, run.depth + 1)))
            row = {
                "epoch": epoch,
                "loss": losses[r],
                "penalty": penalties[r],
                "train_acc": accs[r],
                "log10_lb": log10_lb,
                "log10_prod": log10_prod,
                "lba_layer": draws[r][-1] if lba else None,
                "lba_sigma": sigma_means[r] if lba else None,
                "draws_json": list(run.regularizer.draw_counts),
                "lr": run.lr,
            }
            if vals is not None:
                row["val_acc"] = vals[0][r]
            if tests is not None:
                row["test_acc"], row["test_loss"] = tests[0][r], tests[1][r]
                row["gap"] = accs[r] - row["test_acc"]
            row["seconds"] = seconds
            names = ["in", *(f"res{j}" for j in range(1, run.depth + 1)), "out"]
            store.record_epoch(run.run_id, row, list(zip(names, sigmas[r])))
            run.metrics = row
            if on_epoch:
                try:
                    on_epoch(EpochReport(run.run_id, epoch, epochs, row))
                except RunPruned as exc:
                    _finish(store, run.run_id, "pruned", str(exc) or None, open_ids, started)
                    pruned.append(r)
        if pruned:
            group.drop(pruned)
            if not group.runs:
                return

    # Attacks go through the single-run code, one model at a time: same protocols, numbers.
    data = data.to(device)
    for r, run in enumerate(group.runs):
        model = group.stack.copy_into(r, build_for(run.config, data).to(device))
        for protocol, rows in run_attacks(model, data, run.config).items():
            store.record_attacks(run.run_id, rows, protocol=protocol)
        # the final weights, so `lba eval` can evaluate the run later without retraining it
        store.save_weights(run.run_id, weights_blob(model))
        results[run.run_id] = run.metrics
        _finish(store, run.run_id, "done", None, open_ids, started)
    log.info(
        "%d runs (seed %d) done in %.1f s", len(group.runs), seed, time.perf_counter() - started
    )


def _finish(
    store: Store, run_id: int, status: str, error: str | None, open_ids: list[int], started: float
) -> None:
    store.finish_run(run_id, status, error=error, seconds=time.perf_counter() - started)
    open_ids.remove(run_id)
