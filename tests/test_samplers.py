"""Samplers against a target whose flow is known in closed form: one Gaussian, x0 ~ N(mu, s0^2), linear path.

x_t = (1 - t) x0 + t eps is Gaussian with mean m_t = (1 - t) mu and variance V_t = (1 - t)^2 s0^2 + t^2, so the
marginal velocity is v(x, t) = m_t' + (V_t' / (2 V_t)) (x - m_t) and the score is s(x, t) = -(x - m_t) / V_t.
The ODE flow keeps the standardised coordinate (x - m_t) / sqrt(V_t) fixed: noise z at t = 1 ends at mu + s0 z.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from minidit.interpolants import get_interpolant
from minidit.metrics import NFECounter, sliced_wasserstein
from minidit.samplers import DIFFUSIONS, diffusion_coefficient, sample_ode, sample_sde
from minidit.toy import get_target
from minidit.weighting import convert

MU, S0 = 1.5, 0.4


def gaussian_moments(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(m_t, V_t, V_t')`` of the linear-path marginal, shaped to broadcast against ``x``."""
    t = t.reshape(-1, *([1] * (x.ndim - 1)))
    return (1 - t) * MU, (1 - t) ** 2 * S0**2 + t**2, -2 * (1 - t) * S0**2 + 2 * t


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    mean, var, d_var = gaussian_moments(x, t)
    return -MU + d_var / (2 * var) * (x - mean)


def gaussian_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    mean, var, _ = gaussian_moments(x, t)
    return -(x - mean) / var


def grid_noise(n: int = 101) -> torch.Tensor:
    return torch.linspace(-3, 3, n, dtype=torch.float64)[:, None]  # (n, 1)


def normal_noise(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Generator]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, generator=generator, dtype=torch.float64), generator


def assert_target_moments(samples: torch.Tensor, n_standard_errors: float = 4.0) -> None:
    n = samples.shape[0]
    assert abs(samples.mean().item() - MU) < n_standard_errors * S0 / math.sqrt(n)
    assert abs(samples.std().item() - S0) < n_standard_errors * S0 / math.sqrt(2 * n)


def test_closed_form_velocity_and_score_obey_the_sit_relation():
    x, t = torch.randn(50, 1, dtype=torch.float64), torch.rand(50, dtype=torch.float64) * 0.98 + 0.01
    from_score = convert(gaussian_score(x, t), x, t, "linear", "score", "velocity")
    torch.testing.assert_close(from_score, gaussian_velocity(x, t))


@pytest.mark.parametrize("method, order", [("euler", 1.0), ("heun", 2.0)])
def test_ode_convergence_order(method, order):
    x1 = grid_noise()
    exact = MU + S0 * x1
    steps = [10, 20, 40, 80]
    errors = [(sample_ode(gaussian_velocity, x1, k, method).samples - exact).abs().max().item() for k in steps]
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert slope == pytest.approx(-order, abs=0.15)


def test_ode_maps_standard_normal_to_target():
    x1, _ = normal_noise(20000)
    assert_target_moments(sample_ode(gaussian_velocity, x1, 50, "heun").samples)


def test_ode_from_data_to_noise_standardises():
    x0 = MU + S0 * grid_noise()
    encoded = sample_ode(gaussian_velocity, x0, 200, "heun", t_start=0.0, t_end=1.0).samples
    torch.testing.assert_close(encoded, (x0 - MU) / S0, atol=1e-4, rtol=0)


@pytest.mark.parametrize("diffusion", DIFFUSIONS)
def test_sde_with_exact_score_reproduces_target(diffusion):
    x1, generator = normal_noise(10000, seed=1)
    out = sample_sde(gaussian_velocity, x1, "linear", 400, diffusion, score_fn=gaussian_score, generator=generator)
    assert_target_moments(out.samples)


def test_sde_score_from_velocity_equals_exact_score():
    x1, _ = normal_noise(1000)
    runs = [
        sample_sde(gaussian_velocity, x1, "linear", 50, score_fn=score_fn, generator=torch.Generator().manual_seed(3))
        for score_fn in (None, gaussian_score)
    ]
    torch.testing.assert_close(runs[0].samples, runs[1].samples)


def test_sde_with_exact_mixture_score_reproduces_eight_gaussians():
    target, n = get_target("8gaussians"), 2000
    generator = torch.Generator().manual_seed(0)
    references = [target.sample(n, generator) for _ in range(2)]

    def distance(samples: torch.Tensor) -> float:
        """Mean sliced Wasserstein distance to the reference target sets (fixed projections)."""
        projections = torch.Generator().manual_seed(1)
        return sum(sliced_wasserstein(samples, r, generator=projections.manual_seed(1)).item() for r in references) / 2

    noise_floor = distance(target.sample(n, generator))  # what a perfect sampler scores
    out = sample_sde(
        lambda x, t: target.velocity(x, t, "linear"),
        torch.randn(n, 2, generator=generator),
        "linear",
        40,
        score_fn=lambda x, t: target.score(x, t, "linear"),
        generator=generator,
    )
    assert distance(out.samples) < 2 * noise_floor
    assert distance(torch.randn(n, 2, generator=generator)) > 2 * noise_floor  # the threshold rejects N(0, I)


@pytest.mark.parametrize("diffusion, scale", [("zero", 1.0), ("sigma", 0.0)])
def test_zero_diffusion_sde_is_euler_ode_on_the_same_grid(diffusion, scale):
    x1, eps, steps = grid_noise(), 0.01, 20
    sde = sample_sde(gaussian_velocity, x1, "linear", steps, diffusion, scale, time_eps=eps, last_step="none")
    ode = sample_ode(gaussian_velocity, x1, steps, "euler", t_start=1 - eps, t_end=eps)
    torch.testing.assert_close(sde.samples, ode.samples, rtol=0, atol=1e-12)
    with_mean_step = sample_sde(gaussian_velocity, x1, "linear", steps, diffusion, scale, time_eps=eps)
    last_euler_step = sample_ode(gaussian_velocity, ode.samples, 1, "euler", t_start=eps, t_end=0.0)
    torch.testing.assert_close(with_mean_step.samples, last_euler_step.samples, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method, per_step", [("euler", 1), ("heun", 2)])
def test_ode_nfe(method, per_step):
    velocity = NFECounter(gaussian_velocity)
    out = sample_ode(velocity, grid_noise(), 7, method)
    assert out.nfe == velocity.nfe == 7 * per_step


@pytest.mark.parametrize(
    "diffusion, with_score, last_step, expected",
    [
        ("sigma", False, "mean", 8),
        ("sigma", False, "none", 7),
        ("sigma", True, "mean", 16),
        ("sin2", True, "none", 14),
        ("zero", True, "mean", 8),  # w = 0: the score is never needed
    ],
)
def test_sde_nfe(diffusion, with_score, last_step, expected):
    velocity, score = NFECounter(gaussian_velocity), NFECounter(gaussian_score)
    out = sample_sde(
        velocity, grid_noise(), "linear", 7, diffusion, score_fn=score if with_score else None, last_step=last_step
    )
    assert out.nfe == velocity.nfe + score.nfe == expected


def test_trajectories_start_at_noise_and_end_at_samples():
    x1 = grid_noise(5)
    ode = sample_ode(gaussian_velocity, x1, 4, "heun", return_trajectory=True)
    assert ode.trajectory.shape == (5, 5, 1)
    torch.testing.assert_close(ode.times, torch.linspace(1, 0, 5, dtype=torch.float64))
    sde = sample_sde(gaussian_velocity, x1, "linear", 4, time_eps=0.01, return_trajectory=True)
    assert sde.trajectory.shape == (6, 5, 1)
    torch.testing.assert_close(sde.times, torch.tensor([0.99, 0.745, 0.5, 0.255, 0.01, 0.0], dtype=torch.float64))
    for out in (ode, sde):
        torch.testing.assert_close(out.trajectory[0], x1)
        torch.testing.assert_close(out.trajectory[-1], out.samples)
    assert sample_ode(gaussian_velocity, x1, 4).trajectory is None


def test_diffusion_coefficients_closed_forms():
    t = torch.tensor([0.1, 0.25, 0.5, 0.8], dtype=torch.float64)
    torch.testing.assert_close(diffusion_coefficient("sigma", t, "linear"), t)
    torch.testing.assert_close(diffusion_coefficient("sbdm", t, "linear"), t / (1 - t))  # lambda_t = 1 / (1 - t)
    vp = get_interpolant("vp")
    beta = vp.beta_min + t * (vp.beta_max - vp.beta_min)  # SBDM on the VP path: w_t = beta(t) / 2
    torch.testing.assert_close(diffusion_coefficient("sbdm", t, vp), beta / 2)
    torch.testing.assert_close(diffusion_coefficient("sin2", t, "gvp"), torch.sin(math.pi * t) ** 2)
    torch.testing.assert_close(diffusion_coefficient("constant", t, "vp"), torch.ones_like(t))
    torch.testing.assert_close(diffusion_coefficient("zero", t, "vp"), torch.zeros_like(t))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x: sample_ode(gaussian_velocity, x, 4, "rk4"), "valid ODE methods are: 'euler', 'heun'"),
        (lambda x: sample_ode(gaussian_velocity, x, 0), "steps must be a positive integer"),
        (lambda x: sample_ode(gaussian_velocity, x, 2.5), "steps must be a positive integer"),
        (lambda x: sample_ode(gaussian_velocity, x, True), r"steps must be a positive integer \(not a bool\), got True"),
        (lambda x: sample_sde(gaussian_velocity, x, "linear", True), r"steps must be a positive integer \(not a bool\)"),
        (lambda x: sample_ode(gaussian_velocity, x, 4, t_start=0.5, t_end=0.5), "must differ"),
        (lambda x: sample_ode(gaussian_velocity, x, 4, t_start=1.5), r"must lie in \[0, 1\]"),
        (lambda x: sample_ode(lambda x, t: x[:, 0], x, 4), "velocity_fn returned shape"),
        (lambda x: sample_sde(gaussian_velocity, x, "linear", 4, "vp"), "valid diffusions are: 'sigma', 'sbdm'"),
        (lambda x: sample_sde(gaussian_velocity, x, "linear", 4, last_step="tweedie"), "valid last steps"),
        (lambda x: sample_sde(gaussian_velocity, x, "linear", 4, time_eps=0.0), "time_eps must lie in"),
        (lambda x: sample_sde(gaussian_velocity, x, "linear", 4, diffusion_scale=-1.0), "diffusion_scale must be finite and >= 0"),
        (lambda x: sample_sde(gaussian_velocity, x, "linear", 4, diffusion_scale=math.inf), r"finite and >= 0 .*; got inf"),
        (lambda x: sample_sde(gaussian_velocity, x, "linear", 4, diffusion_scale=math.nan), r"finite and >= 0 .*; got nan"),
        (lambda x: sample_sde(gaussian_velocity, x, "cosine", 4), "valid interpolants"),
        (lambda x: sample_sde(gaussian_velocity, x, "linear", 4, score_fn=lambda x, t: x[:1]), "score_fn returned"),
        (lambda x: diffusion_coefficient("sigma", torch.tensor([1.2]), "linear"), r"must lie in \[0, 1\]"),
    ],
)
def test_bad_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call(grid_noise(5))
