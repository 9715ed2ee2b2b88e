"""Lumina's zero-initialised gated cross-attention: text enters each block through a per-head tanh gate that starts at 0.

Inside a block's attention, the image queries ``q`` (after QK-norm and RoPE) attend twice, to the image tokens and to
the caption tokens, and the two results are summed per head before the shared output projection
(Lumina-T2X, arXiv 2405.05945, Sec. 2.1):

    out_h = softmax(q_h k_h^T / sqrt(d)) v_h + tanh(g_h) softmax(q_h k_text,h^T / sqrt(d)) v_text,h

with one learnable ``g_h`` per head, initialised to 0, so an untrained text branch changes nothing (the model starts
as the text-free model it may be initialised from). The caption is RMS-normalised at each block, then has its own
key/value projections and its own key norm, and gets no RoPE. With ``gated=False`` the same module is PixArt's plain
cross-attention (``tanh(g)`` replaced by 1; PixArt-alpha, arXiv 2310.00426, Sec. 2.3). PixArt itself runs it as a
sub-layer of its own after self-attention, ``x = x + proj(cross_attention(query(x), caption))`` with its own query
and output projections and no caption norm (``CrossAttentionLayer``; ``DiTConfig.cross_attention_layer``).

Lumina reports that after training most gates sit near zero and 80% of them can be switched off without visible
loss. ``prune_gates`` switches heads off so that their cross-attention is **skipped**: their key/value rows are not
projected and their attention is not computed, so pruning saves time in proportion to the branch's share.
Caption pooling for adaLN (``CaptionPooling``): masked mean of the caption, LayerNorm, a zero-initialised linear,
added to the time embedding. Used by notebooks/05_text_conditioning.ipynb and exercise 10 (gated cross-attention).

Example:
    >>> model = DiT(DiTConfig(text_conditioning="gated_cross", text_dim=128, ...))
    >>> gate_values(model)                    # (depth, heads), all 0 at initialisation
    >>> prune_gates(model, fraction=0.8)      # switch off the 80% of heads with the smallest |tanh g|
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minidit.attention import merge_heads, split_heads
from minidit.norms import RMSNorm, make_norm


class GatedCrossAttention(nn.Module):
    """The text branch of a block's attention: image queries attend to caption tokens, gated per head.

    Args:
        dim: model width ``D`` (image and caption tokens).
        num_heads: heads ``H``; ``D / H`` is the head width.
        qk_norm: norm of the text keys per head (``None``, ``"rmsnorm"`` or ``"layernorm"``), like the image keys'.
        gated: ``True`` for Lumina's zero-initialised tanh gates, ``False`` for PixArt's ungated cross-attention.
        text_norm: RMS-normalise the caption first (Lumina); ``False`` for PixArt, which reads it as projected.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: str | None = None, gated: bool = True,
                 text_norm: bool = True):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.text_norm = RMSNorm(dim) if text_norm else None
        self.kv = nn.Linear(dim, 2 * dim)
        self.k_norm = make_norm(qk_norm, self.head_dim) if qk_norm is not None else None
        self.gate = nn.Parameter(torch.zeros(num_heads)) if gated else None  # (H,)
        self.register_buffer("active", torch.ones(num_heads, dtype=torch.bool))  # pruned heads are False
        self._heads: list[int] = list(range(num_heads))  # Python copy of ``active``: no device sync per call

    def gate_value(self) -> Tensor:
        """``tanh(g)`` per head, ``(H,)``; ones for an ungated branch; 0 for a pruned head."""
        value = torch.tanh(self.gate) if self.gate is not None else torch.ones(self.num_heads, device=self.active.device)
        return value.detach() * self.active

    def set_active(self, active: Tensor) -> None:
        """Keep the heads where ``active`` (H,) bool is True; the others are skipped from now on."""
        self.active.copy_(active)
        self._heads = [h for h, keep in enumerate(active.tolist()) if keep]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._heads = [h for h, keep in enumerate(self.active.tolist()) if keep]

    def forward(self, q: Tensor, text: Tensor, text_mask: Tensor, out: Tensor | None = None) -> Tensor:
        """Add the gated cross-attention of queries ``q`` (N, H, T, Dh) over ``text`` (N, L, D) to ``out`` (N, H, T, Dh).

        Args:
            q: the block's image queries (after QK-norm and RoPE).
            text: caption tokens at the model width; ``text_mask`` (N, L) bool marks the real ones.
            out: the self-attention output per head, returned with the text branch added (active heads only);
                ``None`` returns the text branch alone (zero for pruned heads).
        """
        if out is None:
            out = torch.zeros_like(q)
        heads = self._heads
        if not heads:
            return out  # every head pruned: the branch is skipped entirely
        if self.text_norm is not None:
            text = self.text_norm(text)
        weight = self.kv.weight.view(2, self.num_heads, self.head_dim, -1)[:, heads]  # (2, H', Dh, D)
        bias = self.kv.bias.view(2, self.num_heads, self.head_dim)[:, heads]  # (2, H', Dh)
        k, v = F.linear(text, weight.flatten(0, 2), bias.flatten()).chunk(2, dim=-1)  # (N, L, H' * Dh) each
        k, v = split_heads(k, len(heads)), split_heads(v, len(heads))  # (N, H', L, Dh)
        if self.k_norm is not None:
            k = self.k_norm(k)
        all_heads = len(heads) == self.num_heads
        q_active = q if all_heads else q[:, heads]  # (N, H', T, Dh)
        cross = F.scaled_dot_product_attention(q_active, k, v, attn_mask=text_mask[:, None, None, :])  # (N, H', T, Dh)
        if self.gate is not None:
            gate = self.gate if all_heads else self.gate[heads]
            cross = cross * torch.tanh(gate).to(cross.dtype)[:, None, None]
        if all_heads:
            return out + cross
        return out.index_add(1, torch.tensor(heads, device=out.device), cross)


class CrossAttentionLayer(nn.Module):
    """PixArt's cross-attention sub-layer, ``(N, T, D) -> (N, T, D)``: its own query and output projections around
    the text branch, added to the tokens after self-attention with no norm before it (PixArt-alpha, Sec. 2.3).

    Args:
        dim: model width ``D`` (image and caption tokens).
        num_heads: heads ``H``.
        qk_norm: norm of the queries and text keys per head, or ``None`` (PixArt).
        gated: Lumina's zero-initialised tanh gate per head on the branch; ``False`` for PixArt.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: str | None = None, gated: bool = False):
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.q_norm = make_norm(qk_norm, dim // num_heads) if qk_norm is not None else None
        self.text = GatedCrossAttention(dim, num_heads, qk_norm, gated, text_norm=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        """Image tokens ``x`` (N, T, D) attend to ``text`` (N, L, D) with ``text_mask`` (N, L) bool -> ``(N, T, D)``."""
        q = split_heads(self.query(x), self.text.num_heads)  # (N, H, T, Dh)
        if self.q_norm is not None:
            q = self.q_norm(q)
        return self.proj(merge_heads(self.text(q, text, text_mask)))  # (N, T, D)


class CaptionPooling(nn.Module):
    """Pooled caption -> adaLN: ``Linear(LayerNorm(masked_mean(text)))``, the linear zero-initialised, ``(N, Dt) -> (N, D)``.

    Added to the time embedding, it lets the caption modulate every block; being zero at initialisation, it leaves
    a model initialised without text unchanged (Lumina-T2X's caption pooling; SD3 uses ``MLP(pooled)`` instead).
    """

    def __init__(self, text_dim: int, hidden_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(text_dim)
        self.linear = nn.Linear(text_dim, hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        """``pooled`` (N, Dt), the masked mean of the caption features -> ``(N, D)``."""
        return self.linear(self.norm(pooled))


def cross_attentions(model: nn.Module) -> list[GatedCrossAttention]:
    """The text branches of ``model``'s blocks, in block order.

    Raises:
        ValueError: if the model has none (it is not a cross-attention text model).
    """
    branches = [m for m in model.modules() if isinstance(m, GatedCrossAttention)]
    if not branches:
        raise ValueError("this model has no cross-attention text branch; build it with text_conditioning = "
                         "'gated_cross' (or 'cross')")
    return branches


def gate_values(model: nn.Module) -> Tensor:
    """``tanh(g)`` of every block and head, ``(depth, heads)``; pruned heads read 0.

    Raises:
        ValueError: if the model's cross-attention is ungated (``text_conditioning = 'cross'``) or absent.
    """
    branches = cross_attentions(model)
    if branches[0].gate is None:
        raise ValueError("this model's cross-attention has no gates (text_conditioning = 'cross'); "
                         "gates exist with text_conditioning = 'gated_cross'")
    return torch.stack([branch.gate_value() for branch in branches])


def prune_gates(model: nn.Module, fraction: float | None = None, threshold: float | None = None) -> int:
    """Switch off gated heads whose ``|tanh(g)|`` is smallest; their cross-attention is skipped from then on.

    Give exactly one of ``fraction`` (in [0, 1]: that share of all heads of all blocks, the smallest first) and
    ``threshold`` (every head with ``|tanh(g)| < threshold``). Heads already pruned stay pruned.

    Returns:
        the number of heads now pruned.
    """
    if (fraction is None) == (threshold is None):
        raise ValueError("pass exactly one of fraction (share of heads to prune) or threshold (on |tanh g|)")
    values = gate_values(model).abs()  # (depth, heads)
    if fraction is not None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must lie in [0, 1]; got {fraction}")
        count = round(fraction * values.numel())
        order = torch.argsort(values.flatten(), stable=True)
        prune = torch.zeros(values.numel(), dtype=torch.bool)
        prune[order[:count]] = True
        prune = prune.view_as(values)
    else:
        prune = values < threshold
    for branch, pruned in zip(cross_attentions(model), prune):
        branch.set_active(branch.active & ~pruned.to(branch.active.device))
    return int(sum(int((~branch.active).sum()) for branch in cross_attentions(model)))


def restore_gates(model: nn.Module) -> None:
    """Switch every pruned head back on."""
    for branch in cross_attentions(model):
        branch.set_active(torch.ones_like(branch.active))
