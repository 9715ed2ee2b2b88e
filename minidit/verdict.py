"""Verdicts that say only what the numbers show: ``reproduced``, ``not reproduced`` or ``inconclusive``.

A paper claims that one arm beats another ("linear paths cost less transport than VP", "logit-normal beats uniform").
A toy run measures both arms, each with an uncertainty: a standard error from repeated seeds, data chunks or a
bootstrap, or a noise floor (the value a distance takes between two exact sample sets of the same size, below which it
cannot resolve anything). ``judge`` turns the two measurements into one of three outcomes and says why:

- **reproduced**: the difference points the claimed way and exceeds ``z`` standard errors of the difference;
- **not reproduced**: it points the other way beyond ``z`` standard errors (or, for an equality claim, the arms differ
  by more than the margin beyond noise);
- **inconclusive**: within noise, both arms at chance, or both at or below the noise floor.

With ``d = a - b`` and ``se_d = sqrt(se_a^2 + se_b^2)`` (or the paired standard error of per-sample differences), a
claim ``a < b`` is reproduced when ``-d > z se_d``. Values below a noise floor are raised to it before comparing, since
the metric cannot tell them apart. Course tooling, not a paper's method: every lecture notebook's verdict goes through
it (``minidit.course.reference.Report``), and tests/test_verdict.py checks it on constructed cases.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from minidit.validation import check_choice

OUTCOMES = ("reproduced", "not reproduced", "inconclusive")
EXPECTATIONS = ("less", "greater", "equal")


@dataclass(frozen=True)
class Measurement:
    """A measured value with its standard error (0 for a value without sampling noise)."""

    value: float
    se: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError(f"a measurement must be finite, got {self.value}; a diverged run has no verdict")
        if not (math.isfinite(self.se) and self.se >= 0):
            raise ValueError(f"a standard error must be finite and >= 0, got {self.se}")

    @classmethod
    def from_samples(cls, samples: Sequence[float] | torch.Tensor) -> "Measurement":
        """Mean and standard error ``std / sqrt(n)`` (n - 1 in the std) of ``n >= 2`` repeated measurements ``(n,)``."""
        x = torch.as_tensor(samples, dtype=torch.float64).flatten()
        if x.numel() < 2:
            raise ValueError(f"a standard error needs at least 2 samples, got {x.numel()}; use more seeds or chunks")
        return cls(x.mean().item(), (x.std() / math.sqrt(x.numel())).item())

    @classmethod
    def proportion(cls, p: float, n: int) -> "Measurement":
        """An accuracy ``p`` over ``n`` trials; the standard error uses ``(k + 1) / (n + 2)`` so that 0 and 1 keep one."""
        if not 0 <= p <= 1 or n < 1:
            raise ValueError(f"a proportion needs 0 <= p <= 1 and n >= 1, got p={p}, n={n}")
        shrunk = (p * n + 1) / (n + 2)
        return cls(p, math.sqrt(shrunk * (1 - shrunk) / n))


def paired_se(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> float:
    """Standard error of ``mean(a - b)`` for paired measurements ``(n,)`` (same seeds, chunks or noise for both arms)."""
    a, b = (torch.as_tensor(v, dtype=torch.float64).flatten() for v in (a, b))
    if a.shape != b.shape or a.numel() < 2:
        raise ValueError(f"paired samples need equal lengths >= 2, got {a.numel()} and {b.numel()}")
    return ((a - b).std() / math.sqrt(a.numel())).item()


def bootstrap_se(samples: torch.Tensor, statistic, n_boot: int = 200, seed: int = 0) -> float:
    """Bootstrap standard error of ``statistic(samples)``, resampling the rows of ``samples`` ``(n, ...)``."""
    generator = torch.Generator().manual_seed(seed)
    n = samples.shape[0]
    values = torch.tensor([float(statistic(samples[torch.randint(n, (n,), generator=generator)])) for _ in range(n_boot)])
    return values.std().item()


@dataclass(frozen=True)
class Verdict:
    """The outcome of a claim, the reason in words, and the values it rests on."""

    claim: str
    outcome: str
    reason: str
    values: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.claim}: {self.outcome} ({self.reason})"


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def judge(
    claim: str,
    a: Measurement,
    b: Measurement,
    expect: str = "less",
    names: tuple[str, str] = ("a", "b"),
    z: float = 2.0,
    floor: float | None = None,
    chance: float | None = None,
    margin: float | None = None,
    se_diff: float | None = None,
    exact: bool = False,
) -> Verdict:
    """Judge the claim "``a`` is ``expect`` than ``b``" (``less``, ``greater``, or ``equal`` within ``margin``).

    Args:
        claim: the claim in words, as the notebook and its reference file name it.
        a, b: the two measurements.
        expect: ``less`` (a < b), ``greater`` (a > b) or ``equal`` (|a - b| <= margin).
        names: names of the arms in the reason.
        z: how many standard errors of the difference make it real (2 by default, about 95%).
        floor: noise floor of the metric: values below it are indistinguishable and are raised to it.
        chance: the value of an arm that learned nothing (accuracy 1/classes): both arms within ``z`` se of it
            make the verdict inconclusive.
        margin: for ``equal``, the largest difference that still counts as equal.
        se_diff: standard error of ``a - b`` when known directly (paired samples, ``paired_se``).
        exact: the values carry no sampling noise (closed forms, exact fields); required when every uncertainty is 0.
    Returns:
        a ``Verdict`` whose ``values`` hold both measurements and the difference.
    """
    check_choice("expectation", expect, EXPECTATIONS)
    if not z > 0:
        raise ValueError(f"z must be > 0, got {z}")
    if expect == "equal" and not (margin is not None and margin > 0):
        raise ValueError("an equality claim needs margin > 0: the largest difference that still counts as equal")
    if floor is not None and not (math.isfinite(floor) and floor >= 0):
        raise ValueError(f"a noise floor must be finite and >= 0, got {floor}")
    se = math.hypot(a.se, b.se) if se_diff is None else se_diff
    if not (math.isfinite(se) and se >= 0):
        raise ValueError(f"se_diff must be finite and >= 0, got {se_diff}")
    if se_diff is None and se == 0 and floor is None and not exact:
        raise ValueError(f"'{claim}': both measurements have no uncertainty; give standard errors (seeds, chunks, "
                         "bootstrap), a noise floor, or exact=True for values without sampling noise")
    name_a, name_b = names
    values = {f"{name_a}": a.value, f"{name_a} se": a.se, f"{name_b}": b.value, f"{name_b} se": b.se}
    if floor is not None:
        values["noise floor"] = floor
    va, vb = (max(v, floor) if floor is not None else v for v in (a.value, b.value))
    diff = va - vb
    values["difference"] = a.value - b.value
    noise = z * se
    values["z se"] = noise

    def verdict(outcome: str, reason: str) -> Verdict:
        return Verdict(claim, outcome, reason, values)

    if chance is not None:
        at_chance = [abs(m.value - chance) <= z * m.se or m.value == chance for m in (a, b)]
        if all(at_chance):
            return verdict("inconclusive", f"both arms at chance ({_fmt(chance)}): {name_a} {_fmt(a.value)}, "
                                           f"{name_b} {_fmt(b.value)}")
    if floor is not None and a.value <= floor and b.value <= floor:
        return verdict("inconclusive", f"both values at or below the noise floor {_fmt(floor)}: {name_a} "
                                       f"{_fmt(a.value)}, {name_b} {_fmt(b.value)}")
    detail = f"{name_a} {_fmt(a.value)} vs {name_b} {_fmt(b.value)}, difference {diff:+.3g}, {z:g} se = {_fmt(noise)}"
    if expect == "equal":
        if abs(diff) + noise <= margin:
            return verdict("reproduced", f"equal within the margin {_fmt(margin)}: {detail}")
        if abs(diff) - noise > margin:
            return verdict("not reproduced", f"they differ by more than the margin {_fmt(margin)}: {detail}")
        return verdict("inconclusive", f"noise too large to tell against the margin {_fmt(margin)}: {detail}")
    effect = -diff if expect == "less" else diff
    if diff == 0 and noise == 0:
        return verdict("inconclusive", f"equal values: {detail}")
    if effect > noise:
        return verdict("reproduced", f"{name_a} {'<' if expect == 'less' else '>'} {name_b} beyond noise: {detail}")
    if effect < -noise:
        return verdict("not reproduced", f"the opposite holds beyond noise: {detail}")
    return verdict("inconclusive", f"within noise: {detail}")
