"""LI-DiT's language-token refiner and collaborative refiner: bidirectional blocks after a text encoder, gated from 0.

A decoder-only LM's token ``i`` has seen only tokens ``j <= i`` (the causal mask), so words early in a prompt know
nothing of the words after them. LI-DiT (Ma et al., arXiv 2406.11831, Sec. 3.2; ``../shared/notes/papers.md``
Sec. 6) refines the LM's features with a few **bidirectional** transformer blocks trained with the diffusion model,
each branch scaled by an **adaptive gate** computed from the mean-pooled text and the timestep and initialised to
exactly zero (the layout of the closest public refiner, HunyuanVideo's ``token_refiner.py``):

    c = W_t e(t) + MLP(sum_l m_l f_l / sum_l m_l)                       (per caption, (N, Dt))
    g_attn, g_mlp = Linear_0(SiLU(c))                                   (zero weight and bias: 0 at initialisation)
    f <- f + g_attn * Attn(LN(f); M),   f <- f + g_mlp * MLP(LN(f))     (each block; ``depth`` = 2 in LI-DiT)

with the attention mask ``M_ij = m_j [and j <= i with causal=True] or i = j``: a real token attends to every real
token (or, the paper's ablation, only to the ones before it) and never to padding, and every query may attend
itself, so no row of ``M`` is all masked (SDPA would return NaN) even for a padded query. At initialisation the
refiner is exactly the identity, so adding it to a trained model changes nothing until it learns.

The **collaborative refiner** (LI-DiT Sec. 3.2, one block) joins the features of two encoders (the causal LM and
a bidirectional encoder, or two LMs): each branch is first refined by its own token refiner, then each branch's
queries attend to the *other* branch's keys and values, ``a <- a + g_a * Attn(q_a; k_b, v_b)`` and vice versa, then
an MLP, all gated from 0 as above; the branches are concatenated along the tokens for the diffusion model. A DiT
takes both branches as one text of two equal-length segments ``[a; b]`` (``(N, 2 L, Dt)``).

A DiT uses these through ``DiTConfig.text_refiner`` (``"token"`` or ``"collaborative"``), ``refiner_depth``,
``refiner_heads`` and ``refiner_causal``; the refiner runs on the encoder's features before the caption
embedder, conditioned on the DiT's timestep embedding. Used by notebooks/08_llm_text_encoders.ipynb and exercise 14
(the refiner block and the position-bias measurement).

Example:
    >>> refiner = TokenRefiner(dim=128, cond_dim=64)
    >>> refined = refiner(features, mask, t_emb)     # (N, L, 128); equal to features while the gates are 0
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from minidit.attention import merge_heads
from minidit.text.conditioning import masked_mean
from minidit.text.encoder import TextBlock, attention_mask
from minidit.validation import reads_values

REFINERS = ("none", "token", "collaborative")


class RefinerBlock(TextBlock):
    """A pre-norm text block whose attention and MLP outputs are scaled by adaptive gates that start at 0.

    ``gates(c)`` maps the conditioning ``c`` (N, Dt) through SiLU and a zero-initialised linear to two per-channel
    gates ``(N, 1, Dt)``; ``forward(x, attn_mask, c)`` is ``x + g_attn * attn(norm(x))``, then
    ``x + g_mlp * mlp(norm(x))``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__(dim, num_heads, mlp_ratio)
        self.gate = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        zero_gates(self)

    def gates(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """The attention and MLP gates ``(N, 1, Dt)`` each, from ``c`` (N, Dt)."""
        g_attn, g_mlp = self.gate(c).unsqueeze(1).chunk(2, dim=-1)
        return g_attn, g_mlp

    def mlp_branch(self, x: Tensor, g_mlp: Tensor) -> Tensor:
        """``x + g_mlp * mlp(norm(x))`` for ``x`` (N, L, Dt)."""
        return torch.addcmul(x, g_mlp, self.mlp(self.norm2(x)))

    def forward(self, x: Tensor, attn_mask: Tensor, c: Tensor) -> Tensor:
        """``x`` (N, L, Dt) with ``attn_mask`` (N, 1, L, L) bool and conditioning ``c`` (N, Dt) -> ``(N, L, Dt)``."""
        g_attn, g_mlp = self.gates(c)
        x = torch.addcmul(x, g_attn, self.attn(self.norm1(x), attn_mask=attn_mask))
        return self.mlp_branch(x, g_mlp)


def zero_gates(module: nn.Module) -> None:
    """Set every refiner gate in ``module`` to exactly 0 (weight and bias), so each refiner is the identity."""
    for block in module.modules():
        if isinstance(block, RefinerBlock):
            nn.init.zeros_(block.gate[-1].weight)
            nn.init.zeros_(block.gate[-1].bias)


def refiner_gate_norm(module: nn.Module) -> float:
    """Largest absolute weight or bias of any refiner gate in ``module``: exactly 0 while every refiner is the
    identity."""
    values = [block.gate[-1].weight.abs().max() for block in module.modules() if isinstance(block, RefinerBlock)]
    values += [block.gate[-1].bias.abs().max() for block in module.modules() if isinstance(block, RefinerBlock)]
    return float(torch.stack(values).max().detach()) if values else 0.0


class TokenRefiner(nn.Module):
    """LI-DiT's language-token refiner: ``depth`` gated blocks over the features of one text encoder.

    Args:
        dim: width ``Dt`` of the text features (the refiner keeps it).
        cond_dim: width of the timestep embedding it is conditioned on (the DiT's hidden size).
        depth: number of blocks (2 in LI-DiT).
        num_heads: attention heads; ``dim`` must be divisible by it.
        causal: keep the causal mask inside the refiner (LI-DiT's ablation); ``False`` is the refiner.
        mlp_ratio: MLP width as a multiple of ``dim``.
    """

    def __init__(self, dim: int, cond_dim: int, depth: int = 2, num_heads: int = 4, causal: bool = False,
                 mlp_ratio: float = 4.0):
        super().__init__()
        if depth < 1:
            raise ValueError(f"a token refiner needs depth >= 1 (LI-DiT uses 2); got {depth}")
        if dim % num_heads:
            raise ValueError(f"the text width {dim} must be divisible by the refiner's num_heads {num_heads}")
        self.causal = causal
        self.time_projection = nn.Linear(cond_dim, dim)
        self.pooled_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(RefinerBlock(dim, num_heads, mlp_ratio) for _ in range(depth))

    def condition(self, text: Tensor, mask: Tensor, t_emb: Tensor) -> Tensor:
        """``c = W_t t_emb + MLP(masked mean of text)``: ``(N, Dt)`` from ``text`` (N, L, Dt), ``mask`` (N, L) and
        ``t_emb`` (N, Dc)."""
        return self.time_projection(t_emb) + self.pooled_mlp(masked_mean(text, mask))

    def forward(self, text: Tensor, mask: Tensor, t_emb: Tensor) -> Tensor:
        """Refine ``text`` (N, L, Dt) with real-token ``mask`` (N, L) bool at timestep embedding ``t_emb`` (N, Dc).

        Returns ``(N, L, Dt)``; exactly ``text`` while the gates are 0. Real tokens never read padding, so
        appending padding changes no real token's output.
        """
        return self.refine(text, mask, self.condition(text, mask, t_emb))

    def refine(self, text: Tensor, mask: Tensor, c: Tensor) -> Tensor:
        """The blocks of ``forward`` with the conditioning ``c`` (N, Dt) given."""
        attn_mask = attention_mask(mask, self.causal)  # (N, 1, L, L)
        for block in self.blocks:
            text = block(text, attn_mask, c)  # (N, L, Dt)
        return text


def split_segments(text: Tensor, mask: Tensor, segments: int) -> list[tuple[Tensor, Tensor]]:
    """Cut ``text`` (N, S * L, D) and ``mask`` (N, S * L) into ``S`` equal segments ``(N, L, D)``, ``(N, L)``.

    Raises:
        ValueError: if the length is not a multiple of ``segments`` or a segment of a row has no real token.
    """
    if text.shape[1] % segments:
        raise ValueError(f"text of length {text.shape[1]} cannot hold {segments} equal segments (one per text "
                         "encoder); pad every encoder's features to the same length and concatenate them")
    parts = list(zip(text.chunk(segments, dim=1), mask.chunk(segments, dim=1)))
    if reads_values(mask) and not all(bool(m.any(dim=1).all()) for _, m in parts):
        raise ValueError("a caption has no real token in one encoder's segment; every segment needs at least one")
    return parts


class CollaborativeRefiner(nn.Module):
    """LI-DiT's collaborative refiner over two encoders: a token refiner per branch, then one cross-attending block.

    The input is the two encoders' features as one text of two equal-length segments, ``[a; b]`` ``(N, 2 L, Dt)``;
    the output has the same layout. Args as ``TokenRefiner`` (``depth`` is each branch's token refiner's).
    """

    branches_count = 2

    def __init__(self, dim: int, cond_dim: int, depth: int = 2, num_heads: int = 4, causal: bool = False,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.branches = nn.ModuleList(TokenRefiner(dim, cond_dim, depth, num_heads, causal, mlp_ratio)
                                      for _ in range(self.branches_count))
        self.collaboration = nn.ModuleList(RefinerBlock(dim, num_heads, mlp_ratio) for _ in range(self.branches_count))

    def collaborate(self, texts: Sequence[Tensor], masks: Sequence[Tensor],
                    conditions: Sequence[Tensor]) -> list[Tensor]:
        """One block: each branch's queries attend to the other branch's keys and values, then an MLP, all gated.

        Args:
            texts: the two branches ``(N, L, Dt)``.
            masks: their real tokens ``(N, L)``.
            conditions: their ``c`` (N, Dt).
        """
        projected = [block.attn.project(block.norm1(x)) for block, x in zip(self.collaboration, texts)]
        out = []
        for index, (block, x, c) in enumerate(zip(self.collaboration, texts, conditions)):
            other = 1 - index
            q, (_, k, v) = projected[index][0], projected[other]  # (N, H, L, Dh) each
            read = block.attn.attend(q, k, v, masks[other][:, None, None, :])  # (N, H, L, Dh): keys of the other branch
            g_attn, g_mlp = block.gates(c)
            x = torch.addcmul(x, g_attn, block.attn.proj(merge_heads(read)))  # (N, L, Dt)
            out.append(block.mlp_branch(x, g_mlp))
        return out

    def forward(self, text: Tensor, mask: Tensor, t_emb: Tensor) -> Tensor:
        """Refine the two segments of ``text`` (N, 2 L, Dt) with ``mask`` (N, 2 L) at ``t_emb`` (N, Dc) ->
        ``(N, 2 L, Dt)``."""
        parts = split_segments(text, mask, self.branches_count)
        conditions = [refiner.condition(x, m, t_emb) for refiner, (x, m) in zip(self.branches, parts)]
        refined = [refiner.refine(x, m, c) for refiner, (x, m), c in zip(self.branches, parts, conditions)]
        masks = [m for _, m in parts]
        return torch.cat(self.collaborate(refined, masks, conditions), dim=1)  # (N, 2 L, Dt): [a; b]


def make_refiner(kind: str, dim: int, cond_dim: int, depth: int, num_heads: int, causal: bool) -> nn.Module | None:
    """The refiner named ``kind`` (``REFINERS``): ``None`` for ``"none"``."""
    if kind == "none":
        return None
    refiner = TokenRefiner if kind == "token" else CollaborativeRefiner
    return refiner(dim, cond_dim, depth, num_heads, causal)


def text_segments(kind: str) -> int:
    """How many encoders' features the text of a model with refiner ``kind`` holds (2 for ``"collaborative"``)."""
    return CollaborativeRefiner.branches_count if kind == "collaborative" else 1
