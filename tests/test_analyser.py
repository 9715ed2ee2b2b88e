"""Tests for minidit.data.analyser: exact recovery of rendered scenes, alignment scores, robustness to noise."""
import pytest
import torch

from minidit.data.analyser import (
    CAPTION_METRICS,
    OBJECT_METRICS,
    alignment,
    analyse,
    analyse_batch,
    attribute_accuracy,
    caption_alignment,
    class_accuracy,
    noise_robustness,
    object_reports,
    scene_accuracy,
    scene_alignment,
)
from minidit.data.shapes import ObjectSpec, Scene, ShapesDataset, caption, class_label, render, sample_scenes


@pytest.mark.parametrize("resolution", [32, 64])
def test_clean_renders_are_read_back_exactly(resolution):
    scenes = sample_scenes(300, seed=resolution, min_objects=1, max_objects=3)
    accuracy = scene_accuracy(render(scenes, resolution), scenes)
    assert accuracy >= 0.99


def test_every_object_kind_in_every_cell_is_recognised_at_odd_resolution():
    scenes = [Scene((ObjectSpec(shape, colour, size, cell // 3, cell % 3),))
              for shape in ("circle", "square", "triangle", "diamond", "cross")
              for colour in ("red", "green", "blue", "yellow", "magenta", "cyan", "white")
              for size in ("small", "large") for cell in (0, 4, 8)]
    assert analyse_batch(render(scenes, 37)) == scenes


def test_empty_image_and_pure_noise_hold_no_objects():
    assert analyse(torch.full((3, 32, 32), -1.0)) == Scene(())
    noise = -1 + 0.4 * torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert all(s == Scene(()) for s in analyse_batch(noise))


def test_objects_shifted_by_one_pixel_are_still_read():
    scenes = sample_scenes(50, seed=1, min_objects=1, max_objects=1)
    shifted = render(scenes, 48).roll((1, -1), dims=(-2, -1))
    assert scene_accuracy(shifted, scenes) == 1.0
    assert scene_accuracy(render(scenes, 48).roll(4, -1), scenes) < 0.5  # 4 pixels is beyond max_shift


def test_alignment_is_one_for_the_true_caption_and_drops_by_one_object_per_error():
    scene = Scene((ObjectSpec("circle", "red", "large", 0, 0), ObjectSpec("triangle", "blue", "small", 2, 2)))
    image = render([scene], 32)[0]
    assert alignment(caption(scene), image) == 1.0
    wrong = [
        "a large green circle at the top left and a small blue triangle at the bottom right",  # colour
        "a large red square at the top left and a small blue triangle at the bottom right",  # shape
        "a small red circle at the top left and a small blue triangle at the bottom right",  # size
        "a large red circle at the top and a small blue triangle at the bottom right",  # position
    ]
    for text in wrong:
        assert alignment(text, image) == pytest.approx(0.5)
    assert alignment("a large red circle at the top left", image) == pytest.approx(0.5)  # an extra object
    assert alignment("a small white cross at the center", image) == 0.0
    assert scene_alignment(scene, Scene(())) == 0.0


def test_batch_metrics():
    data = ShapesDataset(resolution=32, seed=2)
    images, cond = data.get_batch(0, 32, with_captions=True)
    assert class_accuracy(images, cond["y"]) == 1.0
    assert class_accuracy(images, (cond["y"] + 1) % 35) == 0.0
    assert caption_alignment(images, cond["captions"]) == 1.0
    assert caption_alignment(images.flip(-1), cond["captions"]) < 1.0  # mirrored: left and right swap
    blank = torch.full_like(images, -1)
    assert class_accuracy(blank, cond["y"]) == 0.0 and caption_alignment(blank, cond["captions"]) == 0.0
    assert [class_label(s) for s in analyse_batch(images)] == cond["y"].tolist()


def test_noise_table_degrades_gracefully():
    table = noise_robustness(noise_stds=(0.0, 0.1, 0.4, 1.5), resolutions=(32,), n=60)
    accuracy = table[32]
    assert accuracy[0.0] == 1.0 and accuracy[0.1] == 1.0 and accuracy[0.4] >= 0.95
    assert accuracy[1.5] < accuracy[0.4]  # at std 1.5 the noise swamps the objects


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\(N, 3, H, H\)"):
        analyse_batch(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="one caption per image"):
        caption_alignment(torch.zeros(2, 3, 32, 32), ["a small red circle at the top"])
    with pytest.raises(ValueError, match="cannot parse"):
        alignment("a red thing", torch.zeros(3, 32, 32))


def test_attribute_accuracy_and_object_reports_on_right_and_deliberately_wrong_renders():
    red = ObjectSpec("circle", "red", "large", 0, 0)
    blue = ObjectSpec("triangle", "blue", "small", 2, 2)
    green = ObjectSpec("square", "green", "small", 1, 1)
    text = ("at the centre, a tiny green box and a big red disc in the upper left corner "
            "and a blue triangle, small, at the lower right")  # written order: green, red, blue
    renders = [
        Scene((red, blue, green)),  # right
        Scene((ObjectSpec("circle", "yellow", "large", 0, 0), blue, green)),  # red's colour swapped
        Scene((red, ObjectSpec("triangle", "blue", "small", 2, 1), green)),  # blue moved one cell left
        Scene((red, blue)),  # green dropped
    ]
    images = render(renders, 32)
    assert attribute_accuracy(images[:1], [text]) == {key: 1.0 for key in (*OBJECT_METRICS, *CAPTION_METRICS)}
    scores = attribute_accuracy(images, [text] * 4)
    assert scores == pytest.approx({"colour": 9 / 12, "shape": 10 / 12, "size": 10 / 12, "position": 10 / 12,
                                    "object": 9 / 12, "count": 3 / 4, "scene": 1 / 4})
    reports = object_reports(images, [text] * 4)
    firsts = [(r["caption"], r["order"], r["objects"]) for r in reports[:4]]
    assert firsts == [(0, 0, 3), (0, 1, 3), (0, 2, 3), (1, 0, 3)]
    assert [r["expected"] for r in reports[:3]] == [green, red, blue]
    swapped = reports[4]  # caption 1, second object written: the red disc read as yellow
    assert swapped["read"].colour == "yellow" and not swapped["colour"] and swapped["shape"] and swapped["size"]
    assert swapped["position"] and not swapped["object"]
    moved = reports[8]  # caption 2, third object written: nothing in the blue triangle's cell
    assert moved["read"] is None and not any(moved[key] for key in OBJECT_METRICS)
    dropped = reports[9]  # caption 3, first object written: the green box
    assert dropped["expected"] == green and dropped["read"] is None and not dropped["position"]
    assert [r["object"] for r in reports] == [True] * 4 + [False] + [True] * 3 + [False] + [False, True, True]


def test_attribute_accuracy_counts_objects_anywhere_and_extra_objects_fail_the_scene():
    scene = Scene((ObjectSpec("cross", "white", "small", 0, 1), ObjectSpec("cross", "white", "small", 2, 1)))
    extra = Scene(scene.objects + (ObjectSpec("diamond", "cyan", "large", 1, 1),))
    text = "two tiny white crosses in the top and the bottom middle"
    scores = attribute_accuracy(render([scene, extra], 32), [text, text])
    assert scores["object"] == 1.0 and scores["count"] == 0.5 and scores["scene"] == 0.5
    with pytest.raises(ValueError, match="one caption per image"):
        attribute_accuracy(render([scene], 32), [text, text])
    with pytest.raises(ValueError, match="captions is empty"):
        object_reports(render([scene], 32)[:0], [])


def test_clean_batches_score_one_on_every_metric_with_varied_captions_on_both_splits():
    for split in ("train", "heldout"):
        data = ShapesDataset(resolution=32, min_objects=1, max_objects=3, seed=4, captions="varied", holdout=True,
                             split=split, count_prob=0.3)
        images, cond = data.get_batch(1, 32, with_captions=True)
        assert set(attribute_accuracy(images, cond["captions"]).values()) == {1.0}
        assert caption_alignment(images, cond["captions"]) == 1.0
