"""Tests for minidit.data.shapes: determinism, exact areas and colours, symmetry, caption <-> scene round trip."""
import math

import pytest
import torch

from minidit.data.shapes import (
    COLOURS,
    CROSS_ARM_WIDTH,
    NUM_CLASSES,
    SHAPES,
    SIZES,
    ObjectSpec,
    Scene,
    ShapesDataset,
    caption,
    class_label,
    parse_caption,
    render,
    sample_scenes,
)
from minidit.data.captions import HELDOUT_PAIRS
from minidit.text import shapes_tokenizer
from minidit.text.tokenizer import normalize


def one(shape="circle", colour="red", size="large", row=1, col=1):
    return Scene((ObjectSpec(shape, colour, size, row, col),))


def test_sample_scenes_is_deterministic_and_respects_counts_and_cells():
    a, b, c = sample_scenes(200, 7, 1, 3), sample_scenes(200, 7, 1, 3), sample_scenes(200, 8, 1, 3)
    assert a == b and a != c
    counts = [len(s.objects) for s in a]
    assert set(counts) == {1, 2, 3}
    for s in a:
        cells = [(o.row, o.col) for o in s.objects]
        assert cells == sorted(set(cells))  # distinct, in reading order
    assert sample_scenes(5, (3, 4)) == sample_scenes(5, [3, 4]) != sample_scenes(5, (4, 3))


def test_render_range_shape_and_background():
    images = render(sample_scenes(16, 0) + [Scene(())], 48)
    assert images.shape == (17, 3, 48, 48) and images.dtype == torch.float32
    assert images.min() == -1 and images.max() == 1
    assert torch.all(images[-1] == -1)  # empty scene: plain black


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", SIZES)
def test_rendered_area_matches_closed_form(shape, size):
    resolution = 96
    r = SIZES[size] * resolution / 3 / 2  # half-width in pixels
    exact = {
        "circle": math.pi * r**2,
        "square": 4 * r**2,
        "triangle": 2 * r**2,
        "diamond": 2 * r**2,
        "cross": 4 * r**2 * (2 * CROSS_ARM_WIDTH - CROSS_ARM_WIDTH**2),
    }[shape]
    coverage = (render([one(shape, "white", size)], resolution)[0] + 1) / 2
    assert torch.allclose(coverage[0], coverage[1]) and torch.allclose(coverage[0], coverage[2])
    assert coverage[0].sum().item() == pytest.approx(exact, rel=0.02)


@pytest.mark.parametrize("colour", COLOURS)
def test_object_centre_has_exact_palette_colour(colour):
    image = render([one("square", colour, "small", 2, 0)], 33)[0]
    centre = image[:, 27, 5]  # cell (2, 0) spans pixels 22..32 x 0..10
    assert torch.equal(centre, torch.tensor(COLOURS[colour]) * 2 - 1)


def test_mirror_symmetry_of_shapes_and_grid():
    for shape in SHAPES:  # every shape is symmetric about its vertical axis
        image = render([one(shape, "green", "large", 1, 1)], 63)
        assert torch.allclose(image, image.flip(-1), atol=1e-5)
    left, right = render([one("triangle", "blue", "small", 0, 0), one("triangle", "blue", "small", 0, 2)], 60)
    assert torch.allclose(left.flip(-1), right, atol=1e-5)
    square = render([one("square", "white", "large", 1, 1)], 63)
    assert torch.allclose(square, square.transpose(-1, -2), atol=1e-5)  # squares, unlike triangles, are transposable
    triangle = render([one("triangle", "white", "large", 1, 1)], 63)
    assert not torch.allclose(triangle, triangle.flip(-2), atol=0.1)


def test_caption_template_and_parse_round_trip():
    scene = Scene((ObjectSpec("circle", "red", "large", 0, 0), ObjectSpec("triangle", "blue", "small", 2, 2)))
    text = caption(scene)
    assert text == "a large red circle at the top left and a small blue triangle at the bottom right"
    assert parse_caption(text) == scene
    assert parse_caption("  A Large RED circle at the Top Left and a small blue triangle at the bottom right ") == scene
    for s in sample_scenes(300, 1, 1, 3):
        assert parse_caption(caption(s)) == s


@pytest.mark.parametrize(
    "text",
    ["", "a huge red circle at the top", "a large purple circle at the top", "a large red circle on the top",
     "a large red circle at the top and", "a large red circle at the top and a small red cross at the top"],
)
def test_parse_caption_rejects_bad_text(text):
    with pytest.raises(ValueError):
        parse_caption(text)


def test_class_label_is_a_bijection_on_shape_and_colour():
    labels = {class_label(one(shape, colour, size, row, 2)) for shape in SHAPES for colour in COLOURS
              for size in SIZES for row in range(3)}
    assert labels == set(range(NUM_CLASSES)) and NUM_CLASSES == len(SHAPES) * len(COLOURS)
    assert class_label(one("triangle", "blue")) == SHAPES.index("triangle") * len(COLOURS) + 2
    with pytest.raises(ValueError, match="single-object"):
        class_label(sample_scenes(1, 0, 2, 2)[0])


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="valid colours"):
        ObjectSpec("circle", "purple", "large", 0, 0)
    with pytest.raises(ValueError, match="valid shapes"):
        ObjectSpec("star", "red", "large", 0, 0)
    with pytest.raises(ValueError, match="row and col"):
        ObjectSpec("circle", "red", "large", 3, 0)
    with pytest.raises(ValueError, match="distinct grid cells"):
        Scene((ObjectSpec("circle", "red", "large", 0, 0), ObjectSpec("cross", "red", "small", 0, 0)))
    with pytest.raises(ValueError, match="resolution"):
        render([one()], 8)
    with pytest.raises(ValueError, match="resolution"):
        ShapesDataset(resolution=300)


def test_dataset_batches_are_deterministic_in_seed_and_step():
    data = ShapesDataset(resolution=32, seed=3)
    images, cond = data.get_batch(5, 8, with_captions=True)
    again, cond_again = ShapesDataset(resolution=32, seed=3).get_batch(5, 8, with_captions=True)
    assert torch.equal(images, again) and torch.equal(cond["y"], cond_again["y"])
    assert cond["captions"] == cond_again["captions"]
    assert not torch.equal(images, data.get_batch(6, 8)[0])
    assert not torch.equal(images, ShapesDataset(resolution=32, seed=4).get_batch(5, 8)[0])
    assert images.shape == (8, 3, 32, 32) and cond["y"].dtype == torch.long
    scenes = [parse_caption(c) for c in cond["captions"]]
    assert torch.equal(render(scenes, 32), images)
    assert cond["y"].tolist() == [class_label(s) for s in scenes]


def test_multi_object_dataset_has_captions_but_no_class_labels():
    images, cond = ShapesDataset(resolution=24, min_objects=2, max_objects=3).get_batch(0, 4, with_captions=True)
    assert "y" not in cond and images.shape == (4, 3, 24, 24)
    assert all(len(parse_caption(c).objects) in (2, 3) for c in cond["captions"])


def test_default_streams_are_unchanged_by_the_new_options():
    # values of the sampler before count scenes and held-out pairs existed
    assert [caption(s) for s in sample_scenes(3, 0)] == [
        "a large cyan circle at the top right and a large magenta circle at the center and "
        "a large white circle at the bottom",
        "a small blue cross at the center and a large white diamond at the right and "
        "a large yellow circle at the bottom",
        "a small blue circle at the top left and a small blue square at the top and a small red triangle at the bottom",
    ]
    assert [class_label(s) for s in ShapesDataset(seed=0).scenes(0, 8)] == [24, 0, 32, 27, 17, 32, 31, 26]


def test_count_scenes_hold_identical_objects_at_the_requested_rate():
    def alike(scene):
        return len({(o.shape, o.colour, o.size) for o in scene.objects}) == 1

    every = sample_scenes(300, 0, 2, 3, count_prob=1.0)
    assert all(alike(s) for s in every) and {len(s.objects) for s in every} == {2, 3}
    half = sample_scenes(2000, 0, 2, 2, count_prob=0.5)
    # a count scene is alike; a free 2-object scene is alike with probability 1 / (5 * 7 * 2) = 1 / 70
    assert 0.45 < sum(alike(s) for s in half) / 2000 < 0.56
    with pytest.raises(ValueError, match="count_prob"):
        sample_scenes(1, 0, count_prob=1.5)


def test_holdout_keeps_heldout_pairs_out_of_train_and_in_every_heldout_scene():
    heldout = set(HELDOUT_PAIRS)
    train = ShapesDataset(resolution=16, min_objects=1, max_objects=3, holdout=True, count_prob=0.3)
    test = ShapesDataset(resolution=16, min_objects=1, max_objects=3, holdout=True, split="heldout")
    for step in range(20):
        assert not any((o.shape, o.colour) in heldout for s in train.scenes(step, 32) for o in s.objects)
        assert all(any((o.shape, o.colour) in heldout for o in s.objects) for s in test.scenes(step, 32))
    single = ShapesDataset(resolution=16, holdout=True)
    labels = {label for step in range(30) for label in single.get_batch(step, 32)[1]["y"].tolist()}
    assert labels == set(range(NUM_CLASSES)) - {class_label(one(shape, colour)) for shape, colour in heldout}
    with pytest.raises(ValueError, match="needs holdout=True"):
        ShapesDataset(split="heldout")
    with pytest.raises(ValueError, match="leaves no possible scene"):
        sample_scenes(1, 0, excluded_pairs=HELDOUT_PAIRS, required_pairs=HELDOUT_PAIRS)
    with pytest.raises(ValueError, match=r"\(shape, colour\) pairs"):
        sample_scenes(1, 0, excluded_pairs=[("red", "circle")])


@pytest.mark.parametrize("mode", ["template", "varied"])
def test_caption_streams_give_token_ids_that_decode_to_the_batch_captions(mode):
    data = ShapesDataset(resolution=24, min_objects=1, max_objects=3, seed=5, captions=mode, count_prob=0.3)
    images, cond = data.get_batch(2, 16)
    texts = data.captions(2, 16)
    assert set(cond) == {"text_ids", "text_mask"}  # multi-object: no class labels
    assert cond["text_ids"].shape == cond["text_mask"].shape == (16, 40)
    assert cond["text_ids"].dtype == torch.long and cond["text_mask"].dtype == torch.bool
    tokenizer = shapes_tokenizer()
    assert [tokenizer.decode(row[mask]) for row, mask in zip(cond["text_ids"], cond["text_mask"])] == [
        normalize(t) for t in texts]
    assert torch.equal(render([parse_caption(t) for t in texts], 24), images)
    again_images, again = ShapesDataset(resolution=24, min_objects=1, max_objects=3, seed=5, captions=mode,
                                        count_prob=0.3).get_batch(2, 16, with_captions=True)
    assert torch.equal(again["text_ids"], cond["text_ids"]) and again["captions"] == texts
    if mode == "template":
        assert texts == [caption(s) for s in data.scenes(2, 16)]
    else:
        assert texts != [caption(s) for s in data.scenes(2, 16)]
        assert data.captions(3, 16) != texts
    single = ShapesDataset(resolution=16, seed=5, captions=mode).get_batch(0, 4)[1]
    assert set(single) == {"text_ids", "text_mask"}  # labels or captions, never both


def test_caption_options_are_checked():
    with pytest.raises(ValueError, match="valid captions"):
        ShapesDataset(captions="fancy")
    with pytest.raises(ValueError, match="min_objects >= 1"):
        ShapesDataset(min_objects=0, captions="varied")
    with pytest.raises(ValueError, match="max_length"):
        ShapesDataset(min_objects=3, max_objects=3, captions="template", text_length=10).get_batch(0, 1)


def test_config_data_section_takes_the_caption_keys_and_names_the_bad_one():
    from minidit.config import ConfigError, build_data, check_data

    keys = {"name": "shapes", "max_objects": 3, "captions": "varied", "text_length": 40, "holdout": True,
            "split": "heldout", "count_prob": 0.3}
    assert check_data(keys) == keys
    assert build_data(keys).required_pairs == HELDOUT_PAIRS
    for bad, message in [({"captions": "fancy"}, r"\[data\] captions: got 'fancy'"),
                         ({"split": "heldout"}, r"\[data\] split: \"heldout\" needs holdout = true"),
                         ({"captions": "template", "min_objects": 0}, r"\[data\] min_objects: is 0"),
                         ({"count_prob": 1.5}, r"\[data\] count_prob: got 1.5"),
                         ({"text_length": 2}, r"\[data\] text_length: got 2")]:
        with pytest.raises(ConfigError, match=message):
            check_data({"name": "shapes", **bad})
