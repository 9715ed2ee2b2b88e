"""Samplers: turn noise into data by integrating the probability-flow ODE or a reverse SDE from t = 1 to t = 0.

The ODE ``dx = v(x, t) dt`` and every SDE ``dx = [v - w_t s] dt + sqrt(2 w_t) dW`` with ``w_t >= 0`` share the
marginals ``p_t`` of the interpolant, so any of them maps ``N(0, I)`` at ``t = 1`` to the data at ``t = 0``
(SiT, arXiv 2401.08740, Sec. 2.4: one reverse SDE per diffusion coefficient ``w_t``, all with the same marginals).
Used by solutions/04_ode_sde_samplers.ipynb (exercise 4: Euler, Heun and Euler–Maruyama steps) and bench/samplers.py.

Example:
    >>> out = sample_ode(lambda x, t: -x, torch.randn(16, 2), steps=8, method="heun")
    >>> out.samples.shape, out.nfe
    (torch.Size([16, 2]), 16)
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from minidit.interpolants import Interpolant, get_interpolant
from minidit.validation import check_choice, check_time
from minidit.weighting import convert, lambda_t

Field = Callable[[Tensor, Tensor], Tensor]  # f(x (N, ...), t (N,)) -> (N, ...)

ODE_METHODS = ("euler", "heun")
DIFFUSIONS = ("sigma", "sbdm", "sin2", "constant", "zero")
LAST_STEPS = ("mean", "none")


@dataclass
class SamplerOutput:
    """What a sampler returns.

    Attributes:
        samples: the final states, ``(N, ...)``.
        nfe: number of function evaluations (calls of the velocity and score functions, each on a batch).
        trajectory: every state on the time grid, ``(K, N, ...)``, or ``None`` unless requested.
        times: the ``K`` times of ``trajectory``, ``(K,)``, or ``None``.
    """

    samples: Tensor
    nfe: int
    trajectory: Tensor | None = None
    times: Tensor | None = None


class _CountedField:
    """Wrap a field ``f(x, t)`` to count its calls and check that it returns the shape of ``x``."""

    def __init__(self, field: Field, name: str):
        self.field, self.name, self.calls = field, name, 0

    def __call__(self, x: Tensor, t: float) -> Tensor:
        self.calls += 1
        out = self.field(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))
        if out.shape != x.shape:
            raise ValueError(
                f"{self.name} returned shape {tuple(out.shape)}; it must return the shape of x, {tuple(x.shape)}"
            )
        return out


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer (not a bool), got {steps!r}")


def _output(x: Tensor, nfe: int, states: list[Tensor], times: list[float]) -> SamplerOutput:
    if not states:
        return SamplerOutput(x, nfe)
    return SamplerOutput(x, nfe, torch.stack(states), torch.tensor(times, dtype=x.dtype))  # (K, N, ...), (K,)


def sample_ode(
    velocity_fn: Field,
    x1: Tensor,
    steps: int,
    method: str = "euler",
    t_start: float = 1.0,
    t_end: float = 0.0,
    return_trajectory: bool = False,
    progress: bool = False,
) -> SamplerOutput:
    """Integrate the probability-flow ODE ``dx = v(x, t) dt`` from ``t_start`` to ``t_end`` on a uniform grid.

    With ``t_i = t_start + i (t_end - t_start) / steps`` and ``h = t_{i+1} - t_i`` (negative when going from
    noise to data), Euler takes ``x <- x + h v(x, t_i)`` (order 1, 1 NFE per step) and Heun the explicit
    trapezoid ``x <- x + h/2 [v(x, t_i) + v(x + h v(x, t_i), t_{i+1})]`` (order 2, 2 NFE per step).

    Args:
        velocity_fn: ``v(x (N, ...), t (N,)) -> (N, ...)``.
        x1: the starting states at ``t_start``, ``(N, ...)``; ``N(0, I)`` noise when ``t_start = 1``.
        steps: number of steps, ``>= 1``.
        method: ``"euler"`` or ``"heun"``.
        t_start, t_end: the interval, each in [0, 1] and different (``t_start < t_end`` encodes data into noise).
        return_trajectory: also return the ``steps + 1`` states on the grid.
        progress: show a tqdm progress bar.
    Returns:
        ``SamplerOutput`` with ``samples`` of shape ``(N, ...)`` and ``nfe = steps`` (Euler) or ``2 steps`` (Heun).
    """
    check_choice("ODE method", method, ODE_METHODS)
    _check_steps(steps)
    check_time(torch.tensor([t_start, t_end]), name="(t_start, t_end)")
    if t_start == t_end:
        raise ValueError(f"t_start and t_end must differ, both are {t_start}")
    velocity = _CountedField(velocity_fn, "velocity_fn")
    grid = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64).tolist()
    x = x1
    states, times = ([x.clone()], [t_start]) if return_trajectory else ([], [])
    for t, t_next in tqdm(list(zip(grid[:-1], grid[1:])), desc=f"ODE ({method})", disable=not progress):
        h = t_next - t
        v = velocity(x, t)
        if method == "euler":
            x = x + h * v
        else:
            x = x + 0.5 * h * (v + velocity(x + h * v, t_next))
        if return_trajectory:
            states.append(x.clone())
            times.append(t_next)
    return _output(x, velocity.calls, states, times)


def diffusion_coefficient(name: str, t: Tensor, interpolant: Interpolant | str) -> Tensor:
    """The diffusion coefficient ``w_t`` of the reverse SDE, by name (SiT Sec. 2.4).

    ``"sigma"``: ``sigma_t`` (removes the score's ``1 / sigma_t`` blow-up near data); ``"sbdm"``:
    ``lambda_t sigma_t`` (equals ``beta(t) / 2`` of the VP diffusion SDE on the VP path);
    ``"sin2"``: ``sin^2(pi t)``; ``"constant"``: 1; ``"zero"``: 0 (the SDE is then the ODE).

    Args:
        name: one of ``DIFFUSIONS``.
        t: times, any shape, in [0, 1].
        interpolant: the path (object or name).
    Returns:
        ``w_t``, same shape as ``t``.
    """
    check_choice("diffusion", name, DIFFUSIONS)
    t = check_time(t)
    path = get_interpolant(interpolant)
    if name == "sigma":
        return path.sigma(t)
    if name == "sbdm":
        return lambda_t(t, path) * path.sigma(t)
    if name == "sin2":
        return torch.sin(math.pi * t) ** 2
    return torch.full_like(t, 1.0 if name == "constant" else 0.0)


def sample_sde(
    velocity_fn: Field,
    x1: Tensor,
    interpolant: Interpolant | str,
    steps: int,
    diffusion: str = "sigma",
    diffusion_scale: float = 1.0,
    score_fn: Field | None = None,
    time_eps: float = 1e-3,
    last_step: str = "mean",
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
) -> SamplerOutput:
    """Euler–Maruyama on the reverse SDE ``dx = [v - w_t s] dt + sqrt(2 w_t) dW`` from ``t = 1`` to ``t = 0``.

    On the uniform grid from ``1 - time_eps`` down to ``time_eps`` (``steps`` steps of size ``h > 0``) each step is
    ``x <- x - h v(x, t) + h w_t s(x, t) + sqrt(2 w_t h) z`` with ``z ~ N(0, I)``. ``last_step="mean"`` then
    takes one noise-free step of size ``time_eps`` to ``t = 0`` (SiT's "mean" last step); ``"none"`` stops at
    ``time_eps``. The noise ``x1`` is used as the state at ``1 - time_eps``.

    Args:
        velocity_fn: ``v(x (N, ...), t (N,)) -> (N, ...)``.
        x1: starting noise, ``(N, ...)``.
        interpolant: the path the velocity belongs to (needed for ``w_t`` and for the score from ``v``).
        steps: number of Euler–Maruyama steps, ``>= 1``.
        diffusion: name of ``w_t`` (see ``diffusion_coefficient``); ``"zero"`` gives Euler on the ODE.
        diffusion_scale: multiplies ``w_t``, finite and ``>= 0``.
        score_fn: ``s(x, t) -> (N, ...)``; ``None`` derives it from the velocity (affine in ``v``, SiT eq. 7),
            costing no extra evaluation.
        time_eps: keeps the grid inside ``[time_eps, 1 - time_eps]``, ``0 < time_eps < 0.5``.
        last_step: ``"mean"`` or ``"none"``.
        generator: RNG for the noise ``z`` (must live on ``x1``'s device).
        return_trajectory: also return the states on the grid.
        progress: show a tqdm progress bar.
    Returns:
        ``SamplerOutput``; ``nfe`` counts velocity calls (``steps``, plus 1 for the mean step) plus score calls
        (as many again when ``score_fn`` is given and ``w_t`` is not identically zero).
    """
    check_choice("diffusion", diffusion, DIFFUSIONS)
    check_choice("last step", last_step, LAST_STEPS)
    _check_steps(steps)
    if not 0 < time_eps < 0.5:
        raise ValueError(f"time_eps must lie in (0, 0.5) so the grid avoids t = 0 and t = 1; got {time_eps}")
    if not (math.isfinite(diffusion_scale) and diffusion_scale >= 0):
        raise ValueError(f"diffusion_scale must be finite and >= 0 (w_t is a variance rate); got {diffusion_scale}")
    path = get_interpolant(interpolant)
    velocity = _CountedField(velocity_fn, "velocity_fn")
    score = _CountedField(score_fn, "score_fn") if score_fn is not None else None
    deterministic = diffusion == "zero" or diffusion_scale == 0

    def drift_and_w(x: Tensor, t: float) -> tuple[Tensor, float]:
        """Reverse-time drift ``v - w_t s`` at ``(x, t)`` and ``w_t``."""
        v = velocity(x, t)
        if deterministic:
            return v, 0.0
        w = diffusion_scale * float(diffusion_coefficient(diffusion, torch.tensor(t, dtype=torch.float64), path))
        t_batch = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        s = score(x, t) if score is not None else convert(v, x, t_batch, path, "velocity", "score")
        return v - w * s, w

    grid = torch.linspace(1 - time_eps, time_eps, steps + 1, dtype=torch.float64).tolist()
    x = x1
    states, times = ([x.clone()], [grid[0]]) if return_trajectory else ([], [])
    for t, t_next in tqdm(list(zip(grid[:-1], grid[1:])), desc=f"SDE ({diffusion})", disable=not progress):
        h = t - t_next
        drift, w = drift_and_w(x, t)
        x = x - h * drift
        if w > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = x + math.sqrt(2 * w * h) * noise
        if return_trajectory:
            states.append(x.clone())
            times.append(t_next)
    if last_step == "mean":
        x = x - time_eps * drift_and_w(x, time_eps)[0]
        if return_trajectory:
            states.append(x.clone())
            times.append(0.0)
    nfe = velocity.calls + (score.calls if score is not None else 0)
    return _output(x, nfe, states, times)
