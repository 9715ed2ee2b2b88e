"""Interpolants: the paths that carry data to noise.

An interpolant builds ``x_t = alpha_t * x0 + sigma_t * eps`` with ``eps ~ N(0, I)``; ``t = 0`` is data and
``t = 1`` is noise (``alpha_0 = sigma_1 = 1``, ``alpha_1 = sigma_0 = 0``). Its time derivative gives the
conditional velocity ``u_t = alpha_t' x0 + sigma_t' eps`` that a velocity model regresses on.
Three paths from SiT (Ma et al. 2024, arXiv 2401.08740, Sec. 2.2 / Table 1):

- ``"linear"`` (rectified flow, also SD3 Sec. 2): ``alpha = 1 - t``, ``sigma = t``;
- ``"gvp"`` (generalised variance preserving): ``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)``;
- ``"vp"`` (SBDM-VP): ``alpha = exp(-t^2 (b1 - b0) / 4 - t b0 / 2)``, ``sigma = sqrt(1 - alpha^2)``, b0 = 0.1, b1 = 20.

and DDPM's discrete schedule (Ho et al. 2020, arXiv 2006.11239, Sec. 4; the one DiT trains with), SiT's first design
axis (discrete versus continuous time): ``"ddpm"``, ``alpha = sqrt(alpha_bar)``, ``sigma = sqrt(1 - alpha_bar)`` at
step ``1000 t``; it has ``sigma_0 = 0.01`` and ``alpha_1 ~ 0.0063``, not 0 (see ``DDPMInterpolant``).

Each schedule returns its values and its derivatives in closed form, so nothing downstream differentiates
numerically. Used by notebooks/01_interpolants_1d.ipynb, solutions/01_interpolants.ipynb and
solutions/16_discrete_time.ipynb.

Example:
    >>> path = get_interpolant("linear")
    >>> x0, eps, t = torch.randn(8, 2), torch.randn(8, 2), torch.rand(8)
    >>> x_t = path.interpolate(x0, eps, t)               # (8, 2)
    >>> u_t = path.velocity_target(x0, eps, t)           # (8, 2) = eps - x0
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from minidit.validation import check_choice, check_same_shape, check_time, expand_time


class Interpolant:
    """Base class: a schedule ``(alpha_t, sigma_t)`` with closed-form derivatives.

    Subclasses implement ``alpha``, ``sigma``, ``d_alpha`` and ``d_sigma``; each takes ``t`` of any shape with
    values in [0, 1] and returns a tensor of the same shape.
    """

    name: str = "base"

    def alpha(self, t: Tensor) -> Tensor:
        """Data coefficient ``alpha_t``."""
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        """Noise coefficient ``sigma_t``."""
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        """Time derivative ``d alpha_t / dt``."""
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        """Time derivative ``d sigma_t / dt``."""
        raise NotImplementedError

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return ``(alpha_t, sigma_t, d_alpha_t, d_sigma_t)`` for ``t`` of any shape."""
        t = check_time(t)
        return self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t)

    def interpolate(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Point on the path, ``x_t = alpha_t x0 + sigma_t eps``.

        Args:
            x0: data, ``(N, ...)``.
            noise: Gaussian noise ``eps``, same shape as ``x0``.
            t: times, ``(N,)``.
        Returns:
            ``x_t``, ``(N, ...)``.
        """
        check_same_shape(x0=x0, noise=noise)
        t = expand_time(check_time(t), x0)
        return self.alpha(t) * x0 + self.sigma(t) * noise

    def velocity_target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Conditional velocity ``u_t = alpha_t' x0 + sigma_t' eps`` (SiT eq. 3), shape ``(N, ...)``."""
        check_same_shape(x0=x0, noise=noise)
        t = expand_time(check_time(t), x0)
        return self.d_alpha(t) * x0 + self.d_sigma(t) * noise

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearInterpolant(Interpolant):
    """Rectified flow: ``alpha = 1 - t``, ``sigma = t`` (straight lines from data to noise)."""

    name = "linear"

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)


class GVPInterpolant(Interpolant):
    """Generalised variance preserving: ``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)``, so ``alpha^2 + sigma^2 = 1``."""

    name = "gvp"

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * t)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)


class VPInterpolant(Interpolant):
    """SBDM-VP: ``alpha = exp(-t^2 (b1 - b0) / 4 - t b0 / 2)``, ``sigma = sqrt(1 - alpha^2)``.

    ``alpha_1 = exp(-(b0 + b1) / 4) = exp(-5.025) ~ 0.0066``, not exactly 0; ``d_sigma`` is infinite at ``t = 0``
    (sample on ``[eps, 1]``).
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_max = beta_min, beta_max

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self._log_alpha(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(2 * self._log_alpha(t)))  # sqrt(1 - alpha^2), accurate near t = 0

    def d_alpha(self, t: Tensor) -> Tensor:
        return self.alpha(t) * (-0.5 * t * (self.beta_max - self.beta_min) - 0.5 * self.beta_min)

    def d_sigma(self, t: Tensor) -> Tensor:
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def __repr__(self) -> str:
        return f"VPInterpolant(beta_min={self.beta_min}, beta_max={self.beta_max})"


class DDPMInterpolant(Interpolant):
    """DDPM's discrete schedule on minidit's time axis: ``alpha = sqrt(alpha_bar)``, ``sigma = sqrt(1 - alpha_bar)``.

    ``betas`` run linearly from ``beta_start`` to ``beta_end`` over ``num_steps`` steps and ``alpha_bar_i =
    prod_{j <= i} (1 - beta_j)`` (DDPM eq. 4: ``x_i = sqrt(alpha_bar_i) x0 + sqrt(1 - alpha_bar_i) eps``). Step ``i``
    sits at ``t = i / num_steps``, so with 1000 steps the DiT's time embedder, fed ``1000 t``, sees the official DiT's
    step index. Between integer steps ``log alpha_bar`` is interpolated linearly: on the piece from step ``i - 1`` to
    step ``i`` it falls with slope ``log(1 - beta_i)`` per step, step ``i``'s own beta (step 0's piece starts at
    ``alpha_bar = 1`` one step before ``t = 0``), and beyond the last step (``t`` in ``(0.999, 1]`` for 1000 steps) it
    goes on with the last beta. So ``alpha`` and ``sigma`` are continuous, and their derivatives are exact for that
    interpolation; at step ``i`` itself the derivative is the one of the piece that ends there,
    ``d log alpha_bar / dt = num_steps log(1 - beta_i)``, the piece a sampler crosses next on its way to ``t = 0``.
    That derivative jumps at each step, by ``num_steps (beta_{i+1} - beta_i) ~ 0.02`` (0.1% of its value near
    ``t = 1``), so ODE solvers are only first order across the steps: a grid that evaluates at the steps keeps a
    relative error of about 1e-3 that more steps do not remove.

    Neither end is exact: ``sigma_0 = sqrt(beta_0) = 0.01`` (DDPM's step 0 already adds noise), so the ODE ends at
    data blurred by 1% noise, and ``alpha_1 ~ 0.0063``, so ``x_1`` is ``N(0, I)`` only approximately (a sampler
    started from ``N(0, I)`` ignores a 0.0063 fraction of the data). Because both coefficients stay positive,
    converting between predictions is finite on all of ``[0, 1]`` (``minidit.weighting.singular_ends`` is empty). The
    VP path with ``b0 = num_steps beta_start = 0.1``, ``b1 = num_steps beta_end = 20`` is this schedule's
    continuous-time limit.

    Args:
        num_steps: number of diffusion steps ``>= 2`` (1000 in DDPM and DiT).
        beta_start, beta_end: first and last ``beta``, ``0 < beta_start <= beta_end < 1``.
    """

    name = "ddpm"

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
            raise ValueError(f"num_steps must be an integer >= 2 (DDPM uses 1000), got {num_steps!r}")
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(
                f"betas need 0 < beta_start <= beta_end < 1 (DDPM: 1e-4, 0.02); got {beta_start}, {beta_end}"
            )
        self.num_steps, self.beta_start, self.beta_end = num_steps, beta_start, beta_end
        self.betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)  # (S,)
        self.alpha_bar = torch.cumprod(1 - self.betas, dim=0)  # (S,)
        log_alpha_bar = torch.log(self.alpha_bar)  # (S,)
        slopes = torch.diff(log_alpha_bar, prepend=torch.zeros(1, dtype=torch.float64))  # (S,): log(1 - beta_i)
        self._pieces = log_alpha_bar, slopes

    def _values(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(alpha, sigma, d_alpha, d_sigma)`` from one look-up of the pieces, each of the shape of ``t``."""
        values, slopes = (piece.to(t.dtype).to(t.device) for piece in self._pieces)  # cast first: MPS has no float64
        index = t * self.num_steps  # fractional step
        step = index.ceil().clamp(max=self.num_steps - 1).long()  # the piece from step - 1 to step (or beyond the last)
        log_alpha_bar = values[step] + (index - step) * slopes[step]
        alpha = torch.exp(0.5 * log_alpha_bar)
        sigma = torch.sqrt(-torch.expm1(log_alpha_bar))  # sqrt(1 - alpha_bar), accurate near t = 0
        d_alpha = 0.5 * alpha * self.num_steps * slopes[step]
        return alpha, sigma, d_alpha, -alpha * d_alpha / sigma  # sigma' from alpha^2 + sigma^2 = 1

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return ``(alpha_t, sigma_t, d_alpha_t, d_sigma_t)`` for ``t`` of any shape, from one look-up."""
        return self._values(check_time(t))

    def alpha(self, t: Tensor) -> Tensor:
        return self._values(t)[0]

    def sigma(self, t: Tensor) -> Tensor:
        return self._values(t)[1]

    def d_alpha(self, t: Tensor) -> Tensor:
        return self._values(t)[2]

    def d_sigma(self, t: Tensor) -> Tensor:
        return self._values(t)[3]

    def __repr__(self) -> str:
        return f"DDPMInterpolant(num_steps={self.num_steps}, beta_start={self.beta_start}, beta_end={self.beta_end})"


INTERPOLANTS: dict[str, type[Interpolant]] = {  # SiT's continuous-time paths (Table 1)
    "linear": LinearInterpolant,
    "gvp": GVPInterpolant,
    "vp": VPInterpolant,
}
DISCRETE_INTERPOLANTS: dict[str, type[Interpolant]] = {  # discrete-time schedules, interpolated between their steps
    "ddpm": DDPMInterpolant,
}


def get_interpolant(name: str | Interpolant) -> Interpolant:
    """Build an interpolant by name: ``"linear"``, ``"gvp"``, ``"vp"`` or ``"ddpm"`` (its defaults: DDPM's 1000 steps).
    An ``Interpolant`` passes through.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if isinstance(name, Interpolant):
        return name
    every = {**INTERPOLANTS, **DISCRETE_INTERPOLANTS}
    return every[check_choice("interpolant", name, every)]()
