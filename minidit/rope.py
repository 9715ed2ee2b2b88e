"""Axial rotary position embedding (RoPE) for 2-D (h, w) token grids and 3-D (t, h, w) positions of packed frames.

RoPE rotates each pair of query/key channels by an angle proportional to the token's position, so the logit
``q_m . k_n`` depends only on the offset ``n - m`` (Su et al. 2021, RoFormer eq. 16); axial RoPE splits the head
channels across the grid axes, and NTK-aware scaling ``theta' = theta * scale^(d / (d - 2))`` stretches the
wavelengths to extrapolate to larger grids (Lumina-T2X / Flag-DiT, arXiv 2405.05945, Sec. 2.1 and 3.3).
Frames (``minidit.frames``) pass per-token positions ``(t, h, w)``; the head channels split in that axis order, earlier
axes taking the remainder (Lumina-Video's ``precompute_freqs_cis`` also splits (t, h, w) and concatenates the axes).
Used by notebooks/04_flag_dit.ipynb, 09_any_modality.ipynb and the DiT in ``minidit.dit``.

Example:
    >>> angles = rope_frequencies((16, 16), head_dim=64)   # (256, 32)
    >>> q = apply_rope(torch.randn(2, 4, 256, 64), angles)  # (2, 4, 256, 64), norms unchanged
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def axis_pair_counts(head_dim: int, num_axes: int) -> list[int]:
    """Split the ``head_dim // 2`` rotated channel pairs across ``num_axes`` axes, earlier axes taking the remainder.

    Raises:
        ValueError: if ``head_dim`` is odd or leaves an axis with no channel pair.
    """
    if head_dim % 2 or head_dim // 2 < num_axes:
        raise ValueError(
            f"RoPE needs an even head_dim with at least one channel pair per axis; got head_dim={head_dim} for "
            f"{num_axes} axes. Choose hidden_size / num_heads even and >= {2 * num_axes}."
        )
    pairs, extra = divmod(head_dim // 2, num_axes)
    return [pairs + (axis < extra) for axis in range(num_axes)]


def rope_angles(
    positions: Tensor,
    head_dim: int,
    theta: float = 10000.0,
    ntk_scale: float = 1.0,
) -> Tensor:
    """Rotation angles of tokens at arbitrary ``positions`` (one coordinate per axis).

    Axis ``a`` gets ``axis_pair_counts(head_dim, A)[a]`` channel pairs, concatenated in axis order. An axis with
    ``d = 2 * pairs`` channels uses frequencies ``theta_a^(-2i / d)``, ``i = 0 .. pairs - 1``, with
    ``theta_a = theta * ntk_scale^(d / (d - 2))`` (NTK-aware scaling; ``ntk_scale = 1`` leaves ``theta`` unchanged).
    The angle of channel pair ``i`` of axis ``a`` is ``positions[..., a] * freq_i``.

    Args:
        positions: token coordinates, shape ``(..., A)`` for ``A`` axes (float or integer).
        head_dim: per-head channel count ``Dh`` (even).
        theta: base wavelength.
        ntk_scale: ratio of target to training grid size along each axis (> 0); > 1 extrapolates.
    Returns:
        Angles of shape ``(..., Dh // 2)`` in float32, on the device of ``positions``.
    Raises:
        ValueError: for a non-positive ``ntk_scale``, or NTK scaling of an axis with a single channel pair.
    """
    if ntk_scale <= 0:
        raise ValueError(f"ntk_scale must be positive (1 = no scaling); got {ntk_scale}")
    positions = positions.float()
    angles = []
    for axis, pairs in enumerate(axis_pair_counts(head_dim, positions.shape[-1])):
        axis_dim = 2 * pairs
        if ntk_scale != 1.0 and axis_dim <= 2:
            raise ValueError(f"NTK scaling needs at least 2 channel pairs per axis; head_dim={head_dim} is too small")
        axis_theta = theta * ntk_scale ** (axis_dim / (axis_dim - 2)) if ntk_scale != 1.0 else theta
        exponents = torch.arange(0, axis_dim, 2, device=positions.device, dtype=torch.float32) / axis_dim
        freqs = axis_theta ** (-exponents)  # (pairs,)
        angles.append(positions[..., axis, None] * freqs)  # (..., pairs)
    return torch.cat(angles, dim=-1)  # (..., Dh // 2)


def grid_positions(grid_shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """Integer coordinates of every cell of a grid in row-major (C) order like ``patchify``: ``(prod, len(grid))``."""
    axes = [torch.arange(size, device=device) for size in grid_shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid_shape))


def rope_frequencies(
    grid_shape: Sequence[int],
    head_dim: int,
    theta: float = 10000.0,
    ntk_scale: float = 1.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Rotation angles for every token of a grid, flattened in row-major (C) order like ``patchify``.

    Args:
        grid_shape: token grid, ``(h, w)`` for images.
        head_dim, theta, ntk_scale: see ``rope_angles``.
        device: where to build the angles.
    Returns:
        Angles of shape ``(T, Dh // 2)`` in float32, ``T = prod(grid_shape)``.
    """
    return rope_angles(grid_positions(grid_shape, device), head_dim, theta, ntk_scale)


def apply_rope(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate adjacent channel pairs ``(x[2i], x[2i+1])`` of queries or keys by ``angles``.

    Args:
        x: queries or keys, shape ``(N, H, T, Dh)``.
        angles: from ``rope_frequencies``, shape ``(T, Dh // 2)``, or per sample ``(N, T, Dh // 2)`` from
            ``rope_angles`` (packed frames, ``minidit.frames``).
    Returns:
        Rotated tensor, shape ``(N, H, T, Dh)`` and dtype of ``x`` (the rotation runs in float32).
    """
    if angles.shape[-2:] != (x.shape[-2], x.shape[-1] // 2) or angles.ndim not in (2, 3):
        raise ValueError(
            f"RoPE angles of shape {tuple(angles.shape)} do not fit x of shape {tuple(x.shape)}; expected "
            f"({x.shape[-2]}, {x.shape[-1] // 2}). Build them with rope_frequencies(grid_shape, head_dim) "
            "for the same token grid."
        )
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # (N, H, T, Dh // 2, 2)
    even, odd = pairs.unbind(-1)
    if angles.ndim == 3:
        angles = angles.unsqueeze(1)  # (N, 1, T, Dh // 2): the same rotation for every head
    cos, sin = angles.cos(), angles.sin()
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)  # (N, H, T, Dh // 2, 2)
    return rotated.flatten(-2).to(x.dtype)  # (N, H, T, Dh)


class RotaryEmbedding(nn.Module):
    """Parameter-free holder of the RoPE settings; call it with a grid shape to get the angles.

    One instance is shared by every attention layer of a model, so changing ``ntk_scale`` at inference
    (resolution extrapolation) changes them all.

    Args:
        head_dim: per-head channel count ``Dh``.
        theta: base wavelength.
        ntk_scale: NTK-aware scale, see ``rope_frequencies``.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, ntk_scale: float = 1.0):
        super().__init__()
        self.head_dim, self.theta, self.ntk_scale = head_dim, theta, ntk_scale
        self._cache: dict[tuple, Tensor] = {}  # every block of a forward pass asks for the same angles
        self._last_positions: tuple[Tensor, tuple, Tensor] | None = None

    def forward(self, grid: Sequence[int] | Tensor, device: torch.device | str | None = None) -> Tensor:
        """Angles for a grid shape ``(h, w)``: ``(h * w, head_dim // 2)``, computed once per grid, device and settings;
        or for per-token positions ``(N, T, A)`` (packed frames, ``minidit.frames``): ``(N, T, head_dim // 2)``,
        computed once per positions tensor (every block of a forward pass receives the same one)."""
        settings = (self.head_dim, self.theta, self.ntk_scale)
        if isinstance(grid, Tensor):
            if self._last_positions is None or self._last_positions[0] is not grid or self._last_positions[1] != settings:
                self._last_positions = (grid, settings, rope_angles(grid, *settings))
            return self._last_positions[2]
        key = (tuple(grid), str(device), *settings)
        if key not in self._cache:
            self._cache[key] = rope_frequencies(grid, *settings, device=device)
        return self._cache[key]
