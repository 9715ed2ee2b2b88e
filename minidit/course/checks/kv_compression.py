"""Checks and questions of the chapter "KV token compression (PixArt-Sigma)" (exercises/11_kv_compression.ipynb).

References: PixArt-Sigma's depthwise conv of kernel and stride ``r`` on the 2-D token grid, shared by keys and values
and initialised to the average (Chen et al., arXiv 2403.04692, "KV token compression"), ``minidit.kv_compression``
(``KVCompression`` in modes ``"conv"`` and ``"average"``, ``attention_flops``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from minidit.course.checks.core import Case, Check, Question, generator, register, register_question


def _compress_kv_reference(k: Tensor, v: Tensor, grid_shape: tuple[int, int], weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    from minidit.kv_compression import KVCompression

    compression = KVCompression(weight.shape[0], ratio=weight.shape[-1], mode="conv")
    compression.conv.weight.data.copy_(weight)
    compression.conv.bias.data.copy_(bias)
    with torch.no_grad():
        return compression(k, v, grid_shape)


def _compress_kv_cases() -> list[Case]:
    g = generator(44)
    cases = []
    for n, heads, grid_shape, head_dim, ratio, init in ((2, 2, (4, 4), 4, 2, "average"), (1, 2, (4, 6), 3, 2, "random"),
                                                         (2, 3, (6, 3), 2, 3, "random"), (3, 1, (2, 2), 5, 2, "random")):
        dim = heads * head_dim
        k, v = torch.randn(2, n, heads, grid_shape[0] * grid_shape[1], head_dim, generator=g)
        if init == "average":
            weight, bias = torch.full((dim, 1, ratio, ratio), 1.0 / ratio**2), torch.zeros(dim)
        else:  # a different kernel per channel: a channel given the wrong head's kernel shows
            weight, bias = torch.randn(dim, 1, ratio, ratio, generator=g), torch.randn(dim, generator=g)
        label = (f"k and v of shape {tuple(k.shape)} on the grid {grid_shape}, r={ratio}, {init} weights of shape "
                 f"{tuple(weight.shape)}")
        cases.append(Case(label, (k, v, grid_shape, weight, bias)))
    return cases


def _average_pool_kv_reference(k: Tensor, v: Tensor, grid_shape: tuple[int, int], ratio: int) -> tuple[Tensor, Tensor]:
    from minidit.kv_compression import KVCompression

    return KVCompression(k.shape[1] * k.shape[3], ratio=ratio, mode="average")(k, v, grid_shape)


def _average_pool_kv_cases() -> list[Case]:
    g = generator(45)
    cases = []
    for n, heads, grid_shape, head_dim, ratio in ((2, 2, (4, 4), 4, 2), (1, 3, (6, 9), 2, 3), (2, 1, (2, 8), 3, 2)):
        k, v = torch.randn(2, n, heads, grid_shape[0] * grid_shape[1], head_dim, generator=g)
        cases.append(Case(f"k and v of shape {tuple(k.shape)} on the grid {grid_shape}, r={ratio}", (k, v, grid_shape, ratio)))
    return cases


register(Check(
    name="compress_kv",
    reference=_compress_kv_reference,
    cases=_compress_kv_cases,
    hints=(
        "put the keys back on their (h, w) grid as an image with D = H * Dh channels, run one depthwise conv of kernel "
        "and stride r (each channel its own r x r kernel), and flatten the (h / r, w / r) result back to tokens; the "
        "values go through the same conv",
        "channel c of the image is head c // Dh, entry c % Dh: k (N, H, T, Dh) -> permute(0, 1, 3, 2) -> reshape "
        "(N, H * Dh, h, w); torch.nn.functional.conv2d(image, weight, bias, stride=r, groups=H * Dh)",
        "the conv output (N, D, h / r, w / r) -> reshape (N, H, Dh, S) with S = (h / r) * (w / r) -> permute(0, 1, 3, 2) "
        "to (N, H, S, Dh); do this for k and for v and return both",
    ),
    output_names=("k", "v"),
))
register(Check(
    name="average_pool_kv",
    reference=_average_pool_kv_reference,
    cases=_average_pool_kv_cases,
    hints=(
        "each r x r window of the token grid becomes one key (and one value): the mean of the window's r^2 tokens",
        "tokens are row-major: k (N, H, h * w, Dh) -> reshape (N, H, h / r, r, w / r, r, Dh); the two axes of "
        "size r index the position inside a window",
        ".mean(dim=(3, 5)) gives (N, H, h / r, w / r, Dh); reshape to (N, H, (h / r) * (w / r), Dh); same for v",
    ),
    output_names=("k", "v"),
))


def _attention_flop_ratio() -> tuple[float, str]:
    from minidit.kv_compression import attention_flops

    plain, compressed = attention_flops(256, 64, ratio=1), attention_flops(256, 64, ratio=2, mode="conv")
    ratio = plain / compressed
    return round(ratio, 4), (f"minidit.kv_compression.attention_flops(256, 64): {plain} FLOPs without compression, "
                             f"{compressed} with r = 2 (conv included), a ratio of {ratio:.4f}.")


def _compressed_keys() -> tuple[int, str]:
    from minidit.kv_compression import KVCompression

    k = torch.zeros(1, 1, 64 * 64, 8)  # (N, H, T, Dh) on a 64 x 64 grid
    keys = KVCompression(8, ratio=2, mode="average")(k, k, (64, 64))[0].shape[2]
    return keys, f"minidit.kv_compression.KVCompression(ratio=2) turns 4096 keys on a 64 x 64 grid into {keys}."


register_question(Question(
    name="compressed_keys",
    prompt="With r = 2, how many keys does each query see on a 64 x 64 token grid?",
    compute=_compressed_keys,
))
register_question(Question(
    name="attention_flop_ratio",
    prompt="For T = 256 tokens and D = 64, how many times fewer attention FLOPs does r = 2 (with its conv) need?",
    compute=_attention_flop_ratio,
    rtol=0.01,
))
