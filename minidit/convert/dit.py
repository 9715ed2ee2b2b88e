"""Official DiT and SiT checkpoints and diffusers' ``DiTTransformer2DModel``, loaded into minidit's own ``DiT``.

The published DiT is minidit's ``DiT`` block for block: a conv patch embedding is a linear map of the patch's pixels,
timm's fused ``qkv`` is minidit's, and only the names differ (DiT, Peebles & Xie, arXiv 2212.09748, Sec. 3.2); SiT
(arXiv 2401.08740) trains the same network as a velocity model on the linear path with time running the other way
(t = 1 data), so minidit sees it through ``t -> 1 - t`` and a sign flip of the velocity (SiT eq. 2 against minidit's
``x_t = (1 - t) x0 + t eps``). Every weight of each side is used exactly once: a weight left over is an error.
Used by notebooks/10_pretrained.ipynb.

Facts about the production code, checked by tests/test_convert_dit.py:

- Official DiT (facebookresearch/DiT ``models.py``) feeds the DDPM step ``i`` in 0..999 to its time embedder, which
  is minidit's at ``t = i / 1000``; it predicts the noise of DDPM's linear-beta schedule (``get_interpolant("ddpm")``)
  and, with learned sigma, a second half of variance channels that minidit drops (``keep_variance=True`` keeps them).
- SiT feeds its own ``s`` in [0, 1] unscaled; minidit's embedder multiplies by 1000, so the wrapper passes
  ``(1 - t) / 1000``. SiT's forward already drops the learned-sigma half.
- diffusers' port differs from the official DiT in two constants: its time features use frequencies
  ``10000^(-i / 127)`` instead of ``10000^(-i / 128)`` (``Timesteps(..., downscale_freq_shift=1)``), features that
  differ by up to 1.9 from the official ones, so a converted diffusers model gets ``DiffusersTimestepEmbedder``;
  and its pre-MLP LayerNorm uses ``config.norm_eps`` (default 1e-5) where DiT uses 1e-6. Each block also holds its
  own copy of the time and label embedders, which must be equal.

Example:
    >>> pretrained = load_official_dit("pretrained_models/DiT-XL-2-256x256.pt")
    >>> velocity_fn = pretrained.velocity_fn(torch.tensor([207, 360]), cfg_scale=4.0)
    >>> latents = sample_ode(velocity_fn, torch.randn(2, 4, 32, 32), steps=50, method="heun").samples
"""
from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from minidit.convert import require_diffusers
from minidit.dit import PRESETS, DiT, DiTConfig, TimestepEmbedder
from minidit.guidance import classifier_free_guidance
from minidit.interpolants import Interpolant, get_interpolant
from minidit.posembed import sincos_2d
from minidit.validation import check_choice
from minidit.weighting import PREDICTIONS, convert

DIT_URL = "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt"
SIT_URL = ("https://www.dl.dropboxusercontent.com/scl/fi/as9oeomcbub47de5g4be0/SiT-XL-2-256.pt"
           "?rlkey=uxzxmpicu46coq3msb17b9ofa&dl=0")
WEIGHTS_FOLDER = "pretrained_models"
# Official block names -> minidit's (each with .weight and .bias).
OFFICIAL_BLOCK_NAMES = {"attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2",
                        "adaLN_modulation.1": "modulation.1"}
# diffusers module names -> minidit's (each with .weight and .bias); ``{i}`` is the block index.
DIFFUSERS_NAMES = {"transformer_blocks.{i}.norm1.linear": "blocks.{i}.modulation.1",
                   "transformer_blocks.{i}.attn1.to_out.0": "blocks.{i}.attn.proj",
                   "transformer_blocks.{i}.ff.net.0.proj": "blocks.{i}.mlp.0",
                   "transformer_blocks.{i}.ff.net.2": "blocks.{i}.mlp.2",
                   "proj_out_1": "final_layer.modulation.1", "proj_out_2": "final_layer.linear"}
# The time and label embedders, one copy per diffusers block (``transformer_blocks.{i}.norm1.emb.``), one in minidit.
EMBEDDER_NAMES = {f"timestep_embedder.linear_{k + 1}.{kind}": f"t_embedder.mlp.{2 * k}.{kind}" for k in (0, 1)
                  for kind in ("weight", "bias")}
EMBEDDER_NAMES["class_embedder.embedding_table.weight"] = "y_embedder.embedding_table.weight"
# What a minidit DiT must be for diffusers' DiTTransformer2DModel to express it.
DIFFUSERS_EXPRESSIBLE = dict(norm="layernorm", qk_norm=None, pos_embed="sincos", rope=False, mlp_ratio=4.0,
                             frequency_embedding_size=256, text_conditioning="none", kv_compression=None,
                             text_refiner="none", frames=False)


class DiffusersTimestepEmbedder(TimestepEmbedder):
    """minidit's time embedder with diffusers' DiT features ``cat[cos, sin](1000 t * 10000^(-i / (half - 1)))``.

    Mathematically ``timestep_embedding`` with ``max_period = 10000^(half / (half - 1))``; written in diffusers' own
    float32 order of operations, because the rounding of the other order moves the outputs by about 1e-4.
    Same parameters as ``TimestepEmbedder``, so state dicts are interchangeable.
    """

    def forward(self, t: Tensor) -> Tensor:
        """``t`` of shape ``(N,)`` -> ``(N, D)``."""
        half = self.frequency_embedding_size // 2
        exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1)
        angles = 1000 * t.float()[:, None] * torch.exp(exponent)[None]  # (N, half)
        features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (N, 2 * half)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


def use_diffusers_time_embedding(model: DiT) -> DiT:
    """Give ``model`` diffusers' time features in place (its weights unchanged) and return it.

    ``dit_to_diffusers`` requires this, because the exported model computes those features whatever minidit did:
    call it knowingly, the outputs of a model trained with the official features change.
    """
    embedder = DiffusersTimestepEmbedder(model.config.hidden_size, model.config.frequency_embedding_size)
    embedder.load_state_dict(model.t_embedder.state_dict())
    model.t_embedder = embedder.to(next(model.t_embedder.parameters()))
    return model


class ReversedTimeVelocity(nn.Module):
    """A SiT velocity model seen in minidit's convention: ``v(x, t, y) = -sit(x, 1 - t, y)``.

    SiT's time ``s = 1 - t`` runs from noise (0) to data (1), so its velocity ``dx/ds`` is minus minidit's ``dx/dt``;
    the inner ``DiT`` receives ``(1 - t) / 1000`` because its embedder multiplies by 1000 while SiT's does not.
    """

    def __init__(self, dit: DiT):
        super().__init__()
        self.dit = dit

    @property
    def config(self) -> DiTConfig:
        """The inner DiT's config (``num_classes`` is the null label for guidance)."""
        return self.dit.config

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, force_drop: Tensor | None = None) -> Tensor:
        """Velocity ``(N, C, H, W)`` at ``x`` (N, C, H, W), minidit times ``t`` (N,) in [0, 1] (t = 1 noise)."""
        return -self.dit(x, (1 - t) / 1000, y, force_drop)


@dataclass
class Pretrained:
    """A converted model in minidit's time convention and what it predicts.

    Attributes:
        model: ``model(x (N, C, H, W), t (N,), y (N,)) -> (N, C, H, W)``; label ``model.config.num_classes`` is null.
        prediction: ``"noise"`` (DiT) or ``"velocity"`` (SiT), a ``minidit.weighting`` prediction.
        interpolant: the path it was trained on: ``"ddpm"`` (DiT) or ``"linear"`` (SiT).
    """

    model: nn.Module
    prediction: str
    interpolant: Interpolant

    def velocity_fn(self, y: Tensor, cfg_scale: float = 1.0) -> Callable[[Tensor, Tensor], Tensor]:
        """The guided velocity field of labels ``y`` (N,) for ``minidit.samplers`` (CFG on every channel).

        ``cfg_scale = 1`` is the conditional model; the official DiT samples used 1.5 (FID) and 4.0 (pictures).
        On the DDPM path the conversion is finite on all of [0, 1] (``sigma_0 = 0.01``), so samplers may run to
        ``t = 0``, which is DDPM's step 0 (its 1% noise included).
        """
        null = torch.tensor(self.model.config.num_classes, device=y.device)
        guided = classifier_free_guidance(self.model, y, null, cfg_scale)
        return velocity_field(guided, self.prediction, self.interpolant)


def velocity_field(model_fn: Callable[[Tensor, Tensor], Tensor], prediction: str,
                   interpolant: Interpolant | str) -> Callable[[Tensor, Tensor], Tensor]:
    """Turn a model of any prediction into the ``velocity_fn`` of ``minidit.samplers.sample_ode`` / ``sample_sde``.

    ``v = alpha' x0_hat + sigma' eps_hat`` with ``(x0_hat, eps_hat)`` recovered from the prediction at ``(x_t, t)``
    (``minidit.weighting.convert``, SiT Sec. 2.3); a velocity model passes through unchanged.

    Args:
        model_fn: ``f(x (N, ...), t (N,)) -> (N, ...)``, e.g. a ``classifier_free_guidance`` field.
        prediction: what it predicts: ``"velocity"``, ``"score"``, ``"noise"`` or ``"data"``.
        interpolant: the path its times refer to (``"ddpm"`` for the official DiT).
    Returns:
        ``v(x (N, ...), t (N,)) -> (N, ...)``.
    """
    check_choice("prediction", prediction, PREDICTIONS)
    if prediction == "velocity":
        return model_fn
    path = get_interpolant(interpolant)
    return lambda x, t: convert(model_fn(x, t), x, t, path, prediction, "velocity")


def load_official_dit(path: str | os.PathLike, preset: str = "DiT-XL/2", input_size: int = 32,
                      keep_variance: bool = False, **overrides: Any) -> Pretrained:
    """Load a facebookresearch/DiT checkpoint (e.g. ``DiT-XL-2-256x256.pt``) from a local file into ``DiT``.

    Args:
        path: the ``.pt`` file: a plain state dict, or a ``train.py`` checkpoint whose ``"ema"`` weights are used.
        preset: the size it was trained with (``DiT-XL/2`` for the published ones); ``overrides`` may set
            ``depth``, ``hidden_size``, ``num_heads``, ``patch_size`` for other sizes.
        input_size: latent size: 32 for 256x256 images, 64 for 512x512.
        keep_variance: keep the learned-sigma channels (``out_channels = 2 in_channels``) instead of dropping them.
    Returns:
        ``Pretrained(model, "noise", ddpm)``: ``model(x, t, y)`` predicts the noise at DDPM step ``1000 t``.
    Raises:
        FileNotFoundError: if ``path`` is missing (the message says where the weights are published).
        ValueError: if the checkpoint does not match the preset or holds weights minidit does not use.
    """
    state = read_checkpoint(path, "DiT", DIT_URL)
    model = DiT(official_config(state, preset, input_size, keep_variance, overrides)).eval()
    model.load_state_dict(official_to_minidit(state, model.config))
    return Pretrained(model, "noise", get_interpolant("ddpm"))


def load_official_sit(path: str | os.PathLike, preset: str = "SiT-XL/2", input_size: int = 32,
                      **overrides: Any) -> Pretrained:
    """Load a willisma/SiT checkpoint (``SiT-XL-2-256x256.pt``): the DiT network as a linear-path velocity model.

    Args and errors as ``load_official_dit`` (``SiT-XL/2`` is the ``DiT-XL/2`` architecture).
    Returns:
        ``Pretrained(ReversedTimeVelocity(dit), "velocity", linear)``, in minidit's time (t = 0 data).
    """
    state = read_checkpoint(path, "SiT", SIT_URL)
    dit = DiT(official_config(state, preset.replace("SiT-", "DiT-", 1), input_size, False, overrides)).eval()
    dit.load_state_dict(official_to_minidit(state, dit.config))
    return Pretrained(ReversedTimeVelocity(dit), "velocity", get_interpolant("linear"))


def read_checkpoint(path: str | os.PathLike, family: str, url: str) -> dict[str, Tensor]:
    """The state dict in the official ``.pt`` file at ``path`` (the ``"ema"`` weights of a training checkpoint).

    Raises:
        FileNotFoundError: naming where the ``family`` weights are published and where to put them.
    """
    if not os.path.isfile(path):
        name = os.path.basename(url.split("?")[0])
        raise FileNotFoundError(f"no {family} checkpoint at {str(path)!r}: download it from {url} (nothing downloads "
                                f"here), put it in {WEIGHTS_FOLDER}/ and pass e.g. {WEIGHTS_FOLDER}/{name}")
    with torch.serialization.safe_globals([argparse.Namespace]):  # train.py checkpoints store their args
        state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("ema", state)


def official_config(state: dict[str, Tensor], preset: str, input_size: int, keep_variance: bool,
                    overrides: dict[str, Any]) -> DiTConfig:
    """The ``DiTConfig`` of an official checkpoint: the preset's sizes, checked against the weights' shapes.

    Raises:
        ValueError: naming the first shape the preset disagrees with, and the fix.
    """
    check_choice("preset", preset, PRESETS)
    for name in ("x_embedder.proj.weight", "y_embedder.embedding_table.weight", "final_layer.linear.weight"):
        if name not in state:
            raise ValueError(f"the checkpoint has no {name!r}: it is not a facebookresearch/DiT or SiT state dict")
    hidden, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
    config = DiTConfig.from_dict({**PRESETS[preset], "input_size": input_size, "in_channels": in_channels,
                                  "num_classes": state["y_embedder.embedding_table.weight"].shape[0] - 1, **overrides})
    out_channels = state["final_layer.linear.weight"].shape[0] // patch**2
    depth = 1 + max(int(m.group(1)) for m in map(re.compile(r"blocks\.(\d+)\.").match, state) if m)
    tokens = state["pos_embed"].shape[1] if "pos_embed" in state else -1
    found = dict(depth=depth, hidden_size=hidden, patch_size=patch, tokens=tokens)
    wanted = dict(depth=config.depth, hidden_size=config.hidden_size, patch_size=config.patch_size,
                  tokens=config.grid_size**2)
    if found != wanted or out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(f"the checkpoint has {found} (out_channels {out_channels}) but preset {preset!r} with "
                         f"input_size {input_size} gives {wanted}: pass the preset and input_size it was trained with "
                         "(32 for 256x256 images, 64 for 512x512), or override depth / hidden_size / patch_size")
    if keep_variance and out_channels == in_channels:
        raise ValueError("keep_variance=True but this checkpoint has no learned-sigma channels; drop keep_variance")
    config.out_channels = out_channels if keep_variance else in_channels
    return config


def official_to_minidit(state: dict[str, Tensor], config: DiTConfig) -> dict[str, Tensor]:
    """Rename an official DiT / SiT state dict to minidit's ``DiT`` (its ``pos_embed`` checked, then dropped).

    Raises:
        ValueError: for a missing weight, one left unused, or a position table that is not DiT's sin-cos one.
    """
    source = dict(state)
    take = source_taker(source, "the official checkpoint")
    check_position_table(take("pos_embed")[0], config, "the official checkpoint's pos_embed")
    out = {"patch_embedder.weight": conv_to_linear(take("x_embedder.proj.weight")),
           "patch_embedder.bias": take("x_embedder.proj.bias"),
           "y_embedder.embedding_table.weight": take("y_embedder.embedding_table.weight")}
    names = {f"t_embedder.mlp.{k}": f"t_embedder.mlp.{k}" for k in (0, 2)}
    names.update({f"blocks.{i}.{theirs}": f"blocks.{i}.{mine}" for i in range(config.depth)
                  for theirs, mine in OFFICIAL_BLOCK_NAMES.items()})
    names.update({"final_layer.adaLN_modulation.1": "final_layer.modulation.1",
                  "final_layer.linear": "final_layer.linear"})
    for theirs, mine in names.items():
        for kind in ("weight", "bias"):
            out[f"{mine}.{kind}"] = take(f"{theirs}.{kind}")
    for kind in ("weight", "bias"):
        out[f"final_layer.linear.{kind}"] = first_channels(out[f"final_layer.linear.{kind}"], config)
    check_all_used(source, "the official checkpoint")
    return out


def dit_from_diffusers(transformer: nn.Module, keep_variance: bool = False) -> DiT:
    """Convert a diffusers ``DiTTransformer2DModel`` into a minidit ``DiT`` computing the same function.

    Call ``dit(x, timestep / 1000, class_labels)`` where diffusers is called with ``(x, timestep, class_labels)``.

    Args:
        transformer: the diffusers model (e.g. ``DiTPipeline.from_pretrained(folder).transformer``).
        keep_variance: keep learned-sigma channels (``out_channels = 2 in_channels``) instead of dropping them.
    Returns:
        a ``DiT`` in eval mode with ``DiffusersTimestepEmbedder`` and its pre-MLP norm eps set to ``norm_eps``.
    Raises:
        ValueError: for a configuration minidit cannot express, or per-block embedders that differ.
    """
    cfg = transformer.config
    needed = dict(norm_type="ada_norm_zero", activation_fn="gelu-approximate", norm_elementwise_affine=False)
    unsupported = {k: cfg[k] for k, v in needed.items() if cfg[k] != v}
    if unsupported:
        raise ValueError(f"minidit's DiT cannot express a DiTTransformer2DModel with {unsupported}; it needs {needed}")
    out_channels = transformer.out_channels
    learned_sigma = out_channels == 2 * cfg.in_channels
    model = DiT(DiTConfig(
        input_size=cfg.sample_size, patch_size=cfg.patch_size, in_channels=cfg.in_channels,
        out_channels=out_channels if keep_variance or not learned_sigma else cfg.in_channels,
        hidden_size=cfg.num_attention_heads * cfg.attention_head_dim, depth=cfg.num_layers,
        num_heads=cfg.num_attention_heads, num_classes=cfg.num_embeds_ada_norm, qkv_bias=cfg.attention_bias,
    ))
    use_diffusers_time_embedding(model)
    for block in model.blocks:
        block.norm2.eps = cfg.norm_eps  # diffusers' norm3 (before the MLP); its other norms use DiT's 1e-6
    check_position_table(transformer.pos_embed.pos_embed[0], model.config, "the diffusers model's pos_embed")
    source = dict(transformer.state_dict())
    take = source_taker(source, "the diffusers model")
    out = {"patch_embedder.weight": conv_to_linear(take("pos_embed.proj.weight")),
           "patch_embedder.bias": take("pos_embed.proj.bias")}
    for i in range(cfg.num_layers):
        for kind in ("weight", "bias") if cfg.attention_bias else ("weight",):
            prefix = f"transformer_blocks.{i}.attn1.to_"
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([take(f"{prefix}{qkv}.{kind}") for qkv in "qkv"])
        for theirs, mine in EMBEDDER_NAMES.items():
            value = take(f"transformer_blocks.{i}.norm1.emb.{theirs}")
            if not torch.equal(value, out.setdefault(mine, value)):
                raise ValueError(f"block {i}'s {theirs} differs from block 0's; minidit shares one time and label "
                                 "embedder, so every block's copy must be equal")
    for theirs, mine in diffusers_names(cfg.num_layers).items():
        out[mine] = take(theirs)
    for kind in ("weight", "bias"):
        out[f"final_layer.linear.{kind}"] = first_channels(out[f"final_layer.linear.{kind}"], model.config)
    check_all_used(source, "the diffusers model")
    model.load_state_dict(out)
    return model.to(transformer.dtype).eval()


def dit_to_diffusers(model: DiT) -> nn.Module:
    """Convert a minidit ``DiT`` into a diffusers ``DiTTransformer2DModel`` computing the same function.

    The model must use ``DiffusersTimestepEmbedder`` (``dit_from_diffusers`` models do; for others call
    ``use_diffusers_time_embedding`` knowingly, since diffusers cannot compute the official time features).

    Raises:
        ValueError: for a config diffusers' DiT cannot express (text, RoPE, QK-norm, ...), an unconditional model,
            or official time features.
    """
    diffusers = require_diffusers()
    cfg = model.config
    differing = {k: getattr(cfg, k) for k, v in DIFFUSERS_EXPRESSIBLE.items() if getattr(cfg, k) != v}
    if differing or cfg.num_classes < 1:
        raise ValueError(f"diffusers' DiTTransformer2DModel is the class-conditional DiT style only; this model has "
                         f"{differing or 'num_classes 0'}: keep it in minidit (diffusers needs "
                         f"{DIFFUSERS_EXPRESSIBLE} and num_classes > 0)")
    if not isinstance(model.t_embedder, DiffusersTimestepEmbedder):
        raise ValueError("diffusers' DiT computes time features with frequencies 10000^(-i/127), not DiT's "
                         "10000^(-i/128), so the export would change this model's output; call "
                         "use_diffusers_time_embedding(model) first to accept that")
    eps = {block.norm2.eps for block in model.blocks}
    if len(eps) != 1 or {b.norm1.eps for b in model.blocks} | {model.final_layer.norm.eps} != {1e-6}:
        raise ValueError("diffusers' DiT has LayerNorm eps 1e-6 before attention and in the final layer and one "
                         f"norm_eps before every MLP; this model has MLP norm eps {sorted(eps)}")
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=cfg.num_heads, attention_head_dim=cfg.hidden_size // cfg.num_heads,
        in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_layers=cfg.depth,
        attention_bias=cfg.qkv_bias, sample_size=cfg.input_size, patch_size=cfg.patch_size,
        num_embeds_ada_norm=cfg.num_classes, norm_eps=eps.pop(),
    )
    source = dict(model.state_dict())
    take = source_taker(source, "the minidit model")
    out = {"pos_embed.proj.weight": linear_to_conv(take("patch_embedder.weight"), cfg.patch_size),
           "pos_embed.proj.bias": take("patch_embedder.bias")}
    embedders = {theirs: take(mine) for theirs, mine in EMBEDDER_NAMES.items()}
    for i in range(cfg.depth):
        for kind in ("weight", "bias") if cfg.qkv_bias else ("weight",):
            for qkv, value in zip("qkv", take(f"blocks.{i}.attn.qkv.{kind}").chunk(3)):
                out[f"transformer_blocks.{i}.attn1.to_{qkv}.{kind}"] = value
        out.update({f"transformer_blocks.{i}.norm1.emb.{theirs}": value for theirs, value in embedders.items()})
    for theirs, mine in diffusers_names(cfg.depth).items():
        out[theirs] = take(mine)
    check_all_used(source, "the minidit model")
    transformer.load_state_dict(out)
    dtype = model.patch_embedder.weight.dtype
    return (transformer if dtype == torch.float32 else transformer.to(dtype)).eval()


def diffusers_names(depth: int) -> dict[str, str]:
    """Parameter names of ``DIFFUSERS_NAMES`` -> minidit's, spelt out for blocks ``0 .. depth - 1``."""
    return {f"{theirs}.{kind}".format(i=i): f"{mine}.{kind}".format(i=i) for theirs, mine in DIFFUSERS_NAMES.items()
            for i in (range(depth) if "{i}" in theirs else [0]) for kind in ("weight", "bias")}


def conv_to_linear(weight: Tensor) -> Tensor:
    """A ``Conv2d(C, D, p, stride=p)`` weight ``(D, C, p, p)`` as minidit's patch ``Linear`` weight ``(D, p p C)``.

    ``minidit.dit.patchify`` lists a patch's pixels row by row, channels last, so the kernel goes to ``(D, p, p, C)``.
    """
    return weight.permute(0, 2, 3, 1).flatten(1)  # (D, p * p * C)


def linear_to_conv(weight: Tensor, patch_size: int) -> Tensor:
    """Inverse of ``conv_to_linear``: ``(D, p p C)`` -> ``(D, C, p, p)``."""
    return weight.reshape(weight.shape[0], patch_size, patch_size, -1).permute(0, 3, 1, 2)  # (D, C, p, p)


def first_channels(tensor: Tensor, config: DiTConfig) -> Tensor:
    """Keep the rows of the final linear weight ``(p p C_src, D)`` or bias that give ``config.out_channels``.

    Its rows run over ``(patch pixel, channel)``, channels fastest; learned sigma puts the variances after the
    ``in_channels`` predicted channels.
    """
    pixels = config.patch_size**2
    grid = tensor.reshape(pixels, tensor.shape[0] // pixels, *tensor.shape[1:])  # (p * p, C_src, ...)
    return grid[:, : config.out_channels].flatten(0, 1)  # (p * p * out_channels, ...)


def check_position_table(table: Tensor, config: DiTConfig, name: str) -> None:
    """Raise ``ValueError`` unless ``table`` (T, D) is DiT's fixed sin-cos table, which minidit recomputes."""
    expected = sincos_2d(config.hidden_size, (config.grid_size, config.grid_size))
    if table.shape != expected.shape or not torch.allclose(table.float().cpu(), expected, atol=1e-4):
        raise ValueError(f"{name} is not DiT's 2-D sin-cos table of a {config.grid_size}x{config.grid_size} grid "
                         "(column channels first); a learned or differently laid out table cannot load into "
                         "minidit's DiT")


def source_taker(source: dict[str, Tensor], name: str) -> Callable[[str], Tensor]:
    """``take(key)`` pops ``key`` from ``source``, so that what is left at the end is what went unused."""

    def take(key: str) -> Tensor:
        if key not in source:
            raise ValueError(f"{name} has no weight {key!r}: it is not the expected DiT format or size")
        return source.pop(key)

    return take


def check_all_used(source: dict[str, Tensor], name: str) -> None:
    """Raise ``ValueError`` if ``source`` still holds weights: none may be silently dropped."""
    if source:
        raise ValueError(f"{name} has {len(source)} weights minidit's DiT does not use, e.g. {sorted(source)[:4]}; "
                         "it is not the plain class-conditional DiT")
