"""Checks and questions of the chapter "any_modality", any modality as frames (Lumina-T2X) (exercises/15_frames.ipynb).

References: Lumina-T2X (arXiv 2405.05945, Sec. 2.2) packs latent frames ``[H, W, T, C]`` into one token sequence, frame
by frame and row by row, a ``[nextline]`` token after every row and a ``[nextframe]`` token after every frame
(``L = t (h (w + 1) + 1)``), with 3-D RoPE positions ``(t, h, w)``; the kinds and positions of the tokens come from
``minidit.frames.frame_layout`` and the packed sequence from ``minidit.frames.FrameTokens.pack``. ``[nextframe]`` is
defined by minidit (Lumina's public code has ``[nextline]`` only). ``pack`` names the learner's ``sequence_kinds`` when
that is what is wrong.
"""
from __future__ import annotations

import torch
from torch import Tensor

from minidit.course.checks.core import Case, Check, Question, generator, register, register_question

GRIDS = ((1, 1, 1), (1, 2, 3), (2, 2, 3), (3, 1, 4), (2, 3, 2), (4, 2, 1))  # (t, h, w) grids of one sample


def _grid_cases() -> list[Case]:
    """One case per ``(t, h, w)``: a single patch, an image, clips whose t, h and w differ (no axes swap unseen)."""
    return [Case(f"t={t}, h={h}, w={w}", (t, h, w)) for t, h, w in GRIDS]


def _sequence_kinds_reference(t: int, h: int, w: int) -> Tensor:
    from minidit.frames import frame_layout

    return frame_layout([(t, h, w)]).kinds[0].clone()  # (L,)


register(Check(
    name="sequence_kinds",
    reference=_sequence_kinds_reference,
    cases=_grid_cases,
    hints=(
        "walk the clip as it is read: frame by frame, inside a frame row by row, inside a row column by column; "
        "every row ends with a [nextline], the last row of a frame too, and every frame with a [nextframe], the last "
        "too",
        "two nested loops, for f in range(t): for r in range(h): ..., the [nextframe] appended after the inner loop; "
        "the length is t (h (w + 1) + 1)",
        "kinds += [PATCH] * w + [NEXTLINE] for each row, kinds.append(NEXTFRAME) after each frame's rows; "
        "return torch.tensor(kinds), shape (L,)",
    ),
    atol=0.0,
    rtol=0.0,
))


def _token_positions_reference(t: int, h: int, w: int) -> Tensor:
    from minidit.frames import frame_layout

    return frame_layout([(t, h, w)]).positions[0].clone()  # (L, 3)


register(Check(
    name="token_positions",
    reference=_token_positions_reference,
    cases=_grid_cases,
    hints=(
        "one (t, h, w) triple per token, in the order of sequence_kinds, t first: patch (f, r, c) sits at (f, r, c); "
        "a [nextline] one column past its row's last patch, a [nextframe] where the row after the last would start",
        "the [nextline] of row r of frame f is at (f, r, w), not (f, r, w - 1); the [nextframe] of frame f is at "
        "(f, h, 0), not (f, h - 1, ...)",
        "for f in range(t): for r in range(h): positions += [(f, r, c) for c in range(w + 1)]; then "
        "positions.append((f, h, 0)); return torch.tensor(positions, dtype=torch.float32), shape (L, 3)",
    ),
    atol=0.0,
    rtol=0.0,
))


def _pack_reference(patches: Tensor, nextline: Tensor, nextframe: Tensor, t: int, h: int, w: int) -> Tensor:
    from minidit.frames import FrameTokens, frame_layout

    with torch.random.fork_rng():  # FrameTokens draws its initial tokens from the global generator
        tokens = FrameTokens(patches.shape[-1]).requires_grad_(False)
    tokens.nextline.copy_(nextline)
    tokens.nextframe.copy_(nextframe)
    return tokens.pack(patches, frame_layout([(t, h, w)] * patches.shape[0]))  # (N, L, D)


def _pack_cases() -> list[Case]:
    g = generator(151)
    cases = []
    for n, (t, h, w), dim in ((2, (1, 2, 3), 4), (1, (2, 3, 2), 5), (3, (3, 2, 4), 3), (2, (2, 1, 1), 2)):
        patches = torch.randn(n, t * h * w, dim, generator=g)  # (N, P, D), frame by frame, row by row
        nextline, nextframe = torch.randn(dim, generator=g), torch.randn(dim, generator=g)
        label = f"patches of shape {tuple(patches.shape)}, t={t}, h={h}, w={w}"
        cases.append(Case(label, (patches, nextline, nextframe, t, h, w)))
    return cases


register(Check(
    name="pack",
    reference=_pack_reference,
    cases=_pack_cases,
    hints=(
        "the patches (N, P, D) come in the order of patchify_frames, frame by frame and row by row (the column moves "
        "fastest); insert a copy of nextline after every row of w patches and a copy of nextframe after every frame",
        "patches.reshape(N, t, h, w, D) puts each row in one slice; append nextline.expand(N, t, h, 1, D) along the "
        "column axis, then, with the rows flattened to (N, t, h (w + 1), D), nextframe.expand(N, t, 1, D)",
        "rows = torch.cat([grid, nextline.expand(n, t, h, 1, d)], dim=3); frames = "
        "torch.cat([rows.reshape(n, t, -1, d), nextframe.expand(n, t, 1, d)], dim=2); return frames.reshape(n, -1, d), "
        "shape (N, L, D)",
    ),
    helpers=("sequence_kinds",),
    atol=0.0,
    rtol=0.0,
))


def _clip_tokens() -> tuple[int, str]:
    from minidit.frames import NEXTFRAME, NEXTLINE, PATCH, frame_layout, patchify_frames

    patch_size, frames, size = 4, 8, 24
    patches = patchify_frames(torch.zeros(1, size, size, frames, 4), patch_size)  # (1, P, 64)
    kinds = frame_layout([(frames, size // patch_size, size // patch_size)]).kinds[0]  # (L,)
    counts = [int((kinds == kind).sum()) for kind in (PATCH, NEXTLINE, NEXTFRAME)]
    grid = f"{frames} frames of {size // patch_size} x {size // patch_size}"
    return len(kinds), (f"minidit.frames.patchify_frames cuts the clip into {patches.shape[1]} patches ({grid}); "
                        f"frame_layout packs them into {len(kinds)} tokens: {counts[0]} patches, {counts[1]} "
                        f"[nextline] and {counts[2]} [nextframe].")


def _rope_axis_pairs() -> tuple[tuple[int, int, int], str]:
    from minidit.rope import rope_angles

    angles = rope_angles(torch.eye(3), head_dim=16)  # (3, 8): row a is the unit position along axis a
    pairs = tuple(int((row != 0).sum()) for row in angles)
    return pairs, (f"minidit.rope.rope_angles with head_dim=16: a unit step along t, h, w turns {pairs[0]}, {pairs[1]} "
                   f"and {pairs[2]} of the {angles.shape[1]} channel pairs.")


def _time_shift_changed_logits() -> tuple[int, str]:
    from minidit.frames import frame_layout
    from minidit.rope import apply_rope, rope_angles

    head_dim = 16
    positions = frame_layout([(3, 2, 3)]).positions  # (1, L, 3)
    length = positions.shape[1]
    g = generator(152)
    q, k = torch.randn(1, 2, length, head_dim, generator=g), torch.randn(1, 2, length, head_dim, generator=g)
    shifted = positions + torch.tensor([5.0, 0.0, 0.0])  # every token 5 frames later

    def logits(query_positions: Tensor, key_positions: Tensor) -> Tensor:
        rotated_q = apply_rope(q, rope_angles(query_positions, head_dim))  # (1, 2, L, Dh)
        return rotated_q @ apply_rope(k, rope_angles(key_positions, head_dim)).transpose(-2, -1)  # (1, 2, L, L)

    before = logits(positions, positions)
    change = (logits(shifted, shifted) - before).abs()
    keys_only = (logits(positions, shifted) - before).abs()
    changed, changed_by_keys = int((change > 1e-4).sum()), int((keys_only > 1e-4).sum())
    return changed, (f"RoPE logits of 2 heads over the {length} tokens of a (3, 2, 3) clip, every position shifted by "
                     f"5 along t: {changed} of {change.numel()} logits change by more than 1e-4 (largest change "
                     f"{change.max():.2g}, float32 rounding); shifting the keys alone changes {changed_by_keys} "
                     f"of them, by up to {keys_only.max():.3g}.")


register_question(Question(
    name="clip_tokens",
    prompt="How many tokens does minidit pack a clip of 8 frames of 24 x 24 pixels into, with patch size 4?",
    compute=_clip_tokens,
))
register_question(Question(
    name="rope_axis_pairs",
    prompt="With head_dim = 16, how many channel pairs rotate with t, with h and with w (a triple)?",
    compute=_rope_axis_pairs,
))
register_question(Question(
    name="time_shift_changed_logits",
    prompt=("Every token of a packed clip moved 5 frames later: how many of the L x L RoPE attention logits change "
            "(by more than 1e-4)?"),
    compute=_time_shift_changed_logits,
))
