"""Tests for bench/refiner.py: its attention FLOP count against the closed form, and a tiny run of the benchmark."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from minidit.dit import DiT
from minidit.scaling import AttentionFlops

BENCH = Path(__file__).parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # the benchmark imports bench/train_step.py by name
spec = importlib.util.spec_from_file_location("refiner_bench", BENCH / "refiner.py")
bench = sys.modules["refiner_bench"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

TINY = ["--size", "16", "--hidden", "32", "--heads", "2", "--depth", "2", "--text-dim", "16", "--text-length", "8",
        "--refiner-heads", "2", "--batch", "2", "--warmup", "0", "--steps", "2", "--peak-size", "256",
        "--peak-repeats", "1"]


def test_attention_flops_are_the_closed_form_of_every_attention():
    args = bench.parse_args(TINY)
    n, tokens, length, dim, text_dim = 2, 16, 8, 32, 16
    for name, (refiner, segments) in bench.ARMS.items():
        model = DiT(bench.model_config(args, refiner)).eval()
        x, kwargs = bench.batch(args, segments)
        mode = AttentionFlops()
        with mode, torch.no_grad():
            model(x, torch.rand(n), **kwargs)
        text = segments * length
        expected = 2 * 4 * n * tokens * (tokens + text) * dim  # self-attention and cross-attention of 2 blocks
        if refiner == "token":
            expected += 2 * 4 * n * length**2 * text_dim  # 2 refiner blocks over the caption
        if refiner == "collaborative":
            expected += 2 * (2 * 4 * n * length**2 * text_dim) + 2 * 4 * n * length**2 * text_dim  # 2 branches + cross
        assert mode.flops == expected, name
    assert kwargs["text_mask"].sum(dim=1).tolist() == [6, 6]  # 3 real tokens + 5 padding per segment of 8


def test_the_whole_benchmark_runs_at_tiny_sizes_and_ends_with_its_result_line(capsys):
    bench.main(TINY)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("RESULT ")
    result = {key: float(value) for key, value in (field.split("=") for field in line.split()[1:])}
    assert set(result) == {"token_share", "collaborative_share", "token_flop_share", "mfu", "mfu_none", "peak_gflops"}
    assert 0 < result["token_flop_share"] < 1 and result["mfu"] > 0 and result["peak_gflops"] > 0


def test_config_cost_counts_the_dit_and_the_frozen_encoder(capsys):
    spec = importlib.util.spec_from_file_location("config_cost_bench", BENCH / "config_cost.py")
    cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cost)
    config = Path(__file__).parents[1] / "configs" / "shapes_t2i_llm_refiner.toml"
    result = cost.main([str(config), "--text-dim", "128", "--lm-params", "1e6", "--peak-tflops", "100", "--mfu", "0.5"])
    torch.manual_seed(0)
    from minidit.dit import DiTConfig
    model = DiT(DiTConfig(input_size=24, patch_size=4, in_channels=3, hidden_size=64, depth=4, num_heads=4,
                          qk_norm="rmsnorm", text_conditioning="cross", text_dim=128, text_refiner="token"))
    assert result["refiner_params_m"] == pytest.approx(sum(p.numel() for p in model.text_refiner.parameters()) / 1e6)
    x, text = torch.randn(1, 3, 24, 24), torch.randn(1, 64, 128)
    dit = bench.training_flops(model, x, {"text": text, "text_mask": torch.ones(1, 64, dtype=torch.bool)}) * 64
    lm = 2 * 1e6 * 64 * 64  # 2 x parameters x tokens x batch
    assert result["step_tflop"] * 1e12 == pytest.approx(dit + lm)
    assert result["step_s"] == pytest.approx((dit + lm) / (100e12 * 0.5))
    assert "assumed 50% of 100 TFLOP/s" in capsys.readouterr().out
