"""Toy targets with exact marginal fields, and the small MLP that learns them.

A Gaussian mixture stays a Gaussian mixture along any interpolant ``x_t = alpha_t x0 + sigma_t eps``, so its
density, score and velocity ``v(x, t) = alpha_t' E[x0 | x_t = x] + sigma_t' E[eps | x_t = x]`` are known in closed
form at every ``t`` (SiT, arXiv 2401.08740, Sec. 2, with its 1-D Bernoulli and two-Gaussian targets). Every 2-D
shape (moons, checkerboard, spirals, rings) is a dense mixture of small Gaussians, so a learned field can always be
compared with the exact one.
Used by notebooks/01_interpolants_1d.ipynb and notebooks/02_flows_2d.ipynb.

Example:
    >>> target = get_target("two_gaussians_1d")
    >>> x0 = target.sample(512)                                   # (512, 1)
    >>> v = target.velocity(torch.randn(512, 1), torch.full((512,), 0.5), "linear")   # (512, 1)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from minidit.embeddings import timestep_embedding
from minidit.interpolants import Interpolant, get_interpolant
from minidit.validation import check_choice, check_time, expand_time


class GaussianMixture:
    """Mixture ``sum_k w_k N(mu_k, diag(std_k^2))`` in ``D`` dimensions, with exact fields along any interpolant.

    Along the path, component ``k`` of ``x_t`` is ``N(alpha mu_k, alpha^2 std_k^2 + sigma^2)`` per dimension.
    Given ``x_t = x`` and component ``k`` (Gaussian conditioning, with ``var_k = alpha^2 std_k^2 + sigma^2``):

        E[x0 | x, k]  = mu_k + alpha std_k^2 (x - alpha mu_k) / var_k,
        E[eps | x, k] = sigma (x - alpha mu_k) / var_k,
        grad log p_t(x | k) = -(x - alpha mu_k) / var_k,

    and the mixture fields average these with the responsibilities ``p(k | x_t = x)``. No formula divides by
    ``sigma`` or ``alpha``, so the fields stay finite at ``t = 0`` and ``t = 1`` (for paths whose derivatives do).

    Args:
        means: component means, ``(K, D)`` (list or tensor; 1-D targets use ``D = 1``); a float tensor keeps
            its dtype, which the other parameters follow.
        stds: component standard deviations: a float, ``(K,)`` (isotropic) or ``(K, D)`` (diagonal); all > 0.
        weights: mixture weights, ``(K,)``, non-negative; normalised here. ``None`` means uniform.
    """

    def __init__(
        self,
        means: Tensor | Sequence,
        stds: Tensor | Sequence | float,
        weights: Tensor | Sequence | None = None,
    ):
        means = torch.as_tensor(means)
        means = means if torch.is_floating_point(means) else means.to(torch.get_default_dtype())
        if means.ndim != 2:
            raise ValueError(
                f"means must have shape (K, D); got {tuple(means.shape)}. For 1-D targets pass [[m1], [m2], ...]"
            )
        n_components, dim = means.shape
        stds = torch.as_tensor(stds, dtype=means.dtype)
        if stds.ndim == 0:
            stds = stds.expand(n_components, dim)
        elif stds.shape == (n_components,):
            stds = stds[:, None].expand(n_components, dim)
        if stds.shape != (n_components, dim):
            raise ValueError(
                f"stds must be a float, ({n_components},) or ({n_components}, {dim}); got {tuple(stds.shape)}"
            )
        if not bool((stds > 0).all()):
            raise ValueError("stds must all be > 0 (a point mass has no density); use a small std such as 0.02")
        weights = torch.as_tensor(torch.ones(n_components) if weights is None else weights, dtype=means.dtype)
        if weights.shape != (n_components,) or bool((weights < 0).any()) or not float(weights.sum()) > 0:
            raise ValueError(f"weights must be ({n_components},), non-negative, with a positive sum; got {weights}")
        self.means = means
        self.stds = stds.contiguous()
        self.weights = weights / weights.sum()

    @property
    def dim(self) -> int:
        """Dimension ``D`` of a sample."""
        return self.means.shape[1]

    def to(self, device: torch.device | str) -> GaussianMixture:
        """Move the parameters to ``device`` (in place) and return ``self``."""
        self.means, self.stds, self.weights = (p.to(device) for p in (self.means, self.stds, self.weights))
        return self

    def __repr__(self) -> str:
        return f"GaussianMixture(components={self.means.shape[0]}, dim={self.dim})"

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` samples, ``(n, D)``, on the mixture's device (``generator`` must live there too)."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        noise = torch.randn(n, self.dim, generator=generator, device=self.means.device, dtype=self.means.dtype)
        return self.means[component] + self.stds[component] * noise

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density of the data (``t = 0``) at ``x`` of shape ``(N, D)``; returns ``(N,)``."""
        x = self._check_points(x)
        one = torch.ones(1, 1, dtype=x.dtype, device=x.device)
        return self._mixture_terms(x, one, 0 * one)[3]

    def marginal_log_prob(self, x: Tensor, t: Tensor | float, interpolant: Interpolant | str) -> Tensor:
        """Log-density of ``x_t`` at ``x`` (``(N, D)``) for ``t`` a float or ``(N,)``; returns ``(N,)``."""
        x = self._check_points(x)
        alpha, sigma, _, _ = self._coefficients(x, t, interpolant)
        return self._mixture_terms(x, alpha, sigma)[3]

    def posterior_mean(self, x: Tensor, t: Tensor | float, interpolant: Interpolant | str) -> Tensor:
        """Denoiser ``E[x0 | x_t = x]`` for ``x`` ``(N, D)``, ``t`` ``(N,)`` or a float; returns ``(N, D)``."""
        return self._conditional_expectations(x, t, interpolant)[0]

    def posterior_noise(self, x: Tensor, t: Tensor | float, interpolant: Interpolant | str) -> Tensor:
        """``E[eps | x_t = x]`` for ``x`` ``(N, D)``, ``t`` ``(N,)`` or a float; returns ``(N, D)``."""
        return self._conditional_expectations(x, t, interpolant)[1]

    def velocity(self, x: Tensor, t: Tensor | float, interpolant: Interpolant | str) -> Tensor:
        """Marginal velocity ``alpha' E[x0 | x] + sigma' E[eps | x]``, ``(N, D)``; the field the ODE integrates.

        Finite on all of [0, 1] for the linear and GVP paths; the VP path has ``sigma' = inf`` at ``t = 0``.
        """
        x0_mean, noise_mean, d_alpha, d_sigma = self._conditional_expectations(x, t, interpolant)
        return d_alpha * x0_mean + d_sigma * noise_mean

    def score(self, x: Tensor, t: Tensor | float, interpolant: Interpolant | str) -> Tensor:
        """Score ``grad_x log p_t(x)`` for ``x`` ``(N, D)``, ``t`` ``(N,)`` or a float; returns ``(N, D)``."""
        x = self._check_points(x)
        alpha, sigma, _, _ = self._coefficients(x, t, interpolant)
        centred, var, resp, _ = self._mixture_terms(x, alpha, sigma)
        return (resp * (-centred / var)).sum(1)

    @torch.no_grad()
    def velocity_error(
        self,
        velocity_fn: Callable[[Tensor, Tensor], Tensor],
        interpolant: Interpolant | str,
        times: Tensor,
        n: int = 4000,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Relative error of a velocity field against the exact one, at each time: ``E|f - v|^2 / E|v|^2``.

        The expectation is over ``x_t`` drawn from the path (the same ``n`` pairs ``(x0, eps)`` at every time).

        Args:
            velocity_fn: ``f(x (n, D), t (n,)) -> (n, D)``, e.g. a trained network.
            interpolant: the path both fields belong to.
            times: ``(K,)`` times in [0, 1].
        Returns:
            ``(K,)`` relative squared errors.
        """
        path = get_interpolant(interpolant)
        x0 = self.sample(n, generator=generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        errors = []
        for t in check_time(times):
            t_batch = t.to(x0.dtype).expand(n)
            x_t = path.interpolate(x0, noise, t_batch)
            exact = self.velocity(x_t, t_batch, path)
            errors.append((velocity_fn(x_t, t_batch) - exact).pow(2).sum() / exact.pow(2).sum())
        return torch.stack(errors)

    def _check_points(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be a tensor of shape (N, D) = (N, {self.dim}); got {shape} (1-D: x[:, None])")
        return x

    def _coefficients(self, x: Tensor, t: Tensor | float, interpolant: Interpolant | str) -> tuple[Tensor, ...]:
        """``(alpha, sigma, d_alpha, d_sigma)``, each ``(N, 1)`` (or ``(1, 1)`` for a scalar ``t``)."""
        t = expand_time(check_time(t).to(x), x)  # (N, 1)
        return get_interpolant(interpolant).coefficients(t)

    def _mixture_terms(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-component terms of ``x_t``'s mixture at ``x`` ``(N, D)``, for ``alpha``, ``sigma`` of shape ``(N, 1)``.

        Returns ``(x - alpha mu_k  (N, K, D), var_k  (N, K, D), responsibilities (N, K, 1), log p_t(x)  (N,))``;
        responsibilities use logsumexp, so far-away points do not underflow to 0 / 0.
        """
        means, variances = self.means.to(x), self.stds.to(x) ** 2
        alpha, sigma = alpha[..., None], sigma[..., None]  # (N, 1, 1)
        centred = x[:, None, :] - alpha * means  # (N, K, D)
        var = (alpha**2 * variances + sigma**2).expand_as(centred)  # (N, K, D)
        log_normal = -0.5 * (centred**2 / var + torch.log(2 * math.pi * var)).sum(-1)  # (N, K)
        log_joint = torch.log(self.weights.to(x)) + log_normal  # (N, K)
        log_density = torch.logsumexp(log_joint, dim=1)  # (N,)
        responsibilities = torch.exp(log_joint - log_density[:, None])[..., None]  # (N, K, 1)
        return centred, var, responsibilities, log_density

    def _conditional_expectations(
        self, x: Tensor, t: Tensor | float, interpolant: Interpolant | str
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(E[x0 | x] (N, D), E[eps | x] (N, D), d_alpha (N, 1), d_sigma (N, 1))``."""
        x = self._check_points(x)
        alpha, sigma, d_alpha, d_sigma = self._coefficients(x, t, interpolant)
        centred, var, resp, _ = self._mixture_terms(x, alpha, sigma)
        x0_mean = (resp * (self.means.to(x) + alpha[..., None] * self.stds.to(x) ** 2 * centred / var)).sum(1)
        noise_mean = (resp * (sigma[..., None] * centred / var)).sum(1)
        return x0_mean, noise_mean, d_alpha, d_sigma


def _on_circle(radius: float, n: int) -> Tensor:
    """``n`` points evenly spaced on a circle of ``radius`` around 0, ``(n, 2)``."""
    angle = 2 * math.pi * torch.arange(n) / n
    return radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)


def _bernoulli_1d() -> GaussianMixture:
    return GaussianMixture([[-1.0], [1.0]], 0.02)


def _two_gaussians_1d() -> GaussianMixture:
    return GaussianMixture([[-1.0], [2.0]], 0.3)


def _eight_gaussians() -> GaussianMixture:
    return GaussianMixture(_on_circle(2.0, 8), 0.1)


def _two_moons() -> GaussianMixture:
    """sklearn-style moons (upper arc and shifted lower arc), centred and scaled by 2: 128 components."""
    angle = torch.linspace(0, math.pi, 64)
    upper = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # (64, 2)
    lower = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)  # (64, 2)
    return GaussianMixture(2 * (torch.cat([upper, lower]) - torch.tensor([0.5, 0.25])), 0.12)


def _checkerboard() -> GaussianMixture:
    """8 squares of side 1.5 on [-3, 3]^2, each filled by a 5 x 5 grid of Gaussians: 200 components."""
    offsets = (torch.arange(5) + 0.5) * 0.3  # cell-centre grid inside one square
    grid = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1).reshape(-1, 2)  # (25, 2)
    corners = [(1.5 * i - 3, 1.5 * j - 3) for i in range(4) for j in range(4) if (i + j) % 2 == 0]
    return GaussianMixture(torch.cat([grid + torch.tensor(corner) for corner in corners]), 0.15)


def _spirals() -> GaussianMixture:
    """Two interleaved spiral arms ``r = 2.8 theta / (2.5 pi)``, 100 components each, spaced evenly in arc length."""
    theta_min, theta_max = 0.5 * math.pi, 2.5 * math.pi
    theta = torch.sqrt(torch.linspace(theta_min**2, theta_max**2, 100))  # arc length grows like theta^2
    radius = 2.8 * theta / theta_max
    arms = [radius[:, None] * torch.stack([torch.cos(theta + s), torch.sin(theta + s)], 1) for s in (0, math.pi)]
    return GaussianMixture(torch.cat(arms), 0.1)


def _rings() -> GaussianMixture:
    """Three concentric rings of radius 0.9, 1.8, 2.7 with 32, 64, 96 components."""
    return GaussianMixture(torch.cat([_on_circle(0.9 * i, 32 * i) for i in (1, 2, 3)]), 0.1)


TARGETS: dict[str, Callable[[], GaussianMixture]] = {
    "bernoulli_1d": _bernoulli_1d,
    "two_gaussians_1d": _two_gaussians_1d,
    "8gaussians": _eight_gaussians,
    "two_moons": _two_moons,
    "checkerboard": _checkerboard,
    "spirals": _spirals,
    "rings": _rings,
}


def get_target(name: str) -> GaussianMixture:
    """Build a toy target by name (see ``TARGETS``); the 2-D ones fit roughly in [-3, 3]^2.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    return TARGETS[check_choice("target", name, TARGETS)]()


class ToyData:
    """Training batches of a toy target for ``minidit.train.Trainer``; batch ``step`` depends only on ``(seed, step)``.

    Args:
        target: a name from ``TARGETS``.
        seed: base seed; resuming a run at step ``k`` draws exactly the batches the uninterrupted run drew.
    """

    def __init__(self, target: str = "8gaussians", seed: int = 0):
        self.target, self.seed = get_target(target), seed

    def get_batch(self, step: int, batch_size: int) -> tuple[Tensor, dict]:
        """Return ``(points (B, D), {})``, the same for the same ``step``."""
        # torch's CPU generator keeps only 32 bits of a seed, so mix (seed, step) into 32 bits first
        mixed = int(np.random.SeedSequence([self.seed, step]).generate_state(1)[0])
        return self.target.sample(batch_size, generator=torch.Generator().manual_seed(mixed)), {}


class ToyMLP(nn.Module):
    """MLP for low-dimensional flows: ``f(x, t) -> (N, D)``, read as velocity, score, noise or data by the loss.

    The time enters as a sinusoidal embedding passed through a two-layer MLP and added to the first hidden layer.

    Args:
        dim: data dimension ``D``.
        hidden: width of the hidden layers.
        depth: number of hidden layers (>= 1).
        time_dim: size of the sinusoidal time embedding.
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, time_dim: int = 64):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1 (the number of hidden layers); got {depth}")
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.input_layer = nn.Linear(dim, hidden)
        hidden_layers = [module for _ in range(depth - 1) for module in (nn.SiLU(), nn.Linear(hidden, hidden))]
        self.body = nn.Sequential(*hidden_layers, nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Map ``x`` ``(N, D)`` and ``t`` ``(N,)`` (or a scalar tensor) to ``(N, D)``."""
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        time_features = self.time_mlp(timestep_embedding(t, self.time_dim).to(x.dtype))  # (N, hidden)
        return self.body(self.input_layer(x) + time_features)
