"""DDIMScheduler: denoising diffusion implicit models (Song et al. 2021), number for number with diffusers.

DDIM keeps DDPM's training (same alpha_bar, same model) but samples with a non-Markovian update that can
skip steps. With t' = t - T // n the previous timestep (alpha_bar_t' = 1 or alpha_bar_0 past the start),

    x_t' = sqrt(alpha_bar_t') x_0_hat                                   "predicted x_0"
         + sqrt(1 - alpha_bar_t' - sigma_t^2) eps_hat                    "direction pointing to x_t"
         + sigma_t z                                                      "random noise"      eq. (12)
    sigma_t(eta) = eta sqrt((1 - alpha_bar_t') / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_t')   eq. (16)

eta = 0 is the deterministic DDIM sampler, eta = 1 the DDPM posterior variance.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from minidiff.configuration import SchedulerMixin, register_to_config
from minidiff.outputs import DDIMSchedulerOutput
from minidiff.schedulers.schedules import ForwardProcessMixin, check_choice
from minidiff.schedulers.scheduling_utils import (
    KARRAS_SCHEDULERS,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    check_model_output,
    clip_or_threshold,
    epsilon_from_original_sample,
    gather_row,
    host_timestep,
    inference_timesteps,
    predict_epsilon,
    predict_original_sample,
    randn_tensor,
    vp_schedule,
)

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")  # what diffusers' DDIMScheduler accepts


class _StepCoefficients(NamedTuple):
    """One row of the step table: 0-d float32 tensors for timestep t and t' = t - T // n."""

    sqrt_alpha_prod_t: torch.Tensor  # sqrt(alpha_bar_t)
    sqrt_beta_prod_t: torch.Tensor  # sqrt(1 - alpha_bar_t)
    alpha_prod_t_prev: torch.Tensor  # alpha_bar_t'
    sqrt_alpha_prod_t_prev: torch.Tensor  # sqrt(alpha_bar_t')
    sqrt_variance: torch.Tensor  # sigma_t(eta = 1), eq. (16)
    direction_coeff_eta0: torch.Tensor  # sqrt(1 - alpha_bar_t' - sigma_t(0)^2), eq. (12) with eta = 0


def ddim_variance(alpha_prod_t: torch.Tensor, alpha_prod_t_prev: torch.Tensor) -> torch.Tensor:
    """sigma_t(eta = 1)^2 = (1 - alpha_bar_t') / (1 - alpha_bar_t) (1 - alpha_bar_t / alpha_bar_t'), eq. (16)."""
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    return (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)


def ddim_step_table(
    alphas_cumprod: torch.Tensor, step_ratio: int, final_alpha_cumprod: torch.Tensor
) -> torch.Tensor:
    """(T, 6) float32 table, row t = `_StepCoefficients` for t -> t - step_ratio, in diffusers' op order."""
    prev_timesteps = torch.arange(len(alphas_cumprod)) - step_ratio
    alpha_prod_t = alphas_cumprod
    alpha_prod_t_prev = torch.where(
        prev_timesteps >= 0, alphas_cumprod[prev_timesteps.clamp(min=0)], final_alpha_cumprod
    )
    beta_prod_t = 1 - alpha_prod_t
    sqrt_variance = ddim_variance(alpha_prod_t, alpha_prod_t_prev) ** 0.5
    direction_coeff_eta0 = (1 - alpha_prod_t_prev - (0.0 * sqrt_variance) ** 2) ** 0.5
    columns = (alpha_prod_t**0.5, beta_prod_t**0.5, alpha_prod_t_prev, alpha_prod_t_prev**0.5)
    return torch.stack([*columns, sqrt_variance, direction_coeff_eta0], dim=1)


class DDIMScheduler(ForwardProcessMixin, SchedulerMixin):
    """Denoising diffusion implicit models: diffusers' `DDIMScheduler` with the same keywords.

    Call `set_timesteps` before `step`.

    Args:
        num_train_timesteps: T, the number of forward-process steps the model was trained with.
        beta_start: beta_1 of the schedule.
        beta_end: beta_T of the schedule.
        beta_schedule: linear, scaled_linear or squaredcos_cap_v2 (cosine, which ignores the two ends).
        trained_betas: explicit betas (length T), used instead of `beta_schedule`.
        clip_sample: clamp the predicted x_0 to [-clip_sample_range, clip_sample_range].
        set_alpha_to_one: the last step lands on alpha_bar = 1 (True) or on alpha_bar_0 (False).
        steps_offset: added to every inference timestep (leading spacing).
        prediction_type: what the model outputs: epsilon, sample (x_0) or v_prediction.
        thresholding: dynamic thresholding of the predicted x_0 (Imagen), instead of clipping.
        dynamic_thresholding_ratio: the percentile of |x_0| that thresholding clamps at.
        clip_sample_range: the bound of `clip_sample`.
        sample_max_value: the largest threshold dynamic thresholding may use.
        timestep_spacing: how `set_timesteps` spaces the steps: leading, linspace or trailing.
        rescale_betas_zero_snr: rescale the schedule so alpha_bar_T = 0 (Lin et al. 2024).
    """

    _compatibles = KARRAS_SCHEDULERS  # diffusers' list, less the schedulers minidiff does not have
    order = 1

    # Copied from diffusers.schedulers.scheduling_ddim.DDIMScheduler.__init__
    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        self.betas, self.alphas, self.alphas_cumprod = vp_schedule(  # alpha_bar_t
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr,
            BETA_SCHEDULES,
        )  # fmt: skip
        # alpha_bar "before" step 0, used when t' < 0: 1 (a clean x_0) or alpha_bar_0.
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._forward_cache: dict = {}
        self._step_table: torch.Tensor | None = None
        self._device_tables: dict[torch.device, torch.Tensor] = {}

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Pick `num_inference_steps` timesteps spaced by `timestep_spacing`.

        Args:
            num_inference_steps: how many steps to sample with.
            device: where `self.timesteps` goes; also moves the step table there.
        """
        cfg = self.config
        T = cfg.num_train_timesteps
        schedule = inference_timesteps(T, num_inference_steps, cfg.timestep_spacing, cfg.steps_offset)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(schedule).to(device)
        # diffusers steps back by T // n whatever the spacing; so do we, to give the same numbers.
        self._step_table = ddim_step_table(
            self.alphas_cumprod, T // num_inference_steps, self.final_alpha_cumprod
        )
        self._device_tables = {}
        if device is not None:
            self._table_on(torch.device(device))

    def _table_on(self, device: torch.device) -> torch.Tensor:
        if device.type == "cpu":
            return self._step_table
        if device not in self._device_tables:
            self._device_tables[device] = self._step_table.to(device)
        return self._device_tables[device]

    def _get_variance(self, timestep: int, prev_timestep: int) -> torch.Tensor:
        """diffusers' helper of the same name: sigma_t(eta = 1)^2 from `timestep` to `prev_timestep`
        (alpha_bar_t' = `final_alpha_cumprod` for a negative `prev_timestep`)."""
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = (
            self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        )
        return ddim_variance(alpha_prod_t, alpha_prod_t_prev)

    def _check_step_inputs(
        self, model_output, timestep, sample, eta, generator, variance_noise
    ) -> int | None:
        """`step`'s checks before any arithmetic; returns t on the host (None for a device timestep)."""
        if self._step_table is None:
            raise ValueError(
                "DDIMScheduler.step was called before set_timesteps: num_inference_steps is None; you need to "
                "run 'set_timesteps' after creating the scheduler"
            )
        t = host_timestep(timestep, self.config.num_train_timesteps)
        check_model_output(model_output, sample)
        if not 0 <= eta <= 1:  # diffusers takes any eta; above 1, sqrt(1 - alpha_bar_t' - sigma_t^2) is NaN
            raise ValueError(f"eta={eta!r}; expected a number in [0, 1] (0: DDIM, 1: DDPM's variance)")
        if eta > 0 and variance_noise is not None and generator is not None:
            raise ValueError(
                "Cannot pass both generator and variance_noise. Please make sure that either `generator` or"
                " `variance_noise` stays `None`."
            )
        return t

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One reverse step x_t -> x_t' by DDIM eq. (12).

        Args:
            model_output: the UNet's output at `timestep`.
            timestep: t, an int or a 0-d tensor, possibly on the device.
            sample: x_t.
            eta: the weight of the noise, in [0, 1]: 0 is deterministic DDIM, 1 has DDPM's variance.
            use_clipped_model_output: re-derive the noise prediction from the clipped x_0 (as GLIDE does).
            generator: the random generator of the step's noise (used when `eta` > 0).
            variance_noise: the noise itself, instead of drawing it from `generator`.
            return_dict: return a `DDIMSchedulerOutput` rather than a tuple.

        Returns:
            `DDIMSchedulerOutput(prev_sample=x_t', pred_original_sample=x_0_hat)`, or that pair as a tuple.
        """
        # 0. the inputs: set_timesteps was called, shapes and dtypes agree, eta in [0, 1]
        t = self._check_step_inputs(model_output, timestep, sample, eta, generator, variance_noise)

        # 1-2. alpha_bar_t, alpha_bar_t' with t' = t - T // n (one table row, on the timestep's device)
        row = self._step_table[t] if t is not None else gather_row(self._table_on(timestep.device), timestep)
        c = _StepCoefficients(*row.unbind())

        # 3. predicted x_0 ("predicted x_0" of eq. 12) and the noise eps_hat it implies
        prediction_type = self.config.prediction_type
        sqrt_alpha_prod_t, sqrt_beta_prod_t = c.sqrt_alpha_prod_t, c.sqrt_beta_prod_t
        pred_original_sample = predict_original_sample(
            model_output, sample, prediction_type, sqrt_alpha_prod_t, sqrt_beta_prod_t
        )
        pred_epsilon = predict_epsilon(
            model_output, sample, pred_original_sample, prediction_type, sqrt_alpha_prod_t, sqrt_beta_prod_t
        )

        # 4. clip or (dynamic) threshold x_0_hat
        pred_original_sample = clip_or_threshold(pred_original_sample, self.config)

        # 5. sigma_t(eta) of eq. (16)
        if eta == 0:
            std_dev_t, direction_coeff = None, c.direction_coeff_eta0
        else:
            std_dev_t = eta * c.sqrt_variance
            direction_coeff = (1 - c.alpha_prod_t_prev - std_dev_t**2) ** 0.5

        if use_clipped_model_output:  # re-derive eps_hat from the clipped x_0_hat, as GLIDE does
            pred_epsilon = epsilon_from_original_sample(
                sample, pred_original_sample, sqrt_alpha_prod_t, sqrt_beta_prod_t
            )

        # 6-7. x_t' = sqrt(alpha_bar_t') x_0_hat + sqrt(1 - alpha_bar_t' - sigma_t^2) eps_hat   (eq. 12)
        prev_sample = c.sqrt_alpha_prod_t_prev * pred_original_sample
        prev_sample += direction_coeff * pred_epsilon

        # 8. + sigma_t z with z from the caller's generator (or the given `variance_noise`)
        if eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(
                    model_output.shape, generator, model_output.device, model_output.dtype
                )
            prev_sample += std_dev_t * variance_noise

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
