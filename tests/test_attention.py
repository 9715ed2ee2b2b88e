"""Self-attention: SDPA equals the hand-written formula; logit tracking; QK-norm and RoPE wiring."""
import math

import pytest
import torch

from minidit.attention import SelfAttention, merge_heads, split_heads
from minidit.rope import RotaryEmbedding, apply_rope


def reference_attention(attn: SelfAttention, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d) + bias) V with explicit matrix products, heads split by hand."""
    n, t, d = x.shape
    q, k, v = attn.qkv(x).split(d, dim=-1)
    heads = attn.num_heads
    q, k, v = (z.reshape(n, t, heads, d // heads).permute(0, 2, 1, 3) for z in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    if bias is not None:
        scores = scores + bias
    out = torch.softmax(scores, dim=-1) @ v  # (N, H, T, Dh)
    return attn.proj(out.permute(0, 2, 1, 3).reshape(n, t, d))


def test_split_merge_heads_round_trip():
    x = torch.randn(2, 5, 12)
    assert split_heads(x, 3).shape == (2, 3, 5, 4)
    assert torch.equal(merge_heads(split_heads(x, 3)), x)
    assert torch.equal(split_heads(x, 3)[:, 1], x[..., 4:8])


def test_sdpa_matches_handwritten_softmax_attention():
    torch.manual_seed(0)
    attn = SelfAttention(24, num_heads=4).double()
    x = torch.randn(3, 7, 24, dtype=torch.float64)
    torch.testing.assert_close(attn(x), reference_attention(attn, x))


def test_masks_match_additive_bias():
    torch.manual_seed(0)
    attn = SelfAttention(16, num_heads=2).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    allowed = torch.rand(2, 1, 6, 6) > 0.3
    allowed |= torch.eye(6, dtype=torch.bool)  # every query sees at least itself
    bias = torch.zeros(2, 1, 6, 6, dtype=torch.float64).masked_fill(~allowed, float("-inf"))
    expected = reference_attention(attn, x, bias)
    torch.testing.assert_close(attn(x, attn_mask=allowed), expected)
    torch.testing.assert_close(attn(x, attn_mask=bias), expected)
    assert not torch.allclose(expected, attn(x))


def test_max_logit_tracking_is_exact_and_does_not_change_output():
    torch.manual_seed(0)
    attn = SelfAttention(32, num_heads=4)
    x = torch.randn(2, 9, 32)
    assert attn.track_max_logit is False
    plain = attn(x)
    assert attn.last_max_logit is None
    attn.track_max_logit = True
    tracked = attn(x)
    assert torch.equal(plain, tracked)
    q, k, _ = attn.project(x)
    expected = (q @ k.transpose(-1, -2) / math.sqrt(8)).max()
    torch.testing.assert_close(attn.last_max_logit, expected)
    assert attn.last_max_logit.ndim == 0 and not attn.last_max_logit.requires_grad


def test_qk_norm_keeps_logits_bounded_for_large_inputs():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 32) * 100
    plain, normed = SelfAttention(32, 4), SelfAttention(32, 4, qk_norm="rmsnorm")
    normed.qkv.load_state_dict(plain.qkv.state_dict())
    for attn in (plain, normed):
        attn.track_max_logit = True
        attn(x)
    assert plain.last_max_logit > 100
    assert normed.last_max_logit <= math.sqrt(8) * (1 + 1e-5)  # Dh = 8, unit-RMS q and k


def test_rope_attention_rotates_q_and_k_and_needs_grid():
    torch.manual_seed(0)
    rope = RotaryEmbedding(8)
    attn = SelfAttention(16, num_heads=2, rope=rope)
    x = torch.randn(1, 12, 16)
    with pytest.raises(ValueError, match="pass grid_shape"):
        attn(x)
    q, k, v = attn.project(x, (3, 4))
    attn.rope = None
    q0, k0, v0 = attn.project(x)
    angles = rope((3, 4))
    torch.testing.assert_close(q, apply_rope(q0, angles))
    torch.testing.assert_close(k, apply_rope(k0, angles))
    assert torch.equal(v, v0)


def test_parameter_count_and_bad_arguments():
    d, dh = 48, 8
    assert sum(p.numel() for p in SelfAttention(d, 6).parameters()) == 4 * d * d + 4 * d
    assert sum(p.numel() for p in SelfAttention(d, 6, qk_norm="rmsnorm").parameters()) == 4 * d * d + 4 * d + 2 * dh
    assert sum(p.numel() for p in SelfAttention(d, 6, qkv_bias=False).parameters()) == 4 * d * d + d
    with pytest.raises(ValueError, match="valid qk_norms are"):
        SelfAttention(d, 6, qk_norm="l2")
    with pytest.raises(ValueError, match="divisible by num_heads"):
        SelfAttention(d, 5)
