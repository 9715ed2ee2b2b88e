"""Time samplers: which times ``t`` a flow-matching loss trains on, and the resolution shift.

Sampling ``t`` from a density ``pi(t)`` instead of uniformly re-weights the loss over time; SD3 found that
putting more weight on the middle of the path (logit-normal, m = 0, s = 1) trains the best rectified flows
(Esser et al., arXiv 2403.03206, Sec. 3.1), and that shifting ``t`` towards noise suits larger images
(its resolution-dependent shift, Sec. 5.3: ``t_m = a t_n / (1 + (a - 1) t_n)``, ``a = sqrt(m / n)``).
Used by exercises/03_time_samplers.ipynb and solutions/03_time_samplers.ipynb (chapter "time_samplers").

Every sampler draws by inverse-transform or change of variables from a uniform or normal draw, and reports
its exact density on [0, 1] (``t = 0`` data, ``t = 1`` noise):

- ``"uniform"``: ``pi(t) = 1``;
- ``"logit_normal"``: ``t = sigmoid(m + s n)``, ``n ~ N(0, 1)``;
- ``"mode"``: ``t = f(u) = 1 - u - s (cos^2(pi u / 2) - 1 + u)``, ``u ~ U(0, 1)``, ``-1 <= s <= 2 / (pi - 2)``;
- ``"cosmap"``: ``t = 1 - 1 / (tan(pi u / 2) + 1)``, ``pi(t) = 2 / (pi (1 - 2 t + 2 t^2))``.

Example:
    >>> sampler = get_time_sampler("logit_normal", shift=3.0)   # SD3 at 1024^2
    >>> t = sampler.sample(256)                                  # (256,) in [0, 1], most of it near noise
    >>> pdf = sampler.density(torch.linspace(0, 1, 5))           # (5,)
"""
from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor

from minidit.validation import check_choice, check_time


def _device(generator: torch.Generator | None) -> torch.device | None:
    """The device to draw on: the generator's, or the default device when there is none."""
    return generator.device if generator is not None else None


def _uniform(n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` draws from U(0, 1) on the generator's device, shape ``(n,)``."""
    return torch.rand(n, generator=generator, device=_device(generator))


class TimeSampler:
    """Base class: ``sample(n)`` draws ``(n,)`` times in [0, 1]; ``density(t)`` is their exact pdf."""

    name: str = "base"

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` times, shape ``(n,)``, on the device of ``generator`` (CPU when ``None``)."""
        raise NotImplementedError

    def density(self, t: Tensor) -> Tensor:
        """Probability density ``pi(t)`` at times ``t`` in [0, 1]; same shape as ``t``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class UniformSampler(TimeSampler):
    """``t ~ U(0, 1)``: the plain flow-matching loss."""

    name = "uniform"

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return _uniform(n, generator)

    def density(self, t: Tensor) -> Tensor:
        return torch.ones_like(check_time(t))


class LogitNormalSampler(TimeSampler):
    """``t = sigmoid(m + s n)``, ``n ~ N(0, 1)`` (SD3 Sec. 3.1); ``m > 0`` favours noise, ``m < 0`` data."""

    name = "logit_normal"

    def __init__(self, m: float = 0.0, s: float = 1.0):
        if not s > 0:
            raise ValueError(f"logit_normal needs a positive scale s; got s = {s}")
        self.m, self.s = m, s

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        normal = torch.randn(n, generator=generator, device=_device(generator))
        return torch.sigmoid(self.m + self.s * normal)

    def density(self, t: Tensor) -> Tensor:
        t = check_time(t)
        inside = (t > 0) & (t < 1)
        t_in = torch.where(inside, t, torch.full_like(t, 0.5))  # keep logit finite; the ends get density 0
        logit = torch.log(t_in) - torch.log1p(-t_in)
        pdf = torch.exp(-0.5 * ((logit - self.m) / self.s) ** 2) / (self.s * math.sqrt(2 * math.pi) * t_in * (1 - t_in))
        return torch.where(inside, pdf, torch.zeros_like(t))


class ModeSampler(TimeSampler):
    """Mode sampling with heavy tails (SD3 Sec. 3.1): ``t = f(u)``, ``u ~ U(0, 1)``, density ``1 / |f'(u)|``.

    ``f`` falls monotonically from ``f(0) = 1`` to ``f(1) = 0`` when ``-1 <= s <= 2 / (pi - 2)``; ``s = 0`` is
    uniform, ``s > 0`` moves mass to the middle while keeping a positive density at both ends.
    """

    name = "mode"

    def __init__(self, s: float = 1.29):
        s_max = 2 / (math.pi - 2)
        if not -1 <= s <= s_max:
            raise ValueError(
                f"mode sampling needs -1 <= s <= 2 / (pi - 2) = {s_max:.4f} so that t = f(u) is monotone; got s = {s}"
            )
        self.s = s

    def transform(self, u: Tensor) -> Tensor:
        """``t = f(u) = 1 - u - s (cos^2(pi u / 2) - 1 + u)``, same shape as ``u``."""
        return 1 - u - self.s * (torch.cos(0.5 * math.pi * u) ** 2 - 1 + u)

    def d_transform(self, u: Tensor) -> Tensor:
        """``f'(u) = -1 - s + s (pi / 2) sin(pi u)`` (negative on (0, 1)), same shape as ``u``."""
        return -1 - self.s + self.s * 0.5 * math.pi * torch.sin(math.pi * u)

    def inverse_transform(self, t: Tensor, iterations: int = 60) -> Tensor:
        """``u = f^{-1}(t)`` by bisection on [0, 1] (``f`` is decreasing); same shape and dtype as ``t``."""
        t = check_time(t)
        t64 = t.double()
        low, high = torch.zeros_like(t64), torch.ones_like(t64)
        for _ in range(iterations):  # each step halves the bracket: 2^-60 is below float64 resolution
            mid = 0.5 * (low + high)
            root_above_mid = self.transform(mid) > t64
            low, high = torch.where(root_above_mid, mid, low), torch.where(root_above_mid, high, mid)
        return (0.5 * (low + high)).to(t.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.transform(_uniform(n, generator)).clamp(0, 1)

    def density(self, t: Tensor) -> Tensor:
        t = check_time(t)
        u = self.inverse_transform(t.double())
        return (1 / self.d_transform(u).abs()).to(t.dtype)


class CosMapSampler(TimeSampler):
    """CosMap (SD3 Sec. 3.1): ``t = 1 - 1 / (tan(pi u / 2) + 1)``, density ``2 / (pi (1 - 2 t + 2 t^2))``."""

    name = "cosmap"

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return 1 - 1 / (torch.tan(0.5 * math.pi * _uniform(n, generator)) + 1)

    def density(self, t: Tensor) -> Tensor:
        t = check_time(t)
        return 2 / (math.pi * (1 - 2 * t + 2 * t**2))


def _check_shift(shift: float) -> None:
    """Raise ``ValueError`` unless the shift factor is positive."""
    if not shift > 0:
        raise ValueError(f"shift must be positive (1 is no shift, > 1 moves t towards noise); got {shift}")


def shift_time(t: Tensor, shift: float) -> Tensor:
    """SD3's resolution shift ``t -> a t / (1 + (a - 1) t)`` with ``a = shift``; same shape as ``t``.

    Fixes 0 and 1, is increasing, and moves every interior time towards noise when ``a > 1``;
    ``shift_time(., 1 / a)`` is its inverse.
    """
    _check_shift(shift)
    t = check_time(t)
    return shift * t / (shift * t + (1 - t))  # = a t / (1 + (a - 1) t); this form stays in [0, 1] under rounding


def resolution_shift_factor(base_pixels: int, target_pixels: int) -> float:
    """SD3's shift ``a = sqrt(m / n)`` for a model trained on ``n = base_pixels``, sampled at ``m = target_pixels``."""
    if base_pixels <= 0 or target_pixels <= 0:
        raise ValueError(f"pixel counts must be positive; got base_pixels={base_pixels}, target_pixels={target_pixels}")
    return math.sqrt(target_pixels / base_pixels)


class ShiftedSampler(TimeSampler):
    """Times of ``base`` passed through ``shift_time``; density by change of variables.

    With ``t = shift_time(t_s, 1 / a)`` the inverse map, ``pi_s(t_s) = pi(t) * a / (a - (a - 1) t_s)^2``.
    """

    def __init__(self, base: TimeSampler, shift: float):
        _check_shift(shift)
        self.base, self.shift = base, shift

    @property
    def name(self) -> str:
        return f"{self.base.name}+shift"

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return shift_time(self.base.sample(n, generator), self.shift)

    def density(self, t: Tensor) -> Tensor:
        t = check_time(t)
        a = self.shift
        return self.base.density(shift_time(t, 1 / a)) * a / (a - (a - 1) * t) ** 2


TIME_SAMPLERS: dict[str, type[TimeSampler]] = {
    "uniform": UniformSampler,
    "logit_normal": LogitNormalSampler,
    "mode": ModeSampler,
    "cosmap": CosMapSampler,
}


def get_time_sampler(name: str | TimeSampler, shift: float = 1.0, **params: float) -> TimeSampler:
    """Build a time sampler by name, optionally followed by SD3's resolution shift.

    Args:
        name: one of ``TIME_SAMPLERS`` (``"uniform"``, ``"logit_normal"``, ``"mode"``, ``"cosmap"``), or a
            ``TimeSampler``, which passes through (then only ``shift`` applies).
        shift: ``a`` in ``t -> a t / (1 + (a - 1) t)``; 1 means no shift.
        **params: the sampler's own parameters (``m``, ``s`` for logit_normal; ``s`` for mode).
    Raises:
        ValueError: for an unknown name (listing the valid ones) or an invalid parameter value.
        TypeError: for a parameter the sampler does not take (listing the ones it does).
    """
    if isinstance(name, TimeSampler):
        if params:
            raise TypeError(f"parameters {sorted(params)} cannot be applied to an already built sampler {name!r}")
        sampler = name
    else:
        sampler_class = TIME_SAMPLERS[check_choice("time sampler", name, TIME_SAMPLERS)]
        valid = tuple(inspect.signature(sampler_class).parameters)
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise TypeError(f"time sampler {name!r} got unknown parameter(s) {unknown}; it takes: {list(valid)}")
        sampler = sampler_class(**params)
    return sampler if shift == 1.0 else ShiftedSampler(sampler, shift)
