"""SD3 (diffusers SD3Transformer2DModel) <-> minidit MMDiT: same outputs both ways, every tensor accounted for, SD3's
position table and flow-matching convention checked against diffusers' own code."""
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from diffusers.models.embeddings import PatchEmbed

from minidit.convert.sd3 import (POSITION_TABLE, load_sd3, mmdit_config_from_sd3, mmdit_from_sd3, parameter_map,
                                 sd3_config_from_mmdit, sd3_from_mmdit, state_dict_from_sd3, state_dict_to_sd3)
from minidit.interpolants import get_interpolant
from minidit.mmdit import MMDiT, MMDiTConfig, cropped_sincos_2d

TINY_SD3 = dict(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
                joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=12, out_channels=4,
                pos_embed_max_size=16)
VARIANTS = {  # SD3 medium's layout, SD3.5 medium's (QK RMSNorm, MMDiT-X in the first block), LayerNorm QK-norm
    "sd3": {}, "sd3.5": dict(qk_norm="rms_norm", dual_attention_layers=(0,)),
    "layer_norm": dict(qk_norm="layer_norm", dual_attention_layers=(0, 1)),
}


def randomise(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Perturb every weight (norm weights, zero-initialised layers) so that no mapping error hides."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module.eval()


def tiny_sd3(**overrides) -> SD3Transformer2DModel:
    torch.manual_seed(0)
    return randomise(SD3Transformer2DModel(**{**TINY_SD3, **overrides}))


def inputs(size=(8, 8), n: int = 3, length: int = 5, seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, *size, generator=gen), torch.rand(n, generator=gen),
            torch.randn(n, length, 16, generator=gen), torch.randn(n, 12, generator=gen))


def sd3_velocity(sd3, x, t, text, pooled) -> torch.Tensor:
    """diffusers' call: timestep = 1000 sigma, sigma = minidit's t."""
    return sd3(x, encoder_hidden_states=text, pooled_projections=pooled, timestep=1000 * t).sample


def all_real(text: torch.Tensor) -> torch.Tensor:
    return torch.ones(text.shape[:2], dtype=torch.bool)


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_sd3_converts_to_minidit_and_back_with_the_same_outputs(variant):
    sd3 = tiny_sd3(**VARIANTS[variant])
    model = mmdit_from_sd3(sd3)
    for size in [(8, 8), (12, 16)]:  # the training grid, and a wider crop of the position table
        x, t, text, pooled = inputs(size)
        expected = sd3_velocity(sd3, x, t, text, pooled)
        assert expected.abs().amax() > 0.5  # a random model, not a zero one
        torch.testing.assert_close(model(x, t, text, all_real(text), pooled=pooled), expected, atol=1e-5, rtol=0)
    back = sd3_from_mmdit(model).state_dict()
    original = sd3.state_dict()
    assert back.keys() == original.keys()
    for name, tensor in original.items():
        if name == POSITION_TABLE:  # recomputed (float32 here, float64 in diffusers)
            torch.testing.assert_close(back[name], tensor, atol=1e-6, rtol=0)
        else:
            assert torch.equal(back[name], tensor), name


@torch.no_grad()
def test_a_minidit_model_converts_to_sd3_and_back_exactly():
    config = MMDiTConfig(input_size=8, patch_size=2, in_channels=4, depth=3, hidden_size=16, num_heads=2, text_dim=16,
                         pooled_dim=12, caption_dropout=0.0, pos_embed_max_size=16, dual_attention_blocks=(1,))
    torch.manual_seed(0)
    model = randomise(MMDiT(config))
    sd3 = sd3_from_mmdit(model)
    assert sd3.config.dual_attention_layers == (1,) and sd3.config.qk_norm == "rms_norm"  # minidit's default QK-norm
    x, t, text, pooled = inputs((10, 6))
    torch.testing.assert_close(sd3_velocity(sd3, x, t, text, pooled), model(x, t, text, all_real(text), pooled=pooled),
                               atol=1e-5, rtol=0)
    again = mmdit_from_sd3(sd3)
    assert again.config == config
    state = model.state_dict()
    assert again.state_dict().keys() == state.keys()
    assert all(torch.equal(again.state_dict()[name], tensor) for name, tensor in state.items())


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_tensor_of_both_models_is_mapped_exactly_once(variant):
    sd3 = SD3Transformer2DModel(**{**TINY_SD3, **VARIANTS[variant]})
    config = mmdit_config_from_sd3(sd3.config)
    entries = parameter_map(config)
    ours = [name for name, _, _ in entries]
    theirs = [name for _, names, _ in entries for name in names]
    assert sorted(ours) == sorted(MMDiT(config).state_dict())  # no buffers in minidit: all parameters
    assert sorted(theirs + [POSITION_TABLE]) == sorted(sd3.state_dict())  # each diffusers tensor once
    assert sum(p.numel() for p in MMDiT(config).parameters()) == sum(p.numel() for p in sd3.parameters())


def test_state_dicts_with_a_tensor_too_many_or_too_few_or_another_position_table_are_refused():
    sd3 = tiny_sd3()
    config = mmdit_config_from_sd3(sd3.config)
    state = sd3.state_dict()
    with pytest.raises(ValueError, match=r"unused \['extra.weight'\], missing \[\]"):
        state_dict_from_sd3({**state, "extra.weight": torch.zeros(1)}, config)
    without = {name: tensor for name, tensor in state.items() if name != "proj_out.bias"}
    with pytest.raises(ValueError, match=r"missing \['proj_out.bias'\]"):
        state_dict_from_sd3(without, config)
    shifted = {**state, POSITION_TABLE: state[POSITION_TABLE] + 1e-3}
    with pytest.raises(ValueError, match="is not the sin-cos table of pos_embed_max_size 16"):
        state_dict_from_sd3(shifted, config)
    minidit_state = state_dict_from_sd3(state, config)
    with pytest.raises(ValueError, match=r"the MMDiT state dict does not match its config: unused \[\], missing"):
        state_dict_to_sd3({k: v for k, v in minidit_state.items() if k != "final_layer.linear.bias"}, config)


@pytest.mark.parametrize("grid", [(4, 4), (6, 8), (3, 16), (16, 1), (16, 16)])
def test_the_position_table_is_sd3s_centre_crop(grid):
    embed = PatchEmbed(height=8, width=8, patch_size=2, in_channels=4, embed_dim=16, pos_embed_max_size=16)
    expected = embed.cropped_pos_embed(2 * grid[0], 2 * grid[1])[0]  # diffusers takes pixel sizes
    table = cropped_sincos_2d(16, grid, max_size=16, base_size=4)
    torch.testing.assert_close(table, expected, atol=1e-6, rtol=0)
    # closed form of one entry: token (r, c) holds column then row features at positions scaled by 4 / 16
    r, c = grid[0] - 1, 0
    top, left = (16 - grid[0]) // 2, (16 - grid[1]) // 2
    omega = 10000.0 ** (-torch.arange(4) / 4)
    col, row = (left + c) * 0.25 * omega, (top + r) * 0.25 * omega
    closed = torch.cat([col.sin(), col.cos(), row.sin(), row.cos()])
    torch.testing.assert_close(table[r * grid[1] + c], closed, atol=1e-6, rtol=0)


def test_a_grid_larger_than_the_table_is_refused_like_diffusers_does():
    with pytest.raises(ValueError, match="does not fit SD3's 16x16 position table"):
        cropped_sincos_2d(16, (18, 4), max_size=16, base_size=4)
    with pytest.raises(ValueError, match="cannot be greater than `pos_embed_max_size`"):
        PatchEmbed(height=8, width=8, patch_size=2, in_channels=4, embed_dim=16, pos_embed_max_size=16)(
            torch.zeros(1, 4, 36, 8))


def test_sd3_time_and_velocity_are_minidits_t_and_velocity():
    """diffusers' flow-matching scheduler (SD3's, shift 3) noises with x_t = (1 - sigma) x0 + sigma eps and steps
    x + (sigma' - sigma) v: fed minidit's velocity eps - x0 it lands exactly on minidit's path; timestep = 1000 t."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(4)
    linear = get_interpolant("linear")
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    for i, timestep in enumerate(scheduler.timesteps):
        t, t_next = scheduler.sigmas[i], scheduler.sigmas[i + 1]
        assert timestep == pytest.approx(1000 * float(t), rel=1e-6)
        x_t = linear.interpolate(x0, eps, t.expand(2))
        noised = scheduler.scale_noise(x0, timestep[None], eps)
        torch.testing.assert_close(noised, x_t, atol=1e-6, rtol=0)
        velocity = linear.velocity_target(x0, eps, t.expand(2))  # eps - x0
        stepped = scheduler.step(velocity, timestep, x_t).prev_sample  # the scheduler counts its steps
        torch.testing.assert_close(stepped, linear.interpolate(x0, eps, t_next.expand(2)), atol=1e-5, rtol=0)
    scheduler.set_timesteps(4)  # the opposite sign leaves the path
    x_1 = linear.interpolate(x0, eps, torch.ones(2))
    wrong = scheduler.step(x0 - eps, scheduler.timesteps[0], x_1).prev_sample
    assert (wrong - linear.interpolate(x0, eps, scheduler.sigmas[1].expand(2))).abs().amax() > 0.1


@torch.no_grad()
def test_masked_padding_gives_sd3s_output_on_the_unpadded_caption():
    sd3 = tiny_sd3()
    model = mmdit_from_sd3(sd3)
    x, t, text, pooled = inputs(length=7)
    mask = all_real(text)
    mask[:, 4:] = False  # every caption: 4 real tokens, 3 padded
    unpadded = sd3_velocity(sd3, x, t, text[:, :4], pooled)
    torch.testing.assert_close(model(x, t, text, mask, pooled=pooled), unpadded, atol=1e-5, rtol=0)
    padded = sd3_velocity(sd3, x, t, text, pooled)  # SD3 attends its padding
    assert (padded - unpadded).abs().amax() > 1e-3
    torch.testing.assert_close(model(x, t, text, all_real(text), pooled=pooled), padded, atol=1e-5, rtol=0)


@torch.no_grad()
def test_a_fresh_model_with_the_sd3_switches_outputs_zero():
    config = MMDiTConfig(input_size=8, patch_size=2, in_channels=4, depth=2, hidden_size=16, num_heads=2, text_dim=16,
                         pooled_dim=12, caption_dropout=0.0, pos_embed_max_size=16, dual_attention_blocks=(0, 1))
    x, t, text, pooled = inputs()
    torch.manual_seed(0)
    assert torch.equal(MMDiT(config)(x, t, text, all_real(text), pooled=pooled), torch.zeros(3, 4, 8, 8))


@torch.no_grad()
def test_load_sd3_reads_a_local_diffusers_folder_and_refuses_a_missing_one(tmp_path):
    sd3 = tiny_sd3(qk_norm="rms_norm")
    sd3.save_pretrained(tmp_path / "transformer")  # the layout of a downloaded pipeline
    model = load_sd3(tmp_path)
    x, t, text, pooled = inputs()
    torch.testing.assert_close(model(x, t, text, all_real(text), pooled=pooled), sd3_velocity(sd3, x, t, text, pooled),
                               atol=1e-5, rtol=0)
    with pytest.raises(FileNotFoundError, match="no SD3 transformer .*stabilityai/stable-diffusion-3-medium"):
        load_sd3(tmp_path / "absent")


def test_configs_and_inputs_sd3_cannot_take_raise_clear_errors():
    with pytest.raises(ValueError, match="no learned null caption to drop to: set caption_dropout = 0"):
        MMDiTConfig(pooled_dim=12)
    with pytest.raises(ValueError, match="needs pos_embed = 'sincos' and at least grid_size = 16 positions"):
        MMDiTConfig(pos_embed_max_size=8)
    with pytest.raises(ValueError, match="needs pos_embed = 'sincos'"):
        MMDiTConfig(pos_embed="learned", pos_embed_max_size=32)
    with pytest.raises(ValueError, match=r"dual_attention_blocks \[4\] do not exist; a depth-4 model has blocks 0..3"):
        MMDiTConfig(dual_attention_blocks=(0, 4))
    with pytest.raises(ValueError, match="caption_projection_dim 8 must equal the model width"):
        mmdit_config_from_sd3({**TINY_SD3, "caption_projection_dim": 8})
    with pytest.raises(ValueError, match="qk_norm 'l2' has no minidit counterpart"):
        mmdit_config_from_sd3({**TINY_SD3, "qk_norm": "l2"})
    with pytest.raises(ValueError, match="pos_embed_max_size is None"):
        mmdit_config_from_sd3({**TINY_SD3, "pos_embed_max_size": None})
    with pytest.raises(ValueError, match="set pooled_dim = an integer .*, pos_embed_max_size = an integer"):
        sd3_config_from_mmdit(MMDiTConfig(depth=2, text_dim=16))
    model = mmdit_from_sd3(tiny_sd3())
    x, t, text, pooled = inputs()
    with pytest.raises(ValueError, match=r"pass pooled of shape \(N, pooled_dim\) = \(3, 12\); got None"):
        model(x, t, text, all_real(text))
    with pytest.raises(ValueError, match="no learned null caption: for guidance, encode the empty prompt"):
        model(x, t, text, all_real(text), force_drop=torch.ones(3, dtype=torch.bool), pooled=pooled)
    plain = MMDiT(MMDiTConfig(input_size=8, depth=1, in_channels=4, text_dim=16))
    with pytest.raises(ValueError, match="this model pools its own text"):
        plain(x, t, text, all_real(text), pooled=pooled)
