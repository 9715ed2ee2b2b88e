"""Real image datasets behind the same ``get_batch(step, batch_size)`` interface as the shapes world.

CIFAR-10 (python pickle batches), downsampled ImageNet 64x64 (npz batches, the format of Chrabaszcz et al.
2017, arXiv 1707.08819) and any folder of class sub-folders are read into memory as uint8 arrays; batch
``step`` is a slice of a per-epoch permutation seeded by ``(seed, epoch)``, so it depends only on
``(seed, step)`` and training resumes exactly. Files are checked as they are read: CIFAR-10's pickles go through
a restricted unpickler that builds only arrays, lists, dicts, strings, bytes and numbers (a hostile pickle runs no
code), and a corrupt batch, an npz with missing keys or out-of-range labels, an unreadable image or an empty class
folder raise ``InputError`` naming the file. These are the class-conditional benchmarks of DiT
(arXiv 2212.09748, Sec. 4) and SiT (arXiv 2401.08740, Sec. 3), used by configs/cifar10_dit_s2.toml and
configs/imagenet64_dit_b2.toml through ``python -m minidit train``.

Example:
    >>> data = cifar10("~/data", split="train", flip=True)
    >>> images, conditioning = data.get_batch(step=0, batch_size=64)   # (64, 3, 32, 32), {"y": (64,)}
"""
from __future__ import annotations

import pickle
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from minidit.validation import InputError, check_choice

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGENET64_URL = "https://image-net.org/download-images.php (Downsampled ImageNet 64x64, npz format)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class ImageArrayDataset:
    """Images held in memory as uint8, served in deterministic shuffled batches.

    Args:
        images: ``(N, 3, H, W)`` uint8.
        labels: ``(N,)`` integer class labels.
        seed: seed of the per-epoch permutations and of the flips.
        flip: flip each image horizontally with probability 1/2 (deterministic in ``(seed, step)``).
        resolution: resize batches to ``resolution x resolution`` (antialiased bilinear); ``None`` keeps ``H x W``.
        class_names: optional names of the classes.
        num_classes: number of classes; defaults to ``len(class_names)``, else ``labels.max() + 1``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        seed: int = 0,
        flip: bool = False,
        resolution: int | None = None,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 of shape (N, 3, H, W); got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},); got {tuple(labels.shape)}")
        self.images, self.labels = images, labels.long()
        self.seed, self.flip, self.resolution = seed, flip, resolution
        self.class_names = list(class_names) if class_names is not None else None
        self.num_classes = num_classes or (len(self.class_names) if self.class_names else int(self.labels.max()) + 1)
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < self.num_classes:
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1} for {self.num_classes} classes; "
                             f"got {int(self.labels.min())}..{int(self.labels.max())}")
        self._epoch_permutation: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._epoch_permutation is None or self._epoch_permutation[0] != epoch:
            self._epoch_permutation = (epoch, np.random.default_rng((self.seed, 0, epoch)).permutation(len(self)))
        return self._epoch_permutation[1]

    def indices(self, step: int, batch_size: int) -> np.ndarray:
        """Dataset indices of batch ``step``: positions ``step * B .. (step + 1) * B - 1`` of the epoch permutations."""
        positions = np.arange(step * batch_size, (step + 1) * batch_size)
        epochs, offsets = positions // len(self), positions % len(self)
        return np.array([self._permutation(int(e))[o] for e, o in zip(epochs, offsets)])

    def get_batch(self, step: int, batch_size: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Return batch ``step``: images ``(B, 3, H, W)`` float in ``[-1, 1]`` and ``{"y": labels (B,) long}``."""
        return self.get_rows(step, batch_size, slice(0, batch_size))

    def get_rows(self, step: int, batch_size: int, rows: slice) -> tuple[Tensor, dict[str, Tensor]]:
        """Rows ``rows`` of batch ``step``, exactly ``get_batch(step, batch_size)`` sliced, reading only those images:
        what one process of a torchrun job needs (``minidit.train.RowSource``). Shapes as ``get_batch``'s, ``b`` rows."""
        index = torch.from_numpy(self.indices(step, batch_size)[rows])
        images = self.images[index].float() / 127.5 - 1  # (b, 3, H, W)
        if self.flip:
            coins = np.random.default_rng((self.seed, 1, step)).random(batch_size)[rows]  # drawn for the whole batch
            flipped = torch.from_numpy(coins < 0.5)
            images = torch.where(flipped[:, None, None, None], images.flip(-1), images)
        if self.resolution is not None and images.shape[-2:] != (self.resolution, self.resolution):
            size = (self.resolution, self.resolution)
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        return images, {"y": self.labels[index]}


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes in protocols 0-2 (``encode(text, "latin1")``), and nothing else."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode is allowed only to rebuild bytes from latin-1 text, got {encoding!r}")
    return text.encode("latin1")


def _pickle_globals() -> dict[tuple[str, str], Any]:
    """The globals a pickled numpy array (under numpy 1's and 2's module names) or bytes object refers to."""
    array = np.zeros(1, np.uint8)
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): _latin1_bytes}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = array.__reduce__()[0]  # pickle protocols 0-4
        allowed[(f"{core}.numeric", "_frombuffer")] = array.__reduce_ex__(5)[0]  # protocol 5
    return allowed


class CifarUnpickler(pickle.Unpickler):
    """Unpickle a CIFAR-10 batch building nothing but numpy arrays, lists, dicts, strings, bytes and numbers.

    A pickle names the functions it calls as globals; this unpickler resolves only numpy's array-rebuilding
    functions (what the real batches hold) and a latin-1-only stand-in for ``_codecs.encode`` (how Python 3 pickles
    bytes in protocols 0-2), and refuses any other global, so a hostile file cannot run code.
    """

    ALLOWED = _pickle_globals()

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # the batches were pickled by Python 2
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed global; raise ``InputError`` naming the file and the refused global otherwise."""
        if (module, name) not in self.ALLOWED:
            raise InputError(
                f"{self.path}: refused to unpickle the global {module}.{name}, which a CIFAR-10 batch never holds "
                f"(a foreign or hostile file; nothing was run); download the batches again from {CIFAR10_URL}"
            )
        return self.ALLOWED[(module, name)]


def _unpickle(path: Path) -> Any:
    """Load one CIFAR-10 pickle with ``CifarUnpickler``; a damaged file raises ``InputError`` naming it."""
    try:
        with open(path, "rb") as f:
            return CifarUnpickler(f, path).load()
    except InputError:
        raise
    except Exception as error:  # pickle raises UnpicklingError, EOFError, ValueError, ... for damaged files
        raise InputError(
            f"{path}: not a readable CIFAR-10 batch (truncated or corrupt: {type(error).__name__}: {error}); "
            f"download the batches again from {CIFAR10_URL}"
        ) from error


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``(N, 3072)`` uint8 and labels ``(N,)`` in 0..9 of one CIFAR-10 batch file, checked."""
    batch = _unpickle(path)
    fix = f"download the batches again from {CIFAR10_URL}"
    if not isinstance(batch, dict) or not {b"data", b"labels"} <= batch.keys():
        raise InputError(f"{path}: not a CIFAR-10 batch (a dict with b'data' and b'labels' entries); {fix}")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        described = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise InputError(f"{path}: b'data' is {described}, not uint8 rows of 3072 pixels (N, 3072); {fix}")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise InputError(f"{path}: b'labels' is not {len(data)} integers, one per image (got {labels.dtype} "
                         f"{labels.shape}); {fix}")
    if len(labels) and not 0 <= labels.min() <= labels.max() <= 9:
        raise InputError(f"{path}: labels must lie in 0..9, found {labels.min()}..{labels.max()}; {fix}")
    return data, labels


def load_cifar10(root: str | Path, split: str = "train", download: bool = False) -> tuple[Tensor, Tensor, list[str]]:
    """Read CIFAR-10 from its python pickle batches.

    Args:
        root: the folder holding ``cifar-10-batches-py/`` (or that folder itself).
        split: ``"train"`` (``data_batch_1`` .. ``data_batch_5``, 50000 images) or ``"test"`` (``test_batch``).
        download: fetch the archive with torchvision first (only when asked; needs network access).
    Returns:
        images ``(N, 3, 32, 32)`` uint8, labels ``(N,)`` long, the 10 class names.
    Raises:
        FileNotFoundError: if the batches are missing, saying where they go and where to get them.
        InputError: if a file is not a CIFAR-10 pickle (corrupt, wrong contents, or any global besides numpy's
            array functions), naming the file.
    """
    check_choice("split", split, ("train", "test"))
    root = Path(root).expanduser()
    if download:
        from torchvision.datasets import CIFAR10  # lazy: torchvision is needed only to download

        CIFAR10(str(root), train=split == "train", download=True)
    folder = root if (root / "batches.meta").exists() else root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [name for name in [*names, "batches.meta"] if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 files {missing} not found in {folder}. Download 'CIFAR-10 python version' "
            f"(cifar-10-python.tar.gz) from {CIFAR10_URL} and extract it into {root}, or pass download=True."
        )
    batches = [_cifar_batch(folder / name) for name in names]
    data = np.concatenate([rows for rows, _ in batches])  # (N, 3072): 1024 red, 1024 green, 1024 blue, row-major
    labels = np.concatenate([labels for _, labels in batches])
    meta = _unpickle(folder / "batches.meta")
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, bytes) for n in names):
        raise InputError(f"{folder / 'batches.meta'}: b'label_names' is not a list of 10 names; "
                         f"download the batches again from {CIFAR10_URL}")
    class_names = [name.decode() for name in names]
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # (N, 3, 32, 32)
    return images, torch.from_numpy(labels).long(), class_names


def load_imagenet64(
    root: str | Path, split: str = "train", batches: Sequence[int] = tuple(range(1, 11))
) -> tuple[Tensor, Tensor]:
    """Read downsampled ImageNet 64x64 from its npz batches.

    Args:
        root: the folder holding ``train_data_batch_1.npz`` .. ``train_data_batch_10.npz`` and ``val_data.npz``.
        split: ``"train"`` or ``"val"``.
        batches: which training batches to read (about 128k images and 1.6 GB each); ignored for ``"val"``.
    Returns:
        images ``(N, 3, 64, 64)`` uint8 and labels ``(N,)`` long in ``0..999`` (the files store 1..1000).
    Raises:
        FileNotFoundError: if a batch is missing, saying where it goes and where to get it.
        InputError: if a batch is corrupt, lacks ``data`` or ``labels``, or has labels outside 1..1000.
    """
    check_choice("split", split, ("train", "val"))
    root = Path(root).expanduser()
    names = [f"train_data_batch_{i}.npz" for i in batches] if split == "train" else ["val_data.npz"]
    missing = [name for name in names if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"ImageNet 64x64 files {missing} not found in {root}. Download Imagenet64_train_part1/part2_npz and "
            f"Imagenet64_val_npz from {IMAGENET64_URL} (needs a free account) and put the .npz files in {root}."
        )
    images, labels = [], []
    for name in names:
        data, batch_labels = _imagenet64_batch(root / name)
        images.append(data.reshape(-1, 3, 64, 64))  # (N, 12288) channel-planar -> (N, 3, 64, 64)
        labels.append(batch_labels - 1)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)).long()


def _imagenet64_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``(N, 12288)`` uint8 and labels ``(N,)`` in 1..1000 of one npz batch, checked."""
    fix = f"download it again from {IMAGENET64_URL}"
    try:
        with np.load(path) as batch:  # allow_pickle=False: an npz holding objects is refused
            held = batch.files
            arrays = {key: batch[key] for key in ("data", "labels") if key in held}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise InputError(f"{path}: not a readable npz batch ({type(error).__name__}: {error}); {fix}") from error
    missing = [key for key in ("data", "labels") if key not in arrays]
    if missing:
        raise InputError(f"{path}: no {' and no '.join(repr(k) for k in missing)} array (it holds {held}); {fix}")
    data, labels = arrays["data"], np.asarray(arrays["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 64 * 64:
        raise InputError(f"{path}: 'data' is {data.dtype} {data.shape}, not uint8 rows of 12288 pixels (N, 12288); {fix}")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise InputError(f"{path}: 'labels' is not {len(data)} integers (got {labels.dtype} {labels.shape}); {fix}")
    if len(labels) and not 1 <= labels.min() <= labels.max() <= 1000:
        raise InputError(f"{path}: labels must lie in 1..1000 as in the downloaded files, found "
                         f"{labels.min()}..{labels.max()}; {fix}")
    return data, labels


def _load_resized(path: Path, resolution: int) -> np.ndarray:
    """One image as ``(3, resolution, resolution)`` uint8: shorter side resized (bicubic), then centre-cropped."""
    from PIL import Image  # Pillow ships with torchvision

    try:
        with Image.open(path) as image:
            return _resize_and_crop(image.convert("RGB"), resolution)
    except (OSError, ValueError, Image.DecompressionBombError) as error:  # UnidentifiedImageError is an OSError
        raise InputError(f"{path}: cannot be read as an image ({error}); replace or delete the file") from error


def _resize_and_crop(image: Any, resolution: int) -> np.ndarray:
    """A PIL RGB image as ``(3, resolution, resolution)`` uint8: shorter side resized (bicubic), centre-cropped."""
    from PIL import Image

    scale = resolution / min(image.size)
    width, height = max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - resolution) // 2, (height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    return np.asarray(image).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def _image_files(folder: Path) -> list[Path]:
    """The image files of ``folder``, sorted; hidden files (``.DS_Store``, ``._x.png``) and sub-folders are skipped."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image_folder(root: str | Path, resolution: int) -> tuple[Tensor, Tensor, list[str]]:
    """Read ``root/<class name>/<image>`` files (png, jpg, bmp, webp); classes are the sorted sub-folder names.

    Hidden folders (``.ipynb_checkpoints``, which JupyterLab creates) and hidden files are ignored.

    Returns:
        images ``(N, 3, resolution, resolution)`` uint8, labels ``(N,)`` long, class names.
    Raises:
        FileNotFoundError: if ``root`` holds no class folder with images.
        InputError: if a class folder holds no image, an image lies outside the class folders, or an image
            cannot be read; the message names the folder or file (and lists the classes found).
    """
    root = Path(root).expanduser()
    class_names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    per_class = {name: _image_files(root / name) for name in class_names}
    if not any(per_class.values()):
        raise FileNotFoundError(
            f"no images found in {root}: put them in one sub-folder per class, e.g. {root}/cat/0001.png, "
            f"with suffixes {IMAGE_SUFFIXES}"
        )
    found = ", ".join(f"{name} ({len(files)})" for name, files in per_class.items())
    empty = [name for name, files in per_class.items() if not files]
    if empty:
        raise InputError(
            f"{root / empty[0]}: class folder holds no image ({', '.join(IMAGE_SUFFIXES)}); classes found with their "
            f"image counts: {found}; add images or remove the folder"
        )
    loose = _image_files(root)
    if loose:
        raise InputError(
            f"{loose[0]}: an image outside the class folders ({len(loose)} in {root} itself); move them into a "
            f"class sub-folder ({', '.join(class_names)})"
        )
    files = [(path, label) for label, name in enumerate(class_names) for path in per_class[name]]
    images = np.stack([_load_resized(path, resolution) for path, _ in files])  # (N, 3, R, R)
    return torch.from_numpy(images), torch.tensor([label for _, label in files]), class_names


def cifar10(
    root: str | Path, split: str = "train", seed: int = 0, flip: bool = False, download: bool = False
) -> ImageArrayDataset:
    """CIFAR-10 as an ``ImageArrayDataset`` (32x32, 10 classes); see ``load_cifar10``."""
    images, labels, class_names = load_cifar10(root, split, download)
    return ImageArrayDataset(images, labels, seed, flip, class_names=class_names)


def imagenet64(
    root: str | Path,
    split: str = "train",
    seed: int = 0,
    flip: bool = False,
    resolution: int | None = None,
    batches: Sequence[int] = tuple(range(1, 11)),
) -> ImageArrayDataset:
    """Downsampled ImageNet 64x64 as an ``ImageArrayDataset`` (1000 classes); see ``load_imagenet64``."""
    images, labels = load_imagenet64(root, split, batches)
    return ImageArrayDataset(images, labels, seed, flip, resolution, num_classes=1000)


def image_folder(root: str | Path, resolution: int = 64, seed: int = 0, flip: bool = False) -> ImageArrayDataset:
    """A folder of class sub-folders as an ``ImageArrayDataset``; see ``load_image_folder``."""
    images, labels, class_names = load_image_folder(root, resolution)
    return ImageArrayDataset(images, labels, seed, flip, class_names=class_names)
