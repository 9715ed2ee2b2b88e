"""Scaling laws at toy scale: measured training FLOPs, a power law of loss in compute, and rank correlation.

SD3 (Esser et al., arXiv 2403.03206, Sec. 5.3 and Fig. 8) sizes MM-DiT by its depth ``d`` (hidden ``64 d``, ``d``
heads), trains every size on the same data, and finds the validation loss falling smoothly with training compute
``C``, a straight line on log-log axes, i.e. a power law ``L = c C^b`` with ``b < 0``; and the validation loss
tracking the human-facing metrics (GenEval, human preference), so that a lower loss predicts better images. This
module measures the three quantities such a study needs:

- ``training_flops``: the FLOPs of one forward and backward pass, **counted** by ``torch.utils.flop_counter`` (every
  matrix product the pass runs), not assumed as ``6 N D`` (6 FLOPs per parameter per token), plus the attention
  products the counter misses on the CPU (SDPA's fused kernel is not in its registry): ``4 N H T_q T_k Dh`` per
  forward call and twice that backward.
  ``forward_flops`` counts one forward pass the same way (DiT's "Gflops" are half of it: multiply-adds).
- ``fit_power_law``: ``log L = a + b log C`` by least squares, with the standard error of the exponent from the
  residuals, ``se(b) = s / sqrt(sum (x_i - mean x)^2)``, ``s^2 = RSS / (n - 2)``; and ``fit_power_law_with_floor``,
  ``L = floor + c C^b`` (a loss that cannot fall below the data's own noise, as in Kaplan et al. 2020, arXiv
  2001.08361, and Hoffmann et al. 2022, arXiv 2203.15556), least squares in ``log L`` by Levenberg-Marquardt,
  with the exponent's standard error from ``s^2 (J^T J)^-1``, ``s^2 = RSS / (n - 3)``.
- ``spearman``: the rank correlation of two measurements (Pearson's correlation of their ranks, ties given their
  mean rank), which asks only whether one orders the other, as SD3's "validation loss predicts GenEval" does; and
  ``cluster_bootstrap_se``, its standard error by resampling whole models (the points of one model along its
  training are not independent of each other).

Used by notebooks/11_scaling.ipynb and exercise 17 (counting a DiT's FLOPs, fitting a power law).

Example:
    >>> law = fit_power_law(torch.tensor([1e12, 1e13, 1e14]), torch.tensor([0.30, 0.20, 0.1333]))
    >>> round(law.exponent, 3), law(torch.tensor([1e15]))          # -0.176, the loss predicted at 10x the compute
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

ATTENTION_PASSES = 3  # forward 1x, backward 2x (the gradients of Q, K, V and of the attention weights)


class AttentionFlops(TorchFunctionMode):
    """Counts the products of every ``scaled_dot_product_attention`` call: ``4 N H T_q T_k Dh`` FLOPs each."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is F.scaled_dot_product_attention:
            q, k = args[0], args[1]
            self.flops += 4 * q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * q.shape[-1]  # Q K^T and A V
        return func(*args, **(kwargs or {}))


def counted_training_flops(model: nn.Module, x: Tensor,
                           model_kwargs: dict[str, Any] | None = None) -> tuple[int, bool]:
    """What ``FlopCounterMode`` counts of one forward and backward pass of ``model`` on the batch ``x`` (N, ...).

    The pass is ``model(x, t, **model_kwargs).square().mean().backward()`` with ``t = 0.5``; the gradients it leaves
    are cleared (``set_to_none``).

    Returns:
        ``(flops, attention_counted)``: on the CPU the fused attention kernel is not in the counter's registry, so
        ``attention_counted`` is ``False`` and the attention products must be added by hand (``training_flops``).
    """
    t = torch.full((x.shape[0],), 0.5, device=x.device, dtype=x.dtype)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, t, **(model_kwargs or {})).square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops(), _counted_attention(counter, x.device)


def _counted_attention(counter: FlopCounterMode, device: torch.device) -> bool:
    """Whether ``counter`` counted the attention products: a CUDA attention kernel is in its registry; on the ``meta``
    device SDPA runs as plain matrix products, which it counts; the CPU's fused kernel it never sees."""
    return device.type == "meta" or any("attention" in str(op) for op in counter.get_flop_counts()["Global"])


def forward_flops(model: nn.Module, x: Tensor, model_kwargs: dict[str, Any] | None = None) -> int:
    """FLOPs of one forward pass of ``model`` on the batch ``x`` (N, ...) at ``t = 0.5``, without gradients, counted:
    every matrix product (2 FLOPs per multiply-add), the attention products added by hand where the counter misses
    them (``AttentionFlops``). Runs on the ``meta`` device too, so models too large to build can be counted.

    DiT's Table 4 reports **multiply-adds** under the name Gflops: DiT-XL/2 at 256x256 "118.6 Gflops" is
    ``forward_flops / 2`` for one sample (tests/test_scaling.py).
    """
    t = torch.full((x.shape[0],), 0.5, device=x.device, dtype=x.dtype)
    counter, attention = FlopCounterMode(display=False), AttentionFlops()
    with counter, attention, torch.no_grad():
        model(x, t, **(model_kwargs or {}))
    return counter.get_total_flops() + (0 if _counted_attention(counter, x.device) else attention.flops)


def training_flops(model: nn.Module, x: Tensor, model_kwargs: dict[str, Any] | None = None) -> int:
    """FLOPs of one training pass of ``model`` on the batch ``x``: forward and backward, counted.

    ``counted_training_flops`` counts every matrix product of the forward and backward pass; elementwise work (norms,
    activations, softmax) is not counted, as in the ``6 N D`` convention. When the counter did not see the attention
    kernel (SDPA on the CPU), ``3 x 4 N H T_q T_k Dh`` per call is added: the forward's two products and the
    backward's four. The model's mode is not changed.

    Args:
        model: ``model(x (N, ...), t (N,), **model_kwargs) -> (N, ...)``.
        x: an input batch ``(N, ...)``; FLOPs grow linearly with ``N``.
        model_kwargs: the model's other inputs (text features and mask, labels), batched like ``x``.
    Returns:
        the FLOPs of the pass, an ``int``.
    """
    if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x must be a batch (N, ...) with N >= 1; got {type(x).__name__} "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else ''}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters, so a training pass has no backward to count")
    counted, attention_counted = counted_training_flops(model, x, model_kwargs)
    if attention_counted:
        return counted
    attention = AttentionFlops()
    with attention, torch.no_grad():
        model(x, torch.full((x.shape[0],), 0.5, device=x.device, dtype=x.dtype), **(model_kwargs or {}))
    return counted + ATTENTION_PASSES * attention.flops


@dataclass(frozen=True)
class PowerLaw:
    """``L(C) = floor + coefficient * C ** exponent``, fitted to ``n`` points.

    ``exponent_se`` is the exponent's standard error from the fit's residuals; ``residual_std`` is the residual
    standard deviation in ``log L``, ``sqrt(RSS / dof)`` with ``dof = n - parameters``: the typical relative
    error of the law on the fitted points, comparable between laws with different numbers of parameters.
    """

    coefficient: float
    exponent: float
    exponent_se: float
    floor: float
    residual_std: float
    n: int
    parameters: int

    def __call__(self, compute: Tensor | float) -> Tensor:
        """The law's loss at ``compute`` (any shape, positive)."""
        compute = torch.as_tensor(compute, dtype=torch.float64)
        return self.floor + self.coefficient * compute.pow(self.exponent)


def _check_points(compute: Tensor | Sequence[float], loss: Tensor | Sequence[float],
                  minimum: int) -> tuple[Tensor, Tensor]:
    """``compute`` and ``loss`` as float64 vectors ``(n,)``, checked: equal lengths >= ``minimum``, positive, finite."""
    c = torch.as_tensor(compute, dtype=torch.float64).flatten()
    y = torch.as_tensor(loss, dtype=torch.float64).flatten()
    if c.shape != y.shape:
        raise ValueError(f"compute and loss need one value per point; got {c.numel()} and {y.numel()}")
    if c.numel() < minimum:
        raise ValueError(f"this fit needs at least {minimum} points for a standard error; got {c.numel()}")
    for name, v in (("compute", c), ("loss", y)):
        if not (torch.isfinite(v).all() and (v > 0).all()):
            raise ValueError(f"{name} must be positive and finite at every point (a power law lives on log axes); "
                             f"got {v.tolist()}")
    if torch.unique(c).numel() < 2:
        raise ValueError("compute takes a single value; a power law needs points at different compute")
    return c, y


def fit_power_law(compute: Tensor | Sequence[float], loss: Tensor | Sequence[float]) -> PowerLaw:
    """``log L = a + b log C`` by ordinary least squares; ``b`` is the exponent, ``exp(a)`` the coefficient.

    With ``x = log C``, ``y = log L``: ``b = sum (x - mean x)(y - mean y) / sum (x - mean x)^2`` and the exponent's
    standard error ``s / sqrt(sum (x - mean x)^2)`` with ``s^2 = RSS / (n - 2)``: how far the slope would move if the
    points scattered about the line as much again.

    Args:
        compute: training FLOPs (or any positive compute) of ``n >= 3`` points.
        loss: their losses, positive.
    Returns:
        a ``PowerLaw`` with ``floor = 0``.
    """
    c, y = _check_points(compute, loss, 3)
    x, log_loss = c.log(), y.log()
    xc = x - x.mean()
    sxx = xc.square().sum()
    slope = (xc * (log_loss - log_loss.mean())).sum() / sxx
    intercept = log_loss.mean() - slope * x.mean()
    residuals = log_loss - (intercept + slope * x)
    s = (residuals.square().sum() / (c.numel() - 2)).sqrt()
    return PowerLaw(coefficient=intercept.exp().item(), exponent=slope.item(), exponent_se=(s / sxx.sqrt()).item(),
                    floor=0.0, residual_std=s.item(), n=c.numel(), parameters=2)


def _levenberg_marquardt(residuals: Callable[[Tensor], Tensor], theta: Tensor, iterations: int) -> Tensor:
    """Minimise ``|residuals(theta)|^2`` from ``theta`` (p,) with Levenberg-Marquardt steps (float64)."""
    damping = 1e-3
    r = residuals(theta)
    cost = r.square().sum()
    for _ in range(iterations):
        jacobian = torch.autograd.functional.jacobian(residuals, theta)  # (n, p)
        normal = jacobian.T @ jacobian  # (p, p)
        gradient = jacobian.T @ r  # (p,)
        scaled = normal + damping * torch.diag(normal.diagonal() + 1e-12)
        step = torch.linalg.lstsq(scaled, -gradient[:, None]).solution[:, 0]
        candidate = theta + step
        r_new = residuals(candidate)
        cost_new = r_new.square().sum()
        if torch.isfinite(cost_new) and cost_new < cost:
            theta, r, improvement, cost = candidate, r_new, cost - cost_new, cost_new
            damping = max(damping / 3, 1e-12)
            if improvement < 1e-15 * (1 + cost):
                break
        else:
            damping *= 4
            if damping > 1e12:
                break
    return theta


def fit_power_law_with_floor(compute: Tensor | Sequence[float], loss: Tensor | Sequence[float],
                             iterations: int = 300) -> PowerLaw:
    """``L = floor + c C^b`` with ``0 < floor < min L``, least squares in ``log L``.

    The residuals are ``log L_i - log(floor + c C_i^b)``, the same scale as ``fit_power_law``'s, so the two fits'
    ``residual_std`` compare directly. Parameters: ``floor = min(L) sigmoid(u)``, ``c C^b = exp(a + b (log C -
    mean log C))``; Levenberg-Marquardt from several starting floors, keeping the best. The exponent's standard error
    is ``sqrt(s^2 [(J^T J)^-1]_bb)`` with ``s^2 = RSS / (n - 3)`` and ``J`` the residuals' Jacobian at the optimum
    (Gauss-Newton; it does not depend on how the other parameters are written). A floor pressed against 0 or
    ``min L`` leaves the exponent poorly determined, and the standard error says so.

    Args:
        compute: training FLOPs of ``n >= 4`` points.
        loss: their losses, positive.
        iterations: Levenberg-Marquardt steps per start.
    Returns:
        a ``PowerLaw`` with its fitted ``floor``.
    """
    c, y = _check_points(compute, loss, 4)
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1; got {iterations}")
    x = c.log()
    x_mean = x.mean()
    xc, log_loss, lowest = x - x_mean, y.log(), y.min()

    def residuals(theta: Tensor) -> Tensor:
        a, b, u = theta
        return log_loss - torch.log(lowest * torch.sigmoid(u) + torch.exp(a + b * xc))

    best, best_cost = None, math.inf
    for fraction in (0.1, 0.5, 0.9):
        start_floor = fraction * lowest
        above = (y - start_floor).log()
        slope = (xc * (above - above.mean())).sum() / xc.square().sum()
        start = torch.stack([above.mean(), slope, torch.logit(torch.tensor(fraction, dtype=torch.float64))])
        theta = _levenberg_marquardt(residuals, start, iterations)
        cost = residuals(theta).square().sum().item()
        if cost < best_cost:
            best, best_cost = theta, cost
    a, b, u = best.tolist()
    jacobian = torch.autograd.functional.jacobian(residuals, best)  # (n, 3)
    s2 = best_cost / (c.numel() - 3)
    covariance = s2 * torch.linalg.pinv(jacobian.T @ jacobian)
    exponent_se = covariance[1, 1].clamp_min(0).sqrt().item()
    return PowerLaw(coefficient=math.exp(a - b * x_mean.item()), exponent=b, exponent_se=exponent_se,
                    floor=(lowest * torch.sigmoid(torch.tensor(u, dtype=torch.float64))).item(),
                    residual_std=math.sqrt(s2), n=c.numel(), parameters=3)


def ranks(values: Tensor | Sequence[float]) -> Tensor:
    """Ranks ``1..n`` of ``values`` ``(n,)`` as float64, tied values sharing the mean of their ranks."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if not torch.isfinite(v).all():
        raise ValueError(f"values to rank must be finite; got {v.tolist()}")
    order = torch.argsort(v, stable=True)
    rank = torch.empty_like(v)
    rank[order] = torch.arange(1, v.numel() + 1, dtype=torch.float64)
    _, inverse = torch.unique(v, return_inverse=True)
    sums = torch.zeros(int(inverse.max()) + 1 if v.numel() else 0, dtype=torch.float64).index_add_(0, inverse, rank)
    counts = torch.bincount(inverse).to(torch.float64)
    return (sums / counts)[inverse]


def spearman(x: Tensor | Sequence[float], y: Tensor | Sequence[float]) -> float:
    """Spearman's rank correlation of paired measurements ``x``, ``y`` ``(n,)``: Pearson's correlation of their ranks.

    ``+1`` when ``y`` grows with ``x`` in every pair, ``-1`` when it always falls; 0 when either is constant (no
    order to follow).
    """
    rx, ry = ranks(x), ranks(y)
    if rx.shape != ry.shape or rx.numel() < 2:
        raise ValueError(f"spearman needs paired measurements, at least 2; got {rx.numel()} and {ry.numel()}")
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = (rx.square().sum() * ry.square().sum()).sqrt()
    return 0.0 if norm == 0 else (rx * ry).sum().div(norm).item()


def cluster_bootstrap_se(x: Tensor | Sequence[float], y: Tensor | Sequence[float], groups: Sequence[Any],
                         statistic: Callable[[Tensor, Tensor], float] = spearman, n_boot: int = 500,
                         seed: int = 0) -> float:
    """Bootstrap standard error of ``statistic(x, y)`` resampling whole groups with replacement.

    Points of one group (one model measured at several steps) move together, so the resampling keeps them together:
    each replicate draws as many groups as there are, with replacement, and evaluates ``statistic`` on all their
    points.

    Args:
        x, y: paired measurements ``(n,)``.
        groups: the group of each point (``n`` hashable labels), at least 2 distinct.
        statistic: ``statistic(x, y) -> float``.
        n_boot: bootstrap replicates.
        seed: seed of the resampling.
    Returns:
        the standard deviation of the replicates.
    """
    x = torch.as_tensor(x, dtype=torch.float64).flatten()
    y = torch.as_tensor(y, dtype=torch.float64).flatten()
    if not (x.numel() == y.numel() == len(groups)):
        raise ValueError(f"x, y and groups need one entry per point; got {x.numel()}, {y.numel()}, {len(groups)}")
    labels = list(dict.fromkeys(groups))
    if len(labels) < 2:
        raise ValueError(f"a cluster bootstrap needs at least 2 groups; got {len(labels)}")
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2; got {n_boot}")
    members = [torch.tensor([i for i, g in enumerate(groups) if g == label]) for label in labels]
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(n_boot):
        drawn = torch.randint(len(labels), (len(labels),), generator=generator)
        index = torch.cat([members[k] for k in drawn.tolist()])
        values.append(float(statistic(x[index], y[index])))
    return torch.tensor(values, dtype=torch.float64).std().item()
