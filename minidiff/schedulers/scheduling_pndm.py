"""PNDMScheduler: pseudo numerical methods for diffusion models (Liu et al. 2022), number for number with
diffusers' PNDMScheduler. Stable Diffusion v1's default sampler (with skip_prk_steps=True).

PNDM treats DDIM's update as the "transfer part" phi of a numerical method and feeds it a better noise
estimate e' than the model's single eps, as a linear multistep or Runge-Kutta method would (sec. 3.3):

    phi(x_t, e, t, t') = sqrt(alpha_bar_t' / alpha_bar_t) x_t
        - (alpha_bar_t' - alpha_bar_t) e / (alpha_bar_t sqrt(1 - alpha_bar_t') + sqrt(alpha_bar_t (1 - alpha_bar_t) alpha_bar_t'))
                                                                                    transfer part, eq. (9)
  PLMS, eq. (13), with e_k the model's eps at the k-th previous step (Adams-Bashforth weights):
    e' = (55 e_0 - 59 e_1 + 37 e_2 - 9 e_3) / 24,    x_{t-d} = phi(x_t, e', t, t - d)
  PRK, eq. (12), 4 model calls per step of d = T // n (half steps d / 2):
    e1 = eps(x_t, t),  x1 = phi(x_t, e1, t, t - d/2),  e2 = eps(x1, t - d/2),  x2 = phi(x_t, e2, t, t - d/2),
    e3 = eps(x2, t - d/2),  x3 = phi(x_t, e3, t, t - d),  e4 = eps(x3, t - d),
    e' = (e1 + 2 e2 + 2 e3 + e4) / 6,  x_{t-d} = phi(x_t, e', t, t - d)

PNDM proper (skip_prk_steps=False) warms the multistep history up with 3 PRK steps (12 model calls),
then runs PLMS. With skip_prk_steps=True the history starts with a pseudo improved-Euler step (Heun:
e' = (e_0 + eps(x_{t-d}, t - d)) / 2, one repeated timestep) and lower-order Adams-Bashforth weights
((3 e_0 - e_1) / 2, then (23 e_0 - 16 e_1 + 5 e_2) / 12) until 4 noise estimates exist.
"""

from __future__ import annotations

import numpy as np
import torch

from minidiff.configuration import SchedulerMixin, register_to_config
from minidiff.outputs import SchedulerOutput
from minidiff.schedulers.schedules import ForwardProcessMixin, check_choice
from minidiff.schedulers.scheduling_utils import (
    KARRAS_SCHEDULERS,
    TIMESTEP_SPACINGS,
    host_timestep,
    inference_timesteps,
    predict_epsilon,
    vp_schedule,
)

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")  # what diffusers' PNDMScheduler accepts


def transfer(
    sample: torch.Tensor, eps: torch.Tensor, alpha_prod_t: torch.Tensor, alpha_prod_t_prev: torch.Tensor
) -> torch.Tensor:
    """phi(x_t, e, t, t') of eq. (9): the DDIM (eta = 0) step from t to t' with noise estimate e, written
    as the paper writes it (the same number as DDIM's, up to rounding), in diffusers' op order."""
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    sample_coeff = (alpha_prod_t_prev / alpha_prod_t) ** (0.5)
    eps_denom_coeff = alpha_prod_t * beta_prod_t_prev ** (0.5) + (
        alpha_prod_t * beta_prod_t * alpha_prod_t_prev
    ) ** (0.5)
    return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * eps / eps_denom_coeff


class PNDMScheduler(ForwardProcessMixin, SchedulerMixin):
    """Pseudo numerical methods (PRK warm-up, then PLMS): diffusers' `PNDMScheduler`, same keywords.

    The scheduler keeps the multistep history between calls: call `set_timesteps` before each sampling run.

    Args:
        num_train_timesteps: T, the number of forward-process steps the model was trained with.
        beta_start: beta_1 of the schedule.
        beta_end: beta_T of the schedule.
        beta_schedule: linear, scaled_linear or squaredcos_cap_v2 (cosine, which ignores the two ends).
        trained_betas: explicit betas (length T), used instead of `beta_schedule`.
        skip_prk_steps: start PLMS with a Heun step instead of 3 PRK steps (as Stable Diffusion does).
        set_alpha_to_one: the last step lands on alpha_bar = 1 (True) or on alpha_bar_0 (False).
        prediction_type: what the model outputs: epsilon or v_prediction.
        timestep_spacing: how `set_timesteps` spaces the steps: leading, linspace or trailing.
        steps_offset: added to every inference timestep (leading spacing).
    """

    _compatibles = KARRAS_SCHEDULERS
    order = 1

    # Copied from diffusers.schedulers.scheduling_pndm.PNDMScheduler.__init__
    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ):
        check_choice("prediction_type", prediction_type, ("epsilon", "v_prediction"))
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        self.betas, self.alphas, self.alphas_cumprod = vp_schedule(  # alpha_bar_t
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, False, BETA_SCHEDULES
        )
        # alpha_bar "before" step 0, used when t' < 0: 1 (a clean x_0) or alpha_bar_0.
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.pndm_order = 4  # PLMS keeps 4 noise estimates
        self._forward_cache: dict = {}
        # the multistep state, reset by set_timesteps (diffusers' public names: tests and pipelines read them)
        self.cur_model_output: torch.Tensor | int = 0  # PRK: running sum of the weighted e1..e4
        self.counter = 0  # model calls so far in this run
        self.cur_sample: torch.Tensor | None = None  # x_t at the start of a PRK (or the first Heun) step
        self.ets: list[torch.Tensor] = []  # past noise estimates e_3 .. e_0, newest last
        self.num_inference_steps: int | None = None
        self._timesteps = np.arange(0, num_train_timesteps)[::-1].copy()
        self.prk_timesteps: np.ndarray | None = None
        self.plms_timesteps: np.ndarray | None = None
        self.timesteps: torch.Tensor | None = None

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Lay out the model calls: the PRK warm-up (4 per step over the 3 noisiest steps) unless
        skip_prk_steps, then the PLMS steps. Resets the multistep history.

        Args:
            num_inference_steps: how many steps to sample with.
            device: where `self.timesteps` goes.
        """
        cfg = self.config
        T, n = cfg.num_train_timesteps, num_inference_steps
        timesteps = inference_timesteps(T, n, cfg.timestep_spacing, cfg.steps_offset)[
            ::-1
        ].copy()  # ascending
        if not cfg.skip_prk_steps and not 4 <= n <= T // 2:
            # the warm-up is 3 steps of d = T // n over the 4 noisiest timesteps, with half steps d // 2 >= 1
            raise ValueError(
                f"num_inference_steps {n!r} is out of range for PNDM's Runge-Kutta warm-up; expected "
                f"4..{T // 2} (3 warm-up steps, each with a half step of T // n // 2 >= 1 training steps), "
                "or skip_prk_steps=True"
            )
        self.num_inference_steps = n
        self._timesteps = timesteps
        if cfg.skip_prk_steps:
            # the first timestep twice: a Heun step (e_0, then the average with the next estimate)
            self.prk_timesteps = np.array([], dtype=np.int64)
            self.plms_timesteps = np.concatenate([timesteps[:-1], timesteps[-2:-1], timesteps[-1:]])[
                ::-1
            ].copy()
        else:
            # each of the 3 noisiest steps t -> t - d as t, t - d/2, t - d/2, t - d
            half = T // n // 2
            prk = timesteps[-self.pndm_order :].repeat(2) + np.tile(np.array([0, half]), self.pndm_order)
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].copy()
            self.plms_timesteps = timesteps[:-3][::-1].copy()
        schedule = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self._host_schedule = schedule  # the timestep each model call expects, for device timesteps
        self.timesteps = torch.from_numpy(schedule).to(device)
        self.ets, self.counter, self.cur_model_output, self.cur_sample = [], 0, 0, None

    # ---- steps ----------------------------------------------------------------------------------
    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One model call's worth of sampling: a PRK sub-step during the warm-up, else a PLMS step.

        Args:
            model_output: the UNet's output at `timestep`.
            timestep: the current entry of `self.timesteps`.
            sample: the current sample x_t.
            return_dict: return a `SchedulerOutput` rather than a tuple.

        Returns:
            `SchedulerOutput(prev_sample=...)`, or `(prev_sample,)`.
        """
        self._check_ready()
        if self.counter >= len(self._host_schedule):
            raise ValueError(
                f"all {len(self._host_schedule)} steps of the schedule are done (counter {self.counter}); "
                "call set_timesteps to sample again"
            )
        if self.counter < len(self.prk_timesteps) and not self.config.skip_prk_steps:
            return self.step_prk(model_output, timestep, sample, return_dict)
        return self.step_plms(model_output, timestep, sample, return_dict)

    def _check_ready(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError(
                "Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler"
            )

    def _host_timestep(self, timestep: int | torch.Tensor) -> int:
        """The timestep as an int; a device tensor is not read back: the call's place in the schedule says it."""
        t = host_timestep(timestep, self.config.num_train_timesteps)
        return int(self._host_schedule[self.counter]) if t is None else t

    def _prev_sample(self, sample: torch.Tensor, t: int, prev_t: int, eps: torch.Tensor) -> torch.Tensor:
        """phi(x_t, e, t, t') with alpha_bar_t' = final_alpha_cumprod past the start (t' < 0)."""
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        if self.config.prediction_type == "v_prediction":  # the noise the velocity implies
            sqrt_alpha_prod_t, sqrt_beta_prod_t = alpha_prod_t**0.5, (1 - alpha_prod_t) ** 0.5
            eps = predict_epsilon(eps, sample, None, "v_prediction", sqrt_alpha_prod_t, sqrt_beta_prod_t)
        return transfer(sample, eps, alpha_prod_t, alpha_prod_t_prev)

    # Copied from diffusers.schedulers.scheduling_pndm.PNDMScheduler.step_prk
    def step_prk(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One of the 4 sub-steps of a PRK step t -> t - d, eq. (12); every sub-step starts from x_t.

        Args:
            model_output: the UNet's output at `timestep`.
            timestep: the current entry of `self.timesteps`.
            sample: the current sample x_t.
            return_dict: return a `SchedulerOutput` rather than a tuple.
        """
        self._check_ready()
        half = self.config.num_train_timesteps // self.num_inference_steps // 2
        # 1. sub-steps 1 and 3 move on by d / 2 from the timestep they are given; 2 and 4 land where 1 and 3 did
        prev_t = self._host_timestep(timestep) - (0 if self.counter % 2 else half)
        t = self.prk_timesteps[self.counter // 4 * 4]  # x_t: the start of this PRK step

        # 2. accumulate e' = (e1 + 2 e2 + 2 e3 + e4) / 6; sub-steps 1-3 use their own estimate
        stage = self.counter % 4
        if stage == 0:
            self.cur_model_output = self.cur_model_output + 1 / 6 * model_output
            self.ets.append(model_output)  # e1 joins the PLMS history
            self.cur_sample = sample
        elif stage in (1, 2):
            self.cur_model_output = self.cur_model_output + 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0

        # 3. x_{t'} = phi(x_t, e, t, t'), eq. (9)
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        prev_sample = self._prev_sample(cur_sample, t, prev_t, model_output)
        self.counter += 1
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)

    # Copied from diffusers.schedulers.scheduling_pndm.PNDMScheduler.step_plms
    def step_plms(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """A PLMS step t -> t - d with e' from the last 4 noise estimates, eq. (13).

        Args:
            model_output: the UNet's output at `timestep`.
            timestep: the current entry of `self.timesteps`.
            sample: the current sample x_t.
            return_dict: return a `SchedulerOutput` rather than a tuple.
        """
        self._check_ready()
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ValueError(
                f"{type(self).__name__}.step_plms can only be run after the scheduler has been run in 'prk' mode "
                f"for at least 12 iterations (got {len(self.ets)} noise estimates, need 3); see PNDMPipeline"
            )
        d = self.config.num_train_timesteps // self.num_inference_steps
        t = self._host_timestep(timestep)

        # 1. the history of noise estimates (the Heun correction of call 1 does not join it)
        prev_t = t - d
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:  # skip_prk_steps, call 1: redo the first step t + d -> t with the averaged estimate
            prev_t, t = t, t + d

        # 2. e' by the Adams-Bashforth weights of the history's length
        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            eps = model_output
            self.cur_sample = sample
        elif len(ets) == 1 and self.counter == 1:
            eps = (model_output + ets[-1]) / 2
            sample = self.cur_sample
            self.cur_sample = None
        elif len(ets) == 2:
            eps = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            eps = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            eps = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])

        # 3. x_{t-d} = phi(x_t, e', t, t - d), eq. (9)
        prev_sample = self._prev_sample(sample, t, prev_t, eps)
        self.counter += 1
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)
