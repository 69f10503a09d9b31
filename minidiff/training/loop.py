"""Training a DDPM: one loop, two engines.

    result = train(preset("tiny", out_dir="out/tiny"))              # digits, minutes on 2 CPU cores
    result = train(preset("tutorial", data="path/to/images"))      # the tutorial: a GPU job
    result = train(preset("tutorial", fast=True, mixed_precision="bf16"))   # the fast engine

The rules of a step (target, loss, AdamW, lr schedule, clipping, EMA, data order and flips) are in
minidiff/training/rules.py. An engine runs them: `PlainEngine` (minidiff/training/step.py) one eager step
at a time, also under torchrun; `FastTrainer` (minidiff/training/fast_engine.py) with the data on the device
and each step replayed as one CUDA graph. This loop drives either: epochs, the loss log, sample grids,
checkpoints and resume, and the final outputs.

Randomness comes only from seeded generators: the data order of epoch e and its flips from (seed, e),
eps and t from one generator whose state goes into every checkpoint. So a resumed run draws what an
uninterrupted one draws, and its weights come out bit-identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import minidiff.training.distributed as distributed
from minidiff.cost import say_seconds
from minidiff.training.checkpoint import (
    checkpoint_path,
    checkpoint_to_resume,
    checkpoint_to_state,
    list_checkpoints,
    prune_checkpoints,
    remove_stale_temporary_files,
    save_checkpoint,
    state_to_checkpoint,
)
from minidiff.training.config import QUICK_RUN, TrainConfig, sampling_settings
from minidiff.training.data import ResidentImages, StreamedImages, open_training_images
from minidiff.training.precision import describe_cpu, resolve_precision
from minidiff.training.preflight import (
    check_free_space,
    check_run,
    claim_out_dir,
    hold_out_dir,
    pick_device,
)
from minidiff.training.rules import epoch_order
from minidiff.training.run import (
    LossLog,
    Progress,
    TensorBoard,
    TrainResult,
    build_noise_scheduler,
    build_unet,
    digit_fid,
    loss_label,
    make_noise_generator,
    plan_grid,
    reading_sampler,
    save_model,
    save_outputs,
    save_samples,
    total_steps,
    write_run_config,
)
from minidiff.training.step import PlainEngine

if TYPE_CHECKING:
    from minidiff.training.fast_engine import FastTrainer

logger = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM after saving a checkpoint and the model folder.

    Args:
        signum: the signal's number; `exit_code` is 128 + signum, as shells report it.
        step: the step the run stopped at.
        checkpoint: the checkpoint saved (None when checkpoints are off).
        model_dir: the pipeline folder saved.
    """

    def __init__(self, signum: int, step: int, checkpoint: Path | None, model_dir: Path | None):
        self.signum, self.step, self.checkpoint, self.model_dir = signum, step, checkpoint, model_dir
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as shells report them
        saved = f"checkpoint {checkpoint} and model {model_dir}" if checkpoint else f"model {model_dir}"
        super().__init__(f"{signal.Signals(signum).name} at step {step}: saved {saved}")

    def continue_with(self, argv: list[str]) -> str:
        """The `minidiff` command line that continues the run from its checkpoint: `argv` with --resume."""
        import shlex

        argv = [word for word in argv if word != "--overwrite"]
        resume = [] if "--resume" in argv or "--resume_from_checkpoint" in argv else ["--resume"]
        return f"minidiff {shlex.join(argv + resume)}"


def train(config: TrainConfig, unet: torch.nn.Module | None = None) -> TrainResult:
    """Train as `config` says and write everything into `config.out_dir`: config.json, loss.csv, loss.png,
    samples.png, samples/epoch-*.png, checkpoints/step-*.pt and model/ (a pipeline folder).

    Under torchrun (WORLD_SIZE > 1) the plain engine trains with DistributedDataParallel.
    SIGINT / SIGTERM stop the run after the current step with a checkpoint and the model folder saved,
    then raise `TrainingInterrupted`. One run at a time writes into an output folder: a second one is
    refused (`minidiff.files.FolderInUse`) while the first holds it.

    Args:
        config: the run's settings.
        unet: start from these weights instead of a fresh `build_unet(config)` (a resume still loads the
            checkpoint).

    Returns:
        A `TrainResult`: the losses and the paths of everything written.
    """
    check_run(config)
    device, started_group = distributed.init_from_env(pick_device(config.device))
    try:
        result = _train(config, unet, device)
    except BaseException:
        distributed.cleanup(started_group, wait=False)  # torchrun stops the other processes
        raise
    distributed.cleanup(started_group)
    return result


def make_engine(config: TrainConfig, unet, noise_scheduler, data, steps: int, device: torch.device):
    """The engine `config.fast` asks for, built on the same model, schedule, data and seed."""
    generator = make_noise_generator(config, device)
    if config.fast:
        from minidiff.training.fast_engine import FastTrainer

        return FastTrainer(unet, noise_scheduler, data.images, config, steps, noise_generator=generator)
    return PlainEngine(unet, noise_scheduler, data, config, steps, generator)


@dataclass
class Run:
    """One training run as the loop sees it."""

    config: TrainConfig  # with the sample grids' sampler and steps resolved
    out_dir: Path
    engine: PlainEngine | FastTrainer
    data: ResidentImages | StreamedImages
    noise_scheduler: object
    batches_per_epoch: int
    total_steps: int
    progress: Progress
    log: LossLog
    main: bool  # rank 0: the process that writes files
    started: float
    stop_signal: int | None = None  # set by the SIGINT / SIGTERM handler
    train_started: float = 0.0  # when the first step began (time_budget counts from here)
    eval_seconds: float = 0.0  # spent on digit FID readings
    first_step: int = 0  # the step this start began at (a resumed run's checkpoint)
    auto_grid: bool = False  # the end-of-run grid's sampler and steps are minidiff's choice
    speed_said: bool = False  # the steps/s and the run's estimated time were logged
    second_step_at: float = 0.0  # when the first step ended (the first one builds kernels: not timed)
    sample_grids: list[Path] = field(default_factory=list)

    def request_stop(self, signum: int, frame=None) -> None:
        """The SIGINT / SIGTERM handler: stop after the current step (`_stop_requested` reads it)."""
        self.stop_signal = signum

    def start_epoch(self) -> None:
        config, progress = self.config, self.progress
        order, flips = epoch_order(len(self.data), config.seed, progress.epoch, config.flip)
        self.engine.start_epoch(order, flips, progress.batch_in_epoch)


def _train(config: TrainConfig, unet: torch.nn.Module | None, device: torch.device) -> TrainResult:
    # rank 0 holds the output folder for the whole run (a refused run leaves no empty folder behind)
    held = hold_out_dir(config.out_dir) if distributed.is_main() else contextlib.nullcontext()
    with held:
        run = _start(config, unet, device)
        previous = {s: signal.signal(s, run.request_stop) for s in _signals()}
        try:
            _loop(run)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return _finish(run)


def _loop(run: Run) -> None:
    """One optimizer step (up to grad_accum micro-batches) per turn, until total_steps or a signal."""
    config, engine, progress = run.config, run.engine, run.progress
    run.start_epoch()
    run.train_started = time.perf_counter()
    while progress.step < run.total_steps:
        count = min(config.grad_accum, run.batches_per_epoch - progress.batch_in_epoch)
        run.log.add(engine.step(progress.batch_in_epoch, count))
        epoch_done = progress.advance(count, run.batches_per_epoch)
        if not run.speed_said:
            _say_speed(run)
        if config.eval_every and progress.step % config.eval_every == 0:
            _evaluate(run)
        if progress.step % config.log_every == 0:
            run.log.flush()
        if epoch_done:
            run.start_epoch()
            _end_of_epoch(run)
        last = progress.step == run.total_steps or _out_of_time(run)
        every = config.checkpoint_every
        if every and (progress.step % every == 0 or last):
            _save_checkpoint(run)
        if _stop_requested(run):
            _stop(run)
        if last:
            break
    run.log.flush()


WARMUP_SHARE = 0.2  # the lr warm-up takes at most this share of the planned steps


def _fit_warmup(config: TrainConfig, steps: int, main: bool) -> TrainConfig:
    """`config` with its lr warm-up cut to WARMUP_SHARE of the run's `steps` when longer (said in the log):
    a run that ends inside its warm-up never trains at its lr."""
    fitted = min(config.warmup_steps, math.ceil(WARMUP_SHARE * steps))
    if fitted == config.warmup_steps:
        return config
    if main:
        logger.info(
            "lr warm-up: %d steps instead of %d (at most %.0f%% of the run's %d steps)",
            fitted, config.warmup_steps, 100 * WARMUP_SHARE, steps,
        )  # fmt: skip
    return dataclasses.replace(config, warmup_steps=fitted)


SPEED_AFTER = (20, 5.0)  # the speed line comes after this many timed steps or seconds, whichever is first


def _say_speed(run: Run) -> None:
    """After the first steps: steps/s and the whole run's estimated time (and where a time budget stops it)."""
    if run.engine.device.type == "cuda":
        torch.cuda.synchronize(run.engine.device)  # the steps are queued, not done, until then
    now, done = time.perf_counter(), run.progress.step - run.first_step
    if done == 1:
        run.second_step_at = now
        return
    timed, seconds = done - 1, now - run.second_step_at
    if timed < SPEED_AFTER[0] and seconds < SPEED_AFTER[1]:
        return
    run.speed_said = True
    if not run.main:
        return
    rate = timed / seconds
    left = run.total_steps - run.progress.step
    line = (
        f"speed: {rate:.2f} steps/s ({run.config.batch_size * run.config.grad_accum * rate:.0f} images/s) after "
        f"{done} steps; {run.total_steps} steps take {say_seconds((run.total_steps - run.first_step) / rate)}"
    )
    budget = run.config.time_budget
    if budget is not None and left / rate > budget - (now - run.train_started):
        reach = run.progress.step + int(rate * (budget - (now - run.train_started)))
        line += f"; the time budget of {budget:.0f} s stops it at about {reach} steps"
        if reach < run.config.warmup_steps / WARMUP_SHARE:
            line += (
                f", too few for its {run.config.warmup_steps}-step lr warm-up (expect noise): give --max-steps "
                f"about {max(1, int(rate * budget))} (what {budget:.0f} s train here) or a longer --time-budget"
            )
    logger.info(line)


def _start(config: TrainConfig, unet: torch.nn.Module | None, device: torch.device) -> Run:
    """Claim the output folder, load the data, build model, schedule and engine, resume, open the logs."""
    # 1. the output folder and the checkpoint to resume from, before any time is spent
    main = distributed.is_main()
    out_dir = claim_out_dir(config) if main else Path(config.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    resume_from = (
        checkpoint_to_resume(ckpt_dir, config.resume, device, set_aside=main) if config.resume else None
    )
    if main:
        remove_stale_temporary_files(ckpt_dir)  # half-written checkpoints of a killed run
    started = time.perf_counter()

    # 2. data, model, noise schedule, engine
    data = open_training_images(config, device)
    unet = (unet if unet is not None else build_unet(config, data.channels)).to(device)
    noise_scheduler = build_noise_scheduler(config)
    batches_per_epoch = math.ceil(len(data) / config.batch_size)
    steps = total_steps(config, batches_per_epoch)
    auto_sampler = config.sampler is None
    auto_grid = auto_sampler and config.sample_steps is None
    sampler, sample_steps = sampling_settings(config, steps)
    config = dataclasses.replace(config, sampler=sampler, sample_steps=sample_steps)
    planned = steps  # the warm-up is fitted to the run as first planned: a resume keeps the same lrs
    if resume_from is not None:
        saved = resume_from[1]["config"]
        first_plan = dataclasses.replace(config, max_steps=saved.get("max_steps"), epochs=saved.get("epochs"))
        planned = total_steps(first_plan, batches_per_epoch)
    config = _fit_warmup(config, planned, main and resume_from is None)
    if resume_from is not None and config.mixed_precision == "auto":  # as it started: a bit-identical resume
        config = dataclasses.replace(config, mixed_precision=resume_from[1]["config"]["mixed_precision"])
    config, precision = resolve_precision(
        config, unet, data.channels, device
    )  # "auto": measured (precision.py)
    if main:
        where = describe_cpu() if device.type == "cpu" else str(device)
        logger.info("%s; %s; %d steps of batch %d", where, precision.line, steps, config.batch_size)
    engine = make_engine(config, unet, noise_scheduler, data, steps, device)
    if main:
        check_free_space(out_dir, config, unet)
        if config.batch_size > len(data):
            logger.warning(
                "note: a batch of %d is larger than the %d images of %r: each step trains on all %d",
                config.batch_size, len(data), config.data, len(data),
            )  # fmt: skip

    # 3. resume: weights, optimizer, schedules, position in the data and the generator
    progress, losses, evals = Progress(), [], {}
    if resume_from is not None:
        progress, losses, evals = checkpoint_to_state(resume_from[1], engine, config)
        if main:
            logger.info("resumed from %s at step %d", resume_from[0], progress.step)
    elif config.resume and main:
        logger.info("resume='auto': no checkpoint in %s yet; starting from step 0", ckpt_dir)
    distributed.check_same_on_all_ranks(progress.step, "the step to resume from", device)
    if not config.fast:
        engine.wrap_for_processes()
    if main:
        write_run_config(out_dir, config, total_steps=steps, num_images=len(data), device=str(device),
                         streamed=isinstance(data, StreamedImages))  # fmt: skip
        if auto_sampler and steps < QUICK_RUN and config.num_samples:
            logger.info(
                "sample grids: %s with %d steps, as for every run under %d steps (--sampler chooses another)",
                sampler.upper(), sample_steps, QUICK_RUN,
            )  # fmt: skip

    # 4. the loss log, its progress bar and TensorBoard
    return Run(
        config, out_dir, engine, data, noise_scheduler, batches_per_epoch, steps, progress,
        _open_log(config, out_dir, losses, evals, progress, steps, engine, main), main, started,
        first_step=progress.step, auto_grid=auto_grid,
    )  # fmt: skip


def _open_log(
    config: TrainConfig, out_dir: Path, losses, evals, progress, steps, engine, main: bool
) -> LossLog:
    from tqdm.auto import tqdm

    desc, quiet = "training" + " (fast)" * config.fast, not (config.progress and main)
    bar = tqdm(total=steps, initial=progress.step, desc=desc, unit="step", disable=quiet)
    images_per_step = config.batch_size * config.grad_accum
    fp16 = config.mixed_precision == "fp16"
    log = LossLog(out_dir / "loss.csv", losses, bar, images_per_step, write=main, skip_nonfinite=fp16)
    log.start(evals if config.eval_every else None)
    if main and config.logger == "tensorboard":
        log.tensorboard = TensorBoard(out_dir / config.logging_dir)
        log.lr = lambda: engine.lr_scheduler.get_last_lr()[0]
    return log


def _end_of_epoch(run: Run) -> None:
    """The tutorial's mean loss every 5 epochs; a sample grid and the model folder when they are due."""
    run.log.flush()
    epoch, config = run.progress.epoch, run.config
    if not run.main:
        return
    if epoch % 5 == 0:
        recent = run.log.losses[-run.batches_per_epoch :]
        logger.info("Epoch:%d, loss: %.5f", epoch, sum(recent) / len(recent))
    if config.sample_every is not None and epoch % config.sample_every == 0:
        path = run.out_dir / "samples" / f"epoch-{epoch:04d}.png"
        run.sample_grids.append(save_samples(run.engine.sampling_model, run.noise_scheduler, path, config))
        if run.log.tensorboard is not None:
            run.log.tensorboard.image("samples", path, run.progress.step)
    if config.save_model_every is not None and epoch % config.save_model_every == 0:
        save_model(run.engine.sampling_model, run.noise_scheduler, run.out_dir)


def _save_checkpoint(run: Run) -> Path | None:
    run.log.flush()  # never checkpoint a run whose loss went non-finite
    if not run.main:
        return None
    ckpt_dir = run.out_dir / "checkpoints"
    checkpoint = state_to_checkpoint(run.engine, run.progress, run.config, run.log.losses, run.log.evals)
    path = save_checkpoint(checkpoint_path(ckpt_dir, run.progress.step), checkpoint)
    prune_checkpoints(ckpt_dir, run.config.keep_checkpoints)
    return path


def _evaluate(run: Run) -> None:
    """A digit FID reading of the model so far (rank 0; loss.csv's digit_fid column, loss.png)."""
    if not run.main:
        return
    started = time.perf_counter()
    value = digit_fid(run.engine.sampling_model, run.noise_scheduler, run.config, run.out_dir)
    run.eval_seconds += time.perf_counter() - started
    run.log.evals[run.progress.step] = value
    logger.info("step %d: digit FID %.2f (%d samples, %s)", run.progress.step, value, run.config.eval_samples,
                reading_sampler(run.noise_scheduler))  # fmt: skip
    if run.log.tensorboard is not None:
        run.log.tensorboard.writer.add_scalar("eval/digit_fid", value, run.progress.step)


def _out_of_time(run: Run) -> bool:
    """Whether `time_budget` seconds of training are spent (digit FID readings not counted; all
    processes agree, at loss flushes)."""
    budget = run.config.time_budget
    if budget is None:
        return False
    spent = time.perf_counter() - run.train_started - run.eval_seconds >= budget
    if not distributed.is_distributed():
        return spent
    if run.progress.step % run.config.log_every != 0:
        return False
    return distributed.max_over_ranks(int(spent), run.engine.device) > 0


# ---- SIGINT / SIGTERM: stop after the current step, keeping everything ---------------------------------
def _signals() -> list[int]:
    """The signals the loop catches: only the main thread may install handlers."""
    import threading

    return [signal.SIGINT, signal.SIGTERM] if threading.current_thread() is threading.main_thread() else []


def _stop_requested(run: Run) -> bool:
    """Whether to stop now; with several processes they agree at each loss flush (every log_every
    steps), so that all stop after the same step."""
    if not distributed.is_distributed():
        return run.stop_signal is not None
    if run.progress.step % run.config.log_every != 0:
        return False
    signum = distributed.max_over_ranks(run.stop_signal or 0, run.engine.device)
    run.stop_signal = signum or None
    return signum > 0


def _stop(run: Run) -> None:
    """Save a checkpoint and the model folder, then raise TrainingInterrupted (a second signal while
    saving stops at once: every file is written atomically, so nothing is left half-written)."""
    signum = run.stop_signal
    for s in _signals():
        signal.signal(s, signal.SIG_DFL if s == signal.SIGTERM else signal.default_int_handler)
    run.log.flush()
    checkpoint = _save_checkpoint(run) if run.config.checkpoint_every else None
    model_dir = None
    if run.main:
        model_dir = save_model(run.engine.sampling_model, run.noise_scheduler, run.out_dir)
        if run.log.losses:
            from minidiff.viz import plot_losses

            plot_losses(run.log.losses, run.out_dir / "loss.png", run.log.evals, loss_label(run.config))
    run.log.bar.close()
    raise TrainingInterrupted(signum, run.progress.step, checkpoint, model_dir)


def _finish(run: Run) -> TrainResult:
    """The model as a pipeline folder (EMA weights when EMA is on), samples.png, loss.png."""
    run.log.bar.close()
    out_dir = run.out_dir
    train_seconds = time.perf_counter() - run.train_started - run.eval_seconds
    model_dir, samples_png, loss_png = out_dir / "model", None, out_dir / "loss.png"
    if run.main:
        config = run.config
        if run.auto_grid:  # the grid's sampler and steps by the steps trained, not the steps planned
            trained = dataclasses.replace(config, sampler=None, sample_steps=None)
            sampler, sample_steps = sampling_settings(trained, run.progress.step)
            config = dataclasses.replace(config, sampler=sampler, sample_steps=sample_steps)
        config = plan_grid(run.engine.sampling_model, config, train_seconds, run.auto_grid)
        model_dir, samples_png, loss_png = save_outputs(
            run.engine.sampling_model, run.noise_scheduler, run.log, out_dir, config
        )
        if run.log.tensorboard is not None:
            if samples_png is not None:
                run.log.tensorboard.image("samples", samples_png, run.progress.step)
            run.log.tensorboard.close()
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
        train_seconds=train_seconds,
        evals=dict(run.log.evals or {}),
        first_step=run.first_step,
    )
