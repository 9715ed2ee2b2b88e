"""Tests for the command line: train a toy config into a folder, resume it, sample it, dispatch the demo."""
import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from minidit.__main__ import main
from minidit.checkpoint import load_checkpoint

TOY_CONFIG = """
[model]
type = "mlp"
dim = 2
hidden = 16
depth = 2
[data]
name = "toy"
target = "8gaussians"
[train]
batch_size = 64
lr = 1e-3
log_every = 2
sample_every = 2
time_sampler = "logit_normal"
progress = false
device = "cpu"
[sample]
n = 500
steps = 3
"""


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy.toml"
    path.write_text(TOY_CONFIG)
    return str(path)




def metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_checkpoint_metrics_and_png_then_resumes_exactly(toy, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    main(["train", toy, "--steps", "4", "--out", str(straight)])
    assert (straight / "checkpoint.pt").is_file()
    assert sorted(p.name for p in straight.glob("*.png")) == ["samples_0000002.png", "samples_0000004.png"]
    state = load_checkpoint(straight / "checkpoint.pt")
    assert state["step"] == 4 and state["metadata"]["model"]["type"] == "mlp"
    assert [r["step"] for r in metrics(straight)] == [2, 4]

    main(["train", toy, "--steps", "2", "--out", str(split)])
    main(["train", toy, "--steps", "4", "--out", str(split), "--resume", str(split / "checkpoint.pt")])
    resumed = load_checkpoint(split / "checkpoint.pt")
    assert resumed["step"] == 4
    assert metrics(split) == [dict(r, steps_per_s=s["steps_per_s"]) for r, s in zip(metrics(straight), metrics(split))]
    for name, value in state["model"].items():
        assert torch.equal(resumed["model"][name], value), name


def test_sample_draws_a_density_image_of_the_trained_model(toy, tmp_path):
    main(["train", toy, "--steps", "2", "--out", str(tmp_path)])
    out = tmp_path / "grid.png"
    main(["sample", str(tmp_path / "checkpoint.pt"), "--n", "300", "--steps", "2", "--method", "euler", "--out", str(out)])
    pixels = np.asarray(Image.open(out).convert("L")).astype(np.int64)[6:-6, 6:-6]  # inside save_grid's margin and frame
    assert pixels.shape == (128, 128)  # one histogram image at its own size
    assert pixels.max() == 255  # the densest bin is white
    assert (pixels > 0).sum() <= 300  # at most one lit pixel per sample


def test_demo_dispatches_to_minidit_demo(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "minidit.demo", types.SimpleNamespace(main=lambda: calls.append("demo")))
    main(["demo"])
    assert calls == ["demo"]


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "ckpt.pt", "--method", "rk45"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'rk45'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])


def test_user_errors_exit_with_a_message_instead_of_a_traceback(tmp_path, capsys):
    config = tmp_path / "typo.toml"
    config.write_text('[model]\ntype = "mlp"\ndim = 2\n[data]\nname = "toy"\n[train]\nbatchsize = 8\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(config)])
    assert exit_info.value.code == 2
    assert "did you mean 'batch_size'?" in capsys.readouterr().err
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit):
        main(["sample", str(tmp_path / "broken.pt")])
    assert "broken.pt" in capsys.readouterr().err


SHAPES_CONFIG = """
[model]
type = "dit"
input_size = 16
patch_size = 4
in_channels = 3
hidden_size = 32
depth = 1
num_heads = 2
num_classes = 35
[data]
name = "shapes"
resolution = 16
[train]
batch_size = 4
log_every = 1
progress = false
device = "cpu"
[sample]
n = 6
steps = 2
cfg = 3.0
"""


def test_class_conditional_dit_trains_and_samples_a_guided_grid(tmp_path):
    config = tmp_path / "shapes.toml"
    config.write_text(SHAPES_CONFIG)
    main(["train", str(config), "--steps", "1", "--out", str(tmp_path)])
    assert (tmp_path / "samples_0000001.png").is_file()
    out = tmp_path / "grid.png"
    main(["sample", str(tmp_path / "checkpoint.pt"), "--n", "4", "--out", str(out)])
    assert np.asarray(Image.open(out)).shape == (142, 142, 4)  # 2 x 2 grid of 16 x 16 shown at 64 px, gaps 2, margin 4
