"""torchrun on the CPU with gloo: N processes train what one process trains, and checkpoints move between them.

The torchrun tests start real jobs (``python -m torch.distributed.run --standalone``) of ``python -m minidit train``
on a tiny class-conditional DiT; a job takes about 10 s on two cores.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from minidit.__main__ import load_stored_model, main
from minidit.checkpoint import CheckpointError
from minidit.config import build_data, build_model, load_config
from minidit.data.datasets import ImageArrayDataset
from minidit.distributed import World, shard_value, transformer_blocks
from minidit.train import Trainer
from minidit.validation import InputError

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
[model]
type = "dit"
input_size = 16
patch_size = 4
in_channels = 3
hidden_size = 32
depth = 2
num_heads = 2
num_classes = 35
class_dropout = 0.5

[data]
name = "shapes"
resolution = 16
min_objects = 1
max_objects = 1
seed = 0

[train]
steps = 4
batch_size = 8
lr = 1e-3
ema_decay = 0.9
log_every = 2
checkpoint_every = 2
progress = false
"""


def write_config(folder: Path, **train: object) -> Path:
    """The tiny DiT config with ``[train]`` settings added (TOML literals)."""
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in train.items())
    path = folder / f"tiny_{len(list(folder.glob('tiny_*.toml')))}.toml"
    path.write_text(CONFIG + extra)
    return path


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def torchrun(processes: int, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment(), cwd=ROOT)


def train_job(processes: int, config: Path, out: Path, *extra: str) -> None:
    result = torchrun(processes, "-m", "minidit", "train", str(config), "--out", str(out), *extra)
    assert result.returncode == 0, result.stderr[-3000:]


def weights(path: Path, part: str = "model") -> dict[str, torch.Tensor]:
    return load_stored_model(str(path), part)[1].state_dict()


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    for part in ("model", "ema"):
        first, second = weights(a, part), weights(b, part)
        assert first.keys() == second.keys()
        for name in first:
            torch.testing.assert_close(first[name], second[name], rtol=0, atol=atol, msg=f"{part} {name}")


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    """The reference: 4 steps of the tiny DiT in one plain process."""
    folder = tmp_path_factory.mktemp("single")
    main(["train", str(write_config(folder)), "--out", str(folder / "run")])
    return folder / "run" / "checkpoint.pt"


def test_rows_of_the_ranks_partition_the_global_batch():
    rows = [World(rank, 4).rows(12) for rank in range(4)]
    assert [(r.start, r.stop) for r in rows] == [(0, 3), (3, 6), (6, 9), (9, 12)]
    ids = torch.arange(12)
    assert torch.equal(torch.cat([shard_value(ids, r, 12) for r in rows]), ids)
    assert shard_value("shared", rows[1], 12) == "shared"


def test_the_ranks_cover_a_dataset_once_per_epoch():
    """With the global batch split into rows, N ranks together read every image once per epoch (a distributed
    sampler), and the epochs' orders differ."""
    images = torch.zeros(12, 3, 2, 2, dtype=torch.uint8)
    data = ImageArrayDataset(images, torch.arange(12) % 3, seed=5)
    for epoch in range(2):
        seen = [int(i) for step in range(3 * epoch, 3 * epoch + 3) for rank in range(2)
                for i in data.indices(step, 4)[World(rank, 2).rows(4)]]
        assert sorted(seen) == list(range(12))
    assert list(data.indices(0, 12)) != list(data.indices(1, 12))


def build_trainer(tmp_path: Path, **train: object) -> Trainer:
    experiment = load_config(write_config(tmp_path, **train))
    torch.manual_seed(0)
    model = build_model(experiment.model, experiment.source)
    return Trainer(model, build_data(experiment.data, experiment.source), experiment.train)


def gradients(trainer: Trainer) -> dict[str, torch.Tensor]:
    trainer.backward()
    return {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}


def test_gradient_accumulation_gives_the_gradient_of_the_whole_batch(tmp_path):
    whole = gradients(build_trainer(tmp_path))
    accumulated = gradients(build_trainer(tmp_path, grad_accumulation=4))
    assert whole.keys() == accumulated.keys()
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-5, atol=1e-7, msg=name)


def test_activation_checkpointing_recomputes_the_blocks_and_keeps_the_gradients(tmp_path):
    calls = []
    plain, checkpointed = build_trainer(tmp_path), build_trainer(tmp_path, activation_checkpointing=True)
    for trainer in (plain, checkpointed):
        transformer_blocks(trainer.model)[0].register_forward_pre_hook(lambda module, inputs: calls.append(1))
    expected = gradients(plain)
    plain_calls, calls[:] = len(calls), []
    recomputed = gradients(checkpointed)
    assert (plain_calls, len(calls)) == (1, 2)  # the backward pass runs the block's forward again
    assert [n for n, _ in checkpointed.model.named_parameters()] == [n for n, _ in plain.model.named_parameters()]
    for name in expected:
        torch.testing.assert_close(recomputed[name], expected[name], rtol=0, atol=0, msg=name)


def test_a_batch_that_does_not_split_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"batch_size: 8 does not split into 1 process\(es\) x grad_accumulation 3"):
        build_trainer(tmp_path, grad_accumulation=3)


def test_two_processes_train_what_one_trains(tmp_path, single_run):
    """DDP: the ranks' mean gradients over their halves average to the gradient of the whole batch."""
    train_job(2, write_config(tmp_path), tmp_path / "ddp")
    assert_same_weights(single_run, tmp_path / "ddp" / "checkpoint")
    single = [json.loads(line) for line in (single_run.parent / "metrics.jsonl").read_text().splitlines()]
    job = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in job] == [2, 4]  # rank 0 logs, once per step
    assert [r["loss"] for r in job] == pytest.approx([r["loss"] for r in single], rel=1e-5)
    assert [r["bin_count"] for r in job] == [r["bin_count"] for r in single]


def test_fsdp_with_accumulation_and_checkpointing_resumes_on_one_and_two_processes(tmp_path, single_run):
    """FSDP2 stopped after its step-2 checkpoint continues, on 1 or 2 processes, to the uninterrupted weights."""
    config = write_config(tmp_path, parallel="fsdp", grad_accumulation=2, activation_checkpointing=True)
    train_job(2, config, tmp_path / "fsdp", "--steps", "2")
    checkpoint = tmp_path / "fsdp" / "checkpoint"
    assert {p.name for p in checkpoint.iterdir()} >= {".metadata", "trainer.pt", "__0_0.distcp", "__1_0.distcp"}
    for name in ("on_one", "on_two"):
        shutil.copytree(checkpoint, tmp_path / name / "checkpoint")
    main(["train", str(config), "--out", str(tmp_path / "on_one"), "--steps", "4",
          "--resume", str(tmp_path / "on_one" / "checkpoint")])
    train_job(2, config, tmp_path / "on_two", "--steps", "4", "--resume", str(tmp_path / "on_two" / "checkpoint"))
    assert_same_weights(single_run, tmp_path / "on_one" / "checkpoint")
    assert_same_weights(single_run, tmp_path / "on_two" / "checkpoint")


def test_a_single_process_checkpoint_resumes_on_two_processes(tmp_path, single_run):
    config = write_config(tmp_path)
    main(["train", str(config), "--out", str(tmp_path / "one"), "--steps", "2"])
    train_job(2, config, tmp_path / "two", "--steps", "4", "--resume", str(tmp_path / "one" / "checkpoint.pt"))
    assert_same_weights(single_run, tmp_path / "two" / "checkpoint")


def test_export_makes_one_file_for_sampling_and_never_overwrites(tmp_path, single_run, capsys):
    train_job(2, write_config(tmp_path, parallel="fsdp"), tmp_path / "job")
    exported = tmp_path / "model.pt"
    main(["export", str(tmp_path / "job" / "checkpoint"), str(exported)])
    assert_same_weights(single_run, exported)
    main(["sample", str(exported), "--n", "4", "--steps", "2", "--out", str(tmp_path / "samples.png")])
    assert (tmp_path / "samples.png").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path / "job" / "checkpoint"), str(exported)])
    assert exit_info.value.code == 2 and "export never overwrites" in capsys.readouterr().err
    trainer = build_trainer(tmp_path)
    with pytest.raises(CheckpointError, match="exported for sampling"):
        trainer.resume(exported)


FAILING_RANK = """
import torch
from minidit.toy import ToyMLP
from minidit.train import Trainer, TrainConfig

class Data:
    def get_batch(self, step, batch_size):
        if torch.distributed.get_rank() == 1 and step == 2:
            raise RuntimeError("the data of rank 1 is unreadable at step 2")
        return torch.randn(batch_size, 2, generator=torch.Generator().manual_seed(step)), {}

Trainer(ToyMLP(2), Data(), TrainConfig(steps=1000, batch_size=8, progress=False)).train()
"""


def test_a_failing_rank_ends_the_job_with_its_rank_and_error(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(textwrap.dedent(FAILING_RANK))
    start = time.monotonic()
    result = torchrun(2, str(script), timeout=120)
    assert result.returncode != 0
    assert time.monotonic() - start < 100  # rank 0, waiting in the gradient all-reduce, was stopped: no hang
    assert "the data of rank 1 is unreadable at step 2" in result.stderr
    assert "rank: 1" in result.stderr  # torchrun's summary names the failed rank


def test_an_input_error_names_the_rank(tmp_path):
    config = write_config(tmp_path, grad_accumulation=3)
    result = torchrun(2, "-m", "minidit", "train", str(config), "--out", str(tmp_path / "run"))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: rank ")]
    assert sorted(line.split(":")[1] for line in lines) == [" rank 0 of 2", " rank 1 of 2"]
    assert "does not split into 2 process(es) x grad_accumulation 3 = 6 equal parts" in lines[0]
