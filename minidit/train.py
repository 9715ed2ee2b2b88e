"""The training engine shared by the toy MLPs and the DiTs: flow-matching loss, AdamW, warm-up, EMA, checkpoints.

Each step draws a batch, samples ``t`` and ``eps`` from the trainer's own generator, and minimises
``minidit.weighting.training_loss`` (SiT, arXiv 2401.08740, eq. 3 for velocity; Sec. 2.3 for the other
predictions) with DiT's recipe (arXiv 2212.09748, Sec. 4: AdamW, lr 1e-4, EMA 0.9999); like minRF it logs the
loss per time bin, which makes the effect of a time sampler (SD3, arXiv 2403.03206, Sec. 3.1) visible at once.
A run with an ``out_dir`` owns that folder while it trains (``minidit.run_folder``: lock, no silent overwrite,
metrics cut back on resume); a loss that turns non-finite stops the run with a ``DivergenceError`` naming the step,
and a checkpoint is never written with non-finite weights, so the last one saved is the last finite one.
Under torchrun the same trainer runs in every process, each computing its rows of the global batch, with DDP or
FSDP2, gradient accumulation and activation checkpointing (``minidit.distributed``), and sharded checkpoints.
Used by notebooks/03_dit_from_scratch.ipynb and by ``python -m minidit train``.

Example:
    >>> trainer = Trainer(ToyMLP(2), data, TrainConfig(steps=2000, batch_size=256, lr=1e-3))
    >>> history = trainer.train()          # list of dicts: step, loss, lr, grad_norm, bin_loss, ...
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from minidit import distributed
from minidit.checkpoint import (CheckpointError, load_checkpoint, load_sharded_tensors, rng_state, save_checkpoint,
                                save_sharded_checkpoint, set_rng_state)
from minidit.interpolants import DISCRETE_INTERPOLANTS, INTERPOLANTS, get_interpolant
from minidit.run_folder import (CHECKPOINT_NAME, METRICS_NAME, SHARDED_CHECKPOINT_NAME, RunLock, append_record,
                                cut_metrics, remove_run_files, remove_samples_after, run_files, sample_grid_name)
from minidit.timesteps import get_time_sampler
from minidit.validation import InputError, check_choice, check_time
from minidit.viz import save_grid
from minidit.weighting import PREDICTIONS, WEIGHTINGS, default_time_eps, draw_time_and_noise, training_loss

PRECISIONS = ("auto", "fp32", "bf16")
PARALLELS = ("ddp", "fsdp")  # how a torchrun job shares the work (minidit.distributed)
CHECKPOINT_FORMATS = ("auto", "file", "dcp")
# Settings that may change between a run and its resumption without changing the losses it computes.
RESUMABLE_CHANGES = ("steps", "log_every", "sample_every", "checkpoint_every", "out_dir", "progress", "compile", "device",
                     "parallel", "grad_accumulation", "activation_checkpointing", "checkpoint_format")

SampleFn = Callable[[nn.Module, int], Tensor]  # (ema_model, step) -> images (N, C, H, W) in [-1, 1]


class DivergenceError(InputError, FloatingPointError):
    """The loss or the weights became non-finite (inf or nan): the settings (lr, grad_clip, precision) diverge."""


class DataSource(Protocol):
    """What the trainer trains on: ``get_batch(step, batch_size) -> (x (B, ...), model_kwargs)``, deterministic in ``step``."""

    def get_batch(self, step: int, batch_size: int) -> tuple[Tensor, dict[str, Any]]: ...


@runtime_checkable
class RowSource(DataSource, Protocol):
    """A ``DataSource`` that can also build only some rows of a batch: ``get_rows(step, batch_size, rows)`` equals
    ``get_batch(step, batch_size)`` sliced by ``rows``. Under ``torchrun`` each process then reads its own rows instead
    of building the whole global batch and keeping ``1/N`` of it (image datasets and latent caches have it)."""

    def get_rows(self, step: int, batch_size: int, rows: slice) -> tuple[Tensor, dict[str, Any]]: ...


@dataclass
class TrainConfig:
    """Every training setting; the ``[train]`` section of a TOML config.

    ``steps`` is the total number of optimizer steps of the run; ``log_every``, ``sample_every`` and
    ``checkpoint_every`` count steps (0 = only at the end of ``train``). ``time_eps = None`` picks
    ``minidit.weighting.default_time_eps``. ``precision = "auto"`` means bf16 autocast on CUDA, fp32 elsewhere.
    ``batch_size`` is the global batch of one optimizer step: under torchrun each of the N processes takes
    ``batch_size / N`` rows of it, in ``grad_accumulation`` micro-batches; ``parallel`` (``"ddp"`` or ``"fsdp"``) and
    ``activation_checkpointing`` are explained in ``minidit.distributed``. ``checkpoint_format``: ``"file"``, one
    ``checkpoint.pt``; ``"dcp"``, a sharded ``checkpoint`` folder (``minidit.checkpoint``); ``"auto"``, the folder under
    torchrun or when resuming one, else the file.
    """

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.9999
    interpolant: str = "linear"
    prediction: str = "velocity"
    weighting: str = "none"
    time_sampler: str = "uniform"
    time_sampler_params: dict[str, float] = field(default_factory=dict)
    time_eps: float | None = None
    seed: int = 0
    log_every: int = 100
    sample_every: int = 0
    checkpoint_every: int = 0
    out_dir: str | None = None
    precision: str = "auto"
    compile: bool = False
    device: str = "auto"
    time_bins: int = 10
    progress: bool = True
    parallel: str = "ddp"
    grad_accumulation: int = 1
    activation_checkpointing: bool = False
    checkpoint_format: str = "auto"

    def __post_init__(self) -> None:
        check_choice("interpolant", self.interpolant, {**INTERPOLANTS, **DISCRETE_INTERPOLANTS})
        check_choice("prediction", self.prediction, PREDICTIONS)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("parallel", self.parallel, PARALLELS)
        check_choice("checkpoint_format", self.checkpoint_format, CHECKPOINT_FORMATS)
        self.betas = tuple(self.betas)
        for name in ("steps", "batch_size", "time_bins", "grad_accumulation"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "log_every", "sample_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0 (0 = only at the end), got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"train.ema_decay must lie in [0, 1], got {self.ema_decay}")
        if self.out_dir == "":
            raise InputError("[train] out_dir: is empty, so nothing would be saved; name a folder, e.g. out_dir = \"runs/exp\" "
                             "(--out runs/exp)")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; any other name goes to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``: ``torch.bfloat16``, or ``None`` for plain fp32."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up: the learning rate of optimizer step ``step`` (from 0) is ``lr * min(1, (step + 1) / warmup_steps)``."""
    return 1.0 if warmup_steps == 0 else min(1.0, (step + 1) / warmup_steps)


def bin_losses(per_sample: Tensor, t: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """Sum and count the per-sample losses in ``bins`` equal bins of ``t`` over [0, 1] (``t = 1`` joins the last).

    Args:
        per_sample: losses, ``(N,)``.
        t: their times, ``(N,)``.
        bins: number of bins.
    Returns:
        ``(sums (bins,), counts (bins,))``, float32; the bin means are ``sums / counts``.
    """
    index = (t.detach() * bins).long().clamp(0, bins - 1)  # (N,)
    sums = torch.zeros(bins, device=per_sample.device).index_add_(0, index, per_sample.detach().float())
    counts = torch.zeros(bins, device=per_sample.device).index_add_(0, index, torch.ones(index.shape, device=index.device))
    return sums, counts


@torch.no_grad()
def validation_loss(
    model: Callable[..., Tensor],
    x0: Tensor,
    interpolant: str = "linear",
    t_grid: Tensor | Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    model_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
) -> Tensor:
    """Velocity loss ``mean |v_theta(x_t, t) - u_t|^2`` of a velocity model at each fixed time of ``t_grid``.

    The noise comes from a generator seeded with ``seed`` and every sample of the batch uses the same ``t``, so
    the numbers are deterministic and comparable between runs trained with different time samplers (SD3,
    arXiv 2403.03206, Sec. 5.1 compares samplers by such a validation loss). An ``nn.Module`` runs in eval
    mode and gets its previous mode back.

    Args:
        model: ``model(x_t (N, ...), t (N,), **model_kwargs) -> (N, ...)``, a velocity prediction.
        x0: validation data, ``(N, ...)``.
        interpolant: name of the path (``minidit.interpolants.INTERPOLANTS``).
        t_grid: ``K`` times in [0, 1].
        model_kwargs: extra model inputs, e.g. ``{"y": labels}``.
        seed: seed of the noise.
    Returns:
        ``(K,)`` float32 losses, one per time of ``t_grid``.
    """
    path = get_interpolant(interpolant)
    times = check_time(torch.as_tensor(t_grid, dtype=torch.float32), name="t_grid").flatten()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0.device, x0.dtype)
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    losses = []
    for t_value in times.tolist():
        t = torch.full((x0.shape[0],), t_value, device=x0.device, dtype=x0.dtype)  # (N,)
        prediction = model(path.interpolate(x0, noise, t), t, **(model_kwargs or {}))
        losses.append((prediction.float() - path.velocity_target(x0, noise, t).float()).pow(2).mean())
    if was_training:
        model.train()
    return torch.stack(losses)  # (K,)


class EMA:
    """Exponential moving average of a model: after each update, ``ema = d * ema + (1 - d) * param``.

    Floating-point parameters and buffers are averaged; integer buffers (counters) are copied. The averaged
    copy lives in ``self.model``, in eval mode and without gradients.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model`` (same architecture as the copy)."""
        pairs = [*zip(self.model.parameters(), model.parameters()), *zip(self.model.buffers(), model.buffers())]
        averages, currents = [], []
        for average, current in pairs:
            if average.is_floating_point():
                averages.append(average)
                currents.append(current.detach())
            else:
                average.copy_(current)
        if averages:  # ema + (1 - d) (param - ema), all tensors in one call
            torch._foreach_lerp_(averages, currents, 1 - self.decay)


class Trainer:
    """Train ``model`` on ``data`` with ``config``; see the module docstring.

    Args:
        model: ``model(x_t (N, ...), t (N,), **model_kwargs) -> (N, ...)``.
        data: a ``DataSource``; ``get_batch(step, batch_size)`` must depend only on ``step`` so runs resume exactly.
        config: the ``TrainConfig``.
        sample_fn: optional ``sample_fn(ema_model, step) -> images (N, C, H, W) in [-1, 1]``, saved as PNG grids
            in ``out_dir``; it should draw from its own generator so that sampling does not change training.
        metadata: plain data stored in every checkpoint (the CLI stores the whole TOML config there); its
            ``"model"`` and ``"data"`` sections must match on ``resume``.
        source: where ``config`` comes from (a config file), named at the start of error messages.
        overwrite: let ``train`` replace a run already in ``out_dir`` (its checkpoint, metrics and sample grids are
            deleted before the first step); without it such a folder is refused unless this trainer resumes the
            folder's own checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        data: DataSource,
        config: TrainConfig,
        sample_fn: SampleFn | None = None,
        metadata: dict[str, Any] | None = None,
        source: str | None = None,
        overwrite: bool = False,
    ):
        self.config, self.data, self.sample_fn, self.metadata = config, data, sample_fn, metadata or {}
        self.source, self.overwrite = source, overwrite
        self.world, self.device = distributed.init_process_group(resolve_device(config.device))
        share = self.world.size * config.grad_accumulation
        if config.batch_size % share:
            raise InputError(f"{self._where()}[train] batch_size: {config.batch_size} does not split into {self.world.size} "
                             f"process(es) x grad_accumulation {config.grad_accumulation} = {share} equal parts; "
                             f"use a multiple of {share}")
        if config.checkpoint_format == "file" and self.world.size > 1:
            raise InputError(f"{self._where()}[train] checkpoint_format: 'file' is written by one process, but this job "
                             f"has {self.world.size}; use 'dcp' or 'auto' (python -m minidit export makes one file of it)")
        self.autocast_dtype = resolve_autocast_dtype(config.precision, self.device)
        self.model = model.to(self.device)
        self.ema = EMA(self.model, config.ema_decay)
        param_dtype = self.autocast_dtype if self.device.type == "cuda" else None  # FSDP2: bf16 weights on CUDA
        self.parallel_model = distributed.parallelize(self.model, self.ema.model, self.world, config.parallel,
                                                      self.device, param_dtype, config.activation_checkpointing)
        self.forward = torch.compile(self.parallel_model) if config.compile else self.parallel_model
        self.interpolant = get_interpolant(config.interpolant)
        self.time_sampler = get_time_sampler(config.time_sampler, **config.time_sampler_params)
        self.time_eps = (default_time_eps(self.interpolant, config.prediction, config.weighting)
                         if config.time_eps is None else config.time_eps)
        # t, eps and the guidance drops of the whole batch, the same on every rank; on the CPU, so that runs resume
        # on any device
        self.generator = torch.Generator().manual_seed(config.seed)
        self.optimizer = torch.optim.AdamW(  # the fused kernel updates all parameters in one pass on CPU and CUDA
            self.model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay,
            fused=self.device.type in ("cpu", "cuda") or None,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, partial(warmup_factor, warmup_steps=config.warmup_steps)
        )
        self.out_dir = Path(config.out_dir) if config.out_dir else None
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.resumed_from: Path | None = None  # the checkpoint passed to ``resume``
        self._out_dir_checked = False

    def _to_device(self, value: Any) -> Any:
        return value.to(self.device, non_blocking=True) if isinstance(value, Tensor) else value

    def backward(self) -> tuple[Tensor, Tensor]:
        """Put the gradient of step ``self.step``'s loss, the mean over the global batch, into the parameters' ``.grad``.

        The batch, ``t``, ``eps`` and the guidance drops (``force_drop`` with the model's ``condition_dropout``) are
        drawn for the whole batch (of the data, only this rank's rows when it is a ``RowSource``); this rank computes
        its rows (``World.rows``) in ``grad_accumulation`` micro-batches, each adding ``sum(losses) / rows`` to the
        gradients (averaged over the ranks on the last one).

        Returns:
            ``(per_sample_loss (b,), t (b,))`` of this rank's ``b`` rows, detached, on the device.
        """
        cfg, batch = self.config, self.config.batch_size
        rows = self.world.rows(batch)
        if isinstance(self.data, RowSource):
            x, model_kwargs = self.data.get_rows(self.step, batch, rows)  # (b, ...): this rank's rows only
        else:
            x, model_kwargs = self.data.get_batch(self.step, batch)  # (B, ...)
            x, model_kwargs = x[rows], {k: distributed.shard_value(v, rows, batch) for k, v in model_kwargs.items()}
        drawn = draw_time_and_noise((batch, *x.shape[1:]), self.time_sampler, self.time_eps, self.generator)
        t_and_noise = tuple(value[rows] for value in drawn)  # drawn for the whole batch: any world size, one run
        dropout = getattr(self.model, "condition_dropout", 0.0)
        if dropout > 0:
            force_drop = torch.rand(batch, generator=self.generator) < dropout  # (B,)
            model_kwargs = {**model_kwargs, "force_drop": force_drop[rows]}
        size = rows.stop - rows.start
        micro = size // cfg.grad_accumulation
        precision = torch.autocast(self.device.type, self.autocast_dtype) if self.autocast_dtype else nullcontext()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses, times = [], []
        for index in range(cfg.grad_accumulation):
            part = slice(index * micro, (index + 1) * micro)  # of this rank's rows
            inputs = {k: self._to_device(distributed.shard_value(v, part, size)) for k, v in model_kwargs.items()}
            with distributed.gradient_sync(self.parallel_model, index == cfg.grad_accumulation - 1):
                with precision:
                    per_sample, t = training_loss(
                        self.forward, self._to_device(x[part]), self.interpolant, cfg.prediction, cfg.weighting,
                        model_kwargs=inputs, t_and_noise=(t_and_noise[0][part], t_and_noise[1][part]),
                    )
                (per_sample.sum() / size).backward()
            losses.append(per_sample.detach())
            times.append(t.detach())
        return torch.cat(losses), torch.cat(times)

    def train_step(self) -> tuple[Tensor, Tensor, float, Tensor]:
        """One optimizer step on batch ``self.step`` (``backward``, clipping, AdamW, scheduler, EMA).

        Returns:
            ``(per_sample_loss (b,), t (b,), lr, grad_norm ())`` for this rank's ``b`` rows of the batch; tensors
            detached, left on the device (no sync).
        """
        cfg = self.config
        per_sample, t = self.backward()
        max_norm = cfg.grad_clip if cfg.grad_clip else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        self.step += 1
        return per_sample, t, lr, grad_norm.detach()

    def train(self, steps: int | None = None) -> list[dict[str, Any]]:
        """Train ``steps`` more steps, or up to ``config.steps`` in total when ``steps`` is ``None``.

        Every ``log_every`` steps (and at the end) appends a record to ``self.history`` and to
        ``out_dir/metrics.jsonl``: ``step``, ``loss`` (mean over the window), ``lr`` and ``grad_norm`` (of the
        last step), ``bin_loss`` and ``bin_count`` (per time bin, ``None`` for an empty bin), ``steps_per_s``.
        Saves sample grids and ``out_dir/checkpoint.pt`` every ``sample_every`` / ``checkpoint_every`` steps
        and at the end (only with an ``out_dir``, which stays locked meanwhile; see ``minidit.run_folder``).

        Returns:
            ``self.history``, the records of every ``train`` call so far.
        Raises:
            InputError: if ``config.steps`` is not above the current (resumed) step, or ``out_dir`` cannot be
                used: not writable, locked by another run, or holding another run without ``overwrite``.
            DivergenceError: when the loss becomes non-finite, naming the first such step; checked whenever the
                loop logs, samples or saves (no extra GPU sync per step).
        """
        cfg = self.config
        if steps is None and cfg.steps <= self.step:
            reached = f"the step of {self.resumed_from}" if self.resumed_from is not None else "the step reached"
            raise InputError(
                f"{self._where()}[train] steps: {cfg.steps} is not above {reached}, {self.step}; steps counts from "
                f"the start of the run, so pass --steps N with N > {self.step} to train further"
            )
        end = cfg.steps if steps is None else self.step + steps
        with self._locked_out_dir():
            self._train_until(end)
        return self.history

    def _train_until(self, end: int) -> None:
        cfg = self.config
        bins = cfg.time_bins
        sums, counts = torch.zeros(bins, device=self.device), torch.zeros(bins, device=self.device)
        # on the device, so that watching for divergence costs no sync per step: whether every step of this call
        # had a finite loss, and how many steps did before the first that did not
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        finite_steps = torch.zeros((), dtype=torch.long, device=self.device)
        first_step = self.step
        window_start, clock = self.step, time.perf_counter()
        bar = tqdm(total=end, initial=self.step, desc="train", disable=not (cfg.progress and self.world.main),
                   dynamic_ncols=True)
        while self.step < end:
            per_sample, t, lr, grad_norm = self.train_step()
            finite.logical_and_(torch.isfinite(per_sample).all())
            finite_steps += finite
            step_sums, step_counts = bin_losses(per_sample, t, bins)
            sums += step_sums
            counts += step_counts
            bar.update(1)
            last = self.step == end
            log_now = _due(self.step, cfg.log_every, last)
            sample_now = self.out_dir is not None and self.sample_fn is not None and _due(self.step, cfg.sample_every, last)
            save_now = self.out_dir is not None and _due(self.step, cfg.checkpoint_every, last)
            if (log_now or sample_now or save_now) and not distributed.all_true(finite):
                bar.close()
                self._diverged(first_step + int(finite_steps) + 1)
            if log_now:
                record = self._log(sums, counts, lr, grad_norm, (self.step - window_start) / (time.perf_counter() - clock))
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                sums.zero_()
                counts.zero_()
                window_start, clock = self.step, time.perf_counter()
            if sample_now:
                self.save_samples()
            if save_now:
                self.save()
        bar.close()

    def _diverged(self, step: int) -> None:
        checkpoint = self.save_path()
        kept = (f"the last checkpoint, {checkpoint}, holds finite weights; " if checkpoint is not None and checkpoint.exists()
                else "")
        raise DivergenceError(
            f"{self._where()}[train] lr: the loss became non-finite (inf or nan) at step {step}; {kept}lower lr, "
            "keep grad_clip, or train with precision = 'fp32'"
        )

    def _where(self) -> str:
        """``"<source>, "`` to start an error message, or nothing without a source."""
        return f"{self.source}, " if self.source else ""

    @contextmanager
    def _locked_out_dir(self) -> Iterator[None]:
        """Hold the lock of ``out_dir`` and, on first use, make sure it holds no other run (see ``__init__``)."""
        if self.out_dir is None:
            yield
            return
        lock = distributed.on_main(RunLock(self.out_dir).acquire)  # rank 0 holds it for the job
        try:
            if not self._out_dir_checked:
                distributed.on_main(self._claim_out_dir)
                self._out_dir_checked = True
            yield
        finally:
            if lock is not None:
                lock.release()

    def _claim_out_dir(self) -> None:
        own_checkpoint = self.save_path()
        own = {(self.out_dir / name).resolve() for name in (CHECKPOINT_NAME, SHARDED_CHECKPOINT_NAME)}
        if self.resumed_from is not None and self.resumed_from.resolve() in own:
            if self.overwrite:
                raise InputError(f"{self.out_dir}: overwrite would delete the checkpoint being resumed; "
                                 "pass --resume to continue the run or --overwrite to replace it, not both")
            cut_metrics(self.out_dir / METRICS_NAME, self.step)  # no step appears twice
            remove_samples_after(self.out_dir, self.step)
            return
        existing = run_files(self.out_dir)
        if existing and self.overwrite:
            remove_run_files(self.out_dir)
        elif existing:
            names = ", ".join(p.name for p in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
            raise InputError(
                f"{self.out_dir}: holds a run ({names}); continue it with --resume {own_checkpoint}, replace it with "
                "--overwrite (Trainer(..., overwrite=True)), or choose another out_dir"
            )

    def _log(self, sums: Tensor, counts: Tensor, lr: float, grad_norm: Tensor, steps_per_s: float) -> dict[str, Any]:
        distributed.all_sum_(sums)  # every rank's rows: the numbers a single process logs
        distributed.all_sum_(counts)
        loss = float(sums.sum() / counts.sum())
        bin_means = (sums / counts).tolist()
        record = {
            "step": self.step,
            "loss": loss,
            "lr": lr,
            "grad_norm": float(distributed.full(grad_norm)),
            "bin_loss": [m if c > 0 else None for m, c in zip(bin_means, counts.tolist())],
            "bin_count": [int(c) for c in counts.tolist()],
            "steps_per_s": steps_per_s,
        }
        self.history.append(record)
        if self.out_dir is not None and self.world.main:
            append_record(self.out_dir / METRICS_NAME, record)
        return record

    @torch.no_grad()
    def save_samples(self) -> Path:
        """Save ``sample_fn(ema_model, step)`` as ``out_dir/samples_{step:07d}.png``, mapping [-1, 1] to [0, 1].

        Rank 0 samples and saves; with FSDP every rank takes part in sampling its sharded EMA model.
        """
        if self.out_dir is None or self.sample_fn is None:
            raise ValueError("save_samples needs config.out_dir and a sample_fn; pass both to Trainer")
        path = self.out_dir / sample_grid_name(self.step)
        if self.world.main or distributed.sharded(self.ema.model):
            images = self.sample_fn(self.ema.model, self.step)
            if self.world.main:
                save_grid(images, path)
        return path

    def _run_state(self) -> dict[str, Any]:
        """What a checkpoint holds besides the tensors of model, EMA and optimizer."""
        return {
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.generator),
            "step": self.step,  # also the data position: batch ``step`` is the data's get_batch(step, batch_size)
            "config": dataclasses.asdict(self.config),
            "metadata": self.metadata,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue a single-process run exactly (see ``minidit.checkpoint``)."""
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            **self._run_state(),
        }

    def _sharded_checkpoints(self) -> bool:
        """Whether this run writes sharded checkpoint folders (``TrainConfig.checkpoint_format``)."""
        if self.config.checkpoint_format != "auto":
            return self.config.checkpoint_format == "dcp"
        resumed_folder = self.resumed_from is not None and self.resumed_from.is_dir()
        return self.world.size > 1 or distributed.launched_by_torchrun() or resumed_folder

    def _sharded_tensors(self) -> dict[str, Any]:
        """Model, EMA and optimizer state dicts keyed by parameter names, as this job shards them."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        model, optimizer = get_state_dict(self.model, self.optimizer)
        return {"model": model, "ema": get_model_state_dict(self.ema.model), "optimizer": optimizer}

    def save_path(self) -> Path | None:
        """Where ``save`` writes by default: ``out_dir/checkpoint.pt``, or the folder ``out_dir/checkpoint``."""
        if self.out_dir is None:
            return None
        return self.out_dir / (SHARDED_CHECKPOINT_NAME if self._sharded_checkpoints() else CHECKPOINT_NAME)

    def save(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint atomically to ``path`` (default ``out_dir/checkpoint.pt``, or the folder
        ``out_dir/checkpoint`` for sharded checkpoints; every rank of a distributed job calls this) and return its path.

        Raises:
            DivergenceError: if a weight of the model or its EMA is non-finite; nothing is written, so the
                previous checkpoint stays.
        """
        sharded = self._sharded_checkpoints()
        path = path if path is not None else self.save_path()
        if path is None:
            raise ValueError("Trainer.save needs a path or config.out_dir")
        tensors = self._sharded_tensors() if sharded else self.state_dict()
        for part in ("model", "ema"):
            bad = [name for name, value in tensors[part].items()
                   if value.is_floating_point() and not _local(value).isfinite().all()]
            if not distributed.all_true(torch.tensor(not bad)):
                where = f" ({bad[0]} and {len(bad) - 1} more)" if bad else ""
                raise DivergenceError(
                    f"{self._where()}{distributed.rank_prefix()}[train] lr: the {part} weights are non-finite at step "
                    f"{self.step}{where}, so {path} was not written; lower lr, keep grad_clip, or train with "
                    "precision = 'fp32'"
                )
        if sharded:
            return save_sharded_checkpoint(tensors, self._run_state(), path)
        return save_checkpoint(tensors, path)

    def resume(self, path: str | Path) -> Trainer:
        """Restore a checkpoint written by ``save``; the next ``train`` continues the run exactly.

        A sharded checkpoint folder resumes on any number of processes; a ``checkpoint.pt`` file on one, or on
        several (each rank reads the whole file). When ``path`` is out_dir's own checkpoint, the next ``train`` cuts
        ``out_dir/metrics.jsonl`` back to the checkpoint's step, so a step logged after the checkpoint by a killed
        run is not logged twice.

        Raises:
            CheckpointError: if the file is unreadable, exported for sampling only, or was written with settings
                (other than ``RESUMABLE_CHANGES``), ``metadata["model"]`` / ``metadata["data"]`` sections or a model
                that differ from this trainer's; the message names every differing key.
        """
        state = load_checkpoint(path)
        if "scheduler" not in state:
            raise CheckpointError(f"{path} was exported for sampling and holds no optimizer state; resume from the "
                                  "checkpoint it was exported from")
        self._check_resumable(path, state)
        try:
            if Path(path).is_dir():
                self._load_sharded(path)
            elif self.world.size > 1:
                self._load_full(state)
            else:
                self.model.load_state_dict(state["model"])
                self.ema.model.load_state_dict(state["ema"])
                self.optimizer.load_state_dict(state["optimizer"])
        except RuntimeError as error:
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds a different model ({error}); build the model with the config it was trained with"
            ) from error
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], self.generator)
        self.step = state["step"]
        self.resumed_from = Path(path)
        return self

    def _load_sharded(self, path: str | Path) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

        tensors = load_sharded_tensors(path, self._sharded_tensors())
        set_state_dict(self.model, self.optimizer, model_state_dict=tensors["model"],
                       optim_state_dict=tensors["optimizer"])
        set_model_state_dict(self.ema.model, tensors["ema"])

    def _load_full(self, state: dict[str, Any]) -> None:
        """Load a single-process checkpoint into every rank of this job (each reads the whole file)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

        names = [name for name, _ in self.model.named_parameters()]  # optimizer.state_dict() numbers them in this order
        saved = state["optimizer"]
        optimizer = {"state": {names[index]: value for index, value in saved["state"].items()},
                     "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                                      for group in saved["param_groups"]]}
        options = StateDictOptions(full_state_dict=True)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=optimizer,
                       options=options)
        set_model_state_dict(self.ema.model, state["ema"], options=options)

    def _check_resumable(self, path: str | Path, state: dict[str, Any]) -> None:
        fixed = [(k, v) for k, v in dataclasses.asdict(self.config).items() if k not in RESUMABLE_CHANGES]
        changed = [
            (section, key, old, new)
            for section, stored, now in [
                *[(name, state["metadata"].get(name), self.metadata.get(name)) for name in ("model", "data")],
                ("train", {k: v for k, v in state["config"].items() if k not in RESUMABLE_CHANGES}, dict(fixed)),
            ]
            if stored is not None and now is not None
            for key, old, new in _differences(stored, now)
        ]
        if changed:
            keys = ", ".join(f"[{section}] {key}" for section, key, _, _ in changed)
            described = ", ".join(f"{key} = {old!r} in the checkpoint but {new!r} now" for _, key, old, new in changed)
            raise CheckpointError(
                f"{path}, {keys}: changed since the checkpoint ({described}); resume with the checkpoint's values, "
                "or start a new run in another out_dir"
            )


def _local(value: Tensor) -> Tensor:
    """This rank's shard of a ``DTensor``, or the tensor itself."""
    return value.to_local() if hasattr(value, "to_local") else value


def _due(step: int, every: int, last: bool) -> bool:
    """Whether an every-``every``-steps action runs after ``step`` (always at the last step; 0 = only then)."""
    return last or (every > 0 and step % every == 0)


def _plain(value: Any) -> Any:
    """Tuples as lists, so settings compare equal after a round trip through a checkpoint or TOML."""
    return list(value) if isinstance(value, tuple) else value


def _differences(stored: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, stored value, current value)`` for each key whose values differ (``UNSET`` where one lacks it)."""
    keys = [*stored, *(k for k in now if k not in stored)]
    return [(k, stored.get(k, UNSET), now.get(k, UNSET)) for k in keys
            if k not in stored or k not in now or _plain(stored[k]) != _plain(now[k])]


class _Unset:
    def __repr__(self) -> str:
        return "unset"


UNSET = _Unset()  # a key missing on one side of a comparison
