"""The command line: ``python -m minidit train | sample | eval | export | demo``.

``train`` runs a TOML experiment (see minidit/config.py) with the flow-matching trainer, ``sample`` integrates
a checkpoint's EMA velocity field from noise to data (SiT, arXiv 2401.08740, Sec. 2.4) into a PNG grid, with
classifier-free guidance for class-conditional models (DiT, arXiv 2212.09748, Sec. 3.2) and text-to-image models
(``--prompt`` / ``--prompts``, guided against the learned null caption), and ``demo`` runs the course demo. A frames
model (Lumina-T2X, arXiv 2405.05945: any modality as frames ``[H, W, T, C]``) samples clips of its prompts'
modalities ("video: ..."): a PNG with a row per clip and its frames as columns, and a GIF of the clips next to it.
``train`` under ``torchrun`` trains on every process of the job (``minidit.distributed``: DDP or FSDP2) and writes
sharded checkpoint folders, which resume on any number of processes and which ``export`` turns into one file for
sampling on one device (``sample`` and ``eval`` also read the folders directly).
``eval`` samples a checkpoint and reports its FID (``minidit.fid``: protocol, sample count, sampler and NFE with the
number) and, for shapes models, the analyser's exact metrics (``minidit.data.analyser``).
Used by the README, the Makefile (``make demo``), notebooks/03_dit_from_scratch.ipynb and, through
configs/frames_*.toml, notebooks/09_any_modality.ipynb.

Example:
    $ python -m minidit train configs/toy_8gaussians.toml --steps 500 --out runs/toy
    $ torchrun --standalone --nproc_per_node 2 -m minidit train configs/shapes_dit_tiny.toml --out runs/tiny
    $ python -m minidit export runs/tiny/checkpoint runs/tiny/model.pt
    $ python -m minidit sample runs/toy/checkpoint.pt --n 2000 --steps 50 --method heun --out toy.png
    $ python -m minidit sample runs/shapes_t2i_gated/checkpoint.pt --prompt "a small red circle at the top left" --cfg 4
    $ python -m minidit sample runs/frames_video/checkpoint.pt --prompt "video: a small red circle moving right quickly"
    $ python -m minidit eval runs/cifar10_dit_s2/checkpoint.pt --n 10000 --steps 50 --method heun
"""
from __future__ import annotations

import argparse
import os
import sys
import random
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from minidit import distributed, fid
from minidit.checkpoint import CheckpointError, load_checkpoint, load_sharded_tensors, save_checkpoint
from minidit.config import (Experiment, build_data, build_model, check_data_fits_model, load_config, parse_config,
                            use_model_tokenizer)
from minidit.data.latents import add_cache_parser
from minidit.generate import (build_sample_fn, clips_to_images, decode_latents, default_prompts, prompt_frame_sizes,
                              sample_images)
from minidit.samplers import ODE_METHODS
from minidit.train import Trainer, resolve_device
from minidit.validation import InputError
from minidit.viz import animate_clips, save_grid

# Errors caused by what the user typed or pointed at: one line on stderr and exit code 2 (``--debug``: traceback).
INPUT_ERRORS = (InputError, CheckpointError, OSError)


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, exit code 2, like every other input error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


def train_command(args: argparse.Namespace) -> Path:
    """Train the experiment of ``args.config``; returns the checkpoint path."""
    overrides = {"steps": args.steps, "out_dir": args.out}
    experiment = load_config(args.config, {"train": {k: v for k, v in overrides.items() if v is not None}})
    if experiment.train.out_dir is None:
        experiment.train.out_dir = str(Path("runs") / Path(args.config).stem)
    seed = experiment.train.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # model initialisation and dropout
    model = build_model(experiment.model, experiment.source, text_length=experiment.data.get("text_length"))
    data = build_data(experiment.data, experiment.source)
    use_model_tokenizer(model, data)
    check_data_fits_model(model, data, experiment)
    trainer = Trainer(model, data, experiment.train, build_sample_fn(experiment), metadata=experiment.to_dict(),
                      source=experiment.source, overwrite=args.overwrite)
    if args.resume:
        trainer.resume(args.resume)
    history = trainer.train()  # saves out_dir/checkpoint.pt (a checkpoint folder under torchrun) at the end
    path = trainer.save_path()
    if history and trainer.world.main:
        print(f"step {trainer.step}: loss {history[-1]['loss']:.4f}; checkpoint {path}")
    return path


def load_ema_model(args: argparse.Namespace, n: int | None) -> tuple[Experiment, torch.nn.Module, torch.device]:
    """The stored experiment of checkpoint ``args.checkpoint`` with the ``[sample]`` overrides of ``args`` (``n``,
    ``steps``, ``method``, ``cfg``, ``seed``) and ``--device``, and its EMA model on that device.

    Raises:
        CheckpointError: for a checkpoint without a stored config.
    """
    experiment, model = load_stored_model(args.checkpoint, "ema", {
        "sample": {k: v for k, v in {"n": n, "steps": args.steps, "method": args.method, "cfg": args.cfg,
                                     "seed": args.seed}.items() if v is not None},
        "train": {"device": args.device} if args.device else {},
    })
    device = resolve_device(experiment.train.device)
    return experiment, model.to(device), device


def stored_model(path: str, overrides: dict | None = None) -> tuple[Experiment, dict, torch.nn.Module]:
    """The stored experiment of checkpoint ``path`` (a file or a sharded folder) with ``overrides``, the checkpoint's
    state, and an untrained model built from the experiment on the CPU.

    Raises:
        CheckpointError: for a checkpoint without a stored config.
    """
    state = load_checkpoint(path)
    if not state["metadata"]:
        raise CheckpointError(
            f"checkpoint {path!r} stores no config, so its model cannot be rebuilt; write checkpoints "
            "with `python -m minidit train` or Trainer(..., metadata=experiment.to_dict())"
        )
    experiment = parse_config(state["metadata"], f"{path} (stored config)", overrides or {})
    model = build_model(experiment.model, experiment.source, pretrained_text=False,  # weights: the checkpoint's
                        text_length=experiment.data.get("text_length"))
    return experiment, state, model


def load_stored_model(path: str, part: str, overrides: dict | None = None) -> tuple[Experiment, torch.nn.Module]:
    """The stored experiment of checkpoint ``path`` (see ``stored_model``) and its ``part`` (``"model"`` or ``"ema"``)
    weights in the model built from it on the CPU."""
    experiment, state, model = stored_model(path, overrides)
    weights = (load_sharded_tensors(path, {part: model.state_dict()})[part] if Path(path).is_dir()
               else state[part])
    model.load_state_dict(weights)
    return experiment, model


def export_command(args: argparse.Namespace) -> Path:
    """Write the model and EMA weights of checkpoint ``args.checkpoint`` (a sharded folder) with its config into
    the single file ``args.out``, for ``sample`` and ``eval`` on one device; refuses to replace an existing file."""
    out = Path(args.out)
    if out.exists():
        raise InputError(f"{out}: exists; choose another file name, or delete it first (export never overwrites)")
    _, state, model = stored_model(args.checkpoint)
    template = model.state_dict()
    parts = load_sharded_tensors(args.checkpoint, {  # each part read into tensors of its own
        part: {name: torch.empty_like(tensor) for name, tensor in template.items()} for part in ("model", "ema")})
    save_checkpoint({**parts, "step": state["step"], "config": state["config"], "metadata": state["metadata"],
                     "exported_from": str(args.checkpoint)}, out)
    print(f"step {state['step']}: model and EMA weights of {args.checkpoint} in {out}")
    return out


def sample_command(args: argparse.Namespace) -> Path:
    """Sample the EMA model of checkpoint ``args.checkpoint`` into the PNG ``args.out`` (a frames model: a row per
    clip, and the GIF of the clips next to it, ``args.out`` with the suffix ``.gif``)."""
    check_png_path(args.out)
    prompts = read_prompts(args)
    n = args.n if args.n is not None or args.prompts is None else len(prompts)
    experiment, model, device = load_ema_model(args, n)
    sample = experiment.sample
    frames = experiment.model.get("frames", False)
    if "text_encoder" in experiment.model:
        if prompts:
            prompts = fit_prompts(prompts, model, args.truncate)
        else:
            prompts = default_prompts(experiment, sample.n)
    elif prompts:
        raise InputError(f"{args.checkpoint}: this model reads no text, so --prompt/--prompts cannot steer it; use a "
                         "text-to-image checkpoint (a config with text_encoder in [model])")
    frame_sizes = prompt_frame_sizes(experiment, prompts) if frames else None
    samples = sample_images(model, experiment.train, sample, device, prompts, frame_sizes)
    samples = decode_latents(experiment, samples)  # a latent model's samples through its VAE
    if frame_sizes is None:
        out = save_grid(samples, args.out)
        print(f"{sample.n} samples, {sample.steps} {sample.method} steps, cfg {sample.cfg}: {out}")
        return out
    out = save_grid(clips_to_images(samples), args.out, nrow=samples.shape[3])  # a row per clip
    gif = Path(args.out).with_suffix(".gif")
    animate_clips(samples, path=gif)
    print(f"{sample.n} clips {tuple(samples.shape[1:4])}, {sample.steps} {sample.method} steps, cfg {sample.cfg}: "
          f"{out}, {gif}")
    return out


def read_prompts(args: argparse.Namespace) -> list[str] | None:
    """The prompts of ``--prompt TEXT`` or ``--prompts FILE`` (one per line, blank lines skipped), or ``None``.

    Raises:
        InputError: for an empty ``--prompt`` or a file without any prompt.
    """
    if args.prompt is not None:
        if not args.prompt.strip():
            raise InputError("--prompt is empty; write a caption such as --prompt \"a small red circle at the top left\" "
                             "(for unguided unconditional samples use --cfg 0 without a prompt)")
        return [args.prompt]
    if args.prompts is not None:
        prompts = [line.strip() for line in Path(args.prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise InputError(f"--prompts {args.prompts!r}: the file holds no prompt; write one caption per line")
        return prompts
    return None


def fit_prompts(prompts: list[str], model: torch.nn.Module, truncate: bool) -> list[str]:
    """Check ``prompts`` against the model's tokenizer: warn (on stderr) about words it never saw in training
    (outside its vocabulary), and refuse a prompt longer
    than the model reads, or with ``truncate`` cut it and say what was cut.

    Raises:
        InputError: for a prompt longer than ``model.text_length`` tokens without ``truncate``.
    """
    tokenizer, limit = model.encoder.tokenizer, model.text_length
    fitted = []
    for number, prompt in enumerate(prompts, start=1):
        unknown = tokenizer.unknown_words(prompt)
        if unknown:
            print(f"warning: prompt {number}: {', '.join(map(repr, unknown))} not in the model's vocabulary; encoded "
                  "byte by byte, which the model never saw in training", file=sys.stderr)
        length = tokenizer.count(prompt)  # special tokens ([BOS], [EOS]) included
        if length > limit and not truncate:
            raise InputError(f"prompt {number} is {length} tokens long but the model reads at most {limit} "
                             f"([BOS] and [EOS] included); shorten it or pass --truncate to cut it")
        if length > limit:
            ids, _ = tokenizer.encode([prompt], limit, truncation="cut")
            kept = tokenizer.decode(ids[0])
            print(f"warning: prompt {number} cut to its first {limit - 2} tokens: {kept!r}", file=sys.stderr)
            prompt = kept
        fitted.append(prompt)
    return fitted


def check_png_path(path: str) -> None:
    """Raise ``InputError`` unless ``path`` names a PNG file that can be written (checked before any work)."""
    if Path(path).is_dir():
        raise InputError(f"--out {path!r}: is a folder; name a .png file in it, e.g. --out {Path(path) / 'samples.png'}")
    if Path(path).suffix.lower() != ".png":
        raise InputError(f"--out {path!r}: the samples are saved as a PNG image; name a .png file, e.g. --out samples.png")
    folder = next(p for p in Path(path).absolute().parents if p.exists())
    if not os.access(folder, os.W_OK):
        raise InputError(f"--out {path!r}: folder {str(folder)!r} is not writable; choose a folder you can write to")


def eval_command(args: argparse.Namespace) -> dict[str, float]:
    """Sample ``args.n`` images from the EMA model of ``args.checkpoint`` with its ``[sample]`` settings and print
    a line per measurement: for a shapes model the analyser's (class accuracy, or caption alignment and attribute
    accuracy), and FID against as many images of the training data, with its protocol, sample count, sampler and
    NFE (the model's calls, counted). Returns the metrics.

    Without the FID Inception weights a shapes model with analyser metrics still reports them (and a note on
    stderr that FID was not computed); any other model stops with the missing-file error before sampling.
    """
    from minidit.data.analyser import attribute_accuracy, caption_alignment, class_accuracy

    experiment, model, device = load_ema_model(args, args.n)
    if experiment.model.get("type") == "mlp" or experiment.model.get("frames", False):
        raise InputError(f"{args.checkpoint}: eval measures image models (a DiT or MM-DiT on shapes, cifar10, "
                         "imagenet64 or an image folder); this one draws points or frames, so sample it instead")
    sample = experiment.sample
    prompts = default_prompts(experiment, sample.n)
    num_classes = getattr(getattr(model, "config", None), "num_classes", 0)
    analysed = experiment.data["name"] == "shapes" and bool(prompts or num_classes)
    try:
        network = fid.FIDInception.from_file(args.inception).to(device)
    except FileNotFoundError as error:
        if not analysed:
            raise InputError(f"FID not computed: {error} (--inception PATH)") from error
        network, missing = None, f"FID not computed: {error} (--inception PATH)"
    calls: list[int] = []
    counter = model.register_forward_pre_hook(lambda module, inputs: calls.append(1))  # one call per velocity
    images = sample_images(model, experiment.train, sample, device, prompts)  # (n, C, H, W)
    counter.remove()
    images = decode_latents(experiment, images).cpu()  # a latent model's through its VAE: (n, 3, H', W')
    sampler = f"sampler {sample.method} ODE, {sample.steps} steps, NFE {len(calls)}, cfg {sample.cfg:g}"
    metrics: dict[str, float] = {}
    if analysed and prompts:
        metrics = {"caption alignment": caption_alignment(images, prompts), **attribute_accuracy(images, prompts)}
    elif analysed:
        metrics = {"class accuracy": class_accuracy(images, torch.arange(sample.n) % num_classes)}  # generate's labels
    if metrics:
        print(f"analyser: {', '.join(f'{name} {value:.3f}' for name, value in metrics.items())}; n {sample.n}, "
              f"{sampler}")
    if network is None:
        print(f"note: {missing}", file=sys.stderr)
        return metrics
    mu, sigma = fid.statistics(fid.inception_features(images, network, device=device))
    reference = fid.reference_statistics(experiment.data, sample.n, network, device=device)
    metrics["fid"] = fid.frechet_distance(mu, sigma, *reference)
    real = fid.reference_section(experiment.data)["name"]
    decoded = " (latents decoded by the cache's VAE)" if experiment.data["name"] == "latents" else ""
    print(f"FID {metrics['fid']:.2f}: protocol {fid.PROTOCOL} (PIL bicubic to {fid.INPUT_SIZE}, FID Inception "
          f"{network.weights_sha256[:8]}), n {sample.n} samples{decoded} vs {sample.n} {real} images, {sampler}")
    return metrics


def demo_command(args: argparse.Namespace) -> None:
    """Run ``minidit.demo.main()``."""
    from minidit.demo import main as demo_main

    demo_main()


def build_parser() -> argparse.ArgumentParser:
    """The ``minidit`` argument parser with its ``train``, ``sample``, ``eval`` and ``demo`` subcommands."""
    parser = OneLineErrorParser(prog="minidit", description="Diffusion transformers and flow models from scratch.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an input error")
    commands = parser.add_subparsers(dest="command", required=True)
    debug = OneLineErrorParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an input error")

    train = commands.add_parser("train", parents=[debug], help="train a TOML experiment (see configs/)")
    train.add_argument("config", help="path of a TOML config, e.g. configs/toy_8gaussians.toml")
    train.add_argument("--steps", type=int, help="total training steps (overrides [train] steps)")
    train.add_argument("--out", help="output folder for metrics, samples and checkpoints (overrides [train] out_dir)")
    existing = train.add_mutually_exclusive_group()  # what to do with a run already in the output folder
    existing.add_argument("--resume", help="checkpoint to continue from")
    existing.add_argument("--overwrite", action="store_true", help="replace the run already in the output folder")
    train.set_defaults(run=train_command)

    sample = commands.add_parser("sample", parents=[debug], help="draw samples from a checkpoint into a PNG grid")
    sample.add_argument("checkpoint", help="checkpoint written by `minidit train`")
    sample.add_argument("--n", type=int, help="number of samples (default: the config's [sample] n)")
    sample.add_argument("--steps", type=int, help="ODE steps")
    sample.add_argument("--method", choices=ODE_METHODS, help="ODE method")
    sample.add_argument("--cfg", type=float, help="classifier-free guidance scale (1 = none)")
    sample.add_argument("--seed", type=int, help="seed of the starting noise")
    sample.add_argument("--device", help="device to sample on (default: the config's [train] device)")
    sample.add_argument("--out", default="samples.png", help="output PNG")
    text = sample.add_mutually_exclusive_group()  # text-to-image checkpoints only
    text.add_argument("--prompt", help="caption to sample (text-to-image models), e.g. \"a small red circle at the top left\"")
    text.add_argument("--prompts", help="file with one caption per line; --n defaults to the number of captions")
    sample.add_argument("--truncate", action="store_true", help="cut prompts longer than the model reads (default: refuse)")
    sample.set_defaults(run=sample_command)

    evaluate = commands.add_parser("eval", parents=[debug], help="FID of a checkpoint's samples (and, for shapes "
                                   "models, the analyser's metrics)")
    evaluate.add_argument("checkpoint", help="checkpoint written by `minidit train`")
    evaluate.add_argument("--n", type=int, default=1000, help="samples, and reference images (default 1000)")
    evaluate.add_argument("--steps", type=int, help="ODE steps (default: the config's [sample] steps)")
    evaluate.add_argument("--method", choices=ODE_METHODS, help="ODE method (default: the config's)")
    evaluate.add_argument("--cfg", type=float, help="classifier-free guidance scale (default: the config's)")
    evaluate.add_argument("--seed", type=int, help="seed of the starting noise")
    evaluate.add_argument("--device", help="device to sample on (default: the config's [train] device)")
    evaluate.add_argument("--inception", default=fid.DEFAULT_WEIGHTS,
                          help=f"FID Inception weights, a local file (default {fid.DEFAULT_WEIGHTS}; from {fid.WEIGHTS_URL})")
    evaluate.set_defaults(run=eval_command)

    export = commands.add_parser("export", parents=[debug], help="one file of a sharded checkpoint folder, to sample "
                                 "on one device")
    export.add_argument("checkpoint", help="checkpoint folder written by `torchrun ... -m minidit train`")
    export.add_argument("out", help="the .pt file to write (never overwritten)")
    export.set_defaults(run=export_command)

    demo = commands.add_parser("demo", parents=[debug], help="run the course demo")
    demo.set_defaults(run=demo_command)
    add_cache_parser(commands, parents=[debug])
    return parser


def describe_error(error: BaseException) -> str:
    """One line for an input error: its message, or ``<file>: <reason>`` for an operating-system error."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        message = f"{error.filename}: {error.strerror}; check the path and its permissions"
    else:
        message = str(error)
    return " ".join(message.split())


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m minidit`` and the ``minidit`` console script.

    An input error (``INPUT_ERRORS``) prints ``error: <file>, [section] key: what is wrong; how to fix it`` as one
    line on stderr and exits with code 2; ``--debug`` re-raises it to show the traceback. In a torchrun job the
    line starts with the process's rank, and any error ends the process, so torchrun stops the others and exits
    non-zero naming the failed rank.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except INPUT_ERRORS as error:
        if args.debug:
            raise
        parser.exit(2, f"error: {distributed.rank_prefix()}{describe_error(error)}\n")
    finally:
        distributed.destroy()


if __name__ == "__main__":
    main()
