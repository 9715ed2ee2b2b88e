"""Checks and questions of the chapter "MM-DiT: joint attention over image and text (SD3)"
(exercises/12_joint_attention.ipynb).

References: SD3's joint attention, one softmax over the concatenation [image, text] with separate projections per
modality (Esser et al., arXiv 2403.03206, Sec. 4 and Fig. 2), ``minidit.mmdit`` (``joint_key_mask``,
``joint_attention``, ``MMDiT.from_depth``). ``joint_attention`` names the learner's ``joint_key_mask`` when that is
what is wrong.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from minidit.course.checks.core import Case, Check, Question, generator, register, register_question
from minidit.course.checks.text_conditioning import padding_mask


def _joint_key_mask_reference(num_image_tokens: int, text_mask: Tensor) -> Tensor:
    from minidit.mmdit import joint_key_mask

    return joint_key_mask(num_image_tokens, text_mask)


def _joint_key_mask_cases() -> list[Case]:
    cases = [Case(f"num_image_tokens={tokens}, text_mask of shape ({len(lengths)}, {total}) with real tokens {lengths}",
                  (tokens, padding_mask(lengths, total))) for tokens, lengths, total in ((4, [2, 3], 3), (16, [1], 5), (1, [4, 1, 2], 4))]
    mask = torch.tensor([[True, False, True, True], [False, True, False, True]])
    return [*cases, Case("num_image_tokens=3, text_mask of shape (2, 4) with padding between real tokens", (3, mask))]


def _joint_attention_reference(
    x: Tensor, context: Tensor, text_mask: Tensor, image_qkv_weight: Tensor, image_qkv_bias: Tensor,
    text_qkv_weight: Tensor, text_qkv_bias: Tensor, num_heads: int,
) -> tuple[Tensor, Tensor]:
    from minidit.attention import SelfAttention
    from minidit.mmdit import joint_attention

    image_attn, text_attn = SelfAttention(x.shape[-1], num_heads), SelfAttention(x.shape[-1], num_heads)
    for parameter, value in ((image_attn.qkv.weight, image_qkv_weight), (image_attn.qkv.bias, image_qkv_bias),
                             (text_attn.qkv.weight, text_qkv_weight), (text_attn.qkv.bias, text_qkv_bias)):
        parameter.data.copy_(value)
    with torch.no_grad():
        return joint_attention(image_attn, text_attn, x, context, text_mask)


def _joint_attention_cases() -> list[Case]:
    g = generator(46)
    cases = []
    for n, tokens, lengths, total, dim, heads in ((2, 4, [3, 1], 3, 8, 2), (1, 6, [5], 5, 12, 3),
                                                   (3, 3, [2, 4, 1], 4, 8, 1), (2, 5, [1, 1], 1, 16, 4)):
        x, context = torch.randn(n, tokens, dim, generator=g), torch.randn(n, total, dim, generator=g)
        text_mask = padding_mask(lengths, total)
        context[~text_mask] = 20.0  # padded text whose keys would dominate the softmax if they were attended
        weights = [(torch.randn(3 * dim, dim, generator=g) / math.sqrt(dim), 0.1 * torch.randn(3 * dim, generator=g)) for _ in range(2)]
        label = (f"x of shape {tuple(x.shape)}, context of shape {tuple(context.shape)}, real text tokens {lengths}, "
                 f"num_heads={heads}")
        cases.append(Case(label, (x, context, text_mask, *weights[0], *weights[1], heads)))
    return cases


register(Check(
    name="joint_key_mask",
    reference=_joint_key_mask_reference,
    cases=_joint_key_mask_cases,
    hints=(
        "the joint sequence is [image, text]: every image key may be attended, a text key only if it is a real token",
        "an all-True block (N, num_image_tokens) for the image, then text_mask (N, L), concatenated along the sequence",
        "torch.cat([text_mask.new_ones(N, num_image_tokens), text_mask], dim=1)[:, None, None, :], shape (N, 1, 1, T + L)",
    ),
))
register(Check(
    name="joint_attention",
    reference=_joint_attention_reference,
    cases=_joint_attention_cases,
    hints=(
        "each stream makes its own q, k, v with its own weights; then ONE attention runs over the concatenated sequence "
        "[image, text], so image tokens read text and text tokens read image; the result is cut back at T",
        "q, k, v of a stream: (tokens @ qkv_weight.T + qkv_bias).chunk(3, dim=-1), each (N, T, D) -> (N, H, T, Dh); "
        "torch.cat the image and text parts along dim=2 to (N, H, T + L, Dh)",
        "softmax(q k^T / sqrt(Dh)) with -inf where joint_key_mask(T, text_mask) is False, times v: (N, H, T + L, Dh); "
        "split([T, L], dim=2) and merge the heads back: (N, T, D) and (N, L, D)",
    ),
    helpers=("joint_key_mask",),
    output_names=("image", "text"),
))


def _joint_tokens() -> tuple[int, str]:
    from minidit.mmdit import joint_key_mask

    image_tokens = (16 // 4) ** 2
    keys = joint_key_mask(image_tokens, torch.ones(1, 12, dtype=torch.bool)).shape[-1]
    return keys, f"minidit.mmdit.joint_key_mask for {image_tokens} image tokens and 12 text tokens covers {keys} keys."


def _mmdit_width() -> tuple[tuple[int, int], str]:
    from minidit.mmdit import MMDiT

    with torch.random.fork_rng():
        torch.manual_seed(0)
        config = MMDiT.from_depth(3, input_size=8, patch_size=4, in_channels=3, text_dim=16).config
    return (config.hidden_size, config.num_heads), (f"minidit.mmdit.MMDiT.from_depth(3) has hidden size "
                                                     f"{config.hidden_size} and {config.num_heads} heads.")


register_question(Question(
    name="joint_tokens",
    prompt="A 16 x 16 image with patch size 4 and a caption of 12 tokens: how many keys does the joint attention see?",
    compute=_joint_tokens,
))
register_question(Question(
    name="mmdit_width",
    prompt="What are the hidden size and the number of heads of MMDiT.from_depth(3)? Answer (hidden, heads).",
    compute=_mmdit_width,
))
