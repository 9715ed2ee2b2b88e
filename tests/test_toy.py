"""Tests for minidit.toy: the mixture's samples and densities, and its exact score and velocity fields."""
import math

import pytest
import torch

from minidit.interpolants import INTERPOLANTS, get_interpolant
from minidit.toy import TARGETS, GaussianMixture, ToyData, ToyMLP, get_target
from minidit.weighting import lambda_t, training_loss

PATHS = list(INTERPOLANTS)
TARGETS_1D = ["bernoulli_1d", "two_gaussians_1d"]
SHAPES_2D = ["two_moons", "checkerboard", "spirals", "rings"]


def anisotropic_mixture() -> GaussianMixture:
    return GaussianMixture(
        means=[[0.0, 1.0], [3.0, -1.0], [-2.0, 0.5]],
        stds=[[0.5, 0.2], [0.3, 1.0], [0.1, 0.1]],
        weights=[2.0, 5.0, 3.0],  # normalised to 0.2, 0.5, 0.3
    )


def mixture_moments(mixture: GaussianMixture) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean (D,) and covariance (D, D): sum_k w_k (diag(std_k^2) + mu_k mu_k^T) - mean mean^T."""
    w, mu, var = mixture.weights.double(), mixture.means.double(), mixture.stds.double() ** 2
    mean = w @ mu
    second = torch.einsum("k,ki,kj->ij", w, mu, mu) + torch.diag(w @ var)
    return mean, second - torch.outer(mean, mean)


def points_on_path(target: GaussianMixture, path_name: str, n: int, seed: int, t_range=(0.0, 1.0)):
    """x_t drawn from the path's marginal at random t in t_range, in float64."""
    g = torch.Generator().manual_seed(seed)
    x0 = target.sample(n, generator=g).double()
    t = t_range[0] + (t_range[1] - t_range[0]) * torch.rand(n, generator=g, dtype=torch.float64)
    x = get_interpolant(path_name).interpolate(x0, torch.randn(x0.shape, generator=g, dtype=torch.float64), t)
    return x, t


@pytest.mark.parametrize("name", ["anisotropic", "8gaussians", "two_gaussians_1d"])
def test_sample_moments_match_mixture(name):
    mixture = anisotropic_mixture() if name == "anisotropic" else get_target(name)
    x = mixture.sample(200_000, generator=torch.Generator().manual_seed(0)).double()
    mean, cov = mixture_moments(mixture)
    standard_error = (cov.diag() / x.shape[0]).sqrt()
    assert (x.mean(0) - mean).abs().le(5 * standard_error).all()
    torch.testing.assert_close(torch.cov(x.T).reshape(cov.shape), cov, atol=0.03, rtol=0.02)


@pytest.mark.parametrize("name", TARGETS_1D)
@pytest.mark.parametrize("path_name", PATHS)
def test_marginal_density_integrates_to_one_1d(name, path_name):
    target = get_target(name)
    grid = torch.linspace(-8, 8, 16_001, dtype=torch.float64)[:, None]  # spacing 1e-3, << std 0.02
    assert torch.trapezoid(target.log_prob(grid).exp(), grid[:, 0]).item() == pytest.approx(1, abs=1e-6)
    for t in (0.0, 0.1, 0.5, 0.9, 1.0):
        density = target.marginal_log_prob(grid, t, path_name).exp()
        assert torch.trapezoid(density, grid[:, 0]).item() == pytest.approx(1, abs=1e-6)


def test_log_prob_is_the_t0_marginal_and_matches_the_mixture_formula():
    mixture = anisotropic_mixture()
    x = torch.randn(64, 2, dtype=torch.float64) * 2
    by_hand = sum(
        w * torch.distributions.Normal(mu.double(), s.double()).log_prob(x).sum(-1).exp()
        for w, mu, s in zip(mixture.weights.double(), mixture.means, mixture.stds)
    ).log()
    torch.testing.assert_close(mixture.log_prob(x), by_hand)
    torch.testing.assert_close(mixture.marginal_log_prob(x, torch.zeros(64), "vp"), by_hand)


@pytest.mark.parametrize("name", list(TARGETS))
@pytest.mark.parametrize("path_name", PATHS)
def test_score_is_gradient_of_marginal_log_prob(name, path_name):
    target = get_target(name)
    x, t = points_on_path(target, path_name, 64, seed=1)
    t[:2] = torch.tensor([0.0, 1.0], dtype=torch.float64)  # both ends included
    x.requires_grad_(True)
    (autograd_score,) = torch.autograd.grad(target.marginal_log_prob(x, t, path_name).sum(), x)
    torch.testing.assert_close(target.score(x.detach(), t, path_name), autograd_score, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["two_gaussians_1d", "8gaussians", "spirals"])
@pytest.mark.parametrize("path_name", PATHS)
def test_velocity_satisfies_sit_score_identity(name, path_name):
    """v = (alpha'/alpha) x - lambda_t sigma_t s  (SiT Sec. 2.3), an identity between two closed forms."""
    target = get_target(name)
    x, t = points_on_path(target, path_name, 128, seed=2, t_range=(0.02, 0.98))
    a, s, da, _ = (c[:, None] for c in get_interpolant(path_name).coefficients(t))
    from_score = da / a * x - lambda_t(t, path_name)[:, None] * s * target.score(x, t, path_name)
    torch.testing.assert_close(target.velocity(x, t, path_name), from_score, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", list(TARGETS))
def test_posterior_means_recombine_to_x(name):
    """x_t = alpha E[x0 | x_t] + sigma E[eps | x_t] holds exactly, since it holds before taking expectations."""
    target = get_target(name)
    for path_name in PATHS:
        x, t = points_on_path(target, path_name, 64, seed=3)
        a, s = (c[:, None] for c in get_interpolant(path_name).coefficients(t)[:2])
        recombined = a * target.posterior_mean(x, t, path_name) + s * target.posterior_noise(x, t, path_name)
        torch.testing.assert_close(recombined, x)


def test_posterior_mean_is_the_conditional_expectation():
    """Monte Carlo: the residual x0 - E[x0 | x_t] is orthogonal to every function of x_t (here 1, x, sin 3x)."""
    target, n = get_target("two_gaussians_1d"), 20_000
    g = torch.Generator().manual_seed(4)
    x0 = target.sample(n, generator=g).double()
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    for path_name in PATHS:
        t = torch.full((n,), 0.4, dtype=torch.float64)
        x = get_interpolant(path_name).interpolate(x0, noise, t)
        for residual in (x0 - target.posterior_mean(x, t, path_name), noise - target.posterior_noise(x, t, path_name)):
            for test_fn in (torch.ones_like(x), x, torch.sin(3 * x)):
                product = residual * test_fn
                assert abs(product.mean().item()) < 5 * product.std().item() / math.sqrt(n)
        # and it beats a slightly different predictor in mean squared error
        mse = (x0 - target.posterior_mean(x, t, path_name)).pow(2).mean()
        assert mse < (x0 - 1.05 * target.posterior_mean(x, t, path_name)).pow(2).mean()


@pytest.mark.parametrize("name", ["two_gaussians_1d", "8gaussians"])
@pytest.mark.parametrize("path_name", PATHS)
def test_velocity_satisfies_continuity_equation(name, path_name):
    """d log p_t / dt + div v + v . grad log p_t = 0 (d p_t/dt + div(p_t v) = 0 divided by p_t), by autograd."""
    target = get_target(name)
    if target.dim == 1:  # a grid in x times a grid in t
        xs = torch.linspace(-3, 4, 71, dtype=torch.float64)
        ts = torch.tensor([0.05, 0.3, 0.6, 0.9], dtype=torch.float64)
        x, t = xs.repeat(len(ts))[:, None], ts.repeat_interleave(len(xs))  # (284, 1), (284,)
    else:
        x, t = points_on_path(target, path_name, 128, seed=5, t_range=(0.05, 0.95))
    x.requires_grad_(True)
    t.requires_grad_(True)
    (d_log_p_dt,) = torch.autograd.grad(target.marginal_log_prob(x, t, path_name).sum(), t)
    velocity = target.velocity(x, t, path_name)
    divergence = sum(
        torch.autograd.grad(velocity[:, d].sum(), x, retain_graph=True)[0][:, d] for d in range(target.dim)
    )
    transport = (velocity * target.score(x, t, path_name)).sum(1)
    residual = d_log_p_dt + divergence + transport
    assert residual.abs().max().item() < 1e-8 * (1 + d_log_p_dt.abs().max().item())


@pytest.mark.parametrize("name", list(TARGETS))
def test_linear_velocity_at_the_ends(name):
    """Linear path: at t = 1, x_t = eps, so v = E[eps - x0 | eps = x] = x - E[x0]; at t = 0, v = E[eps] - x = -x."""
    target = get_target(name)
    x = 3 * torch.randn(32, target.dim, dtype=torch.float64)
    mean = target.weights.double() @ target.means.double()
    torch.testing.assert_close(target.velocity(x, torch.ones(32), "linear"), x - mean)
    torch.testing.assert_close(target.velocity(x, 0.0, "linear"), -x)


@pytest.mark.parametrize("path_name", PATHS)
def test_single_gaussian_reduces_to_closed_form(path_name):
    """x_t ~ N(m_t, S_t^2) with m_t = alpha mu, S_t^2 = alpha^2 std^2 + sigma^2; the flow map is affine, so
    v = m_t' + (S_t' / S_t)(x - m_t) with S_t S_t' = alpha alpha' std^2 + sigma sigma', and s = -(x - m_t) / S_t^2."""
    mu, std = torch.tensor([0.7, -1.5], dtype=torch.float64), torch.tensor([0.4, 1.3], dtype=torch.float64)
    gaussian = GaussianMixture(mu[None], std[None])
    x = torch.randn(50, 2, dtype=torch.float64) * 2
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    a, s, da, ds = (c[:, None] for c in get_interpolant(path_name).coefficients(t))
    m, var = a * mu, a**2 * std**2 + s**2
    velocity = da * mu + (a * da * std**2 + s * ds) / var * (x - m)
    torch.testing.assert_close(gaussian.velocity(x, t, path_name), velocity)
    torch.testing.assert_close(gaussian.score(x, t, path_name), -(x - m) / var)
    log_density = torch.distributions.Normal(m, var.sqrt()).log_prob(x).sum(-1)
    torch.testing.assert_close(gaussian.marginal_log_prob(x, t, path_name), log_density)


def test_exact_velocity_transports_noise_to_the_target():
    """Euler-integrating the exact linear velocity from t = 1 to 0 turns N(0, 1) into the two-Gaussian mixture."""
    target, n, steps = get_target("two_gaussians_1d"), 20_000, 200
    x = torch.randn(n, 1, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t) * target.velocity(x, torch.full((n,), t.item(), dtype=torch.float64), "linear")
    mean, cov = mixture_moments(target)
    assert x.mean().item() == pytest.approx(mean.item(), abs=0.05)
    assert x.var().item() == pytest.approx(cov.item(), rel=0.03)
    assert (x < 0.5).double().mean().item() == pytest.approx(0.5, abs=0.02)  # equal weights


def test_targets_match_their_definitions():
    bernoulli, two = get_target("bernoulli_1d"), get_target("two_gaussians_1d")
    torch.testing.assert_close(bernoulli.means, torch.tensor([[-1.0], [1.0]]))
    torch.testing.assert_close(bernoulli.stds, torch.full((2, 1), 0.02))
    torch.testing.assert_close(two.means, torch.tensor([[-1.0], [2.0]]))
    torch.testing.assert_close(two.stds, torch.full((2, 1), 0.3))
    torch.testing.assert_close(two.weights, torch.tensor([0.5, 0.5]))
    eight = get_target("8gaussians")
    torch.testing.assert_close(eight.means.norm(dim=1), torch.full((8,), 2.0))
    for name in SHAPES_2D:
        target = get_target(name)
        assert target.dim == 2 and 64 <= target.means.shape[0] <= 200
        assert target.means.abs().max() <= 3.0
        torch.testing.assert_close(target.weights.sum(), torch.tensor(1.0))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="valid targets are: 'bernoulli_1d'"):
        get_target("moons")
    with pytest.raises(ValueError, match="means must have shape"):
        GaussianMixture([-1.0, 2.0], 0.3)
    with pytest.raises(ValueError, match="stds must all be > 0"):
        GaussianMixture([[0.0]], 0.0)
    with pytest.raises(ValueError, match="weights must be"):
        GaussianMixture([[0.0], [1.0]], 0.1, weights=[1.0, -1.0])
    target = get_target("8gaussians")
    with pytest.raises(ValueError, match=r"shape \(N, D\) = \(N, 2\)"):
        target.velocity(torch.zeros(4, 3), torch.zeros(4), "linear")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        target.score(torch.zeros(4, 2), torch.full((4,), 1.5), "linear")
    with pytest.raises(ValueError, match="valid interpolants"):
        target.score(torch.zeros(4, 2), torch.zeros(4), "cosine")


def test_toy_mlp_parameter_count_and_time_input():
    # input dim*h + h, time MLP (T*h + h) + (h*h + h), (depth - 1) hidden (h*h + h), output h*dim + dim
    for depth, expected in ((1, 96 + 544 + 1056 + 66), (3, 96 + 544 + 1056 + 2 * 1056 + 66)):
        model = ToyMLP(2, hidden=32, depth=depth, time_dim=16)
        assert sum(p.numel() for p in model.parameters()) == expected
    x = torch.randn(5, 2)
    assert model(x, torch.rand(5)).shape == (5, 2)
    torch.testing.assert_close(model(x, torch.tensor(0.3)), model(x, torch.full((5,), 0.3)))
    assert not torch.allclose(model(x, torch.zeros(5)), model(x, torch.ones(5)))
    with pytest.raises(ValueError, match="depth must be >= 1"):
        ToyMLP(2, depth=0)


def test_toy_mlp_learns_the_exact_velocity():
    """A short velocity-matching run brings the network close to the analytic field it should converge to."""
    torch.manual_seed(0)
    target, model = get_target("two_gaussians_1d"), ToyMLP(1, hidden=64, depth=2, time_dim=16)
    g = torch.Generator().manual_seed(7)
    x, t = points_on_path(target, "linear", 2048, seed=8)
    exact = target.velocity(x, t, "linear").float()

    def relative_error() -> float:
        with torch.no_grad():
            return ((model(x.float(), t.float()) - exact).pow(2).mean() / exact.pow(2).mean()).item()

    before = relative_error()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(400):
        loss, _ = training_loss(model, target.sample(256, generator=g), "linear", "velocity", generator=g)
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
    assert relative_error() < min(0.08, 0.2 * before)


def test_velocity_error_is_zero_for_the_exact_field_and_one_for_zero():
    target = get_target("8gaussians")
    times = torch.tensor([0.1, 0.5, 0.9])
    exact = target.velocity_error(lambda x, t: target.velocity(x, t, "linear"), "linear", times, n=500)
    zero = target.velocity_error(lambda x, t: torch.zeros_like(x), "linear", times, n=500)
    doubled = target.velocity_error(lambda x, t: 2 * target.velocity(x, t, "linear"), "linear", times, n=500)
    assert exact.abs().max() < 1e-10
    torch.testing.assert_close(zero, torch.ones(3))
    torch.testing.assert_close(doubled, torch.ones(3))


def test_toy_batches_depend_only_on_seed_and_step():
    data = ToyData("8gaussians", seed=1)
    assert torch.equal(data.get_batch(3, 16)[0], data.get_batch(3, 16)[0])
    assert not torch.equal(data.get_batch(3, 16)[0], data.get_batch(4, 16)[0])
    assert not torch.equal(data.get_batch(3, 16)[0], ToyData("8gaussians", seed=2).get_batch(3, 16)[0])
    points = data.get_batch(0, 4000)[0]
    radii = points.norm(dim=1)  # the 8 modes sit on one circle
    assert radii.std() < 0.2 * radii.mean()
