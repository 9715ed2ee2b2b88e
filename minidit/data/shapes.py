"""The shapes world: captioned synthetic scenes with an exact description, the course's image data set.

A scene holds 1 to 3 coloured shapes, each in its own cell of a 3x3 grid on a black background, and the
caption ("a large red circle at the top left and a small blue triangle at the bottom right") describes it
completely, so a generated image can be checked against its prompt exactly (``minidit.data.analyser``).
It stands in for the captioned image sets of DiT (arXiv 2212.09748, Sec. 4: class-conditional) and
SD3 / PixArt-Sigma (arXiv 2403.03206, 2403.04692: text-conditional), at CPU scale.
Used by notebooks/03_dit_from_scratch.ipynb and configs/shapes_dit_tiny.toml; with varied captions
(``minidit.data.captions``), count scenes and held-out (shape, colour) pairs, by the text-to-image notebooks
05_text_conditioning.ipynb, 06_mmdit.ipynb and 07_kv_compression.ipynb and configs/shapes_t2i_*.toml;
``render_objects`` (shapes at any centre and size) draws the clips of ``minidit.data.video`` (notebook 09).

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

from collections.abc import Collection, Sequence
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


def _pairs_problem(name: str, pairs: Collection[tuple[str, str]]) -> str | None:
    """A message if ``pairs`` holds something other than ``(shape, colour)`` pairs of the shapes world."""
    bad = [p for p in pairs if not (isinstance(p, tuple) and len(p) == 2 and p[0] in SHAPES and p[1] in COLOURS)]
    if not bad:
        return None
    return f"{name} must hold (shape, colour) pairs with shapes {SHAPES} and colours {_COLOUR_NAMES}; got {bad}"


def sample_scenes(
    n: int,
    seed: int | Sequence[int],
    min_objects: int = 1,
    max_objects: int = 3,
    count_prob: float = 0.0,
    excluded_pairs: Collection[tuple[str, str]] = (),
    required_pairs: Collection[tuple[str, str]] = (),
) -> list[Scene]:
    """Sample ``n`` scenes with uniform shapes, colours, sizes and distinct cells; the same seed gives the same scenes.

    Args:
        n: number of scenes.
        seed: an integer, or a sequence of integers such as ``(seed, step)`` (numpy ``default_rng`` seeding).
        min_objects, max_objects: the number of objects per scene is uniform in ``[min_objects, max_objects]``.
        count_prob: probability that a scene is a count scene: all its objects share one shape, colour and size
            (varied captions then count them: "two small red circles at ..."). ``0`` draws nothing extra, so the
            scenes are those of earlier versions.
        excluded_pairs: ``(shape, colour)`` pairs no object may have; a scene with one is drawn again.
        required_pairs: if given, every scene holds at least one object with one of these pairs (drawn again until
            it does): the held-out split of ``minidit.data.captions.HELDOUT_PAIRS``.
    """
    if not 0 <= min_objects <= max_objects <= 9:
        raise ValueError(f"need 0 <= min_objects <= max_objects <= 9; got {min_objects}, {max_objects}")
    if not 0.0 <= count_prob <= 1.0:
        raise ValueError(f"count_prob must be a probability in [0, 1]; got {count_prob}")
    excluded, required = set(excluded_pairs), set(required_pairs)
    problem = _pairs_problem("excluded_pairs", excluded) or _pairs_problem("required_pairs", required)
    if problem:
        raise ValueError(problem)
    if required and (not required - excluded or max_objects == 0):
        raise ValueError("required_pairs leaves no possible scene; give a pair that is not excluded and "
                         "max_objects >= 1")
    rng = np.random.default_rng(seed)
    scenes: list[Scene] = []
    while len(scenes) < n:
        identical = count_prob > 0 and rng.random() < count_prob
        count = int(rng.integers(min_objects, max_objects + 1))
        cells = np.sort(rng.choice(9, size=count, replace=False))
        if identical:  # a count scene: one shape, colour and size for all its objects
            shapes, colours, sizes = ([int(rng.integers(k))] * count for k in (len(SHAPES), len(COLOURS), len(SIZES)))
        else:
            shapes = rng.integers(len(SHAPES), size=count)
            colours = rng.integers(len(COLOURS), size=count)
            sizes = rng.integers(len(SIZES), size=count)
        objects = tuple(
            ObjectSpec(SHAPES[s], _COLOUR_NAMES[c], tuple(SIZES)[z], int(cell) // 3, int(cell) % 3)
            for cell, s, c, z in zip(cells, shapes, colours, sizes)
        )
        pairs = {(o.shape, o.colour) for o in objects}
        if pairs & excluded or (required and not pairs & required):
            continue
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


def render_objects(
    num_images: int,
    resolution: int,
    image_index: Sequence[int],
    centre_x: Sequence[float],
    centre_y: Sequence[float],
    half_width: Sequence[float],
    shapes: Sequence[str],
    colours: Sequence[str],
) -> Tensor:
    """Render ``K`` objects at any centres and sizes onto ``num_images`` black images, anti-aliased.

    Pixel ``i`` spans ``[i, i + 1]``, so its centre is at ``i + 0.5``; overlapping objects add up and are clipped.

    Args:
        num_images: ``N``, the number of images.
        resolution: image side ``H = W`` in pixels, from 16 to 256.
        image_index: the image of each of the ``K`` objects, in ``[0, N)``.
        centre_x, centre_y: each object's centre in pixels from the left and from the top edge.
        half_width: half of each object's width in pixels.
        shapes, colours: each object's name in ``SHAPES`` and in ``COLOURS``.
    Returns:
        images ``(N, 3, H, W)`` in ``[-1, 1]`` (background ``-1``), float32.
    """
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}]; got {resolution}")
    columns = (image_index, centre_x, centre_y, half_width, shapes, colours)
    if len({len(column) for column in columns}) != 1:
        raise ValueError(f"give one value per object in every argument; got lengths {[len(c) for c in columns]}")
    canvas = torch.zeros(num_images, 3, resolution, resolution)
    if len(shapes):
        pixel_centres = torch.arange(resolution, dtype=torch.float32) + 0.5
        dx = pixel_centres.view(1, 1, -1) - torch.tensor(centre_x).view(-1, 1, 1)  # (K, 1, W)
        dy = pixel_centres.view(1, -1, 1) - torch.tensor(centre_y).view(-1, 1, 1)  # (K, H, 1)
        dx, dy = torch.broadcast_tensors(dx, dy)  # (K, H, W)
        half_width = torch.tensor(half_width).view(-1, 1, 1)  # (K, 1, 1)
        distance = torch.empty_like(dx)
        for shape in SHAPES:
            chosen = torch.tensor([s == shape for s in shapes])
            if chosen.any():
                distance[chosen] = _signed_distance(shape, dx[chosen], dy[chosen], half_width[chosen])
        coverage = (0.5 - distance).clamp(0, 1)  # (K, H, W)
        colour = torch.tensor([COLOURS[c] for c in colours])  # (K, 3)
        canvas.index_add_(0, torch.tensor(image_index), coverage[:, None] * colour[:, :, None, None])  # (N, 3, H, W)
    return canvas.clamp(0, 1) * 2 - 1


def render(scenes: Sequence[Scene], resolution: int = 32) -> Tensor:
    """Render scenes anti-aliased on a black background, each object centred in its grid cell.

    Args:
        scenes: ``N`` scenes.
        resolution: image side ``H = W`` in pixels, from 16 to 256.
    Returns:
        images ``(N, 3, H, W)`` in ``[-1, 1]`` (background ``-1``), float32.
    """
    objects = [(i, o) for i, scene in enumerate(scenes) for o in scene.objects]
    cell = resolution / 3
    return render_objects(
        len(scenes),
        resolution,
        image_index=[i for i, _ in objects],
        centre_x=[(o.col + 0.5) * cell for _, o in objects],
        centre_y=[(o.row + 0.5) * cell for _, o in objects],
        half_width=[SIZES[o.size] * cell / 2 for _, o in objects],
        shapes=[o.shape for _, o in objects],
        colours=[o.colour for _, o in objects],
    )


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


CAPTION_MODES = ("none", "template", "varied")
SPLITS = ("train", "heldout")


class ShapesDataset:
    """An endless stream of shapes scenes; batch ``step`` depends only on ``(seed, step)``.

    Args:
        resolution: image side in pixels (16 to 256).
        min_objects, max_objects: objects per scene. Class labels ``"y"`` exist only when ``max_objects == 1``.
        seed: the stream's seed.
        captions: ``"none"``; ``"template"`` or ``"varied"`` (``minidit.data.captions.describe`` without or with an
            rng seeded by ``(seed, step)``): ``get_batch`` then also returns the captions' token ids.
        text_length: tokens per caption, ``[BOS]`` and ``[EOS]`` included (``minidit.text.shapes_tokenizer``).
        holdout: keep the ``(shape, colour)`` pairs of ``minidit.data.captions.HELDOUT_PAIRS`` out of ``split="train"``.
        split: ``"train"``, or ``"heldout"`` (needs ``holdout``): every scene holds at least one held-out pair.
        count_prob: probability of a count scene, all objects alike (see ``sample_scenes``).
    """

    def __init__(
        self,
        resolution: int = 32,
        min_objects: int = 1,
        max_objects: int = 1,
        seed: int = 0,
        captions: str = "none",
        text_length: int = 40,
        holdout: bool = False,
        split: str = "train",
        count_prob: float = 0.0,
    ) -> None:
        from minidit.data.captions import HELDOUT_PAIRS  # lazy: the caption grammar imports this module

        if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
            raise ValueError(f"resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}]; got {resolution}")
        check_choice("captions", captions, CAPTION_MODES)
        check_choice("split", split, SPLITS)
        if split == "heldout" and not holdout:
            raise ValueError('split="heldout" needs holdout=True (the held-out pairs are only defined with it)')
        if captions != "none" and min_objects < 1:
            raise ValueError(f"captions need scenes with objects; got min_objects={min_objects}, use min_objects >= 1")
        self.resolution, self.min_objects, self.max_objects, self.seed = resolution, min_objects, max_objects, seed
        self.captions_mode, self.text_length, self.count_prob = captions, text_length, count_prob
        self.holdout, self.split = holdout, split
        self.excluded_pairs = HELDOUT_PAIRS if holdout and split == "train" else ()
        self.required_pairs = HELDOUT_PAIRS if split == "heldout" else ()
        self.num_classes = NUM_CLASSES
        self.tokenizer = None
        if captions != "none":
            from minidit.text import shapes_tokenizer  # lazy: image-only streams need no text package

            self.tokenizer = shapes_tokenizer()
        self.scenes(0, 1)  # fail now, not at the first batch, on bad object counts or count_prob

    def scenes(self, step: int, batch_size: int) -> list[Scene]:
        """The scenes of batch ``step``."""
        return sample_scenes(batch_size, (self.seed, step), self.min_objects, self.max_objects, self.count_prob,
                             self.excluded_pairs, self.required_pairs)

    def captions(self, step: int, batch_size: int) -> list[str]:
        """The caption strings of batch ``step``: varied with ``captions="varied"``, the template captions otherwise."""
        return self._describe(self.scenes(step, batch_size), step)

    def _describe(self, scenes: list[Scene], step: int) -> list[str]:
        """The captions of ``scenes``, the scenes of batch ``step``."""
        from minidit.data.captions import describe  # lazy: the caption grammar imports this module

        if self.captions_mode != "varied":
            return [describe(s) for s in scenes]
        rng = np.random.default_rng((self.seed, step, 1))  # its own stream: the scenes do not depend on it
        return [describe(s, rng) for s in scenes]

    def get_batch(
        self, step: int, batch_size: int, with_captions: bool = False
    ) -> tuple[Tensor, dict[str, Tensor | list[str]]]:
        """Return batch ``step``: ``images (B, 3, H, W)`` in ``[-1, 1]`` and the conditioning.

        The conditioning holds ``"y"``: class labels ``(B,)`` long (single-object streams without captions only:
        a model is conditioned on labels or on captions); with captions on, ``"text_ids"`` ``(B, text_length)``
        long and ``"text_mask"`` ``(B, text_length)`` bool (True on real tokens); and with ``with_captions``,
        ``"captions"``: the ``B`` strings (see ``captions``).
        """
        scenes = self.scenes(step, batch_size)
        conditioning: dict[str, Tensor | list[str]] = {}
        if self.max_objects == 1 and self.tokenizer is None:
            conditioning["y"] = torch.tensor([class_label(s) for s in scenes], dtype=torch.long)
        if self.tokenizer is not None or with_captions:
            texts = self._describe(scenes, step)
            if self.tokenizer is not None:
                ids, mask = self.tokenizer.encode(texts, self.text_length)
                conditioning["text_ids"], conditioning["text_mask"] = ids, mask
            if with_captions:
                conditioning["captions"] = texts
        return render(scenes, self.resolution), conditioning
