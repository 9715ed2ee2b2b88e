"""KV compression: average init = average pooling, token picking, the identity on window-constant inputs, errors."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from minidit.attention import merge_heads, split_heads
from minidit.dit import DiT, DiTConfig
from minidit.kv_compression import KV_MODES, KVCompression, attention_flops


def to_channels(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(N, H, T, Dh)`` -> ``(N, H * Dh, h, w)`` through the heads' merge, written independently of the module."""
    n = x.shape[0]
    return merge_heads(x).transpose(1, 2).reshape(n, -1, *grid)


def from_channels(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(N, D, h, w)`` -> ``(N, H, h * w, Dh)``."""
    return split_heads(x.flatten(2).transpose(1, 2), heads)


def window_constant(n: int, heads: int, grid: tuple[int, int], head_dim: int, r: int) -> torch.Tensor:
    """Random ``(N, H, h * w, Dh)`` keys that are the same within each ``r x r`` window of the grid."""
    coarse = torch.randn(n, heads, grid[0] // r, grid[1] // r, head_dim)
    fine = coarse.repeat_interleave(r, dim=2).repeat_interleave(r, dim=3)  # (N, H, h, w, Dh)
    return fine.reshape(n, heads, grid[0] * grid[1], head_dim)


@pytest.mark.parametrize("ratio, grid", [(2, (8, 8)), (2, (4, 6)), (4, (8, 12))])
def test_average_initialised_conv_equals_average_pooling_of_keys_and_values(ratio, grid):
    torch.manual_seed(0)
    k, v = torch.randn(2, 3, grid[0] * grid[1], 4), torch.randn(2, 3, grid[0] * grid[1], 4)
    compress = KVCompression(12, ratio)
    assert torch.all(compress.conv.weight == 1 / ratio**2) and torch.all(compress.conv.bias == 0)
    k_out, v_out = compress(k, v, grid)
    for out, x in ((k_out, k), (v_out, v)):
        pooled = from_channels(F.avg_pool2d(to_channels(x, grid), ratio), heads=3)
        torch.testing.assert_close(out, pooled, rtol=0, atol=1e-6)
    average = KVCompression(12, ratio, mode="average")(k, v, grid)
    torch.testing.assert_close(k_out, average[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(v_out, average[1], rtol=0, atol=1e-6)


def test_conv_acts_per_channel_in_the_heads_merged_order():
    """Channel ``head * Dh + j`` of the conv sees component ``j`` of head ``head``, as ``merge_heads`` lays them out."""
    torch.manual_seed(0)
    compress = KVCompression(8, 2)
    torch.nn.init.normal_(compress.conv.weight)
    torch.nn.init.normal_(compress.conv.bias)
    k, v = torch.randn(2, 2, 24, 4), torch.randn(2, 2, 24, 4)
    k_out, v_out = compress(k, v, (4, 6))
    for out, x in ((k_out, k), (v_out, v)):  # one conv, shared by keys and values
        torch.testing.assert_close(out, from_channels(compress.conv(to_channels(x, (4, 6))), heads=2))


@pytest.mark.parametrize("mode", KV_MODES)
@pytest.mark.parametrize("grid, ratio", [((8, 8), 2), ((4, 6), 2), ((6, 3), 3)])
def test_every_mode_keeps_heads_and_width_and_divides_the_tokens_by_r_squared(mode, grid, ratio):
    k = torch.randn(3, 2, grid[0] * grid[1], 5)
    k_out, v_out = KVCompression(10, ratio, mode)(k, k.clone(), grid)
    expected = (3, 2, grid[0] * grid[1] // ratio**2, 5)
    assert k_out.shape == v_out.shape == expected
    assert k_out.is_contiguous() and v_out.is_contiguous()  # else SDPA falls back from its fused CPU kernel


def test_uniform_keeps_the_top_left_token_of_each_window():
    grid = (4, 6)
    index = torch.arange(24.0).reshape(1, 1, 24, 1).expand(1, 2, 24, 3)  # each token carries its row-major index
    k_out, v_out = KVCompression(6, 2, "uniform")(index, index + 100, grid)
    kept = [row * 6 + col for row in (0, 2) for col in (0, 2, 4)]
    assert k_out[0, 0, :, 0].tolist() == kept
    assert v_out[0, 1, :, 2].tolist() == [i + 100 for i in kept]


@pytest.mark.parametrize("mode", KV_MODES)
def test_attention_to_compressed_window_constant_keys_is_unchanged(mode):
    """A key repeated r^2 times gets the same softmax weight as the one merged key: the output does not move."""
    torch.manual_seed(0)
    grid, r = (8, 12), 2
    q = torch.randn(2, 4, 96, 8)
    k, v = window_constant(2, 4, grid, 8, r), window_constant(2, 4, grid, 8, r)
    k_small, v_small = KVCompression(32, r, mode)(k, v, grid)
    torch.testing.assert_close(
        F.scaled_dot_product_attention(q, k_small, v_small), F.scaled_dot_product_attention(q, k, v)
    )


def test_attention_to_compressed_keys_differs_on_general_inputs():
    """The identity above is a property of window-constant inputs, not of any input."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 64, 4), torch.randn(1, 2, 64, 4), torch.randn(1, 2, 64, 4)
    k_small, v_small = KVCompression(8, 2)(k, v, (8, 8))
    difference = F.scaled_dot_product_attention(q, k_small, v_small) - F.scaled_dot_product_attention(q, k, v)
    assert difference.abs().max() > 1e-2


def test_a_grid_not_divisible_by_r_names_grid_ratio_and_fix():
    k = torch.randn(1, 2, 30, 4)
    with pytest.raises(ValueError, match=r"token grid \(5, 6\) is not divisible by .* r=2; use an image whose "
                                         r"side / patch_size is a multiple of 2"):
        KVCompression(8, 2)(k, k, (5, 6))


@pytest.mark.parametrize(
    "kwargs, grid, shape, message",
    [
        (dict(dim=8, ratio=1), (4, 4), (1, 2, 16, 4), "ratio must be an integer >= 2; got 1"),
        (dict(dim=8, ratio=2.0), (4, 4), (1, 2, 16, 4), "ratio must be an integer >= 2; got 2.0"),
        (dict(dim=8, ratio=2, mode="ave"), (4, 4), (1, 2, 16, 4), "unknown KV compression mode 'ave'"),
        (dict(dim=8, ratio=2), (4, 4, 2), (1, 2, 32, 4), r"needs the 2-D token grid \(h, w\)"),
        (dict(dim=8, ratio=2), (4, 4), (1, 2, 12, 4), r"must have shape \(N, H, h \* w, Dh\) with H \* Dh = 8"),
        (dict(dim=12, ratio=2), (4, 4), (1, 2, 16, 4), r"with H \* Dh = 12"),
    ],
)
def test_bad_settings_and_shapes_get_one_line_errors(kwargs, grid, shape, message):
    with pytest.raises(ValueError, match=message):
        KVCompression(**kwargs)(torch.randn(shape), torch.randn(shape), grid)


def test_keys_and_values_must_match():
    with pytest.raises(ValueError, match="same shape"):
        KVCompression(8, 2)(torch.randn(1, 2, 16, 4), torch.randn(1, 2, 4, 4), (4, 4))


def test_only_the_conv_mode_has_parameters_and_gradients_reach_them():
    assert [len(list(KVCompression(8, 2, mode).parameters())) for mode in KV_MODES] == [2, 0, 0]
    compress = KVCompression(8, 2)
    k, v = torch.randn(1, 2, 16, 4, requires_grad=True), torch.randn(1, 2, 16, 4)
    k_out, v_out = compress(k, v, (4, 4))
    (k_out.square().sum() + v_out.sum()).backward()
    assert compress.conv.weight.grad.shape == (8, 1, 2, 2)
    assert compress.conv.weight.grad.abs().min() > 0 and compress.conv.bias.grad.abs().min() > 0
    assert k.grad.abs().min() > 0


@pytest.mark.parametrize("ratio, mode", [(1, "conv"), (2, "conv"), (2, "average"), (4, "conv")])
def test_attention_flops_equal_the_counted_matmuls_and_conv(ratio, mode):
    """Explicit ``softmax(q k^T) v`` after compression, counted by FlopCounterMode (pooling counts as no FLOPs)."""
    grid, heads, head_dim = (8, 8), 2, 4
    q, k, v = (torch.randn(1, heads, 64, head_dim) for _ in range(3))
    counter = FlopCounterMode(display=False)
    with counter:
        if ratio > 1:
            k, v = KVCompression(heads * head_dim, ratio, mode)(k, v, grid)
        torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
    assert counter.get_total_flops() == attention_flops(64, heads * head_dim, ratio, mode)
    assert attention_flops(4096, 128, 2) == 4096 * 1024 * 128 * 4 + 4 * 4096 * 128


def test_attention_flops_rejects_a_token_count_the_ratio_cannot_divide():
    with pytest.raises(ValueError, match=r"tokens \(30\) must be a multiple of ratio\^2 \(2\^2\)"):
        attention_flops(30, 8, 2)
    with pytest.raises(ValueError, match=r"ratio must be an integer >= 1 \(1 is plain attention\); got 0"):
        attention_flops(64, 8, 0)


# Model level: the DiT's blocks compress between ``attn.project`` and ``attn.attend`` (``DiTConfig.kv_compression``).
MODEL = dict(input_size=16, patch_size=2, in_channels=3, hidden_size=32, depth=3, num_heads=2, pos_embed="none")


def trained_looking(model: DiT) -> DiT:
    """Random weights everywhere, so the zero-initialised adaLN and final layer do not hide what attention does."""
    torch.manual_seed(1)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    return model


def window_constant_images(n: int, side: int, window: int) -> torch.Tensor:
    """Random ``(N, 3, side, side)`` images, constant on each ``window x window`` pixel block."""
    coarse = torch.randn(n, 3, side // window, side // window)
    return coarse.repeat_interleave(window, dim=2).repeat_interleave(window, dim=3)


@pytest.mark.parametrize("mode", KV_MODES)
@pytest.mark.parametrize("qk_norm", [None, "rmsnorm"])
def test_a_compressed_dit_loads_an_uncompressed_one_and_keeps_its_output_on_window_constant_images(mode, qk_norm):
    plain = trained_looking(DiT(DiTConfig(**MODEL, qk_norm=qk_norm))).eval()
    compressed = DiT(DiTConfig(**MODEL, qk_norm=qk_norm, kv_compression={"ratio": 2, "mode": mode})).eval()
    missing, unexpected = compressed.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == []
    assert missing == ([f"blocks.{i}.kv_compression.conv.{p}" for i in range(3) for p in ("weight", "bias")]
                       if mode == "conv" else [])
    if mode == "conv":
        assert all(torch.all(b.kv_compression.conv.weight == 0.25) for b in compressed.blocks)
    torch.manual_seed(0)
    t = torch.rand(2)
    x = window_constant_images(2, 16, 2 * 2)  # r * p = 4 pixels: each 2 x 2 token window is constant
    torch.testing.assert_close(compressed(x, t), plain(x, t), rtol=1e-5, atol=1e-5)
    x = torch.randn(2, 3, 16, 16)  # general images: the keys differ within a window, so does the output
    assert (compressed(x, t) - plain(x, t)).abs().max() > 1e-3


def test_blocks_selects_which_blocks_attend_to_compressed_keys():
    model = DiT(DiTConfig(**MODEL, kv_compression={"ratio": 2, "blocks": [1]}))
    assert [block.kv_compression is not None for block in model.blocks] == [False, True, False]
    keys = []
    for block in model.blocks:
        attend = block.attn.attend
        block.attn.attend = lambda q, k, v, mask=None, attend=attend: keys.append(k.shape[2]) or attend(q, k, v, mask)
    model(torch.randn(1, 3, 16, 16), torch.rand(1))
    assert keys == [64, 16, 64]


def test_a_dit_on_a_grid_the_ratio_does_not_divide_says_which_grid():
    model = DiT(DiTConfig(**MODEL, kv_compression={"ratio": 2}))
    with pytest.raises(ValueError, match=r"token grid \(5, 6\) is not divisible by the KV compression ratio r=2"):
        model(torch.randn(1, 3, 10, 12), torch.rand(1))
