"""Norms: RMSNorm's closed form, LayerNorm statistics, and the logit bound that QK-norm guarantees."""
import math

import pytest
import torch

from minidit.norms import NORMS, QKNorm, RMSNorm, make_norm


def test_rmsnorm_matches_closed_form():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, dtype=torch.float64) * 4 + 1
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 16))
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * torch.linspace(0.5, 2.0, 16, dtype=torch.float64)
    torch.testing.assert_close(norm(x), expected.float().to(x.dtype), rtol=1e-6, atol=1e-6)


def test_rmsnorm_without_affine_gives_unit_rms_and_no_parameters():
    x = torch.randn(4, 32) * 100
    norm = make_norm("rmsnorm", 32, affine=False)
    assert sum(p.numel() for p in norm.parameters()) == 0
    rms = norm(x).pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones(4), rtol=1e-5, atol=1e-5)


def test_rmsnorm_keeps_bfloat16_dtype_and_accuracy():
    x = torch.randn(8, 64)
    norm = RMSNorm(64)
    y16 = norm(x.bfloat16())
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), norm(x), rtol=1e-2, atol=1e-2)


def test_layernorm_without_affine_standardises_each_token():
    x = torch.randn(6, 48) * 3 + 7
    norm = make_norm("layernorm", 48, affine=False)
    y = norm(x)
    assert sum(p.numel() for p in norm.parameters()) == 0
    torch.testing.assert_close(y.mean(-1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(6), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind, per_norm_parameters", [("rmsnorm", 1), ("layernorm", 2)])
def test_affine_parameter_counts(kind, per_norm_parameters):
    assert sum(p.numel() for p in make_norm(kind, 10).parameters()) == per_norm_parameters * 10
    assert sum(p.numel() for p in QKNorm(kind, 10).parameters()) == 2 * per_norm_parameters * 10


def test_unknown_norm_lists_valid_names():
    with pytest.raises(ValueError, match="valid norms are: 'layernorm', 'rmsnorm'"):
        make_norm("batchnorm", 8)
    assert NORMS == ("layernorm", "rmsnorm")


@pytest.mark.parametrize("kind", NORMS)
def test_qk_norm_bounds_attention_logits(kind):
    """Unit-RMS q and k (weights 1) give |q.k| / sqrt(d) <= sqrt(d) by Cauchy-Schwarz, however large the input."""
    torch.manual_seed(0)
    head_dim = 16
    q, k = torch.randn(2, 3, 10, head_dim) * 1e3, torch.randn(2, 3, 12, head_dim) * 1e3
    qn, kn = QKNorm(kind, head_dim)(q, k)
    assert qn.shape == q.shape and kn.shape == k.shape
    raw_logits = q @ k.transpose(-2, -1) / math.sqrt(head_dim)
    logits = qn @ kn.transpose(-2, -1) / math.sqrt(head_dim)
    assert raw_logits.abs().max() > 1e4
    assert logits.abs().max() <= math.sqrt(head_dim) * (1 + 1e-5)
    # normalisation is per head and per token: every (N, H, T) vector has RMS 1 (RMSNorm) or std 1 (LayerNorm)
    spread = qn.pow(2).mean(-1) if kind == "rmsnorm" else qn.var(-1, unbiased=False)
    torch.testing.assert_close(spread, torch.ones(2, 3, 10), rtol=1e-4, atol=1e-4)
