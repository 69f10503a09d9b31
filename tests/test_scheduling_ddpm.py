"""DDPMScheduler against diffusers' DDPMScheduler: whole trajectories, errors, configs, no host syncs."""

from __future__ import annotations

import itertools

import diffusers
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import minidiff

PREDICTION_TYPES = ["epsilon", "sample", "v_prediction"]
VARIANCE_TYPES = ["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"]
CLIPPING = [dict(clip_sample=True), dict(clip_sample=False), dict(thresholding=True, sample_max_value=1.5)]
SHAPE = (2, 3, 8, 8)


def dummy_model(x: torch.Tensor, t: torch.Tensor | int, variance_type: str) -> torch.Tensor:
    """A fixed smooth function of (x, t); learned variances get 2C channels like improved DDPM's UNet."""
    t = torch.as_tensor(t, dtype=torch.float32)
    out = torch.sin(1.3 * x + 0.01 * t) * 0.9 + 0.1 * x
    if variance_type == "learned":  # the model outputs sigma^2 itself: keep it positive and small
        return torch.cat([out, 1e-3 * (1.1 + torch.cos(x + 0.002 * t))], dim=1)
    if variance_type == "learned_range":  # v in [-1, 1], interpolating log beta_tilde .. log beta
        return torch.cat([out, torch.tanh(0.7 * x - 0.2)], dim=1)
    return out


def run_both(config: dict, num_inference_steps: int | None, theirs_config: dict | None = None, seed: int = 0):
    """Sample with both schedulers from the same x_T and equally seeded generators; return final samples."""
    ours = minidiff.DDPMScheduler(**config)
    theirs = diffusers.DDPMScheduler(**(theirs_config or config))
    if num_inference_steps is not None:
        ours.set_timesteps(num_inference_steps)
        theirs.set_timesteps(num_inference_steps)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    x_ours = x_theirs = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    gen_ours, gen_theirs = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
    variance_type = config.get("variance_type", "fixed_small")
    max_x0_error = 0.0
    for t in theirs.timesteps:
        out_ours = ours.step(dummy_model(x_ours, t, variance_type), t, x_ours, generator=gen_ours)
        out_theirs = theirs.step(dummy_model(x_theirs, t, variance_type), t, x_theirs, generator=gen_theirs)
        x0_diff = (out_ours.pred_original_sample - out_theirs.pred_original_sample).abs().max()
        max_x0_error = max(max_x0_error, float(x0_diff))
        x_ours, x_theirs = out_ours.prev_sample, out_theirs.prev_sample
    # the same number of draws in the same order leaves both generators in the same state
    assert torch.equal(gen_ours.get_state(), gen_theirs.get_state())
    return x_ours, x_theirs, max_x0_error


# ---- trajectories --------------------------------------------------------------------------------
@pytest.mark.parametrize("clipping", CLIPPING, ids=["clip", "noclip", "threshold"])
@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_50_step_trajectory_equals_diffusers(prediction_type, variance_type, clipping):
    config = dict(prediction_type=prediction_type, variance_type=variance_type, **clipping)
    ours, theirs, x0_error = run_both(config, 50)
    # Exact (atol=0), stricter than the 1e-6: every coefficient is computed in float32 with
    # diffusers' ops in diffusers' order (log/exp/sqrt go through the same kernels for 1 or T elements)
    # and applied in its operand order. A single reordered division already moves x_0 by ~6e-6 here.
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert x0_error == 0
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize(
    "prediction_type, variance_type",
    list(itertools.product(PREDICTION_TYPES, VARIANCE_TYPES)),
)
def test_1000_step_trajectory_equals_diffusers(prediction_type, variance_type):
    config = dict(prediction_type=prediction_type, variance_type=variance_type)
    ours, theirs, x0_error = run_both(config, None)  # no set_timesteps: every t, t' = t - 1
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)  # exact, as above
    assert x0_error == 0


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
def test_spacings_offsets_and_schedules_trajectories(spacing):
    for extra in (dict(steps_offset=1), dict(beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True)):
        config = dict(timestep_spacing=spacing, prediction_type="v_prediction", **extra)
        ours, theirs, _ = run_both(config, 13)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)  # exact, as above


def test_custom_timesteps_trajectory():
    ours, theirs = minidiff.DDPMScheduler(), diffusers.DDPMScheduler()
    custom = [999, 700, 400, 120, 30, 1, 0]
    ours.set_timesteps(timesteps=custom)
    theirs.set_timesteps(timesteps=custom)
    x_ours = x_theirs = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    g_ours, g_theirs = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for t in custom:  # python ints this time
        x_ours = ours.step(dummy_model(x_ours, t, ""), t, x_ours, generator=g_ours).prev_sample
        x_theirs = theirs.step(dummy_model(x_theirs, t, ""), t, x_theirs, generator=g_theirs).prev_sample
    torch.testing.assert_close(x_ours, x_theirs, rtol=0, atol=0)  # exact, as above


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_trajectory(dtype):
    ours, theirs = minidiff.DDPMScheduler(thresholding=True), diffusers.DDPMScheduler(thresholding=True)
    ours.set_timesteps(20)
    theirs.set_timesteps(20)
    x_ours = x_theirs = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(dtype)
    g_ours, g_theirs = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for t in theirs.timesteps:
        x_ours = ours.step(dummy_model(x_ours, t, "").to(dtype), t, x_ours, generator=g_ours).prev_sample
        x_theirs = theirs.step(
            dummy_model(x_theirs, t, "").to(dtype), t, x_theirs, generator=g_theirs
        ).prev_sample
    assert x_ours.dtype == dtype
    # exact: each 0-d float32 coefficient sits in diffusers' operand position, which decides whether it is
    # rounded to float16/bfloat16 before the multiply
    assert torch.equal(x_ours, x_theirs)


def test_fixed_large_log_is_finite_where_diffusers_is_nan():
    # diffusers takes sqrt(log(beta_t)) of a negative number (diffusers issue 14569)
    _, theirs, _ = run_both(
        dict(variance_type="fixed_small"), 10, theirs_config=dict(variance_type="fixed_large_log")
    )
    assert torch.isnan(theirs).all()
    # minidiff: sigma = exp(0.5 log beta_t) = sqrt(beta_t), i.e. diffusers' fixed_large through a log/exp
    ours, fixed_large, _ = run_both(
        dict(variance_type="fixed_large_log"), 10, theirs_config=dict(variance_type="fixed_large")
    )
    assert torch.isfinite(ours).all()
    # exp(0.5 * log(b)) and b ** 0.5 differ by float32 rounding (~1 ulp of sigma per step): 2e-6
    # absolute (observed 3e-7 after these 10 steps)
    torch.testing.assert_close(ours, fixed_large, rtol=0, atol=2e-6)


# ---- single steps --------------------------------------------------------------------------------
def test_step_return_types_and_previous_timestep():
    ours, theirs = minidiff.DDPMScheduler(), diffusers.DDPMScheduler()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    prev_sample, x0 = ours.step(x, 500, x, return_dict=False)
    assert isinstance(ours.step(x, 500, x), minidiff.outputs.DDPMSchedulerOutput)
    expected = theirs.step(x, 500, x, return_dict=False)
    assert torch.equal(x0, expected[1])
    assert prev_sample.shape == x.shape
    assert len(ours) == 1000 and ours.order == 1 and ours.init_noise_sigma == 1.0
    assert ours.scale_model_input(x, 3) is x
    for spacing in ("leading", "trailing"):
        ours = minidiff.DDPMScheduler(timestep_spacing=spacing, steps_offset=1)
        theirs = diffusers.DDPMScheduler(timestep_spacing=spacing, steps_offset=1)
        for scheduler in (ours, theirs):
            scheduler.set_timesteps(9)
        for t in theirs.timesteps:
            assert ours.previous_timestep(t) == theirs.previous_timestep(t)
            assert ours.previous_timestep(int(t)) == int(theirs.previous_timestep(t))


def test_step_with_generator_list_matches_diffusers():
    ours, theirs = minidiff.DDPMScheduler(), diffusers.DDPMScheduler()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))

    def generators():
        return [torch.Generator().manual_seed(i) for i in range(SHAPE[0])]

    out_ours = ours.step(x, 999, x, generator=generators()).prev_sample
    assert torch.equal(out_ours, theirs.step(x, 999, x, generator=generators()).prev_sample)


def test_step_rejects_bad_inputs():
    sched = minidiff.DDPMScheduler()
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match=r"timestep 1000 is out of range; expected 0 <= timestep < 1000"):
        sched.step(x, 1000, x)
    with pytest.raises(ValueError, match=r"timestep -1 is out of range"):
        sched.step(x, torch.tensor(-1), x)
    with pytest.raises(ValueError, match=r"timestep must be an int or a 0-d integer tensor"):
        sched.step(x, 10.0, x)
    with pytest.raises(
        ValueError, match=r"timestep must be an int or a 0-d integer tensor, got shape \(2,\)"
    ):
        sched.step(x, torch.tensor([3, 4]), x)
    with pytest.raises(ValueError, match=r"model_output shape \(2, 3, 8, 4\) does not match sample shape"):
        sched.step(torch.zeros(2, 3, 8, 4), 10, x)
    with pytest.raises(ValueError, match=r"model_output is torch.float16 on cpu but sample is torch.float32"):
        sched.step(x.half(), 10, x)
    with pytest.raises(ValueError, match=r"model_output shape \(2, 6, 8, 8\) does not match"):
        sched.step(torch.zeros(2, 6, 8, 8), 10, x)  # 2C channels but a fixed variance type
    learned = minidiff.DDPMScheduler(variance_type="learned_range")
    with pytest.raises(
        ValueError, match=r"variance_type 'learned_range' needs a model output with 2 \* 3 channels"
    ):
        learned.step(x, 10, x)
    sched.set_timesteps(10)
    theirs = diffusers.DDPMScheduler()
    theirs.set_timesteps(10)
    with pytest.raises(IndexError):  # diffusers: nonzero() finds no such timestep
        theirs.step(x, 11, x)
    with pytest.raises(ValueError, match=r"timestep 11 is not in scheduler.timesteps \[900, 800,"):
        sched.step(x, 11, x)
    with pytest.raises(
        ValueError, match=r"variance_type 'fixed' is not supported; expected one of \['fixed_small'"
    ):
        minidiff.DDPMScheduler(variance_type="fixed")


# ---- no host synchronisation ---------------------------------------------------------------------
class ForbidHostReads(TorchDispatchMode):
    """Fail on every aten op that copies a tensor value back to Python (a device sync on a GPU)."""

    FORBIDDEN = {"aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::equal"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.FORBIDDEN:
            raise AssertionError(f"host read through {func._schema.name}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "config",
    [dict(variance_type="learned_range"), dict(clip_sample=False), dict(prediction_type="v_prediction")],
)
def test_device_timestep_path_reads_nothing_back(monkeypatch, config):
    # Run the accelerator code path (0-d timestep tensor gathered on its device, noise zeroed at t = 0
    # instead of branching) on CPU tensors, under a dispatch mode that fails on any value read-back.
    monkeypatch.setattr(minidiff.schedulers.schedules, "is_host_tensor", lambda tensor: False)
    ours, theirs = minidiff.DDPMScheduler(**config), diffusers.DDPMScheduler(**config)
    ours.set_timesteps(20)
    theirs.set_timesteps(20)
    variance_type = config.get("variance_type", "fixed_small")
    x_ours = x_theirs = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    g_ours, g_theirs = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for t in theirs.timesteps:
        model_output = dummy_model(x_ours, t, variance_type)
        with ForbidHostReads():
            out = ours.step(model_output, t, x_ours, generator=g_ours)
            prev_t = ours.previous_timestep(t)
        expected = theirs.step(dummy_model(x_theirs, t, variance_type), t, x_theirs, generator=g_theirs)
        assert torch.equal(out.pred_original_sample, expected.pred_original_sample)
        assert torch.equal(prev_t, theirs.previous_timestep(t))
        x_ours, x_theirs = out.prev_sample, expected.prev_sample
    assert torch.equal(x_ours, x_theirs)  # exact, the t = 0 step included (noise times 0.0)
    timesteps = torch.tensor([3, 999])
    with ForbidHostReads():
        noisy = ours.add_noise(x_ours, x_theirs, timesteps)
        velocity = ours.get_velocity(x_ours, x_theirs, timesteps[0])
    assert torch.equal(noisy, theirs.add_noise(x_ours, x_theirs, timesteps))
    assert torch.equal(velocity, theirs.get_velocity(x_ours, x_theirs, timesteps[0]))


def test_forbid_host_reads_catches_diffusers_nonzero():
    # the detector above works: diffusers' previous_timestep uses nonzero() (issues 9417, 9485)
    theirs = diffusers.DDPMScheduler()
    theirs.set_timesteps(10)
    with ForbidHostReads(), pytest.raises(AssertionError, match="host read through aten::nonzero"):
        theirs.previous_timestep(theirs.timesteps[2])


def test_step_never_calls_tensor_item(monkeypatch):
    ours = minidiff.DDPMScheduler()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    expected = ours.step(x, torch.tensor(10), x, generator=torch.Generator().manual_seed(1)).prev_sample

    def forbidden(*args, **kwargs):
        raise AssertionError("Tensor.item called")

    monkeypatch.setattr(torch.Tensor, "item", forbidden)
    out = ours.step(x, torch.tensor(10), x, generator=torch.Generator().manual_seed(1)).prev_sample
    assert torch.equal(out, expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loop_with_device_timesteps_has_no_sync():
    ours, theirs = minidiff.DDPMScheduler(), diffusers.DDPMScheduler()
    ours.set_timesteps(10, device="cuda")  # also moves the step table to the GPU
    theirs.set_timesteps(10)
    x_ours = x_theirs = torch.randn(SHAPE, device="cuda")
    g_ours = torch.Generator("cuda").manual_seed(1)
    g_theirs = torch.Generator("cuda").manual_seed(1)
    timesteps = ours.timesteps.unbind()  # 0-d CUDA tensors
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in timesteps:
            x_ours = ours.step(dummy_model(x_ours, t, ""), t, x_ours, generator=g_ours).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for t in theirs.timesteps:
        x_theirs = theirs.step(dummy_model(x_theirs, t, ""), t, x_theirs, generator=g_theirs).prev_sample
    # 1e-5 absolute: on CUDA, diffusers divides by a CPU-scalar coefficient (a multiply by its reciprocal)
    # while the device path divides by a device tensor, 1 ulp apart per step
    torch.testing.assert_close(x_ours, x_theirs, rtol=0, atol=1e-5)


# ---- configs -------------------------------------------------------------------------------------
def comparable(config) -> dict:
    """A config as a plain dict, `_use_default_values` sorted (diffusers lists it in set order)."""
    config = dict(config)
    if "_use_default_values" in config:
        config["_use_default_values"] = sorted(config["_use_default_values"])
    return config


def test_config_round_trips_with_diffusers(tmp_path):
    config = dict(
        num_train_timesteps=200, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
        prediction_type="v_prediction", timestep_spacing="trailing", steps_offset=1, clip_sample=False,
        rescale_betas_zero_snr=True, thresholding=True, sample_max_value=2.0,
    )  # fmt: skip
    ours, reference = minidiff.DDPMScheduler(**config), diffusers.DDPMScheduler(**config)
    # diffusers' config, bookkeeping included: `_use_default_values` lists the keywords not passed
    assert comparable(ours.config) == comparable(reference.config)
    ours.save_pretrained(tmp_path / "ours")
    reference.save_pretrained(tmp_path / "reference")
    # the same file; and the same config after saving (both now hold _class_name and _diffusers_version)
    name = "scheduler_config.json"
    assert (tmp_path / "ours" / name).read_text() == (tmp_path / "reference" / name).read_text()
    assert comparable(ours.config) == comparable(reference.config)

    theirs = diffusers.DDPMScheduler.from_pretrained(tmp_path / "ours")
    back = minidiff.DDPMScheduler.from_pretrained(tmp_path / "reference")
    assert comparable(back.config) == comparable(theirs.config)
    assert_same_tables(ours, theirs)
    assert_same_tables(back, theirs)
    across = diffusers.DDPMScheduler.from_config(ours.config)
    assert_same_tables(ours, across)
    for source in (ours.config, theirs.config):  # with and without _use_default_values
        mine, diffusers_own = (
            minidiff.DDPMScheduler.from_config(source),
            diffusers.DDPMScheduler.from_config(source),
        )
        assert comparable(mine.config) == comparable(diffusers_own.config)
    # trained_betas survive JSON as a list of floats
    trained = minidiff.DDPMScheduler(num_train_timesteps=4, trained_betas=[0.1, 0.2, 0.3, 0.4])
    trained.save_pretrained(tmp_path / "trained")
    assert_same_tables(trained, diffusers.DDPMScheduler.from_pretrained(tmp_path / "trained"))


def assert_same_tables(a, b):
    for name in ("betas", "alphas_cumprod"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_variance_type_none_steps_as_fixed_small_like_diffusers():
    """DPM-Solver's configs write variance_type=None ("no learned variance"); diffusers' DDPM takes it
    and steps with fixed_small, so a DDPMScheduler rebuilt from such a config samples as diffusers' does."""
    ours = minidiff.DDPMScheduler.from_config({**minidiff.DDPMScheduler().config, "variance_type": None})
    theirs = diffusers.DDPMScheduler.from_config({**diffusers.DDPMScheduler().config, "variance_type": None})
    x, out = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)), torch.randn(2, 1, 4, 4)
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(10)
    t = ours.timesteps[3]
    a = ours.step(out, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
    b = theirs.step(out, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
    assert torch.equal(a, b)
    assert ours.variance_type == "fixed_small"
