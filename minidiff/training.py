"""Training a DDPM: the tutorial's loop, with the options a real run needs.

DDPM Algorithm 1 (Ho et al. 2020), one optimizer step:
    x_0 ~ data,  t ~ Uniform{0, ..., T-1},  eps ~ N(0, I)
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps                    (eq. 4, `add_noise`)
    L_simple = || eps - eps_theta(x_t, t) ||^2                        (eq. 14, `loss_fn`)
    theta <- AdamW(theta, grad L_simple)

    result = train(preset("tiny", out_dir="out/tiny"))    # digits, minutes on 2 CPU cores
    result = train(preset("tutorial", data="path/to/images"))   # the tutorial on a folder of images, a GPU job

One step (loss, backward, AdamW, EMA) is `minidiff.train_step.train_step`; this file is the loop around it.
Around that: lr warm-up, an EMA of the weights, bf16 / fp16 autocast (fp16 with a GradScaler),
gradient clipping and accumulation, a loss row per step in loss.csv, loss.png, sample grids, a
progress bar, checkpoints with bit-exact resume, and the final model saved as a pipeline folder
that diffusers' DDPMPipeline loads.

Randomness comes only from explicit generators seeded from `config.seed`: the data order of epoch e
(and its flips) from a generator seeded with (seed, e), noise and timesteps from one generator whose
state goes into every checkpoint. So resuming at step N draws the same batches, noise and timesteps
as a straight run, and the weights come out bit-identical.

Under torchrun (`torchrun --nproc_per_node=N -m minidiff train ...`) every process runs this loop with
DistributedDataParallel: all draw the same global batches, each trains on its rows of them
(`minidiff.distributed.shard`), and rank 0 alone writes loss.csv, sample grids, checkpoints and the model.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minidiff import distributed
from minidiff.checkpoint import (
    checkpoint_path,
    checkpoint_to_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_temporary_files,
    save_checkpoint,
    state_to_checkpoint,
)
from minidiff.preflight import check_free_space, pick_device, writable_dir
from minidiff.train_config import PRESETS, TrainConfig, preset
from minidiff.train_step import (
    EMA,
    TrainState,
    build_noise_scheduler,
    build_unet,
    loss_fn,
    make_train_state,
    train_step,
)

__all__ = [
    "EMA",
    "PRESETS",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "loss_fn",
    "preset",
    "train",
    "train_step",
]

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced: the per-step losses and where every file went."""

    losses: list[float]
    steps: int
    epochs_completed: int
    seconds: float
    out_dir: Path
    model_dir: Path
    loss_csv: Path
    loss_png: Path
    samples_png: Path
    sample_grids: list[Path] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)


# ---- data ---------------------------------------------------------------------------------------------------
def load_images(config: TrainConfig) -> torch.Tensor:
    """The whole data set as one float tensor (N, C, H, W) in [-1, 1], unflipped (flips are drawn per epoch)."""
    from tqdm.auto import tqdm

    from minidiff.data import load_dataset

    dataset = load_dataset(
        config.data, config.image_size, flip=False, channels=config.channels, limit=config.limit
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=256)
    chunks = [x for x in tqdm(loader, desc="loading images", disable=not config.progress, leave=False)]
    return torch.cat(chunks)


def epoch_order(
    num_images: int, seed: int, epoch: int, flip: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The shuffled image order of `epoch` and which images it flips, from a generator seeded by (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_images, generator=generator)
    flips = torch.rand(num_images, generator=generator) < 0.5 if flip else None
    return order, flips


def draw_batch(
    images: torch.Tensor,
    index: torch.Tensor,
    flips: torch.Tensor | None,
    noise_generator: torch.Generator,
    num_train_timesteps: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_0, eps, t) for one micro-batch: the images at `index` (flipped where `flips` says), then
    eps ~ N(0, I) and t ~ U{0..T-1} from `noise_generator`, in that order (the tutorial's order)."""
    clean_images = images[index]  # (B, C, H, W)
    if flips is not None:
        clean_images = torch.where(flips[index].view(-1, 1, 1, 1), clean_images.flip(-1), clean_images)
    clean_images = clean_images.to(device, non_blocking=True)
    noise = torch.randn(clean_images.shape, generator=noise_generator, device=device)
    timesteps = torch.randint(0, num_train_timesteps, (len(index),), generator=noise_generator, device=device)
    return clean_images, noise, timesteps


def sampler_from_config(scheduler_class, config):
    """`scheduler_class` built from another scheduler's config, keeping only the keys it takes (DDIM has no
    `variance_type`, for one), as diffusers does when it swaps compatible schedulers."""
    accepted = set(scheduler_class.init_keywords())
    return scheduler_class.from_config({k: v for k, v in config.items() if k in accepted})


def save_samples(unet, noise_scheduler, path: str | os.PathLike, config: TrainConfig) -> Path:
    """A grid of `config.num_samples` images from `unet` (DDPM or DDIM, `config.sample_steps` steps),
    drawn from a generator seeded by `config.seed`, so every grid of a run starts from the same noise."""
    from minidiff.pipeline_ddpm import DDPMPipeline
    from minidiff.scheduling_ddim import DDIMScheduler
    from minidiff.scheduling_ddpm import DDPMScheduler
    from minidiff.viz import enlarged, save_grid

    # a fresh scheduler: set_timesteps must not touch the one training uses
    sampler_class = DDIMScheduler if config.sampler == "ddim" else DDPMScheduler
    sampler = sampler_from_config(sampler_class, noise_scheduler.config)
    pipeline = DDPMPipeline(unet=unet, scheduler=sampler)
    pipeline.set_progress_bar_config(disable=not config.progress, desc="sampling", leave=False)
    generator = torch.Generator(unet.device).manual_seed(config.seed)
    was_training = unet.training
    images = pipeline(
        batch_size=config.num_samples, generator=generator, num_inference_steps=config.sample_steps
    ).images
    unet.train(was_training)
    return save_grid(enlarged(images), path)


# ---- the loop -------------------------------------------------------------------------------------------------
def train(config: TrainConfig, unet: torch.nn.Module | None = None) -> TrainResult:
    """Run DDPM Algorithm 1 as `config` says and write everything into `config.out_dir`:
    loss.csv, loss.png, samples.png, samples/epoch-*.png, checkpoints/step-*.pt and model/ (a pipeline folder).

    `unet`: start from these weights instead of a fresh `build_unet(config)` (resume still loads the checkpoint).
    Under torchrun (WORLD_SIZE > 1) this joins the process group and trains with DistributedDataParallel.
    """
    config.validate()
    if config.fast:  # the device-resident loop of FastTrainer (minidiff/training_fast.py)
        from minidiff.training_fast import train_fast

        return train_fast(config, unet)
    device, started_group = distributed.init_from_env(pick_device(config.device))
    try:
        result = _train(config, unet, device)
    except BaseException:
        distributed.cleanup(started_group, wait=False)  # torchrun stops the other processes
        raise
    distributed.cleanup(started_group)
    return result


def _train(config: TrainConfig, unet: torch.nn.Module | None, device: torch.device) -> TrainResult:
    from tqdm.auto import tqdm

    from minidiff.pipeline_ddpm import DDPMPipeline
    from minidiff.viz import plot_losses

    # 1. check the output folder before spending any time (the settings were checked by `train`)
    main = distributed.is_main()  # rank 0 writes every file
    out_dir = writable_dir(config.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    previous = latest_checkpoint(ckpt_dir)
    if previous is not None and not config.resume:
        raise FileExistsError(
            f"{str(ckpt_dir)!r} holds checkpoints of an earlier run; resume it (resume=True / --resume) "
            "or choose another out_dir"
        )
    if main:
        remove_stale_temporary_files(ckpt_dir)  # half-written checkpoints of a killed run
    started = time.perf_counter()

    # 2. data, model, noise schedule, optimizer
    images = load_images(config)  # (N, C, H, W) in [-1, 1], on the CPU
    num_images, channels = images.shape[0], images.shape[1]
    unet = (unet if unet is not None else build_unet(config, channels)).to(device)
    noise_scheduler = build_noise_scheduler(config)
    state = make_train_state(config, unet, noise_scheduler)
    if main:
        check_free_space(out_dir, config, unet)
    batches_per_epoch = math.ceil(num_images / config.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum)
    total_steps = config.max_steps if config.max_steps is not None else config.epochs * steps_per_epoch
    noise_generator = torch.Generator(device).manual_seed(config.seed + 1)
    generators = {"noise": noise_generator}

    # 3. resume: weights, optimizer, schedules, position in the data and RNG states
    losses: list[float] = []
    if config.resume and previous is not None:
        losses = checkpoint_to_state(load_checkpoint(previous, device), state, config, generators)
        if main:
            logger.info("resumed from %s at step %d", previous, state.step)
    elif config.resume and main:
        logger.info("resume: no checkpoint in %s yet; starting from step 0", ckpt_dir)
    distributed.check_same_on_all_ranks(state.step, "the step to resume from", device)
    state.unet = distributed.wrap(unet, device)  # DDP when several processes train (no-op for one)
    loss_csv = out_dir / "loss.csv"
    if main:  # rewritten: rows after the checkpoint are dropped
        with open(loss_csv, "w", encoding="utf-8") as f:
            f.write("step,loss\n" + "".join(f"{i + 1},{v!r}\n" for i, v in enumerate(losses)))

    # 4. the loop: one optimizer step = grad_accum micro-batches
    sample_grids: list[Path] = []
    pending: list[torch.Tensor] = []  # losses not yet copied to the host (one sync per log_every steps)
    timed_steps, timed_since = 0, time.perf_counter()
    bar = tqdm(
        total=total_steps,
        initial=state.step,
        desc="training",
        unit="step",
        disable=not (config.progress and main),
    )
    order, flips = epoch_order(num_images, config.seed, state.epoch, config.flip)

    def flush() -> None:
        nonlocal timed_steps, timed_since
        if not pending:
            return
        values = torch.stack(pending).tolist()
        first = len(losses) + 1
        pending.clear()
        for i, value in enumerate(values):
            if not math.isfinite(value) and state.grad_scaler is None:  # fp16: GradScaler skips such steps
                raise FloatingPointError(f"loss is {value} at step {first + i}; training stopped")
        losses.extend(values)
        if main:
            with open(loss_csv, "a", encoding="utf-8") as f:
                f.write("".join(f"{first + i},{v!r}\n" for i, v in enumerate(values)))
        seconds = time.perf_counter() - timed_since
        images_per_s = timed_steps * config.batch_size * config.grad_accum / max(seconds, 1e-9)
        bar.set_postfix(loss=f"{values[-1]:.4f}", img_s=f"{images_per_s:.0f}")
        timed_steps, timed_since = 0, time.perf_counter()

    while state.step < total_steps:
        micro_batches, weights = [], []
        for _ in range(min(config.grad_accum, batches_per_epoch - state.batch_in_epoch)):
            b = state.batch_in_epoch
            index = order[b * config.batch_size : (b + 1) * config.batch_size]
            batch = draw_batch(images, index, flips, noise_generator, config.num_train_timesteps, device)
            rows, weight = distributed.shard(batch)  # this process's rows of the global batch
            micro_batches.append(rows)
            weights.append(weight)
            state.batch_in_epoch += 1
        loss_weights = weights if distributed.is_distributed() else None
        loss = train_step(state, micro_batches, loss_weights)
        pending.append(distributed.all_reduce_mean(loss))  # the whole batch's loss on every rank
        timed_steps += 1
        bar.update(1)
        if state.step % config.log_every == 0:
            flush()
        if state.batch_in_epoch == batches_per_epoch:  # the epoch is over
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            order, flips = epoch_order(num_images, config.seed, state.epoch, config.flip)
            flush()
            if main and state.epoch % 5 == 0:  # the tutorial prints the mean loss every 5 epochs
                logger.info(
                    "Epoch:%d, loss: %.5f", state.epoch, sum(losses[-steps_per_epoch:]) / steps_per_epoch
                )
            if main and config.sample_every is not None and state.epoch % config.sample_every == 0:
                model = state.ema.model if state.ema is not None else distributed.unwrap(state.unet)
                path = out_dir / "samples" / f"epoch-{state.epoch:04d}.png"
                sample_grids.append(save_samples(model, noise_scheduler, path, config))
        if config.checkpoint_every is not None and (
            state.step % config.checkpoint_every == 0 or state.step == total_steps
        ):
            flush()  # never checkpoint a run whose loss went non-finite
            if main:
                ckpt = state_to_checkpoint(state, config, generators, losses)
                save_checkpoint(checkpoint_path(ckpt_dir, state.step), ckpt)
                prune_checkpoints(ckpt_dir, config.keep_checkpoints)
    flush()
    bar.close()

    # 5. outputs: the model as a pipeline folder (EMA weights when EMA is on), samples, loss plot
    final = state.ema.model if state.ema is not None else distributed.unwrap(state.unet)
    model_dir, samples_png, loss_png = out_dir / "model", out_dir / "samples.png", out_dir / "loss.png"
    if main:
        DDPMPipeline(unet=final, scheduler=noise_scheduler).save_pretrained(model_dir)
        samples_png = save_samples(final, noise_scheduler, samples_png, config)
        loss_png = plot_losses(losses, loss_png)
    return TrainResult(
        losses=losses,
        steps=state.step,
        epochs_completed=state.epoch,
        seconds=time.perf_counter() - started,
        out_dir=out_dir,
        model_dir=model_dir,
        loss_csv=loss_csv,
        loss_png=Path(loss_png),
        samples_png=Path(samples_png),
        sample_grids=sample_grids,
        checkpoints=list_checkpoints(ckpt_dir),
    )
