"""Shapes in motion: captioned clips of one shape moving, bouncing, growing, shrinking or changing colour.

A clip is one object of the shapes world (``minidit.data.shapes``) rendered frame by frame into a video
``[H, W, T, C]``, and its caption ("a small red circle moving right quickly") describes its motion completely, so
``track_objects`` can read the object back from every frame and ``motion_report`` can score a generated video's
direction, speed, colour and shape against its prompt exactly. It is the video modality of Lumina-T2X's "any
modality as frames" (arXiv 2405.05945, Sec. 2.2: every modality is latent frames ``[H, W, T, C]``), at CPU scale.
Used by notebooks/09_any_modality.ipynb.

The motions, with speeds ``SPEEDS`` in pixels per frame (the same at every resolution):

- ``"moving left"`` / ``"right"`` / ``"up"`` / ``"down"``: a constant velocity; the start is drawn so that the
  object stays in view for all ``T`` frames.
- ``"bouncing left and right"`` / ``"up and down"``: a constant speed along the axis, reversed at the border of the
  range of centres (it reaches the border exactly at a frame ``1 <= k <= T - 2``, so it bounces once).
- ``"growing"`` / ``"shrinking"``: in place, the half width goes linearly from the small size to the large one (or
  back) over the ``T`` frames; the caption names no size.
- ``"changing colour"``: in place, the colour switches at the middle: frames ``t < T // 2`` have the first colour,
  the others the second ("a small circle changing from red to blue"). A switch, not a blend, keeps every frame in
  the palette, so the colour read from each frame is exact.

Centres lie on whole pixels (pixel ``i`` spans ``[i, i + 1]``) and speeds are whole pixels per frame, so every frame
is one hypothesis of the tracker's matched filter and clean renders are read exactly.

Example:
    >>> clips = sample_clips(4, seed=0)
    >>> videos = render_clips(clips, resolution=24, frames=8)    # (4, 24, 24, 8, 3) in [-1, 1]
    >>> track_objects(videos) == [trajectory(clip, 24, 8) for clip in clips]
    True
    >>> motion_report(videos, [caption(clip) for clip in clips])["motion_accuracy"]
    1.0
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import product
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from minidit.data.shapes import COLOURS, SHAPES, SIZES, render_objects
from minidit.text.tokenizer import Tokenizer
from minidit.validation import check_choice

DIRECTIONS: dict[str, tuple[int, int]] = {  # (x, y) unit steps; image y grows downwards
    "moving left": (-1, 0),
    "moving right": (1, 0),
    "moving up": (0, -1),
    "moving down": (0, 1),
}
BOUNCE_AXES: dict[str, tuple[int, int]] = {"bouncing left and right": (1, 0), "bouncing up and down": (0, 1)}
RESIZING = ("growing", "shrinking")
COLOUR_CHANGE = "changing colour"
MOTIONS = (*DIRECTIONS, *BOUNCE_AXES, *RESIZING, COLOUR_CHANGE)
STILL = "still"  # what ``read_motion`` says of a track that shows none of the MOTIONS; no caption says it
SPEEDS: dict[str, int] = {"slowly": 1, "quickly": 2}  # pixels per frame
MIN_FRAMES = 3  # a bounce needs a frame before and after its turn
VOCABULARY: tuple[str, ...] = tuple(sorted(
    {"a", "from", "to", *SIZES, *COLOURS, *SHAPES, *SPEEDS}
    | {word for motion in (*DIRECTIONS, *BOUNCE_AXES, *RESIZING) for word in motion.split()}
    | {"changing"}
))

_COLOUR_NAMES = tuple(COLOURS)
_PALETTE = torch.tensor(list(COLOURS.values()))  # (colours, 3)
_SPEEDED = (*DIRECTIONS, *BOUNCE_AXES)


@dataclass(frozen=True)
class ClipDescription:
    """What a caption says of a clip: ``shape``, ``colour`` (the first one), ``size``, ``motion``, ``speed``.

    ``size`` is ``"small"`` or ``"large"``, and ``None`` for growing and shrinking clips (which go from one to the
    other); ``speed`` is a key of ``SPEEDS`` for moving and bouncing clips and ``None`` otherwise; ``end_colour`` is
    the colour after the middle of a ``"changing colour"`` clip (different from ``colour``) and ``None`` otherwise.
    """

    shape: str
    colour: str
    size: str | None
    motion: str
    speed: str | None = None
    end_colour: str | None = None

    def __post_init__(self) -> None:
        check_choice("shape", self.shape, SHAPES)
        check_choice("colour", self.colour, COLOURS)
        check_choice("motion", self.motion, MOTIONS)
        if self.motion not in RESIZING:
            check_choice("size", str(self.size), SIZES)
        elif self.size is not None:
            raise ValueError(f"a {self.motion} clip goes from small to large or back; pass size=None, "
                             f"not {self.size!r}")
        if self.motion in _SPEEDED:
            check_choice("speed", str(self.speed), SPEEDS)
        elif self.speed is not None:
            raise ValueError(f"a {self.motion} clip stays in place; pass speed=None, not {self.speed!r}")
        if self.motion == COLOUR_CHANGE:
            check_choice("end_colour", str(self.end_colour), COLOURS)
            if self.end_colour == self.colour:
                raise ValueError(f"a colour change needs end_colour different from colour; both are {self.colour!r}")
        elif self.end_colour is not None:
            raise ValueError(f"only {COLOUR_CHANGE!r} clips have an end_colour; got {self.end_colour!r} for a "
                             f"{self.motion} clip, pass end_colour=None")


@dataclass(frozen=True)
class Clip:
    """A clip: its ``description`` and where it starts, the centre ``(start_x, start_y)`` in whole pixels, moving at
    ``(velocity_x, velocity_y)`` pixels per frame (the description's direction and speed; a bouncing clip's first
    heading; zero for clips that stay in place)."""

    description: ClipDescription
    start_x: int
    start_y: int
    velocity_x: int = 0
    velocity_y: int = 0

    def __post_init__(self) -> None:
        d = self.description
        speed = SPEEDS[d.speed] if d.speed is not None else 0
        velocity = (self.velocity_x, self.velocity_y)
        ux, uy = DIRECTIONS.get(d.motion) or BOUNCE_AXES.get(d.motion) or (0, 0)
        allowed = [(speed * ux, speed * uy)]
        if d.motion in BOUNCE_AXES:  # either heading first
            allowed.append((-speed * ux, -speed * uy))
        if velocity not in allowed:
            raise ValueError(f"velocity {velocity} does not fit a {d.motion} clip at speed {d.speed}; give one of "
                             f"{allowed}")


@dataclass(frozen=True)
class Track:
    """One object frame by frame: centre ``x``, ``y`` and ``half_width`` in pixels, ``colour`` and ``shape`` names."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    half_width: tuple[float, ...]
    colour: tuple[str, ...]
    shape: tuple[str, ...]


def _half_widths(resolution: int, frames: int) -> tuple[float, ...]:
    """The ``T`` half widths of a growing clip, small to large: the shapes world's sizes of a cell of side H / 3."""
    small, large = (SIZES[size] * resolution / 6 for size in ("small", "large"))
    return (*(small + (large - small) * t / (frames - 1) for t in range(frames - 1)), large)


@lru_cache(maxsize=8)
def _templates(resolution: int, frames: int) -> tuple[Tensor, tuple[tuple[str, float], ...], int]:
    """The tracker's templates: coverage of every shape at every half width of ``_half_widths``, centred.

    Returns:
        templates ``(M, 1, 2 h, 2 h)``; the ``M`` hypotheses ``(shape, half_width)``; and ``h``, the radius in whole
        pixels that holds every template's covered pixels around its centre (a centre at least ``h`` from the
        border keeps the whole object in view).
    """
    hypotheses = tuple(product(SHAPES, _half_widths(resolution, frames)))
    count, centre = len(hypotheses), resolution // 2
    images = render_objects(count, resolution, range(count), [centre] * count, [centre] * count,
                            [r for _, r in hypotheses], [s for s, _ in hypotheses], ["white"] * count)
    coverage = (images[:, 0] + 1) / 2  # (M, H, W)
    rows = coverage.amax(dim=(0, 2)).nonzero().flatten()
    columns = coverage.amax(dim=(0, 1)).nonzero().flatten()
    h = int(max(centre - rows[0], rows[-1] + 1 - centre, centre - columns[0], columns[-1] + 1 - centre))
    window = coverage[:, centre - h : centre + h, centre - h : centre + h]  # (M, 2h, 2h)
    return window[:, None].contiguous(), hypotheses, h


def centre_range(resolution: int = 24, frames: int = 8) -> tuple[int, int]:
    """The smallest and largest whole-pixel centre that keeps every object in view, ``(h, H - h)``.

    Raises:
        ValueError: for a resolution outside 16..256, fewer than ``MIN_FRAMES`` frames, or more frames than a quick
            object can cross the range in.
    """
    if frames < MIN_FRAMES:
        raise ValueError(f"frames must be at least {MIN_FRAMES} (a bounce turns between two frames); got {frames}")
    _, _, h = _templates(resolution, frames)
    low, high = h, resolution - h
    most = (high - low) // max(SPEEDS.values()) + 1
    if frames > most:
        raise ValueError(f"a quick object leaves a {resolution}x{resolution} frame after {most} frames; got "
                         f"frames={frames}, use frames <= {most} or a larger resolution")
    return low, high


def sample_clips(n: int, seed: int | Sequence[int], resolution: int = 24, frames: int = 8) -> list[Clip]:
    """Sample ``n`` clips: uniform motion, shape, colour, size, speed and start; the same seed gives the same clips.

    Args:
        n: number of clips.
        seed: an integer, or a sequence of integers such as ``(seed, step)`` (numpy ``default_rng`` seeding).
        resolution, frames: the clips' frame side and length; starts are drawn to keep the object in view.
    """
    if n < 0:
        raise ValueError(f"n must be a number of clips, 0 or more; got {n}")
    low, high = centre_range(resolution, frames)
    rng = np.random.default_rng(seed)

    def pick(options: Sequence[Any]) -> Any:
        return options[int(rng.integers(len(options)))]

    clips = []
    for _ in range(n):
        motion, shape, colour = pick(MOTIONS), pick(SHAPES), pick(_COLOUR_NAMES)
        size = None if motion in RESIZING else pick(tuple(SIZES))
        speed = pick(tuple(SPEEDS)) if motion in _SPEEDED else None
        end_colour = pick([c for c in _COLOUR_NAMES if c != colour]) if motion == COLOUR_CHANGE else None
        description = ClipDescription(shape, colour, size, motion, speed, end_colour)
        start = [int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))]
        velocity = [0, 0]
        step = SPEEDS[speed] if speed is not None else 0
        if motion in DIRECTIONS:
            axis = 0 if DIRECTIONS[motion][0] else 1
            sign = DIRECTIONS[motion][axis]
            travel = step * (frames - 1)
            start[axis] = int(rng.integers(low, high - travel + 1)) + (travel if sign < 0 else 0)
            velocity[axis] = sign * step
        elif motion in BOUNCE_AXES:
            axis, sign = BOUNCE_AXES[motion].index(1), pick((-1, 1))
            turn = int(rng.integers(1, frames - 1))  # the frame at the border
            start[axis] = (high if sign > 0 else low) - sign * step * turn
            velocity[axis] = sign * step
        clips.append(Clip(description, start[0], start[1], velocity[0], velocity[1]))
    return clips


def _frame_colours(description: ClipDescription, frames: int) -> tuple[str, ...]:
    """The colour of each frame: the end colour from frame ``T // 2`` on for a colour change."""
    if description.motion != COLOUR_CHANGE:
        return (description.colour,) * frames
    return (description.colour,) * (frames // 2) + (str(description.end_colour),) * (frames - frames // 2)


def _frame_half_widths(description: ClipDescription, resolution: int, frames: int) -> tuple[float, ...]:
    """The half width of each frame in pixels."""
    widths = _half_widths(resolution, frames)
    if description.motion in RESIZING:
        return widths if description.motion == "growing" else widths[::-1]
    return (widths[0] if description.size == "small" else widths[-1],) * frames


def _positions(start: int, velocity: int, low: int, high: int, frames: int, bouncing: bool) -> tuple[float, ...]:
    """One coordinate of the centre in each frame; a bouncing one is reflected at ``low`` and ``high``."""
    path = [start + velocity * t for t in range(frames)]
    if not bouncing and not (low <= path[0] <= high and low <= path[-1] <= high):
        raise ValueError(f"the clip leaves the range of centres [{low}, {high}] within {frames} frames; draw clips "
                         "with sample_clips at the same resolution and frames")
    if bouncing:
        ahead = high - start if velocity > 0 else start - low  # distance to the border it heads to
        if not low <= start <= high or ahead % abs(velocity) or not 1 <= ahead // abs(velocity) <= frames - 2:
            raise ValueError(f"a bouncing clip must start in [{low}, {high}] and reach the border exactly at a frame "
                             f"1..{frames - 2}; start {start} at velocity {velocity} does not, use sample_clips")
        period = 2 * (high - low)
        path = [low + min((p - low) % period, period - (p - low) % period) for p in path]
    return tuple(float(p) for p in path)


def trajectory(clip: Clip, resolution: int = 24, frames: int = 8) -> Track:
    """The object of ``clip`` in each of ``frames`` frames at ``resolution``: what ``track_objects`` reads exactly.

    Raises:
        ValueError: if the clip does not stay in view (see ``centre_range``) for these frames and resolution.
    """
    low, high = centre_range(resolution, frames)
    d = clip.description
    bouncing = d.motion in BOUNCE_AXES
    x = _positions(clip.start_x, clip.velocity_x, low, high, frames, bouncing and clip.velocity_x != 0)
    y = _positions(clip.start_y, clip.velocity_y, low, high, frames, bouncing and clip.velocity_y != 0)
    half_width = _frame_half_widths(d, resolution, frames)
    return Track(x, y, half_width, _frame_colours(d, frames), (d.shape,) * frames)


def render_clips(clips: Sequence[Clip], resolution: int = 24, frames: int = 8) -> Tensor:
    """Render clips frame by frame, anti-aliased on a black background.

    Args:
        clips: ``N`` clips (``sample_clips`` with the same resolution and frames).
        resolution: frame side ``H = W`` in pixels.
        frames: ``T``, frames per clip.
    Returns:
        videos ``(N, H, W, T, 3)`` in ``[-1, 1]`` (background ``-1``), float32; frame ``t`` of clip ``i`` as an
        image is ``videos[i, :, :, t].permute(2, 0, 1)``.
    """
    tracks = [trajectory(clip, resolution, frames) for clip in clips]
    count = len(clips) * frames
    images = render_objects(
        count,
        resolution,
        image_index=range(count),
        centre_x=[x for track in tracks for x in track.x],
        centre_y=[y for track in tracks for y in track.y],
        half_width=[r for track in tracks for r in track.half_width],
        shapes=[s for track in tracks for s in track.shape],
        colours=[c for track in tracks for c in track.colour],
    )  # (N T, 3, H, W)
    images = images.view(len(clips), frames, 3, resolution, resolution)  # (N, T, 3, H, W)
    return images.permute(0, 3, 4, 1, 2).contiguous()  # (N, H, W, T, 3)


def caption(clip: Clip | ClipDescription) -> str:
    """The caption: ``"a small red circle moving right quickly"``, ``"a red circle growing"`` or
    ``"a small circle changing from red to blue"``."""
    d = clip.description if isinstance(clip, Clip) else clip
    if d.motion == COLOUR_CHANGE:
        return f"a {d.size} {d.shape} changing from {d.colour} to {d.end_colour}"
    if d.motion in RESIZING:
        return f"a {d.colour} {d.shape} {d.motion}"
    return f"a {d.size} {d.colour} {d.shape} {d.motion} {d.speed}"


def _any(words: Sequence[str]) -> str:
    """A regular expression alternative of ``words``."""
    return "|".join(re.escape(word) for word in words)


_CAPTION = re.compile(
    rf"a (?:(?P<size>{_any(tuple(SIZES))}) )?(?:(?P<colour>{_any(_COLOUR_NAMES)}) )?(?P<shape>{_any(SHAPES)}) "
    rf"(?:(?P<motion>{_any(_SPEEDED)}) (?P<speed>{_any(tuple(SPEEDS))})|(?P<resizing>{_any(RESIZING)})"
    rf"|changing from (?P<first>{_any(_COLOUR_NAMES)}) to (?P<end>{_any(_COLOUR_NAMES)}))"
)


def parse_clip_caption(text: str) -> ClipDescription:
    """Read a caption of ``caption`` back (case and spacing are free): ``parse_clip_caption(caption(c)) ==
    c.description``.

    Raises:
        ValueError: for text outside the grammar, or a combination a clip cannot have (a size on a growing clip).
    """
    words = " ".join(text.lower().split())
    match = _CAPTION.fullmatch(words)
    if match is None:
        raise ValueError(f"caption {text!r} is not in the clip grammar; write e.g. 'a small red circle moving right "
                         "quickly', 'a red circle growing' or 'a small circle changing from red to blue'")
    g = match.groupdict()
    if g["first"] is not None:
        if g["colour"] is not None:
            raise ValueError(f"caption {text!r} names a colour before the shape of a colour change; write "
                             f"'a {g['size'] or 'small'} {g['shape']} changing from {g['first']} to {g['end']}'")
        return ClipDescription(g["shape"], g["first"], g["size"], COLOUR_CHANGE, None, g["end"])
    if g["colour"] is None:
        raise ValueError(f"caption {text!r} names no colour; put one before the shape, e.g. 'a red {g['shape']}'")
    return ClipDescription(g["shape"], g["colour"], g["size"], g["motion"] or g["resizing"], g["speed"])


def track_objects(videos: Tensor, chunk: int = 32) -> list[Track]:
    """Read the object of every frame with a matched filter, like ``minidit.data.analyser`` for scenes.

    Every frame is compared with every hypothesis (a palette colour x a shape x a half width of the growing size
    steps, centred on a whole pixel at least ``h`` from the border) and the one with the smallest squared error
    wins: the maximum-likelihood reading under Gaussian pixel noise. The error of colour ``c`` and template ``k`` at
    a centre is ``|x|^2 - 2 <x, c k> + |c|^2 |k|^2``, so one correlation of each RGB channel with each template
    (``conv2d``) serves all colours. Clean renders are exact: every frame of a clip is one of the hypotheses.

    Args:
        videos: ``(N, H, W, T, 3)`` in ``[-1, 1]``, ``H = W`` (values outside are allowed, e.g. noise).
        chunk: frames correlated at once (small chunks stay in the CPU cache: faster).
    Returns:
        ``N`` tracks, one entry per frame.
    """
    if videos.ndim != 5 or videos.shape[-1] != 3 or videos.shape[1] != videos.shape[2]:
        raise ValueError(f"videos must have shape (N, H, H, T, 3); got {tuple(videos.shape)}")
    n, resolution, _, frames, _ = videos.shape
    templates, hypotheses, h = _templates(resolution, frames)
    energy = _PALETTE.square().sum(1)[:, None] * templates.square().sum((1, 2, 3))[None, :]  # (colours, M)
    images = (videos.float().cpu() + 1) / 2
    images = images.permute(0, 3, 4, 1, 2).reshape(n * frames * 3, 1, resolution, resolution)  # (N T 3, 1, H, W)
    centres = resolution - 2 * h + 1  # P: whole-pixel centres h .. H - h per axis
    best = [torch.zeros(0, dtype=torch.long)]
    for part in images.split(3 * chunk):
        correlation = F.conv2d(part, templates)  # (B 3, M, P, P); output (i, j): the template centred at (j + h, i + h)
        correlation = correlation.view(-1, 3, len(hypotheses), centres, centres)  # (B, 3, M, P, P)
        colour_correlation = torch.einsum("bcmij,kc->bkmij", correlation, _PALETTE)  # (B, colours, M, P, P)
        score = 2 * colour_correlation - energy[:, :, None, None]  # error below |x|^2, the same for all hypotheses
        best.append(score.flatten(1).argmax(1))
    shape = (len(_COLOUR_NAMES), len(hypotheses), centres, centres)
    colour, hypothesis, row, column = np.unravel_index(torch.cat(best).numpy(), shape)
    tracks = []
    for i in range(n):
        frame = slice(i * frames, (i + 1) * frames)
        tracks.append(Track(
            x=tuple(float(c + h) for c in column[frame]),
            y=tuple(float(r + h) for r in row[frame]),
            half_width=tuple(hypotheses[m][1] for m in hypothesis[frame]),
            colour=tuple(_COLOUR_NAMES[c] for c in colour[frame]),
            shape=tuple(hypotheses[m][0] for m in hypothesis[frame]),
        ))
    return tracks


def read_motion(track: Track, resolution: int) -> tuple[str, float]:
    """The motion a track shows, one of ``MOTIONS`` or ``STILL``, and its speed in pixels per frame.

    The speed is the mean distance between the centres of consecutive frames. The motion, in this order: a
    bounce if the steps along an axis change sign (the axis with the longer path); moving in the direction of the
    least-squares velocity if it is at least 0.5 pixels per frame; growing or shrinking if the least-squares half
    width changes by at least half the small-to-large gap over the clip; a colour change if the most frequent
    colours of the frames before and from ``T // 2`` differ; still otherwise.
    """
    centres = np.array([track.x, track.y]).T  # (T, 2)
    steps = np.diff(centres, axis=0)  # (T - 1, 2)
    speed = float(np.linalg.norm(steps, axis=1).mean())
    reverses = [(steps[:, a] > 0).any() and (steps[:, a] < 0).any() for a in (0, 1)]
    if any(reverses):
        axis = int(np.abs(steps).sum(0).argmax()) if all(reverses) else reverses.index(True)
        return tuple(BOUNCE_AXES)[axis], speed
    frames = len(track.x)
    times = np.arange(frames) - (frames - 1) / 2
    velocity = times @ (centres - centres.mean(0)) / (times @ times)  # least-squares slope, (2,)
    if np.linalg.norm(velocity) >= 0.5:
        return max(DIRECTIONS, key=lambda motion: velocity @ np.array(DIRECTIONS[motion])), speed
    widths = _half_widths(resolution, frames)
    growth = times @ np.array(track.half_width) / (times @ times) * (frames - 1)
    if abs(growth) >= (widths[-1] - widths[0]) / 2:
        return ("growing" if growth > 0 else "shrinking"), speed
    halves = track.colour[: frames // 2], track.colour[frames // 2 :]
    before, after = (Counter(half).most_common(1)[0][0] for half in halves)  # the most frequent colours
    if before != after:
        return COLOUR_CHANGE, speed
    return STILL, speed


def _speed_class(speed: float) -> str | None:
    """The speed word nearest to ``speed`` pixels per frame, or ``None`` (in place) when 0 is nearer."""
    return min([None, *SPEEDS], key=lambda word: abs(speed - (SPEEDS[word] if word else 0)))


MOTION_METRICS = ("direction_correct", "speed_error", "colour_consistency", "shape_consistency", "size_consistency",
                  "motion_accuracy")


def motion_report(videos: Tensor, captions: Sequence[str]) -> dict[str, Any]:
    """Score videos against their captions from the tracks of ``track_objects`` and ``read_motion``.

    Args:
        videos: ``(N, H, W, T, 3)`` in ``[-1, 1]``.
        captions: ``N`` captions of the grammar (``caption``).
    Returns:
        ``"clips"``: one dict per clip with the ``"motion_read"``, the ``"speed_read"`` (pixels per frame) and:
        ``"direction_correct"`` (the motion read is the caption's: for moving clips the direction of the fitted
        displacement, for bouncing clips the axis, for growing and shrinking clips the sign of the size change);
        ``"speed_error"`` (``|speed read - captioned speed|``, 0 for clips in place); ``"colour_consistency"``,
        ``"shape_consistency"`` (fraction of frames whose colour / shape is the caption's, the colour switching at
        frame ``T // 2`` for a colour change); ``"size_consistency"`` (fraction of frames whose half width is within a
        quarter of the small-to-large gap of the caption's); ``"motion_accuracy"`` (direction right and the speed
        read nearest to the captioned speed class). Under each of ``MOTION_METRICS`` the mean over the clips.
    """
    if not captions or len(captions) != videos.shape[0]:
        raise ValueError(f"need one caption per video, at least one; got {len(captions)} captions for "
                         f"{videos.shape[0]} videos")
    tracks = track_objects(videos)
    resolution, frames = videos.shape[1], videos.shape[3]
    widths = _half_widths(resolution, frames)
    tolerance = (widths[-1] - widths[0]) / 4
    clips = []
    for text, track in zip(captions, tracks):
        want = parse_clip_caption(text)
        motion, speed = read_motion(track, resolution)
        direction_correct = motion == want.motion
        expected_widths = _frame_half_widths(want, resolution, frames)
        clips.append({
            "caption": text, "motion_read": motion, "speed_read": speed,
            "direction_correct": float(direction_correct),
            "speed_error": abs(speed - (SPEEDS[want.speed] if want.speed else 0)),
            "colour_consistency": float(np.mean([a == b for a, b in zip(track.colour, _frame_colours(want, frames))])),
            "shape_consistency": float(np.mean([s == want.shape for s in track.shape])),
            "size_consistency": float(np.mean([abs(a - b) <= tolerance
                                               for a, b in zip(track.half_width, expected_widths)])),
            "motion_accuracy": float(direction_correct and _speed_class(speed) == want.speed),
        })
    return {"clips": clips, **{key: float(np.mean([clip[key] for clip in clips])) for key in MOTION_METRICS}}


def _all_descriptions() -> list[ClipDescription]:
    """Every description a caption can give."""
    descriptions = []
    for shape, colour, motion in product(SHAPES, _COLOUR_NAMES, MOTIONS):
        sizes = [None] if motion in RESIZING else list(SIZES)
        speeds = list(SPEEDS) if motion in _SPEEDED else [None]
        ends = [c for c in _COLOUR_NAMES if c != colour] if motion == COLOUR_CHANGE else [None]
        descriptions += [ClipDescription(shape, colour, *rest) for rest in product(sizes, [motion], speeds, ends)]
    return descriptions


class VideoDataset:
    """An endless stream of captioned clips; batch ``step`` depends only on ``(seed, step)``.

    Args:
        resolution: frame side in pixels.
        frames: ``T``, frames per clip (at most what a quick object can cross, see ``centre_range``).
        seed: the stream's seed.
        tokenizer: a ``minidit.text.tokenizer.Tokenizer`` (e.g. ``Tokenizer(VOCABULARY)``); with one, ``get_batch``
            returns the captions' token ids.
        text_length: tokens per caption, ``[BOS]`` and ``[EOS]`` included.
    """

    def __init__(self, resolution: int = 24, frames: int = 8, seed: int = 0, tokenizer: Tokenizer | None = None,
                 text_length: int = 24) -> None:
        centre_range(resolution, frames)
        if tokenizer is not None:
            longest = max(tokenizer.count(caption(d)) for d in _all_descriptions())
            if text_length < longest:
                raise ValueError(f"text_length {text_length} is shorter than the longest caption ({longest} tokens "
                                 f"with [BOS] and [EOS]); use text_length >= {longest}")
        self.resolution, self.frames, self.seed = resolution, frames, seed
        self.tokenizer, self.text_length = tokenizer, text_length

    def clips(self, step: int, batch_size: int) -> list[Clip]:
        """The clips of batch ``step``."""
        return sample_clips(batch_size, (self.seed, step), self.resolution, self.frames)

    def captions(self, step: int, batch_size: int) -> list[str]:
        """The captions of batch ``step``."""
        return [caption(clip) for clip in self.clips(step, batch_size)]

    def get_batch(self, step: int, batch_size: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Return batch ``step``: videos ``(B, H, W, T, 3)`` in ``[-1, 1]`` and the conditioning: ``{}`` without a
        tokenizer, else ``"text_ids"`` ``(B, text_length)`` long and ``"text_mask"`` ``(B, text_length)`` bool."""
        clips = self.clips(step, batch_size)
        videos = render_clips(clips, self.resolution, self.frames)
        if self.tokenizer is None:
            return videos, {}
        ids, mask = self.tokenizer.encode([caption(clip) for clip in clips], self.text_length)
        return videos, {"text_ids": ids, "text_mask": mask}
