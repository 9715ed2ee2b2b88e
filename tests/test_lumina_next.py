"""Lumina-Next (diffusers' LuminaNextDiT2DModel) against minidit: the parts that map are the same function.

The whole model is not converted (``minidit.convert`` lists why: its blocks differ from minidit's in ways no weight
mapping can express). What Lumina-T2X teaches and minidit implements does map, and is proven here on a tiny random
model at every block: the 2-D RoPE (the same angles, the channel pairs in another order) and the block's attention,
self-attention plus the zero-initialised tanh-gated cross-attention that reuses the rotated image query, summed per
head before one output projection (``minidit.gating``).
"""
import pytest
import torch
from diffusers import LuminaNextDiT2DModel
from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

from minidit.dit import DiTBlock, DiTConfig
from minidit.rope import RotaryEmbedding, rope_frequencies

DIM, HEADS, GRID = 32, 2, (4, 6)  # model width, heads (head width 16), token grid (h, w)
HEAD_DIM = DIM // HEADS


def lumina_pair_order(head_dim):
    """minidit's RoPE channel pairs, in Lumina's order: minidit lists the row (h) frequencies then the column (w)
    ones; Lumina interleaves them, h0 w0 h1 w1 ...; returns, for each Lumina pair, the minidit pair."""
    quarter = head_dim // 4
    return torch.stack([torch.arange(quarter), torch.arange(quarter) + quarter], dim=1).flatten()  # (Dh / 2,)


def tiny_lumina(seed=0):
    """A tiny random Lumina-Next transformer whose attention fits minidit's: no QK-norm, no grouped keys, text at
    the model width, the cross-attention's query projection the self-attention's (as in the published weights,
    where one ``wq`` fills both), the norm eps minidit's."""
    torch.manual_seed(seed)
    model = LuminaNextDiT2DModel(sample_size=8, patch_size=2, in_channels=4, hidden_size=DIM, num_layers=2,
                                 num_attention_heads=HEADS, num_kv_heads=HEADS, multiple_of=16, norm_eps=1e-6,
                                 qk_norm=False, cross_attention_dim=DIM).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
        for layer in model.layers:
            layer.attn2.to_q.weight.copy_(layer.attn1.to_q.weight)
            layer.gate.normal_(0.0, 1.0)  # tanh(g) far from 0: the text branch counts
    return model


def minidit_attention(layer):
    """minidit's block with Lumina's attention weights: q and k rows permuted per head into minidit's RoPE order."""
    config = DiTConfig(input_size=8, hidden_size=DIM, depth=1, num_heads=HEADS, norm="rmsnorm", rope=True,
                       pos_embed="none", qkv_bias=False, text_conditioning="gated_cross", text_dim=DIM)
    block = DiTBlock(config, RotaryEmbedding(HEAD_DIM)).eval()
    pairs = lumina_pair_order(HEAD_DIM).argsort()  # minidit pair i is Lumina pair pairs[i]
    rows = (2 * pairs[:, None] + torch.arange(2)).flatten()  # channel rows within a head
    rows = (torch.arange(HEADS)[:, None] * HEAD_DIM + rows).flatten()  # (D,)
    attn1, attn2 = layer.attn1, layer.attn2
    with torch.no_grad():
        block.attn.qkv.weight.copy_(torch.cat([attn1.to_q.weight[rows], attn1.to_k.weight[rows], attn1.to_v.weight]))
        block.attn.proj.weight.copy_(attn2.to_out[0].weight)
        block.attn.proj.bias.zero_()
        block.cross_attn.kv.weight.copy_(torch.cat([attn2.to_k.weight[rows], attn2.to_v.weight]))
        block.cross_attn.kv.bias.zero_()
        block.cross_attn.gate.copy_(layer.gate)
        block.cross_attn.text_norm.weight.copy_(layer.norm1_context.weight)
    return block


def test_lumina_rope_is_minidits_with_the_channel_pairs_interleaved():
    theirs = get_2d_rotary_pos_embed_lumina(HEAD_DIM, *GRID).flatten(0, 1)  # (T, Dh / 2) complex
    ours = torch.polar(torch.ones(()), rope_frequencies(GRID, HEAD_DIM))  # (T, Dh / 2)
    assert (ours[:, lumina_pair_order(HEAD_DIM)] - theirs).abs().amax() < 1e-6  # measured: 0
    assert (ours - theirs).abs().amax() > 0.5  # the order matters: minidit's own order is not Lumina's


@pytest.mark.parametrize("seed", [0, 1])
def test_every_lumina_next_block_attends_like_a_minidit_block(seed):
    lumina = tiny_lumina(seed)
    generator = torch.Generator().manual_seed(seed + 10)
    x = torch.randn(3, 4, 2 * GRID[0], 2 * GRID[1], generator=generator)
    text = torch.randn(3, 5, DIM, generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    seen = {}
    hooks = []
    for index, layer in enumerate(lumina.layers):  # each block's attention input and its projected output
        hooks.append(layer.norm1.register_forward_hook(lambda _m, _i, out, k=index: seen.update({(k, "in"): out[0]})))
        hooks.append(layer.attn2.to_out[0].register_forward_hook(lambda _m, _i, out, k=index: seen.update({(k, "out"): out})))
    with torch.no_grad():
        rotary = get_2d_rotary_pos_embed_lumina(HEAD_DIM, *GRID)
        lumina(x, torch.rand(3, generator=generator), text, mask, rotary, cross_attention_kwargs={})
        for hook in hooks:
            hook.remove()
        for index, layer in enumerate(lumina.layers):
            block = minidit_attention(layer)
            ours = block.attention(seen[index, "in"], GRID, None, text, mask)  # (N, T, D)
            theirs = seen[index, "out"]
            assert theirs.abs().amax() > 1.0
            assert (ours - theirs).abs().amax() < 1e-5 * theirs.abs().amax(), index  # float32 rounding, relative
            block.cross_attn.gate.zero_()  # the gates are what lets the caption in
            assert (block.attention(seen[index, "in"], GRID, None, text, mask) - theirs).abs().amax() > 0.1
