"""DDIMScheduler against diffusers' DDIMScheduler: whole trajectories for eta 0 and 1, errors, configs."""

from __future__ import annotations

import warnings

import diffusers
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import minidiff

PREDICTION_TYPES = ["epsilon", "sample", "v_prediction"]
CLIPPING = [dict(clip_sample=True), dict(clip_sample=False), dict(thresholding=True, sample_max_value=1.5)]
SHAPE = (2, 3, 8, 8)


def dummy_model(x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    """A fixed smooth function of (x, t) standing in for the UNet."""
    return torch.sin(1.3 * x + 0.01 * torch.as_tensor(t, dtype=torch.float32)) * 0.9 + 0.1 * x


def run_both(config: dict, num_inference_steps: int, eta: float, use_clipped_model_output: bool = False):
    ours, theirs = minidiff.DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
    ours.set_timesteps(num_inference_steps)
    theirs.set_timesteps(num_inference_steps)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    x_ours = x_theirs = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    g_ours, g_theirs = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    kw = dict(eta=eta, use_clipped_model_output=use_clipped_model_output)
    for t in theirs.timesteps:
        out_ours = ours.step(dummy_model(x_ours, t), t, x_ours, generator=g_ours, **kw)
        out_theirs = theirs.step(dummy_model(x_theirs, t), t, x_theirs, generator=g_theirs, **kw)
        # exact (atol=0), stricter than the 1e-6: same float32 ops, same order, same operand order
        torch.testing.assert_close(
            out_ours.pred_original_sample, out_theirs.pred_original_sample, rtol=0, atol=0
        )
        x_ours, x_theirs = out_ours.prev_sample, out_theirs.prev_sample
    assert torch.equal(g_ours.get_state(), g_theirs.get_state())  # same draws in the same order
    return x_ours, x_theirs


@pytest.mark.parametrize("use_clipped_model_output", [False, True])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("clipping", CLIPPING, ids=["clip", "noclip", "threshold"])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_50_step_trajectory_equals_diffusers(prediction_type, clipping, eta, use_clipped_model_output):
    config = dict(prediction_type=prediction_type, **clipping)
    ours, theirs = run_both(config, 50, eta, use_clipped_model_output)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)  # exact, see run_both
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_1000_step_trajectory_equals_diffusers(prediction_type, eta):
    ours, theirs = run_both(dict(prediction_type=prediction_type), 1000, eta)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)  # exact, see run_both


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
def test_spacings_and_options_trajectories(spacing):
    for extra in (
        dict(steps_offset=1, set_alpha_to_one=False),
        dict(beta_schedule="scaled_linear", rescale_betas_zero_snr=True, prediction_type="v_prediction"),
        dict(beta_schedule="squaredcos_cap_v2", clip_sample_range=0.5),
    ):
        for eta in (0.0, 0.5):
            ours, theirs = run_both(dict(timestep_spacing=spacing, **extra), 7, eta)
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)  # exact, see run_both


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_step_equals_diffusers(dtype):
    ours, theirs = (
        minidiff.DDIMScheduler(prediction_type="v_prediction"),
        diffusers.DDIMScheduler(prediction_type="v_prediction"),
    )
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(dtype)
    for t in theirs.timesteps:
        model_output = dummy_model(x, t).to(dtype)
        expected = theirs.step(model_output, t, x, eta=1.0, generator=torch.Generator().manual_seed(int(t)))
        out = ours.step(model_output, t, x, eta=1.0, generator=torch.Generator().manual_seed(int(t)))
        assert torch.equal(out.prev_sample, expected.prev_sample)  # exact: same operand order as diffusers
        x = expected.prev_sample


def test_variance_noise_argument_and_tuple_output():
    ours, theirs = minidiff.DDIMScheduler(), diffusers.DDIMScheduler()
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    out = ours.step(x, 501, x, eta=0.7, variance_noise=noise, return_dict=False)
    expected = theirs.step(x, 501, x, eta=0.7, variance_noise=noise, return_dict=False)
    assert isinstance(out, tuple) and torch.equal(out[0], expected[0]) and torch.equal(out[1], expected[1])
    assert len(ours) == 1000 and ours.order == 1 and ours.init_noise_sigma == 1.0


def test_step_rejects_what_diffusers_rejects():
    x = torch.zeros(SHAPE)
    for scheduler in (diffusers.DDIMScheduler(), minidiff.DDIMScheduler()):  # no set_timesteps yet
        with pytest.raises(ValueError, match=r"you need to run 'set_timesteps'"):
            scheduler.step(x, 10, x)
        scheduler.set_timesteps(10)
        with pytest.raises(ValueError, match=r"Cannot pass both generator and variance_noise"):
            scheduler.step(x, 901, x, eta=1.0, generator=torch.Generator(), variance_noise=x)
    ours = minidiff.DDIMScheduler()
    ours.set_timesteps(10)
    with pytest.raises(ValueError, match=r"timestep 1000 is out of range; expected 0 <= timestep < 1000"):
        ours.step(x, 1000, x)
    with pytest.raises(ValueError, match=r"model_output shape \(2, 6, 8, 8\) does not match sample shape"):
        ours.step(torch.zeros(2, 6, 8, 8), 901, x)
    with pytest.raises(
        ValueError, match=r"model_output is torch.bfloat16 on cpu but sample is torch.float32"
    ):
        ours.step(x.bfloat16(), 901, x)
    with pytest.raises(ValueError, match=r"num_inference_steps 1001 is out of range"):
        ours.set_timesteps(1001)


class ForbidHostReads(TorchDispatchMode):
    """Fail on every aten op that copies a tensor value back to Python (a device sync on a GPU)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in {"aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero"}:
            raise AssertionError(f"host read through {func._schema.name}")
        return func(*args, **(kwargs or {}))


def test_device_timestep_path_reads_nothing_back(monkeypatch):
    # the accelerator code path (table gathered with a 0-d tensor index) run on CPU tensors
    monkeypatch.setattr(minidiff.schedulers.schedules, "is_host_tensor", lambda tensor: False)
    ours, theirs = (
        minidiff.DDIMScheduler(set_alpha_to_one=False),
        diffusers.DDIMScheduler(set_alpha_to_one=False),
    )
    ours.set_timesteps(12)
    theirs.set_timesteps(12)
    x_ours = x_theirs = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    g_ours, g_theirs = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for t in theirs.timesteps:
        model_output = dummy_model(x_ours, t)
        with ForbidHostReads():
            x_ours = ours.step(model_output, t, x_ours, eta=1.0, generator=g_ours).prev_sample
        x_theirs = theirs.step(dummy_model(x_theirs, t), t, x_theirs, eta=1.0, generator=g_theirs).prev_sample
    assert torch.equal(x_ours, x_theirs)


def comparable(config) -> dict:
    """A config as a plain dict, `_use_default_values` sorted (diffusers lists it in set order)."""
    config = dict(config)
    if "_use_default_values" in config:
        config["_use_default_values"] = sorted(config["_use_default_values"])
    return config


def test_config_round_trips_with_diffusers(tmp_path):
    config = dict(
        num_train_timesteps=100, beta_schedule="scaled_linear", set_alpha_to_one=False, steps_offset=1,
        prediction_type="sample", timestep_spacing="linspace", rescale_betas_zero_snr=True, clip_sample_range=2.0,
    )  # fmt: skip
    ours, reference = minidiff.DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
    assert comparable(ours.config) == comparable(reference.config)
    ours.save_pretrained(tmp_path / "ours")
    reference.save_pretrained(tmp_path / "reference")
    name = "scheduler_config.json"
    assert (tmp_path / "ours" / name).read_text() == (tmp_path / "reference" / name).read_text()
    theirs = diffusers.DDIMScheduler.from_pretrained(tmp_path / "ours")
    back = minidiff.DDIMScheduler.from_pretrained(tmp_path / "reference")
    assert comparable(back.config) == comparable(theirs.config)
    for a, b in ((ours, theirs), (back, theirs), (ours, diffusers.DDIMScheduler.from_config(ours.config))):
        assert torch.equal(a.alphas_cumprod, b.alphas_cumprod)
        assert torch.equal(a.final_alpha_cumprod, b.final_alpha_cumprod)


def test_configs_move_between_ddpm_and_ddim_as_in_diffusers():
    """DDPM -> DDIM -> DDPM: DDIM keeps DDPM's own keys (variance_type) in its config, silently, and DDPM
    gets them back; keys DDPM left at their defaults take DDIM's defaults."""
    kwargs = dict(num_train_timesteps=100, variance_type="fixed_large", clip_sample=False)
    configs = {}
    for library in (minidiff, diffusers):
        ddpm = library.DDPMScheduler(**kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing unknown: the DDPM keys belong to a compatible class
            ddim = library.DDIMScheduler.from_config(ddpm.config)
            again = library.DDPMScheduler.from_config(ddim.config)
        assert torch.equal(ddim.alphas_cumprod, ddpm.alphas_cumprod)
        assert again.config.variance_type == "fixed_large"
        configs[library] = [comparable(x.config) for x in (ddpm, ddim, again)]
    assert configs[minidiff] == configs[diffusers]
    # diffusers' Karras schedulers that minidiff has, this class first
    names = [c.__name__ for c in minidiff.DDIMScheduler().compatibles]
    assert names[:2] == ["DDIMScheduler", "DDPMScheduler"]
    assert set(names) <= {c.__name__ for c in diffusers.DDIMScheduler().compatibles}


@pytest.mark.parametrize("eta", [-0.5, 1.5])
def test_eta_outside_0_1_is_refused(eta):
    """diffusers accepts any eta and returns NaN above 1 (the square root of a negative number)."""
    scheduler = minidiff.DDIMScheduler(num_train_timesteps=10)
    scheduler.set_timesteps(5)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match=f"eta={eta}; expected a number in \\[0, 1\\]"):
        scheduler.step(x, 8, x, eta=eta)
