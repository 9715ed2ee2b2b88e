"""Multi-head self-attention over image tokens, with optional QK-norm and rotary positions.

Each head computes ``softmax(q k^T / sqrt(Dh)) v`` (Vaswani et al. 2017, eq. 1) through
``torch.nn.functional.scaled_dot_product_attention``; QK-norm normalises ``q`` and ``k`` per head first (SD3,
arXiv 2403.03206, Sec. 5.3.2; Flag-DiT, arXiv 2405.05945, Sec. 2.1) and RoPE rotates them by token position.
Used by ``minidit.dit`` and notebooks/04_flag_dit.ipynb (which reads ``last_max_logit``).

Example:
    >>> attn = SelfAttention(64, num_heads=4, qk_norm="rmsnorm")
    >>> attn.track_max_logit = True
    >>> y = attn(torch.randn(2, 16, 64))     # (2, 16, 64); attn.last_max_logit is a 0-d tensor
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from minidit.norms import NORMS, QKNorm
from minidit.rope import RotaryEmbedding, apply_rope
from minidit.validation import check_choice


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(N, T, H * Dh)`` -> ``(N, H, T, Dh)``."""
    n, t, d = x.shape
    return x.reshape(n, t, num_heads, d // num_heads).transpose(1, 2)  # (N, H, T, Dh)


def merge_heads(x: Tensor) -> Tensor:
    """``(N, H, T, Dh)`` -> ``(N, T, H * Dh)``."""
    n, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(n, t, h * dh)  # (N, T, D)


class SelfAttention(nn.Module):
    """Self-attention split into ``project`` (tokens -> normalised, rotated q, k, v) and ``attend`` (SDPA).

    The split is the extension point: joint attention (MM-DiT) concatenates the ``project`` outputs of two token
    streams before one ``attend``; gated cross-attention reuses ``q`` with keys/values from text; KV compression
    downsamples ``k, v`` on the token grid between the two steps.

    Args:
        dim: token width ``D``.
        num_heads: number of heads ``H``; ``D`` must be divisible by ``H``.
        qk_norm: ``None``, ``"rmsnorm"`` or ``"layernorm"`` applied to q and k per head.
        qkv_bias: bias in the q, k, v projection.
        rope: shared ``RotaryEmbedding``; when given, ``forward`` needs the token ``grid_shape``.

    Attributes:
        track_max_logit: when ``True``, each call stores the largest pre-softmax logit ``max q.k / sqrt(Dh)``
            (before any mask or bias) as a detached 0-d tensor in ``last_max_logit``; the output is unchanged.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_norm: str | None = None,
        qkv_bias: bool = True,
        rope: RotaryEmbedding | None = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if qk_norm is not None:
            check_choice("qk_norm", qk_norm, NORMS)
        self.qk_norm = QKNorm(qk_norm, self.head_dim) if qk_norm is not None else None
        self.rope = rope
        self.track_max_logit = False
        self.last_max_logit: Tensor | None = None

    def project(self, x: Tensor, grid_shape: Sequence[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of ``x`` (N, T, D), each ``(N, H, T, Dh)``, after QK-norm and RoPE."""
        q, k, v = (split_heads(part, self.num_heads) for part in self.qkv(x).chunk(3, dim=-1))  # (N, H, T, Dh)
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k)
        if self.rope is not None:
            if grid_shape is None:
                raise ValueError("this attention uses RoPE: pass grid_shape, the token grid (h, w) or the positions "
                                 "(N, T, 3) of packed frames")
            angles = self.rope(grid_shape, device=x.device)  # (T, Dh // 2), or (N, T, Dh // 2) for frames
            q, k = apply_rope(q, angles), apply_rope(k, angles)
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Scaled dot-product attention of ``q`` (N, H, T, Dh) over ``k, v`` (N, H, S, Dh) -> ``(N, H, T, Dh)``.

        Args:
            attn_mask: boolean (``True`` = may attend) or additive float bias, broadcastable to ``(N, H, T, S)``.
        """
        if self.track_max_logit:
            logits = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1])  # (N, H, T, S)
            self.last_max_logit = logits.amax().detach()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)

    def forward(
        self, x: Tensor, grid_shape: Sequence[int] | None = None, attn_mask: Tensor | None = None
    ) -> Tensor:
        """Attend ``x`` of shape ``(N, T, D)`` to itself; returns ``(N, T, D)``.

        Args:
            x: tokens, flattened row-major from a grid of shape ``grid_shape``.
            grid_shape: token grid ``(h, w)``, or per-token positions ``(N, T, 3)`` of packed frames
                (``minidit.frames``); required when RoPE is on.
            attn_mask: see ``attend``.
        """
        q, k, v = self.project(x, grid_shape)
        return self.proj(merge_heads(self.attend(q, k, v, attn_mask)))
