"""Predictions and loss weightings (SiT Sec. 2.3): conversions, lambda_t, weights and the training loss."""
import itertools
import math

import pytest
import torch

from minidit.interpolants import INTERPOLANTS, get_interpolant
from minidit.timesteps import get_time_sampler
from minidit.weighting import (PREDICTIONS, WEIGHTINGS, convert, default_time_eps, lambda_t, loss_weight, singular_ends,
                               training_loss)

NAMES = tuple(INTERPOLANTS)
T_GRID = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)


def path_sample(name: str, seed: int = 0):
    """``(x0, eps, t, x_t)`` in float64: one sample per time of ``T_GRID``, each of shape ``(19, 2, 3)``."""
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(len(T_GRID), 2, 3, dtype=torch.float64, generator=generator)
    eps = torch.randn(len(T_GRID), 2, 3, dtype=torch.float64, generator=generator)
    return x0, eps, T_GRID, get_interpolant(name).interpolate(x0, eps, T_GRID)


def true_predictions(name: str, x0, eps, t) -> dict:
    """The four exact conditional quantities at ``x_t = alpha x0 + sigma eps``, from their definitions."""
    path = get_interpolant(name)
    sigma = path.sigma(t).reshape(-1, 1, 1)
    return {"velocity": path.velocity_target(x0, eps, t), "score": -eps / sigma, "noise": eps, "data": x0}


@pytest.mark.parametrize("name", NAMES)
def test_every_conversion_round_trips(name):
    _, _, t, x_t = path_sample(name)
    pred = torch.randn_like(x_t)
    for src, dst in itertools.product(PREDICTIONS, repeat=2):
        there = convert(pred, x_t, t, name, src, dst)
        torch.testing.assert_close(convert(there, x_t, t, name, dst, src), pred, msg=f"{name}: {src} -> {dst} -> {src}")


@pytest.mark.parametrize("name", NAMES)
def test_conversions_of_the_true_quantities_agree(name):
    x0, eps, t, x_t = path_sample(name)
    truth = true_predictions(name, x0, eps, t)
    for src, dst in itertools.product(PREDICTIONS, repeat=2):
        converted = convert(truth[src], x_t, t, name, src, dst)
        torch.testing.assert_close(converted, truth[dst], msg=f"{name}: {src} -> {dst}")


def test_lambda_closed_forms():
    t = T_GRID
    torch.testing.assert_close(lambda_t(t, "linear"), 1 / (1 - t))
    torch.testing.assert_close(lambda_t(t, "gvp"), (math.pi / 2) / torch.cos(math.pi * t / 2))
    # VP: alpha^2 + sigma^2 = 1 gives lambda = -(log alpha)' / sigma = (b0 + (b1 - b0) t) / (2 sigma)
    torch.testing.assert_close(lambda_t(t, "vp"), (0.1 + 19.9 * t) / (2 * get_interpolant("vp").sigma(t)))
    assert math.isinf(lambda_t(torch.tensor([1.0]), "linear").item())


@pytest.mark.parametrize("name", NAMES)
def test_sit_velocity_score_identity(name):
    """``v = (alpha' / alpha) x_t - lambda_t sigma_t s`` for the true velocity and score (SiT Sec. 2.3)."""
    x0, eps, t, x_t = path_sample(name)
    truth = true_predictions(name, x0, eps, t)
    a, s, da, _ = (c.reshape(-1, 1, 1) for c in get_interpolant(name).coefficients(t))
    lam = lambda_t(t, name).reshape(-1, 1, 1)
    torch.testing.assert_close(truth["velocity"], da / a * x_t - lam * s * truth["score"])


@pytest.mark.parametrize("name", NAMES)
def test_loss_weight_values_for_score_and_noise(name):
    t = T_GRID
    lam, sigma = lambda_t(t, name), get_interpolant(name).sigma(t)
    for prediction in ("score", "noise"):
        torch.testing.assert_close(loss_weight(t, name, prediction, "velocity"), lam**2)
        torch.testing.assert_close(loss_weight(t, name, prediction, "likelihood"), lam / sigma)
    for prediction in PREDICTIONS:
        torch.testing.assert_close(loss_weight(t, name, prediction, "none"), torch.ones_like(t))
    torch.testing.assert_close(loss_weight(t, name, "velocity", "velocity"), torch.ones_like(t))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_loss_weight_turns_each_error_into_the_velocity_and_likelihood_losses(name, prediction):
    """Perturb the true prediction at fixed ``x_t``: ``w |own error|^2`` is ``|dv|^2`` ("velocity") and
    ``lambda sigma |ds|^2`` ("likelihood"); the score's own error is SiT's ``|sigma ds|^2``."""
    x0, eps, t, x_t = path_sample(name)
    truth = true_predictions(name, x0, eps, t)
    perturbed = truth[prediction] + 0.1 * torch.randn_like(x_t)
    own_error = perturbed - truth[prediction]
    if prediction == "score":
        own_error = get_interpolant(name).sigma(t).reshape(-1, 1, 1) * own_error

    def squared_error_of(kind: str):
        return (convert(perturbed, x_t, t, name, prediction, kind) - truth[kind]).pow(2).flatten(1).sum(1)

    own = own_error.pow(2).flatten(1).sum(1)
    lam, sigma = lambda_t(t, name), get_interpolant(name).sigma(t)
    torch.testing.assert_close(loss_weight(t, name, prediction, "velocity") * own, squared_error_of("velocity"))
    torch.testing.assert_close(loss_weight(t, name, prediction, "likelihood") * own, lam * sigma * squared_error_of("score"))


class RandomLinearModel:
    """``model(x_t, t) = x_t W + t b``: an arbitrary (untrained) network for comparing losses."""

    def __init__(self, dim: int, seed: int = 1):
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(dim, dim, dtype=torch.float64, generator=generator)
        self.bias = torch.randn(dim, dtype=torch.float64, generator=generator)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x_t @ self.weight + t[:, None] * self.bias  # (N, D)


def converted(model, name: str, src: str, dst: str):
    """The same network read as a ``dst`` prediction."""
    return lambda x_t, t: convert(model(x_t, t), x_t, t, name, src, dst)


@pytest.mark.parametrize("name", NAMES)
def test_training_loss_is_zero_for_the_exact_conditional_target(name):
    x0 = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    path = get_interpolant(name)

    def oracle(prediction: str):
        def model(x_t, t):  # knows x0, so it recovers eps from x_t and returns the exact target
            a, s, da, ds = (c[:, None] for c in path.coefficients(t))
            eps = (x_t - a * x0) / s
            return {"velocity": da * x0 + ds * eps, "score": -eps / s, "noise": eps, "data": x0}[prediction]

        return model

    for prediction, weighting in itertools.product(PREDICTIONS, WEIGHTINGS):
        loss, _ = training_loss(oracle(prediction), x0, name, prediction, weighting, time_eps=1e-3)
        assert loss.abs().max() < 1e-6, (prediction, weighting)
    wrong, _ = training_loss(oracle("noise"), x0, name, "velocity", "none", time_eps=1e-3)
    assert wrong.mean() > 0.1  # and it is not zero for a wrong target


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_weighted_losses_agree_across_predictions(name, prediction):
    """Same network, same ``(x_t, t, eps)``: the "velocity"-weighted loss of any prediction is the velocity MSE of
    the converted prediction, and "likelihood" weighting gives one loss whichever way the network is read."""
    x0 = torch.randn(256, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    model = RandomLinearModel(4)

    def loss_of(net, pred: str, weighting: str):
        generator = torch.Generator().manual_seed(4)  # same t and eps draws for every call
        return training_loss(net, x0, name, pred, weighting, time_eps=1e-2, generator=generator)[0]

    velocity_mse = loss_of(converted(model, name, prediction, "velocity"), "velocity", "none")
    torch.testing.assert_close(loss_of(model, prediction, "velocity"), velocity_mse, rtol=1e-4, atol=1e-6)
    as_score = loss_of(converted(model, name, prediction, "score"), "score", "likelihood")
    torch.testing.assert_close(loss_of(model, prediction, "likelihood"), as_score, rtol=1e-4, atol=1e-6)


def test_training_loss_uses_the_time_sampler_and_returns_per_sample_values():
    x0 = torch.randn(32, 2, 2)
    sampler = get_time_sampler("logit_normal", shift=3.0)
    loss, t = training_loss(
        lambda x_t, t: x_t, x0, "linear", time_sampler=sampler, time_eps=0.01, generator=torch.Generator().manual_seed(5)
    )
    assert loss.shape == (32,) and t.shape == (32,)
    expected_t = 0.01 + 0.98 * sampler.sample(32, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(t, expected_t)


def test_default_time_eps():
    assert default_time_eps("linear", "velocity") == 0.0 and default_time_eps("gvp", "velocity", "velocity") == 0.0
    assert default_time_eps("vp", "velocity") == 1e-3 and default_time_eps("linear", "score") == 1e-3


def test_unknown_prediction_or_weighting_lists_the_valid_names():
    x0 = torch.randn(4, 2)
    with pytest.raises(ValueError, match="'velocity', 'score', 'noise', 'data'"):
        training_loss(lambda x_t, t: x_t, x0, prediction="epsilon")
    with pytest.raises(ValueError, match="'none', 'velocity', 'likelihood'"):
        training_loss(lambda x_t, t: x_t, x0, weighting="snr")
    with pytest.raises(ValueError, match="'velocity', 'score', 'noise', 'data'"):
        convert(x0, x0, torch.rand(4), "linear", "x1", "velocity")
    with pytest.raises(ValueError, match="'none', 'velocity', 'likelihood'"):
        loss_weight(torch.rand(4), "linear", "score", "min_snr")


def test_wrong_model_output_shape_raises():
    with pytest.raises(ValueError, match=r"model output has shape \(4, 3\), expected \(4, 2\)"):
        training_loss(lambda x_t, t: torch.zeros(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="shapes must match"):
        convert(torch.randn(4, 3), torch.randn(4, 2), torch.rand(4), "linear", "data", "noise")


# The conversions that divide by zero at an end: sigma_0 = 0 (into or out of a score/noise/data estimate),
# alpha_1 = 0 on the linear path (out of noise/score), and the VP path's infinite sigma'_0 (into or out of velocity).
SINGULAR = {
    "linear": {("velocity", "score"): (0.0,), ("score", "velocity"): (1.0,), ("score", "data"): (1.0,),
               ("noise", "velocity"): (1.0,), ("noise", "score"): (0.0,), ("noise", "data"): (1.0,),
               ("data", "velocity"): (0.0,), ("data", "score"): (0.0,), ("data", "noise"): (0.0,)},
    "gvp": {("velocity", "score"): (0.0,), ("noise", "score"): (0.0,), ("data", "velocity"): (0.0,),
            ("data", "score"): (0.0,), ("data", "noise"): (0.0,)},
    "vp": {("velocity", "score"): (0.0,), ("velocity", "data"): (0.0,), ("score", "velocity"): (0.0,),
           ("noise", "velocity"): (0.0,), ("noise", "score"): (0.0,), ("data", "velocity"): (0.0,),
           ("data", "score"): (0.0,), ("data", "noise"): (0.0,)},
}


@pytest.mark.parametrize("name", NAMES)
def test_convert_at_a_singular_end_raises_naming_it_and_the_time_eps_fix(name):
    found = {(src, dst): singular_ends(name, src, dst) for src, dst in itertools.product(PREDICTIONS, PREDICTIONS)}
    assert {pair: ends for pair, ends in found.items() if ends} == SINGULAR[name]  # 9 linear, 5 GVP, 8 VP pairs
    x = torch.ones(2, 3)
    for (src, dst), ends in SINGULAR[name].items():
        for end in ends:
            with pytest.raises(ValueError, match=rf"converting {src} to {dst} on the {name} path divides by zero at "
                                                 rf"t = {end}; keep t inside \[time_eps, 1 - time_eps\]"):
                convert(x, x, torch.tensor([0.5, end]), name, src, dst)
    for src, dst in itertools.product(PREDICTIONS, PREDICTIONS):  # every other pair is finite at both ends
        for end in {0.0, 1.0} - set(found[src, dst]):
            assert torch.isfinite(convert(x, x, torch.full((2,), end), name, src, dst)).all(), (src, dst, end)


@pytest.mark.parametrize("name", NAMES)
def test_loss_weight_is_finite_and_positive_where_default_time_eps_lets_training_go(name):
    for prediction, weighting in itertools.product(PREDICTIONS, WEIGHTINGS):
        eps = default_time_eps(name, prediction, weighting)
        t = torch.linspace(eps, 1 - eps, 1001)  # the float32 training range, ends included
        w = loss_weight(t, name, prediction, weighting)
        assert torch.isfinite(w).all() and (w > 0).all(), (prediction, weighting, eps)
        if eps == 0:  # the loss is used at the ends, where velocity weighting of a velocity model is exactly 1
            assert torch.equal(loss_weight(torch.tensor([0.0, 1.0]), name, prediction, weighting), torch.ones(2))
            assert singular_ends(name, prediction, "velocity") == ()  # and sampling converts nothing
