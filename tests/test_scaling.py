"""Scaling-law tools: counted FLOPs against hand counts, power-law fits against known laws, rank correlation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minidit.dit import DiT
from minidit.mmdit import MMDiT
from minidit.scaling import (cluster_bootstrap_se, fit_power_law, fit_power_law_with_floor, forward_flops, ranks,
                             spearman, training_flops)


class TwoLayers(nn.Module):
    """``x -> W2 relu(W1 x)``, ignoring ``t``: its FLOPs are known by hand."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.first, self.second = nn.Linear(d_in, hidden), nn.Linear(hidden, d_out)

    def forward(self, x, t):
        return self.second(torch.relu(self.first(x)))


class OneAttention(nn.Module):
    """A linear q/k/v projection and one SDPA call over ``T`` tokens of width ``H * Dh``."""

    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.qkv = heads, nn.Linear(heads * head_dim, 3 * heads * head_dim, bias=False)

    def forward(self, x, t):
        n, tokens, width = x.shape
        q, k, v = self.qkv(x).reshape(n, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # (N, H, T, Dh) each
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, tokens, width)


def test_training_flops_of_linear_layers_are_the_hand_count():
    # forward 2 N i h + 2 N h o; backward: the first layer's weight gradient only (x needs no gradient), 2 N i h,
    # the second layer's weight and input gradients, 4 N h o.
    n, d_in, hidden, d_out = 5, 7, 11, 3
    flops = training_flops(TwoLayers(d_in, hidden, d_out), torch.randn(n, d_in))
    assert flops == 4 * n * d_in * hidden + 6 * n * hidden * d_out


def test_training_flops_add_three_times_the_attention_products():
    n, tokens, heads, head_dim = 2, 6, 2, 4
    width = heads * head_dim
    flops = training_flops(OneAttention(heads, head_dim), torch.randn(n, tokens, width))
    projection = 4 * (n * tokens) * width * 3 * width  # weight gradient only (x needs no gradient)
    attention = 4 * n * heads * tokens * tokens * head_dim  # Q K^T and A V of the forward
    assert flops == projection + 3 * attention


@pytest.mark.parametrize("device", ["cpu", "meta"])  # the CPU's fused SDPA is added by hand; on meta it is counted
def test_forward_flops_are_the_hand_count_with_the_attention_once(device):
    n, tokens, heads, head_dim = 2, 6, 2, 4
    width = heads * head_dim
    with torch.device(device):
        model, x = OneAttention(heads, head_dim), torch.randn(n, tokens, width)
    projection = 2 * (n * tokens) * width * 3 * width
    assert forward_flops(model, x) == projection + 4 * n * heads * tokens * tokens * head_dim


def test_dit_xl2_forward_flops_are_twice_the_papers_gflops():
    # DiT Table 4: DiT-XL/2 at 256x256 (32x32x4 latents) "118.6 Gflops", which are multiply-adds; built on meta
    with torch.device("meta"):
        model = DiT.from_preset("DiT-XL/2", input_size=32, in_channels=4, out_channels=8, num_classes=1000)
        x, y = torch.zeros(1, 4, 32, 32), torch.zeros(1, dtype=torch.long)
    assert round(forward_flops(model, x, {"y": y}) / 2e9, 1) == 118.6


def test_training_flops_of_an_mmdit_grow_linearly_with_the_batch_and_leave_no_gradients():
    torch.manual_seed(0)
    model = MMDiT.from_depth(1, input_size=8, patch_size=4, in_channels=3, text_dim=8)
    text, mask = torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)
    one = training_flops(model, torch.randn(1, 3, 8, 8), {"text": text[:1], "text_mask": mask[:1]})
    two = training_flops(model, torch.randn(2, 3, 8, 8), {"text": text, "text_mask": mask})
    assert one > 0 and two == 2 * one
    assert all(p.grad is None for p in model.parameters())


def test_training_flops_refuses_a_model_without_trainable_parameters():
    with pytest.raises(ValueError, match="no trainable parameters"):
        training_flops(TwoLayers(2, 2, 2).requires_grad_(False), torch.randn(1, 2))


def test_power_law_fit_recovers_an_exact_law_with_zero_standard_error():
    compute = torch.logspace(10, 14, 6, dtype=torch.float64)
    law = fit_power_law(compute, 3.0 * compute.pow(-0.2))
    assert law.exponent == pytest.approx(-0.2, abs=1e-12)
    assert law.coefficient == pytest.approx(3.0, rel=1e-9)
    assert law.exponent_se == pytest.approx(0.0, abs=1e-10) and law.floor == 0.0
    assert law(1e16).item() == pytest.approx(3.0 * 1e16 ** -0.2, rel=1e-9)


def test_power_law_exponent_standard_error_matches_its_scatter_over_noise_draws():
    # log L = a + b log C + noise: the slope's spread over many draws is what the fit's standard error predicts.
    generator = torch.Generator().manual_seed(0)
    compute = torch.logspace(10, 13, 7, dtype=torch.float64)
    slopes, ses = [], []
    for _ in range(400):
        noise = 0.05 * torch.randn(7, generator=generator, dtype=torch.float64)
        law = fit_power_law(compute, (0.5 - 0.1 * compute.log() + noise).exp())
        slopes.append(law.exponent)
        ses.append(law.exponent_se)
    spread = torch.tensor(slopes).std().item()
    expected = 0.05 / (compute.log() - compute.log().mean()).square().sum().sqrt().item()
    assert spread == pytest.approx(expected, rel=0.15)
    assert torch.tensor(ses).square().mean().sqrt().item() == pytest.approx(expected, rel=0.15)
    assert torch.tensor(slopes).mean().item() == pytest.approx(-0.1, abs=3 * spread / 20)


def test_power_law_with_floor_recovers_floor_and_exponent_of_an_exact_law():
    compute = torch.logspace(10, 15, 8, dtype=torch.float64)
    loss = 0.05 + 40.0 * compute.pow(-0.3)
    law = fit_power_law_with_floor(compute, loss)
    assert law.floor == pytest.approx(0.05, rel=1e-4)
    assert law.exponent == pytest.approx(-0.3, rel=1e-4)
    assert law.coefficient == pytest.approx(40.0, rel=1e-3)
    assert law.residual_std < 1e-6 and law.parameters == 3
    assert law(compute).tolist() == pytest.approx(loss.tolist(), rel=1e-5)
    # without a floor the log-log line bends: the plain law fits worse and flattens the exponent
    plain = fit_power_law(compute, loss)
    assert plain.residual_std > 100 * law.residual_std and plain.exponent > -0.3


@pytest.mark.parametrize("compute, loss, message", [
    ([1.0, 2.0], [1.0, 0.5], "at least 3 points"),
    ([1.0, 2.0, 3.0], [1.0, 0.5], "one value per point"),
    ([1.0, 2.0, 3.0], [1.0, 0.0, 0.5], "positive and finite"),
    ([1.0, float("nan"), 3.0], [1.0, 0.7, 0.5], "positive and finite"),
    ([2.0, 2.0, 2.0], [1.0, 0.7, 0.5], "single value"),
])
def test_power_law_fit_rejects_bad_points_in_one_line(compute, loss, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(compute, loss)


def test_power_law_with_floor_needs_four_points():
    with pytest.raises(ValueError, match="at least 4 points"):
        fit_power_law_with_floor([1.0, 2.0, 3.0], [1.0, 0.7, 0.5])


def test_ranks_give_ties_their_mean_rank():
    assert ranks([10.0, 30.0, 20.0, 20.0]).tolist() == [1.0, 4.0, 2.5, 2.5]


def test_spearman_reads_order_only():
    x = torch.arange(1.0, 9.0)
    assert spearman(x, x.exp()) == pytest.approx(1.0)  # any increasing map
    assert spearman(x, -x.pow(3)) == pytest.approx(-1.0)
    assert spearman(x, torch.ones(8)) == 0.0  # a constant has no order
    y = torch.tensor([2.0, 1.0, 4.0, 3.0, 6.0, 5.0, 8.0, 7.0])
    d = ranks(x) - ranks(y)  # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1))
    assert spearman(x, y) == pytest.approx(1 - 6 * d.square().sum().item() / (8 * 63))


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, 5, (30,), generator=generator).double()
    y = x + torch.randint(0, 4, (30,), generator=generator).double()
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-12)


def test_cluster_bootstrap_keeps_groups_together():
    # Within every group x and y agree perfectly; across groups too: every replicate gives rho = 1, so se = 0.
    x = torch.arange(12.0)
    groups = [i // 3 for i in range(12)]
    assert cluster_bootstrap_se(x, 2 * x, groups, n_boot=50) == pytest.approx(0.0, abs=1e-12)
    noisy = x + torch.randn(12, generator=torch.Generator().manual_seed(0)) * 4
    se = cluster_bootstrap_se(x, noisy, groups, n_boot=200)
    assert 0 < se < 1 and math.isfinite(se)
    with pytest.raises(ValueError, match="at least 2 groups"):
        cluster_bootstrap_se(x, x, [0] * 12)
    with pytest.raises(ValueError, match="one entry per point"):
        cluster_bootstrap_se(x, x, groups[:5])
