"""Interpolants (SiT Sec. 2.2): boundary values, closed-form derivatives against autograd, input checks."""
import math

import pytest
import torch

from minidit.interpolants import INTERPOLANTS, Interpolant, VPInterpolant, get_interpolant

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
