"""The caption grammar of the shapes world: varied captions (synonyms, word orders, counts) with an exact parser.

A scene can be described in many ways: "a large red circle at the top left", "at the upper left corner, a big red
circle", "a red disc, large, in the top left", and identical objects can be counted ("two small blue boxes at the
top and the center"). ``describe`` draws one of these captions from a small grammar, ``parse_caption`` reads any
of them back to the scene exactly, so a text-to-image model's samples can be scored against their prompts without
a learned judge (the exact stand-in for the caption-alignment evaluations of SD3, arXiv 2403.03206, Sec. 5.3, and
PixArt-Sigma, arXiv 2403.04692). ``HELDOUT_PAIRS`` are (shape, colour) pairs kept out of training for a
compositional test split. Used by notebooks/05_text_conditioning.ipynb, 06_mmdit.ipynb and 07_kv_compression.ipynb
(through ``minidit.data.shapes.ShapesDataset`` and ``minidit.data.analyser``); ``VOCABULARY`` builds the
tokenizer of ``minidit.text``.

The grammar, one group of ``k`` identical objects (``k`` = 1, 2 or 3) at a time::

    caption  := group (("and" | ",") group)*
    group    := NP-with-size location | location "," NP-with-size | NP-without-size "," SIZE "," location
    NP       := ("a" | "two" | "three") [SIZE] COLOUR SHAPE(plural when k > 1)
    location := ("at" | "in") "the" POS [("," "the" POS)* "and" "the" POS]      (exactly k positions)

Every choice is decided by the next few words, without backtracking: a group starts with a number or a preposition,
a list of positions continues only with "the", a position is the longest phrase that matches, and the size's place
tells which word order follows; so parsing is exact (tested on 4000 varied captions of 2000 random scenes).

Example:
    >>> scene = Scene((ObjectSpec("circle", "red", "large", 0, 0), ObjectSpec("circle", "red", "large", 1, 1)))
    >>> describe(scene)
    'a large red circle at the top left and a large red circle at the center'
    >>> parse_caption("two big red discs in the middle and the upper left corner") == Scene(scene.objects[::-1])
    True
"""
from __future__ import annotations

import re

import numpy as np

from minidit.data.shapes import COLOURS, ObjectSpec, Scene, caption

SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "tiny"), "large": ("large", "big")}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond",),
    "cross": ("cross",),
}
POSITION_WORDS: dict[tuple[int, int], tuple[str, ...]] = {  # the first phrase of each cell is the template's
    (0, 0): ("top left", "upper left", "top left corner", "upper left corner"),
    (0, 1): ("top", "top middle"),
    (0, 2): ("top right", "upper right", "top right corner", "upper right corner"),
    (1, 0): ("left", "middle left"),
    (1, 1): ("center", "centre", "middle"),
    (1, 2): ("right", "middle right"),
    (2, 0): ("bottom left", "lower left", "bottom left corner", "lower left corner"),
    (2, 1): ("bottom", "bottom middle"),
    (2, 2): ("bottom right", "lower right", "bottom right corner", "lower right corner"),
}
NUMBER_WORDS = ("a", "two", "three")  # k identical objects, k = 1, 2, 3
PREPOSITIONS = ("at", "in")
WORD_ORDERS = ("object first", "location first", "size last")
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (  # one per shape, distinct colours; never seen in training with holdout
    ("circle", "blue"),
    ("square", "yellow"),
    ("triangle", "magenta"),
    ("diamond", "cyan"),
    ("cross", "green"),
)
MAX_CAPTION_PIECES = 35  # words and commas of the longest caption of 1 to 3 objects (tested); + [BOS], [EOS]: 37 tokens


def plural(word: str) -> str:
    """English plural of a shape word: ``"box" -> "boxes"``, ``"cross" -> "crosses"``, ``"circle" -> "circles"``."""
    return word + "es" if word.endswith(("s", "x")) else word + "s"


_SIZE_OF = {word: size for size, words in SIZE_WORDS.items() for word in words}
_SHAPE_OF = {word: shape for shape, words in SHAPE_WORDS.items() for word in words}
_PLURAL_SHAPE_OF = {plural(word): shape for word, shape in _SHAPE_OF.items()}
_CELL_OF = {tuple(phrase.split()): cell for cell, phrases in POSITION_WORDS.items() for phrase in phrases}
_LONGEST_POSITION = max(len(words) for words in _CELL_OF)

VOCABULARY: tuple[str, ...] = tuple(sorted(
    {",", "and", "the", *NUMBER_WORDS, *PREPOSITIONS, *COLOURS, *_SIZE_OF, *_SHAPE_OF, *_PLURAL_SHAPE_OF}
    | {word for words in _CELL_OF for word in words}
))


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    """One of ``options``, uniformly."""
    return options[int(rng.integers(len(options)))]


def _join(items: list[str]) -> str:
    """``"x"``, ``"x and y"``, ``"x, y and z"``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _describe_group(objects: list[ObjectSpec], rng: np.random.Generator) -> str:
    """A varied phrase for ``k`` identical objects (same shape, colour and size) in distinct cells."""
    first, k = objects[0], len(objects)
    shape = _pick(rng, SHAPE_WORDS[first.shape])
    shape = plural(shape) if k > 1 else shape
    size = _pick(rng, SIZE_WORDS[first.size])
    positions = [_pick(rng, POSITION_WORDS[(o.row, o.col)]) for o in objects]
    location = f"{_pick(rng, PREPOSITIONS)} " + _join([f"the {p}" for p in positions])
    order = _pick(rng, WORD_ORDERS)
    if order == "object first":
        return f"{NUMBER_WORDS[k - 1]} {size} {first.colour} {shape} {location}"
    if order == "location first":
        return f"{location}, {NUMBER_WORDS[k - 1]} {size} {first.colour} {shape}"
    return f"{NUMBER_WORDS[k - 1]} {first.colour} {shape}, {size}, {location}"


def describe(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """A caption of ``scene``: the template caption, or with ``rng`` a varied one drawn from the grammar.

    A varied caption names identical objects (same shape, colour and size) once with their count ("two small red
    circles at the top left and the center"; groups of at most three), puts the groups and each group's positions in random order, and
    picks synonyms, a preposition and one of ``WORD_ORDERS`` per group; the same rng state gives the same caption.

    Args:
        scene: a scene with 1 or more objects.
        rng: ``None`` for the template caption (``minidit.data.shapes.caption``: "a large red circle at the top
            left and a small blue cross at the center"), or a numpy ``Generator`` that is advanced.
    Raises:
        ValueError: for an empty scene, which has no caption.
    """
    if not scene.objects:
        raise ValueError("an empty scene has no caption; sample scenes with min_objects >= 1")
    if rng is None:
        return caption(scene)
    groups: dict[tuple[str, str, str, int], list[ObjectSpec]] = {}
    for o in scene.objects:  # identical objects share a group; the grammar counts to three, so a fourth starts another
        same = sum(key[:3] == (o.shape, o.colour, o.size) for key in groups)
        key = (o.shape, o.colour, o.size, same - 1)
        if same == 0 or len(groups[key]) == len(NUMBER_WORDS):
            key = (o.shape, o.colour, o.size, same)
        groups.setdefault(key, []).append(o)
    phrases = []
    for index in rng.permutation(len(groups)):
        objects = list(groups.values())[int(index)]
        phrases.append(_describe_group([objects[int(i)] for i in rng.permutation(len(objects))], rng))
    return " and ".join(phrases) if rng.integers(2) else _join(phrases)


class _Parser:
    """Recursive-descent parser of the grammar in the module docstring, over the caption's words and commas."""

    def __init__(self, text: str) -> None:
        bad = sorted(set(re.sub(r"[a-z,\s]", "", text.lower())))
        if bad:
            raise ValueError(f"cannot parse caption {text!r}: characters {bad} are not in the grammar; "
                             "captions use lower-case words, spaces and commas")
        self.text, self.words, self.index = text, re.findall(r"[a-z]+|,", text.lower()), 0

    def peek(self, ahead: int = 0) -> str | None:
        """The word ``ahead`` places after the current one, or ``None`` past the end."""
        at = self.index + ahead
        return self.words[at] if at < len(self.words) else None

    def fail(self, expected: str) -> ValueError:
        """The error for an unexpected word (or end) where ``expected`` should come."""
        found = repr(self.peek()) if self.peek() is not None else "the end"
        return ValueError(
            f"cannot parse caption {self.text!r}: expected {expected} at word {self.index + 1}, found {found}; "
            "an object reads like 'a small red circle at the top left' (sizes, colours, shapes and positions: "
            "see minidit.data.captions), objects joined by ' and ' or ', '"
        )

    def take(self, table: dict[str, str] | tuple[str, ...], expected: str) -> str:
        """Consume the current word if it is in ``table``; return it (or its value in a dict)."""
        word = self.peek()
        if word is None or word not in table:
            raise self.fail(expected)
        self.index += 1
        return table[word] if isinstance(table, dict) else word

    def position(self) -> tuple[int, int]:
        """The longest position phrase at the current word: its cell."""
        for length in range(_LONGEST_POSITION, 0, -1):
            cell = _CELL_OF.get(tuple(self.words[self.index : self.index + length]))
            if cell is not None:
                self.index += length
                return cell
        raise self.fail("a position (e.g. 'top left', 'center', 'lower right corner')")

    def location(self) -> list[tuple[int, int]]:
        """``("at" | "in") "the" POS`` and further ``("," | "and") "the" POS``: the cells in order."""
        self.take(PREPOSITIONS, "'at' or 'in'")
        self.take(("the",), "'the'")
        cells, joiner = [self.position()], None
        while joiner != "and" and self.peek() in (",", "and") and self.peek(1) == "the":
            joiner = self.peek()
            self.index += 2
            cells.append(self.position())
        if joiner == ",":
            raise self.fail("'and the <position>' to end the list of positions")
        return cells

    def noun_phrase(self, with_size: bool | None) -> tuple[int, str | None, str, str]:
        """``NUMBER [SIZE] COLOUR SHAPE``: ``(count, size or None, colour, shape)``."""
        count = NUMBER_WORDS.index(self.take(NUMBER_WORDS, "'a', 'two' or 'three'")) + 1
        size = None
        if with_size or (with_size is None and self.peek() in _SIZE_OF):
            size = self.take(_SIZE_OF, f"a size {tuple(_SIZE_OF)}")
        colour = self.take(tuple(COLOURS), f"a colour {tuple(COLOURS)}")
        shapes = _SHAPE_OF if count == 1 else _PLURAL_SHAPE_OF
        shape = self.take(shapes, f"a {'singular' if count == 1 else 'plural'} shape {tuple(shapes)}")
        return count, size, colour, shape

    def group(self) -> list[ObjectSpec]:
        """One group of identical objects, in the order its positions are written."""
        if self.peek() in PREPOSITIONS:
            cells = self.location()
            self.take((",",), "',' after the location")
            count, size, colour, shape = self.noun_phrase(with_size=True)
        else:
            count, size, colour, shape = self.noun_phrase(with_size=None)
            if size is None:
                self.take((",",), "a size or ','")
                size = self.take(_SIZE_OF, f"a size {tuple(_SIZE_OF)}")
                self.take((",",), "',' after the size")
            cells = self.location()
        if len(cells) != count:
            raise ValueError(f"cannot parse caption {self.text!r}: '{NUMBER_WORDS[count - 1]}' objects need "
                             f"{count} position(s), got {len(cells)}; name one position per object")
        return [ObjectSpec(shape, colour, size, row, col) for row, col in cells]

    def caption(self) -> list[ObjectSpec]:
        """Every group, joined by ``"and"`` or ``","``, to the end of the text."""
        objects = self.group()
        while self.peek() is not None:
            self.take((",", "and"), "'and', ',' or the end")
            objects += self.group()
        return objects


def parse_caption_ordered(text: str) -> list[ObjectSpec]:
    """The objects of a caption in the order the caption names them (case and extra spaces ignored).

    A group "two red circles at the top and the center" gives its objects in the order of its positions.
    Raises:
        ValueError: naming the word where the caption leaves the grammar.
    """
    return _Parser(text).caption()


def parse_caption(text: str) -> Scene:
    """Read a caption (template or varied) back to its scene, objects in the order the caption names them.

    ``set(parse_caption(describe(scene, rng)).objects) == set(scene.objects)`` for every scene and rng.
    Raises:
        ValueError: if the text leaves the grammar (the error names the word) or two objects share a cell.
    """
    return Scene(tuple(parse_caption_ordered(text)))
