"""The shapes world: captioned synthetic scenes with an exact description, the course's image data set.

A scene holds 1 to 3 coloured shapes, each in its own cell of a 3x3 grid on a black background, and the
caption ("a large red circle at the top left and a small blue triangle at the bottom right") describes it
completely, so a generated image can be checked against its prompt exactly (``minidit.data.analyser``).
It stands in for the captioned image sets of DiT (arXiv 2212.09748, Sec. 4: class-conditional) and
SD3 / PixArt-Sigma (arXiv 2403.03206, 2403.04692: text-conditional), at CPU scale.
Used by notebooks/03_dit_from_scratch.ipynb and configs/shapes_dit_tiny.toml.

Rendering is anti-aliased from signed distances: a pixel with centre at distance ``d`` (in pixels, negative
inside) from a shape's edge gets coverage ``clamp(0.5 - d, 0, 1)``, the exact covered fraction for a
straight edge crossing the pixel.

Example:
    >>> scenes = sample_scenes(4, seed=0)
    >>> images = render(scenes, resolution=32)          # (4, 3, 32, 32) in [-1, 1]
    >>> caption(Scene((ObjectSpec("circle", "red", "large", 0, 0), ObjectSpec("cross", "blue", "small", 1, 1))))
    'a large red circle at the top left and a small blue cross at the center'
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from minidit.validation import check_choice

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "white": (1.0, 1.0, 1.0),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZES: dict[str, float] = {"small": 0.55, "large": 0.8}  # width of the shape as a fraction of a cell's width
POSITIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
NUM_CLASSES = len(SHAPES) * len(COLOURS)  # class_label(scene) = shape_index * len(COLOURS) + colour_index
MIN_RESOLUTION, MAX_RESOLUTION = 16, 256
CROSS_ARM_WIDTH = 1 / 3  # width of a cross's arms as a fraction of the cross's width

_COLOUR_NAMES = tuple(COLOURS)


@dataclass(frozen=True)
class ObjectSpec:
    """One object: a ``shape`` of a ``colour`` and a ``size`` in grid cell ``(row, col)``, rows from the top."""

    shape: str
    colour: str
    size: str
    row: int
    col: int

    def __post_init__(self) -> None:
        check_choice("shape", self.shape, SHAPES)
        check_choice("colour", self.colour, COLOURS)
        check_choice("size", self.size, SIZES)
        if self.row not in (0, 1, 2) or self.col not in (0, 1, 2):
            raise ValueError(f"row and col must be 0, 1 or 2 (a 3x3 grid); got row={self.row}, col={self.col}")

    @property
    def position(self) -> str:
        """The position words of the object's cell, e.g. ``"top left"``."""
        return POSITIONS[self.row][self.col]


@dataclass(frozen=True)
class Scene:
    """A scene: objects in distinct grid cells. ``sample_scenes`` lists them in reading order of their cells."""

    objects: tuple[ObjectSpec, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        cells = [(o.row, o.col) for o in self.objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"objects of a scene must be in distinct grid cells; got cells {cells}")


def sample_scenes(n: int, seed: int | Sequence[int], min_objects: int = 1, max_objects: int = 3) -> list[Scene]:
    """Sample ``n`` scenes with uniform shapes, colours, sizes and distinct cells; the same seed gives the same scenes.

    Args:
        n: number of scenes.
        seed: an integer, or a sequence of integers such as ``(seed, step)`` (numpy ``default_rng`` seeding).
        min_objects, max_objects: the number of objects per scene is uniform in ``[min_objects, max_objects]``.
    """
    if not 0 <= min_objects <= max_objects <= 9:
        raise ValueError(f"need 0 <= min_objects <= max_objects <= 9; got {min_objects}, {max_objects}")
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        count = int(rng.integers(min_objects, max_objects + 1))
        cells = np.sort(rng.choice(9, size=count, replace=False))
        shapes = rng.integers(len(SHAPES), size=count)
        colours = rng.integers(len(COLOURS), size=count)
        sizes = rng.integers(len(SIZES), size=count)
        objects = tuple(
            ObjectSpec(SHAPES[s], _COLOUR_NAMES[c], tuple(SIZES)[z], int(cell) // 3, int(cell) % 3)
            for cell, s, c, z in zip(cells, shapes, colours, sizes)
        )
        scenes.append(Scene(objects))
    return scenes


def _signed_distance(shape: str, dx: Tensor, dy: Tensor, half_width: Tensor) -> Tensor:
    """Signed distance in pixels (negative inside) from offsets ``dx, dy`` (K, H, W) to shapes of ``half_width``.

    ``half_width`` is (K, 1, 1): half the shape's width in pixels.

    Polygons use the maximum over their edges' half-plane distances: exact next to each edge, where the
    coverage ramp lives. The triangle points up (image ``y`` grows downwards); its base is the box's bottom.
    """
    ax, ay, r = dx.abs(), dy.abs(), half_width
    if shape == "circle":
        return torch.sqrt(dx**2 + dy**2) - r
    if shape == "square":
        return torch.maximum(ax, ay) - r
    if shape == "diamond":
        return (ax + ay - r) / 2**0.5
    if shape == "triangle":
        slanted = (2 * ax - dy - r) / 5**0.5  # the two sides through the apex (0, -r) and the corners (+-r, r)
        return torch.maximum(dy - r, slanted)
    arm = CROSS_ARM_WIDTH * r  # cross: union (minimum) of a horizontal and a vertical bar
    return torch.minimum(torch.maximum(ax - r, ay - arm), torch.maximum(ax - arm, ay - r))


def render(scenes: Sequence[Scene], resolution: int = 32) -> Tensor:
    """Render scenes anti-aliased on a black background.

    Args:
        scenes: ``N`` scenes.
        resolution: image side ``H = W`` in pixels, from 16 to 256.
    Returns:
        images ``(N, 3, H, W)`` in ``[-1, 1]`` (background ``-1``), float32.
    """
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}]; got {resolution}")
    objects = [(i, o) for i, scene in enumerate(scenes) for o in scene.objects]
    canvas = torch.zeros(len(scenes), 3, resolution, resolution)
    if objects:
        cell = resolution / 3
        image_index = torch.tensor([i for i, _ in objects])
        centre_x = torch.tensor([(o.col + 0.5) * cell for _, o in objects]).view(-1, 1, 1)  # (K, 1, 1)
        centre_y = torch.tensor([(o.row + 0.5) * cell for _, o in objects]).view(-1, 1, 1)
        half_width = torch.tensor([SIZES[o.size] * cell / 2 for _, o in objects]).view(-1, 1, 1)
        pixel_centres = torch.arange(resolution, dtype=torch.float32) + 0.5
        dx = pixel_centres.view(1, 1, -1) - centre_x  # (K, 1, W)
        dy = pixel_centres.view(1, -1, 1) - centre_y  # (K, H, 1)
        dx, dy = torch.broadcast_tensors(dx, dy)  # (K, H, W)
        distance = torch.empty_like(dx)
        for shape in SHAPES:
            chosen = torch.tensor([o.shape == shape for _, o in objects])
            if chosen.any():
                distance[chosen] = _signed_distance(shape, dx[chosen], dy[chosen], half_width[chosen])
        coverage = (0.5 - distance).clamp(0, 1)  # (K, H, W)
        colour = torch.tensor([COLOURS[o.colour] for _, o in objects])  # (K, 3)
        canvas.index_add_(0, image_index, coverage[:, None] * colour[:, :, None, None])  # (N, 3, H, W)
    return canvas.clamp(0, 1) * 2 - 1


def caption(scene: Scene) -> str:
    """The template caption, e.g. ``"a large red circle at the top left and a small blue cross at the center"``."""
    return " and ".join(f"a {o.size} {o.colour} {o.shape} at the {o.position}" for o in scene.objects)


def __getattr__(name: str) -> object:
    """``parse_caption`` lives with the caption grammar (``minidit.data.captions``, which imports this module)."""
    if name == "parse_caption":
        from minidit.data.captions import parse_caption

        return parse_caption
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def class_label(scene: Scene) -> int:
    """Class of a single-object scene: ``shape_index * len(COLOURS) + colour_index``, in ``[0, NUM_CLASSES)``.

    Size and position are not part of the class; they vary freely within it (like pose in ImageNet).
    Raises:
        ValueError: if the scene does not hold exactly one object.
    """
    if len(scene.objects) != 1:
        raise ValueError(f"class labels are defined for single-object scenes; this scene has {len(scene.objects)}")
    (obj,) = scene.objects
    return SHAPES.index(obj.shape) * len(COLOURS) + _COLOUR_NAMES.index(obj.colour)


class ShapesDataset:
    """An endless stream of shapes scenes; batch ``step`` depends only on ``(seed, step)``.

    Args:
        resolution: image side in pixels (16 to 256).
        min_objects, max_objects: objects per scene. Class labels ``"y"`` exist only when ``max_objects == 1``.
        seed: the stream's seed.
    """

    def __init__(self, resolution: int = 32, min_objects: int = 1, max_objects: int = 1, seed: int = 0) -> None:
        if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
            raise ValueError(f"resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}]; got {resolution}")
        self.resolution, self.min_objects, self.max_objects, self.seed = resolution, min_objects, max_objects, seed
        self.num_classes = NUM_CLASSES

    def scenes(self, step: int, batch_size: int) -> list[Scene]:
        """The scenes of batch ``step``."""
        return sample_scenes(batch_size, (self.seed, step), self.min_objects, self.max_objects)

    def get_batch(
        self, step: int, batch_size: int, with_captions: bool = False
    ) -> tuple[Tensor, dict[str, Tensor | list[str]]]:
        """Return batch ``step``: ``images (B, 3, H, W)`` in ``[-1, 1]`` and the conditioning.

        The conditioning holds ``"y"``: class labels ``(B,)`` long (single-object streams only) and, with
        ``with_captions``, ``"captions"``: a list of ``B`` caption strings.
        """
        scenes = self.scenes(step, batch_size)
        conditioning: dict[str, Tensor | list[str]] = {}
        if self.max_objects == 1:
            conditioning["y"] = torch.tensor([class_label(s) for s in scenes], dtype=torch.long)
        if with_captions:
            conditioning["captions"] = [caption(s) for s in scenes]
        return render(scenes, self.resolution), conditioning
