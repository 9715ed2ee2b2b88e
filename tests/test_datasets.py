"""Tests for minidit.data.datasets: tiny files in the true on-disk formats, read back exactly."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from minidit.data.datasets import (
    ImageArrayDataset,
    cifar10,
    image_folder,
    imagenet64,
    load_cifar10,
    load_image_folder,
    load_imagenet64,
)


def random_uint8(rng, *shape):
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture
def cifar_root(tmp_path):
    """Six tiny CIFAR-10 batches: rows of 3072 bytes, 1024 red then green then blue, row-major."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    planes = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = random_uint8(rng, 4, 32, 32, 3)  # (N, H, W, RGB) as a viewer sees them
        labels = rng.integers(0, 10, size=4).tolist()
        data = images.transpose(0, 3, 1, 2).reshape(4, 3072)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
        planes[name] = (images, labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": 4}, f)
    return tmp_path, planes


def test_cifar10_reads_pixels_and_labels_exactly(cifar_root):
    root, planes = cifar_root
    images, labels, class_names = load_cifar10(root, "train")
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.uint8
    expected = np.concatenate([planes[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert np.array_equal(images.permute(0, 2, 3, 1).numpy(), expected)
    assert labels.tolist() == sum((planes[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert class_names[0] == "airplane" and len(class_names) == 10
    test_images, test_labels, _ = load_cifar10(root / "cifar-10-batches-py", "test")  # the folder itself works too
    assert np.array_equal(test_images.permute(0, 2, 3, 1).numpy(), planes["test_batch"][0])
    assert test_labels.tolist() == planes["test_batch"][1]


def test_cifar10_batches_round_trip_to_uint8(cifar_root):
    root, _ = cifar_root
    data = cifar10(root, "train", seed=1)
    images, cond = data.get_batch(0, 20)  # one full epoch: a permutation of the data set
    assert images.shape == (20, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    raw, labels, _ = load_cifar10(root)
    order = torch.from_numpy(data.indices(0, 20))
    assert sorted(order.tolist()) == list(range(20))
    assert torch.equal(((images + 1) * 127.5).round().to(torch.uint8), raw[order])
    assert torch.equal(cond["y"], labels[order]) and cond["y"].dtype == torch.long


def test_imagenet64_reads_channel_planar_rows_and_shifts_labels(tmp_path):
    rng = np.random.default_rng(1)
    written = {}
    for name in ["train_data_batch_1", "train_data_batch_2", "val_data"]:
        images = random_uint8(rng, 3, 64, 64, 3)  # (N, H, W, RGB)
        labels = rng.integers(1, 1001, size=3)  # 1-based, as in the files
        np.savez(tmp_path / f"{name}.npz", data=images.transpose(0, 3, 1, 2).reshape(3, 12288), labels=labels)
        written[name] = (images, labels)
    images, labels = load_imagenet64(tmp_path, "train", batches=(1, 2))
    expected = np.concatenate([written["train_data_batch_1"][0], written["train_data_batch_2"][0]])
    assert np.array_equal(images.permute(0, 2, 3, 1).numpy(), expected)
    assert labels.tolist() == (np.concatenate([written[f"train_data_batch_{i}"][1] for i in (1, 2)]) - 1).tolist()
    val = imagenet64(tmp_path, "val", seed=2)
    assert val.num_classes == 1000
    batch, cond = val.get_batch(0, 3)
    order = torch.from_numpy(val.indices(0, 3))
    full = torch.from_numpy(written["val_data"][0]).permute(0, 3, 1, 2)  # (N, 3, 64, 64)
    assert torch.equal(((batch + 1) * 127.5).round().to(torch.uint8), full[order])
    assert torch.equal(cond["y"], torch.from_numpy(written["val_data"][1] - 1)[order])


def test_resizing_reproduces_a_linear_ramp():
    """Antialiased bilinear resizing is a normalised symmetric filter: it keeps linear images linear."""
    ramp = (4 * torch.arange(64)).to(torch.uint8).expand(1, 3, 64, 64)  # pixel value 4 * column
    batch, _ = ImageArrayDataset(ramp, torch.zeros(1), resolution=32).get_batch(0, 1)
    # output column j is centred on input column 2j + 0.5, where the ramp equals 4 * (2j + 0.5)
    expected = (8 * torch.arange(32) + 2) / 127.5 - 1
    assert torch.allclose(batch[0, :, :, 2:-2], expected[2:-2].expand(3, 32, 28), atol=1e-5)


def test_image_folder_reads_pngs_exactly_and_resizes(tmp_path):
    rng = np.random.default_rng(2)
    pixels = {}
    for name in ["dog", "cat"]:
        (tmp_path / name).mkdir()
        for i in range(2):
            image = random_uint8(rng, 16, 16, 3)
            Image.fromarray(image).save(tmp_path / name / f"{i}.png")
            pixels[(name, i)] = image
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    images, labels, class_names = load_image_folder(tmp_path, resolution=16)
    assert class_names == ["cat", "dog"] and labels.tolist() == [0, 0, 1, 1]
    expected = np.stack([pixels[(n, i)] for n in ["cat", "dog"] for i in range(2)])
    assert np.array_equal(images.permute(0, 2, 3, 1).numpy(), expected)  # PNG is lossless
    # a 16x32 image with a bright centre quarter is resized to 8x16 and cropped to columns 4..11 of that:
    # the bright band (resized columns 6..9) lands in the middle of the crop, symmetric, dark at both edges
    wide = np.zeros((16, 32, 3), np.uint8)
    wide[:, 12:20] = 200
    (tmp_path / "wide").mkdir()
    Image.fromarray(wide).save(tmp_path / "wide" / "0.png")
    small, _, _ = load_image_folder(tmp_path, resolution=8)
    crop = small[-1].int()
    assert small.shape == (5, 3, 8, 8) and torch.equal(crop, crop.flip(-1))
    assert torch.all(crop[..., [0, 7]] == 0) and torch.all((crop[..., 3:5] - 200).abs() <= 5)
    data = image_folder(tmp_path, resolution=8, seed=0)
    assert data.num_classes == 3 and data.class_names == ["cat", "dog", "wide"]


def test_get_batch_is_deterministic_in_seed_and_step_and_covers_each_epoch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    data = ImageArrayDataset(images, torch.arange(10), seed=5)
    batches = [data.get_batch(step, 4)[1]["y"] for step in range(5)]  # 20 samples: two epochs
    seen = torch.cat(batches)
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert not torch.equal(seen[:10], seen[10:])  # a fresh permutation per epoch
    resumed = ImageArrayDataset(images, torch.arange(10), seed=5)
    assert torch.equal(resumed.get_batch(3, 4)[1]["y"], batches[3])  # no state needed to resume
    assert not torch.equal(ImageArrayDataset(images, torch.arange(10), seed=6).get_batch(0, 10)[1]["y"], seen[:10])
    batch, cond = data.get_batch(2, 4)
    assert torch.equal(batch[:, 0, 0, 0], cond["y"].float() / 127.5 - 1)  # image i has pixel value i


def test_flip_is_deterministic_and_mirrors_exactly():
    images = torch.from_numpy(random_uint8(np.random.default_rng(3), 64, 3, 4, 4))
    plain = ImageArrayDataset(images, torch.zeros(64), seed=0).get_batch(0, 64)[0]
    flipped = ImageArrayDataset(images, torch.zeros(64), seed=0, flip=True).get_batch(0, 64)[0]
    again = ImageArrayDataset(images, torch.zeros(64), seed=0, flip=True).get_batch(0, 64)[0]
    assert torch.equal(flipped, again)
    is_flipped = (flipped != plain).flatten(1).any(1)
    assert torch.equal(flipped[is_flipped], plain[is_flipped].flip(-1))
    assert 10 < int(is_flipped.sum()) < 54  # about half of 64


def test_missing_datasets_say_where_files_go(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-python\.tar\.gz.*cs\.toronto\.edu"):
        load_cifar10(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"train_data_batch_1\.npz.*image-net\.org"):
        load_imagenet64(tmp_path)
    with pytest.raises(FileNotFoundError, match="one sub-folder per class"):
        load_image_folder(tmp_path / "nowhere", 32)
    with pytest.raises(ValueError, match="valid splits"):
        load_cifar10(tmp_path, "validation")
    with pytest.raises(ValueError, match="uint8"):
        ImageArrayDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2))
