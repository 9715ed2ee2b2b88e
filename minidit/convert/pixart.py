"""diffusers' ``PixArtTransformer2DModel`` (PixArt-alpha / PixArt-Sigma) as minidit's text DiT, weight for weight.

PixArt is a DiT whose blocks read the time through adaLN-single (one modulation MLP of the time embedding shared by
all blocks, plus a learned ``(6, D)`` table per block) and the caption through a cross-attention sub-layer of its own
after self-attention (PixArt-alpha, arXiv 2310.00426, Sec. 2.3, Fig. 3; PixArt-Sigma, arXiv 2403.04692), so it is
minidit's ``DiT`` with ``adaln="single"``, ``cross_attention_layer=True``, ``text_conditioning="cross"`` and
``text_pooling=False``. Used by notebooks/10_pretrained.ipynb.

The mapping, diffusers -> minidit (block ``i``):

- ``pos_embed.proj`` (a stride-``p`` conv) -> ``patch_embedder`` (the same weights as a linear over
  ``minidit.dit.patchify``'s ``(i * p + j) * C + c`` token layout);
- ``adaln_single.emb.timestep_embedder.linear_{1,2}`` -> ``t_embedder.mlp.{0,2}``; ``adaln_single.linear`` ->
  ``shared_modulation.1``; ``transformer_blocks.i.scale_shift_table`` -> ``blocks.i.modulation.table``; the final
  ``scale_shift_table`` (rows: shift, scale, added to the time embedding itself) -> ``final_layer.modulation.table``;
- ``caption_projection.linear_{1,2}`` (Linear, tanh-GELU, Linear from the T5 width) -> ``caption_embedder.mlp.{0,2}``;
- ``attn1.to_{q,k,v}`` -> ``blocks.i.attn.qkv`` (stacked), ``attn1.to_out.0`` -> ``blocks.i.attn.proj``;
  ``attn2.to_q`` -> ``blocks.i.cross_attention_layer.query``, ``attn2.to_{k,v}`` -> ``...text.kv`` (stacked),
  ``attn2.to_out.0`` -> ``...proj``; ``ff.net.{0.proj,2}`` -> ``blocks.i.mlp.{0,2}``; ``proj_out`` ->
  ``final_layer.linear`` (both un-patchify as ``(h, w, p, p, C)``).
- The position table: diffusers recomputes a sin-cos table at positions ``i * base / g / interpolation_scale``
  (``base`` the training grid, ``g`` the current one; ``interpolation_scale`` defaults to ``max(sample_size // 64,
  1)``, so the 1024-pixel models place tokens at half steps, and a tiny ``sample_size`` gets integer positions).
  minidit's ``sincos`` table computes the same positions when ``pos_embed_interpolation_scale`` is set
  (``minidit.posembed.sincos_2d``), so the two models agree on every grid, not only on the training one.
- Only in minidit: ``caption_embedder.null_caption``, the learned null caption for classifier-free guidance
  (diffusers' pipeline guides with the T5 encoding of an empty prompt instead); it keeps its initial value.

Time and prediction: diffusers' ``timestep`` is a DDPM step ``i`` in 0..999 and minidit's ``t = i / 1000`` feeds the
same sin-cos features; the output has ``2 C`` channels, the noise prediction (the first ``C``) and the learned variance
interpolation (the rest; ignore it for ODE sampling). PixArt-alpha's 1024-pixel models add resolution and aspect-ratio
embeddings to the time embedding (``use_additional_conditions``); minidit has no such input, so they are refused.

Example:
    >>> model = from_diffusers(load_pixart("models/pixart-sigma-512/transformer"))
    >>> out = model(latents, steps / 1000, text=t5_features, text_mask=t5_mask)   # (N, 8, H, W)
    >>> noise = out[:, :4]                                                         # DDPM epsilon
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from minidit.convert import require_diffusers
from minidit.dit import DiT, DiTConfig
from minidit.gating import GatedCrossAttention

# Parameters that minidit's PixArt model has and diffusers' does not.
MINIDIT_ONLY = ("caption_embedder.null_caption",)
WEIGHTS_URL = "https://huggingface.co/PixArt-alpha/PixArt-Sigma-XL-2-512-MS"


def _linear(minidit: str, *diffusers: str) -> list[tuple[str, tuple[str, ...]]]:
    """Weight and bias pairs of one minidit linear and the diffusers linears stacked into it (along dim 0)."""
    return [(f"{minidit}.{kind}", tuple(f"{name}.{kind}" for name in diffusers)) for kind in ("weight", "bias")]


def parameter_map(depth: int) -> list[tuple[str, tuple[str, ...]]]:
    """Every minidit parameter of a converted PixArt of ``depth`` blocks, with the diffusers parameters it holds.

    Returns:
        ``(minidit name, diffusers names)`` pairs; several diffusers tensors are concatenated along dim 0 (q, k, v).
        The position table (a diffusers buffer) and ``MINIDIT_ONLY`` are not listed.
    """
    pairs = [
        *_linear("patch_embedder", "pos_embed.proj"),
        *_linear("t_embedder.mlp.0", "adaln_single.emb.timestep_embedder.linear_1"),
        *_linear("t_embedder.mlp.2", "adaln_single.emb.timestep_embedder.linear_2"),
        *_linear("shared_modulation.1", "adaln_single.linear"),
        *_linear("caption_embedder.mlp.0", "caption_projection.linear_1"),
        *_linear("caption_embedder.mlp.2", "caption_projection.linear_2"),
        ("final_layer.modulation.table", ("scale_shift_table",)),
        *_linear("final_layer.linear", "proj_out"),
    ]
    for i in range(depth):
        ours, theirs = f"blocks.{i}", f"transformer_blocks.{i}"
        pairs += [
            (f"{ours}.modulation.table", (f"{theirs}.scale_shift_table",)),
            *_linear(f"{ours}.attn.qkv", *(f"{theirs}.attn1.to_{x}" for x in "qkv")),
            *_linear(f"{ours}.attn.proj", f"{theirs}.attn1.to_out.0"),
            *_linear(f"{ours}.cross_attention_layer.query", f"{theirs}.attn2.to_q"),
            *_linear(f"{ours}.cross_attention_layer.text.kv", f"{theirs}.attn2.to_k", f"{theirs}.attn2.to_v"),
            *_linear(f"{ours}.cross_attention_layer.proj", f"{theirs}.attn2.to_out.0"),
            *_linear(f"{ours}.mlp.0", f"{theirs}.ff.net.0.proj"),
            *_linear(f"{ours}.mlp.2", f"{theirs}.ff.net.2"),
        ]
    return pairs


def _require(problems: dict[str, bool], what: str) -> None:
    """Raise one ``ValueError`` naming every setting in ``problems`` that is ``True``."""
    bad = [name for name, failed in problems.items() if failed]
    if bad:
        raise ValueError(f"{what} cannot be converted: {', '.join(bad)}")


def config_from_diffusers(model: Any) -> DiTConfig:
    """The ``DiTConfig`` that computes the same function as a diffusers ``PixArtTransformer2DModel``.

    Raises:
        ValueError: for the settings minidit cannot express, each named with what it needs to be.
    """
    cfg = model.config
    dim = cfg.num_attention_heads * cfg.attention_head_dim
    _require({
        "norm_type must be 'ada_norm_single'": cfg.norm_type != "ada_norm_single",
        "caption_channels must be set (PixArt projects the T5 features)": cfg.caption_channels is None,
        f"cross_attention_dim must equal the width {dim}": cfg.cross_attention_dim != dim,
        "use_additional_conditions (resolution/aspect embeddings, PixArt-alpha 1024) must be off":
            model.use_additional_conditions,
        "activation_fn must be 'gelu-approximate'": cfg.activation_fn != "gelu-approximate",
        "attention_bias must be true": not cfg.attention_bias,
        "norm_elementwise_affine must be false": cfg.norm_elementwise_affine,
        "norm_eps must be 1e-6": cfg.norm_eps != 1e-6,
        "attention_type must be 'default'": cfg.attention_type != "default",
    }, "this PixArtTransformer2DModel")
    return DiTConfig(
        input_size=cfg.sample_size, patch_size=cfg.patch_size, in_channels=cfg.in_channels,
        out_channels=model.out_channels, hidden_size=dim, depth=cfg.num_layers, num_heads=cfg.num_attention_heads,
        mlp_ratio=model.transformer_blocks[0].ff.net[0].proj.out_features / dim, pos_embed="sincos",
        pos_embed_interpolation_scale=float(model.pos_embed.interpolation_scale),
        text_conditioning="cross", text_dim=cfg.caption_channels, text_pooling=False, adaln="single",
        cross_attention_layer=True,
    )


def from_diffusers(model: Any) -> DiT:
    """Convert a diffusers ``PixArtTransformer2DModel`` into minidit's ``DiT`` (eval mode, same device and dtype).

    Every diffusers parameter is used exactly once; minidit's only extra is ``MINIDIT_ONLY``.

    Raises:
        ValueError: for a configuration minidit cannot express (see ``config_from_diffusers``).
    """
    config = config_from_diffusers(model)
    theirs = model.state_dict()
    state = {ours: torch.cat([theirs[name] for name in names]) for ours, names in parameter_map(config.depth)}
    p, dim = config.patch_size, config.hidden_size
    conv = state["patch_embedder.weight"]  # (D, C, p, p)
    state["patch_embedder.weight"] = conv.permute(0, 2, 3, 1).reshape(dim, p * p * config.in_channels)  # (D, p p C)
    unused = set(theirs) - {name for _, names in parameter_map(config.depth) for name in names}
    if unused:
        raise ValueError(f"diffusers parameters {sorted(unused)[:5]} have no place in minidit's model; this "
                         "converter reads PixArtTransformer2DModel as diffusers 0.42 builds it")
    dit = DiT(config).to(device=conv.device, dtype=conv.dtype)
    missing, unexpected = dit.load_state_dict(state, strict=False)
    left = {name for name in missing if not name.endswith(".active")} - set(MINIDIT_ONLY)  # pruned-head flags stay on
    if left or unexpected:
        raise ValueError(f"minidit parameters {sorted(left)[:5]} received no diffusers weight and {unexpected[:5]} "
                         "do not exist in minidit's model")
    return dit.eval()


def to_diffusers(model: DiT) -> Any:
    """Convert minidit's PixArt-layout ``DiT`` back into a diffusers ``PixArtTransformer2DModel`` (eval mode).

    Args:
        model: a ``DiT`` built by ``from_diffusers`` (or with the same config switches); its
            ``pos_embed_interpolation_scale`` becomes diffusers' ``interpolation_scale``.
    Raises:
        ValueError: for a model without PixArt's layout or with pruned cross-attention heads. ``MINIDIT_ONLY`` is
            dropped.
    """
    cfg = model.config
    _require({
        "adaln must be 'single'": cfg.adaln != "single",
        "cross_attention_layer must be true": not cfg.cross_attention_layer,
        "text_conditioning must be 'cross'": cfg.text_conditioning != "cross",
        "text_pooling must be false": cfg.text_pooling,
        "pos_embed must be 'sincos' with pos_embed_interpolation_scale (PixArt's positions)":
            cfg.pos_embed != "sincos" or cfg.pos_embed_interpolation_scale is None,
        "norm must be 'layernorm' without qk_norm, with qkv_bias": (cfg.norm, cfg.qk_norm, cfg.qkv_bias)
            != ("layernorm", None, True),
        "num_classes must be 0": cfg.num_classes != 0,
        "rope, kv_compression, text_refiner and frames must be off":
            cfg.rope or cfg.kv_compression is not None or cfg.text_refiner != "none" or cfg.frames,
        "mlp_ratio must be 4 and frequency_embedding_size 256": (cfg.mlp_ratio, cfg.frequency_embedding_size)
            != (4.0, 256),
        "every cross-attention head must be active": any(not bool(m.active.all()) for m in model.modules()
                                                          if isinstance(m, GatedCrossAttention)),
    }, "this DiT")
    first = model.patch_embedder.weight
    diffusers_model = require_diffusers().PixArtTransformer2DModel(
        num_attention_heads=cfg.num_heads, attention_head_dim=cfg.hidden_size // cfg.num_heads,
        in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_layers=cfg.depth,
        cross_attention_dim=cfg.hidden_size, sample_size=cfg.input_size, patch_size=cfg.patch_size,
        norm_type="ada_norm_single", interpolation_scale=cfg.pos_embed_interpolation_scale,
        use_additional_conditions=False,
        caption_channels=cfg.text_dim,
    ).to(first.device)
    if first.dtype != diffusers_model.dtype:
        diffusers_model.to(first.dtype)  # diffusers warns on any dtype cast: cast only when needed
    ours = model.state_dict()
    p, dim = cfg.patch_size, cfg.hidden_size
    ours["patch_embedder.weight"] = first.reshape(dim, p, p, cfg.in_channels).permute(0, 3, 1, 2)  # (D, C, p, p)
    state = {}
    for name, names in parameter_map(cfg.depth):
        for theirs, part in zip(names, ours[name].chunk(len(names))):
            state[theirs] = part
    diffusers_model.load_state_dict(state, strict=True)  # every diffusers parameter filled
    return diffusers_model.eval()


def load_pixart(path: str | Path) -> Any:
    """Load a diffusers ``PixArtTransformer2DModel`` from a local folder (its ``config.json`` and weights).

    Raises:
        FileNotFoundError: if ``path`` is not a folder; nothing is downloaded.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} holds no PixArt transformer (config.json and weights); PixArt-Sigma is published at "
            f"{WEIGHTS_URL}: download it once, e.g. huggingface-cli download PixArt-alpha/PixArt-Sigma-XL-2-512-MS "
            "--include 'transformer/*' --local-dir models/pixart-sigma-512, and pass "
            "models/pixart-sigma-512/transformer"
        )
    return require_diffusers().PixArtTransformer2DModel.from_pretrained(folder, local_files_only=True)
