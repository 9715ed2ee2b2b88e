"""Classifier-free guidance: exact limits, linearity in the scale, one batched call, and the flow it produces.

For two Gaussians of equal variance, N(mu_c, s0^2) and N(mu_u, s0^2), the linear-path velocity is affine in the
mean, v = -mu + k_t (x - (1 - t) mu) with k_t = V_t' / (2 V_t), so guiding with scale w gives exactly the velocity
of N(mu_u + w (mu_c - mu_u), s0^2): the guided ODE maps noise z to mu_u + w (mu_c - mu_u) + s0 z.
"""
from __future__ import annotations

import pytest
import torch

from minidit.guidance import broadcast_null_condition, classifier_free_guidance
from minidit.samplers import sample_ode

MEANS = torch.tensor([0.5, 2.0], dtype=torch.float64)  # label 0: the null (unconditional) mean, label 1: conditional
S0 = 0.3


def two_gaussian_velocity(x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Exact linear-path velocity of N(MEANS[label], S0^2) for x (N, 1), t (N,), label (N,)."""
    mu, t = MEANS[label][:, None], t[:, None]  # (N, 1)
    var, d_var = (1 - t) ** 2 * S0**2 + t**2, -2 * (1 - t) * S0**2 + 2 * t
    return -mu + d_var / (2 * var) * (x - (1 - t) * mu)


class RecordingModel:
    """A toy conditional model, nonlinear in x and in the condition, that records the batch size of every call."""

    def __init__(self):
        self.batch_sizes: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return torch.tanh(x * cond[:, None, :]) + t[:, None, None] * cond[:, None, :] ** 2  # (N, 3, 2)


def inputs(n: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 2, generator=generator)
    t = torch.rand(n, generator=generator)
    cond = torch.randn(n, 2, generator=generator)
    null = torch.zeros(2)
    return x, t, cond, null


def test_scale_one_is_the_conditional_model_in_one_call_of_size_n():
    x, t, cond, null = inputs()
    model = RecordingModel()
    guided = classifier_free_guidance(model, cond, null, 1.0)(x, t)
    assert model.batch_sizes == [6]
    torch.testing.assert_close(guided, RecordingModel()(x, t, cond), rtol=0, atol=0)


def test_scale_zero_is_the_unconditional_model():
    x, t, cond, null = inputs()
    unconditional = RecordingModel()(x, t, null.expand_as(cond))
    torch.testing.assert_close(classifier_free_guidance(RecordingModel(), cond, null, 0.0)(x, t), unconditional)


def test_guidance_is_one_batched_call_of_size_2n_and_affine_in_the_scale():
    x, t, cond, null = inputs()
    model = RecordingModel()
    conditional, unconditional = RecordingModel()(x, t, cond), RecordingModel()(x, t, null.expand_as(cond))
    for scale in (-0.5, 0.0, 0.5, 2.0, 7.5):
        guided = classifier_free_guidance(model, cond, null, scale)(x, t)
        torch.testing.assert_close(guided, unconditional + scale * (conditional - unconditional))
    assert model.batch_sizes == [12] * 5
    # affine: f(w) - f(0) = w (f(1) - f(0)), here checked through the batched path only
    f = {w: classifier_free_guidance(model, cond, null, w)(x, t) for w in (0.0, 0.5, 3.0)}
    torch.testing.assert_close(f[3.0] - f[0.0], 6 * (f[0.5] - f[0.0]))


@pytest.mark.parametrize("null_shape", [(2,), (1, 2), (6, 2)])
def test_null_condition_broadcasts_from_one_element(null_shape):
    cond = torch.randn(6, 2)
    null = torch.arange(2.0).expand(null_shape)
    broadcast = broadcast_null_condition(null, cond)
    assert broadcast.shape == (6, 2)
    torch.testing.assert_close(broadcast, torch.arange(2.0).expand(6, 2))


def test_guided_flow_of_two_gaussians_is_the_flow_to_the_extrapolated_mean():
    z = torch.linspace(-3, 3, 41, dtype=torch.float64)[:, None]  # (41, 1)
    labels, null_label = torch.ones(41, dtype=torch.long), torch.tensor(0)
    for scale in (0.0, 1.0, 1.5, 4.0):
        velocity = classifier_free_guidance(two_gaussian_velocity, labels, null_label, scale)
        samples = sample_ode(velocity, z, 200, "heun").samples
        guided_mean = MEANS[0] + scale * (MEANS[1] - MEANS[0])
        torch.testing.assert_close(samples, guided_mean + S0 * z, atol=1e-4, rtol=0)


def test_bad_inputs_raise():
    x, t, cond, null = inputs()
    with pytest.raises(ValueError, match="null_cond must have shape"):
        classifier_free_guidance(RecordingModel(), cond, torch.zeros(3, 2), 2.0)
    with pytest.raises(ValueError, match="scale must be a finite number"):
        classifier_free_guidance(RecordingModel(), cond, null, float("nan"))
    with pytest.raises(ValueError, match="x has batch size 5 but cond has 6"):
        classifier_free_guidance(RecordingModel(), cond, null, 2.0)(x[:5], t[:5])
