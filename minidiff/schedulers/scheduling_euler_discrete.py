"""EulerDiscreteScheduler: Euler's method on the probability-flow ODE in sigma (Karras et al. 2022),
number for number with diffusers' EulerDiscreteScheduler.

A DDPM model is seen in EDM's variance-exploding coordinates (minidiff/schedulers/scheduling_utils.py, section 3):
x = x_0 + sigma eps, sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), the model fed x / sqrt(sigma^2 + 1)
(= x_t) and its output turned into the denoiser D(x; sigma) = x_0_hat. One step is EDM's Algorithm 2
without the second-order correction:

    gamma_i   = min(S_churn / N, sqrt(2) - 1)  if S_tmin <= sigma_i <= S_tmax, else 0          line 4
    sigma_hat = (1 + gamma_i) sigma_i,   x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise z       lines 5-7
    d_i       = (x_hat - D(x_hat; sigma_hat)) / sigma_hat                                 line 8, ODE eq. (3)
    x_{i+1}   = x_hat + (sigma_{i+1} - sigma_hat) d_i                                      line 9

With S_churn = 0 (the default) this is the plain deterministic Euler sampler. As in diffusers the model
is called before `step`, so the churn noise is added after the model saw x_i: D is evaluated at
(x_i, sigma_i), not at (x_hat, sigma_hat) as Algorithm 2 has it.
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
    beta_sigmas,
    check_model_output,
    exponential_sigmas,
    interpolated_sigmas,
    karras_sigmas,
    randn_tensor,
    sigma_timesteps,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    vp_schedule,
)

EulerDiscreteSchedulerOutput = SchedulerOutput
BETA_SCHEDULES = SIGMA_BETA_SCHEDULES


class EulerDiscreteScheduler(SigmaSamplerMixin, SchedulerMixin):
    """Euler sampler of Karras et al. 2022 (Algorithm 2): diffusers' `EulerDiscreteScheduler`, same keywords.

    Args:
        num_train_timesteps: T, the number of forward-process steps the model was trained with.
        beta_start: beta_1 of the schedule.
        beta_end: beta_T of the schedule.
        beta_schedule: linear, scaled_linear or squaredcos_cap_v2 (cosine, which ignores the two ends).
        trained_betas: explicit betas (length T), used instead of `beta_schedule`.
        prediction_type: what the model outputs: epsilon, sample (x_0) or v_prediction.
        interpolation_type: the training sigmas interpolated at the timesteps (linear) or log-spaced
            (log_linear).
        use_karras_sigmas: sigmas spaced as Karras et al. 2022 (EDM eq. 5) between sigma_min and sigma_max.
        use_exponential_sigmas: sigmas spaced exponentially between sigma_min and sigma_max.
        use_beta_sigmas: sigmas spaced by a beta distribution (needs scipy).
        sigma_min: the smallest sigma of those three spacings (default: the schedule's).
        sigma_max: the largest sigma of those three spacings (default: the schedule's).
        timestep_spacing: how `set_timesteps` spaces the steps: linspace (default), leading or trailing.
        timestep_type: discrete, or continuous (with v_prediction: the model gets t = log(sigma) / 4,
            EDM's c_noise).
        steps_offset: added to every inference timestep (leading spacing).
        rescale_betas_zero_snr: rescale the schedule so alpha_bar_T = 0 (Lin et al. 2024).
        final_sigmas_type: the last step lands on sigma = 0 (zero) or on the smallest training sigma
            (sigma_min).
    """

    _compatibles = KARRAS_SCHEDULERS
    order = 1

    # Copied from diffusers.schedulers.scheduling_euler_discrete.EulerDiscreteScheduler.__init__
    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: bool | None = False,
        use_exponential_sigmas: bool | None = False,
        use_beta_sigmas: bool | None = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: str = "linspace",
        timestep_type: str = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str = "zero",
    ):
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("interpolation_type", interpolation_type, ("linear", "log_linear"))
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        check_choice("timestep_type", timestep_type, ("discrete", "continuous"))
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"))
        chosen = {"use_karras_sigmas": use_karras_sigmas, "use_exponential_sigmas": use_exponential_sigmas}
        chosen = {k: v for k, v in {**chosen, "use_beta_sigmas": use_beta_sigmas}.items() if v}
        if len(chosen) > 1:
            raise ValueError(f"Only one of `config.use_beta_sigmas`, `config.use_exponential_sigmas`, "
                             f"`config.use_karras_sigmas` can be used; got {chosen}")  # fmt: skip
        self.betas, self.alphas, self.alphas_cumprod = vp_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr,
            BETA_SCHEDULES, clamp_zero_snr=True,
        )  # fmt: skip
        self.use_karras_sigmas = use_karras_sigmas  # diffusers' attributes, kept for code that reads them
        self.use_exponential_sigmas = use_exponential_sigmas
        self.use_beta_sigmas = use_beta_sigmas

        # before set_timesteps: every training step, t = T - 1 .. 0
        sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod).flip(0)
        timesteps = np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=float)[::-1].copy()
        self.timesteps = self._model_timesteps(sigmas, torch.from_numpy(timesteps).to(torch.float32))
        self.sigmas = torch.cat([sigmas, torch.zeros(1)])  # on the host: read by every step, no sync
        self.num_inference_steps: int | None = None
        self.is_scale_input_called = False
        self._step_index = self._begin_index = None

    def _model_timesteps(self, sigmas: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the model gets as t: the timesteps, or c_noise = log(sigma) / 4 (continuous v-prediction)."""
        if self.config.timestep_type == "continuous" and self.config.prediction_type == "v_prediction":
            return 0.25 * sigmas.log()
        return timesteps

    # ---- the schedule -------------------------------------------------------------------------
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
    ) -> None:
        """Pick the sigmas to visit: `num_inference_steps` timesteps by `timestep_spacing`, or custom
        descending `timesteps`, or custom `sigmas`.

        Args:
            num_inference_steps: how many steps to sample with.
            device: where `self.timesteps` and `self.sigmas` go.
            timesteps: a custom descending list of training timesteps.
            sigmas: a custom descending list of sigmas, ending with the final sigma (usually 0).
        """
        cfg = self.config
        given = {"num_inference_steps": num_inference_steps, "timesteps": timesteps, "sigmas": sigmas}
        given = {k: v for k, v in given.items() if v is not None}
        if len(given) != 1:
            raise ValueError(f"Must pass exactly one of `num_inference_steps`, `timesteps` or `sigmas`; got "
                             f"{sorted(given) or 'none'}")  # fmt: skip
        if timesteps is not None:
            for option in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
                if cfg[option]:
                    raise ValueError(f"Cannot set `timesteps` with `config.{option} = True`.")
            if cfg.timestep_type == "continuous" and cfg.prediction_type == "v_prediction":
                raise ValueError("Cannot set `timesteps` with `config.timestep_type = 'continuous'` and "
                                 "`config.prediction_type = 'v_prediction'`.")  # fmt: skip
        if sigmas is not None:
            sigma_values, schedule = self._custom_sigmas(sigmas)
        else:
            schedule = self._timestep_schedule(num_inference_steps, timesteps)
            sigma_values, schedule = self._sigma_schedule(schedule, len(schedule))
        self.num_inference_steps = len(sigma_values) - 1 if sigmas is not None else len(schedule)
        sigma_values = torch.from_numpy(sigma_values).to(dtype=torch.float32)
        schedule = torch.from_numpy(schedule.astype(np.float32))
        self.timesteps = self._model_timesteps(sigma_values[:-1], schedule).to(device=device)
        self.sigmas = sigma_values  # stays on the host
        self._step_index = self._begin_index = None

    def _timestep_schedule(self, num_inference_steps: int | None, timesteps) -> np.ndarray:
        cfg = self.config
        if timesteps is None:
            return sigma_timesteps(
                cfg.num_train_timesteps, num_inference_steps, cfg.timestep_spacing, cfg.steps_offset
            )
        array = timesteps.cpu().numpy() if isinstance(timesteps, torch.Tensor) else np.array(timesteps)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"timesteps must be a non-empty 1-d list of numbers, got {timesteps!r}")
        return array.astype(np.float32)

    def _custom_sigmas(self, sigmas) -> tuple[np.ndarray, np.ndarray]:
        array = (sigmas.cpu().numpy() if isinstance(sigmas, torch.Tensor) else np.array(sigmas)).astype(
            np.float32
        )
        if array.ndim != 1 or array.size < 2 or not np.all(array >= 0):
            raise ValueError(f"sigmas must be a 1-d list of >= 2 numbers >= 0 (the last one the final sigma), "
                             f"got {sigmas!r}")  # fmt: skip
        log_sigmas = np.log(sigmas_from_alphas_cumprod(self.alphas_cumprod).numpy())
        return array, sigma_to_t(array[:-1], log_sigmas)

    def _sigma_schedule(self, timesteps: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(n + 1 float32 sigmas, n timesteps) for the config's interpolation and sigma schedule."""
        cfg = self.config
        train_sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod).numpy()
        log_sigmas = np.log(train_sigmas)
        if cfg.interpolation_type == "linear":
            sigmas = interpolated_sigmas(self.alphas_cumprod, timesteps)
        else:  # log_linear: n + 1 sigmas from the largest to the smallest training sigma, whatever the timesteps
            sigmas = torch.linspace(np.log(train_sigmas[-1]), np.log(train_sigmas[0]), n + 1).exp().numpy()
        if cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas:
            sigma_min = cfg.sigma_min if cfg.sigma_min is not None else sigmas[-1].item()
            sigma_max = cfg.sigma_max if cfg.sigma_max is not None else sigmas[0].item()
            if cfg.use_karras_sigmas:
                sigmas = karras_sigmas(sigma_min, sigma_max, n)
            elif cfg.use_exponential_sigmas:
                sigmas = exponential_sigmas(sigma_min, sigma_max, n)
            else:
                sigmas = beta_sigmas(sigma_min, sigma_max, n)
            timesteps = sigma_to_t(sigmas, log_sigmas)  # the model is told the t of each new sigma
        # the last step goes to sigma = 0 (a clean x_0) or stops at the smallest training sigma
        sigma_last = float(train_sigmas[0]) if cfg.final_sigmas_type == "sigma_min" else 0.0
        return np.concatenate([sigmas, [sigma_last]]).astype(np.float32), timesteps

    # ---- one step -----------------------------------------------------------------------------
    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> EulerDiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """x_i -> x_{i+1}, EDM Algorithm 2 lines 4-9 (a first-order step).

        The step works in float32 and returns the model output's dtype.

        Args:
            model_output: the UNet's output at `timestep` (for the input `scale_model_input` gave).
            timestep: one of `scheduler.timesteps`.
            sample: the current sample x_i.
            s_churn: EDM's S_churn: how much noise to add back per step (0: none).
            s_tmin: EDM's S_tmin: churn only where sigma >= s_tmin.
            s_tmax: EDM's S_tmax: churn only where sigma <= s_tmax.
            s_noise: EDM's S_noise: the scale of the noise added back.
            generator: the random generator of that noise.
            return_dict: return an `EulerDiscreteSchedulerOutput` rather than a tuple.

        Returns:
            `EulerDiscreteSchedulerOutput(prev_sample, pred_original_sample)`, or that pair as a tuple.
        """
        check_model_output(model_output, sample, same_dtype=False)  # the step runs in float32
        self._warn_if_unscaled()
        i = self._current_index(timestep)
        sample = sample.to(torch.float32)
        sigma = self.sigmas[i]

        # 1. churn: gamma_i and sigma_hat = (1 + gamma_i) sigma_i (lines 4, 6)
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)

        # 2. x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise z (lines 5, 7)
        if gamma > 0:
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            eps = noise * s_noise
            sample = sample + eps * (sigma_hat**2 - sigma**2) ** 0.5

        # 3. denoised x_0_hat = D(x; sigma) from the model output
        prediction_type = self.config.prediction_type
        if prediction_type == "sample":
            pred_original_sample = model_output
        elif prediction_type == "epsilon":  # x = x_0 + sigma eps
            pred_original_sample = sample - sigma_hat * model_output
        else:  # v_prediction, in x_t = x / sqrt(sigma^2 + 1) coordinates (Salimans & Ho 2022)
            pred_original_sample = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))

        # 4. d_i = (x_hat - x_0_hat) / sigma_hat, x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) d_i (lines 8-9)
        derivative = (sample - pred_original_sample) / sigma_hat
        dt = self.sigmas[i + 1] - sigma_hat
        prev_sample = sample + derivative * dt
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return EulerDiscreteSchedulerOutput(
            prev_sample=prev_sample, pred_original_sample=pred_original_sample
        )

    def get_velocity(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The v-prediction target v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 at each timestep's sigma,
        with alpha_bar = 1 / (1 + sigma^2). (diffusers reads alphas_cumprod at the step *index*, which is
        another timestep's alpha_bar whenever the schedule skips steps; here each timestep gets its own.)

        Args:
            sample: x_0, the clean images.
            noise: eps.
            timesteps: t, one per image, from `self.timesteps`.
        """
        index = torch.tensor(
            [self.index_for_timestep(t) for t in torch.as_tensor(timesteps).reshape(-1).cpu()]
        )
        sigma = self.sigmas.index_select(0, index).to(device=sample.device, dtype=sample.dtype)
        sigma = sigma.reshape((-1,) + (1,) * (sample.ndim - 1))  # (B, 1, ..., 1)
        sqrt_alpha_prod = 1 / (sigma**2 + 1) ** 0.5
        return sqrt_alpha_prod * noise - (sigma * sqrt_alpha_prod) * sample
