"""Generation from a trained experiment: integrate the model's velocity from noise to data, as points or images.

A flow model samples by solving the probability-flow ODE ``dx = v(x, t) dt`` from ``t = 1`` (noise) to ``t = 0``
(data) (SiT, arXiv 2401.08740, Sec. 2.4); a model trained to predict data, noise or score is first converted to
a velocity (``minidit.weighting.convert``), a class-conditional DiT is guided against its null label (DiT,
arXiv 2212.09748, Sec. 3.2) and a text-to-image model against its learned null caption. A frames model (Lumina-T2X,
arXiv 2405.05945, Sec. 2.2) samples clips ``(N, H, W, T, C)`` whose size is its prompt's modality's ("video: ...");
prompts of different modalities share one batch, padded and masked (``DiT.forward``'s ``frame_sizes``); a latent
model's samples (``[data] name = "latents"``) are decoded to images by the VAE its latent cache names. Used by
``python -m minidit sample``, the trainer's sample grids of ``python -m minidit train``,
notebooks/03_dit_from_scratch.ipynb and, through configs/frames_*.toml, notebooks/09_any_modality.ipynb.

Example:
    >>> experiment = load_config("configs/toy_8gaussians.toml")
    >>> images = sample_images(model, experiment.train, experiment.sample)   # (1, 1, 128, 128) density image
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from minidit.config import Experiment, SampleConfig, build_data, frame_shapes
from minidit.data.modalities import JointFrames
from minidit.samplers import sample_ode
from minidit.train import TrainConfig
from minidit.validation import InputError
from minidit.viz import grid_pixels
from minidit.weighting import convert, default_time_eps


def sample_shape(model: nn.Module, frame_size: Sequence[int] | None = None) -> tuple[int, ...]:
    """Shape of one sample of ``model``: ``(D,)`` for a ``ToyMLP``, ``(C, H, W)`` for a ``DiT``, ``(H, W, T, C)``
    for a frames DiT with ``frame_size = (H, W, T)`` (it reads any size)."""
    config = getattr(model, "config", None)
    if getattr(config, "frames", False):
        if frame_size is None:
            raise ValueError("a frames model reads frames of any size; pass frame_size = (H, W, T)")
        return (*frame_size, config.in_channels)
    if config is not None:
        return (config.in_channels, config.input_size, config.input_size)
    return (model.input_layer.in_features,)


def inside_frames(sizes: Tensor, shape: Sequence[int]) -> Tensor:
    """Which cells of a padded batch ``(N, *shape, 1)``, ``shape = (H, W, T)``, lie inside each sample's
    ``sizes[i] = (H_i, W_i, T_i)`` (``sizes`` is ``(N, 3)``): bool ``(N, H, W, T, 1)``."""
    within = [torch.arange(extent, device=sizes.device) < sizes[:, axis, None] for axis, extent in enumerate(shape)]
    return within[0][:, :, None, None, None] & within[1][:, None, :, None, None] & within[2][:, None, None, :, None]


@torch.no_grad()
def generate(model: nn.Module, train: TrainConfig, sample: SampleConfig, device: torch.device | str = "cpu",
             prompts: Sequence[str] | None = None, frame_sizes: Sequence[Sequence[int]] | None = None) -> Tensor:
    """Draw ``sample.n`` samples by integrating the model's velocity from noise to data.

    Non-velocity predictions are converted with ``minidit.weighting.convert``; the ODE runs over the training
    interval ``[time_eps, 1 - time_eps]`` (the conversions divide by ``alpha_t`` or ``sigma_t`` at the ends).
    A class-conditional DiT gets labels ``0, 1, 2, ...`` (cycling), a text-to-image model (``TextToImage``) the
    ``prompts`` (cycling), each with guidance scale ``sample.cfg`` against the null label or caption. A frames model
    draws sample ``i`` of size ``frame_sizes[i] = (H_i, W_i, T_i)`` (cycling with the prompts): the batch is padded
    to the largest size, and its noise and the model's output are zero outside each sample, so the samples stay zero
    there.

    Returns:
        samples, ``(n, *sample_shape(model))`` (frames: ``(n, H, W, T, C)`` of the largest size), on ``device``.
    Raises:
        ValueError: without prompts for a text-to-image model, or with prompts for any other model; without
            ``frame_sizes`` for a frames model, with them for any other, or for a class-conditional frames model.
    """
    from minidit.guidance import classifier_free_guidance, guide_with_null
    from minidit.text.conditioning import TextToImage

    model.eval()
    generator = torch.Generator().manual_seed(sample.seed)  # own RNG: sampling never disturbs training
    config = getattr(model, "config", None)
    frames_inputs = {}
    if getattr(config, "frames", False):
        if not frame_sizes:
            raise ValueError("a frames model samples clips of given sizes; pass frame_sizes=[(H, W, T), ...], one per "
                             "prompt (generate.prompt_frame_sizes reads them from the prompts' modality words)")
        sizes = torch.tensor([list(frame_sizes[i % len(frame_sizes)]) for i in range(sample.n)])  # (n, 3)
        largest = sizes.amax(dim=0).tolist()
        noise = torch.randn((sample.n, *sample_shape(model, largest)), generator=generator)  # (n, H, W, T, C)
        noise = (noise * inside_frames(sizes, largest)).to(device)
        frames_inputs["frame_sizes"] = sizes.to(device)
    elif frame_sizes is not None:
        raise ValueError("frame_sizes is for frames models (frames = true); sample this model without it")
    else:
        noise = torch.randn((sample.n, *sample_shape(model)), generator=generator).to(device)
    num_classes = getattr(config, "num_classes", 0)
    if isinstance(model, TextToImage):
        if not prompts:
            raise ValueError("a text-to-image model samples from prompts; pass prompts=[...] (CLI: --prompt)")
        text_ids, text_mask = model.encode_prompts([prompts[i % len(prompts)] for i in range(sample.n)])
        field_fn = guide_with_null(model, {"text_ids": text_ids, "text_mask": text_mask, **frames_inputs}, sample.cfg)
    elif prompts is not None:
        raise ValueError("this model reads no text; prompts work with text-to-image models (text_encoder in [model])")
    elif num_classes:
        if frames_inputs:
            raise ValueError("a class-conditional frames model is not sampled here; condition frames on text")
        labels = torch.arange(sample.n, device=device) % num_classes  # (n,)
        null = torch.full_like(labels, num_classes)
        field_fn = classifier_free_guidance(model, labels, null, sample.cfg)
    else:
        field_fn = functools.partial(model, **frames_inputs)
    eps = train.time_eps if train.time_eps is not None else default_time_eps(train.interpolant, train.prediction, train.weighting)

    def velocity_fn(x: Tensor, t: Tensor) -> Tensor:
        return convert(field_fn(x, t), x, t, train.interpolant, train.prediction, "velocity")

    return sample_ode(velocity_fn, noise, sample.steps, sample.method, t_start=1 - eps, t_end=eps).samples


def points_to_image(points: Tensor, extent: float, resolution: int = 128) -> Tensor:
    """Render 2-D points as a density image: a ``resolution``-square histogram of ``[-extent, extent]^2``.

    Args:
        points: ``(N, 2)``.
    Returns:
        ``(1, 1, resolution, resolution)`` in [-1, 1] (white = densest bin), with ``y`` pointing up.
    """
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points_to_image draws 2-D points of shape (N, 2), got {tuple(points.shape)}")
    hist = torch.histogramdd(points.float().cpu(), bins=[resolution, resolution], range=[-extent, extent] * 2).hist
    image = hist.T.flip(0)  # (H, W): rows are y from top to bottom, columns are x
    return (2 * image / image.max().clamp(min=1) - 1)[None, None]


def sample_images(model: nn.Module, train: TrainConfig, sample: SampleConfig, device: torch.device | str = "cpu",
                  prompts: Sequence[str] | None = None, frame_sizes: Sequence[Sequence[int]] | None = None) -> Tensor:
    """``generate`` as images in [-1, 1]: ``(n, C, H, W)`` for a DiT, one ``points_to_image`` density for 2-D points,
    clips ``(n, H, W, T, C)`` for a frames DiT (``clips_to_images`` lays their frames out)."""
    samples = generate(model, train, sample, device, prompts, frame_sizes)
    return samples if samples.ndim in (4, 5) else points_to_image(samples, sample.extent)


def clips_to_images(clips: Tensor) -> Tensor:
    """Clips ``(N, H, W, T, C)`` as images ``(N T, C, H, W)``, clip ``i``'s frame ``t`` at ``i T + t``: with
    ``save_grid(..., nrow=T)`` a row per clip and its frames as columns."""
    n, height, width, frames, channels = clips.shape
    return clips.permute(0, 3, 4, 1, 2).reshape(n * frames, channels, height, width)  # (N T, C, H, W)


def clips_sheet(clips: Tensor) -> Tensor:
    """Clips ``(N, H, W, T, C)`` as one image ``(1, 3, H', W')`` in [-1, 1]: ``grid_pixels`` of a row per clip and
    its ``T`` frames as columns, for the trainer, which saves what a ``sample_fn`` returns in a square grid."""
    pixels = grid_pixels(clips_to_images(clips), nrow=clips.shape[3])  # (H', W', 3) uint8
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, H', W')


def default_prompts(experiment: Experiment, n: int) -> list[str] | None:
    """Captions of ``n`` scenes the run did not train on (the data's stream with seed + 1) for a text-to-image
    experiment's sample grids, taking the modalities of frames data in turn ("video: ...", "audio: ...");
    ``None`` for a model without text."""
    if "text_encoder" not in experiment.model:
        return None
    data = build_data({**experiment.data, "seed": experiment.data.get("seed", 0) + 1}, experiment.source)
    if not isinstance(data, JointFrames):
        return data.captions(0, n)
    m = len(data.names)
    per_modality = [data.captions(step, -(-n // m)) for step in range(m)]  # batch ``step`` is modality ``step % m``
    return [per_modality[i % m][i // m] for i in range(n)]


def prompt_frame_sizes(experiment: Experiment, prompts: Sequence[str]) -> list[tuple[int, int, int]] | None:
    """``(H, W, T)`` of each prompt's modality, the word before its colon ("video: a small red circle moving right
    quickly"), as the experiment's frames data makes it; ``None`` for a model that does not read frames.

    Raises:
        InputError: for a prompt that does not start with one of the data's modalities and a colon.
    """
    if not experiment.model.get("frames", False):
        return None
    shapes = frame_shapes(build_data(experiment.data, experiment.source))
    sizes = []
    for number, prompt in enumerate(prompts, start=1):
        modality = prompt.split(":", 1)[0].strip().lower()
        if ":" not in prompt or modality not in shapes:
            names = ", ".join(f'"{name}:"' for name in shapes)
            raise InputError(f"prompt {number} {prompt!r} names no modality of this model; start it with one of "
                             f'{names}, e.g. "{next(iter(shapes))}: ..." as in training')
        sizes.append(shapes[modality][:3])
    return sizes


@torch.no_grad()
def decode_latents(experiment: Experiment, samples: Tensor, chunk: int = 16) -> Tensor:
    """Samples of a latent model (``[data] name = "latents"``) as images ``(N, 3, H, W)`` in [-1, 1]: decoded, ``chunk``
    at a time, by the VAE named in the latent cache (LDM, arXiv 2112.10752, Sec. 3), loaded once from its local
    folder; any other experiment's samples are returned unchanged.

    Raises:
        InputError: if the cache or the VAE folder it names is missing (``minidit.data.latents.cache_codec``).
    """
    if experiment.data.get("name") != "latents":
        return samples
    from minidit.data.latents import cache_codec

    codec = cache_codec(str(experiment.data["path"])).to(samples.device)
    return torch.cat([codec.decode(part) for part in samples.split(chunk)]).clamp(-1, 1)


def build_sample_fn(experiment: Experiment) -> Callable[[nn.Module, int], Tensor] | None:
    """``sample_fn(ema_model, step) -> images (N, C, H, W)`` for ``Trainer`` (a frames model: one ``clips_sheet``; a
    latent model: its samples decoded by ``decode_latents``); ``None`` for non-2-D toy data."""
    if experiment.model.get("type") == "mlp" and experiment.model.get("dim") != 2:
        return None
    prompts = default_prompts(experiment, experiment.sample.n)
    frame_sizes = prompt_frame_sizes(experiment, prompts)

    def sample_fn(model: nn.Module, step: int) -> Tensor:
        samples = sample_images(model, experiment.train, experiment.sample, next(model.parameters()).device, prompts,
                                frame_sizes)
        return decode_latents(experiment, samples) if frame_sizes is None else clips_sheet(samples)

    return sample_fn
