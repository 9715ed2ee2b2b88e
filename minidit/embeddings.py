"""Sinusoidal embedding of a scalar (time) into a vector, shared by the toy MLPs and the DiT.

A scalar ``t`` becomes ``[cos(w_i t), sin(w_i t)]`` with frequencies ``w_i = scale * max_period^(-i / half)``,
the transformer position encoding (Vaswani et al. 2017) applied to time as in DiT's ``TimestepEmbedder``
(Peebles & Xie, arXiv 2212.09748, Sec. 3.2). minidit's ``t`` lives in [0, 1], so ``scale = 1000`` spreads it over
the same range as DDPM's integer steps.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, scale: float = 1000.0) -> Tensor:
    """Embed times ``t`` of shape ``(N,)`` into ``(N, dim)`` sin-cos features (``dim`` even or odd)."""
    if t.ndim != 1:
        raise ValueError(f"t must have shape (N,), got {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = scale * t.float()[:, None] * freqs[None]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 2 * half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
