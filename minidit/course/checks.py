"""Automatic checks for the exercises: a learner's function against minidit's reference on fixed inputs.

Each check runs the learner's function and the reference on the same few deterministic cases and reports the
first mismatch (which input, expected versus got, a hint); an unfinished exercise (``NotImplementedError``) is
reported as "not implemented yet" instead of a traceback, so an exercise notebook runs to the end as shipped.
The references are the library's own modules, e.g. SiT's interpolants and conversions (arXiv 2401.08740,
Sec. 2.2-2.3), SD3's time samplers (arXiv 2403.03206, eqs. 19-20), DiT's patchify and adaLN-Zero block
(arXiv 2212.09748, Sec. 3.2), Flag-DiT's RoPE and QK-norm (arXiv 2405.05945, Sec. 2.1), a Gaussian mixture's exact
velocity (SiT Sec. 2), the sliced Wasserstein distance, the 2-D sin-cos position embedding (MAE, arXiv 2111.06377) and
multi-head attention (Vaswani et al. 2017, eq. 1); used by every notebook in exercises/.

Adding a check is one ``register(Check(...))`` call with a reference function and a case generator.

Example:
    >>> result = check("interpolant", my_interpolant)   # prints "✓ interpolant: all 9 cases pass"
    >>> result.status
    'pass'
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from minidit.validation import check_choice

STATUSES = ("pass", "fail", "not_implemented")


@dataclass(frozen=True)
class CheckResult:
    """Outcome of ``check``: ``status`` is ``"pass"``, ``"fail"`` or ``"not_implemented"``; ``message`` is what was printed."""

    name: str
    status: str
    message: str

    def __post_init__(self) -> None:
        check_choice("check status", self.status, STATUSES)

    @property
    def passed(self) -> bool:
        """True when every case matched the reference."""
        return self.status == "pass"


@dataclass(frozen=True)
class Case:
    """One input: ``args`` are passed positionally to both the learner's function and the reference."""

    label: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Check:
    """A registered check.

    Attributes:
        name: registry key, e.g. ``"interpolant"``.
        reference: minidit's implementation, called with the same arguments as the learner's function.
        cases: builds the list of ``Case`` (fresh tensors on each call, so in-place edits cannot leak).
        hint: shown with the first failure.
        output_names: names of the parts of a tuple output, for clearer failure messages.
        evaluate: turns a function's return value into the value compared (identity by default; a check
            whose functions return a function evaluates it here).
        atol, rtol: tolerances of the comparison.
    """

    name: str
    reference: Callable[..., Any]
    cases: Callable[[], list[Case]]
    hint: str
    output_names: Sequence[str] = ()
    evaluate: Callable[[Any], Any] = field(default=lambda output: output)
    atol: float = 1e-5
    rtol: float = 1e-4


CHECKS: dict[str, Check] = {}


def register(new_check: Check) -> Check:
    """Add ``new_check`` to ``CHECKS`` (its name must be new) and return it."""
    if new_check.name in CHECKS:
        raise ValueError(f"a check named {new_check.name!r} is already registered; pick another name")
    CHECKS[new_check.name] = new_check
    return new_check


def _describe(value: Any) -> str:
    """Short description of a value for messages: shape for tensors, repr otherwise."""
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)}: (" + ", ".join(_describe(v) for v in value) + ")"
    return repr(value)


def _mismatch(expected: Any, got: Any, spec: Check, where: str) -> str | None:
    """Return a description of the first difference between ``expected`` and ``got``, or ``None`` if they match."""
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"{where}expected {_describe(expected)}, got {_describe(got)}"
        names = spec.output_names if len(spec.output_names) == len(expected) else [f"[{i}]" for i in range(len(expected))]
        for part_name, e, g in zip(names, expected, got):
            problem = _mismatch(e, g, spec, f"{where}{part_name}: ")
            if problem:
                return problem
        return None
    expected_tensor = torch.as_tensor(expected, dtype=torch.float64)
    try:
        got_tensor = torch.as_tensor(got, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return f"{where}expected {_describe(expected)}, got {_describe(got)}"
    if got_tensor.shape != expected_tensor.shape:
        return f"{where}expected shape {tuple(expected_tensor.shape)}, got shape {tuple(got_tensor.shape)}"
    if torch.allclose(got_tensor, expected_tensor, rtol=spec.rtol, atol=spec.atol, equal_nan=True):
        return None
    error = (got_tensor - expected_tensor).abs().nan_to_num(nan=math.inf)
    index = tuple(int(i) for i in torch.unravel_index(error.argmax(), error.shape))
    return (f"{where}values differ (shape {tuple(expected_tensor.shape)}, max abs error {error.max().item():.3g}); "
            f"at index {index}: expected {expected_tensor[index].item():.6g}, got {got_tensor[index].item():.6g}")


def _finish(name: str, status: str, message: str) -> CheckResult:
    print(message)
    return CheckResult(name, status, message)


def check(name: str, fn: Callable[..., Any]) -> CheckResult:
    """Compare the learner's ``fn`` with minidit's reference for check ``name`` and print a verdict.

    Never raises for a wrong or unfinished ``fn``: a ``NotImplementedError`` gives status ``"not_implemented"``,
    any other exception or mismatch gives ``"fail"`` with the input, expected versus got and a hint.

    Args:
        name: a key of ``CHECKS`` (e.g. ``"interpolant"``, ``"convert"``, ``"euler_step"``).
        fn: the learner's function, with the signature the exercise describes.
    Returns:
        ``CheckResult(name, status, message)``.
    Raises:
        ValueError: for an unknown check name, listing the valid ones.
    """
    spec = CHECKS[check_choice("check", name, CHECKS)]
    expected_cases, learner_cases = spec.cases(), spec.cases()
    for index, (reference_case, case) in enumerate(zip(expected_cases, learner_cases), start=1):
        where = f"case {index} of {len(learner_cases)} ({case.label})"
        try:
            got = spec.evaluate(fn(*case.args))
        except NotImplementedError:
            return _finish(name, "not_implemented", f"… {name}: not implemented yet (replace the `raise NotImplementedError` and run again)")
        except Exception as error:  # noqa: BLE001 - any learner error becomes a readable verdict
            return _finish(name, "fail", f"✗ {name}: {where} raised {type(error).__name__}: {error}\n  hint: {spec.hint}")
        expected = spec.evaluate(spec.reference(*reference_case.args))
        problem = _mismatch(expected, got, spec, "")
        if problem:
            return _finish(name, "fail", f"✗ {name}: {where}: {problem}\n  hint: {spec.hint}")
    return _finish(name, "pass", f"✓ {name}: all {len(learner_cases)} cases pass")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- interpolants (SiT Sec. 2.2) and prediction conversion (SiT Sec. 2.3) -----------------------------------

def _interpolant_reference(name: str, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from minidit.interpolants import get_interpolant

    return get_interpolant(name).coefficients(t)


def _interpolant_cases() -> list[Case]:
    from minidit.interpolants import INTERPOLANTS

    cases = []
    for name in INTERPOLANTS:
        start = 0.01 if name == "vp" else 0.0  # the VP path's d_sigma is infinite at t = 0
        for t in (torch.linspace(start, 1.0, 11), torch.tensor([0.5]), torch.rand(3, 4, generator=_generator(0)).clamp_min(start)):
            cases.append(Case(f"name={name!r}, t of shape {tuple(t.shape)} in [{t.min():.2f}, {t.max():.2f}]", (name, t)))
    return cases


register(Check(
    name="interpolant",
    reference=_interpolant_reference,
    cases=_interpolant_cases,
    hint="return (alpha_t, sigma_t, d_alpha_t, d_sigma_t) with the same shape as t; t = 0 is data (alpha = 1), t = 1 is noise (sigma = 1)",
    output_names=("alpha", "sigma", "d_alpha", "d_sigma"),
))


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
                    g = _generator(len(cases))
                    pred, x_t = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
                    t = torch.tensor([0.1, 0.3, 0.6, 0.9])
                    cases.append(Case(f"interpolant={name!r}, src={src!r}, dst={dst!r}, pred and x_t of shape (4, 2)", (pred, x_t, t, name, src, dst)))
    return cases


register(Check(
    name="convert",
    reference=_convert_reference,
    cases=_convert_cases,
    hint="recover (x0, eps) from x_t = alpha x0 + sigma eps and the prediction, then express the target: "
    "score = -eps / sigma, velocity = alpha' x0 + sigma' eps; broadcast t of shape (N,) with minidit.validation.expand_time",
))


# ---- time samplers (SD3 eqs. 19-20) -------------------------------------------------------------------------

def _logit_normal_density_reference(t: Tensor, m: float, s: float) -> Tensor:
    from minidit.timesteps import get_time_sampler

    return get_time_sampler("logit_normal", m=m, s=s).density(t)


def _logit_normal_cases() -> list[Case]:
    t = torch.linspace(0.01, 0.99, 25)
    return [Case(f"t = linspace(0.01, 0.99, 25), m={m}, s={s}", (t.clone(), m, s)) for m, s in ((0.0, 1.0), (-0.5, 1.0), (1.0, 0.6))]


register(Check(
    name="logit_normal_density",
    reference=_logit_normal_density_reference,
    cases=_logit_normal_cases,
    hint="pi(t) = exp(-(logit(t) - m)^2 / (2 s^2)) / (s sqrt(2 pi) t (1 - t)) with logit(t) = log(t / (1 - t)); "
    "the 1 / (t (1 - t)) factor is the Jacobian of the sigmoid",
    rtol=1e-4,
))


def _mode_sample_reference(u: Tensor, s: float) -> Tensor:
    from minidit.timesteps import get_time_sampler

    return get_time_sampler("mode", s=s).transform(u)


def _mode_sample_cases() -> list[Case]:
    u = torch.cat([torch.tensor([0.0, 0.5, 1.0]), torch.rand(13, generator=_generator(1))])
    return [Case(f"u of shape (16,) in [0, 1], s={s}", (u.clone(), s)) for s in (0.0, 1.29, -0.5)]


register(Check(
    name="mode_sample",
    reference=_mode_sample_reference,
    cases=_mode_sample_cases,
    hint="t = 1 - u - s (cos^2(pi u / 2) - 1 + u); check that u = 0 gives t = 1 and u = 1 gives t = 0",
))


# ---- single steps of the ODE and SDE samplers (SiT Sec. 2.4), integrating from t = 1 to t = 0 ---------------

def _toy_velocity(x: Tensor, t: Tensor | float) -> Tensor:
    """A smooth nonlinear field, so Heun and Euler differ: ``v = sin(x) (1 + t) - x / 2``; ``t`` float or ``(N,)``."""
    t = torch.as_tensor(t, dtype=x.dtype)
    t = t.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim else t  # (N, 1, ..., 1)
    return torch.sin(x) * (1 + t) - 0.5 * x


def _toy_score(x: Tensor, t: Tensor | float) -> Tensor:
    """Score of ``N(0, (1 + t) I)``: ``-x / (1 + t)``; ``t`` float or ``(N,)``."""
    t = torch.as_tensor(t, dtype=x.dtype)
    t = t.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim else t  # (N, 1, ..., 1)
    return -x / (1 + t)


def _ode_step_reference(method: str) -> Callable[..., Tensor]:
    """minidit's ODE sampler run for one step from ``t`` to ``t_next``: ``(velocity_fn, x, t, t_next) -> x_next``."""

    def step(velocity_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: float, t_next: float) -> Tensor:
        from minidit.samplers import sample_ode

        return sample_ode(velocity_fn, x, steps=1, method=method, t_start=t, t_end=t_next).samples

    return step


def euler_maruyama_step(
    velocity_fn: Callable[[Tensor, Tensor], Tensor],
    score_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    t: float,
    t_next: float,
    diffusion: float,
    noise: Tensor,
) -> Tensor:
    """One Euler–Maruyama step of the reverse SDE ``dx = [v - w s] dt + sqrt(2 w) dW`` from ``t`` down to ``t_next``.

    ``x - h v + h w s + sqrt(2 w h) z`` with ``h = t - t_next``, ``w = diffusion`` and the given noise ``z``: the
    step ``minidit.samplers.sample_sde`` takes, with the noise passed in so that the result is deterministic.

    Args:
        velocity_fn, score_fn: ``f(x (N, ...), t (N,)) -> (N, ...)``.
        x: current state, ``(N, ...)``; noise: ``z ~ N(0, I)``, same shape.
        t, t_next: current and next time; diffusion: ``w_t >= 0``.
    Returns:
        the next state, ``(N, ...)``.
    """
    h = t - t_next
    time = torch.full((x.shape[0],), t, dtype=x.dtype)
    return x - h * velocity_fn(x, time) + h * diffusion * score_fn(x, time) + math.sqrt(2 * diffusion * h) * noise


def _ode_step_cases() -> list[Case]:
    x = torch.randn(5, 3, generator=_generator(2))
    return [Case(f"x of shape (5, 3), t={t}, t_next={t_next}", (_toy_velocity, x.clone(), t, t_next))
            for t, t_next in ((1.0, 0.0), (1.0, 0.75), (0.5, 0.45))]


def _sde_step_cases() -> list[Case]:
    g = _generator(3)
    x, noise = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    return [Case(f"x and noise of shape (5, 3), t={t}, t_next={t_next}, diffusion={w}", (_toy_velocity, _toy_score, x.clone(), t, t_next, w, noise.clone()))
            for t, t_next, w in ((1.0, 0.75, 1.0), (0.5, 0.45, 0.3), (0.5, 0.25, 0.0))]


register(Check(
    name="euler_step",
    reference=_ode_step_reference("euler"),
    cases=_ode_step_cases,
    hint="time runs from 1 (noise) down to 0 (data): x_next = x - h v(x, t) with h = t - t_next > 0; "
    "pass the time as a tensor of shape (N,), e.g. torch.full((x.shape[0],), t)",
))
register(Check(
    name="heun_step",
    reference=_ode_step_reference("heun"),
    cases=_ode_step_cases,
    hint="evaluate v1 at (x, t), take an Euler step to t_next, evaluate v2 there, and average: x - h (v1 + v2) / 2",
))
register(Check(
    name="euler_maruyama_step",
    reference=euler_maruyama_step,
    cases=_sde_step_cases,
    hint="x_next = x - h v + h w s + sqrt(2 w h) z with h = t - t_next > 0; the score term pulls towards data, "
    "so its sign is +h w s when integrating backwards in time",
))


# ---- classifier-free guidance (DiT Sec. 3; CFG works unchanged for velocity models, SiT Sec. 3) -----------

_CFG_X = torch.randn(4, 2, generator=_generator(4))
_CFG_T = torch.tensor([0.9, 0.6, 0.3, 0.05])
_CFG_TABLE = torch.randn(4, 2, generator=_generator(5))


def _toy_conditional_velocity(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
    """A toy class-conditional model ``v(x, t, y) = (1 + t) table[y] - x``; class 3 is the null class."""
    return (1 + t[:, None]) * _CFG_TABLE[y] - x  # (N, 2)


def _cfg_reference(model: Callable[..., Tensor], cond: Tensor, null_cond: Tensor, scale: float) -> Callable[[Tensor, Tensor], Tensor]:
    from minidit.guidance import classifier_free_guidance

    return classifier_free_guidance(model, cond, null_cond, scale)


def _cfg_cases() -> list[Case]:
    cond, null_cond = torch.tensor([0, 1, 2, 0]), torch.full((4,), 3)
    return [Case(f"labels {cond.tolist()}, null label 3, scale={scale}", (_toy_conditional_velocity, cond, null_cond, scale))
            for scale in (1.0, 0.0, 1.5, 4.0)]


register(Check(
    name="cfg",
    reference=_cfg_reference,
    cases=_cfg_cases,
    hint="return a function velocity_fn(x, t) = v_u + scale (v_c - v_u) with v_c = model(x, t, cond) and "
    "v_u = model(x, t, null_cond); scale 1 is the conditional model, scale 0 the unconditional one",
    evaluate=lambda velocity_fn: velocity_fn(_CFG_X.clone(), _CFG_T.clone()),
))


# ---- DiT: patchify and the adaLN-Zero block (DiT, arXiv 2212.09748, Sec. 3.2) -------------------------------

def _patchify_reference(x: Tensor, patch_size: int) -> Tensor:
    from minidit.dit import patchify

    return patchify(x, patch_size)


def _unpatchify_reference(tokens: Tensor, grid_shape: tuple[int, int], patch_size: int) -> Tensor:
    from minidit.dit import unpatchify

    return unpatchify(tokens, grid_shape, patch_size)


_PATCH_SHAPES = ((2, 3, 8, 8, 2), (1, 1, 4, 6, 2), (2, 4, 6, 9, 3), (1, 2, 3, 2, 1))  # (N, C, H, W, p)


def _patchify_cases() -> list[Case]:
    g = _generator(6)
    return [Case(f"x of shape {(n, c, h, w)}, patch_size={p}", (torch.randn(n, c, h, w, generator=g), p))
            for n, c, h, w, p in _PATCH_SHAPES]


def _unpatchify_cases() -> list[Case]:
    g = _generator(7)
    return [Case(f"tokens of shape {(n, (h // p) * (w // p), p * p * c)}, grid_shape={(h // p, w // p)}, patch_size={p}",
                 (torch.randn(n, (h // p) * (w // p), p * p * c, generator=g), (h // p, w // p), p))
            for n, c, h, w, p in _PATCH_SHAPES]


register(Check(
    name="patchify",
    reference=_patchify_reference,
    cases=_patchify_cases,
    hint="(N, C, H, W) -> (N, C, h, p, w, p) -> permute to (N, h, w, p, p, C) -> (N, h * w, p * p * C): "
    "tokens in row-major grid order, each listing its pixels row by row with the channels last",
))
register(Check(
    name="unpatchify",
    reference=_unpatchify_reference,
    cases=_unpatchify_cases,
    hint="undo patchify step by step: (N, h * w, p * p * C) -> (N, h, w, p, p, C) -> permute to (N, C, h, p, w, p) "
    "-> (N, C, h * p, w * p); unpatchify(patchify(x, p), (H // p, W // p), p) must give x back",
))


def _seeded_block(seed: int, zero_modulation: bool = False, **config: Any) -> torch.nn.Module:
    """A small ``DiTBlock`` with weights drawn from ``seed`` (frozen); ``zero_modulation`` applies the adaLN-Zero init."""
    from minidit.dit import DiTBlock, DiTConfig
    from minidit.rope import RotaryEmbedding

    settings = DiTConfig(hidden_size=32, num_heads=4, mlp_ratio=2.0, **config)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rope = RotaryEmbedding(settings.hidden_size // settings.num_heads) if settings.rope else None
        block = DiTBlock(settings, rope)
    if zero_modulation:
        torch.nn.init.zeros_(block.modulation[-1].weight)
        torch.nn.init.zeros_(block.modulation[-1].bias)
    return block.requires_grad_(False)


def _adaln_zero_block_reference(block: torch.nn.Module, x: Tensor, c: Tensor, grid_shape: tuple[int, int]) -> Tensor:
    return block(x, c, grid_shape)


def _adaln_zero_block_cases() -> list[Case]:
    g = _generator(8)
    variants = (
        ("DiT block (LayerNorm)", (4, 4), dict(seed=0)),
        ("Flag-DiT block (RMSNorm, QK-norm, RoPE)", (2, 3), dict(seed=1, norm="rmsnorm", qk_norm="rmsnorm", rope=True)),
        ("adaLN-Zero initialisation (zero modulation)", (3, 3), dict(seed=2, zero_modulation=True)),
    )
    cases = []
    for label, (h, w), settings in variants:
        x, c = torch.randn(2, h * w, 32, generator=g), torch.randn(2, 32, generator=g)
        cases.append(Case(f"{label}, x of shape (2, {h * w}, 32), c of shape (2, 32), grid_shape={(h, w)}",
                          (_seeded_block(**settings), x, c, (h, w))))
    return cases


register(Check(
    name="adaln_zero_block",
    reference=_adaln_zero_block_reference,
    cases=_adaln_zero_block_cases,
    hint="split block.modulation(c) into shift, scale, gate for attention then MLP (in that order); "
    "x = x + gate_msa * attn(modulate(norm1(x), shift_msa, scale_msa), grid_shape), then the same with norm2 and mlp on "
    "the updated x; modulate is x * (1 + scale) + shift, with (N, D) parameters unsqueezed to (N, 1, D)",
))


# ---- Flag-DiT: RoPE on a 2-D grid and QK-norm (arXiv 2405.05945, Sec. 2.1; SD3, arXiv 2403.03206, Sec. 5.3.2) -

def _rope_frequencies_reference(grid_shape: tuple[int, int], head_dim: int, theta: float) -> Tensor:
    from minidit.rope import rope_frequencies

    return rope_frequencies(grid_shape, head_dim, theta)


def _rope_frequencies_cases() -> list[Case]:
    return [Case(f"grid_shape={grid_shape}, head_dim={head_dim}, theta={theta}", (grid_shape, head_dim, theta))
            for grid_shape, head_dim, theta in (((4, 4), 8, 10000.0), ((3, 5), 12, 10000.0), ((2, 3), 10, 100.0))]


def _rope_reference(x: Tensor, angles: Tensor) -> Tensor:
    from minidit.rope import apply_rope

    return apply_rope(x, angles)


def _rope_cases() -> list[Case]:
    g = _generator(9)
    cases = []
    for grid_shape, head_dim in (((4, 4), 8), ((3, 5), 12), ((2, 3), 10)):
        angles = _rope_frequencies_reference(grid_shape, head_dim, 100.0)
        x = torch.randn(2, 3, grid_shape[0] * grid_shape[1], head_dim, generator=g)
        label = f"x of shape {tuple(x.shape)}, angles of shape {tuple(angles.shape)} for grid_shape={grid_shape}"
        cases.append(Case(label, (x, angles)))
    return cases


register(Check(
    name="rope_frequencies",
    reference=_rope_frequencies_reference,
    cases=_rope_frequencies_cases,
    hint="split the head_dim // 2 channel pairs between the axes (h first, it takes the extra pair); an axis with "
    "d = 2 * pairs channels has frequencies theta^(-2i / d) (d of the axis, not head_dim); angle = position on that "
    "axis * frequency; tokens in row-major order (torch.meshgrid with indexing='ij'); result (h * w, head_dim // 2)",
))
register(Check(
    name="rope",
    reference=_rope_reference,
    cases=_rope_cases,
    hint="rotate ADJACENT channel pairs (x[..., 0::2], x[..., 1::2]) by the angle of their pair: "
    "(a cos - b sin, a sin + b cos), then interleave them back in the same positions",
))


def _rms_norm_reference(x: Tensor, weight: Tensor) -> Tensor:
    from minidit.norms import RMSNorm

    norm = RMSNorm(x.shape[-1])
    norm.weight.data.copy_(weight)
    return norm(x).detach()


def _rms_norm_cases() -> list[Case]:
    g = _generator(10)
    return [Case(f"x of shape {shape} with mean {offset}, weight of shape ({shape[-1]},)",
                 (torch.randn(*shape, generator=g) * 3 + offset, 0.5 + torch.rand(shape[-1], generator=g)))
            for shape, offset in (((4, 8), 0.0), ((2, 5, 16), 2.0), ((3, 1, 6), -1.0))]


def _qk_norm_reference(q: Tensor, k: Tensor, query_weight: Tensor, key_weight: Tensor) -> tuple[Tensor, Tensor]:
    from minidit.norms import QKNorm

    qk_norm = QKNorm("rmsnorm", q.shape[-1])
    qk_norm.query_norm.weight.data.copy_(query_weight)
    qk_norm.key_norm.weight.data.copy_(key_weight)
    return tuple(part.detach() for part in qk_norm(q, k))


def _qk_norm_cases() -> list[Case]:
    g = _generator(11)
    cases = []
    for heads, queries, keys, head_dim, scale in ((2, 5, 7, 8, 1.0), (4, 3, 3, 16, 50.0), (1, 6, 2, 4, 0.1)):
        q = torch.randn(2, heads, queries, head_dim, generator=g) * scale * torch.arange(1, heads + 1).reshape(-1, 1, 1)
        k = torch.randn(2, heads, keys, head_dim, generator=g) * scale
        query_weight, key_weight = 0.5 + torch.rand(head_dim, generator=g), 0.5 + torch.rand(head_dim, generator=g)
        label = f"q of shape {tuple(q.shape)}, k of shape {tuple(k.shape)}, entries of size ~{scale}, heads of different sizes"
        cases.append(Case(label, (q, k, query_weight, key_weight)))
    return cases


register(Check(
    name="rms_norm",
    reference=_rms_norm_reference,
    cases=_rms_norm_cases,
    hint="x / sqrt(mean(x^2 over the last dimension) + 1e-6) * weight; unlike LayerNorm, do not subtract the mean",
))
register(Check(
    name="qk_norm",
    reference=_qk_norm_reference,
    cases=_qk_norm_cases,
    hint="normalise each head's query and key vectors on their own, over head_dim only (the last dimension of "
    "(N, H, T, Dh)), with RMSNorm: query_weight for q, key_weight for k",
    output_names=("q", "k"),
))


# ---- exact fields of a Gaussian mixture (SiT, arXiv 2401.08740, Sec. 2) and the sliced Wasserstein distance ----

def _mixture_velocity_reference(x: Tensor, t: Tensor, means: Tensor, stds: Tensor, weights: Tensor, interpolant: str) -> Tensor:
    from minidit.toy import GaussianMixture

    return GaussianMixture(means, stds, weights).velocity(x, t, interpolant)


def _mixture_velocity_cases() -> list[Case]:
    from minidit.interpolants import INTERPOLANTS

    g = _generator(12)
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
    hint="per component: centred = x - alpha mu_k, var_k = alpha^2 std_k^2 + sigma^2; log w_k + Gaussian log-density "
    "summed over D, normalised with torch.logsumexp over k (responsibilities); E[x0 | x, k] = mu_k + alpha std_k^2 centred / var_k, "
    "E[eps | x, k] = sigma centred / var_k; v = sum_k r_k (alpha' E[x0 | x, k] + sigma' E[eps | x, k])",
))


def _sliced_wasserstein_reference(x: Tensor, y: Tensor, n_projections: int, generator: torch.Generator) -> Tensor:
    from minidit.metrics import sliced_wasserstein

    return sliced_wasserstein(x, y, n_projections, generator)


def _sliced_wasserstein_cases() -> list[Case]:
    g = _generator(13)
    cases = []
    for n, features, projections, shift in ((64, 1, 4, 0.5), (100, 2, 16, 1.0), (50, 3, 8, 0.0), (80, 2, 32, 3.0)):
        x = torch.randn(n, features, generator=g)
        y = shift + torch.randn(n, features, generator=g) * torch.linspace(0.5, 2.0, features)  # stretched differently per axis
        label = f"x and y of shape {(n, features)}, y shifted by {shift}, n_projections={projections}, generator seeded with 14"
        cases.append(Case(label, (x, y, projections, _generator(14))))
    return cases


register(Check(
    name="sliced_wasserstein",
    reference=_sliced_wasserstein_reference,
    cases=_sliced_wasserstein_cases,
    hint="directions = torch.randn(F, n_projections, generator=generator), each column divided by its norm; project "
    "x @ directions and y @ directions (N, P), sort each column, mean over samples of the squared differences (W_2^2 "
    "per direction), then the square root of the mean over directions (sqrt outside the mean)",
))


# ---- DiT's fixed 2-D sin-cos position embedding (MAE, arXiv 2111.06377; DiT Sec. 3.2) and multi-head attention ----

def _sincos_2d_reference(dim: int, grid_shape: tuple[int, int]) -> Tensor:
    from minidit.posembed import sincos_2d

    return sincos_2d(dim, grid_shape)


def _sincos_2d_cases() -> list[Case]:
    return [Case(f"dim={dim}, grid_shape={grid_shape}", (dim, grid_shape))
            for dim, grid_shape in ((8, (2, 3)), (16, (4, 4)), (12, (3, 5)), (32, (1, 6)))]


def _self_attention_reference(
    x: Tensor, qkv_weight: Tensor, qkv_bias: Tensor, proj_weight: Tensor, proj_bias: Tensor, num_heads: int
) -> Tensor:
    from minidit.attention import SelfAttention

    attention = SelfAttention(x.shape[-1], num_heads)
    for parameter, value in ((attention.qkv.weight, qkv_weight), (attention.qkv.bias, qkv_bias),
                             (attention.proj.weight, proj_weight), (attention.proj.bias, proj_bias)):
        parameter.data.copy_(value)
    with torch.no_grad():
        return attention(x)


def _self_attention_cases() -> list[Case]:
    g = _generator(15)
    cases = []
    for n, tokens, dim, heads in ((2, 5, 8, 2), (1, 7, 12, 3), (3, 4, 16, 1), (2, 9, 16, 4)):
        x = torch.randn(n, tokens, dim, generator=g)
        qkv_weight, qkv_bias = torch.randn(3 * dim, dim, generator=g) / math.sqrt(dim), 0.1 * torch.randn(3 * dim, generator=g)
        proj_weight, proj_bias = torch.randn(dim, dim, generator=g) / math.sqrt(dim), 0.1 * torch.randn(dim, generator=g)
        label = f"x of shape {(n, tokens, dim)}, num_heads={heads} (head_dim {dim // heads})"
        cases.append(Case(label, (x, qkv_weight, qkv_bias, proj_weight, proj_bias, heads)))
    return cases


register(Check(
    name="sincos_2d",
    reference=_sincos_2d_reference,
    cases=_sincos_2d_cases,
    hint="1-D table of width d for positions p: omega_i = 10000^(-i / (d / 2)), i < d / 2, then [sin(p omega), cos(p omega)] "
    "(all sines first); the 2-D table is [1-D(rows) of width dim / 2, 1-D(columns) of width dim / 2] with rows, columns from "
    "torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij') flattened row-major; result (h * w, dim)",
))
register(Check(
    name="self_attention",
    reference=_self_attention_reference,
    cases=_self_attention_cases,
    hint="q, k, v = (x @ qkv_weight.T + qkv_bias).chunk(3, dim=-1); split heads (N, T, D) -> (N, T, H, Dh) -> transpose "
    "to (N, H, T, Dh); softmax(q k^T / sqrt(Dh)) v with Dh = D / H (not D); merge (N, H, T, Dh) -> (N, T, H * Dh); "
    "then the output projection x @ proj_weight.T + proj_bias",
))
