"""minidit: diffusion transformers and flow models from scratch, one file per concept.

Start with ``minidit.interpolants`` (paths), ``minidit.weighting`` (predictions and losses),
``minidit.timesteps`` (time samplers) and ``minidit.samplers`` (ODE / SDE generation).
"""
__version__ = "0.1.0"
