"""EulerAncestralDiscreteScheduler: k-diffusion's `sample_euler_ancestral` (Karras et al. 2022 coordinates),
number for number with diffusers' EulerAncestralDiscreteScheduler.

In the coordinates of minidiff/schedulers/scheduling_euler_discrete.py (x = x_0 + sigma eps, model input
x / sqrt(sigma^2 + 1)), one step from sigma_i to sigma_{i+1} splits the move into a deterministic Euler
step down to sigma_down and fresh noise of size sigma_up, with sigma_down^2 + sigma_up^2 = sigma_{i+1}^2:

    sigma_up   = sqrt(sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2)
    sigma_down = sqrt(sigma_{i+1}^2 - sigma_up^2)
    d          = (x_i - x_0_hat) / sigma_i                                          (EDM eq. 3)
    x_{i+1}    = x_i + (sigma_down - sigma_i) d + sigma_up z,   z ~ N(0, I)

This is DDPM's ancestral sampling (eta = 1) written for an ODE solver: the noise that a step of the
reverse SDE injects is drawn afresh, so the sampler forgets its errors, at the price of never converging
to one image as the step count grows. Noise is drawn on every step, the last included (sigma_up = 0 there).
"""

from __future__ import annotations

import numpy as np
import torch

from minidiff.configuration import SchedulerMixin, register_to_config
from minidiff.outputs import SchedulerOutput
from minidiff.schedulers.schedules import check_choice
from minidiff.schedulers.scheduling_utils import (
    KARRAS_SCHEDULERS,
    PREDICTION_TYPES,
    SIGMA_BETA_SCHEDULES,
    TIMESTEP_SPACINGS,
    SigmaSamplerMixin,
    check_model_output,
    interpolated_sigmas,
    randn_tensor,
    sigma_timesteps,
    sigmas_from_alphas_cumprod,
    vp_schedule,
)

EulerAncestralDiscreteSchedulerOutput = SchedulerOutput


def ancestral_sigmas(sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_down, sigma_up) of k-diffusion's `get_ancestral_step` with eta = 1, in diffusers' op order."""
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


class EulerAncestralDiscreteScheduler(SigmaSamplerMixin, SchedulerMixin):
    """Ancestral Euler sampler: diffusers' `EulerAncestralDiscreteScheduler` with the same keywords.

    Pass a seeded `generator` to `step`.

    Args:
        num_train_timesteps: T, the number of forward-process steps the model was trained with.
        beta_start: beta_1 of the schedule.
        beta_end: beta_T of the schedule.
        beta_schedule: linear, scaled_linear or squaredcos_cap_v2 (cosine, which ignores the two ends).
        trained_betas: explicit betas (length T), used instead of `beta_schedule`.
        prediction_type: what the model outputs: epsilon, v_prediction, or sample (which diffusers refuses at
            step time; x_0_hat is the model output).
        timestep_spacing: how `set_timesteps` spaces the steps: linspace (default), leading or trailing.
        steps_offset: added to every inference timestep (leading spacing).
        rescale_betas_zero_snr: rescale the schedule so alpha_bar_T = 0 (Lin et al. 2024).
    """

    _compatibles = KARRAS_SCHEDULERS
    order = 1

    # Copied from diffusers.schedulers.scheduling_euler_ancestral_discrete.EulerAncestralDiscreteScheduler.__init__
    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        self.betas, self.alphas, self.alphas_cumprod = vp_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr,
            SIGMA_BETA_SCHEDULES, clamp_zero_snr=True,
        )  # fmt: skip
        # before set_timesteps: every training step, t = T - 1 .. 0 (float64, as diffusers has them)
        sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod).flip(0)
        self.sigmas = torch.cat([sigmas, torch.zeros(1)])  # on the host: read by every step, no sync
        timesteps = np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=float)[::-1].copy()
        self.timesteps = torch.from_numpy(timesteps)
        self.num_inference_steps: int | None = None
        self.is_scale_input_called = False
        self._step_index = self._begin_index = None

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Pick `num_inference_steps` timesteps by `timestep_spacing` and their interpolated sigmas, + 0.

        Args:
            num_inference_steps: how many steps to sample with.
            device: where `self.timesteps` and `self.sigmas` go.
        """
        cfg = self.config
        timesteps = sigma_timesteps(
            cfg.num_train_timesteps, num_inference_steps, cfg.timestep_spacing, cfg.steps_offset
        )
        sigmas = interpolated_sigmas(self.alphas_cumprod, timesteps)
        self.num_inference_steps = num_inference_steps
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))  # host
        self.timesteps = torch.from_numpy(timesteps).to(device=device)
        self._step_index = self._begin_index = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> EulerAncestralDiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """x_i -> x_{i+1}: an Euler step to sigma_down, then noise of size sigma_up drawn with `generator`.

        Args:
            model_output: the UNet's output at `timestep` (for the input `scale_model_input` gave).
            timestep: one of `scheduler.timesteps`.
            sample: the current sample x_i.
            generator: the random generator of the step's noise.
            return_dict: return an `EulerAncestralDiscreteSchedulerOutput` rather than a tuple.

        Returns:
            `EulerAncestralDiscreteSchedulerOutput(prev_sample, pred_original_sample)`, or that pair as a tuple.
        """
        check_model_output(model_output, sample, same_dtype=False)  # the step runs in float32
        self._warn_if_unscaled()
        i = self._current_index(timestep)
        sigma = self.sigmas[i]
        sample = sample.to(torch.float32)

        # 1. denoised x_0_hat = D(x; sigma) from the model output
        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":  # x = x_0 + sigma eps
            pred_original_sample = sample - sigma * model_output
        elif prediction_type == "v_prediction":  # in x_t = x / sqrt(sigma^2 + 1) coordinates
            pred_original_sample = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
        else:  # sample
            pred_original_sample = model_output

        # 2. split sigma_{i+1} into a deterministic part sigma_down and fresh noise sigma_up
        sigma_down, sigma_up = ancestral_sigmas(self.sigmas[i], self.sigmas[i + 1])

        # 3. Euler step to sigma_down: d = (x - x_0_hat) / sigma (EDM eq. 3)
        derivative = (sample - pred_original_sample) / sigma
        dt = sigma_down - sigma
        prev_sample = sample + derivative * dt

        # 4. + sigma_up z, z drawn after the model output with the caller's generator
        noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
        prev_sample = prev_sample + noise * sigma_up
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return EulerAncestralDiscreteSchedulerOutput(
            prev_sample=prev_sample, pred_original_sample=pred_original_sample
        )
