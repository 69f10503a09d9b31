"""The benchmark cases: diffusers and minidiff side by side, same weights, same inputs, same process.

Each case returns `Row`s: diffusers fp32 (the reference and the ratios' numerator), minidiff's plain path,
minidiff's fast path, and, where asked and on CUDA, the strongest diffusers setting a user could pick
(bf16 + torch.compile). Every row that is not the reference carries its error against diffusers fp32.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler as DiffusersScheduler
from diffusers import UNet2DModel as DiffusersUNet

from benchmarks.harness import Row, alternate, fill, peak_memory_mb, rel_err, synchronize
from minidiff.fast import (
    ddpm_step_tables,
    ddpm_update,
    prepare_unet_for_sampling,
)
from minidiff.models.unet_2d import UNet2DModel
from minidiff.schedulers.scheduling_ddpm import DDPMScheduler

# The tutorial's UNet (= minidiff.training.config's "tutorial" preset, 18.5 M parameters, 32x32 RGB).
TUTORIAL_UNET = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(64, 128, 128, 256),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
)
# --quick: a UNet small enough that every case takes a second or two on two CPU cores.
QUICK_UNET = dict(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=8,
)
COMPILE_ESTIMATE_S = 100.0  # a compiled variant is skipped when less time than this is left


@dataclass
class Settings:
    device: torch.device
    unet_config: dict
    rounds: int  # timed runs per implementation (forward, train and scheduler cases)
    sample_rounds: int  # timed runs per implementation of a whole sampling run
    warmup: int
    sample_steps: int
    compile: frozenset[str]  # which compiled variants to run: "train", "sample", "forward"
    deadline: float  # time.monotonic() after which compiled variants are skipped

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def fast_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.cuda else torch.float32

    def wants_compile(self, name: str) -> str | None:
        """None if the compiled variant `name` should run; otherwise why not."""
        if not self.cuda:
            return "CUDA only"
        if name not in self.compile:
            return f"not requested (--compile {name})"
        if time.monotonic() + COMPILE_ESTIMATE_S > self.deadline:
            return "skipped: time budget"
        return None


def build_unets(settings: Settings) -> tuple[DiffusersUNet, UNet2DModel]:
    """diffusers' UNet with seeded random weights, and minidiff's with diffusers' state dict loaded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = DiffusersUNet(**settings.unet_config)
    ours = UNet2DModel(**settings.unet_config)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.to(settings.device).eval(), ours.to(settings.device).eval()


# ---- 1. UNet forward ---------------------------------------------------------------------------------
@torch.no_grad()
def unet_forward(settings: Settings, unets, batch: int) -> list[Row]:
    reference, ours = unets
    device, size = settings.device, settings.unet_config["sample_size"]
    pool = [
        (torch.randn(batch, 3, size, size, device=device), torch.randint(0, 1000, (batch,), device=device))
        for _ in range(4)
    ]
    counter = iter(range(10**9))

    def inputs():
        return pool[next(counter) % len(pool)]

    expected = reference(*pool[0]).sample
    # minidiff fast: the sampling copy (bf16 + channels_last on CUDA, fused q/k/v), graph-captured on CUDA
    fast = prepare_unet_for_sampling(ours, settings.fast_dtype, channels_last=settings.cuda)
    layout = torch.channels_last if settings.cuda else torch.contiguous_format
    static_x = torch.empty_like(
        pool[0][0], dtype=settings.fast_dtype, memory_format=layout
    )  # never aliases the pool
    static_x.copy_(pool[0][0])
    static_t = pool[0][1].clone()
    start = time.perf_counter()
    fast_out = fast(static_x, static_t).sample
    graph = None
    if settings.cuda:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                fast(static_x, static_t)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fast_out = fast(static_x, static_t).sample
        synchronize(device)
    capture_s = time.perf_counter() - start

    def run_fast():
        x, t = inputs()
        static_x.copy_(x)
        static_t.copy_(t)
        if graph is not None:
            graph.replay()
        else:
            fast(static_x, static_t)
        return fast_out

    fns = {
        "diffusers fp32": lambda: reference(*inputs()).sample,
        "minidiff fp32": lambda: ours(*inputs()).sample,
        "minidiff fast": run_fast,
    }
    times = alternate(fns, device, settings.rounds, settings.warmup)
    fast_name = f"minidiff fast {'bf16 graph' if settings.cuda else 'fp32'} (fused qkv)"
    rows = [
        fill(Row("unet_forward", "diffusers fp32", batch, "fp32", "forward"), times["diffusers fp32"]),
        fill(Row("unet_forward", "minidiff fp32", batch, "fp32", "forward"), times["minidiff fp32"]),
        fill(
            Row("unet_forward", fast_name, batch, str(settings.fast_dtype)[6:], "forward"),
            times["minidiff fast"],
        ),
    ]
    rows[2].compile_s = capture_s
    rows[1].accuracy_rel_err = rel_err(ours(*pool[0]).sample, expected)
    rows[2].accuracy_rel_err = rel_err(
        run_fast_on(pool[0], static_x, static_t, graph, fast, fast_out), expected
    )
    for row, name in zip(rows, fns):
        row.peak_mem_mb = peak_memory_mb(fns[name], device)
        row.throughput = batch / (row.median_ms / 1000)
    for row in rows[1:]:
        row.accuracy_ref = "diffusers fp32 output, same input"
    return rows


def run_fast_on(inputs, static_x, static_t, graph, model, graph_out) -> torch.Tensor:
    static_x.copy_(inputs[0])
    static_t.copy_(inputs[1])
    if graph is not None:
        graph.replay()
        return graph_out.float().clone()
    return model(static_x, static_t).sample.float()


# ---- 2. scheduler step alone ---------------------------------------------------------------------------
@torch.no_grad()
def scheduler_step(settings: Settings, batch: int) -> list[Row]:
    device, size = settings.device, settings.unet_config["sample_size"]
    theirs, ours = DiffusersScheduler(num_train_timesteps=1000), DDPMScheduler(num_train_timesteps=1000)
    for scheduler in (theirs, ours):
        scheduler.set_timesteps(1000)
    tables = ddpm_step_tables(theirs, device)
    index = 500
    t = theirs.timesteps[index]
    step_index = torch.tensor([index], device=device)
    pool = [
        (torch.randn(batch, 3, size, size, device=device), torch.randn(batch, 3, size, size, device=device))
        for _ in range(4)
    ]
    generators = {name: torch.Generator(device).manual_seed(0) for name in ("d", "m", "f")}
    counter = iter(range(10**9))

    def inputs():
        return pool[next(counter) % len(pool)]

    def fast_step(x, out, generator):
        noise = torch.randn(x.shape, generator=generator, device=device)
        coeffs = tables.coeffs.index_select(0, step_index)
        return ddpm_update(x, out, noise, coeffs, tables.clip_sample_range, tables.thresholding)[0]

    def diffusers_step():
        x, out = inputs()
        return theirs.step(out, t, x, generator=generators["d"]).prev_sample

    def minidiff_step():
        x, out = inputs()
        return ours.step(out, t, x, generator=generators["m"]).prev_sample

    fns = {
        "diffusers DDPMScheduler.step": diffusers_step,
        "minidiff DDPMScheduler.step": minidiff_step,
        "minidiff fast ddpm_update": lambda: fast_step(*inputs(), generators["f"]),
    }
    times = alternate(fns, device, settings.rounds * 5, settings.warmup)
    rows = [fill(Row("scheduler_step", name, batch, "fp32", "step"), times[name]) for name in fns]
    x, out = pool[0]
    expected = theirs.step(out, t, x, generator=torch.Generator(device).manual_seed(1)).prev_sample
    got_ours = ours.step(out, t, x, generator=torch.Generator(device).manual_seed(1)).prev_sample
    got_fast = fast_step(x, out, torch.Generator(device).manual_seed(1))
    rows[1].accuracy_rel_err, rows[2].accuracy_rel_err = (
        rel_err(got_ours, expected),
        rel_err(got_fast, expected),
    )
    for row in rows[1:]:
        row.accuracy_ref = "diffusers step, same inputs and generator seed"
    return rows
