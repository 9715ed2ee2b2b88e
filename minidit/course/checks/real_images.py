"""Checks and questions of the chapter "real_images", FID from scratch (exercises/18_frechet_distance.ipynb).

References: FID fits a Gaussian to the Inception features of each image set and reports the squared Frechet distance
between the two, ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` (Heusel et al., arXiv 1706.08500,
Sec. 3), the closed form of the Frechet (2-Wasserstein) distance between Gaussians (Dowson and Landau, J. Multivariate
Anal. 12, 1982); minidit's ``minidit.fid.statistics`` (mean, unbiased covariance) and ``minidit.fid.frechet_distance``
(the trace of the root through the symmetric ``S1^(1/2) S2 S1^(1/2)``) are the references, in float64.
"""
from __future__ import annotations

import torch
from torch import Tensor

from minidit.course.checks.core import Case, Check, Question, generator, register, register_question


def _statistics_reference(features: Tensor) -> tuple[Tensor, Tensor]:
    from minidit.fid import statistics

    mu, sigma = (torch.from_numpy(a) for a in statistics(features))
    return mu, sigma.reshape(mu.numel(), mu.numel())  # np.cov gives a 0-d array for D = 1


def _features(n: int, d: int, g: torch.Generator) -> Tensor:
    """``(n, d)`` float64 features with a non-zero mean and correlated columns."""
    mixing = torch.randn(d, d, generator=g, dtype=torch.float64)  # (D, D)
    offset = torch.randn(d, generator=g, dtype=torch.float64)  # (D,)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mixing + offset  # (N, D)


def _statistics_cases() -> list[Case]:
    g = generator(180)
    shapes = {(50, 3): "", (200, 16): "", (5, 8): ", N < D: a singular covariance", (30, 1): ", one feature",
              (2, 4): ", the fewest samples, N = 2"}
    return [Case(f"features of shape {shape} (float64){note}", (_features(*shape, g),))
            for shape, note in shapes.items()]


register(Check(
    name="feature_statistics",
    reference=_statistics_reference,
    cases=_statistics_cases,
    hints=(
        "FID fits a Gaussian to the features: the mean of each of the D features over the N samples, and the D x D "
        "covariance of the features (not the N x N one of the samples), the unbiased estimate divided by N - 1",
        "centre the features first (subtract mu = features.mean(dim=0), shape (D,)), then average the products of "
        "centred columns over the samples, the rows; torch.cov would need features.T, as it takes rows as variables",
        "mu = features.mean(dim=0); centred = features - mu; sigma = centred.T @ centred / (N - 1); shapes (D,) and "
        "(D, D), in float64",
    ),
    output_names=("mu", "sigma"),
))


def _distance_reference(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    from minidit.fid import frechet_distance

    return torch.tensor(frechet_distance(mu1, sigma1, mu2, sigma2), dtype=torch.float64)


def _covariance(d: int, g: torch.Generator) -> Tensor:
    """A random full-rank ``(d, d)`` covariance with correlated entries."""
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def _distance_cases() -> list[Case]:
    g = generator(181)

    def mean(d: int) -> Tensor:
        return torch.randn(d, generator=g, dtype=torch.float64)

    def diagonal(d: int) -> Tensor:
        return torch.diag(torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.1)

    def singular(n: int, d: int) -> Tensor:  # the covariance of n < d samples: rank n - 1
        return _statistics_reference(_features(n, d, g))[1]

    def tensor(values: list) -> Tensor:
        return torch.tensor(values, dtype=torch.float64)

    same_mu, same_sigma, shared_mu = mean(6), _covariance(6, g), mean(16)
    cases = {
        "D = 1: N(1, 2.25) against N(-0.5, 0.25)": (tensor([1.0]), tensor([[2.25]]), tensor([-0.5]),
                                                   tensor([[0.25]])),
        "D = 5, diagonal covariances (they commute)": (mean(5), diagonal(5), mean(5), diagonal(5)),
        "D = 6, full covariances that do not commute": (mean(6), _covariance(6, g), mean(6), _covariance(6, g)),
        "D = 16, full covariances that do not commute, equal means": (shared_mu, _covariance(16, g), shared_mu.clone(),
                                                                      _covariance(16, g)),
        "D = 8, sigma1 singular (the covariance of 5 samples)": (mean(8), singular(5, 8), mean(8), _covariance(8, g)),
        "D = 8, both singular (covariances of 5 and 4 samples)": (mean(8), singular(5, 8), mean(8), singular(4, 8)),
        "identical distributions, D = 6 (0 up to rounding)": (same_mu, same_sigma, same_mu.clone(), same_sigma.clone()),
    }
    return [Case(f"{label}, float64", args) for label, args in cases.items()]


register(Check(
    name="frechet_distance",
    reference=_distance_reference,
    cases=_distance_cases,
    hints=(
        "d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)); only the last trace is hard: "
        "sigma1 sigma2 is not symmetric, and its square root is not sigma1^(1/2) sigma2^(1/2) unless the two commute",
        "the trace of a square root is the sum of the square roots of the eigenvalues, and sigma1 sigma2 has the "
        "eigenvalues of the symmetric A = sigma1^(1/2) sigma2 sigma1^(1/2) (torch.linalg.eigvalsh); sigma1^(1/2) "
        "comes from sigma1's own torch.linalg.eigh; clamp eigenvalues at 0 before any square root (rounding makes the "
        "zero ones of a singular covariance slightly negative)",
        "w, V = torch.linalg.eigh(sigma1); root1 = V @ torch.diag(w.clamp(min=0).sqrt()) @ V.T; trace_root = "
        "torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp(min=0).sqrt().sum(); return (mu1 - mu2).pow(2).sum() + "
        "sigma1.trace() + sigma2.trace() - 2 * trace_root, a 0-d tensor",
    ),
))


def _one_dimensional_distance() -> tuple[float, str]:
    import numpy as np

    from minidit.fid import frechet_distance

    value = frechet_distance(np.zeros(1), np.eye(1), np.full(1, 3.0), 4 * np.eye(1))
    return value, (f"minidit.fid.frechet_distance(0, [[1]], 3, [[4]]) = {value:.6f}: (0 - 3)^2 = 9 from the means, "
                   "1 + 4 - 2 sqrt(1 * 4) = (1 - 2)^2 = 1 from the standard deviations.")


def _covariance_rank() -> tuple[int, str]:
    from minidit.fid import FEATURES, statistics

    n = 1000
    features = torch.randn(n, FEATURES, generator=generator(182), dtype=torch.float64)  # (N, 2048)
    sigma = torch.from_numpy(statistics(features)[1])  # (2048, 2048)
    rank = int(torch.linalg.matrix_rank(sigma, hermitian=True))
    return rank, (f"torch.linalg.matrix_rank of minidit.fid.statistics' covariance of {n} random {FEATURES}-d "
                  f"feature vectors: {rank} of {FEATURES} (the centred vectors sum to zero, so they span N - 1 "
                  "dimensions).")


def _small_sample_sign() -> tuple[str, str]:
    from minidit.fid import frechet_distance, statistics

    n, d = 200, 16

    def sample_statistics(seed: int) -> tuple:  # mean (d,) and covariance (d, d) of n draws of N(0, I_d)
        return statistics(torch.randn(n, d, generator=generator(seed), dtype=torch.float64))

    values = [frechet_distance(*sample_statistics(seed), *sample_statistics(seed + 100)) for seed in range(5)]
    mean = sum(values) / len(values)
    answer = "positive" if mean > 0 else "negative" if mean < 0 else "zero"
    return answer, (f"minidit.fid.frechet_distance between the statistics of two independent samples of {n} draws "
                    f"of N(0, I_{d}), 5 pairs: " + ", ".join(f"{v:.3f}" for v in values) + f" (mean {mean:.3f}).")


register_question(Question(
    name="fid_1d",
    prompt="What is the Frechet distance d^2 between the 1-D Gaussians N(0, 1) and N(3, 4) (variance 4)?",
    compute=_one_dimensional_distance,
    atol=1e-6,
))
register_question(Question(
    name="covariance_rank",
    prompt="What is the rank of the sample covariance of N = 1000 Inception feature vectors of D = 2048 numbers?",
    compute=_covariance_rank,
))
register_question(Question(
    name="small_sample_fid_sign",
    prompt="In expectation, is the FID between two independent small samples of the same distribution zero, "
           "positive or negative?",
    compute=_small_sample_sign,
    choices=("zero", "positive", "negative"),
))
