"""Tests for minidit.data.datasets: tiny files in the true on-disk formats, read back exactly; hostile, corrupt
and misplaced files refused with the file's name."""
import pickle
import re
import struct

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
from minidit.validation import InputError


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


class RunsShellCommand:
    """A hostile pickle: unpickling it calls ``os.system`` (here: creates a marker file)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


class WritesFile:
    """Another hostile pickle: unpickling it calls the builtin ``exec``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.mark.parametrize("payload, refused", [
    (lambda marker: {b"data": RunsShellCommand(f"touch {marker}"), b"labels": [0]}, "posix.system"),
    (lambda marker: [WritesFile(marker)], "builtins.exec"),
])
def test_a_hostile_cifar_pickle_runs_no_code(cifar_root, payload, refused):
    root, _ = cifar_root
    marker = root / "marker"
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    with open(batch, "wb") as f:
        pickle.dump(payload(marker), f)
    with pytest.raises(InputError, match=rf"data_batch_3: refused to unpickle the global {re.escape(refused)}.*nothing was run"):
        load_cifar10(root)
    assert not marker.exists()
    with open(batch, "rb") as f:  # the file does run code through the plain unpickler: the test is not vacuous
        pickle.load(f)
    assert marker.exists()


class CallsCodecs:
    """A pickle calling ``_codecs.encode`` (allowed for latin-1 bytes) with another codec."""

    def __reduce__(self):
        import codecs

        return codecs.encode, ("text", "rot13")


def test_codecs_encode_rebuilds_latin1_bytes_only(cifar_root):
    root, _ = cifar_root
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": CallsCodecs(), b"labels": []}, f)
    with pytest.raises(InputError, match=r"test_batch: .*_codecs\.encode is allowed only to rebuild bytes from latin-1 text"):
        load_cifar10(root, "test")


class Python2Pickler(pickle._Pickler):
    """Writes ``str`` and ``bytes`` with Python 2's string opcodes, as in the real batches (pickled by Python 2)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_string(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_python2_string
    dispatch[str] = save_python2_string


def test_cifar_batches_of_python_2_and_every_python_3_protocol_load_pixel_exact(cifar_root):
    root, planes = cifar_root
    folder = root / "cifar-10-batches-py"
    writers = {"data_batch_1": lambda obj, f: Python2Pickler(f, protocol=2).dump(obj),
               "data_batch_2": lambda obj, f: pickle.dump(obj, f, protocol=2),  # bytes through _codecs.encode
               "data_batch_3": lambda obj, f: pickle.dump(obj, f, protocol=5)}
    for name, write in writers.items():
        images, labels = planes[name]
        rows = images.transpose(0, 3, 1, 2).reshape(4, 3072)
        with open(folder / name, "wb") as f:
            write({b"data": rows, b"labels": labels, b"batch_label": b"training batch"}, f)
    assert b"_codecs" not in (folder / "data_batch_1").read_bytes()  # no global but numpy's, as in the real files
    loaded, labels, _ = load_cifar10(root)
    expected = np.concatenate([planes[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert np.array_equal(loaded.permute(0, 2, 3, 1).numpy(), expected)
    assert labels.tolist() == sum((planes[f"data_batch_{i}"][1] for i in range(1, 6)), [])


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_bytes(path.read_bytes()[:500]), r"data_batch_2: not a readable CIFAR-10 batch \(truncated or corrupt"),
    (lambda path: pickle.dump({b"labels": [1]}, open(path, "wb")), r"data_batch_2: not a CIFAR-10 batch \(a dict with b'data'"),
    (lambda path: pickle.dump({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]}, open(path, "wb")),
     r"data_batch_2: b'data' is float32 \(2, 3072\), not uint8 rows"),
    (lambda path: pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, open(path, "wb")),
     r"data_batch_2: b'labels' is not 2 integers"),
    (lambda path: pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 10]}, open(path, "wb")),
     r"data_batch_2: labels must lie in 0\.\.9, found 3\.\.10"),
])
def test_a_corrupt_cifar_batch_names_the_file_and_the_problem(cifar_root, damage, message):
    root, _ = cifar_root
    damage(root / "cifar-10-batches-py" / "data_batch_2")
    with pytest.raises(InputError, match=message):
        load_cifar10(root)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, message", [
    (dict(data=np.zeros((2, 12288), np.uint8)), r"val_data\.npz: no 'labels' array \(it holds \['data'\]\)"),
    (dict(data=np.zeros((2, 12288), np.uint8), labels=np.array([0, 5])),
     r"val_data\.npz: labels must lie in 1\.\.1000 as in the downloaded files, found 0\.\.5"),
    (dict(data=np.zeros((2, 12288), np.uint8), labels=np.array([1, 1001])), r"found 1\.\.1001"),
    (dict(data=np.zeros((2, 64, 64, 3), np.uint8), labels=np.array([1, 2])), r"'data' is uint8 \(2, 64, 64, 3\), not uint8 rows"),
    (dict(data=np.zeros((2, 12288), np.uint8), labels=np.array([1, 2, 3])), r"'labels' is not 2 integers"),
])
def test_an_imagenet64_batch_with_missing_keys_or_bad_labels_is_refused(tmp_path, arrays, message):
    write_npz(tmp_path / "val_data.npz", **arrays)
    with pytest.raises(InputError, match=message):
        load_imagenet64(tmp_path, "val")


def test_a_corrupt_imagenet64_batch_names_the_file(tmp_path):
    path = write_npz(tmp_path / "val_data.npz", data=np.zeros((2, 12288), np.uint8), labels=np.array([1, 2]))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(InputError, match=r"val_data\.npz: not a readable npz batch"):
        load_imagenet64(tmp_path, "val")
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(InputError, match=r"val_data\.npz: not a readable npz batch"):
        load_imagenet64(tmp_path, "val")


def save_png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_image_folder_ignores_hidden_folders_and_files(tmp_path):
    save_png(tmp_path / "cat" / "0.png", 10)
    save_png(tmp_path / "dog" / "0.png", 20)
    save_png(tmp_path / ".ipynb_checkpoints" / "0-checkpoint.png")  # JupyterLab's own folder
    (tmp_path / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork, not an image
    (tmp_path / "dog" / ".ipynb_checkpoints").mkdir()
    images, labels, class_names = load_image_folder(tmp_path, resolution=8)
    assert class_names == ["cat", "dog"] and labels.tolist() == [0, 1]
    assert images[:, 0, 0, 0].tolist() == [10, 20]


def test_image_folder_refuses_an_empty_class_listing_the_classes_found(tmp_path):
    save_png(tmp_path / "cat" / "0.png")
    save_png(tmp_path / "cat" / "1.png")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match=r"dog: class folder holds no image .*classes found with their image counts: "
                                         r"cat \(2\), dog \(0\); add images or remove the folder"):
        load_image_folder(tmp_path, resolution=8)


def test_image_folder_refuses_loose_and_corrupt_images_naming_the_file(tmp_path):
    save_png(tmp_path / "cat" / "0.png")
    save_png(tmp_path / "stray.png")
    with pytest.raises(InputError, match=r"stray\.png: an image outside the class folders \(1 in .* itself\); move them into a class sub-folder \(cat\)"):
        load_image_folder(tmp_path, resolution=8)
    (tmp_path / "stray.png").unlink()
    good = (tmp_path / "cat" / "0.png").read_bytes()
    (tmp_path / "cat" / "1.png").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(InputError, match=r"cat/1\.png: cannot be read as an image .*replace or delete the file"):
        load_image_folder(tmp_path, resolution=8)
    (tmp_path / "cat" / "1.png").write_bytes(b"plain text with a .png name")
    with pytest.raises(InputError, match=r"cat/1\.png: cannot be read as an image \(cannot identify image file"):
        load_image_folder(tmp_path, resolution=8)
