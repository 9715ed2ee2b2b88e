"""KV-compression benchmark: DiT training steps with and without compressed keys and values, and gate pruning.

Part 1: one training step (``minidit.train.Trainer.train_step``: loss, backward, clipping, AdamW, EMA) of a small
DiT with PixArt-Sigma's KV compression (``minidit.kv_compression``, ratio 2, every block) against the same model
without it, at 1024 and 4096 image tokens. PixArt-Sigma (arXiv 2403.04692) reports about 34% less time at high
resolution; the issue's target on 2 CPU cores is a 1.4x step speed-up at 4096 tokens. Both steps, and a square
matmul that measures the machine's peak, run in turn in every round (as in bench/train_step.py), so a slow phase
of a shared machine hits all three; the speed-up is the median over rounds of the ratio of the two step times,
and MFU is the hand-counted model FLOPs per second against the same round's peak (median over rounds).
Part 2: sampling throughput (Euler, ``--sample-steps`` steps) of a Lumina-style gated cross-attention DiT
(``text_conditioning="gated_cross"``) with 0, 50% and 80% of its gates pruned (``minidit.gating.prune_gates``,
pruned heads skip their work); the FLOP share of the pruned heads gives the speed-up to expect if time followed FLOPs.
Run ``python bench/kv_compression.py``; its test (tiny sizes) is tests/test_bench_kv_compression.py;
notebooks/07_kv_compression.ipynb measures step times over more sizes.

Hand count of the cross-attention's forward FLOPs per head, block and sample, with caption length ``L``, width ``D``,
head width ``Dh`` and ``T`` image tokens: text keys and values ``2 * L * D * 2 Dh``, then ``q k^T`` and
``softmax(.) v``, ``2 * 2 T L Dh``; in all ``4 L Dh (D + T)``. The query is the block's own.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_step  # noqa: E402  (bench/train_step.py: the peak matmul, the timing loop, the DiT FLOP count)
from minidit.dit import DiT, DiTConfig  # noqa: E402
from minidit.gating import prune_gates  # noqa: E402
from minidit.kv_compression import KV_MODES, attention_flops  # noqa: E402
from minidit.samplers import sample_ode  # noqa: E402
from minidit.train import TrainConfig, Trainer  # noqa: E402


def model_config(args: argparse.Namespace, size: int, compress: bool, **overrides: Any) -> DiTConfig:
    """The benchmark's DiT on ``size x size`` RGB images, with KV compression in every block when ``compress``."""
    kv = {"ratio": args.ratio, "mode": args.mode} if compress else None
    settings = dict(input_size=size, patch_size=args.patch, in_channels=3, hidden_size=args.hidden, depth=args.depth,
                    num_heads=args.heads, kv_compression=kv)
    return DiTConfig(**{**settings, **overrides})


def training_flops(config: DiTConfig, batch_size: int) -> int:
    """Hand-counted FLOPs of one training step (3 forwards): bench/train_step.py's count with the attention of each
    compressing block replaced by ``minidit.kv_compression.attention_flops`` at its ratio."""
    tokens, dim = config.grid_size**2, config.hidden_size
    forward = train_step.dit_forward_flops(config, batch_size) - train_step.attention_flops(config, batch_size)
    for block in range(config.depth):
        if config.compresses(block):
            settings = config.kv_compression
            forward += batch_size * attention_flops(tokens, dim, settings["ratio"], settings["mode"])
        else:
            forward += batch_size * attention_flops(tokens, dim)
    return train_step.TRAINING_FLOPS_PER_FORWARD * forward


def compare_steps(args: argparse.Namespace, size: int, device: torch.device) -> dict[str, Any]:
    """Time training steps without and with compression on ``size x size`` images, in interleaved rounds."""
    configs = {"none": model_config(args, size, False), "kv": model_config(args, size, True)}
    torch.manual_seed(0)
    models = {"none": DiT(configs["none"]).to(device), "kv": DiT(configs["kv"]).to(device)}
    models["kv"].load_state_dict(models["none"].state_dict(), strict=False)  # same weights; convs keep the average
    x, model_kwargs = train_step.synthetic_batch(configs["none"], args.batch, device)
    train = TrainConfig(steps=10**9, batch_size=args.batch, precision="fp32", device=str(device), progress=False)
    trainers = {name: Trainer(model, train_step.FixedBatch(x, model_kwargs), train) for name, model in models.items()}
    peak = train_step.MatmulPeak(device, torch.float32, args.peak_size, args.peak_repeats)
    times = train_step.time_training_steps(
        {"peak": peak, "none": trainers["none"].train_step, "kv": trainers["kv"].train_step},
        device, args.warmup, args.steps, args.budget_s,
    )
    peaks = [peak.flops / seconds for seconds in times["peak"]]
    result: dict[str, Any] = {"tokens": configs["none"].grid_size**2, "peaks": peaks, "rounds": len(peaks)}
    for name, config in configs.items():
        flops = training_flops(config, args.batch)
        result[f"gflop_{name}"] = flops / 1e9
        result[f"step_{name}"] = statistics.median(times[name])
        result[f"mfu_{name}"] = statistics.median(flops / seconds / p for seconds, p in zip(times[name], peaks))
    result["speedup"] = statistics.median(none / kv for none, kv in zip(times["none"], times["kv"]))
    return result


def cross_attention_flops(config: DiTConfig, text_length: int) -> int:
    """Forward FLOPs of one head's cross-attention in one block for one sample: ``4 L Dh (D + T)`` (module docstring)."""
    head_dim = config.hidden_size // config.num_heads
    return 4 * text_length * head_dim * (config.hidden_size + config.grid_size**2)


def text_model_flops(config: DiTConfig, text_length: int) -> int:
    """Forward FLOPs of one sample through a cross-attention DiT with every head active: the DiT's own count, the
    cross-attention of every head and block, the caption MLP ``Dt -> D -> D`` per token and the pooled caption's
    linear ``Dt -> D``."""
    dim, text_dim = config.hidden_size, config.text_dim
    cross = config.depth * config.num_heads * cross_attention_flops(config, text_length)
    caption = 2 * text_length * (text_dim * dim + dim * dim) + 2 * text_dim * dim
    return train_step.dit_forward_flops(config, 1) + cross + caption


def compare_pruning(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Sampling throughput of a gated cross-attention DiT with ``args.prune`` fractions of its gates pruned."""
    config = model_config(args, args.text_size, False, depth=args.text_depth, num_heads=args.text_heads,
                          text_conditioning="gated_cross", text_dim=args.hidden)
    torch.manual_seed(0)
    model = DiT(config).to(device).eval()
    for name, parameter in model.named_parameters():  # trained-looking gates, so that pruning has an order
        if name.endswith("cross_attn.gate"):
            nn.init.normal_(parameter)
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(args.sample_batch, args.text_length, args.hidden, generator=generator).to(device)
    text_mask = torch.ones(args.sample_batch, args.text_length, dtype=torch.bool, device=device)
    noise = torch.randn(args.sample_batch, 3, args.text_size, args.text_size, generator=generator).to(device)
    samplers, pruned = {}, {}
    for fraction in args.prune:
        pruned_model = copy.deepcopy(model)
        pruned[fraction] = prune_gates(pruned_model, fraction=fraction) if fraction > 0 else 0

        @torch.no_grad()
        def sample(net: nn.Module = pruned_model) -> torch.Tensor:
            velocity = lambda x, t: net(x, t, text=text, text_mask=text_mask)  # noqa: E731
            return sample_ode(velocity, noise, steps=args.sample_steps).samples

        samplers[fraction] = sample
    times = train_step.time_training_steps(samplers, device, args.warmup, args.steps, args.budget_s)
    heads = config.depth * config.num_heads
    head_flops = cross_attention_flops(config, args.text_length)
    total = text_model_flops(config, args.text_length)
    base = times[args.prune[0]]
    return {
        "heads": heads,
        "cross_share": heads * head_flops / total,
        "rows": [
            {
                "fraction": fraction,
                "pruned": pruned[fraction],
                "img_s": args.sample_batch / statistics.median(times[fraction]),
                "speedup": statistics.median(b / s for b, s in zip(base, times[fraction])),
                "expected": total / (total - pruned[fraction] * head_flops),
            }
            for fraction in args.prune
        ],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line settings; the defaults are the 2-CPU-core benchmark, the test passes tiny sizes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128],
                        help="image sides for the training steps (default 64 128: 1024 and 4096 tokens at patch 2)")
    parser.add_argument("--patch", type=int, default=2, help="patch size (default 2)")
    parser.add_argument("--hidden", type=int, default=128, help="model width (default 128)")
    parser.add_argument("--depth", type=int, default=2, help="blocks (default 2)")
    parser.add_argument("--heads", type=int, default=2, help="attention heads (default 2)")
    parser.add_argument("--batch", type=int, default=2, help="training batch size (default 2)")
    parser.add_argument("--ratio", type=int, default=2, help="KV compression ratio r (default 2: r^2 = 4x fewer keys)")
    parser.add_argument("--mode", default="conv", choices=KV_MODES, help="KV compression mode (default conv)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (default 1)")
    parser.add_argument("--steps", type=int, default=7, help="timed rounds (default 7; medians)")
    parser.add_argument("--budget-s", type=float, default=120.0, help="stop a comparison after this many seconds")
    parser.add_argument("--peak-size", type=int, default=2048, help="matmul size for the peak (default 2048)")
    parser.add_argument("--peak-repeats", type=int, default=3, help="peak matmuls per round (default 3)")
    parser.add_argument("--text-size", type=int, default=32, help="image side of the pruning model (default 32)")
    parser.add_argument("--text-depth", type=int, default=4, help="blocks of the pruning model (default 4)")
    parser.add_argument("--text-heads", type=int, default=4, help="heads of the pruning model (default 4: 16 gates)")
    parser.add_argument("--text-length", type=int, default=40, help="caption tokens (default 40)")
    parser.add_argument("--sample-batch", type=int, default=8, help="images per sampling call (default 8)")
    parser.add_argument("--sample-steps", type=int, default=8, help="Euler steps per sampling call (default 8)")
    parser.add_argument("--prune", type=float, nargs="+", default=[0.0, 0.5, 0.8],
                        help="fractions of gates to prune; the first is the reference (default 0 0.5 0.8)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    steps = [compare_steps(args, size, device) for size in args.sizes]
    peaks = [p for result in steps for p in result["peaks"]]
    print(f"CPU, {args.threads} threads: peak matmul ({args.peak_size}^2) median {statistics.median(peaks) / 1e9:.1f} "
          f"GFLOP/s, range {min(peaks) / 1e9:.0f}-{max(peaks) / 1e9:.0f}")
    print(f"training step, batch {args.batch}, hidden {args.hidden}, depth {args.depth}, heads {args.heads}, "
          f"KV compression r={args.ratio} ({args.mode}) in every block:")
    print(f"{'tokens':>7} {'rounds':>6} {'GFLOP none':>11} {'GFLOP kv':>9} {'step none s':>12} {'step kv s':>10} "
          f"{'MFU none':>9} {'MFU kv':>7} {'speed-up':>9}")
    for r in steps:
        print(f"{r['tokens']:7d} {r['rounds']:6d} {r['gflop_none']:11.2f} {r['gflop_kv']:9.2f} {r['step_none']:12.3f} "
              f"{r['step_kv']:10.3f} {r['mfu_none']:9.1%} {r['mfu_kv']:7.1%} {r['speedup']:8.2f}x")
    pruning = compare_pruning(args, device)
    print(f"sampling, gated cross-attention DiT on {args.text_size}^2 images, {pruning['heads']} gated heads, caption "
          f"{args.text_length} tokens, {args.sample_steps} Euler steps, batch {args.sample_batch}; cross-attention "
          f"is {pruning['cross_share']:.1%} of the forward FLOPs:")
    print(f"{'pruned':>7} {'heads':>6} {'img/s':>8} {'speed-up':>9} {'FLOP-expected':>14}")
    for row in pruning["rows"]:
        print(f"{row['fraction']:7.0%} {row['pruned']:6d} {row['img_s']:8.2f} {row['speedup']:8.2f}x "
              f"{row['expected']:13.2f}x")
    fields = [f"speedup_{r['tokens']}={r['speedup']:.2f}" for r in steps]
    fields += [f"prune{round(row['fraction'] * 100)}_speedup={row['speedup']:.2f}" for row in pruning["rows"][1:]]
    fields += [f"mfu={steps[-1]['mfu_kv']:.3g}", f"mfu_none={steps[-1]['mfu_none']:.3g}",
               f"peak_gflops={statistics.median(peaks) / 1e9:.1f}"]
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
