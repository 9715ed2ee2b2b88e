"""Position embeddings: the sin-cos formula, identity interpolation, and the conv embedding's locality."""
import math

import numpy as np
import pytest
import torch

from minidit.posembed import (
    ConvPosEmbed,
    LearnedPosEmbed,
    SinCosPosEmbed,
    interpolate_pos_embed,
    make_pos_embed,
    sincos_2d,
)


def test_sincos_2d_matches_formula():
    dim, h, w = 16, 3, 5
    table = sincos_2d(dim, (h, w)).reshape(h, w, dim)
    quarter = dim // 4
    for i in range(h):
        for j in range(w):
            for k in range(quarter):
                omega = 10000.0 ** (-k / quarter)
                expected = [math.sin(j * omega), math.cos(j * omega), math.sin(i * omega), math.cos(i * omega)]
                got = [table[i, j, k + block * quarter] for block in range(4)]
                torch.testing.assert_close(torch.stack(got), torch.tensor(expected), rtol=1e-5, atol=1e-5)


def official_dit_table(dim: int, grid_size: int) -> np.ndarray:
    """The 2-D table as facebookresearch/DiT builds it (written from its algorithm): ``np.meshgrid(w, h)`` puts the
    column coordinate first, each half is ``[sin, cos]`` of ``pos * 10000^(-i / (D / 4))``."""
    grid = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))  # w first

    def one_d(width: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(width // 2, dtype=np.float64) / (width / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


def test_sincos_2d_is_the_official_dit_table():
    torch.testing.assert_close(sincos_2d(64, (8, 8)), torch.from_numpy(official_dit_table(64, 8)).float(),
                               rtol=0, atol=1e-6)


def test_sincos_on_larger_grid_extends_the_training_table():
    small = sincos_2d(32, (4, 4)).reshape(4, 4, 32)
    large = sincos_2d(32, (6, 9)).reshape(6, 9, 32)
    torch.testing.assert_close(large[:4, :4], small)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(30, (2, 2))


def test_sincos_module_adds_the_table():
    x = torch.randn(2, 12, 8)
    torch.testing.assert_close(SinCosPosEmbed(8)(x, (3, 4)) - x, sincos_2d(8, (3, 4)).expand(2, 12, 8))


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_interpolation_to_same_size_is_identity(mode):
    table = torch.randn(5, 7, 6)
    torch.testing.assert_close(interpolate_pos_embed(table, (5, 7), mode), table, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_interpolation_keeps_constants_and_changes_shape(mode):
    table = torch.full((4, 4, 3), 2.5)
    resized = interpolate_pos_embed(table, (8, 6), mode)
    assert resized.shape == (8, 6, 3)
    torch.testing.assert_close(resized, torch.full((8, 6, 3), 2.5))
    with pytest.raises(ValueError, match="valid interpolation modes"):
        interpolate_pos_embed(table, (8, 8), "nearest")


def test_learned_pos_embed_adds_table_and_resizes():
    torch.manual_seed(0)
    pos = LearnedPosEmbed(4, (3, 3))
    torch.nn.init.normal_(pos.table)
    x = torch.zeros(2, 9, 4)
    torch.testing.assert_close(pos(x, (3, 3)), pos.table.reshape(1, 9, 4).expand(2, 9, 4))
    assert pos(torch.zeros(1, 30, 4), (5, 6)).shape == (1, 30, 4)
    assert sum(p.numel() for p in pos.parameters()) == 3 * 3 * 4


def test_conv_pos_embed_is_local_and_works_at_any_grid():
    """Two 3x3 convs: changing one token can only move tokens within Chebyshev distance 2."""
    torch.manual_seed(0)
    dim = 8
    pos = ConvPosEmbed(dim)
    assert sum(p.numel() for p in pos.parameters()) == 2 * (9 * dim * dim + dim)
    for h, w in [(4, 4), (7, 9)]:
        x = torch.randn(2, h * w, dim)
        out = pos(x, (h, w))
        assert out.shape == x.shape
        changed = x.clone()
        changed[:, 2 * w + 2] += 1.0  # token at (2, 2)
        moved = (pos(changed, (h, w)) - out).abs().amax(dim=(0, 2)).reshape(h, w) > 1e-6
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        within = ((rows - 2).abs() <= 2) & ((cols - 2).abs() <= 2)
        assert moved[~within].sum() == 0 and moved[within].sum() > 1
    with pytest.raises(ValueError, match="odd"):
        ConvPosEmbed(dim, kernel_size=2)


def test_make_pos_embed_by_name():
    assert isinstance(make_pos_embed("sincos", 8, (2, 2)), SinCosPosEmbed)
    assert isinstance(make_pos_embed("learned", 8, (2, 2)), LearnedPosEmbed)
    assert isinstance(make_pos_embed("conv", 8, (2, 2)), ConvPosEmbed)
    assert make_pos_embed("none", 8, (2, 2)) is None
    with pytest.raises(ValueError, match="valid pos_embeds are: 'sincos', 'learned', 'conv', 'none'"):
        make_pos_embed("alibi", 8, (2, 2))
