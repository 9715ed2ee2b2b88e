"""A word-level tokenizer for captions with a byte-level fallback, so any text (typos, other languages) encodes.

A caption is lower-cased and split into words and punctuation marks (``\\w+`` runs and single other characters);
each word of the vocabulary is one token, and any other word becomes its UTF-8 bytes, one token each (the byte
fallback of GPT-2's byte-level BPE, Radford et al. 2019, Sec. 2.2, without the merges). Ids are ``[PAD]`` = 0,
``[BOS]``, ``[EOS]``, ``[MASK]``, then the words, then the 256 bytes; every encoded text is ``[BOS] ... [EOS]``
followed by ``[PAD]`` up to ``max_length``, with a mask that is ``True`` on the real tokens. The text encoders of
T5 (PixArt-Sigma, arXiv 2403.04692) and of SD3 (arXiv 2403.03206) read padded ids with such a mask the same way.
Used by ``minidit.text.encoder``, ``minidit.data.captions`` and notebooks/05_text_conditioning.ipynb.

``decode(encode(x))`` gives ``normalize(x)``: the lower-cased pieces joined by single spaces.

Example:
    >>> tokenizer = Tokenizer(["a", "circle", "red"])
    >>> ids, mask = tokenizer.encode(["A red circle!"], max_length=8)   # (1, 8) long, (1, 8) bool
    >>> tokenizer.decode(ids[0])
    'a red circle !'
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

from minidit.validation import check_choice

SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[MASK]")
PAD, BOS, EOS, MASK = range(len(SPECIAL_TOKENS))
TRUNCATIONS = ("error", "cut")
_PIECE = re.compile(r"\w+|[^\w\s]")
_SPACE_BYTE = ord(" ")


def split_pieces(text: str) -> list[str]:
    """Lower-case ``text`` and split it into words (``\\w+`` runs) and single punctuation or symbol characters."""
    return _PIECE.findall(text.lower())


def normalize(text: str) -> str:
    """The text ``decode(encode(text))`` gives back: the pieces of ``split_pieces`` joined by single spaces."""
    return " ".join(split_pieces(text))


class Tokenizer:
    """Word-level tokenizer over ``words`` with ``[PAD]``, ``[BOS]``, ``[EOS]``, ``[MASK]`` and 256 byte tokens.

    Args:
        words: the vocabulary; each entry lower case, one piece of ``split_pieces`` and unique. Ids follow its order.

    Attributes:
        words: the vocabulary as a tuple.
        vocab_size: ``4 + len(words) + 256``.
        byte_offset: the id of byte 0; byte ``b`` is ``byte_offset + b``.
    """

    def __init__(self, words: Sequence[str]):
        words = tuple(words)
        for word in words:
            if not isinstance(word, str) or split_pieces(word) != [word]:
                raise ValueError(f"vocabulary entry {word!r} is not one lower-case word or punctuation mark; "
                                 "split it with minidit.text.tokenizer.split_pieces first")
        if len(set(words)) != len(words):
            repeated = sorted({w for w in words if words.count(w) > 1})
            raise ValueError(f"the vocabulary repeats {repeated}; give each word once")
        self.words = words
        self.byte_offset = len(SPECIAL_TOKENS) + len(words)
        self.vocab_size = self.byte_offset + 256
        self._word_ids = {word: len(SPECIAL_TOKENS) + i for i, word in enumerate(words)}

    def __repr__(self) -> str:
        return f"Tokenizer({len(self.words)} words, vocab_size={self.vocab_size})"

    def unknown_words(self, text: str) -> list[str]:
        """The pieces of ``text`` that are not in the vocabulary (each is encoded byte by byte)."""
        return [piece for piece in split_pieces(text) if piece not in self._word_ids]

    def count(self, text: str) -> int:
        """Tokens of ``text`` with ``[BOS]`` and ``[EOS]``: ``len(tokenize(text)) + 2``."""
        return len(self.tokenize(text)) + 2

    def tokenize(self, text: str) -> list[int]:
        """Ids of ``text`` without ``[BOS]``/``[EOS]``; two unknown words in a row are separated by the space byte.

        Raises:
            ValueError: if ``text`` is empty or only whitespace.
        """
        pieces = split_pieces(text)
        if not pieces:
            raise ValueError(f"text {text!r} is empty or only whitespace; give a caption such as 'a red circle'")
        ids: list[int] = []
        previous_unknown = False
        for piece in pieces:
            word_id = self._word_ids.get(piece)
            if word_id is not None:
                ids.append(word_id)
                previous_unknown = False
                continue
            if previous_unknown:
                ids.append(self.byte_offset + _SPACE_BYTE)  # keeps two byte-coded words apart
            ids.extend(self.byte_offset + b for b in piece.encode("utf-8"))
            previous_unknown = True
        return ids

    def encode(
        self, texts: str | Sequence[str], max_length: int, truncation: str = "error"
    ) -> tuple[Tensor, Tensor]:
        """Token ids and mask of ``texts``: ``[BOS] tokens [EOS] [PAD] ...``, right padded to ``max_length``.

        Args:
            texts: one string (N = 1) or a sequence of N strings.
            max_length: ``L``, the length of every row, at least 3 ([BOS], one token, [EOS]).
            truncation: ``"error"`` raises for a text longer than ``L`` tokens; ``"cut"`` keeps its first
                ``L - 2`` tokens and still ends it with ``[EOS]`` (a byte-coded word may be cut inside).
        Returns:
            ``ids`` (N, L) long and ``mask`` (N, L) bool, ``True`` on ``[BOS]``, the tokens and ``[EOS]``.
        Raises:
            ValueError: for an empty or whitespace-only text, or a text of more than ``L`` tokens with
                ``truncation="error"`` (the message gives its token count and ``max_length``).
        """
        check_choice("truncation", truncation, TRUNCATIONS)
        if max_length < 3:
            raise ValueError(f"max_length must be at least 3 ([BOS], one token, [EOS]); got {max_length}")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("texts is empty; pass at least one caption")
        ids = torch.full((len(texts), max_length), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{row}] is a {type(text).__name__}, not a str; pass a list of strings")
            tokens = [BOS, *self.tokenize(text), EOS]
            if len(tokens) > max_length:
                if truncation == "error":
                    raise ValueError(
                        f"text {text[:60]!r}{'...' if len(text) > 60 else ''} has {len(tokens)} tokens ([BOS] and "
                        f"[EOS] included) but max_length is {max_length}; shorten it, raise max_length or pass "
                        "truncation='cut'"
                    )
                tokens = [*tokens[: max_length - 1], EOS]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ids, ids != PAD

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """Text of one row of ids (1-D); ``[PAD]``, ``[BOS]`` and ``[EOS]`` are skipped, ``[MASK]`` is written out.

        Consecutive byte tokens are decoded together as UTF-8 (bytes that are not valid UTF-8, e.g. from a model's
        samples or a cut word, become U+FFFD).

        Raises:
            ValueError: for a 2-D tensor (decode each row) or an id outside ``[0, vocab_size)``.
        """
        if isinstance(ids, Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode takes one row of ids (1-D); got shape {tuple(ids.shape)}: "
                                 "use [tokenizer.decode(row) for row in ids]")
            ids = ids.tolist()
        pieces: list[str] = []
        pending = bytearray()
        for token in ids:
            if not 0 <= token < self.vocab_size:
                raise ValueError(f"token id {token} is outside [0, {self.vocab_size}) for this tokenizer")
            if token >= self.byte_offset:
                pending.append(token - self.byte_offset)
                continue
            if pending:
                pieces.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
            if token == MASK:
                pieces.append(SPECIAL_TOKENS[MASK])
            elif token >= len(SPECIAL_TOKENS):
                pieces.append(self.words[token - len(SPECIAL_TOKENS)])
        if pending:
            pieces.append(pending.decode("utf-8", errors="replace"))
        return " ".join(pieces)


def shapes_tokenizer() -> Tokenizer:
    """The tokenizer of the shapes world: ``Tokenizer(minidit.data.captions.VOCABULARY)``."""
    from minidit.data.captions import VOCABULARY  # lazy: captions tokenises with this module

    return Tokenizer(VOCABULARY)
