"""DDPMScheduler: ancestral sampling of Ho et al. 2020, number for number with diffusers' DDPMScheduler.

Reverse step (DDPM eq. 6-7): given x_t and the model output at t, with t' the previous (less noisy)
timestep of the schedule (t' = t - 1 when every training step is visited),

    x_0_hat  = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)                               eq. (15)
    mu_t     = sqrt(alpha_bar_t') beta_t / (1 - alpha_bar_t) x_0_hat
             + sqrt(alpha_t) (1 - alpha_bar_t') / (1 - alpha_bar_t) x_t                             eq. (7)
    sigma2_t = (1 - alpha_bar_t') / (1 - alpha_bar_t) beta_t        ("fixed_small", beta_tilde)     eq. (7)
    x_t'     = mu_t + sigma_t z,  z ~ N(0, I), no noise on the last step (t = 0)

where alpha_t = alpha_bar_t / alpha_bar_t' and beta_t = 1 - alpha_t (recomputed, so skipping steps works).
Everything that depends on t only is tabulated in float32 when the schedule is set; a step is then one
table lookup plus the tensor arithmetic.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from minidiff.configuration import SchedulerMixin, register_to_config
from minidiff.outputs import DDPMSchedulerOutput
from minidiff.schedulers.schedules import ForwardProcessMixin, check_choice
from minidiff.schedulers.scheduling_utils import (
    KARRAS_SCHEDULERS,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    check_model_output,
    clip_or_threshold,
    custom_timesteps,
    gather_row,
    host_timestep,
    inference_timesteps,
    predict_original_sample,
    randn_tensor,
    vp_schedule,
)

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
VARIANCE_TYPES = (
    "fixed_small",
    "fixed_small_log",
    "fixed_large",
    "fixed_large_log",
    "learned",
    "learned_range",
)


class DDPMStepCoefficients(NamedTuple):
    """One row of the step table: 0-d float32 tensors for one timestep t (t' = previous timestep)."""

    sqrt_alpha_prod_t: torch.Tensor  # sqrt(alpha_bar_t)
    sqrt_beta_prod_t: torch.Tensor  # sqrt(1 - alpha_bar_t)
    pred_original_sample_coeff: torch.Tensor  # sqrt(alpha_bar_t') beta_t / (1 - alpha_bar_t), eq. (7)
    current_sample_coeff: torch.Tensor  # sqrt(alpha_t) (1 - alpha_bar_t') / (1 - alpha_bar_t), eq. (7)
    noise_std: torch.Tensor  # sigma_t of the fixed variance types
    min_log: torch.Tensor  # log(beta_tilde_t), lower end of improved DDPM eq. (15)
    max_log: torch.Tensor  # log(beta_t), upper end of improved DDPM eq. (15)
    has_noise: torch.Tensor  # 1.0 for t > 0, 0.0 at t = 0 (used when t stays on the device)


def posterior_variance(
    alpha_prod_t: torch.Tensor, alpha_prod_t_prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """beta_t = 1 - alpha_bar_t / alpha_bar_t' and the posterior variance beta_tilde_t of eq. (7), clamped at
    1e-20 because the log variants take its log (it is 0 when t' = -1). Elementwise, in diffusers' op order."""
    current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
    variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
    return current_beta_t, variance


def ddpm_step_table(
    alphas_cumprod: torch.Tensor, prev_timesteps: torch.Tensor, variance_type: str
) -> torch.Tensor:
    """(T, 8) float32 table, row t = `DDPMStepCoefficients` for t -> prev_timesteps[t] (-1 means alpha_bar = 1).

    Each column repeats diffusers' scalar arithmetic elementwise, in the same order, so the numbers match.
    """
    alpha_prod_t = alphas_cumprod
    alpha_prod_t_prev = torch.where(prev_timesteps >= 0, alphas_cumprod[prev_timesteps.clamp(min=0)], 1.0)
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    current_alpha_t = alpha_prod_t / alpha_prod_t_prev
    current_beta_t, variance = posterior_variance(alpha_prod_t, alpha_prod_t_prev)

    pred_original_sample_coeff = (alpha_prod_t_prev**0.5 * current_beta_t) / beta_prod_t
    current_sample_coeff = current_alpha_t**0.5 * beta_prod_t_prev / beta_prod_t

    min_log, max_log = torch.log(variance), torch.log(current_beta_t)
    if variance_type == "fixed_small":  # sigma^2 = beta_tilde_t (DDPM: best with x_0 ~ data)
        noise_std = variance**0.5
    elif variance_type == "fixed_small_log":  # the same sigma, through its log (rl-diffuser)
        noise_std = torch.exp(0.5 * min_log)
    elif variance_type == "fixed_large":  # sigma^2 = beta_t (DDPM: best with x_0 ~ N(0, I))
        noise_std = current_beta_t**0.5
    elif variance_type == "fixed_large_log":
        # GLIDE's "max_log": log sigma^2 = log(beta_t). diffusers takes sqrt of that log (a negative
        # number), which is NaN (diffusers issue 14569); we use sigma = exp(0.5 log beta_t) as GLIDE does.
        noise_std = torch.exp(0.5 * max_log)
    else:  # learned / learned_range: sigma comes from the model output at step time
        noise_std = torch.full_like(variance, float("nan"))
    has_noise = (torch.arange(len(alphas_cumprod)) > 0).to(torch.float32)
    columns = (alpha_prod_t**0.5, beta_prod_t**0.5, pred_original_sample_coeff, current_sample_coeff)
    return torch.stack([*columns, noise_std, min_log, max_log, has_noise], dim=1)


class DDPMScheduler(ForwardProcessMixin, SchedulerMixin):
    """Denoising diffusion probabilistic models: diffusers' `DDPMScheduler` with the same keywords.

    Args:
        num_train_timesteps: T, the number of forward-process steps the model was trained with.
        beta_start: beta_1 of the schedule.
        beta_end: beta_T of the schedule.
        beta_schedule: how beta goes from `beta_start` to `beta_end`: linear, scaled_linear,
            squaredcos_cap_v2 (cosine, which ignores both), sigmoid or laplace.
        trained_betas: explicit betas (length T), used instead of `beta_schedule`.
        variance_type: sigma_t of the reverse step: fixed_small (beta_tilde_t, the default; None means it
            too), fixed_small_log, fixed_large (beta_t), fixed_large_log, learned, learned_range.
        clip_sample: clamp the predicted x_0 to [-clip_sample_range, clip_sample_range].
        prediction_type: what the model outputs: epsilon, sample (x_0) or v_prediction.
        thresholding: dynamic thresholding of the predicted x_0 (Imagen), instead of clipping.
        dynamic_thresholding_ratio: the percentile of |x_0| that thresholding clamps at.
        clip_sample_range: the bound of `clip_sample`.
        sample_max_value: the largest threshold dynamic thresholding may use.
        timestep_spacing: how `set_timesteps` spaces the steps: leading, linspace or trailing.
        steps_offset: added to every inference timestep (leading spacing).
        rescale_betas_zero_snr: rescale the schedule so alpha_bar_T = 0 (Lin et al. 2024).
    """

    _compatibles = KARRAS_SCHEDULERS  # diffusers' list, less the schedulers minidiff does not have
    order = 1

    # Copied from diffusers.schedulers.scheduling_ddpm.DDPMScheduler.__init__
    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: str | None = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        # None, as DPM-Solver's configs write "no learned variance": diffusers' DDPM steps with fixed_small then
        variance_type = "fixed_small" if variance_type is None else variance_type
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        self.betas, self.alphas, self.alphas_cumprod = vp_schedule(  # alpha_bar_t
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr,
            BETA_SCHEDULES,
        )  # fmt: skip
        self.one = torch.tensor(1.0)  # diffusers' attribute, kept for code that reads it; unused here
        self.variance_type = variance_type
        self.custom_timesteps = False
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._forward_cache: dict = {}
        self._set_schedule(None)

    # ---- the schedule -------------------------------------------------------------------------
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Pick the timesteps to visit: `num_inference_steps` spaced by `timestep_spacing`, or a custom list.

        Args:
            num_inference_steps: how many steps to sample with (exclusive with `timesteps`).
            device: where `self.timesteps` goes; also moves the step table there (for device-side timesteps).
            timesteps: a custom strictly descending list of training timesteps to visit.
        """
        T = self.config.num_train_timesteps
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError(
                f"Can only pass one of `num_inference_steps` or `timesteps`; got num_inference_steps="
                f"{num_inference_steps!r} and timesteps={timesteps!r}"
            )
        if timesteps is not None:
            schedule = custom_timesteps(timesteps, T)
            self.custom_timesteps = True
        elif num_inference_steps is None:
            raise ValueError("set_timesteps needs `num_inference_steps` or `timesteps`; got neither")
        else:
            cfg = self.config
            schedule = inference_timesteps(T, num_inference_steps, cfg.timestep_spacing, cfg.steps_offset)
            self.custom_timesteps = False
        # diffusers leaves num_inference_steps untouched for custom timesteps; the length is more useful.
        self.num_inference_steps = len(schedule)
        self.timesteps = torch.from_numpy(schedule).to(device)
        self._set_schedule(schedule)
        if device is not None:
            self._tables_on(torch.device(device))

    def _set_schedule(self, schedule: np.ndarray | None) -> None:
        """Tabulate t -> previous timestep t' and the step coefficients for every t in [0, T)."""
        T = self.config.num_train_timesteps
        prev = torch.arange(T, dtype=torch.int64) - 1  # before set_timesteps: t' = t - 1
        self._scheduled = None
        if schedule is not None:
            # t' is the next entry of the schedule, -1 after the last (alpha_bar = 1 there). leading +
            # steps_offset can list T itself, which no step accepts; it is left out of the table.
            in_range = schedule < T
            prev[schedule[in_range]] = torch.from_numpy(np.append(schedule[1:], -1)[in_range])
            self._scheduled = frozenset(schedule[in_range].tolist())
        self._prev_timesteps = prev
        self._step_table = ddpm_step_table(self.alphas_cumprod, prev, self.variance_type)
        self._device_tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tables_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device.type == "cpu":
            return self._step_table, self._prev_timesteps
        if device not in self._device_tables:
            self._device_tables[device] = (self._step_table.to(device), self._prev_timesteps.to(device))
        return self._device_tables[device]

    def _checked_host_timestep(self, timestep: int | torch.Tensor) -> int | None:
        t = host_timestep(timestep, self.config.num_train_timesteps)
        if t is not None and self._scheduled is not None and t not in self._scheduled:
            raise ValueError(f"timestep {t} is not in scheduler.timesteps {self.timesteps.tolist()}")
        return t

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep after `timestep` in `self.timesteps` (-1 after the last), by table lookup.

        No `nonzero()`, so a device tensor stays on its device.

        Args:
            timestep: an int, or an int tensor of timesteps.

        Returns:
            An int for an int, else a tensor on the device of `timestep`.
        """
        t = self._checked_host_timestep(timestep)
        if t is None:  # a 0-d device tensor
            return gather_row(self._tables_on(timestep.device)[1], timestep)
        prev = int(self._prev_timesteps[t])
        return torch.tensor(prev) if isinstance(timestep, torch.Tensor) else prev

    def _coefficients(self, timestep: int | torch.Tensor, t: int | None) -> DDPMStepCoefficients:
        if t is None:  # device timestep: gather from the device copy of the table, on the device
            return DDPMStepCoefficients(*gather_row(self._tables_on(timestep.device)[0], timestep).unbind())
        return DDPMStepCoefficients(*self._step_table[t].unbind())

    def _get_variance(
        self, t: int, predicted_variance: torch.Tensor | None = None, variance_type: str | None = None
    ) -> torch.Tensor:
        """diffusers' helper of the same name, for code that calls it: what its step turns into sigma_t for
        `variance_type` (default: the config's). The units are diffusers' mix: the variance (fixed_small,
        fixed_large), sigma itself (fixed_small_log), log beta_t (fixed_large_log, whose square root makes
        diffusers' step NaN), the model's variance (learned) or log variance (learned_range, eq. 15)."""
        variance_type = variance_type or self.variance_type
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        prev_t = self.previous_timestep(t)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        current_beta_t, variance = posterior_variance(alpha_prod_t, alpha_prod_t_prev)
        if variance_type in ("learned", "learned_range") and predicted_variance is None:
            raise ValueError(f"variance_type {variance_type!r} needs the model's predicted_variance")
        if variance_type == "fixed_small_log":
            return torch.exp(0.5 * torch.log(variance))
        if variance_type == "fixed_large":
            return current_beta_t
        if variance_type == "fixed_large_log":
            return torch.log(current_beta_t)
        if variance_type == "learned":
            return predicted_variance
        if variance_type == "learned_range":
            frac = (predicted_variance + 1) / 2
            return frac * torch.log(current_beta_t) + (1 - frac) * torch.log(variance)
        return variance  # fixed_small

    # ---- one reverse step ---------------------------------------------------------------------
    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> DDPMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One reverse step x_t -> x_t' (DDPM eq. 6-7).

        Sync-free on a GPU needs a 0-d CUDA timestep and a CUDA generator (a CPU generator draws the
        noise on the host and copies it over, as diffusers does).

        Args:
            model_output: the UNet's output at `timestep` (2C channels for the learned variance types).
            timestep: t, an int or a 0-d tensor, possibly on the device.
            sample: x_t.
            generator: the random generator of the step's noise z.
            return_dict: return a `DDPMSchedulerOutput` rather than a tuple.

        Returns:
            `DDPMSchedulerOutput(prev_sample=x_t', pred_original_sample=x_0_hat)`, or that pair as a tuple.
        """
        t = self._checked_host_timestep(timestep)

        # 0. Learned variances: the model outputs [eps, v] on 2C channels (improved DDPM sec. 3.1).
        channels = sample.shape[1] if sample.ndim > 1 else 0
        predicted_variance = None
        if self.variance_type in ("learned", "learned_range"):
            if model_output.ndim < 2 or model_output.shape[1] != 2 * channels:
                raise ValueError(
                    f"variance_type {self.variance_type!r} needs a model output with 2 * {channels} channels "
                    f"(prediction and variance), got shape {tuple(model_output.shape)}"
                )
            model_output, predicted_variance = torch.split(model_output, channels, dim=1)  # 2 x (B, C, H, W)
        check_model_output(model_output, sample)

        # 1. alpha_bar_t, alpha_bar_t', beta_t = 1 - alpha_bar_t / alpha_bar_t' ... (one table row)
        c = self._coefficients(timestep, t)

        # 2. predicted x_0, "x_0_hat" of eq. (15)
        pred_original_sample = predict_original_sample(
            model_output, sample, self.config.prediction_type, c.sqrt_alpha_prod_t, c.sqrt_beta_prod_t
        )

        # 3. clip or (dynamic) threshold x_0_hat
        pred_original_sample = clip_or_threshold(pred_original_sample, self.config)

        # 4. posterior mean mu_t(x_t, x_0_hat) of q(x_t' | x_t, x_0), eq. (7)
        pred_prev_sample = c.pred_original_sample_coeff * pred_original_sample
        pred_prev_sample += c.current_sample_coeff * sample

        # 5. add sigma_t z, z drawn after the model output, for t > 0 only, with the caller's generator
        if t is None or t > 0:
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            if self.variance_type == "learned":  # the model predicts sigma^2 itself
                variance = (predicted_variance**0.5) * noise
            elif self.variance_type == "learned_range":
                # improved DDPM eq. (15): log sigma^2 = v log beta_t + (1 - v) log beta_tilde_t, v in [0, 1]
                frac = (predicted_variance + 1) / 2
                log_variance = frac * c.max_log + (1 - frac) * c.min_log
                variance = torch.exp(0.5 * log_variance) * noise
            else:
                variance = c.noise_std * noise
            # the device cannot branch on t without a sync: noise is drawn, then zeroed at t = 0
            if t is None:
                variance = variance * c.has_noise
            pred_prev_sample += variance

        if not return_dict:
            return (pred_prev_sample, pred_original_sample)
        return DDPMSchedulerOutput(prev_sample=pred_prev_sample, pred_original_sample=pred_original_sample)
