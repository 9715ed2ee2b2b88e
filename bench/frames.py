"""Frames benchmark: is packing ``[H, W, T, C]`` with ``[nextline]`` / ``[nextframe]`` tokens a bottleneck?

Times, in turn in every round (as bench/train_step.py does, so a slow phase of a shared machine hits all alike), one
training step of a frames DiT (forward, backward, AdamW) on a batch of videos, the packing alone (``patchify_frames``,
``FrameTokens.pack`` and ``unpack``, ``unpatchify_frames``, forward and backward) and the layout built from scratch
(``minidit.frames`` caches it, so a run pays this once per batch shape). Reports the median seconds of each and
packing's **share** of the step, ``t(packing) / t(step)``. Mixed sizes (``--mixed``) pad the batch: half the clips
keep the full size, half are half as tall, wide and long. Run ``python bench/frames.py``; its test (tiny sizes) is in
tests/test_frames.py.
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
import train_step  # noqa: E402  (bench/train_step.py: the timing loop)
from minidit.dit import DiT, DiTConfig  # noqa: E402
from minidit.frames import FrameTokens, _layout, patchify_frames, unpatchify_frames  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=24, help="frame height and width (default 24)")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--mixed", action="store_true", help="a padded batch of two clip sizes")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    config = DiTConfig(input_size=args.size, patch_size=args.patch, in_channels=3, hidden_size=args.hidden,
                       depth=args.depth, num_heads=args.heads, num_classes=0, rope=True, pos_embed="none",
                       qk_norm="rmsnorm", norm="rmsnorm", frames=True)
    model = DiT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, args.size, args.size, args.frames, 3)
    t = torch.rand(args.batch)
    sizes = None
    if args.mixed:
        half = [args.size // 2 // args.patch * args.patch, args.size // 2 // args.patch * args.patch, args.frames // 2]
        sizes = torch.tensor([[args.size, args.size, args.frames], half] * (args.batch // 2))
    layout = model.frame_layout(x, sizes)
    packer = FrameTokens(args.hidden)
    width = args.patch**2 * 3

    def training_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(x, t, frame_sizes=sizes).square().mean().backward()
        optimizer.step()

    def packing() -> None:
        patches = patchify_frames(x, args.patch).requires_grad_()  # (N, P, p p C), standing in for the embedding
        tokens = packer.pack(torch.nn.functional.pad(patches, (0, args.hidden - width)), layout)  # (N, L, D)
        out = unpatchify_frames(packer.unpack(tokens, layout)[..., :width], layout.padded_grid, args.patch)
        out.sum().backward()

    def build_layout() -> None:
        _layout.cache_clear()
        model.frame_layout(x, sizes)

    times = train_step.time_training_steps({"step": training_step, "packing": packing, "layout": build_layout},
                                           device, args.warmup, args.steps, budget_s=120)
    median = {name: statistics.median(values) for name, values in times.items()}
    tokens = int(layout.key_mask.sum()) // args.batch
    report = {"seconds": median, "packing_share": median["packing"] / median["step"],
              "layout_share": median["layout"] / median["step"], "tokens_per_clip": tokens}
    print(f"frames DiT ({args.batch} clips of {args.size}x{args.size}x{args.frames}, {tokens} tokens each"
          f"{', mixed sizes' if args.mixed else ''}): step {median['step'] * 1e3:.1f} ms, packing "
          f"{median['packing'] * 1e3:.2f} ms ({100 * report['packing_share']:.1f}% of the step), layout from scratch "
          f"{median['layout'] * 1e3:.2f} ms ({100 * report['layout_share']:.1f}%, once per batch shape)")
    return report


if __name__ == "__main__":
    main()
