"""Input checks shared by every module: time tensors and broadcasting.

Flow-matching code handles a batch ``x`` of shape ``(N, ...)`` with one time per sample, ``t`` of shape
``(N,)``. These helpers turn a bad input into an error that names the problem and the fix, instead of a
silent broadcast that trains the wrong thing.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, TypeVar

import torch
from torch import Tensor


T = TypeVar("T")


def dataclass_from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build the dataclass ``cls`` from ``values``, rejecting misspelt keys instead of ignoring them.

    Raises:
        ValueError: naming the unknown keys and listing the valid ones.
    """
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys are: {', '.join(valid)}")
    return cls(**values)


def check_image_and_time(x: Tensor, t: Tensor, in_channels: int, frames: bool = False) -> None:
    """Raise a ``ValueError`` naming the problem unless ``x`` is ``(N, in_channels, H, W)`` (with ``frames``:
    ``(N, H, W, T, in_channels)``) and ``t`` a float ``(N,)`` with values in [0, 1] (the value check is skipped where
    ``reads_values`` says so)."""
    if frames and (x.ndim != 5 or x.shape[-1] != in_channels):
        raise ValueError(f"a frames model takes x of shape (N, H, W, T, {in_channels}); got {tuple(x.shape)}. An image "
                         f"batch (N, {in_channels}, H, W) is x.permute(0, 2, 3, 1).unsqueeze(3)")
    if not frames and (x.ndim != 4 or x.shape[1] != in_channels):
        raise ValueError(f"x must have shape (N, {in_channels}, H, W); got {tuple(x.shape)}")
    if t.shape != (x.shape[0],) or not torch.is_floating_point(t):
        raise ValueError(
            f"t must be a float tensor of shape (N,) = ({x.shape[0]},) with values in [0, 1]; got "
            f"{t.dtype} of shape {tuple(t.shape)}. Use e.g. t = torch.full((x.shape[0],), 0.5)."
        )
    if reads_values(t):
        check_time(t)


def reads_values(tensor: Tensor) -> bool:
    """Whether checks may read ``tensor``'s values: not under ``torch.compile`` (a device sync that breaks the graph)
    and not on the ``meta`` device, whose tensors have shapes but no values (models too large to build, run there to
    count their parameters and FLOPs). Shape checks always run."""
    return not torch.compiler.is_compiling() and tensor.device.type != "meta"


class InputError(ValueError):
    """A user's input is wrong (config value, path, checkpoint, dataset, device): one line naming it and the fix."""


def check_choice(kind: str, name: str, valid: Iterable[str]) -> str:
    """Return ``name`` if it is one of ``valid``; otherwise raise ``ValueError`` listing the valid names."""
    valid = tuple(valid)
    if name not in valid:
        raise ValueError(f"unknown {kind} {name!r}; valid {kind}s are: {', '.join(repr(v) for v in valid)}")
    return name


def check_time(t: Tensor | float, *, name: str = "t") -> Tensor:
    """Return ``t`` as a tensor after checking that every value lies in [0, 1].

    Args:
        t: times, any shape (usually ``(N,)``), or a Python float.
    Raises:
        ValueError: if a value is outside [0, 1] or not finite.
    """
    t = torch.as_tensor(t, dtype=torch.get_default_dtype()) if not isinstance(t, Tensor) else t
    if not torch.is_floating_point(t):
        t = t.to(torch.get_default_dtype())
    if t.numel() and not bool(((t >= 0) & (t <= 1)).all()):
        bad = t[~((t >= 0) & (t <= 1))].flatten()[:3].tolist()
        raise ValueError(f"{name} must lie in [0, 1] (t = 0 is data, t = 1 is noise); got values such as {bad}")
    return t


def expand_time(t: Tensor, x: Tensor) -> Tensor:
    """Reshape per-sample times ``t`` of shape ``(N,)`` (or a scalar) to broadcast against ``x`` of shape ``(N, ...)``.

    Returns a tensor of shape ``(N, 1, ..., 1)`` with ``x.ndim`` dimensions.
    Raises:
        ValueError: if ``t`` is neither a scalar nor of shape ``(N,)`` with ``N = x.shape[0]``.
    """
    if t.ndim == 0:
        return t.reshape([1] * x.ndim)
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"t must have shape (N,) = ({x.shape[0]},) to match x of shape {tuple(x.shape)}; got {tuple(t.shape)}. "
            "Pass one time per sample, e.g. t = torch.full((x.shape[0],), 0.5)."
        )
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def check_same_shape(**tensors: Tensor) -> None:
    """Raise ``ValueError`` naming the tensors when they do not all have the same shape."""
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shapes must match: {shapes}")
