"""minidiff.UNet2DModel against diffusers.UNet2DModel: same weights, same inputs, same numbers.

Each configuration builds diffusers' model from a seed, loads its state dict into minidiff's with
strict=True (the module names are the same, no mapping table), and compares outputs and gradients.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

diffusers = pytest.importorskip("diffusers")

from minidiff import UNet2DModel  # noqa: E402
from minidiff.models.modeling_utils import PICKLE_WEIGHTS_NAME, WEIGHTS_NAME  # noqa: E402

PLAIN2 = dict(down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
ATTN2 = dict(
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D")
)
TINY = dict(block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4, layers_per_block=1, **PLAIN2)
TINY_ATTN = {**TINY, **ATTN2}

# name -> (UNet2DModel keywords, sample size, conditioning). Together they cover every supported option.
CONFIGS = {
    # the tutorial's layout (DDPM butterflies 32x32), widths scaled down from (64, 128, 128, 256)
    "tutorial": (
        dict(
            block_out_channels=(8, 16, 16, 32),
            norm_num_groups=4,
            layers_per_block=2,
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        ),
        16,
        None,
    ),
    # the 128x128 butterflies layout: six blocks, attention at one resolution only
    "butterflies_128_layout": (
        dict(
            block_out_channels=(8, 8, 16, 16, 32, 32),
            norm_num_groups=4,
            layers_per_block=2,
            down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
        ),
        32,
        None,
    ),
    # google/ddpm-cifar10-32: the original TF conventions (sin first, shift 1, pad-0 downsampling, one head)
    "ddpm_cifar10": (
        dict(
            block_out_channels=(8, 16, 16, 16),
            norm_num_groups=4,
            layers_per_block=2,
            flip_sin_to_cos=False,
            freq_shift=1,
            downsample_padding=0,
            norm_eps=1e-6,
            attention_head_dim=None,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        ),
        16,
        None,
    ),
    # scale_shift (improved DDPM): the mid attention then has no GroupNorm; gelu resnets
    "scale_shift": (dict(TINY_ATTN, resnet_time_scale_shift="scale_shift", act_fn="gelu"), 8, None),
    "scale_shift_attn_groups": (
        dict(TINY_ATTN, resnet_time_scale_shift="scale_shift", attn_norm_num_groups=2),
        8,
        None,
    ),
    # score-SDE style: Fourier features of log(sigma), centred input, output divided by sigma
    "fourier": (
        dict(TINY_ATTN, time_embedding_type="fourier", center_input_sample=True, act_fn="mish"),
        8,
        "sigma",
    ),
    "learned": (
        dict(
            TINY,
            time_embedding_type="learned",
            num_train_timesteps=1000,
            time_embedding_dim=24,
            act_fn="relu",
        ),
        8,
        None,
    ),
    "class_embeds": (dict(TINY_ATTN, num_class_embeds=10), 8, "labels"),
    "class_timestep": (dict(TINY, class_embed_type="timestep", act_fn="swish"), 8, "labels"),
    "class_identity": (dict(TINY, class_embed_type="identity"), 8, "vectors"),
    # resnet resampling (BigGAN-style, as in score SDE): ResnetDownsample/ResnetUpsample blocks and the
    # Attn blocks' downsample_type / upsample_type = "resnet"
    "resnet_resample": (
        dict(
            TINY,
            block_out_channels=(8, 16, 16),
            down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"),
            downsample_type="resnet",
            upsample_type="resnet",
        ),
        8,
        None,
    ),
    "no_mid_attention": (dict(TINY_ATTN, add_attention=False), 8, None),
    "no_mid_block": (dict(TINY, mid_block_type=None, layers_per_block=2), 8, None),
    # 3 groups, and a head width (8) that does not divide the attention width (12): 1 head, inner width 8
    "odd_groups": (
        dict(
            block_out_channels=(6, 12),
            norm_num_groups=3,
            attention_head_dim=8,
            in_channels=1,
            out_channels=2,
            **ATTN2,
        ),
        8,
        None,
    ),
    # dropout only acts in training; in eval both are deterministic. Mid block rescaled by sqrt(2)
    "dropout_mid_scale": (dict(TINY_ATTN, dropout=0.3, mid_block_scale_factor=2**0.5), 8, None),
}


def make_pair(config: dict, seed: int = 0) -> tuple[torch.nn.Module, UNet2DModel]:
    """diffusers' model with seeded random weights, and minidiff's with the same weights (strict load)."""
    torch.manual_seed(seed)
    reference = diffusers.UNet2DModel(**config).eval()
    model = UNet2DModel(**config).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    return reference, model


def make_inputs(config: dict, size: int, cond: str | None, batch: int = 2, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    inputs = {"sample": torch.randn(batch, config.get("in_channels", 3), size, size, generator=g)}
    if cond == "sigma":  # Fourier features take log(t): positive, fractional noise levels
        inputs["timestep"] = torch.rand(batch, generator=g) * 50 + 0.01
    else:
        inputs["timestep"] = torch.randint(0, 1000, (batch,), generator=g)
    if cond == "labels":
        inputs["class_labels"] = torch.randint(0, 10, (batch,), generator=g)
    elif cond == "vectors":  # identity class embedding: a ready-made (B, E) vector, E = 4 * widths[0]
        inputs["class_labels"] = torch.randn(batch, 4 * config["block_out_channels"][0], generator=g)
    return inputs


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_matches_diffusers(name):
    config, size, cond = CONFIGS[name]
    reference, model = make_pair(config)
    inputs = make_inputs(config, size, cond)
    with torch.no_grad():
        expected = reference(**inputs).sample
        out = model(**inputs)
        (as_tuple,) = model(**inputs, return_dict=False)
    assert out.sample.shape == expected.shape
    # fp32: the same operations in the same order and memory layouts, so on CPU the outputs are bit-identical
    # (measured: 0.0); 1e-5 relative leaves room for other kernels (GPU SDPA backends, TF32 off).
    assert rel_err(out.sample, expected) <= 1e-5
    assert torch.equal(as_tuple, out.sample)


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize(
    "name", ["tutorial", "ddpm_cifar10", "class_embeds", "odd_groups", "dropout_mid_scale"]
)
def test_every_batch_size_is_bit_exact(name, batch):
    """B = 1 too: a size-1 batch dimension lets a view take any batch stride, and the stride picks the next
    GroupNorm's CPU kernel. Attention returns diffusers' strides, so every batch size gives diffusers' bits."""
    config, size, cond = CONFIGS[name]
    reference, model = make_pair(config)
    inputs = make_inputs(config, size, cond, batch=batch)
    with torch.no_grad():
        assert torch.equal(model(**inputs).sample, reference(**inputs).sample)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradients_match_diffusers(name):
    config, size, cond = CONFIGS[name]
    reference, model = make_pair(config)
    inputs = make_inputs(config, size, cond)
    target = torch.randn_like(inputs["sample"][:, :1]).expand(-1, config.get("out_channels", 3), -1, -1)
    for m in (reference, model):
        F.mse_loss(m(**inputs).sample, target).backward()
    ref_grads = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ref_grads.keys()
    total = torch.sqrt(sum(g.norm() ** 2 for g in ref_grads.values()))
    for n, g in grads.items():
        # Each parameter's gradient within 1e-4 relative (measured: <= 3e-7; act(emb) is computed once, so its
        # gradient is summed in another order). The floor 1e-7 * ||all grads||
        # covers parameters whose exact gradient is zero, where both sides hold rounding noise (~1e-10):
        # to_k.bias (softmax ignores a constant added to a query's logits) and any bias feeding a GroupNorm
        # with one channel per group (the norm removes a per-channel constant).
        err = (g - ref_grads[n]).norm()
        assert err <= 1e-4 * ref_grads[n].norm() + 1e-7 * total, (
            f"{n}: rel err {err / ref_grads[n].norm():.2e}"
        )


def test_timestep_forms_agree():
    """A python int, a 0-d tensor and a per-item tensor of the same value give the same output."""
    config, size, _ = CONFIGS["class_embeds"]
    reference, model = make_pair(config)
    x, labels = torch.randn(2, 3, 8, 8), torch.tensor([1, 7])
    with torch.no_grad():
        outs = [model(x, t, labels).sample for t in (37, torch.tensor(37), torch.tensor([37, 37]))]
        expected = reference(x, 37, labels).sample
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert rel_err(outs[0], expected) <= 1e-5  # fp32 parity, as above


def test_config_round_trip_and_properties():
    config, _, _ = CONFIGS["tutorial"]
    reference, model = make_pair(config)
    assert model.config.block_out_channels == config["block_out_channels"]
    assert UNet2DModel.from_config(model.config).config == model.config
    assert model.num_parameters() == sum(p.numel() for p in reference.parameters())
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert model.to(torch.float64).dtype == torch.float64


@pytest.mark.slow
def test_full_tutorial_model_matches_diffusers():
    """The tutorial's real UNet (18.5M parameters) at 32x32."""
    config = dict(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=2,
        block_out_channels=(64, 128, 128, 256),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )
    reference, model = make_pair(config)
    inputs = make_inputs(config, 32, None)
    with torch.no_grad():
        assert rel_err(model(**inputs).sample, reference(**inputs).sample) <= 1e-5  # fp32, as above


# ---- bad input: each error says what was expected ----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_pair():
    return make_pair(TINY_ATTN)


def test_bad_sample_shape(tiny_pair):
    _, model = tiny_pair
    with pytest.raises(ValueError, match=r"expected \(B, 3, H, W\)"):
        model(torch.randn(2, 4, 8, 8), 10)
    with pytest.raises(ValueError, match="expected height and width divisible by 2"):
        model(torch.randn(2, 3, 7, 8), 10)


def test_bad_timestep_batch(tiny_pair):
    _, model = tiny_pair
    with pytest.raises(ValueError, match="expected a number, a 0-d tensor or a 1-d tensor of length 2"):
        model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2, 3]))


def test_class_labels_checks():
    _, conditional = make_pair(dict(TINY, num_class_embeds=10))
    with pytest.raises(ValueError, match="class-conditional: expected class_labels"):
        conditional(torch.randn(2, 3, 8, 8), 10)
    _, unconditional = make_pair(TINY)
    with pytest.raises(ValueError, match="this model is unconditional"):
        unconditional(torch.randn(2, 3, 8, 8), 10, class_labels=torch.tensor([1, 2]))


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (dict(time_embedding_type="sincos"), ValueError, r"time_embedding_type 'sincos' is not supported"),
        (
            dict(resnet_time_scale_shift="spatial"),
            ValueError,
            r"expected one of \['default', 'scale_shift'\]",
        ),
        (dict(class_embed_type="projection"), ValueError, r"class_embed_type 'projection' is not supported"),
        (dict(act_fn="tanh"), ValueError, r"act_fn 'tanh' is not supported"),
        (dict(mid_block_type="UNetMidBlock2DCrossAttn"), ValueError, "mid_block_type"),
        (dict(downsample_type="fir"), ValueError, "downsample_type 'fir'"),
        (
            dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D")),
            NotImplementedError,
            "CrossAttnDownBlock2D",
        ),
        (
            dict(up_block_types=("SkipUpBlock2D", "UpBlock2D")),
            NotImplementedError,
            r"expected one of \['UpBlock2D'",
        ),
        (dict(block_out_channels=(8, 16, 32)), ValueError, "expected as many down_block_types"),
        (dict(norm_num_groups=3), ValueError, "8 channels cannot be split into 3 groups"),
        (dict(time_embedding_type="learned"), ValueError, "needs num_train_timesteps"),
        (
            dict(attention_head_dim=32, **ATTN2),
            ValueError,
            "attention_head_dim 32 is larger than the 16 channels",
        ),
    ],
)
def test_unsupported_config(overrides, error, match):
    with pytest.raises(error, match=match):
        UNet2DModel(**{**TINY, **overrides})


# ---- files: diffusers' folder format, both ways ------------------------------------------------------------
FILE_CONFIG, FILE_SIZE, FILE_COND = CONFIGS["class_embeds"]  # has attention blocks and a class embedding


@pytest.fixture()
def file_pair():
    reference, model = make_pair(FILE_CONFIG)
    return reference, model, make_inputs(FILE_CONFIG, FILE_SIZE, FILE_COND)


def run(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).sample


def test_diffusers_folder_loads_in_minidiff(tmp_path, file_pair):
    reference, _, inputs = file_pair
    reference.save_pretrained(tmp_path)  # config.json + diffusion_pytorch_model.safetensors
    model = UNet2DModel.from_pretrained(tmp_path)
    assert not model.training  # eval mode, as diffusers' from_pretrained
    assert rel_err(run(model, inputs), run(reference, inputs)) <= 1e-5  # fp32 parity, as above


def test_minidiff_folder_loads_in_diffusers(tmp_path, file_pair):
    reference, model, inputs = file_pair
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", WEIGHTS_NAME]  # no temp files left
    loaded = diffusers.UNet2DModel.from_pretrained(tmp_path)
    assert rel_err(run(loaded, inputs), run(reference, inputs)) <= 1e-5  # fp32 parity, as above


def test_subfolder_and_torch_dtype(tmp_path, file_pair):
    reference, _, _ = file_pair
    reference.save_pretrained(tmp_path / "unet")
    model = UNet2DModel.from_pretrained(tmp_path, subfolder="unet", torch_dtype=torch.bfloat16)
    expected = diffusers.UNet2DModel.from_pretrained(tmp_path, subfolder="unet", torch_dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    state, ref_state = model.state_dict(), expected.state_dict()
    assert state.keys() == ref_state.keys()
    assert all(torch.equal(state[k], ref_state[k]) and state[k].dtype == ref_state[k].dtype for k in state)


def test_old_attention_key_names(tmp_path, file_pair):
    """Checkpoints from before diffusers 0.14 call the projections query / key / value / proj_attn."""
    reference, model, inputs = file_pair
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, value in reference.state_dict().items():
        for new_name, old_name in old.items():
            key = key.replace(f".{new_name}.", f".{old_name}.")
        state[key] = value
    assert any(".proj_attn." in k for k in state) and not any(".to_q." in k for k in state)
    save_file(state, str(tmp_path / WEIGHTS_NAME))
    model.save_config(tmp_path)
    assert rel_err(run(UNet2DModel.from_pretrained(tmp_path), inputs), run(reference, inputs)) <= 1e-5


def test_pickle_checkpoint_loads_with_weights_only(tmp_path, file_pair):
    reference, model, inputs = file_pair
    torch.save(reference.state_dict(), tmp_path / PICKLE_WEIGHTS_NAME)
    model.save_config(tmp_path)
    assert rel_err(run(UNet2DModel.from_pretrained(tmp_path), inputs), run(reference, inputs)) <= 1e-5


class Payload:
    """A pickle that runs code when unpickled: writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_malicious_pickle_is_never_executed(tmp_path, file_pair):
    _, model, _ = file_pair
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(Payload(marker)))  # the payload is live: plain unpickling runs it ...
    assert marker.exists()
    marker.unlink()
    model.save_config(tmp_path)
    torch.save({"conv_in.weight": Payload(marker)}, tmp_path / PICKLE_WEIGHTS_NAME)
    with pytest.raises(OSError, match=r"weights_only=True"):
        UNet2DModel.from_pretrained(tmp_path)
    assert not marker.exists()  # ... but from_pretrained never ran it


def test_missing_files(tmp_path, file_pair):
    _, model, _ = file_pair
    with pytest.raises(FileNotFoundError, match="config.json"):
        UNet2DModel.from_pretrained(tmp_path)
    model.save_config(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"expected {WEIGHTS_NAME} or {PICKLE_WEIGHTS_NAME}"):
        UNet2DModel.from_pretrained(tmp_path)


def test_corrupt_safetensors(tmp_path, file_pair):
    _, model, _ = file_pair
    model.save_pretrained(tmp_path)
    path = tmp_path / WEIGHTS_NAME
    path.write_bytes(path.read_bytes()[:1000])  # truncated, as after an interrupted copy
    with pytest.raises(OSError, match=re.escape(str(path)) + " is not a valid safetensors file"):
        UNet2DModel.from_pretrained(tmp_path)


def test_weights_that_do_not_fit_the_config(tmp_path, file_pair):
    _, model, _ = file_pair
    model.save_pretrained(tmp_path)
    UNet2DModel(**{**FILE_CONFIG, "block_out_channels": (8, 8)}).save_config(tmp_path)
    with pytest.raises(ValueError, match="do not fit the UNet2DModel its config.json describes"):
        UNet2DModel.from_pretrained(tmp_path)
