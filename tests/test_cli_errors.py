"""Bad input through the command line: each one is a single line on stderr naming the key and the fix, exit code 2.

Most cases call ``minidit.__main__.main`` in-process (fast); three run ``python -m minidit`` in a subprocess to
prove the exit code, the absence of a traceback, and that ``--debug`` shows one.
"""
import subprocess
import sys

import pytest
import torch

from minidit.__main__ import main

MLP = '[model]\ntype = "mlp"\ndim = 2\nhidden = 8\ndepth = 1\n'
DIT = '[model]\ntype = "dit"\ninput_size = 16\npatch_size = 4\nin_channels = 3\nhidden_size = 32\ndepth = 1\nnum_heads = 2\n'
TOY = '[data]\nname = "toy"\n'
TRAIN = '[train]\nbatch_size = 8\nprogress = false\ndevice = "cpu"\n'


def toml(model: str = MLP, data: str = TOY, train: str = "", sample: str = "") -> str:
    """A small valid config with extra lines appended to each section."""
    return f"{model}{TOY if data is TOY else data}\n{TRAIN}{train}\n[sample]\nn = 4\nsteps = 2\n{sample}\n"


# (config text, the key the error must name)
CONFIGS = {
    "steps zero": (toml(train="steps = 0"), "[train] steps"),
    "steps text": (toml(train='steps = "ten"'), "[train] steps"),
    "batch size zero": (toml(train="batch_size = 0\n").replace("batch_size = 8\n", ""), "[train] batch_size"),
    "lr zero": (toml(train="lr = 0"), "[train] lr"),
    "lr negative": (toml(train="lr = -1e-3"), "[train] lr"),
    "lr infinite": (toml(train="lr = inf"), "[train] lr"),
    "weight decay negative": (toml(train="weight_decay = -0.1"), "[train] weight_decay"),
    "betas one value": (toml(train="betas = [0.9]"), "[train] betas"),
    "betas above one": (toml(train="betas = [0.9, 1.5]"), "[train] betas"),
    "grad clip negative": (toml(train="grad_clip = -1.0"), "[train] grad_clip"),
    "grad clip text": (toml(train='grad_clip = "big"'), "[train] grad_clip"),
    "ema decay above one": (toml(train="ema_decay = 1.5"), "[train] ema_decay"),
    "interpolant misspelt": (toml(train='interpolant = "lineer"'), "[train] interpolant"),
    "prediction unknown": (toml(train='prediction = "epsilon"'), "[train] prediction"),
    "weighting unknown": (toml(train='weighting = "snr"'), "[train] weighting"),
    "time sampler misspelt": (toml(train='time_sampler = "logit-normal"'), "[train] time_sampler"),
    "time sampler param text": (toml(train='time_sampler = "logit_normal"\ntime_sampler_params = { m = "a" }'),
                                "[train] time_sampler_params"),
    "time sampler scale negative": (toml(train='time_sampler = "logit_normal"\ntime_sampler_params = { s = -1.0 }'),
                                    "[train] time_sampler_params"),
    "time sampler param unknown": (toml(train="time_sampler_params = { q = 1.0 }"), "[train] time_sampler_params"),
    "time eps reversed band": (toml(train="time_eps = 0.6"), "[train] time_eps"),
    "time eps negative": (toml(train="time_eps = -0.1"), "[train] time_eps"),
    "time eps zero for noise": (toml(train='prediction = "noise"\ntime_eps = 0.0'), "[train] time_eps"),
    "seed negative": (toml(train="seed = -1"), "[train] seed"),
    "log every negative": (toml(train="log_every = -1"), "[train] log_every"),
    "out dir empty": (toml(train='out_dir = ""'), "[train] out_dir"),
    "precision unknown": (toml(train='precision = "fp16"'), "[train] precision"),
    "compile as int": (toml(train="compile = 1"), "[train] compile"),
    "device unknown": (toml(train="").replace('device = "cpu"', 'device = "tpu"'), "[train] device"),
    "device index missing": (toml(train="").replace('device = "cpu"', 'device = "cuda:99"'), "[train] device"),
    "time bins zero": (toml(train="time_bins = 0"), "[train] time_bins"),
    "train key misspelt": (toml(train="warmup_step = 10"), "[train] warmup_step"),
    "sample n zero": (toml(sample="").replace("n = 4", "n = 0"), "[sample] n"),
    "sample method unknown": (toml(sample='method = "rk4"'), "[sample] method"),
    "sample cfg negative": (toml(sample="cfg = -1.0"), "[sample] cfg"),
    "sample extent zero": (toml(sample="extent = 0.0"), "[sample] extent"),
    "model type unknown": (toml(model='[model]\ntype = "unet"\n'), "[model] type"),
    "model type missing": (toml(model="[model]\ndim = 2\n"), "[model] type"),
    "mlp dim missing": (toml(model='[model]\ntype = "mlp"\n'), "[model] dim"),
    "mlp hidden zero": (toml(model=MLP.replace("hidden = 8", "hidden = 0")), "[model] hidden"),
    "mlp time dim zero": (toml(model=MLP + "time_dim = 0\n"), "[model] time_dim"),
    "dit heads zero": (toml(model=DIT.replace("num_heads = 2", "num_heads = 0")), "[model] num_heads"),
    "dit patch zero": (toml(model=DIT.replace("patch_size = 4", "patch_size = 0")), "[model] patch_size"),
    "dit hidden zero": (toml(model=DIT.replace("hidden_size = 32", "hidden_size = 0")), "[model] hidden_size"),
    "dit heads do not divide": (toml(model=DIT.replace("num_heads = 2", "num_heads = 3")), "[model] num_heads"),
    "dit patch does not divide": (toml(model=DIT.replace("input_size = 16", "input_size = 30")), "[model] patch_size"),
    "dit out channels float": (toml(model=DIT + "out_channels = 2.5\n"), "[model] out_channels"),
    "dit qk norm unknown": (toml(model=DIT + 'qk_norm = "batchnorm"\n'), "[model] qk_norm"),
    "dit class dropout above one": (toml(model=DIT + "class_dropout = 2.0\n"), "[model] class_dropout"),
    "dit preset unknown": (toml(model='[model]\ntype = "dit"\npreset = "DiT-S/3"\n'), "[model] preset"),
    "dit style without preset": (toml(model=DIT + 'style = "Flag-DiT"\n'), "[model] style"),
    "dit rope odd head dim": (toml(model=DIT.replace("num_heads = 2", "num_heads = 16") + "rope = true\n"
                                   'pos_embed = "none"\n'), "[model] num_heads"),
    "dit pixart positions without sincos": (toml(model=DIT + 'pos_embed = "learned"\n'
                                                       "pos_embed_interpolation_scale = 2.0\n"),
                                            "[model] pos_embed_interpolation_scale"),
    "dit pixart position scale zero": (toml(model=DIT + "pos_embed_interpolation_scale = 0.0\n"),
                                       "[model] pos_embed_interpolation_scale"),
    "data name unknown": (toml(data='[data]\nname = "mnist"\n'), "[data] name"),
    "toy target misspelt": (toml(data='[data]\nname = "toy"\ntarget = "ringz"\n'), "[data] target"),
    "shapes resolution too small": (toml(data='[data]\nname = "shapes"\nresolution = 8\n'), "[data] resolution"),
    "shapes objects reversed": (toml(data='[data]\nname = "shapes"\nmin_objects = 3\nmax_objects = 2\n'),
                                "[data] max_objects"),
    "cifar10 root missing": (toml(data='[data]\nname = "cifar10"\n'), "[data] root"),
    "imagenet64 batch out of range": (toml(data='[data]\nname = "imagenet64"\nroot = "x"\nbatches = [0, 11]\n'),
                                      "[data] batches"),
    "section misspelt": (toml() + "[trian]\nsteps = 1\n", "[trian]"),
    "data section missing": (MLP + TRAIN, "[data]"),
    "not toml": ("[model\ntype = mlp\n", "not valid TOML"),
}


def run_main(argv: list[str], capsys) -> str:
    """Run the CLI in-process; assert exit code 2 and a one-line error without traceback; return the line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("text, key", CONFIGS.values(), ids=CONFIGS.keys())
def test_a_bad_config_value_is_one_line_naming_the_file_and_key(text, key, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text(text)
    err = run_main(["train", "bad.toml"], capsys)
    assert err.startswith("error: bad.toml") and key in err, err
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.toml"]  # refused before any work: no runs/ folder


def test_cuda_without_a_gpu_is_refused_before_any_work(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    config = tmp_path / "gpu.toml"
    config.write_text(toml().replace('device = "cpu"', 'device = "cuda"'))
    err = run_main(["train", str(config)], capsys)
    assert "[train] device: 'cuda' but no CUDA GPU is visible on this machine; use 'auto'" in err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    config = folder / "toy.toml"
    config.write_text(toml(train="log_every = 1"))
    main(["train", str(config), "--steps", "1", "--out", str(folder / "out")])
    return str(folder / "out" / "checkpoint.pt")


# (arguments after the checkpoint, what the error must name)
SAMPLE_ARGS = {
    "n zero": (["--n", "0"], "[sample] n"),
    "steps zero": (["--steps", "0"], "[sample] steps"),
    "cfg negative": (["--cfg", "-2"], "[sample] cfg"),
    "cfg nan": (["--cfg", "nan"], "[sample] cfg"),
    "device unknown": (["--device", "tpu"], "[train] device"),
    "out not png": (["--out", "x.txt"], "--out 'x.txt'"),
    "method unknown": (["--method", "rk45"], "argument --method: invalid choice: 'rk45'"),
    "n not a number": (["--n", "abc"], "argument --n: invalid int value: 'abc'"),
}


@pytest.mark.parametrize("args, key", SAMPLE_ARGS.values(), ids=SAMPLE_ARGS.keys())
def test_a_bad_sample_option_is_one_line_naming_it(args, key, checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = run_main(["sample", checkpoint, *args], capsys)
    assert key in err, err
    assert not list(tmp_path.glob("*.png"))


def test_bad_paths_are_one_line_naming_the_file(checkpoint, tmp_path, capsys):
    assert "config file 'missing.toml' does not exist" in run_main(["train", "missing.toml"], capsys)
    assert f"config file {str(tmp_path)!r} is a folder" in run_main(["train", str(tmp_path)], capsys)
    assert "checkpoint 'missing.pt' does not exist" in run_main(["sample", "missing.pt"], capsys)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    assert "broken.pt' cannot be read" in run_main(["sample", str(tmp_path / "broken.pt")], capsys)
    assert f"--out {str(tmp_path)!r}: is a folder" in run_main(["sample", checkpoint, "--out", str(tmp_path)], capsys)
    config = tmp_path / "toy.toml"
    config.write_text(toml())
    assert "[train] steps: got 0" in run_main(["train", str(config), "--steps", "0"], capsys)
    assert "[train] out_dir: got ''" in run_main(["train", str(config), "--out", ""], capsys)


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minidit", *args], capture_output=True, text=True, cwd=cwd,
                          env={"OMP_NUM_THREADS": "1", "PATH": ""}, timeout=120)


def test_a_real_process_exits_2_with_one_line_and_debug_shows_the_traceback(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(toml(train='interpolant = "lineer"'))
    result = run_cli("train", str(config), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (f"error: {config}, [train] interpolant: got 'lineer'; did you mean 'linear'? "
                             "use one of 'linear', 'gvp', 'vp', 'ddpm'\n")
    result = run_cli("sample", "ckpt.pt", "--out", "x.txt", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--out 'x.txt'" in result.stderr
    result = run_cli("train", str(config), "--debug", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" in result.stderr and "ConfigError" in result.stderr
