"""Tests for minidit.data.latents: a cache made with a tiny random AutoencoderKL holds exactly the codec's encodings,
serves deterministic batches in ImageArrayDataset's order, decodes samples, and refuses stale or missing files."""
import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from minidit.config import build_data, build_model, parse_config
from minidit.convert.vae import LatentCodec
from minidit.data.datasets import ImageArrayDataset, load_image_folder
from minidit.data.latents import (FORMAT, LatentDataset, add_cache_parser, cache_codec, cache_latents, load_cache)
from minidit import fid
from minidit.__main__ import build_parser, main
from minidit.checkpoint import load_checkpoint
from minidit.generate import decode_latents, sample_images
from minidit.validation import InputError

from test_cli_eval import fake_inception_file, toml
from test_convert_vae import tiny_vae


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae") / "sd-vae-ft-ema"
    tiny_vae().save_pretrained(folder)
    return folder


def pixels(n=10, size=16, seed=0, flip=False):
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8))
    return ImageArrayDataset(images, torch.arange(n) % 3, seed=5, flip=flip, num_classes=3)


@pytest.fixture(scope="module")
def cached(vae_folder, tmp_path_factory):
    data = pixels()
    out = tmp_path_factory.mktemp("cache") / "latents.pt"
    cache_latents(data, LatentCodec.from_pretrained(vae_folder), out, batch_size=4, source="ten random images")
    return data, out


def test_cache_holds_the_codecs_encoding_of_every_image_once(cached, vae_folder):
    data, out = cached
    cache = load_cache(out)
    assert not out.with_name(out.name + ".tmp").exists()  # written to a temporary file, then renamed
    index = cache["source_index"]
    assert sorted(index.tolist()) == list(range(10))  # batches 4 + 4 + 2: each image once, none of epoch 1
    with torch.no_grad():
        expected = LatentCodec.from_pretrained(vae_folder).encode(data.images[index].float() / 127.5 - 1)
    assert cache["latents"].dtype == torch.float16 and cache["latents"].shape == (10, 4, 8, 8)
    assert torch.equal(cache["latents"], expected.half())
    assert torch.equal(cache["labels"], data.labels[index]) and cache["num_classes"] == 3
    assert cache["vae"] == str(vae_folder) and cache["scaling_factor"] == pytest.approx(0.18215)
    assert cache["format"] == FORMAT and cache["source"] == "ten random images"


def test_get_batch_is_deterministic_and_uses_the_image_datasets_epoch_order(cached):
    _, out = cached
    first, again, other = LatentDataset(out, seed=3), LatentDataset(out, seed=3), LatentDataset(out, seed=4)
    pixel_order = ImageArrayDataset(torch.zeros(10, 3, 1, 1, dtype=torch.uint8), torch.zeros(10), seed=3)
    for step in (0, 1, 7):
        x, conditioning = first.get_batch(step, 4)
        y, repeated = again.get_batch(step, 4)
        assert torch.equal(x, y) and torch.equal(conditioning["y"], repeated["y"])
        assert np.array_equal(first.indices(step, 4), pixel_order.indices(step, 4))
        rows, row_conditioning = first.get_rows(step, 4, slice(1, 3))  # what one of two processes reads
        assert torch.equal(rows, x[1:3]) and torch.equal(row_conditioning["y"], conditioning["y"][1:3])
    x, conditioning = first.get_batch(0, 10)  # one epoch: a permutation of the cache, float32, unflipped
    order = torch.from_numpy(first.indices(0, 10))
    assert sorted(order.tolist()) == list(range(10)) and x.dtype == torch.float32
    assert torch.equal(x, first.latents[order].float()) and torch.equal(conditioning["y"], first.labels[order])
    assert not torch.equal(other.get_batch(0, 10)[0], x)


def test_config_builds_the_cache_and_samples_decode_through_its_vae(cached, vae_folder):
    _, out = cached
    data = build_data({"name": "latents", "path": str(out), "seed": 1})
    assert isinstance(data, LatentDataset) and data.num_classes == 3
    experiment = parse_config({"model": {"type": "dit", "input_size": 8, "in_channels": 4, "hidden_size": 32,
                                         "depth": 1, "num_heads": 2, "num_classes": 3},
                               "data": {"name": "latents", "path": str(out)}})
    samples = data.get_batch(0, 2)[0]
    images = decode_latents(experiment, samples)
    with torch.no_grad():
        expected = LatentCodec.from_pretrained(vae_folder).decode(samples).clamp(-1, 1)
    assert images.shape == (2, 3, 16, 16) and torch.allclose(images, expected, atol=1e-5)


def test_missing_stale_and_foreign_caches_name_the_cache_command(tmp_path, vae_folder):
    with pytest.raises(InputError, match=r"no latent cache there; make it once with `python -m minidit cache-latents"):
        build_data({"name": "latents", "path": str(tmp_path / "missing.pt")})
    (tmp_path / "junk.pt").write_bytes(b"not a cache")
    torch.save({"format": "minidit-latents-0", "latents": torch.zeros(1, 4, 2, 2)}, tmp_path / "old.pt")
    torch.save({"format": FORMAT, "latents": torch.zeros(2, 4, 2, 2), "labels": torch.zeros(3)}, tmp_path / "bad.pt")
    for name, problem in [("junk", "not a readable latent cache"), ("old", "format 'minidit-latents-0'"),
                          ("bad", "do not match")]:
        with pytest.raises(InputError, match=f"{problem}.*rebuild it with `python -m minidit cache-latents") as info:
            LatentDataset(tmp_path / f"{name}.pt")
        assert "\n" not in str(info.value)


def test_cache_refuses_flips_existing_files_and_a_missing_vae(cached, vae_folder, tmp_path):
    data, out = cached
    codec = LatentCodec.from_pretrained(vae_folder)
    with pytest.raises(InputError, match="set flip = false"):
        cache_latents(pixels(flip=True), codec, tmp_path / "flipped.pt")
    with pytest.raises(InputError, match="exists; delete it first or pass --overwrite"):
        cache_latents(data, codec, out)
    moved = tmp_path / "cache.pt"
    cache_latents(data, codec, moved, 4, vae_path=str(tmp_path / "no-vae"), limit=3)
    assert len(LatentDataset(moved)) == 3
    with pytest.raises(InputError, match=r"decode through the VAE at .*no-vae.*huggingface-cli download"):
        cache_codec(str(moved))


def image_folder(root, per_class=2, classes=("cat", "dog")):
    """``root/<class>/<i>.png``: random 20x24 RGB images, ``per_class`` of each class."""
    rng = np.random.default_rng(2)
    for label in classes:
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def cache_folder(tmp_path, vae_folder, root):
    """Run ``cache-latents`` on the folder ``root`` at 16x16 into ``tmp_path / "c.pt"``; returns the parsed args."""
    source = tmp_path / "source.toml"
    source.write_text(f'[data]\nname = "folder"\nroot = "{root}"\nresolution = 16\n')
    parser = argparse.ArgumentParser()
    add_cache_parser(parser.add_subparsers())
    args = parser.parse_args(["cache-latents", "--data", str(source), "--vae", str(vae_folder),
                              "--out", str(tmp_path / "c.pt"), "--device", "cpu"])
    args.run(args)
    return parser


def test_cache_command_encodes_a_configs_data_section(tmp_path, vae_folder, capsys):
    root = image_folder(tmp_path / "images")
    parser = cache_folder(tmp_path, vae_folder, root)
    data = LatentDataset(tmp_path / "c.pt")  # read from disk batch by batch (ImageFolderStream), in file order
    images, labels, _ = load_image_folder(root, 16)
    with torch.no_grad():
        expected = LatentCodec.from_pretrained(vae_folder).encode(images.float() / 127.5 - 1).half()
    assert torch.equal(data.latents, expected) and torch.equal(data.labels, labels)
    assert len(data) == 4 and data.class_names == ["cat", "dog"]
    assert json.loads(data.source)["name"] == "folder" and "4 latents (4, 8, 8)" in capsys.readouterr().out
    (tmp_path / "latent.toml").write_text(f'[data]\nname = "latents"\npath = "{tmp_path / "c.pt"}"\n')
    with pytest.raises(InputError, match="already a latent cache"):
        again = parser.parse_args(["cache-latents", "--data", str(tmp_path / "latent.toml"), "--out", "x.pt"])
        again.run(again)


def test_fid_of_a_folder_reads_evenly_spaced_files_and_a_latent_model_is_compared_with_its_source(tmp_path,
                                                                                                 vae_folder):
    root = image_folder(tmp_path / "images", per_class=3)
    images, _, _ = load_image_folder(root, 16)  # (6, 3, 16, 16) uint8, sorted by class, then file
    folder = {"name": "folder", "root": str(root), "resolution": 16, "flip": True}
    picked = fid.reference_images(folder, 3)  # files 0, 2 (rounded from 2.5) and 5 of 6: both classes
    assert torch.equal(picked, images[[0, 2, 5]].float() / 127.5 - 1)
    cache_folder(tmp_path, vae_folder, root)
    latents = {"name": "latents", "path": str(tmp_path / "c.pt")}
    assert fid.reference_section(latents) == {"name": "folder", "root": str(root), "resolution": 16}
    assert torch.equal(fid.reference_images(latents, 3), picked)


def test_eval_decodes_a_latent_models_samples_and_measures_them_against_the_source_images(tmp_path, vae_folder,
                                                                                           capsys, monkeypatch):
    monkeypatch.setenv("MINIDIT_CACHE", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "images")
    cache_folder(tmp_path, vae_folder, root)
    config = tmp_path / "latent_dit.toml"
    config.write_text(toml({
        "model": {"type": "dit", "input_size": 8, "patch_size": 4, "in_channels": 4, "hidden_size": 32, "depth": 1,
                  "num_heads": 2, "num_classes": 2},
        "data": {"name": "latents", "path": str(tmp_path / "c.pt")},
        "train": {"batch_size": 2, "log_every": 1, "sample_every": 0, "progress": False, "device": "cpu"},
        "sample": {"n": 3, "steps": 1, "method": "euler", "cfg": 1.0}}))
    main(["train", str(config), "--steps", "2", "--out", str(tmp_path / "run")])
    capsys.readouterr()
    weights = fake_inception_file(tmp_path / "fake_inception.pth")
    args = build_parser().parse_args(["eval", str(tmp_path / "run" / "checkpoint.pt"), "--n", "3",
                                      "--inception", weights])
    metrics = args.run(args)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"FID {metrics['fid']:.2f}: protocol clean")
    assert line.endswith("n 3 samples (latents decoded by the cache's VAE) vs 3 folder images, sampler euler ODE, "
                         "1 steps, NFE 1, cfg 1")
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")  # the same samples drawn here, decoded, measured
    experiment = parse_config(state["metadata"], "stored", {"sample": {"n": 3}})
    model = build_model(experiment.model)
    model.load_state_dict(state["ema"])
    decoded = decode_latents(experiment, sample_images(model, experiment.train, experiment.sample))
    assert decoded.shape == (3, 3, 16, 16)
    network = fid.FIDInception.from_file(weights)
    expected = fid.frechet_distance(*fid.statistics(fid.inception_features(decoded, network)),
                                    *fid.statistics(fid.inception_features(fid.reference_images(
                                        {"name": "folder", "root": str(root), "resolution": 16}, 3), network)))
    assert metrics["fid"] == pytest.approx(expected, rel=1e-6)
