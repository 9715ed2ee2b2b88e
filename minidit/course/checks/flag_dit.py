"""Checks and questions of the chapter "Flag-DiT: RMSNorm, QK-norm and RoPE" (exercises/07_rope_qk_norm.ipynb).

References: axial RoPE on a 2-D token grid and QK-norm (Lumina-T2X Flag-DiT, arXiv 2405.05945, Sec. 2.1; RoFormer eq. 16;
SD3, arXiv 2403.03206, Sec. 5.3.2), ``minidit.rope`` and ``minidit.norms``. ``qk_norm`` names the learner's ``rms_norm``
when that is what is wrong.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from minidit.course.checks.core import Case, Check, Question, generator, register, register_question


def _rope_frequencies_reference(grid_shape: tuple[int, int], head_dim: int, theta: float) -> Tensor:
    from minidit.rope import rope_frequencies

    return rope_frequencies(grid_shape, head_dim, theta)


def _rope_frequencies_cases() -> list[Case]:
    return [Case(f"grid_shape={grid_shape}, head_dim={head_dim}, theta={theta}", (grid_shape, head_dim, theta))
            for grid_shape, head_dim, theta in (((4, 4), 8, 10000.0), ((3, 5), 12, 10000.0), ((2, 3), 10, 100.0))]


def _rope_reference(x: Tensor, angles: Tensor) -> Tensor:
    from minidit.rope import apply_rope

    return apply_rope(x, angles)


def _rope_cases() -> list[Case]:
    g = generator(9)
    cases = []
    for grid_shape, head_dim in (((4, 4), 8), ((3, 5), 12), ((2, 3), 10)):
        angles = _rope_frequencies_reference(grid_shape, head_dim, 100.0)
        x = torch.randn(2, 3, grid_shape[0] * grid_shape[1], head_dim, generator=g)
        label = f"x of shape {tuple(x.shape)}, angles of shape {tuple(angles.shape)} for grid_shape={grid_shape}"
        cases.append(Case(label, (x, angles)))
    return cases


register(Check(
    name="rope_frequencies",
    reference=_rope_frequencies_reference,
    cases=_rope_frequencies_cases,
    hints=(
        "axial RoPE is 1-D RoPE twice: some channel pairs rotate with the token's row, the others with its column, "
        "each axis with its own set of frequencies",
        "split the head_dim // 2 pairs between the axes with divmod(head_dim // 2, 2), the row axis taking the extra "
        "pair; an axis with d = 2 * pairs channels has frequencies theta^(-2i / d) (d of the axis, not head_dim)",
        "rows, columns = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij'); per axis "
        "positions.reshape(-1, 1) * frequencies is (h * w, pairs); torch.cat the row block then the column block: (h * w, head_dim // 2)",
    ),
))
register(Check(
    name="rope",
    reference=_rope_reference,
    cases=_rope_cases,
    hints=(
        "channel pair i of a token, (x[2i], x[2i + 1]), is a 2-D vector rotated by that token's angle i; the pairs are "
        "ADJACENT channels",
        "even, odd = x[..., 0::2], x[..., 1::2], each (N, H, T, Dh // 2), and the angles (T, Dh // 2) broadcast against them",
        "rotate to (even cos - odd sin, even sin + odd cos), then torch.stack([...], dim=-1).flatten(-2) interleaves "
        "them back into (N, H, T, Dh)",
    ),
))


def _rms_norm_reference(x: Tensor, weight: Tensor) -> Tensor:
    from minidit.norms import RMSNorm

    norm = RMSNorm(x.shape[-1])
    norm.weight.data.copy_(weight)
    return norm(x).detach()


def _rms_norm_cases() -> list[Case]:
    g = generator(10)
    return [Case(f"x of shape {shape} with mean {offset}, weight of shape ({shape[-1]},)",
                 (torch.randn(*shape, generator=g) * 3 + offset, 0.5 + torch.rand(shape[-1], generator=g)))
            for shape, offset in (((4, 8), 0.0), ((2, 5, 16), 2.0), ((3, 1, 6), -1.0))]


def _qk_norm_reference(q: Tensor, k: Tensor, query_weight: Tensor, key_weight: Tensor) -> tuple[Tensor, Tensor]:
    from minidit.norms import QKNorm

    qk_norm = QKNorm("rmsnorm", q.shape[-1])
    qk_norm.query_norm.weight.data.copy_(query_weight)
    qk_norm.key_norm.weight.data.copy_(key_weight)
    return tuple(part.detach() for part in qk_norm(q, k))


def _qk_norm_cases() -> list[Case]:
    g = generator(11)
    cases = []
    for heads, queries, keys, head_dim, scale in ((2, 5, 7, 8, 1.0), (4, 3, 3, 16, 50.0), (1, 6, 2, 4, 0.1)):
        q = torch.randn(2, heads, queries, head_dim, generator=g) * scale * torch.arange(1, heads + 1).reshape(-1, 1, 1)
        k = torch.randn(2, heads, keys, head_dim, generator=g) * scale
        query_weight, key_weight = 0.5 + torch.rand(head_dim, generator=g), 0.5 + torch.rand(head_dim, generator=g)
        label = f"q of shape {tuple(q.shape)}, k of shape {tuple(k.shape)}, entries of size ~{scale}, heads of different sizes"
        cases.append(Case(label, (q, k, query_weight, key_weight)))
    return cases


register(Check(
    name="rms_norm",
    reference=_rms_norm_reference,
    cases=_rms_norm_cases,
    hints=(
        "RMSNorm rescales each vector (the last dimension) to unit root-mean-square, then multiplies by a learned weight; "
        "unlike LayerNorm it does not subtract the mean",
        "the RMS is sqrt(mean(x^2 over the last dimension) + eps), kept with keepdim=True so that it broadcasts",
        "x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight",
    ),
))
register(Check(
    name="qk_norm",
    reference=_qk_norm_reference,
    cases=_qk_norm_cases,
    hints=(
        "QK-norm normalises each head's query and key vectors on their own, not the whole token",
        "one head's vector is the last dimension of (N, H, T, Dh), which is what rms_norm normalises",
        "return rms_norm(q, query_weight), rms_norm(k, key_weight)",
    ),
    helpers=("rms_norm",),
    output_names=("q", "k"),
))


def _row_pairs() -> tuple[int, str]:
    from minidit.rope import rope_frequencies

    angles = rope_frequencies((2, 1), 10)  # token 1 is row 1, column 0: only the row pairs have nonzero angles
    pairs = int((angles[1] != 0).sum())
    return pairs, f"minidit.rope.rope_frequencies((2, 1), head_dim=10): the token in row 1, column 0 has {pairs} nonzero angles of {angles.shape[1]}."


def _qk_norm_max_logit() -> tuple[float, str]:
    from minidit.norms import QKNorm

    head_dim = 64
    vector = 100 * torch.randn(1, 1, 1, head_dim, generator=generator(36))  # q = k: the largest logit for this direction
    q, k = QKNorm("rmsnorm", head_dim)(vector, vector)
    logit = (q * k).sum().item() / math.sqrt(head_dim)
    return round(logit, 4), f"minidit.norms.QKNorm (unit weights, Dh = 64) on q = k = 100 z gives the logit q . k / sqrt(Dh) = {logit:.4f}."


register_question(Question(
    name="row_pairs",
    prompt="With head_dim = 10, how many channel pairs rotate with the row?",
    compute=_row_pairs,
))
register_question(Question(
    name="qk_norm_max_logit",
    prompt="With QK-norm (unit weights) and Dh = 64, what is the largest possible logit q . k / sqrt(Dh)?",
    compute=_qk_norm_max_logit,
    rtol=0.01,
))
