"""PNDMScheduler against diffusers' PNDMScheduler: whole trajectories (PRK + PLMS and PLMS alone), errors,
configs. Same float32 ops in the same order, so every comparison is exact (torch.equal)."""

from __future__ import annotations

import itertools

import diffusers
import pytest
import torch

import minidiff

SHAPE = (2, 3, 4, 4)


def dummy_model(x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    """A fixed smooth function of (x, t) standing in for the UNet."""
    return torch.sin(1.3 * x + 0.01 * torch.as_tensor(t, dtype=torch.float32)) * 0.9 + 0.1 * x


def trajectory(scheduler, num_inference_steps: int, dtype=torch.float32) -> torch.Tensor:
    """Every prev_sample of a sampling run, stacked."""
    scheduler.set_timesteps(num_inference_steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(dtype)
    samples = []
    for t in scheduler.timesteps:
        x = scheduler.step(dummy_model(scheduler.scale_model_input(x, t), t).to(dtype), t, x).prev_sample
        samples.append(x)
    return torch.stack(samples)


OPTIONS = list(
    itertools.product(
        [False, True],  # skip_prk_steps
        [False, True],  # set_alpha_to_one
        ["epsilon", "v_prediction"],
        ["leading", "linspace", "trailing"],
    )
)


@pytest.mark.parametrize("num_inference_steps", [4, 10, 50])
@pytest.mark.parametrize("skip_prk_steps,set_alpha_to_one,prediction_type,timestep_spacing", OPTIONS)
def test_trajectory_equals_diffusers(
    skip_prk_steps, set_alpha_to_one, prediction_type, timestep_spacing, num_inference_steps
):
    config = dict(
        skip_prk_steps=skip_prk_steps,
        set_alpha_to_one=set_alpha_to_one,
        prediction_type=prediction_type,
        timestep_spacing=timestep_spacing,
        steps_offset=1 if timestep_spacing == "leading" else 0,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
    )
    ours, theirs = minidiff.PNDMScheduler(**config), diffusers.PNDMScheduler(**config)
    x_ours, x_theirs = trajectory(ours, num_inference_steps), trajectory(theirs, num_inference_steps)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    assert torch.equal(x_ours, x_theirs)  # exact: same float32 ops in the same order
    assert torch.isfinite(x_ours).all()


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_one_step_plms_and_half_precision_equal_diffusers(beta_schedule):
    config = dict(skip_prk_steps=True, beta_schedule=beta_schedule)
    for n, dtype in [(1, torch.float32), (20, torch.float16)]:
        ours, theirs = minidiff.PNDMScheduler(**config), diffusers.PNDMScheduler(**config)
        assert torch.equal(trajectory(ours, n, dtype), trajectory(theirs, n, dtype))


def test_device_side_timestep_uses_the_schedule():
    """A timestep the step cannot read without a sync is taken from the call's place in the schedule: the
    result equals passing host timesteps (a 'meta' tensor stands in for a device tensor here)."""
    ours, reference = minidiff.PNDMScheduler(), minidiff.PNDMScheduler()
    for s in (ours, reference):
        s.set_timesteps(10)
    x = y = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    for t in reference.timesteps:
        model_output = dummy_model(x, t)
        x = reference.step(model_output, t, x).prev_sample
        y = ours.step(model_output, torch.empty((), dtype=torch.int64, device="meta"), y).prev_sample
        assert torch.equal(x, y)


def test_add_noise_equals_diffusers():
    ours, theirs = minidiff.PNDMScheduler(), diffusers.PNDMScheduler()
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = torch.tensor([999, 500])
    assert torch.equal(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))


def test_config_round_trips_both_ways(tmp_path):
    config = dict(skip_prk_steps=True, steps_offset=1, beta_schedule="scaled_linear", set_alpha_to_one=False)
    minidiff.PNDMScheduler(**config).save_pretrained(tmp_path / "ours")
    loaded = diffusers.PNDMScheduler.from_pretrained(tmp_path / "ours")
    assert {k: loaded.config[k] for k in config} == config
    diffusers.PNDMScheduler(**config).save_pretrained(tmp_path / "theirs")
    back = minidiff.PNDMScheduler.from_pretrained(tmp_path / "theirs")
    assert {k: back.config[k] for k in config} == config
    assert torch.equal(trajectory(back, 10), trajectory(loaded, 10))


def test_from_config_between_compatible_schedulers():
    pndm = minidiff.PNDMScheduler(skip_prk_steps=True, beta_schedule="scaled_linear")
    ddim = minidiff.DDIMScheduler.from_config(pndm.config)
    assert ddim.config.beta_schedule == "scaled_linear"
    again = minidiff.PNDMScheduler.from_config(ddim.config)
    assert again.config.skip_prk_steps is True  # kept through DDIM, as in diffusers
    assert minidiff.PNDMScheduler in ddim.compatibles and minidiff.DDIMScheduler in pndm.compatibles


def test_bad_input_is_refused():
    scheduler = minidiff.PNDMScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(torch.zeros(SHAPE), 999, torch.zeros(SHAPE))
    for n in (1, 3, 501):  # the PRK warm-up needs 4..T // 2 steps (diffusers: a numpy error, or no progress)
        with pytest.raises(ValueError, match=f"num_inference_steps {n} .*4..500.*skip_prk_steps"):
            scheduler.set_timesteps(n)
    minidiff.PNDMScheduler(skip_prk_steps=True).set_timesteps(1)  # PLMS alone can do 1
    with pytest.raises(ValueError, match="prediction_type 'sample' is not supported"):
        minidiff.PNDMScheduler(prediction_type="sample")  # diffusers refuses it at the first step
    with pytest.raises(ValueError, match="beta_schedule 'sigmoid' is not supported"):
        minidiff.PNDMScheduler(beta_schedule="sigmoid")
    scheduler.set_timesteps(4)
    x = torch.zeros(SHAPE)
    for t in scheduler.timesteps:
        x = scheduler.step(x, t, x).prev_sample
    with pytest.raises(ValueError, match="all 13 steps of the schedule are done"):
        scheduler.step(x, 0, x)
