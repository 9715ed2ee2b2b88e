"""Tests for minidit.demo: the tiny DiT's sample grid is labelled by shape, guidance scale and colour."""
import minidit.demo as demo
from minidit.data.shapes import COLOURS, SHAPES
from minidit.viz import save_grid


def test_tiny_dit_writes_one_labelled_grid_row_per_shape_and_scale(tmp_path, monkeypatch):
    calls = []

    def recording_save_grid(images, path, **kwargs):
        calls.append((images, kwargs))
        return save_grid(images, path, **kwargs)

    monkeypatch.setattr(demo, "save_grid", recording_save_grid)
    demo.tiny_dit(tmp_path, steps=2, cfg_scale=3.0)
    assert (tmp_path / "shapes_samples.png").is_file()
    [(images, kwargs)] = calls
    assert tuple(images.shape) == (2 * len(SHAPES) * len(COLOURS), 3, 16, 16)
    assert kwargs["nrow"] == len(COLOURS) and kwargs["col_labels"] == list(COLOURS)
    assert kwargs["row_labels"][:3] == ["circle, CFG 1", "circle, CFG 3", "square, CFG 1"]
    assert len(kwargs["row_labels"]) == 2 * len(SHAPES)
