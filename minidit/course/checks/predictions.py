"""Checks and questions of the chapter "Flows in 2-D" (exercises/02_predictions.ipynb, exercises/08_mixture_fields_metrics.ipynb).

References: SiT's conversions between velocity, score, noise and data predictions (arXiv 2401.08740, Sec. 2.3,
``minidit.weighting.convert``), a Gaussian mixture's exact velocity (SiT Sec. 2, ``minidit.toy.GaussianMixture``) and
the sliced 2-Wasserstein distance (``minidit.metrics.sliced_wasserstein``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from minidit.course.checks.core import Case, Check, Question, generator, register, register_question

# ---- prediction conversion (exercise 02) ---------------------------------------------------------------------


def _convert_reference(pred: Tensor, x_t: Tensor, t: Tensor, interpolant: str, src: str, dst: str) -> Tensor:
    from minidit.weighting import convert

    return convert(pred, x_t, t, interpolant, src, dst)


def _convert_cases() -> list[Case]:
    from minidit.interpolants import INTERPOLANTS
    from minidit.weighting import PREDICTIONS

    cases = []
    for name in INTERPOLANTS:
        for src in PREDICTIONS:
            for dst in PREDICTIONS:
                if src != dst:
                    g = generator(len(cases))
                    pred, x_t = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
                    t = torch.tensor([0.1, 0.3, 0.6, 0.9])
                    cases.append(Case(f"interpolant={name!r}, src={src!r}, dst={dst!r}, pred and x_t of shape (4, 2)", (pred, x_t, t, name, src, dst)))
    return cases


register(Check(
    name="convert",
    reference=_convert_reference,
    cases=_convert_cases,
    hints=(
        "every prediction is a function of the pair (x0, eps) behind x_t: recover that pair from (x_t, pred) first, "
        "then express the pair as the prediction asked for",
        "x_t = alpha x0 + sigma eps gives the other unknown when pred is x0 or eps (score = -eps / sigma, so eps = -sigma "
        "score); a velocity v = alpha' x0 + sigma' eps gives a 2 x 2 linear system together with x_t",
        "for a velocity: det = alpha sigma' - sigma alpha', x0 = (sigma' x_t - sigma v) / det, eps = (alpha v - alpha' x_t) / det; "
        "then data = x0, noise = eps, score = -eps / sigma, velocity = alpha' x0 + sigma' eps; the coefficients are "
        "already reshaped to broadcast by expand_time",
    ),
))


def _score_per_velocity() -> tuple[float, str]:
    from minidit.weighting import convert

    score = convert(torch.ones(1, 1), torch.zeros(1, 1), torch.tensor([0.5]), "linear", "velocity", "score")
    return round(score.item(), 6), f"minidit.weighting.convert turns v = 1 at x_t = 0, t = 0.5 (linear path) into the score {score.item():.4g}."


def _undefined_at_data_end() -> tuple[str, str]:
    from minidit.weighting import convert

    g = generator(30)
    pred, x_t, t = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g), torch.zeros(4)

    def defined(src: str) -> bool:
        try:
            return bool(convert(pred, x_t, t, "linear", src, "noise").isfinite().all())
        except ValueError:  # convert refuses a conversion that divides by zero at this end
            return False

    finite = {src: defined(src) for src in ("velocity", "score", "data")}
    undefined = [src for src, ok in finite.items() if not ok]
    return ("none" if not undefined else undefined[0] if len(undefined) == 1 else "several"), (
        "At t = 0 on the linear path, minidit.weighting.convert to a noise prediction is defined from: "
        + ", ".join(f"{src} {'yes' if ok else 'no'}" for src, ok in finite.items()) + "."
    )


register_question(Question(
    name="score_per_velocity",
    prompt="On the linear path at t = 0.5 and x_t = 0, a velocity v corresponds to the score c v: what is c?",
    compute=_score_per_velocity,
    atol=1e-3,
))
register_question(Question(
    name="undefined_at_data_end",
    prompt="At t = 0 on the linear path, which prediction cannot be converted into a noise prediction?",
    compute=_undefined_at_data_end,
    choices=("velocity", "score", "data", "none", "several"),
))

# ---- exact mixture velocity and sliced Wasserstein distance (exercise 08) --------------------------------------


def _mixture_velocity_reference(x: Tensor, t: Tensor, means: Tensor, stds: Tensor, weights: Tensor, interpolant: str) -> Tensor:
    from minidit.toy import GaussianMixture

    return GaussianMixture(means, stds, weights).velocity(x, t, interpolant)


def _mixture_velocity_cases() -> list[Case]:
    from minidit.interpolants import INTERPOLANTS

    g = generator(12)
    mixtures = (  # (label, means (K, D), stds (K, D), weights (K,)), float64 so sharp responsibilities compare exactly
        ("1-D, two Gaussians at -1 and 2", [[-1.0], [2.0]], [[0.3], [0.3]], [0.5, 0.5]),
        ("1-D, near-Bernoulli on {-1, 1} (std 0.02)", [[-1.0], [1.0]], [[0.02], [0.02]], [0.3, 0.7]),
        ("2-D, three diagonal Gaussians", [[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]], [[0.1, 0.4], [0.3, 0.3], [0.5, 0.05]], [0.2, 0.5, 0.3]),
    )
    cases = []
    for label, means, stds, weights in mixtures:
        means, stds, weights = (torch.tensor(value, dtype=torch.float64) for value in (means, stds, weights))
        for name in INTERPOLANTS:
            start = 0.01 if name == "vp" else 0.0  # the VP path's d_sigma is infinite at t = 0
            t = torch.cat([torch.tensor([start, start, 0.5, 1.0]), start + (1 - start) * torch.rand(4, generator=g)]).double()
            x = 2 * torch.randn(8, means.shape[1], generator=g, dtype=torch.float64)
            x[1] = 40.0  # far from every component: exp of the log-densities underflows to 0 / 0 without logsumexp
            cases.append(Case(f"{label}, interpolant={name!r}, x of shape {tuple(x.shape)} (float64, x[1] far away), "
                              f"t of shape (8,) in [{t.min():.2f}, 1]", (x, t, means, stds, weights, name)))
    return cases


register(Check(
    name="mixture_velocity",
    reference=_mixture_velocity_reference,
    cases=_mixture_velocity_cases,
    hints=(
        "inside one component x0, eps and x_t are jointly Gaussian, so E[x0 | x, k] and E[eps | x, k] are linear in x; "
        "the mixture's velocity averages the components' velocities with the responsibilities p(k | x_t = x)",
        "work on a component axis: x[:, None, :] - alpha mu_k is (N, K, D), var_k = alpha^2 std_k^2 + sigma^2 (N, K, D); "
        "build log w_k + the Gaussian log-density summed over D, (N, K), and normalise it over k with torch.logsumexp",
        "r = exp(log_joint - logsumexp(log_joint over k)); E[x0 | x, k] = mu_k + alpha std_k^2 centred / var_k, "
        "E[eps | x, k] = sigma centred / var_k; v = sum_k r_k (alpha' E[x0 | x, k] + sigma' E[eps | x, k]), with the "
        "coefficients reshaped to (N, 1, 1)",
    ),
))


def _sliced_wasserstein_reference(x: Tensor, y: Tensor, n_projections: int, generator: torch.Generator) -> Tensor:
    from minidit.metrics import sliced_wasserstein

    return sliced_wasserstein(x, y, n_projections, generator)


def _sliced_wasserstein_cases() -> list[Case]:
    g = generator(13)
    cases = []
    for n, features, projections, shift in ((64, 1, 4, 0.5), (100, 2, 16, 1.0), (50, 3, 8, 0.0), (80, 2, 32, 3.0)):
        x = torch.randn(n, features, generator=g)
        y = shift + torch.randn(n, features, generator=g) * torch.linspace(0.5, 2.0, features)  # stretched differently per axis
        label = f"x and y of shape {(n, features)}, y shifted by {shift}, n_projections={projections}, generator seeded with 14"
        cases.append(Case(label, (x, y, projections, generator(14))))
    return cases


register(Check(
    name="sliced_wasserstein",
    reference=_sliced_wasserstein_reference,
    cases=_sliced_wasserstein_cases,
    hints=(
        "in 1-D the optimal coupling of two equal-size samples pairs them in sorted order; in F dimensions, reduce to "
        "1-D by projecting both samples on the same random unit directions",
        "directions = torch.randn(F, n_projections, generator=generator), each column divided by its norm (draw them "
        "exactly so); x @ directions and y @ directions are (N, P): sort each column",
        "W_2^2 per direction = mean over samples of the squared differences of the sorted projections; the result is "
        "the square root of the mean over directions (sqrt outside the mean), a 0-d tensor",
    ),
))


def _velocity_at_noise_end() -> tuple[tuple[float, float], str]:
    from minidit.toy import get_target

    target = get_target("8gaussians")
    velocity = target.velocity(torch.tensor([[1.0, 2.0]]), torch.ones(1), "linear")[0]
    mean = (target.weights[:, None] * target.means).sum(0)
    return (round(velocity[0].item(), 4), round(velocity[1].item(), 4)), (
        f"GaussianMixture.velocity gives v((1, 2), 1) = ({velocity[0]:.4f}, {velocity[1]:.4f}); "
        f"the target's mean is ({mean[0]:.4f}, {mean[1]:.4f}).")


def _larger_irreducible_loss() -> tuple[float, str]:
    from minidit.interpolants import get_interpolant
    from minidit.toy import get_target

    target, path, g = get_target("8gaussians"), get_interpolant("linear"), generator(37)
    x0 = target.sample(20_000, generator=g)  # (N, 2)
    noise = torch.randn(x0.shape, generator=g)  # (N, 2)
    losses = {}
    for time in (0.2, 0.8):
        t = torch.full((x0.shape[0],), time)
        u_t = path.velocity_target(x0, noise, t)  # (N, 2)
        losses[time] = (target.velocity(path.interpolate(x0, noise, t), t, "linear") - u_t).pow(2).sum(-1).mean().item()
    return max(losses, key=losses.get), (f"On 20 000 pairs (x0, eps) of the eight Gaussians, linear path: L(v) = {losses[0.2]:.3f} "
                                          f"at t = 0.2 and {losses[0.8]:.3f} at t = 0.8.")


register_question(Question(
    name="velocity_at_noise_end",
    prompt="On the linear path, what is the exact velocity v(x, 1) of the eight-Gaussians target at x = (1, 2)?",
    compute=_velocity_at_noise_end,
    atol=0.02,
))
register_question(Question(
    name="larger_irreducible_loss",
    prompt="On the linear path of the eight Gaussians, is the irreducible loss L(v) larger at t = 0.2 or at t = 0.8?",
    compute=_larger_irreducible_loss,
    atol=0.01,
))
