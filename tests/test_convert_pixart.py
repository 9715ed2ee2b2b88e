"""diffusers' PixArtTransformer2DModel and minidit's DiT with PixArt's switches compute the same function, every
parameter of both sides is accounted for, and the switches (adaLN-single, the cross-attention sub-layer) behave."""
import pytest
import torch
from diffusers import PixArtTransformer2DModel

from minidit.convert.pixart import MINIDIT_ONLY, from_diffusers, load_pixart, parameter_map, to_diffusers
from minidit.dit import DiT, DiTConfig
from minidit.gating import gate_values
from minidit.posembed import sincos_1d, sincos_2d, sincos_grid

CAPTION_CHANNELS = 12


def tiny_pixart(seed=0, **overrides):
    """A tiny random PixArt-Sigma transformer: 8x8 latents of 4 channels, patch 2, 2 blocks of 2 heads of 8."""
    torch.manual_seed(seed)
    values = dict(sample_size=8, patch_size=2, in_channels=4, out_channels=8, num_layers=2, num_attention_heads=2,
                  attention_head_dim=8, cross_attention_dim=16, caption_channels=CAPTION_CHANNELS,
                  norm_type="ada_norm_single")
    model = PixArtTransformer2DModel(**{**values, **overrides}).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
    return model


def inputs(seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 4, 8, 8, generator=generator)
    steps = torch.tensor([0, 999, 507, 250])  # 507: 1000 * (507 / 1000) is off by one float32 ulp
    text = torch.randn(4, 5, CAPTION_CHANNELS, generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    return x, steps, text, mask


@torch.no_grad()
def both(pixart, dit, x, steps, text, mask):
    theirs = pixart(x, encoder_hidden_states=text, timestep=steps, encoder_attention_mask=mask).sample
    return theirs, dit(x, steps / 1000, text=text, text_mask=mask)  # step i is minidit's t = i / 1000


@pytest.mark.parametrize("interpolation_scale", [None, 2])
@pytest.mark.parametrize("size", [8, 12, 4])  # the training grid, a larger and a smaller one
def test_converted_model_computes_the_diffusers_function_on_every_grid(interpolation_scale, size):
    pixart = tiny_pixart(interpolation_scale=interpolation_scale)
    dit = from_diffusers(pixart)
    x, steps, text, mask = inputs()
    x = torch.randn(4, 4, size, size, generator=torch.Generator().manual_seed(2))
    theirs, ours = both(pixart, dit, x, steps, text, mask)
    assert ours.shape == (4, 8, size, size)  # noise prediction and learned variance
    assert theirs.abs().amax() > 0.5
    assert (theirs - ours).abs().amax() < 1e-5


def test_pixart_positions_stretch_any_grid_onto_the_training_grid():
    # diffusers' PatchEmbed: positions i * base / g / scale; 1024-pixel models (scale 2) take half steps
    base, dim = 4, 8
    assert torch.equal(sincos_2d(dim, (4, 4), base_size=base), sincos_2d(dim, (4, 4)))  # training grid, scale 1
    halves = torch.arange(8.0) / 2  # a grid twice the training one, or the training one at scale 2 (first 4)
    expected = torch.cat([sincos_1d(dim // 2, halves.repeat(8)), sincos_1d(dim // 2, halves.repeat_interleave(8))],
                         dim=-1)  # token r * 8 + c: [column c / 2, row r / 2]
    torch.testing.assert_close(sincos_2d(dim, (8, 8), base_size=base), expected)
    torch.testing.assert_close(sincos_2d(dim, (4, 4), base_size=base, interpolation_scale=2.0),
                               sincos_grid(dim, halves[:4], halves[:4]))
    assert sincos_2d(dim, (2, 6), base_size=base).shape == (12, dim)  # each axis stretched on its own


def test_padding_changes_nothing_on_either_side():
    pixart = tiny_pixart()
    dit = from_diffusers(pixart)
    x, steps, text, mask = inputs()
    theirs, ours = both(pixart, dit, x, steps, text, mask)
    garbage = torch.where(mask[..., None], text, torch.randn(text.shape) * 100)  # garbage in the padding
    padded_text = torch.cat([garbage, torch.randn(4, 3, CAPTION_CHANNELS) * 100], dim=1)  # and longer
    padded_mask = torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], dim=1)
    theirs_padded, ours_padded = both(pixart, dit, x, steps, padded_text, padded_mask)
    assert (ours_padded - ours).abs().amax() < 1e-6
    assert (theirs_padded - theirs).abs().amax() < 1e-6


def test_a_wrong_mapping_is_detected():
    """The comparison sees the cross-attention: swapping its keys and values breaks the match."""
    pixart = tiny_pixart()
    dit = from_diffusers(pixart)
    kv = dit.blocks[1].cross_attention_layer.text.kv
    with torch.no_grad():
        kv.weight.copy_(torch.cat(kv.weight.chunk(2)[::-1]))
        kv.bias.copy_(torch.cat(kv.bias.chunk(2)[::-1]))
    theirs, ours = both(pixart, dit, *inputs())
    assert (theirs - ours).abs().amax() > 1e-3


@pytest.mark.parametrize("interpolation_scale", [None, 2])
def test_round_trip_restores_every_parameter(interpolation_scale):
    pixart = tiny_pixart(interpolation_scale=interpolation_scale)
    dit = from_diffusers(pixart)
    theirs = pixart.state_dict()
    mapped = parameter_map(dit.config.depth)
    assert sorted(name for _, names in mapped for name in names) == sorted(theirs)  # each diffusers weight once
    flags = {name for name, _ in dit.named_buffers() if name.endswith(".active")}  # pruned-head flags, all True
    ours = set(dit.state_dict())
    assert ours == {name for name, _ in mapped} | set(MINIDIT_ONLY) | flags  # the positions are computed, not stored
    assert dit.config.pos_embed_interpolation_scale == pixart.pos_embed.interpolation_scale
    back = to_diffusers(dit).state_dict()
    assert set(back) == set(theirs)
    assert all(torch.equal(back[name], theirs[name]) for name in theirs)


def test_a_dit_with_integer_sincos_positions_is_refused():
    dit = DiT(pixart_config())  # pos_embed_interpolation_scale None: DiT's integer positions, not PixArt's
    with pytest.raises(ValueError, match="pos_embed_interpolation_scale"):
        to_diffusers(dit)


@pytest.mark.parametrize("setting, message", [
    (dict(use_additional_conditions=True), "use_additional_conditions"),
    (dict(norm_elementwise_affine=True), "norm_elementwise_affine"),
    (dict(caption_channels=None), "caption_channels"),
])
def test_settings_minidit_cannot_express_are_refused(setting, message):
    with pytest.raises(ValueError, match=message):
        from_diffusers(tiny_pixart(**setting))


def test_a_dit_without_pixart_layout_is_refused():
    dit = DiT(DiTConfig(input_size=8, hidden_size=16, depth=2, num_heads=2, text_conditioning="cross", text_dim=12))
    with pytest.raises(ValueError, match="adaln must be 'single'.*cross_attention_layer must be true"):
        to_diffusers(dit)


def pixart_config(**overrides):
    values = dict(input_size=8, in_channels=4, hidden_size=16, depth=3, num_heads=2, text_conditioning="cross",
                  text_dim=CAPTION_CHANNELS, text_pooling=False, adaln="single", cross_attention_layer=True)
    return DiTConfig(**{**values, **overrides})


def test_adaln_single_shares_one_modulation_and_starts_as_the_identity():
    dim, depth = 16, 3
    single, per_block = DiT(pixart_config()), DiT(pixart_config(adaln="per_block"))

    def modulation_size(model):
        return sum(p.numel() for name, p in model.named_parameters() if "modulation" in name)

    assert modulation_size(single) == (6 * dim * dim + 6 * dim) + depth * 6 * dim + 2 * dim
    assert modulation_size(per_block) == depth * (6 * dim * dim + 6 * dim) + (2 * dim * dim + 2 * dim)
    x, steps, text, mask = inputs()
    c = single.shared_modulation(single.t_embedder(steps / 1000))  # (N, 6 D)
    tokens = torch.randn(4, 16, dim)
    caption = single.caption_embedder(text, mask)
    assert torch.equal(single.blocks[0](tokens, c, (4, 4), text=caption.tokens, text_mask=caption.mask), tokens)
    assert torch.equal(single(x, steps / 1000, text=text, text_mask=mask), torch.zeros(4, 4, 8, 8))


def test_gated_cross_attention_layer_starts_closed():
    torch.manual_seed(0)
    model = DiT(pixart_config(text_conditioning="gated_cross")).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "gate" not in name:
                parameter.normal_(0.0, 0.3)
    assert torch.equal(gate_values(model), torch.zeros(3, 2))
    x, steps, text, mask = inputs()
    with torch.no_grad():
        closed = model(x, steps / 1000, text=text, text_mask=mask)
        assert torch.equal(model(x, steps / 1000, text=torch.randn(text.shape), text_mask=mask), closed)
        model.blocks[0].cross_attention_layer.text.gate.fill_(0.5)
        assert (model(x, steps / 1000, text=text, text_mask=mask) - closed).abs().amax() > 1e-3


def test_config_switches_are_checked():
    with pytest.raises(ValueError, match="cross_attention_layer"):
        DiTConfig(cross_attention_layer=True)
    with pytest.raises(ValueError, match="adaln"):
        DiTConfig(adaln="shared")


def test_missing_weights_name_where_they_are_published(tmp_path):
    with pytest.raises(FileNotFoundError, match="PixArt-Sigma-XL-2-512-MS"):
        load_pixart(tmp_path / "pixart")
