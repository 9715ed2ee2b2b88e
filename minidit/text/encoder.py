"""A tiny transformer text encoder, bidirectional (BERT-style) or causal (GPT-style), with features of every layer.

Token and learned position embeddings go through pre-norm blocks of self-attention and an MLP and a final norm.
The **bidirectional** encoder lets each token attend to every real token and is pretrained by predicting masked
tokens (BERT, Devlin et al. 2019, Sec. 3.1: 15% of the tokens, 80% of those replaced by ``[MASK]``, 10% by a random
word, 10% kept); the **causal** one lets token ``i`` see tokens ``j <= i`` only and is pretrained by predicting the
next token (GPT, Radford et al. 2018). Both read the padding mask, so appending ``[PAD]`` never changes a real
token's features. LI-DiT (arXiv 2406.11831; ``../shared/notes/papers.md`` Sec. 6) finds that a causal LM's features
condition a diffusion model worse than an encoder's: they are trained to predict a continuation, and a word cannot
see the words after it. PixArt-Sigma and SD3 (papers.md Sec. 3, 5) use T5's encoder; Lumina-T2X (Sec. 4) an LLM's
second-to-last layer, hence ``layer``. Pretraining and the disk cache: ``minidit.text.pretrain``.
Used by notebooks/05_text_conditioning.ipynb and 08_llm_text_encoders.ipynb.

Example:
    >>> tokenizer = shapes_tokenizer()
    >>> encoder = TextEncoder(TextEncoderConfig(tokenizer.vocab_size, causal=True), tokenizer)
    >>> features, mask = encoder.encode(["a red circle at the top left"], layer=-2)   # (1, 40, 128), (1, 40)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from minidit.attention import SelfAttention
from minidit.text.conditioning import masked_mean
from minidit.text.tokenizer import Tokenizer
from minidit.validation import reads_values


@dataclass(frozen=True)
class TextEncoderConfig:
    """Size of a ``TextEncoder``.

    Args:
        vocab_size: number of token ids (``Tokenizer.vocab_size``).
        dim: feature width ``D``.
        depth: number of transformer blocks.
        num_heads: attention heads; ``dim`` must be divisible by it.
        max_length: ``L``, the number of learned positions and the length texts are padded to.
        causal: ``True`` for a next-token (GPT-style) model, ``False`` for a bidirectional (BERT-style) one.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
    """

    vocab_size: int
    dim: int = 128
    depth: int = 4
    num_heads: int = 4
    max_length: int = 40
    causal: bool = False
    mlp_ratio: float = 4.0


class TextBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``; ``x`` is ``(N, L, D)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        """``x`` (N, L, D) with ``attn_mask`` (N, 1, L, L) bool (``True`` = may attend) -> ``(N, L, D)``."""
        x = x + self.attn(self.norm1(x), attn_mask=attn_mask)
        return x + self.mlp(self.norm2(x))


def attention_mask(mask: Tensor, causal: bool) -> Tensor:
    """Boolean attention mask ``(N, 1, L, L)`` from the padding ``mask`` (N, L): query ``i`` may attend key ``j``.

    Keys must be real tokens; with ``causal`` also ``j <= i``; and every query may attend itself, so no row of the
    result is all ``False`` (SDPA would return NaN for it), not even a padded query's in a row that starts with
    padding. A real query never reads padding, so padding never changes a real token's output.
    """
    length = mask.shape[1]
    allowed = mask[:, None, None, :]  # (N, 1, 1, L): keys that are real tokens
    if causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()  # (N, 1, L, L)
    return allowed | torch.eye(length, dtype=torch.bool, device=mask.device)  # (N, 1, L, L)


class FeatureEncoder(nn.Module):
    """What every text encoder offers on top of its ``tokenize(texts)`` and ``forward(ids, mask, layer)``.

    Subclasses: ``TextEncoder`` and ``minidit.text.hf.HFTextEncoder``; both return features that are zero at padding.
    """

    def encode(self, texts: str | Sequence[str], layer: int = -1) -> tuple[Tensor, Tensor]:
        """Per-token features ``(N, L, D)`` of ``texts`` at ``layer`` and their mask ``(N, L)`` bool."""
        ids, mask = self.tokenize(texts)
        return self(ids, mask, layer=layer), mask

    def pooled(self, texts: str | Sequence[str], layer: int = -1) -> Tensor:
        """Masked mean over the real tokens of ``encode(texts, layer)``: ``(N, D)``."""
        return masked_mean(*self.encode(texts, layer))  # (N, D)


class TextEncoder(FeatureEncoder):
    """Transformer text encoder over a ``Tokenizer``'s ids; ``config.causal`` picks the attention pattern.

    Args:
        config: sizes and attention pattern.
        tokenizer: the tokenizer whose ``vocab_size`` equals ``config.vocab_size``.

    Attributes:
        dim: feature width ``D``.
        tokenizer: the tokenizer used by ``encode``, ``tokenize`` and ``pooled``.
    """

    def __init__(self, config: TextEncoderConfig, tokenizer: Tokenizer):
        super().__init__()
        if tokenizer.vocab_size != config.vocab_size:
            raise ValueError(f"config.vocab_size is {config.vocab_size} but the tokenizer has {tokenizer.vocab_size} "
                             "ids; build the config with vocab_size=tokenizer.vocab_size")
        self.config = config
        self.tokenizer = tokenizer
        self.dim = config.dim
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.position_embedding = nn.Parameter(torch.zeros(config.max_length, config.dim))
        self.blocks = nn.ModuleList(TextBlock(config.dim, config.num_heads, config.mlp_ratio) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(config.dim)
        self.output_bias = nn.Parameter(torch.zeros(config.vocab_size))  # the token head's weights are the embedding's
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)

    def tokenize(self, texts: str | Sequence[str], truncation: str = "error") -> tuple[Tensor, Tensor]:
        """``tokenizer.encode(texts, config.max_length, truncation)`` on the encoder's device: ids and mask (N, L)."""
        ids, mask = self.tokenizer.encode(texts, self.config.max_length, truncation=truncation)
        device = self.token_embedding.weight.device
        return ids.to(device), mask.to(device)

    def hidden_states(self, ids: Tensor, mask: Tensor) -> list[Tensor]:
        """Features of every layer: ``depth + 1`` tensors ``(N, L, D)``, zero at padding positions.

        Entry 0 is the embeddings (token + position), entry ``i`` the output of block ``i``; the last entry is taken
        after the final norm.

        Args:
            ids: token ids ``(N, L)`` long with ``L <= config.max_length``.
            mask: ``(N, L)`` bool, ``True`` on real tokens, right padded (``mask[:, 0]`` all ``True``).
        Raises:
            ValueError: for mismatched shapes, too long rows, or a row whose first token is padding.
        """
        if ids.dim() != 2 or mask.shape != ids.shape or mask.dtype != torch.bool:
            raise ValueError(f"ids must be (N, L) long and mask (N, L) bool; got ids {tuple(ids.shape)} and mask "
                             f"{tuple(mask.shape)} {mask.dtype}: use encoder.tokenize(texts)")
        if ids.shape[1] > self.config.max_length:
            raise ValueError(f"ids have length {ids.shape[1]} but the encoder has {self.config.max_length} positions; "
                             f"encode with max_length <= {self.config.max_length}")
        if reads_values(mask) and not bool(mask[:, 0].all()):
            raise ValueError("every row's first token must be real (right padding, [BOS] first, as Tokenizer.encode gives)")
        keep = mask.unsqueeze(-1).to(self.position_embedding.dtype)  # (N, L, 1)
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]  # (N, L, D)
        states = [x * keep]
        attn_mask = attention_mask(mask, self.config.causal)  # (N, 1, L, L)
        for i, block in enumerate(self.blocks):
            x = block(x, attn_mask)  # (N, L, D)
            states.append((self.final_norm(x) if i == len(self.blocks) - 1 else x) * keep)
        return states

    def forward(self, ids: Tensor, mask: Tensor, layer: int = -1) -> Tensor:
        """Features ``(N, L, D)`` of hidden state ``layer`` (-1 the last, -2 the one before, 0 the embeddings)."""
        depth = len(self.blocks)
        if not -(depth + 1) <= layer <= depth:
            raise ValueError(f"layer {layer} does not exist; this encoder has layers -{depth + 1}..{depth} "
                             "(0 = embeddings, -1 = last)")
        return self.hidden_states(ids, mask)[layer]

    def token_logits(self, features: Tensor) -> Tensor:
        """Scores over the vocabulary ``(N, L, V)`` from last-layer ``features`` (N, L, D), with the embedding as
        weights (tied, as in BERT and GPT-2): the masked-token head of the bidirectional model, the next-token head of
        the causal one."""
        return features @ self.token_embedding.weight.T + self.output_bias
