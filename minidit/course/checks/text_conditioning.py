"""Checks and questions of the chapter "Text conditioning: gated cross-attention and caption pooling (Lumina, PixArt)"
(exercises/10_gated_cross_attention.ipynb and exercises/13_masked_mean_pooling.ipynb).

References: Lumina's zero-initialised tanh gate per head on a cross-attention branch that shares the block's queries
(Lumina-T2X, arXiv 2405.05945, Sec. 2.1; PixArt-alpha's plain cross-attention, arXiv 2310.00426, Sec. 2.3),
``minidit.gating``; masked-mean caption pooling ``p = sum_l m_l f_l / sum_l m_l`` (``minidit.text.conditioning``).
``gated_cross_attention`` names the learner's ``masked_attention`` when that is what is wrong.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from minidit.course.checks.core import Case, Check, Question, generator, register, register_question


def _masked_mean_reference(features: Tensor, mask: Tensor) -> Tensor:
    from minidit.text.conditioning import masked_mean

    return masked_mean(features, mask)


def padding_mask(lengths: list[int], total: int) -> Tensor:
    """``(N, total)`` bool with the first ``lengths[i]`` entries of row ``i`` True (real tokens), the rest padding."""
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]


def _masked_mean_cases() -> list[Case]:
    g = generator(40)
    cases = []
    for lengths, total, dim in (([5, 5], 5, 4), ([3, 1, 6], 6, 8), ([1], 1, 3), ([2, 7], 9, 5)):
        features = torch.randn(len(lengths), total, dim, generator=g)
        mask = padding_mask(lengths, total)
        features[~mask] = 100.0  # padding features far from the real ones: counting them moves the mean a lot
        cases.append(Case(f"features of shape {tuple(features.shape)}, real tokens per caption {lengths}", (features, mask)))
    features = torch.randn(2, 6, 4, generator=g)
    mask = torch.tensor([[True, False, True, False, False, True], [False, True, True, True, False, False]])
    cases.append(Case("features of shape (2, 6, 4), padding between real tokens (masks that are not a prefix)", (features, mask)))
    return cases


register(Check(
    name="masked_mean",
    reference=_masked_mean_reference,
    cases=_masked_mean_cases,
    hints=(
        "average only the real tokens of each caption: padding must not count, neither in the sum nor in the number "
        "of tokens",
        "turn the mask (N, L) into weights (N, L, 1) of 0 and 1 with mask.to(features.dtype).unsqueeze(-1); the sum of "
        "the weights over L is each caption's number of real tokens, (N, 1)",
        "(features * weights).sum(dim=1) / weights.sum(dim=1), shape (N, D)",
    ),
))


def _masked_attention_reference(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor) -> Tensor:
    # What minidit.attention.SelfAttention.attend and minidit.gating.GatedCrossAttention run: SDPA with a boolean mask.
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])


def _masked_attention_cases() -> list[Case]:
    g = generator(41)
    cases = []
    for n, heads, queries, lengths, total, head_dim in ((2, 2, 5, [4, 2], 4, 8), (3, 1, 3, [1, 5, 3], 5, 4),
                                                        (1, 4, 6, [7], 7, 16), (2, 3, 2, [1, 1], 3, 6)):
        q = torch.randn(n, heads, queries, head_dim, generator=g)
        k, v = torch.randn(2, n, heads, total, head_dim, generator=g)
        key_mask = padding_mask(lengths, total)
        k[~key_mask[:, None, :, None].expand_as(k)] = 3.0  # padded keys that would win the softmax if attended
        label = f"q of shape {tuple(q.shape)}, k and v of shape {tuple(k.shape)}, real keys per sample {lengths}"
        cases.append(Case(label, (q, k, v, key_mask)))
    return cases


def _gated_cross_attention_reference(
    q: Tensor, text: Tensor, text_mask: Tensor, norm_weight: Tensor, kv_weight: Tensor, kv_bias: Tensor, gate: Tensor
) -> Tensor:
    from minidit.gating import GatedCrossAttention

    branch = GatedCrossAttention(text.shape[-1], q.shape[1], qk_norm=None, gated=True)
    for parameter, value in ((branch.text_norm.weight, norm_weight), (branch.kv.weight, kv_weight),
                             (branch.kv.bias, kv_bias), (branch.gate, gate)):
        parameter.data.copy_(value)
    with torch.no_grad():
        return branch(q, text, text_mask, torch.zeros_like(q))  # the branch alone: added to zero


def _gated_cross_attention_cases() -> list[Case]:
    g = generator(42)
    cases = []
    for n, heads, queries, lengths, total, dim, gate_kind in ((2, 2, 5, [3, 6], 6, 8, "random"),
                                                               (1, 4, 4, [2], 5, 16, "some heads at 0"),
                                                               (3, 1, 3, [1, 4, 2], 4, 6, "random"),
                                                               (2, 2, 6, [5, 5], 5, 8, "all 0 (initialisation)")):
        q = torch.randn(n, heads, queries, dim // heads, generator=g)
        text = 3 * torch.randn(n, total, dim, generator=g)  # not unit RMS: the branch must normalise it
        text_mask = padding_mask(lengths, total)
        text[~text_mask] = 50.0 * torch.randn(int((~text_mask).sum()), dim, generator=g)
        norm_weight = 0.5 + torch.rand(dim, generator=g)
        kv_weight, kv_bias = torch.randn(2 * dim, dim, generator=g) / math.sqrt(dim), 0.1 * torch.randn(2 * dim, generator=g)
        gate = torch.randn(heads, generator=g)
        if gate_kind == "some heads at 0":
            gate[::2] = 0.0
        elif gate_kind.startswith("all 0"):
            gate.zero_()
        label = (f"q of shape {tuple(q.shape)}, text of shape {tuple(text.shape)}, real tokens per caption {lengths}, "
                 f"gates {gate_kind}")
        cases.append(Case(label, (q, text, text_mask, norm_weight, kv_weight, kv_bias, gate)))
    return cases


register(Check(
    name="masked_attention",
    reference=_masked_attention_reference,
    cases=_masked_attention_cases,
    hints=(
        "padded keys must get softmax weight exactly 0: set their logits to -inf before the softmax",
        "logits = q @ k.transpose(-2, -1) / sqrt(Dh), (N, H, T, S); the key mask (N, S) broadcasts as "
        "key_mask[:, None, None, :]",
        "logits.masked_fill(~key_mask[:, None, None, :], float('-inf')).softmax(dim=-1) @ v, shape (N, H, T, Dh)",
    ),
))
register(Check(
    name="gated_cross_attention",
    reference=_gated_cross_attention_reference,
    cases=_gated_cross_attention_cases,
    hints=(
        "the image queries are given; keys and values come from the caption through their own projection, the caption "
        "is RMS-normalised first, padding is masked, and each head's result is multiplied by tanh of its gate",
        "text = text * rsqrt(mean(text^2, last dim) + 1e-6) * norm_weight; k, v = (text @ kv_weight.T + kv_bias)"
        ".chunk(2, dim=-1), each (N, L, D) -> (N, L, H, Dh) -> transpose(1, 2) to (N, H, L, Dh)",
        "masked_attention(q, k, v, text_mask) * torch.tanh(gate)[:, None, None], shape (N, H, T, Dh)",
    ),
    helpers=("masked_attention",),
))


def _gate_at_init() -> tuple[float, str]:
    from minidit.dit import DiT, DiTConfig
    from minidit.gating import gate_values

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DiT(DiTConfig(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=2, num_heads=4,
                              text_conditioning="gated_cross", text_dim=16))
    values = gate_values(model)  # (depth, heads)
    largest = values.abs().max().item()
    return largest, (f"minidit.gating.gate_values of a freshly built gated DiT (depth 2, 4 heads): {values.numel()} "
                     f"gates, largest |tanh g| = {largest:.4g}.")


def _pruned_heads() -> tuple[int, str]:
    from minidit.dit import DiT, DiTConfig
    from minidit.gating import prune_gates

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DiT(DiTConfig(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=4, num_heads=4,
                              text_conditioning="gated_cross", text_dim=16))
    pruned = prune_gates(model, fraction=0.8)
    return pruned, f"minidit.gating.prune_gates(model, fraction=0.8) on a gated DiT of depth 4 with 4 heads pruned {pruned} of 16 heads."


def _pooled_example() -> tuple[float, str]:
    from minidit.text.conditioning import masked_mean

    features = torch.tensor([[[1.0], [2.0], [3.0], [10.0], [10.0]]])  # (1, 5, 1): three words, then two pad tokens
    mask = torch.tensor([[True, True, True, False, False]])
    pooled = masked_mean(features, mask).item()
    return pooled, (f"minidit.text.conditioning.masked_mean gives {pooled:.4g}; the plain mean over all five tokens "
                    f"would be {features.mean().item():.4g}.")


def _caption_pooling_at_init() -> tuple[float, str]:
    from minidit.gating import CaptionPooling

    with torch.random.fork_rng():
        torch.manual_seed(0)
        pooling = CaptionPooling(text_dim=16, hidden_size=32)
    with torch.no_grad():
        added = pooling(torch.randn(4, 16, generator=generator(43)))  # (4, 32)
    largest = added.abs().max().item()
    return largest, f"minidit.gating.CaptionPooling(16, 32) at initialisation adds at most {largest:.4g} to the time embedding of 4 random captions."


register_question(Question(
    name="gate_at_init",
    prompt="At initialisation, what is the largest |tanh(g)| over all gates of a gated DiT?",
    compute=_gate_at_init,
    atol=1e-6,
))
register_question(Question(
    name="pruned_heads",
    prompt="How many of the 16 heads (depth 4, 4 heads) does prune_gates(model, fraction=0.8) switch off?",
    compute=_pruned_heads,
))
register_question(Question(
    name="pooled_example",
    prompt="Features 1, 2, 3 for three words and 10, 10 for two pad tokens: what is the masked mean?",
    compute=_pooled_example,
    atol=1e-6,
))
register_question(Question(
    name="caption_pooling_at_init",
    prompt="At initialisation, how much does the pooled caption add to the time embedding (largest absolute entry)?",
    compute=_caption_pooling_at_init,
    atol=1e-6,
))
