"""Refiner benchmark: what LI-DiT's language-token refiner and the collaborative refiner add to a DiT training step.

One training step (``minidit.train.Trainer.train_step``: loss, backward, clipping, AdamW, EMA) of the DiT of
notebooks/08_llm_text_encoders.ipynb (24x24 images, patch 4, width 64, depth 4, cross-attention to 47 caption
tokens of width 128) without a refiner, with the token refiner (``text_refiner="token"``, 2 blocks at the text
width) and with the collaborative refiner (two encoders' captions, so the DiT also reads twice the tokens). The
three steps and a square matmul that measures the machine's peak run in turn in every round (as in
bench/train_step.py), so a slow phase of a shared machine hits all of them; a refiner's **share** of the step is
``1 - t(no refiner) / t(refiner)`` (median over rounds). FLOPs are counted, not assumed
(``minidit.scaling.training_flops``: ``FlopCounterMode`` on a forward and backward pass, plus three times the
products of every ``scaled_dot_product_attention`` call of a forward, which the counter's CPU registry misses,
``4 N H T_q T_k Dh`` each); MFU is FLOP/s against the round's matmul peak. Run ``python bench/refiner.py``; its
test (tiny sizes) is tests/test_bench_refiner.py.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_step  # noqa: E402  (bench/train_step.py: the peak matmul, the timing loop, the FLOP counter)
from minidit.dit import DiT, DiTConfig  # noqa: E402
from minidit.scaling import training_flops  # noqa: E402
from minidit.train import TrainConfig, Trainer  # noqa: E402

ARMS = {"none": ("none", 1), "token": ("token", 1), "collaborative": ("collaborative", 2)}  # refiner, text segments


def model_config(args: argparse.Namespace, refiner: str) -> DiTConfig:
    """The benchmark's DiT with ``text_refiner = refiner``."""
    return DiTConfig(input_size=args.size, patch_size=args.patch, in_channels=3, hidden_size=args.hidden,
                     depth=args.depth, num_heads=args.heads, qk_norm="rmsnorm", text_conditioning="cross",
                     text_dim=args.text_dim, text_refiner=refiner, refiner_depth=args.refiner_depth,
                     refiner_heads=args.refiner_heads)


def batch(args: argparse.Namespace, segments: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A fixed batch: images and ``segments`` captions of ``args.text_length`` tokens per sample, the last 5 padding."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
    length = args.text_length
    text = torch.randn(args.batch, segments * length, args.text_dim, generator=generator)
    mask = (torch.arange(length) < length - min(5, length - 1)).repeat(segments).expand(args.batch, -1)
    return x, {"text": text, "text_mask": mask.contiguous()}


def compare(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Time the training steps of the three arms and the peak matmul in interleaved rounds."""
    train = TrainConfig(steps=10**9, batch_size=args.batch, precision="fp32", device=str(device), progress=False)
    steps, flops = {}, {}
    for name, (refiner, segments) in ARMS.items():
        torch.manual_seed(0)
        model = DiT(model_config(args, refiner)).to(device)
        x, model_kwargs = batch(args, segments)
        flops[name] = training_flops(model, x, model_kwargs)
        steps[name] = Trainer(model, train_step.FixedBatch(x, model_kwargs), train).train_step
    peak = train_step.MatmulPeak(device, torch.float32, args.peak_size, args.peak_repeats)
    times = train_step.time_training_steps({"peak": peak, **steps}, device, args.warmup, args.steps, args.budget_s)
    peaks = [peak.flops / seconds for seconds in times["peak"]]
    rows = {}
    for name in ARMS:
        rows[name] = {
            "step": statistics.median(times[name]),
            "gflop": flops[name] / 1e9,
            "mfu": statistics.median(flops[name] / seconds / p for seconds, p in zip(times[name], peaks)),
            "share": statistics.median(1 - base / t for base, t in zip(times["none"], times[name])),
            "flop_share": 1 - flops["none"] / flops[name],
        }
    return {"rows": rows, "peaks": peaks}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line settings; the defaults are notebook 08's DiT on 2 CPU cores, the test passes tiny sizes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=24, help="image side (default 24)")
    parser.add_argument("--patch", type=int, default=4, help="patch size (default 4: 36 image tokens)")
    parser.add_argument("--hidden", type=int, default=64, help="DiT width (default 64)")
    parser.add_argument("--depth", type=int, default=4, help="DiT blocks (default 4)")
    parser.add_argument("--heads", type=int, default=4, help="DiT heads (default 4)")
    parser.add_argument("--text-dim", type=int, default=128, help="text feature width (default 128)")
    parser.add_argument("--text-length", type=int, default=47, help="caption tokens per encoder (default 47)")
    parser.add_argument("--refiner-depth", type=int, default=2, help="token refiner blocks (default 2)")
    parser.add_argument("--refiner-heads", type=int, default=4, help="refiner heads (default 4)")
    parser.add_argument("--batch", type=int, default=64, help="training batch size (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (default 1)")
    parser.add_argument("--steps", type=int, default=9, help="timed rounds (default 9; medians)")
    parser.add_argument("--budget-s", type=float, default=120.0, help="stop after this many seconds (>= 2 rounds)")
    parser.add_argument("--peak-size", type=int, default=2048, help="matmul size for the peak (default 2048)")
    parser.add_argument("--peak-repeats", type=int, default=3, help="peak matmuls per round (default 3)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result = compare(args, torch.device("cpu"))
    peaks = result["peaks"]
    print(f"CPU, {args.threads} threads: peak matmul ({args.peak_size}^2) median {statistics.median(peaks) / 1e9:.1f} "
          f"GFLOP/s over {len(peaks)} rounds")
    print(f"training step, batch {args.batch}, DiT {args.size}^2 / patch {args.patch}, width {args.hidden}, depth "
          f"{args.depth}; captions of {args.text_length} tokens of width {args.text_dim}; refiner {args.refiner_depth} "
          f"blocks:")
    print(f"{'refiner':>14} {'GFLOP':>8} {'step s':>8} {'MFU':>6} {'share of step':>14} {'share of FLOPs':>15}")
    for name, row in result["rows"].items():
        print(f"{name:>14} {row['gflop']:8.2f} {row['step']:8.3f} {row['mfu']:6.1%} {row['share']:14.1%} "
              f"{row['flop_share']:15.1%}")
    rows = result["rows"]
    print(f"RESULT token_share={rows['token']['share']:.3f} collaborative_share={rows['collaborative']['share']:.3f} "
          f"token_flop_share={rows['token']['flop_share']:.3f} mfu={rows['token']['mfu']:.3g} "
          f"mfu_none={rows['none']['mfu']:.3g} peak_gflops={statistics.median(peaks) / 1e9:.1f}")


if __name__ == "__main__":
    main()
