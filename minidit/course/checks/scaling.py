"""Checks and questions of the chapter "scaling", a DiT's FLOPs and a power law (exercises/17_scaling_flops.ipynb).

References: DiT's compute is counted in FLOPs of the forward pass, the Gflops of its Table 4 being multiply-adds
(Peebles & Xie, arXiv 2212.09748, Sec. 3.2 and Table 4: DiT-XL/2 at 256x256 "118.6 Gflops"); SD3's scaling study fits
the validation loss as a power law ``L = c C^b`` of training compute (Esser et al., arXiv 2403.03206, Sec. 5.3, Fig. 8),
a straight line in log-log axes (``minidit.scaling.fit_power_law``). ``dit_forward_flops`` is checked against
``minidit.scaling.forward_flops``, which **counts** the products of minidit's DiT built on the ``meta`` device.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from minidit.course.checks.core import Case, Check, Question, generator, register, register_question
from minidit.dit import PRESETS, DiT, DiTConfig


def _dit_input(config: DiTConfig, height: int, width: int) -> tuple[DiT, Tensor, dict[str, Tensor]]:
    """The model of ``config``, one image and its label, all on the ``meta`` device (shapes only, no memory)."""
    with torch.device("meta"):
        model = DiT(config)
        x = torch.zeros(1, config.in_channels, height, width)  # (1, C, H, W)
        labels = {"y": torch.zeros(1, dtype=torch.long)} if config.num_classes else {}
    return model, x, labels


def _forward_flops_reference(config: DiTConfig, height: int, width: int) -> Tensor:
    from minidit.scaling import forward_flops

    return torch.tensor(float(forward_flops(*_dit_input(config, height, width))), dtype=torch.float64)


def xl2(input_size: int = 32) -> DiTConfig:
    """DiT-XL/2 as published for ImageNet: 4 latent channels in, 8 out (noise and variance), 1000 classes."""
    return DiTConfig(**PRESETS["DiT-XL/2"], input_size=input_size, in_channels=4, out_channels=8, num_classes=1000)


def _forward_flops_cases() -> list[Case]:
    configs = [
        (DiTConfig(input_size=16, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4), 16, 16),
        (DiTConfig(input_size=32, patch_size=4, in_channels=3, hidden_size=96, depth=3, num_heads=6, mlp_ratio=2.0,
                   num_classes=10), 32, 16),
        (DiTConfig(input_size=8, patch_size=2, in_channels=4, out_channels=8, hidden_size=48, depth=1, num_heads=3,
                   mlp_ratio=3.3, frequency_embedding_size=128), 8, 24),
        (xl2(), 32, 32),
    ]
    return [Case(f"depth={c.depth}, hidden_size={c.hidden_size}, patch_size={c.patch_size}, in_channels={c.in_channels}"
                 f", out_channels={c.out_channels}, mlp_ratio={c.mlp_ratio}, frequency_embedding_size="
                 f"{c.frequency_embedding_size}, num_classes={c.num_classes}, image {h}x{w}", (c, h, w))
            for c, h, w in configs]


register(Check(
    name="dit_forward_flops",
    reference=_forward_flops_reference,
    cases=_forward_flops_cases,
    hints=(
        "count 2 FLOPs per multiply-add of every matrix product of one forward pass of one sample: a linear layer "
        "from a to b features applied to T tokens costs 2 T a b; biases, norms, activations and the label lookup cost "
        "nothing here; the attention products Q K^T and A V cost 2 T T D each (all heads together)",
        "the parts: the patch embedding (p p C_in -> D on T tokens), the time MLP (frequency_embedding_size -> D -> D "
        "on 1 token), per block the adaLN modulation (D -> 6 D on 1 token), q/k/v (D -> 3 D), the attention products, "
        "the output projection (D -> D) and the MLP (D -> int(mlp_ratio D) -> D), then the final layer's modulation "
        "(D -> 2 D on 1 token) and linear (D -> p p C_out); T = (height / p) (width / p)",
        "T = (height // p) * (width // p); M = int(D * mlp_ratio); per block 2 D 6 D + 2 T D 3 D + 4 T T D + 2 T D D "
        "+ 2 T D M + 2 T M D; plus 2 T p p C_in D + 2 (F D + D D) + 2 D 2 D + 2 T D p p C_out, with F = "
        "config.frequency_embedding_size and C_out = config.out_channels; an int",
    ),
    atol=0.5,
    rtol=1e-12,
))


def _power_law_reference(compute: Tensor, loss: Tensor) -> tuple[Tensor, Tensor]:
    from minidit.scaling import fit_power_law

    law = fit_power_law(compute, loss)
    return torch.tensor(law.coefficient, dtype=torch.float64), torch.tensor(law.exponent, dtype=torch.float64)


def _power_law_cases() -> list[Case]:
    cases = []
    for index, (coefficient, exponent, n, low, high, noise) in enumerate((
            (3.0, -0.3, 5, 1e2, 1e6, 0.0), (50.0, -0.25, 8, 1e12, 1e16, 0.05), (0.9, -0.05, 3, 1e15, 4e15, 0.01),
            (2e3, -0.5, 12, 1e9, 1e14, 0.2))):
        g = generator(170 + index)
        compute = torch.logspace(math.log10(low), math.log10(high), n, dtype=torch.float64)
        compute = compute[torch.randperm(n, generator=g)]  # in no particular order
        loss = coefficient * compute**exponent * torch.exp(noise * torch.randn(n, generator=g, dtype=torch.float64))
        label = (f"{n} points, compute {low:g} to {high:g}, loss {coefficient:g} C^{exponent:g} times "
                 f"exp({noise:g} N(0, 1)) noise")
        cases.append(Case(label, (compute, loss)))
    return cases


register(Check(
    name="fit_power_law",
    reference=_power_law_reference,
    cases=_power_law_cases,
    hints=(
        "a power law L = c C^b is a straight line in log-log axes, log L = log c + b log C: fit that line by least "
        "squares, with log C as the input and log L as the output (not the other way round, not on linear axes)",
        "with x = log(compute) and y = log(loss) (natural logs): b = sum (x - mean x)(y - mean y) / sum (x - mean x)^2, "
        "log c = mean y - b mean x",
        "x, y = compute.log(), loss.log(); xc = x - x.mean(); b = (xc * (y - y.mean())).sum() / xc.square().sum(); "
        "return (y.mean() - b * x.mean()).exp(), b: two 0-d tensors (coefficient, exponent)",
    ),
    output_names=("coefficient", "exponent"),
    atol=1e-9,
    rtol=1e-7,
))


def _gflops_ratio() -> tuple[float, str]:
    from minidit.scaling import forward_flops

    flops = forward_flops(*_dit_input(xl2(), 32, 32))
    return round(flops / 118.6e9, 3), (f"minidit counts {flops / 1e9:.2f} GFLOPs for one forward pass of DiT-XL/2 at "
                                       f"256x256, {flops / 118.6e9:.4f} times the paper's 118.6: its Gflops count "
                                       "multiply-adds, one per multiplication and addition pair.")


def _attention_share() -> tuple[tuple[float, float], str]:
    from minidit.scaling import AttentionFlops, forward_flops

    shares = []
    for latent in (32, 64):  # 256x256 and 512x512 images: 256 and 1024 tokens
        attention = AttentionFlops()  # sees the same forward pass as forward_flops
        with attention:
            total = forward_flops(*_dit_input(xl2(latent), latent, latent))
        shares.append(attention.flops / total)
    return (round(shares[0], 4), round(shares[1], 4)), (
        f"AttentionFlops over forward_flops for DiT-XL/2 on the meta device: {shares[0]:.2%} of the FLOPs at 256x256 "
        f"(256 tokens), {shares[1]:.2%} at 512x512 (1024 tokens); the linear layers grow with T, attention with T^2.")


def _compute_to_halve_the_loss() -> tuple[float, str]:
    from minidit.course.reference import load_reference

    reference = load_reference("11_scaling")
    if reference is None:
        raise FileNotFoundError("notebooks/reference/11_scaling.json is missing: run `make reference "
                                "NOTEBOOKS=notebooks/11_scaling.ipynb` to measure the lecture's exponent")
    exponent = reference["claims"][0]["values"]["exponent b"]
    factor = 2 ** (-1 / exponent)
    return round(factor, 3), (f"the lecture's full run measured b = {exponent:.4f}; L = c C^b halves when C grows by "
                              f"2^(-1/b) = {factor:.3f}.")


register_question(Question(
    name="gflops_ratio",
    prompt="Your FLOPs of DiT-XL/2 at 256x256 divided by the paper's 118.6e9 (its Table 4 'Gflops')?",
    compute=_gflops_ratio,
    atol=0.01,
))
register_question(Question(
    name="attention_share",
    prompt="The share of DiT-XL/2's forward FLOPs in the attention products Q K^T and A V, at 256x256 and at 512x512?",
    compute=_attention_share,
    atol=0.005,
))
register_question(Question(
    name="compute_to_halve_loss",
    prompt="By what factor must training compute grow to halve the loss under the lecture's power law?",
    compute=_compute_to_halve_the_loss,
    rtol=0.02,
))
