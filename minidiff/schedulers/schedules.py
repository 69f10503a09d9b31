"""Noise schedules and the forward process they define.

A diffusion model corrupts data x_0 in T small Gaussian steps (DDPM, Ho et al. 2020, eq. 2):

    q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I),     alpha_t = 1 - beta_t,
    alpha_bar_t = prod_{s<=t} alpha_s,  so  q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)  (eq. 4).

The "beta schedule" is the table beta_0 .. beta_{T-1}. Sections of this file:
  1. beta tables, one function per `beta_schedule`, built as diffusers builds them (float32, same order
     of operations), so `alphas_cumprod` agrees bit for bit;
  2. the forward process: `add_noise`, `get_velocity`.
The reverse (sampling) step's shared pieces and the inference timesteps are in minidiff/schedulers/scheduling_utils.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


# ---- 2. the forward process q(x_t | x_0), the same for every scheduler here ----------------------
def is_host_tensor(tensor: torch.Tensor) -> bool:
    """True when reading the tensor's values costs no device synchronisation (it lives in CPU memory)."""
    return tensor.device.type == "cpu"


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

    # Copied from diffusers.schedulers.scheduling_ddpm.DDPMScheduler.add_noise
    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Sample q(x_t | x_0) (DDPM eq. 4): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.

        Args:
            original_samples: x_0, (B, ...).
            noise: eps, the same shape.
            timesteps: t, one per sample (or one for all).
        """
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = self._forward_coefficients(timesteps, original_samples)
        check_broadcast(original_samples=original_samples, noise=noise, timesteps=sqrt_alpha_prod)
        return sqrt_alpha_prod * original_samples + sqrt_one_minus_alpha_prod * noise

    # Copied from diffusers.schedulers.scheduling_ddpm.DDPMScheduler.get_velocity
    def get_velocity(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The v-prediction target v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022).

        Args:
            sample: x_0, (B, ...).
            noise: eps, the same shape.
            timesteps: t, one per sample (or one for all).
        """
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = self._forward_coefficients(timesteps, sample)
        check_broadcast(sample=sample, noise=noise, timesteps=sqrt_alpha_prod)
        return sqrt_alpha_prod * noise - sqrt_one_minus_alpha_prod * sample

    def scale_model_input(
        self, sample: torch.Tensor, timestep: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return `sample` unchanged: DDPM and DDIM feed x_t to the model unscaled (kept for
        interchangeability with other samplers).

        Args:
            sample: x_t.
            timestep: ignored.
        """
        return sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps
