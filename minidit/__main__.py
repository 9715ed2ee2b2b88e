"""The command line: ``python -m minidit train | sample | demo``.

``train`` runs a TOML experiment (see minidit/config.py) with the flow-matching trainer, ``sample`` integrates
a checkpoint's EMA velocity field from noise to data (SiT, arXiv 2401.08740, Sec. 2.4) into a PNG grid, with
classifier-free guidance for class-conditional models (DiT, arXiv 2212.09748, Sec. 3.2), and ``demo`` runs
the course demo. Used by the README, the Makefile (``make demo``) and notebooks/03_dit_from_scratch.ipynb.

Example:
    $ python -m minidit train configs/toy_8gaussians.toml --steps 500 --out runs/toy
    $ python -m minidit sample runs/toy/checkpoint.pt --n 2000 --steps 50 --method heun --out toy.png
"""
from __future__ import annotations

import argparse
import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from minidit.checkpoint import CheckpointError, load_checkpoint
from minidit.config import ConfigError, build_data, build_model, load_config, parse_config
from minidit.generate import build_sample_fn, sample_images
from minidit.samplers import ODE_METHODS
from minidit.train import Trainer, resolve_device, save_grid


def train_command(args: argparse.Namespace) -> Path:
    """Train the experiment of ``args.config``; returns the checkpoint path."""
    experiment = load_config(args.config)
    overrides = {"steps": args.steps, "out_dir": args.out}
    experiment.train = dataclasses.replace(experiment.train, **{k: v for k, v in overrides.items() if v is not None})
    if experiment.train.out_dir is None:
        experiment.train.out_dir = str(Path("runs") / Path(args.config).stem)
    seed = experiment.train.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # model initialisation and dropout
    model = build_model(experiment.model, experiment.source)
    data = build_data(experiment.data, experiment.source)
    trainer = Trainer(model, data, experiment.train, build_sample_fn(experiment), metadata=experiment.to_dict())
    if args.resume:
        trainer.resume(args.resume)
    history = trainer.train()  # saves out_dir/checkpoint.pt at the end
    path = Path(experiment.train.out_dir) / "checkpoint.pt"
    if history:
        print(f"step {trainer.step}: loss {history[-1]['loss']:.4f}; checkpoint {path}")
    return path


def sample_command(args: argparse.Namespace) -> Path:
    """Sample the EMA model of checkpoint ``args.checkpoint`` into the PNG ``args.out``."""
    state = load_checkpoint(args.checkpoint)
    if not state["metadata"]:
        raise CheckpointError(
            f"checkpoint {args.checkpoint!r} stores no config, so its model cannot be rebuilt; write checkpoints "
            "with `python -m minidit train` or Trainer(..., metadata=experiment.to_dict())"
        )
    experiment = parse_config(state["metadata"], source=f"{args.checkpoint} (stored config)")
    overrides = {"n": args.n, "steps": args.steps, "method": args.method, "cfg": args.cfg, "seed": args.seed}
    sample = dataclasses.replace(experiment.sample, **{k: v for k, v in overrides.items() if v is not None})
    device = resolve_device(experiment.train.device)
    model = build_model(experiment.model, experiment.source).to(device)
    model.load_state_dict(state["ema"])
    out = save_grid(sample_images(model, experiment.train, sample, device), args.out)
    print(f"{sample.n} samples, {sample.steps} {sample.method} steps, cfg {sample.cfg}: {out}")
    return out


def demo_command(args: argparse.Namespace) -> None:
    """Run ``minidit.demo.main()``."""
    from minidit.demo import main as demo_main

    demo_main()


def build_parser() -> argparse.ArgumentParser:
    """The ``minidit`` argument parser with its ``train``, ``sample`` and ``demo`` subcommands."""
    parser = argparse.ArgumentParser(prog="minidit", description="Diffusion transformers and flow models from scratch.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a TOML experiment (see configs/)")
    train.add_argument("config", help="path of a TOML config, e.g. configs/toy_8gaussians.toml")
    train.add_argument("--steps", type=int, help="total training steps (overrides [train] steps)")
    train.add_argument("--out", help="output folder for metrics, samples and checkpoints (overrides [train] out_dir)")
    train.add_argument("--resume", help="checkpoint to continue from")
    train.set_defaults(run=train_command)

    sample = commands.add_parser("sample", help="draw samples from a checkpoint into a PNG grid")
    sample.add_argument("checkpoint", help="checkpoint written by `minidit train`")
    sample.add_argument("--n", type=int, help="number of samples (default: the config's [sample] n)")
    sample.add_argument("--steps", type=int, help="ODE steps")
    sample.add_argument("--method", choices=ODE_METHODS, help="ODE method")
    sample.add_argument("--cfg", type=float, help="classifier-free guidance scale (1 = none)")
    sample.add_argument("--seed", type=int, help="seed of the starting noise")
    sample.add_argument("--out", default="samples.png", help="output PNG")
    sample.set_defaults(run=sample_command)

    demo = commands.add_parser("demo", help="run the course demo")
    demo.set_defaults(run=demo_command)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m minidit`` and the ``minidit`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ConfigError, CheckpointError, FileNotFoundError) as error:  # the user's input: no traceback needed
        parser.exit(2, f"minidit {args.command}: error: {error}\n")


if __name__ == "__main__":
    main()
