"""From a caption to what a denoiser consumes: masked-mean pooling, the caption embedder with its learned null caption
for classifier-free guidance, and ``TextToImage``, a frozen text encoder in front of a DiT or an MM-DiT.

A text encoder turns a caption into per-token features ``(N, L, Dt)`` with a mask of real tokens ``(N, L)``. The
denoiser projects them to its width (PixArt-alpha's caption projection, arXiv 2310.00426, Sec. 2.3; SD3's context
embedder, arXiv 2403.03206, Sec. 4) and also pools them into one vector, the masked mean
``p = sum_l m_l f_l / sum_l m_l``, which conditions adaLN (Lumina-T2X, arXiv 2405.05945, Sec. 2.1; SD3's pooled
text). For guidance the model must also predict without a caption: in training a caption is replaced, with
probability ``dropout_prob``, by a learned **null caption**, and sampling extrapolates
``u + w (c - u)`` from it on every channel (``minidit.guidance.guide_with_null``). The null caption here is one
learned token in feature space (PixArt learns a full-length one; a single token gives the same constant caption and
works for any text length). Padding never changes an output: every use of the tokens is masked.
Used by notebooks/05_text_conditioning.ipynb, notebooks/06_mmdit.ipynb and exercise 13 (masked-mean pooling).

Example:
    >>> model = TextToImage(pretrained_encoder("bidirectional"), DiT(DiTConfig(text_conditioning="gated_cross", ...)))
    >>> ids, mask = model.encode_prompts(["a small red circle at the top left"])
    >>> v = model(x, t, ids, mask)                       # (1, C, H, W)
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from minidit.validation import reads_values


def masked_mean(features: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``features`` (N, L, D) over the real tokens of ``mask`` (N, L) bool -> ``(N, D)``.

    Raises:
        ValueError: if a row of ``mask`` has no real token (its mean would be 0 / 0).
    """
    if mask.shape != features.shape[:2]:
        raise ValueError(f"mask must have shape (N, L) = {tuple(features.shape[:2])}; got {tuple(mask.shape)}")
    weights = mask.to(features.dtype).unsqueeze(-1)  # (N, L, 1)
    counts = weights.sum(dim=1)  # (N, 1)
    if reads_values(counts) and bool((counts == 0).any()):
        raise ValueError("a caption has no real token (its mask row is all False); every caption needs at least one")
    return (features * weights).sum(dim=1) / counts  # (N, D)


class CaptionEmbedding(NamedTuple):
    """What ``CaptionEmbedder`` returns: ``tokens`` (N, L, D) at the model width, their ``mask`` (N, L) and the
    masked mean of the (possibly dropped) input features, ``pooled`` (N, Dt)."""

    tokens: Tensor
    mask: Tensor
    pooled: Tensor


class CaptionEmbedder(nn.Module):
    """Text features ``(N, L, Dt)`` -> tokens ``(N, L, D)`` through a two-layer MLP, with the learned null caption.

    In training mode each caption is replaced by the null caption with probability ``dropout_prob``; ``force_drop``
    (bool, (N,)) overrides that choice in any mode (the unconditional half of a CFG batch). A dropped caption becomes
    the learned null token followed by padding: features ``[null, 0, ..., 0]``, mask ``[True, False, ..., False]``.
    """

    def __init__(self, text_dim: int, hidden_size: int, dropout_prob: float = 0.1):
        super().__init__()
        if text_dim < 1:
            raise ValueError(f"text_dim must be >= 1 (the width of the text encoder's features); got {text_dim}")
        self.dropout_prob = dropout_prob
        self.null_caption = nn.Parameter(torch.randn(text_dim) * 0.02)  # (Dt,)
        self.mlp = nn.Sequential(nn.Linear(text_dim, hidden_size), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden_size, hidden_size))

    def drop(self, text: Tensor, text_mask: Tensor, force_drop: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Replace the dropped captions of ``text`` (N, L, Dt), ``text_mask`` (N, L) by the null caption."""
        if force_drop is None:
            if not (self.training and self.dropout_prob > 0):
                return text, text_mask
            force_drop = torch.rand(text.shape[0], device=text.device) < self.dropout_prob  # (N,)
        first = torch.arange(text.shape[1], device=text.device) == 0  # (L,)
        null_text = torch.where(first[:, None], self.null_caption.to(text.dtype), torch.zeros((), dtype=text.dtype,
                                                                                              device=text.device))
        drop = force_drop.to(text.device)[:, None]  # (N, 1)
        text = torch.where(drop[:, :, None], null_text, text)  # (N, L, Dt)
        text_mask = torch.where(drop, first, text_mask)  # (N, L)
        return text, text_mask

    def forward(self, text: Tensor, text_mask: Tensor, force_drop: Tensor | None = None) -> CaptionEmbedding:
        """Embed ``text`` (N, L, Dt) with ``text_mask`` (N, L) bool; see the class docstring."""
        text, text_mask = self.drop(text, text_mask, force_drop)
        return CaptionEmbedding(self.mlp(text), text_mask, masked_mean(text, text_mask))


def build_text_encoder(kind: str, pretrained: bool = True, path: str | None = None,
                       max_length: int | None = None) -> nn.Module:
    """The shapes-caption text encoder of ``kind`` (``minidit.text.pretrain.KINDS``), frozen and in eval mode; or,
    for ``kind="hf"``, the Hugging Face model in the local folder ``path`` read up to ``max_length`` tokens.

    Args:
        pretrained: load it from the cache (or pretrain and cache it, about a minute); ``False`` builds the same
            architecture untrained, for a checkpoint that holds its weights. A Hugging Face model always loads.
    Raises:
        FileNotFoundError: for ``"hf"`` when ``path`` is not a folder (nothing is downloaded).
    """
    if kind == "hf":
        from pathlib import Path

        from minidit.text.hf import HFTextEncoder

        if path is None or not Path(path).is_dir():
            raise FileNotFoundError(f"text_encoder_path {path!r} is not a folder; download the model once, e.g. "
                                    "huggingface-cli download Qwen/Qwen2.5-0.5B --local-dir models/qwen2.5-0.5b, and "
                                    "point text_encoder_path at that folder")
        return HFTextEncoder.from_pretrained(path, max_length=max_length, local_files_only=True)
    from minidit.text.encoder import TextEncoder
    from minidit.text.pretrain import encoder_config, pretrained_encoder
    from minidit.text.tokenizer import shapes_tokenizer

    tokenizer = shapes_tokenizer()
    config = encoder_config(kind, tokenizer)  # checks the kind
    if pretrained:
        return pretrained_encoder(kind)
    encoder = TextEncoder(config, tokenizer)
    return encoder.eval().requires_grad_(False)


def check_text(text: Tensor | None, text_mask: Tensor | None, batch: int, text_dim: int, segments: int = 1) -> None:
    """Raise a ``ValueError`` naming the problem unless ``text`` is ``(batch, L, text_dim)`` float and ``text_mask``
    ``(batch, L)`` bool with at least one real token per row (and per each of ``segments`` equal segments: the
    features of several text encoders concatenated, ``minidit.refiner.CollaborativeRefiner``)."""
    if text is None or text_mask is None:
        raise ValueError("this model is text-conditioned: pass text (N, L, text_dim) features and text_mask (N, L) "
                         "bool, e.g. from TextToImage or encoder.encode(captions)")
    if text.ndim != 3 or text.shape[0] != batch or text.shape[2] != text_dim or not text.is_floating_point():
        raise ValueError(f"text must be float features of shape (N, L, text_dim) = ({batch}, L, {text_dim}); "
                         f"got {text.dtype} of shape {tuple(text.shape)}")
    if text_mask.shape != text.shape[:2] or text_mask.dtype != torch.bool:
        raise ValueError(f"text_mask must be bool of shape (N, L) = {tuple(text.shape[:2])} (True = real token); "
                         f"got {text_mask.dtype} of shape {tuple(text_mask.shape)}")
    if reads_values(text_mask) and not bool(text_mask.any(dim=1).all()):
        raise ValueError("a caption has no real token (its text_mask row is all False); every caption needs at least one")
    if segments > 1:
        from minidit.refiner import split_segments  # lazy: the refiner imports this module

        split_segments(text, text_mask, segments)


class TextToImage(nn.Module):
    """A frozen text encoder in front of a text-conditioned denoiser (``DiT`` or ``MMDiT``).

    ``model(x, t, text_ids, text_mask)`` encodes the token ids without gradients (features of encoder layer
    ``layer``) and calls ``denoiser(x, t, text=features, text_mask=text_mask, force_drop=force_drop)``. The encoder
    stays in eval mode and frozen; its weights are part of the state dict, so a checkpoint is self-contained.
    With ``train_encoder=True`` the encoder instead trains with the denoiser (from scratch, for captions that no
    pretrained encoder knows: the video, multi-view and audio words of notebooks/09_any_modality.ipynb).

    Args:
        encoder: a ``minidit.text.TextEncoder`` (or an adapter with ``forward(ids, mask, layer)``, ``tokenizer``, ``dim``).
        denoiser: a DiT or MM-DiT built with ``text_dim == encoder.dim``.
        layer: which hidden state of the encoder to use (-1 the last, -2 the second to last, ...).
        text_length: the token length prompts are padded to (default: the encoder's ``config.max_length``).
        train_encoder: train the encoder with the denoiser instead of freezing it.
    """

    def __init__(self, encoder: nn.Module, denoiser: nn.Module, layer: int = -1, text_length: int | None = None,
                 train_encoder: bool = False):
        super().__init__()
        text_dim = denoiser.config.text_dim
        if text_dim != encoder.dim:
            raise ValueError(f"the denoiser's text_dim is {text_dim} but the encoder's features have width "
                             f"{encoder.dim}; build the denoiser with text_dim = {encoder.dim}")
        self.train_encoder = train_encoder
        self.encoder = encoder if train_encoder else encoder.eval().requires_grad_(False)
        self.denoiser = denoiser
        self.layer = layer
        self.text_length = text_length or encoder.config.max_length

    @property
    def config(self) -> Any:
        """The denoiser's config (``in_channels``, ``input_size``, ... for sampling)."""
        return self.denoiser.config

    @property
    def condition_dropout(self) -> float:
        """The denoiser's probability of the null caption in training (``DiT.condition_dropout``)."""
        return self.denoiser.condition_dropout

    def train(self, mode: bool = True) -> TextToImage:
        """Set the denoiser's mode; a frozen encoder always stays in eval mode."""
        super().train(mode)
        if not self.train_encoder:
            self.encoder.eval()
        return self

    def encode_prompts(self, prompts: Sequence[str], truncation: str = "error") -> tuple[Tensor, Tensor]:
        """Token ids ``(N, text_length)`` long and mask ``(N, text_length)`` bool of ``prompts``, on the model's device.

        Raises:
            ValueError: for an empty prompt, or one longer than ``text_length`` tokens with ``truncation="error"``.
        """
        ids, mask = self.encoder.tokenizer.encode(list(prompts), self.text_length, truncation=truncation)
        device = next(self.denoiser.parameters()).device
        return ids.to(device), mask.to(device)

    def forward(self, x: Tensor, t: Tensor, text_ids: Tensor, text_mask: Tensor,
                force_drop: Tensor | None = None, **denoiser_inputs: Tensor) -> Tensor:
        """Predict ``(N, C, H, W)`` from ``x`` (N, C, H, W), ``t`` (N,) and captions as ``text_ids`` / ``text_mask`` (N, L);
        ``denoiser_inputs`` go to the denoiser as they are (``frame_sizes`` of a frames DiT).

        The batch is cut to its longest caption first (padding never changes an output, and short captions in a
        long padded row would otherwise cost the encoder and the cross-attention their full length).
        """
        if reads_values(text_mask):
            length = int(text_mask.any(dim=0).nonzero().max()) + 1  # up to the last real token of any caption
            text_ids, text_mask = text_ids[:, :length], text_mask[:, :length]
        with nullcontext() if self.train_encoder else torch.no_grad():
            features = self.encoder(text_ids, text_mask, layer=self.layer)  # (N, L, Dt)
        return self.denoiser(x, t, text=features, text_mask=text_mask, force_drop=force_drop, **denoiser_inputs)
