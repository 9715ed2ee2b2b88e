"""Checks and questions of the chapter "DiT from scratch and classifier-free guidance" (exercises/05_cfg.ipynb,
exercises/06_patchify_adaln.ipynb, exercises/09_attention_posembed.ipynb).

References: classifier-free guidance (DiT, arXiv 2212.09748, Sec. 3; unchanged for velocity models, SiT Sec. 3,
``minidit.guidance``), DiT's patchify, ``modulate`` and adaLN-Zero block (DiT Sec. 3.2, ``minidit.dit``), the fixed 2-D
sin-cos position embedding (MAE, arXiv 2111.06377, ``minidit.posembed``) and multi-head self-attention (Vaswani et al.
2017, eq. 1, ``minidit.attention``). ``adaln_zero_block`` and ``sincos_2d`` name the learner's ``modulate`` and
``sincos_1d`` when those are what is wrong.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from minidit.course.checks.core import Case, Check, Question, generator, register, register_question

# ---- classifier-free guidance (exercise 05) ------------------------------------------------------------------

_CFG_X = torch.randn(4, 2, generator=generator(4))
_CFG_T = torch.tensor([0.9, 0.6, 0.3, 0.05])
_CFG_TABLE = torch.randn(4, 2, generator=generator(5))


def _toy_conditional_velocity(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
    """A toy class-conditional model ``v(x, t, y) = (1 + t) table[y] - x``; class 3 is the null class."""
    return (1 + t[:, None]) * _CFG_TABLE[y] - x  # (N, 2)


def _cfg_reference(model: Callable[..., Tensor], cond: Tensor, null_cond: Tensor, scale: float) -> Callable[[Tensor, Tensor], Tensor]:
    from minidit.guidance import classifier_free_guidance

    return classifier_free_guidance(model, cond, null_cond, scale)


def _cfg_cases() -> list[Case]:
    cond, null_cond = torch.tensor([0, 1, 2, 0]), torch.full((4,), 3)
    return [Case(f"labels {cond.tolist()}, null label 3, scale={scale}", (_toy_conditional_velocity, cond, null_cond, scale))
            for scale in (1.0, 0.0, 1.5, 4.0)]


register(Check(
    name="cfg",
    reference=_cfg_reference,
    cases=_cfg_cases,
    hints=(
        "guidance extrapolates from the unconditional prediction towards the conditional one; scale 1 must give the "
        "conditional model and scale 0 the unconditional one",
        "inside velocity_fn(x, t) call the model twice: v_c = model(x, t, cond), v_u = model(x, t, null_cond)",
        "return v_u + scale (v_c - v_u) from velocity_fn, and return velocity_fn itself (a function) from the outer function",
    ),
    evaluate=lambda velocity_fn: velocity_fn(_CFG_X.clone(), _CFG_T.clone()),
))


def _guided_class_one_samples(scale: float) -> Tensor:
    """1000 class-1 samples of the exact two-class model of exercise 05 (classes N(-1, 0.3^2), N(+1, 0.3^2)), guided
    with ``scale`` through ``minidit.guidance`` and integrated by ``minidit.samplers.sample_ode`` (50 Euler steps)."""
    from minidit.guidance import classifier_free_guidance
    from minidit.samplers import sample_ode
    from minidit.toy import GaussianMixture

    classes = [GaussianMixture([[-1.0]], 0.3), GaussianMixture([[1.0]], 0.3)]
    both = GaussianMixture([[-1.0], [1.0]], 0.3)

    def model(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        per_class = torch.stack([c.velocity(x, t, "linear") for c in classes], dim=0)  # (2, N, 1)
        conditional = per_class[y.clamp_min(0), torch.arange(x.shape[0])]  # (N, 1)
        return torch.where(y[:, None] >= 0, conditional, both.velocity(x, t, "linear"))  # label -1 is the null label

    labels = torch.ones(1000, dtype=torch.long)
    velocity_fn = classifier_free_guidance(model, labels, torch.full_like(labels, -1), scale)
    return sample_ode(velocity_fn, torch.randn(1000, 1, generator=generator(33)), 50).samples


def _unguided_fraction() -> tuple[float, str]:
    above = (_guided_class_one_samples(0.0) > 0).float().mean().item()
    return round(above, 3), f"With scale 0, {above:.1%} of 1000 'class 1' samples (minidit.guidance + sample_ode) land above 0."


def _std_with_scale() -> tuple[str, str]:
    stds = {scale: _guided_class_one_samples(scale).std().item() for scale in (1.0, 3.0)}
    return ("shrinks" if stds[3.0] < stds[1.0] else "grows"), f"Class-1 samples have std {stds[1.0]:.3f} at scale 1 and {stds[3.0]:.3f} at scale 3."


register_question(Question(
    name="unguided_fraction_above_zero",
    prompt="With guidance scale 0, what fraction of the samples labelled class 1 land above 0?",
    compute=_unguided_fraction,
    atol=0.05,
))
register_question(Question(
    name="std_from_scale_1_to_3",
    prompt="From scale 1 to scale 3, does the spread (std) of the class-1 samples grow or shrink?",
    compute=_std_with_scale,
    choices=("grows", "shrinks"),
))

# ---- patchify and the adaLN-Zero block (exercise 06) ---------------------------------------------------------


def _patchify_reference(x: Tensor, patch_size: int) -> Tensor:
    from minidit.dit import patchify

    return patchify(x, patch_size)


def _unpatchify_reference(tokens: Tensor, grid_shape: tuple[int, int], patch_size: int) -> Tensor:
    from minidit.dit import unpatchify

    return unpatchify(tokens, grid_shape, patch_size)


_PATCH_SHAPES = ((2, 3, 8, 8, 2), (1, 1, 4, 6, 2), (2, 4, 6, 9, 3), (1, 2, 3, 2, 1))  # (N, C, H, W, p)


def _patchify_cases() -> list[Case]:
    g = generator(6)
    return [Case(f"x of shape {(n, c, h, w)}, patch_size={p}", (torch.randn(n, c, h, w, generator=g), p))
            for n, c, h, w, p in _PATCH_SHAPES]


def _unpatchify_cases() -> list[Case]:
    g = generator(7)
    return [Case(f"tokens of shape {(n, (h // p) * (w // p), p * p * c)}, grid_shape={(h // p, w // p)}, patch_size={p}",
                 (torch.randn(n, (h // p) * (w // p), p * p * c, generator=g), (h // p, w // p), p))
            for n, c, h, w, p in _PATCH_SHAPES]


register(Check(
    name="patchify",
    reference=_patchify_reference,
    cases=_patchify_cases,
    hints=(
        "split each spatial axis into (grid position, position inside the patch), then bring the two grid axes first "
        "and everything that belongs to one patch last",
        "reshape (N, C, H, W) to (N, C, h, p, w, p): the axes are (N, C, grid row, row in patch, grid column, column in patch)",
        "permute to (N, h, w, p, p, C), i.e. .permute(0, 2, 4, 3, 5, 1), then reshape to (N, h * w, p * p * C)",
    ),
))
register(Check(
    name="unpatchify",
    reference=_unpatchify_reference,
    cases=_unpatchify_cases,
    hints=(
        "undo patchify step by step, in reverse order: unpatchify(patchify(x, p), (H // p, W // p), p) must give x back",
        "C = token width // (p * p); reshape the tokens to (N, h, w, p, p, C) first",
        "permute (N, h, w, p, p, C) to (N, C, h, p, w, p), i.e. .permute(0, 5, 1, 3, 2, 4), then reshape to (N, C, h * p, w * p)",
    ),
))


def _modulate_reference(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    from minidit.dit import modulate

    return modulate(h, shift, scale)


def _modulate_cases() -> list[Case]:
    g = generator(16)
    return [Case(f"h of shape {(n, t, d)}, shift and scale of shape {(n, d)}",
                 (torch.randn(n, t, d, generator=g), torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)))
            for n, t, d in ((2, 5, 8), (3, 1, 4), (1, 7, 16))]


register(Check(
    name="modulate",
    reference=_modulate_reference,
    cases=_modulate_cases,
    hints=(
        "each sample has its own shift and scale, shared by all its tokens; a zero scale must leave h unchanged",
        "shift and scale are (N, D) and h is (N, T, D): insert the token axis with .unsqueeze(1) before broadcasting",
        "h * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)",
    ),
))


def _seeded_block(seed: int, zero_modulation: bool = False, **config: Any) -> torch.nn.Module:
    """A small ``DiTBlock`` with weights drawn from ``seed`` (frozen); ``zero_modulation`` applies the adaLN-Zero init."""
    from minidit.dit import DiTBlock, DiTConfig
    from minidit.rope import RotaryEmbedding

    settings = DiTConfig(hidden_size=32, num_heads=4, mlp_ratio=2.0, **config)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rope = RotaryEmbedding(settings.hidden_size // settings.num_heads) if settings.rope else None
        block = DiTBlock(settings, rope)
    if zero_modulation:
        torch.nn.init.zeros_(block.modulation[-1].weight)
        torch.nn.init.zeros_(block.modulation[-1].bias)
    return block.requires_grad_(False)


def _adaln_zero_block_reference(block: torch.nn.Module, x: Tensor, c: Tensor, grid_shape: tuple[int, int]) -> Tensor:
    return block(x, c, grid_shape)


def _adaln_zero_block_cases() -> list[Case]:
    g = generator(8)
    variants = (
        ("DiT block (LayerNorm)", (4, 4), dict(seed=0)),
        ("Flag-DiT block (RMSNorm, QK-norm, RoPE)", (2, 3), dict(seed=1, norm="rmsnorm", qk_norm="rmsnorm", rope=True)),
        ("adaLN-Zero initialisation (zero modulation)", (3, 3), dict(seed=2, zero_modulation=True)),
    )
    cases = []
    for label, (h, w), settings in variants:
        x, c = torch.randn(2, h * w, 32, generator=g), torch.randn(2, 32, generator=g)
        cases.append(Case(f"{label}, x of shape (2, {h * w}, 32), c of shape (2, 32), grid_shape={(h, w)}",
                          (_seeded_block(**settings), x, c, (h, w))))
    return cases


register(Check(
    name="adaln_zero_block",
    reference=_adaln_zero_block_reference,
    cases=_adaln_zero_block_cases,
    hints=(
        "two residual branches, attention then MLP; each normalises its input, modulates it with its own shift and "
        "scale, and scales its output by its gate before adding it back",
        "block.modulation(c) is (N, 6 D): .chunk(6, dim=-1) gives shift, scale, gate for attention, then for the MLP, "
        "each (N, D); a gate multiplies (N, T, D) after .unsqueeze(1)",
        "x = x + gate_msa.unsqueeze(1) * block.attn(modulate(block.norm1(x), shift_msa, scale_msa), grid_shape); then "
        "x + gate_mlp.unsqueeze(1) * block.mlp(modulate(block.norm2(x), shift_mlp, scale_mlp)) on the updated x",
    ),
    helpers=("modulate",),
))


def _tokens_per_image() -> tuple[tuple[int, int], str]:
    from minidit.dit import patchify

    tokens = patchify(torch.zeros(1, 3, 32, 32), 4)
    return (tokens.shape[1], tokens.shape[2]), f"minidit.dit.patchify turns a (1, 3, 32, 32) image into tokens of shape {tuple(tokens.shape)}."


def _untrained_output() -> tuple[float, str]:
    from minidit.dit import DiT, DiTConfig

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DiT(DiTConfig(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=4, num_classes=10)).eval()
        x, t, y = torch.randn(4, 3, 8, 8), torch.rand(4), torch.randint(0, 10, (4,))
    with torch.no_grad():
        largest = model(x, t, y).abs().max().item()
    return largest, f"A freshly built minidit.dit.DiT (depth 2, width 32) outputs max |v| = {largest:.3g} on random inputs."


register_question(Question(
    name="tokens_per_image",
    prompt="Patchifying a 3 x 32 x 32 image with patch size 4 gives how many tokens, of what width (a pair)?",
    compute=_tokens_per_image,
))
register_question(Question(
    name="untrained_output",
    prompt="What is the largest |output| of a freshly initialised DiT (adaLN-Zero, zero final layer)?",
    compute=_untrained_output,
    atol=1e-6,
))

# ---- sin-cos position embedding and self-attention (exercise 09) ---------------------------------------------


def _sincos_1d_reference(dim: int, positions: Tensor) -> Tensor:
    from minidit.posembed import sincos_1d

    return sincos_1d(dim, positions)


def _sincos_1d_cases() -> list[Case]:
    return [Case(f"dim={dim}, positions = arange({length}) of shape ({length},)", (dim, torch.arange(length)))
            for dim, length in ((8, 5), (4, 3), (16, 7))]


def _sincos_2d_reference(dim: int, grid_shape: tuple[int, int]) -> Tensor:
    from minidit.posembed import sincos_2d

    return sincos_2d(dim, grid_shape)


def _sincos_2d_cases() -> list[Case]:
    return [Case(f"dim={dim}, grid_shape={grid_shape}", (dim, grid_shape))
            for dim, grid_shape in ((8, (2, 3)), (16, (4, 4)), (12, (3, 5)), (32, (1, 6)))]


def _self_attention_reference(
    x: Tensor, qkv_weight: Tensor, qkv_bias: Tensor, proj_weight: Tensor, proj_bias: Tensor, num_heads: int
) -> Tensor:
    from minidit.attention import SelfAttention

    attention = SelfAttention(x.shape[-1], num_heads)
    for parameter, value in ((attention.qkv.weight, qkv_weight), (attention.qkv.bias, qkv_bias),
                             (attention.proj.weight, proj_weight), (attention.proj.bias, proj_bias)):
        parameter.data.copy_(value)
    with torch.no_grad():
        return attention(x)


def _self_attention_cases() -> list[Case]:
    g = generator(15)
    cases = []
    for n, tokens, dim, heads in ((2, 5, 8, 2), (1, 7, 12, 3), (3, 4, 16, 1), (2, 9, 16, 4)):
        x = torch.randn(n, tokens, dim, generator=g)
        qkv_weight, qkv_bias = torch.randn(3 * dim, dim, generator=g) / math.sqrt(dim), 0.1 * torch.randn(3 * dim, generator=g)
        proj_weight, proj_bias = torch.randn(dim, dim, generator=g) / math.sqrt(dim), 0.1 * torch.randn(dim, generator=g)
        label = f"x of shape {(n, tokens, dim)}, num_heads={heads} (head_dim {dim // heads})"
        cases.append(Case(label, (x, qkv_weight, qkv_bias, proj_weight, proj_bias, heads)))
    return cases


register(Check(
    name="sincos_1d",
    reference=_sincos_1d_reference,
    cases=_sincos_1d_cases,
    hints=(
        "each position gets dim / 2 angles, one per frequency, from fast to slow; the table lists all their sines, "
        "then all their cosines",
        "omega_i = 10000^(-i / (dim / 2)) for i < dim / 2; angles = positions (as float) times omega, shape (T, dim / 2)",
        "torch.cat([angles.sin(), angles.cos()], dim=-1), shape (T, dim)",
    ),
))
register(Check(
    name="sincos_2d",
    reference=_sincos_2d_reference,
    cases=_sincos_2d_cases,
    hints=(
        "half of the channels encode the grid column with the 1-D table, the other half the row (the official DiT "
        "and MAE layout: the column comes first); tokens run row by row",
        "rows, columns = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij'), each (h, w), flattened row-major",
        "torch.cat([sincos_1d(dim // 2, columns.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=-1), shape (h * w, dim)",
    ),
    helpers=("sincos_1d",),
))
register(Check(
    name="self_attention",
    reference=_self_attention_reference,
    cases=_self_attention_cases,
    hints=(
        "one linear layer makes q, k and v; each is cut into H heads of width Dh = D / H along the channels; every head "
        "attends on its own; the heads are put side by side again and projected",
        "q, k, v = (x @ qkv_weight.T + qkv_bias).chunk(3, dim=-1); a head split is (N, T, D) -> (N, T, H, Dh) -> "
        ".transpose(1, 2) to (N, H, T, Dh) (a direct reshape to (N, H, T, Dh) mixes tokens and channels)",
        "weights = softmax(q @ k.transpose(-2, -1) / sqrt(Dh), dim=-1), (N, H, T, T); (weights @ v).transpose(1, 2) "
        "reshaped to (N, T, D); then @ proj_weight.T + proj_bias",
    ),
))


def _embedding_norm() -> tuple[float, str]:
    from minidit.posembed import sincos_2d

    norms = sincos_2d(64, (8, 8)).norm(dim=-1)
    return round(norms.mean().item(), 4), f"minidit.posembed.sincos_2d(64, (8, 8)) has row norms from {norms.min():.4f} to {norms.max():.4f}."


def _permuted_tokens() -> tuple[str, str]:
    from minidit.attention import SelfAttention

    with torch.random.fork_rng():
        torch.manual_seed(0)
        attention = SelfAttention(32, num_heads=4)
    x, order = torch.randn(1, 16, 32, generator=generator(34)), torch.randperm(16, generator=generator(35))
    with torch.no_grad():
        difference = (attention(x)[:, order] - attention(x[:, order])).abs().max().item()
    return ("permuted" if difference < 1e-5 else "changed"), (
        f"minidit.attention.SelfAttention: max |attention(x)[order] - attention(x[order])| = {difference:.1e}.")


register_question(Question(
    name="embedding_norm",
    prompt="What is the norm of every row of the 2-D sin-cos table for D = 64?",
    compute=_embedding_norm,
    rtol=0.005,
))
register_question(Question(
    name="attention_of_permuted_tokens",
    prompt="Without a position embedding, is attention(x[order]) the rows of attention(x) 'permuted', or 'changed'?",
    compute=_permuted_tokens,
    choices=("permuted", "changed"),
))
