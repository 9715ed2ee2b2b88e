"""Tests for minidit.course: exercise generation, automatic checks, hints, question answers, book.toml and the HTML book."""
from __future__ import annotations

import contextlib
import io
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import matplotlib
import pytest
import torch

from minidit.course import CHECKS, QUESTIONS, check, check_answer, hint
from minidit.course.__main__ import main
from minidit.course.book import build_book, load_book, missing_notebooks, outline, unlisted_notebooks
from minidit.course.checks import euler_maruyama_step
from minidit.course.exercises import exercise_notebook, exercise_source, outdated_exercises, require_nbformat
from minidit.frames import NEXTFRAME, NEXTLINE, PATCH, frame_layout

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

nbformat = require_nbformat()
ROOT = Path(__file__).resolve().parents[1]
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def run_notebook_in_process(path: Path) -> str:
    """Execute a notebook's code cells in one fresh namespace (as a kernel would) and return what they printed."""
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                exec(compile(cell.source, f"{path.name}", "exec"), namespace)
    plt.close("all")
    return printed.getvalue()


def code_of(path: Path) -> str:
    return "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")


def checks_called(path: Path) -> list[str]:
    names = re.findall(r"""check\(\s*["'](\w+)["']|\(["'](\w+)["'],\s*\w+\)""", code_of(path))
    return sorted({a or b for a, b in names} & set(CHECKS))


def questions_asked(path: Path) -> list[str]:
    return sorted(set(re.findall(r"""check_answer\(\s*["'](\w+)["']""", code_of(path))))


# ---- exercise generation ------------------------------------------------------------------------------------

def test_exercise_source_replaces_regions_keeps_indent_and_drops_solution_only_lines():
    source = (
        "def f(x):\n"
        "    y = 2\n"
        "    # BEGIN SOLUTION\n"
        "    # GOAL: return twice x\n"
        "    # GOAL: (use y)\n"
        "    return y * x\n"
        "    # END SOLUTION\n"
        "# BEGIN SOLUTION\n"
        "z = 1\n"
        "# END SOLUTION\n"
        "result = f(3)\n"
        "assert result == 6  # SOLUTION-ONLY\n"
        "guess = (64, 48)  # ANSWER"
    )
    assert exercise_source(source) == (
        "def f(x):\n"
        "    y = 2\n"
        "    raise NotImplementedError('Exercise: return twice x (use y)')\n"
        "raise NotImplementedError('Exercise: complete this code (see the text above)')\n"
        "result = f(3)\n"
        "guess = None  # your answer"
    )


def test_exercise_source_rejects_an_answer_marker_on_a_line_that_is_not_an_assignment():
    with pytest.raises(ValueError, match="cell 2, line 1: '# ANSWER' marks a line `name = value  # ANSWER`"):
        exercise_source("print(3)  # ANSWER", "demo.ipynb, cell 2")


def test_exercise_notebook_drops_solution_only_markdown_cells():
    solution = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("**Question 1.** Which?"),
        nbformat.v4.new_code_cell("answer = 'vp'  # ANSWER"),
        nbformat.v4.new_markdown_cell("<!-- SOLUTION-ONLY -->\n**Answer 1.** VP."),
        nbformat.v4.new_markdown_cell("Mentions <!-- SOLUTION-ONLY --> inline only, so it stays."),
    ])
    exercise = exercise_notebook(solution)
    assert [c.source for c in exercise.cells] == [
        "**Question 1.** Which?", "answer = None  # your answer", "Mentions <!-- SOLUTION-ONLY --> inline only, so it stays."]
    assert len(solution.cells) == 4


@pytest.mark.parametrize("source", ["# BEGIN SOLUTION\nx = 1", "x = 1\n# END SOLUTION", "# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION"])
def test_exercise_source_rejects_unbalanced_markers(source):
    with pytest.raises(ValueError, match="SOLUTION"):
        exercise_source(source, "demo.ipynb, cell 0")


def test_exercises_are_up_to_date():
    assert SOLUTIONS, "no solution notebooks found"
    assert outdated_exercises(ROOT / "solutions", ROOT / "exercises") == [], "run `python -m minidit.course build-exercises`"


def test_check_exercises_cli_detects_a_stale_exercise(tmp_path, capsys):
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "01_demo.ipynb").write_text((ROOT / "solutions" / "02_predictions.ipynb").read_text())
    assert main(["--root", str(tmp_path), "build-exercises"]) == 0
    assert main(["--root", str(tmp_path), "check-exercises"]) == 0
    exercise = tmp_path / "exercises" / "01_demo.ipynb"
    exercise.write_text(exercise.read_text().replace("NotImplementedError", "NotImplemented"))
    assert main(["--root", str(tmp_path), "check-exercises"]) == 1
    assert "01_demo.ipynb: differs from its solution" in capsys.readouterr().out


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_exercise_as_shipped_runs_to_the_end_reporting_not_implemented(path):
    names = checks_called(path)
    assert names, f"{path.name} calls no check"
    printed = run_notebook_in_process(path)
    for name in names:
        assert f"{name}: not implemented yet" in printed
    for name in questions_asked(path):
        assert f"{name}: not answered yet" in printed
    assert "✓" not in printed and "✗" not in printed


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solution_passes_its_checks(path):
    names = checks_called(path)
    assert names, f"{path.name} calls no check"
    printed = run_notebook_in_process(path)
    for name in names:
        assert re.search(rf"✓ {name}: all \d+ cases pass", printed), printed
    for name in questions_asked(path):
        assert f"✓ {name}: right." in printed, printed


# ---- the checks ---------------------------------------------------------------------------------------------

def _perturbed(output):
    """The output moved by 1e-3 relative: tensors shifted (a boolean mask as 0 / 1), the last part of a tuple shifted,
    the values of a dict shifted, functions wrapped."""
    if callable(output):
        return lambda *args: _perturbed(output(*args))
    if isinstance(output, dict):
        return {key: _perturbed(value) for key, value in output.items()}
    if isinstance(output, tuple):
        return (*output[:-1], _perturbed(output[-1]))
    output = output.float() if output.dtype == torch.bool else output
    return output + 1e-3 * (1 + output.abs())


def _t_full(x, t):
    return torch.full((x.shape[0],), t)


def _patchify_channels_first(x, p):
    """Each token lists its pixels channel by channel, (C, p, p), instead of pixel by pixel with channels last."""
    n, c, height, width = x.shape
    return x.reshape(n, c, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5).reshape(n, -1, p * p * c)


def _unpatchify_transposing_patches(tokens, grid_shape, p):
    """Swaps the row and column inside each patch: permute (0, 5, 1, 4, 2, 3) instead of (0, 5, 1, 3, 2, 4)."""
    n, _, d = tokens.shape
    (h, w), c = grid_shape, d // (p * p)
    return tokens.reshape(n, h, w, p, p, c).permute(0, 5, 1, 4, 2, 3).reshape(n, c, h * p, w * p)


def _block_without_one_plus_scale(block, x, c, grid_shape):
    """adaLN with h * scale + shift instead of h * (1 + scale) + shift."""
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (p.unsqueeze(1) for p in block.modulation(c).chunk(6, dim=-1))
    x = x + gate_msa * block.attn(block.norm1(x) * scale_msa + shift_msa, grid_shape)
    return x + gate_mlp * block.mlp(block.norm2(x) * scale_mlp + shift_mlp)


def _rope_frequencies_over_head_dim(grid_shape, head_dim, theta):
    """Each axis uses 1-D RoPE's frequencies theta^(-2i / head_dim) instead of theta^(-2i / d_axis)."""
    rows, columns = torch.meshgrid(torch.arange(grid_shape[0]), torch.arange(grid_shape[1]), indexing="ij")
    frequencies = theta ** (-torch.arange(0, head_dim, 2) / head_dim)  # (Dh // 2,)
    column_pairs = head_dim // 4
    row_pairs = head_dim // 2 - column_pairs
    return torch.cat([rows.reshape(-1, 1) * frequencies[:row_pairs], columns.reshape(-1, 1) * frequencies[:column_pairs]], dim=-1)


def _qk_norm_over_all_heads(q, k, query_weight, key_weight):
    """One RMS per token over the whole width H * Dh (as if normalising before splitting heads) instead of per head."""
    def normalise(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(dim=(1, 3), keepdim=True) + 1e-6) * weight

    return normalise(q, query_weight), normalise(k, key_weight)


def _rotate_half(x, angles):
    """GPT-NeoX RoPE: pairs (x[i], x[i + Dh / 2]) instead of adjacent pairs (x[2i], x[2i + 1])."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([first * angles.cos() - second * angles.sin(), first * angles.sin() + second * angles.cos()], dim=-1)


def _mixture_velocity_without_logsumexp(x, t, means, stds, weights, interpolant):
    """Responsibilities as exp(log-joint) / sum of exp: far from every component both underflow and give 0 / 0 = nan."""
    from minidit.interpolants import get_interpolant

    alpha, sigma, d_alpha, d_sigma = (c[:, None, None] for c in get_interpolant(interpolant).coefficients(t))  # (N, 1, 1)
    centred = x[:, None, :] - alpha * means  # (N, K, D)
    var = alpha**2 * stds**2 + sigma**2  # (N, K, D)
    joint = weights[:, None] * torch.exp(-0.5 * centred**2 / var) / torch.sqrt(2 * math.pi * var)  # (N, K, D)
    joint = joint.prod(-1, keepdim=True)  # (N, K, 1)
    responsibilities = joint / joint.sum(1, keepdim=True)
    x0_mean, noise_mean = means + alpha * stds**2 * centred / var, sigma * centred / var  # (N, K, D)
    return (responsibilities * (d_alpha * x0_mean + d_sigma * noise_mean)).sum(1)


def _sliced_wasserstein_with_sqrt_inside(x, y, n_projections, generator):
    """The mean of W_2 over directions instead of the square root of the mean of W_2^2."""
    directions = torch.randn(x.shape[1], n_projections, generator=generator)
    directions = directions / directions.norm(dim=0, keepdim=True)  # (F, P)
    x_sorted, y_sorted = (x @ directions).sort(dim=0).values, (y @ directions).sort(dim=0).values  # (N, P)
    return (x_sorted - y_sorted).pow(2).mean(0).sqrt().mean()


def _sincos_2d_rows_and_columns_swapped(dim, grid_shape):
    """The row in the first half of the channels (minidit's layout before it adopted the official DiT / MAE one)."""
    from minidit.posembed import sincos_1d

    rows, columns = torch.meshgrid(torch.arange(grid_shape[0]), torch.arange(grid_shape[1]), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, rows.flatten()), sincos_1d(dim // 2, columns.flatten())], dim=-1)


def _sincos_1d_interleaved(dim, positions):
    """[sin, cos, sin, cos, ...] per frequency instead of all sines, then all cosines."""
    angles = positions.float()[:, None] * 10000.0 ** (-torch.arange(dim // 2) / (dim // 2))  # (T, dim / 2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)


def _self_attention_heads_split_without_transpose(x, qkv_weight, qkv_bias, proj_weight, proj_bias, num_heads):
    """Heads split by reshaping (N, T, D) straight to (N, H, T, Dh), which mixes tokens and channels."""
    n, t, d = x.shape
    q, k, v = (part.reshape(n, num_heads, t, d // num_heads) for part in (x @ qkv_weight.T + qkv_bias).chunk(3, dim=-1))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # (N, H, T, Dh)
    return out.transpose(1, 2).reshape(n, t, d) @ proj_weight.T + proj_bias


def _convert_with_score_sign_flipped(pred, x_t, t, interpolant, src, dst):
    """The classic slip: score = +eps / sigma instead of -eps / sigma."""
    convert = CHECKS["convert"].reference
    out = convert(-pred if src == "score" else pred, x_t, t, interpolant, src, dst)
    return -out if dst == "score" else out


def _gated_cross_attention_without_tanh(q, text, text_mask, norm_weight, kv_weight, kv_bias, gate):
    """Each head multiplied by its gate parameter g instead of tanh(g)."""
    n, length, dim = text.shape
    text = text * torch.rsqrt(text.pow(2).mean(dim=-1, keepdim=True) + 1e-6) * norm_weight
    k, v = (part.reshape(n, length, q.shape[1], -1).transpose(1, 2) for part in (text @ kv_weight.T + kv_bias).chunk(2, dim=-1))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=text_mask[:, None, None, :]) * gate[:, None, None]


def _compress_kv_channels_entry_major(k, v, grid_shape, weight, bias):
    """The conv's channel c read as entry c // H of head c % H (permute (0, 3, 1, 2)) instead of head c // Dh, entry c % Dh."""
    n, heads, _, head_dim = k.shape
    (h, w), r = grid_shape, weight.shape[-1]

    def merge(x):
        image = x.permute(0, 3, 1, 2).reshape(n, head_dim * heads, h, w)  # (N, Dh * H, h, w)
        merged = torch.nn.functional.conv2d(image, weight, bias, stride=r, groups=heads * head_dim)
        return merged.reshape(n, head_dim, heads, -1).permute(0, 2, 3, 1)  # (N, H, S, Dh)

    return merge(k), merge(v)


def _average_pool_kv_by_subsampling(k, v, grid_shape, ratio):
    """The top-left token of each window (PixArt's "uniform" mode) instead of the window's mean."""
    from minidit.kv_compression import KVCompression

    return KVCompression(k.shape[1] * k.shape[3], ratio=ratio, mode="uniform")(k, v, grid_shape)


def _refiner_mask_without_diagonal(mask, causal):
    """Keys limited to real tokens (and j <= i) but no query allowed to attend itself: a row can be all False."""
    length = mask.shape[1]
    allowed = mask[:, None, None, :].expand(-1, 1, length, length)  # (N, 1, L, L)
    return allowed & torch.ones(length, length, dtype=torch.bool).tril() if causal else allowed


def _refiner_block_with_sigmoid_gates(block, x, mask, c, causal):
    """Gates sigmoid(Linear(SiLU(c))), which start at 0.5, instead of the linear layer's output, which starts at 0."""
    from minidit.text.encoder import attention_mask

    g_attn, g_mlp = torch.sigmoid(block.gate(c)).unsqueeze(1).chunk(2, dim=-1)
    x = x + g_attn * block.attn(block.norm1(x), attn_mask=attention_mask(mask, causal))
    return x + g_mlp * block.mlp(block.norm2(x))


def _hits_by_position_counting_the_cell(reports):
    """The mean of colour, shape, size and position hits instead of colour, shape and size."""
    table = {}
    for r in reports:
        table.setdefault((r["objects"], r["order"]), []).append((r["colour"] + r["shape"] + r["size"] + r["position"]) / 4)
    return {key: torch.tensor(values) for key, values in table.items()}


def _sequence_kinds_without_last_nextframe(t, h, w):
    """A [nextframe] between frames only, as a separator, none after the last frame."""
    return CHECKS["sequence_kinds"].reference(t, h, w)[:-1]


def _sequence_kinds_without_last_nextline(t, h, w):
    """A [nextline] between the rows of a frame only, none after its last row."""
    kinds = []
    for _ in range(t):
        for row in range(h):
            kinds += [PATCH] * w + ([NEXTLINE] if row < h - 1 else [])
        kinds.append(NEXTFRAME)
    return torch.tensor(kinds)


def _sequence_kinds_frames_and_rows_swapped(t, h, w):
    """The loop over rows outside the loop over frames: h frames of t rows."""
    return CHECKS["sequence_kinds"].reference(h, t, w)


def _token_positions_moved(kind, axis, offset):
    """The reference positions with coordinate ``axis`` of every token of ``kind`` moved by ``offset``."""
    def positions(t, h, w):
        layout = frame_layout([(t, h, w)])
        moved = layout.positions[0].clone()  # (L, 3)
        moved[layout.kinds[0] == kind, axis] += offset
        return moved

    return positions


def _pack_column_major(patches, nextline, nextframe, t, h, w):
    """Each frame's patches read column by column instead of row by row."""
    n, _, d = patches.shape
    columns = patches.reshape(n, t, h, w, d).transpose(2, 3).reshape(n, t * h * w, d)  # (N, P, D), column-major
    return CHECKS["pack"].reference(columns, nextline, nextframe, t, h, w)


def _ddpm_alpha_bar_from_step_one(num_steps, beta_start, beta_end):
    """The product over j < i instead of j <= i: alpha_bar_0 = 1, as if step 0 added no noise."""
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(torch.cat([torch.ones(1, dtype=torch.float64), 1 - betas[:-1]]), dim=0)


def _ddpm_coefficients_from_the_right(t, num_steps, beta_start, beta_end):
    """At an integer step, the derivative of the piece starting there (floor(u)), not of the one ending there."""
    reference = CHECKS["ddpm_coefficients"].reference
    alpha, sigma, _, _ = reference(t, num_steps, beta_start, beta_end)
    _, _, d_alpha, d_sigma = reference((t + 1e-9).clamp(max=1.0), num_steps, beta_start, beta_end)
    return alpha, sigma, d_alpha, d_sigma


def _ddpm_coefficients_interpolating_alpha_bar(t, num_steps, beta_start, beta_end):
    """alpha_bar itself (not its log) a straight line between the steps."""
    alpha_bar = CHECKS["ddpm_alpha_bar"].reference(num_steps, beta_start, beta_end).to(t)  # (S,)
    slopes = torch.diff(alpha_bar, prepend=alpha_bar.new_ones(1))  # (S,)
    u = num_steps * t
    i = u.ceil().clamp(max=num_steps - 1).long()
    value, d_value = alpha_bar[i] + (u - i) * slopes[i], num_steps * slopes[i]
    alpha, sigma = value.sqrt(), (1 - value).sqrt()
    return alpha, sigma, 0.5 * d_value / alpha, -0.5 * d_value / sigma


def _ddpm_coefficients_per_step(t, num_steps, beta_start, beta_end):
    """Derivatives with respect to the step index u = num_steps t, not with respect to t."""
    alpha, sigma, d_alpha, d_sigma = CHECKS["ddpm_coefficients"].reference(t, num_steps, beta_start, beta_end)
    return alpha, sigma, d_alpha / num_steps, d_sigma / num_steps


def _ddpm_coefficients_holding_the_last_step(t, num_steps, beta_start, beta_end):
    """t beyond the last step clamped to it: alpha and sigma frozen, derivatives 0 on ((S - 1) / S, 1]."""
    last = (num_steps - 1) / num_steps
    reference = CHECKS["ddpm_coefficients"].reference
    alpha, sigma, d_alpha, d_sigma = reference(t.clamp(max=last), num_steps, beta_start, beta_end)
    return alpha, sigma, d_alpha.masked_fill(t > last, 0.0), d_sigma.masked_fill(t > last, 0.0)


def _ddpm_coefficients_last_step_at_one(t, num_steps, beta_start, beta_end):
    """u = (S - 1) t: t = 1 lands on the last step, and every step sits at i / (S - 1) instead of i / S."""
    shrink = (num_steps - 1) / num_steps
    alpha, sigma, d_alpha, d_sigma = CHECKS["ddpm_coefficients"].reference(shrink * t, num_steps, beta_start, beta_end)
    return alpha, sigma, shrink * d_alpha, shrink * d_sigma


def _eps_to_velocity_lambda_sign_flipped(eps, x_t, t):
    """v = (alpha' / alpha) x_t - lambda eps instead of + lambda eps."""
    from minidit.interpolants import DDPMInterpolant
    from minidit.validation import expand_time

    alpha, sigma, d_alpha, d_sigma = (expand_time(c, x_t) for c in DDPMInterpolant().coefficients(t))
    return d_alpha / alpha * x_t - (d_sigma - d_alpha * sigma / alpha) * eps


def _eps_to_velocity_without_dividing_by_alpha(eps, x_t, t):
    """x0 = x_t - sigma eps, forgetting the division by alpha."""
    from minidit.interpolants import DDPMInterpolant
    from minidit.validation import expand_time

    alpha, sigma, d_alpha, d_sigma = (expand_time(c, x_t) for c in DDPMInterpolant().coefficients(t))
    return d_alpha * (x_t - sigma * eps) + d_sigma * eps


def _dit_flops_leaving_out(part):
    """The exact count of a DiT's forward FLOPs with one of its parts left out (or, ``"attention per head"``, the
    attention products counted for one head's width instead of all heads')."""
    def count(config, height, width):
        p, d = config.patch_size, config.hidden_size
        tokens, mlp = (height // p) * (width // p), int(config.mlp_ratio * d)
        parts = {"patch": 2 * tokens * p * p * config.in_channels * d,
                 "time": 2 * (config.frequency_embedding_size * d + d * d),
                 "modulation": config.depth * 2 * d * 6 * d + 2 * d * 2 * d,
                 "attention": config.depth * 4 * tokens * tokens * d,
                 "linear": config.depth * (2 * tokens * d * 4 * d + 4 * tokens * d * mlp) + 2 * tokens * d * p * p * config.out_channels}
        if part == "attention per head":
            parts["attention"] //= config.num_heads
        else:
            parts.pop(part)
        return sum(parts.values())
    return count


def _power_law_fitted_the_other_way(compute, loss):
    """log C regressed on log L, and the line inverted: right only for points exactly on the law."""
    x, y = compute.log(), loss.log()
    yc = y - y.mean()
    exponent = yc.square().sum() / (yc * (x - x.mean())).sum()
    return (y.mean() - exponent * x.mean()).exp(), exponent


def _power_law_through_the_end_points(compute, loss):
    """The exponent from the log-log slope of the smallest- and largest-compute points only: no least squares."""
    order = compute.argsort()
    first, last = order[0], order[-1]
    exponent = (loss[last] / loss[first]).log() / (compute[last] / compute[first]).log()
    return loss[first] / compute[first] ** exponent, exponent


def _power_law_mixing_log_bases(compute, loss):
    """The line fitted in log10 axes (right), the coefficient read back with exp instead of 10 ** (wrong)."""
    x, y = compute.log10(), loss.log10()
    xc = x - x.mean()
    exponent = (xc * (y - y.mean())).sum() / xc.square().sum()
    return (y.mean() - exponent * x.mean()).exp(), exponent


def _feature_statistics_divided_by_n(features):
    """The biased covariance, divided by N instead of N - 1."""
    centred = features - features.mean(dim=0)
    return features.mean(dim=0), centred.T @ centred / features.shape[0]


def _square_root(sigma):
    """sigma^(1/2) of a symmetric positive semi-definite (D, D) matrix."""
    eigenvalues, eigenvectors = torch.linalg.eigh(sigma)
    return eigenvectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def _frechet_distance_roots_multiplied(mu1, sigma1, mu2, sigma2):
    """tr(sigma1^(1/2) sigma2^(1/2)) for tr((sigma1 sigma2)^(1/2)): right only when the covariances commute."""
    trace_root = (_square_root(sigma1) @ _square_root(sigma2)).trace()
    return (mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * trace_root


# One typical learner mistake per check; a new check must add its own (see test_every_check_has_a_typical_mistake).
MISTAKES = {
    "interpolant": lambda name, t: tuple(c if i < 3 else -c  # d_sigma with the wrong sign
                                          for i, c in enumerate(CHECKS["interpolant"].reference(name, t))),
    "convert": _convert_with_score_sign_flipped,
    "logit_normal_density": lambda t, m, s: torch.exp(-0.5 * ((torch.log(t / (1 - t)) - m) / s) ** 2) / (s * math.sqrt(2 * math.pi)),
    "mode_sample": lambda u, s: 1 - u + s * (torch.cos(0.5 * math.pi * u) ** 2 - 1 + u),
    "euler_step": lambda v, x, t, t_next: x + (t - t_next) * v(x, _t_full(x, t)),
    "heun_step": lambda v, x, t, t_next: x - (t - t_next) * v(x - (t - t_next) * v(x, _t_full(x, t)), _t_full(x, t_next)),
    "euler_maruyama_step": lambda v, s, x, t, t_next, w, z: x - (t - t_next) * (v(x, _t_full(x, t)) + w * s(x, _t_full(x, t))) + math.sqrt(2 * w * (t - t_next)) * z,
    "cfg": lambda model, cond, null, scale: lambda x, t: model(x, t, cond) + scale * (model(x, t, cond) - model(x, t, null)),
    "patchify": _patchify_channels_first,
    "unpatchify": _unpatchify_transposing_patches,
    "adaln_zero_block": _block_without_one_plus_scale,
    "modulate": lambda h, shift, scale: h * scale.unsqueeze(1) + shift.unsqueeze(1),
    "rope_frequencies": _rope_frequencies_over_head_dim,
    "rope": _rotate_half,
    "rms_norm": lambda x, weight: torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6) * weight,
    "qk_norm": _qk_norm_over_all_heads,
    "mixture_velocity": _mixture_velocity_without_logsumexp,
    "sliced_wasserstein": _sliced_wasserstein_with_sqrt_inside,
    "sincos_1d": _sincos_1d_interleaved,
    "sincos_2d": _sincos_2d_rows_and_columns_swapped,
    "self_attention": _self_attention_heads_split_without_transpose,
    "masked_mean": lambda features, mask: features.mean(dim=1),  # padding counted
    "masked_attention": lambda q, k, v, key_mask: torch.nn.functional.scaled_dot_product_attention(q, k, v),  # mask ignored
    "gated_cross_attention": _gated_cross_attention_without_tanh,
    "compress_kv": _compress_kv_channels_entry_major,
    "average_pool_kv": _average_pool_kv_by_subsampling,
    "joint_key_mask": lambda tokens, text_mask: torch.cat([text_mask, text_mask.new_ones(text_mask.shape[0], tokens)], 1)[:, None, None, :],  # [text, image]
    "joint_attention": lambda x, context, text_mask, *weights: CHECKS["joint_attention"].reference(
        x, context, torch.ones_like(text_mask), *weights),  # padded text attended
    "refiner_mask": _refiner_mask_without_diagonal,
    "refiner_block": _refiner_block_with_sigmoid_gates,
    "hits_by_position": _hits_by_position_counting_the_cell,
    "first_minus_last": lambda hits: torch.cat([hits[k, 0] - hits[k, 1] for k in sorted({k for k, _ in hits if k > 1})]),  # second, not last
    "sequence_kinds": _sequence_kinds_without_last_nextframe,
    "token_positions": lambda t, h, w: CHECKS["token_positions"].reference(t, h, w)[:, [1, 2, 0]],  # (h, w, t) order
    "pack": _pack_column_major,
    "ddpm_alpha_bar": _ddpm_alpha_bar_from_step_one,
    "ddpm_coefficients": _ddpm_coefficients_from_the_right,
    "eps_to_velocity": _eps_to_velocity_lambda_sign_flipped,
    "dit_forward_flops": _dit_flops_leaving_out("modulation"),
    "fit_power_law": _power_law_fitted_the_other_way,
    "feature_statistics": _feature_statistics_divided_by_n,
    "frechet_distance": _frechet_distance_roots_multiplied,
}


def test_every_check_has_a_typical_mistake():
    assert set(MISTAKES) == set(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_reference_passes_its_own_check(name):
    assert check(name, CHECKS[name].reference).status == "pass"


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_each_check_catches_a_small_perturbation(name):
    reference = CHECKS[name].reference
    result = check(name, lambda *args: _perturbed(reference(*args)))
    assert result.status == "fail" and "max abs error" in result.message


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_each_check_catches_a_typical_mistake(name):
    assert check(name, MISTAKES[name]).status == "fail"


FRAMES_MISTAKES = [  # the typical mistakes of exercise 15, each of which its check must catch
    ("sequence_kinds", _sequence_kinds_without_last_nextframe, "no [nextframe] after the last frame"),
    ("sequence_kinds", _sequence_kinds_without_last_nextline, "no [nextline] after a frame's last row"),
    ("sequence_kinds", _sequence_kinds_frames_and_rows_swapped, "frames and rows swapped"),
    ("token_positions", lambda t, h, w: CHECKS["token_positions"].reference(t, h, w)[:, [1, 2, 0]], "(h, w, t) order"),
    ("token_positions", _token_positions_moved(NEXTLINE, 2, -1.0), "[nextline] at column w - 1"),
    ("token_positions", _token_positions_moved(NEXTFRAME, 1, -1.0), "[nextframe] at row h - 1"),
    ("pack", _pack_column_major, "patches read column by column"),
    ("pack", lambda patches, nextline, nextframe, t, h, w: CHECKS["pack"].reference(patches, nextframe, nextline, t, h, w),
     "[nextline] and [nextframe] swapped"),
]


@pytest.mark.parametrize("name, mistake, description", FRAMES_MISTAKES, ids=[m[2] for m in FRAMES_MISTAKES])
def test_frames_checks_catch_each_typical_mistake(name, mistake, description):
    result = check(name, mistake)
    assert result.status == "fail" and "hint:" in result.message


DISCRETE_TIME_MISTAKES = [  # the typical mistakes of exercise 16, each of which its check must catch
    ("ddpm_alpha_bar", _ddpm_alpha_bar_from_step_one, "alpha_bar_0 = 1 (product over j < i)"),
    ("ddpm_alpha_bar", lambda s, b0, b1: 1 - torch.linspace(b0, b1, s, dtype=torch.float64), "1 - beta, no product"),
    ("ddpm_alpha_bar", lambda s, b0, b1: torch.cumprod(1 - b0 - (b1 - b0) * torch.arange(s).double() / s, 0),
     "betas stop short of beta_end"),
    ("ddpm_coefficients", _ddpm_coefficients_from_the_right, "derivative of the piece starting at a step"),
    ("ddpm_coefficients", _ddpm_coefficients_interpolating_alpha_bar, "alpha_bar, not its log, linear between steps"),
    ("ddpm_coefficients", _ddpm_coefficients_per_step, "derivative per step, not per unit of t"),
    ("ddpm_coefficients", _ddpm_coefficients_holding_the_last_step, "t beyond the last step held there"),
    ("ddpm_coefficients", _ddpm_coefficients_last_step_at_one, "u = (S - 1) t"),
    ("eps_to_velocity", _eps_to_velocity_lambda_sign_flipped, "- lambda eps"),
    ("eps_to_velocity", _eps_to_velocity_without_dividing_by_alpha, "x0 without dividing by alpha"),
    ("eps_to_velocity", lambda eps, x_t, t: CHECKS["convert"].reference(eps, x_t, t, "linear", "noise", "velocity"),
     "the linear path's conversion"),
]


@pytest.mark.parametrize("name, mistake, description", DISCRETE_TIME_MISTAKES,
                         ids=[m[2] for m in DISCRETE_TIME_MISTAKES])
def test_discrete_time_checks_catch_each_typical_mistake(name, mistake, description):
    result = check(name, mistake)
    assert result.status == "fail" and "hint:" in result.message


def test_discrete_time_reference_matches_ddpm_by_hand():
    """Two steps, beta = 0.1 then 0.3: alpha_bar = (0.9, 0.63). At t = 0 (step 0, whose piece falls by log 0.9 from
    alpha_bar = 1), t = 0.25 (u = 0.5, halfway along the piece of step 1, falling by log 0.7) and t = 0.75 (u = 1.5,
    past the last step, on its piece extended)."""
    assert torch.allclose(CHECKS["ddpm_alpha_bar"].reference(2, 0.1, 0.3), torch.tensor([0.9, 0.63]).double())
    t = torch.tensor([0.0, 0.25, 0.75], dtype=torch.float64)
    alpha, sigma, d_alpha, d_sigma = CHECKS["ddpm_coefficients"].reference(t, 2, 0.1, 0.3)
    log_9, log_7 = math.log(0.9), math.log(0.7)
    log_alpha_bar = torch.tensor([log_9, log_9 + 0.5 * log_7, math.log(0.63) + 0.5 * log_7], dtype=torch.float64)
    torch.testing.assert_close(alpha, torch.exp(log_alpha_bar / 2))
    torch.testing.assert_close(sigma, torch.sqrt(1 - torch.exp(log_alpha_bar)))
    d_log_alpha_bar = 2 * torch.tensor([log_9, log_7, log_7], dtype=torch.float64)  # S log(1 - beta) of the piece
    torch.testing.assert_close(d_alpha, alpha * d_log_alpha_bar / 2)
    torch.testing.assert_close(d_sigma, -alpha * d_alpha / sigma)


SCALING_MISTAKES = [  # the typical mistakes of exercise 17, each of which its check must catch
    ("dit_forward_flops", _dit_flops_leaving_out("modulation"), "adaLN modulations left out (they run on one token)"),
    ("dit_forward_flops", _dit_flops_leaving_out("time"), "time MLP left out"),
    ("dit_forward_flops", _dit_flops_leaving_out("attention"), "attention products left out"),
    ("dit_forward_flops", _dit_flops_leaving_out("attention per head"), "attention counted for one head"),
    ("dit_forward_flops", lambda config, height, width: CHECKS["dit_forward_flops"].reference(config, height, width) / 2,
     "multiply-adds, not FLOPs"),
    ("fit_power_law", _power_law_fitted_the_other_way, "log C regressed on log L"),
    ("fit_power_law", _power_law_through_the_end_points, "a line through the end points"),
    ("fit_power_law", _power_law_mixing_log_bases, "log10 axes, coefficient read back with exp"),
]


@pytest.mark.parametrize("name, mistake, description", SCALING_MISTAKES, ids=[m[2] for m in SCALING_MISTAKES])
def test_scaling_checks_catch_each_typical_mistake(name, mistake, description):
    result = check(name, mistake)
    assert result.status == "fail" and "hint:" in result.message


def test_dit_forward_flops_reference_is_the_hand_count():
    """One block of width 8, 2 heads, patch 2 on a 4x4 image (T = 4 tokens), MLP width 32, time features 16, 3 channels
    in and out: 2 T (p p C) D = 768 (patch), 2 (16 D + D D) = 384 (time), 2 D 6 D = 768 (modulation), 2 T D 3 D = 1536
    (q, k, v), 4 T T D = 512 (attention), 2 T D D = 512 (projection), 4 T D 32 = 4096 (MLP), 2 D 2 D = 256 and 2 T D 12
    = 768 (final layer): 9600 FLOPs."""
    from minidit.dit import DiTConfig

    config = DiTConfig(input_size=4, patch_size=2, in_channels=3, hidden_size=8, depth=1, num_heads=2,
                       frequency_embedding_size=16)
    assert CHECKS["dit_forward_flops"].reference(config, 4, 4).item() == 9600


REAL_IMAGES_MISTAKES = [  # the typical mistakes of exercise 18, each of which its check must catch
    ("feature_statistics", _feature_statistics_divided_by_n, "biased covariance, / N"),
    ("feature_statistics", lambda f: CHECKS["feature_statistics"].reference(f.T), "features transposed: (N,) and (N, N)"),
    ("feature_statistics", lambda f: (f.mean(0), f.T @ f / (f.shape[0] - 1)), "not centred"),
    ("frechet_distance", _frechet_distance_roots_multiplied, "tr(S1^(1/2) S2^(1/2))"),
    ("frechet_distance", lambda mu1, s1, mu2, s2: CHECKS["frechet_distance"].reference(mu1, s1, mu2, s2)
     + torch.linalg.eigvalsh(_square_root(s1) @ s2 @ _square_root(s1)).clamp(min=0).sqrt().sum(), "no factor 2"),
    ("frechet_distance", lambda mu1, s1, mu2, s2: CHECKS["frechet_distance"].reference(mu1, s1, mu2, s2)
     - (mu1 - mu2).pow(2).sum() + (mu1 - mu2).norm(), "|mu1 - mu2| not squared"),
    ("frechet_distance", lambda mu1, s1, mu2, s2: CHECKS["frechet_distance"].reference(mu1, s1, mu2, s2).clamp(min=0).sqrt(),
     "the square root of d^2"),
]


@pytest.mark.parametrize("name, mistake, description", REAL_IMAGES_MISTAKES, ids=[m[2] for m in REAL_IMAGES_MISTAKES])
def test_real_images_checks_catch_each_typical_mistake(name, mistake, description):
    result = check(name, mistake)
    assert result.status == "fail" and "hint:" in result.message


def test_real_images_references_match_fid_by_hand():
    """Statistics of three 2-D points: mean (1, 1), centred (-1, -1), (1, -1), (0, 2), so the covariance is
    diag(2, 6) / 2. Diagonal Gaussians: d^2 = |(1, 2)|^2 + (1 - 3)^2 + (2 - 1)^2 = 10. Against N(0, I) the root's
    trace is tr(sigma2^(1/2)), here with eigenvalues 3 and 1 of [[2, 1], [1, 2]]: d^2 = 2 + 4 - 2 (sqrt 3 + 1)."""
    mu, sigma = CHECKS["feature_statistics"].reference(torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0]]))
    torch.testing.assert_close(mu, torch.tensor([1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(sigma, torch.diag(torch.tensor([1.0, 3.0], dtype=torch.float64)))
    distance = CHECKS["frechet_distance"].reference
    zero, eye = torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    diagonal = distance(zero, torch.diag(torch.tensor([1.0, 4.0])), torch.tensor([1.0, 2.0]), torch.diag(torch.tensor([9.0, 1.0])))
    assert math.isclose(diagonal.item(), 10.0, abs_tol=1e-12)
    full = distance(zero, eye, zero, torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64))
    assert math.isclose(full.item(), 4 - 2 * math.sqrt(3), abs_tol=1e-12)


def test_frames_reference_matches_the_documented_layout_by_hand():
    kinds = CHECKS["sequence_kinds"].reference(2, 1, 2).tolist()
    positions = CHECKS["token_positions"].reference(2, 1, 2).tolist()
    assert kinds == [PATCH, PATCH, NEXTLINE, NEXTFRAME] * 2
    assert positions == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [1, 0, 0], [1, 0, 1], [1, 0, 2], [1, 1, 0]]
    patches, nextline, nextframe = torch.arange(4.0).reshape(1, 4, 1), torch.tensor([10.0]), torch.tensor([20.0])
    packed = CHECKS["pack"].reference(patches, nextline, nextframe, 2, 1, 2)
    assert packed.flatten().tolist() == [0, 1, 10, 20, 2, 3, 10, 20]
    state = torch.get_rng_state()  # pack's reference builds a FrameTokens but leaves the global generator alone
    CHECKS["pack"].reference(patches, nextline, nextframe, 2, 1, 2)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_unfinished_and_crashing_functions_are_reported_not_raised(name, capsys):
    def unfinished(*args):
        raise NotImplementedError("Exercise: fill in")

    def crashing(*args):
        raise ValueError("shapes do not match")

    result = check(name, unfinished)
    assert (result.status, capsys.readouterr().out.strip()) == ("not_implemented", result.message)
    assert f"{name}: not implemented yet" in result.message
    result = check(name, crashing)
    assert result.status == "fail" and "case 1 of" in result.message and "ValueError: shapes do not match" in result.message


def test_failure_message_names_the_case_the_part_and_the_shapes():
    def wrong_shape(name, t):
        alpha, sigma, d_alpha, d_sigma = CHECKS["interpolant"].reference(name, t)
        return alpha, sigma, d_alpha, d_sigma[..., None]

    result = check("interpolant", wrong_shape)
    assert "case 1 of" in result.message and "name='linear'" in result.message
    assert "d_sigma: expected shape (11,), got shape (11, 1)" in result.message and "hint:" in result.message


def test_unknown_check_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid checks are: .*'interpolant'"):
        check("interpolent", lambda: None)


def test_a_failure_points_to_the_next_hint_levels():
    result = check("patchify", _patchify_channels_first)
    assert f"hint: {CHECKS['patchify'].hints[0]} (more: hint('patchify', 2) ... hint('patchify', 3))" in result.message


# ---- hints in levels ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CHECKS))
def test_every_check_has_at_least_two_distinct_hint_levels(name):
    hints = CHECKS[name].hints
    assert len(hints) >= 2 and len(set(hints)) == len(hints)


def test_hint_prints_the_level_asked_for(capsys):
    for level, text in enumerate(CHECKS["patchify"].hints, start=1):
        hint("patchify", level)
        assert capsys.readouterr().out == f"hint patchify ({level} of 3): {text}\n"
    hint("patchify")
    assert capsys.readouterr().out.startswith("hint patchify (1 of 3): ")


@pytest.mark.parametrize("name, level, error", [
    ("patchfy", 1, r"^unknown hint 'patchfy'; valid hints are: .*'patchify'"),
    ("patchify", 4, r"^hint 'patchify' has levels 1 to 3; got 4$"),
    ("patchify", 0, r"^hint 'patchify' has levels 1 to 3; got 0$"),
    ("patchify", "2", r"^hint 'patchify' has levels 1 to 3; got '2'$"),
])
def test_unknown_hint_or_level_is_a_one_line_error_listing_the_valid_ones(name, level, error):
    with pytest.raises(ValueError, match=error) as raised:
        hint(name, level)
    assert "\n" not in str(raised.value)


def test_a_check_needs_two_hint_levels():
    from minidit.course.checks import Check

    with pytest.raises(ValueError, match="has 1 hint"):
        Check(name="x", reference=lambda: 0, cases=list, hints=("only one",))


# ---- a wrong helper is named --------------------------------------------------------------------------------

HELPER_SOURCES = {  # (dependent check, helper): a wrong helper and a correct dependent function that calls it
    ("qk_norm", "rms_norm"): """
def rms_norm(x, weight, eps=1e-6):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], eps=eps) * weight  # subtracts the mean: LayerNorm

def qk_norm(q, k, query_weight, key_weight):
    return rms_norm(q, query_weight), rms_norm(k, key_weight)
""",
    ("adaln_zero_block", "modulate"): """
def modulate(h, shift, scale):
    return h * scale.unsqueeze(1) + shift.unsqueeze(1)  # forgets the 1 + scale

def adaln_zero_block(block, x, c, grid_shape):
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.modulation(c).chunk(6, dim=-1)
    x = x + gate_msa.unsqueeze(1) * block.attn(modulate(block.norm1(x), shift_msa, scale_msa), grid_shape)
    return x + gate_mlp.unsqueeze(1) * block.mlp(modulate(block.norm2(x), shift_mlp, scale_mlp))
""",
    ("sincos_2d", "sincos_1d"): """
def sincos_1d(dim, positions):
    angles = positions.float()[:, None] * 10000.0 ** (-torch.arange(dim // 2) / (dim // 2))
    return torch.cat([angles.cos(), angles.sin()], dim=-1)  # cosines first

def sincos_2d(dim, grid_shape):
    rows, columns = torch.meshgrid(torch.arange(grid_shape[0]), torch.arange(grid_shape[1]), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, columns.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=-1)
""",
    ("gated_cross_attention", "masked_attention"): """
import math

def masked_attention(q, k, v, key_mask):
    return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1) @ v  # padded keys attended

def gated_cross_attention(q, text, text_mask, norm_weight, kv_weight, kv_bias, gate):
    n, length, dim = text.shape
    text = text * torch.rsqrt(text.pow(2).mean(dim=-1, keepdim=True) + 1e-6) * norm_weight
    k, v = (part.reshape(n, length, q.shape[1], -1).transpose(1, 2) for part in (text @ kv_weight.T + kv_bias).chunk(2, dim=-1))
    return masked_attention(q, k, v, text_mask) * torch.tanh(gate)[:, None, None]
""",
    ("joint_attention", "joint_key_mask"): """
import math

def joint_key_mask(num_image_tokens, text_mask):
    return torch.cat([text_mask, text_mask.new_ones(text_mask.shape[0], num_image_tokens)], dim=1)[:, None, None, :]  # [text, image]

def joint_attention(x, context, text_mask, image_qkv_weight, image_qkv_bias, text_qkv_weight, text_qkv_bias, num_heads):
    def project(tokens, weight, bias):
        n, length, dim = tokens.shape
        return [p.reshape(n, length, num_heads, -1).transpose(1, 2) for p in (tokens @ weight.T + bias).chunk(3, dim=-1)]

    image, text = project(x, image_qkv_weight, image_qkv_bias), project(context, text_qkv_weight, text_qkv_bias)
    q, k, v = (torch.cat(pair, dim=2) for pair in zip(image, text))
    logits = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~joint_key_mask(x.shape[1], text_mask), float("-inf"))
    out = (logits.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)
    return out[:, : x.shape[1]], out[:, x.shape[1]:]
""",
    ("pack", "sequence_kinds"): """
from minidit.frames import NEXTFRAME, NEXTLINE, PATCH

def sequence_kinds(t, h, w):
    return torch.tensor(([PATCH] * w + [NEXTLINE]) * h * t)  # forgets the [nextframe] after every frame

def pack(patches, nextline, nextframe, t, h, w):
    kinds = torch.as_tensor(sequence_kinds(t, h, w))
    packed = patches.new_zeros(patches.shape[0], len(kinds), patches.shape[-1])
    packed[:, kinds == PATCH] = patches
    packed[:, kinds == NEXTLINE] = nextline
    packed[:, kinds == NEXTFRAME] = nextframe
    return packed
""",
    ("refiner_block", "refiner_mask"): """
def refiner_mask(mask, causal):
    length = mask.shape[1]
    allowed = mask[:, None, None, :] & torch.ones(length, length, dtype=torch.bool).tril()  # causal even when not asked
    return allowed | torch.eye(length, dtype=torch.bool)

def refiner_block(block, x, mask, c, causal):
    g_attn, g_mlp = block.gate(c).unsqueeze(1).chunk(2, dim=-1)
    x = x + g_attn * block.attn(block.norm1(x), attn_mask=refiner_mask(mask, causal))
    return x + g_mlp * block.mlp(block.norm2(x))
""",
    ("ddpm_coefficients", "ddpm_alpha_bar"): """
def ddpm_alpha_bar(num_steps, beta_start, beta_end):
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(torch.cat([torch.ones(1, dtype=torch.float64), 1 - betas[:-1]]), dim=0)  # alpha_bar_0 = 1

def ddpm_coefficients(t, num_steps=1000, beta_start=1e-4, beta_end=0.02):
    log_alpha_bar = torch.log(ddpm_alpha_bar(num_steps, beta_start, beta_end)).to(t)
    slopes = torch.diff(log_alpha_bar, prepend=log_alpha_bar.new_zeros(1))
    u = num_steps * t
    i = u.ceil().clamp(max=num_steps - 1).long()
    log_ab = log_alpha_bar[i] + (u - i) * slopes[i]
    alpha, sigma = torch.exp(0.5 * log_ab), torch.sqrt(-torch.expm1(log_ab))
    d_alpha = 0.5 * alpha * num_steps * slopes[i]
    return alpha, sigma, d_alpha, -alpha * d_alpha / sigma
""",
    ("eps_to_velocity", "ddpm_coefficients"): """
from minidit.validation import expand_time

def ddpm_coefficients(t, num_steps=1000, beta_start=1e-4, beta_end=0.02):
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    log_alpha_bar = torch.log(torch.cumprod(1 - betas, 0))
    slopes = torch.diff(log_alpha_bar, prepend=log_alpha_bar.new_zeros(1))
    u = num_steps * t
    i = u.ceil().clamp(max=num_steps - 1).long()
    log_ab = log_alpha_bar[i] + (u - i) * slopes[i]
    alpha, sigma = torch.exp(0.5 * log_ab), torch.sqrt(-torch.expm1(log_ab))
    d_alpha = 0.5 * alpha * slopes[i]  # forgets that u moves num_steps times faster than t
    return alpha, sigma, d_alpha, -alpha * d_alpha / sigma

def eps_to_velocity(eps, x_t, t):
    alpha, sigma, d_alpha, d_sigma = (expand_time(c, x_t) for c in ddpm_coefficients(t))
    return d_alpha * (x_t - sigma * eps) / alpha + d_sigma * eps
""",
}


def learner_namespace(source: str) -> dict:
    """Run ``source`` as a notebook cell would, in a namespace of its own, and return that namespace."""
    namespace = {"torch": torch}
    exec(compile(source, "notebook cell", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("dependent, helper", sorted(HELPER_SOURCES))
def test_a_wrong_helper_is_named_instead_of_the_function_that_calls_it(dependent, helper):
    namespace = learner_namespace(HELPER_SOURCES[dependent, helper])
    helper_message = check(helper, namespace[helper]).message
    result = check(dependent, namespace[dependent])
    assert result.status == "fail"
    assert result.message.startswith(f"✗ {dependent}: your `{helper}` is wrong, fix it first: case 1 of ")
    assert result.message.split("fix it first: ", 1)[1] == helper_message.split(f"✗ {helper}: ", 1)[1]


@pytest.mark.parametrize("dependent, helper", sorted(HELPER_SOURCES))
def test_a_right_helper_is_not_blamed_and_a_right_pair_passes(dependent, helper):
    namespace = learner_namespace(HELPER_SOURCES[dependent, helper])
    namespace[helper] = CHECKS[helper].reference  # the helper fixed
    assert check(dependent, namespace[dependent]).status == "pass"
    reference = CHECKS[dependent].reference
    result = check(dependent, lambda *args: _perturbed(reference(*args)))  # a wrong dependent that calls no helper
    assert result.status == "fail" and "your `" not in result.message


def test_an_unfinished_helper_reports_the_dependent_as_not_implemented():
    namespace = learner_namespace(HELPER_SOURCES["qk_norm", "rms_norm"])
    namespace["rms_norm"] = lambda x, weight: (_ for _ in ()).throw(NotImplementedError("Exercise: rms_norm"))
    result = check("qk_norm", namespace["qk_norm"])
    assert (result.status, result.message) == (
        "not_implemented", "… qk_norm: not implemented yet (it calls your `rms_norm`, which is not written yet)")


# ---- questions ------------------------------------------------------------------------------------------------

def test_a_right_answer_passes_and_prints_the_measurement():
    result = check_answer("tokens_per_image", (64, 48))
    assert result.status == "pass" and "tokens of shape (1, 64, 48)" in result.message
    assert check_answer("peak_speed_path", " VP ").status == "pass"  # choices ignore case and spaces


@pytest.mark.parametrize("name, answer, problem", [
    ("tokens_per_image", (16, 48), "you answered (16, 48); minidit computes (64, 48)."),
    ("tokens_per_image", 64, "expected 2 number(s), got 64; minidit computes (64, 48)."),
    ("tokens_per_image", "sixty-four", "'sixty-four' is not a number (or a tuple of numbers)"),
    ("peak_speed_path", "linear", "you answered 'linear'; minidit computes 'vp'."),
    ("peak_speed_path", "cosine", "'cosine' is not one of 'linear', 'gvp', 'vp'"),
    ("qk_norm_max_logit", 64.0, "you answered 64.0; minidit computes 8."),
])
def test_a_wrong_answer_fails_and_says_what_minidit_computes(name, answer, problem):
    result = check_answer(name, answer)
    assert result.status == "fail" and result.message.startswith(f"✗ {name}: {problem}")


def test_numeric_answers_are_compared_within_the_question_tolerance():
    assert check_answer("qk_norm_max_logit", 8.05).status == "pass"  # rtol 1%
    assert check_answer("qk_norm_max_logit", 8.2).status == "fail"


def test_an_unanswered_question_is_reported_not_raised():
    result = check_answer("row_pairs", None)
    assert result.status == "not_answered"
    assert result.message == ("… row_pairs: not answered yet (With head_dim = 10, how many channel pairs rotate with the row? "
                              "Write your answer into `row_pairs` and run again)")
    with pytest.raises(ValueError, match="valid questions are: .*'row_pairs'"):
        check_answer("rows_pairs", 3)


def test_the_expected_answer_is_computed_by_minidit_when_checked(monkeypatch):
    import minidit.dit

    assert check_answer("tokens_per_image", (64, 48)).passed
    monkeypatch.setattr(minidit.dit, "patchify", lambda x, p: torch.zeros(1, 16, 192))  # as if patches were 8 x 8
    assert check_answer("tokens_per_image", (16, 192)).passed
    assert not check_answer("tokens_per_image", (64, 48)).passed


@pytest.mark.parametrize("name", sorted(QUESTIONS))
def test_every_question_computes_an_answer_of_its_kind(name):
    question = QUESTIONS[name]
    expected, measured = question.compute()
    assert measured.endswith(".") and len(measured) > 20
    if question.choices:
        assert expected in question.choices
    else:
        assert all(math.isfinite(value) for value in torch.as_tensor(expected, dtype=torch.float64).flatten().tolist())
    assert check_answer(name, expected).passed


# ---- what the exercises ask and say ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_every_exercise_asks_at_least_two_questions_and_its_solution_answers_each(path):
    def numbers(notebook: Path, heading: str) -> set[int]:
        found = set()
        for cell in nbformat.read(notebook, as_version=4).cells:
            if cell.cell_type == "markdown":
                for match in re.finditer(rf"\*\*{heading}s? ([\d, and]+)", cell.source):
                    found |= {int(n) for n in re.findall(r"\d+", match.group(1))}
        return found

    asked = numbers(path, "Question")
    assert len(asked) >= 2, f"{path.name} asks {len(asked)} question(s)"
    assert numbers(ROOT / "solutions" / path.name, "Answer") == asked
    assert numbers(path, "Answer") == set(), "answers belong in SOLUTION-ONLY cells"
    assert set(questions_asked(path)) <= set(QUESTIONS)


def test_every_question_is_asked_by_one_exercise():
    asked = [name for path in EXERCISES for name in questions_asked(path)]
    assert sorted(asked) == sorted(QUESTIONS)


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_every_not_implemented_message_states_a_goal_with_shapes(path):
    messages = re.findall(r"raise NotImplementedError\((.*)\)", code_of(path))
    assert messages, f"{path.name} has nothing to implement"
    for message in messages:
        assert message.strip("'\"").startswith("Exercise: ") and "complete this code" not in message, message
        assert re.search(r"\((N|T|h|\.\.\.)[, ]|shape", message), f"{path.name}: no tensor shape in {message}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_every_exercise_function_is_checked_and_has_hints(path):
    code = code_of(path)
    written = [name for cell in re.split(r"\n(?=\S)", code) if "# BEGIN SOLUTION" in cell
               for name in re.findall(r"^def (\w+)\(", cell, flags=re.M)]
    assert written, f"{path.name} has no exercise function"
    pairs = re.findall(r"""check\(\s*["'](\w+)["'],\s*(\w+)\)|\(["'](\w+)["'],\s*(\w+)\)""", code)
    checked = {function or function_in_list: name or name_in_list for name, function, name_in_list, function_in_list in pairs
               if (name or name_in_list) in CHECKS}
    for function in written:
        assert function in checked, f"{path.name}: `{function}` is never passed to check()"
        assert len(CHECKS[checked[function]].hints) >= 2


@pytest.mark.parametrize("path", EXERCISES + SOLUTIONS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_exercise_or_solution_selects_a_matplotlib_backend(path):
    assert not re.search(r"matplotlib\.use\(|%matplotlib (agg|Agg)", code_of(path))


def test_euler_maruyama_reference_is_the_step_minidit_sample_sde_takes():
    from minidit.samplers import sample_sde

    velocity, score = (lambda x, t: torch.sin(x) - t[:, None]), (lambda x, t: -x / (1 + t[:, None]))
    x, time_eps, w = torch.randn(6, 3), 0.2, 0.7
    expected = sample_sde(velocity, x, "linear", steps=1, diffusion="constant", diffusion_scale=w, score_fn=score,
                          time_eps=time_eps, last_step="none", generator=torch.Generator().manual_seed(7)).samples
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    got = euler_maruyama_step(velocity, score, x, 1 - time_eps, time_eps, w, noise)
    torch.testing.assert_close(got, expected)


# ---- book.toml ----------------------------------------------------------------------------------------------

def test_book_lists_every_notebook_and_every_listed_notebook_exists():
    book = load_book(ROOT / "book.toml")
    assert unlisted_notebooks(book, ROOT) == []
    assert missing_notebooks(book, ROOT) == []


def test_planned_status_is_only_used_while_the_lecture_is_missing():
    for chapter in load_book(ROOT / "book.toml").chapters:
        if chapter.status == "planned":
            assert not (ROOT / chapter.lecture).exists(), f"{chapter.lecture} exists: remove status = \"planned\" from chapter {chapter.id!r}"


def test_book_run_times_are_measured_or_say_so():
    for chapter in load_book(ROOT / "book.toml").chapters:
        for value in (chapter.quick_run_time, chapter.full_run_time):
            assert value == "not measured yet" or re.match(r"^\d+(\.\d+)? (s|min) \(", value), value


@pytest.mark.parametrize("entry, error", [
    ('id = "a"\ntitle = "A"\nlecture = "x.ipynb"\nlength = 3', "unknown key"),
    ('id = "a"\ntitle = "A"\nlecture = "x.ipynb"\nprerequisites = ["b"]', "earlier chapter"),
    ('id = "a"\ntitle = "A"\nexercise = "exercises/01_a.ipynb"\nsolution = "solutions/01_a.ipynb"', "unknown key.*'exercises'"),
    ('id = "a"\ntitle = "A"\nexercises = "exercises/01_a.ipynb"\nsolutions = ["solutions/01_a.ipynb"]', "exercises must be a list"),
    ('id = "a"\ntitle = "A"\nexercises = ["exercises/01_a.ipynb"]', "list every exercise with its solution"),
    ('id = "a"\ntitle = "A"\nexercises = ["exercises/01_a.ipynb", "exercises/02_b.ipynb"]\n'
     'solutions = ["solutions/02_b.ipynb", "solutions/01_a.ipynb"]', "solution of the same file name"),
    ('id = "a"\ntitle = "A"\nlecture = "x.ipynb"\nstatus = "soon"', "valid chapter statuss are"),
])
def test_load_book_rejects_bad_chapters(tmp_path, entry, error):
    (tmp_path / "book.toml").write_text(f'title = "T"\n[[chapter]]\n{entry}\n')
    with pytest.raises(ValueError, match=error):
        load_book(tmp_path / "book.toml")


def test_chapter_lists_each_exercise_then_its_solution_and_labels_them_by_name(tmp_path):
    (tmp_path / "book.toml").write_text(
        'title = "T"\n[[chapter]]\nid = "a"\ntitle = "A"\nlecture = "notebooks/01_a.ipynb"\n'
        'exercises = ["exercises/01_x.ipynb", "exercises/02_y.ipynb"]\n'
        'solutions = ["solutions/01_x.ipynb", "solutions/02_y.ipynb"]\n'
        '[[chapter]]\nid = "b"\ntitle = "B"\nexercises = ["exercises/03_z.ipynb"]\nsolutions = ["solutions/03_z.ipynb"]\n')
    first, second = load_book(tmp_path / "book.toml").chapters
    assert first.notebooks() == [("lecture", "notebooks/01_a.ipynb"),
                                 ("exercise", "exercises/01_x.ipynb"), ("solution", "solutions/01_x.ipynb"),
                                 ("exercise", "exercises/02_y.ipynb"), ("solution", "solutions/02_y.ipynb")]
    assert [first.label(kind, path) for kind, path in first.notebooks()] == [
        "lecture", "exercise 01_x", "solution 01_x", "exercise 02_y", "solution 02_y"]
    assert [second.label(kind, path) for kind, path in second.notebooks()] == ["exercise", "solution"]
    assert "   - solution: [`solutions/02_y.ipynb`](solutions/02_y.ipynb)\n" in outline(load_book(tmp_path / "book.toml"))


def test_outline_lists_the_chapters_in_order(capsys):
    assert main(["--root", str(ROOT), "outline"]) == 0
    printed = capsys.readouterr().out
    book = load_book(ROOT / "book.toml")
    assert printed == outline(book) and printed.startswith(f"*{book.title}*\n")
    positions = [printed.index(f"{number}. **{chapter.title}**") for number, chapter in enumerate(book.chapters, start=1)]
    assert positions == sorted(positions)


# ---- the HTML book --------------------------------------------------------------------------------------------

class LinkCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str]] = []  # (text of <a> or "img", href/src)
        self.title, self._in_title, self._href = "", False, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._in_title = tag == "title"
        if tag == "a" and attrs.get("href"):
            self._href = attrs["href"]
            self.links.append(("", self._href))
        if tag == "img" and attrs.get("src"):
            self.links.append(("img", attrs["src"]))

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._href is not None:
            self.links[-1] = (self.links[-1][0] + data, self._href)

    def handle_endtag(self, tag):
        self._in_title = False if tag == "title" else self._in_title
        self._href = None if tag == "a" else self._href


def parse(path: Path) -> LinkCollector:
    collector = LinkCollector()
    collector.feed(path.read_text(encoding="utf-8"))
    return collector


def local_targets(page: Path) -> list[Path]:
    """Files the page links to inside the book (skips http(s), data: URIs and in-page anchors)."""
    targets = []
    for _, url in parse(page).links:
        parsed = urlparse(url)
        if not parsed.scheme and parsed.path:
            targets.append((page.parent / parsed.path).resolve())
    return targets


@pytest.fixture(scope="module")
def repo_book(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    build_book(ROOT, out)
    return out


def test_book_pages_exist_for_every_existing_notebook_and_all_links_resolve(repo_book):
    book = load_book(ROOT / "book.toml")
    expected = {Path(p).with_suffix(".html").as_posix() for c in book.chapters for _, p in c.notebooks() if (ROOT / p).exists()}
    pages = {p.relative_to(repo_book).as_posix() for p in repo_book.rglob("*.html")}
    assert pages == expected | {"index.html"}
    for page in repo_book.rglob("*.html"):
        for target in local_targets(page):
            assert target.exists(), f"{page.name} links to missing {target}"
    index_targets = {t.relative_to(repo_book.resolve()).as_posix() for t in local_targets(repo_book / "index.html")}
    assert index_targets == expected


def test_book_next_links_visit_every_page_in_book_order(repo_book):
    book = load_book(ROOT / "book.toml")
    order = [Path(p).with_suffix(".html").as_posix() for c in book.chapters for _, p in c.notebooks() if (ROOT / p).exists()]
    page, visited = (repo_book / order[0]).resolve(), []
    while page is not None:
        visited.append(page.relative_to(repo_book.resolve()).as_posix())
        links = dict((text, url) for text, url in parse(page).links)
        page = (page.parent / links["next →"]).resolve() if "next →" in links else None
    assert visited == order
    chapter = next(c for c in book.chapters if len(c.solutions) == 1)  # a single solution is labelled just "solution"
    assert parse(repo_book / Path(chapter.solutions[0]).with_suffix(".html")).title == f"{chapter.title} (solution)"


def test_book_names_the_exercises_of_a_chapter_with_several(repo_book):
    chapter = next(c for c in load_book(ROOT / "book.toml").chapters if c.id == "dit")
    assert len(chapter.exercises) == 3, "the dit chapter lists 05_cfg, 06_patchify_adaln and 09_attention_posembed"
    page = repo_book / "solutions" / "06_patchify_adaln.html"
    assert parse(page).title == f"{chapter.title} (solution 06_patchify_adaln)"
    link_texts = {text for text, _ in parse(page).links}
    assert {"exercise 05_cfg", "solution 05_cfg", "exercise 06_patchify_adaln"} <= link_texts
    index_links = dict(parse(repo_book / "index.html").links)
    assert index_links["exercise 06_patchify_adaln"] == "exercises/06_patchify_adaln.html"


def test_build_book_executes_a_notebook_and_embeds_its_figure(tmp_path):
    (tmp_path / "notebooks").mkdir()
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os\nimport matplotlib.pyplot as plt\nprint('quick =', os.environ['MINIDIT_QUICK'])\nplt.plot([0, 1], [1, 0])\nplt.show()")])
    nbformat.write(notebook, tmp_path / "notebooks" / "01_tiny.ipynb")
    (tmp_path / "book.toml").write_text('title = "Tiny"\n[[chapter]]\nid = "tiny"\ntitle = "Tiny chapter"\nlecture = "notebooks/01_tiny.ipynb"\n')
    timings = build_book(tmp_path, tmp_path / "_book", execute=True, timeout=120)
    assert list(timings) == ["notebooks/01_tiny.ipynb"] and timings["notebooks/01_tiny.ipynb"] > 0
    page = (tmp_path / "_book" / "notebooks" / "01_tiny.html").read_text()
    assert "quick = 1" in page and re.search(r'<img [^>]*src="data:image/png;base64,', page)


def test_readme_outline_is_generated_from_book_toml():
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- outline:start -->\n", "<!-- outline:end -->"
    assert start in readme and end in readme, "README.md needs the outline markers"
    embedded = readme.split(start, 1)[1].split(end, 1)[0]
    assert embedded == outline(load_book(ROOT / "book.toml")), (
        "README's course outline is out of date: paste the output of `python -m minidit.course outline`"
    )
