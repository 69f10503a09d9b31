"""The diffusers API that scripts and notebooks touch, side by side with diffusers: config values as attributes
(with diffusers' FutureWarning), reprs, config bookkeeping, output objects, `_get_variance`, the model API
(`num_parameters`, `dtype`, `device`, gradient checkpointing) and `make_image_grid`."""

from __future__ import annotations

import warnings

import diffusers
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.utils import make_image_grid as diffusers_make_image_grid
from PIL import Image
from test_unet import CONFIGS, make_inputs

import minidiff
from minidiff.configuration import ConfigMixin, register_to_config
from minidiff.utils import make_image_grid

UNET = CONFIGS["class_embeds"][0]  # attention, class embedding table: every kind of parameter


def comparable(config) -> dict:
    """A config as a plain dict, `_use_default_values` sorted (diffusers lists it in set order)."""
    config = dict(config)
    if "_use_default_values" in config:
        config["_use_default_values"] = sorted(config["_use_default_values"])
    return config


def access(obj, name: str):
    """(value or the AttributeError's message, [FutureWarning messages]) of `obj.<name>`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = getattr(obj, name)
        except AttributeError as err:
            value = f"AttributeError: {err}"
    return value, [str(w.message) for w in caught if w.category is FutureWarning]


def pairs():
    """(minidiff object, diffusers object) built with the same keywords."""
    kwargs = dict(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2")
    yield minidiff.DDPMScheduler(**kwargs), diffusers.DDPMScheduler(**kwargs)
    yield minidiff.DDIMScheduler(**kwargs), diffusers.DDIMScheduler(**kwargs)
    torch.manual_seed(0)
    theirs = diffusers.UNet2DModel(**UNET)
    torch.manual_seed(0)
    yield minidiff.UNet2DModel(**UNET), theirs


# ---- configs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("index", [0, 1, 2], ids=["ddpm", "ddim", "unet"])
def test_config_values_as_attributes_warn_where_diffusers_warns(index):
    ours, theirs = list(pairs())[index]
    assert comparable(ours.config) == comparable(theirs.config)  # `_use_default_values` included
    names = [*theirs.config, "does_not_exist", "timesteps", "variance_type", "sample_size", "dtype"]
    for name in names:
        if name in ("timesteps",) and isinstance(ours, torch.nn.Module):
            continue
        value, warned = access(ours, name)
        expected_value, expected_warned = access(theirs, name)
        assert warned == expected_warned, name  # the same FutureWarning, word for word, or none
        if name in theirs.config:
            assert value == expected_value or comparable({name: value}) == comparable({name: expected_value})
        elif isinstance(expected_value, str) and expected_value.startswith("AttributeError"):
            assert value == expected_value  # "'DDPMScheduler' object has no attribute 'does_not_exist'"


def test_scheduler_and_pipeline_reprs_are_diffusers():
    for ours, theirs in list(pairs())[:2]:
        assert repr(ours) == repr(theirs)  # "DDPMScheduler {\n  "_class_name": ... }\n"
    unet, their_unet = list(pairs())[2]
    ours = minidiff.DDPMPipeline(unet=unet, scheduler=minidiff.DDPMScheduler())
    theirs = diffusers.DDPMPipeline(unet=their_unet, scheduler=diffusers.DDPMScheduler())
    assert repr(ours) == repr(theirs)
    # a model shows its layers (nn.Module's repr), as in diffusers
    assert repr(unet).startswith("UNet2DModel(\n  (conv_in): Conv2d(3, 8, kernel_size=(3, 3)")


def test_register_to_config_adds_keys_and_records_defaults():
    class Toy(ConfigMixin):
        @register_to_config
        def __init__(self, steps: int = 10, scale: float = 1.0):
            pass

    toy = Toy(3)  # positional arguments are named too
    assert dict(toy.config) == {"steps": 3, "scale": 1.0, "_use_default_values": ["scale"]}
    toy.register_to_config(extra=5)  # diffusers' method: adds to the config
    assert toy.config.extra == 5 and toy.config.steps == 3
    with pytest.raises(TypeError, match="unexpected keyword argument 'stepz'"):
        Toy(stepz=3)


# ---- outputs ------------------------------------------------------------------------------------------------
def test_outputs_behave_like_diffusers_base_output():
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    outs = []
    for library in (minidiff, diffusers):
        scheduler = library.DDPMScheduler(num_train_timesteps=10)
        outs.append(scheduler.step(0.1 * x, 5, x, generator=torch.Generator().manual_seed(1)))
    ours, theirs = outs
    assert list(ours.keys()) == list(theirs.keys()) == ["prev_sample", "pred_original_sample"]
    assert list(ours) == list(theirs)  # iterating a BaseOutput gives its keys: it is a dict
    assert len(ours) == len(theirs) == 2 and isinstance(ours, dict)
    for key, value in ours.items():
        assert torch.equal(value, theirs[key]) and value is ours[key] and value is getattr(ours, key)
    assert all(torch.equal(a, b) for a, b in zip(ours.values(), theirs.values()))
    assert ours[0] is ours.prev_sample and ours[1] is ours.pred_original_sample
    assert [t.shape for t in ours.to_tuple()] == [t.shape for t in theirs.to_tuple()]
    # a None field is no key, and the tuple skips it
    partial = minidiff.outputs.SchedulerOutput(prev_sample=x)
    assert list(partial.keys()) == ["prev_sample"] and len(partial.to_tuple()) == 1
    with pytest.raises(KeyError):
        partial["pred_original_sample"]
    partial.prev_sample = 2 * x  # attribute and item stay in step
    assert partial["prev_sample"] is partial.prev_sample


# ---- _get_variance ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "variance_type",
    ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"],
)
def test_ddpm_get_variance_matches_diffusers(variance_type):
    predicted = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ours = minidiff.DDPMScheduler(variance_type=variance_type)
    theirs = diffusers.DDPMScheduler(variance_type=variance_type)
    for inference_steps in (None, 25):
        if inference_steps:
            ours.set_timesteps(inference_steps)
            theirs.set_timesteps(inference_steps)
        for t in theirs.timesteps[[0, 1, 10, -2, -1]].tolist():
            expected = theirs._get_variance(t, predicted_variance=predicted)
            assert torch.equal(ours._get_variance(t, predicted_variance=predicted), expected), t


def test_ddim_get_variance_matches_diffusers():
    for set_alpha_to_one in (True, False):
        ours = minidiff.DDIMScheduler(set_alpha_to_one=set_alpha_to_one)
        theirs = diffusers.DDIMScheduler(set_alpha_to_one=set_alpha_to_one)
        for t, prev in ((0, -20), (420, 400), (999, 979), (487, 486), (5, -1)):
            assert torch.equal(ours._get_variance(t, prev), theirs._get_variance(t, prev))


# ---- the model API ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["class_embeds", "fourier", "learned", "class_timestep"])
def test_num_parameters_dtype_device_match_diffusers(name):
    config = CONFIGS[name][0]
    torch.manual_seed(0)
    theirs = diffusers.UNet2DModel(**config)
    ours = minidiff.UNet2DModel(**config)
    for model in (ours, theirs):
        model.conv_in.requires_grad_(False)  # some frozen weights (fourier has a frozen time_proj already)
    for only_trainable in (False, True):
        for exclude_embeddings in (False, True):
            kwargs = dict(only_trainable=only_trainable, exclude_embeddings=exclude_embeddings)
            assert ours.num_parameters(**kwargs) == theirs.num_parameters(**kwargs), kwargs
    for model in (ours, theirs):
        model.to(torch.float64)
    assert (ours.dtype, ours.device) == (theirs.dtype, theirs.device) == (torch.float64, torch.device("cpu"))


@pytest.mark.parametrize("name", ["tutorial", "resnet_resample", "dropout_mid_scale"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    config, size, cond = CONFIGS[name]
    torch.manual_seed(0)
    model = minidiff.UNet2DModel(**config).train()  # train(): dropout on, where the config has some
    inputs = make_inputs(config, size, cond)
    target = torch.randn_like(inputs["sample"])

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks; checkpointing replays the RNG state it saw
        F.mse_loss(model(**inputs).sample, target).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = gradients()
    assert not model.is_gradient_checkpointing
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    checkpointed = gradients()
    # recomputing the same ops on the same inputs gives the same activations: bit-identical gradients
    assert [n for n in plain if not torch.equal(plain[n], checkpointed[n])] == []
    with torch.no_grad():  # without autograd there is nothing to checkpoint: the plain forward runs
        assert torch.equal(model.eval()(**inputs).sample, model(**inputs).sample)
    model.disable_gradient_checkpointing()
    assert not model.is_gradient_checkpointing


def test_gradient_checkpointing_flags_match_diffusers():
    ours, theirs = list(pairs())[2]
    for model in (ours, theirs):
        model.enable_gradient_checkpointing()
    assert ours.is_gradient_checkpointing and theirs.is_gradient_checkpointing
    # the same blocks carry the flag (diffusers' down, mid and up blocks)
    flagged = [
        {n for n, m in model.named_modules() if getattr(m, "gradient_checkpointing", False)}
        for model in (ours, theirs)
    ]
    assert flagged[0] == flagged[1] - {""}  # diffusers' UNet2DModel flags itself too

    class Plain(minidiff.ModelMixin):
        pass

    with pytest.raises(ValueError, match="Plain does not support gradient checkpointing"):
        Plain().enable_gradient_checkpointing()


# ---- make_image_grid ----------------------------------------------------------------------------------------
def test_make_image_grid_is_diffusers():
    g = np.random.default_rng(0)
    images = [Image.fromarray(g.integers(0, 256, (6, 4, 3), dtype=np.uint8)) for _ in range(6)]
    images[1] = images[1].convert("L")  # a greyscale image lands on the RGB canvas too
    for kwargs in (dict(rows=2, cols=3), dict(rows=3, cols=2, resize=5), dict(rows=1, cols=6)):
        ours, theirs = make_image_grid(images, **kwargs), diffusers_make_image_grid(images, **kwargs)
        assert ours.mode == theirs.mode and ours.size == theirs.size
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    assert minidiff.make_image_grid is make_image_grid
    with pytest.raises(ValueError, match="got 6 images for rows=2 x cols=2; expected 4"):
        make_image_grid(images, rows=2, cols=2)  # diffusers: a bare AssertionError
