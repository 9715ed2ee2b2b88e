"""Tests for minidit/fid.py: the Frechet distance on Gaussians with known answers, float64 statistics, the clean resize
against PIL, the FID Inception's layout and weights file, and cached reference statistics."""
import hashlib
import os

import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision
from PIL import Image
from torch import nn

from minidit.data.shapes import ShapesDataset
from minidit.fid import (FEATURES, WEIGHTS_NAME, WEIGHTS_URL, FIDInception, Mixed8, Mixed17, Mixed35, Reduce17to8,
                         Reduce35to17, clean_resize, frechet_distance, inception_features, reference_images,
                         reference_statistics, statistics)
from minidit.validation import InputError


def random_spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T + (0 if rank else 0.1 * np.eye(d))


def test_frechet_distance_of_equal_and_shifted_gaussians():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=6), random_spd(rng, 6)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)
    shift = rng.normal(size=6)
    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(shift @ shift, rel=1e-9, abs=1e-9)


def test_frechet_distance_of_commuting_diagonal_covariances_is_the_closed_form():
    a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
    mu1, mu2 = np.zeros(4), np.array([1.0, 0.0, -2.0, 0.0])
    expected = 5.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # |dmu|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_non_commuting_covariances_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    mu1, mu2, s1, s2 = rng.normal(size=8), rng.normal(size=8), random_spd(rng, 8), random_spd(rng, 8)
    assert not np.allclose(s1 @ s2, s2 @ s1)
    root = scipy.linalg.sqrtm(s1 @ s2)
    expected = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * root).real
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-10)  # symmetric


def test_frechet_distance_of_singular_covariances_is_exact():
    # sigma = u u^T and v v^T (one sample direction each): (S1 S2)^(1/2) has trace |u . v|
    u, v = np.array([1.0, 2.0, 0.0, -1.0]), np.array([0.5, -1.0, 3.0, 2.0])
    expected = u @ u + v @ v - 2 * abs(u @ v)
    assert frechet_distance(np.zeros(4), np.outer(u, u), np.zeros(4), np.outer(v, v)) == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"means \(D,\) and covariances \(D, D\)"):
        frechet_distance(np.zeros(4), np.eye(4), np.zeros(3), np.eye(3))


def test_statistics_are_float64_mean_and_unbiased_covariance():
    rng = np.random.default_rng(2)
    features = torch.from_numpy(1000 + rng.normal(size=(50, 3))).float()  # float32 features far from 0
    mu, sigma = statistics(features)
    x = features.double().numpy()
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-15)
    np.testing.assert_allclose(sigma, (x - x.mean(0)).T @ (x - x.mean(0)) / 49, rtol=1e-10)
    with pytest.raises(ValueError, match="N >= 2"):
        statistics(torch.zeros(1, 3))


def test_clean_resize_is_pil_bicubic_in_float32_of_the_uint8_image():
    levels = torch.randint(0, 256, (2, 3, 5, 7), generator=torch.Generator().manual_seed(0))
    images = levels / 127.5 - 1
    out = clean_resize(images)
    assert out.shape == (2, 3, 299, 299) and out.dtype == torch.float32
    pixels = levels.numpy().astype(np.uint8)
    for i in range(2):
        for c in range(3):
            resized = Image.fromarray(pixels[i, c].astype(np.float32)).resize((299, 299), Image.Resampling.BICUBIC)
            np.testing.assert_allclose(out[i, c].numpy(), np.asarray(resized) / 127.5 - 1, rtol=0, atol=1e-6)
    assert torch.equal(clean_resize(images + 0.4 / 127.5), out)  # quantised first: 0.4 grey levels change nothing
    flat = clean_resize(torch.full((1, 3, 9, 9), 0.2))
    assert (flat - (153 / 127.5 - 1)).abs().max() < 1e-6  # a flat image stays flat at its uint8 level (153)
    with pytest.raises(ValueError, match="expand grey images"):
        clean_resize(torch.zeros(1, 1, 8, 8))


def randomise(network, seed=0):
    """Random weights and batch-norm statistics that keep activations of order 1 (the default init makes them
    vanish through Inception's depth); returns ``network`` in eval mode."""
    torch.manual_seed(seed)
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    return network.eval()


def random_inception(seed=0):
    return randomise(FIDInception(), seed)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A random network's state dict saved under the published file's name (its hash cannot match) and a copy."""
    network = random_inception()
    folder = tmp_path_factory.mktemp("inception")
    torch.save(network.state_dict(), folder / WEIGHTS_NAME)
    os.link(folder / WEIGHTS_NAME, folder / "random_inception.pth")
    return network, folder / "random_inception.pth"


def test_layout_is_torchvisions_inception3_with_1008_classes_and_no_auxiliary_head():
    ours = {name: tuple(v.shape) for name, v in FIDInception().state_dict().items()}
    reference = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    assert ours == {name: tuple(v.shape) for name, v in reference.state_dict().items()}


@pytest.mark.parametrize("ours, theirs, pool_channels, size", [
    (Mixed35(16, pool_features=8), torchvision.models.inception.InceptionA(16, 8), 8, 7),
    (Reduce35to17(16), torchvision.models.inception.InceptionB(16), 0, 7),
    (Mixed17(16, channels_7x7=8), torchvision.models.inception.InceptionC(16, 8), 192, 7),
    (Reduce17to8(16), torchvision.models.inception.InceptionD(16), 0, 7),
    (Mixed8(16, max_pool=False), torchvision.models.inception.InceptionE(16), 192, 5),
    (Mixed8(16, max_pool=True), torchvision.models.inception.InceptionE(16), 192, 5),
])
def test_blocks_compute_torchvisions_but_pool_as_the_fid_graph_does(ours, theirs, pool_channels, size):
    theirs.load_state_dict(randomise(ours).state_dict())  # same names: the weights file fits both
    x = torch.randn(2, 16, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = ours(x), theirs.eval()(x)
    kept = a.shape[1] - pool_channels
    torch.testing.assert_close(a[:, :kept], b[:, :kept])  # every branch but the pooled one is torchvision's
    if pool_channels == 0:
        return
    border = torch.ones(size, size, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    pooled, reference = a[:, kept:], b[:, kept:]
    if getattr(ours, "max_pool", False):  # Mixed_7c: a max pool where torchvision averages
        with torch.no_grad():
            maximum = theirs.branch_pool(torch.nn.functional.max_pool2d(x, kernel_size=3, stride=1, padding=1))
        torch.testing.assert_close(pooled, maximum)
        assert not torch.allclose(pooled, reference)
    else:  # TensorFlow's average ignores the padding: the same inside, different on the border
        torch.testing.assert_close(pooled[..., ~border], reference[..., ~border])
        assert not torch.allclose(pooled[..., border], reference[..., border])


def test_weights_load_back_exactly_and_give_2048_features_in_eval_mode(weights_file):
    original, path = weights_file
    network = FIDInception.from_file(path)
    assert not network.training and not any(p.requires_grad for p in network.parameters())
    assert network.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = network.state_dict()
    assert loaded.keys() == original.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in original.state_dict().items())
    x = clean_resize(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    with torch.no_grad():
        features, first = network(x), network(x[:1])
    assert features.shape == (2, FEATURES) and features.std() > 1e-3
    torch.testing.assert_close(first, features[:1])  # eval mode: an image's features do not depend on its batch
    assert not torch.allclose(features[0], features[1])


def test_weights_file_errors(weights_file, tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{WEIGHTS_URL}.*pretrained_models/"):
        FIDInception.from_file(tmp_path / "missing.pth")
    with pytest.raises(InputError, match="SHA-256 .* not the published file's 6726825d"):
        FIDInception.from_file(weights_file[1].parent / WEIGHTS_NAME)
    torch.save({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}, tmp_path / "imagenet.pth")
    with pytest.raises(InputError, match="torchvision's ImageNet Inception .1000 classes"):
        FIDInception.from_file(tmp_path / "imagenet.pth")
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(InputError, match="not the FID Inception's weights .* Missing key.*Conv2d_1a_3x3.bn.weight"):
        FIDInception.from_file(tmp_path / "partial.pth")


class TinyExtractor(nn.Module):
    """Mean and standard deviation of each channel: 6 features, fast."""

    def __init__(self, weights_sha256="tiny"):
        super().__init__()
        self.weights_sha256 = weights_sha256
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)  # (N, 6)


def test_inception_features_refuse_train_mode_and_do_not_depend_on_the_batch_size():
    images = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 2 - 1
    extractor = TinyExtractor().eval()
    features = inception_features(images, extractor, batch_size=2)
    assert features.shape == (5, 6) and extractor.calls == 3
    torch.testing.assert_close(features, inception_features(images, extractor, batch_size=5))
    with pytest.raises(ValueError, match="train mode"):
        inception_features(images, extractor.train())


SECTION = {"name": "shapes", "resolution": 16, "max_objects": 2, "seed": 3}


def test_reference_images_are_the_first_n_of_the_data_stream():
    data = ShapesDataset(resolution=16, max_objects=2, seed=3)
    expected = torch.cat([data.get_batch(step, 8)[0] for step in range(3)])[:20]
    assert torch.equal(reference_images(SECTION, 20, batch_size=8), expected)


def test_reference_statistics_are_computed_once_and_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDIT_CACHE", str(tmp_path))
    extractor = TinyExtractor().eval()
    mu, sigma = reference_statistics(SECTION, 16, extractor)
    expected = statistics(inception_features(reference_images(SECTION, 16), TinyExtractor().eval()))
    np.testing.assert_array_equal(mu, expected[0])
    np.testing.assert_array_equal(sigma, expected[1])
    files = list((tmp_path / "fid").glob("shapes-16-*.pt"))
    assert len(files) == 1

    def no_images(*args, **kwargs):
        raise AssertionError("cached statistics must not read the data again")

    monkeypatch.setattr("minidit.fid.reference_images", no_images)
    cached = reference_statistics(SECTION, 16, extractor)
    assert extractor.calls == 1 and cached[0].dtype == np.float64
    np.testing.assert_array_equal(cached[1], sigma)
    monkeypatch.undo()
    monkeypatch.setenv("MINIDIT_CACHE", str(tmp_path))
    reference_statistics(SECTION, 12, extractor)  # another sample count
    reference_statistics(SECTION, 16, TinyExtractor("other weights").eval())
    reference_statistics({**SECTION, "seed": 4}, 16, extractor)
    assert len(list((tmp_path / "fid").glob("*.pt"))) == 4
    files[0].write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="unusable"):
        again = reference_statistics(SECTION, 16, extractor)
    np.testing.assert_array_equal(again[1], sigma)
    with pytest.raises(ValueError, match="weights_sha256 is not set"):
        reference_statistics(SECTION, 16, FIDInception())
