"""Training-step benchmark: images/s and model FLOPs utilisation (MFU) of one full DiT training step.

MFU is the model's FLOPs per second (counted by hand from the architecture, training = 3 x forward) divided by the
peak matmul FLOPs per second measured in the same run (PaLM, arXiv 2204.02311, App. B); the step is the real engine,
``minidit.train.Trainer.train_step`` (loss, backward, clipping, AdamW, EMA), on a synthetic batch.
Run ``python bench/train_step.py`` (CPU, 2 threads: tiny and DiT-S/2) or ``--gpu`` (DiT-B/2 at batch 256 and DiT-XL/2
at batch 128 on 32x32x4 latents, bf16, torch.compile);
no notebook uses it, its test is tests/test_bench_train_step.py.
Everything is timed in rounds: each round runs the peak matmul, one minidit step and one step of a baseline, so a
slow or fast phase of a shared machine (on this 2-core VM, single 2048^2 matmuls ran at 91 to 171 GFLOP/s within
an hour) hits numerator and denominator alike. MFU is the median over rounds of the round's model FLOP/s over
the round's peak; the table also shows the harsher figure against the best peak of the whole run. The baseline is
the same network written as plain DiT reference code is (a convolutional patch embedding, ``x * (1 + scale) + shift``
and ``x + gate * branch`` as separate ops, a for-loop EMA, AdamW's default implementation, no clipping); its MFU
and the ratio of the two step times say how much of the MFU is minidit's doing rather than the machine's.

Hand count of forward FLOPs (a multiply-add is 2 FLOPs; norms, activations, softmax and the optimiser are left out,
as is usual for MFU), for ``N`` images, ``T`` tokens, width ``D``, ``L`` blocks, MLP width ``M = mlp_ratio * D``,
patch ``p``, ``C`` input and ``C'`` output channels and frequency embedding size ``F``::

    per token per block    2 (3 D^2 + D^2 + 2 D M) = 24 D^2 for M = 4D     qkv, proj, MLP
                           + 4 T D                                          q k^T and attention @ v
    per sample per block   12 D^2                                           adaLN modulation D -> 6D
    per token              2 p^2 C D + 2 D p^2 C'                           patch embedding, final linear
    per sample             4 D^2 + 2 F D + 2 D^2                            final adaLN D -> 2D, time MLP
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minidit.dit import DiT, DiTConfig  # noqa: E402
from minidit.embeddings import timestep_embedding  # noqa: E402
from minidit.posembed import sincos_2d  # noqa: E402
from minidit.scaling import counted_training_flops  # noqa: E402
from minidit.train import TrainConfig, Trainer  # noqa: E402

TRAINING_FLOPS_PER_FORWARD = 3  # backward = 2 x forward: gradients with respect to inputs and to weights


@dataclass
class Case:
    """One benchmark setting: a model, a batch of ``(channels, size, size)`` images, a precision."""

    name: str
    config: DiTConfig
    batch_size: int
    precision: str = "fp32"
    compile: bool = False


CPU_CASES = (
    Case("tiny", DiTConfig(input_size=16, patch_size=2, in_channels=3, hidden_size=256, depth=6, num_heads=4,
                           num_classes=10), batch_size=64),
    Case("s2", DiTConfig(input_size=32, patch_size=2, in_channels=4, hidden_size=384, depth=12, num_heads=6,
                         num_classes=1000), batch_size=16),
)
GPU_CASES = (
    Case("b2", DiTConfig(input_size=32, patch_size=2, in_channels=4, hidden_size=768, depth=12, num_heads=12,
                         num_classes=1000), batch_size=256, precision="bf16", compile=True),
    Case("xl2", DiTConfig(input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                          num_classes=1000), batch_size=128, precision="bf16", compile=True),
)


def attention_flops(config: DiTConfig, batch_size: int) -> int:
    """Forward FLOPs of the attention products ``q k^T`` and ``softmax(.) v`` over all blocks: ``4 N L T^2 D``."""
    tokens = config.grid_size**2
    return 4 * batch_size * config.depth * tokens**2 * config.hidden_size


def dit_forward_flops(config: DiTConfig, batch_size: int) -> int:
    """Forward FLOPs of a DiT on ``batch_size`` images of side ``config.input_size`` (see the module docstring)."""
    dim, tokens, patch = config.hidden_size, config.grid_size**2, config.patch_size
    mlp = int(dim * config.mlp_ratio)
    per_token_per_block = 2 * (4 * dim * dim + 2 * dim * mlp)
    per_sample_per_block = 2 * dim * 6 * dim
    per_token = 2 * patch * patch * (config.in_channels + config.out_channels) * dim
    per_sample = 2 * dim * 2 * dim + 2 * config.frequency_embedding_size * dim + 2 * dim * dim
    linear = batch_size * (
        tokens * (config.depth * per_token_per_block + per_token) + config.depth * per_sample_per_block + per_sample
    )
    return linear + attention_flops(config, batch_size)


def synthetic_batch(config: DiTConfig, batch_size: int, device: torch.device) -> tuple[Tensor, dict[str, Tensor]]:
    """A fixed random batch: images ``(N, C, H, W)`` and, for class-conditional models, labels ``(N,)``."""
    generator = torch.Generator().manual_seed(0)
    size = config.input_size
    x = torch.randn(batch_size, config.in_channels, size, size, generator=generator).to(device)
    if config.num_classes == 0:
        return x, {}
    return x, {"y": torch.randint(0, config.num_classes, (batch_size,), generator=generator).to(device)}


class FixedBatch:
    """A ``DataSource`` that returns the same batch every step, so the benchmark times the engine, not data loading."""

    def __init__(self, x: Tensor, model_kwargs: dict[str, Tensor]):
        self.x, self.model_kwargs = x, model_kwargs

    def get_batch(self, step: int, batch_size: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The first ``batch_size`` images ``(B, C, H, W)`` and all the model inputs, whatever the ``step``."""
        return self.x[:batch_size], self.model_kwargs


class BaselineBlock(nn.Module):
    """A DiT block as plain reference code writes it: separate modulate and residual ops, q/k/v by permute."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def attention(self, x: Tensor) -> Tensor:
        """Self-attention of ``x`` (N, T, D) -> ``(N, T, D)``."""
        n, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(n, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(*qkv.unbind(0))  # (N, H, T, Dh)
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """Tokens ``x`` (N, T, D) conditioned on ``c`` (N, D) -> ``(N, T, D)``."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (m.unsqueeze(1) for m in self.modulation(c).chunk(6, dim=1))
        x = x + gate1 * self.attention(self.norm1(x) * (1 + scale1) + shift1)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class BaselineDiT(nn.Module):
    """The benchmark's yardstick: the network of ``DiT(config)`` (same parameters, same FLOPs), written plainly."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        dim, p = config.hidden_size, config.patch_size
        self.config = config
        self.patch_embedder = nn.Conv2d(config.in_channels, dim, kernel_size=p, stride=p)
        self.register_buffer("pos_embed", sincos_2d(dim, (config.grid_size, config.grid_size)))  # (T, D)
        freq = config.frequency_embedding_size
        self.t_mlp = nn.Sequential(nn.Linear(freq, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.y_table = nn.Embedding(config.num_classes + 1, dim)
        self.blocks = nn.ModuleList(
            [BaselineBlock(dim, config.num_heads, config.mlp_ratio) for _ in range(config.depth)]
        )
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.final_linear = nn.Linear(dim, p * p * config.out_channels)

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """``x`` (N, C, H, W), ``t`` (N,), ``y`` (N,) -> ``(N, out_channels, H, W)``."""
        n, _, height, width = x.shape
        p, cfg = self.config.patch_size, self.config
        tokens = self.patch_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # (N, T, D)
        if self.training:
            y = torch.where(torch.rand(y.shape, device=y.device) < cfg.class_dropout, cfg.num_classes, y)
        c = self.t_mlp(timestep_embedding(t, cfg.frequency_embedding_size)) + self.y_table(y)  # (N, D)
        for block in self.blocks:
            tokens = block(tokens, c)
        shift, scale = (m.unsqueeze(1) for m in self.final_modulation(c).chunk(2, dim=1))
        out = self.final_linear(self.final_norm(tokens) * (1 + scale) + shift)  # (N, T, p * p * C')
        out = out.reshape(n, height // p, width // p, p, p, cfg.out_channels)
        return torch.einsum("nhwpqc->nchpwq", out).reshape(n, cfg.out_channels, height, width)


class BaselineStep:
    """One training step of ``BaselineDiT`` as a plain loop writes it: the same flow-matching loss as the engine
    (linear path, velocity target, uniform ``t``), AdamW's default implementation, no clipping, EMA by a for loop."""

    def __init__(self, config: DiTConfig, x: Tensor, y: Tensor, precision: str = "fp32", compile: bool = False):
        torch.manual_seed(0)
        self.model = BaselineDiT(config).to(x.device)
        self.ema = BaselineDiT(config).to(x.device).requires_grad_(False)
        self.ema.load_state_dict(self.model.state_dict())
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.0)
        self.forward = torch.compile(self.model) if compile else self.model
        self.autocast = torch.bfloat16 if precision == "bf16" else None
        self.x, self.y, self.device = x, y, x.device

    def __call__(self) -> None:
        x = self.x
        t = torch.rand(x.shape[0], device=self.device)
        noise = torch.randn_like(x)
        x_t = (1 - t.view(-1, 1, 1, 1)) * x + t.view(-1, 1, 1, 1) * noise
        with torch.autocast(self.device.type, self.autocast, enabled=self.autocast is not None):
            loss = (self.forward(x_t, t, self.y).float() - (noise - x)).pow(2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            for average, current in zip(self.ema.parameters(), self.model.parameters()):
                average.mul_(0.9999).add_(current, alpha=1e-4)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so the clock measures it; CPU work is already done when a call returns."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MatmulPeak:
    """``repeats`` square ``size x size`` matmuls, run as one more step of every round: the denominator of MFU.

    ``flops`` is the work of one call; a call's time gives the round's peak FLOP/s (mean over the repeats).
    """

    def __init__(self, device: torch.device, dtype: torch.dtype, size: int, repeats: int):
        self.a = torch.randn(size, size, device=device, dtype=dtype)
        self.b = torch.randn(size, size, device=device, dtype=dtype)
        self.out = torch.empty(size, size, device=device, dtype=dtype)
        self.repeats, self.flops = repeats, repeats * 2 * size**3

    def __call__(self) -> None:
        """Multiply the two random matrices ``repeats`` times into the preallocated output."""
        for _ in range(self.repeats):
            torch.mm(self.a, self.b, out=self.out)


def time_training_steps(
    step_fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, steps: int, budget_s: float
) -> dict[str, list[float]]:
    """Seconds per step of each function, run in turn (one step of each per round, so a slow phase of a shared
    machine hits all alike) after ``warmup`` rounds; stops early (after at least 2 rounds) past ``budget_s``."""
    for _ in range(warmup):
        for step in step_fns.values():
            step()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in step_fns}
    started, rounds = time.perf_counter(), 0
    while rounds < steps and (rounds < 2 or time.perf_counter() - started < budget_s):
        for name, step in step_fns.items():
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
        rounds += 1
    return times


def run_case(case: Case, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Time ``case`` in rounds of (peak matmul, minidit step, baseline step); see the module docstring."""
    torch.manual_seed(0)
    model = DiT(case.config).to(device)
    x, model_kwargs = synthetic_batch(case.config, case.batch_size, device)
    count_batch = 2  # FLOPs are linear in the batch: cross-check on 2 images, cheaply
    count_kwargs = {name: value[:count_batch] for name, value in model_kwargs.items()}
    counted, attention_counted = counted_training_flops(model, x[:count_batch], count_kwargs)
    if not attention_counted:
        counted += TRAINING_FLOPS_PER_FORWARD * attention_flops(case.config, count_batch)
    config = TrainConfig(steps=10**9, batch_size=case.batch_size, precision=case.precision, compile=case.compile,
                         device=str(device), progress=False)
    trainer = Trainer(model, FixedBatch(x, model_kwargs), config)
    peak = MatmulPeak(device, torch.bfloat16 if case.precision == "bf16" else torch.float32, args.peak_size,
                      args.peak_repeats)
    baseline = BaselineStep(case.config, x, model_kwargs["y"], case.precision, case.compile)
    times = time_training_steps({"peak": peak, "minidit": trainer.train_step, "baseline": baseline}, device,
                                args.warmup, args.steps, args.budget_s)
    hand = TRAINING_FLOPS_PER_FORWARD * dit_forward_flops(case.config, case.batch_size)
    peaks = [peak.flops / seconds for seconds in times["peak"]]  # FLOP/s of each round
    step_s = statistics.median(times["minidit"])
    return {
        "name": case.name,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflop_step": hand / 1e9,
        "counter_ratio": counted / (TRAINING_FLOPS_PER_FORWARD * dit_forward_flops(case.config, count_batch)),
        "peaks": peaks,
        "step_s": step_s,
        "spread": (min(times["minidit"]), max(times["minidit"])),
        "img_s": case.batch_size / step_s,
        "gflops": hand / step_s / 1e9,
        "mfu": statistics.median(hand / seconds / p for seconds, p in zip(times["minidit"], peaks)),
        "mfu_best_peak": hand / step_s / max(peaks),
        "baseline_mfu": statistics.median(hand / seconds / p for seconds, p in zip(times["baseline"], peaks)),
        "vs_baseline": statistics.median(base / ours for base, ours in zip(times["baseline"], times["minidit"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=torch.cuda.is_available(),
                        help="DiT-B/2 and DiT-XL/2, bf16, torch.compile on CUDA (default: when CUDA is available)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per case (CPU 1, GPU 3: compiling)")
    parser.add_argument("--steps", type=int, default=7,
                        help="timed rounds per case, each one step of minidit and one of the baseline (medians)")
    parser.add_argument("--budget-s", type=float, default=90.0, help="stop timing a case after this many seconds")
    parser.add_argument("--peak-size", type=int, default=None, help="matmul size for the peak (CPU 2048, GPU 8192)")
    parser.add_argument("--peak-repeats", type=int, default=None, help="peak matmuls per round (CPU 3, GPU 50)")
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu needs CUDA; run without it for the CPU benchmark")
    device = torch.device("cuda" if args.gpu else "cpu")
    torch.set_num_threads(args.threads)
    args.peak_size = args.peak_size or (8192 if args.gpu else 2048)
    args.peak_repeats = args.peak_repeats or (50 if args.gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.gpu else 1)
    results = [run_case(case, device, args) for case in (GPU_CASES if args.gpu else CPU_CASES)]

    peaks = [p for r in results for p in r["peaks"]]
    label = torch.cuda.get_device_name(device) if args.gpu else f"CPU, {args.threads} threads"
    print(f"{label}: peak matmul ({args.peak_size}^2, mean of {args.peak_repeats} per round) median "
          f"{statistics.median(peaks) / 1e9:.1f} GFLOP/s, range {min(peaks) / 1e9:.0f}-{max(peaks) / 1e9:.0f}")
    print(f"{'case':6} {'params':>8} {'GFLOP/step':>11} {'counter/hand':>13} {'step s':>8} {'min-max s':>15} "
          f"{'img/s':>8} {'GFLOP/s':>8} {'MFU':>6} {'MFU@best':>9} {'baseline MFU':>13} {'speed-up':>9}")
    for r in results:
        print(f"{r['name']:6} {r['params_m']:7.2f}M {r['gflop_step']:11.1f} {r['counter_ratio']:13.4f} "
              f"{r['step_s']:8.3f} {r['spread'][0]:7.3f}-{r['spread'][1]:7.3f} {r['img_s']:8.1f} "
              f"{r['gflops']:8.1f} {r['mfu']:6.1%} {r['mfu_best_peak']:9.1%} {r['baseline_mfu']:13.1%} "
              f"{r['vs_baseline']:8.2f}x")
    print("MFU: median over rounds against the same round's peak; MFU@best: median step against the run's best "
          "peak; speed-up: median over rounds of baseline step time / minidit step time")
    fields = " ".join(f"{r['name']}_img_s={r['img_s']:.1f} {r['name']}_mfu={r['mfu']:.3f} "
                      f"{r['name']}_baseline_mfu={r['baseline_mfu']:.3f} {r['name']}_vs_baseline={r['vs_baseline']:.2f}"
                      for r in results)
    print(f"RESULT peak_gflops={statistics.median(peaks) / 1e9:.1f} {fields}")


if __name__ == "__main__":
    main()
