"""Tests for ``python -m minidit eval``: tiny shapes checkpoints trained for 2 steps are sampled and measured: the
analyser's metrics without Inception weights, an FID line with a fake (random) FID Inception, and the refusals."""
import json
import math

import pytest
import torch

from minidit.__main__ import build_parser, main
from minidit.checkpoint import load_checkpoint
from minidit.config import build_model, parse_config
from minidit.data.analyser import class_accuracy
from minidit.fid import FIDInception, WEIGHTS_URL
from minidit.generate import sample_images

MODEL = {"type": "dit", "input_size": 16, "patch_size": 4, "in_channels": 3, "hidden_size": 32, "depth": 1,
         "num_heads": 2}
TRAIN = {"batch_size": 4, "log_every": 1, "sample_every": 0, "progress": False, "device": "cpu"}
KINDS = {  # (extra [model] keys, extra [data] keys) of each kind of shapes model
    "class": ({"num_classes": 35}, {}),
    "text": ({"text_conditioning": "gated_cross", "text_encoder": "scratch", "text_dim": 32, "text_encoder_depth": 1},
             {"captions": "varied", "max_objects": 2, "text_length": 40}),
    "unconditional": ({}, {"max_objects": 2}),
}


def toml(sections):
    """``{"model": {"depth": 1}, ...}`` as TOML text (strings, numbers and booleans are written as JSON writes them)."""
    return "\n".join(f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
                     for name, values in sections.items())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    paths = {}
    for kind, (model, data) in KINDS.items():
        config = folder / f"{kind}.toml"
        config.write_text(toml({"model": {**MODEL, **model}, "data": {"name": "shapes", "resolution": 16, **data},
                                "train": TRAIN, "sample": {"n": 6, "steps": 2, "cfg": 3.0}}))
        main(["train", str(config), "--steps", "2", "--out", str(folder / kind)])
        paths[kind] = str(folder / kind / "checkpoint.pt")
    return paths


def fake_inception_file(path):
    """An FID Inception checkpoint of random weights (features of order 1) at ``path``; returns the path as text."""
    torch.manual_seed(0)
    network = FIDInception()
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(network.state_dict(), path)
    return str(path)


def main_metrics(argv):
    """Run the command line on ``argv`` (input errors raise) and return what the command returned."""
    args = build_parser().parse_args(argv)
    return args.run(args)


def test_without_inception_a_shapes_model_reports_the_analyser_metrics(checkpoints, tmp_path, capsys):
    missing = str(tmp_path / "no_inception.pth")
    metrics = main_metrics(["eval", checkpoints["class"], "--n", "6", "--inception", missing])
    out, err = capsys.readouterr()
    assert out.startswith("analyser: class accuracy ") and "n 6, sampler heun ODE, 2 steps, NFE 4, cfg 3\n" in out
    assert f"note: FID not computed: no FID Inception checkpoint at {missing!r}: download it from {WEIGHTS_URL}" in err
    state = load_checkpoint(checkpoints["class"])  # the same samples, drawn here, read with generate's labels
    experiment = parse_config(state["metadata"], "stored", {"sample": {"n": 6}})
    model = build_model(experiment.model)
    model.load_state_dict(state["ema"])
    images = sample_images(model, experiment.train, experiment.sample)
    assert metrics == {"class accuracy": class_accuracy(images, torch.arange(6) % 35)}

    metrics = main_metrics(["eval", checkpoints["text"], "--n", "4", "--steps", "3", "--method", "euler", "--cfg", "1",
                            "--inception", missing])
    out = capsys.readouterr().out
    assert out.startswith("analyser: caption alignment ") and "n 4, sampler euler ODE, 3 steps, NFE 3, cfg 1\n" in out
    assert set(metrics) == {"caption alignment", "colour", "shape", "size", "position", "object", "count", "scene"}
    assert all(0 <= value <= 1 for value in metrics.values())


def test_without_inception_other_models_stop_with_one_line(checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", checkpoints["unconditional"], "--n", "2", "--inception", str(tmp_path / "none.pth")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: FID not computed: no FID Inception checkpoint") and "pretrained_models/" in err


def test_with_fid_inception_weights_it_prints_fid_with_protocol_n_sampler_and_nfe(checkpoints, tmp_path, capsys,
                                                                                   monkeypatch):
    monkeypatch.setenv("MINIDIT_CACHE", str(tmp_path / "cache"))
    argv = ["eval", checkpoints["class"], "--n", "3", "--steps", "1", "--method", "euler",
            "--inception", fake_inception_file(tmp_path / "fake_inception.pth")]
    metrics = main_metrics(argv)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("analyser: class accuracy ")
    assert lines[1].startswith(f"FID {metrics['fid']:.2f}: protocol clean (PIL bicubic to 299, FID Inception ")
    assert lines[1].endswith("n 3 samples vs 3 shapes images, sampler euler ODE, 1 steps, NFE 1, cfg 3")
    assert math.isfinite(metrics["fid"]) and metrics["fid"] > 0
    assert len(list((tmp_path / "cache" / "fid").glob("shapes-3-*.pt"))) == 1  # the reference statistics, cached


def test_points_and_frames_models_are_refused(tmp_path, capsys):
    config = tmp_path / "toy.toml"
    config.write_text(toml({"model": {"type": "mlp", "dim": 2, "hidden": 8, "depth": 1}, "data": {"name": "toy"},
                            "train": TRAIN, "sample": {"n": 4, "steps": 1}}))
    main(["train", str(config), "--steps", "1", "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tmp_path / "run" / "checkpoint.pt")])
    assert exit_info.value.code == 2 and "eval measures image models" in capsys.readouterr().err
