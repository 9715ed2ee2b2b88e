"""Fault tests: a finished run is never overwritten or mixed, a diverging run keeps its last finite checkpoint,
and data that does not fit the model is refused before training (minidit.run_folder, minidit.train, minidit.config)."""
import errno
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from minidit.__main__ import main
from minidit.checkpoint import CheckpointError, load_checkpoint
from minidit.config import check_data_fits_model, parse_config
from minidit.data.shapes import ShapesDataset
from minidit.run_folder import LOCK_NAME, RunLock, append_record, cut_metrics
from minidit.toy import ToyData, ToyMLP
from minidit.train import DivergenceError, TrainConfig, Trainer
from minidit.validation import InputError

TOY = """
model = { type = "mlp", dim = 2, hidden = 16, depth = 2 }
data = { name = "toy", target = "8gaussians" }
train = { batch_size = 32, lr = 1e-3, log_every = 1, sample_every = 2, progress = false, device = "cpu" }
sample = { n = 50, steps = 2 }
"""


def run_cli(capsys, *argv):
    """Run ``python -m minidit`` in-process; returns ``(exit code, stderr)``."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


def steps_logged(folder):
    return [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy.toml"
    path.write_text(TOY)
    return str(path)


def test_a_finished_run_is_refused_kept_intact_then_replaced_only_with_overwrite(toy, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", toy, "--steps", "4", "--out", str(out))[0] == 0
    before = (out / "checkpoint.pt").read_bytes()
    code, err = run_cli(capsys, "train", toy, "--steps", "2", "--out", str(out))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"error: {out}: holds a run (checkpoint.pt, metrics.jsonl, samples_0000002.png and 1 more)" in err
    assert f"--resume {out / 'checkpoint.pt'}" in err and "--overwrite" in err
    assert (out / "checkpoint.pt").read_bytes() == before and steps_logged(out) == [1, 2, 3, 4]

    code, err = run_cli(capsys, "train", toy, "--steps", "2", "--out", str(out), "--overwrite")
    assert code == 0 and err == ""
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2
    assert steps_logged(out) == [1, 2]  # not 1-4 then 1-2
    assert sorted(p.name for p in out.glob("samples_*.png")) == ["samples_0000002.png"]
    code, err = run_cli(capsys, "train", toy, "--steps", "6", "--out", str(out), "--overwrite", "--resume", str(out / "checkpoint.pt"))
    assert code == 2 and "argument --resume: not allowed with argument --overwrite" in err


def test_an_empty_output_folder_name_is_refused(toy, capsys):
    code, err = run_cli(capsys, "train", toy, "--out", "")
    assert code == 2 and "[train] out_dir" in err and err.count("\n") == 1
    with pytest.raises(InputError, match=r"\[train\] out_dir: is empty"):
        TrainConfig(out_dir="")


def make_trainer(out_dir=None, model=None, **overrides):
    torch.manual_seed(0)
    settings = dict(steps=4, batch_size=16, lr=1e-2, log_every=1, progress=False, device="cpu", time_sampler="logit_normal",
                    out_dir=None if out_dir is None else str(out_dir))
    settings.update(overrides)
    metadata = {"model": {"type": "mlp", "dim": 2, "hidden": 8}, "data": {"name": "toy", "target": "8gaussians"}}
    return Trainer(model or ToyMLP(2, hidden=8, depth=1), ToyData("8gaussians"), TrainConfig(**settings), metadata=metadata)


def test_a_live_lock_stops_a_second_run_at_once_naming_the_first(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp_path.joinpath(LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        trainer = make_trainer(tmp_path)
        with pytest.raises(InputError, match=rf"another run \(process {holder.pid}\) is training in this folder"):
            trainer.train()
        assert trainer.step == 0 and not (tmp_path / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_held_while_training_and_released_after_an_error(tmp_path):
    """A second trainer started while the first trains (here from its sample hook) is refused; the lock then goes."""
    refusals = []

    def second_run(model, step):
        with pytest.raises(InputError, match=r"another run \(this process\)") as info:
            make_trainer(tmp_path).train()
        refusals.append(str(info.value))
        raise KeyboardInterrupt("killed")

    first = make_trainer(tmp_path, sample_every=2)
    first.sample_fn = second_run
    with pytest.raises(KeyboardInterrupt):
        first.train()
    assert len(refusals) == 1 and not (tmp_path / LOCK_NAME).exists()


def test_a_stale_lock_of_a_dead_process_is_replaced_with_a_warning(tmp_path, capsys):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its PID now belongs to no process
    tmp_path.joinpath(LOCK_NAME).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    make_trainer(tmp_path).train()
    assert f"warning: {tmp_path}: removed the stale lock of process {gone.pid}" in capsys.readouterr().err
    assert steps_logged(tmp_path) == [1, 2, 3, 4] and not (tmp_path / LOCK_NAME).exists()
    tmp_path.joinpath(LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "another-host"}))  # cannot be checked
    with pytest.raises(InputError, match="process 1 on host another-host.*delete the lock if that run is gone"):
        RunLock(tmp_path).acquire()
    tmp_path.joinpath(LOCK_NAME).write_text("")  # created but not yet written by a starting run
    with pytest.raises(InputError, match=r"is unreadable \(JSONDecodeError\), so a run may be starting here"):
        RunLock(tmp_path).acquire()
    assert tmp_path.joinpath(LOCK_NAME).exists()


def test_an_unwritable_output_folder_is_refused_before_step_1(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).startswith(str(tmp_path / "ro")) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "open", read_only)
    trainer = make_trainer(tmp_path / "ro", log_every=0)  # would first write after the last step
    with pytest.raises(InputError, match=r"ro: the output folder is not writable \(Permission denied\)"):
        trainer.train()
    assert trainer.step == 0
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="file: is a file, not a folder"):
        make_trainer(tmp_path / "file").train()


def test_resume_refuses_a_changed_model_or_data_section_naming_every_key(tmp_path):
    first = make_trainer(tmp_path, steps=2)
    first.train()
    checkpoint = tmp_path / "checkpoint.pt"
    changed = make_trainer(tmp_path, steps=4)
    changed.metadata = {"model": {"type": "mlp", "dim": 2, "hidden": 8, "depth": 1},
                        "data": {"name": "toy", "target": "two_moons"}}
    with pytest.raises(CheckpointError, match=(
            r"checkpoint\.pt, \[model\] depth, \[data\] target: changed since the checkpoint \(depth = unset in the "
            r"checkpoint but 1 now, target = '8gaussians' in the checkpoint but 'two_moons' now\)")):
        changed.resume(checkpoint)
    assert load_checkpoint(checkpoint)["metadata"]["data"]["target"] == "8gaussians"  # not rewritten
    with pytest.raises(InputError, match=r"\[train\] steps: 2 is not above the step of .*checkpoint\.pt, 2; .*N > 2"):
        make_trainer(tmp_path, steps=2).resume(checkpoint).train()


def test_resume_cuts_the_metrics_back_to_the_checkpoint_and_drops_a_torn_line(tmp_path, capsys):
    """A run killed after logging step 3 but saving only step 2, then a torn write: resumed, no step appears twice."""
    straight = make_trainer(tmp_path / "straight", steps=5)
    straight.train()

    def killed(model, step):
        raise KeyboardInterrupt("SIGKILL")

    crashed = make_trainer(tmp_path / "run", steps=5, checkpoint_every=2, sample_every=3)
    crashed.sample_fn = killed  # dies at step 3, after logging it and before any checkpoint after step 2
    with pytest.raises(KeyboardInterrupt):
        crashed.train()
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.3')  # what a full disk leaves of a record
    assert steps_logged_raw(tmp_path / "run") == [1, 2, 3, None]

    resumed = make_trainer(tmp_path / "run", steps=5, checkpoint_every=2)
    resumed.resume(tmp_path / "run" / "checkpoint.pt").train()
    assert "metrics.jsonl: dropped a torn last line (23 bytes, line 4) left by a crash" in capsys.readouterr().err
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in logged] == [r["loss"] for r in expected]  # bit for bit


def steps_logged_raw(folder):
    steps = []
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:
            steps.append(None)
    return steps


def test_torn_last_line_is_reported_and_a_torn_middle_line_is_an_error(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    assert cut_metrics(path, 2) == [{"step": 1}, {"step": 2}]
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert capsys.readouterr().err == f"warning: {path}: dropped a torn last line (15 bytes, line 4) left by a crash\n"
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(InputError, match=r"metrics\.jsonl: line 2 is not a metrics record"):
        cut_metrics(path, 3)


def test_a_record_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    append_record(path, {"step": 1, "loss": 0.5})
    before = path.read_bytes()

    def disk_full_half_way(fd, data):
        os.lseek(fd, 0, os.SEEK_END)
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    real_write = os.write
    monkeypatch.setattr(os, "write", disk_full_half_way)
    with pytest.raises(OSError, match="No space left"):
        append_record(path, {"step": 2, "loss": 0.25})
    monkeypatch.undo()
    assert path.read_bytes() == before
    append_record(path, {"step": 2, "loss": 0.25})
    assert path.read_text().splitlines() == ['{"step": 1, "loss": 0.5}', '{"step": 2, "loss": 0.25}']


class BreaksAtStep(nn.Module):
    """A linear velocity model whose output becomes NaN from its ``bad_call``-th training forward pass on."""

    def __init__(self, bad_call):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.bad_call, self.calls = bad_call, 0

    def forward(self, x, t):
        self.calls += self.training
        out = self.linear(torch.cat([x, t[:, None]], dim=1))
        return out * float("nan") if self.training and self.calls >= self.bad_call else out


def test_divergence_stops_naming_the_step_and_keeps_the_last_finite_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, model=BreaksAtStep(bad_call=4), steps=10, log_every=0, checkpoint_every=1)
    trainer.source = "exp.toml"
    with pytest.raises(DivergenceError, match=(
            rf"exp\.toml, \[train\] lr: the loss became non-finite \(inf or nan\) at step 4; the last checkpoint, "
            rf"{tmp_path / 'checkpoint.pt'}, holds finite weights; lower lr")):
        trainer.train()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 3 and all(v.isfinite().all() for v in state["model"].values())
    assert not (tmp_path / "metrics.jsonl").exists()  # log_every = 0: nothing logged, the error still names step 4

    late = make_trainer(None, model=BreaksAtStep(bad_call=3), steps=8, log_every=0)
    with pytest.raises(FloatingPointError, match="at step 3;"):  # found at the end, named exactly
        late.train()
    assert late.step == 8


def test_a_checkpoint_is_never_written_with_non_finite_weights(tmp_path):
    trainer = make_trainer(tmp_path, steps=2)
    trainer.train()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        trainer.model.body[-1].weight[0, 0] = float("inf")
    with pytest.raises(DivergenceError, match=r"the model weights are non-finite at step 2 \(body\.1\.weight and 0 more\)"):
        trainer.save()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


SHAPES_CONFIG = Path(__file__).parent.parent / "configs" / "shapes_dit_tiny.toml"  # 32x32, 3 channels, 35 classes


@pytest.mark.parametrize("change, message", [
    (("num_classes = 35", "num_classes = 34"),
     r"\[model\] num_classes: is 34, but the shapes data has 35 classes; set num_classes = 35"),
    (("resolution = 32", "resolution = 16"),
     r"\[model\] input_size: is 32, but the shapes data has 16x16 images; set input_size = 16 or \[data\] resolution = 32"),
    (("in_channels = 3", "in_channels = 4"), r"\[model\] in_channels: is 4, but the shapes data has 3 channels"),
    (("max_objects = 1", "max_objects = 2"),
     r"\[model\] num_classes: is 35, but the shapes data has no class labels; set num_classes = 0"),
])
def test_data_that_does_not_fit_the_model_is_refused_before_training(tmp_path, capsys, change, message):
    config = tmp_path / "shapes.toml"
    assert change[0] in SHAPES_CONFIG.read_text()
    config.write_text(SHAPES_CONFIG.read_text().replace(*change))
    code, err = run_cli(capsys, "train", str(config), "--steps", "1", "--out", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {config}, ") and re.search(message, err)
    assert not (tmp_path / "run").exists()


def test_toy_dimension_must_match_the_target():
    experiment = parse_config({"model": {"type": "mlp", "dim": 3}, "data": {"name": "toy"}}, "toy.toml")
    with pytest.raises(InputError, match=r"toy\.toml, \[model\] dim: is 3, but the toy data has samples of shape \(2,\); set dim = 2"):
        check_data_fits_model(ToyMLP(3), ToyData("8gaussians"), experiment)
    check_data_fits_model(ToyMLP(2), ToyData("8gaussians"), experiment)  # agrees: no error
    shapes = parse_config({"model": {"type": "mlp", "dim": 2}, "data": {"name": "shapes"}}, "s.toml")
    with pytest.raises(InputError, match=r'\[model\] dim: .*use type = "dit" for images'):
        check_data_fits_model(ToyMLP(2), ShapesDataset(16), shapes)
