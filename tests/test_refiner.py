"""LI-DiT's refiners: identity at zero gates, bidirectionality (and its absence with the causal mask), padding
invariance, no all-masked rows, the collaborative block reading both encoders, and the DiT switch."""
from __future__ import annotations

import pytest
import torch

from minidit.dit import DiT, DiTConfig
from minidit.refiner import CollaborativeRefiner, RefinerBlock, TokenRefiner, refiner_gate_norm, zero_gates
from minidit.text.encoder import attention_mask

DIM, COND = 16, 8


def open_gates(module, seed=0):
    """Random non-zero gates, so that the refiner does something."""
    g = torch.Generator().manual_seed(seed)
    for block in module.modules():
        if isinstance(block, RefinerBlock):
            with torch.no_grad():
                block.gate[-1].weight.copy_(torch.randn(block.gate[-1].weight.shape, generator=g) * 0.5)
                block.gate[-1].bias.copy_(torch.randn(block.gate[-1].bias.shape, generator=g) * 0.5)
    return module


def inputs(n=3, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(n, length, DIM, generator=g)
    mask = torch.arange(length)[None] < torch.tensor([length, 4, 2][:n])[:, None]  # (N, L), right padded
    return text, mask, torch.randn(n, COND, generator=g)


@pytest.mark.parametrize("causal", [False, True])
def test_zero_gates_make_the_refiner_the_identity(causal):
    torch.manual_seed(0)
    refiner = TokenRefiner(DIM, COND, depth=2, num_heads=4, causal=causal)
    assert refiner_gate_norm(refiner) == 0.0
    text, mask, t_emb = inputs()
    assert torch.equal(refiner(text, mask, t_emb), text)
    assert not torch.equal(open_gates(refiner)(text, mask, t_emb), text)
    zero_gates(refiner)
    assert torch.equal(refiner(text, mask, t_emb), text)


def test_gates_learn_from_zero():
    # A gate at 0 still gets a gradient (never a sigmoid that starts at 0.5, never a dead zero).
    refiner = TokenRefiner(DIM, COND)
    text, mask, t_emb = inputs()
    (refiner(text, mask, t_emb) * torch.randn_like(text)).sum().backward()
    for block in refiner.blocks:
        assert block.gate[-1].weight.grad.abs().max() > 0 and block.gate[-1].bias.grad.abs().max() > 0


def test_bidirectional_refiner_reads_later_tokens_and_causal_one_does_not():
    text, mask, t_emb = inputs(n=1)
    changed = text.clone()
    changed[0, 6] += torch.randn(DIM)  # the last prompt token (not a constant shift, which LayerNorm removes)
    for causal in (False, True):
        torch.manual_seed(0)
        refiner = open_gates(TokenRefiner(DIM, COND, causal=causal))
        first, first_changed = refiner(text, mask, t_emb)[0, 0], refiner(changed, mask, t_emb)[0, 0]
        # The pooled conditioning c sees every token in both cases; hold it fixed to test the attention alone.
        c = refiner.condition(text, mask, t_emb)
        first_fixed_c = refiner.refine(changed, mask, c)[0, 0]
        if causal:
            assert torch.equal(refiner.refine(text, mask, c)[0, 0], first_fixed_c)
        else:
            assert (first_fixed_c - refiner.refine(text, mask, c)[0, 0]).abs().max() > 1e-4
        assert not torch.equal(first, first_changed)  # through the pooled gate conditioning, either way


@pytest.mark.parametrize("causal", [False, True])
def test_padding_never_changes_real_tokens(causal):
    torch.manual_seed(0)
    refiner = open_gates(TokenRefiner(DIM, COND, causal=causal))
    text, mask, t_emb = inputs()
    out = refiner(text, mask, t_emb)
    garbage = torch.where(mask[..., None], text, torch.randn_like(text) * 100)  # different padding features
    longer = torch.cat([garbage, torch.randn(3, 5, DIM)], dim=1)  # and more of them
    longer_mask = torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], dim=1)
    out_longer = refiner(longer, longer_mask, t_emb)[:, :7]
    assert torch.allclose(out[mask], out_longer[mask], atol=1e-5)


def test_attention_mask_has_no_all_masked_row():
    mask = torch.tensor([[False, False, True, True], [True, False, False, False]])  # left padding too
    for causal in (False, True):
        allowed = attention_mask(mask, causal)  # (N, 1, L, L)
        assert allowed.any(dim=-1).all()
        real = mask[:, None, :, None] & ~mask[:, None, None, :]  # a real query and a padded key
        assert not (allowed & real).any()
    refiner = open_gates(TokenRefiner(DIM, COND, causal=True))
    text = torch.randn(2, 4, DIM)
    assert torch.isfinite(refiner(text, mask, torch.randn(2, COND))).all()


def test_collaborative_refiner_reads_both_encoders():
    torch.manual_seed(0)
    refiner = CollaborativeRefiner(DIM, COND, depth=1, num_heads=4)
    a, mask_a, t_emb = inputs(length=5, seed=1)
    b, mask_b, _ = inputs(length=5, seed=2)
    text, mask = torch.cat([a, b], dim=1), torch.cat([mask_a, mask_b], dim=1)
    assert torch.equal(refiner(text, mask, t_emb), text)  # identity at zero gates
    open_gates(refiner)
    out = refiner(text, mask, t_emb)  # (N, 10, D)
    other_b = torch.cat([a, b + torch.randn_like(b)], dim=1)
    out_other = refiner(other_b, mask, t_emb)
    assert (out[:, :5] - out_other[:, :5])[mask_a].abs().max() > 1e-4  # branch a reads branch b
    other_a = torch.cat([a + torch.randn_like(a), b], dim=1)
    assert (refiner(other_a, mask, t_emb)[:, 5:] - out[:, 5:])[mask_b].abs().max() > 1e-4  # and b reads a
    # Without the collaboration block each branch would see only itself: switch it off and b no longer matters.
    zero_gates(refiner.collaboration)
    assert torch.equal(refiner(other_b, mask, t_emb)[:, :5], refiner(text, mask, t_emb)[:, :5])
    with pytest.raises(ValueError, match="2 equal segments"):
        refiner(text[:, :9], mask[:, :9], t_emb)
    no_real = mask.clone()
    no_real[0, 5:] = False
    with pytest.raises(ValueError, match="no real token in one encoder's segment"):
        refiner(text, no_real, t_emb)


def tiny_dit(**text):
    return DiT(DiTConfig(input_size=8, patch_size=4, in_channels=3, depth=2, hidden_size=16, num_heads=2,
                         text_conditioning="cross", text_dim=DIM, **text))


@pytest.mark.parametrize("kind", ["token", "collaborative"])
def test_dit_with_a_refiner_starts_as_the_dit_without(kind):
    torch.manual_seed(0)
    plain = tiny_dit()
    with torch.no_grad():
        for parameter in plain.parameters():  # random weights everywhere: the output depends on every block
            parameter.normal_(0.0, 0.2)
    refined = tiny_dit(text_refiner=kind, refiner_heads=4).eval()  # eval: no random caption dropout
    plain.eval()
    assert refiner_gate_norm(refined) == 0.0  # DiT's xavier init must not touch the zero gates
    missing, unexpected = refined.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(name.startswith("text_refiner.") for name in missing)
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    text, mask = torch.randn(2, 6, DIM), torch.tensor([[True] * 6, [True, True, False, True, True, False]])
    with torch.no_grad():
        assert torch.equal(refined(x, t, text=text, text_mask=mask), plain(x, t, text=text, text_mask=mask))
        open_gates(refined)
        assert not torch.allclose(refined(x, t, text=text, text_mask=mask), plain(x, t, text=text, text_mask=mask))


def test_dit_refiner_settings_are_checked():
    with pytest.raises(ValueError, match="unknown text_refiner 'llm'"):
        tiny_dit(text_refiner="llm")
    with pytest.raises(ValueError, match="divisible by refiner_heads"):
        tiny_dit(text_refiner="token", refiner_heads=3)
    with pytest.raises(ValueError, match="set text_conditioning"):
        DiTConfig(text_refiner="token")
    model = tiny_dit(text_refiner="collaborative")
    with pytest.raises(ValueError, match="2 equal segments"):
        model(torch.randn(1, 3, 8, 8), torch.rand(1), text=torch.randn(1, 5, DIM), text_mask=torch.ones(1, 5, dtype=torch.bool))
