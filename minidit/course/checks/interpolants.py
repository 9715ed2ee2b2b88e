"""Checks and questions of the chapter "Interpolants" (exercises/01_interpolants.ipynb).

The check compares the learner's ``(alpha_t, sigma_t, alpha_t', sigma_t')`` with minidit's interpolants (SiT, arXiv
2401.08740, Sec. 2.2, Table 1); the questions ask where the marginal flow moves fastest, measured with the exact
velocity of the two 1-D targets of notebooks/01_interpolants_1d.ipynb (``minidit.toy.GaussianMixture.velocity``).
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from minidit.course.checks.core import Case, Check, Question, generator, register, register_question

SPEED_TARGETS = ("bernoulli_1d", "two_gaussians_1d")  # SiT's two 1-D examples, as in notebook 01


def _interpolant_reference(name: str, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from minidit.interpolants import get_interpolant

    return get_interpolant(name).coefficients(t)


def _interpolant_cases() -> list[Case]:
    from minidit.interpolants import INTERPOLANTS

    cases = []
    for name in INTERPOLANTS:
        start = 0.01 if name == "vp" else 0.0  # the VP path's d_sigma is infinite at t = 0
        for t in (torch.linspace(start, 1.0, 11), torch.tensor([0.5]), torch.rand(3, 4, generator=generator(0)).clamp_min(start)):
            cases.append(Case(f"name={name!r}, t of shape {tuple(t.shape)} in [{t.min():.2f}, {t.max():.2f}]", (name, t)))
    return cases


register(Check(
    name="interpolant",
    reference=_interpolant_reference,
    cases=_interpolant_cases,
    hints=(
        "each path is the pair (alpha_t, sigma_t) of the table; differentiate both by hand, and return four tensors "
        "with the shape of t; t = 0 is data (alpha = 1), t = 1 is noise (sigma = 1)",
        "linear: alpha' = -1 and sigma' = 1 everywhere (torch.ones_like(t)); gvp: the chain rule on cos and sin of "
        "pi t / 2; vp: alpha = exp(g(t)), so alpha' = g'(t) alpha",
        "vp: g(t) = -t^2 (beta_1 - beta_0) / 4 - t beta_0 / 2, so alpha' = alpha (-t (beta_1 - beta_0) / 2 - beta_0 / 2); "
        "sigma = sqrt(1 - alpha^2), so sigma' = -alpha alpha' / sigma (infinite at t = 0, which the check avoids)",
    ),
    output_names=("alpha", "sigma", "d_alpha", "d_sigma"),
))


@lru_cache(maxsize=1)
def speed_profiles(samples: int = 4000, times: int = 200) -> tuple[Tensor, dict[tuple[str, str], Tensor]]:
    """E|v(x_t, t)|^2 of the exact marginal velocity on a time grid, as in notebook 01, section 3.

    Returns:
        ``(t_grid (times,), {(target, path): E|v|^2 (times,)})`` for the two 1-D targets and the three paths, each
        a Monte Carlo mean over ``samples`` pairs (x0, eps) drawn from a fixed seed, the same pairs at every time.
    """
    from minidit.interpolants import INTERPOLANTS, get_interpolant
    from minidit.toy import get_target

    t_grid = torch.linspace(1e-3, 1, times)
    t = t_grid.repeat_interleave(samples)  # (times * samples,)
    speed = {}
    for target_name in SPEED_TARGETS:
        target, draw = get_target(target_name), generator(20)
        x0, eps = target.sample(samples, generator=draw).repeat(times, 1), torch.randn(samples, 1, generator=draw).repeat(times, 1)
        for path in INTERPOLANTS:
            x_t = get_interpolant(path).interpolate(x0, eps, t)  # (times * samples, 1)
            speed[target_name, path] = target.velocity(x_t, t, path).pow(2).reshape(times, samples).mean(1)
    return t_grid, speed


def _peaks_sentence() -> str:
    t_grid, speed = speed_profiles()
    parts = [f"{target} {path} {profile.max():.2f} at t = {t_grid[profile.argmax()]:.3f}" for (target, path), profile in speed.items()]
    return "Peak E|v(x_t, t)|^2 (Monte Carlo, exact velocity): " + "; ".join(parts) + "."


def _peak_speed_path() -> tuple[str, str]:
    _, speed = speed_profiles()
    (_, path), _ = max(speed.items(), key=lambda item: item[1].max())
    return path, _peaks_sentence()


def _peak_speed_end() -> tuple[str, str]:
    t_grid, speed = speed_profiles()
    path = _peak_speed_path()[0]
    peak_times = [t_grid[speed[target, path].argmax()].item() for target in SPEED_TARGETS]
    end = "data" if max(peak_times) < 0.5 else "noise" if min(peak_times) > 0.5 else "mixed"
    return end, f"{path} peaks at t = " + " and ".join(f"{t:.3f}" for t in peak_times) + f" on the two targets. {_peaks_sentence()}"


register_question(Question(
    name="peak_speed_path",
    prompt="Which path has the largest peak of E|v(x_t, t)|^2 on the two 1-D targets?",
    compute=_peak_speed_path,
    choices=("linear", "gvp", "vp"),
))
register_question(Question(
    name="peak_speed_end",
    prompt="Is that path's peak near the data end (t < 0.5), near the noise end (t > 0.5), or 'mixed' (it differs between the targets)?",
    compute=_peak_speed_end,
    choices=("data", "noise", "mixed"),
))
