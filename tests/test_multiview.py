"""Tests for minidit.data.multiview: the rasteriser against closed forms, captions, the view reader and the dataset."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from minidit.data.multiview import (
    AMBIENT,
    COLOURS,
    EXTENT,
    LIGHT,
    ROUND_SHAPES,
    SHAPES,
    SPANS,
    SYMMETRY_PERIODS,
    VOCABULARY,
    MultiViewDataset,
    ViewSet,
    camera_coordinates,
    caption,
    mesh,
    parse_view_caption,
    rasterise,
    read_views,
    render_intensity,
    render_views,
    sample_views,
    view_azimuths,
    view_report,
)
from minidit.text.tokenizer import Tokenizer


def coverage(shape, azimuth, resolution, elevation, supersample=2):
    """Fraction of each pixel the mesh covers, ``(H, W)``: the rasteriser with every face showing 1."""
    vertices, faces = mesh(shape)
    camera = camera_coordinates(vertices, torch.tensor([azimuth]), elevation)
    return rasterise(camera, faces, torch.ones(1, len(faces)), resolution, supersample)[0]


def pixel_distances(resolution):
    """Nearest and farthest distance (world units) of each pixel's square from the image centre, ``(H, W)`` each."""
    edges = (torch.arange(resolution + 1) / resolution * 2 - 1) * EXTENT
    low, high = edges[:-1].abs(), edges[1:].abs()
    near = torch.where(edges[:-1] * edges[1:] < 0, 0.0, torch.minimum(low, high))  # the pixel straddles the axis
    far = torch.maximum(low, high)
    return (near[:, None] ** 2 + near**2).sqrt(), (far[:, None] ** 2 + far**2).sqrt()


@pytest.mark.parametrize("shape,volume", [
    ("cube", 1.1**3),
    ("pyramid", 1.4**2 * 1.2 / 3),
    ("prism", 3 * math.sqrt(3) / 4 * 0.8**2 * 1.1),  # equilateral triangle of circumradius 0.8, 1.1 high
    ("wedge", 1.4 * 1.1 / 2 * 1.0),
    ("cylinder", 12 / 2 * 0.6**2 * math.sin(2 * math.pi / 12) * 1.2),  # a 12-gon prism
    ("sphere", None),
])
def test_meshes_are_closed_outward_and_have_their_closed_form_volume(shape, volume):
    vertices, faces = mesh(shape)
    edges = [(int(f[i]), int(f[(i + 1) % 3])) for f in faces for i in range(3)]
    assert sorted(edges) == sorted((b, a) for a, b in edges)  # each edge once in each direction: closed, consistent
    corners = vertices[faces] - vertices.mean(dim=0)  # from a point inside the convex mesh
    signed = (corners[:, 0] * torch.linalg.cross(corners[:, 1], corners[:, 2])).sum(1) / 6  # tetrahedra's volumes
    assert torch.all(signed > 1e-6)  # every face counter-clockwise seen from outside
    if volume is None:  # the sphere lies between its inscribed (radius > 0.9 * 0.75) and circumscribed spheres
        assert 4 / 3 * math.pi * (0.9 * 0.75) ** 3 < signed.sum().item() < 4 / 3 * math.pi * 0.75**3
    else:
        assert signed.sum().item() == pytest.approx(volume, rel=1e-5)


def test_cube_head_on_covers_the_exact_square_with_its_lambert_shade():
    # 46 pixels across 2 * 1.15 world units: 0.05 per pixel, so the cube's 1.1-wide face is exactly 22 x 22 pixels
    covered = coverage("cube", 0.0, 46, elevation=0.0)
    square = torch.zeros(46, 46)
    square[12:34, 12:34] = 1
    assert torch.equal(covered, square)
    front_shade = AMBIENT + (1 - AMBIENT) * LIGHT[2].item()  # the face's normal is the camera's z axis
    grey = render_intensity("cube", [0.0], 46, elevation=0.0)[0]
    assert torch.allclose(grey, front_shade * square)


@pytest.mark.parametrize("azimuth,elevation", [(0.0, 25.0), (37.0, 60.0), (100.0, -10.0)])
def test_sphere_silhouette_lies_between_the_inscribed_and_circumscribed_discs(azimuth, elevation):
    vertices, faces = mesh("sphere")
    corners = vertices[faces]
    normals = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    inner = ((normals / normals.norm(dim=1, keepdim=True)) * corners[:, 0]).sum(1).min().item()  # nearest face plane
    outer = vertices.norm(dim=1).max().item()  # the vertices lie on the sphere
    assert outer == pytest.approx(0.75) and 0.9 * outer < inner < outer
    resolution = 64
    covered = coverage("sphere", azimuth, resolution, elevation, supersample=4)
    near, far = pixel_distances(resolution)
    assert torch.all(covered[far <= inner] == 1) and torch.all(covered[near >= outer] == 0)
    pixel_area = (2 * EXTENT / resolution) ** 2
    assert math.pi * inner**2 < covered.sum().item() * pixel_area < math.pi * outer**2


def test_z_buffer_shows_the_nearer_face_whatever_the_face_order():
    # a large triangle at depth z_far and a small one at z_near in front of the image centre
    big = [(-1.0, -1.0), (1.0, -1.0), (0.0, 1.0)]
    small = [(-0.3, -0.3), (0.3, -0.3), (0.0, 0.3)]
    for z_small, z_big in [(0.5, -0.5), (-0.5, 0.5)]:
        vertices = torch.tensor([(x, y, z_big) for x, y in big] + [(x, y, z_small) for x, y in small])[None]
        for faces, values in [([[0, 1, 2], [3, 4, 5]], [0.25, 0.75]), ([[3, 4, 5], [0, 1, 2]], [0.75, 0.25])]:
            image = rasterise(vertices, torch.tensor(faces), torch.tensor([values]), 24)[0]
            centre, only_big = image[11:13, 11:13], image[19, 11:13]  # row 19: y = -0.62, below the small triangle
            assert torch.all(centre == (0.75 if z_small > z_big else 0.25)) and torch.all(only_big == 0.25)


def test_faces_seen_from_behind_are_culled():
    vertices = torch.tensor([[(-1.0, -1.0, 0.0), (1.0, -1.0, 0.0), (0.0, 1.0, 0.0)]])
    assert rasterise(vertices, torch.tensor([[0, 1, 2]]), torch.ones(1, 1), 16).sum() > 0
    assert rasterise(vertices, torch.tensor([[0, 2, 1]]), torch.ones(1, 1), 16).sum() == 0  # clockwise: a back face


@pytest.mark.parametrize("shape", SHAPES)
def test_a_turn_by_the_symmetry_period_gives_the_same_image_and_smaller_turns_do_not(shape):
    period = SYMMETRY_PERIODS[shape]
    same, half = render_intensity(shape, [17.3, 17.3 + period, 17.3 + period / 2], 24).split([2, 1])
    assert torch.allclose(same[0], same[1], atol=1e-5)
    assert (same[0] - half[0]).abs().max() > 0.2
    views = render_intensity(shape, list(range(period)), 24).flatten(1)  # every whole degree within a period
    distances = torch.cdist(views, views) + torch.eye(period) * 1e9
    assert distances.min() > 0.01  # a view tells its azimuth modulo the period


@pytest.mark.parametrize("shape", SHAPES)
def test_every_view_fits_in_the_image(shape):
    views = render_intensity(shape, list(range(0, 360, 15)), 24)
    border = torch.cat([views[:, 0], views[:, -1], views[:, :, 0], views[:, :, -1]], dim=1)
    assert torch.all(border == 0) and views.amax(dim=(1, 2)).min() > 0.5


def test_render_views_layout_colour_and_azimuths():
    specs = [ViewSet("wedge", "magenta", 90, 10.0), ViewSet("cube", "cyan", 360, 200.0)]
    views = render_views(specs, resolution=20, frames=3)
    assert views.shape == (2, 20, 20, 3, 3) and views.dtype == torch.float32
    assert views.min() == -1 and views.max() <= 1
    assert view_azimuths(specs[0], 3) == [10.0, 40.0, 70.0] and view_azimuths(specs[1], 3) == [200.0, 320.0, 440.0]
    for i, spec in enumerate(specs):
        grey = render_intensity(spec.shape, view_azimuths(spec, 3), 20)  # (T, H, W)
        colour = torch.tensor(COLOURS[spec.colour])
        assert torch.allclose(views[i], (grey[..., None] * colour).permute(1, 2, 0, 3) * 2 - 1)
    assert torch.all(views[0, ..., 1] == -1)  # magenta: no green anywhere


def test_caption_round_trip_on_random_specs_and_every_combination():
    specs = sample_views(500, 3) + [ViewSet(s, c, span) for s in SHAPES for c in COLOURS for span in SPANS]
    tokenizer = Tokenizer(VOCABULARY)
    for spec in specs:
        text = caption(spec)
        assert parse_view_caption(text) == dataclasses.replace(spec, azimuth=0.0)
        assert tokenizer.unknown_words(text) == []
    assert {s.shape for s in specs[:500]} == set(SHAPES) and {s.span for s in specs[:500]} == set(SPANS)
    assert caption(ViewSet("cube", "red", 90)) == "a red cube seen over a quarter turn"
    assert parse_view_caption("  A Red  CUBE seen from all sides ") == ViewSet("cube", "red", 360)


@pytest.mark.parametrize("text", [
    "a red cube", "a purple cube seen from all sides", "a red cube seen from all sides.",
    "red cube seen over a half turn", "a red cube seen over a third turn",
    "a red cube seen from all sides and a blue sphere seen from all sides",
])
def test_parse_rejects_text_outside_the_grammar(text):
    with pytest.raises(ValueError, match="cannot parse view caption"):
        parse_view_caption(text)


def test_sample_views_is_deterministic_and_checks_spans():
    assert sample_views(50, (1, 2)) == sample_views(50, [1, 2]) != sample_views(50, (2, 1))
    assert {s.span for s in sample_views(50, 0, spans=(180,))} == {180}
    assert all(0 <= s.azimuth < 360 for s in sample_views(200, 0))
    with pytest.raises(ValueError, match="spans"):
        sample_views(3, 0, spans=(45,))


def test_bad_specs_and_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        ViewSet("torus", "red")
    with pytest.raises(ValueError, match="colour"):
        ViewSet("cube", "purple")
    with pytest.raises(ValueError, match="span"):
        ViewSet("cube", "red", span=45)
    with pytest.raises(ValueError, match="resolution"):
        render_views([ViewSet("cube", "red")], resolution=8)
    with pytest.raises(ValueError, match="frames"):
        render_views([ViewSet("cube", "red")], frames=0)
    with pytest.raises(ValueError, match=r"\(N, H, W, T, 3\)"):
        read_views(torch.zeros(2, 3, 24, 24))
    with pytest.raises(ValueError, match="one caption per sample"):
        view_report(render_views([ViewSet("cube", "red")]), [])


@pytest.fixture(scope="module")
def clean():
    specs = sample_views(48, 11)
    return specs, render_views(specs, 24, 4), [caption(s) for s in specs]


def test_reader_is_exact_on_clean_renders(clean):
    specs, views, captions = clean
    for spec, row in zip(specs, read_views(views)):
        assert [(r.shape, r.colour) for r in row] == [(spec.shape, spec.colour)] * 4
        period = SYMMETRY_PERIODS[spec.shape]
        for reading, azimuth in zip(row, view_azimuths(spec, 4)):
            assert 0 <= reading.azimuth < period
            assert abs((reading.azimuth - azimuth + period / 2) % period - period / 2) <= 1.0
    report = view_report(views, captions)
    turning = sum(s.shape not in ROUND_SHAPES for s in specs)
    assert report["view_consistency"] == report["shape_accuracy"] == report["colour_accuracy"] == 1.0
    assert report["azimuth_pairs"] == 3 * turning and report["azimuth_error"] <= 1.0


def test_metrics_drop_on_shuffled_captions_and_wrong_colours(clean):
    specs, views, captions = clean
    shuffled = view_report(views, [captions[i] for i in np.random.default_rng(0).permutation(len(captions))])
    assert shuffled["view_consistency"] < 0.3 and shuffled["shape_accuracy"] < 0.5
    recoloured = [caption(dataclasses.replace(s, colour="white" if s.colour != "white" else "red")) for s in specs]
    report = view_report(views, recoloured)
    assert report["colour_accuracy"] == report["view_consistency"] == 0.0 and report["shape_accuracy"] == 1.0


def test_azimuth_error_catches_views_in_the_wrong_order_and_the_wrong_span():
    specs = [ViewSet("wedge", "red", 360, 12.0), ViewSet("prism", "green", 360, 50.0)]
    views, captions = render_views(specs, 24, 4), [caption(s) for s in specs]
    # reversed: turns of -90 degrees instead of +90, off by 180 (wedge) and by 180 mod 120 = 60 (prism)
    assert view_report(views.flip(3), captions)["azimuth_error"] == pytest.approx((180 + 60) / 2, abs=1.0)
    assert view_report(views, captions)["azimuth_error"] <= 1.0
    quarter = [caption(dataclasses.replace(s, span=90)) for s in specs]  # expects 22.5-degree turns, sees 90
    assert view_report(views, quarter)["azimuth_error"] == pytest.approx((67.5 + 52.5) / 2, abs=1.0)
    assert view_report(views, quarter)["view_consistency"] == 1.0  # the span is not part of consistency


def test_round_shapes_are_skipped_by_the_azimuth_metric():
    views = render_views([ViewSet("sphere", "red"), ViewSet("cylinder", "blue", 90)], 24, 4)
    captions = ["a red sphere seen from all sides", "a blue cylinder seen over a quarter turn"]
    report = view_report(views.flip(3), captions)
    assert report["view_consistency"] == 1.0 and report["azimuth_pairs"] == 0 and math.isnan(report["azimuth_error"])


def test_metrics_are_robust_to_gaussian_noise(clean):
    specs, views, captions = clean
    noisy = views + 0.2 * torch.randn(views.shape, generator=torch.Generator().manual_seed(0))
    report = view_report(noisy, captions)
    assert report["view_consistency"] == 1.0 and report["azimuth_error"] < 2.0


def test_dataset_batches_are_deterministic_in_seed_and_step():
    data = MultiViewDataset(resolution=16, frames=3, seed=5)
    x, conditioning = data.get_batch(7, 6)
    assert x.shape == (6, 16, 16, 3, 3) and conditioning == {} and data.tokenizer is None
    assert torch.equal(x, MultiViewDataset(resolution=16, frames=3, seed=5).get_batch(7, 6)[0])
    assert not torch.equal(x, data.get_batch(8, 6)[0])
    assert not torch.equal(x, MultiViewDataset(resolution=16, frames=3, seed=6).get_batch(7, 6)[0])
    specs = data.specs(7, 6)
    assert data.captions(7, 6) == [caption(s) for s in specs]
    assert torch.equal(x, render_views(specs, 16, 3))


def test_dataset_tokenizer_path():
    tokenizer = Tokenizer(VOCABULARY)
    data = MultiViewDataset(seed=1, tokenizer=tokenizer, text_length=12)
    x, conditioning = data.get_batch(0, 5)
    ids, mask = conditioning["text_ids"], conditioning["text_mask"]
    assert ids.shape == mask.shape == (5, 12) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert [tokenizer.decode(row) for row in ids] == data.captions(0, 5)
    assert torch.equal(mask, ids != 0) and data.tokenizer is tokenizer
    with pytest.raises(ValueError, match="text_length >= 10"):
        MultiViewDataset(tokenizer=tokenizer, text_length=9)  # "a magenta cylinder seen over a quarter turn" + 2
