"""Frechet Inception Distance (FID): how far generated images are from real ones, as Inception features see them.

FID fits a Gaussian to the 2048-d pool3 features of the FID Inception network on each image set and reports their
Frechet distance ``d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))`` (Heusel et al., arXiv 1706.08500;
Dowson and Landau 1982), in float64 with the trace of the square root from an eigendecomposition. Images reach the
network by one named protocol, clean-fid's ``"clean"`` (Parmar et al., arXiv 2104.11222, Sec. 3): quantise to
uint8 as a saved PNG would, resize each channel in float32 with PIL's bicubic filter to 299 x 299, map 0..255 to
[-1, 1]. Used by ``python -m minidit eval`` (README, "Evaluation").

The network is torchvision's Inception v3 layout with the FID port's changes (pytorch-fid's
``pt_inception-2015-12-05``, the TensorFlow graph of the original FID code): average pools that ignore the zero
padding, a max pool in the last block, 1008 classes. Its weights are only ever read from a local file; nothing
downloads, and torchvision's ImageNet classifier (1000 classes, other weights) is refused, never used instead.
Reference statistics of a dataset are computed once and cached on disk, keyed by the data, the sample count, the
protocol and the weights' SHA-256.

Example:
    >>> network = FIDInception.from_file()            # pretrained_models/pt_inception-2015-12-05-6726825d.pth
    >>> mu, sigma = statistics(inception_features(samples, network))      # samples (N, 3, H, W) in [-1, 1]
    >>> frechet_distance(mu, sigma, *reference_statistics({"name": "cifar10", "root": "data"}, 10_000, network))
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from minidit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minidit.convert.dit import WEIGHTS_FOLDER, read_checkpoint
from minidit.text.pretrain import cache_root
from minidit.validation import InputError

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"
WEIGHTS_SHA256_PREFIX = "6726825d"  # torch.hub's convention: the file name ends with its SHA-256's first digits
DEFAULT_WEIGHTS = f"{WEIGHTS_FOLDER}/{WEIGHTS_NAME}"
PROTOCOL = "clean"  # clean-fid's: uint8, PIL bicubic in float32 per channel to 299 x 299
INPUT_SIZE = 299
FEATURES = 2048
FID_CLASSES = 1008  # the TensorFlow graph's classifier; torchvision's ImageNet Inception has 1000
VERSION = "minidit-fid-v2"  # change it when the feature pipeline changes what reference statistics hold


def statistics(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``features`` ``(N, D)``, ``N >= 2``, in float64.

    Returns:
        ``mu`` ``(D,)`` and ``sigma`` ``(D, D)``, the unbiased covariance (divided by ``N - 1``).
    """
    features = np.asarray(features.cpu() if isinstance(features, Tensor) else features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must have shape (N, D) with N >= 2 samples; got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Frechet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``, in float64.

    ``d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``. The product of two covariances
    is not symmetric, but it has the eigenvalues of the symmetric ``A = sigma1^(1/2) sigma2 sigma1^(1/2)``, so
    ``tr((sigma1 sigma2)^(1/2)) = sum_i sqrt(lambda_i(A))``: two symmetric eigendecompositions, no general matrix
    square root, and no imaginary parts to discard. Eigenvalues below zero (rounding) count as zero, which makes
    singular covariances (fewer samples than features) exact as well.

    Args:
        mu1, mu2: means, ``(D,)``.
        sigma1, sigma2: covariances, ``(D, D)``, symmetric positive semi-definite.
    Returns:
        ``d^2`` (the number reported as FID).
    """
    mu1, mu2, sigma1, sigma2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, sigma1, sigma2))
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if d < 1 or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"need means (D,) and covariances (D, D) of one D; got {mu1.shape}, {sigma1.shape}, "
                         f"{mu2.shape}, {sigma2.shape}")
    eigenvalues, eigenvectors = np.linalg.eigh(sigma1)
    root1 = (eigenvectors * np.sqrt(eigenvalues.clip(min=0))) @ eigenvectors.T  # sigma1^(1/2), (D, D)
    middle = root1 @ sigma2 @ root1
    trace_root = np.sqrt(np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root)


def clean_resize(images: Tensor) -> Tensor:
    """The ``"clean"`` protocol: images as the network reads them.

    Each image is quantised to uint8 (``round((x + 1) 127.5)``, what a saved PNG holds), each channel resized on
    its own as a float32 PIL image with the bicubic filter to 299 x 299 (no second rounding, so no aliasing from
    integer resampling), and 0..255 mapped to [-1, 1] (``p / 127.5 - 1``, the FID port's normalisation).

    Args:
        images: ``(N, 3, H, W)`` in [-1, 1] (values outside are clipped).
    Returns:
        ``(N, 3, 299, 299)`` float32 on the CPU.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be RGB of shape (N, 3, H, W); got {tuple(images.shape)} (expand grey images "
                         "to 3 channels first)")
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    size = (INPUT_SIZE, INPUT_SIZE)
    resized = [np.asarray(Image.fromarray(channel.astype(np.float32)).resize(size, Image.Resampling.BICUBIC))
               for channel in pixels.reshape(-1, *pixels.shape[2:])]  # N * 3 channels (H, W) -> (299, 299)
    out = torch.from_numpy(np.stack(resized)).view(images.shape[0], 3, INPUT_SIZE, INPUT_SIZE)  # (N, 3, 299, 299)
    return out / 127.5 - 1


class ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, TensorFlow's), ReLU: Inception's unit (``.conv``, ``.bn``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W)`` -> ``(N, C_out, H', W')``."""
        return F.relu(self.bn(self.conv(x)))


def tf_average_pool(x: Tensor) -> Tensor:
    """3 x 3 average pool, stride 1, that averages only the pixels inside the image, as TensorFlow's does (the FID
    port's fix: torchvision counts the zero padding)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class Mixed35(nn.Module):
    """Inception v3's block on the 35 x 35 grid (Szegedy et al., arXiv 1512.00567, Fig. 5): 1x1, 5x5, double 3x3
    and pooled branches; ``64 + 64 + 96 + pool_features`` channels."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(in_channels, 64, 1)
        self.branch5x5_1 = ConvBN(in_channels, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(in_channels, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, 35, 35)`` -> ``(N, 224 + pool_features, 35, 35)``."""
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(tf_average_pool(x)),
        ], dim=1)


class Reduce35to17(nn.Module):
    """Grid reduction 35 -> 17 (arXiv 1512.00567, Sec. 6): strided 3x3, strided double 3x3 and max pool branches."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, 35, 35)`` -> ``(N, 480 + C, 17, 17)``."""
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class Mixed17(nn.Module):
    """Inception v3's block on the 17 x 17 grid (arXiv 1512.00567, Fig. 6): 7x7 convolutions factorised into 1x7
    and 7x1, in a single and a double branch of ``channels_7x7`` channels; 768 channels out."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c = channels_7x7
        row, column = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
        self.branch1x1 = ConvBN(in_channels, 192, 1)
        self.branch7x7_1 = ConvBN(in_channels, c, 1)
        self.branch7x7_2 = ConvBN(c, c, **row)
        self.branch7x7_3 = ConvBN(c, 192, **column)
        self.branch7x7dbl_1 = ConvBN(in_channels, c, 1)
        self.branch7x7dbl_2 = ConvBN(c, c, **column)
        self.branch7x7dbl_3 = ConvBN(c, c, **row)
        self.branch7x7dbl_4 = ConvBN(c, c, **column)
        self.branch7x7dbl_5 = ConvBN(c, 192, **row)
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 768, 17, 17)`` -> ``(N, 768, 17, 17)``."""
        double = self.branch7x7dbl_2(self.branch7x7dbl_1(x))
        double = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(double)))
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(tf_average_pool(x)),
        ], dim=1)


class Reduce17to8(nn.Module):
    """Grid reduction 17 -> 8: a strided 3x3 branch, a factorised 7x7 then strided 3x3 branch, and max pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(in_channels, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(in_channels, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 768, 17, 17)`` -> ``(N, 1280, 8, 8)``."""
        seven = self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x)))
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            self.branch7x7x3_4(seven),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class Mixed8(nn.Module):
    """Inception v3's block on the 8 x 8 grid (arXiv 1512.00567, Fig. 7): 3x3 branches that split into parallel
    1x3 and 3x1 convolutions; 2048 channels out. The FID graph pools with TensorFlow's average pool in the first
    of these blocks and with a max pool in the second (``max_pool``), which torchvision's Inception does not."""

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        row, column = dict(kernel_size=(1, 3), padding=(0, 1)), dict(kernel_size=(3, 1), padding=(1, 0))
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(in_channels, 320, 1)
        self.branch3x3_1 = ConvBN(in_channels, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, **row)
        self.branch3x3_2b = ConvBN(384, 384, **column)
        self.branch3x3dbl_1 = ConvBN(in_channels, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, **row)
        self.branch3x3dbl_3b = ConvBN(384, 384, **column)
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, 8, 8)`` -> ``(N, 2048, 8, 8)``."""
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else tf_average_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(single), self.branch3x3_2b(single),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ], dim=1)


class FIDInception(nn.Module):
    """The FID Inception v3: images ``(N, 3, 299, 299)`` in [-1, 1] (``clean_resize``) -> pool3 features ``(N, 2048)``.

    Module names follow torchvision's ``Inception3``, whose state dict (``num_classes=1008``, no auxiliary head) is
    the layout of the published file; ``fc``, the graph's 1008-way classifier, is part of that file and tells it
    apart from torchvision's ImageNet weights, but FID reads the features before it. Build it with ``from_file``:
    a freshly constructed network has random weights (and ``weights_sha256 = None``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = Mixed35(192, pool_features=32)
        self.Mixed_5c = Mixed35(256, pool_features=64)
        self.Mixed_5d = Mixed35(288, pool_features=64)
        self.Mixed_6a = Reduce35to17(288)
        self.Mixed_6b = Mixed17(768, channels_7x7=128)
        self.Mixed_6c = Mixed17(768, channels_7x7=160)
        self.Mixed_6d = Mixed17(768, channels_7x7=160)
        self.Mixed_6e = Mixed17(768, channels_7x7=192)
        self.Mixed_7a = Reduce17to8(768)
        self.Mixed_7b = Mixed8(1280, max_pool=False)
        self.Mixed_7c = Mixed8(2048, max_pool=True)
        self.fc = nn.Linear(FEATURES, FID_CLASSES)
        self.weights_sha256: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        """Pool3 features ``(N, 2048)`` of ``x`` ``(N, 3, 299, 299)`` in [-1, 1]."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"the FID Inception reads (N, 3, {INPUT_SIZE}, {INPUT_SIZE}); got {tuple(x.shape)}: "
                             "resize with clean_resize first")
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (N, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (N, 288, 35, 35)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))  # (N, 768, 17, 17)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # (N, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # (N, 2048)

    @classmethod
    def from_file(cls, path: str | os.PathLike = DEFAULT_WEIGHTS) -> FIDInception:
        """The FID Inception with the weights of the local file ``path`` (``WEIGHTS_URL``), frozen, in eval mode.

        Every tensor of the file is used and every one of the network is set (``num_batches_tracked``, a training
        counter older files lack, excepted); ``weights_sha256`` is the file's SHA-256, which keys cached statistics.

        Raises:
            FileNotFoundError: without the file, naming ``WEIGHTS_URL`` and the folder to put it in.
            InputError: for torchvision's ImageNet Inception, another layout, or a file named ``WEIGHTS_NAME``
                whose SHA-256 does not start with ``6726825d``.
        """
        state = dict(read_checkpoint(path, "FID Inception", WEIGHTS_URL))
        classes = state.get("fc.weight", torch.empty(0)).shape[:1]
        if classes == (1000,):
            raise InputError(f"{str(path)!r} holds torchvision's ImageNet Inception (1000 classes), not the FID "
                             f"Inception ({FID_CLASSES}); FID needs {WEIGHTS_NAME} from {WEIGHTS_URL}")
        network = cls()
        counters = {k: v for k, v in network.state_dict().items() if k.endswith("num_batches_tracked")}
        try:
            network.load_state_dict({**counters, **state})
        except RuntimeError as error:
            problem = " ".join(str(error).split())
            raise InputError(f"{str(path)!r} is not the FID Inception's weights ({problem[:300]}); use {WEIGHTS_NAME} "
                             f"from {WEIGHTS_URL}") from error
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if Path(path).name == WEIGHTS_NAME and not digest.startswith(WEIGHTS_SHA256_PREFIX):
            raise InputError(f"{str(path)!r} has SHA-256 {digest[:16]}..., not the published file's "
                             f"{WEIGHTS_SHA256_PREFIX}...: it is damaged or another file; download it again")
        network.weights_sha256 = digest
        return network.eval().requires_grad_(False)


@torch.no_grad()
def inception_features(images: Tensor, network: nn.Module, batch_size: int = 50,
                       device: torch.device | str = "cpu") -> Tensor:
    """Features of ``images`` through the ``"clean"`` protocol (``clean_resize``) and ``network``.

    Args:
        images: ``(N, 3, H, W)`` in [-1, 1].
        network: a ``FIDInception`` (or any module mapping ``(B, 3, 299, 299)`` to ``(B, D)``) in eval mode, on
            ``device``.
        batch_size: images resized and passed through the network at a time.
    Returns:
        ``(N, D)`` float32 on the CPU.
    Raises:
        ValueError: for a network in train mode (its batch norm would make each image's features depend on the
            other images of its batch).
    """
    if network.training:
        raise ValueError("the feature network is in train mode: batch norm would use each batch's own statistics; "
                         "call network.eval() (FIDInception.from_file returns it in eval mode)")
    return torch.cat([network(clean_resize(images[i : i + batch_size]).to(device)).float().cpu()
                      for i in range(0, images.shape[0], batch_size)])


def reference_section(data_section: dict[str, Any]) -> dict[str, Any]:
    """The ``[data]`` section whose images a model's samples are compared with, without ``flip`` (augmentation).

    A latent model (``name = "latents"``) draws latents, which are decoded before FID; its reference is the **source
    images** its cache was made from (the cache's ``source`` section, ``minidit.data.latents``), as FID compares
    images (LDM, arXiv 2112.10752, and DiT, arXiv 2212.09748, report FID of decoded samples against real images).
    """
    section = {k: v for k, v in data_section.items() if k != "flip"}
    if section.get("name") != "latents":
        return section
    from minidit.data.latents import load_cache  # lazy: only latent models need it

    source = json.loads(load_cache(section["path"])["source"] or "{}")
    if not source or source.get("name") == "latents":
        raise InputError(f"{section['path']}: the latent cache names no source images ({source!r}) to compare "
                         "samples with; rebuild it with `python -m minidit cache-latents`")
    return reference_section(source)


def reference_images(data_section: dict[str, Any], n: int, batch_size: int = 256) -> Tensor:
    """``n`` real images ``(n, 3, H, W)`` in [-1, 1] of the data of a ``[data]`` section (``reference_section``).

    A folder is read from disk file by file: ``n`` files evenly spaced over its sorted files, so every class is
    present and memory stays bounded (an ImageNet folder does not fit in memory); any other data gives the first
    ``n`` images of its stream, batches ``0, 1, ...``.
    """
    from minidit.config import build_data  # lazy: the config module imports the models

    section = reference_section(data_section)
    if section.get("name") == "folder":
        from minidit.data.latents import ImageFolderStream

        stream = ImageFolderStream(section["root"], section.get("resolution", 64))
        picks = torch.linspace(0, len(stream) - 1, n).round().long()  # (n,): evenly spaced over the files
        return torch.cat([stream.read(chunk.tolist())[0] for chunk in picks.split(batch_size)])
    data = build_data(section)
    batches, count = [], 0
    for step in range(-(-n // batch_size)):
        images, _ = data.get_batch(step, batch_size)
        batches.append(images[: n - count])
        count += batches[-1].shape[0]
    return torch.cat(batches)


def reference_statistics(data_section: dict[str, Any], n: int, network: nn.Module, batch_size: int = 50,
                         device: torch.device | str = "cpu",
                         cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``statistics`` of the features of ``reference_images(data_section, n)``, computed once and cached.

    The cache file is ``<cache>/fid/<data name>-<n>-<hash16>.pt`` (``<cache>``: ``cache_dir``, ``$MINIDIT_CACHE``
    or ``~/.cache/minidit``), keyed by the SHA-256 of the data section (name, split, seed, resolution, ...), ``n``,
    ``PROTOCOL``, ``network.weights_sha256`` and ``VERSION``, and written atomically; a cache file that cannot be
    read or does not match is computed again with a warning.

    Args:
        data_section: a ``[data]`` section, e.g. ``{"name": "cifar10", "root": "data", "split": "train"}``.
        n: reference images.
        network: as in ``inception_features``, with a ``weights_sha256`` string naming its weights.
    Returns:
        ``mu`` ``(D,)`` and ``sigma`` ``(D, D)`` in float64.
    """
    weights = getattr(network, "weights_sha256", None)
    if not isinstance(weights, str):
        raise ValueError("network.weights_sha256 is not set, so cached statistics could not tell its weights apart; "
                         "load the network with FIDInception.from_file")
    section = reference_section(data_section)
    key = {"data": section, "n": n, "protocol": PROTOCOL, "weights_sha256": weights, "version": VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    path = cache_root(cache_dir) / "fid" / f"{section.get('name', 'data')}-{n}-{digest[:16]}.pt"
    if path.exists():
        try:
            state = load_checkpoint(path)
            if state.get("hash") != digest:
                raise CheckpointError(f"it was written for other statistics (hash {str(state.get('hash'))[:16]}...)")
            return state["mu"].numpy(), state["sigma"].numpy()
        except (CheckpointError, KeyError) as error:
            warnings.warn(f"FID statistics cache {str(path)!r} is unusable ({error}); computing them again",
                          stacklevel=2)
    mu, sigma = statistics(inception_features(reference_images(section, n), network, batch_size, device))
    save_checkpoint({"hash": digest, "key": key, "mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma)}, path)
    return mu, sigma
