"""Checks and questions of the chapter "pretrained", DDPM's discrete time (exercises/16_discrete_time.ipynb).

References: DDPM's linear schedule ``beta_i`` from 1e-4 to 0.02 over 1000 steps and ``alpha_bar_i = prod_{j <= i}
(1 - beta_j)`` (Ho et al., arXiv 2006.11239, Sec. 4, eq. 4), placed on minidit's time axis at ``t = i / 1000`` with
``log alpha_bar`` interpolated linearly between the steps (``minidit.interpolants.DDPMInterpolant``); the conversion
of a noise prediction into a velocity (SiT, arXiv 2401.08740, Sec. 2.3, ``minidit.weighting.convert``).
``ddpm_coefficients`` names the learner's ``ddpm_alpha_bar``, and ``eps_to_velocity`` the learner's
``ddpm_coefficients``, when that is what is wrong.
"""
from __future__ import annotations

import torch
from torch import Tensor

from minidit.course.checks.core import Case, Check, Question, generator, register, register_question

SCHEDULES = ((1000, 1e-4, 0.02), (10, 0.01, 0.2), (4, 0.1, 0.1))  # (num_steps, beta_start, beta_end): DDPM's, two small


def _alpha_bar_reference(num_steps: int, beta_start: float, beta_end: float) -> Tensor:
    from minidit.interpolants import DDPMInterpolant

    return DDPMInterpolant(num_steps, beta_start, beta_end).alpha_bar.clone()  # (S,)


def _alpha_bar_cases() -> list[Case]:
    schedules = (*SCHEDULES, (2, 0.3, 0.6), (50, 1e-3, 0.05))
    return [Case(f"num_steps={s}, beta_start={b0}, beta_end={b1}", (s, b0, b1)) for s, b0, b1 in schedules]


register(Check(
    name="ddpm_alpha_bar",
    reference=_alpha_bar_reference,
    cases=_alpha_bar_cases,
    hints=(
        "alpha_bar_i is the fraction of the data's variance left after steps 0, 1, ..., i: each step keeps 1 - beta_j "
        "of it, and step 0 counts too (alpha_bar_0 = 1 - beta_0, not 1)",
        "the betas are evenly spaced from beta_start to beta_end, both included: torch.linspace with num_steps points "
        "(in float64, so the 1000-step product keeps its digits)",
        "torch.cumprod(1 - betas, dim=0), shape (num_steps,)",
    ),
))


def _coefficients_reference(
    t: Tensor, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> tuple[Tensor, ...]:
    from minidit.interpolants import DDPMInterpolant

    return DDPMInterpolant(num_steps, beta_start, beta_end).coefficients(t)


def _coefficients_cases() -> list[Case]:
    cases = []
    for index, (steps, b0, b1) in enumerate(SCHEDULES):
        g = generator(40 + index)
        integer = torch.arange(steps + 1, dtype=torch.float64)  # (S + 1,): every step, and t = 1
        between = (integer[:-2, None] + torch.tensor([0.3, 0.7], dtype=torch.float64)).flatten()  # (2 (S - 1),)
        after_last = steps - torch.tensor([0.75, 0.5, 0.0], dtype=torch.float64)  # (3,)
        times = {
            "at every integer step and t = 1": integer / steps,
            "between steps (0.3 and 0.7 of the way)": between / steps,
            f"after the last step, in ({(steps - 1) / steps:g}, 1]": after_last / steps,
            "random in [0, 1)": torch.rand(3, 4, generator=g),
        }
        for label, t in times.items():
            if t.numel() > 24:  # 1000 steps: both ends and the middle
                label = label.replace("every integer step", "some integer steps")
                t = torch.cat([t[:6], t[t.numel() // 2: t.numel() // 2 + 6], t[-6:]])
            label = f"num_steps={steps}, beta_start={b0}, beta_end={b1}, t {label}, shape {tuple(t.shape)}"
            cases.append(Case(label, (t.double(), steps, b0, b1)))
    return cases


register(Check(
    name="ddpm_coefficients",
    reference=_coefficients_reference,
    cases=_coefficients_cases,
    hints=(
        "t sits at the fractional step u = num_steps t; log alpha_bar is a straight line between neighbouring integer "
        "steps, falling by log(1 - beta_i) from step i - 1 to step i (step 0's piece starts at log 1 = 0 at u = -1), "
        "and beyond the last step it goes on with the last beta; then alpha = sqrt(alpha_bar), sigma = sqrt(1 - "
        "alpha_bar)",
        "with L = log(ddpm_alpha_bar(...)) and slopes = torch.diff(L, prepend=a zero) (slopes[i] = log(1 - beta_i)), "
        "i = ceil(u) clamped to num_steps - 1 picks the piece that ends at step i: log alpha_bar = L[i] + (u - i) "
        "slopes[i], and its time derivative is num_steps slopes[i] (not slopes[i]: u moves num_steps times faster "
        "than t)",
        "alpha = exp(log_alpha_bar / 2), sigma = sqrt(1 - exp(log_alpha_bar)), alpha' = alpha d_log / 2, "
        "sigma' = -alpha alpha' / sigma (from alpha^2 + sigma^2 = 1); four tensors with the shape of t",
    ),
    helpers=("ddpm_alpha_bar",),
    output_names=("alpha", "sigma", "d_alpha", "d_sigma"),
))


def _eps_to_velocity_reference(eps: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    from minidit.weighting import convert

    return convert(eps, x_t, t, "ddpm", "noise", "velocity")


def _eps_to_velocity_cases() -> list[Case]:
    g = generator(45)
    cases = []
    for shape in ((6, 2), (6, 3, 4, 4)):
        eps, x_t = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(2))
        t = torch.tensor([0.0, 0.0125, 0.3, 0.5557, 0.999, 1.0], dtype=torch.float64)
        label = f"eps and x_t of shape {shape} (float64), t = {t.tolist()}, DDPM's schedule"
        cases.append(Case(label, (eps, x_t, t)))
    return cases


register(Check(
    name="eps_to_velocity",
    reference=_eps_to_velocity_reference,
    cases=_eps_to_velocity_cases,
    hints=(
        "a noise prediction eps and the point x_t = alpha x0 + sigma eps together give the data x0; the velocity is "
        "then v = alpha' x0 + sigma' eps",
        "x0 = (x_t - sigma eps) / alpha; alpha and sigma never vanish on the DDPM path, so this is finite at t = 0 and "
        "t = 1; the coefficients are (N,): expand_time(c, x_t) reshapes one to broadcast over (N, ...)",
        "v = (alpha' / alpha) x_t + (sigma' - alpha' sigma / alpha) eps, with (alpha, sigma, alpha', sigma') from your "
        "ddpm_coefficients(t) on DDPM's schedule (1000 steps, 1e-4 to 0.02); shape (N, ...)",
    ),
    helpers=("ddpm_coefficients",),
))


def _sigma_at_data_end() -> tuple[float, str]:
    from minidit.interpolants import DDPMInterpolant

    path = DDPMInterpolant()
    alpha, sigma = (value.item() for value in path.coefficients(torch.zeros(1, dtype=torch.float64))[:2])
    return round(sigma, 6), (f"DDPMInterpolant() at t = 0: sigma = {sigma:.6f} = sqrt(beta_0) = sqrt(1e-4), "
                             f"alpha = {alpha:.6f}.")


def _alpha_at_noise_end() -> tuple[float, str]:
    from minidit.interpolants import DDPMInterpolant, get_interpolant

    path, last = DDPMInterpolant(), torch.tensor([0.999, 1.0], dtype=torch.float64)
    at_last_step, at_one = path.alpha(last).tolist()
    vp = get_interpolant("vp").alpha(torch.ones(1, dtype=torch.float64)).item()
    return round(at_one, 6), (f"DDPMInterpolant() gives alpha = {at_last_step:.5f} at step 999 (t = 0.999) and "
                              f"{at_one:.5f} at t = 1; SiT's VP path, its continuous-time limit, has {vp:.5f}.")


def _singular_end() -> tuple[str, str]:
    from minidit.weighting import singular_ends

    ends = {name: singular_ends(name, "noise", "velocity") for name in ("ddpm", "linear", "vp")}
    found = ends["ddpm"]
    answer = "neither" if not found else "both" if len(found) == 2 else "data" if found == (0.0,) else "noise"
    return answer, "minidit.weighting.singular_ends(path, 'noise', 'velocity'): " + ", ".join(
        f"{name} {value}" for name, value in ends.items()) + " (the times where the conversion divides by zero)."


register_question(Question(
    name="ddpm_sigma_0",
    prompt="On the DDPM path, what is sigma_t at t = 0 (DDPM's step 0)?",
    compute=_sigma_at_data_end,
    atol=2e-4,
))
register_question(Question(
    name="ddpm_alpha_1",
    prompt="On the DDPM path, what is alpha_t at t = 1 (the fraction of the data left in the 'pure noise')?",
    compute=_alpha_at_noise_end,
    atol=2e-4,
))
register_question(Question(
    name="ddpm_singular_end",
    prompt="At which end does converting a noise prediction into a velocity divide by zero on the DDPM path?",
    compute=_singular_end,
    choices=("data", "noise", "both", "neither"),
))
