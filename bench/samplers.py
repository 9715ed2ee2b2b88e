"""Benchmark: how many function evaluations Euler, Heun and the SDE need on the exact 8-Gaussian field.

Each sampler integrates the exact marginal velocity of toy.get_target("8gaussians") (linear path), so the only
error is discretisation. For each sampler we try increasing step counts and keep the first whose sliced
Wasserstein distance to the target falls below THRESHOLD x the noise floor (the distance a perfect sampler of the
same size scores). SiT (arXiv 2401.08740, Sec. 2.4) reports the ODE ahead at low NFE.

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
STEP_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


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
    print(f"{'sampler':>8} {'steps':>6} {'NFE':>5} {'SW':>8}  below threshold")
    nfe_needed: dict[str, int | None] = {}
    for name, run in samplers.items():
        nfe_needed[name] = None
        for steps in STEP_COUNTS:
            out = run(steps)
            sw = distance(out.samples)
            print(f"{name:>8} {steps:>6} {out.nfe:>5} {sw:>8.4f}  {'yes' if sw < threshold else 'no'}")
            if sw < threshold:
                nfe_needed[name] = out.nfe
                break
    print(f"time: {time.perf_counter() - start:.1f} s")
    euler, heun = nfe_needed["euler"], nfe_needed["heun"]
    ratio = f"{heun / euler:.2f}" if euler and heun else "nan"
    print(f"RESULT euler_nfe={euler} heun_nfe={heun} sde_nfe={nfe_needed['sde']} heun_over_euler={ratio}")


if __name__ == "__main__":
    main()
