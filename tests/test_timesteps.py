"""Time samplers (SD3 Sec. 3.1): samples, densities and analytic CDFs agree; the resolution shift's algebra."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from minidit.timesteps import (
    TIME_SAMPLERS,
    CosMapSampler,
    LogitNormalSampler,
    ModeSampler,
    ShiftedSampler,
    TimeSampler,
    UniformSampler,
    get_time_sampler,
    resolution_shift_factor,
    shift_time,
)

GRID = np.linspace(0.0, 1.0, 20001)
N_SAMPLES = 20000


def mode_cdf(s: float):
    """Analytic CDF of mode sampling: ``f`` decreases, so ``P(T <= f(u)) = 1 - u``; traced on a fine ``u`` grid."""
    u = np.linspace(0.0, 1.0, 200001)
    t = 1 - u - s * (np.cos(0.5 * np.pi * u) ** 2 - 1 + u)  # decreasing in u
    return lambda x: np.interp(x, t[::-1], (1 - u)[::-1])


BASE_CASES = {  # name -> (sampler, analytic CDF written independently of minidit)
    "uniform": (UniformSampler(), lambda t: np.asarray(t, dtype=float)),
    "logit_normal(0,1)": (LogitNormalSampler(), lambda t: stats.norm.cdf(special.logit(t))),
    "logit_normal(0.5,0.7)": (LogitNormalSampler(m=0.5, s=0.7), lambda t: stats.norm.cdf(special.logit(t), 0.5, 0.7)),
    "mode(1.29)": (ModeSampler(1.29), mode_cdf(1.29)),
    "mode(-0.5)": (ModeSampler(-0.5), mode_cdf(-0.5)),
    "cosmap": (CosMapSampler(), lambda t: 2 / np.pi * np.arctan2(t, 1 - t)),
}


def shifted_case(base_name: str, shift: float):
    """A shifted sampler and its CDF ``P(shift(T) <= t) = F(t / (a - (a - 1) t))`` (the inverse shift)."""
    sampler, cdf = BASE_CASES[base_name]
    return ShiftedSampler(sampler, shift), lambda t: cdf(t / (shift - (shift - 1) * np.asarray(t)))


CASES = {
    **BASE_CASES,
    "uniform+shift3": shifted_case("uniform", 3.0),
    "logit_normal+shift3": shifted_case("logit_normal(0,1)", 3.0),
    "mode+shift0.5": shifted_case("mode(1.29)", 0.5),
}


def cdf_from_density(sampler: TimeSampler) -> np.ndarray:
    """CDF on ``GRID`` by integrating ``sampler.density`` numerically (cumulative trapezoid, float64)."""
    pdf = sampler.density(torch.from_numpy(GRID)).numpy()
    return integrate.cumulative_trapezoid(pdf, GRID, initial=0.0)


@pytest.mark.parametrize("case", CASES)
def test_density_integrates_to_one_and_to_the_analytic_cdf(case):
    sampler, cdf = CASES[case]
    numerical = cdf_from_density(sampler)
    assert numerical[-1] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(numerical, cdf(GRID), atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_samples_follow_the_density(case):
    sampler, _ = CASES[case]
    numerical = cdf_from_density(sampler)
    samples = sampler.sample(N_SAMPLES, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (N_SAMPLES,)
    assert bool(((samples >= 0) & (samples <= 1)).all())
    result = stats.kstest(samples.double().numpy(), lambda x: np.interp(x, GRID, numerical))
    assert result.pvalue > 1e-3, f"{case}: KS statistic {result.statistic:.4f}"


def test_ks_check_has_power():
    """The KS test above can fail: logit-normal samples are rejected against the uniform density."""
    samples = LogitNormalSampler().sample(N_SAMPLES, generator=torch.Generator().manual_seed(0))
    assert stats.kstest(samples.numpy(), lambda x: np.clip(x, 0, 1)).pvalue < 1e-6


def test_logit_normal_density_closed_form():
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    expected = [0.0, *(stats.norm.pdf(special.logit(v), 0.5, 0.7) / (v * (1 - v)) for v in (0.1, 0.5, 0.9)), 0.0]
    np.testing.assert_allclose(LogitNormalSampler(m=0.5, s=0.7).density(t).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("s", [-0.5, 0.8, 1.29, 2 / (math.pi - 2) - 1e-3])
def test_mode_density_at_ends_and_middle(s):
    """``pi(t) = 1 / |f'(u)|`` with ``f'(0) = f'(1) = -(1 + s)`` and ``f'(1/2) = -1 - s + s pi / 2``."""
    t = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)  # f(0) = 1, f(1/2) = 1/2, f(1) = 0
    expected = torch.tensor([1 / (1 + s), 1 / (1 + s - s * math.pi / 2), 1 / (1 + s)], dtype=torch.float64)
    torch.testing.assert_close(ModeSampler(s).density(t), expected, rtol=1e-9, atol=0)


def test_mode_density_at_the_lower_bound_of_s_blows_up_at_the_ends():
    """At ``s = -1``, ``f'(0) = f'(1) = 0``: the density is unbounded at both ends and ``2 / pi`` mid-way."""
    density = ModeSampler(-1.0).density(torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    assert density[1].item() == pytest.approx(2 / math.pi, rel=1e-9)
    assert density[0] > 1e6 and density[2] > 1e6  # finite only because bisection stops 1 ulp from the end


def test_mode_inverse_transform_round_trip():
    sampler = ModeSampler(1.29)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(sampler.transform(sampler.inverse_transform(t)), t, atol=1e-13, rtol=0)


def test_mode_with_s_zero_is_uniform():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(ModeSampler(0.0).density(t), torch.ones_like(t))
    mode = ModeSampler(0.0).sample(1000, generator=torch.Generator().manual_seed(3))
    uniform = UniformSampler().sample(1000, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(mode, 1 - uniform)  # f(u) = 1 - u


def test_cosmap_density_is_derivative_of_inverse_map():
    """CosMap's inverse map is ``u(t) = (2 / pi) atan(t / (1 - t))``; its autograd derivative is the density."""
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64, requires_grad=True)
    u = 2 / math.pi * torch.atan(t / (1 - t))
    (du_dt,) = torch.autograd.grad(u.sum(), t)
    torch.testing.assert_close(CosMapSampler().density(t.detach()), du_dt)


def test_shift_time_algebra():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for a in (0.5, 3.0):
        shifted = shift_time(t, a)
        assert shifted[0] == 0 and shifted[-1] == 1
        assert bool((shifted.diff() > 0).all())
        torch.testing.assert_close(shift_time(shifted, 1 / a), t)  # inverse
    torch.testing.assert_close(shift_time(shift_time(t, 2.0), 3.0), shift_time(t, 6.0))  # a group: a, b -> a b
    inner = t[1:-1]
    assert bool((shift_time(inner, 3.0) > inner).all()) and bool((shift_time(inner, 0.5) < inner).all())
    assert shift_time(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)  # 3 * 0.5 / (1 + 2 * 0.5)
    torch.testing.assert_close(shift_time(t, 1.0), t)


def test_shifted_uniform_density_closed_form():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(ShiftedSampler(UniformSampler(), 3.0).density(t), 3.0 / (3.0 - 2.0 * t) ** 2)


def test_shift_above_one_moves_every_sample_towards_noise():
    base = LogitNormalSampler().sample(4000, generator=torch.Generator().manual_seed(1))
    shifted = get_time_sampler("logit_normal", shift=3.0).sample(4000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(shifted, shift_time(base, 3.0))  # same draws, pushed through the shift
    assert bool((shifted >= base).all()) and shifted.mean() > base.mean() + 0.1


def test_resolution_shift_factor():
    assert resolution_shift_factor(256**2, 1024**2) == pytest.approx(4.0)
    assert resolution_shift_factor(64 * 64, 64 * 64) == 1.0
    assert resolution_shift_factor(1024**2, 512**2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive"):
        resolution_shift_factor(0, 256)


def test_get_time_sampler_builds_every_name_with_its_parameters():
    for name, sampler_class in TIME_SAMPLERS.items():
        sampler = get_time_sampler(name)
        assert type(sampler) is sampler_class and sampler.name == name
    logit_normal = get_time_sampler("logit_normal", m=-0.5, s=2.0)
    assert (logit_normal.m, logit_normal.s) == (-0.5, 2.0)
    assert get_time_sampler("mode").s == 1.29
    shifted = get_time_sampler("mode", shift=3.0, s=0.5)
    assert isinstance(shifted, ShiftedSampler) and shifted.shift == 3.0 and shifted.base.s == 0.5
    assert get_time_sampler(logit_normal) is logit_normal


def test_samples_are_reproducible_and_on_the_generator_device():
    for name in TIME_SAMPLERS:
        first = get_time_sampler(name).sample(16, generator=torch.Generator().manual_seed(7))
        second = get_time_sampler(name).sample(16, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(first, second)
        assert first.device == torch.device("cpu") and first.dtype == torch.get_default_dtype()


def test_bad_names_and_parameters_raise():
    with pytest.raises(ValueError, match="'uniform', 'logit_normal', 'mode', 'cosmap'"):
        get_time_sampler("gaussian")
    with pytest.raises(TypeError, match="mu"):
        get_time_sampler("logit_normal", mu=0.0)
    with pytest.raises(TypeError, match="'s'"):
        get_time_sampler("uniform", s=1.0)
    with pytest.raises(TypeError, match="already built"):
        get_time_sampler(UniformSampler(), s=1.0)
    for s in (-1.01, 2 / (math.pi - 2) + 1e-6):
        with pytest.raises(ValueError, match="monotone"):
            get_time_sampler("mode", s=s)
    with pytest.raises(ValueError, match="positive scale"):
        get_time_sampler("logit_normal", s=0.0)
    for shift in (0.0, -2.0):
        with pytest.raises(ValueError, match="shift must be positive"):
            get_time_sampler("uniform", shift=shift)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        CosMapSampler().density(torch.tensor([1.5]))
