"""Checks and questions of the chapter "llm_text_encoders", LLMs as prompt encoders (LI-DiT)
(exercises/14_llm_refiner.ipynb).

References: LI-DiT's language-token refiner (Ma et al., arXiv 2406.11831, Sec. 3.2), a pre-norm block whose attention
and MLP outputs are scaled by gates ``Linear_0(SiLU(c))`` that start at exactly 0, over the attention mask
``M_ij = m_j [and j <= i] or i = j`` (``minidit.refiner.RefinerBlock``, ``minidit.text.encoder.attention_mask``); and
its position-bias measurement (Sec. 3.1), the per-object hits by position in the prompt and their first-minus-last
difference (``minidit.causal_bias.alignment_by_position``, ``first_minus_last``). ``refiner_block`` names the
learner's ``refiner_mask`` when that is what is wrong.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from minidit.course.checks.core import Case, Check, Question, generator, register, register_question
from minidit.course.checks.text_conditioning import padding_mask

DIM, HEADS = 16, 4  # width and heads of the refiner blocks the checks build


def _refiner_mask_reference(mask: Tensor, causal: bool) -> Tensor:
    from minidit.text.encoder import attention_mask

    return attention_mask(mask, causal)


def _masks() -> list[tuple[str, Tensor]]:
    """Padding masks ``(N, L)``: right-padded, one row starting with padding, padding between real tokens, none."""
    return [
        ("real tokens per caption [5, 3, 1] of 5 (right padding)", padding_mask([5, 3, 1], 5)),
        ("a row that starts with padding", torch.tensor([[False, False, True, True, True, False],
                                                         [True, True, True, True, False, False]])),
        ("padding between real tokens", torch.tensor([[True, False, True, False, True, True, False]])),
        ("no padding", torch.ones(2, 4, dtype=torch.bool)),
    ]


def _refiner_mask_cases() -> list[Case]:
    return [Case(f"mask of shape {tuple(mask.shape)}, {label}, causal={causal}", (mask, causal))
            for label, mask in _masks() for causal in (False, True)]


register(Check(
    name="refiner_mask",
    reference=_refiner_mask_reference,
    cases=_refiner_mask_cases,
    hints=(
        "query i may attend key j when key j is a real token (and, with causal=True, j <= i); every query may also "
        "attend itself, so that no row is all False, not even a padded query's",
        "the real keys broadcast as mask[:, None, None, :] (N, 1, 1, L); the causal part is "
        "torch.ones(L, L, dtype=torch.bool).tril() (L, L); combine them with &",
        "allowed = mask[:, None, None, :] (& tril when causal); return allowed | torch.eye(L, dtype=torch.bool), "
        "shape (N, 1, L, L)",
    ),
))


def _seeded_refiner_block(seed: int, gates: str) -> torch.nn.Module:
    """A frozen ``RefinerBlock(DIM, HEADS)`` drawn from ``seed``; ``gates`` "random" opens its zero-initialised gates."""
    from minidit.refiner import RefinerBlock

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        block = RefinerBlock(DIM, HEADS, mlp_ratio=2.0)
    if gates == "random":
        g = generator(140 + seed)
        with torch.no_grad():
            block.gate[-1].weight.copy_(torch.randn(block.gate[-1].weight.shape, generator=g) * 0.5)
            block.gate[-1].bias.copy_(torch.randn(block.gate[-1].bias.shape, generator=g) * 0.5)
    return block.requires_grad_(False)


def _refiner_block_reference(block: torch.nn.Module, x: Tensor, mask: Tensor, c: Tensor, causal: bool) -> Tensor:
    from minidit.text.encoder import attention_mask

    return block(x, attention_mask(mask, causal), c)


def _refiner_block_cases() -> list[Case]:
    g = generator(141)
    variants = (
        ("random gates, bidirectional, right padding", 0, "random", padding_mask([6, 4, 2], 6), False),
        ("random gates, causal, right padding", 1, "random", padding_mask([5, 3], 5), True),
        ("random gates, causal, a row that starts with padding", 2, "random",
         torch.tensor([[False, True, True, True, True], [True, True, True, False, False]]), True),
        ("random gates, bidirectional, padding between real tokens", 3, "random",
         torch.tensor([[True, False, True, True, False, True]]), False),
        ("gates at 0 (initialisation): the block is the identity", 4, "zero", padding_mask([4, 2], 4), False),
    )
    cases = []
    for label, seed, gates, mask, causal in variants:
        x = 2 * torch.randn(*mask.shape, DIM, generator=g)
        x[~mask] = 30.0 * torch.randn(int((~mask).sum()), DIM, generator=g)  # padding far from the real tokens
        c = torch.randn(mask.shape[0], DIM, generator=g)
        cases.append(Case(f"{label}, x of shape {tuple(x.shape)}, c of shape {tuple(c.shape)}, causal={causal}",
                          (_seeded_refiner_block(seed, gates), x, mask, c, causal)))
    return cases


register(Check(
    name="refiner_block",
    reference=_refiner_block_reference,
    cases=_refiner_block_cases,
    hints=(
        "two residual branches, attention then MLP, each on a LayerNorm of its input and scaled by its own gate before "
        "it is added back; the gates come from c through SiLU and the zero-initialised linear block.gate[-1]",
        "block.gate(c) is SiLU then the linear layer, (N, 2 D): .unsqueeze(1).chunk(2, dim=-1) gives g_attn, g_mlp, each "
        "(N, 1, D); the attention takes the mask as a keyword, block.attn(h, attn_mask=refiner_mask(mask, causal))",
        "x = x + g_attn * block.attn(block.norm1(x), attn_mask=...); then return x + g_mlp * block.mlp(block.norm2(x)) "
        "on the updated x, shape (N, L, D)",
    ),
    helpers=("refiner_mask",),
))


def _record(caption: int, objects: int, order: int, hits: tuple[bool, ...]) -> dict[str, Any]:
    """A record in the layout of ``minidit.data.analyser.object_reports`` (without the ``ObjectSpec`` fields)."""
    colour, shape, size, position = hits
    return {"caption": caption, "order": order, "objects": objects, "colour": colour, "shape": shape, "size": size,
            "position": position, "object": colour and shape and size and position}


def synthetic_reports(counts: tuple[int, ...], seed: int, missing: float = 0.2) -> list[dict[str, Any]]:
    """Object reports of ``len(counts)`` captions naming ``counts[i]`` objects, hits drawn from ``seed``.

    Each attribute (colour, shape, size, position) holds with probability 0.7; with probability ``missing`` the
    object is missing and fails all of them. Captions of different ``k`` are interleaved as ``counts`` orders them.
    """
    g = generator(seed)
    reports = []
    for caption, objects in enumerate(counts):
        for order in range(objects):
            drawn = torch.rand(4, generator=g) < 0.7
            if float(torch.rand(1, generator=g)) < missing:
                drawn = torch.zeros(4, dtype=torch.bool)
            reports.append(_record(caption, objects, order, tuple(bool(b) for b in drawn)))
    return reports


def _hits_by_position_reference(reports: list[dict[str, Any]]) -> dict[tuple[int, int], Tensor]:
    from minidit.causal_bias import alignment_by_position

    return alignment_by_position(reports)


def _hits_table(hits: Any) -> tuple[Tensor, Tensor]:
    """The keys ``(K, 2)`` of a ``{(k, j): hits (M,)}`` dict in sorted order and its hits concatenated in that order."""
    if not isinstance(hits, dict):
        raise TypeError(f"expected a dict {{(k, j): hits}}, got {type(hits).__name__}")
    keys = sorted(hits)
    values = [torch.as_tensor(hits[key], dtype=torch.float64) for key in keys]
    return torch.tensor(keys, dtype=torch.float64).reshape(-1, 2), torch.cat(values)


def _hits_by_position_cases() -> list[Case]:
    return [
        Case("4 captions of 3 objects, every object found", (synthetic_reports((3, 3, 3, 3), seed=142, missing=0.0),)),
        Case("12 captions of 2, 3 and 4 objects, interleaved, some objects missing",
             (synthetic_reports((2, 4, 3, 3, 2, 4, 4, 2, 3, 2, 3, 4), seed=143),)),
        Case("5 captions of 1 to 4 objects, many objects missing",
             (synthetic_reports((1, 4, 2, 4, 3), seed=144, missing=0.5),)),
    ]


register(Check(
    name="hits_by_position",
    reference=_hits_by_position_reference,
    cases=_hits_by_position_cases,
    hints=(
        "group the records by (number of objects in the caption, position of the object in the caption); each record "
        "gives one number, the mean of its colour, shape and size hits (position is not one of them)",
        "for each record: score = (record['colour'] + record['shape'] + record['size']) / 3; append it to "
        "table[(record['objects'], record['order'])], a list, keeping the records' order",
        "return {key: torch.tensor(scores, dtype=torch.float32) for key, scores in table.items()}, each (M,)",
    ),
    output_names=("keys (k, j) in sorted order", "hits of every key, concatenated in key order"),
    evaluate=_hits_table,
))


def _first_minus_last_reference(hits: dict[tuple[int, int], Tensor]) -> Tensor:
    from minidit.causal_bias import first_minus_last

    return first_minus_last(hits)


def _first_minus_last_cases() -> list[Case]:
    from minidit.causal_bias import alignment_by_position

    def hits(counts: tuple[int, ...], seed: int) -> dict[tuple[int, int], Tensor]:
        return alignment_by_position(synthetic_reports(counts, seed))

    return [
        Case("hits of 5 captions of 2 objects", (hits((2,) * 5, 145),)),
        Case("hits of 4 captions of 3 objects", (hits((3,) * 4, 146),)),
        Case("hits of captions of 2, 3 and 4 objects", (hits((2, 3, 4, 4, 3, 2, 2, 4, 3), 147),)),
        Case("hits of captions of 1 to 4 objects (one object has no first and last)",
             (hits((1, 2, 4, 1, 3, 4, 2), 148),)),
    ]


register(Check(
    name="first_minus_last",
    reference=_first_minus_last_reference,
    cases=_first_minus_last_cases,
    hints=(
        "for every number of objects k > 1 in the table, take each caption's hits of its first object minus those of "
        "its last object; captions of one object have no first and last and are left out",
        "the first object of a caption of k objects is position 0, the last position k - 1: hits[(k, 0)] - hits[(k, k - 1)], "
        "(M_k,); the captions come in the same order at every position",
        "torch.cat([hits[k, 0] - hits[k, k - 1] for k in sorted({k for k, _ in hits if k > 1})]), shape (M,)",
    ),
))


def _refiner_identity_at_init() -> tuple[float, str]:
    from minidit.refiner import TokenRefiner

    with torch.random.fork_rng():
        torch.manual_seed(0)
        refiner = TokenRefiner(DIM, cond_dim=8, depth=2, num_heads=HEADS)
    g = generator(149)
    text, t_emb = torch.randn(3, 6, DIM, generator=g), torch.randn(3, 8, generator=g)
    mask = padding_mask([6, 4, 2], 6)
    with torch.no_grad():
        largest = (refiner(text, mask, t_emb) - text).abs().max().item()
    return largest, (f"A freshly built minidit.refiner.TokenRefiner (2 blocks, width {DIM}) moves random features "
                     f"of shape (3, 6, {DIM}) by at most {largest:.4g}.")


def _first_token_reads() -> tuple[tuple[int, int], str]:
    from minidit.text.encoder import attention_mask

    block = _seeded_refiner_block(0, "random")
    g = generator(150)
    x, c = torch.randn(1, 8, DIM, generator=g), torch.randn(1, DIM, generator=g)
    mask = padding_mask([5], 8)  # 5 real tokens, 3 pad tokens
    reads = []
    for causal in (False, True):
        first = block(x, attention_mask(mask, causal), c)[0, 0]
        changed = 0
        for j in range(8):
            other = x.clone()
            other[0, j] += torch.randn(DIM, generator=g)  # not a constant shift, which LayerNorm would remove
            changed += not torch.equal(block(other, attention_mask(mask, causal), c)[0, 0], first)
        reads.append(changed)
    return (reads[0], reads[1]), (f"Changing one input token at a time of a RefinerBlock with open gates (5 real tokens "
                                  f"and 3 pad tokens, c fixed) changes the first output token for {reads[0]} of the 8 "
                                  f"tokens with causal=False and for {reads[1]} with causal=True.")


def _first_minus_last_example() -> tuple[float, str]:
    from minidit.causal_bias import alignment_by_position, first_minus_last

    reports = [_record(0, 3, 0, (True, True, True, True)),  # the first object named: all right
               _record(0, 3, 1, (False, True, False, True)),
               _record(0, 3, 2, (False, True, False, True))]  # the last one: right shape only
    hits = alignment_by_position(reports)
    value = first_minus_last(hits).item()
    return value, (f"minidit.causal_bias.alignment_by_position gives hits {hits[3, 0].item():.4g} for the first object "
                   f"and {hits[3, 2].item():.4g} for the last; first_minus_last gives {value:.4g}.")


register_question(Question(
    name="refiner_identity_at_init",
    prompt="At initialisation, what is the largest |refined - features| of LI-DiT's token refiner?",
    compute=_refiner_identity_at_init,
))
register_question(Question(
    name="first_token_reads",
    prompt=("5 real tokens padded to 8, c fixed: on how many of the 8 input tokens does a refiner block's first output "
            "token depend, with causal=False and with causal=True (a pair)?"),
    compute=_first_token_reads,
))
register_question(Question(
    name="first_minus_last_example",
    prompt="First object named all right, last one with only its shape right: what is first_minus_last for this prompt?",
    compute=_first_minus_last_example,
    atol=1e-3,
))
