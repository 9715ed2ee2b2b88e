"""Experiments as TOML files: ``[model]``, ``[data]``, ``[train]`` and ``[sample]`` sections, checked key by key.

A config names every choice of a run (SiT's design space as a list of names, arXiv 2401.08740, Sec. 2; DiT's
recipe, arXiv 2212.09748, Sec. 4); this module only parses it and builds the model and the data source, and a
misspelt key fails at once with the closest valid key instead of being silently ignored. Generation from a
trained experiment lives in minidit/generate.py. Used by ``python -m minidit train configs/<name>.toml`` and
notebooks/03_dit_from_scratch.ipynb.

Example:
    >>> experiment = load_config("configs/toy_8gaussians.toml")
    >>> model, data = build_model(experiment.model), build_data(experiment.data)
    >>> trainer = Trainer(model, data, experiment.train, build_sample_fn(experiment))  # minidit.generate
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from minidit.samplers import ODE_METHODS
from minidit.train import TrainConfig
from minidit.validation import check_choice

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

SECTIONS = ("model", "data", "train", "sample")
MODEL_TYPES = ("mlp", "dit")
DATA_NAMES = ("toy", "shapes", "cifar10", "imagenet64", "folder")


class ConfigError(ValueError):
    """A config file with an unknown section or key, or a value of the wrong type."""


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


def check_keys(source: str, section: str, given: dict[str, Any], valid: list[str]) -> None:
    """Raise ``ConfigError`` for the first key of ``given`` not in ``valid``, suggesting the closest valid key."""
    for key in given:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{source}: unknown key {key!r} in [{section}]; {hint}valid keys are: {', '.join(valid)}")


def _check_type(source: str, section: str, key: str, value: Any, default: Any) -> Any:
    """Return ``value`` (ints widened to float where the default is a float) or raise ``ConfigError``."""
    if value is None or default is None or default is inspect.Parameter.empty:
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = (list, tuple) if isinstance(default, tuple) else type(default)
    if isinstance(value, expected) and not (isinstance(value, bool) and not isinstance(default, bool)):
        return value
    raise ConfigError(
        f"{source}: [{section}] {key} = {value!r} has type {type(value).__name__}, expected {type(default).__name__} "
        f"(like the default, {default!r})"
    )


def _defaults(target: Callable[..., Any]) -> dict[str, Any]:
    """Keyword defaults of a dataclass or callable (``inspect.Parameter.empty`` for required ones)."""
    if dataclasses.is_dataclass(target):
        return {
            f.name: f.default if f.default is not dataclasses.MISSING else
            (f.default_factory() if f.default_factory is not dataclasses.MISSING else inspect.Parameter.empty)
            for f in dataclasses.fields(target)
        }
    return {name: p.default for name, p in inspect.signature(target).parameters.items()}


def checked_values(target: Callable[..., Any], values: dict[str, Any], section: str, source: str = "<dict>",
                   extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check every key and type of ``values`` against the signature (or dataclass fields) of ``target``.

    ``extra_keys`` are also accepted (the caller removes them from ``values`` first). Returns the values with
    ints widened to floats where ``target`` expects a float.
    """
    defaults = _defaults(target)
    check_keys(source, section, values, [*extra_keys, *defaults])
    return {k: _check_type(source, section, k, v, defaults[k]) for k, v in values.items()}


def checked_call(target: Callable[..., Any], values: dict[str, Any], section: str, source: str = "<dict>",
                 extra_keys: tuple[str, ...] = ()) -> Any:
    """``target(**values)`` after ``checked_values``."""
    return target(**checked_values(target, values, section, source, extra_keys))


def parse_config(raw: dict[str, Any], source: str = "<dict>") -> Experiment:
    """Check the sections of a config dict and build the typed ``[train]`` and ``[sample]`` sections.

    Raises:
        ConfigError: for an unknown section, key or a mistyped value; names the file, section and valid keys.
    """
    check_keys(source, "top level", raw, list(SECTIONS))
    for section in ("model", "data"):
        if section not in raw:
            raise ConfigError(f"{source}: missing section [{section}]; every config needs [model] and [data]")
    return Experiment(
        model=dict(raw["model"]),
        data=dict(raw["data"]),
        train=checked_call(TrainConfig, raw.get("train", {}), "train", source),
        sample=checked_call(SampleConfig, raw.get("sample", {}), "sample", source),
        source=source,
    )


def load_config(path: str | Path) -> Experiment:
    """Read and check a TOML config file; see ``parse_config``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist; see configs/ for examples")
    with open(path, "rb") as f:
        try:
            raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML ({error})") from error
    return parse_config(raw, str(path))


def build_model(section: dict[str, Any], source: str = "<dict>") -> nn.Module:
    """Build the ``[model]`` section: ``type = "mlp"`` -> ``ToyMLP``; ``type = "dit"`` -> ``DiT``.

    A DiT takes ``DiTConfig`` fields, or ``preset = "DiT-S/2"`` (and optionally ``style``) plus overrides.
    """
    values = dict(section)
    model_type = check_choice("model type", values.pop("type", "missing"), MODEL_TYPES)
    if model_type == "mlp":
        from minidit.toy import ToyMLP

        return checked_call(ToyMLP, values, "model", source, extra_keys=("type",))
    from minidit.dit import DiT, DiTConfig

    preset = {k: values.pop(k) for k in ("preset", "style") if k in values}
    values = checked_values(DiTConfig, values, "model", source, extra_keys=("type", "preset", "style"))
    if "preset" in preset:
        return DiT.from_preset(preset.pop("preset"), **preset, **values)
    if preset:
        raise ConfigError(f"{source}: [model] style needs a preset, e.g. preset = \"DiT-S/2\"")
    return DiT(DiTConfig(**values))


def _data_builders() -> dict[str, Callable[..., Any]]:
    from minidit.data import datasets
    from minidit.data.shapes import ShapesDataset
    from minidit.toy import ToyData

    return {"toy": ToyData, "shapes": ShapesDataset, "cifar10": datasets.cifar10,
            "imagenet64": datasets.imagenet64, "folder": datasets.image_folder}


def build_data(section: dict[str, Any], source: str = "<dict>") -> Any:
    """Build the ``[data]`` section: ``name`` is one of ``DATA_NAMES``, the other keys go to its builder."""
    values = dict(section)
    name = check_choice("data name", values.pop("name", "missing"), DATA_NAMES)
    return checked_call(_data_builders()[name], values, "data", source, extra_keys=("name",))
