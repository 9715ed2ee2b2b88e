"""Official DiT / SiT checkpoints and diffusers' DiTTransformer2DModel in minidit's DiT: same outputs, all weights used.

The official format is produced here by an independent re-statement of facebookresearch/DiT ``models.py`` (written
from its algorithm with plain tensor ops: conv patch embedding, timm's fused qkv, cat[cos, sin] time features of
the raw step, MAE's numpy position table); diffusers models are tiny, random and built here (nothing downloads).
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minidit.convert.dit import (DiffusersTimestepEmbedder, ReversedTimeVelocity, dit_from_diffusers, dit_to_diffusers,
                                 load_official_dit, load_official_sit, use_diffusers_time_embedding, velocity_field)
from minidit.dit import DiT, TimestepEmbedder
from minidit.embeddings import timestep_embedding
from minidit.guidance import classifier_free_guidance
from minidit.interpolants import get_interpolant
from minidit.samplers import sample_ode, sample_sde

DEPTH, DIM, HEADS, PATCH, CHANNELS, CLASSES, SIZE = 2, 32, 2, 2, 4, 10, 8
TINY = dict(preset="DiT-S/2", input_size=SIZE, depth=DEPTH, hidden_size=DIM, num_heads=HEADS)
TOL = 1e-5


def official_pos_table(dim: int, grid: int) -> np.ndarray:
    """MAE / DiT ``get_2d_sincos_pos_embed``: meshgrid(w, h), so the first half of the channels encodes the column."""
    def one_axis(width, positions):
        omega = 1.0 / 10000 ** (np.arange(width // 2, dtype=np.float64) / (width / 2.0))
        angles = np.outer(positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    w_coord, h_coord = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    return np.concatenate([one_axis(dim // 2, w_coord), one_axis(dim // 2, h_coord)], axis=1)  # (grid^2, dim)


def official_state(seed: int = 0, learn_sigma: bool = True) -> dict[str, torch.Tensor]:
    """A random state dict in facebookresearch/DiT's format (``learn_sigma``: 2 * CHANNELS outputs)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: 0.2 * torch.randn(*shape, generator=g)  # noqa: E731
    out = 2 * CHANNELS if learn_sigma else CHANNELS
    state = {"x_embedder.proj.weight": rand(DIM, CHANNELS, PATCH, PATCH), "x_embedder.proj.bias": rand(DIM),
             "pos_embed": torch.from_numpy(official_pos_table(DIM, SIZE // PATCH)).float()[None],
             "t_embedder.mlp.0.weight": rand(DIM, 256), "t_embedder.mlp.0.bias": rand(DIM),
             "t_embedder.mlp.2.weight": rand(DIM, DIM), "t_embedder.mlp.2.bias": rand(DIM),
             "y_embedder.embedding_table.weight": rand(CLASSES + 1, DIM),
             "final_layer.linear.weight": rand(PATCH**2 * out, DIM), "final_layer.linear.bias": rand(PATCH**2 * out),
             "final_layer.adaLN_modulation.1.weight": rand(2 * DIM, DIM),
             "final_layer.adaLN_modulation.1.bias": rand(2 * DIM)}
    for i in range(DEPTH):
        for name, shape in [("attn.qkv", (3 * DIM, DIM)), ("attn.proj", (DIM, DIM)), ("mlp.fc1", (4 * DIM, DIM)),
                            ("mlp.fc2", (DIM, 4 * DIM)), ("adaLN_modulation.1", (6 * DIM, DIM))]:
            state[f"blocks.{i}.{name}.weight"], state[f"blocks.{i}.{name}.bias"] = rand(*shape), rand(shape[0])
    return state


def official_forward(state: dict[str, torch.Tensor], x: torch.Tensor, t_raw: torch.Tensor, y: torch.Tensor):
    """The official DiT forward from its algorithm; ``t_raw`` is what its time embedder receives (step or SiT s)."""
    def linear(h, name):
        return F.linear(h, state[f"{name}.weight"], state[f"{name}.bias"])

    def modulate(h, shift, scale):
        return F.layer_norm(h, h.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]

    n = x.shape[0]
    h = F.conv2d(x, state["x_embedder.proj.weight"], state["x_embedder.proj.bias"], stride=PATCH)  # (N, D, g, g)
    h = h.flatten(2).transpose(1, 2) + state["pos_embed"]  # (N, T, D)
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    angles = t_raw[:, None].float() * freqs
    c = linear(F.silu(linear(torch.cat([angles.cos(), angles.sin()], -1), "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = c + state["y_embedder.embedding_table.weight"][y]  # (N, D)
    for i in range(DEPTH):
        modulation = linear(F.silu(c), f"blocks.{i}.adaLN_modulation.1")
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = modulation.chunk(6, 1)
        qkv = linear(modulate(h, shift_a, scale_a), f"blocks.{i}.attn.qkv")
        q, k, v = qkv.reshape(n, -1, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)  # (N, H, T, Dh) each
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS), dim=-1) @ v
        h = h + gate_a[:, None] * linear(attn.transpose(1, 2).reshape(n, -1, DIM), f"blocks.{i}.attn.proj")
        mlp = F.gelu(linear(modulate(h, shift_m, scale_m), f"blocks.{i}.mlp.fc1"), approximate="tanh")
        h = h + gate_m[:, None] * linear(mlp, f"blocks.{i}.mlp.fc2")
    shift, scale = linear(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, 1)
    out = linear(modulate(h, shift, scale), "final_layer.linear")  # (N, T, p * p * C_out)
    g = SIZE // PATCH
    out = out.reshape(n, g, g, PATCH, PATCH, -1)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(n, -1, SIZE, SIZE)  # (N, C_out, H, W)


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, CHANNELS, SIZE, SIZE, generator=g)
    steps = torch.tensor([0, 17, 500, 999])
    y = torch.tensor([3, 0, 9, CLASSES])  # the last one is the null label
    return x, steps, y


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("keep_variance", [False, True])
def test_official_dit_equals_the_official_forward(tmp_path, keep_variance):
    state = official_state()
    torch.save(state, tmp_path / "dit.pt")
    pretrained = load_official_dit(tmp_path / "dit.pt", keep_variance=keep_variance, **TINY)
    assert pretrained.prediction == "noise" and pretrained.interpolant.name == "ddpm"
    x, steps, y = inputs()
    with torch.no_grad():
        reference = official_forward(state, x, steps, y)  # (N, 8, H, W): eps then learned variance
        ours = pretrained.model(x, steps / 1000, y)
    assert ours.shape == (4, 2 * CHANNELS if keep_variance else CHANNELS, SIZE, SIZE)
    assert max_diff(ours, reference[:, : ours.shape[1]]) < TOL
    assert max_diff(ours[:, :CHANNELS], official_forward(state, x, steps + 1, y)[:, :CHANNELS]) > 1e-3  # t matters


def test_training_checkpoint_uses_ema_weights(tmp_path):
    state = official_state(learn_sigma=False)
    torch.save({"model": official_state(seed=5), "ema": state, "args": argparse.Namespace(model="DiT-XL/2")},
               tmp_path / "0400000.pt")
    model = load_official_dit(tmp_path / "0400000.pt", **TINY).model
    x, steps, y = inputs()
    with torch.no_grad():
        assert max_diff(model(x, steps / 1000, y), official_forward(state, x, steps, y)) < TOL


def test_official_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"DiT/models/DiT-XL-2-256x256\.pt.*pretrained_models/"):
        load_official_dit(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="SiT-XL-2-256.pt"):
        load_official_sit(tmp_path / "missing.pt")
    cases = {
        "extra": ({**official_state(), "blocks.0.attn.q_norm.weight": torch.ones(16)}, "does not use.*q_norm"),
        "missing": ({k: v for k, v in official_state().items() if k != "blocks.1.mlp.fc2.bias"},
                    "blocks.1.mlp.fc2.bias"),
        "table": ({**official_state(), "pos_embed": torch.zeros(1, 16, DIM)}, "sin-cos table"),
    }
    for name, (state, message) in cases.items():
        torch.save(state, tmp_path / f"{name}.pt")
        with pytest.raises(ValueError, match=message):
            load_official_dit(tmp_path / f"{name}.pt", **TINY)
    torch.save(official_state(), tmp_path / "dit.pt")
    with pytest.raises(ValueError, match="preset 'DiT-XL/2'.*depth"):
        load_official_dit(tmp_path / "dit.pt")
    with pytest.raises(ValueError, match="input_size 16"):
        load_official_dit(tmp_path / "dit.pt", **{**TINY, "input_size": 16})
    torch.save(official_state(learn_sigma=False), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="no learned-sigma"):
        load_official_dit(tmp_path / "plain.pt", keep_variance=True, **TINY)


def test_sit_in_minidit_time(tmp_path):
    state = official_state(seed=2)
    torch.save(state, tmp_path / "sit.pt")
    pretrained = load_official_sit(tmp_path / "sit.pt", **{**TINY, "preset": "SiT-S/2"})
    assert isinstance(pretrained.model, ReversedTimeVelocity)
    assert pretrained.prediction == "velocity" and pretrained.interpolant.name == "linear"
    x, _, y = inputs()
    t = torch.tensor([0.0, 0.25, 0.8, 1.0])  # minidit time: t = 0 data
    with torch.no_grad():
        sit = official_forward(state, x, 1 - t, y)[:, :CHANNELS]  # SiT's own time s = 1 - t, forward drops sigma
        ours = pretrained.model(x, t, y)
    assert max_diff(ours, -sit) < TOL  # dx/dt = -dx/ds
    assert pretrained.model.config.num_classes == CLASSES


def random_diffusers_dit(seed: int = 0, equal_embedders: bool = True):
    diffusers = pytest.importorskip("diffusers")  # a dev dependency: installed wherever the tests run
    torch.manual_seed(seed)
    model = diffusers.DiTTransformer2DModel(num_attention_heads=HEADS, attention_head_dim=DIM // HEADS,
                                            in_channels=CHANNELS, out_channels=2 * CHANNELS, num_layers=DEPTH,
                                            sample_size=SIZE, patch_size=PATCH, num_embeds_ada_norm=CLASSES)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
        if equal_embedders:  # one embedder copied into every block, as diffusers' conversion of DiT does
            for block in model.transformer_blocks[1:]:
                block.norm1.emb.load_state_dict(model.transformer_blocks[0].norm1.emb.state_dict())
    return model.eval()


def diffusers_out(model, x, steps, y):
    with torch.no_grad():
        return model(x, timestep=steps, class_labels=y).sample


def test_diffusers_dit_both_directions():
    theirs = random_diffusers_dit()
    assert theirs.config.norm_eps == 1e-5  # diffusers' default, not DiT's 1e-6: the converter carries it over
    x, steps, y = inputs()
    expected = diffusers_out(theirs, x, steps, y)  # (N, 8, H, W)
    ours = dit_from_diffusers(theirs)
    assert isinstance(ours.t_embedder, DiffusersTimestepEmbedder) and ours.blocks[0].norm2.eps == 1e-5
    with torch.no_grad():
        assert max_diff(ours(x, steps / 1000, y), expected[:, :CHANNELS]) < TOL
    full = dit_from_diffusers(theirs, keep_variance=True)
    with torch.no_grad():
        assert max_diff(full(x, steps / 1000, y), expected) < TOL
    back = dit_to_diffusers(full)
    assert back.config.norm_eps == 1e-5 and back.out_channels == 2 * CHANNELS
    original, converted = theirs.state_dict(), back.state_dict()
    assert original.keys() == converted.keys() and all(torch.equal(original[k], converted[k]) for k in original)
    assert max_diff(diffusers_out(back, x, steps, y), expected) == 0


def test_minidit_dit_to_diffusers():
    torch.manual_seed(3)
    model = DiT.from_preset("DiT-S/2", input_size=SIZE, depth=DEPTH, hidden_size=DIM, num_heads=HEADS,
                            in_channels=CHANNELS, num_classes=CLASSES).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    with pytest.raises(ValueError, match="use_diffusers_time_embedding"):
        dit_to_diffusers(model)
    x, steps, y = inputs()
    with torch.no_grad():
        official = model(x, steps / 1000, y)
        theirs = dit_to_diffusers(use_diffusers_time_embedding(model))
        ours = model(x, steps / 1000, y)
    assert theirs.config.norm_eps == 1e-6 and theirs.out_channels == CHANNELS
    assert max_diff(diffusers_out(theirs, x, steps, y), ours) < TOL
    assert max_diff(ours, official) > 1e-2  # the time features really differ
    flag = DiT.from_preset("DiT-S/2", style="Flag-DiT", input_size=SIZE, depth=1, hidden_size=DIM, num_heads=HEADS,
                           num_classes=CLASSES)
    with pytest.raises(ValueError, match="rope"):
        dit_to_diffusers(use_diffusers_time_embedding(flag))


def test_diffusers_time_features_are_not_the_official_ones():
    diffusers = pytest.importorskip("diffusers")
    steps = torch.tensor([0.0, 1.0, 17.0, 500.0, 999.0])
    features = diffusers.models.embeddings.Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)(steps)
    assert max_diff(timestep_embedding(steps / 1000, 256), features) > 1.0  # the official DiT's features differ
    theirs = diffusers.models.embeddings.TimestepEmbedding(256, DIM)
    ours, official = DiffusersTimestepEmbedder(DIM), TimestepEmbedder(DIM)
    for embedder in (ours, official):
        embedder.mlp[0].load_state_dict(theirs.linear_1.state_dict())
        embedder.mlp[2].load_state_dict(theirs.linear_2.state_dict())
    with torch.no_grad():
        assert max_diff(ours(steps / 1000), theirs(features)) < TOL
        assert max_diff(official(steps / 1000), theirs(features)) > 1e-2


def test_diffusers_errors():
    with pytest.raises(ValueError, match="block 1's timestep_embedder"):
        dit_from_diffusers(random_diffusers_dit(equal_embedders=False))


def gaussian_noise_model(means: torch.Tensor, std: float, path):
    """Exact noise prediction for data ``N(means[y], std^2 I)``: ``E[eps | x_t] = s (x - a mu) / (a^2 std^2 + s^2)``."""
    def model(x, t, y):
        a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
        return s * (x - a * means[y]) / (a**2 * std**2 + s**2)
    return model


@pytest.mark.parametrize("name, t_end, tol", [("vp", 1e-3, 2e-3), ("ddpm", 0.0, 1.5e-2)])
def test_velocity_field_follows_the_exact_flow(name, t_end, tol):
    """Guided noise predictions of Gaussian classes, turned into velocities, carry x_1 to the closed-form x_0.

    Data ``N(mu_y, std^2)`` stays Gaussian on the path: ``x_t = a_t mu + sqrt(a_t^2 std^2 + s_t^2) z`` with ``z`` fixed
    along the ODE, and CFG on the (affine) noise prediction moves ``mu`` to ``mu_null + scale (mu_y - mu_null)``.
    The VP path is smooth, so Heun converges (1.2e-3 at 100 steps on values near 10); the DDPM path's derivatives
    jump at every integer step, which stalls Heun at about 5e-3 (it does not shrink with more steps).
    """
    path = get_interpolant(name)
    means, std = torch.tensor([[2.0, -1.0], [-3.0, 0.5], [0.0, 0.0]]), 0.5  # class 2 is the null class
    model = gaussian_noise_model(means, std, path)
    y = torch.tensor([0, 1, 0, 1])
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))

    def on_path(mean, t):
        a, s = path.alpha(torch.tensor(t)), path.sigma(torch.tensor(t))
        return a * mean + torch.sqrt(a**2 * std**2 + s**2) * z

    for scale in (1.0, 3.0):
        guided_mean = means[2] + scale * (means[y] - means[2])
        velocity_fn = velocity_field(classifier_free_guidance(model, y, torch.tensor(2), scale), "noise", path)
        out = sample_ode(velocity_fn, on_path(guided_mean, 1.0), steps=100, method="heun", t_end=t_end).samples
        assert max_diff(out, on_path(guided_mean, t_end)) < tol
        assert scale == 1.0 or max_diff(out, on_path(means[y], t_end)) > 1.0  # guidance moved the samples


def test_velocity_field_sde_on_the_ddpm_path():
    path = get_interpolant("ddpm")
    model = gaussian_noise_model(torch.tensor([[2.0, -1.0]]), 0.5, path)
    labels = torch.zeros(2000, dtype=torch.long)
    velocity_fn = velocity_field(lambda x, t: model(x, t, labels), "noise", "ddpm")
    x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    samples = sample_sde(velocity_fn, x, "ddpm", steps=100, generator=torch.Generator().manual_seed(2)).samples
    a0, s0 = path.alpha(torch.tensor(0.0)), path.sigma(torch.tensor(0.0))  # DDPM's step 0 keeps 1% noise
    assert max_diff(samples.mean(0), a0 * torch.tensor([2.0, -1.0])) < 0.05
    assert (samples.std(0) - torch.sqrt(a0**2 * 0.25 + s0**2)).abs().max() < 0.05
    assert velocity_field(model, "velocity", "linear") is model


def test_pretrained_velocity_fn(tmp_path):
    torch.save(official_state(), tmp_path / "dit.pt")
    pretrained = load_official_dit(tmp_path / "dit.pt", **TINY)
    x, _, y = inputs()
    t = torch.full((4,), 0.3)
    with torch.no_grad():
        v = pretrained.velocity_fn(y, cfg_scale=4.0)(x, t)
        cond, uncond = pretrained.model(x, t, y), pretrained.model(x, t, torch.full_like(y, CLASSES))
        eps = uncond + 4.0 * (cond - uncond)
        path = pretrained.interpolant
        a, s, da, ds = (c[:, None, None, None] for c in path.coefficients(t))
        expected = da * (x - s * eps) / a + ds * eps  # v = alpha' x0_hat + sigma' eps_hat
        assert max_diff(v, expected) < 1e-4
        out = sample_ode(pretrained.velocity_fn(y, 1.5), torch.randn(4, CHANNELS, SIZE, SIZE), steps=4,
                         t_end=1e-3).samples
    assert out.shape == (4, CHANNELS, SIZE, SIZE) and torch.isfinite(out).all()
