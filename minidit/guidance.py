"""Classifier-free guidance: steer a conditional model by extrapolating from its unconditional prediction.

A model trained with the condition randomly replaced by a null condition predicts both ``c = f(x, t, cond)`` and
``u = f(x, t, null)``; guidance with scale ``w`` uses ``u + w (c - u)`` (DiT, arXiv 2212.09748, Sec. 3, CFG
paragraph; SiT Sec. 3 uses it unchanged for velocity models). Used by solutions/05_cfg.ipynb (exercise 5) and any
class-conditional sampling with ``minidit.samplers``. ``guide_with_null`` does the same for any condition the model
can drop itself through ``force_drop`` (captions, labels), as in notebooks/05_text_conditioning.ipynb.

Example:
    >>> velocity_fn = classifier_free_guidance(model, cond=labels, null_cond=torch.tensor(num_classes), scale=4.0)
    >>> samples = sample_ode(velocity_fn, torch.randn(len(labels), 4, 32, 32), steps=50, method="heun").samples
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

ConditionalModel = Callable[[Tensor, Tensor, Tensor], Tensor]  # f(x (N, ...), t (N,), cond (N, ...)) -> (N, ...)


def broadcast_null_condition(null_cond: Tensor, cond: Tensor) -> Tensor:
    """Expand ``null_cond`` to the shape of ``cond`` ``(N, ...)``.

    Args:
        null_cond: either ``(N, ...)`` like ``cond``, a single element ``(1, ...)``, or one condition without the
            batch axis, of shape ``cond.shape[1:]`` (e.g. a 0-d tensor holding the null class label).
        cond: the conditions, ``(N, ...)``.
    Raises:
        ValueError: if ``null_cond`` has none of these shapes.
    """
    if null_cond.shape == cond.shape[1:]:
        null_cond = null_cond.unsqueeze(0)  # (1, ...)
    if null_cond.shape != cond.shape and null_cond.shape != (1, *cond.shape[1:]):
        raise ValueError(
            f"null_cond must have shape {tuple(cond.shape)} (like cond), (1, {', '.join(map(str, cond.shape[1:]))}) "
            f"or {tuple(cond.shape[1:])}; got {tuple(null_cond.shape)}"
        )
    return null_cond.expand_as(cond).to(cond.device)


def classifier_free_guidance(
    model: ConditionalModel, cond: Tensor, null_cond: Tensor, scale: float
) -> Callable[[Tensor, Tensor], Tensor]:
    """Wrap a conditional model into a guided field ``f(x, t) = u + scale (c - u)`` for any sampler.

    The conditional and unconditional predictions come from ONE call of the model on the doubled batch
    ``(cat[x, x], cat[t, t], cat[cond, null_cond])`` of size ``2N``, and guidance acts on every output channel
    (no channel is left unguided, unlike SiT's reference code). Since velocity, score, noise and data
    predictions are affine functions of each other at fixed ``(x_t, t)``, guiding any one of them and then
    converting equals converting and then guiding: wrap whichever prediction the model makes.

    ``scale = 1`` returns the conditional model itself (one call of size ``N``); ``scale = 0`` the
    unconditional model; ``scale > 1`` extrapolates past the conditional prediction.

    Args:
        model: ``model(x (M, ...), t (M,), cond (M, ...)) -> (M, ...)``.
        cond: conditions of the ``N`` samples, ``(N, ...)`` (e.g. class labels ``(N,)``).
        null_cond: the null condition, ``(N, ...)``, ``(1, ...)`` or ``cond.shape[1:]`` (broadcast to ``N``).
        scale: guidance scale ``w``, a finite number.
    Returns:
        ``guided(x (N, ...), t (N,)) -> (N, ...)``, usable as ``velocity_fn`` in ``minidit.samplers``.
    """
    if not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale}")
    null_cond = broadcast_null_condition(null_cond, cond)
    both_conds = torch.cat([cond, null_cond])  # (2N, ...)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        if x.shape[0] != cond.shape[0]:
            raise ValueError(
                f"x has batch size {x.shape[0]} but cond has {cond.shape[0]}; pass one condition per sample"
            )
        if scale == 1:
            return model(x, t, cond)
        out = model(torch.cat([x, x]), torch.cat([t, t]), both_conds)  # (2N, ...)
        conditional, unconditional = out.chunk(2)  # (N, ...) each
        return unconditional + scale * (conditional - unconditional)

    return guided


def guide_with_null(model: Callable[..., Tensor], conditioning: Mapping[str, Any], scale: float) -> Callable[[Tensor, Tensor], Tensor]:
    """Classifier-free guidance for a model that replaces its own condition by the learned null one.

    ``model(x, t, **conditioning, force_drop=drop)`` must use the null condition (null caption or null label) for
    samples where ``drop`` (bool, (M,)) is True. The guided field makes ONE call on the doubled batch with
    ``drop = [False] * N + [True] * N`` and returns ``u + scale (c - u)`` on every channel.

    Args:
        model: e.g. a text-conditioned ``DiT`` (``text``, ``text_mask``), ``MMDiT`` or ``TextToImage``
            (``text_ids``, ``text_mask``), or a class-conditional ``DiT`` (``y``).
        conditioning: the model's condition tensors, each ``(N, ...)``.
        scale: guidance scale ``w``, a finite number; 1 calls the model once without dropping.
    Returns:
        ``guided(x (N, ...), t (N,)) -> (N, ...)``, usable as ``velocity_fn`` in ``minidit.samplers``.
    """
    if not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale}")
    doubled = {name: torch.cat([value, value]) for name, value in conditioning.items()}

    def guided(x: Tensor, t: Tensor) -> Tensor:
        n = x.shape[0]
        if scale == 1:
            return model(x, t, **conditioning)
        drop = torch.arange(2 * n, device=x.device) >= n  # (2N,): the second half unconditional
        out = model(torch.cat([x, x]), torch.cat([t, t]), **doubled, force_drop=drop)  # (2N, ...)
        conditional, unconditional = out.chunk(2)
        return unconditional + scale * (conditional - unconditional)

    return guided
