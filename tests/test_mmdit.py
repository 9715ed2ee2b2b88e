"""MM-DiT: joint attention against a hand-written softmax, adaLN-Zero identities, context_pre_only, padding, CFG."""
import math

import pytest
import torch

from minidit.mmdit import MMDiT, MMDiTBlock, MMDiTConfig, joint_attention

TINY = dict(input_size=8, patch_size=2, in_channels=3, depth=2, hidden_size=32, num_heads=4, text_dim=12)


def tiny_model(**overrides) -> MMDiT:
    """A small MM-DiT in eval mode (no random caption dropout)."""
    torch.manual_seed(0)
    return MMDiT(MMDiTConfig.from_dict({**TINY, **overrides})).eval()


def randomise(module: torch.nn.Module) -> torch.nn.Module:
    """Perturb every weight so the zero-initialised layers no longer hide the computation."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


def captions(n: int = 3, length: int = 6, text_dim: int = 12, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Random features ``(n, length, text_dim)`` and a mask with 1 .. length real tokens, padding on the right."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.randn(n, length, text_dim, generator=gen)
    real = torch.tensor([length, 1, length - 2][:n])
    return text, torch.arange(length)[None, :] < real[:, None]


def inputs(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, 8, 8, generator=gen), torch.rand(n, generator=gen)


def expected_parameters(cfg: MMDiTConfig) -> int:
    """Closed-form count from the architecture: linear layers are in * out + out."""
    def linear(fan_in, fan_out):
        return fan_in * fan_out + fan_out

    d, p, dt = cfg.hidden_size, cfg.patch_size, cfg.text_dim
    mlp = int(d * cfg.mlp_ratio)
    qk_norm = {None: 0, "rmsnorm": 2 * (d // cfg.num_heads), "layernorm": 4 * (d // cfg.num_heads)}[cfg.qk_norm]
    qkv = linear(d, 3 * d) + qk_norm
    stream = qkv + linear(d, d) + linear(d, mlp) + linear(mlp, d) + linear(d, 6 * d)  # attention, MLP, 6-way adaLN
    last_text = qkv + linear(d, 2 * d)  # context_pre_only: keys and values, shift and scale only
    embedders = (
        linear(p * p * cfg.in_channels, d)  # patches
        + linear(cfg.frequency_embedding_size, d) + linear(d, d)  # time
        + linear(dt, d) + linear(d, d)  # pooled text
        + dt + linear(dt, d) + linear(d, d)  # caption tokens: null caption + MLP
    )
    final = linear(d, 2 * d) + linear(d, p * p * cfg.out_channels)
    pos = {"sincos": 0, "none": 0, "learned": cfg.grid_size**2 * d, "conv": 2 * (9 * d * d + d)}[cfg.pos_embed]
    return embedders + (cfg.depth - 1) * 2 * stream + stream + last_text + final + pos


@pytest.mark.parametrize("depth, overrides", [
    (1, {}), (3, {}), (4, dict(qk_norm=None, pos_embed="learned", out_channels=8)),
    (2, dict(qk_norm="layernorm", pos_embed="conv", mlp_ratio=2.0, text_dim=64)),
])
def test_sizing_by_depth_and_parameter_count_match_closed_form(depth, overrides):
    with torch.device("meta"):
        model = MMDiT.from_depth(depth, input_size=16, in_channels=4, **overrides)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_heads) == (64 * depth, depth)  # SD3: head width 64
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(cfg)


def test_context_pre_only_block_has_no_text_mlp_or_output_projection():
    model = tiny_model(depth=3)
    assert [block.context_pre_only for block in model.blocks] == [False, False, True]
    names = [{name for name, _ in block.named_parameters()} for block in model.blocks]
    for inner in names[:2]:
        assert {"context_attn.proj.weight", "context_mlp.0.weight", "context_mlp.2.weight"} <= inner
    assert not any(name.startswith(("context_attn.proj", "context_mlp")) for name in names[2])
    assert model.blocks[2].context_modulation[-1].out_features == 2 * 32  # shift, scale
    assert model.blocks[0].context_modulation[-1].out_features == 6 * 32


def test_output_shape_at_training_and_other_sizes():
    model = randomise(tiny_model(out_channels=5))
    text, mask = captions()
    assert model(*inputs(), text, mask).shape == (3, 5, 8, 8)
    out = model(torch.randn(3, 3, 12, 16), torch.rand(3), text, mask)
    assert out.shape == (3, 5, 12, 16) and torch.isfinite(out).all()


def test_fresh_model_outputs_zero_and_every_block_is_identity_on_both_streams():
    model = tiny_model(depth=3)
    text, mask = captions()
    assert torch.equal(model(*inputs(), text, mask), torch.zeros(3, 3, 8, 8))
    x, context, c = torch.randn(3, 16, 32), torch.randn(3, 6, 32), torch.randn(3, 32)
    for block in model.blocks[:-1]:
        out_x, out_context = block(x, context, c, mask)
        assert torch.equal(out_x, x) and torch.equal(out_context, context)
    out_x, out_context = model.blocks[-1](x, context, c, mask)
    assert torch.equal(out_x, x) and out_context is None  # the text stream ends at the context_pre_only block


def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight


@pytest.mark.parametrize("context_pre_only", [False, True])
def test_joint_attention_equals_an_explicit_softmax_over_image_then_text(context_pre_only):
    torch.manual_seed(0)
    block = randomise(MMDiTBlock(MMDiTConfig.from_dict(TINY), context_pre_only=context_pre_only))
    x, context = torch.randn(2, 16, 32), torch.randn(2, 5, 32)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    out_x, out_c = joint_attention(block.attn, block.context_attn, x, context, mask)

    def heads(tokens, attn):  # (N, S, D) -> q, k, v of shape (N, H, S, 8), QK-normed by hand
        q, k, v = (tokens @ attn.qkv.weight.T + attn.qkv.bias).reshape(2, -1, 3, 4, 8).permute(2, 0, 3, 1, 4)
        return rms(q, attn.qk_norm.query_norm.weight), rms(k, attn.qk_norm.key_norm.weight), v

    (qx, kx, vx), (qc, kc, vc) = heads(x, block.attn), heads(context, block.context_attn)
    q, k, v = torch.cat([qx, qc], 2), torch.cat([kx, kc], 2), torch.cat([vx, vc], 2)  # [image, text]: 21 tokens
    logits = q @ k.transpose(-1, -2) / math.sqrt(8)  # (2, 4, 21, 21)
    visible = torch.cat([torch.ones(2, 16, dtype=torch.bool), mask], 1)  # keys
    logits = logits.masked_fill(~visible[:, None, None, :], float("-inf"))
    weights = logits.exp() / logits.exp().sum(-1, keepdim=True)
    out = (weights @ v).transpose(1, 2).reshape(2, 21, 32)
    torch.testing.assert_close(out_x, out[:, :16], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_c, out[:, 16:], atol=1e-5, rtol=1e-5)
    assert weights[1, :, :, 18:].abs().max() == 0  # padded text keys get no weight
    assert weights[:, :, :16, 16:].sum() > 0.1  # image queries do read the text


def test_padding_never_changes_the_output():
    model = randomise(tiny_model(depth=3))
    x, t = inputs()
    text, mask = captions()
    base = model(x, t, text, mask)
    garbage = 5.0 * torch.randn(3, 4, 12)  # padded features are arbitrary: they must be masked everywhere
    padded = model(x, t, torch.cat([text, garbage], 1), torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], 1))
    torch.testing.assert_close(padded, base, atol=1e-5, rtol=0)
    changed = text.clone()
    changed[1, 1:] = garbage[1, 0]  # row 1 has one real token: everything after it is padding
    torch.testing.assert_close(model(x, t, changed, mask), base, atol=1e-5, rtol=0)
    changed[1, 0] += 1.0  # but its real token counts
    assert not torch.allclose(model(x, t, changed, mask)[1], base[1], atol=1e-4)


def test_force_drop_gives_the_null_caption_output_whatever_the_caption():
    model = randomise(tiny_model())
    x, t = inputs()
    text_a, mask_a = captions(seed=2)
    text_b, mask_b = captions(length=9, seed=5)
    drop = torch.ones(3, dtype=torch.bool)
    null_a, null_b = model(x, t, text_a, mask_a, force_drop=drop), model(x, t, text_b, mask_b, force_drop=drop)
    torch.testing.assert_close(null_a, null_b, atol=1e-6, rtol=0)
    assert not torch.allclose(model(x, t, text_a, mask_a), model(x, t, text_b, mask_b), atol=1e-4)
    # dropping one sample leaves the others conditional
    partial = model(x, t, text_a, mask_a, force_drop=torch.tensor([True, False, False]))
    torch.testing.assert_close(partial[0], null_a[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(partial[1:], model(x, t, text_a, mask_a)[1:], atol=1e-6, rtol=0)
    # in training mode caption_dropout = 1 always drops, as force_drop does
    model.config.caption_dropout = model.caption_embedder.dropout_prob = 1.0
    torch.testing.assert_close(model.train()(x, t, text_a, mask_a), null_a, atol=1e-6, rtol=0)


def test_the_caption_changes_the_output_after_a_few_optimizer_steps():
    model = tiny_model()
    x, t = inputs()
    text_a, mask_a = captions(seed=2)
    text_b, _ = captions(seed=5)
    assert torch.equal(model(x, t, text_a, mask_a), model(x, t, text_b, mask_a))  # both exactly 0 at init
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    target = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    for _ in range(3):
        optimizer.zero_grad()
        (model(x, t, text_a, mask_a) - target).pow(2).mean().backward()
        optimizer.step()
    difference = (model(x, t, text_a, mask_a) - model(x, t, text_b, mask_a)).abs().amax()
    assert difference > 1e-3


def test_gradients_reach_both_streams_of_every_block():
    model = randomise(tiny_model(depth=3))
    x, t = inputs()
    text, mask = captions()
    text.requires_grad_(True)
    model(x, t, text, mask, force_drop=torch.tensor([True, False, False])).pow(2).mean().backward()
    assert text.grad[1:].abs().amax() > 0  # through tokens and pooled vector
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        if name == "blocks.2.context_attn.qk_norm.query_norm.weight":
            assert parameter.grad.abs().max() == 0, name  # text queries of the last block: outputs discarded
        elif name.startswith("blocks.2.context_attn.qkv."):  # rows: q (zero gradient), then k and v
            assert parameter.grad[:32].abs().max() == 0 and parameter.grad[32:].abs().max() > 0, name
        else:
            assert parameter.grad.abs().max() > 0, name


def test_bad_inputs_and_config_raise_clear_errors():
    with pytest.raises(ValueError, match=r"unknown MMDiTConfig keys \['hiden_size'\]; valid keys are: input_size"):
        MMDiTConfig.from_dict({"hiden_size": 64})
    with pytest.raises(ValueError, match="unknown MMDiTConfig keys"):
        MMDiT.from_depth(2, num_classes=10)
    with pytest.raises(ValueError, match="hidden_size 100 must be divisible by num_heads 3"):
        MMDiTConfig(depth=3, hidden_size=100)
    with pytest.raises(ValueError, match="valid qk_norms"):
        MMDiTConfig(qk_norm="l2")
    assert MMDiTConfig(in_channels=3).out_channels == 3
    model = tiny_model()
    x, t = inputs()
    text, mask = captions()
    with pytest.raises(ValueError, match=r"\(N, L, text_dim\) = \(3, L, 12\)"):
        model(x, t, torch.randn(3, 6, 16), mask)
    with pytest.raises(ValueError, match="text_mask must be bool"):
        model(x, t, text, mask.long())
    mask[2] = False
    with pytest.raises(ValueError, match="no real token"):
        model(x, t, text, mask)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3, H, W\)"):
        model(torch.randn(3, 4, 8, 8), t, text, mask)
