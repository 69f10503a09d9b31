"""What the samplers share: the pieces of a reverse step and the timesteps a sampler visits.

Sections of this file:
  1. the parts of a reverse step: x_0 / eps from the model output, clipping, dynamic thresholding,
     seeded noise drawn as diffusers draws it;
  2. the inference timesteps (`timestep_spacing`) and host/device handling of a timestep;
  0. the schedule every scheduler starts from (`vp_schedule`) and the one check of a step's inputs
     (`check_model_output`);
  3. sigmas (Karras et al. 2022): sigma_t from alpha_bar_t, the zero-SNR clamp, interpolated, Karras /
     exponential / beta sigma schedules, sigma -> t interpolation, the step index of the sigma samplers
     (Euler, Euler ancestral, DPM-Solver) and what Euler and Euler ancestral share (`SigmaSamplerMixin`).
The beta tables and the forward process q(x_t | x_0) are in minidiff/schedulers/schedules.py.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

import minidiff.schedulers.schedules as schedules
from minidiff.schedulers.schedules import check_broadcast, check_choice, make_betas

logger = logging.getLogger(__name__)  # as diffusers: a warning in the log, not a Python warning


# ---- 0. the schedule and the step's inputs -----------------------------------------------------------
def vp_schedule(
    num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str, trained_betas,
    rescale_betas_zero_snr: bool, supported: Sequence[str], clamp_zero_snr: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(betas, alphas = 1 - betas, alphas_cumprod = alpha_bar_t) of a scheduler's keywords, in float32 as
    diffusers builds them; `clamp_zero_snr`: the sigma samplers' alpha_bar_{T-1} clamp under zero SNR."""
    betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                       rescale_betas_zero_snr, supported=supported)  # fmt: skip
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)  # alpha_bar_t
    if clamp_zero_snr and rescale_betas_zero_snr:
        alphas_cumprod = zero_snr_alphas_cumprod(alphas_cumprod)
    return betas, alphas, alphas_cumprod


def check_model_output(model_output: torch.Tensor, sample: torch.Tensor, same_dtype: bool = True) -> None:
    """The one check of a step's inputs: `model_output` has `sample`'s shape, and (`same_dtype`: the steps
    that do not upcast) its dtype and device."""
    if model_output.shape != sample.shape:
        raise ValueError(
            f"model_output shape {tuple(model_output.shape)} does not match sample shape {tuple(sample.shape)}"
        )
    if same_dtype and (model_output.dtype != sample.dtype or model_output.device != sample.device):
        raise ValueError(
            f"model_output is {model_output.dtype} on {model_output.device} but sample is {sample.dtype} "
            f"on {sample.device}; expected the same dtype and device"
        )


# ---- 1. pieces of a reverse step shared by DDPM and DDIM ----------------------------------------
# The coefficients below are 0-d float32 tensors read from precomputed tables. They sit in the same
# operand position as in diffusers (`coefficient * tensor`): for float16/bfloat16 tensors that position
# decides whether the coefficient is rounded to the tensor's dtype first, so keeping it keeps the numbers.
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def predict_original_sample(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    prediction_type: str,
    sqrt_alpha_prod_t: torch.Tensor,
    sqrt_beta_prod_t: torch.Tensor,
) -> torch.Tensor:
    """The model's estimate of x_0 from x_t (`sample`), with beta_prod_t = 1 - alpha_bar_t.

    epsilon:      x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)      DDPM eq. (15), DDIM eq. (9)
    sample:       x_0 = model_output
    v_prediction: x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v          (Salimans & Ho 2022, sec. 4)
    """
    if prediction_type == "epsilon":
        pred_original_sample = sample - sqrt_beta_prod_t * model_output
        return pred_original_sample.div_(sqrt_alpha_prod_t)
    if prediction_type == "sample":
        return model_output
    return sqrt_alpha_prod_t * sample - sqrt_beta_prod_t * model_output


def predict_epsilon(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    pred_original_sample: torch.Tensor,
    prediction_type: str,
    sqrt_alpha_prod_t: torch.Tensor,
    sqrt_beta_prod_t: torch.Tensor,
) -> torch.Tensor:
    """The noise eps implied by x_t and the prediction: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "sample":
        return epsilon_from_original_sample(sample, pred_original_sample, sqrt_alpha_prod_t, sqrt_beta_prod_t)
    return sqrt_alpha_prod_t * model_output + sqrt_beta_prod_t * sample  # v_prediction


def epsilon_from_original_sample(
    sample: torch.Tensor,
    pred_original_sample: torch.Tensor,
    sqrt_alpha_prod_t: torch.Tensor,
    sqrt_beta_prod_t: torch.Tensor,
) -> torch.Tensor:
    """eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t): DDPM eq. (4) solved for the noise."""
    return (sample - sqrt_alpha_prod_t * pred_original_sample) / sqrt_beta_prod_t


def threshold_sample(
    sample: torch.Tensor, dynamic_thresholding_ratio: float, sample_max_value: float
) -> torch.Tensor:
    """Dynamic thresholding (Imagen, Saharia et al. 2022, sec. 2.3), per image.

    s = the `dynamic_thresholding_ratio` quantile of |x_0|, clamped to [1, sample_max_value];
    x_0 <- clamp(x_0, -s, s) / s. With s = 1 this is plain clipping to [-1, 1].
    """
    dtype = sample.dtype
    batch_size, channels, *remaining_dims = sample.shape
    if dtype not in (torch.float32, torch.float64):
        sample = sample.float()  # quantile needs float32/64
    sample = sample.reshape(batch_size, channels * math.prod(remaining_dims))  # (B, C*H*W)
    s = torch.quantile(sample.abs(), dynamic_thresholding_ratio, dim=1)
    s = torch.clamp(s, min=1, max=sample_max_value).unsqueeze(1)  # (B, 1)
    sample = torch.clamp(sample, -s, s) / s
    return sample.reshape(batch_size, channels, *remaining_dims).to(dtype)


def clip_or_threshold(pred_original_sample: torch.Tensor, config) -> torch.Tensor:
    """Keep the x_0 estimate in the data range: thresholding wins over clip_sample when both are on."""
    if config.thresholding:
        return threshold_sample(
            pred_original_sample, config.dynamic_thresholding_ratio, config.sample_max_value
        )
    if config.clip_sample:
        return pred_original_sample.clamp(-config.clip_sample_range, config.clip_sample_range)
    return pred_original_sample


def randn_tensor(
    shape: Sequence[int],
    generator: torch.Generator | list[torch.Generator] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Standard normal noise drawn as diffusers' `randn_tensor` draws it, so seeds give the same numbers.

    A CPU generator with a CUDA tensor draws on the CPU and then moves the noise; a list of generators
    draws one sample of the batch from each.
    """
    device = torch.device(device)
    rand_device = device
    generators = generator if isinstance(generator, list) else [generator]
    if generators[0] is not None:
        generator_type = generators[0].device.type
        if generator_type != device.type and generator_type == "cpu":
            rand_device = torch.device("cpu")
        elif generator_type != device.type:
            raise ValueError(f"Cannot generate a {device} tensor from a generator of type {generator_type}.")
    if isinstance(generator, list) and len(generator) > 1:
        if len(generator) != shape[0]:
            raise ValueError(
                f"got {len(generator)} generators for a batch of {shape[0]}; expected one per sample"
            )
        one = (1, *shape[1:])
        noise = [torch.randn(one, generator=g, device=rand_device, dtype=dtype) for g in generator]
        return torch.cat(noise, dim=0).to(device)
    return torch.randn(tuple(shape), generator=generators[0], device=rand_device, dtype=dtype).to(device)


# ---- 2. inference timesteps ----------------------------------------------------------------------
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def check_step_count(num_inference_steps: int, num_train_timesteps: int) -> None:
    """num_inference_steps must be an int in 1..T: a ValueError naming the value otherwise."""
    n, T = num_inference_steps, num_train_timesteps
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= T:
        raise ValueError(
            f"num_inference_steps {n!r} is out of range; expected an int in 1..{T} (num_train_timesteps)"
        )


def inference_timesteps(
    num_train_timesteps: int, num_inference_steps: int, timestep_spacing: str, steps_offset: int
) -> np.ndarray:
    """The descending int64 timesteps a sampler visits (Lin et al. 2023, Table 2), as diffusers picks them.

    linspace: round(linspace(0, T - 1, n)), reversed        leading: (0, r, 2r, ...) + steps_offset, r = T // n
    trailing: round(arange(T, 0, -T / n)) - 1  (always starts at T - 1, the noisiest step)
    """
    check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
    T, n = num_train_timesteps, num_inference_steps
    check_step_count(n, T)
    if timestep_spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    if timestep_spacing == "leading":
        return (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(np.int64) + steps_offset
    return np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1


def custom_timesteps(
    timesteps: Sequence[int] | np.ndarray | torch.Tensor, num_train_timesteps: int
) -> np.ndarray:
    """Check a user-given schedule: a non-empty, strictly descending list of ints in [0, T)."""
    array = np.asarray(timesteps.cpu() if isinstance(timesteps, torch.Tensor) else timesteps)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"timesteps must be a non-empty 1-d list of ints, got {timesteps!r}")
    if np.any(array[1:] >= array[:-1]):
        raise ValueError(f"`timesteps` must be in descending order, got {array.tolist()}")
    if array[0] >= num_train_timesteps or array[-1] < 0:
        raise ValueError(
            f"`timesteps` must lie in [0, {num_train_timesteps}) (num_train_timesteps), got {array.tolist()}"
        )
    return array.astype(np.int64)


def host_timestep(timestep: int | torch.Tensor, num_train_timesteps: int) -> int | None:
    """The timestep as a Python int when it lives on the host, checked to be in [0, T).

    An int or a 0-d CPU tensor (what iterating over CPU `scheduler.timesteps` gives) becomes an int.
    A 0-d tensor on an accelerator gives None: the step then gathers from its tables on that device
    (`gather_row`) and never brings the value back to the host, so the loop can be captured in a CUDA graph.
    """
    if isinstance(timestep, torch.Tensor):
        if timestep.ndim != 0 or timestep.is_floating_point() or timestep.dtype == torch.bool:
            raise ValueError(
                f"timestep must be an int or a 0-d integer tensor, got shape {tuple(timestep.shape)} {timestep.dtype}"
            )
        # only a host tensor is read back; a device timestep stays on the device (no sync)
        if not schedules.is_host_tensor(timestep):
            return None
        timestep = int(timestep)
    elif isinstance(timestep, bool) or not isinstance(timestep, int | np.integer):
        raise ValueError(f"timestep must be an int or a 0-d integer tensor, got {timestep!r}")
    if not 0 <= timestep < num_train_timesteps:
        raise ValueError(
            f"timestep {timestep} is out of range; expected 0 <= timestep < {num_train_timesteps}"
        )
    return int(timestep)


def gather_row(table: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """table[timestep] for a 0-d device tensor without a sync: plain `table[t]` calls `t.item()` inside."""
    return table.index_select(0, timestep.reshape(1).to(table.device))[0]


# ---- 3. sigmas (Karras et al. 2022) -------------------------------------------------------------
# The schedulers one config can move between (`from_config`): diffusers' KarrasDiffusionSchedulers that
# minidiff has (a name minidiff lacks is skipped by `compatibles`).
KARRAS_SCHEDULERS = [
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
]


# The k-diffusion samplers (Euler, Euler ancestral, DPM-Solver) see DDPM's x_t through the variance-
# exploding lens of EDM (Karras et al. 2022, Table 1, "VP"): x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps with
#     sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t),
# so x_t itself is the model input x / sqrt(sigma^2 + 1) (EDM's c_in) and sampling starts from sigma_max * z.
def zero_snr_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """With rescale_betas_zero_snr alpha_bar_{T-1} = 0 and sigma_{T-1} would be infinite: diffusers sets
    alpha_bar_{T-1} = 2^-24 (sigma ~ 4096) instead, and so do we."""
    alphas_cumprod = alphas_cumprod.clone()
    alphas_cumprod[-1] = 2**-24
    return alphas_cumprod


def interpolated_sigmas(alphas_cumprod: torch.Tensor, timesteps: np.ndarray) -> np.ndarray:
    """sigma at each (fractional) timestep, linear in t between the training sigmas (float64)."""
    sigmas = sigmas_from_alphas_cumprod(alphas_cumprod).numpy()
    return np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_t for every training timestep t (float32, ascending in t), in diffusers' op order."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def karras_sigmas(
    sigma_min: float, sigma_max: float, num_inference_steps: int, rho: float = 7.0
) -> np.ndarray:
    """EDM eq. (5): sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    descending, float64 (rho = 7 as in the paper). Small steps where sigma is small, where detail forms."""
    ramp = np.linspace(0, 1, num_inference_steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int) -> np.ndarray:
    """log sigma evenly spaced from log sigma_max down to log sigma_min (float64)."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_inference_steps))


def beta_sigmas(
    sigma_min: float, sigma_max: float, num_inference_steps: int, alpha: float = 0.6, beta: float = 0.6
) -> np.ndarray:
    """sigma_min + ppf(1 - i / (n - 1)) (sigma_max - sigma_min), ppf the Beta(0.6, 0.6) quantile function
    ("Beta Sampling is All You Need", Lee et al. 2024): more steps at both ends. Needs scipy."""
    try:
        import scipy.stats
    except ImportError:  # an optional dependency, as in diffusers
        raise ImportError("use_beta_sigmas=True needs scipy: pip install scipy") from None
    ppfs = [scipy.stats.beta.ppf(u, alpha, beta) for u in 1 - np.linspace(0, 1, num_inference_steps)]
    return np.array([sigma_min + ppf * (sigma_max - sigma_min) for ppf in ppfs])


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The fractional training timestep of each sigma: linear interpolation in log sigma between the two
    training timesteps that bracket it (clipped to [0, T - 1]), as diffusers and k-diffusion do."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]  # (T, n)
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * high_idx).reshape(sigma.shape)


def sigma_timesteps(
    num_train_timesteps: int, num_inference_steps: int, timestep_spacing: str, steps_offset: int
) -> np.ndarray:
    """The float32 timesteps of the sigma samplers: those of `inference_timesteps`, except that `linspace`
    is not rounded (linspace(0, T - 1, n) in float32, so n may exceed T), as diffusers' Euler picks them."""
    n = num_inference_steps
    if timestep_spacing != "linspace":
        return inference_timesteps(num_train_timesteps, n, timestep_spacing, steps_offset).astype(np.float32)
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"num_inference_steps {n!r} is out of range; expected an int >= 1")
    return np.linspace(0, num_train_timesteps - 1, n, dtype=np.float32)[::-1].copy()


class StepIndexMixin:
    """Where a sigma sampler is in its schedule: `step_index` (None until the first `scale_model_input` or
    `step`, then counted up by `step`) and `begin_index` (set by a pipeline that starts part way, e.g.
    image-to-image). The first look-up of a timestep compares it with a host copy of `timesteps`, so a
    device timestep costs one read-back per sampling run (diffusers' `nonzero()` look-up)."""

    _step_index: int | None = None
    _begin_index: int | None = None

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at `timesteps[begin_index]`; a pipeline calls this before its first step."""
        self._begin_index = begin_index

    def index_for_timestep(
        self, timestep: float | torch.Tensor, schedule_timesteps: torch.Tensor | None = None
    ) -> int:
        """The position of `timestep` in the schedule; the second one when it appears twice, so that a run
        started part way (image-to-image) does not skip a sigma, as in diffusers."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.cpu()
        indices = (schedule.cpu() == timestep).nonzero()
        if len(indices) == 0:
            value = timestep.item() if isinstance(timestep, torch.Tensor) else timestep
            raise ValueError(f"timestep {value!r} is not in scheduler.timesteps {schedule.tolist()}")
        return int(indices[1 if len(indices) > 1 else 0])

    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        if self._begin_index is None:
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index


SIGMA_BETA_SCHEDULES = (
    "linear",
    "scaled_linear",
    "squaredcos_cap_v2",
)  # what diffusers' Euler samplers accept


class SigmaSamplerMixin(StepIndexMixin):
    """What Euler and Euler ancestral share: the starting noise level, c_in scaling and add_noise in sigma."""

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """x_T = init_noise_sigma z: sigma_max, or sqrt(sigma_max^2 + 1) for `leading` (whose first timestep
        is below T - 1, a convention kept from diffusers)."""
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    def _current_index(self, timestep: float | torch.Tensor) -> int:
        """The step's place in the schedule: looked up from `timestep`'s value on the first call, then
        counted. (diffusers refuses int timesteps, in case they are loop indices; here an int is taken as a
        timestep value, and a loop index gives "not in scheduler.timesteps" or "all steps are done".)"""
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index >= len(self.sigmas) - 1:
            raise ValueError(
                f"step_index {self._step_index}: all {len(self.sigmas) - 1} steps of the schedule are done; "
                "call set_timesteps (or set_begin_index) to sample again"
            )
        return self._step_index

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """The model input x_t = x / sqrt(sigma^2 + 1) (EDM's c_in) at the current step's sigma.

        Args:
            sample: the current sample x (in sigma units).
            timestep: the current entry of `self.timesteps`.
        """
        sigma = self.sigmas[self._current_index(timestep)]
        sample = sample / ((sigma**2 + 1) ** 0.5)
        self.is_scale_input_called = True
        return sample

    def _warn_if_unscaled(self) -> None:
        if not self.is_scale_input_called:
            logger.warning(
                f"{type(self).__name__}.step was called before scale_model_input: the model should see "
                "scale_model_input(sample, t), x / sqrt(sigma^2 + 1), not x itself"
            )

    def _step_indices(self, timesteps: torch.Tensor) -> list[int]:
        """One schedule position per timestep of a batch, chosen as diffusers' add_noise chooses it."""
        timesteps = torch.as_tensor(timesteps).reshape(-1)
        if self._begin_index is None:
            return [self.index_for_timestep(t) for t in timesteps.cpu()]
        index = self._step_index if self._step_index is not None else self._begin_index
        return [index] * timesteps.shape[0]

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """x = x_0 + sigma eps at the timesteps' sigmas (VE form; scale_model_input gives x_t).

        Args:
            original_samples: x_0, the clean images.
            noise: eps.
            timesteps: t, one per image, from `self.timesteps`.
        """
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        index = torch.tensor(self._step_indices(timesteps), device=original_samples.device)
        sigma = sigmas.index_select(0, index).reshape(
            (-1,) + (1,) * (original_samples.ndim - 1)
        )  # (B, 1, ..)
        check_broadcast(original_samples=original_samples, noise=noise, timesteps=sigma)
        return original_samples + noise * sigma

    def __len__(self) -> int:
        return self.config.num_train_timesteps
