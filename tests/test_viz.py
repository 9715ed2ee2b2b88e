"""Tests for minidit.viz: grid layout and pixels, labels, the saved PNG, animations' frames, the slider's fallback."""
import io

import matplotlib

matplotlib.use("Agg")  # the tests run headless; minidit.viz itself selects no backend
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from minidit.viz import (GAP_COLOUR, animate_clips, animate_denoising, animate_particles_1d, animate_particles_2d,
                         animate_trajectories, grid_pixels, image_grid, save_grid, slider, static_mode, upscale_factor)


def gif_frames(image):
    """Frames of an ``IPython.display.Image`` GIF as RGB arrays, and their durations in ms."""
    gif = Image.open(io.BytesIO(image.data))
    frames, durations = [], []
    for k in range(gif.n_frames):
        gif.seek(k)
        durations.append(gif.info["duration"])
        frames.append(np.asarray(gif.convert("RGB")).astype(int))
    return frames, durations


def test_upscale_factor_is_the_smallest_integer_reaching_min_px():
    assert upscale_factor(16, 16, 64) == 4
    assert upscale_factor(28, 28, 64) == 3  # 84 px: 2 x 28 = 56 would be too small
    assert upscale_factor(5, 9, 64) == 13  # the smaller side decides
    assert upscale_factor(128, 128, 64) == 1  # never shrinks


def test_each_sample_pixel_becomes_an_exact_k_by_k_block():
    images = torch.rand(3, 3, 5, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    k, gap = 13, 2
    pixels = grid_pixels(images, nrow=3, min_px=64, gap=gap)
    expected = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    for i in range(3):
        left = gap + i * (7 * k + gap)
        sample = pixels[gap:gap + 5 * k, left:left + 7 * k]
        assert np.array_equal(sample, expected[i].repeat(k, axis=0).repeat(k, axis=1))


def test_separators_are_light_grey_between_black_and_white_samples():
    images = torch.stack([torch.full((3, 4, 4), -1.0), torch.full((3, 4, 4), 1.0)] * 2)  # black, white, black, white
    gap = 3
    pixels = grid_pixels(images, nrow=2, min_px=4, gap=gap)  # k = 1
    assert pixels.shape == (2 * (4 + gap) + gap, 2 * (4 + gap) + gap, 3)
    band = np.concatenate([pixels[:gap].reshape(-1, 3), pixels[:, 4 + gap:4 + 2 * gap].reshape(-1, 3)])
    assert (band == GAP_COLOUR).all()
    assert min(GAP_COLOUR) > 0 and max(GAP_COLOUR) < 255  # neither black nor white
    assert (pixels[gap:gap + 4, gap:gap + 4] == 0).all() and (pixels[gap:gap + 4, 2 * gap + 4:2 * gap + 8] == 255).all()


def test_layout_fills_rows_in_order_and_leaves_missing_cells_grey():
    images = torch.linspace(-1, 1, 5)[:, None, None, None].expand(5, 1, 2, 2)  # grey levels 0, 64, 128, 191, 255
    pixels = grid_pixels(images, nrow=3, min_px=2, gap=1)  # 2 rows of 3 cells, the sixth empty
    assert pixels.shape == (2 * 3 + 1, 3 * 3 + 1, 3)
    corners = [pixels[1 + 3 * (i // 3), 1 + 3 * (i % 3)].tolist() for i in range(6)]
    assert corners == [[v] * 3 for v in (0, 64, 128, 191, 255)] + [list(GAP_COLOUR)]


def test_value_range_zero_one_gives_the_same_pixels_as_minus_one_one():
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(grid_pixels(images, value_range=(0.0, 1.0)), grid_pixels(2 * images - 1))
    out_of_range = grid_pixels(torch.tensor([-3.0, 3.0]).reshape(2, 1, 1, 1), nrow=2, min_px=1)
    assert out_of_range[2, 2].tolist() == [0, 0, 0] and out_of_range[2, 5].tolist() == [255, 255, 255]  # clipped


def test_labels_sit_on_the_axes_at_the_cell_centres():
    images = torch.zeros(6, 3, 16, 16)
    fig = image_grid(images, nrow=3, row_labels=["red circle", "blue square"], col_labels=[1.0, 2.5, 4],
                     title="CFG sweep", xlabel="CFG scale", ylabel="class")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["red circle", "blue square"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2.5", "4"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("CFG scale", "class", "CFG sweep")
    assert ax.get_yticks().tolist() == [2 + 31.5, 2 + 66 + 31.5]  # 64-px cells after 2-px gaps
    assert np.array_equal(ax.images[0].get_array(), grid_pixels(images, 3))
    plt.close(fig)


def test_saved_png_contains_the_grid_pixel_for_pixel(tmp_path):
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    path = save_grid(images, tmp_path / "sub" / "grid.png", nrow=2, row_labels=["a", "b"], col_labels=["x", "y"],
                     title="title")
    png = np.asarray(Image.open(path).convert("RGB"))
    grid = grid_pixels(images, 2)
    height, width = grid.shape[:2]
    hits = [(y, x) for y in range(png.shape[0] - height + 1) for x in range(png.shape[1] - width + 1)
            if np.array_equal(png[y, x:x + width], grid[0]) and np.array_equal(png[y:y + height, x:x + width], grid)]
    assert len(hits) == 1
    top, left = hits[0]
    assert top > 20 and left > 5  # room for the title and column labels above, row labels on the left
    assert plt.get_fignums() == []  # save_grid closes its figure


@pytest.mark.parametrize("images, message", [
    (torch.zeros(3, 16, 16), r"shape \(N, C, H, W\)"),
    (torch.zeros(2, 2, 16, 16), "C = 1 .grey. or 3"),
    (torch.zeros(0, 3, 16, 16), "N >= 1"),
])
def test_wrong_image_shapes_raise_a_clear_error(images, message):
    with pytest.raises(ValueError, match=message):
        image_grid(images)
    with pytest.raises(ValueError, match=message):
        grid_pixels(images)


def test_bad_layout_arguments_raise_a_clear_error():
    images = torch.zeros(6, 3, 8, 8)
    with pytest.raises(ValueError, match="row_labels has 3 entries but the grid has 2"):
        image_grid(images, nrow=3, row_labels=["a", "b", "c"])
    with pytest.raises(ValueError, match="col_labels has 2 entries but the grid has 3"):
        image_grid(images, nrow=3, col_labels=["a", "b"])
    with pytest.raises(ValueError, match="nrow"):
        grid_pixels(images, nrow=0)
    with pytest.raises(ValueError, match="gap"):
        grid_pixels(images, gap=0)
    with pytest.raises(ValueError, match="value_range"):
        grid_pixels(images, value_range=(1.0, -1.0))
    plt.close("all")


def linear_paths(n=200, states=81, dim=2):
    """Particles on the linear path x_t = (1 - t) x0 + t eps, from data (t = 0) to noise (t = 1)."""
    generator = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(n, dim, generator=generator).sign() * 2, torch.randn(n, dim, generator=generator)
    times = torch.linspace(0, 1, states)
    return x0, times, (1 - times)[:, None, None] * x0 + times[:, None, None] * eps  # (K, N, dim)


def test_particle_animations_have_at_most_max_frames_and_hold_the_last(tmp_path):
    x0, times, positions = linear_paths(states=81, dim=1)
    image = animate_particles_1d({"linear": (times, positions), "linear again": (times, positions[..., 0])},
                                 colour_by=x0[:, 0], colour_label="x0", path=tmp_path / "one.gif", fps=10)
    frames, durations = gif_frames(image)
    assert len(frames) == 40 and durations == [100] * 39 + [1100]
    assert (tmp_path / "one.gif").read_bytes() == image.data
    assert np.abs(frames[0] - frames[-1]).sum() > 0  # the particles moved

    short = animate_particles_2d({"linear": (times[:5], positions[:5].expand(5, 200, 2))}, fps=5)
    assert gif_frames(short)[1] == [200] * 4 + [1200]  # fewer states than max_frames: one frame each


def test_two_d_animations_stay_small():
    x0, times, positions = linear_paths(n=1000, states=41)
    angle = torch.atan2(x0[:, 1], x0[:, 0])
    for image in [animate_particles_2d({name: (times, positions) for name in ["a", "b", "c"]}, angle, "angle"),
                  animate_trajectories({"ODE": (times, positions), "SDE": (times[:21], positions[::2])}, angle, "angle")]:
        assert image.data[:6] == b"GIF89a" and len(image.data) < 1_000_000


def test_denoising_frames_follow_the_states_in_order():
    states = 80
    levels = torch.linspace(-1, 1, states)  # state k: every sample a uniform grey
    images = levels[:, None, None, None, None].expand(states, 4, 3, 8, 8)
    image = animate_denoising(torch.linspace(1, 0, states), images, nrow=2, row_labels=["a", "b"],
                              col_labels=["x", "y"], xlabel="CFG scale", ylabel="class")
    frames, _ = gif_frames(image)
    shown = [round(i) for i in np.linspace(0, states - 1, 40)]
    ys, xs = np.nonzero((frames[0] != frames[-1]).all(-1))  # the samples: black in the first frame, white in the last
    y, x = int(np.percentile(ys, 25)), int(np.percentile(xs, 25))  # the middle of the top-left sample
    grey = [frame[y, x, 0] for frame in frames]
    expected = ((levels[shown] + 1) * 127.5).round()
    assert np.abs(np.array(grey) - expected.numpy()).max() <= 4  # 64-colour GIF palette


def test_clip_frames_play_in_order(tmp_path):
    frames = 6
    levels = torch.linspace(-1, 1, frames)  # frame k of every clip: a uniform grey
    clips = levels[None, None, None, :, None].expand(3, 8, 8, frames, 3)  # (N, H, W, T, C)
    image = animate_clips(clips, nrow=3, path=tmp_path / "clips.gif")
    shown, _ = gif_frames(image)
    assert len(shown) == frames and (tmp_path / "clips.gif").read_bytes() == image.data
    ys, xs = np.nonzero((shown[0] != shown[-1]).all(-1))
    y, x = int(np.percentile(ys, 25)), int(np.percentile(xs, 25))
    expected = ((levels + 1) * 127.5).round().numpy()
    assert np.abs(np.array([frame[y, x, 0] for frame in shown]) - expected).max() <= 4
    with pytest.raises(ValueError, match=r"\(N, H, W, T, C\)"):
        animate_clips(torch.zeros(3, 8, 8, 3))


def test_animation_inputs_are_checked():
    x0, times, positions = linear_paths(n=10, states=5)
    with pytest.raises(ValueError, match=r"times must have shape \(K,\) with K = 5"):
        animate_particles_2d({"a": (times[:4], positions)})
    with pytest.raises(ValueError, match=r"positions must have shape \(K, N, 2\)"):
        animate_particles_2d({"a": (times, positions[..., :1])})
    with pytest.raises(ValueError, match="return_trajectory=True"):
        animate_trajectories({"ODE": (None, None)})
    with pytest.raises(ValueError, match="same particles"):
        animate_particles_2d({"a": (times, positions), "b": (times, positions[:, :5])})
    with pytest.raises(ValueError, match=r"colour_by must have shape \(N,\) = \(10,\)"):
        animate_particles_2d({"a": (times, positions)}, colour_by=torch.zeros(9))
    with pytest.raises(ValueError, match=r"\(K, N, C, H, W\)"):
        animate_denoising(times, torch.zeros(5, 3, 8, 8))


def test_static_mode_reads_the_environment(monkeypatch):
    monkeypatch.delenv("MINIDIT_QUICK", raising=False)
    monkeypatch.delenv("MINIDIT_STATIC", raising=False)
    assert not static_mode()
    monkeypatch.setenv("MINIDIT_STATIC", "1")
    assert static_mode()
    monkeypatch.setenv("MINIDIT_STATIC", "0")
    monkeypatch.setenv("MINIDIT_QUICK", "1")
    assert static_mode()


def test_slider_falls_back_to_small_multiples_outside_jupyter(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIDIT_STATIC", "0")
    monkeypatch.setenv("MINIDIT_QUICK", "0")  # not static by environment: outside a kernel it is still static
    drawn = []

    def draw(ax, value):
        drawn.append(value)
        ax.plot([0, 1], [0, value])
        ax.set_xlabel("x")
        ax.set_ylabel("y")

    slider(draw, [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0], "CFG scale", path=tmp_path / "slider.png")
    assert drawn == [1.0, 2.0, 4.0, 8.0]  # four evenly spaced positions, both ends included
    assert Image.open(tmp_path / "slider.png").size[0] > 3 * Image.open(tmp_path / "slider.png").size[1]
    drawn.clear()
    slider(draw, [0.1, 0.5, 0.9], "t", static_values=[0.5])
    assert drawn == [0.5]
    with pytest.raises(ValueError, match="at least one value"):
        slider(draw, [], "t")
    plt.close("all")
