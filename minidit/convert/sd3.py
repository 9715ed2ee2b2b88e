"""Stable Diffusion 3's MM-DiT in diffusers (``SD3Transformer2DModel``) <-> minidit's ``MMDiT``, weight for weight.

With SD3's three switches of ``MMDiTConfig`` (``pooled_dim``, ``pos_embed_max_size``, ``dual_attention_blocks``) the
two models compute the same function, so every tensor of one maps onto the other and nothing is left over (SD3, Esser
et al., arXiv 2403.03206, Sec. 4 and Fig. 2; SD3.5's MMDiT-X blocks add an image-only self-attention).

Conventions: diffusers' ``timestep`` is ``1000 sigma`` and its flow-matching ``sigma`` is minidit's ``t`` (data at 0,
noise at 1); SD3 predicts the velocity ``eps - x0`` of ``x_t = (1 - t) x0 + t eps``, as minidit does (its scheduler
steps ``x + (sigma' - sigma) v``), so ``mmdit(x, t, text, mask, pooled=p) == sd3(x, text, p, 1000 t).sample``, with no
sign flip. Layouts mapped here: the conv patch embedding becomes ``patchify`` + linear (``(D, C, p, p)`` ->
``(D, p p C)``), the separate q, k, v projections minidit's packed ``qkv``, and ``AdaLayerNormContinuous``'s
``(scale, shift)`` (the text of the last block, and the final layer) minidit's ``(shift, scale)``. The position table
that diffusers stores (``pos_embed.pos_embed``) is fixed: it is checked against minidit's ``cropped_sincos_2d``, not
copied. SD3 attends padded text tokens (no mask): call the minidit model with ``text_mask`` all ``True`` to reproduce
it on padded features; a mask that hides the padding gives SD3's output on the unpadded caption. The text encoders
(two CLIPs for ``pooled``, T5 for ``text``) are outside the transformer and not converted here.
Used by notebooks/10_pretrained.ipynb.

Example:
    >>> model = load_sd3("models/sd3-medium")                  # a local diffusers folder; nothing downloads
    >>> v = model(x, t, text, torch.ones(text.shape[:2], dtype=torch.bool), pooled=pooled)   # velocity (N, C, H, W)
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from minidit.convert import require_diffusers
from minidit.convert.dit import conv_to_linear, linear_to_conv
from minidit.mmdit import MMDiT, MMDiTConfig, cropped_sincos_2d

QK_NORMS = {None: None, "rms_norm": "rmsnorm", "layer_norm": "layernorm"}  # diffusers' name -> minidit's
POSITION_TABLE = "pos_embed.pos_embed"  # diffusers' fixed buffer, checked rather than converted
WEIGHTS_HELP = ("download the transformer once, e.g. huggingface-cli download stabilityai/stable-diffusion-3-medium-"
                "diffusers --include 'transformer/*' --local-dir models/sd3-medium (a gated model: accept its licence "
                "on the Hugging Face page first; SD3.5: stabilityai/stable-diffusion-3.5-medium), and pass that folder")

Entry = tuple[str, tuple[str, ...], str]  # (minidit name, diffusers names, transform)


def mmdit_config_from_sd3(sd3_config: Mapping[str, Any]) -> MMDiTConfig:
    """The ``MMDiTConfig`` that computes what an ``SD3Transformer2DModel`` with config ``sd3_config`` computes.

    Raises:
        ValueError: for a config minidit cannot express (caption width other than the model width, a QK-norm other
            than ``None``, ``"rms_norm"`` or ``"layer_norm"``, or no ``pos_embed_max_size``).
    """
    heads, head_dim = sd3_config["num_attention_heads"], sd3_config["attention_head_dim"]
    hidden = heads * head_dim
    qk_norm = sd3_config.get("qk_norm")
    if sd3_config["caption_projection_dim"] != hidden:
        raise ValueError(f"caption_projection_dim {sd3_config['caption_projection_dim']} must equal the model width "
                         f"num_attention_heads * attention_head_dim = {hidden}, as in every SD3 checkpoint")
    if qk_norm not in QK_NORMS:
        raise ValueError(f"qk_norm {qk_norm!r} has no minidit counterpart; SD3 uses one of {list(QK_NORMS)}")
    if sd3_config.get("pos_embed_max_size") is None:
        raise ValueError("pos_embed_max_size is None: minidit expresses SD3's cropped position table only; every SD3 "
                         "checkpoint sets it (192)")
    in_channels = sd3_config["in_channels"]
    return MMDiTConfig(
        input_size=sd3_config["sample_size"], patch_size=sd3_config["patch_size"], in_channels=in_channels,
        out_channels=sd3_config.get("out_channels") or in_channels, depth=sd3_config["num_layers"],
        hidden_size=hidden, num_heads=heads, mlp_ratio=4.0, text_dim=sd3_config["joint_attention_dim"],
        qk_norm=QK_NORMS[qk_norm], caption_dropout=0.0, norm="layernorm", pos_embed="sincos",
        frequency_embedding_size=256, pooled_dim=sd3_config["pooled_projection_dim"],
        pos_embed_max_size=sd3_config["pos_embed_max_size"],
        dual_attention_blocks=tuple(sd3_config.get("dual_attention_layers") or ()),
    )


def sd3_config_from_mmdit(config: MMDiTConfig) -> dict[str, Any]:
    """The ``SD3Transformer2DModel`` keyword arguments of the same function as an ``MMDiT`` with ``config``.

    Raises:
        ValueError: listing the fields that SD3 cannot express and the values it needs.
    """
    needs = {
        "pooled_dim": (config.pooled_dim is not None, "an integer (SD3's separate pooled text vector)"),
        "pos_embed_max_size": (config.pos_embed_max_size is not None, "an integer (SD3's cropped sin-cos table)"),
        "norm": (config.norm == "layernorm", "'layernorm'"),
        "mlp_ratio": (config.mlp_ratio == 4.0, "4.0"),
        "frequency_embedding_size": (config.frequency_embedding_size == 256, "256"),
    }
    unmet = [f"{name} = {need}" for name, (met, need) in needs.items() if not met]
    if unmet:
        raise ValueError(f"this MMDiT has no SD3Transformer2DModel counterpart; set {', '.join(unmet)}")
    return dict(
        sample_size=config.input_size, patch_size=config.patch_size, in_channels=config.in_channels,
        num_layers=config.depth, attention_head_dim=config.hidden_size // config.num_heads,
        num_attention_heads=config.num_heads, joint_attention_dim=config.text_dim,
        caption_projection_dim=config.hidden_size, pooled_projection_dim=config.pooled_dim,
        out_channels=config.out_channels, pos_embed_max_size=config.pos_embed_max_size,
        dual_attention_layers=tuple(config.dual_attention_blocks),
        qk_norm={ours: theirs for theirs, ours in QK_NORMS.items()}[config.qk_norm],
    )


def parameter_map(config: MMDiTConfig) -> list[Entry]:
    """Every tensor of both models: ``(minidit name, diffusers names, transform)``, one entry per minidit tensor.

    Transforms: ``"copy"``; ``"qkv"`` (three diffusers projections stacked into minidit's packed one); ``"patch"``
    (the conv patch kernel as a linear map over ``patchify``'s tokens); ``"swap"`` (``AdaLayerNormContinuous``'s
    ``(scale, shift)`` halves, minidit's ``(shift, scale)``). Only ``POSITION_TABLE`` is not listed.
    """
    entries: list[Entry] = []

    def linear(ours: str, theirs: tuple[str, ...], transform: str = "copy") -> None:
        entries.append((f"{ours}.weight", tuple(f"{name}.weight" for name in theirs), transform))
        entries.append((f"{ours}.bias", tuple(f"{name}.bias" for name in theirs), "copy" if transform == "patch"
                        else transform))

    def attention(ours: str, theirs: str, projections: tuple[str, ...], out: str | None,
                  norms: tuple[str, str]) -> None:
        linear(f"{ours}.qkv", tuple(f"{theirs}.{name}" for name in projections), "qkv")
        if out is not None:
            linear(f"{ours}.proj", (f"{theirs}.{out}",))
        if config.qk_norm is not None:
            suffixes = ("weight",) if config.qk_norm == "rmsnorm" else ("weight", "bias")
            for our_norm, their_norm in zip(("query_norm", "key_norm"), norms):
                entries.extend((f"{ours}.qk_norm.{our_norm}.{s}", (f"{theirs}.{their_norm}.{s}",), "copy")
                               for s in suffixes)

    linear("patch_embedder", ("pos_embed.proj",), "patch")
    linear("t_embedder.mlp.0", ("time_text_embed.timestep_embedder.linear_1",))
    linear("t_embedder.mlp.2", ("time_text_embed.timestep_embedder.linear_2",))
    linear("pooled_embedder.0", ("time_text_embed.text_embedder.linear_1",))
    linear("pooled_embedder.2", ("time_text_embed.text_embedder.linear_2",))
    linear("context_embedder", ("context_embedder",))
    for i in range(config.depth):
        ours, theirs, last = f"blocks.{i}", f"transformer_blocks.{i}", i == config.depth - 1
        linear(f"{ours}.modulation.1", (f"{theirs}.norm1.linear",))
        linear(f"{ours}.context_modulation.1", (f"{theirs}.norm1_context.linear",), "swap" if last else "copy")
        attention(f"{ours}.attn", f"{theirs}.attn", ("to_q", "to_k", "to_v"), "to_out.0", ("norm_q", "norm_k"))
        attention(f"{ours}.context_attn", f"{theirs}.attn", ("add_q_proj", "add_k_proj", "add_v_proj"),
                  None if last else "to_add_out", ("norm_added_q", "norm_added_k"))
        if i in config.dual_attention_blocks:
            attention(f"{ours}.attn2", f"{theirs}.attn2", ("to_q", "to_k", "to_v"), "to_out.0", ("norm_q", "norm_k"))
        linear(f"{ours}.mlp.0", (f"{theirs}.ff.net.0.proj",))
        linear(f"{ours}.mlp.2", (f"{theirs}.ff.net.2",))
        if not last:
            linear(f"{ours}.context_mlp.0", (f"{theirs}.ff_context.net.0.proj",))
            linear(f"{ours}.context_mlp.2", (f"{theirs}.ff_context.net.2",))
    linear("final_layer.modulation.1", ("norm_out.linear",), "swap")
    linear("final_layer.linear", ("proj_out",))
    return entries


def position_table(config: MMDiTConfig) -> Tensor:
    """diffusers' stored ``pos_embed.pos_embed``: the whole ``(1, max_size^2, D)`` table before cropping."""
    size = config.pos_embed_max_size
    return cropped_sincos_2d(config.hidden_size, (size, size), size, config.grid_size)[None]  # (1, size^2, D)


def check_names(given: set[str], expected: set[str], owner: str) -> None:
    """Raise a ``ValueError`` unless ``given`` names exactly ``expected``: no tensor is dropped or invented."""
    unused, missing = sorted(given - expected), sorted(expected - given)
    if unused or missing:
        raise ValueError(f"the {owner} state dict does not match its config: unused {unused[:5]}, missing "
                         f"{missing[:5]} ({len(unused)} and {len(missing)} in all); build the config from the same "
                         "model")


def swap_halves(tensor: Tensor) -> Tensor:
    """``[a; b] -> [b; a]`` along dim 0: ``(scale, shift)`` <-> ``(shift, scale)`` rows of an adaLN linear."""
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def state_dict_from_sd3(sd3_state: Mapping[str, Tensor], config: MMDiTConfig) -> dict[str, Tensor]:
    """diffusers ``SD3Transformer2DModel`` tensors -> ``MMDiT`` tensors for ``config``.

    Raises:
        ValueError: if a tensor is unused or missing, or the stored position table is not SD3's sin-cos table.
    """
    entries = parameter_map(config)
    check_names(set(sd3_state), {name for _, theirs, _ in entries for name in theirs} | {POSITION_TABLE},
                "SD3Transformer2DModel")
    table = position_table(config)
    stored = sd3_state[POSITION_TABLE]
    tolerance = max(1e-4, torch.finfo(stored.dtype).eps)  # a half-precision checkpoint rounds its table
    if stored.shape != table.shape or not torch.allclose(stored.float().cpu(), table, atol=tolerance, rtol=0):
        raise ValueError(f"{POSITION_TABLE} is not the sin-cos table of pos_embed_max_size "
                         f"{config.pos_embed_max_size} that minidit computes; this position embedding cannot be "
                         "expressed")
    state = {}
    for ours, theirs, transform in entries:
        tensors = [sd3_state[name] for name in theirs]
        if transform == "qkv":
            state[ours] = torch.cat(tensors, dim=0)  # (3 D, D): q, k, v rows
        elif transform == "patch":
            state[ours] = conv_to_linear(tensors[0])  # (D, C, p, p) -> (D, p p C)
        elif transform == "swap":
            state[ours] = swap_halves(tensors[0])
        else:
            state[ours] = tensors[0].clone()  # the two models never share storage
    return state


def state_dict_to_sd3(state: Mapping[str, Tensor], config: MMDiTConfig) -> dict[str, Tensor]:
    """``MMDiT`` tensors -> diffusers ``SD3Transformer2DModel`` tensors (with the position table), the inverse of
    ``state_dict_from_sd3``.

    Raises:
        ValueError: if a tensor is unused or missing.
    """
    entries = parameter_map(config)
    check_names(set(state), {ours for ours, _, _ in entries}, "MMDiT")
    sd3_state = {POSITION_TABLE: position_table(config)}
    for ours, theirs, transform in entries:
        tensor = state[ours]
        if transform == "qkv":
            parts = [part.clone() for part in tensor.chunk(3, dim=0)]  # (D, D) each: q, k, v
        elif transform == "patch":
            parts = [linear_to_conv(tensor, config.patch_size).contiguous()]  # (D, C, p, p)
        elif transform == "swap":
            parts = [swap_halves(tensor)]
        else:
            parts = [tensor]
        sd3_state.update(zip(theirs, parts))
    return sd3_state


def mmdit_from_sd3(sd3_model: nn.Module) -> MMDiT:
    """The ``MMDiT`` (eval mode, the checkpoint's dtype) computing what the diffusers ``sd3_model`` computes."""
    config = mmdit_config_from_sd3(sd3_model.config)
    with torch.device("meta"):
        model = MMDiT(config)  # no random init of weights about to be replaced
    model.load_state_dict(state_dict_from_sd3(sd3_model.state_dict(), config), assign=True)
    return model.eval()


def sd3_from_mmdit(model: MMDiT) -> nn.Module:
    """The diffusers ``SD3Transformer2DModel`` (eval mode) computing what the minidit ``model`` computes."""
    sd3_model = require_diffusers().SD3Transformer2DModel(**sd3_config_from_mmdit(model.config))
    sd3_model.load_state_dict(state_dict_to_sd3(model.state_dict(), model.config))
    return sd3_model.eval()


def load_sd3(path: str | Path) -> MMDiT:
    """An SD3 / SD3.5 transformer from a local diffusers folder (the pipeline's, or its ``transformer/``) as an MMDiT.

    The model predicts the velocity ``eps - x0`` at minidit's time ``t`` (SD3's sigma), so minidit's samplers run it
    as it is. Nothing is downloaded.

    Raises:
        FileNotFoundError: if ``path`` holds no transformer ``config.json``, saying where the weights are published.
    """
    folder = Path(path)
    if (folder / "transformer" / "config.json").is_file():
        folder = folder / "transformer"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no SD3 transformer (config.json) in {str(path)!r}; {WEIGHTS_HELP}")
    return mmdit_from_sd3(require_diffusers().SD3Transformer2DModel.from_pretrained(folder, local_files_only=True))
