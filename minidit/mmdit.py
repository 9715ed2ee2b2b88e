"""MM-DiT: image and text tokens keep separate weights but attend jointly, one softmax over both (SD3).

Each block holds two sets of weights, one per modality (q/k/v, QK-norm, adaLN-Zero modulation, MLP, output
projection), and one attention over the concatenated sequence (SD3, Esser et al., arXiv 2403.03206, Sec. 4 and
Fig. 2). With image tokens ``x`` (T of them) and text tokens ``c`` (L of them) each projected by its own weights,

    Q = [Q_x; Q_c],  K = [K_x; K_c],  V = [V_x; V_c]          (concatenated along the sequence, order [image, text])
    [O_x; O_c] = softmax(Q K^T / sqrt(Dh) + M) V,   M_ij = -inf where key j is a padded text token, else 0,

and ``O`` is split back by length, each part through its own stream's output projection. Every image token reads
the text and every text token reads the image in the same softmax, so the text is updated by the image as it goes
(with cross-attention it stays fixed). The order [image, text] is diffusers'; attention without positions is
permutation-equivariant, so the order does not change the result, only where the split falls. The conditioning
vector is ``c_vec = t_emb + MLP(pooled text)`` (Linear, SiLU, Linear) and drives every adaLN. The last block is
``context_pre_only``: its text stream only supplies keys and values (shift/scale modulation of the attention input,
no output projection, no MLP) and the model drops the text stream after it. Size by depth ``d``: hidden ``64 d``,
``d`` heads, MLP ratio 4 (SD3 Sec. 4; papers.md section 3). Used by notebooks/06_mmdit.ipynb and
exercises/12_joint_attention.ipynb.

Against diffusers (``models/attention.py::JointTransformerBlock``, ``attention_processor.py::JointAttnProcessor2_0``,
``transformers/transformer_sd3.py``): the same [image, text] order, 6-way adaLN-Zero per stream and 2-way for the
text of the last block, which like diffusers still computes text queries and discards their outputs (so every
parameter of the packed q/k/v projection and of QK-norm stays in the graph). Different here: a key padding mask
keeps padded text out of every softmax (diffusers' joint processor calls SDPA without a mask, so padding is
attended); the pooled vector is the masked mean of the text features (SD3: CLIP's pooled outputs); the text tokens
enter through ``CaptionEmbedder``'s two-layer MLP (diffusers: one linear ``context_embedder``) and classifier-free
guidance uses its learned null caption instead of the encoding of the empty prompt; the patch embedding is
``patchify`` + linear with any ``pos_embed`` of the DiT. Three switches express SD3 exactly (``minidit.convert.sd3``
converts the weights both ways): ``pooled_dim`` (SD3's text inputs: a separate pooled vector, one linear
``context_embedder``, no null caption), ``pos_embed_max_size`` (SD3's sin-cos table of a large grid, cropped at its
centre) and ``dual_attention_blocks`` (SD3.5's MMDiT-X blocks: a second, image-only self-attention). Against
cloneofsimo/minRF ``advanced/mmdit.py``: no register tokens, the order [image, text] (minRF: [text, image]) and
DiT's plain adaLN-Zero residual wiring.

Example:
    >>> model = MMDiT.from_depth(2, input_size=16, in_channels=3, text_dim=32)
    >>> text, text_mask = torch.randn(4, 7, 32), torch.ones(4, 7, dtype=torch.bool)
    >>> v = model(torch.randn(4, 3, 16, 16), torch.rand(4), text, text_mask)     # (4, 3, 16, 16)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from minidit.attention import SelfAttention, merge_heads
from minidit.dit import (FinalLayer, TimestepEmbedder, init_dit_weights, modulate, patchify, transformer_mlp,
                         unpatchify)
from minidit.norms import NORMS, make_norm
from minidit.posembed import INTERPOLATION_MODES, POS_EMBEDS, make_pos_embed, sincos_grid
from minidit.text.conditioning import CaptionEmbedder, CaptionEmbedding, check_text
from minidit.validation import check_choice, check_image_and_time, dataclass_from_dict


@dataclass
class MMDiTConfig:
    """Every architectural choice of an MM-DiT, by name.

    ``hidden_size=None`` means ``64 * depth`` and ``num_heads=None`` means ``depth`` (SD3's sizing, head width 64);
    ``out_channels=None`` means ``in_channels``. ``text_dim`` is the width of the text encoder's features and
    ``caption_dropout`` the training-time probability of replacing a caption by the learned null caption (CFG).

    SD3 switches (``None`` / ``()``: minidit's choices): ``pooled_dim`` gives the model SD3's text inputs, a pooled
    vector ``pooled (N, pooled_dim)`` of its own (SD3: the CLIP encoders' pooled outputs) instead of the masked mean,
    and the tokens through one linear layer (SD3's ``context_embedder``) instead of ``CaptionEmbedder``, with no
    learned null caption (SD3 guides with the encoding of the empty prompt, so ``caption_dropout`` must be 0).
    ``pos_embed_max_size`` replaces the sin-cos table by SD3's: a table of ``pos_embed_max_size`` positions per
    side, scaled by ``grid_size / pos_embed_max_size``, cropped at its centre to the image's grid (see
    ``cropped_sincos_2d``). ``dual_attention_blocks`` lists SD3.5's MMDiT-X blocks, which add a second self-attention
    over the image tokens alone, with its own shift, scale and gate (a 9-way adaLN-Zero).
    """

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    out_channels: int | None = None
    depth: int = 4
    hidden_size: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    text_dim: int = 128
    qk_norm: str | None = "rmsnorm"
    caption_dropout: float = 0.1
    norm: str = "layernorm"
    pos_embed: str = "sincos"
    pos_embed_interpolation: str = "bicubic"
    frequency_embedding_size: int = 256
    pooled_dim: int | None = None
    pos_embed_max_size: int | None = None
    dual_attention_blocks: tuple[int, ...] = ()

    def __post_init__(self):
        if self.depth < 1:
            raise ValueError(f"depth must be at least 1 (the last block is context_pre_only); got {self.depth}")
        if self.hidden_size is None:
            self.hidden_size = 64 * self.depth
        if self.num_heads is None:
            self.num_heads = self.depth
        if self.out_channels is None:
            self.out_channels = self.in_channels
        check_choice("norm", self.norm, NORMS)
        if self.qk_norm is not None:
            check_choice("qk_norm", self.qk_norm, NORMS)
        check_choice("pos_embed", self.pos_embed, POS_EMBEDS)
        check_choice("interpolation mode", self.pos_embed_interpolation, INTERPOLATION_MODES)
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} must be divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if self.text_dim < 1:
            raise ValueError(f"text_dim is the text encoder's feature width, a positive integer; got {self.text_dim}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout is a probability in [0, 1]; got {self.caption_dropout}")
        if self.pooled_dim is not None and (self.pooled_dim < 1 or self.caption_dropout):
            raise ValueError("pooled_dim (SD3's text inputs) must be a positive width and has no learned null caption "
                             f"to drop to: set caption_dropout = 0; got pooled_dim {self.pooled_dim}, "
                             f"caption_dropout {self.caption_dropout}")
        max_size = self.pos_embed_max_size
        if max_size is not None and (self.pos_embed != "sincos" or max_size < self.grid_size):
            raise ValueError(f"pos_embed_max_size crops SD3's sin-cos table: it needs pos_embed = 'sincos' and at "
                             f"least grid_size = {self.grid_size} positions; got pos_embed {self.pos_embed!r}, "
                             f"pos_embed_max_size {max_size}")
        self.dual_attention_blocks = tuple(sorted(self.dual_attention_blocks))
        outside = [b for b in self.dual_attention_blocks if not 0 <= b < self.depth]
        if outside:
            raise ValueError(f"dual_attention_blocks {outside} do not exist; a depth-{self.depth} model has blocks "
                             f"0..{self.depth - 1}")

    @property
    def grid_size(self) -> int:
        """Tokens per side at the training size."""
        return self.input_size // self.patch_size

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MMDiTConfig:
        """Build a config from a dict, rejecting misspelt keys (``minidit.validation.dataclass_from_dict``)."""
        return dataclass_from_dict(cls, values)


def cropped_sincos_2d(dim: int, grid_shape: Sequence[int], max_size: int, base_size: int,
                      device: torch.device | str | None = None) -> Tensor:
    """SD3's position table: ``sincos_2d``'s layout on a ``max_size`` x ``max_size`` grid whose positions are scaled
    to ``i * base_size / max_size``, cropped at its centre to ``grid_shape`` (diffusers' ``PatchEmbed`` with
    ``pos_embed_max_size``; ``base_size`` is the training grid, ``grid_size``).

    Args:
        dim: embedding width, divisible by 4.
        grid_shape: ``(h, w)`` token grid, each at most ``max_size``; tokens flattened row-major like ``patchify``.
    Returns:
        Shape ``(h * w, dim)``: the first ``dim / 2`` channels encode the column, the rest the row.
    Raises:
        ValueError: if the grid is larger than the table.
    """
    h, w = grid_shape
    if h > max_size or w > max_size:
        raise ValueError(f"a {h}x{w} token grid does not fit SD3's {max_size}x{max_size} position table "
                         f"(pos_embed_max_size); use images of at most {max_size} patches per side")
    positions = torch.arange(max_size, device=device, dtype=torch.float32) / (max_size / base_size)  # (max_size,)
    top, left = (max_size - h) // 2, (max_size - w) // 2
    return sincos_grid(dim, positions[top:top + h], positions[left:left + w])


class CroppedSinCosPosEmbed(nn.Module):
    """Adds ``cropped_sincos_2d`` for whatever grid arrives (no parameters): SD3's position embedding."""

    def __init__(self, dim: int, max_size: int, base_size: int):
        super().__init__()
        self.dim, self.max_size, self.base_size = dim, max_size, base_size

    def forward(self, x: Tensor, grid_shape: Sequence[int]) -> Tensor:
        """``x`` of shape ``(N, h * w, D)`` plus the cropped table; same shape."""
        table = cropped_sincos_2d(self.dim, grid_shape, self.max_size, self.base_size, device=x.device)
        return x + table.to(x.dtype)


def joint_key_mask(num_image_tokens: int, text_mask: Tensor) -> Tensor:
    """Boolean key mask ``(N, 1, 1, T + L)`` for the sequence [image, text]: ``True`` = may be attended.

    Image keys are always visible, text keys where ``text_mask`` (N, L) is ``True``; the mask broadcasts over
    heads and queries, so no row is ever fully masked.
    """
    image = text_mask.new_ones(text_mask.shape[0], num_image_tokens)  # (N, T)
    return torch.cat([image, text_mask], dim=1)[:, None, None, :]  # (N, 1, 1, T + L)


def joint_attention(
    image_attn: SelfAttention, text_attn: SelfAttention, x: Tensor, context: Tensor, text_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """One softmax over [image, text]: each stream projects with its own weights, SDPA runs once, split by length.

    Args:
        image_attn: projections (q/k/v, QK-norm) of the image stream; its ``attend`` runs the joint SDPA.
        text_attn: projections of the text stream.
        x: image tokens ``(N, T, D)``, already normalised and modulated.
        context: text tokens ``(N, L, D)``, already normalised and modulated.
        text_mask: ``(N, L)`` bool, ``True`` for real tokens; padded text keys are never attended.
    Returns:
        Per-stream attention outputs before the output projections, ``(N, T, D)`` and ``(N, L, D)``.
    """
    q_x, k_x, v_x = image_attn.project(x)  # (N, H, T, Dh) each
    q_c, k_c, v_c = text_attn.project(context)  # (N, H, L, Dh) each
    q, k, v = (torch.cat(pair, dim=2) for pair in ((q_x, q_c), (k_x, k_c), (v_x, v_c)))  # (N, H, T + L, Dh)
    out = image_attn.attend(q, k, v, joint_key_mask(x.shape[1], text_mask))  # (N, H, T + L, Dh)
    out_x, out_c = out.split([x.shape[1], context.shape[1]], dim=2)
    return merge_heads(out_x), merge_heads(out_c)  # (N, T, D), (N, L, D)


class MMDiTBlock(nn.Module):
    """SD3's joint block: separate weights per stream, one joint attention, adaLN-Zero on both streams.

    Args:
        config: the model's ``MMDiTConfig``.
        context_pre_only: the last block: the text stream gets only shift/scale for its attention input and has
            no output projection and no MLP; ``forward`` then returns ``None`` for the text.
        dual_attention: SD3.5's MMDiT-X block: after the joint attention, the image tokens also attend to themselves
            (``attn2``, from the same norm with its own shift and scale, gated), so the image stream's adaLN is 9-way.
    """

    def __init__(self, config: MMDiTConfig, context_pre_only: bool = False, dual_attention: bool = False):
        super().__init__()
        dim = config.hidden_size
        self.context_pre_only = context_pre_only
        # Image stream: the DiT block's layers.
        self.norm1 = make_norm(config.norm, dim, affine=False)
        self.attn = SelfAttention(dim, config.num_heads, config.qk_norm)
        self.attn2 = SelfAttention(dim, config.num_heads, config.qk_norm) if dual_attention else None
        self.norm2 = make_norm(config.norm, dim, affine=False)
        self.mlp = transformer_mlp(dim, config.mlp_ratio)
        ways = 9 if dual_attention else 6  # shift, scale, gate of attention and MLP (and of attn2)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, ways * dim))  # zero-initialised: identity block
        # Text stream: its own copies.
        self.context_norm1 = make_norm(config.norm, dim, affine=False)
        self.context_attn = SelfAttention(dim, config.num_heads, config.qk_norm)
        if context_pre_only:
            self.context_attn.proj = None  # the text output of this block is dropped: no output projection
            self.context_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))  # shift, scale
        else:
            self.context_norm2 = make_norm(config.norm, dim, affine=False)
            self.context_mlp = transformer_mlp(dim, config.mlp_ratio)
            self.context_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, context: Tensor, c: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """Image tokens ``x`` (N, T, D) and text tokens ``context`` (N, L, D), conditioned on ``c`` (N, D).

        Returns:
            ``(N, T, D)`` image tokens and ``(N, L, D)`` text tokens (``None`` when ``context_pre_only``).
        """
        image_modulation = self.modulation(c).chunk(6 if self.attn2 is None else 9, dim=-1)
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = image_modulation[:6]
        text_modulation = self.context_modulation(c).chunk(2 if self.context_pre_only else 6, dim=-1)
        normed = self.norm1(x)  # (N, T, D)
        attn_x, attn_c = joint_attention(
            self.attn,
            self.context_attn,
            modulate(normed, shift_attn, scale_attn),
            modulate(self.context_norm1(context), text_modulation[0], text_modulation[1]),
            text_mask,
        )  # (N, T, D), (N, L, D)
        x = torch.addcmul(x, gate_attn.unsqueeze(1), self.attn.proj(attn_x))  # x + gate * attn_out
        if self.attn2 is not None:
            shift_attn2, scale_attn2, gate_attn2 = image_modulation[6:]
            x = torch.addcmul(x, gate_attn2.unsqueeze(1), self.attn2(modulate(normed, shift_attn2, scale_attn2)))
        x = torch.addcmul(x, gate_mlp.unsqueeze(1), self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))
        if self.context_pre_only:
            return x, None
        _, _, c_gate_attn, c_shift_mlp, c_scale_mlp, c_gate_mlp = text_modulation
        context = torch.addcmul(context, c_gate_attn.unsqueeze(1), self.context_attn.proj(attn_c))  # (N, L, D)
        context_mlp = self.context_mlp(modulate(self.context_norm2(context), c_shift_mlp, c_scale_mlp))
        return x, torch.addcmul(context, c_gate_mlp.unsqueeze(1), context_mlp)


class MMDiT(nn.Module):
    """Text-conditioned MM-DiT ``model(x (N, C, H, W), t (N,), text (N, L, Dt), text_mask (N, L))``.

    Output ``(N, out_channels, H, W)`` like ``DiT``; ``H`` and ``W`` may be any multiple of ``patch_size``.
    Text tokens enter through ``CaptionEmbedder`` (MLP to the model width; a dropped caption becomes the learned
    null token), the pooled text (masked mean of the raw features, the null token for a dropped caption) through
    ``MLP`` (Linear, SiLU, Linear) into ``c_vec = t_emb + MLP(pooled)``. With ``pooled_dim`` (SD3) the tokens
    enter through one linear layer and the pooled vector is the ``pooled`` input.
    """

    def __init__(self, config: MMDiTConfig):
        super().__init__()
        self.config = config
        dim, p = config.hidden_size, config.patch_size
        self.patch_embedder = nn.Linear(p * p * config.in_channels, dim)
        if config.pos_embed_max_size is None:
            self.pos_embed = make_pos_embed(
                config.pos_embed, dim, (config.grid_size, config.grid_size), config.pos_embed_interpolation
            )
        else:
            self.pos_embed = CroppedSinCosPosEmbed(dim, config.pos_embed_max_size, config.grid_size)
        self.t_embedder = TimestepEmbedder(dim, config.frequency_embedding_size)
        sd3_text = config.pooled_dim is not None
        pooled_dim = config.pooled_dim if sd3_text else config.text_dim
        self.pooled_embedder = nn.Sequential(nn.Linear(pooled_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.caption_embedder = None if sd3_text else CaptionEmbedder(config.text_dim, dim, config.caption_dropout)
        self.context_embedder = nn.Linear(config.text_dim, dim) if sd3_text else None
        self.blocks = nn.ModuleList([
            MMDiTBlock(config, context_pre_only=i == config.depth - 1, dual_attention=i in config.dual_attention_blocks)
            for i in range(config.depth)
        ])
        self.final_layer = FinalLayer(config)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation; the zero-inits make every block the identity on both streams and the output 0."""
        init_dit_weights(self, [m for block in self.blocks for m in (block.modulation, block.context_modulation)])

    def check_inputs(self, x: Tensor, t: Tensor, text: Tensor, text_mask: Tensor,
                     pooled: Tensor | None = None) -> tuple[int, int]:
        """Raise a ``ValueError`` naming the problem for badly shaped inputs; return the token grid ``(h, w)``."""
        cfg = self.config
        check_image_and_time(x, t, cfg.in_channels)
        check_text(text, text_mask, x.shape[0], cfg.text_dim)
        if cfg.pooled_dim is None and pooled is not None:
            raise ValueError("this model pools its own text (masked mean of the features); call it without pooled, "
                             "or build it with pooled_dim for SD3's separate pooled vector")
        if cfg.pooled_dim is not None and (pooled is None or pooled.shape != (x.shape[0], cfg.pooled_dim)):
            shape = None if pooled is None else tuple(pooled.shape)
            raise ValueError(f"this model takes SD3's pooled text vector: pass pooled of shape (N, pooled_dim) = "
                             f"({x.shape[0]}, {cfg.pooled_dim}); got {shape}")
        return x.shape[2] // cfg.patch_size, x.shape[3] // cfg.patch_size  # patchify checks divisibility

    @property
    def condition_dropout(self) -> float:
        """Training-time probability of the null caption (0 with SD3's pooled text); see ``DiT.condition_dropout``."""
        return self.caption_embedder.dropout_prob if self.caption_embedder is not None else 0.0

    def embed_text(self, text: Tensor, text_mask: Tensor, force_drop: Tensor | None,
                   pooled: Tensor | None) -> CaptionEmbedding:
        """Caption tokens ``(N, L, D)``, their mask and the pooled vector: ``CaptionEmbedder``'s, or SD3's linear
        ``context_embedder`` with the given ``pooled`` (N, pooled_dim) (no null caption: ``force_drop`` is an error).
        """
        if self.caption_embedder is not None:
            return self.caption_embedder(text, text_mask, force_drop)
        if force_drop is not None:
            raise ValueError("an SD3-style model (pooled_dim set) has no learned null caption: for guidance, encode "
                             "the empty prompt and call the model on its features instead of force_drop")
        return CaptionEmbedding(self.context_embedder(text), text_mask, pooled)

    def forward(
        self, x: Tensor, t: Tensor, text: Tensor, text_mask: Tensor, force_drop: Tensor | None = None,
        pooled: Tensor | None = None,
    ) -> Tensor:
        """Predict ``(N, out_channels, H, W)`` from noisy images ``x`` (N, C, H, W) at times ``t`` (N,).

        Args:
            x: images or latents; ``H`` and ``W`` divisible by ``patch_size``.
            t: times in [0, 1], shape ``(N,)`` (t = 0 data, t = 1 noise).
            text: text encoder features ``(N, L, text_dim)``.
            text_mask: ``(N, L)`` bool, ``True`` for real tokens; padding never changes the output.
            force_drop: optional bool ``(N,)``; ``True`` replaces that sample's caption (tokens and pooled vector)
                by the learned null caption, in any mode. Without it, training mode drops each caption with
                probability ``caption_dropout``.
            pooled: with ``pooled_dim`` only (SD3): the pooled text vector ``(N, pooled_dim)``.
        """
        grid_shape = self.check_inputs(x, t, text, text_mask, pooled)
        caption = self.embed_text(text, text_mask, force_drop, pooled)  # tokens (N, L, D), mask (N, L), pooled
        tokens = self.patch_embedder(patchify(x, self.config.patch_size))  # (N, T, D)
        if self.pos_embed is not None:
            tokens = self.pos_embed(tokens, grid_shape)  # (N, T, D)
        c = self.t_embedder(t) + self.pooled_embedder(caption.pooled)  # (N, D)
        context = caption.tokens  # (N, L, D)
        for block in self.blocks:
            tokens, context = block(tokens, context, c, caption.mask)  # (N, T, D), (N, L, D) or None at the end
        out = self.final_layer(tokens, c)  # (N, T, p * p * out_channels)
        return unpatchify(out, grid_shape, self.config.patch_size)  # (N, out_channels, H, W)

    @classmethod
    def from_depth(cls, depth: int, **overrides: Any) -> MMDiT:
        """SD3's sizing by depth ``d``: hidden ``64 d``, ``d`` heads; ``overrides`` set any other ``MMDiTConfig`` field."""
        return cls(MMDiTConfig.from_dict({"depth": depth, **overrides}))
