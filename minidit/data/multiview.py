"""Multi-view images: a coloured 3-D object on a turntable, rendered from ``T`` azimuths as the frames of one sample.

Lumina-T2X (arXiv 2405.05945, Sec. 2.2) feeds any modality to one transformer as frames ``[H, W, T, C]``; here the
``T`` frames are views of one object ("a red cube seen from all sides"), so a model must keep the object's colour and
shape the same in every frame and turn it by the caption's step between frames. A small torch rasteriser draws
triangle meshes; ``view_report`` reads every view back by nearest template and scores the views against the
caption. Used by notebooks/09_any_modality.ipynb.

The renderer, as a graphics pipeline in four steps:

1. Meshes: every shape is a convex triangle mesh centred on the origin, ``z`` up, faces wound counter-clockwise
   seen from outside.
2. Camera: orthographic, at elevation ``ELEVATION`` (25 degrees) and azimuth ``a``, on the unit vector
   ``d = (cos e cos a, cos e sin a, sin e)`` looking at the origin; camera coordinates are ``x`` right, ``y`` up,
   ``z = p . d`` towards the camera. The image shows ``x, y`` in ``[-EXTENT, EXTENT]``.
3. Shading: flat Lambert, ``AMBIENT + (1 - AMBIENT) max(0, n . LIGHT)`` per face, with ``LIGHT`` fixed in camera
   coordinates (from the upper left front): turning the object moves its faces through the light, so a view
   tells its azimuth, and a turn by a shape's symmetry period gives the same image.
4. Rasterising: at each of ``SUPERSAMPLE x SUPERSAMPLE`` sample points per pixel, the barycentric coordinates of
   every front-facing triangle (edge functions, affine in the sample's position) tell whether it covers the point;
   the nearest covering face (largest ``z``: a z-buffer) gives the shade, and a pixel averages its samples.

A view of colour ``c`` is ``-1 + 2 c * intensity`` (black background ``-1``): the colour multiplies a grey image,
which is why the reader can factor colours out of its templates. ``SYMMETRY_PERIODS`` lists the turn (degrees)
after which each shape looks the same: a view tells its azimuth only modulo that period. The sphere and the
cylinder are round: their 30-degree period comes from the facets of the mesh, not from the object, so the azimuth
metric skips them.

Example:
    >>> specs = sample_views(2, seed=0)
    >>> views = render_views(specs, resolution=24, frames=4)       # (2, 24, 24, 4, 3) in [-1, 1]
    >>> caption(ViewSet("cube", "red", span=90))
    'a red cube seen over a quarter turn'
    >>> view_report(views, [caption(s) for s in specs])["view_consistency"]
    1.0
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor

from minidit.data.shapes import COLOURS
from minidit.validation import check_choice

if TYPE_CHECKING:
    from minidit.text.tokenizer import Tokenizer

SHAPES = ("cube", "pyramid", "prism", "wedge", "sphere", "cylinder")
SYMMETRY_PERIODS: dict[str, int] = {  # degrees of turn after which a shape's views repeat exactly
    "cube": 90,  # a square prism
    "pyramid": 90,  # square base
    "prism": 120,  # equilateral triangle extruded upwards
    "wedge": 360,  # a ramp: no turn but a full one maps it onto itself
    "sphere": 30,  # 12 facets around (the mesh, not the object)
    "cylinder": 30,
}
ROUND_SHAPES = ("sphere", "cylinder")  # azimuth-symmetric objects: the azimuth metric skips them
SPANS: dict[int, str] = {360: "from all sides", 180: "over a half turn", 90: "over a quarter turn"}  # degrees
ELEVATION = 25.0  # degrees of the camera above the turntable
EXTENT = 1.15  # half the width of the image in world units; every view of every shape fits inside (tested)
AMBIENT = 0.3  # shade of a face turned away from the light
LIGHT = torch.tensor([-1.0, 2.0, 2.0]) / 3.0  # unit vector to the light in camera coordinates: upper left front
SUPERSAMPLE = 2  # anti-aliasing: SUPERSAMPLE x SUPERSAMPLE sample points per pixel
ROUND_FACETS = 12  # facets around the sphere and the cylinder
MIN_RESOLUTION, MAX_RESOLUTION = 16, 128
TEMPLATE_STEP = 1  # degrees between the templates of the reader

_COLOUR_NAMES = tuple(COLOURS)
VOCABULARY: tuple[str, ...] = tuple(sorted(
    {"a", "seen", *_COLOUR_NAMES, *SHAPES} | {word for phrase in SPANS.values() for word in phrase.split()}
))


@dataclass(frozen=True)
class ViewSet:
    """One multi-view sample: a ``shape`` of a ``colour`` seen from ``T`` azimuths evenly spaced over ``span``.

    View ``t`` (of ``T``, set when rendering) is seen from azimuth ``azimuth + t * span / T`` degrees. The caption
    states the shape, the colour and the span; the start ``azimuth`` is free (it is not in the caption).
    """

    shape: str
    colour: str
    span: int = 360
    azimuth: float = 0.0

    def __post_init__(self) -> None:
        check_choice("shape", self.shape, SHAPES)
        check_choice("colour", self.colour, COLOURS)
        if self.span not in SPANS:
            raise ValueError(f"span must be one of {tuple(SPANS)} degrees; got {self.span!r}")
        if not math.isfinite(self.azimuth):
            raise ValueError(f"azimuth must be a finite number of degrees; got {self.azimuth!r}")


class ViewReading(NamedTuple):
    """What the reader sees in one view: shape, colour and azimuth in ``[0, SYMMETRY_PERIODS[shape])`` degrees."""

    shape: str
    colour: str
    azimuth: float


# ---------------------------------------------------------------------------------------------------- meshes


def _outward(vertices: Tensor, faces: list[tuple[int, int, int]]) -> Tensor:
    """Faces ``(F, 3)`` wound counter-clockwise seen from outside a convex mesh (its vertices' mean is inside)."""
    faces_tensor = torch.tensor(faces)  # (F, 3)
    corners = vertices[faces_tensor]  # (F, 3 corners, 3 coordinates)
    normal = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    inward = (normal * (corners.mean(dim=1) - vertices.mean(dim=0))).sum(dim=1) < 0
    faces_tensor[inward] = faces_tensor[inward].flip(1)
    return faces_tensor


def _extrusion(polygon: Sequence[tuple[float, float]], bottom: float, top: float) -> tuple[Tensor, Tensor]:
    """A convex polygon in the ``xy`` plane extruded from ``z = bottom`` to ``z = top``: vertices and faces."""
    n = len(polygon)
    vertices = torch.tensor([(x, y, z) for z in (bottom, top) for x, y in polygon])  # bottom ring, then top ring
    caps = [(0, i, i + 1) for i in range(1, n - 1)] + [(n, n + i, n + i + 1) for i in range(1, n - 1)]
    sides = [face for i in range(n) for face in ((i, (i + 1) % n, n + i), ((i + 1) % n, n + (i + 1) % n, n + i))]
    return vertices, _outward(vertices, caps + sides)


def _polygon(corners: int, radius: float, start: float = 0.0) -> list[tuple[float, float]]:
    """A regular polygon of ``corners`` around the origin, the first corner at angle ``start`` (radians)."""
    angles = [start + 2 * math.pi * i / corners for i in range(corners)]
    return [(radius * math.cos(a), radius * math.sin(a)) for a in angles]


def _sphere(radius: float) -> tuple[Tensor, Tensor]:
    """A UV sphere: ``ROUND_FACETS`` meridians and ``ROUND_FACETS // 2`` bands from pole to pole."""
    rings = ROUND_FACETS // 2
    vertices = [(0.0, 0.0, radius), (0.0, 0.0, -radius)]  # the poles, then ring r (from the top) at index 2 + ...
    for r in range(1, rings):
        polar = math.pi * r / rings
        ring = _polygon(ROUND_FACETS, radius * math.sin(polar))
        vertices += [(x, y, radius * math.cos(polar)) for x, y in ring]

    def at(r: int, i: int) -> int:  # the vertex of ring r (1 to rings - 1) and meridian i
        return 2 + (r - 1) * ROUND_FACETS + i % ROUND_FACETS

    faces = [(0, at(1, i), at(1, i + 1)) for i in range(ROUND_FACETS)]
    faces += [(1, at(rings - 1, i), at(rings - 1, i + 1)) for i in range(ROUND_FACETS)]
    for r in range(1, rings - 1):
        for i in range(ROUND_FACETS):
            faces += [(at(r, i), at(r + 1, i), at(r, i + 1)), (at(r, i + 1), at(r + 1, i), at(r + 1, i + 1))]
    vertex_tensor = torch.tensor(vertices)
    return vertex_tensor, _outward(vertex_tensor, faces)


@lru_cache(maxsize=None)
def mesh(shape: str) -> tuple[Tensor, Tensor]:
    """The triangle mesh of ``shape``: vertices ``(V, 3)`` (``z`` up) and faces ``(F, 3)``, counter-clockwise outside.

    Raises:
        ValueError: for a shape not in ``SHAPES``.
    """
    check_choice("shape", shape, SHAPES)
    if shape == "cube":
        return _extrusion(_polygon(4, 0.55 * math.sqrt(2), math.pi / 4), -0.55, 0.55)  # faces head-on at azimuth 0
    if shape == "prism":
        return _extrusion(_polygon(3, 0.8), -0.55, 0.55)
    if shape == "cylinder":
        return _extrusion(_polygon(ROUND_FACETS, 0.6), -0.6, 0.6)
    if shape == "wedge":  # a right triangle in the xz plane (upright back at x = -0.7), extruded along y
        vertices, faces = _extrusion([(-0.7, -0.55), (0.7, -0.55), (-0.7, 0.55)], -0.5, 0.5)
        return vertices[:, [0, 2, 1]].contiguous(), faces.flip(1)  # swapping y and z mirrors: rewind the faces
    if shape == "pyramid":
        base = _polygon(4, 0.7 * math.sqrt(2), math.pi / 4)
        vertices = torch.tensor([(x, y, -0.5) for x, y in base] + [(0.0, 0.0, 0.7)])
        return vertices, _outward(vertices, [(0, 1, 2), (0, 2, 3)] + [(i, (i + 1) % 4, 4) for i in range(4)])
    return _sphere(0.75)


# -------------------------------------------------------------------------------------------------- rendering


def camera_coordinates(vertices: Tensor, azimuths: Tensor, elevation: float = ELEVATION) -> Tensor:
    """Vertices ``(V, 3)`` seen by cameras at ``K`` azimuths ``(K,)`` and one elevation (degrees): ``(K, V, 3)``.

    The camera at azimuth ``a`` sits on ``d = (cos e cos a, cos e sin a, sin e)``; its coordinates are ``x`` right
    (``(-sin a, cos a, 0)``), ``y`` up (``d x right``) and ``z = p . d``, towards the camera.
    """
    a, e = torch.deg2rad(azimuths.double()), math.radians(elevation)
    towards = torch.stack([math.cos(e) * a.cos(), math.cos(e) * a.sin(), torch.full_like(a, math.sin(e))], dim=-1)
    right = torch.stack([-a.sin(), a.cos(), torch.zeros_like(a)], dim=-1)  # (K, 3)
    up = torch.linalg.cross(towards, right)
    basis = torch.stack([right, up, towards], dim=-1).float()  # (K, 3 world, 3 camera)
    return vertices @ basis  # (K, V, 3)


def lambert_shade(camera_vertices: Tensor, faces: Tensor) -> Tensor:
    """Flat Lambert shade ``AMBIENT + (1 - AMBIENT) max(0, n . LIGHT)`` of each face: ``(K, V, 3) -> (K, F)``."""
    corners = camera_vertices[:, faces]  # (K, F, 3 corners, 3)
    normal = torch.linalg.cross(corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 0, :])
    normal = normal / normal.norm(dim=-1, keepdim=True)
    return AMBIENT + (1 - AMBIENT) * (normal @ LIGHT).clamp(min=0)


@lru_cache(maxsize=8)
def sample_points(resolution: int, supersample: int = SUPERSAMPLE) -> Tensor:
    """Camera ``(x, y)`` of the ``S x S`` sample points of every pixel, ``(H * S, W * S, 2)``, rows from the top."""
    side = resolution * supersample
    centres = ((torch.arange(side) + 0.5) / side * 2 - 1) * EXTENT
    y, x = torch.meshgrid(-centres, centres, indexing="ij")
    return torch.stack([x, y], dim=-1)


def rasterise(
    camera_vertices: Tensor, faces: Tensor, face_values: Tensor, resolution: int, supersample: int = SUPERSAMPLE
) -> Tensor:
    """Orthographic z-buffer rendering of ``K`` views of a mesh: each sample point shows its nearest face's value.

    Args:
        camera_vertices: ``(K, V, 3)`` from ``camera_coordinates``; the image shows ``x, y`` in ``[-EXTENT, EXTENT]``.
        faces: ``(F, 3)`` vertex indices, counter-clockwise seen from the front; faces seen from behind are culled.
        face_values: ``(K, F)``, at least 0: what each face shows (its shade; ones give the coverage).
        resolution: image side ``H = W``.
        supersample: ``S``, sample points per pixel side.
    Returns:
        ``(K, H, W)``: per pixel, the mean over its ``S * S`` sample points of the nearest covering face's value,
        0 where no face covers it (on a shared edge the larger value).
    """
    corners = camera_vertices[:, faces]  # (K, F, 3 corners, 3)
    a, b, c = corners[..., 0, :2], corners[..., 1, :2], corners[..., 2, :2]  # (K, F, 2) each
    area = (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])
    view, face = torch.nonzero(area > 0, as_tuple=True)  # counter-clockwise on screen: faces looking at the camera
    corners, area, values = corners[view, face], area[view, face], face_values[view, face]  # (M, 3, 3), (M,), (M,)
    # Barycentric coordinate of corner i at point p: the edge function of the opposite edge (j, k) over twice the
    # area, cross(v_j - p, v_k - p) / area = (cross(v_j, v_k) + p_x (v_j,y - v_k,y) + p_y (v_k,x - v_j,x)) / area.
    vj, vk = corners[:, [1, 2, 0], :2], corners[:, [2, 0, 1], :2]  # (M, 3, 2): the edge opposite each corner
    edges = torch.stack([
        vj[..., 0] * vk[..., 1] - vj[..., 1] * vk[..., 0], vj[..., 1] - vk[..., 1], vk[..., 0] - vj[..., 0],
    ], dim=-1) / area[:, None, None]  # (M, 3, 3): coefficients of (1, x, y) in each barycentric coordinate
    points = sample_points(resolution, supersample).reshape(-1, 2)  # (P, 2)
    homogeneous = torch.cat([torch.ones(len(points), 1), points], dim=1).T  # (3, P): rows 1, x, y
    inside = (edges @ homogeneous).amin(dim=1) >= 0  # (M, P): every barycentric coordinate >= 0
    depth_plane = (edges * corners[:, :, 2:]).sum(dim=1)  # (M, 3): z = sum_i barycentric_i z_i is affine too
    depth = torch.where(inside, depth_plane @ homogeneous, -math.inf)  # (M, P); exact for orthographic views
    index = view[:, None].expand_as(depth)
    nearest = torch.full((len(camera_vertices), len(points)), -math.inf).scatter_reduce(0, index, depth, "amax")
    shown = torch.where(inside & (depth == nearest[view]), values[:, None], 0.0)  # (M, P): where a face is nearest
    image = torch.zeros_like(nearest).scatter_reduce(0, index, shown, "amax")  # (K, P)
    return image.reshape(-1, resolution, supersample, resolution, supersample).mean(dim=(2, 4))  # (K, H, W)


def _check_resolution(resolution: int) -> None:
    """Raise a ``ValueError`` unless ``MIN_RESOLUTION <= resolution <= MAX_RESOLUTION``."""
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}]; got {resolution}")


def render_intensity(
    shape: str, azimuths: Sequence[float], resolution: int = 24, elevation: float = ELEVATION,
    supersample: int = SUPERSAMPLE,
) -> Tensor:
    """Grey views of ``shape`` from ``K`` azimuths (degrees): ``(K, H, W)`` shades in ``[0, 1]``, 0 where empty.

    The views are rasterised in chunks of about ``2 ** 20`` (face, sample point) pairs, to bound the memory.
    """
    _check_resolution(resolution)
    vertices, faces = mesh(shape)
    azimuths = torch.as_tensor(azimuths, dtype=torch.float64).reshape(-1)
    chunk = max(1, 2**20 // (len(faces) * (resolution * supersample) ** 2))
    views = [torch.zeros(0, resolution, resolution)]
    for part in azimuths.split(chunk):
        camera = camera_coordinates(vertices, part, elevation)  # (chunk, V, 3)
        views.append(rasterise(camera, faces, lambert_shade(camera, faces), resolution, supersample))
    return torch.cat(views)


def view_azimuths(spec: ViewSet, frames: int) -> list[float]:
    """The ``T = frames`` azimuths (degrees) of ``spec``'s views: ``azimuth + t * span / T``."""
    return [spec.azimuth + spec.span * t / frames for t in range(frames)]


def render_views(specs: Sequence[ViewSet], resolution: int = 24, frames: int = 4) -> Tensor:
    """Render each view set as ``T = frames`` views on a black background, anti-aliased.

    Args:
        specs: ``N`` view sets.
        resolution: image side ``H = W`` in pixels, from 16 to 128.
        frames: ``T``, views per set, evenly spaced over the set's span.
    Returns:
        views ``(N, H, W, T, 3)`` in ``[-1, 1]`` (background ``-1``), float32: the frames layout of Lumina-T2X.
    """
    _check_resolution(resolution)
    if frames < 1:
        raise ValueError(f"frames must be at least 1 (views per object); got {frames}")
    grey = torch.zeros(len(specs), frames, resolution, resolution)  # (N, T, H, W)
    for shape in SHAPES:  # all views of one shape in one batch
        rows = [i for i, spec in enumerate(specs) if spec.shape == shape]
        azimuths = [a for i in rows for a in view_azimuths(specs[i], frames)]
        grey[rows] = render_intensity(shape, azimuths, resolution).view(len(rows), frames, resolution, resolution)
    colour = torch.tensor([COLOURS[s.colour] for s in specs]).view(-1, 1, 1, 1, 3)  # (N, 1, 1, 1, 3)
    views = grey[..., None] * colour  # (N, T, H, W, 3)
    return views.permute(0, 2, 3, 1, 4).contiguous() * 2 - 1  # (N, H, W, T, 3)


# ---------------------------------------------------------------------------------------------------- captions

_SPAN_OF = {phrase: span for span, phrase in SPANS.items()}
_CAPTION = re.compile(rf"a ({'|'.join(_COLOUR_NAMES)}) ({'|'.join(SHAPES)}) seen ({'|'.join(_SPAN_OF)})")


def caption(spec: ViewSet) -> str:
    """The caption of a view set, e.g. ``"a red cube seen from all sides"``: ``"a" COLOUR SHAPE "seen" SPAN``."""
    return f"a {spec.colour} {spec.shape} seen {SPANS[spec.span]}"


def parse_view_caption(text: str) -> ViewSet:
    """Read a caption of ``caption`` back (case and spacing are free); the start azimuth comes back as 0.

    Raises:
        ValueError: for text outside the grammar ``"a" COLOUR SHAPE "seen" SPAN``.
    """
    match = _CAPTION.fullmatch(" ".join(text.lower().split()))
    if match is None:
        raise ValueError(f"cannot parse view caption {text!r}: write 'a <colour> <shape> seen <span>' with colours "
                         f"{_COLOUR_NAMES}, shapes {SHAPES} and spans {tuple(_SPAN_OF)}")
    colour, shape, phrase = match.groups()
    return ViewSet(shape, colour, _SPAN_OF[phrase])


def sample_views(n: int, seed: int | Sequence[int], spans: Sequence[int] = tuple(SPANS)) -> list[ViewSet]:
    """Sample ``n`` view sets: uniform shape, colour and span (from ``spans``), start azimuth uniform in [0, 360).

    Args:
        n: number of view sets.
        seed: an integer, or a sequence of integers such as ``(seed, step)`` (numpy ``default_rng`` seeding).
        spans: the spans to draw from, degrees (keys of ``SPANS``).
    """
    bad = [s for s in spans if s not in SPANS]
    if bad or not spans:
        raise ValueError(f"spans must be a non-empty selection of {tuple(SPANS)} degrees; got {tuple(spans)}")
    rng = np.random.default_rng(seed)
    return [
        ViewSet(SHAPES[rng.integers(len(SHAPES))], _COLOUR_NAMES[rng.integers(len(COLOURS))],
                int(spans[rng.integers(len(spans))]), round(float(rng.uniform(0, 360)), 1))
        for _ in range(n)
    ]


# ----------------------------------------------------------------------------------------------------- metrics


@lru_cache(maxsize=4)
def _templates(resolution: int) -> tuple[Tensor, tuple[tuple[str, float], ...]]:
    """Grey renders of every shape at azimuths ``0, TEMPLATE_STEP, ...`` up to its period: ``(G, H * W)``, labels."""
    grey, labels = [], []
    for shape in SHAPES:
        azimuths = range(0, SYMMETRY_PERIODS[shape], TEMPLATE_STEP)
        grey.append(render_intensity(shape, azimuths, resolution).flatten(1))
        labels += [(shape, float(a)) for a in azimuths]
    return torch.cat(grey), tuple(labels)


def read_views(views: Tensor) -> list[list[ViewReading]]:
    """Read shape, colour and azimuth of every view by the nearest template (the least squared error).

    The templates are the renders of every shape, colour and azimuth in steps of ``TEMPLATE_STEP`` degrees over the
    shape's period (cached per resolution). A view of colour ``c`` is ``c * g`` for a grey render ``g``, so
    ``|x - c g|^2 = |x|^2 - 2 sum_k c_k <x_k, g> + |c|^2 |g|^2`` needs one correlation per grey render and channel.
    Under Gaussian pixel noise the nearest template is the most likely reading (a matched filter).

    Args:
        views: ``(N, H, W, T, 3)`` in ``[-1, 1]``, ``H = W`` from 16 to 128.
    Returns:
        ``N`` lists of ``T`` readings; a reading's azimuth is in ``[0, SYMMETRY_PERIODS[shape])`` degrees.
    """
    if views.ndim != 5 or views.shape[-1] != 3 or views.shape[1] != views.shape[2]:
        raise ValueError(f"views must have shape (N, H, W, T, 3) with H = W; got {tuple(views.shape)}")
    n, resolution, _, frames, _ = views.shape
    _check_resolution(resolution)
    grey, labels = _templates(resolution)  # (G, H * W)
    palette = torch.tensor(list(COLOURS.values()))  # (C, 3)
    x = ((views.float() + 1) / 2).permute(0, 3, 1, 2, 4).reshape(n * frames, resolution**2, 3)  # (N * T, H * W, 3)
    correlation = torch.einsum("mpk,gp->mgk", x, grey)  # (N * T, G, 3)
    error = -2 * correlation @ palette.T + grey.square().sum(1)[:, None] * palette.square().sum(1)  # (N * T, G, C)
    best = error.flatten(1).argmin(dim=1).tolist()  # |x|^2 is the same for every template: left out
    readings = [ViewReading(labels[b // len(palette)][0], _COLOUR_NAMES[b % len(palette)],
                            labels[b // len(palette)][1]) for b in best]
    return [readings[i * frames:(i + 1) * frames] for i in range(n)]


def _wrap(degrees: float, period: float) -> float:
    """``degrees`` modulo ``period``, in ``[-period / 2, period / 2)``."""
    return (degrees + period / 2) % period - period / 2


def view_report(views: Tensor, captions: Sequence[str]) -> dict[str, float]:
    """Score multi-view samples against their captions.

    Args:
        views: ``(N, H, W, T, 3)`` in ``[-1, 1]``.
        captions: ``N`` captions of the grammar of ``caption``.
    Returns:
        ``view_consistency``: the fraction of samples whose every view reads as the caption's shape and colour;
        ``shape_accuracy`` and ``colour_accuracy``: fractions of the ``N * T`` views;
        ``azimuth_error``: mean absolute error (degrees) of the turn between consecutive views against the caption's
        ``span / T``, modulo the shape's symmetry period, over the pairs of views that both read as the caption's
        shape (round shapes skipped; needs no start azimuth); NaN without such pairs;
        ``azimuth_pairs``: how many pairs ``azimuth_error`` averages.
    """
    specs = [parse_view_caption(text) for text in captions]
    if len(specs) != len(views):
        raise ValueError(f"need one caption per sample: got {len(specs)} captions for {len(views)} samples")
    readings = read_views(views)
    frames = views.shape[3]
    shape_hits = [[r.shape == s.shape for r in row] for row, s in zip(readings, specs)]
    colour_hits = [[r.colour == s.colour for r in row] for row, s in zip(readings, specs)]
    errors = [
        abs(_wrap(after.azimuth - before.azimuth - spec.span / frames, SYMMETRY_PERIODS[spec.shape]))
        for row, spec in zip(readings, specs) if spec.shape not in ROUND_SHAPES
        for before, after in zip(row, row[1:]) if before.shape == after.shape == spec.shape
    ]
    return {
        "view_consistency": float(np.mean([all(s) and all(c) for s, c in zip(shape_hits, colour_hits)])),
        "shape_accuracy": float(np.mean(shape_hits)),
        "colour_accuracy": float(np.mean(colour_hits)),
        "azimuth_error": float(np.mean(errors)) if errors else math.nan,
        "azimuth_pairs": float(len(errors)),
    }


# ----------------------------------------------------------------------------------------------------- dataset


class MultiViewDataset:
    """An endless stream of multi-view samples ``(B, H, W, T, 3)``; batch ``step`` depends only on ``(seed, step)``.

    Args:
        resolution: image side in pixels (16 to 128).
        frames: ``T``, views per sample.
        seed: the stream's seed.
        tokenizer: a ``minidit.text.tokenizer.Tokenizer`` (e.g. ``Tokenizer(VOCABULARY)``); with one, ``get_batch``
            returns the captions' token ids.
        text_length: tokens per caption, ``[BOS]`` and ``[EOS]`` included.
    """

    def __init__(self, resolution: int = 24, frames: int = 4, seed: int = 0, tokenizer: Tokenizer | None = None,
                 text_length: int = 16) -> None:
        _check_resolution(resolution)
        if frames < 1:
            raise ValueError(f"frames must be at least 1 (views per object); got {frames}")
        if tokenizer is not None:
            longest = max(tokenizer.count(caption(ViewSet(shape, colour, span)))
                          for shape in SHAPES for colour in COLOURS for span in SPANS)
            if longest > text_length:
                raise ValueError(f"the longest caption has {longest} tokens but text_length is {text_length}; "
                                 f"use text_length >= {longest}")
        self.resolution, self.frames, self.seed = resolution, frames, seed
        self.tokenizer, self.text_length = tokenizer, text_length

    def specs(self, step: int, batch_size: int) -> list[ViewSet]:
        """The view sets of batch ``step``."""
        return sample_views(batch_size, (self.seed, step))

    def captions(self, step: int, batch_size: int) -> list[str]:
        """The captions of batch ``step``."""
        return [caption(s) for s in self.specs(step, batch_size)]

    def get_batch(self, step: int, batch_size: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Batch ``step``: views ``(B, H, W, T, 3)`` in ``[-1, 1]``, and ``{"text_ids": (B, L) long, "text_mask":
        (B, L) bool}`` with a tokenizer (``L = text_length``), ``{}`` without."""
        specs = self.specs(step, batch_size)
        conditioning: dict[str, Tensor] = {}
        if self.tokenizer is not None:
            ids, mask = self.tokenizer.encode([caption(s) for s in specs], self.text_length)
            conditioning = {"text_ids": ids, "text_mask": mask}
        return render_views(specs, self.resolution, self.frames), conditioning
