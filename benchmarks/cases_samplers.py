"""The sampler case: each scheduler's own cost over a whole sampling run, diffusers' class vs minidiff's.

One timed run = set_timesteps + scale_model_input + step at every timestep, as a pipeline calls them, with
a fixed tensor standing in for the UNet's output (so only the scheduler is timed). Every sampler runs its
typical number of steps (--quick: 10); samplers that draw noise get a generator seeded alike in both libraries.
"""

from __future__ import annotations

import inspect

import diffusers
import torch

import minidiff
from benchmarks.cases import Settings
from benchmarks.harness import Row, alternate, fill, rel_err

# label: (class name in both libraries, constructor options, inference steps a pipeline typically runs)
SAMPLERS = {
    "ddpm": ("DDPMScheduler", {}, 1000),
    "ddim": ("DDIMScheduler", {}, 50),
    "pndm": ("PNDMScheduler", {}, 50),
    "dpmsolver++": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2), 20),
    "euler": ("EulerDiscreteScheduler", {}, 50),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, 50),
}


def sampling_run(scheduler, steps: int, x_T: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
    """A pipeline's loop around the scheduler, the UNet replaced by `model_output`; the final sample."""
    device = x_T.device
    scheduler.set_timesteps(steps, device=device)  # also resets the multistep solvers' history
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters  # not PNDM's
    extra = {"generator": torch.Generator(device).manual_seed(0)} if takes_generator else {}
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        scheduler.scale_model_input(x, t)  # the UNet's input; the fake UNet ignores it
        x = scheduler.step(model_output, t, x, **extra).prev_sample
    return x


@torch.no_grad()
def sampler_step(settings: Settings, batch: int) -> list[Row]:
    device, size = settings.device, settings.unet_config["sample_size"]
    generator = torch.Generator(device).manual_seed(0)
    x_T, model_output = (torch.randn(batch, 3, size, size, generator=generator, device=device) for _ in "ab")
    rows = []
    for label, (name, options, typical_steps) in SAMPLERS.items():
        steps = min(typical_steps, settings.sample_steps)  # --quick: 10 steps each
        theirs, ours = getattr(diffusers, name)(**options), getattr(minidiff, name)(**options)
        fns = {
            f"diffusers {name}": lambda s=theirs, n=steps: sampling_run(s, n, x_T, model_output),
            f"minidiff {name}": lambda s=ours, n=steps: sampling_run(s, n, x_T, model_output),
        }
        # short runs get more rounds: every sampler is timed for about as long as DDPM's 1000 steps
        times = alternate(fns, device, settings.rounds * max(1, 200 // typical_steps), settings.warmup)
        calls = len(theirs.timesteps)  # PNDM's Runge-Kutta warm-up steps make more calls than steps
        unit = f"{label} run, {steps} steps"
        pair = [fill(Row("sampler_step", impl, batch, "fp32", unit), times[impl]) for impl in fns]
        for row in pair:
            row.extra = {
                "sampler": label,
                "steps": steps,
                "calls": calls,
                "per_call_ms": row.median_ms / calls,
            }
            row.note = f"{label}: {steps} steps, {calls} step calls, {row.median_ms / calls:.3f} ms per call"
        expected = sampling_run(theirs, steps, x_T, model_output)
        pair[1].accuracy_rel_err = rel_err(sampling_run(ours, steps, x_T, model_output), expected)
        pair[1].accuracy_ref = f"diffusers {name}'s final sample, same x_T, model output and generator seed"
        rows += pair
    return rows
