"""A latent cache: a dataset encoded once through the VAE, so a latent DiT never runs the encoder while it trains.

A latent diffusion model denoises the scaled latents of a frozen autoencoder (LDM, Rombach et al., arXiv
2112.10752, Sec. 3; DiT, arXiv 2212.09748, Sec. 3: 256x256 images -> 32x32x4 latents of ``sd-vae-ft-ema``). The
encoder is fixed, so its posterior means are computed once: ``cache_latents`` encodes every image of a dataset with
``minidit.convert.vae.LatentCodec`` (latents already multiplied by the VAE's scaling factor) and writes ONE file
(float16 latents, labels, the VAE's folder and factors, the source), atomically; ``LatentDataset`` serves it with
the same deterministic ``get_batch(step, batch_size)`` as ``minidit.data.datasets`` (no flips: a flipped latent is
not the latent of the flipped image). Text features are not cached: captioned data is refused. Used by
configs/imagenet256_latent_dit_xl2.toml (``[data] name = "latents"``) and ``python -m minidit cache-latents``.

Example:
    >>> codec = LatentCodec.from_pretrained("pretrained_models/sd-vae-ft-ema")
    >>> cache_latents(image_folder("data/imagenet/train", 256), codec, "data/imagenet256_latents.pt", 64)
    >>> latents, conditioning = LatentDataset("data/imagenet256_latents.pt").get_batch(0, 256)  # (256, 4, 32, 32)
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from minidit.convert.vae import VAE_FOLDER, LatentCodec
from minidit.data import datasets
from minidit.data.datasets import ImageArrayDataset
from minidit.validation import InputError

FORMAT = "minidit-latents-1"  # the "format" entry of a cache; a file without it is refused


def cache_command_line(out: str | os.PathLike = "FILE") -> str:
    """The command that writes the cache ``out`` (what every error about a missing or stale cache says to run)."""
    return f"python -m minidit cache-latents --data SOURCE.toml --vae {VAE_FOLDER} --out {out}"


@torch.no_grad()
def cache_latents(data: Any, codec: LatentCodec, out_path: str | os.PathLike, batch_size: int = 64, *,
                  vae_path: str | None = None, source: str = "", device: torch.device | str = "cpu",
                  limit: int | None = None, overwrite: bool = False, progress: bool = False) -> Path:
    """Encode every image of ``data`` once through ``codec`` (posterior means) and write the cache file.

    The images are taken as batches ``0, 1, ...`` of ``data.get_batch``, whose first ``len(data)`` positions are the
    epoch-0 permutation: each image once. The file (``torch.save``, read with ``weights_only=True``) holds
    ``latents`` ``(N, C, h, w)`` float16, ``labels`` ``(N,)`` long (or ``None``), ``num_classes``, ``class_names``,
    ``source_index`` (each latent's index in ``data``, when it has ``indices``), ``vae``, ``scaling_factor``,
    ``shift_factor``, ``source`` and ``format``; it is written to ``<out>.tmp`` and renamed, so a cut-off run leaves no
    half file.

    Args:
        data: any object with ``len`` and ``get_batch(step, batch_size) -> (images (B, 3, H, W) in [-1, 1], {"y"})``.
        codec: the VAE; moved to ``device``.
        vae_path: the VAE's local folder, stored for decoding samples (default: the folder ``codec`` was loaded from).
        source: a description of ``data`` stored with the latents (the CLI stores its ``[data]`` section).
        limit: encode only the first ``limit`` images.
        overwrite: replace an existing ``out_path``.
    Raises:
        InputError: for data with flips, captions or no ``len``, an existing file without ``overwrite``, or no VAE path.
    """
    out = Path(out_path)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: exists; delete it first or pass --overwrite (a cache is rebuilt, never appended to)")
    vae_path = vae_path or codec.vae.config.get("_name_or_path")
    if not vae_path:
        raise InputError("the cache must name the VAE's folder to decode samples later; pass vae_path=...")
    if getattr(data, "flip", False):
        raise InputError("the data flips images at random, but the cache holds one latent per image; set flip = false "
                         "in the source's [data] section")
    if not hasattr(data, "__len__"):
        raise InputError(f"{type(data).__name__} is an endless stream; cache a dataset with a length (cifar10, "
                         "imagenet64, folder)")
    n = min(len(data), limit) if limit is not None else len(data)
    if n < 1:
        raise InputError(f"no images to cache ({len(data)} in the data, limit {limit}); point the source at images")
    codec = codec.to(device)
    latents, labels, index = None, None, []
    for step in tqdm(range(math.ceil(n / batch_size)), desc="encoding", disable=not progress):
        images, conditioning = data.get_batch(step, batch_size)
        if "text_ids" in conditioning:
            raise InputError("the data has captions, and text features are not cached; set captions = \"none\"")
        rows = slice(step * batch_size, min(n, (step + 1) * batch_size))
        encoded = codec.encode(images[: rows.stop - rows.start].to(device)).half().cpu()  # (b, C, h, w)
        if latents is None:
            latents = torch.empty((n, *encoded.shape[1:]), dtype=torch.float16)
            labels = torch.empty(n, dtype=torch.long) if "y" in conditioning else None
        latents[rows] = encoded
        if labels is not None:
            labels[rows] = conditioning["y"][: rows.stop - rows.start]
        if hasattr(data, "indices"):
            index.append(data.indices(step, batch_size)[: rows.stop - rows.start])
    payload = {"format": FORMAT, "latents": latents, "labels": labels,
               "num_classes": getattr(data, "num_classes", 0) if labels is not None else 0,
               "class_names": getattr(data, "class_names", None),
               "source_index": torch.from_numpy(np.concatenate(index)) if index else None,
               "vae": str(vae_path), "scaling_factor": codec.scaling_factor, "shift_factor": codec.shift_factor,
               "source": source}
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, out)
    return out


def load_cache(path: str | os.PathLike) -> dict[str, Any]:
    """Read a cache written by ``cache_latents`` (memory-mapped: processes on one machine share its pages).

    Raises:
        InputError: one line naming the file and the cache command, for a missing, unreadable or foreign file.
    """
    path = Path(path)
    rebuild = f"rebuild it with `{cache_command_line(path)}`"
    if not path.is_file():
        raise InputError(f"{path}: no latent cache there; make it once with `{cache_command_line(path)}`")
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, ... for foreign files
        reason = " ".join(str(error).split())[:120]
        problem = f"not a readable latent cache ({type(error).__name__}: {reason})"
        raise InputError(f"{path}: {problem}; {rebuild}") from error
    found = cache.get("format") if isinstance(cache, dict) else type(cache).__name__
    if found != FORMAT:
        raise InputError(f"{path}: format {found!r}, not a {FORMAT!r} latent cache (stale or foreign); {rebuild}")
    latents, labels = cache["latents"], cache["labels"]
    if latents.ndim != 4 or (labels is not None and labels.shape != (len(latents),)):
        raise InputError(f"{path}: latents {tuple(latents.shape)} and labels do not match (a damaged file); {rebuild}")
    return cache


class LatentDataset:
    """The latents of a cache file in deterministic shuffled batches, like ``ImageArrayDataset`` (without flips).

    Args:
        path: a file written by ``cache_latents`` (``python -m minidit cache-latents``).
        seed: seed of the per-epoch permutations.
    """

    def __init__(self, path: str | Path, seed: int = 0) -> None:
        cache = load_cache(path)
        self.path, self.latents, self.labels = Path(path), cache["latents"], cache["labels"]
        self.num_classes, self.class_names = cache["num_classes"], cache["class_names"]
        self.vae, self.scaling_factor, self.source = cache["vae"], cache["scaling_factor"], cache["source"]
        n = len(self.latents)
        # the epoch permutations of ImageArrayDataset, by composition: it holds labels and no pixels, (N, 3, 0, 0)
        self._order = ImageArrayDataset(torch.empty((n, 3, 0, 0), dtype=torch.uint8),
                                        self.labels if self.labels is not None else torch.zeros(n, dtype=torch.long),
                                        seed, num_classes=self.num_classes or None)

    def __len__(self) -> int:
        return len(self.latents)

    def indices(self, step: int, batch_size: int) -> Any:
        """Cache rows of batch ``step`` (``ImageArrayDataset.indices``)."""
        return self._order.indices(step, batch_size)

    def get_batch(self, step: int, batch_size: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Batch ``step``: latents ``(B, C, h, w)`` float32 and ``{"y": labels (B,) long}`` (``{}`` if unlabelled)."""
        return self.get_rows(step, batch_size, slice(0, batch_size))

    def get_rows(self, step: int, batch_size: int, rows: slice) -> tuple[Tensor, dict[str, Tensor]]:
        """Rows ``rows`` of batch ``step`` (``get_batch`` sliced), reading only those latents (``minidit.train.RowSource``)."""
        index = torch.from_numpy(self.indices(step, batch_size)[rows])
        latents = self.latents[index].float()  # (b, C, h, w)
        return latents, ({"y": self.labels[index]} if self.labels is not None else {})


class ImageFolderStream:
    """The images of ``root/<class name>/<image>`` read from disk batch by batch, in file order (classes and files as
    ``load_image_folder`` sorts them), for caching a folder too large to hold in memory (ImageNet at 256x256 would
    take 252 GB as uint8); ``threads`` decode and resize each batch's files in parallel.

    Raises:
        FileNotFoundError: if ``root`` holds no class folder with images.
    """

    def __init__(self, root: str | Path, resolution: int = 64, flip: bool = False, threads: int = 8) -> None:
        root = Path(root).expanduser()
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if root.is_dir() else []
        self.class_names = [folder.name for folder in folders]
        self.files = [(path, label) for label, folder in enumerate(folders) for path in datasets._image_files(folder)]
        if not self.files:
            raise FileNotFoundError(f"no images found in {root}: put them in one sub-folder per class, e.g. "
                                    f"{root}/n01440764/0001.JPEG")
        self.num_classes, self.resolution, self.flip, self.threads = len(folders), resolution, flip, threads

    def __len__(self) -> int:
        return len(self.files)

    def get_batch(self, step: int, batch_size: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Files ``step * B .. (step + 1) * B - 1`` (cycling): images ``(B, 3, R, R)`` in [-1, 1] and ``{"y"}``."""
        return self.read(range(step * batch_size, (step + 1) * batch_size))

    def read(self, indices: Sequence[int]) -> tuple[Tensor, dict[str, Tensor]]:
        """The files at ``indices`` (cycling): images ``(len(indices), 3, R, R)`` in [-1, 1] and ``{"y"}``."""
        chosen = [self.files[i % len(self)] for i in indices]
        with ThreadPoolExecutor(self.threads) as pool:
            images = np.stack(list(pool.map(lambda item: datasets._load_resized(item[0], self.resolution), chosen)))
        return torch.from_numpy(images).float() / 127.5 - 1, {"y": torch.tensor([label for _, label in chosen])}


@functools.lru_cache(maxsize=2)
def cache_codec(path: str) -> LatentCodec:
    """The VAE that encoded the cache ``path``, loaded from the local folder the cache names (for decoding samples).

    Raises:
        InputError: if that folder is missing, or its VAE's factors differ from the cache's.
    """
    cache = load_cache(path)
    try:
        codec = LatentCodec.from_pretrained(cache["vae"])
    except FileNotFoundError as error:
        raise InputError(f"{path}: its latents decode through the VAE at {cache['vae']!r}: {error}") from error
    if (codec.scaling_factor, codec.shift_factor) != (cache["scaling_factor"], cache["shift_factor"]):
        raise InputError(f"{path}: the VAE at {cache['vae']!r} has scaling/shift {codec.scaling_factor}/"
                         f"{codec.shift_factor}, the cache {cache['scaling_factor']}/{cache['shift_factor']}: another "
                         f"VAE; put the one that encoded it there, or {cache_command_line(path)}")
    return codec


def add_cache_parser(subparsers: Any, parents: list[argparse.ArgumentParser] | tuple = ()) -> argparse.ArgumentParser:
    """Add the ``cache-latents`` command to ``python -m minidit``'s subparsers."""
    parser = subparsers.add_parser("cache-latents", parents=list(parents),
                                   help="encode a dataset once through the VAE into a latent cache file")
    parser.add_argument("--data", required=True, help="TOML file whose [data] section is the source images "
                        "(cifar10, imagenet64 or folder, flip = false), e.g. configs/sources/imagenet256_folder.toml")
    parser.add_argument("--vae", default=VAE_FOLDER, help=f"local AutoencoderKL folder (default {VAE_FOLDER})")
    parser.add_argument("--out", required=True, help="the cache file to write, e.g. data/imagenet256_latents.pt")
    parser.add_argument("--batch-size", type=int, default=64, help="images per encoder call (default 64)")
    parser.add_argument("--device", default="auto", help="device of the encoder (default: the GPU if any)")
    parser.add_argument("--limit", type=int, help="encode only the first LIMIT images (a quick check)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache file")
    parser.set_defaults(run=cache_command)
    return parser


def cache_command(args: argparse.Namespace) -> Path:
    """``python -m minidit cache-latents``: build the ``[data]`` of ``args.data``, encode it, write ``args.out``."""
    from minidit.config import build_data, check_data, tomllib
    from minidit.train import resolve_device

    source = Path(args.data)
    if not source.is_file():
        raise FileNotFoundError(f"--data {str(source)!r} is not a file; pass a TOML file with a [data] section")
    with open(source, "rb") as f:
        section = tomllib.load(f).get("data")
    if not isinstance(section, dict):
        raise InputError(f"{source}: no [data] section; add one naming the images, e.g. name = \"folder\"")
    if section.get("name") == "latents":
        raise InputError(f"{source}: [data] is already a latent cache; point --data at the source images' config")
    if section.get("name") == "folder":  # read batch by batch: a large folder does not fit in memory
        data = ImageFolderStream(**{key: value for key, value in check_data(section, str(source)).items()
                                    if key not in ("name", "seed")})
    else:
        data = build_data(section, str(source))
    codec = LatentCodec.from_pretrained(args.vae)
    out = cache_latents(data, codec, args.out, args.batch_size, vae_path=args.vae, source=json.dumps(section),
                        device=resolve_device(args.device), limit=args.limit, overwrite=args.overwrite, progress=True)
    cache = load_cache(out)
    print(f"{len(cache['latents'])} latents {tuple(cache['latents'].shape[1:])} of {source} through {args.vae}: {out}")
    return out
