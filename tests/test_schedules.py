"""Beta tables, inference timesteps, add_noise / get_velocity: bit-equal to diffusers in the same process."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from diffusers.schedulers import scheduling_ddpm as diffusers_ddpm
from diffusers.utils.torch_utils import randn_tensor as diffusers_randn_tensor
from hypothesis import given, settings
from hypothesis import strategies as st

import minidiff
from minidiff.schedulers import schedules, scheduling_utils

DDPM_SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"]
DDIM_SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2"]
PAIRS = [(minidiff.DDPMScheduler, diffusers.DDPMScheduler), (minidiff.DDIMScheduler, diffusers.DDIMScheduler)]


def assert_same_tables(ours, theirs):
    for name in ("betas", "alphas", "alphas_cumprod"):
        assert getattr(ours, name).dtype == torch.float32
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name


# ---- beta tables ---------------------------------------------------------------------------------
@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("beta_schedule", DDPM_SCHEDULES)
@pytest.mark.parametrize("num_train_timesteps", [1000, 37])
def test_ddpm_tables_equal_diffusers(beta_schedule, rescale, num_train_timesteps):
    kw = dict(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        beta_start=0.00085,
        beta_end=0.012,
        rescale_betas_zero_snr=rescale,
    )
    assert_same_tables(minidiff.DDPMScheduler(**kw), diffusers.DDPMScheduler(**kw))


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("beta_schedule", DDIM_SCHEDULES)
def test_ddim_tables_equal_diffusers(beta_schedule, rescale):
    kw = dict(beta_schedule=beta_schedule, rescale_betas_zero_snr=rescale, set_alpha_to_one=False)
    ours, theirs = minidiff.DDIMScheduler(**kw), diffusers.DDIMScheduler(**kw)
    assert_same_tables(ours, theirs)
    assert torch.equal(ours.final_alpha_cumprod, theirs.final_alpha_cumprod)


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("ours_cls, theirs_cls", PAIRS)
def test_trained_betas_equal_diffusers(ours_cls, theirs_cls, rescale):
    trained = np.linspace(1e-4, 0.03, 50) ** 1.5  # float64 list, cast to float32 by both
    kw = dict(num_train_timesteps=50, trained_betas=trained.tolist(), rescale_betas_zero_snr=rescale)
    assert_same_tables(ours_cls(**kw), theirs_cls(**kw))


@pytest.mark.parametrize("kind", ["cosine", "exp", "laplace"])
def test_betas_for_alpha_bar_equal_diffusers(kind):
    for T in (1, 10, 1000):
        ours = schedules.betas_for_alpha_bar(T, alpha_transform_type=kind)
        assert torch.equal(ours, diffusers_ddpm.betas_for_alpha_bar(T, alpha_transform_type=kind))
    with pytest.raises(ValueError, match=r"alpha_transform_type 'sqrt' is not supported; expected one of"):
        schedules.betas_for_alpha_bar(10, alpha_transform_type="sqrt")


def test_rescale_zero_terminal_snr_reaches_zero_snr():
    betas = schedules.scaled_linear_betas(1000, 0.00085, 0.012)
    rescaled = schedules.rescale_zero_terminal_snr(betas)
    assert torch.equal(rescaled, diffusers_ddpm.rescale_zero_terminal_snr(betas.clone()))
    alphas_cumprod = torch.cumprod(1 - rescaled, 0)
    assert alphas_cumprod[-1] == 0  # terminal SNR alpha_bar / (1 - alpha_bar) is exactly 0
    assert torch.equal(alphas_cumprod[0], torch.cumprod(1 - betas, 0)[0])  # first step kept


# ---- inference timesteps -------------------------------------------------------------------------
@pytest.mark.parametrize("steps_offset", [0, 1])
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("ours_cls, theirs_cls", PAIRS)
def test_set_timesteps_equal_diffusers(ours_cls, theirs_cls, spacing, steps_offset):
    ours = ours_cls(timestep_spacing=spacing, steps_offset=steps_offset)
    theirs = theirs_cls(timestep_spacing=spacing, steps_offset=steps_offset)
    assert torch.equal(ours.timesteps, theirs.timesteps)  # before set_timesteps: T-1 .. 0
    for n in (1, 7, 50, 999, 1000):
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        assert ours.timesteps.dtype == torch.int64
        assert torch.equal(ours.timesteps, theirs.timesteps), (n, spacing, steps_offset)
        assert ours.num_inference_steps == theirs.num_inference_steps == n


def test_custom_timesteps_equal_diffusers():
    ours, theirs = minidiff.DDPMScheduler(), diffusers.DDPMScheduler()
    for custom in ([999, 500, 10, 0], [17], [800, 799, 3]):
        ours.set_timesteps(timesteps=custom)
        theirs.set_timesteps(timesteps=custom)
        assert torch.equal(ours.timesteps, theirs.timesteps)
        assert ours.custom_timesteps and theirs.custom_timesteps
        for t in custom:  # the prev-table gives what diffusers finds with nonzero()
            assert ours.previous_timestep(torch.tensor(t)) == theirs.previous_timestep(torch.tensor(t))


@pytest.mark.parametrize("ours_cls, theirs_cls", PAIRS)
def test_set_timesteps_rejects_what_diffusers_rejects(ours_cls, theirs_cls):
    for n in (0, 1001):
        with pytest.raises(Exception):
            theirs_cls().set_timesteps(n)
        with pytest.raises(
            ValueError, match=rf"num_inference_steps {n} is out of range; expected an int in 1\.\.1000"
        ):
            ours_cls().set_timesteps(n)
    with pytest.raises(ValueError, match=r"num_inference_steps 2\.5 is out of range"):
        ours_cls().set_timesteps(2.5)


def test_custom_timesteps_rejected_like_diffusers():
    bad = {
        "not descending": ([10, 20, 5], r"must be in descending order"),
        "repeated": ([10, 10, 5], r"must be in descending order"),
        "start at T": ([1000, 5], r"must lie in \[0, 1000\)"),
    }
    for custom, match in bad.values():
        with pytest.raises(ValueError):
            diffusers.DDPMScheduler().set_timesteps(timesteps=custom)
        with pytest.raises(ValueError, match=match):
            minidiff.DDPMScheduler().set_timesteps(timesteps=custom)
    with pytest.raises(ValueError, match=r"Can only pass one of"):
        diffusers.DDPMScheduler().set_timesteps(10, timesteps=[5, 1])
    with pytest.raises(ValueError, match=r"Can only pass one of"):
        minidiff.DDPMScheduler().set_timesteps(10, timesteps=[5, 1])
    # diffusers accepts these and fails later (index errors); minidiff says why up front
    for custom, match in (
        ([5, -1], r"must lie in \[0, 1000\)"),
        ([], r"non-empty"),
        ([5.0, 1.0], r"list of ints"),
    ):
        with pytest.raises(ValueError, match=match):
            minidiff.DDPMScheduler().set_timesteps(timesteps=custom)
    with pytest.raises(ValueError, match=r"needs `num_inference_steps` or `timesteps`"):
        minidiff.DDPMScheduler().set_timesteps()


@pytest.mark.parametrize("ours_cls, theirs_cls", PAIRS)
def test_unknown_options_rejected_with_allowed_values(ours_cls, theirs_cls):
    # beta_schedule: diffusers raises NotImplementedError at construction
    with pytest.raises(NotImplementedError):
        theirs_cls(beta_schedule="cosine")
    with pytest.raises(
        ValueError, match=r"beta_schedule 'cosine' is not supported; expected one of \['linear'"
    ):
        ours_cls(beta_schedule="cosine")
    # timestep_spacing: diffusers raises in set_timesteps, minidiff at construction
    with pytest.raises(ValueError):
        theirs_cls(timestep_spacing="uniform").set_timesteps(10)
    with pytest.raises(ValueError, match=r"timestep_spacing 'uniform' is not supported; expected one of \["):
        ours_cls(timestep_spacing="uniform")
    # prediction_type: diffusers raises in step, minidiff at construction
    theirs = theirs_cls(prediction_type="x0")
    theirs.set_timesteps(10)
    with pytest.raises(ValueError):
        theirs.step(torch.zeros(1, 1, 2, 2), theirs.timesteps[0], torch.zeros(1, 1, 2, 2))
    with pytest.raises(
        ValueError, match=r"prediction_type 'x0' is not supported; expected one of \['epsilon'"
    ):
        ours_cls(prediction_type="x0")
    with pytest.raises(ValueError, match=r"trained_betas has shape \(3,\); expected \(1000,\)"):
        ours_cls(trained_betas=[0.1, 0.2, 0.3])


def test_ddim_rejects_schedules_diffusers_ddim_rejects():
    for name in ("sigmoid", "laplace"):
        with pytest.raises(NotImplementedError):
            diffusers.DDIMScheduler(beta_schedule=name)
        with pytest.raises(ValueError, match=rf"beta_schedule '{name}' is not supported; expected one of"):
            minidiff.DDIMScheduler(beta_schedule=name)


# ---- the forward process -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("ours_cls, theirs_cls", PAIRS)
def test_add_noise_and_velocity_equal_diffusers(ours_cls, theirs_cls, dtype):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 8, 8, generator=g).to(dtype)
    noise = torch.randn(6, 3, 8, 8, generator=g).to(dtype)
    timesteps = torch.tensor([0, 1, 250, 500, 998, 999])
    for kw in ({}, {"beta_schedule": "squaredcos_cap_v2", "rescale_betas_zero_snr": True}):
        ours, theirs = ours_cls(**kw), theirs_cls(**kw)
        for _ in range(2):  # the second call uses minidiff's cached (device, dtype) table
            noisy = ours.add_noise(x0, noise, timesteps)
            assert noisy.dtype == dtype
            assert torch.equal(noisy, theirs.add_noise(x0, noise, timesteps))
            assert torch.equal(
                ours.get_velocity(x0, noise, timesteps), theirs.get_velocity(x0, noise, timesteps)
            )
    # a 0-d timestep broadcasts over the batch, as in diffusers
    t = torch.tensor(321)
    assert torch.equal(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))


def test_add_noise_rejects_bad_timesteps():
    sched = minidiff.DDPMScheduler()
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"timesteps \[5, 1000\] are out of range; expected 0 <= t < 1000"):
        sched.add_noise(x, x, torch.tensor([5, 1000]))
    with pytest.raises(ValueError, match=r"timesteps must be an integer tensor, got dtype torch.float32"):
        sched.add_noise(x, x, torch.tensor([5.0, 1.0]))


def test_randn_tensor_matches_diffusers():
    def one():
        return torch.Generator().manual_seed(3)

    def per_sample():
        return [torch.Generator().manual_seed(s) for s in range(4)]

    cpu = torch.device("cpu")
    for make in (one, per_sample):
        ours = scheduling_utils.randn_tensor((4, 3, 5, 5), make(), cpu, torch.float16)
        assert torch.equal(
            ours, diffusers_randn_tensor((4, 3, 5, 5), generator=make(), device=cpu, dtype=torch.float16)
        )
    with pytest.raises(ValueError, match=r"got 3 generators for a batch of 4"):
        scheduling_utils.randn_tensor((4, 3), per_sample()[:3], cpu, torch.float32)


# ---- one property test over configs --------------------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(
    beta_schedule=st.sampled_from(DDPM_SCHEDULES),
    prediction_type=st.sampled_from(["epsilon", "sample", "v_prediction"]),
    variance_type=st.sampled_from(["fixed_small", "fixed_small_log", "fixed_large", "learned_range"]),
    timestep_spacing=st.sampled_from(["leading", "linspace", "trailing"]),
    clip_sample=st.booleans(),
    thresholding=st.booleans(),
    rescale=st.booleans(),
    num_inference_steps=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_property_add_noise_and_step_equal_diffusers(
    beta_schedule, prediction_type, variance_type, timestep_spacing, clip_sample, thresholding, rescale,
    num_inference_steps, seed,
):  # fmt: skip
    kw = dict(
        num_train_timesteps=40, beta_schedule=beta_schedule, prediction_type=prediction_type,
        variance_type=variance_type, timestep_spacing=timestep_spacing, clip_sample=clip_sample,
        thresholding=thresholding, sample_max_value=2.0, rescale_betas_zero_snr=rescale,
    )  # fmt: skip
    ours, theirs = minidiff.DDPMScheduler(**kw), diffusers.DDPMScheduler(**kw)
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(2, 2, 4, 4, generator=g), torch.randn(2, 2, 4, 4, generator=g)
    timesteps = torch.randint(0, 40, (2,), generator=g)
    assert torch.equal(ours.add_noise(x0, noise, timesteps), theirs.add_noise(x0, noise, timesteps))
    ours.set_timesteps(num_inference_steps)
    theirs.set_timesteps(num_inference_steps)
    channels = 4 if variance_type == "learned_range" else 2
    model_output = torch.randn(2, channels, 4, 4, generator=g)
    for t in theirs.timesteps[:3]:
        out_ours = ours.step(model_output, t, x0, generator=torch.Generator().manual_seed(seed))
        out_theirs = theirs.step(model_output, t, x0, generator=torch.Generator().manual_seed(seed))
        # rescaled zero-SNR schedules divide by alpha_bar = 0 at t = T-1 with epsilon: both give the same inf/nan
        assert torch.equal(out_ours.prev_sample.nan_to_num(), out_theirs.prev_sample.nan_to_num())
        assert torch.equal(
            out_ours.pred_original_sample.nan_to_num(), out_theirs.pred_original_sample.nan_to_num()
        )
