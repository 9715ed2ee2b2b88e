"""Frames models through the configs and the command line (Lumina-T2X, arXiv 2405.05945: any modality as frames
[H, W, T, C]): the toy configs build the notebook's model and data, a tiny joint model trains, resumes exactly (its
text encoder included) and samples a PNG and a GIF, and bad configs and prompts give one-line errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minidit.__main__ import main
from minidit.checkpoint import load_checkpoint
from minidit.config import (ConfigError, build_data, build_model, check_data_fits_model, load_config, parse_config,
                            use_model_tokenizer)
from minidit.config_rules import LONGEST_FRAMES_CAPTION
from minidit.data import audio, multiview, video
from minidit.data.modalities import ImageFrames, JointFrames, frames_tokenizer
from minidit.generate import clips_sheet, clips_to_images, default_prompts, generate, prompt_frame_sizes
from minidit.text.conditioning import TextToImage
from minidit.viz import grid_pixels

CONFIGS = Path(__file__).parents[1] / "configs"
BENCH = Path(__file__).parents[1] / "bench"
TINY = """
[model]
type = "dit"
input_size = 16
patch_size = 4
in_channels = 3
hidden_size = 16
depth = 1
num_heads = 2
norm = "rmsnorm"
qk_norm = "rmsnorm"
rope = true
pos_embed = "none"
frames = {frames}
text_conditioning = "cross"
text_encoder = "scratch"
text_dim = 16
text_encoder_depth = 1
[data]
name = "{data}"
{data_keys}
[train]
batch_size = 3
lr = 1e-2
log_every = 1
progress = false
device = "cpu"
[sample]
n = 5
steps = 2
cfg = 2.0
"""
JOINT = ('modalities = ["image", "video", "multiview", "audio"]\nresolution = 16\nvideo_frames = 3\nviews = 2\n'
         'audio_frames = 2')
SIZES = {"image": (16, 16, 1), "video": (16, 16, 3), "multiview": (16, 16, 2), "audio": (32, 16, 2)}  # (H, W, T)


def tiny(tmp_path, frames="true", data="frames", data_keys=JOINT, name="tiny.toml"):
    path = tmp_path / name
    path.write_text(TINY.format(frames=frames, data=data, data_keys=data_keys))
    return str(path)


def metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDIT_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("name, modalities", [("video", ["video"]), ("multiview", ["multiview"]), ("audio", ["audio"]),
                                               ("joint", ["image", "video", "multiview", "audio"])])
def test_toy_configs_build_the_notebook_model_and_data(name, modalities):
    experiment = load_config(CONFIGS / f"frames_{name}.toml")
    model = build_model(experiment.model, experiment.source, text_length=experiment.data.get("text_length"))
    data = build_data(experiment.data, experiment.source)
    use_model_tokenizer(model, data)
    check_data_fits_model(model, data, experiment)  # the tokenizer check passes for the scratch encoder
    assert isinstance(model, TextToImage) and model.train_encoder and model.encoder.training
    config, encoder = model.denoiser.config, model.encoder.config
    assert (config.input_size, config.patch_size, config.depth, config.hidden_size) == (24, 4, 4, 64) and config.frames
    assert (config.norm, config.qk_norm, config.rope, config.pos_embed) == ("rmsnorm", "rmsnorm", True, "none")
    assert (encoder.dim, encoder.depth, encoder.num_heads, encoder.max_length) == (64, 1, 4, 24)
    assert all(p.requires_grad for p in model.encoder.parameters())
    assert model.encoder.tokenizer.words == frames_tokenizer().words == data.tokenizer.words
    assert isinstance(data, JointFrames) and data.names == modalities
    x, conditioning = data.get_batch(len(modalities) - 1, 2)  # the last modality's first batch
    assert x.shape == (2, *((32, 16) if modalities[-1] == "audio" else (24, 24)), 4, 3)
    assert conditioning["text_ids"].shape == (2, 24)
    assert all(c.startswith(f"{modalities[-1]}: ") for c in data.captions(len(modalities) - 1, 2))


@pytest.mark.parametrize("name", ["video", "joint"])
def test_gpu_configs_parse(name):
    experiment = load_config(CONFIGS / f"frames_{name}_gpu.toml")
    assert experiment.model["frames"] and experiment.train.precision == "bf16" and experiment.train.compile
    assert experiment.data["resolution"] == 64 and experiment.data["video_frames"] == 16


def test_the_longest_caption_of_any_modality_fits_the_shortest_text_length():
    tokenizer = frames_tokenizer()
    prefix = tokenizer.count("video: a") - tokenizer.count("a")  # the modality word and its colon
    assert prefix == 2
    # the generators check the longest caption of their whole grammar: video 11 tokens, multi-view 10
    video.VideoDataset(24, 4, tokenizer=tokenizer, text_length=LONGEST_FRAMES_CAPTION - prefix)
    with pytest.raises(ValueError, match="shorter than the longest caption"):
        video.VideoDataset(24, 4, tokenizer=tokenizer, text_length=LONGEST_FRAMES_CAPTION - prefix - 1)
    multiview.MultiViewDataset(24, 4, tokenizer=tokenizer, text_length=LONGEST_FRAMES_CAPTION - prefix - 1)
    sampled = [*ImageFrames(24).captions(0, 2000), *audio.AudioDataset(4).captions(0, 2000)]
    assert max(tokenizer.count(caption) for caption in sampled) + prefix < LONGEST_FRAMES_CAPTION


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    config = tiny(folder)
    main(["train", config, "--steps", "4", "--out", str(folder / "run")])  # one batch of each modality
    return config, folder / "run"


def test_train_writes_a_checkpoint_with_its_encoder_and_a_grid_of_every_modality(joint_run):
    _, run = joint_run
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] == 4
    assert any(name.startswith("encoder.blocks.0.") for name in state["ema"])  # the trained encoder is saved
    experiment = parse_config(state["metadata"])
    prompts = default_prompts(experiment, 5)
    assert [p.split(": ")[0] for p in prompts] == ["image", "video", "multiview", "audio", "image"]
    unseen = build_data({**experiment.data, "seed": 1})  # the held-out stream: seed + 1
    assert prompts == [unseen.captions(k % 4, 2)[k // 4] for k in range(5)]
    grid = grid_pixels(torch.zeros(5 * 3, 3, 32, 16), nrow=3)  # 5 clips padded to (32, 16, 3), a row each
    sheet = np.asarray(Image.open(run / "samples_0000004.png"))
    assert sheet.shape[:2] == (grid.shape[0] + 2 * 2 + 8, grid.shape[1] + 2 * 2 + 8)  # one image: gaps 2, margin 4


def test_sample_writes_a_row_per_clip_and_a_gif(joint_run, tmp_path, capsys):
    _, run = joint_run
    out = tmp_path / "clips.png"
    main(["sample", str(run / "checkpoint.pt"), "--prompt", "Video: a small red circle moving right quickly",
          "--n", "2", "--out", str(out)])
    assert "2 clips (16, 16, 3)" in capsys.readouterr().out
    grid = grid_pixels(torch.zeros(2 * 3, 3, 16, 16), nrow=3)
    assert np.asarray(Image.open(out)).shape[:2] == (grid.shape[0] + 8, grid.shape[1] + 8)
    gif = Image.open(tmp_path / "clips.gif")
    assert gif.n_frames == 3  # one frame of the animation per frame of the clips
    main(["sample", str(run / "checkpoint.pt"), "--out", str(tmp_path / "default.png")])  # the config's prompts
    assert "5 clips (32, 16, 3)" in capsys.readouterr().out and (tmp_path / "default.gif").is_file()


def test_mixed_modalities_sample_in_one_batch_and_stay_zero_outside_their_frames(joint_run):
    _, run = joint_run
    state = load_checkpoint(run / "checkpoint.pt")
    experiment = parse_config(state["metadata"])
    model = build_model(experiment.model, text_length=experiment.data.get("text_length"))
    model.load_state_dict(state["ema"])
    prompts = ["audio: two short high beeps", "image: a large red cross at the center"]
    sizes = prompt_frame_sizes(experiment, prompts)
    assert sizes == [SIZES["audio"], SIZES["image"]]
    clips = generate(model, experiment.train, experiment.sample, prompts=prompts, frame_sizes=sizes)
    assert clips.shape == (5, 32, 16, 2, 3)  # n = 5 samples, prompts cycled, padded to the largest frames
    image = clips[1]
    assert bool((image[16:] == 0).all()) and bool((image[:, :, 1:] == 0).all())  # outside (16, 16, 1)
    assert bool((image[:16, :, :1] != 0).all()) and bool((clips[0] != 0).all())  # inside: sampled values
    assert not torch.equal(clips[2], clips[0])  # prompt 0 again from other noise
    frames = clips_to_images(clips)  # (N T, C, H, W): clip i's frame t at i T + t
    torch.testing.assert_close(frames[3], clips[1, :, :, 1].permute(2, 0, 1))
    assert clips_sheet(clips).shape == (1, 3, *grid_pixels(frames, nrow=2).shape[:2])


def test_resume_continues_exactly_with_the_encoder_restored(joint_run, tmp_path):
    config, straight = joint_run
    split = tmp_path / "split"
    main(["train", config, "--steps", "2", "--out", str(split)])
    halfway = load_checkpoint(split / "checkpoint.pt")
    main(["train", config, "--steps", "4", "--out", str(split), "--resume", str(split / "checkpoint.pt")])
    resumed, reference = load_checkpoint(split / "checkpoint.pt"), load_checkpoint(straight / "checkpoint.pt")
    assert [r["loss"] for r in metrics(split)] == [r["loss"] for r in metrics(straight)]
    encoder = [name for name in reference["model"] if name.startswith("encoder.")]
    assert encoder and any(not torch.equal(halfway["model"][n], reference["model"][n]) for n in encoder)  # it trains
    for key in ("model", "ema"):
        for name, value in reference[key].items():
            assert torch.equal(resumed[key][name], value), (key, name)


@pytest.mark.parametrize("frames, data, data_keys, problem", [
    ("false", "frames", JOINT, "[model] frames: reads images, but the frames data has frames (H, W, T, C)"),
    ("true", "shapes", 'resolution = 16\ncaptions = "varied"',
     "[model] frames: is true, but the shapes data has samples of shape (3, 16, 16), not frames"),
    ("true", "frames", 'modalities = ["vidoe"]', "[data] modalities: got 'vidoe'; did you mean 'video'?"),
    ("true", "frames", 'modalities = ["video", "video"]', "[data] modalities: got ['video', 'video']; list each"),
    ("true", "frames", 'modalities = ["video"]\nresolution = 16\nvideo_frames = 8',
     "[data] video_frames: is 8, too many for the resolution"),
    ("true", "frames", 'modalities = ["video"]\ntext_length = 12', "[data] text_length: got 12; use an integer >= 13"),
])
def test_frames_and_models_that_do_not_fit_give_one_line_errors(tmp_path, capsys, frames, data, data_keys, problem):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", tiny(tmp_path, frames, data, data_keys), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and problem in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize("change, problem", [
    ({"text_dim": None}, '[model] text_dim: missing; text_encoder = "scratch" trains a text encoder of width text_dim'),
    ({"text_dim": 18}, "[model] text_dim: is 18, but the scratch text encoder splits it into 4 heads"),
    ({"text_encoder": "bidirectional", "text_encoder_depth": None}, "[model] text_dim: is set by text_encoder"),
    ({"text_encoder": "bidirectional", "text_dim": None},
     '[model] text_encoder_depth: is only for text_encoder = "scratch"'),
    ({"text_encoder": "scrach"}, "[model] text_encoder: got 'scrach'; did you mean 'scratch'?"),
    ({"in_channels": 1}, "[model] in_channels: is 1, but the image frames have 3 channels; set in_channels = 3"),
    ({"patch_size": 3, "input_size": 24}, "[model] patch_size: is 3, but the image frames are 16x16"),
    ({"rope": False}, "[model] frames: places tokens by 3-D RoPE positions (t, h, w): set rope = true"),
    ({"text_conditioning": "none", "text_encoder": None, "text_dim": None, "text_encoder_depth": None},
     '[model] text_conditioning: the frames data has captions but the model reads none; set text_conditioning = '
     '"gated_cross" (or "cross") and text_encoder = "scratch"'),
])
def test_model_keys_of_frames_models_are_checked(tmp_path, change, problem):
    experiment = load_config(tiny(tmp_path))
    section = {key: value for key, value in {**experiment.model, **change}.items() if value is not None}
    with pytest.raises(ConfigError) as error:
        checked = parse_config({"model": section, "data": experiment.data}, "t.toml")
        data = build_data(checked.data)
        check_data_fits_model(build_model(checked.model, text_length=data.text_length), data, checked)
    assert problem in str(error.value)


def test_a_prompt_without_a_modality_is_refused(joint_run, tmp_path, capsys):
    _, run = joint_run
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", str(run / "checkpoint.pt"), "--prompt", "a small red circle moving right quickly",
              "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "names no modality of this model" in err and '"video:"' in err
    assert "not in the model's vocabulary" not in err


def test_config_cost_counts_a_frames_model_and_its_encoder(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_cost_bench", BENCH / "config_cost.py")
    cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cost)
    config = tiny(tmp_path, data_keys='modalities = ["video"]\nresolution = 16\nvideo_frames = 3')
    result = cost.main([config, "--peak-tflops", "100", "--mfu", "0.5"])
    experiment = load_config(config)
    model = build_model(experiment.model, text_length=experiment.data.get("text_length"))
    assert result["trainable_params_m"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
    assert result["text_encoder_params_m"] == pytest.approx(sum(p.numel() for p in model.encoder.parameters()) / 1e6)
    assert result["lm_share"] == 0 and result["activations_gib"] > 0
    assert "video (16, 16, 3, 3)" in capsys.readouterr().out  # T from the [data] section
    assert cost.main([config, "--frames", "3"])["step_tflop"] == result["step_tflop"]  # the same sample
    longer = cost.main([config, "--frames", "6"])
    assert 2 < longer["step_tflop"] / result["step_tflop"] < 4  # linear layers double, attention quadruples
    # twice the frame tokens; the caption's activations stay, and attention saves no (L, L) matrix
    assert result["activations_gib"] < longer["activations_gib"] < 2 * result["activations_gib"]
