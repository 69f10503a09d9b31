"""DPMSolverMultistepScheduler: DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al. 2022b), as diffusers.

The diffusion ODE, written in the half log-SNR lambda_t = log(alpha_t / sigma_t) with alpha_t = sqrt(alpha_bar_t),
sigma_t = sqrt(1 - alpha_bar_t), has an exact solution from s to t < s whose linear part is solved in closed form:

    x_t = alpha_t / alpha_s x_s - alpha_t int_{lambda_s}^{lambda_t} e^{-lambda} eps_theta dlambda    DPM-Solver eq. (3.4)
    x_t = sigma_t / sigma_s x_s + sigma_t int_{lambda_s}^{lambda_t} e^{lambda} x_theta dlambda        DPM-Solver++ eq. (9)

("dpmsolver" integrates the noise prediction eps_theta, "dpmsolver++" the data prediction x_theta). With
h = lambda_t - lambda_s, a Taylor expansion of x_theta in lambda gives the k-th order solvers; "multistep" takes
the derivatives from the model outputs of the previous steps (D0 = m0, D1 ~ h x_theta', D2 ~ h^2 x_theta''/2):

    1st (= DDIM):        x_t = sigma_t / sigma_s x_s - alpha_t (e^{-h} - 1) D0                    DPM-Solver++(1)
    2nd, midpoint:       ... - 1/2 alpha_t (e^{-h} - 1) D1,  D1 = (m0 - m1) / r0,  r0 = h_0 / h   DPM-Solver++(2M), Alg. 2
    2nd, heun:           ... + alpha_t ((e^{-h} - 1) / h + 1) D1
    3rd:                 ... - alpha_t ((e^{-h} - 1 + h) / h^2 - 1/2) D2                        (phi-functions, App. B)

The SDE variants (sde-dpmsolver++, DPM-Solver++ sec. 5) solve the reverse SDE instead: the same expansion of
int e^{2 lambda} x_theta, plus sigma_t sqrt(1 - e^{-2h}) z of fresh noise per step. The stepping is in sigma =
sigma_t / alpha_t (scheduling_utils section 3), so Karras' sigmas drop in.

Numbers: every coefficient is a 0-d float32 tensor on the host computed with diffusers' operations, and each
update is the same sum of coefficient * tensor terms in the same order (signs folded into the coefficients,
which IEEE rounding leaves exact), so trajectories agree bit for bit on the CPU.
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
    TIMESTEP_SPACINGS,
    StepIndexMixin,
    beta_sigmas,
    check_step_count,
    custom_timesteps,
    epsilon_from_original_sample,
    exponential_sigmas,
    interpolated_sigmas,
    karras_sigmas,
    predict_epsilon,
    predict_original_sample,
    randn_tensor,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    threshold_sample,
    vp_schedule,
)

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")  # what diffusers' DPM-Solver accepts
ALGORITHM_TYPES = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")
SOLVER_TYPES = ("midpoint", "heun")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
# A DDPM config names its fixed variance: DPM-Solver uses only the mean, as for variance_type None.
VARIANCE_TYPES = (
    None,
    "learned",
    "learned_range",
    *(f"fixed_{size}{log}" for size in ("small", "large") for log in ("", "_log")),
)
# Configs of diffusers' DEIS and UniPC schedulers carry their own solver names: diffusers maps them so.
FOREIGN_NAMES = {
    "algorithm_type": {"deis": "dpmsolver++"},
    "solver_type": dict.fromkeys(("logrho", "bh1", "bh2"), "midpoint"),
}
# diffusers' options minidiff does not implement: (keyword, the value that means "off")
NOT_IMPLEMENTED = (
    ("use_flow_sigmas", False),
    ("flow_shift", 1.0),
    ("use_dynamic_shifting", False),
    ("time_shift_type", "exponential"),
)
SIGMA_SCHEDULES = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")


def dpm_timesteps(
    last_timestep: int, num_train_timesteps: int, n: int, timestep_spacing: str, steps_offset: int
) -> np.ndarray:
    """The descending int64 timesteps, as diffusers' multistep solvers pick them: n + 1 points of which the last
    (t = 0, the clean image) is dropped. `last_timestep` < T when lambda_min_clipped cuts the noisiest steps."""
    if timestep_spacing == "linspace":
        return np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    if timestep_spacing == "leading":
        step_ratio = last_timestep // (n + 1)
        return (np.arange(0, n + 1) * step_ratio).round()[::-1][:-1].copy().astype(np.int64) + steps_offset
    step_ratio = num_train_timesteps / n  # trailing
    return np.arange(last_timestep, 0, -step_ratio).round().copy().astype(np.int64) - 1


def alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) of the variance-preserving process from sigma = sigma_t / alpha_t."""
    alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha_t, sigma * alpha_t


class DPMSolverMultistepScheduler(StepIndexMixin, SchedulerMixin):
    """Multistep DPM-Solver / DPM-Solver++: diffusers' `DPMSolverMultistepScheduler` with the same keywords.

    Args:
        num_train_timesteps: T, the number of forward-process steps the model was trained with.
        beta_start: beta_1 of the schedule.
        beta_end: beta_T of the schedule.
        beta_schedule: linear, scaled_linear or squaredcos_cap_v2 (cosine, which ignores the two ends).
        trained_betas: explicit betas (length T), used instead of `beta_schedule`.
        solver_order: 1, 2 or 3 (2 for guided sampling, 3 unconditional).
        prediction_type: what the model outputs: epsilon, sample (x_0) or v_prediction.
        thresholding: dynamic thresholding of the predicted x_0 (Imagen).
        dynamic_thresholding_ratio: the percentile of |x_0| that thresholding clamps at.
        sample_max_value: the largest threshold dynamic thresholding may use.
        algorithm_type: dpmsolver++ (default), sde-dpmsolver++, dpmsolver or sde-dpmsolver.
        solver_type: midpoint or heun, the form of the second-order update.
        lower_order_final: first order on the last steps of short schedules (under 15 steps).
        euler_at_final: first order on the very last step.
        use_karras_sigmas: sigmas spaced as Karras et al. 2022 (EDM eq. 5).
        use_exponential_sigmas: sigmas spaced exponentially.
        use_beta_sigmas: sigmas spaced by a beta distribution (needs scipy).
        use_lu_lambdas: log-SNR lambdas spaced uniformly (Lu et al.).
        use_flow_sigmas: diffusers' flow-matching sigmas; only False is implemented.
        flow_shift: their shift; only 1.0 is implemented.
        final_sigmas_type: the last step lands on sigma = 0 ("zero", the ++ variants only) or on sigma of
            t = 0 ("sigma_min").
        lambda_min_clipped: the lower bound of lambda(t) = log(alpha_t / sigma_t) (for the cosine schedule).
        variance_type: learned or learned_range when the model also outputs a variance (which is dropped);
            None or a fixed_* type otherwise (only the mean is used).
        timestep_spacing: how `set_timesteps` spaces the steps: linspace (default), leading or trailing.
        steps_offset: added to every inference timestep (leading spacing).
        rescale_betas_zero_snr: rescale the schedule so alpha_bar_T = 0 (Lin et al. 2024).
        use_dynamic_shifting: shift the flow sigmas by the `mu` of `set_timesteps`; only False is implemented.
        time_shift_type: the form of that shift; only exponential is implemented.
    """

    _compatibles = KARRAS_SCHEDULERS  # diffusers' list, less the schedulers minidiff does not have
    order = 1
    init_noise_sigma = 1.0  # x_T ~ N(0, I)

    # Copied from diffusers.schedulers.scheduling_dpmsolver_multistep.DPMSolverMultistepScheduler.__init__
    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        # 0. options: foreign solver names mapped as diffusers maps them, the rest checked
        self._check_options()

        # 1. the VP schedule: alpha_bar_t, then alpha_t, sigma_t, lambda_t and sigma = sigma_t / alpha_t
        # (under zero SNR alpha_bar_{T-1} = 0 would make sigma infinite: clamped as Euler's, to 2^-24)
        self.betas, self.alphas, self.alphas_cumprod = vp_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr,
            BETA_SCHEDULES, clamp_zero_snr=True,
        )  # fmt: skip
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)

        # 2. the solver's state: no schedule yet, an empty history of converted model outputs
        self.num_inference_steps: int | None = None
        self.timesteps = torch.from_numpy(
            np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=np.float32)[::-1].copy()
        )
        self.model_outputs: list[torch.Tensor | None] = [None] * solver_order
        self.lower_order_nums = 0
        self._step_index: int | None = None
        self._begin_index: int | None = None

    def _check_options(self) -> None:
        """Map diffusers' foreign solver names as it does; refuse what minidiff does not implement and the
        combinations diffusers fails on, naming them."""
        for key, mapping in FOREIGN_NAMES.items():
            if self.config[key] in mapping:
                self.register_to_config(**{key: mapping[self.config[key]]})
        cfg = self.config
        algorithm_type, solver_type, solver_order = cfg.algorithm_type, cfg.solver_type, cfg.solver_order
        prediction_type, final_sigmas_type = cfg.prediction_type, cfg.final_sigmas_type
        for key, off in NOT_IMPLEMENTED:
            if self.config[key] != off:
                raise NotImplementedError(f"{key}={self.config[key]!r} is not implemented in minidiff")
        if sum(bool(self.config[key]) for key in SIGMA_SCHEDULES[:3]) > 1:
            raise ValueError(
                "Only one of `config.use_beta_sigmas`, `config.use_exponential_sigmas`, `config.use_karras_sigmas` "
                "can be used."
            )
        if prediction_type == "flow_prediction":
            raise NotImplementedError("prediction_type 'flow_prediction' is not implemented in minidiff")
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("algorithm_type", algorithm_type, ALGORITHM_TYPES)
        check_choice("solver_type", solver_type, SOLVER_TYPES)
        check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        check_choice("timestep_spacing", cfg.timestep_spacing, TIMESTEP_SPACINGS)
        check_choice("variance_type", cfg.variance_type, VARIANCE_TYPES)
        if isinstance(solver_order, bool) or solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order {solver_order!r} is not supported; expected 1, 2 or 3")
        if algorithm_type == "sde-dpmsolver" and solver_order == 3:  # diffusers fails mid-sampling
            raise ValueError(
                "solver_order 3 is not supported for algorithm_type 'sde-dpmsolver'; expected 1 or 2"
            )
        if algorithm_type in ("dpmsolver", "sde-dpmsolver") and final_sigmas_type == "zero":
            raise ValueError(
                f"final_sigmas_type 'zero' is not supported for algorithm_type {algorithm_type!r} (eps / sigma_t "
                "at sigma = 0); expected 'sigma_min'"
            )

    # ---- the schedule -------------------------------------------------------------------------
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        mu: float | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Pick the timesteps (`num_inference_steps` by `timestep_spacing`, or a custom descending list) and their
        sigmas, plus the final sigma; reset the history.

        Args:
            num_inference_steps: how many steps to sample with (exclusive with `timesteps`).
            device: where `self.timesteps` goes (the sigmas stay on the host).
            mu: the shift of the sigmas under `use_dynamic_shifting` (not implemented; leave None).
            timesteps: a custom descending list of training timesteps.
        """
        cfg = self.config
        T = cfg.num_train_timesteps
        if mu is not None:
            raise NotImplementedError("mu (use_dynamic_shifting) is not implemented in minidiff")
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError(
                "set_timesteps needs exactly one of `num_inference_steps` or `timesteps`; got num_inference_steps="
                f"{num_inference_steps!r} and timesteps={timesteps!r}"
            )
        for key in SIGMA_SCHEDULES:
            if timesteps is not None and cfg[key]:
                raise ValueError(f"Cannot use `timesteps` with `config.{key} = True`")
        if timesteps is not None:
            timesteps = custom_timesteps(timesteps, T)
        else:
            check_step_count(num_inference_steps, T)
            # lambda_min_clipped cuts the noisiest steps, where lambda_t (log-SNR) is below it (cosine schedule)
            clipped_idx = torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped)
            last_timestep = (T - clipped_idx).numpy().item()
            timesteps = dpm_timesteps(
                last_timestep, T, num_inference_steps, cfg.timestep_spacing, cfg.steps_offset
            )

        sigmas, timesteps = self._inference_sigmas(timesteps, num_inference_steps)
        sigma_last = (
            sigmas_from_alphas_cumprod(self.alphas_cumprod[0]) if cfg.final_sigmas_type == "sigma_min" else 0
        )
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [sigma_last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self.model_outputs = [None] * cfg.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None

    def _inference_sigmas(self, timesteps: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The sigmas of the schedule: those of the timesteps, or a schedule in sigma (Karras, exponential, beta,
        Lu's uniform lambda) whose timesteps are then read back by interpolation in log sigma."""
        cfg = self.config
        sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod).numpy()  # float32, ascending in t
        log_sigmas = np.log(sigmas)
        sigma_min, sigma_max = sigmas[0].item(), sigmas[-1].item()
        if cfg.use_karras_sigmas:  # EDM eq. (5)
            sigmas = karras_sigmas(sigma_min, sigma_max, n)
        elif cfg.use_lu_lambdas:  # evenly spaced in lambda = -log sigma: Karras' ramp, rho = 1, in log sigma
            sigmas = np.exp(karras_sigmas(log_sigmas[0].item(), log_sigmas[-1].item(), n, rho=1.0))
        elif cfg.use_exponential_sigmas:
            sigmas = exponential_sigmas(sigma_min, sigma_max, n)
        elif cfg.use_beta_sigmas:
            sigmas = beta_sigmas(sigma_min, sigma_max, n)
        else:
            return interpolated_sigmas(self.alphas_cumprod, timesteps), timesteps
        timesteps = np.array([sigma_to_t(sigma, log_sigmas) for sigma in sigmas])
        # diffusers rounds t for Karras and Lu and truncates it otherwise (the cast to int64 below)
        if (cfg.use_karras_sigmas or cfg.use_lu_lambdas) and cfg.beta_schedule != "squaredcos_cap_v2":
            timesteps = timesteps.round()
        return sigmas, timesteps

    def _alpha_sigma_lambda(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """alpha, sigma and lambda = log(alpha) - log(sigma) at `self.sigmas[index]` (0-d float32, host)."""
        alpha, sigma = alpha_sigma(self.sigmas[index])
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    # ---- the model output the solver integrates ---------------------------------------------------
    def convert_model_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """x_theta (the ++ variants) or eps_theta (dpmsolver, sde-dpmsolver) at the current step, from any
        prediction_type; dynamic thresholding applies to the x_0 estimate in both cases.

        Args:
            model_output: the UNet's output at the current step.
            sample: the current sample x_s.
        """
        if self.step_index is None:
            raise ValueError(
                "convert_model_output needs the step index: call step (or set_begin_index) first"
            )
        cfg = self.config
        if cfg.variance_type in ("learned", "learned_range"):  # [mean, variance] on 2C channels: the mean
            model_output = model_output[:, : sample.shape[1]]
        alpha_t, sigma_t = alpha_sigma(self.sigmas[self.step_index])
        if cfg.algorithm_type in ("dpmsolver++", "sde-dpmsolver++"):
            x0_pred = predict_original_sample(model_output, sample, cfg.prediction_type, alpha_t, sigma_t)
            return (
                threshold_sample(x0_pred, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
                if cfg.thresholding
                else x0_pred
            )
        epsilon = predict_epsilon(model_output, sample, model_output, cfg.prediction_type, alpha_t, sigma_t)
        if cfg.thresholding:  # threshold x_0 = (x_t - sigma_t eps) / alpha_t, then back to eps
            x0_pred = (sample - sigma_t * epsilon) / alpha_t
            x0_pred = threshold_sample(x0_pred, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
            epsilon = epsilon_from_original_sample(sample, x0_pred, alpha_t, sigma_t)
        return epsilon

    # ---- the updates: x_t = c_x x_s + c_0 D0 + c_1 D1 + c_2 D2 (+ c_z z) ------------------------
    @staticmethod
    def _update(
        sample: torch.Tensor, c_x: torch.Tensor, terms: list, c_z, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """x_t = c_x x_s + c_0 D0 + c_1 D1 + ... (+ c_z z): each product a 0-d coefficient times a tensor, summed
        left to right as diffusers writes it (its `a - b * D` is our `a + (-b) * D`, the same float)."""
        x_t = c_x * sample
        for coefficient, tensor in terms:
            x_t = x_t + coefficient * tensor
        return x_t if noise is None else x_t + c_z * noise

    def _linear_coefficients(self, h: torch.Tensor, alpha_s, sigma_s, alpha_t, sigma_t):
        """(c_x, c_z, c_0, the phi-type factors) of the chosen algorithm, in diffusers' operations:
        ++: c_x = sigma_t / sigma_s, c_0 = alpha_t (1 - e^{-h});  noise: c_x = alpha_t / alpha_s, c_0 = -sigma_t (e^h - 1);
        the SDE variants double the exponent (e^{-2h}) and add c_z = sigma_t sqrt(1 - e^{-2h})."""
        algorithm_type = self.config.algorithm_type
        if algorithm_type == "dpmsolver++":
            return sigma_t / sigma_s, None, -(alpha_t * (torch.exp(-h) - 1.0))
        if algorithm_type == "dpmsolver":
            return alpha_t / alpha_s, None, -(sigma_t * (torch.exp(h) - 1.0))
        if algorithm_type == "sde-dpmsolver++":
            c_z = sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h))
            return sigma_t / sigma_s * torch.exp(-h), c_z, alpha_t * (1 - torch.exp(-2.0 * h))
        c_z = sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0)  # sde-dpmsolver
        return alpha_t / alpha_s, c_z, -(2.0 * (sigma_t * (torch.exp(h) - 1.0)))

    def dpm_solver_first_order_update(
        self, model_output: torch.Tensor, sample: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """DPM-Solver++(1) / DPM-Solver-1 (eq. 3.7), the DDIM step in lambda: x_s -> x_t with one model output.

        Args:
            model_output: the converted model output (`convert_model_output`) at s.
            sample: the current sample x_s.
            noise: the noise of the SDE variants (None for the ODE ones).
        """
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(self.step_index + 1)
        alpha_s, sigma_s, lambda_s = self._alpha_sigma_lambda(self.step_index)
        h = lambda_t - lambda_s
        c_x, c_z, c_0 = self._linear_coefficients(h, alpha_s, sigma_s, alpha_t, sigma_t)
        return self._update(sample, c_x, [(c_0, model_output)], c_z, noise)

    def multistep_dpm_solver_second_order_update(
        self, model_output_list: list[torch.Tensor], sample: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """DPM-Solver++(2M) (Alg. 2) and its relatives: D1 = (m0 - m1) / r0 is h times x_theta' by finite difference.

        Args:
            model_output_list: the converted model outputs of the last steps, oldest first.
            sample: the current sample x_s.
            noise: the noise of the SDE variants (None for the ODE ones).
        """
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(self.step_index + 1)
        alpha_s0, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(self.step_index)
        _, _, lambda_s1 = self._alpha_sigma_lambda(self.step_index - 1)
        m0, m1 = model_output_list[-1], model_output_list[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        D0, D1 = m0, (1.0 / r0) * (m0 - m1)
        c_x, c_z, c_0 = self._linear_coefficients(h, alpha_s0, sigma_s0, alpha_t, sigma_t)
        midpoint = self.config.solver_type == "midpoint"
        algorithm_type = self.config.algorithm_type
        if algorithm_type == "dpmsolver++":  # midpoint: 1/2 the first-order factor; heun: h phi_2(h) (App. B)
            c_1 = 0.5 * c_0 if midpoint else alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)
        elif algorithm_type == "dpmsolver":
            c_1 = 0.5 * c_0 if midpoint else -(sigma_t * ((torch.exp(h) - 1.0) / h - 1.0))
        elif algorithm_type == "sde-dpmsolver++":
            c_1 = 0.5 * c_0 if midpoint else alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)
        else:  # sde-dpmsolver
            c_1 = (
                -(sigma_t * (torch.exp(h) - 1.0))
                if midpoint
                else -(2.0 * (sigma_t * ((torch.exp(h) - 1.0) / h - 1.0)))
            )
        return self._update(sample, c_x, [(c_0, D0), (c_1, D1)], c_z, noise)

    def multistep_dpm_solver_third_order_update(
        self, model_output_list: list[torch.Tensor], sample: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Third-order multistep: D1 and D2 from three model outputs (divided differences in lambda); the
        arguments are `multistep_dpm_solver_second_order_update`'s."""
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(self.step_index + 1)
        alpha_s0, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(self.step_index)
        _, _, lambda_s1 = self._alpha_sigma_lambda(self.step_index - 1)
        _, _, lambda_s2 = self._alpha_sigma_lambda(self.step_index - 2)
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        D1_0, D1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
        D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
        D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1)
        c_x, c_z, c_0 = self._linear_coefficients(h, alpha_s0, sigma_s0, alpha_t, sigma_t)
        algorithm_type = self.config.algorithm_type
        if algorithm_type == "dpmsolver++":  # h phi_2 and h^2 phi_3 of DPM-Solver++ App. B
            c_1 = alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)
            c_2 = -(alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5))
        elif algorithm_type == "dpmsolver":
            c_1 = -(sigma_t * ((torch.exp(h) - 1.0) / h - 1.0))
            c_2 = -(sigma_t * ((torch.exp(h) - 1.0 - h) / h**2 - 0.5))
        else:  # sde-dpmsolver++ (sde-dpmsolver has no third order, refused in __init__)
            c_1 = alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)
            c_2 = alpha_t * ((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5)
        return self._update(sample, c_x, [(c_0, m0), (c_1, D1), (c_2, D2)], c_z, noise)

    # ---- one step -----------------------------------------------------------------------------
    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """x_s -> x_t, the next timestep of the schedule, with the highest order the history allows.

        Args:
            model_output: the UNet's output at `timestep`.
            timestep: the current entry of `self.timesteps`.
            sample: the current sample x_s.
            generator: the random generator of the SDE variants' noise.
            variance_noise: that noise itself, instead of drawing it from `generator`.
            return_dict: return a `SchedulerOutput` rather than a tuple.

        Returns:
            `SchedulerOutput(prev_sample=x_t)`, or `(x_t,)`.
        """
        if self.num_inference_steps is None:
            raise ValueError(
                "DPMSolverMultistepScheduler.step was called before set_timesteps: num_inference_steps is None; "
                "you need to run 'set_timesteps' after creating the scheduler"
            )
        if self.step_index is None:
            self._init_step_index(timestep)
        if self.step_index >= len(self.timesteps):
            raise ValueError(
                f"step index {self.step_index} is past the end of scheduler.timesteps {self.timesteps.tolist()}; "
                "call set_timesteps again to sample anew (a schedule that lists its first timestep twice starts "
                "at its second place, as in diffusers, and so ends one step early)"
            )
        cfg = self.config
        n = len(self.timesteps)

        # 1. the order: lower on the last steps (short schedules, euler_at_final, or a final sigma of 0), and
        # first order for a step of length h = 0, where the higher orders divide by h. (Karras sigmas end on
        # sigma_min, so final_sigmas_type "sigma_min" repeats it: diffusers' last step then gives NaN.)
        zero_step = bool(self.sigmas[self.step_index + 1] == self.sigmas[self.step_index])
        lower_order_final = (
            zero_step
            or (self.step_index == n - 1)
            and (cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero")
        )
        lower_order_second = (self.step_index == n - 2) and cfg.lower_order_final and n < 15

        # 2. x_theta (or eps_theta) joins the history of the last solver_order outputs
        model_output = self.convert_model_output(model_output, sample=sample)
        self.model_outputs = [*self.model_outputs[1:], model_output]

        # 3. the step runs in float32; the SDE variants draw z after the model output, as diffusers
        sample = sample.to(torch.float32)
        noise = None
        if cfg.algorithm_type in ("sde-dpmsolver", "sde-dpmsolver++"):
            if variance_noise is None:
                noise = randn_tensor(model_output.shape, generator, model_output.device, torch.float32)
            else:
                noise = variance_noise.to(device=model_output.device, dtype=torch.float32)

        # 4. the update
        if cfg.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final:
            prev_sample = self.dpm_solver_first_order_update(model_output, sample=sample, noise=noise)
        elif cfg.solver_order == 2 or self.lower_order_nums < 2 or lower_order_second:
            prev_sample = self.multistep_dpm_solver_second_order_update(
                self.model_outputs, sample=sample, noise=noise
            )
        else:
            prev_sample = self.multistep_dpm_solver_third_order_update(
                self.model_outputs, sample=sample, noise=noise
            )
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)

        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    # ---- the forward process and the pipeline interface -----------------------------------------
    def scale_model_input(
        self, sample: torch.Tensor, timestep: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        """DPM-Solver feeds x_t to the model unscaled; kept for interchangeability with other samplers.

        Args:
            sample: x_t, returned as it is.
            timestep: ignored.
        """
        return sample

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """x_t = alpha_t x_0 + sigma_t eps with alpha_t, sigma_t from the sigma of each timestep's place in the
        schedule (diffusers' rule: the begin or current step index when a pipeline set one).

        Before set_timesteps the sigma table is indexed by t itself. (diffusers looks t up in its descending
        placeholder timesteps there and so reads sigma_{T-1-t}: a bug not copied.)

        Args:
            original_samples: x_0, the clean images.
            noise: eps.
            timesteps: t, one per image.
        """
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        timesteps = torch.as_tensor(timesteps).to(original_samples.device).reshape(-1)
        if self.num_inference_steps is None:
            step_indices = timesteps.long().tolist()
        elif self.begin_index is None:
            schedule_timesteps = self.timesteps.to(original_samples.device)
            step_indices = [self.index_for_timestep(t, schedule_timesteps) for t in timesteps]
        else:  # after the first step (inpainting) or before it (image-to-image)
            step_indices = [
                self.step_index if self.step_index is not None else self.begin_index
            ] * timesteps.shape[0]
        sigma = sigmas[step_indices].flatten()
        sigma = sigma.reshape(-1, *(1,) * (original_samples.ndim - 1))
        alpha_t, sigma_t = alpha_sigma(sigma)
        return alpha_t * original_samples + sigma_t * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps
