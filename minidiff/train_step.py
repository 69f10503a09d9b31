"""One optimizer step of DDPM training (Ho et al. 2020, Algorithm 1), and what it updates.

    x_0 ~ data,  t ~ Uniform{0, ..., T-1},  eps ~ N(0, I)
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps                    (eq. 4, `add_noise`)
    L_simple = || eps - eps_theta(x_t, t) ||^2                        (eq. 14, `loss_fn`)
    theta <- AdamW(theta, grad L_simple);  theta_ema <- d theta_ema + (1 - d) theta

`train_step(state, micro_batches)` takes the batches, noise and timesteps from its caller: the loop in
`minidiff.training` draws them from seeded generators, and the parity test feeds the same numbers to
this step and to the diffusers tutorial's loop.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minidiff.train_config import MIXED_PRECISION, TrainConfig


# ---- the pieces of one step --------------------------------------------------------------------------
def loss_fn(unet, noise_scheduler, clean_images, noise, timesteps) -> torch.Tensor:
    """L_simple = mean || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2 (DDPM eq. 14)."""
    noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)  # x_t, eq. 4
    noise_pred = unet(noisy_images, timesteps, return_dict=False)[0]  # eps_theta(x_t, t)
    return F.mse_loss(noise_pred.float(), noise.float())  # the mean in fp32 even under autocast


class EMA:
    """Exponential moving average of the weights, with diffusers' EMAModel warm-up of the decay:
    d_n = min(decay, (1 + n) / (10 + n)) at update n, then theta_ema <- d_n theta_ema + (1 - d_n) theta."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        n = self.num_updates
        decay = min(self.decay, (1 + n) / (10 + n))
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)  # theta_ema += (1 - d) (theta - theta_ema)
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])


@dataclass
class TrainState:
    """The objects a step updates; `train_step` works on this, so tests can drive it with their own data."""

    unet: torch.nn.Module
    noise_scheduler: object
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    grad_scaler: torch.amp.GradScaler | None
    ema: EMA | None
    autocast_dtype: torch.dtype | None
    grad_clip: float | None
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # micro-batches of the current epoch already used


class _Warmup:
    """lr factor: rises linearly to 1 over `warmup_steps` (1 / w, 2 / w, ..., 1), then stays 1."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0


def build_unet(config: TrainConfig, channels: int):
    """The UNet2DModel of `config` (its initial weights drawn from a generator seeded by `config.seed`)."""
    from minidiff.unet_2d import UNet2DModel

    with torch.random.fork_rng(devices=[]):  # nn.init uses the global RNG: seed it without leaking
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
    from minidiff.scheduling_ddpm import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule)


def make_train_state(config: TrainConfig, unet: torch.nn.Module, noise_scheduler) -> TrainState:
    """Optimizer (AdamW), warm-up LambdaLR, GradScaler (fp16 only) and EMA around `unet`."""
    device = next(unet.parameters()).device
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _Warmup(config.warmup_steps))
    fp16 = config.mixed_precision == "fp16"
    return TrainState(
        unet=unet,
        noise_scheduler=noise_scheduler,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        grad_scaler=torch.amp.GradScaler(device.type) if fp16 else None,
        ema=EMA(unet, config.ema_decay) if config.ema_decay > 0 else None,
        autocast_dtype=MIXED_PRECISION[config.mixed_precision],
        grad_clip=config.grad_clip,
    )


def train_step(
    state: TrainState,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    loss_weights: list[float] | None = None,
):
    """One optimizer step over (clean_images, noise, timesteps) micro-batches; returns the mean loss
    as a 0-d tensor (no host sync). Gradients of the micro-batches are averaged (accumulation).

    loss_weights: one factor per micro-batch, applied to its loss (and to the returned mean); the
    multi-process loop weights each process's share of a batch by its size (`minidiff.distributed.shard`)."""
    unet, optimizer, scaler = state.unet, state.optimizer, state.grad_scaler
    unet.train()
    device_type = next(unet.parameters()).device.type
    losses = []
    for i, (clean_images, noise, timesteps) in enumerate(micro_batches):
        with torch.autocast(
            device_type, dtype=state.autocast_dtype, enabled=state.autocast_dtype is not None
        ):
            loss = loss_fn(unet, state.noise_scheduler, clean_images, noise, timesteps)
        if loss_weights is not None:
            loss = loss * loss_weights[i]
        scaled = loss / len(micro_batches)
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        losses.append(loss.detach())
    if state.grad_clip is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(unet.parameters(), state.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)  # skipped when the fp16 gradients hold inf / nan
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state.lr_scheduler.step()
    if state.ema is not None:
        state.ema.update(unet)
    state.step += 1
    return losses[0] if len(losses) == 1 else torch.stack(losses).mean()
