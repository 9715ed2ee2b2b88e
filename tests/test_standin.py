"""Tests for minidit.data.standin: the stand-in is read back by the unchanged CIFAR-10 loader bit for bit, with
balanced classes named in batches.meta, its classes are read back by the analyser, and real data is never replaced."""
import pickle

import numpy as np
import pytest
import torch

from minidit.data.datasets import cifar10, load_cifar10
from minidit.data.shapes import ObjectSpec, Scene, render
from minidit.data.standin import (
    CLASS_NAMES,
    FOLDER,
    STANDIN_CLASSES,
    classify,
    is_standin,
    standin_images,
    write_cifar10_standin,
)


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    root = tmp_path_factory.mktemp("standin")
    assert write_cifar10_standin(root, n_train=123, n_test=37, seed=3) == root
    return root


def test_cifar10_loader_reads_the_standin_bit_exactly(standin):
    images, labels, class_names = load_cifar10(standin, "train")
    expected_images, expected_labels = standin_images(123, 3, "train")
    assert images.shape == (123, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
    assert class_names == list(CLASS_NAMES) and len(class_names) == 10
    test_images, test_labels, _ = load_cifar10(standin / FOLDER, "test")  # the batches folder itself works too
    expected_test_images, expected_test_labels = standin_images(37, 3, "test")
    assert torch.equal(test_images, expected_test_images) and torch.equal(test_labels, expected_test_labels)
    data = cifar10(standin, "train", seed=1)
    batch, conditioning = data.get_batch(0, 123)  # one epoch: a permutation of the whole split
    order = torch.from_numpy(data.indices(0, 123))
    assert torch.equal(((batch + 1) * 127.5).round().to(torch.uint8), expected_images[order])
    assert torch.equal(conditioning["y"], expected_labels[order]) and data.num_classes == 10


def test_files_are_the_cifar10_layout(standin):
    folder = standin / FOLDER
    sizes = []
    for index in range(1, 6):
        with open(folder / f"data_batch_{index}", "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
        assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape[1] == 3072
        assert isinstance(batch[b"labels"], list) and len(batch[b"filenames"]) == len(batch[b"labels"])
        sizes.append(len(batch[b"labels"]))
    assert sum(sizes) == 123 and max(sizes) - min(sizes) <= 1  # split as evenly as possible
    with open(folder / "batches.meta", "rb") as f:
        meta = pickle.load(f, encoding="bytes")
    assert meta[b"label_names"] == [name.encode() for name in CLASS_NAMES] and meta[b"num_vis"] == 3072
    # a row is 1024 red values, then green, then blue, each row-major: pixel (r, c) of channel k is at 1024 k + 32 r + c
    images, _ = standin_images(123, 3, "train")
    with open(folder / "data_batch_1", "rb") as f:
        rows = pickle.load(f, encoding="bytes")[b"data"]
    assert rows.shape[0] == sizes[0]
    for channel, row, column in [(0, 0, 0), (1, 16, 3), (2, 5, 7), (2, 31, 31)]:
        assert rows[0, 1024 * channel + 32 * row + column] == images[0, channel, row, column]


def test_classes_are_balanced_named_and_read_back_by_the_analyser():
    images, labels = standin_images(1000, 0, "train")
    assert torch.bincount(labels, minlength=10).tolist() == [100] * 10
    assert len(set(STANDIN_CLASSES)) == 10 and {s for s, _ in STANDIN_CLASSES} == {"circle", "square", "triangle",
                                                                                      "diamond", "cross"}
    assert torch.equal(classify(images[:300]), labels[:300])  # clean renders: read back exactly
    assert torch.equal(classify(images[:50].float() / 127.5 - 1), labels[:50])  # floats in [-1, 1] too
    assert CLASS_NAMES[int(labels[0])].split() == list(reversed(STANDIN_CLASSES[int(labels[0])]))
    assert classify(-torch.ones(2, 3, 32, 32)).tolist() == [-1, -1]  # black images: no object
    two = render([Scene((ObjectSpec("circle", "red", "small", 0, 0), ObjectSpec("cross", "cyan", "large", 2, 2)))], 32)
    outside = render([Scene((ObjectSpec("circle", "green", "small", 1, 1),))], 32)  # not one of the ten pairs
    assert classify(torch.cat([two, outside])).tolist() == [-1, -1]


def test_deterministic_in_seed_and_split():
    a, la = standin_images(40, 5, "train")
    b, lb = standin_images(40, 5, "train")
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, standin_images(40, 6, "train")[0])
    assert not torch.equal(a, standin_images(40, 5, "test")[0])


def test_marker_and_real_data_is_never_overwritten(standin, tmp_path):
    assert is_standin(standin) and is_standin(standin / FOLDER) and not is_standin(tmp_path)
    write_cifar10_standin(standin, n_train=10, n_test=2, seed=3)  # a stand-in is replaced
    assert load_cifar10(standin)[0].shape[0] == 10
    write_cifar10_standin(standin, n_train=123, n_test=37, seed=3)  # back to the fixture's contents
    real = tmp_path / FOLDER
    real.mkdir()
    (real / "data_batch_1").write_bytes(b"real data")
    with pytest.raises(FileExistsError, match="not a minidit stand-in"):
        write_cifar10_standin(tmp_path, n_train=10, n_test=2)
    assert (real / "data_batch_1").read_bytes() == b"real data"


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_train=4), "n_train must be an integer >= 5"),
    (dict(n_test=0), "n_test must be an integer >= 1"),
    (dict(n_train=10.0), "n_train must be an integer"),
])
def test_bad_counts_are_refused_in_one_line(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_cifar10_standin(tmp_path, **kwargs)
    with pytest.raises(ValueError, match="unknown split 'val'"):
        standin_images(3, 0, "val")
    with pytest.raises(ValueError, match=r"shape \(N, 3, H, W\)"):
        classify(torch.zeros(3, 32, 32))
