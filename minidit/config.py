"""Experiments as TOML files: ``[model]``, ``[data]``, ``[train]`` and ``[sample]`` sections, checked key by key.

A config names every choice of a run (SiT's design space as a list of names, arXiv 2401.08740, Sec. 2; DiT's
recipe, arXiv 2212.09748, Sec. 4); this module only parses it and builds the model and the data source, and a
misspelt key fails at once with the closest valid key instead of being silently ignored. Generation from a
trained experiment lives in minidit/generate.py. ``[data] name = "frames"`` casts videos, multi-view images and
spectrograms to frames ``[H, W, T, C]`` for one DiT with ``frames = true`` (Lumina-T2X, arXiv 2405.05945, Sec. 2.2),
read by a text encoder trained with it (``text_encoder = "scratch"``). Used by
``python -m minidit train configs/<name>.toml``, notebooks/03_dit_from_scratch.ipynb and, through
configs/frames_*.toml, notebooks/09_any_modality.ipynb.

Example:
    >>> experiment = load_config("configs/toy_8gaussians.toml")
    >>> model, data = build_model(experiment.model), build_data(experiment.data)
    >>> trainer = Trainer(model, data, experiment.train, build_sample_fn(experiment))  # minidit.generate
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import sys
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from minidit.config_rules import (NO_FIT, SCRATCH_ENCODER_HEADS, choice, coerce, describe, dit_problems,
                                  frames_problems, rule_problem, shapes_problems, train_problems, value_problem)
from minidit.data.modalities import JointFrames
from minidit.samplers import ODE_METHODS
from minidit.train import TrainConfig
from minidit.validation import InputError, check_choice

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

SECTIONS = ("model", "data", "train", "sample")
MODEL_TYPES = ("mlp", "dit", "mmdit")
# [model] keys of text-to-image models beyond the denoiser's config: path and length for text_encoder = "hf" only,
# depth for text_encoder = "scratch" only
TEXT_KEYS = ("text_encoder", "text_layer", "text_encoder_path", "text_max_length", "text_encoder_depth")
DATA_NAMES = ("toy", "shapes", "cifar10", "imagenet64", "folder", "frames", "latents")
FRAMES_TEXT_LENGTH = 24  # tokens per caption of frames data; the positions of a scratch text encoder by default


class ConfigError(InputError):
    """A config with an unknown section or key, or a value of the wrong type or out of range."""


def config_error(source: str, section: str, key: str, problem: str) -> ConfigError:
    """The one-line error ``<file>, [section] key: what is wrong; how to fix it``."""
    return ConfigError(f"{source}, [{section}] {key}: {problem}")


@dataclass
class SampleConfig:
    """The ``[sample]`` section: how to draw samples from a trained model (CLI ``sample`` and training grids).

    ``cfg`` is the classifier-free guidance scale (1 = no guidance); ``extent`` is the half-width of the
    square a 2-D toy model's samples are drawn into as a histogram image.
    """

    n: int = 16
    steps: int = 50
    method: str = "heun"
    cfg: float = 1.0
    seed: int = 0
    extent: float = 4.0

    def __post_init__(self) -> None:
        check_choice("ODE method", self.method, ODE_METHODS)
        if self.n < 1 or self.steps < 1:
            raise ValueError(f"sample.n and sample.steps must be >= 1, got n = {self.n}, steps = {self.steps}")


@dataclass
class Experiment:
    """A parsed config: the raw ``model`` and ``data`` sections (checked when built) and the typed others."""

    model: dict[str, Any]
    data: dict[str, Any]
    train: TrainConfig
    sample: SampleConfig = field(default_factory=SampleConfig)
    source: str = "<dict>"

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (stored in checkpoints; ``parse_config`` reads it back)."""
        return {"model": self.model, "data": self.data, "train": dataclasses.asdict(self.train),
                "sample": dataclasses.asdict(self.sample)}


def _closest(name: str, valid: list[str]) -> str:
    """``"did you mean 'x'? "`` for the valid name closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, valid, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def check_keys(source: str, section: str, given: dict[str, Any], valid: list[str]) -> None:
    """Raise ``ConfigError`` for the first key of ``given`` not in ``valid``, suggesting the closest valid key."""
    for key in given:
        if key not in valid:
            raise config_error(source, section, key, f"unknown key; {_closest(key, valid)}valid keys are: {', '.join(valid)}")


def _fields(target: Callable[..., Any]) -> dict[str, tuple[Any, Any]]:
    """``name -> (type hint, default)`` of a dataclass's fields or a callable's parameters (default
    ``inspect.Parameter.empty`` for a required one)."""
    if dataclasses.is_dataclass(target):
        hints = typing.get_type_hints(target)
        defaults = {
            f.name: f.default if f.default is not dataclasses.MISSING else
            (f.default_factory() if f.default_factory is not dataclasses.MISSING else inspect.Parameter.empty)
            for f in dataclasses.fields(target)
        }
    else:
        hints = typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
        defaults = {name: p.default for name, p in inspect.signature(target).parameters.items()}
    return {name: (hints.get(name, Any), default) for name, default in defaults.items()}


def checked_values(target: Callable[..., Any], values: dict[str, Any], section: str, source: str = "<dict>",
                   extra_keys: tuple[str, ...] = (), rules: str | None = None) -> dict[str, Any]:
    """Check every key, type and range of ``values`` against the fields (or parameters) of ``target``.

    Types come from ``target``'s annotations (``minidit.config_rules.coerce``: ints widen to floats, lists
    become tuples); ranges and choices from ``RULES[rules]`` (default ``RULES[section]``); a required field
    must be given. ``extra_keys`` are also accepted (the caller removes them from ``values`` first).

    Returns:
        the coerced values.
    Raises:
        ConfigError: ``<source>, [section] key: what is wrong; how to fix it`` for the first bad key.
    """
    fields = _fields(target)
    check_keys(source, section, values, [*extra_keys, *fields])
    checked = {}
    for key, value in values.items():
        hint, default = fields[key]
        fit = coerce(value, hint)
        if fit is NO_FIT:
            shown = default is not None and default is not inspect.Parameter.empty and not isinstance(default, dict)
            like = f", like the default {json.dumps(default)}" if shown else ""  # JSON scalars and lists are TOML
            raise config_error(source, section, key, f"got {value!r} ({type(value).__name__}); write {describe(hint)}{like}")
        problem = value_problem(rules or section, key, fit)
        if problem:
            raise config_error(source, section, key, problem)
        checked[key] = fit
    for key, (_, default) in fields.items():
        if default is inspect.Parameter.empty and key not in checked:
            raise config_error(source, section, key, f"missing; add {key} = ... to [{section}]")
    return checked


def _checked_choice(source: str, section: str, key: str, values: dict[str, Any], valid: tuple[str, ...]) -> str:
    """``values[key]`` if it is one of ``valid``; a ``ConfigError`` naming the key otherwise (also when missing)."""
    if key not in values:
        raise config_error(source, section, key, f"missing; use one of {', '.join(map(repr, valid))}")
    problem = rule_problem(choice(valid), values[key])
    if problem:
        raise config_error(source, section, key, problem)
    return values[key]


def _raise_first(source: str, section: str, problems: Iterator[tuple[str, str]]) -> None:
    """Raise a ``ConfigError`` for the first ``(key, problem)`` of ``problems``, if any."""
    for key, problem in problems:
        raise config_error(source, section, key, problem)


def parse_config(raw: dict[str, Any], source: str = "<dict>",
                 overrides: dict[str, dict[str, Any]] | None = None) -> Experiment:
    """Check every section of a config dict, before any work, and build the typed ``[train]`` and ``[sample]``.

    Args:
        raw: ``{"model": {...}, "data": {...}, "train": {...}, "sample": {...}}`` (the last two optional).
        source: the file name the errors name.
        overrides: values that replace the file's, by section (the command line's ``--steps``, ``--n``, ...).
    Raises:
        ConfigError: ``<file>, [section] key: what is wrong; how to fix it`` for an unknown section or key, a
            missing one, a mistyped or out-of-range value, values that disagree, or a device this machine lacks.
    """
    for name, section in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"{source}, [{name}]: unknown section; {_closest(name, list(SECTIONS))}"
                              f"valid sections are: {', '.join(SECTIONS)}")
        if not isinstance(section, dict):
            raise ConfigError(f"{source}, [{name}]: {section!r} is not a table; write the keys under a [{name}] line")
    for name in ("model", "data"):
        if name not in raw:
            raise ConfigError(f"{source}, [{name}]: missing section; every config needs [model] and [data]")
    raw = {name: {**raw.get(name, {}), **(overrides or {}).get(name, {})} for name in SECTIONS}
    check_model(raw["model"], source)
    check_data(raw["data"], source)
    train = checked_values(TrainConfig, raw["train"], "train", source)
    _raise_first(source, "train", train_problems(train))
    return Experiment(
        model=raw["model"],
        data=raw["data"],
        train=TrainConfig(**train),
        sample=SampleConfig(**checked_values(SampleConfig, raw["sample"], "sample", source)),
        source=source,
    )


def load_config(path: str | Path, overrides: dict[str, dict[str, Any]] | None = None) -> Experiment:
    """Read and check a TOML config file; see ``parse_config``."""
    path = Path(path)
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"config file {str(path)!r} {problem}; pass a .toml file, see configs/ for examples")
    with open(path, "rb") as f:
        try:
            raw = tomllib.load(f)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not valid TOML ({error}); fix the file at that place") from error
    return parse_config(raw, str(path), overrides)


def _check_text_keys(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Pop and check the ``TEXT_KEYS`` of a ``[model]`` section: ``text_encoder`` (a kind of
    ``minidit.text.pretrain.KINDS``, ``"hf"`` for a Hugging Face model in the local folder ``text_encoder_path``
    read up to ``text_max_length`` tokens, or ``"scratch"`` for an encoder of ``text_encoder_depth`` blocks trained
    with the model) and ``text_layer`` (an integer, -1 the last hidden state)."""
    text = {key: values.pop(key) for key in TEXT_KEYS if key in values}
    for key in ("text_encoder", "text_encoder_path", "text_max_length", "text_encoder_depth"):
        problem = value_problem("model.dit", key, text.get(key))
        if problem:
            raise config_error(source, "model", key, problem)
    hf_keys = [key for key in ("text_encoder_path", "text_max_length") if key in text]
    if text.get("text_encoder") == "hf" and len(hf_keys) < 2:
        missing = sorted({"text_encoder_path", "text_max_length"} - set(hf_keys))[0]
        raise config_error(source, "model", missing, 'missing; text_encoder = "hf" loads a Hugging Face model from a '
                           'local folder: add text_encoder_path = "/path/to/model" and text_max_length = 64')
    if text.get("text_encoder") != "hf" and hf_keys:
        raise config_error(source, "model", hf_keys[0], 'is only for text_encoder = "hf"; leave it out')
    if text.get("text_encoder") != "scratch" and "text_encoder_depth" in text:
        raise config_error(source, "model", "text_encoder_depth", 'is only for text_encoder = "scratch" (a pretrained '
                           "encoder has its own depth); leave it out")
    if "text_layer" in text and (isinstance(text["text_layer"], bool) or not isinstance(text["text_layer"], int)):
        raise config_error(source, "model", "text_layer", f"got {text['text_layer']!r}; write an integer such as -1 "
                           "(the encoder's last hidden state) or -2 (the second to last)")
    return text


def check_model(section: dict[str, Any], source: str = "<dict>") -> dict[str, Any]:
    """Check the ``[model]`` section: ``type = "mlp"`` takes ``ToyMLP``'s arguments, ``type = "dit"`` ``DiTConfig``
    fields, or ``preset = "DiT-S/2"`` (and optionally ``style``) plus overrides, ``type = "mmdit"`` ``MMDiTConfig``
    fields; text-to-image models name their frozen text encoder with ``text_encoder`` (and ``text_layer``), which
    also sets ``text_dim``, or ``text_encoder = "scratch"``: an encoder trained with the model, of width
    ``text_dim`` (required) and ``text_encoder_depth`` blocks. Returns the checked values."""
    from minidit.dit import PRESETS, STYLES, DiTConfig
    from minidit.mmdit import MMDiTConfig
    from minidit.toy import ToyMLP

    values = dict(section)
    model_type = _checked_choice(source, "model", "type", values, MODEL_TYPES)
    del values["type"]
    if model_type == "mlp":
        return {"type": "mlp", **checked_values(ToyMLP, values, "model", source, ("type",), "model.mlp")}
    text = _check_text_keys(values, source)
    scratch = text.get("text_encoder") == "scratch"
    if scratch and "text_dim" not in values:
        raise config_error(source, "model", "text_dim", 'missing; text_encoder = "scratch" trains a text encoder of '
                           f"width text_dim with the model: add text_dim = 64 (a multiple of {SCRATCH_ENCODER_HEADS})")
    if "text_dim" in values and text and not scratch:
        raise config_error(source, "model", "text_dim", "is set by text_encoder (the width of its features); "
                           'leave text_dim out (only text_encoder = "scratch" takes it)')
    if model_type == "mmdit":
        if "text_encoder" not in text:
            raise config_error(source, "model", "text_encoder", 'missing; an MM-DiT reads captions: add '
                               'text_encoder = "bidirectional" (or "causal")')
        values = checked_values(MMDiTConfig, values, "model", source, ("type", *TEXT_KEYS), "model.dit")
        _check_scratch_width(values, scratch, source)
        try:
            MMDiTConfig(**{"text_dim": 1, **values})
        except ValueError as error:
            raise config_error(source, "model", "depth", f"{error}; fix the [model] values") from error
        return {"type": "mmdit", **text, **values}
    names = {k: values.pop(k) for k in ("preset", "style") if k in values}
    for key, value in names.items():
        problem = value_problem("model.dit", key, value)
        if problem:
            raise config_error(source, "model", key, problem)
    if "style" in names and "preset" not in names:
        raise config_error(source, "model", "style", 'needs a preset; add e.g. preset = "DiT-S/2"')
    values = checked_values(DiTConfig, values, "model", source, ("type", "preset", "style"), "model.dit")
    _check_scratch_width(values, scratch, source)
    defaults = {key: default for key, (_, default) in _fields(DiTConfig).items()}
    merged = {**defaults, **PRESETS.get(names.get("preset"), {}), **STYLES[names.get("style", "DiT")], **values}
    _raise_first(source, "model", dit_problems(merged))
    conditioning = merged["text_conditioning"]
    if conditioning != "none" and "text_encoder" not in text:
        raise config_error(source, "model", "text_encoder", f'missing; text_conditioning = "{conditioning}" reads '
                           'captions through a text encoder: add text_encoder = "bidirectional" (or "causal", or '
                           '"scratch" with text_dim)')
    if conditioning == "none" and text:
        raise config_error(source, "model", "text_encoder", 'is set but text_conditioning = "none"; set '
                           'text_conditioning = "gated_cross" (or "cross"), or leave text_encoder out')
    return {"type": "dit", **names, **text, **values}


def _check_scratch_width(values: dict[str, Any], scratch: bool, source: str) -> None:
    """A text encoder trained from scratch splits ``text_dim`` into ``SCRATCH_ENCODER_HEADS`` heads."""
    if scratch and values["text_dim"] % SCRATCH_ENCODER_HEADS:
        raise config_error(source, "model", "text_dim", f"is {values['text_dim']}, but the scratch text encoder splits "
                           f"it into {SCRATCH_ENCODER_HEADS} heads; use a multiple of {SCRATCH_ENCODER_HEADS}, e.g. 64")


def scratch_text_encoder(dim: int, depth: int | None = None, max_length: int = FRAMES_TEXT_LENGTH) -> nn.Module:
    """An untrained ``TextEncoder`` over ``frames_tokenizer()`` (the words of every modality's captions), to train
    with the denoiser: no pretrained encoder knows the video, multi-view and audio words.

    Args:
        dim: feature width (the denoiser's ``text_dim``), a multiple of ``SCRATCH_ENCODER_HEADS``.
        depth: transformer blocks (default ``TextEncoderConfig``'s).
        max_length: token positions: the longest caption it reads, ``[BOS]`` and ``[EOS]`` included.
    """
    from minidit.data.modalities import frames_tokenizer
    from minidit.text.encoder import TextEncoder, TextEncoderConfig

    tokenizer = frames_tokenizer()
    config = TextEncoderConfig(tokenizer.vocab_size, dim=dim, depth=depth or TextEncoderConfig.depth,
                               num_heads=SCRATCH_ENCODER_HEADS, max_length=max_length)
    return TextEncoder(config, tokenizer)


def build_model(section: dict[str, Any], source: str = "<dict>", pretrained_text: bool = True,
                text_length: int | None = None) -> nn.Module:
    """Build the ``[model]`` section (see ``check_model``): ``"mlp"`` -> ``ToyMLP``, ``"dit"`` -> ``DiT``,
    ``"mmdit"`` -> ``MMDiT``; with a ``text_encoder``, a ``TextToImage`` holding the encoder (frozen, or trained
    with the denoiser for ``"scratch"``) and the denoiser.

    Args:
        pretrained_text: load (or pretrain and cache) the text encoder; ``False`` builds it untrained, for a
            checkpoint that holds its weights anyway.
        text_length: positions of a ``"scratch"`` text encoder: the data's ``[data] text_length`` (default
            ``FRAMES_TEXT_LENGTH``).
    """
    from minidit.dit import DiT, DiTConfig
    from minidit.mmdit import MMDiT, MMDiTConfig
    from minidit.text.conditioning import TextToImage, build_text_encoder
    from minidit.toy import ToyMLP

    values = check_model(section, source)
    model_type = values.pop("type")
    if model_type == "mlp":
        return ToyMLP(**values)
    kind, layer = values.pop("text_encoder", None), values.pop("text_layer", -1)
    path, max_length = values.pop("text_encoder_path", None), values.pop("text_max_length", None)
    depth = values.pop("text_encoder_depth", None)
    if kind == "scratch":
        encoder = scratch_text_encoder(values["text_dim"], depth, text_length or FRAMES_TEXT_LENGTH)
    else:
        encoder = build_text_encoder(kind, pretrained_text, path, max_length) if kind else None
    if encoder is not None:
        values["text_dim"] = encoder.dim
    if model_type == "mmdit":
        denoiser = MMDiT(MMDiTConfig(**values))
    else:
        preset, style = values.pop("preset", None), values.pop("style", "DiT")
        denoiser = DiT.from_preset(preset, style, **values) if preset else DiT(DiTConfig(**values))
    return TextToImage(encoder, denoiser, layer, train_encoder=kind == "scratch") if encoder is not None else denoiser


def frames_data(modalities: Sequence[str], resolution: int = 24, video_frames: int = 4, views: int = 4,
                audio_frames: int = 4, seed: int = 0, text_length: int = FRAMES_TEXT_LENGTH) -> JointFrames:
    """The ``[data] name = "frames"`` source: ``JointFrames`` over the generators of ``modalities``, captions with
    their modality word tokenised by ``frames_tokenizer()``; every modality is frames ``[H, W, T, C]``
    (Lumina-T2X, arXiv 2405.05945, Sec. 2.2), batch ``step`` is modality ``step % len(modalities)``.

    Args:
        modalities: names of ``minidit.data.modalities.MODALITIES``, e.g. ``["video"]``.
        resolution: side of image, video and multi-view frames (audio frames are 32 x 16: frequency bins x columns).
        video_frames, views, audio_frames: ``T`` of a video, of a multi-view sample and of a sound.
        seed: the seed of every modality's stream.
        text_length: tokens per caption, the modality word, ``[BOS]`` and ``[EOS]`` included.
    Returns:
        a data source of batches ``(N, H, W, T, 3)`` with ``{"text_ids": (N, text_length), "text_mask": ...}``.
    """
    from minidit.data import audio, multiview, video
    from minidit.data.modalities import ImageFrames, frames_tokenizer

    sources = {"image": lambda: ImageFrames(resolution, seed=seed),
               "video": lambda: video.VideoDataset(resolution, video_frames, seed=seed),
               "multiview": lambda: multiview.MultiViewDataset(resolution, views, seed=seed),
               "audio": lambda: audio.AudioDataset(audio_frames, seed=seed)}
    return JointFrames({name: sources[name]() for name in modalities}, frames_tokenizer(), text_length)


def _data_builders() -> dict[str, Callable[..., Any]]:
    from minidit.data import datasets
    from minidit.data.latents import LatentDataset
    from minidit.data.shapes import ShapesDataset
    from minidit.toy import ToyData

    return {"toy": ToyData, "shapes": ShapesDataset, "cifar10": datasets.cifar10,
            "imagenet64": datasets.imagenet64, "folder": datasets.image_folder, "frames": frames_data,
            "latents": LatentDataset}


def check_data(section: dict[str, Any], source: str = "<dict>") -> dict[str, Any]:
    """Check the ``[data]`` section: ``name`` is one of ``DATA_NAMES``, the other keys its builder's arguments."""
    values = dict(section)
    name = _checked_choice(source, "data", "name", values, DATA_NAMES)
    del values["name"]
    checked = checked_values(_data_builders()[name], values, "data", source, ("name",), f"data.{name}")
    if name == "shapes":
        _raise_first(source, "data", shapes_problems(checked))
    if name == "frames":
        defaults = {key: default for key, (_, default) in _fields(frames_data).items()}
        _raise_first(source, "data", frames_problems({**defaults, **checked}))
    return {"name": name, **checked}


def build_data(section: dict[str, Any], source: str = "<dict>") -> Any:
    """Build the ``[data]`` section (see ``check_data``)."""
    values = check_data(section, source)
    return _data_builders()[values.pop("name")](**values)


def use_model_tokenizer(model: nn.Module, data: Any) -> None:
    """Captioned data tokenises with the tokenizer of a ``TextToImage`` model's Hugging Face encoder, or of its
    encoder trained from scratch (``frames_tokenizer()``, which knows every modality's words); minidit's pretrained
    encoders share the data's tokenizer, which ``check_data_fits_model`` checks."""
    from minidit.text.hf import HFTextEncoder

    encoder = getattr(model, "encoder", None)
    own = isinstance(encoder, HFTextEncoder) or getattr(model, "train_encoder", False)
    if own and getattr(data, "tokenizer", None) is not None:
        data.tokenizer = encoder.tokenizer


def check_data_fits_model(model: nn.Module, data: Any, experiment: Experiment) -> None:
    """Raise ``InputError`` naming the ``[model]`` key when ``model`` cannot learn ``data`` as built.

    One sample of the data (batch 0, size 1) must have the shape the model works on (``dim`` of a ``ToyMLP``;
    ``in_channels``, ``out_channels`` and ``input_size`` of a ``DiT``; frames ``(H, W, T, C)`` for a DiT with
    ``frames = true`` and only for it, see ``_check_frames_fit``), and a DiT's ``num_classes`` must equal the
    data's class count (0 for data without labels): with one class too few, the last class would train as the
    null label of classifier-free guidance.
    """
    source, name = experiment.source, experiment.data.get("name")
    x, conditioning = data.get_batch(0, 1)
    shape = tuple(x.shape[1:])
    config = getattr(model, "config", None)
    if config is None:  # a ToyMLP on points (D,)
        dim = model.input_layer.in_features
        if shape != (dim,):
            fix = f"set dim = {shape[0]}" if len(shape) == 1 else 'use type = "dit" for images'
            raise config_error(source, "model", "dim", f"is {dim}, but the {name} data has samples of shape {shape}; {fix}")
        return
    if len(shape) == 4 or getattr(config, "frames", False):
        _check_frames_fit(config, data, shape, experiment)
    else:
        _check_images_fit(config, shape, experiment)
    _check_text_fits(model, data, conditioning, experiment)
    classes = getattr(data, "num_classes", 0) if "y" in conditioning else 0
    if getattr(config, "num_classes", 0) != classes:
        found = f"has {classes} classes" if classes else "has no class labels"
        extra = " (or [data] max_objects = 1 for labelled shapes)" if name == "shapes" and not classes else ""
        raise config_error(source, "model", "num_classes", f"is {config.num_classes}, but the {name} data {found}; "
                           f"set num_classes = {classes}{extra}")


def _check_channels(config: Any, channels: int, what: str, source: str) -> None:
    """``in_channels`` and ``out_channels`` must equal the data's ``channels``."""
    for key in ("in_channels", "out_channels"):
        if getattr(config, key) != channels:
            raise config_error(source, "model", key, f"is {getattr(config, key)}, but {what} {channels} channels; "
                               f"set {key} = {channels}")


def _check_images_fit(config: Any, shape: tuple[int, ...], experiment: Experiment) -> None:
    """An image model needs images ``(C, H, W)`` of its channels and its ``input_size``."""
    source, name = experiment.source, experiment.data.get("name")
    if len(shape) != 3:
        raise config_error(source, "model", "type", f'"dit" needs images, but the {name} data has samples of shape '
                           f'{shape}; use type = "mlp"')
    channels, height, width = shape
    _check_channels(config, channels, f"the {name} data has", source)
    if (height, width) != (config.input_size, config.input_size):
        resizable = "resolution" in inspect.signature(_data_builders()[name]).parameters
        alternative = f" or [data] resolution = {config.input_size}" if resizable else ""
        raise config_error(source, "model", "input_size", f"is {config.input_size}, but the {name} data has "
                           f"{height}x{width} images; set input_size = {height}{alternative}")


def frame_shapes(data: Any) -> dict[str, tuple[int, int, int, int]]:
    """``(H, W, T, C)`` of one sample of each modality of frames ``data`` (batches ``0 .. M - 1`` of a ``JointFrames``
    hold one modality each; any other source is one ``"frames"`` modality)."""
    if not isinstance(data, JointFrames):
        return {"frames": tuple(data.get_batch(0, 1)[0].shape[1:])}
    return {data.modality(step): tuple(data.get_batch(step, 1)[0].shape[1:]) for step in range(len(data.names))}


def _check_frames_fit(config: Any, data: Any, shape: tuple[int, ...], experiment: Experiment) -> None:
    """Frames ``(H, W, T, C)`` need a DiT with ``frames = true`` (and it needs them), with the data's channels, and
    a ``patch_size`` that divides every modality's ``H`` and ``W`` (any other size and duration is read as it is)."""
    source, name = experiment.source, experiment.data.get("name")
    if len(shape) != 4:
        raise config_error(source, "model", "frames", f"is true, but the {name} data has samples of shape {shape}, "
                           'not frames (H, W, T, C); set frames = false, or use [data] name = "frames"')
    if not getattr(config, "frames", False):
        key, fix = "frames", 'set frames = true (with rope = true and pos_embed = "none", as in Flag-DiT)'
        if not hasattr(config, "frames"):
            key, fix = "type", 'use type = "dit" with frames = true'
        raise config_error(source, "model", key, f"reads images, but the {name} data has frames (H, W, T, C) = "
                           f"{shape}; {fix}")
    for modality, (height, width, _, channels) in frame_shapes(data).items():
        _check_channels(config, channels, f"the {modality} frames have", source)
        if height % config.patch_size or width % config.patch_size:
            raise config_error(source, "model", "patch_size", f"is {config.patch_size}, but the {modality} frames are "
                               f"{height}x{width}; use a patch size that divides both")


def _check_text_fits(model: nn.Module, data: Any, conditioning: dict[str, Any], experiment: Experiment) -> None:
    """A text-to-image model needs captions tokenised with its encoder's vocabulary, no longer than it reads."""
    from minidit.text.conditioning import TextToImage

    source, name = experiment.source, experiment.data.get("name")
    if not isinstance(model, TextToImage):
        if "text_ids" in conditioning:
            fix = ('text_encoder = "scratch" with text_dim (no pretrained encoder knows its words)' if name == "frames"
                   else 'text_encoder, or [data] captions = "none"')
            raise config_error(source, "model", "text_conditioning", f"the {name} data has captions but the model "
                               f'reads none; set text_conditioning = "gated_cross" (or "cross") and {fix}')
        return
    if "text_ids" not in conditioning:
        fix = ' set [data] captions = "varied" (or "template")' if name == "shapes" else " use captioned data"
        raise config_error(source, "data", "captions", f"the model reads captions but the {name} data has none;{fix}")
    length = conditioning["text_ids"].shape[1]
    if length > model.text_length:
        raise config_error(source, "data", "text_length", f"is {length}, but the text encoder reads at most "
                           f"{model.text_length} tokens; set text_length = {model.text_length}")
    words = getattr(getattr(data, "tokenizer", None), "words", None)
    if words is not None and tuple(words) != tuple(model.encoder.tokenizer.words):
        raise config_error(source, "model", "text_encoder", "its vocabulary differs from the tokenizer of the data; "
                           "tokenise the captions with the encoder's tokenizer")
