"""The DiT image model: patchify, a stack of adaLN-Zero transformer blocks, un-patchify.

A conditioning vector ``c = embed(t) + embed(y)`` regresses per-block shift, scale and gate for the attention and
MLP branches, ``x = x + gate * branch(norm(x) * (1 + scale) + shift)``, from a zero-initialised linear layer, so every
block starts as the identity and the zero-initialised final layer makes the untrained model output exactly zero
(DiT, Peebles & Xie, arXiv 2212.09748, Sec. 3.2). Flag-DiT (RMSNorm, QK-norm, RoPE; arXiv 2405.05945, Sec. 2.1)
and LI-DiT (conv position embedding; arXiv 2406.11831, Sec. 3.3) are config switches, see ``STYLES``.
Text enters through cross-attention from the image queries to caption tokens, ungated (PixArt-alpha, arXiv
2310.00426) or with Lumina's zero-initialised tanh gates (``minidit.gating``), plus the pooled caption added to the
time embedding; PixArt-Sigma's KV token compression (``minidit.kv_compression``) shrinks the keys and values of
chosen blocks. Both plug into the block's attention between ``SelfAttention.project`` and ``attend``. PixArt's own
layout is two switches: adaLN-single (``adaln="single"``: one modulation MLP shared by all blocks plus a learned
table per block; PixArt-alpha, Sec. 2.3) and cross-attention as a sub-layer of its own after self-attention
(``cross_attention_layer``), so ``minidit.convert.pixart`` loads diffusers' PixArt weights into this model. LI-DiT's
language-token and collaborative refiners (``minidit.refiner``) refine the text features before they enter.
With ``frames`` the same blocks read any modality as frames ``[H, W, T, C]`` (Lumina-T2X, ``minidit.frames``):
patches packed with ``[nextline]`` / ``[nextframe]`` tokens and 3-D RoPE positions, mixed sizes padded and masked.
Used by notebooks/03_dit_from_scratch.ipynb, 04_flag_dit.ipynb, 05_text_conditioning.ipynb, 07_kv_compression.ipynb
08_llm_text_encoders.ipynb and 09_any_modality.ipynb.

Example:
    >>> model = DiT.from_preset("DiT-S/2", style="Flag-DiT", input_size=16, in_channels=3, num_classes=10)
    >>> v = model(torch.randn(4, 3, 16, 16), torch.rand(4), torch.randint(0, 10, (4,)))   # (4, 3, 16, 16)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from minidit.attention import SelfAttention, merge_heads
from minidit.embeddings import timestep_embedding
from minidit.frames import FrameLayout, FrameTokens, frame_layout, patchify_frames, unpatchify_frames
from minidit.gating import CaptionPooling, CrossAttentionLayer, GatedCrossAttention
from minidit.kv_compression import KV_MODES, KVCompression
from minidit.norms import NORMS, make_norm
from minidit.posembed import INTERPOLATION_MODES, POS_EMBEDS, LearnedPosEmbed, make_pos_embed
from minidit.refiner import REFINERS, make_refiner, text_segments, zero_gates
from minidit.rope import RotaryEmbedding
from minidit.text.conditioning import CaptionEmbedder, check_text
from minidit.validation import check_choice, check_image_and_time, dataclass_from_dict, reads_values

TEXT_CONDITIONINGS = ("none", "cross", "gated_cross")
KV_COMPRESSION_KEYS = ("ratio", "mode", "blocks")
ADALN_KINDS = ("per_block", "single")


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """Cut images ``(N, C, H, W)`` into ``(N, T, p * p * C)`` tokens, ``T = (H / p) * (W / p)`` in row-major order.

    Each token lists its patch's pixels row by row, channels last: index ``(i * p + j) * C + c``.
    """
    n, c, height, width = x.shape
    p = patch_size
    if height % p or width % p:
        raise ValueError(
            f"image size {height}x{width} is not divisible by patch_size {p}; crop or pad to a multiple of {p}"
        )
    h, w = height // p, width // p
    x = x.reshape(n, c, h, p, w, p)  # (N, C, h, p, w, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (N, h, w, p, p, C)
    return x.reshape(n, h * w, p * p * c)  # (N, T, p * p * C)


def unpatchify(tokens: Tensor, grid_shape: Sequence[int], patch_size: int) -> Tensor:
    """Inverse of ``patchify``: ``(N, h * w, p * p * C)`` tokens on an ``(h, w)`` grid -> ``(N, C, h * p, w * p)``."""
    n, _, d = tokens.shape
    h, w = grid_shape
    p = patch_size
    c = d // (p * p)
    x = tokens.reshape(n, h, w, p, p, c)  # (N, h, w, p, p, C)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (N, C, h, p, w, p)
    return x.reshape(n, c, h * p, w * p)  # (N, C, H, W)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with ``x`` (N, T, D) and per-sample ``shift, scale`` (N, D)."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))  # one pass over (N, T, D)


@dataclass
class DiTConfig:
    """Every architectural choice of a DiT, by name. ``out_channels=None`` means ``in_channels``.

    ``num_classes=0`` builds an unconditional model; otherwise label ``num_classes`` is the learned null label
    used for classifier-free guidance and ``class_dropout`` is its training-time probability.
    ``input_size`` is the training image size; the model also runs on other sizes divisible by ``patch_size``.
    ``pos_embed_interpolation_scale`` (``pos_embed="sincos"`` only): ``None`` places tokens at integer positions
    (DiT), a number at PixArt's, stretched onto the training grid and divided by it (``minidit.posembed.sincos_2d``).

    Text: ``text_conditioning`` is ``"none"``, ``"cross"`` (PixArt's plain cross-attention) or ``"gated_cross"``
    (Lumina's zero-initialised tanh gate per head); ``text_dim`` is the width of the text encoder's features,
    ``caption_dropout`` the training-time probability of the null caption, and ``text_pooling`` adds the pooled
    caption to the time embedding. ``kv_compression`` is ``None`` or ``{"ratio": r, "mode": "conv" | "uniform" |
    "average", "blocks": [indices]}`` (mode defaults to ``"conv"``, blocks to all). ``text_refiner`` is ``"none"``,
    ``"token"`` (LI-DiT's language-token refiner of ``refiner_depth`` blocks with ``refiner_heads`` heads, keeping
    the causal mask if ``refiner_causal``) or ``"collaborative"`` (two encoders: the text is two equal-length
    segments, see ``minidit.refiner``). ``cross_attention_layer=True`` runs the cross-attention as PixArt does, a
    sub-layer of its own after self-attention (own query and output projections, no caption norm) instead of a
    branch that shares the self-attention's query and output projection.

    Conditioning: ``adaln="per_block"`` gives each block its own modulation MLP (DiT's adaLN-Zero); ``"single"`` is
    PixArt's adaLN-single: one MLP of the conditioning shared by every block plus a learned ``(6, D)`` table per
    block, and the final layer's shift and scale are a learned ``(2, D)`` table plus the conditioning itself.

    Frames: ``frames=True`` makes the model read ``(N, H, W, T, C)`` frames packed by ``minidit.frames`` (needs
    ``rope=True`` for the 3-D positions, ``pos_embed="none"`` and no ``kv_compression``).
    """

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    out_channels: int | None = None
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 0
    class_dropout: float = 0.1
    norm: str = "layernorm"
    qk_norm: str | None = None
    qkv_bias: bool = True
    pos_embed: str = "sincos"
    pos_embed_interpolation: str = "bicubic"
    pos_embed_interpolation_scale: float | None = None
    rope: bool = False
    rope_theta: float = 10000.0
    ntk_scale: float = 1.0
    frequency_embedding_size: int = 256
    adaln: str = "per_block"
    text_conditioning: str = "none"
    text_dim: int = 0
    caption_dropout: float = 0.1
    text_pooling: bool = True
    cross_attention_layer: bool = False
    kv_compression: dict[str, Any] | None = None
    text_refiner: str = "none"
    refiner_depth: int = 2
    refiner_heads: int = 4
    refiner_causal: bool = False
    frames: bool = False

    def __post_init__(self):
        if self.out_channels is None:
            self.out_channels = self.in_channels
        check_choice("norm", self.norm, NORMS)
        if self.qk_norm is not None:
            check_choice("qk_norm", self.qk_norm, NORMS)
        check_choice("pos_embed", self.pos_embed, POS_EMBEDS)
        check_choice("interpolation mode", self.pos_embed_interpolation, INTERPOLATION_MODES)
        if self.pos_embed_interpolation_scale is not None and (
                self.pos_embed != "sincos" or not self.pos_embed_interpolation_scale > 0):
            raise ValueError("pos_embed_interpolation_scale sets PixArt's sin-cos positions: it needs pos_embed = "
                             f"'sincos' and a positive number; got pos_embed={self.pos_embed!r}, "
                             f"pos_embed_interpolation_scale={self.pos_embed_interpolation_scale!r}")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} must be divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.class_dropout <= 1.0:
            raise ValueError(f"class_dropout is a probability in [0, 1]; got {self.class_dropout}")
        check_choice("text_conditioning", self.text_conditioning, TEXT_CONDITIONINGS)
        check_choice("adaln", self.adaln, ADALN_KINDS)
        if self.cross_attention_layer and self.text_conditioning == "none":
            raise ValueError("cross_attention_layer = true runs PixArt's cross-attention to the caption: set "
                             "text_conditioning to 'cross' (or 'gated_cross') and text_dim")
        if self.text_conditioning != "none" and self.text_dim < 1:
            raise ValueError(f"text_conditioning = {self.text_conditioning!r} needs text_dim, the width of the text "
                             "encoder's features (e.g. text_dim = 128)")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout is a probability in [0, 1]; got {self.caption_dropout}")
        if self.kv_compression is not None:
            self.kv_compression = check_kv_compression(self.kv_compression, self.depth)
        check_choice("text_refiner", self.text_refiner, REFINERS)
        if self.text_refiner != "none":
            if self.text_conditioning == "none":
                raise ValueError(f"text_refiner = {self.text_refiner!r} refines text features: set text_conditioning "
                                 "to 'cross' or 'gated_cross' (and text_dim)")
            if self.refiner_depth < 1 or self.text_dim % self.refiner_heads:
                raise ValueError(f"the refiner needs refiner_depth >= 1 and text_dim ({self.text_dim}) divisible by "
                                 f"refiner_heads; got refiner_depth {self.refiner_depth}, refiner_heads {self.refiner_heads}")
        if self.frames and (not self.rope or self.pos_embed != "none" or self.kv_compression is not None):
            raise ValueError("frames = true places tokens by 3-D RoPE: set rope = true and pos_embed = 'none', and "
                             f"leave kv_compression unset; got rope={self.rope}, pos_embed={self.pos_embed!r}, "
                             f"kv_compression={self.kv_compression}")

    def compresses(self, block: int) -> bool:
        """Whether block ``block`` compresses its keys and values."""
        return self.kv_compression is not None and block in self.kv_compression["blocks"]

    @property
    def grid_size(self) -> int:
        """Tokens per side at the training size."""
        return self.input_size // self.patch_size

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DiTConfig:
        """Build a config from a dict, rejecting misspelt keys (``minidit.validation.dataclass_from_dict``)."""
        return dataclass_from_dict(cls, values)


def check_kv_compression(settings: dict[str, Any], depth: int) -> dict[str, Any]:
    """Complete ``{"ratio": r, "mode": ..., "blocks": [...]}`` with its defaults (mode ``"conv"``, every block).

    Raises:
        ValueError: for an unknown key, a ratio below 2, an unknown mode or a block index outside ``[0, depth)``.
    """
    unknown = sorted(set(settings) - set(KV_COMPRESSION_KEYS))
    if unknown:
        raise ValueError(f"unknown kv_compression keys {unknown}; valid keys are: {', '.join(KV_COMPRESSION_KEYS)}")
    ratio = settings.get("ratio")
    if not isinstance(ratio, int) or ratio < 2:
        raise ValueError(f"kv_compression needs an integer ratio >= 2 (keys and values shrink by ratio^2); got {ratio!r}")
    mode = settings.get("mode", "conv")
    check_choice("kv_compression mode", mode, KV_MODES)
    blocks = sorted(settings.get("blocks", range(depth)))
    outside = [b for b in blocks if not 0 <= b < depth]
    if outside:
        raise ValueError(f"kv_compression blocks {outside} do not exist; a depth-{depth} model has blocks 0..{depth - 1}")
    return {"ratio": ratio, "mode": mode, "blocks": blocks}


def transformer_mlp(dim: int, mlp_ratio: float) -> nn.Sequential:
    """DiT's MLP: Linear ``D -> mlp_ratio * D``, tanh-GELU, Linear back to ``D``."""
    hidden = int(dim * mlp_ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class TimestepEmbedder(nn.Module):
    """Time ``t`` (N,) in [0, 1] -> sin-cos features -> two-layer MLP -> ``(N, D)``."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: Tensor) -> Tensor:
        """``t`` of shape ``(N,)`` -> ``(N, D)``."""
        features = timestep_embedding(t, self.frequency_embedding_size)  # (N, 256)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels ``y`` (N,) -> ``(N, D)``; row ``num_classes`` of the table is the null label for CFG.

    In training mode each label is replaced by the null label with probability ``dropout_prob``; ``force_drop``
    (bool, (N,)) overrides that choice in any mode, e.g. to build the unconditional half of a CFG batch.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def drop_labels(self, y: Tensor, force_drop: Tensor | None = None) -> Tensor:
        """Replace dropped labels by the null label ``num_classes``; returns ``(N,)``."""
        drop = torch.rand(y.shape, device=y.device) < self.dropout_prob if force_drop is None else force_drop
        return torch.where(drop, self.num_classes, y)

    def forward(self, y: Tensor, force_drop: Tensor | None = None) -> Tensor:
        """``y`` (N,) long -> ``(N, D)``."""
        if force_drop is not None or (self.training and self.dropout_prob > 0):
            y = self.drop_labels(y, force_drop)
        return self.embedding_table(y)


class ModulationTable(nn.Module):
    """adaLN-single's per-layer part: a learned table of ``count`` rows (shift, scale, gate, ...) added to the shared
    modulation (PixArt-alpha, arXiv 2310.00426, Sec. 2.3); zero-initialised by the model, like adaLN-Zero.

    ``forward`` takes the shared ``(N, count * D)`` modulation, or the ``(N, D)`` conditioning itself (added to each
    row, PixArt's final layer), and returns ``(N, count * D)``, laid out like a modulation MLP's output.
    """

    def __init__(self, dim: int, count: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(count, dim))  # (count, D)

    def forward(self, c: Tensor) -> Tensor:
        """``c`` (N, count * D) or (N, D) -> ``(N, count * D)``."""
        n, d = c.shape[0], self.table.shape[1]
        return (c.view(n, -1, d) + self.table).flatten(1)  # (N, count, D) -> (N, count * D)


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero conditioning, built from a ``DiTConfig``.

    Extension point: new branches (gated text cross-attention, KV compression, a joint-attention twin) are
    optional sub-modules created here from config fields; ``forward`` receives the token ``grid_shape``
    so grid-aware attention (RoPE, KV compression over (h, w)) needs no change to the model loop.
    """

    def __init__(self, config: DiTConfig, rope: RotaryEmbedding | None = None, index: int = 0):
        super().__init__()
        dim = config.hidden_size
        self.norm1 = make_norm(config.norm, dim, affine=False)
        self.attn = SelfAttention(dim, config.num_heads, config.qk_norm, config.qkv_bias, rope)
        self.kv_compression = (
            KVCompression(dim, config.kv_compression["ratio"], config.kv_compression["mode"])
            if config.compresses(index) else None
        )
        text, gated = config.text_conditioning != "none", config.text_conditioning == "gated_cross"
        self.cross_attn = (
            GatedCrossAttention(dim, config.num_heads, config.qk_norm, gated=gated)
            if text and not config.cross_attention_layer else None
        )
        self.cross_attention_layer = (
            CrossAttentionLayer(dim, config.num_heads, config.qk_norm, gated) if text and config.cross_attention_layer
            else None
        )
        self.norm2 = make_norm(config.norm, dim, affine=False)
        self.mlp = transformer_mlp(dim, config.mlp_ratio)
        self.modulation = (  # zero-initialised: identity block
            ModulationTable(dim, 6) if config.adaln == "single" else nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        )

    def attention(self, x: Tensor, grid_shape: Sequence[int] | None, attn_mask: Tensor | None,
                  text: Tensor | None, text_mask: Tensor | None) -> Tensor:
        """Self-attention of ``x`` (N, T, D), with K and V compressed and the text branch added when configured."""
        q, k, v = self.attn.project(x, grid_shape)  # (N, H, T, Dh) each
        if self.kv_compression is not None:
            k, v = self.kv_compression(k, v, grid_shape)  # (N, H, T / r^2, Dh)
        out = self.attn.attend(q, k, v, attn_mask)  # (N, H, T, Dh)
        if self.cross_attn is not None:
            out = self.cross_attn(q, text, text_mask, out)  # + gated cross-attention to the caption
        return self.attn.proj(merge_heads(out))  # (N, T, D)

    def forward(
        self, x: Tensor, c: Tensor, grid_shape: Sequence[int] | None = None, attn_mask: Tensor | None = None,
        text: Tensor | None = None, text_mask: Tensor | None = None,
    ) -> Tensor:
        """Tokens ``x`` (N, T, D) conditioned on ``c`` (N, D) (and caption tokens ``text`` (N, L, D)) -> ``(N, T, D)``.

        With adaLN-single ``c`` is the shared modulation ``(N, 6 D)`` that the model computes once for all blocks.
        """
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = self.modulation(c).chunk(6, dim=-1)
        h = modulate(self.norm1(x), shift_attn, scale_attn)
        attn_out = self.attention(h, grid_shape, attn_mask, text, text_mask)  # (N, T, D)
        x = torch.addcmul(x, gate_attn.unsqueeze(1), attn_out)  # x + gate * attn_out
        if self.cross_attention_layer is not None:
            x = x + self.cross_attention_layer(x, text, text_mask)  # PixArt: ungated, no norm before it
        mlp_out = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (N, T, D)
        return torch.addcmul(x, gate_mlp.unsqueeze(1), mlp_out)  # x + gate * mlp_out


class FinalLayer(nn.Module):
    """adaLN-modulated norm then a linear map from ``D`` to one patch of pixels, ``p * p * out_channels``.

    ``adaln="single"``: shift and scale are PixArt's learned ``(2, D)`` table plus the conditioning, no MLP.
    """

    def __init__(self, config: DiTConfig, adaln: str = "per_block"):
        super().__init__()
        dim, p = config.hidden_size, config.patch_size
        self.norm = make_norm(config.norm, dim, affine=False)
        self.linear = nn.Linear(dim, p * p * config.out_channels)
        self.modulation = (
            ModulationTable(dim, 2) if adaln == "single" else nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        )

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """``x`` (N, T, D), ``c`` (N, D) -> ``(N, T, p * p * out_channels)``."""
        shift, scale = self.modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def init_dit_weights(model: nn.Module, modulations: Sequence[nn.Module]) -> None:
    """DiT's initialisation of a model with ``pos_embed``, ``t_embedder`` and ``final_layer`` (DiT, MM-DiT).

    Linear layers xavier-uniform with zero bias, a learned position table and the time MLP N(0, 0.02), and
    adaLN-Zero: the last linear of every ``modulations`` and of the final layer's (or adaLN-single's tables), and
    the final linear, set to 0, so every block starts as the identity and the output is exactly zero.
    ``ConvPosEmbed`` keeps PyTorch's default conv init; norms start at weight 1, bias 0.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    if isinstance(model.pos_embed, LearnedPosEmbed):
        nn.init.normal_(model.pos_embed.table, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[2].weight, std=0.02)
    for modulation in [*modulations, model.final_layer.modulation]:
        last = modulation[-1] if isinstance(modulation, nn.Sequential) else modulation  # a linear, or a table
        for weight in last.parameters():
            nn.init.zeros_(weight)  # adaLN-Zero: shift = scale = gate = 0
    nn.init.zeros_(model.final_layer.linear.weight)
    nn.init.zeros_(model.final_layer.linear.bias)


class DiT(nn.Module):
    """Diffusion transformer ``model(x (N, C, H, W), t (N,), y (N,)) -> (N, out_channels, H, W)``.

    ``H`` and ``W`` may differ from ``config.input_size`` (any multiple of ``patch_size``): the sin-cos table is
    recomputed, a learned table interpolated, and RoPE / conv position embeddings work on any grid.
    For NTK-aware RoPE extrapolation set ``model.rope.ntk_scale`` at inference.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        dim, p = config.hidden_size, config.patch_size
        self.patch_embedder = nn.Linear(p * p * config.in_channels, dim)
        self.pos_embed = make_pos_embed(
            config.pos_embed, dim, (config.grid_size, config.grid_size), config.pos_embed_interpolation,
            config.pos_embed_interpolation_scale,
        )
        head_dim = dim // config.num_heads
        self.rope = RotaryEmbedding(head_dim, config.rope_theta, config.ntk_scale) if config.rope else None
        self.t_embedder = TimestepEmbedder(dim, config.frequency_embedding_size)
        self.shared_modulation = (  # adaLN-single: one modulation MLP for every block
            nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim)) if config.adaln == "single" else None
        )
        self.y_embedder = (
            LabelEmbedder(config.num_classes, dim, config.class_dropout) if config.num_classes > 0 else None
        )
        text = config.text_conditioning != "none"
        self.caption_embedder = CaptionEmbedder(config.text_dim, dim, config.caption_dropout) if text else None
        self.caption_pooling = CaptionPooling(config.text_dim, dim) if text and config.text_pooling else None
        self.text_refiner = make_refiner(config.text_refiner, config.text_dim, dim, config.refiner_depth,
                                         config.refiner_heads, config.refiner_causal)
        self.frame_tokens = FrameTokens(dim) if config.frames else None
        self.blocks = nn.ModuleList([DiTBlock(config, self.rope, index) for index in range(config.depth)])
        self.final_layer = FinalLayer(config, config.adaln)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation; the zero-inits make every block the identity and the output exactly zero."""
        shared = [self.shared_modulation] if self.shared_modulation is not None else []
        init_dit_weights(self, [block.modulation for block in self.blocks] + shared)
        for block in self.blocks:
            if block.cross_attention_layer is not None:  # PixArt's init: the caption starts switched off
                nn.init.zeros_(block.cross_attention_layer.proj.weight)
                nn.init.zeros_(block.cross_attention_layer.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        if self.caption_embedder is not None:
            nn.init.normal_(self.caption_embedder.null_caption, std=0.02)
        if self.caption_pooling is not None:
            nn.init.zeros_(self.caption_pooling.linear.weight)  # the pooled caption starts switched off
        if self.text_refiner is not None:
            zero_gates(self.text_refiner)  # the refiner starts as the identity
        if self.frame_tokens is not None:
            nn.init.normal_(self.frame_tokens.nextline, std=0.02)
            nn.init.normal_(self.frame_tokens.nextframe, std=0.02)

    @property
    def condition_dropout(self) -> float:
        """Training-time probability of the null label or caption (classifier-free guidance), or 0 without either;
        ``minidit.train.Trainer`` draws ``force_drop`` with it for the whole batch (see ``minidit.distributed``)."""
        if self.caption_embedder is not None:
            return self.caption_embedder.dropout_prob
        return self.y_embedder.dropout_prob if self.y_embedder is not None else 0.0

    def check_inputs(self, x: Tensor, t: Tensor, y: Tensor | None, text: Tensor | None = None,
                     text_mask: Tensor | None = None) -> tuple[int, int] | None:
        """Raise a ``ValueError`` naming the problem for badly shaped inputs; return the token grid ``(h, w)`` (or
        ``None`` for frames, whose layout ``frame_layout`` checks).

        The value checks ``0 <= t <= 1`` and ``0 <= y <= num_classes`` need a device sync, so they run eagerly
        but are skipped under ``torch.compile``.
        """
        cfg = self.config
        check_image_and_time(x, t, cfg.in_channels, frames=cfg.frames)
        if self.y_embedder is None and y is not None:
            raise ValueError("this model is unconditional (num_classes=0); call it without y")
        if self.y_embedder is not None:
            null = f"label {cfg.num_classes} is the null label, for unconditional output"
            if y is None or y.shape != (x.shape[0],) or y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
                raise ValueError(
                    f"class-conditional model: y must be an integer (long) tensor of shape (N,) = ({x.shape[0]},) "
                    f"with labels in [0, {cfg.num_classes}]; {null}"
                )
            if reads_values(y):
                outside = (y < 0) | (y > cfg.num_classes)
                if bool(outside.any()):
                    raise ValueError(
                        f"class labels must lie in [0, {cfg.num_classes}] ({null}); got values such as {y[outside][:3].tolist()}"
                    )
        if self.caption_embedder is None and (text is not None or text_mask is not None):
            raise ValueError("this model has no text input (text_conditioning = 'none'); call it without text, or "
                             "build it with text_conditioning = 'cross' or 'gated_cross'")
        if self.caption_embedder is not None:
            check_text(text, text_mask, x.shape[0], cfg.text_dim, text_segments(cfg.text_refiner))
        if cfg.frames:
            return None
        return x.shape[2] // cfg.patch_size, x.shape[3] // cfg.patch_size  # patchify checks divisibility

    def frame_layout(self, x: Tensor, frame_sizes: Tensor | None) -> FrameLayout:
        """The packed layout of frames ``x`` (N, H, W, T, C), each sample ``frame_sizes[i] = (H_i, W_i, T_i)`` in the
        top-left-first corner of the padded tensor (``None``: every sample fills ``x``).

        Raises:
            ValueError: for sizes that are not ``(N, 3)`` integers, exceed ``x``, or are not multiples of ``patch_size``.
        """
        n, height, width, frames, _ = x.shape
        p = self.config.patch_size
        if frame_sizes is None:
            sizes = [(height, width, frames)] * n
        else:
            if frame_sizes.shape != (n, 3) or frame_sizes.is_floating_point():
                raise ValueError(f"frame_sizes must be integers of shape (N, 3) = ({n}, 3), one (H, W, T) per sample; "
                                 f"got {frame_sizes.dtype} of shape {tuple(frame_sizes.shape)}")
            sizes = [tuple(size) for size in frame_sizes.tolist()]
        bad = [s for s in sizes if not (0 < s[0] <= height and 0 < s[1] <= width and 0 < s[2] <= frames)
               or s[0] % p or s[1] % p]
        if bad:
            raise ValueError(f"frame_sizes {bad[:3]} do not fit x of size (H, W, T) = {(height, width, frames)}: each "
                             f"(H, W, T) must be positive, at most x's, with H and W multiples of patch_size {p}")
        return frame_layout([(s[2], s[0] // p, s[1] // p) for s in sizes], x.device, (frames, height // p, width // p))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, force_drop: Tensor | None = None,
                text: Tensor | None = None, text_mask: Tensor | None = None,
                frame_sizes: Tensor | None = None) -> Tensor:
        """Predict ``(N, out_channels, H, W)`` from noisy images ``x`` (N, C, H, W) at times ``t`` (N,).

        Args:
            x: images or latents; ``H`` and ``W`` divisible by ``patch_size``. A frames model (``config.frames``)
                takes ``(N, H, W, T, C)`` and returns ``(N, H, W, T, out_channels)``.
            t: times in [0, 1], shape ``(N,)`` (t = 0 data, t = 1 noise).
            y: class labels ``(N,)`` long, required iff ``num_classes > 0``; label ``num_classes`` is the null label.
            force_drop: optional bool ``(N,)``; ``True`` replaces that sample's label (or caption) by the null one.
            text: caption features ``(N, L, text_dim)`` from a text encoder, required iff ``text_conditioning`` is set.
            text_mask: ``(N, L)`` bool, True for real tokens; padding never changes the output.
            frame_sizes: frames models only: ``(N, 3)`` long, sample ``i`` is ``x[i, :H_i, :W_i, :T_i]`` for a batch of
                mixed sizes padded to ``x``; the output is zero outside. ``None``: every sample fills ``x``.
        """
        p = self.config.patch_size
        grid_shape, attn_mask, layout = self.check_inputs(x, t, y, text, text_mask), None, None
        if self.frame_tokens is not None:
            layout = self.frame_layout(x, frame_sizes)
            tokens = self.frame_tokens.pack(self.patch_embedder(patchify_frames(x, p)), layout)  # (N, L, D)
            grid_shape, attn_mask = layout.positions, layout.attention_mask  # (N, L, 3), (N, 1, 1, L)
        elif frame_sizes is not None:
            raise ValueError("frame_sizes is for frames models (frames = true); call this image model without it")
        else:
            tokens = self.patch_embedder(patchify(x, p))  # (N, T, D)
        if self.pos_embed is not None:
            tokens = self.pos_embed(tokens, grid_shape)  # (N, T, D)
        c = self.t_embedder(t)  # (N, D)
        if self.text_refiner is not None:
            text = self.text_refiner(text, text_mask, c)  # (N, L, Dt), refined at this timestep
        if self.y_embedder is not None:
            c = c + self.y_embedder(y, force_drop)  # (N, D)
        caption = None
        if self.caption_embedder is not None:
            caption = self.caption_embedder(text, text_mask, force_drop)  # tokens (N, L, D), mask (N, L), pooled
            if self.caption_pooling is not None:
                c = c + self.caption_pooling(caption.pooled)  # (N, D)
        block_c = c if self.shared_modulation is None else self.shared_modulation(c)  # (N, D) or (N, 6 D)
        for block in self.blocks:
            if caption is None:
                tokens = block(tokens, block_c, grid_shape, attn_mask)  # (N, T, D)
            else:
                tokens = block(tokens, block_c, grid_shape, attn_mask, text=caption.tokens, text_mask=caption.mask)
        out = self.final_layer(tokens, c)  # (N, T, p * p * out_channels)
        if layout is not None:
            out = self.frame_tokens.unpack(out, layout)  # (N, t h w, p p C) on the padded grid
            return unpatchify_frames(out, layout.padded_grid, p)  # (N, H, W, T, out_channels)
        return unpatchify(out, grid_shape, p)  # (N, out_channels, H, W)

    @classmethod
    def from_preset(cls, name: str, style: str = "DiT", **overrides: Any) -> DiT:
        """Build a model from a size preset (e.g. ``"DiT-XL/2"``) and an architecture style.

        Args:
            name: one of ``PRESETS``: ``DiT-{S,B,L,XL}/{2,4,8}`` (size / patch size).
            style: one of ``STYLES``: ``"DiT"``, ``"Flag-DiT"`` or ``"LI-DiT"``.
            **overrides: any ``DiTConfig`` field, e.g. ``input_size=32, in_channels=4, num_classes=1000``.
        """
        check_choice("preset", name, PRESETS)
        check_choice("style", style, STYLES)
        return cls(DiTConfig.from_dict({**PRESETS[name], **STYLES[style], **overrides}))


# Presets: (depth, hidden_size, num_heads) per size (DiT Table 1), crossed with patch sizes 2, 4, 8.
MODEL_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
PRESETS = {
    f"DiT-{size}/{patch}": dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch)
    for size, (depth, hidden, heads) in MODEL_SIZES.items()
    for patch in (2, 4, 8)
}
# Architecture styles: switches in the config, same block code.
STYLES = {
    "DiT": {},
    "Flag-DiT": dict(norm="rmsnorm", qk_norm="rmsnorm", rope=True, pos_embed="none"),
    "LI-DiT": dict(pos_embed="conv", qk_norm="rmsnorm"),
}
