"""Absolute position embeddings added to the patch tokens: fixed 2-D sin-cos, learned, and convolutional.

DiT adds a fixed 2-D sin-cos table (MAE, arXiv 2111.06377; DiT, arXiv 2212.09748, Sec. 3.2) or a learned one that is
resized by interpolation for a new grid (PixArt-Sigma, arXiv 2403.04692, Sec. 3.3); LI-DiT instead runs a residual
conv block over the token grid after patchify, which works at any resolution (arXiv 2406.11831, Sec. 3.3).
All three share ``forward(x (N, T, D), grid_shape) -> (N, T, D)``; used by notebooks/04_flag_dit.ipynb.

Example:
    >>> pos = make_pos_embed("sincos", dim=64, grid_shape=(8, 8))
    >>> x = pos(torch.randn(2, 12 * 12, 64), (12, 12))      # (2, 144, 64): works on a larger grid too
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minidit.validation import check_choice

POS_EMBEDS = ("sincos", "learned", "conv", "none")
INTERPOLATION_MODES = ("bicubic", "bilinear")


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """Transformer sin-cos features ``[sin(pos * w_i), cos(pos * w_i)]``, ``w_i = 10000^(-i / (dim / 2))``.

    Args:
        dim: even output width.
        positions: shape ``(T,)``.
    Returns:
        Shape ``(T, dim)``: the first half sines, the second half cosines.
    """
    omega = 10000.0 ** (-torch.arange(dim // 2, device=positions.device, dtype=torch.float32) / (dim // 2))
    angles = positions.float()[:, None] * omega  # (T, dim / 2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (T, dim)


def sincos_grid(dim: int, rows: Tensor, cols: Tensor) -> Tensor:
    """``sincos_2d``'s layout at any positions: row positions ``rows`` ``(h,)`` and column positions ``cols`` ``(w,)``.

    Returns:
        Shape ``(h * w, dim)``: token ``r * w + c`` is ``[sincos_1d(cols[c]), sincos_1d(rows[r])]``.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs dim divisible by 4; got {dim}")
    grid_rows, grid_cols = torch.meshgrid(rows, cols, indexing="ij")  # (h, w) each
    return torch.cat([sincos_1d(dim // 2, grid_cols.flatten()), sincos_1d(dim // 2, grid_rows.flatten())], dim=-1)


def sincos_2d(dim: int, grid_shape: Sequence[int], device: torch.device | str | None = None,
              base_size: int | None = None, interpolation_scale: float = 1.0) -> Tensor:
    """Fixed 2-D table in the layout of the official DiT and MAE: the first ``dim / 2`` channels encode the
    **column** (w), the rest the row (h), so official checkpoints and their tables line up channel for channel
    (facebookresearch/DiT ``get_2d_sincos_pos_embed``, whose meshgrid puts w first).

    Positions are the integers ``0 .. n - 1`` along an axis of ``n`` tokens (DiT: a larger grid extends the table).
    With ``base_size`` they are PixArt's, ``i * base_size / n / interpolation_scale`` (diffusers' ``PatchEmbed``;
    PixArt-alpha, arXiv 2310.00426; PixArt-Sigma, arXiv 2403.04692, Sec. 3.3): any grid is stretched onto the
    training grid of ``base_size`` tokens, and the 1024-pixel models (``interpolation_scale = 2``) take half steps.

    Args:
        dim: embedding width, divisible by 4.
        grid_shape: ``(h, w)`` token grid; tokens are flattened row-major like ``patchify``.
        base_size: the training grid's tokens per side, or ``None`` for integer positions.
        interpolation_scale: PixArt's divisor of the positions (with ``base_size`` only).
    Returns:
        Shape ``(h * w, dim)``: token ``r * w + c`` is ``[sincos_1d(c'), sincos_1d(r')]`` at the positions above.
    """
    def positions(n: int) -> Tensor:
        index = torch.arange(n, device=device, dtype=torch.float32)  # (n,)
        return index if base_size is None else index / (n / base_size) / interpolation_scale

    h, w = grid_shape
    return sincos_grid(dim, positions(h), positions(w))


def interpolate_pos_embed(table: Tensor, grid_shape: Sequence[int], mode: str = "bicubic") -> Tensor:
    """Resize a learned table of shape ``(h0, w0, D)`` to ``(h, w, D)`` by 2-D interpolation.

    Uses ``align_corners=False`` (pixel-centre sampling), so resizing to the same grid returns the table itself.
    """
    check_choice("interpolation mode", mode, INTERPOLATION_MODES)
    grid = table.permute(2, 0, 1).unsqueeze(0)  # (1, D, h0, w0)
    resized = F.interpolate(grid.float(), size=tuple(grid_shape), mode=mode, align_corners=False)  # (1, D, h, w)
    return resized[0].permute(1, 2, 0).to(table.dtype)  # (h, w, D)


class SinCosPosEmbed(nn.Module):
    """Adds the fixed ``sincos_2d`` table, recomputed for whatever grid arrives (no parameters).

    Args:
        dim: token width ``D``.
        base_size: ``None`` for integer positions (DiT), or the training grid's tokens per side for PixArt's
            positions, stretched to it by ``interpolation_scale`` (``sincos_2d``).
        interpolation_scale: PixArt's divisor of the positions.
    """

    def __init__(self, dim: int, base_size: int | None = None, interpolation_scale: float = 1.0):
        super().__init__()
        self.dim, self.base_size, self.interpolation_scale = dim, base_size, interpolation_scale

    def forward(self, x: Tensor, grid_shape: Sequence[int]) -> Tensor:
        """``x`` of shape ``(N, h * w, D)`` plus the table; same shape."""
        table = sincos_2d(self.dim, grid_shape, x.device, self.base_size, self.interpolation_scale)  # (h w, D)
        return x + table.to(x.dtype)


class LearnedPosEmbed(nn.Module):
    """A learned ``(h0, w0, D)`` table, interpolated when the grid differs from the training grid.

    Args:
        dim: embedding width ``D``.
        grid_shape: training grid ``(h0, w0)``.
        mode: ``"bicubic"`` or ``"bilinear"`` interpolation for other grids.
    """

    def __init__(self, dim: int, grid_shape: Sequence[int], mode: str = "bicubic"):
        super().__init__()
        self.mode = check_choice("interpolation mode", mode, INTERPOLATION_MODES)
        self.table = nn.Parameter(torch.zeros(*grid_shape, dim))  # (h0, w0, D); set by the model's init

    def forward(self, x: Tensor, grid_shape: Sequence[int]) -> Tensor:
        """``x`` of shape ``(N, h * w, D)`` plus the (resized) table; same shape."""
        table = self.table
        if tuple(grid_shape) != tuple(table.shape[:2]):
            table = interpolate_pos_embed(table, grid_shape, self.mode)
        return x + table.flatten(0, 1).to(x.dtype)  # (h * w, D) broadcast over N


class ConvPosEmbed(nn.Module):
    """LI-DiT's convolutional position embedding: a residual block ``x + conv(SiLU(conv(x)))`` on the token grid.

    Zero padding at the borders lets the convolutions infer where a token sits, so the embedding is defined for
    any grid size.

    Args:
        dim: token width ``D`` (the convolutions map ``D -> D`` channels).
        kernel_size: odd spatial kernel size.
    """

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so the grid keeps its size; got {kernel_size}")
        self.conv_in = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2)
        self.conv_out = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor, grid_shape: Sequence[int]) -> Tensor:
        """``x`` of shape ``(N, h * w, D)`` plus the conv residual; same shape."""
        n, _, d = x.shape
        grid = x.transpose(1, 2).reshape(n, d, *grid_shape)  # (N, D, h, w)
        residual = self.conv_out(F.silu(self.conv_in(grid)))  # (N, D, h, w)
        return x + residual.flatten(2).transpose(1, 2)  # (N, T, D)


def make_pos_embed(
    kind: str, dim: int, grid_shape: Sequence[int], interpolation: str = "bicubic",
    interpolation_scale: float | None = None,
) -> nn.Module | None:
    """Build a position embedding by name (``None`` for ``"none"``, e.g. when RoPE carries the positions).

    Args:
        kind: one of ``POS_EMBEDS``.
        dim: token width ``D``.
        grid_shape: training token grid ``(h0, w0)`` (used by ``"learned"``, and by ``"sincos"`` with PixArt's
            positions).
        interpolation: resize mode of the learned table.
        interpolation_scale: ``"sincos"`` only: ``None`` for integer positions (DiT), a number for PixArt's
            positions stretched onto the training grid (``sincos_2d``).
    """
    check_choice("pos_embed", kind, POS_EMBEDS)
    if kind == "sincos":
        if interpolation_scale is None:
            return SinCosPosEmbed(dim)
        return SinCosPosEmbed(dim, grid_shape[0], interpolation_scale)
    if kind == "learned":
        return LearnedPosEmbed(dim, grid_shape, interpolation)
    if kind == "conv":
        return ConvPosEmbed(dim)
    return None
