"""The sampler table (minidiff/schedulers/samplers.py) and the one sampling loop every scheduler runs in (pipeline_ddpm.py)."""

from __future__ import annotations

import inspect
import subprocess
import sys

import diffusers
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor
from tiny import TINY_UNET

from minidiff import DDPMPipeline, DDPMScheduler, UNet2DModel
from minidiff.schedulers.samplers import (
    CHOICES,
    DEMO_SWEEP,
    QUALITY_SWEEP,
    SAMPLERS,
    SCHEDULE_KEYS,
    parse_settings,
    scheduler_class,
    scheduler_for,
    steps_for,
)

# Same weights, same seed, same float32 CPU code: the trajectories agree exactly here; 1e-5 leaves room for
# another torch build or CPU ordering a sum differently (as tests/test_pipeline.py's ATOL).
ATOL = 1e-5
STEPS = 6  # few steps, but past PNDM's Runge-Kutta warm-up and DPM-Solver's first-order start


@pytest.fixture(scope="module")
def unets() -> tuple[diffusers.UNet2DModel, UNet2DModel]:
    torch.manual_seed(0)
    theirs = diffusers.UNet2DModel(**TINY_UNET).eval()
    ours = UNet2DModel(**TINY_UNET).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def _trained_config(**changes) -> dict:
    """A scheduler config as a training run saves it (every key written, none left to defaults)."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", **changes)
    return {k: v for k, v in scheduler.config.items() if k != "_use_default_values"}


# ---- the table ---------------------------------------------------------------------------------------------
def test_table_names_classes_and_default_steps():
    assert list(SAMPLERS) == ["ddpm", "ddim", "pndm", "dpmsolver++", "euler", "euler_a"]
    for name, sampler in SAMPLERS.items():
        cls = scheduler_class(name)  # every entry imports (none is skipped): a class of diffusers' name
        assert cls.__name__ == sampler.class_name and hasattr(diffusers, sampler.class_name), name
        assert set(dict(sampler.overrides)) <= set(cls.init_keywords()), name
        assert sampler.description and isinstance(steps_for(name, 1000), int)
    assert steps_for("ddpm", 1000) == 1000 and steps_for("ddpm", 40) == 40
    assert (steps_for("ddim", 1000), steps_for("dpmsolver++", 1000), steps_for("euler", 1)) == (50, 20, 50)
    assert steps_for("ddim", 1000, 7) == 7 and steps_for("ddpm", 1000, None) == 1000  # steps win when given


def test_every_purpose_chooses_a_known_sampler_in_the_table():
    for purpose, (sampler, steps) in CHOICES.items():
        assert sampler in SAMPLERS and (steps is None or steps > 0), purpose
    assert parse_settings(DEMO_SWEEP) and tuple(CHOICES["demo"]) in parse_settings(DEMO_SWEEP)


def test_training_readings_and_minidiff_eval_sample_alike():
    # loss.csv's digit FID readings and eval.json compare: one sampler, one step count (the "eval" choice)
    from minidiff.cli import build_parser
    from minidiff.quality.evaluate import DEFAULT_SAMPLER, digit_fid, evaluate
    from minidiff.training.run import reading_sampler

    default = inspect.signature(digit_fid).parameters["sampler"].default
    assert default == inspect.signature(evaluate).parameters["sampler"].default == DEFAULT_SAMPLER
    assert build_parser(["eval"]).parse_args(["eval", "--model", "m"]).sampler == CHOICES["eval"].sampler
    assert (
        reading_sampler(DDPMScheduler())
        == f"{DEFAULT_SAMPLER.upper()} {steps_for(DEFAULT_SAMPLER, 1000)} steps"
    )


def test_sampler_names_are_written_in_the_table_only():
    # the choice of a sampler has one home: at most 4 sampler names written as strings elsewhere in the
    # package (a preset's own setting, a refusal), none in a docstring's place counted
    import ast
    from pathlib import Path

    import minidiff

    root = Path(minidiff.__file__).parent
    found = []
    for path in root.rglob("*.py"):
        if (
            path.name == "samplers.py" or "schedulers" in path.parts
        ):  # (DPM-Solver's algorithm_type is no sampler)
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in SAMPLERS:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.value!r}")
    assert len(found) <= 4, found


def test_table_and_the_command_line_choices_load_no_torch():
    code = (
        "import sys\n"
        "import minidiff.schedulers.samplers, minidiff.training.config\n"
        "from minidiff.cli import build_parser\n"
        "parser = build_parser(['sample'])\n"
        "args = parser.parse_args(['sample', '--model', 'm', '--sampler', 'euler_a'])\n"
        "print('torch' in sys.modules, args.sampler)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "euler_a"]


@pytest.mark.parametrize("call", [lambda: scheduler_for("heun", {}), lambda: steps_for("k_lms", 10)])
def test_unknown_sampler_names_the_known_ones(call):
    with pytest.raises(
        ValueError, match=r"sampler '(heun|k_lms)' is not known; expected one of \['ddpm', 'ddim'"
    ):
        call()


def test_settings_strings_read_the_table():
    assert parse_settings("ddpm:1000, dpmsolver++:20,euler_a:7") == [
        ("ddpm", 1000),
        ("dpmsolver++", 20),
        ("euler_a", 7),
    ]
    assert ("dpmsolver++", 10) in parse_settings(QUALITY_SWEEP) and parse_settings(QUALITY_SWEEP)[0][
        0
    ] == "ddpm"
    for bad in ("heun:10", "ddim", "ddim:ten", "ddim:0"):
        with pytest.raises(ValueError, match="expected SAMPLER:STEPS with SAMPLER one of"):
            parse_settings(bad)


# ---- the rebuild keeps the schedule ---------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_rebuild_keeps_the_schedule_as_diffusers_from_config(name):
    config = _trained_config(prediction_type="v_prediction", timestep_spacing="trailing")
    ours = scheduler_for(name, config)
    sampler = SAMPLERS[name]
    theirs = getattr(diffusers, sampler.class_name).from_config(config, **dict(sampler.overrides))
    assert type(ours).__name__ == sampler.class_name
    for key in SCHEDULE_KEYS:
        if key in theirs.config:
            assert ours.config[key] == theirs.config[key] == config.get(key, theirs.config[key]), key
    assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)
    for key, value in sampler.overrides:
        assert ours.config[key] == value
    # from the object or from its saved file: the same scheduler (diffusers would drop defaulted keys)
    assert dict(scheduler_for(name, DDPMScheduler(**config).config).config) == dict(ours.config)


def test_rebuild_refuses_a_schedule_the_sampler_cannot_keep():
    config = _trained_config(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    assert scheduler_for("euler", config).config.rescale_betas_zero_snr is True
    with pytest.raises(ValueError, match="sampler 'pndm' .PNDMScheduler. has no rescale_betas_zero_snr"):
        scheduler_for("pndm", config)


# ---- the loop: the documented diffusers loop, for every sampler ------------------------------------------
def _diffusers_loop(unet, scheduler, batch_size: int, steps: int, seed: int) -> torch.Tensor:
    """diffusers' documented sampling loop (as its Euler / DPM-Solver pipelines run it), images in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    latents = randn_tensor(shape, generator=generator, dtype=unet.dtype)
    scheduler.set_timesteps(steps)
    latents = latents * scheduler.init_noise_sigma
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        noise_pred = unet(model_input, t).sample
        kwargs = {"generator": generator} if takes_generator else {}
        latents = scheduler.step(noise_pred, t, latents, **kwargs).prev_sample
    return (latents / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_pipeline_loop_equals_the_diffusers_loop(unets, name):
    theirs, ours = unets
    config = _trained_config()
    sampler = SAMPLERS[name]
    their_scheduler = getattr(diffusers, sampler.class_name).from_config(config, **dict(sampler.overrides))
    pipeline = DDPMPipeline(ours, scheduler_for(name, config))
    got = pipeline(
        batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=STEPS, output_type="pt",
        progress=False,
    ).images  # fmt: skip
    with torch.no_grad():
        expected = _diffusers_loop(theirs, their_scheduler, 2, STEPS, seed=3)
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    if name in ("euler", "euler_a"):  # the loop really scaled: sigma_max > 1 and x / sqrt(sigma^2 + 1)
        assert float(pipeline.scheduler.init_noise_sigma) > 1


def test_loop_honours_init_noise_sigma_and_scale_model_input(unets):
    # diffusers' DDPMPipeline ignores both; minidiff's loop with diffusers' own Euler gives the documented loop
    theirs, ours = unets
    config = _trained_config()
    euler = diffusers.EulerDiscreteScheduler.from_config(config)
    got = DDPMPipeline(ours, euler)(
        batch_size=1, generator=torch.Generator().manual_seed(4), num_inference_steps=STEPS, output_type="pt",
        progress=False,
    ).images  # fmt: skip
    with torch.no_grad():
        expected = _diffusers_loop(
            theirs, diffusers.EulerDiscreteScheduler.from_config(config), 1, STEPS, seed=4
        )
        ignored = diffusers.DDPMPipeline(theirs, diffusers.EulerDiscreteScheduler.from_config(config))(
            batch_size=1,
            generator=torch.Generator().manual_seed(4),
            num_inference_steps=STEPS,
            output_type="pt",
        ).images
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    assert (got - torch.as_tensor(ignored).permute(0, 3, 1, 2)).abs().max() > 0.01


def test_eta_only_with_a_step_that_takes_it(unets):
    _, ours = unets
    pipeline = DDPMPipeline(ours, scheduler_for("euler_a", _trained_config()))
    with pytest.raises(
        ValueError, match="eta=0.5 needs a DDIMScheduler; EulerAncestralDiscreteScheduler has no eta"
    ):
        pipeline(num_inference_steps=2, eta=0.5, progress=False)
