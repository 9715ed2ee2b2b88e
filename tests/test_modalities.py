"""Every modality for one model: the joint stream's turns, prefixes, channels and tokens."""
import pytest
import torch

from minidit.data import audio, multiview, video
from minidit.data.modalities import MODALITIES, ImageFrames, JointFrames, channel_mean, frames_tokenizer
from minidit.data.shapes import render


def joint() -> JointFrames:
    sources = {"audio": audio.AudioDataset(frames=2, seed=1), "video": video.VideoDataset(16, 3, seed=1),
               "image": ImageFrames(16, seed=1), "multiview": multiview.MultiViewDataset(16, 2, seed=1)}
    return JointFrames(sources, frames_tokenizer(), text_length=16)


def test_modalities_take_turns_in_a_fixed_order_with_their_word_before_each_caption():
    data = joint()
    assert [data.modality(step) for step in range(6)] == [*MODALITIES, *MODALITIES[:2]]
    assert data.captions(5, 3) == [f"video: {c}" for c in video.VideoDataset(16, 3, seed=1).captions(1, 3)]
    x, conditioning = data.get_batch(5, 3)
    assert torch.equal(x, video.VideoDataset(16, 3, seed=1).get_batch(1, 3)[0])
    tokenizer = data.tokenizer
    assert [tokenizer.decode(row) for row in conditioning["text_ids"]] == [
        " ".join(c.replace(":", " :").split()) for c in data.captions(5, 3)]
    assert torch.equal(conditioning["text_mask"], conditioning["text_ids"] != 0)


def test_one_channel_is_repeated_and_read_back_by_the_mean():
    data = joint()
    x, _ = data.get_batch(3, 2)  # audio
    sound, _ = audio.AudioDataset(frames=2, seed=1).get_batch(0, 2)
    assert x.shape == (*sound.shape[:-1], 3) and torch.equal(x[..., 2:], sound)
    torch.testing.assert_close(channel_mean(x), sound, atol=1e-6, rtol=0)  # the mean of three equal floats


def test_images_are_one_frame_clips():
    data = ImageFrames(16, seed=2)
    x, conditioning = data.get_batch(4, 3)
    assert x.shape == (3, 16, 16, 1, 3) and conditioning == {}
    assert torch.equal(x[:, :, :, 0].permute(0, 3, 1, 2), render(data.images.scenes(4, 3), 16))


def test_the_frames_tokenizer_knows_every_word_of_every_modality():
    tokenizer, data = frames_tokenizer(), joint()
    assert len(set(tokenizer.words)) == len(tokenizer.words)
    for step in range(8):
        for text in data.captions(step, 16):
            assert tokenizer.unknown_words(text) == [], text


def test_bad_sources_are_named():
    with pytest.raises(ValueError, match="modality names"):
        JointFrames({"speech": audio.AudioDataset()}, frames_tokenizer())
    with pytest.raises(ValueError, match="modality names"):
        JointFrames({}, frames_tokenizer())
