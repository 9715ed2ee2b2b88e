"""Every modality as frames for one model: images, videos, multi-view images and audio spectrograms ``[H, W, T, C]``.

Lumina-T2X (arXiv 2405.05945, Sec. 2.2) trains one Flag-DiT on all of its modalities by casting each to frames and
telling them apart only by the text. ``JointFrames`` does the same with minidit's generators: batch ``step`` comes from
one modality, in turn (``MODALITIES[step % M]`` of those given), with the modality's word before every caption
("video: a small red circle moving right"), so each batch has one frame size and needs no padding; one channel
(audio) is repeated to three so that every modality shares the model's ``in_channels``. ``ImageFrames`` serves the
shapes world's images as one-frame clips (``T = 1``). ``frames_tokenizer`` knows the words of every modality's
captions. Used by notebooks/09_any_modality.ipynb and configs/frames_*.toml.

Example:
    >>> joint = JointFrames({"image": ImageFrames(24), "video": VideoDataset(24, 8)}, frames_tokenizer())
    >>> x, conditioning = joint.get_batch(step=1, batch_size=4)   # video: (4, 24, 24, 8, 3), text_ids (4, 32)
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from minidit.data.shapes import ShapesDataset
from minidit.text.tokenizer import Tokenizer

MODALITIES = ("image", "video", "multiview", "audio")
CHANNELS = 3  # every modality's frames are brought to this many channels in a joint batch


def frames_tokenizer() -> Tokenizer:
    """A tokenizer over the words of the shapes captions, of every modality's captions, ``MODALITIES`` and ":"."""
    from minidit.data import audio, captions, multiview, video

    words = [*captions.VOCABULARY, *video.VOCABULARY, *multiview.VOCABULARY, *audio.VOCABULARY, *MODALITIES, ":"]
    return Tokenizer(list(dict.fromkeys(words)))  # first occurrence order, no duplicates


class ImageFrames:
    """The shapes world's captioned images as one-frame clips ``(N, H, W, 1, 3)`` (single objects, template captions).

    Args:
        resolution: image side in pixels.
        seed: the stream's seed.
        max_objects: objects per image (1 to 3).
    """

    def __init__(self, resolution: int = 24, seed: int = 0, max_objects: int = 1):
        self.images = ShapesDataset(resolution, 1, max_objects, seed, captions="template")
        self.tokenizer = None

    def captions(self, step: int, batch_size: int) -> list[str]:
        """The template captions of batch ``step``."""
        return self.images.captions(step, batch_size)

    def get_batch(self, step: int, batch_size: int) -> tuple[Tensor, dict[str, Any]]:
        """Images of batch ``step`` as frames ``(N, H, W, 1, 3)``; no conditioning (``JointFrames`` tokenises)."""
        from minidit.data.shapes import render

        images = render(self.images.scenes(step, batch_size), self.images.resolution)  # (N, 3, H, W)
        return images.permute(0, 2, 3, 1).unsqueeze(3), {}  # (N, H, W, 1, 3)


class JointFrames:
    """Batches of one modality at a time, in turn, with the modality's word before each caption.

    Args:
        sources: modality name (one of ``MODALITIES``) -> a frames data source with ``get_batch`` and ``captions``.
        tokenizer: tokenises the prefixed captions (``frames_tokenizer()``).
        text_length: tokens per caption.
    """

    def __init__(self, sources: Mapping[str, Any], tokenizer: Tokenizer, text_length: int = 32):
        unknown = sorted(set(sources) - set(MODALITIES))
        if not sources or unknown:
            raise ValueError(f"sources must map modality names {MODALITIES} to data sources; got {sorted(sources)}")
        self.names = [name for name in MODALITIES if name in sources]  # a fixed order, whatever the mapping's
        self.sources = dict(sources)
        self.tokenizer, self.text_length = tokenizer, text_length

    def modality(self, step: int) -> str:
        """The modality of batch ``step``."""
        return self.names[step % len(self.names)]

    def captions(self, step: int, batch_size: int) -> list[str]:
        """The prefixed captions of batch ``step``, e.g. ``"audio: two short high beeps"``."""
        name = self.modality(step)
        return [f"{name}: {text}" for text in self.sources[name].captions(step // len(self.names), batch_size)]

    def get_batch(self, step: int, batch_size: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Frames ``(N, H, W, T, 3)`` of batch ``step`` and ``{"text_ids", "text_mask"}`` of its prefixed captions."""
        name = self.modality(step)
        x, _ = self.sources[name].get_batch(step // len(self.names), batch_size)  # (N, H, W, T, C)
        if x.shape[-1] == 1:
            x = x.expand(*x.shape[:-1], CHANNELS)  # (N, H, W, T, 3): one channel repeated
        ids, mask = self.tokenizer.encode(self.captions(step, batch_size), self.text_length)
        return x.contiguous(), {"text_ids": ids, "text_mask": mask}


def channel_mean(x: Tensor) -> Tensor:
    """Frames ``(N, H, W, T, 3)`` of a one-channel modality back to ``(N, H, W, T, 1)``: the mean of the channels."""
    return x.mean(dim=-1, keepdim=True)

