"""KV token compression: attend every query to a coarser grid of keys and values.

Self-attention over ``T`` image tokens costs ``4 T^2 D`` FLOPs per block; merging each ``r x r`` window of the
token grid into one key and one value leaves ``S = T / r^2`` of them and the cost ``4 T S D``, while the queries,
and so the output, keep full resolution. PixArt-Sigma (Chen et al., arXiv 2403.04692, "KV token compression") merges
with one depthwise convolution of kernel and stride ``r``, shared by keys and values and initialised to the
average (weights ``1 / r^2``, bias 0), so that a model trained without compression can be fine-tuned into one with
it (their "weak-to-strong" step). Used by notebooks/07_kv_compression.ipynb, exercises/11_kv_compression.ipynb,
``minidit.dit`` (``DiTConfig.kv_compression``) and bench/kv_compression.py.

Modes (``KV_MODES``), for the ablation:

- ``"conv"``: PixArt-Sigma's learned depthwise ``Conv2d(D, D, r, stride=r, groups=D)``, average-initialised.
- ``"uniform"``: keep the top-left token of each window, ``grid[::r, ::r]`` (PixArt's ``uniform``).
- ``"average"``: the true ``r x r`` average pool. PixArt's ``ave`` mode is in fact nearest-neighbour
  interpolation (PixArt-alpha/PixArt-sigma, ``diffusion/model/nets/PixArt_blocks.py::AttentionKVCompress``), so
  it picks one token per window like ``uniform``; minidit's ``average`` is the pool that its name says.

Where minidit differs from PixArt-Sigma: PixArt follows the conv by a LayerNorm; minidit leaves it out, so that the
average-initialised conv is exactly the identity of attention on inputs constant on each ``r x r`` window (a key
repeated ``r^2`` times gets the same softmax weight as the one merged key) and a checkpoint without compression
loads with unchanged outputs on such inputs. Keys are compressed after QK-norm, as in PixArt, and after RoPE when
the model uses it (each merged key is then the average of its window's rotated keys).

Example:
    >>> compress = KVCompression(64, ratio=2)
    >>> k, v = torch.randn(2, 4, 256, 16), torch.randn(2, 4, 256, 16)    # (N, H, T, Dh) on a 16 x 16 grid
    >>> k, v = compress(k, v, (16, 16))                                   # each (2, 4, 64, 16)
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from minidit.validation import check_choice

KV_MODES = ("conv", "uniform", "average")


def attention_flops(tokens: int, dim: int, ratio: int = 1, mode: str = "conv") -> int:
    """Forward FLOPs of one sample's self-attention in one block, with keys and values compressed by ``ratio``.

    The products ``q k^T`` and ``softmax(.) v`` over ``S = T / r^2`` keys cost ``2 T S D`` each; the ``"conv"`` mode
    adds its depthwise conv, ``r^2`` multiply-adds per output per channel for keys and values, ``2 * 2 * S r^2 D =
    4 T D``. Pooling and picking tokens are not multiply-adds and are left out (as norms and softmax are in MFU).

    Args:
        tokens: image tokens ``T``, a multiple of ``ratio ** 2``.
        dim: width ``D`` (all heads together).
        ratio: compression ratio ``r``; 1 is plain attention, ``4 T^2 D``.
        mode: one of ``KV_MODES``.
    """
    check_choice("KV compression mode", mode, KV_MODES)
    if ratio < 1:
        raise ValueError(f"ratio must be an integer >= 1 (1 is plain attention); got {ratio}")
    if tokens % (ratio * ratio):
        raise ValueError(f"tokens ({tokens}) must be a multiple of ratio^2 ({ratio}^2); pass the grid's h * w")
    keys = tokens // (ratio * ratio)
    conv = 4 * tokens * dim if mode == "conv" and ratio > 1 else 0
    return 4 * tokens * keys * dim + conv


class KVCompression(nn.Module):
    """Merge each ``r x r`` window of the token grid into one key and one value (see the module docstring).

    Args:
        dim: width ``D = H * Dh`` of keys and values, all heads together (the conv is per channel).
        ratio: window side ``r``, an integer >= 2.
        mode: one of ``KV_MODES``; only ``"conv"`` has parameters (``conv.weight`` (D, 1, r, r), ``conv.bias`` (D,)).
    """

    def __init__(self, dim: int, ratio: int, mode: str = "conv"):
        super().__init__()
        check_choice("KV compression mode", mode, KV_MODES)
        if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 2:
            raise ValueError(
                f"KV compression ratio must be an integer >= 2; got {ratio!r} (for no compression leave it out)"
            )
        self.dim, self.ratio, self.mode = dim, ratio, mode
        self.conv = nn.Conv2d(dim, dim, ratio, stride=ratio, groups=dim) if mode == "conv" else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PixArt-Sigma's average initialisation of the conv: every weight ``1 / r^2``, bias 0."""
        if self.conv is not None:
            nn.init.constant_(self.conv.weight, 1.0 / self.ratio**2)
            nn.init.zeros_(self.conv.bias)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, ratio={self.ratio}, mode={self.mode!r}"

    def check_grid(self, keys: Tensor, grid_shape: Sequence[int] | None) -> tuple[int, int]:
        """Return the grid ``(h, w)`` of keys ``(N, H, T, Dh)``, or raise a ``ValueError`` naming grid, r and the fix."""
        if grid_shape is None or len(grid_shape) != 2:
            raise ValueError(f"KV compression needs the 2-D token grid (h, w) of the keys; got grid_shape={grid_shape}")
        h, w = (int(side) for side in grid_shape)
        if keys.ndim != 4 or keys.shape[2] != h * w or keys.shape[1] * keys.shape[3] != self.dim:
            raise ValueError(
                f"keys and values must have shape (N, H, h * w, Dh) with H * Dh = {self.dim} on the grid ({h}, {w}); "
                f"got {tuple(keys.shape)}"
            )
        r = self.ratio
        if h % r or w % r:
            raise ValueError(
                f"token grid ({h}, {w}) is not divisible by the KV compression ratio r={r}; use an image whose "
                f"side / patch_size is a multiple of {r}, or leave this block out of kv_compression['blocks']"
            )
        return h, w

    def forward(self, k: Tensor, v: Tensor, grid_shape: Sequence[int] | None) -> tuple[Tensor, Tensor]:
        """Compress keys and values ``(N, H, T, Dh)``, row-major on the ``(h, w)`` grid, to ``(N, H, T / r^2, Dh)``."""
        if k.shape != v.shape:
            raise ValueError(f"keys and values must have the same shape; got {tuple(k.shape)} and {tuple(v.shape)}")
        h, w = self.check_grid(k, grid_shape)
        n, heads, _, head_dim = k.shape
        r = self.ratio
        kv = torch.cat([k, v]).reshape(2 * n, heads, h, w, head_dim)  # (2N, H, h, w, Dh): one pass for both
        if self.mode == "uniform":
            kv = kv[:, :, ::r, ::r]  # (2N, H, h / r, w / r, Dh)
        elif self.mode == "average":
            kv = kv.reshape(2 * n, heads, h // r, r, w // r, r, head_dim).mean(dim=(3, 5))  # (2N, H, h/r, w/r, Dh)
        else:
            channels = kv.permute(0, 1, 4, 2, 3).reshape(2 * n, self.dim, h, w)  # (2N, D, h, w), channel = head * Dh + j
            merged = self.conv(channels)  # (2N, D, h / r, w / r)
            kv = merged.reshape(2 * n, heads, head_dim, h // r, w // r).permute(0, 1, 3, 4, 2)  # (2N, H, h/r, w/r, Dh)
        kv = kv.reshape(2 * n, heads, (h // r) * (w // r), head_dim).contiguous()  # (2N, H, S, Dh)
        # contiguous: with a strided Dh, SDPA would leave its fused CPU kernel for the slow math path
        return kv[:n], kv[n:]
