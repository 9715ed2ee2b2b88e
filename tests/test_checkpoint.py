"""Tests for minidit.checkpoint: RNG round trips, atomic writes, clear errors for damaged or mismatched files."""
import random

import numpy as np
import pytest
import torch
from torch import nn

from minidit.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from minidit.train import TrainConfig, Trainer


def draw_everything(generator):
    return (torch.rand(3).tolist(), torch.rand(3, generator=generator).tolist(), random.random(),
            np.random.rand(3).tolist(), np.random.normal())


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    generator = torch.Generator().manual_seed(5)
    np.random.normal()  # leaves a cached Gaussian in numpy's state
    save_checkpoint({"rng": rng_state(generator)}, tmp_path / "rng.pt")
    expected = draw_everything(generator)
    torch.manual_seed(99), random.seed(99), np.random.seed(99), generator.manual_seed(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"], generator)
    assert draw_everything(generator) == expected


def test_round_trip_keeps_tensors_and_plain_values(tmp_path):
    state = {"weights": torch.arange(6.0).reshape(2, 3), "step": 7, "config": {"betas": (0.9, 0.99), "out": None}}
    loaded = load_checkpoint(save_checkpoint(state, tmp_path / "sub" / "a.pt"))
    assert torch.equal(loaded["weights"], state["weights"])
    assert loaded["step"] == 7 and loaded["config"] == state["config"]


def test_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1}, path)

    def crash_half_way(obj, f):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # the temp file was removed


def test_temp_file_from_a_killed_save_is_harmless_and_removed_by_the_next_save(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1}, path)
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"garbage")  # what a SIGKILL mid-write leaves
    (tmp_path / ".other.pt.abc123.tmp").write_bytes(b"another file's")  # not ours: kept
    assert load_checkpoint(path)["step"] == 1
    save_checkpoint({"step": 2}, path)
    assert load_checkpoint(path)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.abc123.tmp", "checkpoint.pt"]


def test_truncated_file_gives_an_error_naming_the_file_and_the_fix(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"w": torch.randn(100)}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt.*truncated or corrupt.*Delete it"):
        load_checkpoint(path)


class RunsShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_hostile_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"format": "minidit-checkpoint-v1", "step": RunsShellCommand(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt' cannot be read \(it holds more than tensors and plain data, "
                                              r"refused without running it: UnpicklingError: Trying to load unsupported "
                                              r"GLOBAL posix\.system whose module posix is blocked\.\)\. Delete it"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "text.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"text\.pt' cannot be read .*UnpicklingError: .*\)\. Delete it") as info:
        load_checkpoint(tmp_path / "text.pt")
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)  # torch's advice to load unsafely is cut


def test_foreign_and_missing_files_are_rejected(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a minidit checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


class TimeFree(nn.Linear):
    def forward(self, x, t):
        return super().forward(x)


class Constant:
    def get_batch(self, step, batch_size):
        return torch.ones(batch_size, 2), {}


def make_trainer(**overrides):
    config = TrainConfig(**{"steps": 2, "batch_size": 4, "progress": False, "device": "cpu", **overrides})
    return Trainer(TimeFree(2, 2), Constant(), config)


def test_resume_with_different_settings_names_them(tmp_path):
    trainer = make_trainer()
    trainer.train()
    path = trainer.save(tmp_path / "ckpt.pt")
    make_trainer(steps=10, log_every=1).resume(path)  # schedule-only changes are allowed
    with pytest.raises(CheckpointError, match=r"ckpt\.pt, \[train\] lr: changed since the checkpoint "
                                              r"\(lr = 0\.0001 in the checkpoint but 0\.001 now\)"):
        make_trainer(lr=1e-3).resume(path)


def test_resume_into_a_different_model_names_the_file(tmp_path):
    path = make_trainer().save(tmp_path / "ckpt.pt")
    other = Trainer(TimeFree(2, 3), Constant(), TrainConfig(steps=2, batch_size=4, progress=False, device="cpu"))
    with pytest.raises(CheckpointError, match=r"ckpt\.pt.*different model"):
        other.resume(path)
