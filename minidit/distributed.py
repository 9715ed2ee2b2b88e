"""Scale-out with torchrun: the same ``Trainer`` on N processes, data parallel (DDP) or fully sharded (FSDP2).

``torchrun --nproc_per_node N -m minidit train configs/X.toml`` starts N copies of the command; each joins the
process group (NCCL on CUDA, gloo on CPU) and trains on its share of every batch. The run does not depend on N:
every process draws the **global** batch of step ``s`` (the data's ``get_batch(s, B)``, and ``t``, ``eps`` and the
classifier-free-guidance drops from the trainer's seeded generator) and keeps its rows ``World.rows``. The ranks'
gradients of the mean loss over their rows are averaged, which is the gradient of the mean over the whole batch,
so N processes compute what one process computes with the same global batch, and a checkpoint (whose data
position is the step) resumes on any number of processes. DiT's ``train.py`` instead seeds rank ``r`` with
``seed * N + r``, which ties a run to its number of processes (``../shared/notes/anchors.md``, Scale-out).

Two ways to share the model (``[train] parallel``):

* ``"ddp"``: ``DistributedDataParallel``; every rank holds the whole model and optimizer; gradients are averaged
  by all-reduce during the backward pass.
* ``"fsdp"``: FSDP2 (``torch.distributed.fsdp.fully_shard``, ZeRO-3; Zhao et al. 2023, arXiv 2304.11277): each
  transformer block, then the root, is a unit whose parameters, gradients and AdamW moments are split over the
  ranks and gathered only while the unit runs. The EMA copy is sharded the same way. On CUDA the gathered
  parameters are bf16 and gradients are reduced in fp32 (``MixedPrecisionPolicy``).

``activation_checkpointing`` recomputes each block's activations in the backward pass instead of storing them
(Chen et al. 2016, arXiv 1604.06174): memory of one block instead of all, for a third more compute. Checkpoints of a
distributed run go through ``torch.distributed.checkpoint`` (``minidit.checkpoint.save_sharded_checkpoint``).
Used by minidit/train.py, ``python -m minidit train`` under torchrun and the GPU recipes (configs/*_gpu.toml).

Example:
    $ torchrun --standalone --nproc_per_node 2 -m minidit train configs/shapes_dit_tiny.toml --out runs/tiny2
"""
from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from minidit.validation import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes (``World()`` is a single process)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Whether this process logs, shows progress and writes the run's files (rank 0)."""
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of ``batch_size`` (which ``size`` divides)."""
        share = batch_size // self.size
        return slice(self.rank * share, (self.rank + 1) * share)


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher setting ``RANK`` and ``WORLD_SIZE``) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def current_world() -> World:
    """The ``World`` of the initialised process group, or a single process without one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_process_group(device: torch.device) -> tuple[World, torch.device]:
    """Join torchrun's process group for training on ``device`` (NCCL on CUDA, gloo on the CPU).

    Without torchrun this does nothing. On CUDA each process takes the GPU of its ``LOCAL_RANK``.

    Returns:
        ``(world, device)``: the job, and this process's device (``cuda:LOCAL_RANK`` on CUDA).
    """
    if device.type == "cuda" and launched_by_torchrun():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if launched_by_torchrun() and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return current_world(), device


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """Every element of every ``blocks`` ModuleList in ``model`` (DiT, MM-DiT, refiner and text-encoder blocks),
    innermost first, the units of FSDP2 and of activation checkpointing."""
    lists = [module for name, module in model.named_modules() if name.rsplit(".", 1)[-1] == "blocks"
             and isinstance(module, nn.ModuleList)]
    return [block for blocks in reversed(lists) for block in blocks]


def parallelize(model: nn.Module, ema_model: nn.Module, world: World, parallel: str, device: torch.device,
                param_dtype: torch.dtype | None, activation_checkpointing: bool) -> nn.Module:
    """Prepare ``model`` (and its EMA copy ``ema_model``) for training in ``world``; return the module to call.

    Activation checkpointing wraps every transformer block of ``model`` in place (parameter names unchanged). In a
    single process that is all. With several, ``"ddp"`` returns the ``DistributedDataParallel`` wrapper of
    ``model``; ``"fsdp"`` shards ``model`` and ``ema_model`` in place (each block, then the root), with bf16
    parameters and fp32 reduction when ``param_dtype`` is ``torch.bfloat16``, and returns ``model``.
    """
    if activation_checkpointing:
        from torch.distributed._composable import checkpoint

        blocks = transformer_blocks(model)
        if not blocks:
            raise InputError(f"[train] activation_checkpointing: {type(model).__name__} has no transformer blocks "
                             "(a `blocks` list) to recompute; set activation_checkpointing = false")
        for block in blocks:
            checkpoint(block)
    if world.size == 1:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # a batch may leave parameters unused (a frames model's [nextframe] token on a batch of images), so DDP
        # looks for them in every step's graph instead of waiting for their gradients
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=True)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    for module in (model, ema_model):
        for block in transformer_blocks(module):
            fully_shard(block, mp_policy=policy)
        fully_shard(module, mp_policy=policy)
    return model


def gradient_sync(module: nn.Module, enabled: bool) -> ContextManager[None]:
    """A context in which a backward pass of ``module`` does (``enabled``) or does not average gradients over the
    ranks: the micro-batches of gradient accumulation but the last one skip the communication."""
    if hasattr(module, "no_sync"):  # DistributedDataParallel
        return nullcontext() if enabled else module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):  # an FSDP2 module
        module.set_requires_gradient_sync(enabled)
    return nullcontext()


def sharded(module: nn.Module) -> bool:
    """Whether FSDP2 shards ``module``'s parameters (then every rank must take part in its forward pass)."""
    return hasattr(module, "set_requires_gradient_sync")


def full(tensor: Tensor) -> Tensor:
    """The whole value of a tensor that may be a ``DTensor`` shard (a collective: every rank must call it)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def all_sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over the ranks in place (nothing in a single process) and return it."""
    if current_world().size > 1:
        dist.all_reduce(tensor)
    return tensor


def all_true(flag: Tensor) -> bool:
    """Whether a boolean ``flag`` holds on every rank (each rank must call)."""
    count = flag.to(torch.int64).reshape(1).clone()
    return int(all_sum_(count)) == current_world().size


def on_main(action: Callable[[], T]) -> T | None:
    """Run ``action`` on rank 0 only; every rank then raises rank 0's ``InputError`` if it raised one, so that all
    ranks stop together with the same message instead of waiting for rank 0 in the next collective."""
    world = current_world()
    result, error = None, None
    if world.main:
        try:
            result = action()
        except InputError as raised:
            error = raised
    if world.size > 1:
        message = [str(error) if error is not None else None]
        dist.broadcast_object_list(message, src=0)
        if message[0] is not None and error is None:
            raise InputError(message[0])
    if error is not None:
        raise error
    return result


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if current_world().size > 1:
        dist.barrier()


def rank_prefix() -> str:
    """``"rank R of N: "`` to start an error message of a process of a distributed job, or nothing alone."""
    world = current_world()
    if world.size == 1 and launched_by_torchrun():  # an error before the process group was joined
        world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    return f"rank {world.rank} of {world.size}: " if world.size > 1 else ""


def destroy() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_value(value: Any, rows: slice, batch_size: int) -> Any:
    """``value[rows]`` for a batch-first tensor or list of ``batch_size`` rows; any other value is shared as is."""
    if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch_size:
        return value[rows]
    if isinstance(value, (list, tuple)) and len(value) == batch_size:
        return value[rows]
    return value
