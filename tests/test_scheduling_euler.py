"""EulerDiscreteScheduler and EulerAncestralDiscreteScheduler against diffusers' classes: whole trajectories
over the options (schedules, sigma spacings, prediction types, churn, seeded ancestral noise), errors,
configs. Same float32 / float64 ops in the same order, so every comparison is exact (torch.equal)."""

from __future__ import annotations

import itertools

import diffusers
import pytest
import torch

import minidiff

SHAPE = (2, 3, 4, 4)


def dummy_model(x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """A fixed smooth function of (x, t) standing in for the UNet."""
    return torch.sin(1.3 * x + 0.01 * torch.as_tensor(t, dtype=torch.float32)) * 0.9 + 0.1 * x


def trajectory(scheduler, dtype=torch.float32, **step_kwargs) -> torch.Tensor:
    """Every (prev_sample, pred_original_sample) of a sampling run from x_T = init_noise_sigma z, stacked."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    x = x.to(dtype)
    samples = []
    for t in scheduler.timesteps:
        model_output = dummy_model(scheduler.scale_model_input(x, t), t).to(dtype)
        x, x0 = scheduler.step(model_output, t, x, generator=generator, return_dict=False, **step_kwargs)
        samples += [x, x0.to(dtype)]
    return torch.stack(samples)


def both(name: str, config: dict, num_inference_steps=None, **set_kwargs):
    ours, theirs = getattr(minidiff, name)(**config), getattr(diffusers, name)(**config)
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(num_inference_steps, **set_kwargs)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    assert torch.equal(ours.sigmas, theirs.sigmas)
    assert torch.equal(ours.init_noise_sigma, theirs.init_noise_sigma)
    return ours, theirs


EULER_OPTIONS = [
    (*options, final)
    for options, final in zip(
        itertools.product(
            ["epsilon", "sample", "v_prediction"],
            ["linear", "log_linear"],
            ["default", "karras", "exponential", "beta"],
            ["linspace", "leading", "trailing"],
        ),
        itertools.cycle(["zero", "sigma_min", "sigma_min", "zero"]),  # both for every other option
    )
]


@pytest.mark.parametrize("prediction_type,interpolation,sigmas,spacing,final", EULER_OPTIONS)
def test_euler_trajectory_equals_diffusers(prediction_type, interpolation, sigmas, spacing, final):
    if sigmas == "beta":
        pytest.importorskip("scipy")
    config = dict(
        prediction_type=prediction_type,
        interpolation_type=interpolation,
        timestep_spacing=spacing,
        final_sigmas_type=final,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1 if spacing == "leading" else 0,
    )
    if sigmas != "default":
        config[f"use_{sigmas}_sigmas"] = True
    for num_inference_steps in (1, 25):
        ours, theirs = both("EulerDiscreteScheduler", config, num_inference_steps)
        assert torch.equal(trajectory(ours), trajectory(theirs))  # exact: same ops in the same order


@pytest.mark.parametrize(
    "config",
    [
        dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"),
        dict(timestep_type="continuous", prediction_type="v_prediction"),
        dict(use_karras_sigmas=True, sigma_min=0.02, sigma_max=700.0, beta_schedule="squaredcos_cap_v2"),
    ],
    ids=["zero-snr", "continuous", "karras-range"],
)
def test_euler_special_schedules_equal_diffusers(config):
    ours, theirs = both("EulerDiscreteScheduler", config, 12)
    assert torch.equal(trajectory(ours), trajectory(theirs))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_euler_churn_and_half_precision_equal_diffusers(prediction_type):
    """Algorithm 2's churn (seeded noise on the steps with sigma in [s_tmin, s_tmax]), float16 model output."""
    churn = dict(s_churn=4.0, s_tmin=0.5, s_tmax=8.0, s_noise=1.003)
    for dtype in (torch.float32, torch.float16):
        ours, theirs = both("EulerDiscreteScheduler", dict(prediction_type=prediction_type), 20)
        assert torch.equal(trajectory(ours, dtype, **churn), trajectory(theirs, dtype, **churn))


def test_euler_custom_timesteps_and_sigmas_equal_diffusers():
    reference = diffusers.EulerDiscreteScheduler(final_sigmas_type="sigma_min")
    reference.set_timesteps(15)
    config = dict(final_sigmas_type="sigma_min")
    for kwargs in (dict(timesteps=reference.timesteps), dict(sigmas=reference.sigmas)):
        ours, theirs = both("EulerDiscreteScheduler", config, **kwargs)
        assert ours.num_inference_steps == theirs.num_inference_steps == 15
        assert torch.equal(trajectory(ours), trajectory(theirs))


ANCESTRAL_OPTIONS = list(
    itertools.product(
        ["epsilon", "v_prediction"],
        ["linspace", "leading", "trailing"],
        [False, True],  # rescale_betas_zero_snr
        ["linear", "scaled_linear", "squaredcos_cap_v2"],
    )
)


@pytest.mark.parametrize("prediction_type,spacing,zero_snr,beta_schedule", ANCESTRAL_OPTIONS)
def test_ancestral_trajectory_equals_diffusers(prediction_type, spacing, zero_snr, beta_schedule):
    config = dict(
        prediction_type=prediction_type,
        timestep_spacing=spacing,
        rescale_betas_zero_snr=zero_snr,
        beta_schedule=beta_schedule,
        steps_offset=1 if spacing == "leading" else 0,
    )
    for num_inference_steps in (1, 30):
        ours, theirs = both("EulerAncestralDiscreteScheduler", config, num_inference_steps)
        assert torch.equal(trajectory(ours), trajectory(theirs))  # same generator, same draw order


def test_ancestral_half_precision_equals_diffusers():
    ours, theirs = both("EulerAncestralDiscreteScheduler", {}, 20)
    assert torch.equal(trajectory(ours, torch.float16), trajectory(theirs, torch.float16))


def test_ancestral_sample_prediction_is_the_model_output():
    """diffusers raises NotImplementedError for prediction_type='sample'; here x_0_hat is the model output."""
    scheduler = minidiff.EulerAncestralDiscreteScheduler(prediction_type="sample")
    scheduler.set_timesteps(5)
    x = torch.randn(SHAPE)
    t = scheduler.timesteps[0]
    model_output = torch.randn(SHAPE)
    out = scheduler.step(model_output, t, x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.pred_original_sample, model_output)


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"])
def test_begin_index_add_noise_and_step_index_equal_diffusers(name):
    """Image-to-image: add_noise at a later timestep, set_begin_index, then sample from there."""
    ours, theirs = both(name, dict(timestep_spacing="leading"), 10)
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = ours.timesteps[4:5]
    assert torch.equal(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))  # found by value
    for scheduler in (ours, theirs):
        scheduler.set_begin_index(4)
    assert torch.equal(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))  # at begin_index
    x_ours = x_theirs = ours.add_noise(x0, noise, t)
    g_ours, g_theirs = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for t in ours.timesteps[4:]:
        x_ours = ours.step(dummy_model(x_ours, t), t, x_ours, generator=g_ours).prev_sample
        x_theirs = theirs.step(dummy_model(x_theirs, t), t, x_theirs, generator=g_theirs).prev_sample
        assert ours.step_index == theirs.step_index
    assert ours.begin_index == theirs.begin_index == 4
    assert torch.equal(x_ours, x_theirs)


def test_get_velocity_is_the_v_target_at_the_timestep():
    """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 at the timestep's own alpha_bar (diffusers reads
    alphas_cumprod at the step index instead). Rounding: alpha_bar from sigma differs by a few float32 ulps."""
    scheduler = minidiff.EulerDiscreteScheduler(timestep_spacing="leading")
    scheduler.set_timesteps(10)
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = scheduler.timesteps[[1, 7]]
    alpha_bar = scheduler.alphas_cumprod[t.long()].reshape(-1, 1, 1, 1)
    expected = alpha_bar**0.5 * noise - (1 - alpha_bar) ** 0.5 * x0
    torch.testing.assert_close(scheduler.get_velocity(x0, noise, t), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"])
def test_config_round_trips_both_ways(name, tmp_path):
    config = dict(timestep_spacing="trailing", prediction_type="v_prediction", rescale_betas_zero_snr=True)
    if name == "EulerDiscreteScheduler":
        config.update(use_karras_sigmas=True, final_sigmas_type="sigma_min", interpolation_type="log_linear")
    getattr(minidiff, name)(**config).save_pretrained(tmp_path / "ours")
    loaded = getattr(diffusers, name).from_pretrained(tmp_path / "ours")
    assert {k: loaded.config[k] for k in config} == config
    getattr(diffusers, name)(**config).save_pretrained(tmp_path / "theirs")
    back = getattr(minidiff, name).from_pretrained(tmp_path / "theirs")
    assert {k: back.config[k] for k in config} == config
    back.set_timesteps(8)
    loaded.set_timesteps(8)
    assert torch.equal(trajectory(back), trajectory(loaded))


def test_from_config_between_schedulers_and_pipeline_folder(tmp_path):
    pndm = minidiff.PNDMScheduler(skip_prk_steps=True, beta_schedule="scaled_linear", steps_offset=1)
    euler = minidiff.EulerDiscreteScheduler.from_config(pndm.config)
    assert euler.config.beta_schedule == "scaled_linear" and euler.config.steps_offset == 1
    assert euler.config.timestep_spacing == "linspace"  # PNDM's default "leading" was not chosen: Euler's own
    ancestral = minidiff.EulerAncestralDiscreteScheduler.from_config(euler.config)
    assert minidiff.PNDMScheduler.from_config(ancestral.config).config.skip_prk_steps is True
    unet = minidiff.UNet2DModel(
        sample_size=8, block_out_channels=(8, 8), norm_num_groups=4, layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )  # fmt: skip
    minidiff.DDPMPipeline(unet, ancestral).save_pretrained(tmp_path / "pipe")
    pipe = minidiff.DDPMPipeline.from_pretrained(tmp_path / "pipe")
    assert type(pipe.scheduler) is minidiff.EulerAncestralDiscreteScheduler
    assert type(diffusers.DDPMPipeline.from_pretrained(tmp_path / "pipe").scheduler).__name__ == (
        "EulerAncestralDiscreteScheduler"
    )


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="Only one of .*use_karras_sigmas"):
        minidiff.EulerDiscreteScheduler(use_karras_sigmas=True, use_exponential_sigmas=True)
    for key, value in [
        ("interpolation_type", "cubic"),
        ("timestep_type", "fractional"),
        ("final_sigmas_type", "one"),
        ("prediction_type", "x0"),
        ("beta_schedule", "sigmoid"),
    ]:
        with pytest.raises(ValueError, match=f"{key} '{value}' is not supported"):
            minidiff.EulerDiscreteScheduler(**{key: value})
    scheduler = minidiff.EulerDiscreteScheduler(use_karras_sigmas=True)
    with pytest.raises(ValueError, match="Cannot set `timesteps` with `config.use_karras_sigmas = True`"):
        scheduler.set_timesteps(timesteps=[999, 500, 0])
    with pytest.raises(ValueError, match="exactly one of"):
        scheduler.set_timesteps(10, timesteps=[999, 500])
    with pytest.raises(ValueError, match="num_inference_steps 0 is out of range"):
        scheduler.set_timesteps(0)
    with pytest.raises(ValueError, match="sigmas must be"):
        scheduler.set_timesteps(sigmas=[3.0])
    scheduler.set_timesteps(3)
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="timestep 3.5 is not in scheduler.timesteps"):
        scheduler.step(x, 3.5, x)
    for t in scheduler.timesteps:
        x = scheduler.step(x, t, x).prev_sample
    with pytest.raises(ValueError, match="all 3 steps of the schedule are done"):
        scheduler.step(x, 0, x)  # e.g. a second loop over the timesteps without set_timesteps
    ancestral = minidiff.EulerAncestralDiscreteScheduler(timestep_spacing="leading")
    with pytest.raises(ValueError, match="num_inference_steps 1001 is out of range"):
        ancestral.set_timesteps(1001)  # leading spacing would repeat timestep 0 (diffusers: silently)
    minidiff.EulerAncestralDiscreteScheduler().set_timesteps(1001)  # linspace: fractional timesteps, fine
