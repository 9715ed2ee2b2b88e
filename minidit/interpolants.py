"""Interpolants: the paths that carry data to noise.

An interpolant builds ``x_t = alpha_t * x0 + sigma_t * eps`` with ``eps ~ N(0, I)``; ``t = 0`` is data and
``t = 1`` is noise (``alpha_0 = sigma_1 = 1``, ``alpha_1 = sigma_0 = 0``). Its time derivative gives the
conditional velocity ``u_t = alpha_t' x0 + sigma_t' eps`` that a velocity model regresses on.
Three paths from SiT (Ma et al. 2024, arXiv 2401.08740, Sec. 2.2 / Table 1):

- ``"linear"`` (rectified flow, also SD3 Sec. 2): ``alpha = 1 - t``, ``sigma = t``;
- ``"gvp"`` (generalised variance preserving): ``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)``;
- ``"vp"`` (SBDM-VP): ``alpha = exp(-t^2 (b1 - b0) / 4 - t b0 / 2)``, ``sigma = sqrt(1 - alpha^2)``, b0 = 0.1, b1 = 20.

Each schedule returns its values and its derivatives in closed form, so nothing downstream differentiates
numerically. Used by notebooks/01_interpolants_1d.ipynb and solutions/01_interpolants.ipynb.

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


INTERPOLANTS: dict[str, type[Interpolant]] = {
    "linear": LinearInterpolant,
    "gvp": GVPInterpolant,
    "vp": VPInterpolant,
}


def get_interpolant(name: str | Interpolant) -> Interpolant:
    """Build an interpolant by name: ``"linear"``, ``"gvp"`` or ``"vp"``. An ``Interpolant`` passes through.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if isinstance(name, Interpolant):
        return name
    return INTERPOLANTS[check_choice("interpolant", name, INTERPOLANTS)]()
