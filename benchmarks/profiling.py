"""Where the time goes: how many CUDA kernels one UNet forward launches (torch.profiler).

At the tutorial's size a forward needs microseconds of arithmetic, so its time is roughly the number of
kernels times the launch cost; a CUDA graph pays the launch cost once per replay instead.
"""

from __future__ import annotations

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from minidiff.fast import prepare_unet_for_sampling


def _count(fn) -> int:
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for event in prof.events() if event.device_type == DeviceType.CUDA)


@torch.no_grad()
def kernel_counts(unets, device: torch.device, batch: int = 64) -> dict[str, int | str]:
    reference, ours = unets
    size = ours.config.sample_size
    x = torch.randn(batch, ours.config.in_channels, size, size, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    fast = prepare_unet_for_sampling(ours, torch.bfloat16, channels_last=True)
    x_fast = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    try:
        return {
            f"diffusers fp32 forward, batch {batch}": _count(lambda: reference(x, t)),
            f"minidiff fp32 forward, batch {batch}": _count(lambda: ours(x, t)),
            f"minidiff fast copy (bf16, channels_last, fused qkv) forward, batch {batch}": _count(
                lambda: fast(x_fast, t)
            ),
        }
    except RuntimeError as err:  # the profiler is optional: report why instead of failing the run
        return {"profiler failed": str(err)}
