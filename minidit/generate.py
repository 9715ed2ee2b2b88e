"""Generation from a trained experiment: integrate the model's velocity from noise to data, as points or images.

A flow model samples by solving the probability-flow ODE ``dx = v(x, t) dt`` from ``t = 1`` (noise) to ``t = 0``
(data) (SiT, arXiv 2401.08740, Sec. 2.4); a model trained to predict data, noise or score is first converted to
a velocity (``minidit.weighting.convert``), a class-conditional DiT is guided against its null label (DiT,
arXiv 2212.09748, Sec. 3.2) and a text-to-image model against its learned null caption. Used by
``python -m minidit sample``, the trainer's sample grids of ``python -m minidit train`` and
notebooks/03_dit_from_scratch.ipynb.

Example:
    >>> experiment = load_config("configs/toy_8gaussians.toml")
    >>> images = sample_images(model, experiment.train, experiment.sample)   # (1, 1, 128, 128) density image
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from minidit.config import Experiment, SampleConfig, build_data
from minidit.samplers import sample_ode
from minidit.train import TrainConfig
from minidit.weighting import convert, default_time_eps


def sample_shape(model: nn.Module) -> tuple[int, ...]:
    """Shape of one sample of ``model``: ``(D,)`` for a ``ToyMLP``, ``(C, H, W)`` for a ``DiT``."""
    config = getattr(model, "config", None)
    if config is not None:
        return (config.in_channels, config.input_size, config.input_size)
    return (model.input_layer.in_features,)


@torch.no_grad()
def generate(model: nn.Module, train: TrainConfig, sample: SampleConfig, device: torch.device | str = "cpu",
             prompts: Sequence[str] | None = None) -> Tensor:
    """Draw ``sample.n`` samples by integrating the model's velocity from noise to data.

    Non-velocity predictions are converted with ``minidit.weighting.convert``; the ODE runs over the training
    interval ``[time_eps, 1 - time_eps]`` (the conversions divide by ``alpha_t`` or ``sigma_t`` at the ends).
    A class-conditional DiT gets labels ``0, 1, 2, ...`` (cycling), a text-to-image model (``TextToImage``) the
    ``prompts`` (cycling), each with guidance scale ``sample.cfg`` against the null label or caption.

    Returns:
        samples, ``(n, *sample_shape(model))``, on ``device``.
    Raises:
        ValueError: without prompts for a text-to-image model, or with prompts for any other model.
    """
    from minidit.guidance import classifier_free_guidance, guide_with_null
    from minidit.text.conditioning import TextToImage

    model.eval()
    generator = torch.Generator().manual_seed(sample.seed)  # own RNG: sampling never disturbs training
    noise = torch.randn((sample.n, *sample_shape(model)), generator=generator).to(device)
    num_classes = getattr(getattr(model, "config", None), "num_classes", 0)
    if isinstance(model, TextToImage):
        if not prompts:
            raise ValueError("a text-to-image model samples from prompts; pass prompts=[...] (CLI: --prompt)")
        text_ids, text_mask = model.encode_prompts([prompts[i % len(prompts)] for i in range(sample.n)])
        field_fn = guide_with_null(model, {"text_ids": text_ids, "text_mask": text_mask}, sample.cfg)
    elif prompts is not None:
        raise ValueError("this model reads no text; prompts work with text-to-image models (text_encoder in [model])")
    elif num_classes:
        labels = torch.arange(sample.n, device=device) % num_classes  # (n,)
        null = torch.full_like(labels, num_classes)
        field_fn = classifier_free_guidance(model, labels, null, sample.cfg)
    else:
        field_fn = model
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
                  prompts: Sequence[str] | None = None) -> Tensor:
    """``generate`` as images in [-1, 1]: ``(n, C, H, W)`` for a DiT, one ``points_to_image`` density for 2-D points."""
    samples = generate(model, train, sample, device, prompts)
    return samples if samples.ndim == 4 else points_to_image(samples, sample.extent)


def default_prompts(experiment: Experiment, n: int) -> list[str] | None:
    """Captions of ``n`` scenes the run did not train on (the data's stream with seed + 1) for a text-to-image
    experiment's sample grids; ``None`` for a model without text."""
    if "text_encoder" not in experiment.model:
        return None
    data = build_data({**experiment.data, "seed": experiment.data.get("seed", 0) + 1}, experiment.source)
    return data.captions(0, n)


def build_sample_fn(experiment: Experiment) -> Callable[[nn.Module, int], Tensor] | None:
    """``sample_fn(ema_model, step) -> images (N, C, H, W)`` for ``Trainer``; ``None`` for non-2-D toy data."""
    if experiment.model.get("type") == "mlp" and experiment.model.get("dim") != 2:
        return None
    prompts = default_prompts(experiment, experiment.sample.n)

    def sample_fn(model: nn.Module, step: int) -> Tensor:
        return sample_images(model, experiment.train, experiment.sample, next(model.parameters()).device, prompts)

    return sample_fn
