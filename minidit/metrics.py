"""Metrics for toy flows: distances between sample sets, the cost of a trajectory, and a function-call counter.

Sample quality is measured by the sliced 2-Wasserstein distance and the energy distance between generated and
target samples; transport cost by the path length and kinetic energy ``int |v|^2 dt`` of ODE trajectories, which
is what SiT (arXiv 2401.08740, Sec. 2.2) compares when it calls linear and GVP paths shorter than VP.
Used by notebooks/02_flows_2d.ipynb.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def _as_points(x: Tensor, name: str) -> Tensor:
    """Samples ``(N,)`` or ``(N, ...)`` as a float matrix ``(N, F)``."""
    if x.ndim == 0:
        raise ValueError(f"{name} must hold samples of shape (N,) or (N, ...); got a scalar")
    x = x.reshape(x.shape[0], -1)  # (N, F)
    return x if torch.is_floating_point(x) else x.float()


def sliced_wasserstein(
    x: Tensor, y: Tensor, n_projections: int = 256, generator: torch.Generator | None = None
) -> Tensor:
    """Sliced 2-Wasserstein distance between two sample sets.

    ``SW_2(x, y) = sqrt(mean_theta W_2^2(theta . x, theta . y))`` over ``n_projections`` random unit directions
    ``theta``. In 1-D, ``W_2`` between empirical measures pairs sorted samples (the quantile coupling is optimal):
    with ``N = M`` it is exactly ``mean_i (x_(i) - y_(i))^2``; with ``N != M`` both empirical quantile functions
    are linearly interpolated at ``L = max(N, M)`` levels ``(i + 1/2) / L``. The estimate is biased upwards
    (two finite samples of one distribution give a small positive value that shrinks like ``N^(-1/2)``).

    Args:
        x: samples, ``(N, ...)`` (flattened to ``(N, F)``).
        y: samples, ``(M, ...)`` with the same ``F``.
        n_projections: number of random directions.
        generator: RNG for the directions (reproducible values).
    Returns:
        a 0-dim float tensor.
    """
    x, y = _as_points(x, "x"), _as_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same number of features; got {x.shape[1]} and {y.shape[1]}")
    y = y.to(x)
    device = generator.device if generator is not None else x.device
    directions = torch.randn(x.shape[1], n_projections, generator=generator, device=device).to(x)  # (F, P)
    directions = directions / directions.norm(dim=0, keepdim=True)
    x_proj, y_proj = x @ directions, y @ directions  # (N, P), (M, P)
    if x.shape[0] == y.shape[0]:
        x_quantiles, y_quantiles = x_proj.sort(dim=0).values, y_proj.sort(dim=0).values
    else:
        n_levels = max(x.shape[0], y.shape[0])
        levels = (torch.arange(n_levels, device=x.device, dtype=x.dtype) + 0.5) / n_levels
        x_quantiles, y_quantiles = torch.quantile(x_proj, levels, dim=0), torch.quantile(y_proj, levels, dim=0)
    return (x_quantiles - y_quantiles).pow(2).mean(0).mean().sqrt()  # mean over levels, then directions


def energy_distance(x: Tensor, y: Tensor) -> Tensor:
    """Energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Szekely & Rizzo), as the unbiased U-statistic.

    The within-set means skip the zero diagonal (``sum_{i != j} / (N (N - 1))``), so the estimate is unbiased:
    it averages to 0 when both sets come from one distribution (and may then be slightly negative), and its
    population value is > 0 for any two different distributions with finite means. Uses ``O(N^2)`` memory.

    Args:
        x: samples, ``(N, ...)`` with ``N >= 2``.
        y: samples, ``(M, ...)`` with ``M >= 2`` and the same number of features.
    Returns:
        a 0-dim tensor.
    """
    x, y = _as_points(x, "x"), _as_points(y, "y")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"the U-statistic needs at least 2 samples per set; got {x.shape[0]} and {y.shape[0]}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same number of features; got {x.shape[1]} and {y.shape[1]}")
    y = y.to(x)

    def mean_distance(a: Tensor, b: Tensor) -> Tensor:
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").mean()  # exact zeros on a diagonal

    n, m = x.shape[0], y.shape[0]
    within_x = mean_distance(x, x) * n / (n - 1)  # sum over i != j divided by N (N - 1)
    within_y = mean_distance(y, y) * m / (m - 1)
    return 2 * mean_distance(x, y) - within_x - within_y


def _steps(trajectory: Tensor) -> Tensor:
    """Squared length of every step of ``trajectory`` ``(K, N, ...)``, ``(K - 1, N)``."""
    if trajectory.ndim < 2:
        raise ValueError(f"trajectory must have shape (K, N, ...); got {tuple(trajectory.shape)}")
    return trajectory.diff(dim=0).flatten(2).pow(2).sum(-1)  # (K - 1, N)


def path_length(trajectory: Tensor) -> Tensor:
    """Length ``sum_k |x_{k+1} - x_k|`` of each sample's polyline.

    Args:
        trajectory: ``(K, N, ...)``, the states of ``N`` samples at ``K`` times.
    Returns:
        ``(N,)``.
    """
    return _steps(trajectory).sqrt().sum(0)


def kinetic_energy(trajectory: Tensor, times: Tensor) -> Tensor:
    """Discretised kinetic energy ``int |v|^2 dt ~ sum_k |x_{k+1} - x_k|^2 / |t_{k+1} - t_k|`` of each sample.

    Uses ``|dt|``, so a trajectory run from ``t = 1`` down to ``0`` counts as positive. By Cauchy-Schwarz it is at
    least ``path_length^2 / T`` (``T = |t_K - t_1|``), with equality for constant speed.

    Args:
        trajectory: ``(K, N, ...)``, the states of ``N`` samples at ``K`` times.
        times: ``(K,)``, strictly monotone.
    Returns:
        ``(N,)``.
    """
    if times.shape != trajectory.shape[:1]:
        raise ValueError(f"times must have shape (K,) = ({trajectory.shape[0]},); got {tuple(times.shape)}")
    time_steps = times.diff().abs().to(trajectory)  # (K - 1,)
    if not bool((time_steps > 0).all()):
        raise ValueError("times must be strictly monotone (no two states at the same time)")
    return (_steps(trajectory) / time_steps[:, None]).sum(0)


class NFECounter:
    """Wraps a velocity function ``f(x, t, **kwargs)`` and counts its calls (the number of function evaluations).

    Example:
        >>> counted = NFECounter(lambda x, t: -x)   # pass ``counted`` to any sampler in place of the field
        >>> _ = counted(torch.zeros(3, 2), torch.ones(3))
        >>> counted.nfe
        1
    """

    def __init__(self, velocity_fn: Callable[..., Tensor]):
        self.velocity_fn = velocity_fn
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        """Call the wrapped function once and count it."""
        self.nfe += 1
        return self.velocity_fn(x, t, **kwargs)

    def reset(self) -> None:
        """Set the count back to 0."""
        self.nfe = 0
