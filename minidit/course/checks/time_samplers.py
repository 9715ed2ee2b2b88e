"""Checks and questions of the chapter "Time samplers" (exercises/03_time_samplers.ipynb).

References: SD3's logit-normal density and mode-sampling map (Esser et al. 2024, arXiv 2403.03206, Sec. 3.1, eqs. 19-20),
``minidit.timesteps``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from minidit.course.checks.core import Case, Check, Question, generator, register, register_question


def _logit_normal_density_reference(t: Tensor, m: float, s: float) -> Tensor:
    from minidit.timesteps import get_time_sampler

    return get_time_sampler("logit_normal", m=m, s=s).density(t)


def _logit_normal_cases() -> list[Case]:
    t = torch.linspace(0.01, 0.99, 25)
    return [Case(f"t = linspace(0.01, 0.99, 25), m={m}, s={s}", (t.clone(), m, s)) for m, s in ((0.0, 1.0), (-0.5, 1.0), (1.0, 0.6))]


register(Check(
    name="logit_normal_density",
    reference=_logit_normal_density_reference,
    cases=_logit_normal_cases,
    hints=(
        "t is a transformed normal variable: t = sigmoid(n') with n' ~ N(m, s^2); a density changes under a change of "
        "variables by the derivative of the inverse map",
        "the inverse map is logit(t) = log(t / (1 - t)); its derivative is 1 / (t (1 - t)) (the Jacobian)",
        "pi(t) = exp(-(logit(t) - m)^2 / (2 s^2)) / (s sqrt(2 pi)) * 1 / (t (1 - t)), elementwise, same shape as t",
    ),
    rtol=1e-4,
))


def _mode_sample_reference(u: Tensor, s: float) -> Tensor:
    from minidit.timesteps import get_time_sampler

    return get_time_sampler("mode", s=s).transform(u)


def _mode_sample_cases() -> list[Case]:
    u = torch.cat([torch.tensor([0.0, 0.5, 1.0]), torch.rand(13, generator=generator(1))])
    return [Case(f"u of shape (16,) in [0, 1], s={s}", (u.clone(), s)) for s in (0.0, 1.29, -0.5)]


register(Check(
    name="mode_sample",
    reference=_mode_sample_reference,
    cases=_mode_sample_cases,
    hints=(
        "mode sampling is a fixed map f from u ~ U(0, 1) to t, elementwise; with s = 0 it must be t = 1 - u",
        "eq. 20 adds -s (cos^2(pi u / 2) - 1 + u) to 1 - u; the added term vanishes at u = 0 and u = 1",
        "t = 1 - u - s (torch.cos(pi u / 2) ** 2 - 1 + u); check that u = 0 gives t = 1 and u = 1 gives t = 0",
    ),
))


def _logit_normal_mode() -> tuple[float, str]:
    from minidit.timesteps import get_time_sampler

    t = torch.linspace(1e-4, 1 - 1e-4, 100_001, dtype=torch.float64)
    density = get_time_sampler("logit_normal", m=1.0, s=1.0).density(t)
    mode = t[density.argmax()].item()
    median = torch.sigmoid(torch.tensor(1.0)).item()
    return round(mode, 4), f"The density of minidit.timesteps (m = 1, s = 1) peaks at t = {mode:.4f}; the median is sigmoid(1) = {median:.4f}."


def _logit_normal_mass_near_data() -> tuple[float, str]:
    from minidit.timesteps import get_time_sampler

    t = torch.linspace(1e-6, 0.05, 20_001, dtype=torch.float64)
    mass = torch.trapezoid(get_time_sampler("logit_normal", m=0.0, s=1.0).density(t), t).item()
    return round(mass, 5), f"The integral of minidit's logit-normal density (m = 0, s = 1) over t < 0.05 is {mass:.5f}; a uniform sampler puts 0.05 there."


register_question(Question(
    name="logit_normal_mode",
    prompt="Where does the logit-normal density with m = 1, s = 1 peak (its median is sigmoid(1) = 0.731)?",
    compute=_logit_normal_mode,
    atol=0.005,
))
register_question(Question(
    name="mass_near_data",
    prompt="What fraction of logit-normal (m = 0, s = 1) training times fall in t < 0.05?",
    compute=_logit_normal_mass_near_data,
    atol=0.001,
))
