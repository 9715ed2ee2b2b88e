"""The command line with text-to-image models: train a tiny captioned config, sample it with --prompt / --prompts,
and the behaviour for empty, too long and unknown prompts; config errors of the text keys."""
import pytest
import torch
from PIL import Image

from minidit.__main__ import main
from minidit.config import ConfigError, build_model, check_model, parse_config
from minidit.data.shapes import ShapesDataset
from minidit.text.conditioning import TextToImage

T2I_CONFIG = """
[model]
type = "{type}"
input_size = 16
patch_size = 4
in_channels = 3
depth = 2
{model}
text_encoder = "bidirectional"
[data]
name = "shapes"
resolution = 16
captions = "varied"
holdout = true
[train]
batch_size = 4
lr = 1e-3
log_every = 1
sample_every = 0
progress = false
device = "cpu"
[sample]
n = 2
steps = 2
"""
MODELS = {"dit": 'hidden_size = 32\nnum_heads = 2\ntext_conditioning = "gated_cross"', "mmdit": ""}


@pytest.fixture(scope="module", params=sorted(MODELS))
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    config = folder / "t2i.toml"
    config.write_text(T2I_CONFIG.format(type=request.param, model=MODELS[request.param]))
    main(["train", str(config), "--steps", "2", "--out", str(folder / "run")])
    return folder / "run" / "checkpoint.pt"


def test_prompt_and_prompt_file_give_one_sample_each(checkpoint, tmp_path, capsys):
    out = tmp_path / "one.png"
    main(["sample", str(checkpoint), "--prompt", "a small red circle at the top left", "--n", "3", "--out", str(out)])
    assert "3 samples" in capsys.readouterr().out and Image.open(out).size[0] > 16
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a small red circle at the top left\n\n  a big blue box in the middle  \n")
    main(["sample", str(checkpoint), "--prompts", str(prompts), "--cfg", "4", "--out", str(tmp_path / "two.png")])
    assert "2 samples, 2 heun steps, cfg 4.0" in capsys.readouterr().out  # one per non-blank line


def test_empty_long_and_unknown_prompts(checkpoint, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", str(checkpoint), "--prompt", "   ", "--out", out])
    assert exit_info.value.code == 2 and "--prompt is empty" in capsys.readouterr().err
    empty_file = tmp_path / "empty.txt"
    empty_file.write_text("\n \n")
    with pytest.raises(SystemExit):
        main(["sample", str(checkpoint), "--prompts", str(empty_file), "--out", out])
    assert "holds no prompt" in capsys.readouterr().err
    long = " and ".join(["a small red circle at the top left"] * 6)
    with pytest.raises(SystemExit):
        main(["sample", str(checkpoint), "--prompt", long, "--out", out])
    err = capsys.readouterr().err
    assert "tokens long but the model reads at most 40" in err and "--truncate" in err
    main(["sample", str(checkpoint), "--prompt", long, "--truncate", "--out", out])
    assert "cut to its first 38 tokens" in capsys.readouterr().err
    main(["sample", str(checkpoint), "--prompt", "a purple hexagon at the top", "--out", out])
    assert "'purple', 'hexagon' not in the model's vocabulary" in capsys.readouterr().err


def test_a_prompt_for_a_model_without_text_is_refused(tmp_path, capsys):
    config = tmp_path / "toy.toml"
    config.write_text('[model]\ntype = "mlp"\ndim = 2\nhidden = 8\ndepth = 1\n[data]\nname = "toy"\n'
                      '[train]\nbatch_size = 8\nprogress = false\ndevice = "cpu"\n[sample]\nn = 4\nsteps = 1\n')
    main(["train", str(config), "--steps", "1", "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit):
        main(["sample", str(tmp_path / "run" / "checkpoint.pt"), "--prompt", "a red circle", "--out", str(tmp_path / "x.png")])
    assert "reads no text" in capsys.readouterr().err


@pytest.mark.parametrize("model, problem", [
    ({"text_conditioning": "gated_cross"}, "[model] text_encoder: missing"),
    ({"text_encoder": "bidirectional"}, 'text_conditioning = "none"'),
    ({"text_conditioning": "gated_cross", "text_encoder": "gpt"}, "[model] text_encoder: got 'gpt'"),
    ({"text_conditioning": "cross", "text_encoder": "causal", "text_dim": 64}, "[model] text_dim: is set by text_encoder"),
    ({"text_conditioning": "cross", "text_encoder": "causal", "text_layer": "last"}, "[model] text_layer"),
    ({"kv_compression": {"ratio": 3}}, "ratio 3 does not divide the token grid 4x4"),
    ({"kv_compression": {"ratio": 2, "blocks": [7]}}, "blocks [7] do not exist"),
    ({"kv_compression": {"ratio": 2, "mode": "ave"}}, "kv_compression"),
    ({"text_conditioning": "cross", "text_encoder": "causal", "text_refiner": "collaborative"},
     '"collaborative" refines the features of two text encoders'),
    ({"text_refiner": "token"}, "[model] text_refiner: refines caption features"),
    ({"text_conditioning": "cross", "text_encoder": "causal", "text_refiner": "llm"}, "[model] text_refiner: got 'llm'"),
    ({"text_conditioning": "cross", "text_encoder": "hf"}, "[model] text_encoder_path: missing"),
    ({"text_conditioning": "cross", "text_encoder": "hf", "text_encoder_path": "m"}, "[model] text_max_length: missing"),
    ({"text_conditioning": "cross", "text_encoder": "causal", "text_encoder_path": "m"},
     '[model] text_encoder_path: is only for text_encoder = "hf"'),
])
def test_text_and_compression_keys_are_checked(model, problem):
    section = {"type": "dit", "input_size": 16, "patch_size": 4, "in_channels": 3, "hidden_size": 32, "depth": 2,
               "num_heads": 2, **model}
    with pytest.raises(ConfigError) as error:
        check_model(section, "t.toml")
    assert problem in str(error.value)


def test_captioned_data_and_model_must_agree():
    from minidit.config import check_data_fits_model

    raw = {"model": {"type": "dit", "input_size": 16, "patch_size": 4, "in_channels": 3, "hidden_size": 32, "depth": 1,
                     "num_heads": 2}, "data": {"name": "shapes", "resolution": 16, "captions": "varied"}}
    experiment = parse_config(raw, "t.toml")
    with pytest.raises(ConfigError, match="text_conditioning"):
        check_data_fits_model(build_model(experiment.model), ShapesDataset(16, captions="varied"), experiment)
    text_model = build_model({**raw["model"], "text_conditioning": "cross", "text_encoder": "bidirectional"})
    assert isinstance(text_model, TextToImage) and text_model.denoiser.config.text_dim == text_model.encoder.dim
    with pytest.raises(ConfigError, match="captions"):
        check_data_fits_model(text_model, ShapesDataset(16), experiment)


def test_text_to_image_cuts_the_batch_to_its_longest_caption():
    model = build_model({"type": "mmdit", "input_size": 16, "patch_size": 4, "in_channels": 3, "depth": 1,
                         "text_encoder": "bidirectional"})
    with torch.no_grad():
        for parameter in model.denoiser.parameters():  # leave the zero-init behind so the caption matters
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    ids, mask = model.encode_prompts(["a red circle at the top", "a big blue box at the bottom left"])
    assert ids.shape == (2, 40)
    x, t = torch.randn(2, 3, 16, 16), torch.full((2,), 0.5)
    length = int(mask.sum(1).max())
    torch.testing.assert_close(model(x, t, ids, mask), model(x, t, ids[:, :length], mask[:, :length]))
    assert not torch.allclose(model(x, t, ids, mask), model(x, t, ids.flip(0), mask.flip(0)))
