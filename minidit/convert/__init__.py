"""From your DiT to the real ones: converters between minidit's models and production weights.

Each module maps one production format onto the minidit model that computes the same function, parameter by
parameter, and accounts for every weight on both sides (a weight that is not used is an error, never silently
dropped): ``dit`` (official DiT and SiT checkpoints, diffusers' ``DiTTransformer2DModel``), ``pixart`` (diffusers'
``PixArtTransformer2DModel``), ``sd3`` (diffusers' ``SD3Transformer2DModel`` and minidit's ``MMDiT``) and ``vae``
(a diffusers ``AutoencoderKL`` as the optional latent codec). Optional dependencies (``diffusers``, ``transformers``:
``pip install minidit[hub]``) are imported lazily, with a clear message when missing; weights load from local paths
only. Used by notebooks/10_pretrained.ipynb.
"""
