"""Causal-mask position bias (LI-DiT): is a pair mentioned later in a prompt followed worse? And the instruction.

LI-DiT (Ma et al., arXiv 2406.11831, Sec. 3.1; ``../shared/notes/papers.md`` Sec. 6) finds that a decoder-only LM
used as a text encoder follows prompts worse than an encoder, and that under the causal mask the attribute-object
pairs mentioned **later** in a prompt are followed worse: it plots the alignment of each adjective-noun pair against
its relative position in the prompt, flat for T5, falling for the LM. This module measures the same on the shapes
world, exactly:

- ``bias_scenes`` / ``bias_captions``: scenes of ``k`` objects with distinct colours, shapes and cells, described
  with the objects in random order (varied phrasing, ``minidit.data.captions``), so prompt order says nothing about
  where an object is;
- ``alignment_by_position``: from the analyser's ``object_reports`` of generated images, per (``k``, position in
  the prompt) the per-object hits (colour, shape and size of the object read in the cell the prompt names), with
  ``relative_position = order / (k - 1)``;
- ``text_gain_by_position``: the same without sampling, from the denoiser's error: the share of the velocity error
  in each named object's cell that the prompt removes, ``1 - err(prompt) / err(null caption)``, averaged over fixed
  times and noises (0 when the model ignores what the prompt says about that object);
- ``probe_by_position``: a model-free probe of the encoder itself, a ridge-regression linear probe that reads the
  colour and the shape of the ``j``-th named object from the caption's pooled (masked-mean) features;
- ``encode_prompts``: features of a chosen layer; with an **instruction** ("describe the colours, ...") the encoder
  reads ``instruction + prompt`` and the instruction's tokens are **cropped after encoding**, so the DiT sees only
  the prompt's tokens (as HunyuanVideo crops its template, ``hyvideo/text_encoder/__init__.py``). The paper finds the
  instruction helps only an instruction-tuned LLM.

Used by notebooks/08_llm_text_encoders.ipynb and exercise 14 (the position-bias measurement).

Example:
    >>> scenes = bias_scenes(64, objects=3, seed=0)
    >>> captions = bias_captions(scenes, seed=0)        # "at the top, a big red disc and a small blue box at ..."
    >>> hits = alignment_by_position(object_reports(samples, captions))   # {(3, 0): (64,), (3, 1): ..., (3, 2): ...}
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from minidit.data.captions import describe, parse_caption_ordered
from minidit.data.shapes import COLOURS, SHAPES, SIZES, ObjectSpec, Scene
from minidit.interpolants import get_interpolant
from minidit.text.conditioning import masked_mean

INSTRUCTION = "describe the colours, shapes, sizes, counts and positions:"
PAIR_COUNTS = (2, 3, 4)  # objects per benchmark prompt
PAIR_ATTRIBUTES = ("colour", "shape", "size")  # scored per object in its named cell
PROBED = {"colour": tuple(COLOURS), "shape": SHAPES}  # what the linear probe reads, and its classes


def bias_scenes(n: int, objects: int, seed: int | Sequence[int]) -> list[Scene]:
    """``n`` scenes of exactly ``objects`` objects, distinct in colour, shape and cell, sizes at random.

    Distinct colours and shapes make every binding error visible: a colour in the wrong cell is another object's.
    """
    if not 1 <= objects <= len(SHAPES):
        raise ValueError(f"objects must be in [1, {len(SHAPES)}] (one distinct shape each); got {objects}")
    rng = np.random.default_rng(seed)
    colours, sizes = tuple(COLOURS), tuple(SIZES)
    scenes = []
    for _ in range(n):
        cells = rng.choice(9, size=objects, replace=False)
        shapes = rng.choice(len(SHAPES), objects, replace=False)
        chosen = zip(cells, shapes, rng.choice(len(colours), objects, replace=False), rng.integers(len(sizes), size=objects))
        scenes.append(Scene(tuple(ObjectSpec(SHAPES[s], colours[c], sizes[z], int(cell) // 3, int(cell) % 3)
                                  for cell, s, c, z in chosen)))
    return scenes


def bias_captions(scenes: Sequence[Scene], seed: int | Sequence[int]) -> list[str]:
    """Varied captions of ``scenes`` that name the objects in random order (``describe`` with an rng of ``seed``)."""
    rng = np.random.default_rng(seed)
    return [describe(scene, rng) for scene in scenes]


def instruction_crop(tokenize, instruction: str, prompts: Sequence[str]) -> tuple[Tensor, Tensor, int]:
    """Token ids and mask ``(N, L)`` of ``instruction + " " + prompt`` for each prompt, and the crop ``P``.

    ``P`` is the number of leading tokens that belong to the instruction (its special start token included): the
    longest common prefix of the instruction's own ids and every row's, which is the same for every row.
    Raises:
        ValueError: if a row does not start with the instruction's tokens (a tokenizer that merges across the
            boundary: end the instruction with a separator such as ":") or has no token left after the crop.
    """
    alone, alone_mask = tokenize([instruction])
    alone = alone[0, alone_mask[0]]  # (P',): the instruction's ids, with its closing token if the tokenizer adds one
    ids, mask = tokenize([f"{instruction} {prompt}" for prompt in prompts])
    same = (ids[:, : len(alone)] == alone[: ids.shape[1]]).all(dim=0)  # (min(P', L),)
    crop = int(same.long().cumprod(0).sum())
    if crop < len(alone) - 1:
        raise ValueError(f"the tokenizer does not keep the instruction's {len(alone)} tokens at the start of every "
                         f"prompt (only {crop} match); end the instruction with a separator such as ':'")
    if not bool(mask[:, crop:].any(dim=1).all()):
        raise ValueError("a prompt has no token left after the instruction; give a non-empty prompt and a text length "
                         "that holds the instruction and the prompt")
    return ids, mask, crop


def encode_prompts(encoder: nn.Module, prompts: Sequence[str], layer: int = -1,
                   instruction: str | None = None) -> tuple[Tensor, Tensor]:
    """Features ``(N, L, D)`` of ``prompts`` at encoder ``layer`` and their mask ``(N, L)``, cut to the longest prompt.

    With ``instruction``, the encoder reads ``instruction + " " + prompt`` and the instruction's tokens are dropped
    from the features afterwards: what remains are exactly the prompt's tokens (its words and the closing token),
    computed with the instruction in context. ``encoder`` is a ``minidit.text.TextEncoder`` or ``HFTextEncoder``.
    """
    if instruction is None:
        ids, mask = encoder.tokenize(list(prompts))
        crop = 0
    else:
        ids, mask, crop = instruction_crop(encoder.tokenize, instruction, prompts)
    length = int(mask.any(dim=0).nonzero().max()) + 1  # up to the last real token of any row
    ids, mask = ids[:, :length], mask[:, :length]
    with torch.no_grad():
        features = encoder(ids, mask, layer=layer)  # (N, L, D)
    return features[:, crop:], mask[:, crop:]


def alignment_by_position(reports: Sequence[dict],
                          attributes: Sequence[str] = PAIR_ATTRIBUTES) -> dict[tuple[int, int], Tensor]:
    """Per ``(k, j)``: the hits ``(M,)`` of the ``j``-th object named in prompts of ``k`` objects, one per prompt.

    A hit is the mean over ``attributes`` of the object read in the cell the prompt names (``object_reports``
    records; a missing object misses every attribute). Prompts of the same ``k`` come in the same order at each
    ``j``, so positions of one ``k`` can be compared pairwise.
    """
    table: dict[tuple[int, int], list[float]] = {}
    for record in reports:
        score = sum(float(record[a]) for a in attributes) / len(attributes)
        table.setdefault((record["objects"], record["order"]), []).append(score)
    return {key: torch.tensor(values) for key, values in sorted(table.items())}


@torch.no_grad()
def cell_velocity_errors(model: nn.Module, x0: Tensor, conditioning: dict[str, Tensor], t_grid: Sequence[float],
                         draws: int = 2, seed: int = 0, force_drop: bool = False) -> Tensor:
    """Mean squared velocity error of ``model`` in each cell of the 3x3 grid: ``(N, 9)``, cells row by row.

    Averaged over the times ``t_grid``, ``draws`` noises per time (from a generator seeded with ``seed``, the same
    for every model) and the pixels and channels of the cell, on the linear path ``x_t = (1 - t) x0 + t eps`` with
    target ``eps - x0``; ``force_drop`` replaces every caption by the null caption. The model runs in eval mode
    and gets its mode back.
    """
    n, _, height, width = x0.shape
    if height % 3 or width % 3:
        raise ValueError(f"images of {height}x{width} pixels do not split into 3x3 cells; use a side divisible by 3")
    path, generator = get_interpolant("linear"), torch.Generator().manual_seed(seed)
    drop = torch.full((n,), force_drop, dtype=torch.bool)
    total = torch.zeros(n, 9)
    was_training = model.training
    model.eval()
    for t in t_grid:
        times = torch.full((n,), float(t))
        for _ in range(draws):
            noise = torch.randn(x0.shape, generator=generator)
            x_t = path.interpolate(x0, noise, times)
            error = (model(x_t, times, **conditioning, force_drop=drop) - path.velocity_target(x0, noise, times)) ** 2
            cells = error.reshape(n, -1, 3, height // 3, 3, width // 3).mean(dim=(1, 3, 5))  # (N, 3, 3)
            total += cells.flatten(1)
    model.train(was_training)
    return total / (len(t_grid) * draws)  # (N, 9)


def text_gain_by_position(model: nn.Module, x0: Tensor, captions: Sequence[str], conditioning: dict[str, Tensor],
                          t_grid: Sequence[float] = (0.3, 0.5, 0.7), draws: int = 2,
                          seed: int = 0) -> dict[tuple[int, int], Tensor]:
    """Per ``(k, j)``: ``1 - err(prompt) / err(null caption)`` in the cell of the ``j``-th object named (``(M,)``).

    ``x0`` (N, 3, H, W) are the scenes of ``captions``; ``conditioning`` the model's text inputs for them. The errors
    are ``cell_velocity_errors`` with the prompt and with the null caption, same times and noises; the layout of
    the result is ``alignment_by_position``'s.
    """
    with_prompt = cell_velocity_errors(model, x0, conditioning, t_grid, draws, seed)
    without = cell_velocity_errors(model, x0, conditioning, t_grid, draws, seed, force_drop=True)
    gain = 1 - with_prompt / without  # (N, 9)
    table: dict[tuple[int, int], list[float]] = {}
    for index, caption in enumerate(captions):
        objects = parse_caption_ordered(caption)
        for order, o in enumerate(objects):
            table.setdefault((len(objects), order), []).append(float(gain[index, o.row * 3 + o.col]))
    return {key: torch.tensor(values) for key, values in sorted(table.items())}


def relative_position(objects: int, order: int) -> float:
    """``order / (objects - 1)``: 0 for the first object named, 1 for the last (0 for a single object)."""
    return order / (objects - 1) if objects > 1 else 0.0


def first_minus_last(hits: dict[tuple[int, int], Tensor]) -> Tensor:
    """Per prompt, the hits of its first object minus those of its last, over every ``k`` in ``hits``: ``(M,)``.

    Positive values mean the later pair is followed worse (LI-DiT's causal-mask bias).
    """
    counts = sorted({k for k, _ in hits if k > 1})
    return torch.cat([hits[k, 0] - hits[k, k - 1] for k in counts])


def pooled_features(encoder: nn.Module, prompts: Sequence[str], layer: int = -1, instruction: str | None = None,
                    batch: int = 512) -> Tensor:
    """Masked-mean pooled features ``(N, D)`` of ``prompts`` at ``layer`` (see ``encode_prompts``)."""
    chunks = [masked_mean(*encode_prompts(encoder, prompts[i : i + batch], layer, instruction))
              for i in range(0, len(prompts), batch)]
    return torch.cat(chunks)


def ridge_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, classes: int, ridge: float = 1e-2) -> Tensor:
    """Predicted classes ``(M,)`` of ``test_x`` (M, D) by a ridge-regression linear probe fit on ``train_x`` (N, D).

    Features are standardised with the training statistics, a bias column is added and the one-hot targets of
    ``train_y`` (N,) are fit in closed form, ``W = (X^T X + ridge N I)^-1 X^T Y``, in float64.
    """
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)

    def design(x: Tensor) -> Tensor:
        x = ((x - mean) / std).double()
        return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)  # (N, D + 1)

    x = design(train_x)
    targets = torch.nn.functional.one_hot(train_y, classes).double()  # (N, C)
    weights = torch.linalg.solve(x.T @ x + ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype), x.T @ targets)
    return (design(test_x) @ weights).argmax(dim=1)


def probe_by_position(encoder: nn.Module, objects: int, n_train: int, n_test: int, seed: int = 0, layer: int = -1,
                      instruction: str | None = None) -> dict[tuple[str, int], Tensor]:
    """How well a linear probe reads the ``j``-th named object's colour and shape from pooled caption features.

    Fits one probe per (attribute, ``j``) on ``n_train`` benchmark captions of ``objects`` objects and scores it on
    ``n_test`` others (different seeds). Returns ``{(attribute, j): hits (n_test,)}`` with attributes ``PROBED``;
    chance is one over the number of classes.
    """
    def data(split: int, n: int) -> tuple[Tensor, list[list[ObjectSpec]]]:
        captions = bias_captions(bias_scenes(n, objects, (seed, split)), (seed, split, 1))
        return pooled_features(encoder, captions, layer, instruction), [parse_caption_ordered(c) for c in captions]

    (train_x, train_objects), (test_x, test_objects) = data(0, n_train), data(1, n_test)
    hits = {}
    for attribute, classes in PROBED.items():
        for j in range(objects):
            train_y = torch.tensor([classes.index(getattr(o[j], attribute)) for o in train_objects])
            test_y = torch.tensor([classes.index(getattr(o[j], attribute)) for o in test_objects])
            predicted = ridge_probe(train_x, train_y, test_x, len(classes))
            hits[attribute, j] = (predicted == test_y).float()
    return hits
