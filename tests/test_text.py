"""Tokenizer round trips and errors, the text encoder's masks and layers, pretraining and its disk cache."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from minidit.data.captions import VOCABULARY, describe
from minidit.data.shapes import caption, sample_scenes
from minidit.text import TextEncoder, TextEncoderConfig, Tokenizer, pretrained_encoder, shapes_tokenizer
from minidit.text import pretrain
from minidit.text.pretrain import PretrainRecipe, load_or_train, mask_tokens, pretraining_loss
from minidit.text.tokenizer import BOS, EOS, MASK, PAD, normalize


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return shapes_tokenizer()


def tiny_encoder(tokenizer: Tokenizer, causal: bool, seed: int = 0) -> TextEncoder:
    torch.manual_seed(seed)
    config = TextEncoderConfig(tokenizer.vocab_size, dim=32, depth=2, num_heads=2, max_length=24, causal=causal)
    return TextEncoder(config, tokenizer).eval()


# ---------------------------------------------------------------- tokenizer

def test_ids_layout(tokenizer):
    assert (PAD, BOS, EOS, MASK) == (0, 1, 2, 3)
    assert tokenizer.words == VOCABULARY
    assert tokenizer.vocab_size == 4 + len(VOCABULARY) + 256
    ids, mask = tokenizer.encode(["a red circle"], max_length=8)
    red, circle = 4 + VOCABULARY.index("red"), 4 + VOCABULARY.index("circle")
    assert ids.tolist() == [[BOS, 4 + VOCABULARY.index("a"), red, circle, EOS, PAD, PAD, PAD]]
    assert mask.tolist() == [[True] * 5 + [False] * 3]
    assert ids.dtype == torch.long and mask.dtype == torch.bool


def test_round_trip_captions(tokenizer):
    rng = np.random.default_rng(0)
    scenes = sample_scenes(300, seed=0)
    texts = [caption(s) for s in scenes] + [describe(s, rng) for s in scenes]
    ids, mask = tokenizer.encode(texts, max_length=40)
    assert not any(tokenizer.unknown_words(t) for t in texts)  # the grammar's words are all in the vocabulary
    assert (ids[mask] < tokenizer.byte_offset).all()  # so no caption needs the byte fallback
    assert [tokenizer.decode(row) for row in ids] == [normalize(t) for t in texts]


@pytest.mark.parametrize("text, normalised", [
    ("A RED Circle,at the top-left!", "a red circle , at the top - left !"),
    ("a zebra crossing near the circle", "a zebra crossing near the circle"),   # adjacent unknown words
    ("café, naïve Ünïcödé 🙂 circle", "café , naïve ünïcödé 🙂 circle"),
    ("   two   tiny\tblue\nboxes  ", "two tiny blue boxes"),
])
def test_round_trip_free_text(tokenizer, text, normalised):
    ids, _ = tokenizer.encode([text], max_length=80)
    assert normalize(text) == normalised
    assert tokenizer.decode(ids[0]) == normalised


def test_unknown_words_use_bytes(tokenizer):
    assert tokenizer.unknown_words("a zebra near the circle") == ["zebra", "near"]
    ids = tokenizer.tokenize("zebra near")
    assert ids == [tokenizer.byte_offset + b for b in b"zebra near"]  # one space byte keeps the words apart
    assert tokenizer.tokenize("é") == [tokenizer.byte_offset + 0xC3, tokenizer.byte_offset + 0xA9]


def test_too_long_text(tokenizer):
    text = "a red circle at the top left"  # 7 words -> 9 tokens
    with pytest.raises(ValueError, match=r"has 9 tokens .* max_length is 8.*truncation='cut'"):
        tokenizer.encode([text], max_length=8)
    ids, mask = tokenizer.encode([text, "a red circle"], max_length=8, truncation="cut")
    assert ids.shape == (2, 8) and bool(mask[0].all())
    assert ids[0, -1].item() == EOS
    assert tokenizer.decode(ids[0]) == "a red circle at the top"


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text(tokenizer, text):
    with pytest.raises(ValueError, match="empty or only whitespace"):
        tokenizer.encode(["a red circle", text], max_length=10)


def test_bad_inputs(tokenizer):
    with pytest.raises(ValueError, match="not one lower-case word"):
        Tokenizer(["top left"])
    with pytest.raises(ValueError, match="repeats"):
        Tokenizer(["red", "red"])
    with pytest.raises(ValueError, match="truncation"):
        tokenizer.encode(["a red circle"], 10, truncation="drop")
    with pytest.raises(ValueError, match="max_length must be at least 3"):
        tokenizer.encode(["a"], 2)
    with pytest.raises(ValueError, match="1-D"):
        tokenizer.decode(torch.zeros(2, 3, dtype=torch.long))
    assert tokenizer.encode("a red circle", 6)[0].shape == (1, 6)  # one string is a batch of one


# ---------------------------------------------------------------- encoder

TEXTS = ["a red circle at the top left", "two tiny blue boxes in the middle and the top", "a zebra"]


@pytest.mark.parametrize("causal", [False, True])
def test_padding_invariance(tokenizer, causal):
    encoder = tiny_encoder(tokenizer, causal)
    ids, mask = tokenizer.encode(TEXTS, max_length=16)
    longer_ids, longer_mask = tokenizer.encode(TEXTS, max_length=24)
    assert torch.equal(longer_ids[:, :16], ids) and not bool(longer_mask[:, 16:].any())
    garbage = longer_ids.masked_fill(~longer_mask, MASK)  # whatever sits under the mask cannot matter either
    with torch.no_grad():
        short, long, noisy = (encoder.hidden_states(i, m) for i, m in ((ids, mask), (longer_ids, longer_mask),
                                                                      (garbage, longer_mask)))
    for a, b, c, in zip(short, long, noisy):
        assert torch.allclose(a, b[:, :16], atol=1e-6) and torch.allclose(b, c, atol=1e-6)
        assert bool((b[~longer_mask] == 0).all())  # padding features are zero
        assert bool(torch.isfinite(b).all())  # no attention row was fully masked


@pytest.mark.parametrize("causal", [False, True])
def test_causality(tokenizer, causal):
    encoder = tiny_encoder(tokenizer, causal)
    ids, mask = tokenizer.encode(TEXTS[:1], max_length=16)
    j = 4
    changed = ids.clone()
    changed[0, j] = 4 + VOCABULARY.index("blue")
    assert changed[0, j] != ids[0, j]
    with torch.no_grad():
        before, after = encoder(ids, mask), encoder(changed, mask)
    difference = (before - after).abs().amax(dim=-1)[0]  # (L,)
    if causal:
        assert float(difference[:j].max()) == 0.0
    else:
        assert float(difference[:j].min()) > 1e-4  # every earlier token sees token j
    assert float(difference[j:int(mask.sum())].min()) > 1e-4


def test_layers_and_pooled(tokenizer):
    encoder = tiny_encoder(tokenizer, causal=False)
    ids, mask = encoder.tokenize(TEXTS)
    assert ids.shape == (3, 24)
    with torch.no_grad():
        states = encoder.hidden_states(ids, mask)
        assert len(states) == encoder.config.depth + 1 and all(s.shape == (3, 24, 32) for s in states)
        for layer in range(-3, 3):
            assert torch.equal(encoder(ids, mask, layer=layer), states[layer])
        features, feature_mask = encoder.encode(TEXTS, layer=-2)
        assert torch.equal(features, states[-2]) and torch.equal(feature_mask, mask)
        last = states[-1][mask]  # after the final LayerNorm (weight 1, bias 0 at init): zero mean, unit variance
        assert torch.allclose(last.mean(-1), torch.zeros(len(last)), atol=1e-5)
        assert torch.allclose(last.var(-1, unbiased=False), torch.ones(len(last)), atol=1e-3)
        pooled = encoder.pooled(TEXTS, layer=1)
    for row in range(3):
        expected = states[1][row, mask[row]].mean(dim=0)  # mean over the real tokens only
        assert torch.allclose(pooled[row], expected, atol=1e-6)
    with pytest.raises(ValueError, match="layer 3 does not exist"):
        encoder(ids, mask, layer=3)
    with pytest.raises(ValueError, match="first token must be real"):
        encoder(ids, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="vocab_size"):
        TextEncoder(TextEncoderConfig(10), tokenizer)


def test_token_head_is_tied(tokenizer):
    encoder = tiny_encoder(tokenizer, causal=True)
    shapes = [tuple(p.shape) for name, p in encoder.named_parameters() if name != "token_embedding.weight"]
    assert (tokenizer.vocab_size, 32) not in shapes
    features = torch.randn(2, 5, 32)
    expected = features @ encoder.token_embedding.weight.T + encoder.output_bias
    assert torch.equal(encoder.token_logits(features), expected)


# ---------------------------------------------------------------- pretraining

def test_masking(tokenizer):
    ids, mask = tokenizer.encode([caption(s) for s in sample_scenes(400, seed=0)], max_length=40)
    corrupted, chosen = mask_tokens(ids, mask, 0.15, tokenizer.vocab_size, torch.Generator().manual_seed(0))
    words = mask & (ids != BOS) & (ids != EOS)
    assert not bool((chosen & ~words).any())  # never [PAD], [BOS] or [EOS]
    assert abs(chosen.sum().item() / words.sum().item() - 0.15) < 0.01
    assert torch.equal(corrupted[~chosen], ids[~chosen])
    replaced = (corrupted[chosen] == MASK).float().mean().item()
    assert 0.75 < replaced < 0.85  # 80% [MASK], the rest random or kept
    evaluation, chosen = mask_tokens(ids, mask, 0.15, tokenizer.vocab_size, torch.Generator().manual_seed(0), replace=False)
    assert bool((evaluation[chosen] == MASK).all())


def test_next_token_loss(tokenizer):
    encoder = tiny_encoder(tokenizer, causal=True)
    ids, mask = tokenizer.encode(["a red circle", "two tiny blue boxes at the top and the center"], max_length=12)
    with torch.no_grad():
        loss, accuracy = pretraining_loss(encoder, ids, mask, torch.Generator())
        logits = encoder.token_logits(encoder(ids, mask))
    terms = [torch.nn.functional.cross_entropy(logits[n, i - 1], ids[n, i])
             for n in range(2) for i in range(1, 12) if mask[n, i]]  # predict token i from tokens < i
    assert len(terms) == 4 + 11  # the words and [EOS] of each text
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-6)
    assert 0 <= accuracy.item() <= 1


def test_pretraining_learns(tokenizer):
    """60 steps of a tiny causal LM beat always guessing the most common next token (0.11) by far (0.42 measured)."""
    config = TextEncoderConfig(tokenizer.vocab_size, dim=64, depth=1, num_heads=2, max_length=40, causal=True)
    recipe = PretrainRecipe(steps=60, batch_size=32, lr=5e-3)
    encoder = pretrain.train_text_encoder(config, recipe, tokenizer, progress=False)
    ids, mask = tokenizer.encode(pretrain.heldout_captions(0, 256), max_length=40)
    targets = ids[:, 1:][mask[:, 1:]]
    most_common = targets.bincount().max().item() / len(targets)
    assert pretrain.heldout_accuracy(encoder, recipe, n=256) > most_common + 0.2


def test_cache(tokenizer, tmp_path, monkeypatch):
    config = TextEncoderConfig(tokenizer.vocab_size, dim=16, depth=1, num_heads=2, max_length=40)
    recipe = PretrainRecipe(steps=2, batch_size=4)
    first = load_or_train(config, recipe, tokenizer, tmp_path, progress=False)
    path = tmp_path / "text" / f"bidirectional-{pretrain.content_hash(config, recipe, tokenizer)[:16]}.pt"
    assert first.pretraining["path"] == str(path) and path.is_file()
    assert re.fullmatch(r"bidirectional-[0-9a-f]{16}\.pt", path.name)
    assert not first.training and not any(p.requires_grad for p in first.parameters())

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the cache holds this encoder")

    with monkeypatch.context() as patch:
        patch.setattr(pretrain, "train_text_encoder", no_training)
        second = load_or_train(config, recipe, tokenizer, tmp_path, progress=False)
    assert second.pretraining == first.pretraining
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys()
    assert all(torch.equal(first_state[k], second_state[k]) for k in first_state)

    other = pretrain.cache_path(config, PretrainRecipe(steps=3, batch_size=4), tokenizer, tmp_path)
    assert other != path  # another recipe, another file

    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unusable .*training it again"):
        rebuilt = load_or_train(config, recipe, tokenizer, tmp_path, progress=False)
    assert all(torch.equal(rebuilt.state_dict()[k], first_state[k]) for k in first_state)  # training is deterministic
    assert load_or_train(config, recipe, tokenizer, tmp_path, progress=False).pretraining == first.pretraining


def test_pretrained_encoder(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDIT_CACHE", str(tmp_path))
    encoder = pretrained_encoder("causal", steps=1, progress=False)
    assert encoder.config.causal and encoder.dim == 128 and encoder.tokenizer.words == VOCABULARY
    assert encoder.pretraining["objective"] == "next-token"
    assert encoder.pretraining["path"].startswith(str(tmp_path / "text" / "causal-"))
    features, mask = encoder.encode(["a big green diamond in the lower right corner"])
    assert features.shape == (1, 40, 128) and int(mask.sum()) == 11
    with pytest.raises(ValueError, match="unknown text encoder kind 'gpt'"):
        pretrained_encoder("gpt")


def test_learning_rate_schedule():
    factors = [pretrain.learning_rate_factor(step, 200) for step in range(200)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0  # 10 warm-up steps (5%)
    assert factors[10 + 95] == pytest.approx(0.5)  # half-way through the cosine
    assert factors[-1] == pytest.approx(0.5 * (1 + np.cos(np.pi * 189 / 190)))
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))


def test_long_kinds_read_96_positions_and_learn_from_running_text(tmp_path, monkeypatch):
    tokenizer = shapes_tokenizer()
    assert pretrain.encoder_config("causal-long", tokenizer).max_length == 96
    assert pretrain.encoder_config("bidirectional", tokenizer).max_length == 40
    assert not pretrain.encoder_config("bidirectional-long", tokenizer).causal
    texts = pretrain.training_captions(4, (0, 0, 0), captions_per_text=3, max_objects=4)
    assert len(texts) == 4 and all(text.count(" . ") == 2 for text in texts)
    # One caption per text and 3 objects are the default encoders' captions, unchanged.
    assert pretrain.training_captions(4, (0, 0, 0)) == pretrain.training_captions(4, (0, 0, 0), 1, 3)
    monkeypatch.setenv("MINIDIT_CACHE", str(tmp_path))
    encoder = pretrained_encoder("causal-long", steps=1, progress=False)
    assert encoder.config.max_length == 96 and encoder.config.causal
    assert encoder.pretraining["path"].startswith(str(tmp_path / "text" / "causal-long-"))


@pytest.mark.parametrize("train_encoder", [False, True])
def test_text_to_image_trains_its_encoder_only_when_asked(train_encoder):
    from minidit.dit import DiT, DiTConfig
    from minidit.text import TextToImage

    tokenizer = shapes_tokenizer()
    encoder = TextEncoder(TextEncoderConfig(tokenizer.vocab_size, dim=16, depth=1, num_heads=2), tokenizer)
    denoiser = DiT(DiTConfig(input_size=8, patch_size=4, in_channels=3, hidden_size=16, depth=1, num_heads=2,
                             num_classes=0, text_conditioning="cross", text_dim=16))
    for module in denoiser.modules():  # open the zero-initialised paths so the loss reaches the text
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.1)
    model = TextToImage(encoder, denoiser, train_encoder=train_encoder).train()
    ids, mask = model.encode_prompts(["a red circle at the top left", "a blue square at the center"])
    model(torch.randn(2, 3, 8, 8), torch.rand(2), ids, mask).square().sum().backward()
    grads = [p.grad for p in encoder.token_embedding.parameters()]
    assert encoder.training == train_encoder
    assert all(g is not None and g.abs().sum() > 0 for g in grads) if train_encoder else all(g is None for g in grads)
