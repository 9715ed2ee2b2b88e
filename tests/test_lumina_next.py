"""Lumina-Next (diffusers' LuminaNextDiT2DModel) against minidit: the parts that map are the same function.

The whole model is not converted (``minidit.convert`` lists why: its blocks differ from minidit's in ways no weight
mapping can express). What Lumina-T2X teaches and minidit implements does map (``minidit.convert.lumina``), and is
proven here on tiny random models at every block: the 2-D RoPE (the same angles, the channel pairs in another order)
and the block's attention, self-attention plus the zero-initialised tanh-gated cross-attention that reuses the rotated
image query, summed per head before one output projection (``minidit.gating``).
"""
import pytest
import torch
from diffusers import LuminaNextDiT2DModel
from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

from minidit.convert.lumina import ATTENTION_PARAMETERS, attention_block, attention_io, lumina_pair_order
from minidit.rope import rope_frequencies

DIM, HEADS, GRID = 32, 2, (4, 6)  # model width, heads (head width 16), token grid (h, w)
HEAD_DIM = DIM // HEADS
NOT_MAPPED = {  # the rest of a Lumina-Next block: its adaLN (4 chunks, tanh gates), sandwich norms and SwiGLU MLP
    "norm1.linear.weight", "norm1.linear.bias", "norm1.norm.weight", "norm2.weight", "ffn_norm1.weight",
    "ffn_norm2.weight", "feed_forward.linear_1.weight", "feed_forward.linear_2.weight", "feed_forward.linear_3.weight"}


def tiny_lumina(seed=0, **overrides):
    """A tiny random Lumina-Next transformer whose attention fits minidit's: no QK-norm, no grouped keys, text at the
    model width, the cross-attention's query projection the self-attention's (one ``wq`` fills both in the published
    weights)."""
    torch.manual_seed(seed)
    values = dict(sample_size=8, patch_size=2, in_channels=4, hidden_size=DIM, num_layers=2, num_attention_heads=HEADS,
                  num_kv_heads=HEADS, multiple_of=16, qk_norm=False, cross_attention_dim=DIM)
    model = LuminaNextDiT2DModel(**{**values, **overrides}).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
        for layer in model.layers:
            layer.attn2.to_q.weight.copy_(layer.attn1.to_q.weight)
            layer.gate.normal_(0.0, 1.0)  # tanh(g) far from 0: the text branch counts
    return model


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
    rotary = get_2d_rotary_pos_embed_lumina(HEAD_DIM, *GRID)
    recorded = attention_io(lumina, x, torch.rand(3, generator=generator), text, mask, rotary, cross_attention_kwargs={})
    for index, (layer, (tokens, theirs)) in enumerate(zip(lumina.layers, recorded)):
        assert {name for name, _ in layer.named_parameters()} == set(ATTENTION_PARAMETERS) | NOT_MAPPED
        block = attention_block(layer)
        with torch.no_grad():
            ours = block.attention(tokens, GRID, None, text, mask)  # (N, T, D)
            assert theirs.abs().amax() > 1.0
            assert (ours - theirs).abs().amax() < 1e-5 * theirs.abs().amax(), index  # float32 rounding, relative
            block.cross_attn.gate.zero_()  # the gates are what lets the caption in
            assert (block.attention(tokens, GRID, None, text, mask) - theirs).abs().amax() > 0.1


@pytest.mark.parametrize("overrides, error", [
    (dict(qk_norm=True), "one LayerNorm over all heads"),
    (dict(num_kv_heads=1), "grouped key/value heads"),
    (dict(cross_attention_dim=16), "16-wide caption features"),
])
def test_attention_that_does_not_map_is_refused_by_name(overrides, error):
    with pytest.raises(ValueError, match=error):
        attention_block(tiny_lumina(**overrides).layers[0])


def test_two_different_query_projections_are_refused():
    layer = tiny_lumina().layers[0]
    with torch.no_grad():
        layer.attn2.to_q.weight.add_(0.1)
    with pytest.raises(ValueError, match="reuses the self-attention's query"):
        attention_block(layer)
