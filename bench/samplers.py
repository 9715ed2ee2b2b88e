"""Benchmark: how many function evaluations Euler, Heun and the SDE need on the exact 8-Gaussian field.

Each sampler integrates the exact marginal velocity of toy.get_target("8gaussians") (linear path), so the only
error is discretisation. For each sampler we try increasing step counts and keep the first whose sliced
Wasserstein (SW) distance falls below a fixed threshold. Two distances, because a stochastic sampler cannot be
paired with a reference:

- ODEs (Euler, Heun): SW to the converged solution from the *same* noise (Heun, 2048 steps), a sample of the
  target without sampling noise, so a tight threshold (ODE_THRESHOLD) measures the solver error alone.
- Every sampler, the SDE included: SW to fresh target samples below THRESHOLD x the noise floor (the distance a
  perfect sampler of the same size scores). At this sample size the floor hides the difference between first- and
  second-order solvers, which is why the ODE figures of the RESULT line use the paired distance.

SiT (arXiv 2401.08740, Sec. 2.4) reports the ODE ahead at low NFE.

Run: ``python bench/samplers.py`` (about 20 s on 2 CPU cores). The last line is
``RESULT euler_nfe=... heun_nfe=... sde_nfe=... heun_over_euler=...``.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

from minidit.metrics import sliced_wasserstein
from minidit.samplers import SamplerOutput, sample_ode, sample_sde
from minidit.toy import get_target

N_SAMPLES = 4000
N_REFERENCES = 3  # target sample sets the distance is averaged over
THRESHOLD = 1.5  # times the noise floor
ODE_THRESHOLD = 0.005  # paired SW to the converged ODE solution (the target's spread is about 2)
STEP_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def main() -> None:
    torch.set_num_threads(1)  # the tensors are tiny: thread start-up costs more than it saves
    start = time.perf_counter()
    target = get_target("8gaussians")
    generator = torch.Generator().manual_seed(0)
    references = [target.sample(N_SAMPLES, generator) for _ in range(N_REFERENCES)]

    def distance(samples: torch.Tensor) -> float:
        """Mean sliced Wasserstein distance to the reference sets, with the same projections every time."""
        projections = torch.Generator().manual_seed(1)
        distances = [sliced_wasserstein(samples, r, generator=projections.manual_seed(1)).item() for r in references]
        return sum(distances) / N_REFERENCES

    noise_floor = sum(distance(target.sample(N_SAMPLES, generator)) for _ in range(2)) / 2
    threshold = THRESHOLD * noise_floor
    print(f"8gaussians, n = {N_SAMPLES}: noise floor SW = {noise_floor:.4f}, threshold = {threshold:.4f}")

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return target.velocity(x, t, "linear")

    noise = torch.randn(N_SAMPLES, 2, generator=torch.Generator().manual_seed(2))
    sde_noise = torch.Generator()  # reseeded before every SDE run
    samplers: dict[str, Callable[[int], SamplerOutput]] = {
        "euler": lambda steps: sample_ode(velocity, noise, steps, "euler"),
        "heun": lambda steps: sample_ode(velocity, noise, steps, "heun"),
        "sde": lambda steps: sample_sde(velocity, noise, "linear", steps, "sigma", generator=sde_noise.manual_seed(3)),
    }
    converged = sample_ode(velocity, noise, 2048, "heun").samples

    def paired_distance(samples: torch.Tensor) -> float:
        return sliced_wasserstein(samples, converged, generator=torch.Generator().manual_seed(1)).item()

    def first_below(name: str, measure: Callable[[torch.Tensor], float], limit: float) -> int | None:
        for steps in STEP_COUNTS:
            out = samplers[name](steps)
            sw = measure(out.samples)
            print(f"{name:>8} {steps:>6} {out.nfe:>5} {sw:>8.4f}  {'yes' if sw < limit else 'no'}")
            if sw < limit:
                return out.nfe
        return None

    print(f"\n(a) SW to the converged ODE solution from the same noise, threshold {ODE_THRESHOLD}")
    print(f"{'sampler':>8} {'steps':>6} {'NFE':>5} {'SW':>8}  below threshold")
    paired = {name: first_below(name, paired_distance, ODE_THRESHOLD) for name in ("euler", "heun")}
    print(f"\n(b) SW to fresh target samples, threshold {THRESHOLD} x noise floor = {threshold:.4f}")
    print(f"{'sampler':>8} {'steps':>6} {'NFE':>5} {'SW':>8}  below threshold")
    to_target = {name: first_below(name, distance, threshold) for name in samplers}
    print(f"\ntime: {time.perf_counter() - start:.1f} s")
    print(f"NFE to reach (b): euler {to_target['euler']}, heun {to_target['heun']}, sde {to_target['sde']}")
    euler, heun = paired["euler"], paired["heun"]
    ratio = f"{heun / euler:.2f}" if euler and heun else "nan"
    print(f"RESULT euler_nfe={euler} heun_nfe={heun} sde_nfe={to_target['sde']} heun_over_euler={ratio}")


if __name__ == "__main__":
    main()
