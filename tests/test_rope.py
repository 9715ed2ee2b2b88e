"""RoPE: rotations preserve norms, logits depend only on relative offsets, NTK scaling has the stated closed form."""
import itertools

import pytest
import torch

from minidit.rope import RotaryEmbedding, apply_rope, axis_pair_counts, rope_frequencies


def test_axis_split_uses_every_channel_pair():
    assert axis_pair_counts(72, 2) == [18, 18]
    assert axis_pair_counts(64, 3) == [11, 11, 10]
    assert axis_pair_counts(10, 3) == [2, 2, 1]
    with pytest.raises(ValueError, match="even head_dim"):
        axis_pair_counts(9, 2)
    with pytest.raises(ValueError, match="even head_dim"):
        axis_pair_counts(4, 3)


def test_angles_shape_and_per_axis_dependence():
    angles = rope_frequencies((3, 4), head_dim=16).reshape(3, 4, 8)  # (h, w, pairs)
    row_part, col_part = angles[..., :4], angles[..., 4:]
    # the first half of the pairs follows the row index only, the second half the column index only
    assert torch.equal(row_part, row_part[:, :1].expand_as(row_part))
    assert torch.equal(col_part, col_part[:1].expand_as(col_part))
    expected_freqs = 10000.0 ** (-torch.arange(0, 8, 2) / 8)
    torch.testing.assert_close(row_part[2, 0], 2 * expected_freqs)
    torch.testing.assert_close(col_part[0, 3], 3 * expected_freqs)


@pytest.mark.parametrize("grid_shape", [(4, 5), (3, 2, 4)])
def test_rope_preserves_norms(grid_shape):
    torch.manual_seed(0)
    tokens = 1
    for size in grid_shape:
        tokens *= size
    x = torch.randn(2, 3, tokens, 24)
    rotated = apply_rope(x, rope_frequencies(grid_shape, 24))
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(rotated, x)


@pytest.mark.parametrize("grid_shape, shift", [((4, 5), (1, 2)), ((3, 3, 4), (1, 0, 2))])
def test_logits_depend_only_on_relative_offset(grid_shape, shift):
    """<R(m) q, R(n) k> = <R(m + s) q, R(n + s) k> for the same q, k placed at every grid position."""
    torch.manual_seed(0)
    head_dim = 18
    positions = list(itertools.product(*[range(size) for size in grid_shape]))  # row-major, like the tokens
    index = {pos: i for i, pos in enumerate(positions)}
    angles = rope_frequencies(grid_shape, head_dim)
    q = apply_rope(torch.randn(head_dim).expand(1, 1, len(positions), head_dim), angles)[0, 0]
    k = apply_rope(torch.randn(head_dim).expand(1, 1, len(positions), head_dim), angles)[0, 0]
    logits = q @ k.T  # (T, T)
    checked = 0
    for m, n in itertools.product(positions, positions):
        m2, n2 = tuple(a + s for a, s in zip(m, shift)), tuple(a + s for a, s in zip(n, shift))
        if m2 in index and n2 in index:
            torch.testing.assert_close(logits[index[m], index[n]], logits[index[m2], index[n2]], rtol=1e-4, atol=1e-4)
            checked += 1
    assert checked > 20
    # and the logits do vary with the offset, so the check above is not vacuous
    assert logits.std() > 0.1


def test_ntk_scale_one_is_identity_and_scale_stretches_lowest_frequency():
    base = rope_frequencies((5, 6), 32)
    assert torch.equal(rope_frequencies((5, 6), 32, ntk_scale=1.0), base)
    scaled = rope_frequencies((5, 6), 32, ntk_scale=4.0)
    # per axis of d = 16 channels: theta' = theta * s^(d/(d-2)) keeps the highest frequency (i = 0) and divides
    # the lowest (i = d/2 - 1) by exactly s
    last_row = (4 * 6 + 0)  # grid position (4, 0)
    torch.testing.assert_close(scaled[last_row, 0], base[last_row, 0])
    torch.testing.assert_close(scaled[last_row, 7], base[last_row, 7] / 4.0, rtol=1e-5, atol=0)
    assert (scaled[last_row, 1:7] < base[last_row, 1:7]).all()
    with pytest.raises(ValueError, match="ntk_scale must be positive"):
        rope_frequencies((2, 2), 32, ntk_scale=0.0)


def test_position_zero_is_identity_and_bad_angles_raise():
    x = torch.randn(1, 2, 1, 8)
    torch.testing.assert_close(apply_rope(x, rope_frequencies((1, 1), 8)), x)
    with pytest.raises(ValueError, match="do not fit"):
        apply_rope(torch.randn(1, 2, 6, 8), rope_frequencies((2, 2), 8))


def test_bfloat16_input_keeps_dtype():
    x = torch.randn(1, 2, 12, 16)
    angles = RotaryEmbedding(16)((3, 4))
    out = apply_rope(x.bfloat16(), angles)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), apply_rope(x, angles), rtol=2e-2, atol=2e-2)


def test_rotary_embedding_caches_per_grid_and_follows_a_changed_ntk_scale():
    """Blocks share one set of angles per grid; setting ``ntk_scale`` at inference must not return stale angles."""
    rope = RotaryEmbedding(head_dim=16)
    first = rope((4, 4))
    assert rope((4, 4)) is first
    assert torch.equal(first, rope_frequencies((4, 4), 16))
    rope.ntk_scale = 2.0
    assert torch.equal(rope((4, 4)), rope_frequencies((4, 4), 16, ntk_scale=2.0))
    assert not torch.equal(rope((4, 4)), first)
    assert rope((8, 8)).shape == (64, 8)
