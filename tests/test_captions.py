"""Tests for minidit.data.captions: the grammar's exact round trip, counts, word orders, vocabulary and errors."""
import re

import numpy as np
import pytest

from minidit.data import shapes
from minidit.data.captions import (
    HELDOUT_PAIRS,
    MAX_CAPTION_PIECES,
    VOCABULARY,
    describe,
    parse_caption,
    parse_caption_ordered,
)
from minidit.data.shapes import COLOURS, SHAPES, ObjectSpec, Scene, caption, sample_scenes


def pieces(text):
    """Words and punctuation marks, as the word-level tokenizer splits them."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def test_template_caption_is_todays_and_parses_back_in_order():
    for scene in sample_scenes(300, 5, 1, 3):
        assert describe(scene) == caption(scene)
        assert parse_caption(describe(scene)) == scene
    assert shapes.parse_caption is parse_caption  # the same function, not a copy


def test_varied_captions_round_trip_to_the_same_objects():
    rng = np.random.default_rng(0)
    scenes = sample_scenes(2000, 11, 1, 3, count_prob=0.5)
    longest = 0
    for scene in scenes:
        for _ in range(2):
            text = describe(scene, rng)
            ordered = parse_caption_ordered(text)
            assert len(ordered) == len(scene.objects) and set(ordered) == set(scene.objects), text
            assert set(parse_caption(text).objects) == set(scene.objects)
            longest = max(longest, len(pieces(text)))
    assert longest <= MAX_CAPTION_PIECES == 35  # 35 + [BOS] + [EOS] fits text_length = 40


def test_longest_caption_is_35_pieces():
    # longest: three different corner objects, each "a <colour> <shape>, <size>, in the <corner> corner"
    scene = Scene((ObjectSpec("circle", "red", "large", 0, 0), ObjectSpec("cross", "blue", "small", 0, 2),
                   ObjectSpec("square", "white", "small", 2, 2)))
    rng = np.random.default_rng(1)
    lengths = [len(pieces(describe(scene, rng))) for _ in range(3000)]
    assert max(lengths) == MAX_CAPTION_PIECES
    assert min(lengths) == 26  # "a <size> <colour> <shape> at the <corner>" three times, joined by "and"


def test_varied_captions_are_deterministic_in_the_rng_and_do_vary():
    scene = sample_scenes(1, 3, 3, 3)[0]
    first = [describe(scene, np.random.default_rng(7)) for _ in range(2)]
    assert first[0] == first[1]
    rng = np.random.default_rng(7)
    assert len({describe(scene, rng) for _ in range(50)}) > 40


def test_identical_objects_are_counted_in_varied_captions_only():
    scene = Scene((ObjectSpec("square", "red", "small", 0, 1), ObjectSpec("square", "red", "small", 1, 1),
                   ObjectSpec("square", "red", "small", 2, 2)))
    assert describe(scene) == ("a small red square at the top and a small red square at the center and "
                               "a small red square at the bottom right")
    rng = np.random.default_rng(0)
    for _ in range(30):
        text = describe(scene, rng)
        assert pieces(text).count("three") == 1 and "a" not in pieces(text), text
        assert set(parse_caption(text).objects) == set(scene.objects)
    two = Scene(scene.objects[:2] + (ObjectSpec("cross", "red", "small", 2, 2),))
    texts = [describe(two, rng) for _ in range(30)]
    assert all(pieces(t).count("two") == 1 and pieces(t).count("a") == 1 for t in texts)


def test_parse_reads_synonyms_word_orders_and_keeps_the_written_order():
    text = ("at the centre, a tiny green box and two big red discs in the upper left corner and the bottom "
            "and a blue triangle, small, at the lower right")
    assert parse_caption_ordered(text) == [
        ObjectSpec("square", "green", "small", 1, 1),
        ObjectSpec("circle", "red", "large", 0, 0),
        ObjectSpec("circle", "red", "large", 2, 1),
        ObjectSpec("triangle", "blue", "small", 2, 2),
    ]
    assert parse_caption("  Three Large White Crosses in the middle, the top   middle and the middle left ") == Scene((
        ObjectSpec("cross", "white", "large", 1, 1), ObjectSpec("cross", "white", "large", 0, 1),
        ObjectSpec("cross", "white", "large", 1, 0)))
    assert parse_caption("a small red circle at the top, a large blue box at the left") == Scene((
        ObjectSpec("circle", "red", "small", 0, 1), ObjectSpec("square", "blue", "large", 1, 0)))


@pytest.mark.parametrize(("text", "message"), [
    ("", "expected 'a', 'two' or 'three' at word 1, found the end"),
    ("a small red circle at the top!", r"characters \['!'\]"),
    ("a small purple circle at the top", "expected a colour"),
    ("a small red circles at the top", "singular shape"),
    ("two small red circle at the top and the center", "plural shape"),
    ("two small red circles at the top", "need 2 position"),
    ("a small red circle at the top and the center", "need 1 position"),
    ("a small red circle on the top", "expected 'at' or 'in' at word 5, found 'on'"),
    ("a small red circle at the top and", "at word 9, found the end"),
    ("a red circle, small at the top", "',' after the size"),
    ("at the top a small red circle", "',' after the location"),
    ("a small red circle at the top corner", "'and', ',' or the end"),
    ("two small red circles at the top, the left", "'and the <position>' to end the list"),
    ("a small red circle at the top and a large blue box at the top", "distinct grid cells"),
])
def test_parse_rejects_text_outside_the_grammar(text, message):
    with pytest.raises(ValueError, match=message):
        parse_caption(text)


def test_vocabulary_is_sorted_unique_and_exactly_the_words_captions_use():
    assert list(VOCABULARY) == sorted(set(VOCABULARY)) and all(w == w.lower() for w in VOCABULARY)
    rng = np.random.default_rng(3)
    used = {p for s in sample_scenes(3000, 2, 1, 3, count_prob=0.5) for p in pieces(describe(s, rng))}
    assert used == set(VOCABULARY)


def test_empty_scene_has_no_caption():
    with pytest.raises(ValueError, match="empty scene"):
        describe(Scene(()))
    with pytest.raises(ValueError, match="empty scene"):
        describe(Scene(()), np.random.default_rng(0))


def test_heldout_pairs_are_one_per_shape_with_distinct_colours():
    assert sorted(shape for shape, _ in HELDOUT_PAIRS) == sorted(SHAPES)
    colours = [colour for _, colour in HELDOUT_PAIRS]
    assert len(set(colours)) == len(colours) and set(colours) <= set(COLOURS)


def test_more_than_three_identical_objects_are_named_in_groups_of_at_most_three():
    objects = tuple(ObjectSpec("circle", "red", "small", cell // 3, cell % 3) for cell in range(7))
    rng = np.random.default_rng(0)
    for _ in range(20):
        text = describe(Scene(objects), rng)
        assert set(parse_caption(text).objects) == set(objects)
        assert "four" not in text and sum(text.count(word) for word in ("a ", "two ", "three ")) >= 3
