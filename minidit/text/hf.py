"""Hugging Face ``transformers`` text models behind minidit's text-encoder interface (optional dependency).

``HFTextEncoder`` wraps an encoder (BERT, T5's encoder: what PixArt-Sigma and SD3 use, ``../shared/notes/papers.md``
Sec. 3, 5) or a decoder-only LM (GPT-2, LLaMA: what Lumina-T2X and LI-DiT use, Sec. 4, 6) with its tokenizer, and
gives the features of any hidden state (``output_hidden_states``; Lumina reads the second-to-last, LI-DiT the
third-to-last) with the same ``encode / pooled / tokenize / forward / dim / tokenizer / config.max_length`` as
``minidit.text.TextEncoder``, so ``minidit.text.conditioning.TextToImage`` takes either.
``transformers`` is imported only when needed: ``pip install minidit[hub]``. Used by
notebooks/05_text_conditioning.ipynb and configs/shapes_t2i_llm_hf.toml (a local LM with LI-DiT's refiner).

Example:
    >>> encoder = HFTextEncoder.from_pretrained("google/t5-v1_1-small", max_length=64)   # downloads once
    >>> features, mask = encoder.encode(["a red circle at the top left"], layer=-2)     # (1, 64, 512), (1, 64)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from minidit.text.encoder import FeatureEncoder
from minidit.text.tokenizer import TRUNCATIONS
from minidit.validation import check_choice


def require_transformers() -> Any:
    """Import and return ``transformers``, or raise ``ImportError`` saying how to install it."""
    try:
        import transformers
    except ImportError as error:
        raise ImportError("HFTextEncoder needs the transformers package: pip install minidit[hub] "
                          "(or pip install transformers)") from error
    return transformers


@dataclass(frozen=True)
class HFTextEncoderConfig:
    """What a denoiser needs to know of a wrapped model: its ``name``, feature width ``dim`` and ``max_length``."""

    name: str
    dim: int
    max_length: int


class HFTokenizer:
    """A ``transformers`` tokenizer with ``minidit.text.Tokenizer``'s ``encode(texts, max_length, truncation)``.

    Args:
        tokenizer: a ``PreTrainedTokenizerBase`` with a pad token.
    """

    def __init__(self, tokenizer: Any):
        if tokenizer.pad_token is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token = tokenizer.eos_token "
                             "(the usual choice for a decoder-only LM) before wrapping it")
        self.hf_tokenizer = tokenizer
        self.vocab_size = len(tokenizer)

    def encode(self, texts: str | Sequence[str], max_length: int, truncation: str = "error") -> tuple[Tensor, Tensor]:
        """Ids ``(N, max_length)`` long and mask ``(N, max_length)`` bool (``True`` = real token), padded to max_length.

        Raises:
            ValueError: for an empty or whitespace-only text, or one longer than ``max_length`` tokens with
                ``truncation="error"`` (``"cut"`` lets the tokenizer truncate it).
        """
        check_choice("truncation", truncation, TRUNCATIONS)
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("texts is empty; pass at least one caption")
        for text in texts:
            if not text.strip():
                raise ValueError(f"text {text!r} is empty or only whitespace; give a caption such as 'a red circle'")
        if truncation == "error":
            for text, ids in zip(texts, self.hf_tokenizer(texts)["input_ids"]):
                if len(ids) > max_length:
                    raise ValueError(f"text {text[:60]!r} has {len(ids)} tokens (special tokens included) but "
                                     f"max_length is {max_length}; shorten it, raise max_length or pass truncation='cut'")
        batch = self.hf_tokenizer(texts, padding="max_length", max_length=max_length, truncation=truncation == "cut",
                                  return_tensors="pt")
        return batch["input_ids"].long(), batch["attention_mask"].bool()

    def unknown_words(self, text: str) -> list[str]:
        """The whitespace-separated words of ``text`` that the tokenizer maps to its unknown token (none for a
        byte-level tokenizer such as GPT-2's or LLaMA's, which spells any word)."""
        unknown = self.hf_tokenizer.unk_token_id
        if unknown is None:
            return []
        return [word for word in text.split()
                if unknown in self.hf_tokenizer(word, add_special_tokens=False)["input_ids"]]

    def count(self, text: str) -> int:
        """Tokens of ``text``, the special tokens the tokenizer adds included."""
        return len(self.hf_tokenizer(text)["input_ids"])

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """Text of one row of ids, special tokens skipped."""
        return self.hf_tokenizer.decode(ids, skip_special_tokens=True)


class HFTextEncoder(FeatureEncoder):
    """A frozen ``transformers`` encoder or decoder-only LM giving per-token features of any hidden state.

    Args:
        model: a ``transformers.PreTrainedModel`` that takes ``input_ids``/``attention_mask`` and returns
            ``hidden_states`` (``BertModel``, ``T5EncoderModel``, ``GPT2Model``, ``LlamaModel``, ...).
        tokenizer: its tokenizer (with a pad token).
        max_length: the length texts are padded to (default: the tokenizer's ``model_max_length`` if below 4096,
            else the model's ``max_position_embeddings``).
        name: a label for ``config.name``.

    Attributes:
        model, tokenizer (an ``HFTokenizer``), dim (hidden width), config (``HFTextEncoderConfig``).
        ``encode`` and ``pooled`` come from ``minidit.text.encoder.FeatureEncoder``.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int | None = None, name: str = ""):
        super().__init__()
        transformers = require_transformers()
        if not isinstance(model, transformers.PreTrainedModel):
            raise TypeError(f"model is a {type(model).__name__}, not a transformers.PreTrainedModel; for minidit's "
                            "own encoder use minidit.text.TextEncoder")
        if max_length is None:
            limit = tokenizer.model_max_length
            max_length = limit if limit < 4096 else getattr(model.config, "max_position_embeddings", None)
            if max_length is None:
                raise ValueError("cannot tell the model's maximum length; pass max_length")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = HFTokenizer(tokenizer)
        self.dim = model.config.hidden_size
        self.config = HFTextEncoderConfig(name or model.config.model_type, self.dim, max_length)

    @classmethod
    def from_pretrained(cls, name: str, max_length: int | None = None, **model_kwargs: Any) -> HFTextEncoder:
        """Load ``name`` from the Hugging Face hub (or a local folder) with its tokenizer.

        An encoder-decoder (T5) keeps only its encoder; a tokenizer without a pad token (GPT-2, LLaMA) pads with
        its end-of-text token, the usual choice (the mask hides the padding either way).
        """
        transformers = require_transformers()
        model_config = transformers.AutoConfig.from_pretrained(name)
        if getattr(model_config, "is_encoder_decoder", False):
            model = transformers.T5EncoderModel.from_pretrained(name, **model_kwargs)
        else:
            model = transformers.AutoModel.from_pretrained(name, **model_kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(name)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(model, tokenizer, max_length, name=name)

    def train(self, mode: bool = True) -> HFTextEncoder:
        """The wrapped model stays in eval mode (frozen features, no dropout)."""
        super().train(mode)
        self.model.eval()
        return self

    def tokenize(self, texts: str | Sequence[str], truncation: str = "error") -> tuple[Tensor, Tensor]:
        """Ids and mask ``(N, config.max_length)`` of ``texts`` on the model's device."""
        ids, mask = self.tokenizer.encode(texts, self.config.max_length, truncation=truncation)
        device = next(self.model.parameters()).device
        return ids.to(device), mask.to(device)

    def hidden_states(self, ids: Tensor, mask: Tensor) -> list[Tensor]:
        """Every hidden state the model returns (embeddings first), each ``(N, L, D)`` and zero at padding."""
        output = self.model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        keep = mask.unsqueeze(-1).to(output.hidden_states[-1].dtype)  # (N, L, 1)
        return [state * keep for state in output.hidden_states]

    def forward(self, ids: Tensor, mask: Tensor, layer: int = -1) -> Tensor:
        """Features ``(N, L, D)`` of hidden state ``layer`` (-1 the last, -2 the one before, 0 the embeddings)."""
        states = self.hidden_states(ids, mask)
        if not -len(states) <= layer < len(states):
            raise ValueError(f"layer {layer} does not exist; this model has layers -{len(states)}..{len(states) - 1} "
                             "(0 = embeddings, -1 = last)")
        return states[layer]
