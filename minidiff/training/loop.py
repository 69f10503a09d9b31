"""Training a DDPM: one loop, two engines.

    result = train(preset("tiny", out_dir="out/tiny"))              # digits, minutes on 2 CPU cores
    result = train(preset("tutorial", data="path/to/images"))      # the tutorial: a GPU job
    result = train(preset("tutorial", fast=True, mixed_precision="bf16"))   # the fast engine

The rules of a step (target, loss, AdamW, lr schedule, clipping, EMA, data order and flips) are in
minidiff/training/rules.py. An engine runs them: `PlainEngine` (minidiff/training/step.py) one eager step
at a time, also under torchrun; `FastTrainer` (minidiff/fast/trainer.py) with the data on the device
and each step replayed as one CUDA graph. This loop drives either: epochs, the loss log, sample grids,
checkpoints and resume, and the final outputs.

Randomness comes only from seeded generators: the data order of epoch e and its flips from (seed, e),
eps and t from one generator whose state goes into every checkpoint. So a resumed run draws what an
uninterrupted one draws, and its weights come out bit-identical.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import minidiff.training.distributed as distributed
from minidiff.training.checkpoint import (
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
from minidiff.training.config import TrainConfig
from minidiff.training.preflight import check_free_space, pick_device, writable_dir
from minidiff.training.rules import epoch_order
from minidiff.training.run import (
    LossLog,
    Progress,
    TrainResult,
    build_noise_scheduler,
    build_unet,
    load_images,
    make_noise_generator,
    save_outputs,
    save_samples,
    total_steps,
)
from minidiff.training.step import PlainEngine

if TYPE_CHECKING:
    from minidiff.fast.trainer import FastTrainer

logger = logging.getLogger(__name__)


def train(config: TrainConfig, unet: torch.nn.Module | None = None) -> TrainResult:
    """Train as `config` says and write everything into `config.out_dir`: loss.csv, loss.png,
    samples.png, samples/epoch-*.png, checkpoints/step-*.pt and model/ (a pipeline folder).

    `unet`: start from these weights instead of a fresh `build_unet(config)` (resume still loads the
    checkpoint). Under torchrun (WORLD_SIZE > 1) the plain engine trains with DistributedDataParallel.
    """
    config.validate()
    if config.fast:
        from minidiff.fast.trainer import check_fast_supported

        check_fast_supported(config)
    device, started_group = distributed.init_from_env(pick_device(config.device))
    try:
        result = _train(config, unet, device)
    except BaseException:
        distributed.cleanup(started_group, wait=False)  # torchrun stops the other processes
        raise
    distributed.cleanup(started_group)
    return result


def make_engine(config: TrainConfig, unet, noise_scheduler, images, steps: int, device: torch.device):
    """The engine `config.fast` asks for, built on the same model, schedule, data and seed."""
    generator = make_noise_generator(config, device)
    if config.fast:
        from minidiff.fast.trainer import FastTrainer

        return FastTrainer(unet, noise_scheduler, images, config, steps, noise_generator=generator)
    return PlainEngine(unet, noise_scheduler, images, config, steps, generator)


@dataclass
class Run:
    """One training run as the loop sees it."""

    config: TrainConfig
    out_dir: Path
    engine: PlainEngine | FastTrainer
    noise_scheduler: object
    num_images: int
    batches_per_epoch: int
    total_steps: int
    progress: Progress
    log: LossLog
    main: bool  # rank 0: the process that writes files
    started: float
    sample_grids: list[Path] = field(default_factory=list)

    def epoch_order(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return epoch_order(self.num_images, self.config.seed, self.progress.epoch, self.config.flip)


def _train(config: TrainConfig, unet: torch.nn.Module | None, device: torch.device) -> TrainResult:
    run = _start(config, unet, device)
    _loop(run)
    return _finish(run)


def _loop(run: Run) -> None:
    """One optimizer step (up to grad_accum micro-batches) per turn, until total_steps."""
    config, engine, progress = run.config, run.engine, run.progress
    engine.start_epoch(*run.epoch_order())
    while progress.step < run.total_steps:
        count = min(config.grad_accum, run.batches_per_epoch - progress.batch_in_epoch)
        run.log.add(engine.step(progress.batch_in_epoch, count))
        epoch_done = progress.advance(count, run.batches_per_epoch)
        if progress.step % config.log_every == 0:
            run.log.flush()
        if epoch_done:
            engine.start_epoch(*run.epoch_order())
            _end_of_epoch(run)
        every = config.checkpoint_every
        if every and (progress.step % every == 0 or progress.step == run.total_steps):
            _save_checkpoint(run)
    run.log.flush()


def _start(config: TrainConfig, unet: torch.nn.Module | None, device: torch.device) -> Run:
    """Check the output folder, load the data, build model, schedule and engine, resume, open the log."""
    from tqdm.auto import tqdm

    # 1. the output folder first, before any time is spent
    main = distributed.is_main()
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

    # 2. data (uint8, on the host), model, noise schedule, engine
    images = load_images(config)  # (N, C, H, W)
    unet = (unet if unet is not None else build_unet(config, images.shape[1])).to(device)
    noise_scheduler = build_noise_scheduler(config)
    batches_per_epoch = math.ceil(images.shape[0] / config.batch_size)
    steps = total_steps(config, batches_per_epoch)
    engine = make_engine(config, unet, noise_scheduler, images, steps, device)
    if main:
        check_free_space(out_dir, config, unet)

    # 3. resume: weights, optimizer, schedules, position in the data and the generator
    progress, losses = Progress(), []
    if config.resume and previous is not None:
        progress, losses = checkpoint_to_state(load_checkpoint(previous, device), engine, config)
        if main:
            logger.info("resumed from %s at step %d", previous, progress.step)
    elif config.resume and main:
        logger.info("resume: no checkpoint in %s yet; starting from step 0", ckpt_dir)
    distributed.check_same_on_all_ranks(progress.step, "the step to resume from", device)
    if not config.fast:
        engine.wrap_for_processes()

    # 4. the loss log and its progress bar
    desc, quiet = "training" + " (fast)" * config.fast, not (config.progress and main)
    bar = tqdm(total=steps, initial=progress.step, desc=desc, unit="step", disable=quiet)
    images_per_step = config.batch_size * config.grad_accum
    fp16 = config.mixed_precision == "fp16"
    log = LossLog(out_dir / "loss.csv", losses, bar, images_per_step, write=main, skip_nonfinite=fp16)
    return Run(
        config, out_dir, engine, noise_scheduler, images.shape[0], batches_per_epoch, steps, progress, log,
        main, started,
    )  # fmt: skip


def _end_of_epoch(run: Run) -> None:
    """The tutorial's mean loss every 5 epochs; a sample grid every sample_every epochs."""
    run.log.flush()
    epoch, config = run.progress.epoch, run.config
    if run.main and epoch % 5 == 0:
        recent = run.log.losses[-run.batches_per_epoch :]
        logger.info("Epoch:%d, loss: %.5f", epoch, sum(recent) / len(recent))
    if run.main and config.sample_every is not None and epoch % config.sample_every == 0:
        path = run.out_dir / "samples" / f"epoch-{epoch:04d}.png"
        run.sample_grids.append(save_samples(run.engine.sampling_model, run.noise_scheduler, path, config))


def _save_checkpoint(run: Run) -> None:
    run.log.flush()  # never checkpoint a run whose loss went non-finite
    if run.main:
        ckpt_dir = run.out_dir / "checkpoints"
        checkpoint = state_to_checkpoint(run.engine, run.progress, run.config, run.log.losses)
        save_checkpoint(checkpoint_path(ckpt_dir, run.progress.step), checkpoint)
        prune_checkpoints(ckpt_dir, run.config.keep_checkpoints)


def _finish(run: Run) -> TrainResult:
    """The model as a pipeline folder (EMA weights when EMA is on), samples.png, loss.png."""
    run.log.bar.close()
    out_dir = run.out_dir
    model_dir, samples_png, loss_png = out_dir / "model", out_dir / "samples.png", out_dir / "loss.png"
    if run.main:
        model_dir, samples_png, loss_png = save_outputs(
            run.engine.sampling_model, run.noise_scheduler, run.log.losses, out_dir, run.config
        )
    return TrainResult(
        losses=run.log.losses,
        steps=run.progress.step,
        epochs_completed=run.progress.epoch,
        seconds=time.perf_counter() - run.started,
        out_dir=out_dir,
        model_dir=model_dir,
        loss_csv=out_dir / "loss.csv",
        loss_png=loss_png,
        samples_png=samples_png,
        sample_grids=run.sample_grids,
        checkpoints=list_checkpoints(out_dir / "checkpoints"),
    )
