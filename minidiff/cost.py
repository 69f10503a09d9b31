"""What sampling will cost, said before it starts.

A denoising step costs one UNet forward of the batch (the scheduler's arithmetic is noise beside it), so

    seconds = (one forward at the batch size, timed after a warm-up) x steps x batches

`step_seconds` times the forward; `sampling_seconds` multiplies; `cost_line` says it, with a cheaper
setting beside it when one exists:

    step = step_seconds(pipeline.unet, batch_size=16)
    print(cost_line("16 images, ddpm with 1000 steps", step, 1000, cheaper_samplers(1000)))
    # 16 images, ddpm with 1000 steps: ~9.4 min (0.56 s a step); ddim with 50 steps: ~28 s or
    # dpmsolver++ with 20 steps: ~11 s
"""

from __future__ import annotations

from collections.abc import Sequence

FEW_SECONDS = 5.0  # sampling expected to take longer than this is announced before it starts


def step_seconds(unet, batch_size: int) -> float:
    """Seconds of one UNet forward of `batch_size` images on the UNet's device and dtype: one warm-up
    forward (kernel selection, allocations), then one timed; no gradients, the UNet's mode kept."""
    import time

    import torch

    config = unet.config
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    weight = next(unet.parameters())
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, config.in_channels, size, size, generator=generator)  # (B, C, H, W)
    x = x.to(weight.device, weight.dtype)
    t = torch.full((batch_size,), 1, device=weight.device)
    was_training = unet.training
    unet.eval()
    try:
        with torch.no_grad():
            unet(x, t)
            _synchronize(weight.device)
            started = time.perf_counter()
            unet(x, t)
            _synchronize(weight.device)
            return time.perf_counter() - started
    finally:
        unet.train(was_training)


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sampling_seconds(step: float, steps: int, batches: int = 1) -> float:
    """Expected seconds of `steps` denoising steps over `batches` batches, `step` seconds each."""
    return step * steps * batches


def say_seconds(seconds: float) -> str:
    """'~0.4 s', '~28 s', '~9.4 min', '~2.1 h'."""
    if seconds < 10:
        return f"~{seconds:.1f} s"
    if seconds < 120:
        return f"~{seconds:.0f} s"
    if seconds < 7200:
        return f"~{seconds / 60:.1f} min"
    return f"~{seconds / 3600:.1f} h"


def cheaper_samplers(steps: int) -> list[tuple[str, int]]:
    """(sampler, default steps) of minidiff/schedulers/samplers.py's table with fewer steps than `steps`: the first
    sampler of each step count ([("ddim", 50), ("dpmsolver++", 20)] below DDPM's 1,000)."""
    from minidiff.schedulers.samplers import SAMPLERS

    found: dict[int, str] = {}
    for name, sampler in SAMPLERS.items():
        if sampler.steps is not None and sampler.steps < steps:
            found.setdefault(sampler.steps, name)
    return [(name, n) for n, name in found.items()]


def cost_line(
    what: str, step: float, steps: int, batches: int = 1, cheaper: Sequence[tuple[str, int]] = ()
) -> str:
    """'<what>: ~N s (x s a step)', then each (sampler, steps) of `cheaper` that takes fewer steps, with
    its own estimate."""
    line = f"{what}: {say_seconds(sampling_seconds(step, steps, batches))} ({step:.2g} s a step"
    line += f" x {batches} batches)" if batches > 1 else ")"
    options = [
        f"{name} with {n} steps: {say_seconds(sampling_seconds(step, n, batches))}"
        for name, n in cheaper
        if n < steps
    ]
    return line + (f"; {' or '.join(options)}" if options else "")


def announce_cost(unet, what: str, batch: int, steps: int, batches: int = 1, cheaper: bool = True) -> None:
    """Print the expected time of sampling before it starts, when it is more than a few seconds, and of the
    samplers of minidiff/schedulers/samplers.py that take fewer steps by default (`cheaper`)."""
    step = step_seconds(unet, batch)
    if sampling_seconds(step, steps, batches) > FEW_SECONDS:
        options = cheaper_samplers(steps) if cheaper else []
        how = "; --sampler NAME --steps N chooses" if options else ""
        print(f"expected: {cost_line(what, step, steps, batches, options)}{how}", flush=True)
