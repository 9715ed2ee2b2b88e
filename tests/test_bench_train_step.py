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


def test_timing_loop_runs_warmup_then_the_timed_steps_of_the_real_trainer():
    config = DiTConfig(**SMALL)
    x, model_kwargs = train_step.synthetic_batch(config, 4, torch.device("cpu"))
    trainer = Trainer(DiT(config), train_step.FixedBatch(x, model_kwargs),
                      TrainConfig(batch_size=4, device="cpu", progress=False))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    times = train_step.time_training_steps(trainer, warmup=2, steps=3, budget_s=1e9)
    assert len(times) == 3 and all(s > 0 for s in times)
    assert trainer.step == 5
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


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
