"""Any modality as frames: pack ``[H, W, T, C]`` into one token sequence with ``[nextline]`` and ``[nextframe]`` tokens.

Lumina-T2X (arXiv 2405.05945, Sec. 2.2) trains one Flag-DiT on images, videos, multi-view images and spectrograms by
treating each as latent frames ``[H, W, T, C]``: patches become tokens frame by frame and row by row, a learnable
``[nextline]`` token ends every row and a ``[nextframe]`` token ends every frame, so the sequence itself says where
rows and frames end and one model reads any resolution, aspect ratio and duration; RoPE gives every token its
position. Lumina's public code has ``[nextline]`` only (``L = h (w + 1)`` in Flag-DiT); ``[nextframe]`` appears in its
README alone, so minidit defines it here. One sample of ``t`` frames of ``h x w`` patches (``H = h p``, ``W = w p``) is::

    for f in 0 .. t-1:  for r in 0 .. h-1:  patch (f, r, 0) ... patch (f, r, w-1), [nextline]
                        [nextframe]
    L = t (h (w + 1) + 1) tokens

with 3-D RoPE positions ``(t, h, w)`` (``minidit.rope.rope_angles``): patch ``(f, r, c)``; the ``[nextline]`` of row
``r`` at ``(f, r, w)``, one past the row's last patch; the ``[nextframe]`` of frame ``f`` at ``(f, h, 0)``, where the row
after the last would start. An image is ``T = 1``. A batch of samples of different sizes is padded at the end of each
sequence to the longest one; padded tokens are masked out as keys in ``scaled_dot_product_attention``, so they never
change a real token, and unpacking drops them and the special tokens. Used by ``minidit.dit`` (``DiTConfig.frames``),
notebooks/09_any_modality.ipynb and exercises/15_frames.ipynb.

Example:
    >>> layout = frame_layout([(4, 3, 3), (1, 6, 6)])    # (t, h, w) patch grids of a clip and an image
    >>> layout.positions.shape, layout.key_mask.shape      # (2, 52, 3), (2, 52): 4 (3 (3 + 1) + 1) = 52 tokens
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor, nn

PATCH, NEXTLINE, NEXTFRAME, PAD = range(4)  # token kinds of a packed sequence


def patchify_frames(x: Tensor, patch_size: int) -> Tensor:
    """Cut frames ``(N, H, W, T, C)`` into ``(N, T * h * w, p * p * C)`` patch tokens, frame by frame, row by row.

    Each token lists its patch's pixels row by row, channels last (index ``(i * p + j) * C + c``), exactly as
    ``minidit.dit.patchify`` does for an image, so frame ``f`` gives the tokens of the image ``x[:, :, :, f]``.
    """
    n, height, width, frames, c = x.shape
    p = patch_size
    if height % p or width % p:
        raise ValueError(f"frame size {height}x{width} is not divisible by patch_size {p}; crop or pad to a multiple of {p}")
    h, w = height // p, width // p
    x = x.reshape(n, h, p, w, p, frames, c)  # (N, h, p, w, p, T, C)
    x = x.permute(0, 5, 1, 3, 2, 4, 6)  # (N, T, h, w, p, p, C)
    return x.reshape(n, frames * h * w, p * p * c)  # (N, T h w, p p C)


def unpatchify_frames(tokens: Tensor, grid: Sequence[int], patch_size: int) -> Tensor:
    """Inverse of ``patchify_frames``: ``(N, t * h * w, p * p * C)`` on a ``(t, h, w)`` grid -> ``(N, h p, w p, t, C)``."""
    n, _, d = tokens.shape
    frames, h, w = grid
    p = patch_size
    c = d // (p * p)
    x = tokens.reshape(n, frames, h, w, p, p, c)  # (N, T, h, w, p, p, C)
    x = x.permute(0, 2, 4, 3, 5, 1, 6)  # (N, h, p, w, p, T, C)
    return x.reshape(n, h * p, w * p, frames, c)  # (N, H, W, T, C)


@dataclass(frozen=True)
class FrameLayout:
    """Where every token of a packed batch comes from and where it sits.

    Attributes:
        grids: the ``(t, h, w)`` patch grid of each sample.
        padded_grid: ``(t, h, w)`` of the padded patch tensor ``(N, P, D)``, ``P = t * h * w``, that patch tokens
            come from (by default the largest extent of each axis).
        source: ``(N, L)`` long; a patch's index into the flattened ``(N * P)`` patch tokens, or ``N * P`` for
            ``[nextline]``, ``N * P + 1`` for ``[nextframe]``, ``N * P + 2`` for padding.
        kinds: ``(N, L)`` long, ``PATCH``, ``NEXTLINE``, ``NEXTFRAME`` or ``PAD``.
        positions: ``(N, L, 3)`` float RoPE positions ``(t, h, w)``; padding sits at 0.
        key_mask: ``(N, L)`` bool, ``True`` for real tokens (patches and special tokens).
        slots: ``(N, P)`` long; for each cell of the padded patch grid, its index into the flattened ``(N * L)``
            sequence, or ``N * L`` for a cell outside the sample (unpacked as zeros).
    """

    grids: tuple[tuple[int, int, int], ...]
    padded_grid: tuple[int, int, int]
    source: Tensor
    kinds: Tensor
    positions: Tensor
    key_mask: Tensor
    slots: Tensor

    @property
    def attention_mask(self) -> Tensor:
        """``(N, 1, 1, L)`` bool for ``scaled_dot_product_attention``: every query may attend to the real keys only."""
        return self.key_mask[:, None, None, :]

    def to(self, device: torch.device | str) -> FrameLayout:
        """The same layout with its tensors on ``device``."""
        move = {name: getattr(self, name).to(device) for name in ("source", "kinds", "positions", "key_mask", "slots")}
        return FrameLayout(self.grids, self.padded_grid, **move)


def sequence_length(grid: Sequence[int]) -> int:
    """Tokens of one sample of ``(t, h, w)`` patches: ``t (h (w + 1) + 1)``."""
    frames, h, w = grid
    return frames * (h * (w + 1) + 1)


def _sample_sequence(grid: tuple[int, int, int], padded: tuple[int, int, int]) -> tuple[list, list, list]:
    """Kinds, padded-grid cell indices (-1 for special tokens) and positions of one sample's tokens, in order."""
    frames, h, w = grid
    _, padded_h, padded_w = padded
    kinds, cells, positions = [], [], []
    for f in range(frames):
        for r in range(h):
            for c in range(w):
                kinds.append(PATCH)
                cells.append((f * padded_h + r) * padded_w + c)
                positions.append((f, r, c))
            kinds.append(NEXTLINE)
            cells.append(-1)
            positions.append((f, r, w))
        kinds.append(NEXTFRAME)
        cells.append(-1)
        positions.append((f, h, 0))
    return kinds, cells, positions


@lru_cache(maxsize=32)
def _layout(grids: tuple[tuple[int, int, int], ...], padded: tuple[int, int, int], device: str) -> FrameLayout:
    n = len(grids)
    cells_per_sample = padded[0] * padded[1] * padded[2]
    length = max(sequence_length(grid) for grid in grids)
    source = torch.full((n, length), n * cells_per_sample + 2)
    kinds = torch.full((n, length), PAD)
    positions = torch.zeros(n, length, 3)
    slots = torch.full((n, cells_per_sample), n * length)
    for i, grid in enumerate(grids):
        sample_kinds, cells, sample_positions = _sample_sequence(grid, padded)
        k = len(sample_kinds)
        kinds_i = torch.tensor(sample_kinds)
        cells_i = torch.tensor(cells)
        is_patch = kinds_i == PATCH
        kinds[i, :k] = kinds_i
        positions[i, :k] = torch.tensor(sample_positions, dtype=torch.float32)
        source[i, :k] = torch.where(is_patch, i * cells_per_sample + cells_i,
                                    n * cells_per_sample + (kinds_i == NEXTFRAME).long())
        slots[i, cells_i[is_patch]] = i * length + torch.arange(k)[is_patch]
    return FrameLayout(grids, padded, source, kinds, positions, kinds != PAD, slots).to(device)


@torch.compiler.disable  # built once per batch shape in Python (and cached): not worth tracing
def frame_layout(grids: Sequence[Sequence[int]], device: torch.device | str | None = None,
                 padded_grid: Sequence[int] | None = None) -> FrameLayout:
    """The packed layout of samples with ``(t, h, w)`` patch grids (cached: a training run reuses a few layouts).

    Args:
        grids: one ``(t, h, w)`` per sample.
        device: where the layout's tensors live.
        padded_grid: the ``(t, h, w)`` grid of the padded patch tensor; default the largest extent of each axis.
    Raises:
        ValueError: for an empty batch, a grid that is not three positive integers, or one larger than ``padded_grid``.
    """
    grids = tuple(tuple(int(size) for size in grid) for grid in grids)
    if not grids or any(len(grid) != 3 or min(grid) < 1 for grid in grids):
        raise ValueError(f"frame grids must be a non-empty list of (t, h, w) with every size >= 1; got {grids}")
    largest = tuple(max(grid[axis] for grid in grids) for axis in range(3))
    padded = largest if padded_grid is None else tuple(int(size) for size in padded_grid)
    if any(size < extent for size, extent in zip(padded, largest)):
        raise ValueError(f"padded_grid {padded} is smaller than the largest sample grid {largest}")
    return _layout(grids, padded, str(torch.device(device or "cpu")))


class FrameTokens(nn.Module):
    """The learnable ``[nextline]`` and ``[nextframe]`` tokens, and packing / unpacking with a ``FrameLayout``.

    Args:
        dim: token width ``D``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.nextline = nn.Parameter(torch.zeros(dim))
        self.nextframe = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.nextline, std=0.02)
        nn.init.normal_(self.nextframe, std=0.02)

    def pack(self, patches: Tensor, layout: FrameLayout) -> Tensor:
        """Patch tokens ``(N, P, D)`` of the padded grid -> the packed sequence ``(N, L, D)`` (padding is zero)."""
        n, cells, dim = patches.shape
        table = torch.cat([patches.reshape(n * cells, dim), self.nextline[None].to(patches.dtype),
                           self.nextframe[None].to(patches.dtype), patches.new_zeros(1, dim)])  # (N P + 3, D)
        return table[layout.source]  # (N, L, D)

    @staticmethod
    def unpack(tokens: Tensor, layout: FrameLayout) -> Tensor:
        """Packed outputs ``(N, L, D)`` -> ``(N, P, D)`` on the padded grid: special and padding tokens dropped, cells
        outside a sample zero."""
        n, length, dim = tokens.shape
        table = torch.cat([tokens.reshape(n * length, dim), tokens.new_zeros(1, dim)])  # (N L + 1, D)
        return table[layout.slots]  # (N, P, D)
