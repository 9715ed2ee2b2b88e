"""The latent codec: a diffusers ``AutoencoderKL`` that turns images into the latents a latent DiT is trained on.

DiT denoises the 8x-downsampled, 4-channel latents of Stable Diffusion's KL autoencoder, multiplied by its scaling
factor 0.18215 so that they have roughly unit variance (LDM, Rombach et al., arXiv 2112.10752, Sec. 3 and App. G;
DiT, arXiv 2212.09748, Sec. 3: ``sd-vae-ft-ema``); ``decode`` undoes the scaling. diffusers is imported lazily
(``pip install minidit[hub]``) and the weights come from a local folder only. Used by notebooks/10_pretrained.ipynb.

Example:
    >>> codec = LatentCodec.from_pretrained("pretrained_models/sd-vae-ft-ema")
    >>> latents = codec.encode(images)        # (N, 3, 256, 256) in [-1, 1] -> (N, 4, 32, 32)
    >>> images = codec.decode(latents)        # (N, 3, 256, 256)
"""
from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from minidit.convert import require_diffusers
from minidit.convert.dit import WEIGHTS_FOLDER

VAE_URL = "https://huggingface.co/stabilityai/sd-vae-ft-ema"
VAE_FOLDER = f"{WEIGHTS_FOLDER}/sd-vae-ft-ema"


class LatentCodec(nn.Module):
    """Frozen ``AutoencoderKL``: ``encode`` images to scaled latents, ``decode`` them back.

    ``latents = (z - shift_factor) * scaling_factor`` with ``z`` the encoder's posterior mean (or a sample of it),
    both factors read from the VAE's config (0.18215 and none for ``sd-vae-ft-ema``).

    Args:
        vae: a diffusers ``AutoencoderKL``; its parameters are frozen and it is put in eval mode.
    """

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(vae.config.get("shift_factor") or 0.0)
        self.downsampling = 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> LatentCodec:
        """Load the ``AutoencoderKL`` saved in the local folder ``path`` (``config.json`` and its weights).

        Raises:
            FileNotFoundError: if the folder is missing, saying where the weights are published and where to put them.
            ImportError: if diffusers is not installed.
        """
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"no AutoencoderKL folder at {str(path)!r} (it needs config.json and the weights): download the files "
                f"of {VAE_URL}, e.g. `huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir {VAE_FOLDER}`, "
                f"and pass {VAE_FOLDER!r}; nothing downloads here")
        diffusers = require_diffusers()
        return cls(diffusers.AutoencoderKL.from_pretrained(path, torch_dtype=dtype))

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images ``(N, 3, H, W)`` in [-1, 1] -> scaled latents ``(N, latent_channels, H / f, W / f)``.

        Args:
            images: ``H`` and ``W`` divisible by the downsampling factor ``f`` (8 for Stable Diffusion's VAE).
            generator: ``None`` takes the posterior mean (deterministic); a generator draws a posterior sample,
                as DiT's ``train.py`` does.
        Raises:
            ValueError: for a wrong shape, a size not divisible by ``f``, or values outside [-1, 1].
        """
        channels = self.vae.config.in_channels
        if images.ndim != 4 or images.shape[1] != channels or images.shape[2] % self.downsampling \
                or images.shape[3] % self.downsampling:
            raise ValueError(f"images must have shape (N, {channels}, H, W) with H and W divisible by "
                             f"{self.downsampling}; got {tuple(images.shape)}")
        low, high = images.min().item(), images.max().item()
        if low < -1 - 1e-3 or high > 1 + 1e-3:
            raise ValueError(f"images must lie in [-1, 1]; got values in [{low:.3g}, {high:.3g}]. Map uint8 images "
                             "with x / 127.5 - 1 and [0, 1] images with 2 x - 1")
        posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        z = posterior.mean if generator is None else posterior.sample(generator)  # (N, latent_channels, h, w)
        return (z - self.shift_factor) * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents ``(N, latent_channels, h, w)`` -> images ``(N, 3, h f, w f)``, roughly in [-1, 1].

        Raises:
            ValueError: if ``latents`` do not have the VAE's ``latent_channels``.
        """
        channels = self.vae.config.latent_channels
        if latents.ndim != 4 or latents.shape[1] != channels:
            raise ValueError(f"latents must have shape (N, {channels}, h, w); got {tuple(latents.shape)}")
        z = latents.to(self.vae.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample
