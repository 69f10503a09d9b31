"""The samplers by name: which scheduler takes the reverse steps, how many steps by default, and the rebuild
of that scheduler from any pipeline's scheduler config (the same noise schedule, another step).

    from minidiff.pipelines.pipeline_ddpm import with_sampler
    fast = with_sampler(pipeline, "dpmsolver++")        # the same UNet and schedule; 20 steps by default

`CHOICES` says which sampler and how many steps each purpose uses by default (`minidiff sample`, `eval`
and a training run's digit FID readings, the sample grids, the demo's picture); `steps_for` is the one
"steps or the sampler's default" rule. Every place that offers a choice of sampler reads this table:
`minidiff sample|eval|train|demo --sampler`, TrainConfig.sampler, minidiff.quality's evaluate and
quality_vs_steps. The pipelines run one loop for all of them (minidiff/pipelines/pipeline_ddpm.py `denoise`,
`with_sampler` beside it). This module imports no torch: the command's `--help` and the torch-free
TrainConfig read the names from it; a scheduler class is imported when it is first asked for.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple


class Sampler(NamedTuple):
    module: str  # the minidiff module that defines the scheduler (diffusers' file name)
    class_name: str  # diffusers' class name
    steps: int | None  # default number of steps (None: every training timestep, T)
    description: str
    overrides: tuple[tuple[str, object], ...] = ()  # scheduler keywords the sampler fixes


SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler("minidiff.schedulers.scheduling_ddpm", "DDPMScheduler", None,
                    "DDPM's ancestral step (Ho et al. 2020), every training timestep"),
    "ddim": Sampler("minidiff.schedulers.scheduling_ddim", "DDIMScheduler", 50,
                    "DDIM (Song et al. 2021), deterministic unless eta > 0"),
    "pndm": Sampler("minidiff.schedulers.scheduling_pndm", "PNDMScheduler", 50,
                    "pseudo numerical methods (Liu et al. 2022): Runge-Kutta warm-up, then linear multistep"),
    "dpmsolver++": Sampler("minidiff.schedulers.scheduling_dpmsolver_multistep", "DPMSolverMultistepScheduler", 20,
                           "DPM-Solver++ (Lu et al. 2022), second-order multistep ODE solver",
                           (("algorithm_type", "dpmsolver++"),)),
    "euler": Sampler("minidiff.schedulers.scheduling_euler_discrete", "EulerDiscreteScheduler", 50,
                     "Euler's method on the probability-flow ODE in sigma (Karras et al. 2022)"),
    "euler_a": Sampler("minidiff.schedulers.scheduling_euler_ancestral_discrete", "EulerAncestralDiscreteScheduler", 50,
                       "Euler ancestral: an Euler step, then fresh noise (k-diffusion's sample_euler_ancestral)"),
}  # fmt: skip
SAMPLER_NAMES = tuple(SAMPLERS)

# the noise schedule of a config: a sampler rebuilt from it must keep these (or refuse, when it cannot)
SCHEDULE_KEYS = (
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
    "rescale_betas_zero_snr", "timestep_spacing", "steps_offset",
)  # fmt: skip


def check_sampler(name: str) -> Sampler:
    """The table's entry for `name`; a ValueError naming the known samplers for any other."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler {name!r} is not known; expected one of {list(SAMPLERS)}")
    return SAMPLERS[name]


def steps_for(name: str, num_train_timesteps: int, steps: int | None = None) -> int:
    """`steps` when given, else the sampler's default number (DDPM: every one of the T training timesteps):
    the one "steps or default" rule of every command and library call."""
    if steps:
        return steps
    default = check_sampler(name).steps
    return num_train_timesteps if default is None else default


class Choice(NamedTuple):
    sampler: str  # a name of SAMPLERS
    steps: int | None = None  # None: the sampler's own default (steps_for)


# Which sampler, how many steps, for each purpose: the one place these are chosen.
CHOICES: dict[str, Choice] = {
    # `minidiff sample` and the grids of a training run of QUICK_RUN steps or more: DDPM's T steps
    "sample": Choice("ddpm"),
    "grid": Choice("ddpm"),
    # the grids of a shorter run (seconds, not minutes), and the sampler an automatic grid is cut down to
    "quick_grid": Choice("ddim"),
    # `minidiff eval` and a training run's digit FID readings (eval_every), so that eval.json and loss.csv
    # compare: 50x fewer UNet calls than DDPM's 1,000 steps, and a better FID than DDIM at 20 or 100 steps
    # on the demo's model (docs/quality.md's calibration)
    "eval": Choice("dpmsolver++"),
    # `minidiff demo`'s samples.png: DDPM's stochastic step on 100 trailing timesteps corrects more of a
    # short run's errors than DDIM or DPM-Solver++ (benchmarks/TIME_TO_QUALITY.md)
    "demo": Choice("ddpm", 100),
    # minidiff.fast.sample: DDPM's step on device tables, one CUDA graph per step
    "fast": Choice("ddpm"),
}  # fmt: skip


def steps_help() -> str:
    """ "ddpm: T, ddim: 50, ...": the default step counts, for --help."""
    return ", ".join(f"{name}: {s.steps or 'T'}" for name, s in SAMPLERS.items())


def scheduler_class(name: str) -> type:
    """The scheduler class of sampler `name` (imported on first use)."""
    sampler = check_sampler(name)
    return getattr(importlib.import_module(sampler.module), sampler.class_name)


def scheduler_class_named(class_name: str) -> type | None:
    """The minidiff scheduler class of a diffusers class name ("DDIMScheduler"), None when there is none:
    the registry that configuration.py and pipeline_utils.py read instead of the whole package."""
    for sampler in SAMPLERS.values():
        if sampler.class_name == class_name:
            return getattr(importlib.import_module(sampler.module), class_name)
    return None


SCHEDULER_CLASS_NAMES = tuple(dict.fromkeys(s.class_name for s in SAMPLERS.values()))


def scheduler_for(name: str, config: dict):
    """A fresh scheduler of sampler `name` on the noise schedule of `config` (any scheduler's config).

    As diffusers' `from_config`: every key the new class takes is passed on (betas, prediction_type,
    zero-SNR, timestep spacing, ...), the others stay in its config. Keys a config left at their defaults
    are passed too, so a scheduler rebuilt from an object equals one rebuilt from its saved file. A schedule
    key the new class cannot take (rescale_betas_zero_snr=True for PNDM) is refused, not dropped.
    """
    sampler = check_sampler(name)
    cls = scheduler_class(name)
    config = {k: v for k, v in dict(config).items() if k != "_use_default_values"}
    accepted = set(cls.init_keywords())
    for key in SCHEDULE_KEYS:
        if key in config and key not in accepted and config[key] is not None and config[key] is not False:
            raise ValueError(
                f"sampler {name!r} ({sampler.class_name}) has no {key}; this schedule has {key}={config[key]!r}"
            )
    return cls.from_config(config, **dict(sampler.overrides))


def parse_settings(text: str) -> list[tuple[str, int]]:
    """ "ddpm:1000,ddim:50" -> [("ddpm", 1000), ("ddim", 50)]: samplers of the table with step counts."""
    settings = []
    for item in text.split(","):
        sampler, _, steps = item.strip().partition(":")
        if sampler not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
            raise ValueError(
                f"setting {item.strip()!r}; expected SAMPLER:STEPS with SAMPLER one of {list(SAMPLERS)} "
                "and STEPS a positive int"
            )
        settings.append((sampler, int(steps)))
    return settings


# the default sweep of `quality_vs_steps` and the calibration
QUALITY_SWEEP = "ddpm:1000,ddim:10,ddim:20,ddim:50,ddim:100,ddim:250,dpmsolver++:10,dpmsolver++:20"
# `minidiff demo`'s quality plot: DDIM and DPM-Solver++ at 10 and 20 steps, and DDPM's stochastic step on 100
# trailing timesteps (samples.png): 160 UNet passes of 250 samples, about 37 s on a 2-core AVX2 CPU
DEMO_SWEEP = "ddim:10,ddim:20,dpmsolver++:10,dpmsolver++:20,ddpm:100"
