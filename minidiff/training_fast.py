"""`train(config)` with `config.fast = True` (`minidiff train --fast`): the same run, driven by `FastTrainer`.

The plain loop (minidiff.training) draws batches on the CPU and runs one eager step at a time; here the
whole data set sits on the device as uint8 and each step (batch, flips, noise, forward, backward, AdamW,
EMA) is one `FastTrainer.step()`: a CUDA-graph replay on a GPU, an eager fp32 step on the CPU. Losses are
read back every `log_every` steps, never per step. Same settings, same outputs (loss.csv, loss.png,
samples.png, model/), same loss curve in distribution; but the batches come from a device generator, so
it is not draw-for-draw the plain loop's run.

Not supported here (a ValueError names them): gradient accumulation, fp16 (use bf16), checkpoints and
resume, several processes. Use the plain loop for those.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from minidiff import distributed
from minidiff.train_config import TrainConfig
from minidiff.train_step import _Warmup, build_noise_scheduler, build_unet


def _check_supported(config: TrainConfig) -> None:
    unsupported = {
        "grad_accum > 1": config.grad_accum != 1,
        "mixed_precision='fp16' (use 'bf16')": config.mixed_precision == "fp16",
        "checkpoint_every": config.checkpoint_every is not None,
        "resume": config.resume,
        "several processes (torchrun)": distributed.world_size() > 1,
    }
    named = [name for name, used in unsupported.items() if used]
    if named:
        raise ValueError(f"fast=True does not support {', '.join(named)}; train without --fast for those")


def train_fast(config: TrainConfig, unet: torch.nn.Module | None = None):
    from tqdm.auto import tqdm

    from minidiff.data import load_dataset_uint8
    from minidiff.fast.trainer import FastTrainer
    from minidiff.pipeline_ddpm import DDPMPipeline
    from minidiff.preflight import check_free_space, pick_device, writable_dir
    from minidiff.training import TrainResult, save_samples
    from minidiff.viz import plot_losses

    # 1. settings and output folder first, then data (uint8, resident on the device) and model
    config.validate()
    _check_supported(config)
    device = pick_device(config.device)
    out_dir = writable_dir(config.out_dir)
    started = time.perf_counter()
    images = load_dataset_uint8(config.data, config.image_size, channels=config.channels, limit=config.limit)
    num_images, channels = images.shape[0], images.shape[1]
    if num_images < config.batch_size:
        raise ValueError(f"batch_size {config.batch_size}; the data set holds only {num_images} images")
    unet = (unet if unet is not None else build_unet(config, channels)).to(device)
    noise_scheduler = build_noise_scheduler(config)
    check_free_space(out_dir, config, unet)
    steps_per_epoch = num_images // config.batch_size  # FastTrainer drops the last partial batch
    total_steps = config.max_steps if config.max_steps is not None else config.epochs * steps_per_epoch

    # 2. the trainer: lr warm-up and the EMA decay warm-up (diffusers' EMAModel) as per-step tables
    warmup = _Warmup(config.warmup_steps)
    ema_decay = config.ema_decay
    trainer = FastTrainer(
        unet,
        noise_scheduler,
        images,
        config.batch_size,
        learning_rate=config.lr,
        lr_at_step=lambda s: config.lr * warmup(s),
        max_steps=total_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.grad_clip,
        ema_decay_at_step=(lambda s: min(ema_decay, (2 + s) / (11 + s))) if ema_decay > 0 else None,
        flip=config.flip,
        mixed_precision=config.mixed_precision == "bf16",
        log_every=config.log_every,
        generator=torch.Generator(device).manual_seed(config.seed + 1),
    )

    # 3. the loop: one step per call, the losses read back every log_every steps
    loss_csv = out_dir / "loss.csv"
    loss_csv.write_text("step,loss\n", encoding="utf-8")
    losses: list[float] = []
    sample_grids: list[Path] = []
    bar = tqdm(total=total_steps, desc="training (fast)", unit="step", disable=not config.progress)
    timed_since = time.perf_counter()
    for step in range(1, total_steps + 1):
        trainer.step()
        bar.update(1)
        if step % config.log_every == 0 or step == total_steps:
            values = trainer.losses()
            for i, value in enumerate(values):
                if not math.isfinite(value):
                    raise FloatingPointError(f"loss is {value} at step {step - len(values) + 1 + i}")
            with open(loss_csv, "a", encoding="utf-8") as f:
                f.write("".join(f"{len(losses) + 1 + i},{v!r}\n" for i, v in enumerate(values)))
            losses.extend(values)
            seconds = time.perf_counter() - timed_since
            bar.set_postfix(
                loss=f"{values[-1]:.4f}", img_s=f"{len(values) * config.batch_size / seconds:.0f}"
            )
            timed_since = time.perf_counter()
        epoch = step // steps_per_epoch
        if config.sample_every and step % steps_per_epoch == 0 and epoch % config.sample_every == 0:
            path = out_dir / "samples" / f"epoch-{epoch:04d}.png"
            sample_grids.append(save_samples(trainer.ema_unet or unet, noise_scheduler, path, config))
    bar.close()

    # 4. outputs, as the plain loop writes them (weights back in the standard memory format)
    final = (trainer.ema_unet or unet).to(memory_format=torch.contiguous_format)
    model_dir = out_dir / "model"
    DDPMPipeline(unet=final, scheduler=noise_scheduler).save_pretrained(model_dir)
    samples_png = save_samples(final, noise_scheduler, out_dir / "samples.png", config)
    loss_png = plot_losses(losses, out_dir / "loss.png")
    return TrainResult(
        losses=losses,
        steps=total_steps,
        epochs_completed=total_steps // steps_per_epoch,
        seconds=time.perf_counter() - started,
        out_dir=out_dir,
        model_dir=model_dir,
        loss_csv=loss_csv,
        loss_png=Path(loss_png),
        samples_png=Path(samples_png),
        sample_grids=sample_grids,
    )
