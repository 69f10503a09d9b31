"""DPMSolverMultistepScheduler against diffusers' own: whole trajectories over a grid of options, state, configs, errors.

The same config builds both schedulers; a fixed smooth function of (x, t) stands in for the UNet. The trajectories
are compared with torch.equal: every coefficient comes from the same float32 operations, and every update sums
the same products in the same order (see the module docstring of minidiff/schedulers/scheduling_dpmsolver_multistep.py).
"""

from __future__ import annotations

import warnings

import diffusers
import pytest
import torch

import minidiff

SHAPE = (2, 3, 8, 8)
SOLVERS = [  # (algorithm_type, solver_order, solver_type): sde-dpmsolver has no third order (diffusers fails
    # there); solver_type only changes the second- and third-order updates
    (algorithm, order, solver_type)
    for algorithm in ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")
    for order in (1, 2, 3)
    for solver_type in (("midpoint",) if order == 1 else ("midpoint", "heun"))
    if (algorithm, order) != ("sde-dpmsolver", 3)
]
OPTIONS = [  # what varies the arithmetic; dpmsolver / sde-dpmsolver need final_sigmas_type sigma_min
    dict(),
    dict(use_karras_sigmas=True),
    dict(final_sigmas_type="sigma_min", prediction_type="v_prediction"),
    dict(prediction_type="sample", thresholding=True, sample_max_value=1.5, dynamic_thresholding_ratio=0.9),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, lower_order_final=False),
]
SCHEDULES = [  # the timesteps and sigmas each option picks, with the default solver
    dict(timestep_spacing="leading", steps_offset=1),
    dict(timestep_spacing="trailing", rescale_betas_zero_snr=True),
    dict(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1),
    dict(use_exponential_sigmas=True),
    dict(use_beta_sigmas=True),
    dict(use_lu_lambdas=True),
    dict(use_lu_lambdas=True, beta_schedule="squaredcos_cap_v2"),
    dict(euler_at_final=True, lower_order_final=False),
    dict(solver_order=3, final_sigmas_type="sigma_min", lower_order_final=False),
]


def dummy_model(x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    """A fixed smooth function of (x, t) standing in for the UNet."""
    return torch.sin(1.3 * x + 0.01 * torch.as_tensor(t, dtype=torch.float32)) * 0.9 + 0.1 * x


def run(scheduler, num_inference_steps: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Every x_t of a sampling loop, stacked; the SDE variants draw from a generator seeded alike."""
    scheduler.set_timesteps(num_inference_steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(dtype)
    generator = torch.Generator().manual_seed(1)
    trajectory = []
    for t in scheduler.timesteps:
        x = scheduler.step(dummy_model(x, t).to(dtype), t, x, generator=generator).prev_sample
        trajectory.append(x)
    return torch.stack(trajectory)


def both(**config):
    return minidiff.DPMSolverMultistepScheduler(**config), diffusers.DPMSolverMultistepScheduler(**config)


@pytest.mark.parametrize(
    "options", OPTIONS, ids=["default", "karras", "sigma_min-v", "sample-threshold", "sd"]
)
@pytest.mark.parametrize("algorithm_type, solver_order, solver_type", SOLVERS)
def test_trajectory_equals_diffusers(algorithm_type, solver_order, solver_type, options):
    config = dict(
        algorithm_type=algorithm_type, solver_order=solver_order, solver_type=solver_type, **options
    )
    if algorithm_type in ("dpmsolver", "sde-dpmsolver"):
        config["final_sigmas_type"] = "sigma_min"
    for num_inference_steps in (8, 16):  # below 15 steps the last steps drop to lower orders
        ours, theirs = both(**config)
        trajectory_ours, trajectory_theirs = run(ours, num_inference_steps), run(theirs, num_inference_steps)
        assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
        if config.get("use_karras_sigmas") and config.get("final_sigmas_type") == "sigma_min":
            # Karras' last sigma is sigma_min again: a step of h = 0, which diffusers' higher orders turn into
            # NaN (0 / 0) in most cases; minidiff takes a first-order step there, which leaves x unchanged.
            if solver_order > 1 and num_inference_steps >= 15:
                assert torch.equal(trajectory_ours[-1], trajectory_ours[-2])
                last_theirs = trajectory_theirs[-1]
                assert torch.isnan(last_theirs).all() or torch.equal(last_theirs, trajectory_ours[-1])
                trajectory_ours, trajectory_theirs = trajectory_ours[:-1], trajectory_theirs[:-1]
        assert torch.equal(trajectory_ours, trajectory_theirs)
        assert torch.isfinite(trajectory_ours).all()
        assert ours.lower_order_nums == theirs.lower_order_nums and ours.step_index == theirs.step_index
        for mine, reference in zip(ours.model_outputs, theirs.model_outputs):
            assert torch.equal(mine, reference)


@pytest.mark.parametrize("options", SCHEDULES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_schedule_options_equal_diffusers(options):
    for num_inference_steps in (5, 25):
        ours, theirs = both(**options)
        trajectory_ours, trajectory_theirs = run(ours, num_inference_steps), run(theirs, num_inference_steps)
        assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
        assert torch.equal(trajectory_ours, trajectory_theirs)


@pytest.mark.parametrize("num_inference_steps", [1, 2, 999, 1000])  # 1000: linspace repeats timesteps
def test_extreme_step_counts_give_diffusers_schedule(num_inference_steps):
    ours, theirs = both()
    ours.set_timesteps(num_inference_steps)
    theirs.set_timesteps(num_inference_steps)
    assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
    assert ours.num_inference_steps == theirs.num_inference_steps == num_inference_steps


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_equals_diffusers(dtype):
    # the step runs in float32 and casts back; the model output is converted in its own dtype, as in diffusers
    for config in (
        dict(),
        dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min", thresholding=True),
    ):
        ours, theirs = both(**config)
        trajectory_ours, trajectory_theirs = run(ours, 10, dtype), run(theirs, 10, dtype)
        assert trajectory_ours.dtype == dtype
        assert torch.equal(trajectory_ours, trajectory_theirs)


def test_custom_timesteps_and_begin_index_equal_diffusers():
    ours, theirs = both(algorithm_type="sde-dpmsolver++")
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(timesteps=[901, 700, 433, 200, 50, 3])
    assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
    # image-to-image: start at the third timestep, noise added there first
    x0 = torch.rand(SHAPE, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    results = []
    for scheduler in (ours, theirs):
        scheduler.set_begin_index(2)
        x = scheduler.add_noise(x0, noise, scheduler.timesteps[2:3])
        generator = torch.Generator().manual_seed(4)
        for t in scheduler.timesteps[2:]:
            x = scheduler.step(dummy_model(x, t), t, x, generator=generator, return_dict=False)[0]
        results.append(x)
        assert scheduler.begin_index == 2 and scheduler.step_index == 6
    assert torch.equal(*results)


def test_add_noise_variance_noise_and_outputs():
    ours, theirs = both(algorithm_type="sde-dpmsolver++")
    x0 = torch.rand(SHAPE, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    t = ours.timesteps[[1, 4]]
    assert torch.equal(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))
    # variance_noise replaces the generator's draw
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    t0 = ours.timesteps[0]
    out_ours = ours.step(dummy_model(x0, t0), t0, x0, variance_noise=z)
    out_theirs = theirs.step(dummy_model(x0, t0), t0, x0, variance_noise=z)
    assert list(out_ours.keys()) == ["prev_sample"] and torch.equal(
        out_ours.prev_sample, out_theirs.prev_sample
    )
    assert ours.scale_model_input(x0, t0) is x0 and ours.init_noise_sigma == theirs.init_noise_sigma == 1.0
    assert ours.order == theirs.order == 1 and len(ours) == len(theirs) == 1000
    # convert_model_output at the current step: x_theta as diffusers gives it
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(10)
        scheduler.set_begin_index(3)
        scheduler._init_step_index(scheduler.timesteps[3])
    eps = dummy_model(x0, 0)
    assert torch.equal(ours.convert_model_output(eps, sample=x0), theirs.convert_model_output(eps, sample=x0))


def test_add_noise_before_set_timesteps_uses_sigma_of_t():
    # diffusers looks t up in its placeholder schedule T-1..0 and so reads sigma_{T-1-t}; minidiff reads sigma_t
    scheduler = minidiff.DPMSolverMultistepScheduler()
    x0 = torch.rand(SHAPE, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([10, 900])
    a = scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    expected = a**0.5 * x0 + (1 - a) ** 0.5 * noise
    # alpha_t, sigma_t from sigma = sqrt((1 - a) / a) round differently than sqrt(a): a few float32 ulps
    torch.testing.assert_close(scheduler.add_noise(x0, noise, t), expected, rtol=1e-6, atol=1e-6)


def test_learned_variance_keeps_the_mean_channels():
    ours, theirs = both(variance_type="learned_range")
    ours.set_timesteps(5)
    theirs.set_timesteps(5)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    t = ours.timesteps[0]
    output = torch.cat([dummy_model(x, t), torch.ones_like(x)], dim=1)  # [mean, variance] on 2C channels
    assert torch.equal(ours.step(output, t, x).prev_sample, theirs.step(output, t, x).prev_sample)


def test_config_round_trips_with_diffusers(tmp_path):
    config = dict(
        solver_order=3, algorithm_type="sde-dpmsolver++", use_karras_sigmas=True, timestep_spacing="trailing"
    )
    minidiff.DPMSolverMultistepScheduler(**config).save_config(tmp_path / "ours")
    theirs = diffusers.DPMSolverMultistepScheduler.from_pretrained(tmp_path / "ours")
    theirs.save_config(tmp_path / "theirs")
    ours = minidiff.DPMSolverMultistepScheduler.from_pretrained(tmp_path / "theirs")
    for key, value in theirs.config.items():
        if not key.startswith("_"):
            assert ours.config[key] == value, key
    assert {k: v for k, v in ours.config.items() if not k.startswith("_")} == {
        k: v for k, v in theirs.config.items() if not k.startswith("_")
    }


def test_configs_move_through_diffusers_multistep_solvers():
    # diffusers' test_switch: DPM-Solver -> their DEIS / UniPC / singlestep -> DPM-Solver gives the same sampler
    ours = minidiff.DPMSolverMultistepScheduler(solver_order=3, lower_order_final=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keys of diffusers-only schedulers
        config = ours.config
        for cls in (
            diffusers.DPMSolverSinglestepScheduler,
            diffusers.UniPCMultistepScheduler,
            diffusers.DEISMultistepScheduler,
        ):
            config = cls.from_config(config).config
        back = minidiff.DPMSolverMultistepScheduler.from_config(config)
    assert back.config.algorithm_type == "dpmsolver++" and back.config.solver_type == "midpoint"
    assert torch.equal(
        run(back, 10), run(minidiff.DPMSolverMultistepScheduler(solver_order=3, lower_order_final=False), 10)
    )
    ddim = minidiff.DDIMScheduler.from_config(minidiff.DPMSolverMultistepScheduler().config)
    assert ddim.config.timestep_spacing == "leading"  # DPM's default is not carried over, as in diffusers


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(solver_order=4), "solver_order 4 is not supported; expected 1, 2 or 3"),
        (dict(algorithm_type="dpm"), "algorithm_type 'dpm' is not supported"),
        (dict(solver_type="euler"), "solver_type 'euler' is not supported"),
        (dict(final_sigmas_type="one"), "final_sigmas_type 'one' is not supported"),
        (
            dict(algorithm_type="dpmsolver"),
            "final_sigmas_type 'zero' is not supported for algorithm_type 'dpmsolver'",
        ),
        (
            dict(algorithm_type="sde-dpmsolver", solver_order=3, final_sigmas_type="sigma_min"),
            "solver_order 3",
        ),
        (dict(variance_type="other"), "variance_type 'other' is not supported"),
        (dict(prediction_type="x0"), "prediction_type 'x0' is not supported"),
        (dict(beta_schedule="sigmoid"), "beta_schedule 'sigmoid' is not supported"),
        (dict(timestep_spacing="even"), "timestep_spacing 'even' is not supported"),
        (dict(use_karras_sigmas=True, use_beta_sigmas=True), "Only one of"),
    ],
)
def test_bad_options_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        minidiff.DPMSolverMultistepScheduler(**config)


@pytest.mark.parametrize(
    "option",
    [
        dict(use_flow_sigmas=True),
        dict(flow_shift=3.0),
        dict(use_dynamic_shifting=True),
        dict(prediction_type="flow_prediction"),
    ],
)
def test_flow_matching_options_are_not_implemented(option):
    with pytest.raises(NotImplementedError, match=next(iter(option))):
        minidiff.DPMSolverMultistepScheduler(**option)


def test_bad_calls_are_refused():
    scheduler = minidiff.DPMSolverMultistepScheduler()
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="before set_timesteps"):
        scheduler.step(x, 999, x)
    for n in (0, 1001, 2.5):
        with pytest.raises(ValueError, match=f"num_inference_steps {n!r} is out of range"):
            scheduler.set_timesteps(n)
    with pytest.raises(ValueError, match="exactly one of"):
        scheduler.set_timesteps(10, timesteps=[10, 5])
    with pytest.raises(ValueError, match="descending"):
        scheduler.set_timesteps(timesteps=[5, 10])
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        minidiff.DPMSolverMultistepScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[10, 5])
    scheduler.set_timesteps(2)
    for t in scheduler.timesteps:
        scheduler.step(x, t, x)
    with pytest.raises(ValueError, match="past the end of scheduler.timesteps"):
        scheduler.step(x, 0, x)
