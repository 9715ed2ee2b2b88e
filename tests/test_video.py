"""Tests for minidit.data.video: exact motion in the frames, exact tracks, caption round trip, metrics that drop on
wrong videos, noise tolerance, the dataset's determinism and its errors."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from minidit.data.shapes import COLOURS, render_objects
from minidit.data.video import (
    BOUNCE_AXES,
    COLOUR_CHANGE,
    DIRECTIONS,
    MOTION_METRICS,
    MOTIONS,
    SPEEDS,
    STILL,
    VOCABULARY,
    Clip,
    ClipDescription,
    Track,
    VideoDataset,
    caption,
    centre_range,
    motion_report,
    parse_clip_caption,
    read_motion,
    render_clips,
    sample_clips,
    track_objects,
    trajectory,
)
from minidit.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def clean():
    clips = sample_clips(96, 3)
    return clips, render_clips(clips), [caption(clip) for clip in clips]


def test_render_objects_draws_squares_at_any_centre_with_exact_coverage():
    images = render_objects(2, 24, [0, 1], [12.0, 12.25], [12.0, 7.0], [3.0, 3.0], ["square"] * 2, ["green"] * 2)
    coverage = (images[:, 1] + 1) / 2  # (2, H, W)
    expected = torch.zeros(2, 24, 24)
    expected[0, 9:15, 9:15] = 1  # edges on pixel borders: the 6 x 6 pixels inside, fully
    expected[1, 4:10, 9] = 0.75  # shifted by a quarter pixel: the edge columns are 3/4 and 1/4 covered
    expected[1, 4:10, 10:15] = 1
    expected[1, 4:10, 15] = 0.25
    assert torch.equal(coverage, expected) and torch.all(images[:, [0, 2]] == -1)
    with pytest.raises(ValueError, match="one value per object"):
        render_objects(1, 24, [0], [12.0], [12.0], [3.0, 2.0], ["circle"], ["red"])


def test_render_clips_shape_range_and_layout(clean):
    clips, videos, _ = clean
    assert videos.shape == (96, 24, 24, 8, 3) and videos.dtype == torch.float32
    assert videos.min() == -1 and videos.max() == 1
    for clip, video in zip(clips[:20], videos):
        track = trajectory(clip)
        for t in range(8):  # the pixel whose top right corner is the centre lies inside the shape
            pixel, colour = video[int(track.y[t]), int(track.x[t]) - 1, t], torch.tensor(COLOURS[track.colour[t]])
            assert torch.equal(pixel > -1, colour > 0)
            if track.shape[t] != "cross":  # fully inside, except in a cross's thin arms
                assert torch.equal(pixel, colour * 2 - 1)


def test_trajectories_move_by_the_captioned_pixels_per_frame():
    for clip in sample_clips(300, 0):
        d, track = clip.description, trajectory(clip)
        steps = np.diff(np.array([track.x, track.y]), axis=1).T  # (T - 1, 2)
        speed = SPEEDS[d.speed] if d.speed else 0
        if d.motion in DIRECTIONS:
            assert (steps == np.array(DIRECTIONS[d.motion]) * speed).all()
        elif d.motion in BOUNCE_AXES:
            along = steps @ np.array(BOUNCE_AXES[d.motion])
            assert (np.abs(along) == speed).all() and (np.abs(steps).sum(1) == speed).all()
            assert np.count_nonzero(np.diff(np.sign(along))) == 1  # one bounce
        else:
            assert (steps == 0).all()
        low, high = centre_range()
        assert min(track.x + track.y) >= low and max(track.x + track.y) <= high


@pytest.mark.parametrize("frames", [7, 8])
def test_colour_switches_at_the_middle_and_size_grows_linearly(frames):
    change = Clip(ClipDescription("circle", "red", "large", COLOUR_CHANGE, None, "blue"), 12, 12)
    assert trajectory(change, 24, frames).colour == ("red",) * (frames // 2) + ("blue",) * (frames - frames // 2)
    assert trajectory(change, 24, frames).half_width == (0.8 * 24 / 6,) * frames  # the shapes world's large size
    growing = trajectory(Clip(ClipDescription("square", "red", None, "growing"), 12, 12), 24, frames).half_width
    shrinking = trajectory(Clip(ClipDescription("square", "red", None, "shrinking"), 12, 12), 24, frames).half_width
    small, large = 0.55 * 24 / 6, 0.8 * 24 / 6
    assert growing == pytest.approx([small + (large - small) * t / (frames - 1) for t in range(frames)], abs=1e-12)
    assert shrinking == growing[::-1] and growing[0] == small and growing[-1] == large


def test_rendered_frames_move_exactly_as_the_trajectory(clean):
    clips, videos, _ = clean
    coverage = (videos.sum(-1) + 3) / 2  # (N, H, W, T): the colours' channels at 1 add up to the coverage x #channels
    pixel_centres = torch.arange(24, dtype=torch.float64) + 0.5
    for clip, frames in zip(clips, coverage.double()):
        if clip.description.motion not in (*DIRECTIONS, *BOUNCE_AXES):
            continue
        mass = frames.sum((0, 1))  # (T,): the same object in every frame
        centroid_x = torch.einsum("hwt,w->t", frames, pixel_centres) / mass
        centroid_y = torch.einsum("hwt,h->t", frames, pixel_centres) / mass
        track = trajectory(clip)
        assert torch.allclose(centroid_x, torch.tensor(track.x, dtype=torch.float64), atol=1e-4)  # mirror-symmetric
        assert torch.allclose(centroid_y - centroid_y[0], torch.tensor(track.y, dtype=torch.float64) - track.y[0],
                              atol=1e-4)


@pytest.mark.parametrize("resolution, frames", [(24, 8), (16, 3), (32, 12)])
def test_tracks_of_clean_renders_are_the_spec(resolution, frames):
    clips = sample_clips(32, resolution, resolution, frames)
    assert track_objects(render_clips(clips, resolution, frames)) == [trajectory(c, resolution, frames) for c in clips]


def test_read_motion_of_every_motion_and_of_a_still_track():
    for clip in sample_clips(200, 5):
        d = clip.description
        assert read_motion(trajectory(clip), 24) == (d.motion, SPEEDS[d.speed] if d.speed else 0.0)
    still = Track((8.0,) * 8, (9.0,) * 8, (2.2,) * 8, ("red",) * 8, ("circle",) * 8)
    assert read_motion(still, 24) == (STILL, 0.0)
    diagonal = replace(still, x=tuple(8.0 + t for t in range(8)), y=tuple(5.0 + 2 * t for t in range(8)))
    assert read_motion(diagonal, 24) == ("moving down", pytest.approx(5**0.5))


def test_caption_parse_round_trip_on_random_clips():
    clips = sample_clips(1000, 11)
    assert {c.description.motion for c in clips} == set(MOTIONS)
    tokenizer = Tokenizer(VOCABULARY)
    for clip in clips:
        text = caption(clip)
        assert parse_clip_caption(text) == clip.description
        assert parse_clip_caption("  " + text.upper() + " ") == clip.description
        assert tokenizer.unknown_words(text) == []
    assert caption(ClipDescription("circle", "red", "small", "moving right", "quickly")) == \
        "a small red circle moving right quickly"
    assert caption(ClipDescription("square", "blue", None, "shrinking")) == "a blue square shrinking"
    assert caption(ClipDescription("cross", "red", "large", COLOUR_CHANGE, None, "green")) == \
        "a large cross changing from red to green"
    words = {w for c in clips for w in caption(c).split()}
    assert words == set(VOCABULARY)


@pytest.mark.parametrize("text, problem", [
    ("a small red circle moving right", "not in the clip grammar"),
    ("a small red circle growing", "pass size=None"),
    ("a red circle moving left slowly", "unknown size 'None'"),
    ("a small red circle changing from red to blue", "colour before the shape"),
    ("a small circle changing from red to red", "different from colour"),
    ("a small circle growing", "names no colour"),
    ("a small purple circle moving up slowly", "not in the clip grammar"),
])
def test_parse_rejects_captions_outside_the_grammar(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_clip_caption(text)


def test_metrics_are_perfect_on_clean_renders(clean):
    clips, videos, captions = clean
    report = motion_report(videos, captions)
    assert {key: report[key] for key in MOTION_METRICS} == {
        "direction_correct": 1.0, "speed_error": 0.0, "colour_consistency": 1.0, "shape_consistency": 1.0,
        "size_consistency": 1.0, "motion_accuracy": 1.0}
    assert [r["motion_read"] for r in report["clips"]] == [c.description.motion for c in clips]


def test_metrics_drop_on_time_reversed_and_shuffled_videos(clean):
    clips, videos, captions = clean
    reversed_report = motion_report(videos.flip(3), captions)
    symmetric = np.mean([c.description.motion in (*BOUNCE_AXES, COLOUR_CHANGE) for c in clips])
    assert reversed_report["motion_accuracy"] == pytest.approx(symmetric)  # a reversed bounce is a bounce
    assert reversed_report["motion_accuracy"] < 0.5 and reversed_report["colour_consistency"] < 1
    opposite = {"moving left": "moving right", "growing": "shrinking"}
    for clip, row in zip(clips, reversed_report["clips"]):
        if clip.description.motion in opposite:
            assert row["motion_read"] == opposite[clip.description.motion]
    shuffled = motion_report(videos, captions[1:] + captions[:1])
    assert shuffled["motion_accuracy"] < 0.25 and shuffled["speed_error"] > 0.5
    assert shuffled["colour_consistency"] < 0.4 and shuffled["shape_consistency"] < 0.4


def test_metrics_tolerate_gaussian_noise(clean):
    _, videos, captions = clean
    noisy = videos + 0.2 * torch.randn(videos.shape, generator=torch.Generator().manual_seed(0))
    report = motion_report(noisy, captions)
    assert report["motion_accuracy"] >= 0.97 and report["speed_error"] <= 0.05
    assert min(report[key] for key in ("colour_consistency", "shape_consistency", "size_consistency")) >= 0.97


def test_dataset_batches_are_deterministic_in_seed_and_step():
    tokenizer = Tokenizer(VOCABULARY)
    data = VideoDataset(seed=4, tokenizer=tokenizer)
    x, conditioning = data.get_batch(7, 6)
    again, _ = VideoDataset(seed=4).get_batch(7, 6)
    assert x.shape == (6, 24, 24, 8, 3) and torch.equal(x, again)
    assert not torch.equal(x, data.get_batch(8, 6)[0]) and not torch.equal(x, VideoDataset(seed=5).get_batch(7, 6)[0])
    assert VideoDataset(seed=4).get_batch(7, 6)[1] == {} and data.tokenizer is tokenizer
    ids, mask = conditioning["text_ids"], conditioning["text_mask"]
    assert ids.shape == mask.shape == (6, 24) and ids.dtype == torch.long and mask.dtype == torch.bool
    captions = data.captions(7, 6)
    assert [tokenizer.decode(row) for row in ids] == captions
    assert mask.sum(1).tolist() == [len(c.split()) + 2 for c in captions]
    assert motion_report(x, captions)["motion_accuracy"] == 1.0
    small = VideoDataset(resolution=16, frames=4, seed=1).get_batch(0, 3)[0]
    assert small.shape == (3, 16, 16, 4, 3)


def test_bad_arguments_raise_errors_naming_the_fix():
    with pytest.raises(ValueError, match="resolution must be in"):
        VideoDataset(resolution=8)
    with pytest.raises(ValueError, match="frames must be at least 3"):
        VideoDataset(frames=2)
    with pytest.raises(ValueError, match="use frames <= 9 or a larger resolution"):
        VideoDataset(frames=10)
    with pytest.raises(ValueError, match="use text_length >= 11"):
        VideoDataset(tokenizer=Tokenizer(VOCABULARY), text_length=10)
    with pytest.raises(ValueError, match="valid motions are"):
        ClipDescription("circle", "red", "small", "spinning", "slowly")
    with pytest.raises(ValueError, match="pass speed=None"):
        ClipDescription("circle", "red", "small", COLOUR_CHANGE, "slowly", "blue")
    with pytest.raises(ValueError, match="only 'changing colour' clips have an end_colour"):
        ClipDescription("circle", "red", "small", "moving up", "slowly", "blue")
    with pytest.raises(ValueError, match=r"give one of \[\(2, 0\)\]"):
        Clip(ClipDescription("circle", "red", "small", "moving right", "quickly"), 5, 5, 1, 0)
    with pytest.raises(ValueError, match="leaves the range of centres"):
        trajectory(Clip(ClipDescription("circle", "red", "small", "moving right", "quickly"), 15, 10, 2, 0))
    with pytest.raises(ValueError, match="reach the border exactly"):
        trajectory(Clip(ClipDescription("circle", "red", "small", "bouncing up and down", "quickly"), 10, 9, 0, 2))
    with pytest.raises(ValueError, match=r"videos must have shape \(N, H, H, T, 3\)"):
        track_objects(torch.zeros(2, 3, 24, 24))
    with pytest.raises(ValueError, match="one caption per video"):
        motion_report(torch.zeros(2, 24, 24, 8, 3), ["a red circle growing"])
    with pytest.raises(ValueError, match="0 or more"):
        sample_clips(-1, 0)
