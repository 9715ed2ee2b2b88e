"""Tests for minidit.config: every shipped config builds, bad keys and types fail with the fix, toy data is deterministic."""
from pathlib import Path

import pytest
import torch

from minidit.config import ConfigError, SampleConfig, build_data, build_model, load_config, parse_config
from minidit.config_rules import NO_FIT, coerce, describe, device_problem
from minidit.generate import generate, points_to_image, sample_shape
from minidit.train import TrainConfig

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))
SYNTHETIC = ("toy", "shapes")


def test_there_are_configs():
    assert {p.stem for p in CONFIGS} >= {"toy_8gaussians", "shapes_dit_tiny", "cifar10_dit_s2", "imagenet64_dit_b2"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_builds_its_model_and_synthetic_data(path):
    experiment = load_config(path)
    assert isinstance(experiment.train, TrainConfig) and isinstance(experiment.sample, SampleConfig)
    small = experiment.data["name"] in SYNTHETIC and not path.stem.endswith("_gpu")
    if experiment.model.get("text_encoder") == "hf" and not Path(experiment.model["text_encoder_path"]).is_dir():
        with pytest.raises(FileNotFoundError, match="is not a folder; download the model once"):
            build_model(experiment.model, experiment.source)  # a local LM is needed; nothing is downloaded
        return
    with torch.device("cpu" if small else "meta"):  # the GPU-sized models are only checked, not allocated
        model = build_model(experiment.model, experiment.source)
    assert sum(p.numel() for p in model.parameters()) > 0
    if not small:
        return
    torch.manual_seed(0)
    data = build_data(experiment.data, experiment.source)
    x, model_kwargs = data.get_batch(0, 3)
    assert x.shape == (3, *sample_shape(model))
    if "y" in model_kwargs:
        assert model.config.num_classes == data.num_classes
    out = model(x, torch.full((3,), 0.5), **model_kwargs)
    assert out.shape == x.shape


def test_dit_preset_gives_the_papers_sizes():
    with torch.device("meta"):
        model = build_model({"type": "dit", "preset": "DiT-S/2", "input_size": 32, "in_channels": 3, "num_classes": 10})
    assert (model.config.depth, model.config.hidden_size, model.config.num_heads, model.config.patch_size) == (12, 384, 6, 2)


def test_mlp_builds_with_the_exact_parameter_count():
    model = build_model({"type": "mlp", "dim": 2, "hidden": 8, "depth": 2, "time_dim": 4})
    # time MLP 4*8+8 + 8*8+8, input 2*8+8, one hidden 8*8+8, output 8*2+2
    assert sum(p.numel() for p in model.parameters()) == 40 + 72 + 24 + 72 + 18


def write(tmp_path, text):
    path = tmp_path / "exp.toml"
    path.write_text('[model]\ntype = "mlp"\ndim = 2\n[data]\nname = "toy"\n' + text)
    return path


def test_unknown_train_key_names_it_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"exp\.toml, \[train\] warmup_step: unknown key; did you mean 'warmup_steps'\?"):
        load_config(write(tmp_path, "[train]\nwarmup_step = 10\n"))


def test_unknown_model_and_data_keys_fail_at_parse_time_and_when_built():
    with pytest.raises(ConfigError, match=r"<dict>, \[model\] hiden: unknown key; did you mean 'hidden'"):
        parse_config({"model": {"type": "mlp", "dim": 2, "hiden": 8}, "data": {"name": "toy"}})
    with pytest.raises(ConfigError, match=r"<dict>, \[data\] targte: unknown key; did you mean 'target'"):
        parse_config({"model": {"type": "mlp", "dim": 2}, "data": {"name": "toy", "targte": "rings"}})
    with pytest.raises(ConfigError, match=r"\[model\] hiden_size: unknown key; did you mean 'hidden_size'"):
        build_model({"type": "dit", "preset": "DiT-S/2", "hiden_size": 8})


def test_unknown_section_and_names(tmp_path):
    with pytest.raises(ConfigError, match=r"exp\.toml, \[trian\]: unknown section; did you mean 'train'"):
        load_config(write(tmp_path, "[trian]\nsteps = 1\n"))
    with pytest.raises(ConfigError, match=r"\[model\] type: got 'unet'; use one of 'mlp', 'dit'"):
        build_model({"type": "unet"})
    with pytest.raises(ConfigError, match=r"\[data\] name: got 'mnist'; use one of 'toy', 'shapes'"):
        build_data({"name": "mnist"})


def test_mistyped_values_fail_and_ints_widen_to_floats(tmp_path):
    with pytest.raises(ConfigError, match=r"\[train\] steps: got 'ten' \(str\); write an integer, like the default 1000"):
        load_config(write(tmp_path, '[train]\nsteps = "ten"\n'))
    with pytest.raises(ConfigError, match=r"\[train\] compile: got 1 \(int\); write a boolean"):
        load_config(write(tmp_path, "[train]\ncompile = 1\n"))
    train = load_config(write(tmp_path, "[train]\nlr = 1\nbetas = [0.9, 0.95]\n")).train
    assert train.lr == 1.0 and isinstance(train.lr, float) and train.betas == (0.9, 0.95)


def test_to_dict_round_trips():
    experiment = load_config(CONFIGS[0])
    again = parse_config(experiment.to_dict())
    assert again.to_dict() == experiment.to_dict()


def test_points_to_image_places_points_in_the_right_pixels():
    points = torch.tensor([[-0.75, 0.75], [-0.75, 0.75], [0.25, -0.25]])  # extent 1, 4x4 grid: cell width 0.5
    image = points_to_image(points, extent=1.0, resolution=4)[0, 0]
    expected = -torch.ones(4, 4)
    expected[0, 0] = 1.0  # top-left: x in [-1, -0.5], y in [0.5, 1], two points (the maximum)
    expected[2, 2] = 0.0  # x in [0, 0.5], y in [-0.5, 0]: one point, half the maximum
    assert torch.equal(image, expected)


def test_generate_converts_a_data_prediction_and_lands_where_the_straight_path_does():
    from minidit.toy import ToyMLP

    target = torch.tensor([1.5, -2.0])

    class PerfectDeltaModel(ToyMLP):  # the exact x0-prediction for data concentrated at one point
        def forward(self, x, t):
            return target.expand_as(x)

    train = TrainConfig(prediction="data")  # trained on [1e-3, 1 - 1e-3], so sampling runs over it too
    sample = SampleConfig(n=5, steps=3, method="euler", seed=4)
    samples = generate(PerfectDeltaModel(2), train, sample)
    noise = torch.randn(5, 2, generator=torch.Generator().manual_seed(4))
    # v = (x - x0) / t: Euler follows the straight line exactly, x(t) = x0 + (t / t_start) (x1 - x0)
    expected = target + (1e-3 / (1 - 1e-3)) * (noise - target)
    torch.testing.assert_close(samples, expected, rtol=0, atol=1e-5)


def test_types_come_from_the_annotations_also_for_none_tuple_and_dict_defaults():
    assert coerce([1, 0.5], tuple[float, float]) == (1.0, 0.5) and coerce([0.9], tuple[float, float]) is NO_FIT
    assert coerce({"m": 1}, dict[str, float]) == {"m": 1.0} and coerce({"m": "a"}, dict[str, float]) is NO_FIT
    assert coerce(2, int | None) == 2 and coerce(2.5, int | None) is NO_FIT and coerce(None, float | None) is None
    assert coerce(True, int) is NO_FIT and coerce(1, bool) is NO_FIT and coerce(3, float) == 3.0
    assert describe(tuple[float, float]) == "a list of 2 numbers" and describe(float | None) == "a number"
    with pytest.raises(ConfigError, match=r"<dict>, \[train\] time_eps: got 'small' \(str\); write a number$"):
        parse_config({"model": {"type": "mlp", "dim": 2}, "data": {"name": "toy"}, "train": {"time_eps": "small"}})
    with pytest.raises(ConfigError, match=r"\[model\] out_channels: got 2.5 \(float\); write an integer$"):
        build_model({"type": "dit", "out_channels": 2.5})


def test_time_eps_zero_only_where_training_and_sampling_are_finite_at_the_ends():
    base = {"model": {"type": "mlp", "dim": 2}, "data": {"name": "toy"}}
    assert parse_config({**base, "train": {"time_eps": 0}}).train.time_eps == 0.0  # velocity on the linear path
    with pytest.raises(ConfigError, match=r"\[train\] time_eps: 0 trains and samples at t = 0 and t = 1, where the "
                                          r"data prediction with 'none' weighting on the linear path divides by zero"):
        parse_config({**base, "train": {"time_eps": 0, "prediction": "data"}})


def test_devices_are_checked_against_this_machine():
    assert device_problem("auto") is None and device_problem("cpu") is None
    assert device_problem("tpu") == "'tpu' is not a device; use 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'"
    assert device_problem("meta") == "'meta' is not supported; use 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'"
    assert (device_problem("cuda") is None) == torch.cuda.is_available()
