"""Text for text-to-image: a caption tokenizer, tiny bidirectional and causal text encoders, and a Hugging Face adapter.

``tokenizer`` (word level with a byte fallback), ``encoder`` (the transformer and its per-layer features),
``pretrain`` (masked-token / next-token pretraining, cached on disk), ``conditioning`` (pooling, the null caption
and ``TextToImage``, a frozen encoder in front of a denoiser), ``hf`` (``transformers`` models behind the
same interface, imported lazily). Used by notebooks/05_text_conditioning.ipynb to 08_llm_text_encoders.ipynb.
"""
from minidit.text.conditioning import CaptionEmbedder, TextToImage, build_text_encoder, masked_mean
from minidit.text.encoder import TextEncoder, TextEncoderConfig
from minidit.text.hf import HFTextEncoder
from minidit.text.pretrain import pretrained_encoder
from minidit.text.tokenizer import Tokenizer, shapes_tokenizer

__all__ = ["CaptionEmbedder", "HFTextEncoder", "TextToImage", "build_text_encoder", "masked_mean", "TextEncoder", "TextEncoderConfig", "Tokenizer", "pretrained_encoder", "shapes_tokenizer"]
