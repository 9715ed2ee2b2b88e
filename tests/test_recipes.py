"""Every GPU recipe in configs/ parses, builds on the meta device with the parameter count its Estimates comment
states, and trains 2 steps on the CPU through ``python -m minidit train`` with its [model] shrunk (depth 1, width 64,
2 heads, batch 4) on a tiny fixture in its dataset's real on-disk format."""
import json
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from minidit.__main__ import main
from minidit.checkpoint import load_checkpoint
from minidit.config import build_model, load_config
from minidit.convert.vae import LatentCodec
from minidit.data.datasets import ImageArrayDataset
from minidit.data.latents import cache_latents

from test_convert_vae import tiny_vae

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

CONFIGS = Path(__file__).parents[1] / "configs"
# GPU recipe -> the fixture its smoke run reads (None: generated data, used as the recipe configures it)
RECIPES = {
    "cifar10_dit_b2": "cifar10", "imagenet64_dit_b2": "imagenet64", "imagenet64_dit_xl2": "imagenet64",
    "imagenet256_latent_dit_xl2": "latents", "shapes_t2i_cross_gpu": None, "shapes_t2i_gated_gpu": None,
    "shapes_t2i_mmdit_gpu": None, "shapes_t2i_kv_gpu": None, "frames_video_gpu": None, "frames_joint_gpu": None,
}
NAMED = {"cifar10_dit_b2", "imagenet64_dit_b2", "imagenet64_dit_xl2", "imagenet256_latent_dit_xl2"}  # issue 15


def test_every_gpu_recipe_is_listed():
    gpu = {path.stem for path in CONFIGS.glob("*_gpu.toml")}
    assert gpu | NAMED <= set(RECIPES), f"add {sorted(gpu | NAMED - set(RECIPES))} to RECIPES"
    assert all((CONFIGS / f"{name}.toml").is_file() for name in RECIPES)


def stated_params_m(name: str) -> float:
    """The trainable parameters, in millions, that the recipe's Estimates comment states."""
    text = (CONFIGS / f"{name}.toml").read_text()
    estimates = re.search(r"# Estimates \(python bench/config_cost\.py configs/[\w.]+\.toml[^)]*\):\n#\s+"
                          r"(?:DiT )?([\d.]+) M trainable parameters", text)
    assert estimates, f"configs/{name}.toml states no Estimates comment from bench/config_cost.py"
    return float(estimates.group(1))


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_builds_on_meta_with_the_stated_parameter_count(name):
    experiment = load_config(CONFIGS / f"{name}.toml")
    with torch.device("meta"):  # no memory: the full-size model is only counted
        model = build_model(experiment.model, experiment.source, pretrained_text=False,
                            text_length=experiment.data.get("text_length"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert abs(trainable / 1e6 - stated_params_m(name)) < 0.1


def write_cifar10(root: Path) -> None:
    """The python pickle batches: 4 images of 3072 bytes each per batch, and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 3, 7, 9]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}))


def write_imagenet64(root: Path) -> None:
    """The npz batches: channel-planar rows of 12288 bytes, labels 1..1000; one image in each of the 10 batches."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(1, 11):
        np.savez(root / f"train_data_batch_{i}.npz", data=rng.integers(0, 256, (1, 12288), dtype=np.uint8),
                 labels=np.array([i * 100]))


def write_latents(root: Path) -> Path:
    """A cache of 8 random 64x64 images encoded by a tiny random VAE (downsampling 2): latents (8, 4, 32, 32)."""
    tiny_vae().save_pretrained(root / "vae")
    images = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (8, 3, 64, 64), dtype=np.uint8))
    data = ImageArrayDataset(images, torch.arange(8) * 100, num_classes=1000)
    return cache_latents(data, LatentCodec.from_pretrained(root / "vae"), root / "latents.pt", 4)


def toml(section: dict) -> str:
    """A TOML table body (strings, numbers, booleans, lists and inline tables)."""
    def value(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)  # JSON's strings, numbers, booleans and lists are TOML
    return "".join(f"{key} = {value(v)}\n" for key, v in section.items())


def shrunk(name: str, folder: Path) -> Path:
    """The recipe with a tiny model, batch 4, no compile, 2 one-step samples, its data on the fixture."""
    raw = tomllib.loads((CONFIGS / f"{name}.toml").read_text())
    raw["model"].update(depth=1, hidden_size=64, num_heads=2)
    if "kv_compression" in raw["model"]:
        raw["model"]["kv_compression"]["blocks"] = [0]
    if raw["model"].get("text_encoder") == "scratch":
        raw["model"].update(text_dim=64, text_encoder_depth=1)
    if raw["data"]["name"] == "frames":  # fewer frames of 32x32: the same code at a CPU size
        raw["data"].update(resolution=32, video_frames=4, views=4, audio_frames=4)
    fixture = RECIPES[name]
    if fixture == "latents":
        raw["data"]["path"] = str(write_latents(folder / "latents"))
    elif fixture:
        {"cifar10": write_cifar10, "imagenet64": write_imagenet64}[fixture](folder / fixture)
        raw["data"]["root"] = str(folder / fixture)
    raw["train"].update(batch_size=4, compile=False, device="cpu", progress=False)
    raw["sample"].update(n=2, steps=1, method="euler")
    path = folder / f"{name}.toml"
    path.write_text("".join(f"[{section}]\n{toml(values)}\n" for section, values in raw.items()))
    return path


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_two_steps_on_the_cpu_shrunk(name, tmp_path):
    config = shrunk(name, tmp_path)
    main(["train", str(config), "--steps", "2", "--out", str(tmp_path / "run")])
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(p).all() for p in state["ema"].values() if p.is_floating_point())
    assert list((tmp_path / "run").glob("samples_*.png"))  # a latent model's samples were decoded to RGB
