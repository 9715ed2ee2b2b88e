"""What a text-to-image config costs on a GPU: parameters, memory of weights and optimizer states, FLOPs and time.

For the DiT (with its refiner) of a config's ``[model]`` section, FLOPs of one training step are counted, not
assumed: ``FlopCounterMode`` on a forward and backward pass of one sample on the CPU plus three times the attention
products it does not see (``bench/refiner.py``), times the batch size. A frozen Hugging Face text encoder adds its
forward, about ``2 x parameters x tokens`` per caption (every weight in one multiply-add per token), from its
published parameter count (``--lm-params``). Memory counts the trainable weights in fp32 with their gradients and
AdamW's two moments (16 bytes each) plus an EMA copy (4 bytes) and the frozen encoder in bf16 (2 bytes); it leaves
out activations, which depend on the batch, precision and checkpointing (measure them with bench/gpu_check.sh).
Time assumes ``--mfu`` of ``--peak-tflops`` (the default: 40% of an H100 SXM's 989 dense bf16 TFLOP/s), an
assumption stated in the output, not a measurement. Used for the estimates written in configs/shapes_t2i_llm_hf.toml:
``python bench/config_cost.py configs/shapes_t2i_llm_hf.toml --text-dim 896 --lm-params 494e6``.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tomllib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from minidit.config import TEXT_KEYS, check_model  # noqa: E402
from minidit.dit import DiT, DiTConfig  # noqa: E402

_spec = importlib.util.spec_from_file_location("refiner_bench", Path(__file__).resolve().parent / "refiner.py")
refiner_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(refiner_bench)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line settings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a TOML config with a DiT [model] section")
    parser.add_argument("--text-dim", type=int, required=True, help="width of the text encoder's features")
    parser.add_argument("--lm-params", type=float, default=0.0, help="parameters of the frozen text encoder (0: none)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (default H100 SXM)")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation (default 0.4)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    raw = tomllib.loads(Path(args.config).read_text())
    values = check_model(raw["model"], args.config)
    values = {key: value for key, value in values.items() if key not in (*TEXT_KEYS, "type")}
    config = DiTConfig(**{**values, "text_dim": args.text_dim})
    text_length = int(raw["model"].get("text_max_length", 64))
    batch, steps = int(raw["train"]["batch_size"]), int(raw["train"]["steps"])
    torch.manual_seed(0)
    model = DiT(config)
    x = torch.randn(1, config.in_channels, config.input_size, config.input_size)
    kwargs = {"text": torch.randn(1, text_length, args.text_dim),
              "text_mask": torch.ones(1, text_length, dtype=torch.bool)}
    dit_flops = refiner_bench.training_flops(model, x, kwargs) * batch
    lm_flops = 2 * args.lm_params * text_length * batch
    trainable = sum(p.numel() for p in model.parameters())
    memory = (trainable * (16 + 4) + args.lm_params * 2) / 2**30
    seconds = (dit_flops + lm_flops) / (args.peak_tflops * 1e12 * args.mfu)
    refiner = sum(p.numel() for p in model.text_refiner.parameters()) if model.text_refiner is not None else 0
    result = {"trainable_params_m": trainable / 1e6, "refiner_params_m": refiner / 1e6,
              "step_tflop": (dit_flops + lm_flops) / 1e12,
              "lm_share": lm_flops / (dit_flops + lm_flops), "weights_gib": memory, "step_s": seconds,
              "hours": seconds * steps / 3600}
    print(f"{args.config}: DiT {trainable / 1e6:.1f} M trainable parameters (refiner {refiner / 1e6:.1f} M), "
          f"frozen encoder {args.lm_params / 1e6:.0f} M")
    print(f"training step, batch {batch}, {text_length} caption tokens: {result['step_tflop']:.2f} TFLOP "
          f"(encoder forward {result['lm_share']:.1%}); weights, gradients, AdamW and EMA {memory:.1f} GiB "
          "plus activations")
    print(f"at an assumed {args.mfu:.0%} of {args.peak_tflops:.0f} TFLOP/s: {seconds * 1000:.0f} ms per step, "
          f"{result['hours']:.1f} h for {steps} steps")
    return result


if __name__ == "__main__":
    main()
