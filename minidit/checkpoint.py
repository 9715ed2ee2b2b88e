"""Checkpoints: everything a training run needs to continue exactly where it stopped, written atomically.

A checkpoint holds the model, its EMA, the optimizer and scheduler states, every random number generator the
run draws from and the step, so a resumed run reproduces the uninterrupted run's losses bit for bit; it is
written to a temporary file, synced and renamed over the old one, so a crash never leaves a half-written file
(and the next save removes the temporary files a killed save left behind).
Training recipe from DiT (arXiv 2212.09748, Sec. 4: AdamW, EMA 0.9999); used by minidit/train.py and the
``python -m minidit train --resume`` CLI (notebooks/03_dit_from_scratch.ipynb).

Everything is stored as tensors and plain Python types, so it loads with ``torch.load(weights_only=True)``.

A distributed run (``minidit.distributed``) writes a **sharded checkpoint** instead: a folder in which
``torch.distributed.checkpoint`` (DCP) stores the model, EMA and optimizer tensors, each rank writing its own shards
and each replicated tensor once, plus ``trainer.pt`` (step, scheduler, RNG, config) written by rank 0. DCP reads
the tensors into the shapes of the reading job, so the folder resumes on any number of processes, or in a plain
process without torchrun. It is written to ``.{name}.tmp`` and swapped in by two renames; a crash between them
leaves the previous checkpoint as ``.{name}.old``, which the next save or load puts back.
"""
from __future__ import annotations

import glob
import os
import random
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minidit.validation import InputError

FORMAT = "minidit-checkpoint-v1"
TRAINER_STATE = "trainer.pt"  # the non-tensor part of a sharded checkpoint folder


class CheckpointError(InputError):
    """A checkpoint file that cannot be used: unreadable, truncated, or from a different run."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: temp file in the same folder, flush, fsync, ``os.replace``.

    A crash while writing leaves the previous file at ``path`` untouched; a kill (SIGKILL, power cut) can leave a
    ``.{name}.*.tmp`` file, which the next save to ``path`` removes. Only one process may save to ``path`` at a
    time (``minidit.run_folder`` locks a run's folder).

    Args:
        state: tensors and plain Python containers (what ``torch.load(weights_only=True)`` accepts).
        path: destination file; its folder is created if needed.
    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a save that was killed
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CheckpointError: if the file is truncated, corrupt or not a minidit checkpoint; the message names the
            file and the fix.
    """
    path = Path(path)
    if path.is_dir():
        return load_checkpoint(_sharded_part(path, TRAINER_STATE), map_location)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; pass the path of a .pt file written by training")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for damaged files
        refused = str(error).startswith("Weights only load failed")
        problem = "it holds more than tensors and plain data, refused without running it" if refused else "truncated or corrupt"
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read ({problem}: {type(error).__name__}: {_reason(error)}). "
            "Delete it and resume from an earlier checkpoint, or train again."
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a minidit checkpoint (expected format {FORMAT!r}); "
            "pass a file written by minidit.train.Trainer.save or `python -m minidit train`"
        )
    return state


def _recover(folder: Path) -> None:
    """Put back ``.{name}.old`` when a crash between the two renames of a save left no ``folder``."""
    old = folder.with_name(f".{folder.name}.old")
    if not folder.exists() and old.is_dir():
        old.rename(folder)


def _sharded_part(folder: Path, name: str) -> Path:
    """``folder / name`` of a sharded checkpoint, or a ``CheckpointError`` when the folder is not one."""
    _recover(folder)
    if not (folder / name).is_file() or not (folder / ".metadata").is_file():
        raise CheckpointError(f"{str(folder)!r} is not a sharded minidit checkpoint (no {name} or .metadata in it); "
                              "pass a checkpoint folder written by a torchrun training run, or a .pt file")
    return folder / name


def save_sharded_checkpoint(tensors: dict[str, Any], state: dict[str, Any], folder: str | os.PathLike) -> Path:
    """Write a sharded checkpoint; every rank of the job calls this with its own ``tensors``.

    Args:
        tensors: ``{"model": ..., "ema": ..., "optimizer": ...}`` state dicts whose tensors may be ``DTensor``
            shards (``torch.distributed.checkpoint.state_dict.get_state_dict``).
        state: everything else (step, scheduler, RNG, config), written by rank 0 into ``trainer.pt``.
        folder: the checkpoint folder; replaced whole, atomically, when every rank has written its part.
    Returns:
        ``folder`` as a ``Path``.
    """
    import torch.distributed.checkpoint as dcp

    from minidit import distributed

    folder = Path(folder)
    tmp, old = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    main = distributed.current_world().main
    if main:
        _recover(folder)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed
        tmp.mkdir(parents=True)
    distributed.barrier()
    with _single_process_is_intended():
        dcp.save(tensors, checkpoint_id=tmp)
    if main:
        save_checkpoint(state, tmp / TRAINER_STATE)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return folder


def load_sharded_tensors(folder: str | os.PathLike, tensors: dict[str, Any]) -> dict[str, Any]:
    """Read the parts ``tensors`` names (e.g. ``{"ema": model.state_dict()}``) of a sharded checkpoint into them, in
    place, resharded to this job's layout (every rank calls it, or one plain process); returns ``tensors``.

    Raises:
        CheckpointError: if ``folder`` is not a sharded checkpoint or lacks a tensor ``tensors`` asks for.
    """
    import torch.distributed.checkpoint as dcp

    folder = Path(folder)
    _sharded_part(folder, TRAINER_STATE)
    try:
        with _single_process_is_intended():
            dcp.load(tensors, checkpoint_id=folder)
    except Exception as error:  # DCP raises CheckpointException / RuntimeError for missing or mismatched keys
        raise CheckpointError(f"checkpoint {str(folder)!r} does not fit this model ({_reason(error)}); build the "
                              "model with the config it was trained with") from error
    return tensors


@contextmanager
def _single_process_is_intended() -> Iterator[None]:
    """Silence DCP's warning that it works in one process without a process group: minidit means it to."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _reason(error: Exception) -> str:
    """The specific part of a ``torch.load`` error on one line (its weights-only errors add paragraphs of advice)."""
    text = str(error)
    if text.startswith("Weights only load failed"):
        paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
        specific = " ".join(p for p in paragraphs[1:] if not p.startswith("Check the documentation"))
        text = specific.removeprefix("WeightsUnpickler error:").strip() or paragraphs[0]
    return " ".join(text.split())


def _numpy_state_to_plain(state: dict[str, Any]) -> dict[str, Any]:
    """``np.random.get_state(legacy=False)`` with its uint32 key array as an int64 tensor."""
    inner = state["state"]
    return {**state, "state": {"key": torch.from_numpy(inner["key"].astype(np.int64)), "pos": int(inner["pos"])}}


def _numpy_state_from_plain(state: dict[str, Any]) -> dict[str, Any]:
    inner = state["state"]
    return {**state, "state": {"key": inner["key"].numpy().astype(np.uint32), "pos": inner["pos"]}}


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Capture every random number generator a training step draws from.

    Args:
        generator: the trainer's own generator (for ``t`` and ``eps``), or ``None``.
    Returns:
        dict with ``"torch"`` (CPU ByteTensor), ``"cuda"`` (list of ByteTensors, empty without CUDA),
        ``"generator"``, ``"python"`` (``random.getstate()``, a tuple of ints) and ``"numpy"``.
    """
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state() if generator is not None else None,
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state(legacy=False)),
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore the generators captured by ``rng_state`` (CUDA only where both runs have it)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and state["generator"] is not None:
        generator.set_state(state["generator"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
