"""Frames (Lumina-T2X): exact packing round trips, the documented layout, masks that provably do nothing, one DiT for
any (H, W, T), and 3-D RoPE's relative-position property on every axis."""
import pytest
import torch

from minidit.dit import DiT, DiTConfig, patchify
from minidit.frames import (NEXTFRAME, NEXTLINE, PAD, PATCH, FrameTokens, frame_layout, patchify_frames,
                            sequence_length, unpatchify_frames)
from minidit.guidance import guide_with_null
from minidit.rope import apply_rope, rope_angles, rope_frequencies


def frames_model(**overrides) -> DiT:
    """A tiny frames DiT whose zero-initialised layers are randomised, so that every input reaches the output."""
    torch.manual_seed(0)
    config = dict(input_size=16, patch_size=4, in_channels=3, hidden_size=48, depth=2, num_heads=4, rope=True,
                  pos_embed="none", frames=True, num_classes=0, qk_norm="rmsnorm")
    model = DiT(DiTConfig(**{**config, **overrides}))
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.1)
    return model.eval()


def test_patchify_frames_round_trip_and_frame_tokens_equal_image_tokens():
    x = torch.randn(2, 8, 12, 3, 5)  # (N, H, W, T, C)
    tokens = patchify_frames(x, 4)  # (2, 3 * 2 * 3, 80)
    assert tokens.shape == (2, 18, 80)
    assert torch.equal(unpatchify_frames(tokens, (3, 2, 3), 4), x)
    image = x[:, :, :, 1].permute(0, 3, 1, 2)  # frame 1 as (N, C, H, W)
    assert torch.equal(tokens[:, 6:12], patchify(image, 4))


def test_layout_follows_the_documented_order_and_positions():
    layout = frame_layout([(2, 2, 3)])
    kinds, positions = layout.kinds[0].tolist(), layout.positions[0].tolist()
    row = [PATCH] * 3 + [NEXTLINE]
    assert kinds == (row * 2 + [NEXTFRAME]) * 2
    assert len(kinds) == sequence_length((2, 2, 3)) == 2 * (2 * (3 + 1) + 1)
    assert positions[:5] == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 3], [0, 1, 0]]  # the nextline sits at w
    assert positions[8] == [0, 2, 0]  # the nextframe of frame 0 at (f, h, 0)
    assert positions[9] == [1, 0, 0]  # frame 1 starts at t = 1
    mixed = frame_layout([(1, 2, 2), (2, 2, 3)])
    assert mixed.key_mask.sum(1).tolist() == [sequence_length((1, 2, 2)), sequence_length((2, 2, 3))]
    assert (mixed.kinds[0, 7:] == PAD).all() and not mixed.key_mask[0, 7:].any()


def test_pack_then_unpack_is_exact_and_zero_outside_each_sample():
    layout = frame_layout([(1, 2, 2), (2, 2, 3)])  # padded grid (2, 2, 3): P = 12
    packer = FrameTokens(5)
    patches = torch.randn(2, 12, 5)
    packed = packer.pack(patches, layout)  # (2, L, 5)
    assert torch.equal(packed[layout.kinds == NEXTLINE], packer.nextline.detach().expand(6, 5))
    assert torch.equal(packed[layout.kinds == NEXTFRAME], packer.nextframe.detach().expand(3, 5))
    assert (packed[layout.kinds == PAD] == 0).all()
    unpacked = packer.unpack(packed, layout)
    assert torch.equal(unpacked[1], patches[1])
    inside = torch.zeros(2, 3, dtype=torch.bool)
    inside[:2, :2] = True  # sample 0: frame 0, 2 x 2 of the 2 x 3 padded rows
    assert torch.equal(unpacked[0, :6][inside.flatten()], patches[0, :6][inside.flatten()])
    assert (unpacked[0, :6][~inside.flatten()] == 0).all() and (unpacked[0, 6:] == 0).all()
    special = packed.clone()
    special[layout.kinds != PATCH] = torch.randn(int((layout.kinds != PATCH).sum()), 5)
    assert torch.equal(packer.unpack(special, layout), unpacked)  # special and pad outputs are dropped


def test_one_model_reads_any_height_width_and_duration_including_an_image():
    model = frames_model()
    for size in [(16, 16, 1), (8, 12, 4), (12, 4, 2), (20, 8, 3)]:
        x = torch.randn(2, *size, 3)
        assert model(x, torch.rand(2)).shape == x.shape
    image = torch.randn(1, 3, 16, 12)
    assert model(image.permute(0, 2, 3, 1).unsqueeze(3), torch.rand(1)).shape == (1, 16, 12, 1, 3)


def test_padding_never_changes_a_real_output_and_outputs_are_zero_outside():
    model = frames_model()
    t = torch.tensor([0.3, 0.7])
    small = torch.randn(1, 8, 8, 2, 3)
    alone = model(small, t[:1])
    batch = torch.randn(2, 16, 12, 3, 3)
    batch[0, :8, :8, :2] = small[0]
    sizes = torch.tensor([[8, 8, 2], [16, 12, 3]])
    mixed = model(batch, t, frame_sizes=sizes)
    torch.testing.assert_close(mixed[0, :8, :8, :2], alone[0], atol=1e-5, rtol=1e-5)
    assert (mixed[0, 8:] == 0).all() and (mixed[0, :, 8:] == 0).all() and (mixed[0, :, :, 2:] == 0).all()
    other = batch.clone()
    other[0, 8:], other[0, :, :, 2:] = torch.randn_like(other[0, 8:]), 5.0  # change only the padded region
    torch.testing.assert_close(model(other, t, frame_sizes=sizes), mixed, atol=0, rtol=0)
    torch.testing.assert_close(mixed[1:], model(batch[1:], t[1:]), atol=1e-5, rtol=1e-5)


def test_special_tokens_take_part_in_attention():
    model = frames_model()
    x = torch.randn(1, 8, 8, 2, 3)
    model(x, torch.rand(1)).square().sum().backward()
    assert model.frame_tokens.nextline.grad.abs().sum() > 0 and model.frame_tokens.nextframe.grad.abs().sum() > 0


def test_frames_text_model_under_guidance_doubles_frame_sizes():
    model = frames_model(text_conditioning="cross", text_dim=8)
    x, t = torch.randn(2, 8, 8, 2, 3), torch.rand(2)
    conditioning = {"text": torch.randn(2, 5, 8), "text_mask": torch.ones(2, 5, dtype=torch.bool),
                    "frame_sizes": torch.tensor([[8, 8, 2], [4, 8, 1]])}
    out = guide_with_null(model, conditioning, scale=3.0)(x, t)
    assert out.shape == x.shape and (out[1, 4:] == 0).all() and (out[1, :, :, 1:] == 0).all()


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_3d_rope_logits_depend_only_on_the_offset_along_each_axis(axis):
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 24), torch.randn(1, 1, 1, 24)
    shift = torch.zeros(3)
    shift[axis] = 7.0

    def logit(position_q, position_k):
        return (apply_rope(q, rope_angles(position_q[None], 24)) * apply_rope(k, rope_angles(position_k[None], 24))).sum()

    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 0.0, 5.0])
    torch.testing.assert_close(logit(a, b), logit(a + shift, b + shift), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logit(a, b), logit(a, b + shift), atol=1e-3)  # every axis has channels


def test_grid_angles_are_rope_angles_of_grid_positions():
    angles = rope_frequencies((3, 4), 16)
    assert torch.equal(angles[5], rope_angles(torch.tensor([1.0, 1.0]), 16))


def test_bad_frames_input_is_named():
    with pytest.raises(ValueError, match="rope = true"):
        DiTConfig(frames=True, rope=False)
    model = frames_model()
    with pytest.raises(ValueError, match=r"\(N, H, W, T, 3\)"):
        model(torch.randn(1, 3, 8, 8), torch.rand(1))
    with pytest.raises(ValueError, match="do not fit"):
        model(torch.randn(1, 8, 8, 2, 3), torch.rand(1), frame_sizes=torch.tensor([[8, 8, 3]]))
    with pytest.raises(ValueError, match="multiples of patch_size"):
        model(torch.randn(1, 8, 8, 2, 3), torch.rand(1), frame_sizes=torch.tensor([[6, 8, 2]]))
    image_model = DiT(DiTConfig(input_size=8, patch_size=4, in_channels=3, hidden_size=16, depth=1, num_heads=2))
    with pytest.raises(ValueError, match="frames models"):
        image_model(torch.randn(1, 3, 8, 8), torch.rand(1), frame_sizes=torch.tensor([[8, 8, 1]]))


def test_bench_frames_runs_and_reports_the_packing_share():
    import importlib.util
    import sys
    from pathlib import Path

    bench_dir = Path(__file__).parents[1] / "bench"
    sys.path.insert(0, str(bench_dir))
    spec = importlib.util.spec_from_file_location("frames_bench", bench_dir / "frames.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--size", "8", "--frames", "2", "--hidden", "16", "--depth", "1", "--heads", "2",
                         "--batch", "2", "--mixed", "--warmup", "0", "--steps", "2", "--threads", "1"])
    assert report["tokens_per_clip"] == (2 * (2 * 3 + 1) + 1 * (1 * 2 + 1)) // 2  # a 2x2x2 clip and a 1x1x1 clip
    assert 0 < report["packing_share"] and 0 < report["layout_share"]
