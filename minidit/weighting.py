"""Score versus velocity: converting between predictions, and the loss weightings that relate them.

A network can predict the velocity ``v``, the score ``s = grad log p_t``, the noise ``eps`` or the data ``x0``.
Given ``x_t`` and ``t`` all four are affine functions of each other (SiT, arXiv 2401.08740, Sec. 2.3):

    x_t = alpha x0 + sigma eps,    s = -eps / sigma,    v = alpha' x0 + sigma' eps,
    v = (alpha' / alpha) x_t - lambda_t sigma_t s,     lambda_t = sigma' - alpha' sigma / alpha.

``convert`` maps one prediction to another through ``(x0, eps)``. Since each prediction's error is a
per-time multiple of the score error, one loss with a time weight covers SiT's whole design space:
``"none"`` (the prediction's own MSE), ``"velocity"`` (``lambda_t^2`` on the score loss: equal to the velocity
MSE) and ``"likelihood"`` (``lambda_t / sigma_t`` on the score loss; maximum-likelihood weighting).
``training_loss`` is the one loss every training loop in minidit calls.
Used by notebooks/02_flows_2d.ipynb and solutions/02_predictions.ipynb.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from minidit.interpolants import Interpolant, get_interpolant
from minidit.validation import check_choice, check_same_shape, check_time, expand_time

PREDICTIONS = ("velocity", "score", "noise", "data")
WEIGHTINGS = ("none", "velocity", "likelihood")


def lambda_t(t: Tensor, interpolant: Interpolant | str) -> Tensor:
    """``lambda_t = sigma_t' - alpha_t' sigma_t / alpha_t`` (SiT eq. 7); ``1 / (1 - t)`` for the linear path.

    Infinite at ``t = 1`` for paths with ``alpha_1 = 0``. Same shape as ``t``.
    """
    path = get_interpolant(interpolant)
    a, s, da, ds = path.coefficients(t)
    return ds - da * s / a


def convert(pred: Tensor, x_t: Tensor, t: Tensor, interpolant: Interpolant | str, src: str, dst: str) -> Tensor:
    """Convert a prediction of type ``src`` to type ``dst`` at the point ``(x_t, t)``.

    Args:
        pred: the ``src`` prediction, ``(N, ...)``.
        x_t: the point on the path, ``(N, ...)``.
        t: times, ``(N,)``. Conversions divide by ``sigma_t`` (to or from score/noise, at ``t = 0``) or by
            ``alpha_t`` (from noise/score, at ``t = 1``); keep ``t`` inside ``[eps, 1 - eps]`` for those.
        interpolant: the path (object or name).
        src, dst: each one of ``"velocity"``, ``"score"``, ``"noise"``, ``"data"``.
    Returns:
        the ``dst`` prediction, ``(N, ...)``.
    Raises:
        ValueError: if ``t`` holds an end (0 or 1) where this conversion divides by zero (``singular_ends``).
    """
    check_choice("prediction", src, PREDICTIONS)
    check_choice("prediction", dst, PREDICTIONS)
    check_same_shape(pred=pred, x_t=x_t)
    if src == dst:
        return pred
    path = get_interpolant(interpolant)
    for end in singular_ends(path, src, dst):
        if bool((torch.as_tensor(t) == end).any()):
            raise ValueError(
                f"converting {src} to {dst} on the {path.name} path divides by zero at t = {end}; keep t inside "
                f"[time_eps, 1 - time_eps] with time_eps > 0, e.g. 1e-3 (default_time_eps gives the training value)"
            )
    return _convert(pred, x_t, t, path, src, dst)


def singular_ends(interpolant: Interpolant | str, src: str, dst: str) -> tuple[float, ...]:
    """The ends ``t = 0`` and/or ``t = 1`` where converting ``src`` to ``dst`` divides by zero on this path.

    Found by running the conversion at both ends (a zero ``sigma_0`` or ``alpha_1``, or the VP path's infinite
    ``sigma'_0``, gives a non-finite result); e.g. ``("data", "velocity")`` on the linear path is singular at 0.
    """
    check_choice("prediction", src, PREDICTIONS)
    check_choice("prediction", dst, PREDICTIONS)
    if src == dst:
        return ()
    path = get_interpolant(interpolant)
    out = _convert(torch.ones(2, 1), torch.ones(2, 1), torch.tensor([0.0, 1.0]), path, src, dst)  # (2, 1)
    return tuple(end for end, value in zip((0.0, 1.0), out[:, 0].tolist()) if not math.isfinite(value))


def _convert(pred: Tensor, x_t: Tensor, t: Tensor, path: Interpolant, src: str, dst: str) -> Tensor:
    """``convert`` without checks: the affine map through ``(x0, eps)``."""
    a, s, da, ds = (expand_time(c, x_t) for c in path.coefficients(t))
    # 1. recover (x0, eps) from the source prediction.
    if src == "data":
        x0 = pred
        eps = (x_t - a * x0) / s
    elif src in ("noise", "score"):
        eps = pred if src == "noise" else -s * pred
        x0 = (x_t - s * eps) / a
    else:  # velocity: solve [[a, s], [da, ds]] @ [x0, eps] = [x_t, v]
        det = a * ds - s * da
        x0 = (ds * x_t - s * pred) / det
        eps = (a * pred - da * x_t) / det
    # 2. express them as the destination prediction.
    if dst == "data":
        return x0
    if dst == "noise":
        return eps
    if dst == "score":
        return -eps / s
    return da * x0 + ds * eps


def loss_weight(t: Tensor, interpolant: Interpolant | str, prediction: str, weighting: str) -> Tensor:
    """Per-time weight ``w(t)`` that multiplies the prediction's own squared error.

    ``"none"``: 1. ``"velocity"``: makes the loss equal the velocity MSE (``lambda_t^2`` for score and noise
    models). ``"likelihood"``: the score loss weighted by ``lambda_t sigma_t`` (``lambda_t / sigma_t`` on
    ``|sigma s + eps|^2`` for score and noise models). Shape of ``t``.

    Each prediction's error is ``k_t`` times the score error at fixed ``x_t`` (``k = sigma`` for score and noise,
    ``sigma^2 / alpha`` for data, ``-lambda sigma`` for velocity), so ``"velocity"`` is ``(lambda sigma / k)^2``
    and ``"likelihood"`` is ``lambda sigma / k^2``; they are written out in closed form, so the velocity
    weighting of a velocity model is exactly 1 at both ends instead of ``0 / 0``.
    """
    check_choice("prediction", prediction, PREDICTIONS)
    check_choice("weighting", weighting, WEIGHTINGS)
    t = check_time(t)
    if weighting == "none" or (weighting == "velocity" and prediction == "velocity"):
        return torch.ones_like(t)
    path = get_interpolant(interpolant)
    a, s, da, ds = path.coefficients(t)
    lam = ds - da * s / a
    if weighting == "velocity":
        return lam**2 if prediction in ("score", "noise") else (lam * a / s) ** 2  # data
    if prediction in ("score", "noise"):
        return lam / s
    return 1 / (lam * s) if prediction == "velocity" else lam * a**2 / s**3  # likelihood of velocity / data


def default_time_eps(interpolant: Interpolant | str, prediction: str, weighting: str = "none") -> float:
    """Train-time epsilon: 0 where training and sampling are finite on all of [0, 1], else 1e-3 (SiT trains on
    [eps, 1 - eps]).

    On SiT's continuous paths (``sigma_0 = 0``, ``alpha_1 = 0`` or nearly) that needs a velocity model (sampling
    converts nothing, ``singular_ends`` is empty), a finite velocity target (the VP path's ``sigma'`` is infinite at
    ``t = 0``) and a finite ``loss_weight`` at both ends: ``"none"`` or ``"velocity"`` weighting (``"likelihood"`` is
    ``1 / (lambda_t sigma_t)``, infinite at ``t = 0``). So only the velocity loss on the linear and GVP paths gets 0.
    The DDPM path keeps ``alpha`` and ``sigma`` positive at both ends, so every loss on it gets 0 (DDPM trains on its
    step 0, ``t = 0``).
    """
    name = get_interpolant(interpolant).name
    finite_velocity_loss = prediction == "velocity" and weighting in ("none", "velocity") and name in ("linear", "gvp")
    return 0.0 if finite_velocity_loss or name == "ddpm" else 1e-3


def draw_time_and_noise(
    shape: tuple[int, ...], time_sampler: Any = None, time_eps: float = 0.0, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The random part of one training batch: ``t`` from ``time_sampler`` (uniform when ``None``) squeezed into
    ``[time_eps, 1 - time_eps]``, then ``eps ~ N(0, I)``, both from ``generator`` and on its device.

    A trainer that splits a batch over processes or micro-batches draws them for the whole batch and hands each
    part its rows, so the run does not depend on how the batch is split (``minidit.distributed``).

    Args:
        shape: the batch's shape ``(N, ...)``.
    Returns:
        ``(t (N,), eps (N, ...))`` float32.
    """
    device = generator.device if generator is not None else "cpu"
    if time_sampler is None:
        u = torch.rand(shape[0], generator=generator, device=device)
    else:
        u = time_sampler.sample(shape[0], generator=generator)
    t = time_eps + (1 - 2 * time_eps) * u
    return t, torch.randn(shape, generator=generator, device=device)


def training_loss(
    model: Callable[..., Tensor],
    x0: Tensor,
    interpolant: Interpolant | str = "linear",
    prediction: str = "velocity",
    weighting: str = "none",
    time_sampler: Any = None,
    time_eps: float | None = None,
    model_kwargs: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
    t_and_noise: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """The flow-matching loss used by every training loop in minidit.

    Samples ``t`` and ``eps`` (``draw_time_and_noise``, with ``time_eps`` of ``default_time_eps`` when ``None``)
    unless ``t_and_noise`` gives them, builds ``x_t``, calls ``model(x_t, t, **model_kwargs)`` and compares its
    output with the target of ``prediction`` (``u_t``, ``-eps / sigma``, ``eps`` or ``x0``), weighted by
    ``loss_weight``.

    Args:
        model: network, ``model(x_t (N, ...), t (N,), **model_kwargs) -> (N, ...)``.
        x0: a data batch, ``(N, ...)``.
        interpolant, prediction, weighting: names (see module docstring).
        time_sampler: object with ``.sample(n, generator=None) -> (n,)`` in [0, 1]; ``None`` for uniform.
        time_eps: train-time epsilon; ``None`` picks ``default_time_eps``.
        model_kwargs: extra inputs for the model, e.g. ``{"y": labels}``.
        generator: RNG for ``t`` and ``eps`` (reproducible runs).
        t_and_noise: ``(t (N,), eps (N, ...))`` drawn beforehand; then nothing is drawn here.
    Returns:
        ``(per_sample_loss (N,), t (N,))``; the training loss is ``per_sample_loss.mean()``. Keeping ``t``
        lets a trainer log the loss per time bin.
    """
    path = get_interpolant(interpolant)
    check_choice("prediction", prediction, PREDICTIONS)
    check_choice("weighting", weighting, WEIGHTINGS)
    if t_and_noise is None:
        eps = default_time_eps(path, prediction, weighting) if time_eps is None else time_eps
        t_and_noise = draw_time_and_noise(tuple(x0.shape), time_sampler, eps, generator)
    t, noise = (value.to(device=x0.device, dtype=x0.dtype) for value in t_and_noise)
    x_t = path.interpolate(x0, noise, t)
    out = model(x_t, t, **(model_kwargs or {}))
    if out.shape != x0.shape:
        raise ValueError(f"model output has shape {tuple(out.shape)}, expected {tuple(x0.shape)} (same as the data)")
    if prediction == "velocity":
        target = path.velocity_target(x0, noise, t)
    elif prediction == "noise":
        target = noise
    elif prediction == "data":
        target = x0
    else:  # score: SiT's L_s = |sigma s_theta + eps|^2 (eq. 9), i.e. target -eps/sigma scaled by sigma
        out = expand_time(path.sigma(t), x0) * out
        target = -noise
    err = (out.float() - target.float()).pow(2).flatten(1).mean(1)
    return loss_weight(t, path, prediction, weighting).float() * err, t
