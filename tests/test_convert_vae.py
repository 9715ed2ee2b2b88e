"""LatentCodec on a tiny random diffusers AutoencoderKL saved to and loaded from a temporary folder (no download)."""
from __future__ import annotations

import sys

import pytest
import torch

from minidit.convert.vae import LatentCodec

SD_SCALE = 0.18215


def tiny_vae(**config):
    diffusers = pytest.importorskip("diffusers")  # a dev dependency: installed wherever the tests run
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=16, **config).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    vae = tiny_vae()
    folder = tmp_path_factory.mktemp("vae") / "sd-vae-ft-ema"
    vae.save_pretrained(folder)
    return vae, folder


def images(n=2, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_round_trip_applies_the_scaling_factor(saved):
    vae, folder = saved
    codec = LatentCodec.from_pretrained(folder)
    assert codec.scaling_factor == pytest.approx(SD_SCALE) and codec.shift_factor == 0 and codec.downsampling == 2
    x = images()
    with torch.no_grad():
        latents = codec.encode(x)
        mean = vae.encode(x).latent_dist.mean  # (2, 4, 8, 8), unscaled
        decoded = codec.decode(latents)
        expected = vae.decode(mean).sample
    assert latents.shape == (2, 4, 8, 8) and decoded.shape == x.shape
    assert (latents - SD_SCALE * mean).abs().max() < 1e-6
    assert (decoded - expected).abs().max() < 1e-5
    assert not any(p.requires_grad for p in codec.parameters()) and not codec.vae.training


def test_posterior_samples_and_shift(tmp_path):
    vae = tiny_vae(scaling_factor=1.5, shift_factor=0.1)
    vae.save_pretrained(tmp_path / "vae")
    codec = LatentCodec.from_pretrained(tmp_path / "vae")
    x = images()
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean
        latents = codec.encode(x)
        drawn = [codec.encode(x, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
        assert (codec.decode(latents) - vae.decode(mean).sample).abs().max() < 1e-5
    assert (latents - 1.5 * (mean - 0.1)).abs().max() < 1e-6
    assert torch.equal(drawn[0], drawn[1]) and (drawn[0] - latents).abs().max() > 1e-3


def test_errors(saved, tmp_path, monkeypatch):
    _, folder = saved
    with pytest.raises(FileNotFoundError, match=r"stabilityai/sd-vae-ft-ema.*pretrained_models/sd-vae-ft-ema"):
        LatentCodec.from_pretrained(tmp_path / "missing")
    codec = LatentCodec.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"\[-1, 1\].*127.5"):
        codec.encode((images() + 1) * 127.5)
    with pytest.raises(ValueError, match="divisible by 2"):
        codec.encode(images(size=15))
    with pytest.raises(ValueError, match=r"\(N, 4, h, w\)"):
        codec.decode(torch.zeros(1, 3, 8, 8))
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if diffusers were not installed
    with pytest.raises(ImportError, match=r"pip install minidit\[hub\]"):
        LatentCodec.from_pretrained(folder)
