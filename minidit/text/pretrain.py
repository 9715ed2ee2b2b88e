"""Pretraining the tiny text encoders on shapes captions, and caching them on disk by content hash.

The bidirectional encoder learns BERT's masked-token objective (Devlin et al. 2019, Sec. 3.1): 15% of the real
tokens are chosen, 80% of them replaced by ``[MASK]``, 10% by a random token, 10% kept, and the model predicts the
originals, ``L = -mean log p(x_i | x_masked)`` over the chosen ``i``. The causal encoder learns GPT's next-token
objective, ``L = -mean_i log p(x_{i+1} | x_{<=i})`` over the real tokens after ``[BOS]``. Both train with AdamW on
varied captions (``minidit.data.captions.describe``) of random scenes, the same captions for the same seed. LI-DiT
(arXiv 2406.11831; ``../shared/notes/papers.md`` Sec. 6) compares exactly these two kinds of text feature.
The ``-long`` kinds have 96 positions and learn from running text, several captions of 1 to 4 objects joined by
" . " and cut at 96 tokens, as an LM reads documents: a caption then appears at any offset after other text, so an
instruction can precede a prompt (notebooks/08_llm_text_encoders.ipynb).

A trained encoder is saved atomically (``minidit.checkpoint.save_checkpoint``) to
``<cache>/text/<kind>-<hash16>.pt``, where ``<cache>`` is ``cache_dir``, ``$MINIDIT_CACHE`` or ``~/.cache/minidit``
and the hash is the SHA-256 of the config, the recipe, the vocabulary and ``VERSION``; any change to these trains a
new file. A cache file that cannot be read or does not match is **trained again with a warning** (it is a cache:
rebuilding is always correct). Used by notebooks/05_text_conditioning.ipynb and 08_llm_text_encoders.ipynb.

Measured at ``FULL_STEPS`` (250 steps of 64 captions, default size) on 2 CPU cores shared with other jobs: held-out
next-token accuracy 0.500 (causal) and masked-token accuracy 0.352 (bidirectional); on the colour, size and shape
words, which the grammar draws at random so that no model can predict them well, 0.183 and 0.036. Training took
148 s (bidirectional) and 241 s and 393 s (causal, two runs, same weights) at load averages of 3 to 5; 150 causal steps
took 35 s on a less busy machine. Loading from the cache took 0.17 s.

Example:
    >>> encoder = pretrained_encoder("causal")           # trains the first time, then loads from the cache
    >>> encoder.pretraining["heldout_accuracy"]           # next-token accuracy on captions never trained on
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from minidit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minidit.runs import quick_mode
from minidit.text.encoder import TextEncoder, TextEncoderConfig
from minidit.text.tokenizer import BOS, EOS, MASK, SPECIAL_TOKENS, Tokenizer, shapes_tokenizer
from minidit.validation import check_choice

KINDS = ("bidirectional", "causal", "bidirectional-long", "causal-long")
LONG_LENGTH, LONG_CAPTIONS, LONG_OBJECTS = 96, 3, 4  # positions, captions per text, objects per scene of "-long" kinds
VERSION = "minidit-text-pretrain-v2"  # change it when the training code changes what a recipe produces
FULL_STEPS, QUICK_STEPS = 250, 25  # steps of pretrained_encoder in a full and a quick (MINIDIT_QUICK=1) run
HELDOUT_CAPTIONS = 512
COUNT_PROB = 0.3  # share of count scenes in the pretraining captions, as in configs/shapes_t2i_*.toml


@dataclass(frozen=True)
class PretrainRecipe:
    """How an encoder is pretrained.

    Args:
        steps: optimizer steps.
        batch_size: captions per step.
        lr: peak AdamW learning rate (linear warm-up over the first 5% of steps, then cosine decay to 0).
        weight_decay: AdamW weight decay.
        mask_prob: fraction of real tokens chosen for the masked-token objective (bidirectional only).
        seed: seeds the initial weights, the captions and the masking.
        captions_per_text: captions joined by " . " into one training text (cut at the encoder's length if longer).
        max_objects: objects per scene of the training captions are drawn from 1 to this.
    """

    steps: int
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    mask_prob: float = 0.15
    seed: int = 0
    captions_per_text: int = 1
    max_objects: int = 3


def training_captions(batch_size: int, seed: tuple[int, ...], captions_per_text: int = 1,
                      max_objects: int = 3) -> list[str]:
    """``batch_size`` texts of ``captions_per_text`` varied captions of random scenes joined by " . " (a
    ``COUNT_PROB`` share of the scenes with 2 or more identical objects, so counts and plurals are common); the same
    ``seed`` tuple gives the same texts."""
    from minidit.data.captions import describe  # lazy: captions imports minidit.text for its tokenizer
    from minidit.data.shapes import sample_scenes

    rng = np.random.default_rng((*seed, 1))
    scenes = sample_scenes(batch_size * captions_per_text, seed=seed, max_objects=max_objects, count_prob=COUNT_PROB)
    captions = [describe(scene, rng) for scene in scenes]
    return [" . ".join(captions[i : i + captions_per_text]) for i in range(0, len(captions), captions_per_text)]


def heldout_captions(seed: int, n: int = HELDOUT_CAPTIONS, captions_per_text: int = 1,
                     max_objects: int = 3) -> list[str]:
    """Texts from a seed stream that training never draws (training uses ``(seed, 0, step)``)."""
    return training_captions(n, (seed, 1), captions_per_text, max_objects)


def mask_tokens(ids: Tensor, mask: Tensor, mask_prob: float, vocab_size: int, generator: torch.Generator,
                replace: bool = True) -> tuple[Tensor, Tensor]:
    """BERT masking of ``ids`` (N, L): returns the corrupted ids and the chosen positions ``(N, L)`` bool.

    Each real token other than ``[BOS]``/``[EOS]`` is chosen with probability ``mask_prob`` (at least one per batch);
    with ``replace`` a chosen token becomes ``[MASK]`` (80%), a random non-special token (10%) or stays (10%), else
    always ``[MASK]`` (for evaluation).
    """
    candidates = mask & (ids != BOS) & (ids != EOS)
    chosen = candidates & (torch.rand(ids.shape, generator=generator) < mask_prob).to(ids.device)
    if not bool(chosen.any()):
        chosen[0, 1] = True  # position 1 is a real word in every text
    corrupted = ids.clone()
    draw = (torch.rand(ids.shape, generator=generator) if replace else torch.zeros(ids.shape)).to(ids.device)
    corrupted[chosen & (draw < 0.8)] = MASK
    random_positions = chosen & (draw >= 0.8) & (draw < 0.9)
    random_ids = torch.randint(len(SPECIAL_TOKENS), vocab_size, ids.shape, generator=generator).to(ids.device)
    corrupted[random_positions] = random_ids[random_positions]
    return corrupted, chosen


def pretraining_loss(encoder: TextEncoder, ids: Tensor, mask: Tensor, generator: torch.Generator,
                     mask_prob: float = 0.15, evaluate: bool = False) -> tuple[Tensor, Tensor]:
    """The encoder's objective on ids/mask (N, L): (mean cross-entropy, accuracy), both 0-d.

    Masked-token prediction for a bidirectional encoder (``evaluate`` masks every chosen token with ``[MASK]``),
    next-token prediction for a causal one.
    """
    if encoder.config.causal:
        logits = encoder.token_logits(encoder(ids, mask))[:, :-1]  # (N, L - 1, V): predicts tokens 1..L-1
        targets, chosen = ids[:, 1:], mask[:, 1:]
    else:
        corrupted, chosen = mask_tokens(ids, mask, mask_prob, encoder.config.vocab_size, generator, replace=not evaluate)
        logits, targets = encoder.token_logits(encoder(corrupted, mask)), ids  # (N, L, V)
    logits, targets = logits[chosen], targets[chosen]  # (M, V), (M,)
    return F.cross_entropy(logits, targets), (logits.argmax(-1) == targets).float().mean()


@torch.no_grad()
def heldout_accuracy(encoder: TextEncoder, recipe: PretrainRecipe, n: int = HELDOUT_CAPTIONS) -> float:
    """Masked-token (bidirectional) or next-token (causal) accuracy on ``n`` held-out texts of ``recipe``'s kind."""
    was_training = encoder.training
    encoder.eval()
    ids, mask = encoder.tokenize(heldout_captions(recipe.seed, n, recipe.captions_per_text, recipe.max_objects),
                                 truncation="cut")
    _, accuracy = pretraining_loss(encoder, ids, mask, torch.Generator().manual_seed(recipe.seed), evaluate=True)
    encoder.train(was_training)
    return float(accuracy)


def learning_rate_factor(step: int, steps: int) -> float:
    """Multiplier of the peak learning rate at ``step``: linear warm-up over 5% of ``steps``, then cosine to 0."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_text_encoder(config: TextEncoderConfig, recipe: PretrainRecipe, tokenizer: Tokenizer,
                       progress: bool = True) -> TextEncoder:
    """Train a fresh encoder with ``recipe``; deterministic given the recipe's seed. Returns it in train mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        encoder = TextEncoder(config, tokenizer)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, recipe.steps))
    generator = torch.Generator().manual_seed(recipe.seed)
    kind = "causal" if config.causal else "bidirectional"
    encoder.train()
    bar = tqdm(range(recipe.steps), desc=f"pretraining the {kind} text encoder", disable=not progress)
    for step in bar:
        seed = (recipe.seed, 0, step)
        texts = training_captions(recipe.batch_size, seed, recipe.captions_per_text, recipe.max_objects)
        ids, mask = encoder.tokenize(texts, truncation="cut")
        loss, accuracy = pretraining_loss(encoder, ids, mask, generator, recipe.mask_prob)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", accuracy=f"{accuracy.item():.3f}", refresh=False)
    return encoder


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$MINIDIT_CACHE``, else ``~/.cache/minidit``."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("MINIDIT_CACHE") or Path.home() / ".cache" / "minidit")


def content_hash(config: TextEncoderConfig, recipe: PretrainRecipe, tokenizer: Tokenizer) -> str:
    """SHA-256 (hex) of the config, the recipe, the vocabulary and ``VERSION``."""
    content = {"config": asdict(config), "recipe": asdict(recipe), "vocabulary": list(tokenizer.words), "version": VERSION}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def cache_path(config: TextEncoderConfig, recipe: PretrainRecipe, tokenizer: Tokenizer,
               cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/text/<kind>-<first 16 hex digits of content_hash>.pt``."""
    kind = ("causal" if config.causal else "bidirectional") + ("-long" if recipe.captions_per_text > 1 else "")
    return cache_root(cache_dir) / "text" / f"{kind}-{content_hash(config, recipe, tokenizer)[:16]}.pt"


def _load_cached(path: Path, digest: str, config: TextEncoderConfig, tokenizer: Tokenizer) -> TextEncoder | None:
    """The encoder stored at ``path``, or ``None`` (with a warning) when the file is unreadable or does not match."""
    try:
        state = load_checkpoint(path)
        if state.get("hash") != digest:
            raise CheckpointError(f"it was written for another config (hash {str(state.get('hash'))[:16]}...)")
        encoder = TextEncoder(config, tokenizer)
        encoder.load_state_dict(state["model"])
    except (CheckpointError, KeyError, RuntimeError) as error:
        warnings.warn(f"text encoder cache {str(path)!r} is unusable ({error}); training it again and replacing it",
                      stacklevel=3)
        return None
    encoder.pretraining = dict(state["pretraining"], path=str(path))
    return encoder


def load_or_train(config: TextEncoderConfig, recipe: PretrainRecipe, tokenizer: Tokenizer,
                  cache_dir: str | os.PathLike | None = None, progress: bool = True) -> TextEncoder:
    """The encoder of ``config`` pretrained with ``recipe``: loaded from the cache, or trained and cached.

    Returns it in eval mode with ``requires_grad`` off, and ``encoder.pretraining``, a dict with ``steps``,
    ``objective``, ``heldout_accuracy`` (``heldout_accuracy()`` right after training) and ``path``.
    """
    path = cache_path(config, recipe, tokenizer, cache_dir)
    digest = content_hash(config, recipe, tokenizer)
    encoder = _load_cached(path, digest, config, tokenizer) if path.exists() else None
    if encoder is None:
        encoder = train_text_encoder(config, recipe, tokenizer, progress)
        report: dict[str, Any] = {
            "steps": recipe.steps,
            "objective": "next-token" if config.causal else "masked-token",
            "heldout_accuracy": heldout_accuracy(encoder, recipe),
        }
        save_checkpoint({"hash": digest, "version": VERSION, "config": asdict(config), "recipe": asdict(recipe),
                         "vocabulary": list(tokenizer.words), "pretraining": report,
                         "model": encoder.state_dict()}, path)
        encoder.pretraining = dict(report, path=str(path))
    return encoder.eval().requires_grad_(False)


def encoder_config(kind: str, tokenizer: Tokenizer) -> TextEncoderConfig:
    """The architecture of the encoder ``kind`` (``KINDS``) over ``tokenizer``: 96 positions for ``-long`` kinds."""
    check_choice("text encoder kind", kind, KINDS)
    length = LONG_LENGTH if kind.endswith("-long") else TextEncoderConfig.max_length
    return TextEncoderConfig(tokenizer.vocab_size, causal=kind.startswith("causal"), max_length=length)


def pretrained_encoder(kind: str, steps: int | None = None, cache_dir: str | os.PathLike | None = None,
                       progress: bool = True) -> TextEncoder:
    """The shapes-caption encoder of ``kind`` (``KINDS``), pretrained and cached.

    Args:
        kind: ``"bidirectional"`` (masked-token objective) or ``"causal"`` (next-token objective) over 40 positions,
            trained on single captions of 1-3 objects; ``"bidirectional-long"`` or ``"causal-long"`` over 96
            positions, trained on texts of several captions of 1-4 objects.
        steps: optimizer steps; default ``FULL_STEPS``, or ``QUICK_STEPS`` when ``MINIDIT_QUICK=1``.
        cache_dir: cache folder (default ``$MINIDIT_CACHE`` or ``~/.cache/minidit``).
        progress: show a tqdm bar while training.
    Returns:
        a frozen ``TextEncoder`` in eval mode of the default ``TextEncoderConfig`` size over ``shapes_tokenizer()``.
    """
    if steps is None:
        steps = QUICK_STEPS if quick_mode() else FULL_STEPS
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}")
    tokenizer = shapes_tokenizer()
    config = encoder_config(kind, tokenizer)
    long = dict(captions_per_text=LONG_CAPTIONS, max_objects=LONG_OBJECTS) if kind.endswith("-long") else {}
    return load_or_train(config, PretrainRecipe(steps=steps, **long), tokenizer, cache_dir, progress)
