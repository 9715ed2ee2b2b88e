"""Lumina-Next's attention in minidit's block: the part of diffusers' ``LuminaNextDiTBlock`` that maps.

The whole Lumina-Next transformer does not convert (``minidit.convert`` lists the nine differences no weight mapping
expresses), but its attention is the one minidit teaches from Lumina-T2X (arXiv 2405.05945, Sec. 2.1;
``minidit.gating``): self-attention with 2-D RoPE, plus a cross-attention to the caption that reuses the rotated image
query, gated per head by ``tanh(g)`` and summed with the self-attention before one output projection. ``attention_block``
loads it into a ``DiTBlock`` whose ``attention`` computes the same function. Two layouts differ and are converted:
Lumina interleaves the RoPE channel pairs of the row and the column (``h0 w0 h1 w1 ...``) where minidit concatenates
them (``h0 h1 ... w0 w1 ...``), so the query and key rows of each head are permuted; and diffusers holds the shared
query twice (``attn1.to_q`` and ``attn2.to_q``, both the original ``wq``), which must agree. ``attention_io`` records
what each block's attention reads and returns in a forward pass of the diffusers model, to compare the two. Used by
notebooks/10_pretrained.ipynb and tests/test_lumina_next.py.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from minidit.dit import DiTBlock, DiTConfig
from minidit.rope import RotaryEmbedding

ATTENTION_PARAMETERS = ("attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight", "attn2.to_q.weight",
                        "attn2.to_k.weight", "attn2.to_v.weight", "attn2.to_out.0.weight", "gate",
                        "norm1_context.weight")


def lumina_pair_order(head_dim: int) -> Tensor:
    """For each of Lumina's ``head_dim / 2`` RoPE channel pairs (row and column frequencies interleaved), the minidit
    pair with the same angle (rows first, then columns): ``(head_dim // 2,)`` long."""
    quarter = head_dim // 4
    return torch.stack([torch.arange(quarter), torch.arange(quarter) + quarter], dim=1).flatten()


def attention_io(model: Any, *inputs: Any, **kwargs: Any) -> list[tuple[Tensor, Tensor]]:
    """Run the diffusers ``LuminaNextDiT2DModel`` ``model(*inputs, **kwargs)`` without gradients and return, per block,
    its attention's input (the adaLN-normalised tokens, (N, T, D)) and output (``attn2.to_out[0]``'s, (N, T, D))."""
    seen: dict[tuple[int, str], Tensor] = {}
    hooks = []
    for index, layer in enumerate(model.layers):
        hooks.append(layer.norm1.register_forward_hook(
            lambda _module, _args, out, k=index: seen.update({(k, "in"): out[0]})))  # (x, gate, scale, gate)
        hooks.append(layer.attn2.to_out[0].register_forward_hook(
            lambda _module, _args, out, k=index: seen.update({(k, "out"): out})))
    try:
        with torch.no_grad():
            model(*inputs, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return [(seen[index, "in"], seen[index, "out"]) for index in range(len(model.layers))]


def attention_block(layer: Any) -> DiTBlock:
    """A ``DiTBlock`` whose ``attention(x, (h, w), None, text, text_mask)`` is ``layer``'s attention, ``x`` (N, h w, D)
    the normalised tokens and ``text`` (N, L, D) the caption features: ``layer.attn2.to_out[0]`` of the two branches.

    Only the attention is loaded (``ATTENTION_PARAMETERS``); the block's norms, MLP and modulation keep their
    initialisation, as Lumina's have no counterpart (``minidit.convert``).

    Raises:
        ValueError: for a layer whose attention does not map: QK-norm (one LayerNorm over all heads), grouped key /
            value heads, caption features of another width than the model's, or two different query projections.
    """
    attn1, attn2 = layer.attn1, layer.attn2
    dim, heads = attn1.to_q.weight.shape[1], attn1.heads
    head_dim = dim // heads
    if attn1.norm_q is not None:
        raise ValueError("this Lumina-Next layer normalises q and k with one LayerNorm over all heads; minidit's "
                         "QK-norm is per head: build the diffusers model with qk_norm=False")
    if attn1.to_k.weight.shape[0] != dim or attn2.to_k.weight.shape[1] != dim:
        raise ValueError(f"this layer has grouped key/value heads or {attn2.to_k.weight.shape[1]}-wide caption "
                         f"features; minidit's attention has {heads} key/value heads and reads captions at the model "
                         f"width {dim}: build it with num_kv_heads = num_attention_heads and cross_attention_dim = {dim}")
    if not torch.equal(attn1.to_q.weight, attn2.to_q.weight):
        raise ValueError("attn1.to_q and attn2.to_q differ: Lumina's cross-attention reuses the self-attention's "
                         "query (one wq in the published weights), and so does minidit's")
    config = DiTConfig(input_size=2, patch_size=1, in_channels=1,  # image fields unused: only a block is built
                       hidden_size=dim, depth=1, num_heads=heads, norm="rmsnorm", rope=True, pos_embed="none",
                       qkv_bias=False, text_conditioning="gated_cross", text_dim=dim)
    block = DiTBlock(config, RotaryEmbedding(head_dim)).eval()
    pairs = lumina_pair_order(head_dim).argsort()  # minidit pair i is Lumina pair pairs[i]
    rows = (2 * pairs[:, None] + torch.arange(2)).flatten()  # (Dh,): a head's channels in minidit's order
    rows = (torch.arange(heads)[:, None] * head_dim + rows).flatten()  # (D,)
    with torch.no_grad():
        block.attn.qkv.weight.copy_(torch.cat([attn1.to_q.weight[rows], attn1.to_k.weight[rows], attn1.to_v.weight]))
        block.attn.proj.weight.copy_(attn2.to_out[0].weight)
        block.attn.proj.bias.zero_()
        block.cross_attn.kv.weight.copy_(torch.cat([attn2.to_k.weight[rows], attn2.to_v.weight]))  # keys meet q
        block.cross_attn.kv.bias.zero_()
        block.cross_attn.gate.copy_(layer.gate)
        block.cross_attn.text_norm.weight.copy_(layer.norm1_context.weight)
    block.cross_attn.text_norm.eps = layer.norm1_context.eps  # Lumina's norm_eps, 1e-5 by default
    return block
