"""A training run's output folder: one run per folder, locked while it trains, never silently overwritten or mixed.

``Trainer`` writes ``checkpoint.pt`` (a ``checkpoint`` folder in a distributed run), ``metrics.jsonl`` (one JSON record per line) and ``samples_{step}.png``
into ``out_dir``. A folder that already holds these files holds a run: training there again needs an explicit
choice, to resume it (the metrics log is cut back to the checkpoint's step, so no step appears twice) or to
overwrite it (its run files are removed first). While a run trains, a lock file holds its process id, so a
second run on the same folder fails at once; a lock left by a killed process is detected as stale (its process
no longer exists) and replaced, with a warning on stderr. Each metrics record is appended whole and cut back if
its write fails, so a record is on disk whole or not at all; a torn last line left by a crash is dropped and
reported.
Used by minidit/train.py and ``python -m minidit train --resume | --overwrite``.

Example:
    >>> with RunLock(Path("runs/toy")):                 # raises InputError while another run trains there
    ...     append_record(Path("runs/toy/metrics.jsonl"), {"step": 1, "loss": 0.5})
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from minidit.validation import InputError

CHECKPOINT_NAME = "checkpoint.pt"
SHARDED_CHECKPOINT_NAME = "checkpoint"  # a folder: minidit.checkpoint.save_sharded_checkpoint
METRICS_NAME = "metrics.jsonl"
LOCK_NAME = ".minidit.lock"


def sample_grid_name(step: int) -> str:
    """File name of the sample grid saved after ``step``: ``samples_0000020.png``."""
    return f"samples_{step:07d}.png"


def run_files(folder: Path) -> list[Path]:
    """The files of a run in ``folder``: checkpoint (file or sharded folder), temporary checkpoints, metrics log and
    sample grids."""
    if not folder.is_dir():
        return []
    names = [CHECKPOINT_NAME, SHARDED_CHECKPOINT_NAME, METRICS_NAME]
    found = [folder / name for name in names if (folder / name).exists()]
    partial = [*folder.glob(f".{CHECKPOINT_NAME}.*.tmp"), *folder.glob(f".{SHARDED_CHECKPOINT_NAME}.tmp"),
               *folder.glob(f".{SHARDED_CHECKPOINT_NAME}.old")]
    return found + sorted(partial) + sorted(folder.glob("samples_*.png"))


def remove_run_files(folder: Path) -> None:
    """Delete the run files of ``folder`` (see ``run_files``); other files stay."""
    for path in run_files(folder):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def remove_samples_after(folder: Path, step: int) -> None:
    """Delete the sample grids of ``folder`` saved after ``step`` (by a run that went on past its checkpoint)."""
    for path in folder.glob("samples_*.png"):
        number = path.stem.removeprefix("samples_")
        if number.isdigit() and int(number) > step:
            path.unlink()


def warn(message: str) -> None:
    """Report something repaired on the way (not an error) as one line on stderr: ``warning: <message>``."""
    print(f"warning: {message}", file=sys.stderr)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


class RunLock:
    """Lock ``folder`` for one training process; ``with RunLock(folder):`` or ``acquire()`` / ``release()``.

    The lock is the file ``folder/.minidit.lock``, created exclusively (``O_CREAT | O_EXCL``) and holding
    ``{"pid": ..., "host": ...}``. Creating it also proves that the folder is writable, before any training step.
    A lock whose process no longer exists on this host is stale: it is replaced, with a warning on stderr.

    Raises:
        InputError: if the folder cannot be created or written, or another live process holds the lock.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False

    def acquire(self) -> RunLock:
        """Create the folder if needed and take the lock (see the class docstring)."""
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.folder}: is a file, not a folder; choose another out_dir (--out)")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(
                f"{self.folder}: cannot create the output folder ({error.strerror or error}); "
                "choose another out_dir (--out) that you can write to"
            ) from error
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._remove_if_stale()
                continue
            except OSError as error:
                raise InputError(
                    f"{self.folder}: the output folder is not writable ({error.strerror or error}); "
                    "choose another out_dir (--out) or make this one writable"
                ) from error
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
            self.held = True
            return self
        raise InputError(f"{self.folder}: the lock {self.path} reappeared while it was being replaced; try again")

    def _remove_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except FileNotFoundError:
            return  # released meanwhile
        except (OSError, ValueError, KeyError, TypeError) as error:  # empty while a run creates it, or damaged
            raise InputError(
                f"{self.folder}: the lock {self.path} is unreadable ({type(error).__name__}), so a run may be starting "
                "here; try again, or delete the lock if no run uses this folder"
            ) from error
        if host != socket.gethostname():
            raise InputError(
                f"{self.folder}: another run, process {pid} on host {host}, is training in this folder "
                f"(lock {self.path}); wait for it, choose another out_dir, or delete the lock if that run is gone"
            )
        if _process_exists(pid):
            who = "this process" if pid == os.getpid() else f"process {pid}"
            raise InputError(
                f"{self.folder}: another run ({who}) is training in this folder (lock {self.path}); wait for it to "
                "finish or choose another out_dir (--out); delete the lock only if that process is not a minidit run"
            )
        warn(f"{self.folder}: removed the stale lock of process {pid}, which no longer runs")
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock file (if this object holds it)."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` to the JSON-lines file ``path`` as one whole line.

    The line goes out in ``O_APPEND`` writes; if writing fails part-way (disk full), the file is cut back to its
    previous length and the error re-raised, so no torn line is left behind.
    """
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError:
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def cut_metrics(path: Path, step: int) -> list[dict[str, Any]]:
    """Keep only the records of ``path`` up to ``step`` (rewritten atomically); returns the kept records.

    A last line that is not valid JSON (a record torn by a crash or a full disk) is dropped, with a warning on stderr.

    Raises:
        InputError: if a line other than the last is not valid JSON, naming the file and the line.
    """
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last whole record
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a record with an integer 'step'")
        except ValueError as error:
            if number < len(lines):
                raise InputError(
                    f"{path}: line {number} is not a metrics record ({error}); repair or delete the file to resume"
                ) from error
            warn(f"{path}: dropped a torn last line ({len(line)} bytes, line {number}) left by a crash")
            continue
        records.append(record)
    kept = [record for record in records if record["step"] <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))
    os.replace(tmp, path)
    return kept
