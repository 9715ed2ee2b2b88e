"""Checks and questions of the chapter "ODE and SDE samplers" (exercises/04_ode_sde_samplers.ipynb).

References: single Euler, Heun and Euler-Maruyama steps of the probability-flow ODE and the reverse SDE (SiT, arXiv
2401.08740, Sec. 2.4), integrating from t = 1 (noise) to t = 0 (data) as ``minidit.samplers`` does; the questions
measure the order of Euler and Heun with ``minidit.samplers.sample_ode`` on a Gaussian whose ODE map is exact.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from minidit.course.checks.core import Case, Check, Question, generator, register, register_question


def _toy_velocity(x: Tensor, t: Tensor | float) -> Tensor:
    """A smooth nonlinear field, so Heun and Euler differ: ``v = sin(x) (1 + t) - x / 2``; ``t`` float or ``(N,)``."""
    t = torch.as_tensor(t, dtype=x.dtype)
    t = t.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim else t  # (N, 1, ..., 1)
    return torch.sin(x) * (1 + t) - 0.5 * x


def _toy_score(x: Tensor, t: Tensor | float) -> Tensor:
    """Score of ``N(0, (1 + t) I)``: ``-x / (1 + t)``; ``t`` float or ``(N,)``."""
    t = torch.as_tensor(t, dtype=x.dtype)
    t = t.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim else t  # (N, 1, ..., 1)
    return -x / (1 + t)


def _ode_step_reference(method: str) -> Callable[..., Tensor]:
    """minidit's ODE sampler run for one step from ``t`` to ``t_next``: ``(velocity_fn, x, t, t_next) -> x_next``."""

    def step(velocity_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: float, t_next: float) -> Tensor:
        from minidit.samplers import sample_ode

        return sample_ode(velocity_fn, x, steps=1, method=method, t_start=t, t_end=t_next).samples

    return step


def euler_maruyama_step(
    velocity_fn: Callable[[Tensor, Tensor], Tensor],
    score_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    t: float,
    t_next: float,
    diffusion: float,
    noise: Tensor,
) -> Tensor:
    """One Euler–Maruyama step of the reverse SDE ``dx = [v - w s] dt + sqrt(2 w) dW`` from ``t`` down to ``t_next``.

    ``x - h v + h w s + sqrt(2 w h) z`` with ``h = t - t_next``, ``w = diffusion`` and the given noise ``z``: the
    step ``minidit.samplers.sample_sde`` takes, with the noise passed in so that the result is deterministic.

    Args:
        velocity_fn, score_fn: ``f(x (N, ...), t (N,)) -> (N, ...)``.
        x: current state, ``(N, ...)``; noise: ``z ~ N(0, I)``, same shape.
        t, t_next: current and next time; diffusion: ``w_t >= 0``.
    Returns:
        the next state, ``(N, ...)``.
    """
    h = t - t_next
    time = torch.full((x.shape[0],), t, dtype=x.dtype)
    return x - h * velocity_fn(x, time) + h * diffusion * score_fn(x, time) + math.sqrt(2 * diffusion * h) * noise


def _ode_step_cases() -> list[Case]:
    x = torch.randn(5, 3, generator=generator(2))
    return [Case(f"x of shape (5, 3), t={t}, t_next={t_next}", (_toy_velocity, x.clone(), t, t_next))
            for t, t_next in ((1.0, 0.0), (1.0, 0.75), (0.5, 0.45))]


def _sde_step_cases() -> list[Case]:
    g = generator(3)
    x, noise = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    return [Case(f"x and noise of shape (5, 3), t={t}, t_next={t_next}, diffusion={w}", (_toy_velocity, _toy_score, x.clone(), t, t_next, w, noise.clone()))
            for t, t_next, w in ((1.0, 0.75, 1.0), (0.5, 0.45, 0.3), (0.5, 0.25, 0.0))]


register(Check(
    name="euler_step",
    reference=_ode_step_reference("euler"),
    cases=_ode_step_cases,
    hints=(
        "time runs from 1 (noise) down to 0 (data), so a step moves against the velocity: follow v for a time h = t - t_next > 0 backwards",
        "the field takes the time as a tensor of shape (N,): torch.full((x.shape[0],), t)",
        "x_next = x - h v(x, t) with h = t - t_next",
    ),
))
register(Check(
    name="heun_step",
    reference=_ode_step_reference("heun"),
    cases=_ode_step_cases,
    hints=(
        "Heun is the trapezoid rule: average the slope at the start of the step and the slope at a predicted end point",
        "the predicted end point is an Euler step, x' = x - h v1 with v1 = v(x, t); the second slope is v2 = v(x', t_next)",
        "x_next = x - h (v1 + v2) / 2, with both times passed as tensors of shape (N,)",
    ),
))
register(Check(
    name="euler_maruyama_step",
    reference=euler_maruyama_step,
    cases=_sde_step_cases,
    hints=(
        "an Euler-Maruyama step is an Euler step of the drift v - w s plus Gaussian noise whose variance grows with the step",
        "integrating backwards in time flips the sign of the drift: the score term pulls towards data, +h w s; the noise "
        "has standard deviation sqrt(2 w h)",
        "x_next = x - h v(x, t) + h w s(x, t) + sqrt(2 w h) z with h = t - t_next and z the given noise",
    ),
))

_ORDER_STEPS = (16, 32)


def _measured_order(method: str) -> tuple[float, str]:
    """log2 of the error ratio between 16 and 32 steps of minidit's ``sample_ode`` on N(2, 0.5^2) (exact map mu + s0 x1)."""
    from minidit.samplers import sample_ode

    mu, s0 = 2.0, 0.5

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        t = t[:, None]
        tau_squared = (1 - t) ** 2 * s0**2 + t**2
        return -mu + (-(1 - t) * s0**2 + t) / tau_squared * (x - (1 - t) * mu)

    x1 = torch.randn(256, 1, generator=generator(32), dtype=torch.float64)
    errors = [(sample_ode(velocity, x1, steps, method).samples - (mu + s0 * x1)).abs().max().item() for steps in _ORDER_STEPS]
    order = math.log2(errors[0] / errors[1])
    return round(order, 3), (f"minidit.samplers.sample_ode({method!r}) on N(2, 0.5^2): max error {errors[0]:.2e} with "
                             f"{_ORDER_STEPS[0]} steps, {errors[1]:.2e} with {_ORDER_STEPS[1]}, so p = log2(ratio) = {order:.2f}.")


register_question(Question(
    name="euler_order",
    prompt="Halving Euler's step divides its error by about 2^p: what is p?",
    compute=lambda: _measured_order("euler"),
    atol=0.25,
))
register_question(Question(
    name="heun_order",
    prompt="Halving Heun's step divides its error by about 2^p: what is p?",
    compute=lambda: _measured_order("heun"),
    atol=0.25,
))
