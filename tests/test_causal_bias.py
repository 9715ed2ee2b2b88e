"""The position-bias benchmark and the instruction: scenes and captions, cropping that leaves exactly the prompt's
tokens, alignment by prompt position from analyser reports, and the linear probe."""
from __future__ import annotations

import pytest
import torch

from minidit.causal_bias import (INSTRUCTION, PROBED, alignment_by_position, bias_captions, bias_scenes,
                                 cell_velocity_errors, encode_prompts, first_minus_last, instruction_crop,
                                 probe_by_position, relative_position, ridge_probe, text_gain_by_position)
from minidit.data.analyser import object_reports
from minidit.data.captions import parse_caption, parse_caption_ordered
from minidit.data.shapes import render
from minidit.text import TextEncoder, shapes_tokenizer
from minidit.text.pretrain import encoder_config


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    tokenizer = shapes_tokenizer()
    return TextEncoder(encoder_config("causal-long", tokenizer), tokenizer).eval()


def test_bias_scenes_and_captions():
    scenes = bias_scenes(200, objects=4, seed=0)
    assert scenes == bias_scenes(200, objects=4, seed=0)
    for scene in scenes:
        assert len(scene.objects) == 4
        for attribute in ("colour", "shape"):
            assert len({getattr(o, attribute) for o in scene.objects}) == 4
    captions = bias_captions(scenes, seed=1)
    assert all(set(parse_caption(c).objects) == set(s.objects) for c, s in zip(captions, scenes))
    # The prompt order is random: the first object named is not always the first in reading order.
    first_is_topmost = [parse_caption_ordered(c)[0] == min(s.objects, key=lambda o: (o.row, o.col))
                        for c, s in zip(captions, scenes)]
    assert 0.15 < sum(first_is_topmost) / len(first_is_topmost) < 0.4  # 1/4 expected
    with pytest.raises(ValueError, match="objects must be in"):
        bias_scenes(1, objects=6, seed=0)


def test_instruction_is_cropped_to_exactly_the_prompts_tokens(encoder):
    prompts = ["a big red circle at the top left and a small blue box at the center", "a green cross in the middle"]
    ids, mask, crop = instruction_crop(encoder.tokenize, INSTRUCTION, prompts)
    alone_ids, alone_mask = encoder.tokenize(prompts)
    instruction_tokens = int(encoder.tokenize([INSTRUCTION])[1].sum()) - 1  # without its [EOS]
    assert crop == instruction_tokens  # [BOS] and the instruction's words
    for row in range(len(prompts)):
        kept = ids[row, crop:][mask[row, crop:]]
        assert torch.equal(kept, alone_ids[row, 1:][alone_mask[row, 1:]])  # the prompt's words and [EOS], nothing else
    features, feature_mask = encode_prompts(encoder, prompts, instruction=INSTRUCTION)
    plain, plain_mask = encode_prompts(encoder, prompts)
    assert torch.equal(feature_mask, plain_mask[:, 1:])
    assert features.shape == (2, plain.shape[1] - 1, encoder.dim)
    # Same tokens, but read with the instruction in context: the features differ.
    assert (features - plain[:, 1:])[feature_mask].abs().max() > 1e-3
    # The layer is a setting: another layer gives other features.
    assert not torch.equal(encode_prompts(encoder, prompts, layer=-3)[0], plain)


def test_instruction_crop_refuses_a_tokenizer_that_merges_across_the_boundary():
    def tokenize(texts):  # as if "describe:" and the prompt's first word merged into one token
        rows = [[1, 7, 8, 2] if text == "describe:" else [1, 5, 9, 2] for text in texts]
        return torch.tensor(rows), torch.ones(len(rows), 4, dtype=torch.bool)

    with pytest.raises(ValueError, match="end the instruction with a separator"):
        instruction_crop(tokenize, "describe:", ["a red circle"])


def test_alignment_by_position_and_first_minus_last():
    scenes = bias_scenes(6, objects=3, seed=0)
    captions = bias_captions(scenes, seed=0)
    images = render(scenes, 24)
    exact = alignment_by_position(object_reports(images, captions))
    assert set(exact) == {(3, 0), (3, 1), (3, 2)}
    assert all(torch.equal(hits, torch.ones(6)) for hits in exact.values())  # the scenes themselves align exactly
    # Remove the last-named object of every image: only position 2 drops, to 0.
    trimmed = []
    for scene, caption in zip(scenes, captions):
        last = parse_caption_ordered(caption)[-1]
        trimmed.append(type(scene)(tuple(o for o in scene.objects if o != last)))
    hits = alignment_by_position(object_reports(render(trimmed, 24), captions))
    assert torch.equal(hits[3, 2], torch.zeros(6)) and torch.equal(hits[3, 0], torch.ones(6))
    assert torch.equal(first_minus_last(hits), torch.ones(6))
    assert relative_position(3, 0) == 0.0 and relative_position(3, 2) == 1.0 and relative_position(1, 0) == 0.0


def test_ridge_probe_reads_a_linear_code_and_not_noise():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (400,), generator=g)
    codes = torch.randn(5, 12, generator=g)
    x = codes[labels] + 0.05 * torch.randn(400, 12, generator=g)
    predicted = ridge_probe(x[:300], labels[:300], x[300:], 5)
    assert torch.equal(predicted, labels[300:])
    noise = torch.randn(400, 12, generator=g)
    assert (ridge_probe(noise[:300], labels[:300], noise[300:], 5) == labels[300:]).float().mean() < 0.4


def test_probe_by_position_shapes(encoder):
    hits = probe_by_position(encoder, objects=2, n_train=40, n_test=20, seed=0)
    assert set(hits) == {(attribute, j) for attribute in PROBED for j in range(2)}
    assert all(h.shape == (20,) and set(h.tolist()) <= {0.0, 1.0} for h in hits.values())


class Oracle(torch.nn.Module):
    """Knows the clean images: the exact velocity (x_t - x0) / t with a caption, 0 with the null caption."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, text, force_drop):
        exact = (x - self.x0) / t[:, None, None, None]
        return torch.where(force_drop[:, None, None, None], torch.zeros_like(x), exact)


def test_text_gain_is_one_for_an_oracle_and_zero_for_a_model_that_ignores_the_prompt():
    scenes = bias_scenes(5, objects=3, seed=2)
    captions = bias_captions(scenes, seed=2)
    x0 = render(scenes, 24)
    conditioning = {"text": torch.zeros(5, 1, 1)}
    oracle = Oracle(x0).train()
    errors = cell_velocity_errors(oracle, x0, conditioning, (0.5,))
    assert errors.shape == (5, 9) and errors.abs().max() < 1e-10 and oracle.training  # its mode given back
    gain = text_gain_by_position(oracle, x0, captions, conditioning)
    assert set(gain) == {(3, 0), (3, 1), (3, 2)}
    assert all(torch.allclose(g, torch.ones(5)) for g in gain.values())

    def ignores_the_prompt(x, t, text, force_drop):
        return x * 0.3
    ignores = torch.nn.Module()
    ignores.forward = ignores_the_prompt
    assert all(torch.equal(g, torch.zeros(5)) for g in text_gain_by_position(ignores, x0, captions, conditioning).values())
    with pytest.raises(ValueError, match="do not split into 3x3 cells"):
        cell_velocity_errors(oracle, x0[:, :, :16, :16], conditioning, (0.5,))
