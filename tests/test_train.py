"""Tests for minidit.train: exact resume, EMA algebra, warm-up values, per-time-bin logging, sample grids."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from minidit.dit import DiT, DiTConfig
from minidit.data.datasets import ImageArrayDataset
from minidit.distributed import World
from minidit.train import EMA, RowSource, TrainConfig, Trainer, bin_losses, validation_loss, warmup_factor


class TinyNet(nn.Module):
    """A small velocity model with dropout (draws from the global RNG) and a BatchNorm (buffers)."""

    def __init__(self, dim: int = 2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, 16), nn.BatchNorm1d(16), nn.SiLU(), nn.Dropout(0.2), nn.Linear(16, dim))

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None]], dim=1))


class ShiftedGaussians:
    """Deterministic batches: batch ``step`` comes from a generator seeded with ``step``."""

    def get_batch(self, step, batch_size):
        g = torch.Generator().manual_seed(1000 + step)
        return torch.randn(batch_size, 2, generator=g) + 3.0, {}


def make_trainer(tmp_path=None, **overrides):
    torch.manual_seed(0)
    settings = dict(steps=10, batch_size=32, lr=1e-2, warmup_steps=3, ema_decay=0.9, log_every=1,
                    time_sampler="logit_normal", progress=False, device="cpu")
    settings.update(overrides)
    return Trainer(TinyNet(), ShiftedGaussians(), TrainConfig(**settings))


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    straight = make_trainer()
    losses_straight = [r["loss"] for r in straight.train()]

    first = make_trainer()
    first.train(5)
    first.save(tmp_path / "ckpt.pt")
    torch.manual_seed(123)  # disturb every RNG the resumed run depends on
    np.random.seed(123)
    second = make_trainer()
    second.model.net[0].weight.data.fill_(7.0)
    second.resume(tmp_path / "ckpt.pt")
    assert second.step == 5
    losses_resumed = [r["loss"] for r in first.history] + [r["loss"] for r in second.train()]

    assert len(losses_straight) == 10
    assert losses_resumed == losses_straight  # bit-for-bit
    for a, b in zip(straight.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.model.state_dict().values(), second.ema.model.state_dict().values()):
        assert torch.equal(a, b)


class FixedImages:
    """The same class-labelled images ``(4, 3, 8, 8)`` every step."""

    def get_batch(self, step, batch_size):
        g = torch.Generator().manual_seed(0)
        return torch.randn(batch_size, 3, 8, 8, generator=g), {"y": torch.arange(batch_size) % 4}


def test_compiled_training_takes_the_same_steps_as_eager():
    """``compile = true`` (Inductor, the path CUDA runs use) trains the same DiT as eager mode, step for step."""
    config = DiTConfig(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=2,
                       num_classes=4, class_dropout=0.0)  # label dropout would draw from Inductor's own RNG
    losses, weights = {}, {}
    for compile in (False, True):
        torch.manual_seed(0)
        trainer = Trainer(DiT(config), FixedImages(), TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=0,
                                                                  compile=compile, progress=False, device="cpu"))
        assert (trainer.forward is trainer.model) is not compile
        losses[compile] = torch.stack([trainer.train_step()[0] for _ in range(3)])  # (3, B)
        weights[compile] = trainer.model.final_layer.linear.weight.detach()
    assert losses[False][2].mean() < losses[False][0].mean()  # it learns: the comparison is not of constants
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weights[True], weights[False], rtol=1e-4, atol=1e-5)


def test_training_reduces_the_loss():
    trainer = make_trainer(steps=90, log_every=30, warmup_steps=0)
    history = trainer.train()
    assert [r["step"] for r in history] == [30, 60, 90]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]


def test_ema_update_is_the_exponential_average():
    torch.manual_seed(0)
    model = TinyNet()
    ema = EMA(model, decay=0.75)
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()(torch.randn(8, 2), torch.rand(8))  # moves the BatchNorm running stats and counter
    ema.update(model)
    current = model.state_dict()
    for name, value in ema.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * before[name] + 0.25 * current[name], rtol=0, atol=1e-6)
        else:  # num_batches_tracked is copied
            assert torch.equal(value, current[name])
    assert not any(p.requires_grad for p in ema.model.parameters())
    assert not ema.model.training


def test_warmup_learning_rates():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
    trainer = make_trainer(steps=6, lr=1e-3, warmup_steps=4)
    lrs = [r["lr"] for r in trainer.train()]
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3], rel=1e-12)


def test_bin_losses_sums_and_counts_exactly():
    t = torch.tensor([0.05, 0.15, 0.19, 0.95, 1.0, 0.0])
    loss = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    sums, counts = bin_losses(loss, t, bins=10)
    assert sums.tolist() == [33.0, 6.0, 0, 0, 0, 0, 0, 0, 0, 24.0]
    assert counts.tolist() == [2.0, 2.0, 0, 0, 0, 0, 0, 0, 0, 2.0]


def test_logged_bins_add_up_to_the_logged_loss(tmp_path):
    trainer = make_trainer(steps=6, log_every=3, time_bins=4, out_dir=str(tmp_path))
    history = trainer.train()
    for record in history:
        assert sum(record["bin_count"]) == 3 * 32
        total = sum(m * c for m, c in zip(record["bin_loss"], record["bin_count"]) if c)
        assert total / sum(record["bin_count"]) == pytest.approx(record["loss"], rel=1e-5)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6]
    assert lines[1]["loss"] == history[1]["loss"]


def test_sample_grid_maps_minus_one_one_to_pixels(tmp_path):
    def sample_fn(ema_model, step):
        images = torch.full((4, 3, 8, 8), -1.0)
        images[:, 0] = 1.0  # red channel at full intensity
        images[:, 1] = 0.0  # green at mid grey
        return images

    trainer = Trainer(TinyNet(), ShiftedGaussians(), TrainConfig(steps=4, batch_size=8, sample_every=2, log_every=2,
                                                                progress=False, device="cpu", out_dir=str(tmp_path)),
                      sample_fn=sample_fn)
    trainer.train()
    assert sorted(p.name for p in tmp_path.glob("samples_*.png")) == ["samples_0000002.png", "samples_0000004.png"]
    pixels = np.asarray(Image.open(tmp_path / "samples_0000004.png").convert("RGB"))  # minidit.viz.save_grid
    assert pixels.shape == (142, 142, 3)  # 2 x 2 samples of 8 x 8 shown at 64 px, 2-pixel gaps, 4-pixel margin
    assert pixels[10, 10].tolist() == [255, 128, 0]
    assert (tmp_path / "checkpoint.pt").is_file()


def test_non_finite_loss_raises_with_a_fix():
    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x, t):
            return x * self.w * float("inf")

    trainer = Trainer(Exploding(), ShiftedGaussians(), TrainConfig(steps=1, batch_size=4, progress=False, device="cpu"))
    with pytest.raises(FloatingPointError, match=r"\[train\] lr: the loss became non-finite .* at step 1; lower lr"):
        trainer.train()


def test_config_rejects_bad_names_and_values():
    with pytest.raises(ValueError, match="valid predictions are"):
        TrainConfig(prediction="epsilon")
    with pytest.raises(ValueError, match="valid precisions are"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.5)


def test_validation_loss_is_zero_for_the_exact_velocity_of_a_point_mass():
    """Data x0 = 0: x_t = sigma_t eps and u_t = sigma_t' eps, so v(x, t) = (sigma_t' / sigma_t) x is exact."""
    x0 = torch.zeros(8, 3, 4, 4)
    t_grid = [0.2, 0.5, 0.9]
    linear = validation_loss(lambda x, t: x / t[:, None, None, None], x0, "linear", t_grid)
    gvp = validation_loss(lambda x, t: x * (np.pi / 2) / torch.tan(np.pi * t / 2)[:, None, None, None], x0, "gvp", t_grid)
    assert linear.shape == (3,)
    assert torch.allclose(linear, torch.zeros(3), atol=1e-10)
    assert torch.allclose(gvp, torch.zeros(3), atol=1e-10)
    # the linear-path field is wrong on the GVP path: a positive loss at every t
    assert (validation_loss(lambda x, t: x / t[:, None, None, None], x0, "gvp", t_grid) > 1e-3).all()


def test_validation_loss_of_the_zero_model_is_the_target_energy():
    """Linear path: u_t = eps - x0 for every t, so a zero model scores mean (eps - x0)^2 with the seeded noise."""
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    expected = (noise - x0).pow(2).mean()
    losses = validation_loss(lambda x, t: torch.zeros_like(x), x0, "linear", [0.0, 0.4, 1.0], seed=3)
    assert torch.allclose(losses, expected.expand(3), rtol=1e-6)


def test_validation_loss_restores_the_training_mode_and_checks_times():
    net = TinyNet()
    net.train()
    first = validation_loss(net, torch.randn(32, 2), t_grid=[0.5])
    assert net.training
    with pytest.raises(ValueError, match="t_grid must lie in"):
        validation_loss(net, torch.randn(4, 2), t_grid=[0.5, 1.5])
    assert first.shape == (1,)


class CountingRows:
    """An image dataset with flips, recording the rows each ``get_rows`` call was asked for."""

    def __init__(self):
        images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (20, 3, 8, 8), dtype=np.uint8))
        self.data, self.asked = ImageArrayDataset(images, torch.arange(20) % 3, seed=1, flip=True), []

    def get_batch(self, step, batch_size):
        return self.data.get_batch(step, batch_size)

    def get_rows(self, step, batch_size, rows):
        self.asked.append(rows)
        return self.data.get_rows(step, batch_size, rows)


class WholeBatches:
    """The same data without ``get_rows``: the trainer builds the whole batch and slices it."""

    def __init__(self, data):
        self.get_batch = data.get_batch


def test_each_rank_reads_only_its_rows_of_a_row_source_and_computes_what_slicing_the_whole_batch_computes():
    rows_source = CountingRows()
    assert isinstance(rows_source, RowSource) and not isinstance(WholeBatches(rows_source), RowSource)
    for step in (0, 3):  # the get_rows of the image datasets is get_batch sliced, flips included
        whole, labels = rows_source.data.get_batch(step, 12)
        part, part_labels = rows_source.data.get_rows(step, 12, slice(4, 9))
        assert torch.equal(part, whole[4:9]) and torch.equal(part_labels["y"], labels["y"][4:9])
    results = []
    for source in (rows_source, WholeBatches(rows_source)):
        torch.manual_seed(0)
        model = DiT(DiTConfig(input_size=8, patch_size=4, in_channels=3, hidden_size=16, depth=1, num_heads=2,
                              num_classes=3, class_dropout=0.5))
        trainer = Trainer(model, source, TrainConfig(batch_size=12, grad_accumulation=2, progress=False,
                                                      device="cpu"))
        trainer.world = World(rank=1, size=2)  # the second of two processes, without starting any
        losses, times = trainer.backward()
        results.append((losses, times, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert rows_source.asked == [slice(6, 12)]
    (losses, times, grads), (whole_losses, whole_times, whole_grads) = results
    assert losses.shape == (6,) and torch.equal(losses, whole_losses) and torch.equal(times, whole_times)
    assert len(grads) == len(whole_grads) and all(torch.equal(a, b) for a, b in zip(grads, whole_grads))
