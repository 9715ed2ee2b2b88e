"""The allowed values of every config key: types from the annotations, ranges and choices from one table.

A value of the right type can still be wrong in a way nothing reports later: a negative ``grad_clip`` flips the
gradients, ``time_eps = 0.6`` trains on a reversed time band, ``lr = 0`` trains nothing and ``num_heads = 0``
divides by zero. ``minidit.config`` checks every key of every section with these rules when it parses a config,
before any work, and turns a problem into one line naming the file, section, key, what is wrong and the fix.
The names of the choices are SiT's design space (arXiv 2401.08740, Sec. 2). Used by minidit/config.py, so by
``python -m minidit train`` and ``sample``.

Example:
    >>> coerce([1, 0.5], tuple[float, float])
    (1.0, 0.5)
    >>> value_problem("train", "lr", 0.0)
    'got 0.0; use a finite number > 0, e.g. 1e-4 (lr = 0 trains nothing)'
"""
from __future__ import annotations

import collections.abc
import difflib
import inspect
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minidit.data import multiview, video
from minidit.data.modalities import MODALITIES
from minidit.data.shapes import CAPTION_MODES, MAX_RESOLUTION, MIN_RESOLUTION, SPLITS
from minidit.dit import PRESETS, STYLES, TEXT_CONDITIONINGS, check_kv_compression
from minidit.refiner import REFINERS
from minidit.interpolants import DISCRETE_INTERPOLANTS, INTERPOLANTS
from minidit.norms import NORMS
from minidit.posembed import INTERPOLATION_MODES, POS_EMBEDS
from minidit.samplers import ODE_METHODS
from minidit.text.pretrain import KINDS as ENCODER_KINDS
from minidit.timesteps import TIME_SAMPLERS, get_time_sampler
from minidit.toy import TARGETS
from minidit.train import CHECKPOINT_FORMATS, PARALLELS, PRECISIONS
from minidit.weighting import PREDICTIONS, WEIGHTINGS, default_time_eps

NO_FIT = object()  # what ``coerce`` returns for a value that does not fit the type
# Tokens of the longest caption of any modality with its modality word, colon, [BOS] and [EOS]: "video: a large ..."
# (a video caption takes 11 with [BOS] and [EOS]; tests/test_cli_frames.py enumerates every caption).
LONGEST_FRAMES_CAPTION = 13
SCRATCH_ENCODER_HEADS = 4  # attention heads of a text encoder trained from scratch (text_encoder = "scratch")
DEVICES = "'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'"


def coerce(value: Any, hint: Any) -> Any:
    """``value`` as the annotated type ``hint`` (ints widen to floats, lists become tuples), or ``NO_FIT``.

    Understands ``int``, ``float``, ``bool``, ``str``, ``Path`` (given as a string), ``None``, unions,
    ``tuple[X, Y]``, ``tuple[X, ...]``, ``Sequence[X]``, ``list[X]`` and ``dict[K, V]``; other hints accept anything.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        fits = (coerce(value, arg) for arg in args)
        return next((fit for fit in fits if fit is not NO_FIT), NO_FIT)
    if hint is type(None):
        return value if value is None else NO_FIT
    if hint in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return NO_FIT
    if hint is int:
        return value if isinstance(value, int) else NO_FIT
    if hint is float:
        return float(value)
    if hint in (bool, str):
        return value if isinstance(value, hint) else NO_FIT
    if hint is Path:
        return value if isinstance(value, (str, Path)) else NO_FIT
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return NO_FIT
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return NO_FIT
            items = [coerce(item, arg) for item, arg in zip(value, args)]
        else:
            items = [coerce(item, args[0] if args else Any) for item in value]
        return NO_FIT if NO_FIT in items else (tuple(items) if origin is tuple else items)
    if origin is dict:
        if not isinstance(value, dict):
            return NO_FIT
        pairs = [(coerce(k, args[0]), coerce(v, args[1])) for k, v in value.items()]
        return NO_FIT if any(NO_FIT in pair for pair in pairs) else dict(pairs)
    return value


def describe(hint: Any) -> str:
    """The type ``hint`` in words for an error message (``None`` is left out: TOML cannot write it)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        words = [describe(arg) for arg in args if arg is not type(None)]
        return " or ".join(dict.fromkeys(words))  # str | Path: "a string" once
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} {describe(args[0]).split(' ', 1)[-1]}s"
    if origin in (tuple, list, collections.abc.Sequence):
        return f"a list of {describe(args[0]).split(' ', 1)[-1]}s" if args else "a list"
    if origin is dict:
        return f"a table of {describe(args[1]).split(' ', 1)[-1]}s, e.g. {{ m = 0.0, s = 1.0 }}"
    words = {int: "an integer", float: "a number", bool: "a boolean (true or false)", str: "a string", Path: "a string"}
    return words.get(hint, getattr(hint, "__name__", str(hint)))


@dataclass(frozen=True)
class Rule:
    """What one key allows: ``ok(value)`` is true for an allowed value, ``need`` says which ones are."""

    ok: Callable[[Any], bool]
    need: str
    choices: tuple[str, ...] = ()


def choice(valid: collections.abc.Iterable[str]) -> Rule:
    """One of the names ``valid``."""
    valid = tuple(valid)
    return Rule(lambda v: v in valid, "one of " + ", ".join(repr(v) for v in valid), valid)


def integer(low: int, high: float = math.inf, note: str = "") -> Rule:
    """An integer in ``[low, high]``."""
    bounds = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
    return Rule(lambda v: low <= v <= high, f"an integer {bounds}{note}")


def number(low: float, high: float = math.inf, *, open_low: bool = False, open_high: bool = False,
           note: str = "") -> Rule:
    """A finite number between ``low`` and ``high``, each end included unless ``open_*``."""
    def ok(v: float) -> bool:
        return math.isfinite(v) and (v > low if open_low else v >= low) and (v < high if open_high else v <= high)

    if high == math.inf:
        bounds = f"{'>' if open_low else '>='} {low:g}"
    else:
        bounds = f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    return Rule(ok, f"a finite number {bounds}{note}")


SEED = Rule(lambda v: 0 <= v < 2**63, "an integer in [0, 2^63)")
ROOT = Rule(lambda v: str(v).strip() != "", "the folder that holds the data, not empty")
PAIR_BETAS = Rule(lambda v: all(math.isfinite(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1), e.g. [0.9, 0.999]")

RULES: dict[str, dict[str, Rule]] = {
    "train": {
        "steps": integer(1), "batch_size": integer(1), "time_bins": integer(1),
        "lr": number(0, open_low=True, note=", e.g. 1e-4 (lr = 0 trains nothing)"),
        "weight_decay": number(0),
        "betas": PAIR_BETAS,
        "warmup_steps": integer(0),
        "grad_clip": number(0, note=" (the largest gradient norm; 0 turns clipping off, a negative one flips the gradients)"),
        "ema_decay": number(0, 1),
        "interpolant": choice({**INTERPOLANTS, **DISCRETE_INTERPOLANTS}), "prediction": choice(PREDICTIONS), "weighting": choice(WEIGHTINGS),
        "time_sampler": choice(TIME_SAMPLERS), "precision": choice(PRECISIONS),
        "time_eps": number(0, 0.5, open_high=True, note=" (t is drawn from [time_eps, 1 - time_eps])"),
        "seed": SEED,
        "log_every": integer(0, note=" (0 = only at the end)"),
        "sample_every": integer(0, note=" (0 = only at the end)"),
        "checkpoint_every": integer(0, note=" (0 = only at the end)"),
        "out_dir": Rule(lambda v: v.strip() != "", "a folder name, not empty (leave the key out for runs/<config name>)"),
        "parallel": choice(PARALLELS), "checkpoint_format": choice(CHECKPOINT_FORMATS),
        "grad_accumulation": integer(1, note=" (micro-batches per optimizer step and process)"),
    },
    "sample": {
        "n": integer(1), "steps": integer(1), "method": choice(ODE_METHODS), "seed": SEED,
        "cfg": number(0, note=" (the guidance scale; 1 = no guidance)"),
        "extent": number(0, open_low=True, note=" (half-width of the square 2-D samples are drawn into)"),
    },
    "model.mlp": {"dim": integer(1), "hidden": integer(1), "depth": integer(1), "time_dim": integer(1)},
    "model.dit": {
        "preset": choice(PRESETS), "style": choice(STYLES),
        "input_size": integer(1), "patch_size": integer(1), "in_channels": integer(1), "out_channels": integer(1),
        "hidden_size": integer(1), "depth": integer(1), "num_heads": integer(1),
        "mlp_ratio": number(0, open_low=True), "num_classes": integer(0, note=" (0 = unconditional)"),
        "class_dropout": number(0, 1), "norm": choice(NORMS), "qk_norm": choice(NORMS),
        "pos_embed": choice(POS_EMBEDS), "pos_embed_interpolation": choice(INTERPOLATION_MODES),
        "pos_embed_interpolation_scale": number(0, open_low=True, note=" (PixArt's sin-cos positions)"),
        "rope_theta": number(0, open_low=True), "ntk_scale": number(0, open_low=True, note=" (1 = no scaling)"),
        "frequency_embedding_size": integer(1),
        "text_conditioning": choice(TEXT_CONDITIONINGS), "text_dim": integer(1),
        "caption_dropout": number(0, 1), "text_encoder": choice((*ENCODER_KINDS, "hf", "scratch")),
        "text_encoder_depth": integer(1, note=" (blocks of the text encoder trained from scratch)"),
        "text_encoder_path": Rule(lambda v: isinstance(v, str) and v.strip() != "",
                                  "the local folder of a Hugging Face model (config, weights and tokenizer files)"),
        "text_max_length": integer(3, note=" (tokens the Hugging Face encoder reads)"),
        "text_refiner": choice(REFINERS), "refiner_depth": integer(1), "refiner_heads": integer(1),
    },
    "data.toy": {"target": choice(TARGETS), "seed": SEED},
    "data.shapes": {"resolution": integer(MIN_RESOLUTION, MAX_RESOLUTION), "min_objects": integer(0, 9),
                    "max_objects": integer(0, 9), "seed": SEED, "captions": choice(CAPTION_MODES),
                    "text_length": integer(3, note=" ([BOS], one word, [EOS])"), "split": choice(SPLITS),
                    "count_prob": number(0, 1)},
    "data.cifar10": {"root": ROOT, "split": choice(("train", "test")), "seed": SEED},
    "data.imagenet64": {"root": ROOT, "split": choice(("train", "val")), "seed": SEED, "resolution": integer(1),
                        "batches": Rule(lambda v: len(v) > 0 and all(1 <= b <= 10 for b in v),
                                        "a non-empty list of batch numbers in [1, 10]")},
    "data.folder": {"root": ROOT, "resolution": integer(1), "seed": SEED},
    "data.frames": {"resolution": integer(multiview.MIN_RESOLUTION, multiview.MAX_RESOLUTION),
                    "video_frames": integer(video.MIN_FRAMES), "views": integer(1), "audio_frames": integer(1),
                    "seed": SEED, "text_length": integer(LONGEST_FRAMES_CAPTION, note=" (the longest caption, "
                                                         "'video: ', [BOS] and [EOS] included)")},
}


def rule_problem(rule: Rule, value: Any) -> str | None:
    """What is wrong with ``value`` under ``rule`` and the fix (``got ...; use ...``), or ``None`` if it is allowed."""
    if value is None or rule.ok(value):
        return None
    close = difflib.get_close_matches(str(value), rule.choices, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"got {value!r}; {hint}use {rule.need}"


def value_problem(kind: str, key: str, value: Any) -> str | None:
    """``rule_problem`` for ``key`` of section ``kind`` (a key of ``RULES``); ``None`` for a key without a rule."""
    rule = RULES.get(kind, {}).get(key)
    return None if rule is None else rule_problem(rule, value)


def device_problem(name: str) -> str | None:
    """What is wrong with the device name ``name`` on this machine, or ``None`` if it can run."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        return f"{name!r} is not a device; use {DEVICES}"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"{name!r} but no CUDA GPU is visible on this machine; use 'auto' (the GPU when there is one) or 'cpu'"
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        return f"{name!r} but this machine has {torch.cuda.device_count()} CUDA device(s); use an index below that"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return f"{name!r} but Apple's MPS backend is not available here; use 'auto' or 'cpu'"
    if device.type not in ("cpu", "cuda", "mps"):
        return f"{name!r} is not supported; use {DEVICES}"
    return None


def train_problems(values: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(key, problem)`` for the ``[train]`` keys that are wrong together (each key's own range already holds)."""
    device = values.get("device", "auto")
    if device_problem(device):
        yield "device", device_problem(device)
    interpolant, prediction, weighting = (values.get(k, d) for k, d in
                                          (("interpolant", "linear"), ("prediction", "velocity"), ("weighting", "none")))
    if values.get("time_eps") == 0 and default_time_eps(interpolant, prediction, weighting) > 0:
        yield "time_eps", (
            f"0 trains and samples at t = 0 and t = 1, where the {prediction} prediction with {weighting!r} weighting "
            f"on the {interpolant} path divides by zero; use time_eps > 0, e.g. 1e-3, or leave the key out"
        )
    name, params = values.get("time_sampler", "uniform"), values.get("time_sampler_params", {})
    valid = ["shift", *inspect.signature(TIME_SAMPLERS[name]).parameters]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        yield "time_sampler_params", f"{name!r} takes no parameter {unknown[0]!r}; its parameters are: {', '.join(valid)}"
        return
    try:
        get_time_sampler(name, **params)
    except ValueError as error:
        yield "time_sampler_params", f"{error}; fix the value in time_sampler_params"


def dit_problems(values: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(key, problem)`` for a DiT's keys that are wrong together; ``values`` merges the preset, style and keys."""
    size, patch, hidden, heads = (values[k] for k in ("input_size", "patch_size", "hidden_size", "num_heads"))
    head_dim = hidden // heads
    if size % patch:
        yield "patch_size", f"{patch} does not divide input_size = {size}; use a patch size that divides the image size"
    if hidden % heads:
        yield "num_heads", f"{heads} does not divide hidden_size = {hidden}; use a head count that divides it"
    elif values["rope"] and (head_dim % 2 or head_dim < 4):
        yield "num_heads", f"RoPE needs hidden_size / num_heads even and >= 4, got {hidden} / {heads}; use fewer heads"
    elif values["rope"] and values["ntk_scale"] != 1.0 and head_dim < 8:
        yield "ntk_scale", f"NTK scaling needs hidden_size / num_heads >= 8, got {head_dim}; use ntk_scale = 1.0"
    if values["frames"] and (not values["rope"] or values["pos_embed"] != "none" or values["kv_compression"]):
        yield "frames", ('places tokens by 3-D RoPE positions (t, h, w): set rope = true and pos_embed = "none", and '
                         "leave kv_compression out")
    if values["pos_embed"] == "sincos" and hidden % 4:
        yield "hidden_size", f"{hidden} is not divisible by 4, which the 2-D sin-cos position table needs"
    if values.get("pos_embed_interpolation_scale") is not None and values["pos_embed"] != "sincos":
        yield "pos_embed_interpolation_scale", (f'sets the positions of the sin-cos table, and pos_embed = '
                                                f'"{values["pos_embed"]}"; set pos_embed = "sincos" or remove it')
    if values.get("text_refiner") == "collaborative":
        yield "text_refiner", ('"collaborative" refines the features of two text encoders, and a config names one; use '
                               '"token" (notebooks/08_llm_text_encoders.ipynb trains the collaborative refiner)')
    elif values.get("text_refiner", "none") != "none" and values["text_conditioning"] == "none":
        yield "text_refiner", 'refines caption features: set text_conditioning = "cross" (or "gated_cross") and text_encoder'
    if values.get("kv_compression") is not None:
        try:
            ratio = check_kv_compression(values["kv_compression"], values["depth"])["ratio"]
        except ValueError as error:
            yield "kv_compression", f"{error}; e.g. kv_compression = {{ ratio = 2, mode = \"conv\" }}"
            return
        grid = size // patch
        if grid % ratio:
            yield "kv_compression", (f"ratio {ratio} does not divide the token grid {grid}x{grid} (input_size / "
                                     f"patch_size); use a ratio that divides {grid}")


def shapes_problems(values: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(key, problem)`` for the shapes data: objects at most >= at least; captions need objects; heldout needs holdout."""
    low, high = values.get("min_objects", 1), values.get("max_objects", 1)
    if low > high:
        yield "max_objects", f"{high} is below min_objects = {low}; use max_objects >= min_objects"
    if values.get("captions", "none") != "none" and low < 1:
        yield "min_objects", "is 0, but an empty scene has no caption; use min_objects >= 1 with captions"
    if values.get("split", "train") == "heldout" and not values.get("holdout", False):
        yield "split", '"heldout" needs holdout = true (the held-out pairs are only kept out with it)'


def frames_problems(values: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(key, problem)`` for the frames data (every key given or defaulted): known, distinct modalities, and a
    video's frames must fit its resolution."""
    modalities = values["modalities"]
    unknown = [rule_problem(choice(MODALITIES), name) for name in modalities if name not in MODALITIES]
    if unknown:
        yield "modalities", unknown[0]
    elif not modalities or len(set(modalities)) < len(modalities):
        yield "modalities", (f"got {list(modalities)}; list each modality once, e.g. modalities = [\"video\"] or "
                             + ", ".join(f'"{name}"' for name in MODALITIES).join("[]"))
    elif "video" in modalities:
        try:
            video.centre_range(values["resolution"], values["video_frames"])
        except ValueError as error:
            yield "video_frames", f"is {values['video_frames']}, too many for the resolution: {error}"
