"""A generated stand-in for CIFAR-10 in CIFAR-10's on-disk format. It is NOT CIFAR-10: it is shapes, drawn by minidit.

Where the real batches are absent (CI, machines without network access), notebooks/12_real_images.ipynb trains on
32x32 images of the shapes world (``minidit.data.shapes``) written exactly as CIFAR-10's "python version" is laid out
(Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images", the data set's own page):
``cifar-10-batches-py/`` holds ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``, each a pickled dict with
``b"data"`` (uint8 rows of 3072 pixels: 1024 red, then 1024 green, then 1024 blue, each row-major), ``b"labels"``
(a list of ints in 0..9), ``b"filenames"`` and ``b"batch_label"``, and ``batches.meta`` holds ``b"label_names"``. So
``minidit.data.datasets.cifar10(root)`` reads it unchanged and every cell meant for CIFAR-10 runs on it.

Ten classes, like CIFAR-10's, each a (shape, colour) pair (``STANDIN_CLASSES``); each shape comes in two colours and
most colours in two shapes, so neither alone names the class. Size and grid cell vary freely within a class, as pose
does within a CIFAR-10 class (the class-conditional benchmark of DiT, arXiv 2212.09748, Sec. 4). Classes are balanced
as in CIFAR-10 (counts differ by at most one). The images are clean renders, so the exact analyser
(``minidit.data.analyser``) reads their class back (``classify``), which gives generated samples a download-free
class accuracy. A marker file, ``MINIDIT_STANDIN.txt``, says what the folder is (``is_standin``), and the writer
never replaces a folder that holds real batches.

Example:
    >>> root = write_cifar10_standin("runs/standin", n_train=5000, n_test=1000, seed=0)
    >>> data = cifar10(root)                                    # minidit.data.datasets, unchanged
    >>> images, conditioning = data.get_batch(0, 64)            # (64, 3, 32, 32) in [-1, 1], {"y": (64,)}
    >>> (classify(images) == conditioning["y"]).float().mean()  # 1.0: clean renders read back exactly
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from minidit.data.shapes import SIZES, ObjectSpec, Scene, render
from minidit.validation import check_choice

# Class k is a shape in a colour; the names follow CIFAR-10's one-name-per-class list in batches.meta.
STANDIN_CLASSES: tuple[tuple[str, str], ...] = (
    ("circle", "red"), ("circle", "blue"), ("square", "green"), ("square", "red"), ("triangle", "blue"),
    ("triangle", "yellow"), ("diamond", "magenta"), ("diamond", "green"), ("cross", "cyan"), ("cross", "white"),
)
CLASS_NAMES: tuple[str, ...] = tuple(f"{colour} {shape}" for shape, colour in STANDIN_CLASSES)
RESOLUTION = 32  # CIFAR-10's
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
MARKER = "MINIDIT_STANDIN.txt"
SPLITS = ("train", "test")


def _check_count(name: str, value: int, least: int, why: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"{name} must be an integer >= {least} ({why}); got {value!r}")


def standin_images(n: int, seed: int, split: str = "train") -> tuple[Tensor, Tensor]:
    """The ``n`` images and labels of a stand-in split, deterministic in ``(seed, split)``.

    Labels are ``0..9`` repeated (balanced) in a random order; each image shows one object of its class's shape and
    colour, of a random size in a random cell of the 3x3 grid, rendered at 32x32 and quantised to uint8 as a saved
    image would be (``round((x + 1) * 127.5)``).

    Args:
        n: number of images, >= 1.
        seed: an integer; the train and test splits of one seed are drawn from different streams.
        split: ``"train"`` or ``"test"``.
    Returns:
        images ``(n, 3, 32, 32)`` uint8 and labels ``(n,)`` long.
    """
    _check_count("n", n, 1, "images to draw")
    check_choice("split", split, SPLITS)
    rng = np.random.default_rng((seed, SPLITS.index(split)))
    labels = rng.permutation(np.arange(n) % len(STANDIN_CLASSES))  # balanced, shuffled
    sizes = rng.integers(len(SIZES), size=n)
    cells = rng.integers(9, size=n)
    size_names = tuple(SIZES)
    scenes = [Scene((ObjectSpec(*STANDIN_CLASSES[label], size_names[size], cell // 3, cell % 3),))
              for label, size, cell in zip(labels.tolist(), sizes.tolist(), cells.tolist())]
    chunks = [render(scenes[i : i + 4096], RESOLUTION) for i in range(0, n, 4096)]  # bounded memory
    images = ((torch.cat(chunks) + 1) * 127.5).round().to(torch.uint8)  # (n, 3, 32, 32)
    return images, torch.from_numpy(labels).long()


def is_standin(root: str | Path) -> bool:
    """Whether ``root`` (or its ``cifar-10-batches-py`` folder) was written by ``write_cifar10_standin``."""
    root = Path(root).expanduser()
    return (root / MARKER).exists() or (root / FOLDER / MARKER).exists()


def _write_batch(path: Path, images: Tensor, labels: Tensor, batch_label: str, split: str, first: int) -> None:
    rows = images.reshape(images.shape[0], 3 * RESOLUTION * RESOLUTION).numpy()  # (N, 3072): R plane, G, B
    batch = {
        b"batch_label": batch_label.encode(),
        b"labels": labels.tolist(),
        b"data": np.ascontiguousarray(rows),
        b"filenames": [f"standin_{split}_{first + i:05d}.png".encode() for i in range(images.shape[0])],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)  # the protocol of the published batches (written by Python 2)


def write_cifar10_standin(root: str | Path, n_train: int = 50_000, n_test: int = 10_000, seed: int = 0) -> Path:
    """Write a stand-in for CIFAR-10 (shapes, not CIFAR-10) in CIFAR-10's on-disk format under ``root``.

    Writes ``root/cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5`` (the ``n_train`` training images of
    ``standin_images(n_train, seed, "train")`` in order, split as evenly as possible), ``test_batch``
    (``standin_images(n_test, seed, "test")``), ``batches.meta`` (``b"label_names"``: ``CLASS_NAMES``,
    ``b"num_cases_per_batch"``, ``b"num_vis"``) and the marker ``MINIDIT_STANDIN.txt``. A stand-in already there
    is replaced.

    Args:
        root: the folder to pass to ``minidit.data.datasets.cifar10`` afterwards; created if missing.
        n_train: training images, >= 5 (one per training batch file at least); CIFAR-10 has 50000.
        n_test: test images, >= 1; CIFAR-10 has 10000.
        seed: seed of the images (``standin_images``).
    Returns:
        ``root``, as a ``Path``.
    Raises:
        FileExistsError: if ``root`` holds CIFAR-10 batches that this function did not write (real data is never
            overwritten).
        ValueError: for counts below the minimum.
    """
    _check_count("n_train", n_train, len(TRAIN_FILES), "one image per training batch file at least")
    _check_count("n_test", n_test, 1, "the test batch needs an image")
    root = Path(root).expanduser()
    folder = root / FOLDER
    held = [name for name in (*TRAIN_FILES, TEST_FILE, META_FILE) if (folder / name).exists()]
    if held and not is_standin(root):
        raise FileExistsError(f"{folder} holds CIFAR-10 batches ({', '.join(held)}) that are not a minidit stand-in; "
                              "write the stand-in to another folder")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(
        "A generated stand-in for CIFAR-10 written by minidit.data.standin.write_cifar10_standin: 32x32 shapes "
        f"(classes: {', '.join(CLASS_NAMES)}), NOT CIFAR-10. n_train={n_train}, n_test={n_test}, seed={seed}.\n"
    )  # first, so that a half-written folder is still recognised as a stand-in
    images, labels = standin_images(n_train, seed, "train")
    bounds = np.linspace(0, n_train, len(TRAIN_FILES) + 1).round().astype(int)
    for index, name in enumerate(TRAIN_FILES):
        start, stop = int(bounds[index]), int(bounds[index + 1])
        _write_batch(folder / name, images[start:stop], labels[start:stop],
                     f"stand-in training batch {index + 1} of {len(TRAIN_FILES)} (minidit shapes, not CIFAR-10)",
                     "train", start)
    test_images, test_labels = standin_images(n_test, seed, "test")
    _write_batch(folder / TEST_FILE, test_images, test_labels, "stand-in testing batch 1 of 1 (minidit shapes, "
                 "not CIFAR-10)", "test", 0)
    meta = {b"label_names": [name.encode() for name in CLASS_NAMES],
            b"num_cases_per_batch": int(np.diff(bounds).max()), b"num_vis": 3 * RESOLUTION * RESOLUTION}
    with open(folder / META_FILE, "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return root


def classify(images: Tensor, max_shift: int = 1) -> Tensor:
    """The stand-in class of each image as the exact analyser reads it, or ``-1``.

    An image gets class ``k`` when ``minidit.data.analyser.analyse_batch`` reads exactly one object whose shape and
    colour are ``STANDIN_CLASSES[k]``; anything else (no object, several, or a pair outside the ten) gets ``-1``.

    Args:
        images: ``(N, 3, H, W)`` in ``[-1, 1]`` (float), ``H = W`` in 16..256; or uint8 in 0..255.
        max_shift: as in ``analyse_batch``.
    Returns:
        ``(N,)`` long.
    """
    from minidit.data.analyser import analyse_batch  # lazy: the analyser builds its templates on first use

    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (N, 3, H, W); got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        images = images.float() / 127.5 - 1
    index = {pair: k for k, pair in enumerate(STANDIN_CLASSES)}
    found = analyse_batch(images.float(), max_shift)
    return torch.tensor([index.get((s.objects[0].shape, s.objects[0].colour), -1) if len(s.objects) == 1 else -1
                         for s in found], dtype=torch.long)
