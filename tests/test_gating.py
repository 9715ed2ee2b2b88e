"""Text conditioning of the DiT: Lumina's gated cross-attention, pruning that skips work, caption pooling, the null
caption for CFG, masked-mean pooling and padding that never changes an output."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from minidit.dit import DiT, DiTConfig
from minidit.gating import CaptionPooling, GatedCrossAttention, gate_values, prune_gates, restore_gates
from minidit.guidance import guide_with_null
from minidit.text.conditioning import CaptionEmbedder, masked_mean

TEXT_DIM = 24


def make_model(mode="gated_cross", seed=0, **overrides):
    torch.manual_seed(seed)
    values = dict(input_size=16, patch_size=4, in_channels=3, hidden_size=64, depth=3, num_heads=4, qk_norm="rmsnorm",
                  text_conditioning=mode, text_dim=TEXT_DIM if mode != "none" else 0)
    return DiT(DiTConfig(**{**values, **overrides})).eval()


def randomise(model, keep_zero=()):
    """Give every parameter random values (the zero-inits of adaLN and the final layer hide the text otherwise),
    except the names containing one of ``keep_zero``."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not any(part in name for part in keep_zero):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


def inputs(n=3, length=9, seed=2):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=generator)
    t = torch.rand(n, generator=generator)
    text = torch.randn(n, length, TEXT_DIM, generator=generator)
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 2:] = False
    return x, t, text, mask


def test_gated_model_at_initialisation_equals_the_model_without_text_exactly():
    gated = randomise(make_model("gated_cross"), keep_zero=("gate", "caption_pooling.linear"))
    plain = make_model("none")
    missing, unexpected = plain.load_state_dict(gated.state_dict(), strict=False)
    assert not missing and all("cross_attn" in k or "caption_" in k for k in unexpected)
    x, t, text, mask = inputs()
    assert torch.equal(gated(x, t, text=text, text_mask=mask), plain(x, t))
    gated.blocks[1].cross_attn.gate.data[2] = 0.5  # one open gate lets the caption in
    assert not torch.allclose(gated(x, t, text=text, text_mask=mask), plain(x, t), atol=1e-4)


@pytest.mark.parametrize("mode", ["cross", "gated_cross"])
def test_padding_never_changes_the_output(mode):
    model = randomise(make_model(mode))
    x, t, text, mask = inputs()
    padded_text = torch.cat([text, torch.randn(3, 6, TEXT_DIM) * 100], dim=1)  # garbage in the padding
    padded_mask = torch.cat([mask, torch.zeros(3, 6, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(model(x, t, text=padded_text, text_mask=padded_mask),
                               model(x, t, text=text, text_mask=mask), atol=1e-4, rtol=1e-4)
    changed = text.clone()
    changed[2, 3:] = 7.0  # sample 2 has two real tokens: what follows them is padding
    torch.testing.assert_close(model(x, t, text=changed, text_mask=mask)[2], model(x, t, text=text, text_mask=mask)[2])


def test_ungated_cross_attention_lets_the_caption_in_from_the_start():
    model = randomise(make_model("cross"), keep_zero=("caption_pooling.linear",))
    x, t, text, mask = inputs()
    assert model.blocks[0].cross_attn.gate is None
    assert not torch.allclose(model(x, t, text=text, text_mask=mask), model(x, t, text=text + 1, text_mask=mask))


def test_force_drop_gives_the_null_caption_output_whatever_the_caption():
    model = randomise(make_model("gated_cross"))
    x, t, text, mask = inputs()
    drop = torch.ones(3, dtype=torch.bool)
    null_out = model(x, t, text=text, text_mask=mask, force_drop=drop)
    torch.testing.assert_close(model(x, t, text=torch.randn_like(text), text_mask=mask, force_drop=drop), null_out)
    assert not torch.allclose(model(x, t, text=text, text_mask=mask), null_out, atol=1e-4)


def test_pruned_heads_compute_what_a_zero_gate_computes_and_are_skipped():
    model = randomise(make_model("gated_cross"))
    x, t, text, mask = inputs()
    gates = gate_values(model)
    assert gates.shape == (3, 4)
    assert prune_gates(model, fraction=0.5) == 6
    pruned = ~torch.stack([block.cross_attn.active for block in model.blocks])
    smallest = torch.argsort(gates.abs().flatten(), stable=True)[:6]
    assert sorted(pruned.flatten().nonzero().flatten().tolist()) == sorted(smallest.tolist())
    assert torch.equal(gate_values(model)[pruned], torch.zeros(6))
    out_pruned = model(x, t, text=text, text_mask=mask)
    reference = randomise(make_model("gated_cross"))
    with torch.no_grad():
        for block, off in zip(reference.blocks, pruned):
            block.cross_attn.gate[off] = 0.0
    torch.testing.assert_close(out_pruned, reference(x, t, text=text, text_mask=mask), atol=1e-5, rtol=1e-5)

    def flops(m):
        with FlopCounterMode(display=False) as counter:
            m(x, t, text=text, text_mask=mask)
        return counter.get_total_flops()

    restore_gates(model)
    full = flops(model)
    prune_gates(model, fraction=0.5)
    half = flops(model)
    prune_gates(model, fraction=1.0)
    calls = []
    hooks = [block.cross_attn.kv.register_forward_hook(lambda *a: calls.append(1)) for block in model.blocks]
    none = flops(model)
    for hook in hooks:
        hook.remove()
    assert not calls, "a fully pruned branch must not project the caption"
    assert none < half < full
    assert (full - half) == pytest.approx((full - none) / 2, rel=1e-6)  # the branch's cost is linear in its heads


def test_pruning_survives_a_state_dict_round_trip_and_threshold_pruning():
    model = randomise(make_model("gated_cross"))
    count = prune_gates(model, threshold=0.5)
    assert count == int((gate_values(restored := randomise(make_model("gated_cross"))).abs() < 0.5).sum())
    restored.load_state_dict(model.state_dict())
    assert [b.cross_attn._heads for b in restored.blocks] == [b.cross_attn._heads for b in model.blocks]
    with pytest.raises(ValueError, match="exactly one"):
        prune_gates(model)
    with pytest.raises(ValueError, match="no gates"):
        gate_values(make_model("cross"))
    with pytest.raises(ValueError, match="no cross-attention"):
        gate_values(make_model("none"))


def test_text_inputs_are_checked():
    model = make_model("gated_cross")
    x, t, text, mask = inputs()
    with pytest.raises(ValueError, match="text-conditioned"):
        model(x, t)
    with pytest.raises(ValueError, match="text_dim"):
        model(x, t, text=text[..., :5], text_mask=mask)
    with pytest.raises(ValueError, match="bool"):
        model(x, t, text=text, text_mask=mask.float())
    empty = mask.clone()
    empty[0] = False
    with pytest.raises(ValueError, match="no real token"):
        model(x, t, text=text, text_mask=empty)
    with pytest.raises(ValueError, match="no text input"):
        make_model("none")(x, t, text=text, text_mask=mask)
    with pytest.raises(ValueError, match="text_dim"):
        DiTConfig(text_conditioning="cross")


def test_caption_embedder_drops_to_the_null_caption_and_pools_the_real_tokens():
    embedder = CaptionEmbedder(TEXT_DIM, 16, dropout_prob=1.0).train()
    _, _, text, mask = inputs()
    dropped = embedder(text, mask)
    assert dropped.mask.tolist() == [[True] + [False] * 8] * 3
    torch.testing.assert_close(dropped.pooled, embedder.null_caption.expand(3, -1))
    kept = embedder.eval()(text, mask)
    assert torch.equal(kept.mask, mask)
    torch.testing.assert_close(kept.pooled[2], text[2, :2].mean(0))


def test_masked_mean_closed_form_and_empty_rows():
    features = torch.arange(12.0).view(1, 4, 3)
    mask = torch.tensor([[True, False, True, False]])
    torch.testing.assert_close(masked_mean(features, mask), ((features[0, 0] + features[0, 2]) / 2)[None])
    with pytest.raises(ValueError, match="no real token"):
        masked_mean(features, torch.zeros(1, 4, dtype=torch.bool))


def test_caption_pooling_and_gates_start_at_zero():
    pooling = CaptionPooling(TEXT_DIM, 16)
    assert torch.equal(pooling(torch.randn(2, TEXT_DIM)), torch.zeros(2, 16))
    branch = GatedCrossAttention(16, 4)
    assert torch.equal(branch.gate_value(), torch.zeros(4))


def test_guide_with_null_extrapolates_from_the_null_caption():
    model = randomise(make_model("gated_cross"))
    x, t, text, mask = inputs()
    conditional = model(x, t, text=text, text_mask=mask)
    unconditional = model(x, t, text=text, text_mask=mask, force_drop=torch.ones(3, dtype=torch.bool))
    guided = guide_with_null(model, {"text": text, "text_mask": mask}, scale=3.0)(x, t)
    torch.testing.assert_close(guided, unconditional + 3 * (conditional - unconditional), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(guide_with_null(model, {"text": text, "text_mask": mask}, 1.0)(x, t), conditional)
