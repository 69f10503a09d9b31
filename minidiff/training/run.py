"""What every training run shares, whichever engine steps it: the model, the noise schedule and the
data it starts from, where it stands (`Progress`), the loss log, and the files it leaves behind."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minidiff.training.config import TrainConfig
from minidiff.training.rules import check_finite

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced: the per-step losses and where every file went.

    Args:
        losses: the loss of every step this start took.
        steps: the optimizer steps the run stands at; this start took steps - first_step of them.
        epochs_completed: the epochs finished.
        seconds: wall-clock seconds of this start.
        out_dir: the run's output folder.
        model_dir: the saved pipeline folder.
        loss_csv: the loss log.
        loss_png: the loss curve.
        samples_png: the final sample grid (None when no grid was drawn).
        sample_grids: the grids drawn during training.
        checkpoints: the checkpoints kept.
        train_seconds: the steps alone (no data loading, no final outputs).
        evals: step -> digit FID (`eval_every`).
        first_step: the step this start began at (0, or the checkpoint a resume loaded).
    """

    losses: list[float]
    steps: int
    epochs_completed: int
    seconds: float
    out_dir: Path
    model_dir: Path
    loss_csv: Path
    loss_png: Path
    samples_png: Path | None
    sample_grids: list[Path] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    train_seconds: float = 0.0  # the steps alone (no data loading, no final outputs)
    evals: dict[int, float] = field(default_factory=dict)  # step -> digit FID (eval_every)
    first_step: int = 0  # the step this start began at (0, or the checkpoint a resume loaded)


def _steps(n: int) -> str:
    return f"{n} step" + "s" * (n != 1)


def report_text(result: TrainResult, extra: dict[str, Path] | None = None) -> str:
    """What a start did (steps, time, speed), where the run stands, and the files that exist (with
    `extra`'s): the lines `minidiff train` prints at the end."""
    done = result.steps - result.first_step
    rate = done / result.train_seconds if result.train_seconds > 0 else float("nan")
    resumed = f"; resumed at step {result.first_step}, the run now has {_steps(result.steps)}"
    epochs = f"{result.epochs_completed} epoch" + "s" * (result.epochs_completed != 1)
    recent = result.losses[-100:]
    lines = [
        f"trained {_steps(done)} in {result.seconds:.0f} s; {rate:.2f} steps/s ({result.train_seconds:.0f} s "
        f"of steps){resumed if result.first_step else ''}; {epochs} in all",
        f"final loss (mean of the last 100 steps): {sum(recent) / len(recent):.4f}",
    ]
    files = {"samples": result.samples_png, "loss plot": result.loss_png, "loss per step": result.loss_csv,
             "model (pipeline folder)": result.model_dir, **(extra or {})}  # fmt: skip
    files.update({f"samples {grid.stem}": grid for grid in result.sample_grids})
    files.update({f"checkpoint {ckpt.stem}": ckpt for ckpt in result.checkpoints})
    files = {what: path for what, path in files.items() if path is not None and Path(path).exists()}
    width = max(len(k) for k in files)
    return "\n".join(lines + [f"  {what:<{width}}  {path}" for what, path in files.items()])


# ---- what a run starts from ---------------------------------------------------------------------------
def build_unet(config: TrainConfig, channels: int):
    """The UNet2DModel of `config`, its initial weights drawn after torch.manual_seed(config.seed)
    (inside fork_rng: the caller's global RNG is left as it was).

    Args:
        config: the run's settings (model keywords, image size, seed).
        channels: the images' channels (1 for the digits, 3 for RGB): the UNet's in and out channels.
    """
    from minidiff.models.unet_2d import UNet2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return UNet2DModel(
            sample_size=config.image_size,
            in_channels=channels,
            out_channels=channels,
            layers_per_block=config.layers_per_block,
            block_out_channels=tuple(config.block_out_channels),
            down_block_types=tuple(config.down_block_types),
            up_block_types=tuple(config.up_block_types),
            norm_num_groups=config.norm_num_groups,
        )


def build_noise_scheduler(config: TrainConfig):
    """The DDPMScheduler of the run; saved with the model, so every sampler built from its config (minidiff's
    or diffusers') uses its prediction_type, its zero-terminal-SNR betas and its timestep_spacing.

    Args:
        config: the run's settings (its noise-schedule fields).
    """
    from minidiff.schedulers.scheduling_ddpm import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        rescale_betas_zero_snr=config.rescale_betas_zero_snr,
        timestep_spacing=config.timestep_spacing,
    )


def make_noise_generator(config: TrainConfig, device: torch.device) -> torch.Generator:
    """The generator of eps and t: on the training device, seeded with seed + 1."""
    return torch.Generator(device).manual_seed(config.seed + 1)


@dataclass
class Progress:
    """Where a run stands: optimizer steps taken, epochs completed, micro-batches of this epoch used."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0

    def advance(self, micro_batches: int, batches_per_epoch: int) -> bool:
        """Count one optimizer step over `micro_batches`; True when it completed an epoch."""
        self.step += 1
        self.batch_in_epoch += micro_batches
        if self.batch_in_epoch < batches_per_epoch:
            return False
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return True


def total_steps(config: TrainConfig, batches_per_epoch: int) -> int:
    """max_steps, else epochs x optimizer steps per epoch (the last one may take fewer micro-batches)."""
    if config.max_steps is not None:
        return config.max_steps
    return config.epochs * math.ceil(batches_per_epoch / config.grad_accum)


# ---- the loss log: loss.csv, the progress bar, the non-finite check ------------------------------------------
class LossLog:
    """Losses stay on the device until `flush` (every log_every steps): one host sync per flush.
    `loss.csv` is rewritten at the start (a resumed run keeps the rows up to its checkpoint) and
    appended at each flush; only `write=True` (rank 0) writes it, and the TensorBoard log if there is one."""

    def __init__(
        self, path: Path, losses: list[float], bar, images_per_step: int, write: bool, skip_nonfinite: bool
    ):
        self.path, self.losses, self.bar = path, losses, bar
        self.images_per_step, self.write, self.skip_nonfinite = images_per_step, write, skip_nonfinite
        self.tensorboard: TensorBoard | None = None
        self.lr = lambda: float("nan")  # the current learning rate, for the TensorBoard log
        self.evals: dict[int, float] | None = None  # step -> digit FID, when the run measures it
        self.pending: list[torch.Tensor] = []
        self.since = time.perf_counter()

    def start(self, evals: dict[int, float] | None) -> None:
        """Rewrite loss.csv with the rows so far (a resumed run keeps those up to its checkpoint)."""
        self.evals = evals
        if self.write:
            header = "step,loss" + (",digit_fid" if evals is not None else "")
            rows = "".join(self._row(i + 1, v) for i, v in enumerate(self.losses))
            self.path.write_text(header + "\n" + rows, encoding="utf-8")

    def _row(self, step: int, loss: float) -> str:
        if self.evals is None:
            return f"{step},{loss!r}\n"
        return f"{step},{loss!r},{self.evals[step]!r}\n" if step in self.evals else f"{step},{loss!r},\n"

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(loss)
        self.bar.update(1)

    def flush(self) -> None:
        if not self.pending:
            return
        values, first = torch.stack(self.pending).tolist(), len(self.losses) + 1
        if not self.skip_nonfinite:  # fp16: the GradScaler skips such steps itself
            check_finite(values, first)
        self.losses.extend(values)
        if self.write:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("".join(self._row(first + i, v) for i, v in enumerate(values)))
        if self.tensorboard is not None:
            self.tensorboard.losses(values, first, self.lr())
        seconds = max(time.perf_counter() - self.since, 1e-9)
        images_per_s = len(self.pending) * self.images_per_step / seconds
        self.bar.set_postfix(loss=f"{values[-1]:.4f}", img_s=f"{images_per_s:.0f}")
        self.pending.clear()
        self.since = time.perf_counter()


class TensorBoard:
    """`--logger tensorboard`: loss and lr per step, sample grids, in out_dir/logs (torch.utils.tensorboard)."""

    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ModuleNotFoundError(
                "logger='tensorboard' needs the tensorboard package: pip install tensorboard  "
                "(or pip install 'minidiff[tensorboard]')"
            ) from err
        self.writer = SummaryWriter(str(folder))

    def losses(self, values: list[float], first_step: int, lr: float) -> None:
        for i, value in enumerate(values):
            self.writer.add_scalar("train/loss", value, first_step + i)
        self.writer.add_scalar("train/lr", lr, first_step + len(values) - 1)
        self.writer.flush()

    def image(self, tag: str, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        self.writer.add_image(tag, np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def reading_sampler(noise_scheduler) -> str:
    """ "DPMSOLVER++ 20 steps": the sampler of the digit FID readings, `minidiff eval`'s default (the table's
    "eval" choice), so that loss.csv's readings and eval.json compare."""
    from minidiff.schedulers.samplers import CHOICES, steps_for

    sampler, steps = CHOICES["eval"]
    return f"{sampler.upper()} {steps_for(sampler, noise_scheduler.config.num_train_timesteps, steps)} steps"


def digit_fid(unet, noise_scheduler, config: TrainConfig, out_dir: Path) -> float:
    """The digit FID of `config.eval_samples` images from `unet` (seed config.seed; the sampler and steps of
    `minidiff eval`, see `reading_sampler`) against the run's data source (all of it, whatever `limit` trains
    on); its features are cached in out_dir/eval/reference. The measurement is minidiff.quality's."""
    from minidiff.pipelines.pipeline_ddpm import DDPMPipeline
    from minidiff.quality import digit_fid as measure
    from minidiff.quality.reference import CACHE_SUBDIR

    pipeline = DDPMPipeline(unet, noise_scheduler)
    return measure(pipeline, config.data, config.eval_samples, config.seed, cache_dir=out_dir / CACHE_SUBDIR)


def write_run_config(out_dir: Path, config: TrainConfig, **resolved) -> Path:
    """out_dir/config.json: every setting of the run as it starts, and what was resolved from them."""
    import json

    from minidiff._version import __version__
    from minidiff.files import atomic_write_text
    from minidiff.training.config import config_dict

    settings = {
        **config_dict(config),
        **{f"_{k}": v for k, v in resolved.items()},
        "_minidiff_version": __version__,
    }
    return atomic_write_text(out_dir / "config.json", json.dumps(settings, indent=2, default=str) + "\n")


# ---- what a run leaves behind -----------------------------------------------------------------------------
def save_samples(unet, noise_scheduler, path: str | os.PathLike, config: TrainConfig) -> Path:
    """A grid of `config.num_samples` images from `unet` (`config.sampler`, `config.sample_steps` steps),
    drawn from a generator seeded by `config.seed`, so every grid of a run starts from the same noise."""
    from minidiff.pipelines.pipeline_ddpm import DDPMPipeline, with_sampler
    from minidiff.viz import enlarged, save_grid

    # a fresh scheduler: set_timesteps must not touch the one training uses
    pipeline = with_sampler(DDPMPipeline(unet=unet, scheduler=noise_scheduler), config.sampler)
    pipeline.set_progress_bar_config(disable=not config.progress, desc="sampling", leave=False)
    generator = torch.Generator(unet.device).manual_seed(config.seed)
    was_training = unet.training
    images = pipeline(
        batch_size=config.num_samples, generator=generator, num_inference_steps=config.sample_steps
    ).images
    unet.train(was_training)
    return save_grid(enlarged(images), path)


def save_model(unet, noise_scheduler, out_dir: Path) -> Path:
    """out_dir/model: a pipeline folder that minidiff's and diffusers' DDPMPipeline load."""
    from minidiff.pipelines.pipeline_ddpm import DDPMPipeline

    unet = unet.to(memory_format=torch.contiguous_format)
    return DDPMPipeline(unet=unet, scheduler=noise_scheduler).save_pretrained(out_dir / "model")


GRID_SHARE = 0.25  # an end-of-run grid minidiff chooses costs at most this share of the training time
MIN_GRID_STEPS = 10  # fewer DDIM steps draw blurs: below this, fewer images instead


def plan_grid(unet, config: TrainConfig, train_seconds: float, automatic: bool) -> TrainConfig:
    """`config` with the end-of-run grid's sampler, steps and images. Set by the user (`automatic`
    False): kept, and the expected time said when over a few seconds. Chosen by minidiff: cut, when
    needed, to cost at most GRID_SHARE of this start's `train_seconds` (or a few seconds), first to
    fewer DDIM steps (down to MIN_GRID_STEPS), then to fewer images; the log line says so."""
    from minidiff.cost import FEW_SECONDS, cost_line, sampling_seconds, say_seconds, step_seconds
    from minidiff.schedulers.samplers import CHOICES

    if not config.num_samples:
        return config
    step = step_seconds(unet, config.num_samples)
    planned = sampling_seconds(step, config.sample_steps)
    what = (
        f"sample grid: {config.num_samples} images, {config.sampler.upper()} with {config.sample_steps} steps"
    )
    budget = max(GRID_SHARE * train_seconds, FEW_SECONDS)
    if not automatic or planned <= budget:
        if planned > FEW_SECONDS:
            logger.info(cost_line(what, step, config.sample_steps))
        return config
    cut_to = CHOICES["quick_grid"].sampler  # the sampler an automatic grid is cut down to
    cap = config.sample_steps if config.sampler == cut_to else config.num_train_timesteps
    steps = min(cap, max(MIN_GRID_STEPS, int(budget / step)))
    images = config.num_samples
    if sampling_seconds(step, steps) > budget:  # a step's time grows about linearly with the images
        images = max(1, int(images * budget / sampling_seconds(step, steps)))
    logger.info(
        "sample grid: %s, %s with %d steps (%s) instead of %s, to take at most %.0f%% of the %.0f s "
        "of training (--sampler, --sample-steps and --num-samples choose)",
        f"{images} image" + "s" * (images != 1), cut_to.upper(), steps,
        say_seconds(sampling_seconds(step, steps) * images / config.num_samples),
        f"{config.sampler.upper()} with {config.sample_steps} steps ({say_seconds(planned)})",
        100 * GRID_SHARE, train_seconds,
    )  # fmt: skip
    return dataclasses.replace(config, sampler=cut_to, sample_steps=steps, num_samples=images)


def loss_label(config: TrainConfig) -> str:
    """What loss.png's y axis shows: "MSE(v, v_θ), min-SNR-5 weights" for the tiny preset."""
    target = {"epsilon": "ε", "sample": "x_0", "v_prediction": "v"}[config.prediction_type]
    weights = f", min-SNR-{config.snr_gamma:g} weights" if config.snr_gamma else ""
    return f"MSE({target}, {target}_θ){weights}"


def save_outputs(final_unet, noise_scheduler, log: LossLog, out_dir: Path, config: TrainConfig):
    """model/, samples.png (unless num_samples is 0: then None) and loss.png; returns their paths."""
    from minidiff.viz import plot_losses

    model_dir = save_model(final_unet, noise_scheduler, out_dir)
    samples_png = None
    if config.num_samples:
        samples_png = save_samples(final_unet, noise_scheduler, out_dir / "samples.png", config)
    loss_png = Path(plot_losses(log.losses, out_dir / "loss.png", log.evals, loss_label(config)))
    return model_dir, samples_png, loss_png
