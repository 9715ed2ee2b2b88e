"""From your DiT to the real ones: converters between minidit's models and production weights.

Each module maps one production format onto the minidit model that computes the same function, parameter by
parameter, and accounts for every weight on both sides (a weight that is not used is an error, never silently
dropped): ``dit`` (official DiT and SiT checkpoints, diffusers' ``DiTTransformer2DModel``), ``pixart`` (diffusers'
``PixArtTransformer2DModel``), ``sd3`` (diffusers' ``SD3Transformer2DModel`` and minidit's ``MMDiT``), ``lumina``
(the attention of diffusers' ``LuminaNextDiT2DModel``, below) and ``vae``
(a diffusers ``AutoencoderKL`` as the optional latent codec). Optional dependencies (``diffusers``, ``transformers``:
``pip install minidit[hub]``) are imported lazily, with a clear message when missing; weights load from local paths
only. Used by notebooks/10_pretrained.ipynb.

Lumina-Next (diffusers' ``LuminaNextDiT2DModel``) is not converted: its block is not minidit's block with other
weights. No parameter mapping expresses (1) tanh on the adaLN gates, (2) an RMSNorm on each branch's output before
its gate (sandwich norm), (3) a SwiGLU MLP, (4) QK-norm as one LayerNorm over all heads together, (5) grouped key /
value heads, (6) caption features entering the cross-attention at the text encoder's width, RMS-normalised there with
no caption MLP, (7) modulations read from a ``min(D, 1024)``-wide conditioning, (8) time fed to the sin-cos features
as ``t`` in [0, 1] (minidit: ``1000 t``), (9) a LayerNorm final layer after RMSNorm blocks; each would be a
``DiTConfig`` switch that no lecture uses. What minidit teaches from Lumina does map: ``lumina`` loads a block's
attention, self-attention plus the tanh-gated cross-attention on the shared rotated query, summed per head before one
output projection (``minidit.gating``), into a ``DiTBlock``, reordering the RoPE channel pairs (Lumina interleaves
the row and column pairs, minidit concatenates them); tests/test_lumina_next.py proves it equal on every block.
"""
from __future__ import annotations

from typing import Any


def require_diffusers() -> Any:
    """Import and return ``diffusers``, or raise ``ImportError`` saying how to install it (the converters' one
    optional dependency)."""
    try:
        import diffusers
    except ImportError as error:
        raise ImportError("this converter needs the diffusers package: pip install minidit[hub] "
                          "(or pip install diffusers)") from error
    return diffusers
