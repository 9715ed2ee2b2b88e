"""Tests for minidit.metrics: closed-form distances, unbiasedness, and exact trajectory costs."""
import math

import pytest
import torch

from minidit.metrics import NFECounter, energy_distance, kinetic_energy, path_length, sliced_wasserstein


def normal(n: int, dim: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sliced_wasserstein_of_identical_sets_is_zero():
    x = normal(500, 3, seed=0)
    assert sliced_wasserstein(x, x, generator=seeded()).item() == 0.0
    assert sliced_wasserstein(x, x[torch.randperm(500)], generator=seeded()).item() == 0.0


def test_sliced_wasserstein_of_shifted_gaussians_1d_is_the_shift():
    """W_2(N(0, 1), N(m, 1)) = |m|; in 1-D every direction is +-1, so SW_2 = W_2."""
    x, y = normal(20_000, 1, seed=1), normal(20_000, 1, seed=2, shift=1.5)
    assert sliced_wasserstein(x, y, n_projections=4, generator=seeded()).item() == pytest.approx(1.5, abs=0.03)


def test_sliced_wasserstein_of_shifted_gaussians_in_3d():
    """Along theta the shift is theta . m, and E[(theta . m)^2] = |m|^2 / D on the sphere: SW_2 = |m| / sqrt(D)."""
    shift = torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)
    x, y = normal(2000, 3, seed=3), normal(2000, 3, seed=4) + shift
    value = sliced_wasserstein(x, y, n_projections=1000, generator=seeded()).item()
    assert value == pytest.approx(3 / math.sqrt(3), rel=0.05)


def test_sliced_wasserstein_with_different_sizes_interpolates_quantiles():
    # evenly spaced points on [0, 1] have the same interpolated quantile function for any size: exactly 0
    x, y = torch.linspace(0, 1, 7)[:, None], torch.linspace(0, 1, 11)[:, None]
    assert sliced_wasserstein(x, y, generator=seeded()).item() == pytest.approx(0.0, abs=1e-6)
    x, y = normal(3000, 1, seed=5), normal(5000, 1, seed=6, shift=-1.0)
    assert sliced_wasserstein(x, y, generator=seeded()).item() == pytest.approx(1.0, abs=0.05)


def test_sliced_wasserstein_is_translation_invariant_and_scales_linearly():
    x, y = normal(300, 2, seed=7), normal(300, 2, seed=8) * 2
    base = sliced_wasserstein(x, y, generator=seeded(1))
    offset = torch.tensor([5.0, -3.0], dtype=torch.float64)
    torch.testing.assert_close(sliced_wasserstein(x + offset, y + offset, generator=seeded(1)), base)
    torch.testing.assert_close(sliced_wasserstein(3 * x, 3 * y, generator=seeded(1)), 3 * base)


def test_energy_distance_hand_computed():
    """x = {0, 1}, y = {3, 5}: 2 * mean|x - y| = 2 * 3.5, E|X - X'| = 1, E|Y - Y'| = 2 (U-statistics): 7 - 1 - 2."""
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[3.0], [5.0]])
    assert energy_distance(x, y).item() == pytest.approx(4.0)
    # one sample against itself: the cross term keeps its zero diagonal, so the U-statistic is -2 E|X - X'| / n
    assert energy_distance(x, x).item() == pytest.approx(-1.0)


def test_energy_distance_is_unbiased_for_one_distribution():
    """Mean over many small batches is 0 (a V-statistic would be biased up by sqrt(pi) (1/n + 1/m) ~ 0.44 here)."""
    values = torch.stack([energy_distance(normal(8, 2, seed=2 * i), normal(8, 2, seed=2 * i + 1)) for i in range(400)])
    assert abs(values.mean().item()) < 4 * values.std().item() / math.sqrt(len(values))
    assert 4 * values.std().item() / math.sqrt(len(values)) < 0.1  # the check above could catch that bias


def test_energy_distance_of_shifted_gaussians_matches_closed_form():
    """X - Y ~ N(m, 2) and X - X' ~ N(0, 2); E|N(mu, s^2)| = s sqrt(2/pi) exp(-mu^2 / 2s^2) + mu (1 - 2 Phi(-mu/s))."""

    def mean_abs(mu: float, s: float) -> float:
        return s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s**2)) + mu * math.erf(mu / (s * math.sqrt(2)))

    shift = 1.0
    exact = 2 * mean_abs(shift, math.sqrt(2)) - 2 * mean_abs(0.0, math.sqrt(2))
    value = energy_distance(normal(3000, 1, seed=9), normal(3000, 1, seed=10, shift=shift)).item()
    assert value == pytest.approx(exact, abs=0.03)
    assert exact > 0.3


def test_path_length_of_a_straight_line_is_its_length():
    start, end = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([4.0, 2.0, 0.5])
    fractions = torch.tensor([0.0, 0.05, 0.3, 0.31, 0.8, 1.0])  # uneven steps along the segment
    trajectory = (start + fractions[:, None] * (end - start))[:, None].expand(6, 4, 3)  # (K, N, 3)
    torch.testing.assert_close(path_length(trajectory), torch.full((4,), 5.0))
    images = trajectory.reshape(6, 4, 3, 1, 1)  # (K, N, C, H, W): per-sample dimensions are flattened
    torch.testing.assert_close(path_length(images), torch.full((4,), 5.0))


def test_kinetic_energy_of_constant_velocity_is_speed_squared_times_duration():
    velocity = torch.tensor([[1.0, 2.0], [-3.0, 0.0]], dtype=torch.float64)  # (N, 2), |v|^2 = 5 and 9
    times = torch.tensor([1.0, 0.9, 0.5, 0.45, 0.1, 0.0], dtype=torch.float64)  # uneven, from noise to data
    trajectory = times[:, None, None] * velocity  # (K, N, 2)
    torch.testing.assert_close(kinetic_energy(trajectory, times), torch.tensor([5.0, 9.0], dtype=torch.float64))


def test_kinetic_energy_bounds_path_length_by_cauchy_schwarz():
    """KE >= L^2 / T, with equality at constant speed (a circle at uniform pace) and strictly otherwise."""
    times = torch.linspace(0, 2, 101, dtype=torch.float64)
    angle = math.pi * times
    circle = torch.stack([torch.cos(angle), torch.sin(angle)], -1)[:, None]  # (K, 1, 2)
    torch.testing.assert_close(kinetic_energy(circle, times), path_length(circle) ** 2 / 2)
    accelerating = (times**2)[:, None, None].expand(101, 1, 2)  # same direction, speed grows with t
    assert (kinetic_energy(accelerating, times) > 1.3 * path_length(accelerating) ** 2 / 2).all()


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="same number of features"):
        sliced_wasserstein(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        energy_distance(torch.zeros(1, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"times must have shape \(K,\) = \(3,\)"):
        kinetic_energy(torch.zeros(3, 5, 2), torch.linspace(0, 1, 4))
    with pytest.raises(ValueError, match="strictly monotone"):
        kinetic_energy(torch.zeros(3, 5, 2), torch.tensor([0.0, 0.5, 0.5]))


def test_nfe_counter_counts_calls_and_passes_through():
    counted = NFECounter(lambda x, t, scale=1.0: -scale * x)
    x = torch.ones(3, 2)
    for step in range(7):
        torch.testing.assert_close(counted(x, torch.full((3,), step / 7), scale=2.0), -2 * x)
    assert counted.nfe == 7
    counted.reset()
    assert counted.nfe == 0
    counted(x, torch.zeros(3))
    assert counted.nfe == 1
