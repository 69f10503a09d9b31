"""The Stable Diffusion case: one forward of an SD-1.5-shaped UNet2DConditionModel, diffusers' and minidiff's.

Random weights (seeded) shared by both models, 4x64x64 latents, batch 2 (the guidance pair: unconditional and
conditional), 77 text tokens of width 768. fp32 on CPU; fp16 on CUDA (how Stable Diffusion is run there), both
libraries in the same precision, SDPA attention in both. Each row carries minidiff's output error against
diffusers' output for the same input.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel as DiffusersUNet

from benchmarks.cases import QUICK_UNET
from benchmarks.harness import Row, alternate, fill, peak_memory_mb, rel_err
from minidiff.models.unet_2d_condition import UNet2DConditionModel

# runwayml/stable-diffusion-v1-5's unet/config.json (the keys that differ from the class defaults)
SD15_UNET = dict(
    sample_size=64, cross_attention_dim=768, attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280)
)
# --quick: the same layout, narrow enough for a second on two CPU cores
QUICK_SD_UNET = dict(
    sample_size=16, cross_attention_dim=32, attention_head_dim=2, block_out_channels=(32, 64, 64, 64)
)
TEXT_TOKENS = 77


def build_sd_unets(config: dict, device: torch.device, dtype: torch.dtype):
    """diffusers' UNet with seeded random weights, and minidiff's built on the meta device holding the same
    tensors (no second copy of the 860 M parameters)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = DiffusersUNet(**config)
    reference = torch.nn.Module.to(reference, device=device, dtype=dtype).eval()  # no diffusers cast warning
    with torch.device("meta"):
        ours = UNet2DConditionModel(**config)
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    return reference, ours.eval()


@torch.no_grad()
def sd_unet_forward(settings, batch: int) -> list[Row]:
    """Forward time of both UNets, alternating, on fresh random latents, timesteps and text tokens."""
    device, quick = settings.device, settings.unet_config == QUICK_UNET
    config = QUICK_SD_UNET if quick else SD15_UNET
    dtype = torch.float16 if settings.cuda else torch.float32
    precision = "fp16" if settings.cuda else "fp32"
    reference, ours = build_sd_unets(config, device, dtype)
    size, width = config["sample_size"], config["cross_attention_dim"]

    def draw():
        return (
            torch.randn(batch, 4, size, size, device=device, dtype=dtype),
            torch.randint(0, 1000, (batch,), device=device),
            torch.randn(batch, TEXT_TOKENS, width, device=device, dtype=dtype),
        )

    pool = [draw() for _ in range(3)]
    counter = iter(range(10**9))

    def inputs():
        return pool[next(counter) % len(pool)]

    fns = {
        f"diffusers {precision}": lambda: reference(*inputs()).sample,
        f"minidiff {precision}": lambda: ours(*inputs()).sample,
    }
    times = alternate(fns, device, settings.rounds, warmup=1)
    shape = f"{config['block_out_channels']}, 4x{size}x{size} latents, {TEXT_TOKENS}x{width} text"
    rows = [fill(Row("sd_unet_forward", name, batch, precision, "forward"), times[name]) for name in fns]
    rows[1].accuracy_rel_err = rel_err(ours(*pool[0]).sample, reference(*pool[0]).sample)
    rows[1].accuracy_ref = f"diffusers {precision} output, same weights and inputs"
    for row, fn in zip(rows, fns.values()):
        row.peak_mem_mb = peak_memory_mb(fn, device)
        row.throughput = batch / (row.median_ms / 1000)
        row.note = f"SD-1.5-shaped UNet ({sum(p.numel() for p in ours.parameters()) / 1e6:.0f} M), {shape}"
    return rows
