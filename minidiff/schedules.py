"""Noise schedules and the pieces of a sampler step that DDPM and DDIM share.

A diffusion model corrupts data x_0 in T small Gaussian steps (DDPM, Ho et al. 2020, eq. 2):

    q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I),     alpha_t = 1 - beta_t,
    alpha_bar_t = prod_{s<=t} alpha_s,  so  q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)  (eq. 4).

The "beta schedule" is the table beta_0 .. beta_{T-1}. Sections of this file:
  1. beta tables, one function per `beta_schedule`, built as diffusers builds them (float32, same order
     of operations), so `alphas_cumprod` agrees bit for bit;
  2. the parts of a reverse step DDPM and DDIM share: x_0 / eps from the model output, clipping,
     dynamic thresholding, seeded noise;
  3. the inference timesteps (`timestep_spacing`) and host/device handling of a timestep;
  4. the forward process: `add_noise`, `get_velocity`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    """Raise ValueError("<name> 'x' is not supported; expected one of [...]") for an unknown option."""
    if value not in allowed:
        raise ValueError(f"{name} {value!r} is not supported; expected one of {list(allowed)}")


# ---- 1. beta tables, one per beta_schedule ------------------------------------------------------
def linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """beta_t evenly spaced from beta_start to beta_end (DDPM sec. 4: 1e-4 .. 0.02 over T = 1000)."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)


def scaled_linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """sqrt(beta_t) evenly spaced, then squared: the latent-diffusion (Stable Diffusion) schedule."""
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if value < 0:  # diffusers fails here too, deep in torch.linspace (a complex square root)
            raise ValueError(f"{name}={value!r}; expected >= 0 (scaled_linear takes its square root)")
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2


def betas_for_alpha_bar(
    num_diffusion_timesteps: int, max_beta: float = 0.999, alpha_transform_type: str = "cosine"
) -> torch.Tensor:
    """Discretise a continuous alpha_bar(t), t in [0, 1], into betas (improved DDPM eq. 17 and after):

        beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta)

    alpha_transform_type picks alpha_bar (computed in Python floats, as diffusers does):
      cosine:  alpha_bar(t) = cos((t + s) / (1 + s) * pi / 2) ** 2, s = 0.008   (Nichol & Dhariwal 2021)
      exp:     alpha_bar(t) = exp(-12 t)
      laplace: lambda(t) = -0.5 sign(0.5 - t) log(1 - 2 |0.5 - t| + 1e-6),
               alpha_bar(t) = sqrt(snr / (1 + snr)) with snr = exp(lambda)
    The cap max_beta = 0.999 keeps the last steps from dividing by ~0 (improved DDPM sec. 3.2).
    """
    check_choice("alpha_transform_type", alpha_transform_type, ["cosine", "exp", "laplace"])

    def alpha_bar(t: float) -> float:
        if alpha_transform_type == "cosine":
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        if alpha_transform_type == "exp":
            return math.exp(t * -12.0)
        lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
        snr = math.exp(lmb)
        return math.sqrt(snr / (1 + snr))

    T = num_diffusion_timesteps
    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float32)


def squaredcos_cap_v2_betas(num_train_timesteps: int) -> torch.Tensor:
    """The improved-DDPM cosine schedule (GLIDE's "squaredcos_cap_v2")."""
    return betas_for_alpha_bar(num_train_timesteps, alpha_transform_type="cosine")


def laplace_betas(num_train_timesteps: int) -> torch.Tensor:
    """The Laplace log-SNR schedule of Hang et al. 2024."""
    return betas_for_alpha_bar(num_train_timesteps, alpha_transform_type="laplace")


def sigmoid_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """GeoDiff's schedule: beta_t = sigmoid(linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start."""
    return torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps)) * (beta_end - beta_start) + beta_start


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar_t) so the last step is pure noise (Lin et al. 2023, Algorithm 1).

    With sqrt(alpha_bar)_0 kept and sqrt(alpha_bar)_{T-1} moved to 0, the terminal signal-to-noise ratio
    alpha_bar_T / (1 - alpha_bar_T) becomes exactly 0, so training sees the same x_T that sampling starts from.
    """
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    alphas_bar_sqrt_0 = alphas_bar_sqrt[0].clone()
    alphas_bar_sqrt_T = alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= alphas_bar_sqrt_T  # the last step becomes 0
    # the first keeps its value
    alphas_bar_sqrt *= alphas_bar_sqrt_0 / (alphas_bar_sqrt_0 - alphas_bar_sqrt_T)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])  # undo the cumulative product
    return 1 - alphas


def make_betas(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Sequence[float] | torch.Tensor | None,
    rescale_betas_zero_snr: bool,
    supported: Sequence[str],
) -> torch.Tensor:
    """The betas a scheduler config describes. `trained_betas`, when given, replaces the named schedule."""
    check_choice("beta_schedule", beta_schedule, supported)
    if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be a positive int, got {num_train_timesteps!r}")
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
        if betas.shape != (num_train_timesteps,):
            raise ValueError(
                f"trained_betas has shape {tuple(betas.shape)}; expected ({num_train_timesteps},), "
                "one beta per training timestep"
            )
    elif beta_schedule == "linear":
        betas = linear_betas(num_train_timesteps, beta_start, beta_end)
    elif beta_schedule == "scaled_linear":
        betas = scaled_linear_betas(num_train_timesteps, beta_start, beta_end)
    elif beta_schedule == "squaredcos_cap_v2":
        betas = squaredcos_cap_v2_betas(num_train_timesteps)
    elif beta_schedule == "laplace":
        betas = laplace_betas(num_train_timesteps)
    else:  # "sigmoid"
        betas = sigmoid_betas(num_train_timesteps, beta_start, beta_end)
    return rescale_zero_terminal_snr(betas) if rescale_betas_zero_snr else betas


# ---- 2. pieces of a reverse step shared by DDPM and DDIM ----------------------------------------
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


# ---- 3. inference timesteps ----------------------------------------------------------------------
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def inference_timesteps(
    num_train_timesteps: int, num_inference_steps: int, timestep_spacing: str, steps_offset: int
) -> np.ndarray:
    """The descending int64 timesteps a sampler visits (Lin et al. 2023, Table 2), as diffusers picks them.

    linspace: round(linspace(0, T - 1, n)), reversed        leading: (0, r, 2r, ...) + steps_offset, r = T // n
    trailing: round(arange(T, 0, -T / n)) - 1  (always starts at T - 1, the noisiest step)
    """
    check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
    T, n = num_train_timesteps, num_inference_steps
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= T:
        raise ValueError(
            f"num_inference_steps {n!r} is out of range; expected an int in 1..{T} (num_train_timesteps)"
        )
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
        raise ValueError(f"`custom_timesteps` must be in descending order, got {array.tolist()}")
    if array[0] >= num_train_timesteps or array[-1] < 0:
        raise ValueError(
            f"`timesteps` must lie in [0, {num_train_timesteps}) (num_train_timesteps), got {array.tolist()}"
        )
    return array.astype(np.int64)


def is_host_tensor(tensor: torch.Tensor) -> bool:
    """True when reading the tensor's values costs no device synchronisation (it lives in CPU memory)."""
    return tensor.device.type == "cpu"


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
        if not is_host_tensor(timestep):
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


# ---- 4. the forward process q(x_t | x_0), the same for every scheduler here ----------------------
def check_broadcast(**tensors: torch.Tensor) -> None:
    """Shapes only (no sync): raise a ValueError naming every shape when the tensors do not broadcast."""
    try:
        torch.broadcast_shapes(*(t.shape for t in tensors.values()))
    except RuntimeError:
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in tensors.items())
        raise ValueError(
            f"{shapes} do not broadcast; expected noise shaped like the sample and one timestep per "
            "sample (or one for all)"
        ) from None


class ForwardProcessMixin:
    """`add_noise`, `get_velocity`, `scale_model_input` for a scheduler with `self.alphas_cumprod`.

    sqrt(alpha_bar) and sqrt(1 - alpha_bar) are tabulated once per (device, dtype), after casting
    alpha_bar to the sample's dtype as diffusers does, so a call is two gathers and three tensor ops.
    """

    init_noise_sigma = 1.0  # x_T ~ N(0, I)

    def _forward_tables(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.device, like.dtype)
        if key not in self._forward_cache:
            alphas_cumprod = self.alphas_cumprod.to(device=like.device).to(dtype=like.dtype)
            self._forward_cache[key] = (alphas_cumprod**0.5, (1 - alphas_cumprod) ** 0.5)
        return self._forward_cache[key]

    def _forward_coefficients(
        self, timesteps: torch.Tensor | int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) shaped (B, 1, ..., 1) to broadcast over `like`."""
        timesteps = torch.as_tensor(timesteps)
        if timesteps.is_floating_point() or timesteps.is_complex() or timesteps.dtype == torch.bool:
            raise ValueError(f"timesteps must be an integer tensor, got dtype {timesteps.dtype}")
        T = len(self.alphas_cumprod)
        if is_host_tensor(timesteps) and bool(((timesteps < 0) | (timesteps >= T)).any()):
            raise ValueError(f"timesteps {timesteps.tolist()} are out of range; expected 0 <= t < {T}")
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = self._forward_tables(like)
        # index_select, not table[timesteps]: a 0-d device index would be read back with .item()
        timesteps = timesteps.to(device=like.device, dtype=torch.int64).reshape(-1)  # (B,)
        shape = (-1,) + (1,) * (like.ndim - 1)  # (B, 1, 1, 1) for images
        return (
            sqrt_alpha_prod.index_select(0, timesteps).reshape(shape),
            sqrt_one_minus_alpha_prod.index_select(0, timesteps).reshape(shape),
        )

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Sample q(x_t | x_0) (DDPM eq. 4): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = self._forward_coefficients(timesteps, original_samples)
        check_broadcast(original_samples=original_samples, noise=noise, timesteps=sqrt_alpha_prod)
        return sqrt_alpha_prod * original_samples + sqrt_one_minus_alpha_prod * noise

    def get_velocity(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The v-prediction target v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022)."""
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = self._forward_coefficients(timesteps, sample)
        check_broadcast(sample=sample, noise=noise, timesteps=sqrt_alpha_prod)
        return sqrt_alpha_prod * noise - sqrt_one_minus_alpha_prod * sample

    def scale_model_input(
        self, sample: torch.Tensor, timestep: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        """DDPM and DDIM feed x_t to the model unscaled; kept for interchangeability with other samplers."""
        return sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps
