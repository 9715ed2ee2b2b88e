"""The training engine shared by the toy MLPs and the DiTs: flow-matching loss, AdamW, warm-up, EMA, checkpoints.

Each step draws a batch, samples ``t`` and ``eps`` from the trainer's own generator, and minimises
``minidit.weighting.training_loss`` (SiT, arXiv 2401.08740, eq. 3 for velocity; Sec. 2.3 for the other
predictions) with DiT's recipe (arXiv 2212.09748, Sec. 4: AdamW, lr 1e-4, EMA 0.9999); like minRF it logs the
loss per time bin, which makes the effect of a time sampler (SD3, arXiv 2403.03206, Sec. 3.1) visible at once.
Used by notebooks/03_dit_from_scratch.ipynb and by ``python -m minidit train``.

Example:
    >>> trainer = Trainer(ToyMLP(2), data, TrainConfig(steps=2000, batch_size=256, lr=1e-3))
    >>> history = trainer.train()          # list of dicts: step, loss, lr, grad_norm, bin_loss, ...
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torchvision.utils import save_image
from tqdm.auto import tqdm

from minidit.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from minidit.interpolants import INTERPOLANTS, get_interpolant
from minidit.timesteps import get_time_sampler
from minidit.validation import check_choice, check_time
from minidit.weighting import PREDICTIONS, WEIGHTINGS, training_loss

PRECISIONS = ("auto", "fp32", "bf16")
# Settings that may change between a run and its resumption without changing the losses it computes.
RESUMABLE_CHANGES = ("steps", "log_every", "sample_every", "checkpoint_every", "out_dir", "progress", "compile", "device")

SampleFn = Callable[[nn.Module, int], Tensor]  # (ema_model, step) -> images (N, C, H, W) in [-1, 1]


class DataSource(Protocol):
    """What the trainer trains on: ``get_batch(step, batch_size) -> (x (B, ...), model_kwargs)``, deterministic in ``step``."""

    def get_batch(self, step: int, batch_size: int) -> tuple[Tensor, dict[str, Any]]: ...


@dataclass
class TrainConfig:
    """Every training setting; the ``[train]`` section of a TOML config.

    ``steps`` is the total number of optimizer steps of the run; ``log_every``, ``sample_every`` and
    ``checkpoint_every`` count steps (0 = only at the end of ``train``). ``time_eps = None`` picks
    ``minidit.weighting.default_time_eps``. ``precision = "auto"`` means bf16 autocast on CUDA, fp32 elsewhere.
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

    def __post_init__(self) -> None:
        check_choice("interpolant", self.interpolant, INTERPOLANTS)
        check_choice("prediction", self.prediction, PREDICTIONS)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        check_choice("precision", self.precision, PRECISIONS)
        self.betas = tuple(self.betas)
        for name in ("steps", "batch_size", "time_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "log_every", "sample_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0 (0 = only at the end), got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"train.ema_decay must lie in [0, 1], got {self.ema_decay}")


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


def save_grid(images: Tensor, path: str | Path) -> Path:
    """Save ``images`` ``(N, C, H, W)`` in [-1, 1] as one PNG grid, ``ceil(sqrt(N))`` per row; returns the path."""
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W) with values in [-1, 1], got {tuple(images.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((images.float().clamp(-1, 1) + 1) / 2, path, nrow=math.ceil(math.sqrt(images.shape[0])))
    return path


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
        metadata: plain data stored in every checkpoint (the CLI stores the whole TOML config there).
    """

    def __init__(
        self,
        model: nn.Module,
        data: DataSource,
        config: TrainConfig,
        sample_fn: SampleFn | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self.config, self.data, self.sample_fn, self.metadata = config, data, sample_fn, metadata or {}
        self.device = resolve_device(config.device)
        self.autocast_dtype = resolve_autocast_dtype(config.precision, self.device)
        self.model = model.to(self.device)
        self.ema = EMA(self.model, config.ema_decay)
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.interpolant = get_interpolant(config.interpolant)
        self.time_sampler = get_time_sampler(config.time_sampler, **config.time_sampler_params)
        self.generator = torch.Generator().manual_seed(config.seed)  # t and eps; CPU so runs resume on any device
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

    def _to_device(self, value: Any) -> Any:
        return value.to(self.device, non_blocking=True) if isinstance(value, Tensor) else value

    def train_step(self) -> tuple[Tensor, Tensor, float, Tensor]:
        """One optimizer step on batch ``self.step``.

        Returns:
            ``(per_sample_loss (B,), t (B,), lr, grad_norm ())``; tensors detached, left on the device (no sync).
        """
        cfg = self.config
        x, model_kwargs = self.data.get_batch(self.step, cfg.batch_size)
        x, model_kwargs = self._to_device(x), {k: self._to_device(v) for k, v in model_kwargs.items()}
        self.model.train()
        precision = torch.autocast(self.device.type, self.autocast_dtype) if self.autocast_dtype else nullcontext()
        with precision:
            per_sample, t = training_loss(
                self.forward, x, self.interpolant, cfg.prediction, cfg.weighting,
                self.time_sampler, cfg.time_eps, model_kwargs, self.generator,
            )
        self.optimizer.zero_grad(set_to_none=True)
        per_sample.mean().backward()
        max_norm = cfg.grad_clip if cfg.grad_clip else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        self.step += 1
        return per_sample.detach(), t.detach(), lr, grad_norm.detach()

    def train(self, steps: int | None = None) -> list[dict[str, Any]]:
        """Train ``steps`` more steps, or up to ``config.steps`` in total when ``steps`` is ``None``.

        Every ``log_every`` steps (and at the end) appends a record to ``self.history`` and to
        ``out_dir/metrics.jsonl``: ``step``, ``loss`` (mean over the window), ``lr`` and ``grad_norm`` (of the
        last step), ``bin_loss`` and ``bin_count`` (per time bin, ``None`` for an empty bin), ``steps_per_s``.
        Saves sample grids and ``out_dir/checkpoint.pt`` every ``sample_every`` / ``checkpoint_every`` steps
        and at the end (only with an ``out_dir``).

        Returns:
            ``self.history``, the records of every ``train`` call so far.
        """
        cfg = self.config
        end = cfg.steps if steps is None else self.step + steps
        bins = cfg.time_bins
        sums, counts = torch.zeros(bins, device=self.device), torch.zeros(bins, device=self.device)
        window_start, clock = self.step, time.perf_counter()
        bar = tqdm(total=end, initial=self.step, desc="train", disable=not cfg.progress, dynamic_ncols=True)
        while self.step < end:
            per_sample, t, lr, grad_norm = self.train_step()
            step_sums, step_counts = bin_losses(per_sample, t, bins)
            sums += step_sums
            counts += step_counts
            bar.update(1)
            last = self.step == end
            if _due(self.step, cfg.log_every, last):
                record = self._log(sums, counts, lr, grad_norm, (self.step - window_start) / (time.perf_counter() - clock))
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                sums.zero_()
                counts.zero_()
                window_start, clock = self.step, time.perf_counter()
            if self.out_dir is not None and self.sample_fn is not None and _due(self.step, cfg.sample_every, last):
                self.save_samples()
            if self.out_dir is not None and _due(self.step, cfg.checkpoint_every, last):
                self.save()
        bar.close()
        return self.history

    def _log(self, sums: Tensor, counts: Tensor, lr: float, grad_norm: Tensor, steps_per_s: float) -> dict[str, Any]:
        loss = float(sums.sum() / counts.sum())
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"the loss became {loss} by step {self.step}; lower train.lr, keep train.grad_clip, "
                "or train with precision = 'fp32'"
            )
        bin_means = (sums / counts).tolist()
        record = {
            "step": self.step,
            "loss": loss,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "bin_loss": [m if c > 0 else None for m, c in zip(bin_means, counts.tolist())],
            "bin_count": [int(c) for c in counts.tolist()],
            "steps_per_s": steps_per_s,
        }
        self.history.append(record)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        return record

    @torch.no_grad()
    def save_samples(self) -> Path:
        """Save ``sample_fn(ema_model, step)`` as ``out_dir/samples_{step:07d}.png``, mapping [-1, 1] to [0, 1]."""
        if self.out_dir is None or self.sample_fn is None:
            raise ValueError("save_samples needs config.out_dir and a sample_fn; pass both to Trainer")
        images = self.sample_fn(self.ema.model, self.step)
        return save_grid(images, self.out_dir / f"samples_{self.step:07d}.png")

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly (see ``minidit.checkpoint``)."""
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.generator),
            "step": self.step,
            "config": dataclasses.asdict(self.config),
            "metadata": self.metadata,
        }

    def save(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint atomically to ``path`` (default ``out_dir/checkpoint.pt``) and return its path."""
        if path is None:
            if self.out_dir is None:
                raise ValueError("Trainer.save needs a path or config.out_dir")
            path = self.out_dir / "checkpoint.pt"
        return save_checkpoint(self.state_dict(), path)

    def resume(self, path: str | Path) -> Trainer:
        """Restore a checkpoint written by ``save``; the next ``train`` continues the run exactly.

        Raises:
            CheckpointError: if the file is unreadable, or was written with settings (other than
                ``RESUMABLE_CHANGES``) or a model that differ from this trainer's.
        """
        state = load_checkpoint(path)
        current = dataclasses.asdict(self.config)
        changed = {
            k: (v, current.get(k))
            for k, v in state["config"].items()
            if k not in RESUMABLE_CHANGES and _plain(v) != _plain(current.get(k))
        }
        if changed:
            described = ", ".join(f"{k} = {old!r} in the checkpoint but {new!r} now" for k, (old, new) in changed.items())
            raise CheckpointError(
                f"checkpoint {str(path)!r} was trained with different settings: {described}. "
                "Resume with the checkpoint's settings, or start a new run in another out_dir."
            )
        try:
            self.model.load_state_dict(state["model"])
            self.ema.model.load_state_dict(state["ema"])
        except RuntimeError as error:
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds a different model ({error}); build the model with the config it was trained with"
            ) from error
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], self.generator)
        self.step = state["step"]
        return self


def _due(step: int, every: int, last: bool) -> bool:
    """Whether an every-``every``-steps action runs after ``step`` (always at the last step; 0 = only then)."""
    return last or (every > 0 and step % every == 0)


def _plain(value: Any) -> Any:
    """Tuples as lists, so settings compare equal after a round trip through a checkpoint or TOML."""
    return list(value) if isinstance(value, tuple) else value
