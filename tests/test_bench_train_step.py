"""Tests for bench/train_step.py: the hand FLOP count against FlopCounterMode and DiT's Table 4, and the timing loop."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from minidit.dit import PRESETS, DiT, DiTConfig
from minidit.train import TrainConfig, Trainer

spec = importlib.util.spec_from_file_location("train_step", Path(__file__).parents[1] / "bench" / "train_step.py")
train_step = sys.modules["train_step"] = importlib.util.module_from_spec(spec)  # dataclasses look the module up
spec.loader.exec_module(train_step)

SMALL = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=4, num_classes=10)


@pytest.mark.parametrize("overrides", [{}, dict(mlp_ratio=2.0, out_channels=5, num_classes=0, patch_size=4)])
def test_hand_forward_count_equals_flop_counter_plus_attention(overrides):
    """The counter sees every matmul of the forward pass but not CPU attention, which is 4 N L T^2 D exactly."""
    config = DiTConfig(**{**SMALL, **overrides})
    model = DiT(config)
    x, model_kwargs = train_step.synthetic_batch(config, 3, torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, torch.rand(3), **model_kwargs)
    counted = counter.get_total_flops() + train_step.attention_flops(config, 3)
    assert counted == train_step.dit_forward_flops(config, 3)


def test_training_count_is_three_forwards_less_the_input_gradients_nobody_needs():
    """Backward = 2 x forward, except the gradients into the images and the sin-cos time features."""
    config = DiTConfig(**SMALL)
    batch, dim, tokens = 2, config.hidden_size, config.grid_size**2
    x, model_kwargs = train_step.synthetic_batch(config, batch, torch.device("cpu"))
    counted, attention_counted = train_step.counted_training_flops(DiT(config), x, model_kwargs)
    assert not attention_counted
    skipped = 2 * batch * tokens * config.patch_size**2 * config.in_channels * dim
    skipped += 2 * batch * config.frequency_embedding_size * dim
    hand = train_step.TRAINING_FLOPS_PER_FORWARD * train_step.dit_forward_flops(config, batch)
    assert counted + 3 * train_step.attention_flops(config, batch) + skipped == hand


@pytest.mark.parametrize("preset, gflops", [("DiT-XL/2", 118.6), ("DiT-B/2", 23.01), ("DiT-S/2", 6.06)])
def test_dit_gflops_of_the_paper(preset, gflops):
    """DiT (arXiv 2212.09748, Table 4) counts multiply-adds of one 256px image (32x32x4 latent); 1 MAC = 2 FLOPs."""
    config = DiTConfig.from_dict({**PRESETS[preset], "input_size": 32, "in_channels": 4, "num_classes": 1000})
    assert train_step.dit_forward_flops(config, 1) / 2e9 == pytest.approx(gflops, rel=1e-3)


def test_timing_loop_runs_warmup_then_the_timed_rounds_of_every_step_function():
    config = DiTConfig(**SMALL)
    x, model_kwargs = train_step.synthetic_batch(config, 4, torch.device("cpu"))
    trainer = Trainer(DiT(config), train_step.FixedBatch(x, model_kwargs),
                      TrainConfig(batch_size=4, device="cpu", progress=False))
    baseline = train_step.BaselineStep(config, x, model_kwargs["y"])
    before = [p.detach().clone() for p in trainer.model.parameters()]
    baseline_before = [p.detach().clone() for p in baseline.model.parameters()]
    times = train_step.time_training_steps({"minidit": trainer.train_step, "baseline": baseline},
                                           torch.device("cpu"), warmup=2, steps=3, budget_s=1e9)
    assert set(times) == {"minidit", "baseline"}
    assert all(len(seconds) == 3 and all(s > 0 for s in seconds) for seconds in times.values())
    assert trainer.step == 5
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(baseline_before, baseline.model.parameters()))


def baseline_weights_from(model: DiT) -> dict[str, torch.Tensor]:
    """``model``'s weights under the baseline's names; the patch embedding becomes a convolution kernel."""
    p, c = model.config.patch_size, model.config.in_channels
    weights = {}
    for name, value in model.state_dict().items():
        name = (name.replace("t_embedder.mlp", "t_mlp").replace("y_embedder.embedding_table", "y_table")
                .replace("attn.", "").replace("final_layer.modulation", "final_modulation")
                .replace("final_layer.linear", "final_linear"))
        if name == "patch_embedder.weight":  # Linear over (i * p + j) * C + c  ->  Conv2d kernel (D, C, p, p)
            value = value.reshape(-1, p, p, c).permute(0, 3, 1, 2)
        weights[name] = value
    return weights


@pytest.mark.parametrize("overrides", [{}, dict(mlp_ratio=2.0, out_channels=5, patch_size=4, input_size=16)])
def test_baseline_is_the_same_network_as_the_dit(overrides):
    """The yardstick must compute the same function with the same parameters and FLOPs, or the ratio means nothing."""
    config = DiTConfig(**{**SMALL, **overrides})
    torch.manual_seed(0)
    model = DiT(config)
    for parameter in model.parameters():  # leave the zero-initialisation: every weight matters
        torch.nn.init.normal_(parameter, std=0.2)
    baseline = train_step.BaselineDiT(config)
    missing, unexpected = baseline.load_state_dict(baseline_weights_from(model), strict=False)
    assert missing == ["pos_embed"] and unexpected == []
    assert sum(p.numel() for p in baseline.parameters()) == sum(p.numel() for p in model.parameters())
    x, model_kwargs = train_step.synthetic_batch(config, 3, torch.device("cpu"))
    t = torch.rand(3)
    model.eval(), baseline.eval()
    torch.testing.assert_close(baseline(x, t, model_kwargs["y"]), model(x, t, **model_kwargs), rtol=1e-4, atol=1e-5)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        baseline(x, t, model_kwargs["y"])
    assert counter.get_total_flops() + train_step.attention_flops(config, 3) == train_step.dit_forward_flops(config, 3)


def test_fused_adamw_of_the_trainer_matches_the_reference_loop():
    """The speed-up (fused AdamW) keeps the update rule: same parameters as the plain for-loop AdamW."""
    torch.manual_seed(0)
    config = DiTConfig(**SMALL)
    x, model_kwargs = train_step.synthetic_batch(config, 4, torch.device("cpu"))
    trainer = Trainer(DiT(config), train_step.FixedBatch(x, model_kwargs),
                      TrainConfig(batch_size=4, device="cpu", progress=False, lr=1e-2, weight_decay=0.1))
    reference_model = DiT(config)
    reference_model.load_state_dict(trainer.model.state_dict())
    reference = torch.optim.AdamW(reference_model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    for _ in range(3):
        for p in trainer.model.parameters():
            p.grad = torch.randn_like(p)
        for p, q in zip(reference_model.parameters(), trainer.model.parameters()):
            p.grad = q.grad.clone()
        trainer.optimizer.step()
        reference.step()
    for p, q in zip(reference_model.parameters(), trainer.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_run_case_times_both_steps_under_the_case_precision():
    """The whole case, as ``main`` runs it, on a tiny bf16 model (the GPU case's precision path, on the CPU)."""
    import argparse

    case = train_step.Case("small", DiTConfig(**SMALL), batch_size=4, precision="bf16")
    args = argparse.Namespace(warmup=1, steps=3, budget_s=1e9, peak_size=64, peak_repeats=2)
    result = train_step.run_case(case, torch.device("cpu"), args)
    assert len(result["peaks"]) == 3 and all(p > 0 for p in result["peaks"])  # one peak per round
    assert result["mfu_best_peak"] == pytest.approx(result["gflops"] * 1e9 / max(result["peaks"]))
    assert result["mfu"] > 0 and result["baseline_mfu"] > 0
    assert 0.95 < result["counter_ratio"] <= 1.0  # the counter skips the unneeded input gradients, see above
    assert result["step_s"] > 0 and result["vs_baseline"] > 0
    assert result["gflop_step"] == pytest.approx(3 * train_step.dit_forward_flops(case.config, 4) / 1e9)
