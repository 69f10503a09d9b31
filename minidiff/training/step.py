"""The plain engine: one eager optimizer step at a time, batches drawn on the host.

    loss = train_step(state, [(x_0, eps, t), ...])     # one optimizer step over micro-batches

`train_step` takes the batches, noise and timesteps from its caller, so it can be fed exactly what the
diffusers tutorial's loop sees; `PlainEngine` draws them by the rules of
`minidiff.training.rules` and is what the training loop drives (the fast engine, `minidiff.training.fast_engine.FastTrainer`,
has the same interface). Under torchrun the engine trains on its process's rows of each global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import minidiff.training.distributed as distributed
from minidiff.training.config import TrainConfig
from minidiff.training.data import ResidentImages, StreamedImages
from minidiff.training.rules import (
    EMA,
    clip_gradients,
    loss_fn,
    make_lr_scheduler,
    make_optimizer,
    noisy_batch,
)

AUTOCAST_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # config.mixed_precision


@dataclass
class TrainState:
    """The objects an optimizer step updates.

    Args:
        unet: the model (a DistributedDataParallel wrapper when several processes train).
        noise_scheduler: the run's DDPMScheduler.
        optimizer: AdamW.
        lr_scheduler: its learning-rate schedule.
        grad_scaler: the GradScaler of fp16 training (None otherwise).
        ema: the EMA of the weights (None when off).
        autocast_dtype: the autocast dtype of mixed precision (None: full precision).
        grad_clip: the max global gradient norm (None: no clipping).
        snr_gamma: min-SNR-gamma loss weights (None: plain MSE).
    """

    unet: torch.nn.Module  # a DistributedDataParallel wrapper when several processes train
    noise_scheduler: object
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    grad_scaler: torch.amp.GradScaler | None
    ema: EMA | None
    autocast_dtype: torch.dtype | None
    grad_clip: float | None
    snr_gamma: float | None = None  # min-SNR-gamma loss weights (rules.snr_loss_weights); None: plain MSE


def make_train_state(
    config: TrainConfig, unet: torch.nn.Module, noise_scheduler, total_steps: int
) -> TrainState:
    """AdamW, its lr schedule over `total_steps`, a GradScaler (fp16 only) and the EMA around `unet`.

    Args:
        config: the run's settings (optimizer, lr schedule, precision, EMA, clipping, snr_gamma).
        unet: the model to train, already on its device.
        noise_scheduler: the run's DDPMScheduler (the forward process and the target).
        total_steps: the optimizer steps of the whole run (the length of the lr schedule).
    """
    device = next(unet.parameters()).device
    if config.mixed_precision == "auto":  # (train() resolves it first; this is for direct use)
        from minidiff.training.precision import resolve_precision

        config, _ = resolve_precision(
            config, distributed.unwrap(unet), distributed.unwrap(unet).config.in_channels, device
        )
    optimizer = make_optimizer(unet.parameters(), config)
    return TrainState(
        unet=unet,
        noise_scheduler=noise_scheduler,
        optimizer=optimizer,
        lr_scheduler=make_lr_scheduler(optimizer, config, total_steps),
        grad_scaler=torch.amp.GradScaler(device.type) if config.mixed_precision == "fp16" else None,
        ema=EMA.from_config(unet, config),
        autocast_dtype=AUTOCAST_DTYPES[config.mixed_precision],
        grad_clip=config.grad_clip,
        snr_gamma=config.snr_gamma,
    )


def train_step(
    state: TrainState,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    loss_weights: list[float] | None = None,
) -> torch.Tensor:
    """One optimizer step over (x_0, eps, t) micro-batches; the micro-batches' gradients are averaged
    (accumulation).

    Args:
        state: the objects the step updates (from `make_train_state`).
        micro_batches: (x_0, eps, t) triples: clean images, their noise, their timesteps.
        loss_weights: one factor per micro-batch, applied to its loss (and to the returned mean); several
            processes weight their share of a batch by its size (`minidiff.training.distributed.shard`).

    Returns:
        The mean loss as a 0-d tensor on the device (no host sync).
    """
    unet, optimizer, scaler = state.unet, state.optimizer, state.grad_scaler
    unet.train()
    device_type = next(unet.parameters()).device.type
    losses = []
    for i, (clean, noise, timesteps) in enumerate(micro_batches):
        with torch.autocast(device_type, state.autocast_dtype, enabled=state.autocast_dtype is not None):
            loss = loss_fn(unet, state.noise_scheduler, clean, noise, timesteps, state.snr_gamma)
        if loss_weights is not None:
            loss = loss * loss_weights[i]
        scaled = loss / len(micro_batches)
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        losses.append(loss.detach())
    if scaler is not None and state.grad_clip is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    clip_gradients(list(unet.parameters()), state.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)  # skipped when the fp16 gradients hold inf / nan
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state.lr_scheduler.step()
    if state.ema is not None:
        state.ema.update(distributed.unwrap(unet))
    return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


class PlainEngine:
    """Batches from host memory or a streaming loader, one eager `train_step` per call.

    Args:
        unet: the model to train, on its device.
        noise_scheduler: the run's DDPMScheduler.
        data: the run's images, resident or streamed.
        config: the run's settings.
        total_steps: the optimizer steps of the whole run.
        noise_generator: the generator of the noise eps and the timesteps t of every batch.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        noise_scheduler,
        data: ResidentImages | StreamedImages,
        config: TrainConfig,
        total_steps: int,
        noise_generator: torch.Generator,
    ):
        self.state = make_train_state(config, unet, noise_scheduler, total_steps)
        self.data, self.config, self.noise_generator = data, config, noise_generator
        self.device = next(unet.parameters()).device

    # what the loop and the checkpoints read, as on FastTrainer
    unet = property(lambda self: distributed.unwrap(self.state.unet))
    ema = property(lambda self: self.state.ema)
    optimizer = property(lambda self: self.state.optimizer)
    lr_scheduler = property(lambda self: self.state.lr_scheduler)
    grad_scaler = property(lambda self: self.state.grad_scaler)

    @property
    def sampling_model(self) -> torch.nn.Module:
        """What the run samples from and saves: the EMA weights when EMA is on."""
        return self.ema.model if self.ema is not None else self.unet

    def wrap_for_processes(self) -> None:
        """DistributedDataParallel around the UNet when several processes train (after a resume)."""
        self.state.unet = distributed.wrap(self.state.unet, self.device)

    def start_epoch(self, order: torch.Tensor, flips: torch.Tensor | None, first_batch: int = 0) -> None:
        """Set the epoch's image order and flips; batches are drawn from `first_batch` on.

        Args:
            order: the epoch's image order (N,), from `rules.epoch_order`.
            flips: which images to flip (N,), or None without flips.
            first_batch: the first micro-batch to draw (after a resume mid-epoch).
        """
        self.data.start_epoch(order, flips, self.config.batch_size, first_batch)

    def step(self, first_batch: int, count: int = 1) -> torch.Tensor:
        """One optimizer step on micro-batches first_batch .. first_batch + count - 1 of the epoch.

        Args:
            first_batch: the index of the step's first micro-batch in the epoch.
            count: how many micro-batches the step accumulates.

        Returns:
            The loss of the whole (global) batch as a 0-d tensor.
        """
        micro_batches, weights = [], []
        for b in range(first_batch, first_batch + count):
            batch = noisy_batch(self.data.batch(b), self.noise_generator, self.config, self.device)
            rows, weight = distributed.shard(batch)  # this process's rows of the global batch
            micro_batches.append(rows)
            weights.append(weight)
        loss = train_step(self.state, micro_batches, weights if distributed.is_distributed() else None)
        return distributed.all_reduce_mean(loss)
