"""The two loop cases: a training step (forward + backward + AdamW) and a whole sampling run."""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline as DiffusersPipeline
from diffusers import DDPMScheduler as DiffusersScheduler

from benchmarks.cases import Settings
from benchmarks.harness import (
    Row,
    alternate,
    fill,
    peak_memory_mb,
    read_peak,
    rel_err,
    reset_peak,
    round_robin,
    skipped_row,
    synchronize,
    time_once,
)
from minidiff.fast import FastDDPMSampler
from minidiff.schedulers.scheduling_ddpm import DDPMScheduler
from minidiff.training.config import TrainConfig
from minidiff.training.fast_engine import FastTrainer
from minidiff.training.rules import epoch_order, loss_fn

LEARNING_RATE = 1e-4  # the tutorial's


# ---- 3. train step -----------------------------------------------------------------------------------------
def _plain_trainer(
    model, scheduler, settings: Settings, inputs, autocast: bool = False, compiled: bool = False
):
    """The tutorial's step: add_noise, MSE on eps, backward, clip to norm 1, AdamW (fused on CUDA)."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, fused=settings.cuda or None)
    if compiled:
        model.compile(mode="reduce-overhead")

    def loss_of(clean, noise, timesteps):
        with torch.autocast(settings.device.type, dtype=torch.bfloat16, enabled=autocast):
            prediction = model(scheduler.add_noise(clean, noise, timesteps), timesteps).sample
        return F.mse_loss(prediction.float(), noise)

    def step():
        if compiled:
            torch.compiler.cudagraph_mark_step_begin()
        loss = loss_of(*inputs())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return loss_of, step


def train_step(settings: Settings, unets, batch: int) -> list[Row]:
    reference, ours = unets
    device, size = settings.device, settings.unet_config["sample_size"]
    theirs_scheduler, our_scheduler = (
        DiffusersScheduler(num_train_timesteps=1000),
        DDPMScheduler(num_train_timesteps=1000),
    )
    pool = [
        (
            torch.rand(batch, 3, size, size, device=device) * 2 - 1,
            torch.randn(batch, 3, size, size, device=device),
            torch.randint(0, 1000, (batch,), device=device),
        )
        for _ in range(4)
    ]
    counter = iter(range(10**9))

    def inputs():
        return pool[next(counter) % len(pool)]

    # the fast engine draws its own batches from a uint8 data set resident on the device
    data = torch.randint(0, 256, (max(4 * batch, 256), 3, size, size), dtype=torch.uint8, device=device)
    config = TrainConfig(
        batch_size=batch,
        lr=LEARNING_RATE,
        grad_clip=1.0,
        mixed_precision="bf16" if settings.cuda else "no",
        max_steps=settings.warmup + settings.rounds + 16,
    )
    trainer = FastTrainer(
        copy.deepcopy(ours),
        our_scheduler,
        data,
        config,
        compile=settings.wants_compile("train") is None,
        compile_mode=None,
    )
    trainer.start_epoch(*epoch_order(data.shape[0], config.seed, 0, config.flip))

    def fast_step():
        return trainer.step(next(counter) % trainer.batches_per_epoch)

    theirs_loss, theirs_step = _plain_trainer(reference, theirs_scheduler, settings, inputs)
    ours_loss, ours_step = _plain_trainer(ours, our_scheduler, settings, inputs)
    with torch.no_grad():  # accuracy: the loss of one batch at the shared initial weights
        expected = theirs_loss(*pool[0])
        with torch.autocast(device.type, torch.bfloat16, enabled=settings.cuda):
            fast_loss = loss_fn(trainer.unet, our_scheduler, *pool[0])
        errors = [rel_err(ours_loss(*pool[0]), expected), rel_err(fast_loss, expected)]
    capture_s = trainer.capture(batch) if trainer.use_cuda_graph else None
    fns = {"diffusers fp32": theirs_step, "minidiff fp32": ours_step, "minidiff fast": fast_step}
    times = alternate(fns, device, settings.rounds, settings.warmup)
    fast_name = "minidiff fast " + (
        "bf16 graph" + (" compiled" if trainer.compiled else "") if settings.cuda else "fp32"
    )
    rows = [
        fill(Row("train_step", "diffusers fp32", batch, "fp32", "step"), times["diffusers fp32"]),
        fill(Row("train_step", "minidiff fp32", batch, "fp32", "step"), times["minidiff fp32"]),
        fill(
            Row("train_step", fast_name, batch, str(settings.fast_dtype)[6:], "step"), times["minidiff fast"]
        ),
    ]
    rows[2].compile_s = capture_s
    rows[1].accuracy_rel_err, rows[2].accuracy_rel_err = errors
    for row, fn in zip(rows, fns.values()):
        row.peak_mem_mb = peak_memory_mb(fn, device)
    why = settings.wants_compile("train")
    if why is None:  # diffusers' strongest: bf16 autocast + torch.compile(mode="reduce-overhead")
        compiled_loss, compiled_step = _plain_trainer(
            reference, theirs_scheduler, settings, inputs, True, True
        )
        start = time.perf_counter()
        compiled_step()
        synchronize(device)
        first_s = time.perf_counter() - start
        seconds = alternate({"c": compiled_step}, device, settings.rounds, settings.warmup)["c"]
        row = fill(
            Row("train_step", "diffusers bf16 compile(reduce-overhead)", batch, "bf16", "step"), seconds
        )
        row.compile_s = first_s - row.median_ms / 1000
        # after training: indicative only. Grad mode stays on: under no_grad dynamo would compile again
        torch.compiler.cudagraph_mark_step_begin()
        row.accuracy_rel_err = rel_err(compiled_loss(*pool[0]), expected)
        row.peak_mem_mb = peak_memory_mb(compiled_step, device)
        row.note = "loss error measured after the timed steps (weights moved)"
        rows.append(row)
    else:
        rows.append(skipped_row("train_step", "diffusers bf16 compile(reduce-overhead)", batch, "step", why))
    for row in rows:
        if row.median_ms:
            row.throughput = batch / (row.median_ms / 1000)
        if row.accuracy_rel_err is not None:
            row.accuracy_ref = row.accuracy_ref or "diffusers fp32 loss, same batch and initial weights"
    return rows


# ---- 4. sampling -------------------------------------------------------------------------------------------
@torch.no_grad()
def sampling(settings: Settings, unets, batch: int) -> list[Row]:
    reference, ours = unets
    device, steps, seed = settings.device, settings.sample_steps, 0
    unit = f"{steps}-step run"
    pipe = DiffusersPipeline(reference, DiffusersScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)

    def run_pipe(pipeline=pipe, n=steps):
        generator = torch.Generator(device).manual_seed(seed)
        return pipeline(batch_size=batch, generator=generator, num_inference_steps=n, output_type="pt").images

    run_pipe(n=2)  # warm-up (cuDNN autotune, allocator)
    reset_peak(device)
    held = []  # the first timed run also gives the fp32 reference images and diffusers' peak memory
    first_s = time_once(lambda: held.append(run_pipe()), device)
    expected = held[0]
    peaks = {"diffusers DDPMPipeline fp32": read_peak(device)}
    samplers = {"minidiff fast fp32": dict(dtype=torch.float32)}
    if settings.cuda:
        samplers["minidiff fast bf16"] = dict(dtype=torch.bfloat16)
        if settings.wants_compile("sample") is None:
            samplers["minidiff fast bf16 compiled"] = dict(
                dtype=torch.bfloat16, compile=True, compile_mode=None
            )
    rows, fns, rounds = [], {"diffusers DDPMPipeline fp32": run_pipe}, {}
    # a 1000-step fp32 pipeline takes ~20 s on a GPU: one run there (the one above), all rounds on CPU
    rounds["diffusers DDPMPipeline fp32"] = 0 if settings.cuda else settings.sample_rounds - 1
    for name, options in samplers.items():
        sampler = FastDDPMSampler(ours, DDPMScheduler(num_train_timesteps=1000), batch, steps, **options)
        capture_s = sampler.capture() if sampler.use_cuda_graph else None
        reset_peak(device)
        images = sampler(seed=seed)
        label = name + (" graph" if sampler.use_cuda_graph else "")
        peaks[label] = read_peak(device)
        row = Row("sampling", label, batch, str(options["dtype"])[6:], unit, compile_s=capture_s)
        row.accuracy_rel_err = rel_err(images, expected)
        row.accuracy_ref = "diffusers DDPMPipeline fp32 images, same seed (same noise)"
        rows.append(row)
        fns[label] = lambda sampler=sampler: sampler(seed=seed)
        rounds[label] = settings.sample_rounds
    why = settings.wants_compile("sample")
    if why is None:  # diffusers' strongest: bf16 UNet compiled with mode="reduce-overhead"
        compiled = DiffusersPipeline(
            copy.deepcopy(reference).to(torch.bfloat16), DiffusersScheduler(num_train_timesteps=1000)
        )
        compiled.set_progress_bar_config(disable=True)
        compiled.unet.compile(mode="reduce-overhead")
        start = time.perf_counter()
        run_pipe(compiled, 3)
        synchronize(device)
        compile_s = time.perf_counter() - start  # not first_s: that is the fp32 reference's timed run
        label = "diffusers bf16 compile(reduce-overhead)"
        row = Row("sampling", label, batch, "bf16", unit, compile_s=compile_s)
        reset_peak(device)
        compiled_images = run_pipe(compiled).float()
        row.accuracy_rel_err = rel_err(compiled_images, expected)
        peaks[label] = read_peak(device)
        row.accuracy_ref = "diffusers DDPMPipeline fp32 images, same seed (noise drawn in bf16)"
        row.note = "compile_s = first 3-step call"
        rows.append(row)
        fns[label], rounds[label] = (lambda: run_pipe(compiled)), settings.sample_rounds
    times = round_robin(fns, rounds, device)
    reference_row = fill(
        Row("sampling", "diffusers DDPMPipeline fp32", batch, "fp32", unit),
        [first_s] + times.pop("diffusers DDPMPipeline fp32"),
    )
    rows = [reference_row] + [fill(row, times[row.impl]) for row in rows]
    for row in rows:
        row.peak_mem_mb = peaks[row.impl]
        row.throughput = batch / (row.median_ms / 1000)
    if why is not None:
        rows.append(skipped_row("sampling", "diffusers bf16 compile(reduce-overhead)", batch, unit, why))
    return rows
