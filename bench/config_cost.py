"""What a config costs on a GPU (class-conditional pixels or latents, text-to-image, text-to-frames): parameters,
memory of weights, optimizer states and activations, FLOPs and time.

For the DiT (with its refiner) of a config's ``[model]`` section, FLOPs of one training step are counted, not assumed
(``minidit.scaling.training_flops``): ``FlopCounterMode`` on a forward and backward pass of one sample on the CPU plus
three times the attention products it does not see, times the batch size. A frozen Hugging Face text encoder adds its
forward, about ``2 x parameters x tokens`` per caption (every weight in one multiply-add per token), from its published
parameter count (``--lm-params``); minidit's own frozen encoders (``text_encoder = "bidirectional"``, ...) are counted
with the model, their forward only (with ``--text-dim``, a stand-in as above); a text encoder trained from scratch
(``text_encoder = "scratch"``) is part of the counted model and of the trainable weights; a class-conditional model is
counted with one label per sample. A frames model (``frames = true``, Lumina-T2X, arXiv 2405.05945: any modality as
frames ``[H, W, T, C]``) is counted on one sample ``(1, H, W, T, C)``: ``H = W = input_size`` and ``T = --frames``, or
else each modality of the ``[data]`` section at its own size: FLOPs are their mean, since the data serves the modalities
in turn, and activations those of the largest. Memory counts the trainable weights in fp32 with their gradients and
AdamW's two moments (16 bytes each) plus an EMA copy (4 bytes) and the frozen encoder in bf16 (2 bytes), and the
activations: the bytes autograd saves for the backward pass of a forward under bf16 autocast on the CPU (each storage
once), per sample (the difference of batches of 2 and 1) times the batch, without activation checkpointing; GPU
attention kernels and ``torch.compile``'s fusions save differently, so it is an estimate to check with
bench/gpu_check.sh. Time assumes ``--mfu`` of ``--peak-tflops`` (the default: 40% of an H100 SXM's 989 dense bf16
TFLOP/s), an assumption stated in the output, not a measurement; ``--gpus N`` divides time and activations by N (perfect
scaling; the weights too under ``[train] parallel = "fsdp"``). Used for the estimates written in
configs/shapes_t2i_llm_hf.toml (``python bench/config_cost.py configs/shapes_t2i_llm_hf.toml --text-dim 896 --lm-params
494e6``), configs/frames_*_gpu.toml, configs/shapes_t2i_*_gpu.toml, configs/cifar10_dit_b2.toml and
configs/imagenet*_xl2.toml (``--gpus 8``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from minidit.config import (TEXT_KEYS, Experiment, build_data, build_model, check_model, frame_shapes,  # noqa: E402
                            load_config)
from minidit.dit import DiT, DiTConfig  # noqa: E402
from minidit.scaling import training_flops  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line settings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a TOML config with a DiT [model] section")
    parser.add_argument("--text-dim", type=int, help="width of a frozen text encoder's features (not for \"scratch\")")
    parser.add_argument("--lm-params", type=float, default=0.0, help="parameters of the frozen text encoder (0: none)")
    parser.add_argument("--frames", type=int, help="T of a frames model's samples (default: the [data] modalities')")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (default H100 SXM)")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation (default 0.4)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs sharing each batch (torchrun); time and activations "
                        "per GPU divide by it, and so do the weights with [train] parallel = \"fsdp\"")
    return parser.parse_args(argv)


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, model_kwargs: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for backward in one forward of ``x`` under bf16 autocast (each storage
    once)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), torch.autocast("cpu", torch.bfloat16):
        model(x, torch.full((x.shape[0],), 0.5), **model_kwargs)
    return sum(storages.values())


def activation_bytes_per_sample(model: nn.Module, x: torch.Tensor, model_kwargs: dict[str, torch.Tensor]) -> int:
    """Saved activations of one more sample: batch 2 minus batch 1 (what is saved once per step, such as the bf16
    copies of the weights, cancels)."""
    double = {name: torch.cat([value, value]) for name, value in model_kwargs.items()}
    return saved_activation_bytes(model, torch.cat([x, x]), double) - saved_activation_bytes(model, x, model_kwargs)


def build_counted_model(experiment: Experiment,
                        args: argparse.Namespace) -> tuple[nn.Module, DiT, dict[str, torch.Tensor]]:
    """The model whose FLOPs are counted, its DiT, and one sample's inputs: the DiT alone and a label without a text
    encoder; a ``TextToImage`` with its encoder for ``"scratch"`` or a minidit encoder (token ids of the longest
    caption); else (``"hf"``, or any frozen encoder with ``--text-dim``) the DiT alone (features of width
    ``--text-dim`` from the frozen encoder, ``text_max_length`` of them)."""
    values = check_model(experiment.model, args.config)
    if "text_encoder" not in values:  # class-conditional (or unconditional) images or latents: one label
        model = build_model(experiment.model, args.config)
        return model, model, {"y": torch.zeros(1, dtype=torch.long)} if model.config.num_classes else {}
    if values["text_encoder"] == "scratch" or (values["text_encoder"] != "hf" and args.text_dim is None):
        # trained with the DiT, or one of minidit's frozen encoders (untrained here); --text-dim stands in a frozen one
        model = build_model(experiment.model, args.config, pretrained_text=False,
                            text_length=experiment.data.get("text_length"))
        length, vocabulary = model.text_length, model.encoder.config.vocab_size
        ids = torch.randint(4, vocabulary, (1, length), generator=torch.Generator().manual_seed(0))
        return model, model.denoiser, {"text_ids": ids, "text_mask": torch.ones(1, length, dtype=torch.bool)}
    if args.text_dim is None:
        raise SystemExit(f"{args.config}: a frozen text encoder's width is not in the config; pass --text-dim")
    values = {key: value for key, value in values.items() if key not in (*TEXT_KEYS, "type")}
    model = DiT(DiTConfig(**{**values, "text_dim": args.text_dim}))
    length = int(experiment.model.get("text_max_length", 64))
    return model, model, {"text": torch.randn(1, length, args.text_dim),
                          "text_mask": torch.ones(1, length, dtype=torch.bool)}


def sample_shapes(experiment: Experiment, config: DiTConfig, args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    """One sample's shape by name: ``(C, H, W)`` of an image model; ``(H, W, T, C)`` of a frames model, with
    ``T = --frames`` at ``input_size``, or else of each modality of the ``[data]`` section."""
    if not getattr(config, "frames", False):  # an MM-DiT reads images only
        return {"image": (config.in_channels, config.input_size, config.input_size)}
    if args.frames is not None:
        return {"frames": (config.input_size, config.input_size, args.frames, config.in_channels)}
    return frame_shapes(build_data(experiment.data, args.config))


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    experiment = load_config(args.config)
    batch, steps = experiment.train.batch_size, experiment.train.steps
    torch.manual_seed(0)
    model, dit, kwargs = build_counted_model(experiment, args)
    shapes = sample_shapes(experiment, dit.config, args)
    xs = {name: torch.randn(1, *shape) for name, shape in shapes.items()}
    dit_flops = statistics.fmean(training_flops(model, x, kwargs) for x in xs.values()) * batch
    activations = max(activation_bytes_per_sample(model, x, kwargs) for x in xs.values()) * batch / 2**30
    text_length = kwargs["text_mask"].shape[1] if "text_mask" in kwargs else 0
    lm_flops = 2 * args.lm_params * text_length * batch
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = args.lm_params + sum(p.numel() for p in model.parameters() if not p.requires_grad)
    encoder = trainable - sum(p.numel() for p in dit.parameters())
    memory = (trainable * (16 + 4) + frozen * 2) / 2**30
    shards = args.gpus if experiment.train.parallel == "fsdp" else 1
    gpu_memory = (trainable * (16 + 4) / shards + frozen * 2) / 2**30
    seconds = (dit_flops + lm_flops) / (args.peak_tflops * 1e12 * args.mfu * args.gpus)
    text_refiner = getattr(dit, "text_refiner", None)
    refiner = sum(p.numel() for p in text_refiner.parameters()) if text_refiner is not None else 0
    result = {"trainable_params_m": trainable / 1e6, "refiner_params_m": refiner / 1e6,
              "text_encoder_params_m": encoder / 1e6, "step_tflop": (dit_flops + lm_flops) / 1e12,
              "lm_share": lm_flops / (dit_flops + lm_flops), "weights_gib": memory, "activations_gib": activations,
              "gpu_weights_gib": gpu_memory, "gpu_activations_gib": activations / args.gpus,
              "step_s": seconds, "hours": seconds * steps / 3600}
    print(f"{args.config}: {trainable / 1e6:.1f} M trainable parameters (refiner {refiner / 1e6:.1f} M, text encoder "
          f"trained with it {encoder / 1e6:.1f} M), frozen encoder {frozen / 1e6:.1f} M")
    if getattr(dit.config, "frames", False):
        print("frames (H, W, T, C): " + ", ".join(f"{name} {shape}" for name, shape in shapes.items())
              + (" (FLOPs: their mean; activations: the largest)" if len(shapes) > 1 else ""))
    print(f"training step, batch {batch}, {text_length} caption tokens: {result['step_tflop']:.2f} TFLOP "
          f"(encoder forward {result['lm_share']:.1%}); weights, gradients, AdamW and EMA {memory:.1f} GiB "
          f"plus activations {activations:.1f} GiB (bf16 autocast, saved for backward, counted on the CPU)")
    if args.gpus > 1:
        print(f"per GPU of {args.gpus} ({experiment.train.parallel}): weights {gpu_memory:.1f} GiB plus activations "
              f"{activations / args.gpus:.1f} GiB ({batch / args.gpus:g} samples); the time assumes perfect scaling")
    print(f"at an assumed {args.mfu:.0%} of {args.peak_tflops:.0f} TFLOP/s per GPU on {args.gpus} GPU(s): "
          f"{seconds * 1000:.0f} ms per step, {result['hours']:.1f} h for {steps} steps")
    return result


if __name__ == "__main__":
    main()
