"""Normalisation layers: LayerNorm, RMSNorm and the QK-norm that stabilises attention logits.

LayerNorm centres and scales each token; RMSNorm only rescales it by its root mean square, ``x / rms(x) * w``
(Zhang & Sennrich 2019), the choice of Flag-DiT (Lumina-T2X, arXiv 2405.05945, Sec. 2.1) and, applied to queries
and keys per head before the dot product, SD3's QK-norm (arXiv 2403.03206, Sec. 5.3.2) that keeps attention logits
bounded in mixed precision. Used by notebooks/04_flag_dit.ipynb and the DiT in ``minidit.dit``.

Example:
    >>> norm = make_norm("rmsnorm", 64, affine=False)     # adaLN norms carry no weights
    >>> y = norm(torch.randn(2, 16, 64))                  # (2, 16, 64), each token has unit RMS
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minidit.validation import check_choice

NORMS = ("layernorm", "rmsnorm")


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension: ``y = x / sqrt(mean(x^2) + eps) * weight``.

    The statistic is computed in float32 and the result cast back to the input dtype, so it is safe under
    bfloat16 autocast.

    Args:
        dim: size of the normalised (last) dimension.
        affine: learn a per-channel ``weight`` (initialised to 1); ``False`` for adaLN, which supplies its own scale.
        eps: added to the mean square for numerical safety.
    """

    def __init__(self, dim: int, affine: bool = True, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` of shape ``(..., dim)``; returns the same shape and dtype."""
        weight = self.weight.float() if self.weight is not None else None
        return F.rms_norm(x.float(), x.shape[-1:], weight, self.eps).to(x.dtype)  # PyTorch's own RMSNorm


def make_norm(kind: str, dim: int, affine: bool = True, eps: float = 1e-6) -> nn.Module:
    """Build a norm over the last dimension by name.

    Args:
        kind: ``"layernorm"`` (``torch.nn.LayerNorm``; ``affine`` adds weight and bias) or ``"rmsnorm"``.
        dim: size of the normalised (last) dimension.
        affine: learn the elementwise weight (and LayerNorm's bias); ``False`` inside adaLN blocks.
        eps: numerical epsilon.
    Raises:
        ValueError: if ``kind`` is not one of ``NORMS``.
    """
    check_choice("norm", kind, NORMS)
    if kind == "layernorm":
        return nn.LayerNorm(dim, elementwise_affine=affine, eps=eps)
    return RMSNorm(dim, affine=affine, eps=eps)


class QKNorm(nn.Module):
    """Normalise queries and keys per head (over ``head_dim``) before the attention dot product.

    With unit-RMS ``q`` and ``k`` the logit ``q . k / sqrt(d)`` is bounded by ``sqrt(d)`` times the learned weights,
    which prevents the logit growth that makes attention collapse and the loss diverge (SD3 Sec. 5.3.2).

    Args:
        kind: ``"layernorm"`` or ``"rmsnorm"``.
        head_dim: per-head channel count ``Dh``; the learned weights are shared across heads.
    """

    def __init__(self, kind: str, head_dim: int):
        super().__init__()
        self.query_norm = make_norm(kind, head_dim, affine=True)
        self.key_norm = make_norm(kind, head_dim, affine=True)

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Normalise ``q`` of shape ``(N, H, T, Dh)`` and ``k`` of shape ``(N, H, S, Dh)``; shapes unchanged."""
        return self.query_norm(q), self.key_norm(k)
