"""Tests for bench/kv_compression.py: its FLOP counts against FlopCounterMode, and a tiny run of the whole benchmark."""
import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from minidit.dit import DiT
from minidit.kv_compression import attention_flops

BENCH = Path(__file__).parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # the benchmark imports bench/train_step.py by name
spec = importlib.util.spec_from_file_location("kv_compression_bench", BENCH / "kv_compression.py")
bench = sys.modules["kv_compression_bench"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

TINY = ["--sizes", "16", "32", "--hidden", "32", "--heads", "2", "--depth", "2", "--batch", "2", "--warmup", "0",
        "--steps", "2", "--peak-size", "256", "--peak-repeats", "1", "--text-size", "16", "--text-depth", "2",
        "--text-heads", "2", "--text-length", "8", "--sample-batch", "2", "--sample-steps", "2"]


def counted_forward(model: DiT, x: torch.Tensor, **kwargs: torch.Tensor) -> int:
    """FLOPs of one forward pass seen by FlopCounterMode; on the CPU it does not see the fused attention kernel."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, torch.rand(x.shape[0]), **kwargs)
    assert not any("attention" in str(op) for op in counter.get_flop_counts()["Global"])
    return counter.get_total_flops()


@pytest.mark.parametrize("blocks, mode", [(None, "conv"), ([1], "conv"), (None, "average")])
def test_training_flops_are_three_counted_forwards_plus_the_compressed_attention(blocks, mode):
    args = bench.parse_args(TINY + ["--mode", mode])
    config = bench.model_config(args, 16, True)
    if blocks is not None:
        config = dataclasses.replace(config, kv_compression={"ratio": 2, "mode": mode, "blocks": blocks})
    x = torch.randn(3, 3, 16, 16)
    tokens, dim = config.grid_size**2, config.hidden_size
    products = sum(4 * tokens * (tokens // 4 if config.compresses(b) else tokens) * dim for b in range(config.depth))
    assert bench.training_flops(config, 3) == 3 * (counted_forward(DiT(config), x) + 3 * products)
    plain = bench.model_config(args, 16, False)
    assert bench.training_flops(plain, 3) == 3 * (counted_forward(DiT(plain), x) + 3 * config.depth * 4 * tokens**2 * dim)
    assert bench.training_flops(config, 3) < bench.training_flops(plain, 3)


def test_text_model_flops_count_the_cross_attention_of_every_head():
    args = bench.parse_args(TINY)
    config = bench.model_config(args, 16, False, text_conditioning="gated_cross", text_dim=24)
    text_length, tokens, dim = 8, config.grid_size**2, config.hidden_size
    head_dim = dim // config.num_heads
    x, text, text_mask = torch.randn(1, 3, 16, 16), torch.randn(1, text_length, 24), torch.ones(1, 8, dtype=torch.bool)
    counted = counted_forward(DiT(config).eval(), x, text=text, text_mask=text_mask)
    fused = config.depth * (attention_flops(tokens, dim) + config.num_heads * 4 * tokens * text_length * head_dim)
    assert bench.text_model_flops(config, text_length) == counted + fused
    assert bench.cross_attention_flops(config, text_length) == 4 * text_length * head_dim * (dim + tokens)


def test_the_whole_benchmark_runs_at_tiny_sizes_and_ends_with_its_result_line(capsys):
    bench.main(TINY)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("RESULT ")
    result = dict(field.split("=") for field in lines[-1].split()[1:])
    assert set(result) == {"speedup_64", "speedup_256", "prune50_speedup", "prune80_speedup", "mfu", "mfu_none",
                           "peak_gflops"}
    assert all(float(value) > 0 for value in result.values()), lines[-1]
    pruned = [line.split() for line in lines if re.match(r"\s+(0|50|80)% ", line)]
    assert [row[1] for row in pruned] == ["0", "2", "3"]  # pruned heads of 2 blocks x 2 heads: round(0.8 * 4) = 3
