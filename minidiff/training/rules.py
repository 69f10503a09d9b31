"""The rules of DDPM training, each written once and used by both engines (plain and fast).

DDPM Algorithm 1 (Ho et al. 2020), one optimizer step:
    x_0 ~ data (epoch order and flips: `epoch_order`, `draw_batch`),  t ~ U{0..T-1},  eps ~ N(0, I)
        or t from SD3's logit-normal density (`draw_timesteps`)
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps                  (eq. 4, `scheduler.add_noise`)
    L = || target - model(x_t, t) ||^2                              (eq. 14; `training_target`, `loss_fn`)
        optionally weighted per image by min-SNR-gamma                (`snr_loss_weights`)
    theta <- AdamW(theta, clip(grad L))                             (`make_optimizer`, `clip_gradients`)
    lr from a warm-up and a schedule                                (`make_lr_scheduler`)
    theta_ema <- theta_ema - (1 - d_n) (theta_ema - theta)          (`EMA`, diffusers' EMAModel rule)

An engine decides how these run (eager or one CUDA graph, fp32 or bf16 autocast, fused AdamW); what
they compute is decided here.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from minidiff.training.config import PREDICTION_TYPES


# ---- what the model learns to predict ---------------------------------------------------------------
def training_target(
    noise_scheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The regression target of `noise_scheduler.config.prediction_type`.

    epsilon -> eps (DDPM eq. 14), sample -> x_0, v_prediction -> v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
    (Salimans & Ho 2022), the last from the scheduler's own forward-process tables.

    Args:
        noise_scheduler: the run's DDPMScheduler.
        clean: x_0, the clean images (B, C, H, W).
        noise: eps, the noise added to them.
        timesteps: t, one per image (B,).
    """
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return clean
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(clean, noise, timesteps)
    raise ValueError(f"prediction_type {prediction_type!r}; expected one of {list(PREDICTION_TYPES)}")


def _snr_table(noise_scheduler, device: torch.device) -> torch.Tensor:
    """SNR_t = (sqrt(abar_t) / sqrt(1 - abar_t))^2 for every t in fp32, computed as diffusers'
    `training_utils.compute_snr` does; kept on the scheduler per device, because a CUDA graph may not copy
    it from the host inside the captured step."""
    tables = noise_scheduler.__dict__.setdefault("_snr_tables", {})
    if device not in tables:
        abar = noise_scheduler.alphas_cumprod
        tables[device] = ((abar**0.5).float() / ((1.0 - abar) ** 0.5).float()).to(device) ** 2
    return tables[device]


def snr_loss_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """min-SNR-gamma (Hang et al. 2023, diffusers' --snr_gamma): one loss weight per image (B,), with
    SNR_t = abar_t / (1 - abar_t). The weight of the x_0 error is min(SNR_t, gamma); the same in the
    units of each target: / SNR_t for epsilon, / (SNR_t + 1) for v_prediction, / 1 for sample
    (diffusers' examples weight epsilon and v_prediction alike).
    At SNR_t = 0 (a zero-terminal-SNR schedule's t = T-1) epsilon's weight is its limit, 1.

    Args:
        noise_scheduler: the run's DDPMScheduler (its alpha_bar and prediction_type).
        timesteps: t, one per image (B,).
        gamma: the cap on the SNR (diffusers' --snr_gamma; 5 in the paper).

    Returns:
        The weights (B,), in float32.
    """
    snr = _snr_table(noise_scheduler, timesteps.device).index_select(0, timesteps)  # (B,)
    clipped = snr.clamp(max=gamma)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return torch.where(snr > 0, clipped / snr.clamp(min=torch.finfo(snr.dtype).tiny), 1.0)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    if prediction_type == "sample":
        return clipped
    raise ValueError(f"prediction_type {prediction_type!r}; expected one of {list(PREDICTION_TYPES)}")


def loss_fn(
    unet: nn.Module,
    noise_scheduler,
    clean: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """The training loss: mean || target - model(x_t, t) ||^2 with x_t = add_noise(x_0, eps, t) (eq. 4 and 14).

    With `snr_gamma`, each image's mean squared error is weighted by `snr_loss_weights` first (diffusers'
    examples: loss.mean(dims) * weights, then the batch mean). The mean is taken in fp32 even under autocast.

    Args:
        unet: the model being trained.
        noise_scheduler: the run's DDPMScheduler.
        clean: x_0, the clean images (B, C, H, W).
        noise: eps, the noise added to them.
        timesteps: t, one per image (B,).
        snr_gamma: min-SNR-gamma weighting (None: plain MSE).

    Returns:
        The loss, a 0-d float32 tensor.
    """
    noisy = noise_scheduler.add_noise(clean, noise, timesteps)  # x_t
    prediction = unet(noisy, timesteps, return_dict=False)[0]
    target = training_target(noise_scheduler, clean, noise, timesteps)
    if snr_gamma is None:
        return F.mse_loss(prediction.float(), target.float())
    per_image = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_image * snr_loss_weights(noise_scheduler, timesteps, snr_gamma)).mean()


# ---- the data: which images, in which order, flipped or not ---------------------------------------------
def epoch_order(
    num_images: int, seed: int, epoch: int, flip: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The shuffled image order of `epoch` (N,) and which images it flips (N,) bool, from a CPU
    generator seeded by (seed, epoch): the same on every engine, device and process."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_images, generator=generator)
    flips = torch.rand(num_images, generator=generator) < 0.5 if flip else None
    return order, flips


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> floats in [-1, 1], as the tutorial's ToTensor() + Normalize([0.5], [0.5]) compute it."""
    return (pixels.float().div(255) - 0.5) / 0.5


def gather_images(images: torch.Tensor, index: torch.Tensor, flips: torch.Tensor | None) -> torch.Tensor:
    """The uint8 `images` (N, C, H, W) at `index` (B,), mirrored where `flips` (N,) says: (B, C, H, W)."""
    pixels = images.index_select(0, index)
    if flips is not None:
        mirror = flips.index_select(0, index).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        pixels = torch.where(mirror, pixels.flip(-1), pixels)
    return pixels


def draw_timesteps(
    count: int, noise_generator: torch.Generator, config, device: torch.device
) -> torch.Tensor:
    """t for `count` images, by `config.weighting_scheme` (diffusers' SD3 training scripts' name):

        "none":          t ~ U{0..T-1}                                         (DDPM, Algorithm 1)
        "logit_normal":  t = floor(T u),  u = sigmoid(n),  n ~ N(logit_mean, logit_std^2)
                         (Esser et al. 2024, eq. 19: more of training on the middle noise levels;
                         u drawn as diffusers' `compute_density_for_timestep_sampling`; logit_mean > 0: noisier)

    Args:
        count: how many timesteps (the batch's images).
        noise_generator: the run's generator of eps and t.
        config: the TrainConfig (num_train_timesteps, weighting_scheme, logit_mean, logit_std).
        device: where t lives (the generator's device).

    Returns:
        t, int64 (count,), in 0..T-1. No host sync.
    """
    T = config.num_train_timesteps
    if config.weighting_scheme == "none":
        return torch.randint(0, T, (count,), generator=noise_generator, device=device)
    n = torch.normal(config.logit_mean, config.logit_std, (count,), generator=noise_generator, device=device)
    return (n.sigmoid() * T).long().clamp_(max=T - 1)  # sigmoid may round to 1.0 in float32 for n > 17


def noisy_batch(
    pixels: torch.Tensor, noise_generator: torch.Generator, config, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_0, eps, t) of a batch of uint8 pixels: x_0 in [-1, 1] on `device`, then eps ~ N(0, I) and
    t (`draw_timesteps`: U{0..T-1} by default) from `noise_generator`, in that order (the tutorial's).
    No host sync."""
    clean = to_model_range(pixels.to(device, non_blocking=True))
    noise = torch.randn(clean.shape, generator=noise_generator, device=device)
    return clean, noise, draw_timesteps(len(clean), noise_generator, config, device)


def draw_batch(
    images: torch.Tensor,
    index: torch.Tensor,
    flips: torch.Tensor | None,
    noise_generator: torch.Generator,
    config,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_0, eps, t) of the images at `index`: `gather_images`, then `noisy_batch`. A graph can capture
    it when everything is on the device."""
    return noisy_batch(gather_images(images, index, flips), noise_generator, config, device)


# ---- the optimizer, its learning rate and the gradient clip -----------------------------------------------
def make_optimizer(params, config, fused: bool | None = None, capturable: bool = False, lr=None):
    """AdamW with the run's lr, betas, eps and weight decay (`lr` may be a device tensor for a graph)."""
    return torch.optim.AdamW(
        params,
        lr=config.lr if lr is None else lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
        fused=fused,
        capturable=capturable,
    )


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, config, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The lr of every step as a torch scheduler: a linear warm-up over `warmup_steps` (lr / w, 2 lr / w,
    ..., lr), then `lr_scheduler`: constant, linear decay to 0, or cosine decay to 0 at `total_steps`."""
    warmup = config.warmup_steps  # not capped by total_steps: a shorter run has the same first lrs
    decay_steps = max(1, total_steps - warmup)
    schedules = torch.optim.lr_scheduler
    if config.lr_scheduler == "linear":
        main = schedules.LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=decay_steps)
    elif config.lr_scheduler == "cosine":
        main = schedules.CosineAnnealingLR(optimizer, T_max=decay_steps)
    else:
        main = schedules.LambdaLR(optimizer, lambda step: 1.0)
    if warmup == 0:
        return main
    start = schedules.LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup - 1)
    return schedules.SequentialLR(optimizer, [start, main], milestones=[warmup])


def clip_gradients(params: list[torch.Tensor], max_norm: float | None) -> None:
    """Scale the gradients so that their global L2 norm is at most `max_norm` (None: no clipping)."""
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


# ---- the EMA of the weights ---------------------------------------------------------------------------------
class EMA:
    """An exponential moving average of a model's weights, number for number diffusers' `EMAModel`
    (training_utils.py) as its train_unconditional.py example configures it:

        d_n = 0 for n <= update_after_step + 1, else with k = n - update_after_step - 1
              min(decay, 1 - (1 + k / inv_gamma) ** -power)   if use_warmup
              min(decay, (1 + k) / (10 + k))                 otherwise,   then max(d_n, min_decay)
        theta_ema <- theta_ema - (1 - d_n) (theta_ema - theta)     (non-trainable tensors are copied)

    `model` is a frozen copy of the trained network (what the run saves and samples from).

    Args:
        model: the network being trained; the EMA keeps a frozen copy of it.
        decay: the largest decay d_n may reach (diffusers' --ema_max_decay).
        min_decay: the smallest decay d_n may take.
        update_after_step: updates before the average starts moving (d_n = 0 until then).
        use_warmup: the warm-up form of d_n above, instead of (1 + k) / (10 + k).
        inv_gamma: the warm-up's inverse multiplicative factor.
        power: the warm-up's exponent.
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float,
        min_decay: float = 0.0,
        update_after_step: int = 0,
        use_warmup: bool = False,
        inv_gamma: float = 1.0,
        power: float = 3 / 4,
    ):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.min_decay, self.update_after_step = decay, min_decay, update_after_step
        self.use_warmup, self.inv_gamma, self.power = use_warmup, inv_gamma, power
        self.optimization_step = 0
        trainable = [p.requires_grad for p in model.parameters()]
        self._params = [e for e, t in zip(self.model.parameters(), trainable) if t]
        self._copied = [e for e, t in zip(self.model.parameters(), trainable) if not t]
        self._copied += list(self.model.buffers())

    @classmethod
    def from_config(cls, model: nn.Module, config) -> EMA | None:
        """The EMA a TrainConfig asks for (None when ema_decay is 0).

        Args:
            model: the network being trained.
            config: the TrainConfig (its ema_* fields).
        """
        if config.ema_decay == 0:
            return None
        return cls(
            model, config.ema_decay, config.ema_min_decay, config.ema_update_after_step,
            config.ema_warmup, config.ema_inv_gamma, config.ema_power,
        )  # fmt: skip

    def get_decay(self, optimization_step: int) -> float:
        """d_n of update n, diffusers' `EMAModel.get_decay`.

        Args:
            optimization_step: n, the update's 1-based count.
        """
        step = max(0, optimization_step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        if self.use_warmup:
            value = 1 - (1 + step / self.inv_gamma) ** -self.power
        else:
            value = (1 + step) / (10 + step)
        return max(min(value, self.decay), self.min_decay)

    def next_one_minus_decay(self) -> float:
        """Count one update and return its 1 - d_n."""
        self.optimization_step += 1
        return 1 - self.get_decay(self.optimization_step)

    @torch.no_grad()
    def apply(self, model: nn.Module, one_minus_decay: float | torch.Tensor) -> None:
        """theta_ema -= (1 - d) (theta_ema - theta) for the trainable tensors; copy the others.

        Args:
            model: the network being trained.
            one_minus_decay: 1 - d; may be a 0-d device tensor, so that a CUDA graph can capture the update.
        """
        trainable = [p.detach() for p in model.parameters() if p.requires_grad]
        others = [p.detach() for p in model.parameters() if not p.requires_grad] + list(model.buffers())
        diffs = torch._foreach_sub(self._params, trainable)
        torch._foreach_mul_(diffs, one_minus_decay)
        torch._foreach_sub_(self._params, diffs)
        for ema_tensor, tensor in zip(self._copied, others):
            ema_tensor.copy_(tensor)

    def update(self, model: nn.Module) -> None:
        """One EMA update after an optimizer step (diffusers' `EMAModel.step`).

        Args:
            model: the network being trained.
        """
        self.apply(model, self.next_one_minus_decay())

    def state_dict(self) -> dict:
        """The averaged weights and the update count, for a checkpoint."""
        return {"model": self.model.state_dict(), "optimization_step": self.optimization_step}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned.

        Args:
            state: a dict from `state_dict`.
        """
        self.model.load_state_dict(state["model"])
        self.optimization_step = int(state["optimization_step"])


def check_finite(values: list[float], first_step: int) -> None:
    """Stop a run whose loss is nan or inf, naming the step (the last checkpoint stays the good one)."""
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {first_step + i}; training stopped")
