"""From your DiT to the real ones: converters between minidit's models and production weights.

Each module maps one production format onto the minidit model that computes the same function, parameter by
parameter, and accounts for every weight on both sides (a weight that is not used is an error, never silently
dropped): ``dit`` (official DiT and SiT checkpoints, diffusers' ``DiTTransformer2DModel``), ``pixart`` (diffusers'
``PixArtTransformer2DModel``), ``sd3`` (diffusers' ``SD3Transformer2DModel`` and minidit's ``MMDiT``) and ``vae``
(a diffusers ``AutoencoderKL`` as the optional latent codec). Optional dependencies (``diffusers``, ``transformers``:
``pip install minidit[hub]``) are imported lazily, with a clear message when missing; weights load from local paths
only. Used by notebooks/10_pretrained.ipynb.
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
