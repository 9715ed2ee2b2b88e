"""DiT: exact parameter counts, patchify round trip, adaLN-Zero identity, resolution changes, CFG null label."""
import pytest
import torch

from minidit.dit import PRESETS, STYLES, DiT, DiTConfig, LabelEmbedder, patchify, unpatchify

TINY = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=4, num_classes=5)


def tiny_model(**overrides) -> DiT:
    """A small class-conditional model in eval mode (no random label dropout)."""
    torch.manual_seed(0)
    return DiT(DiTConfig.from_dict({**TINY, **overrides})).eval()


def randomise(model: DiT) -> DiT:
    """Perturb every weight so the zero-initialised layers no longer hide the computation."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def expected_parameters(cfg: DiTConfig) -> int:
    """Closed-form count from the architecture: linear layers are in * out + out."""
    def linear(fan_in, fan_out):
        return fan_in * fan_out + fan_out

    d, p, heads = cfg.hidden_size, cfg.patch_size, cfg.num_heads
    mlp = int(d * cfg.mlp_ratio)
    patch_embed = linear(p * p * cfg.in_channels, d)
    time_embed = linear(cfg.frequency_embedding_size, d) + linear(d, d)
    label_embed = (cfg.num_classes + 1) * d if cfg.num_classes else 0  # + 1: the null label
    qk_norm = {None: 0, "rmsnorm": 2 * (d // heads), "layernorm": 4 * (d // heads)}[cfg.qk_norm]
    block = linear(d, 3 * d) + linear(d, d) + qk_norm + linear(d, mlp) + linear(mlp, d) + linear(d, 6 * d)
    final = linear(d, 2 * d) + linear(d, p * p * cfg.out_channels)
    pos = {"sincos": 0, "none": 0, "learned": cfg.grid_size**2 * d, "conv": 2 * (9 * d * d + d)}[cfg.pos_embed]
    return patch_embed + time_embed + label_embed + cfg.depth * block + final + pos


def count_on_meta(name: str, **kwargs) -> tuple[int, DiTConfig]:
    with torch.device("meta"):
        model = DiT.from_preset(name, **kwargs)
    return sum(p.numel() for p in model.parameters() if p.requires_grad), model.config


def test_parameter_counts_of_all_presets_match_closed_form():
    assert len(PRESETS) == 12
    for name in PRESETS:
        count, cfg = count_on_meta(name, input_size=32, in_channels=4, num_classes=1000)
        assert count == expected_parameters(cfg), name


@pytest.mark.parametrize("style", list(STYLES))
@pytest.mark.parametrize("overrides", [{}, dict(qk_norm="layernorm", pos_embed="learned", num_classes=0)])
def test_parameter_counts_of_styles_match_closed_form(style, overrides):
    count, cfg = count_on_meta("DiT-B/4", style=style, **{**dict(input_size=64, in_channels=3, num_classes=10),
                                                          **overrides})
    assert count == expected_parameters(cfg)


def test_dit_xl_2_parameter_count():
    out4, _ = count_on_meta("DiT-XL/2", input_size=32, in_channels=4, num_classes=1000)
    out8, _ = count_on_meta("DiT-XL/2", input_size=32, in_channels=4, out_channels=8, num_classes=1000)
    assert out4 == 674_816_272
    assert out8 == 674_834_720
    # DiT's released count, 675,129,632, also includes its frozen 16 x 16 x 1152 sin-cos table
    assert out8 + 16 * 16 * 1152 == 675_129_632
    learned, _ = count_on_meta("DiT-XL/2", input_size=32, in_channels=4, out_channels=8, num_classes=1000,
                               pos_embed="learned")
    assert learned == 675_129_632


def test_patchify_round_trip_and_token_layout():
    x = torch.randn(2, 3, 12, 20)
    for p in (1, 2, 4):
        tokens = patchify(x, p)
        assert tokens.shape == (2, (12 // p) * (20 // p), p * p * 3)  # (N, T, p * p * C)
        assert torch.equal(unpatchify(tokens, (12 // p, 20 // p), p), x)
    tokens = patchify(x, 4)
    i, j = 1, 3  # token (1, 3) lives at index i * w + j and holds its patch, channels last
    assert torch.equal(tokens[:, i * 5 + j], x[:, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].permute(0, 2, 3, 1).flatten(1))
    with pytest.raises(ValueError, match="not divisible by patch_size 4"):
        patchify(torch.randn(1, 3, 10, 12), 4)


@pytest.mark.parametrize("style", list(STYLES))
def test_fresh_model_outputs_zero_and_blocks_are_identity(style):
    model = tiny_model(**STYLES[style])
    x, t, y = torch.randn(3, 3, 8, 8), torch.rand(3), torch.tensor([0, 2, 4])
    assert torch.equal(model(x, t, y), torch.zeros(3, 3, 8, 8))
    tokens, c = torch.randn(3, 16, 32), torch.randn(3, 32)
    for block in model.blocks:
        assert torch.equal(block(tokens, c, (4, 4)), tokens)
    # the zeros come from the zero-inits only: once weights move, output depends on x, t and y
    randomise(model)
    out = model(x, t, y)
    assert out.abs().min() > 0
    assert not torch.allclose(out, model(x, t.flip(0), y))
    assert not torch.allclose(out, model(x, t, y.flip(0)))


@pytest.mark.parametrize("pos_embed, rope", [("sincos", False), ("learned", False), ("conv", False), ("none", True)])
def test_model_runs_at_a_different_resolution(pos_embed, rope):
    model = randomise(tiny_model(pos_embed=pos_embed, rope=rope, out_channels=6))
    x = torch.randn(2, 3, 12, 16)
    out = model(x, torch.rand(2), torch.tensor([1, 3]))
    assert out.shape == (2, 6, 12, 16) and torch.isfinite(out).all()
    # and still at the training size
    assert model(torch.randn(1, 3, 8, 8), torch.rand(1), torch.tensor([0])).shape == (1, 6, 8, 8)


def test_rope_ntk_scale_changes_the_prediction_only_when_not_one():
    model = randomise(tiny_model(**STYLES["Flag-DiT"]))
    x, t, y = torch.randn(1, 3, 16, 16), torch.rand(1), torch.tensor([2])
    base = model(x, t, y)
    model.rope.ntk_scale = 1.0
    assert torch.equal(model(x, t, y), base)
    model.rope.ntk_scale = 2.0
    assert not torch.allclose(model(x, t, y), base)


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"unknown DiTConfig keys \['hiden_size'\]; valid keys are: input_size"):
        DiTConfig.from_dict({"hiden_size": 64})
    with pytest.raises(ValueError, match="unknown DiTConfig keys"):
        DiT.from_preset("DiT-S/2", depht=3)
    with pytest.raises(ValueError, match="valid presets are"):
        DiT.from_preset("DiT-M/2")
    with pytest.raises(ValueError, match="valid styles are: 'DiT', 'Flag-DiT', 'LI-DiT'"):
        DiT.from_preset("DiT-S/2", style="SD3")
    with pytest.raises(ValueError, match="valid pos_embeds"):
        DiTConfig(pos_embed="abs")
    with pytest.raises(ValueError, match="divisible by patch_size"):
        DiTConfig(input_size=30, patch_size=4)
    assert DiTConfig(in_channels=3).out_channels == 3
    cfg = DiT.from_preset("DiT-B/4", style="LI-DiT", input_size=16, depth=1).config
    assert (cfg.hidden_size, cfg.num_heads, cfg.patch_size, cfg.depth, cfg.pos_embed) == (768, 12, 4, 1, "conv")


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    for bad_t in (torch.rand(2, 1), torch.rand(()), torch.rand(3), torch.ones(2, dtype=torch.long)):
        with pytest.raises(ValueError, match="t must be a float tensor of shape"):
            model(x, bad_t, y)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        model(x, torch.tensor([0.5, 1.5]), y)
    with pytest.raises(ValueError, match=r"y must be an integer \(long\) tensor of shape \(N,\) = \(2,\) with labels in \[0, 5\]"):
        model(x, torch.rand(2))
    with pytest.raises(ValueError, match=r"y must be an integer \(long\) tensor .* label 5 is the null label"):
        model(x, torch.rand(2), torch.tensor([True, False]))
    for bad in ([0, 6], [-1, 2]):  # 5 classes: 0..4, and 5 for the null label
        with pytest.raises(ValueError, match=rf"class labels must lie in \[0, 5\] .*; got values such as \[{bad[0] if bad[0] < 0 else bad[1]}\]"):
            model(x, torch.rand(2), torch.tensor(bad))
    assert model(x, torch.rand(2), torch.tensor([0, 5])).shape == x.shape  # the null label is valid
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        model(torch.randn(2, 3, 8, 9), torch.rand(2), y)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3, H, W\)"):
        model(torch.randn(2, 4, 8, 8), torch.rand(2), y)
    with pytest.raises(ValueError, match="unconditional"):
        tiny_model(num_classes=0)(x, torch.rand(2), y)


def test_cfg_uses_the_null_label_when_dropped():
    model = randomise(tiny_model()).eval()
    x, t, y = torch.randn(4, 3, 8, 8), torch.rand(4), torch.tensor([0, 1, 2, 3])
    null = torch.full((4,), 5)
    unconditional = model(x, t, null)
    forced = model(x, t, y, force_drop=torch.tensor([True, False, True, False]))
    conditional = model(x, t, y)
    torch.testing.assert_close(forced[0::2], unconditional[0::2])
    torch.testing.assert_close(forced[1::2], conditional[1::2])
    assert not torch.allclose(conditional, unconditional)
    # eval mode never drops on its own; training with class_dropout = 1 always does
    always_drop = randomise(tiny_model(class_dropout=1.0)).train()
    torch.testing.assert_close(always_drop(x, t, y), always_drop.eval()(x, t, null))


def test_label_dropout_rate():
    torch.manual_seed(0)
    embedder = LabelEmbedder(num_classes=10, hidden_size=4, dropout_prob=0.3)
    y = torch.randint(0, 10, (20000,))
    dropped = (embedder.drop_labels(y) == 10).float().mean()
    assert abs(dropped - 0.3) < 0.016  # 5 binomial standard deviations
    assert embedder.embedding_table.num_embeddings == 11


def test_bfloat16_autocast_matches_float32():
    model = randomise(tiny_model(**STYLES["Flag-DiT"]))
    x, t, y = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 4])
    reference = model(x, t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, t, y)
    assert torch.isfinite(low).all()
    assert (low.float() - reference).norm() < 0.05 * reference.norm()


@pytest.mark.parametrize("style", ["LI-DiT", "Flag-DiT"])
def test_forward_traces_as_one_graph(style):
    """fullgraph=True fails on graph breaks (data-dependent Python control flow, .item(), the RoPE angle cache)."""
    model = randomise(tiny_model(**STYLES[style], depth=1))
    x, t, y = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 4])
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, t, y), model(x, t, y))
