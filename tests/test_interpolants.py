"""Interpolants (SiT Sec. 2.2) and DDPM's discrete schedule: boundary values, closed-form derivatives against autograd,
conversions and exact Gaussian sampling on the DDPM path, input checks."""
import math

import numpy as np
import pytest
import torch

from minidit.interpolants import (DISCRETE_INTERPOLANTS, INTERPOLANTS, DDPMInterpolant, Interpolant, VPInterpolant,
                                  get_interpolant)
from minidit.samplers import sample_ode, sample_sde
from minidit.weighting import PREDICTIONS, WEIGHTINGS, convert, default_time_eps, singular_ends, training_loss

NAMES = tuple(INTERPOLANTS)
VP_ALPHA_1 = math.exp(-(0.1 + 20.0) / 4)  # exp(-(b1 - b0) / 4 - b0 / 2) = exp(-5.025)


def time_grid(name: str) -> torch.Tensor:
    """Float64 grid on [0, 1]; VP starts at 0.01 because its d_sigma is infinite at t = 0."""
    return torch.linspace(0.01 if name == "vp" else 0.0, 1.0, 101, dtype=torch.float64)


@pytest.mark.parametrize("name", NAMES)
def test_boundary_values(name):
    a, s, _, _ = get_interpolant(name).coefficients(torch.tensor([0.0, 1.0], dtype=torch.float64))
    expected_alpha_1 = VP_ALPHA_1 if name == "vp" else 0.0
    torch.testing.assert_close(a, torch.tensor([1.0, expected_alpha_1], dtype=torch.float64), atol=1e-15, rtol=1e-12)
    expected_sigma_1 = math.sqrt(1 - VP_ALPHA_1**2) if name == "vp" else 1.0
    torch.testing.assert_close(s, torch.tensor([0.0, expected_sigma_1], dtype=torch.float64), atol=1e-15, rtol=1e-12)


def test_vp_alpha_1_is_close_to_but_not_zero():
    alpha_1 = get_interpolant("vp").alpha(torch.tensor(1.0, dtype=torch.float64)).item()
    assert alpha_1 == pytest.approx(0.006571, rel=1e-3)
    other_alpha_1 = VPInterpolant(beta_min=1.0, beta_max=3.0).alpha(torch.tensor(1.0, dtype=torch.float64)).item()
    assert other_alpha_1 == pytest.approx(math.exp(-1.0))  # -(3 - 1) / 4 - 1 / 2


@pytest.mark.parametrize("name", NAMES)
def test_derivatives_match_autograd(name):
    path = get_interpolant(name)
    t = time_grid(name).requires_grad_(True)
    (d_alpha,) = torch.autograd.grad(path.alpha(t).sum(), t)
    (d_sigma,) = torch.autograd.grad(path.sigma(t).sum(), t)
    t = t.detach()
    torch.testing.assert_close(path.d_alpha(t), d_alpha, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(path.d_sigma(t), d_sigma, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["gvp", "vp"])
def test_variance_preserving(name):
    a, s, _, _ = get_interpolant(name).coefficients(time_grid(name))
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(a))


def test_vp_sigma_is_accurate_near_data():
    """``sigma^2 = 1 - alpha^2 ~ b0 t`` for tiny t; computing ``sqrt(1 - alpha^2)`` naively in float32 gives 0."""
    t = torch.tensor([1e-7, 1e-5], dtype=torch.float32)
    sigma = get_interpolant("vp").sigma(t)
    t64 = t.double()
    alpha = torch.exp(-0.25 * t64**2 * (20.0 - 0.1) - 0.5 * t64 * 0.1)
    reference = torch.sqrt(1 - alpha**2)  # naive, but float64 keeps ~8 correct digits at t = 1e-7
    torch.testing.assert_close(sigma.double(), reference, rtol=1e-6, atol=0)
    assert torch.sqrt(1 - torch.exp(-0.05 * t) ** 2)[0] == 0  # the naive float32 formula loses it all


@pytest.mark.parametrize("name", NAMES)
def test_velocity_target_is_time_derivative_of_interpolate(name):
    path = get_interpolant(name)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 3, dtype=torch.float64, generator=generator)
    noise = torch.randn(64, 3, dtype=torch.float64, generator=generator)
    t = torch.rand(64, dtype=torch.float64, generator=generator) * 0.98 + 0.01
    # x_t[i] depends on t[i] only, so the JVP with a tangent of ones is the per-sample time derivative.
    _, dx_dt = torch.autograd.functional.jvp(lambda time: path.interpolate(x0, noise, time), t, torch.ones_like(t))
    torch.testing.assert_close(path.velocity_target(x0, noise, t), dx_dt)


@pytest.mark.parametrize("name", NAMES)
def test_interpolate_endpoints(name):
    path = get_interpolant(name)
    x0, noise = torch.randn(5, 2, 2, dtype=torch.float64), torch.randn(5, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(path.interpolate(x0, noise, torch.zeros(5, dtype=torch.float64)), x0)
    if name != "vp":
        torch.testing.assert_close(path.interpolate(x0, noise, torch.ones(5, dtype=torch.float64)), noise)


def test_linear_velocity_is_noise_minus_data():
    x0, noise, t = torch.randn(8, 2), torch.randn(8, 2), torch.rand(8)
    torch.testing.assert_close(get_interpolant("linear").velocity_target(x0, noise, t), noise - x0)


def test_registry_and_pass_through():
    for name, path_class in INTERPOLANTS.items():
        assert path_class.name == name and isinstance(get_interpolant(name), path_class)
    path = VPInterpolant(beta_min=0.2)
    assert get_interpolant(path) is path


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'linear', 'gvp', 'vp'"):
        get_interpolant("cosine")


@pytest.mark.parametrize("bad_t", [1.5, -0.1, float("nan")])
def test_time_outside_unit_interval_raises(bad_t):
    path = get_interpolant("linear")
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        path.interpolate(x, x, torch.tensor([0.5, bad_t]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        path.coefficients(torch.tensor([bad_t]))


def test_mismatched_shapes_raise():
    path: Interpolant = get_interpolant("gvp")
    with pytest.raises(ValueError, match="shapes must match"):
        path.interpolate(torch.randn(4, 2), torch.randn(4, 3), torch.rand(4))
    with pytest.raises(ValueError, match="shapes must match"):
        path.velocity_target(torch.randn(4, 2), torch.randn(3, 2), torch.rand(4))
    with pytest.raises(ValueError, match=r"t must have shape \(N,\) = \(4,\)"):
        path.interpolate(torch.randn(4, 2), torch.randn(4, 2), torch.rand(3))
    with pytest.raises(ValueError, match="t must have shape"):
        path.velocity_target(torch.randn(4, 2), torch.randn(4, 2), torch.rand(4, 1))


# ---- DDPM's discrete schedule (SiT's first axis: discrete versus continuous time) ----------------------------

DDPM = DDPMInterpolant()
DDPM_BETAS = np.linspace(1e-4, 0.02, 1000)  # DDPM's linear schedule, built independently of minidit in numpy
DDPM_ALPHA_BAR = np.cumprod(1 - DDPM_BETAS)


def gaussian_eps_model(s: float):
    """The exact noise prediction E[eps | x_t = x] = sigma x / (alpha^2 s^2 + sigma^2) for data N(0, s^2 I), (N, D)."""
    def eps(x, t):
        alpha, sigma = (c[:, None] for c in DDPM.coefficients(t)[:2])
        return sigma * x / (alpha**2 * s**2 + sigma**2)

    return eps


def test_ddpm_alpha_bar_is_the_cumulative_product_at_the_integer_steps():
    steps = torch.arange(1000, dtype=torch.float64)
    alpha, sigma, _, _ = DDPM.coefficients(steps / 1000)
    expected = torch.from_numpy(DDPM_ALPHA_BAR)
    torch.testing.assert_close(DDPM.alpha_bar, expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(alpha**2, expected, rtol=1e-12, atol=0)  # float64 rounding of exp(log) only
    torch.testing.assert_close(sigma**2, 1 - expected, rtol=1e-12, atol=1e-15)
    small = DDPMInterpolant(num_steps=3, beta_start=0.1, beta_end=0.3)  # by hand: 0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.7
    torch.testing.assert_close(small.alpha(torch.tensor([0, 1 / 3, 2 / 3], dtype=torch.float64)) ** 2,
                               torch.tensor([0.9, 0.72, 0.504], dtype=torch.float64))


def test_ddpm_ends_are_not_pure_data_or_pure_noise():
    alpha, sigma, _, _ = DDPM.coefficients(torch.tensor([0.0, 0.999, 1.0], dtype=torch.float64))
    assert sigma[0].item() == pytest.approx(0.01, rel=1e-10)  # sqrt(beta_0): DDPM's step 0 already adds noise
    assert alpha[1].item() == pytest.approx(math.sqrt(DDPM_ALPHA_BAR[-1]), rel=1e-12)  # step 999
    assert alpha[2].item() == pytest.approx(math.sqrt(DDPM_ALPHA_BAR[-1] * (1 - 0.02)), rel=1e-12)  # last beta again
    assert alpha[2].item() == pytest.approx(0.00629, abs=1e-5)


def test_ddpm_tends_to_the_vp_path_as_the_steps_get_finer():
    """S steps with S beta_start = 0.1 and S beta_end = 20 fixed: log alpha_t tends to the VP path's, error O(1 / S)."""
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    vp_log_alpha = torch.log(get_interpolant("vp").alpha(t))
    errors = [(torch.log(DDPMInterpolant(s, 0.1 / s, 20.0 / s).alpha(t)) - vp_log_alpha).abs().max().item()
              for s in (100, 1000, 10_000)]
    assert errors[1] < 0.05 and errors[2] < errors[1] / 8 < errors[0] / 64


def test_ddpm_log_alpha_bar_is_linear_between_steps_with_each_steps_own_beta():
    steps = torch.tensor([0, 1, 10, 500, 998, 999], dtype=torch.float64)
    log_alpha_bar = torch.log(torch.from_numpy(DDPM_ALPHA_BAR))
    log_one_minus_beta = torch.log1p(-torch.from_numpy(DDPM_BETAS))
    for fraction in (0.25, 0.5, 0.9):
        t = (steps + fraction) / 1000  # on the piece from step i to step i + 1 (for i = 999: beyond the last step)
        index = steps.long()
        slope = log_one_minus_beta[(index + 1).clamp(max=999)]  # the beta of the step the piece ends at
        alpha, _, d_alpha, _ = DDPM.coefficients(t)
        torch.testing.assert_close(torch.log(alpha**2), log_alpha_bar[index] + fraction * slope, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(d_alpha / alpha, 0.5 * 1000 * slope, rtol=1e-12, atol=0)
    _, _, d_alpha, _ = DDPM.coefficients(steps / 1000)  # at step i itself: the piece that ends there, beta_i
    torch.testing.assert_close(d_alpha / DDPM.alpha(steps / 1000), 0.5 * 1000 * log_one_minus_beta[steps.long()])


def test_ddpm_derivatives_match_autograd_and_finite_differences():
    t = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)[:-1] + 0.37e-3  # inside the pieces, away from the kinks
    t = torch.cat([t, torch.tensor([0.0, 1.0], dtype=torch.float64)])
    path = DDPM
    t.requires_grad_(True)
    (d_alpha,) = torch.autograd.grad(path.alpha(t).sum(), t)
    (d_sigma,) = torch.autograd.grad(path.sigma(t).sum(), t)
    t = t.detach()
    torch.testing.assert_close(path.d_alpha(t), d_alpha, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(path.d_sigma(t), d_sigma, rtol=1e-10, atol=1e-12)
    h, inner = 1e-7, t[:-2]  # central differences inside one piece (pieces are 1e-3 wide)
    for value, derivative in ((path.alpha, path.d_alpha), (path.sigma, path.d_sigma)):
        difference = (value(inner + h) - value(inner - h)) / (2 * h)
        torch.testing.assert_close(derivative(inner), difference, rtol=1e-6, atol=0)


def test_ddpm_velocity_target_is_time_derivative_of_interpolate():
    generator = torch.Generator().manual_seed(1)
    x0, noise = (torch.randn(64, 3, dtype=torch.float64, generator=generator) for _ in range(2))
    t = torch.rand(64, dtype=torch.float64, generator=generator)
    _, dx_dt = torch.autograd.functional.jvp(lambda time: DDPM.interpolate(x0, noise, time), t, torch.ones_like(t))
    torch.testing.assert_close(DDPM.velocity_target(x0, noise, t), dx_dt)


def test_ddpm_conversions_round_trip_on_all_of_the_unit_interval():
    generator = torch.Generator().manual_seed(2)
    eps, x_t = (torch.randn(6, 2, 3, dtype=torch.float64, generator=generator) for _ in range(2))
    t = torch.tensor([0.0, 1e-4, 0.3, 0.5, 0.9995, 1.0], dtype=torch.float64)  # both ends included: nothing is singular
    velocity = convert(eps, x_t, t, "ddpm", "noise", "velocity")
    score = convert(velocity, x_t, t, "ddpm", "velocity", "score")
    torch.testing.assert_close(convert(score, x_t, t, "ddpm", "score", "noise"), eps)
    torch.testing.assert_close(convert(velocity, x_t, t, "ddpm", "velocity", "noise"), eps)
    torch.testing.assert_close(score, -eps / DDPM.sigma(t)[:, None, None])
    alpha, sigma, d_alpha, d_sigma = (c[:, None, None] for c in DDPM.coefficients(t))
    lam = d_sigma - d_alpha * sigma / alpha  # SiT: v = (alpha' / alpha) x - lambda sigma s
    torch.testing.assert_close(velocity, d_alpha / alpha * x_t - lam * sigma * score)
    assert all(singular_ends("ddpm", src, dst) == () for src in PREDICTIONS for dst in PREDICTIONS)
    assert all(default_time_eps("ddpm", p, w) == 0 for p in PREDICTIONS for w in WEIGHTINGS)


def test_ode_sampling_of_the_exact_eps_model_of_a_gaussian_gives_its_variance():
    """Data N(0, s^2 I): x_t ~ N(0, V_t I), V_t = alpha^2 s^2 + sigma^2, and the ODE maps x_1 to sqrt(V_0 / V_1) x_1."""
    s, eps = 2.0, gaussian_eps_model(2.0)
    alpha, sigma, _, _ = DDPM.coefficients(torch.tensor([0.0, 1.0], dtype=torch.float64))
    variance = alpha**2 * s**2 + sigma**2  # (V_0, V_1)
    scale = (variance[0] / variance[1]).sqrt().item()
    assert scale == pytest.approx(s, rel=2e-4)  # the two end effects are small
    x1 = torch.linspace(-4, 4, 9, dtype=torch.float64)[:, None]  # (9, 1)
    velocity = lambda x, t: convert(eps(x, t), x, t, "ddpm", "noise", "velocity")  # noqa: E731
    for steps in (250, 333):  # on every fourth step, and off the steps: first order across their kinks, ~1e-3 remains
        samples = sample_ode(velocity, x1, steps, "heun").samples
        torch.testing.assert_close(samples, scale * x1, rtol=2e-3, atol=1e-6)


def test_sde_sampling_of_the_exact_eps_model_of_a_gaussian_gives_its_variance():
    s, eps = 0.5, gaussian_eps_model(0.5)
    velocity = lambda x, t: convert(eps(x, t), x, t, "ddpm", "noise", "velocity")  # noqa: E731
    x1 = torch.randn(4000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = sample_sde(velocity, x1, "ddpm", steps=200, diffusion="sigma", generator=torch.Generator().manual_seed(4))
    standard_error = s**2 * math.sqrt(2 / x1.shape[0])  # of a sample variance
    assert abs(out.samples.var().item() - s**2) < 4 * standard_error + 5e-3


def test_ddpm_training_draws_on_the_whole_interval_and_learns_the_noise():
    """default_time_eps is 0, so a discrete time sampler's t = i / 1000 reach the model unchanged."""
    class Steps:
        def sample(self, n, generator=None):
            return torch.randint(0, 1000, (n,), generator=generator) / 1000

    x0 = torch.randn(4096, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 0.5
    seen = {}

    def exact(x_t, t):  # E[eps | x_t] for data N(0, 0.25)
        seen["t"] = t
        return gaussian_eps_model(0.5)(x_t, t)

    generator = torch.Generator().manual_seed(6)
    loss, t = training_loss(exact, x0, "ddpm", "noise", time_sampler=Steps(), generator=generator)
    assert ((t * 1000 - (t * 1000).round()).abs() < 1e-4).all() and torch.equal(seen["t"], t)  # float32 steps
    alpha, sigma, _, _ = DDPM.coefficients(t)
    irreducible = alpha**2 * 0.25 / (alpha**2 * 0.25 + sigma**2)  # Var[eps | x_t] of a Gaussian
    assert abs((loss - irreducible).mean().item()) < 4 * loss.std().item() / math.sqrt(len(loss))


def test_ddpm_is_built_by_name_and_rejects_bad_schedules():
    assert isinstance(get_interpolant("ddpm"), DDPMInterpolant) and "ddpm" in DISCRETE_INTERPOLANTS
    assert "ddpm" not in INTERPOLANTS  # SiT's continuous paths stay what exercise 1 and the lectures loop over
    assert repr(DDPM) == "DDPMInterpolant(num_steps=1000, beta_start=0.0001, beta_end=0.02)"
    for bad in (dict(num_steps=1), dict(num_steps=True), dict(num_steps=10.0)):
        with pytest.raises(ValueError, match="num_steps must be an integer >= 2"):
            DDPMInterpolant(**bad)
    for bad in (dict(beta_start=0.0), dict(beta_start=0.03), dict(beta_end=1.0)):
        with pytest.raises(ValueError, match=r"betas need 0 < beta_start <= beta_end < 1"):
            DDPMInterpolant(**bad)
