"""Fast DDPM sampling: every per-step coefficient on the device, one CUDA graph replayed per step.

Where the time goes in diffusers' `DDPMPipeline` at the tutorial's size (benchmarks/ANCHORS.md): not in
arithmetic (a batch-64 step needs ~0.3 ms of bf16 math on an H100) but in Python and kernel launches
(785 kernels per UNet forward, ~20 more and a host sync per `scheduler.step`). This sampler removes:

1. per-step scheduler Python: the DDPM posterior (Ho et al. 2020, eq. 6, 7 and 15) is folded into five
   numbers per step, precomputed once into a (num_steps, 5) table on the device;
2. host synchronisation: a step counter *tensor* indexes that table and the timestep table and
   increments itself, so a step needs no host input (diffusers' `previous_timestep` calls `nonzero()`);
3. launch overhead: UNet forward + update + noise draw are captured in ONE CUDA graph and replayed
   once per step (optionally with the UNet compiled by torch.compile inside the graph);
4. wasted arithmetic: the UNet runs on a bf16, channels_last copy of the weights with q/k/v fused into
   one projection (`minidiff.fast.unet.prepare_unet_for_sampling`); the scheduler math stays fp32.

Seed -> output rule (the same on every path: CUDA graph, eager loop, CPU):
    generator = torch.Generator(device).manual_seed(seed)
    x_T   = torch.randn((B, C, H, W), generator=generator, device=device, dtype=torch.float32)
    for step i = 0 .. n-1:   z_i = torch.randn((B, C, H, W), generator=generator, ...float32)
and x_{t-1} = c0 * x0_hat + ct * x_t + sigma * z_i, with sigma = 0 where t == 0. This is exactly the
draw order of `DDPMPipeline(..., generator=generator)` in fp32 (which draws no z for t == 0; we draw it
and multiply it by 0, so only the generator's state *after* sampling differs). A CUDA graph replays its
random draws from the registered generator's philox (seed, offset), so graph and eager agree.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from minidiff.schedulers.schedules import check_choice
from minidiff.schedulers.scheduling_ddpm import DDPMStepCoefficients, ddpm_step_table
from minidiff.schedulers.scheduling_utils import PREDICTION_TYPES, threshold_sample
from minidiff.viz import denormalize

SUPPORTED_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")


@dataclass
class DDPMStepTables:
    """Per-step constants of the DDPM reverse process, one row per inference step, on the device.

    `coeffs[i] = (a, b, c0, ct, sigma)` so that, with model output m at step i:
        x0_hat  = a * x_t - b * m                  (epsilon: a = 1/sqrt(abar_t), b = sqrt(1-abar_t)/sqrt(abar_t))
        x_{t-1} = c0 * clip(x0_hat) + ct * x_t + sigma * z       (eq. 7: posterior mean and std)
    """

    timesteps: torch.Tensor  # (n,) int64: the t fed to the UNet at step i
    coeffs: torch.Tensor  # (n, 5) float32
    clip_sample_range: float | None  # clamp x0_hat to [-r, r]; None = no clipping
    thresholding: tuple[float, float] | None  # (dynamic_thresholding_ratio, sample_max_value) or None


def ddpm_step_tables(scheduler, device: torch.device | str | None = None) -> DDPMStepTables:
    """Fold `scheduler.step`'s arithmetic for every timestep in `scheduler.timesteps` into tables.

    Works for minidiff's and diffusers' DDPMScheduler alike (it reads `config`, `timesteps`,
    `alphas_cumprod`). Call `scheduler.set_timesteps(n)` first. The float32 arithmetic follows
    diffusers' `step` so the coefficients agree with it to rounding.

    Args:
        scheduler: a DDPMScheduler whose timesteps are set.
        device: where the tables go (default: the CPU).
    """
    config = scheduler.config
    if config.variance_type not in SUPPORTED_VARIANCE_TYPES:
        raise NotImplementedError(
            f"variance_type {config.variance_type!r} is not supported by the fast sampler; expected one of "
            f"{list(SUPPORTED_VARIANCE_TYPES)} (learned/learned_range need the model's variance channels, "
            "fixed_large_log is NaN in diffusers, issue 14569)"
        )
    check_choice("prediction_type", config.prediction_type, PREDICTION_TYPES)
    timesteps = torch.as_tensor(scheduler.timesteps).detach().to("cpu", torch.int64)
    alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod).detach().to("cpu", torch.float32)

    # 1. DDPMScheduler's own per-t table, with t' = the next entry of `timesteps` (-1 after the last),
    #    restricted to the n visited rows: alpha-bars, posterior coefficients (eq. 7) and sigma_t
    prev_timesteps = torch.arange(len(alphas_cumprod)) - 1  # (T,)
    prev_timesteps[timesteps] = torch.cat([timesteps[1:], torch.tensor([-1])])
    row = DDPMStepCoefficients(
        *ddpm_step_table(alphas_cumprod, prev_timesteps, config.variance_type)[timesteps].T
    )

    # 2. x0_hat = a * x_t - b * model_output (eq. 15 for epsilon; v = sqrt(abar) eps - sqrt(1-abar) x0)
    if config.prediction_type == "epsilon":
        a, b = 1 / row.sqrt_alpha_prod_t, row.sqrt_beta_prod_t / row.sqrt_alpha_prod_t
    elif config.prediction_type == "v_prediction":
        a, b = row.sqrt_alpha_prod_t, row.sqrt_beta_prod_t
    else:  # "sample": the model predicts x0 itself
        a, b = torch.zeros_like(row.sqrt_alpha_prod_t), -torch.ones_like(row.sqrt_alpha_prod_t)

    # 3. posterior mean x_{t-1} = c0 * x0_hat + ct * x_t (eq. 7) and std sigma_t, 0 at t = 0 (no noise)
    c0, ct = row.pred_original_sample_coeff, row.current_sample_coeff
    sigma = row.noise_std * row.has_noise

    coeffs = torch.stack([a, b, c0, ct, sigma], dim=1)  # (n, 5)
    thresholding = None
    if config.thresholding:
        thresholding = (float(config.dynamic_thresholding_ratio), float(config.sample_max_value))
    clip_range = float(config.clip_sample_range) if config.clip_sample and not config.thresholding else None
    return DDPMStepTables(timesteps.to(device), coeffs.to(device), clip_range, thresholding)


def ddpm_update(
    x_t: torch.Tensor,
    model_output: torch.Tensor,
    noise: torch.Tensor,
    coeffs: torch.Tensor,
    clip_sample_range: float | None = None,
    thresholding: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step x_t -> x_{t-1} from a (5,)-row (or (1, 5)) of `DDPMStepTables.coeffs`.

    Args:
        x_t: the current sample (B, C, H, W).
        model_output: the model's prediction at this step.
        noise: z ~ N(0, I) of x_t's shape (multiplied by 0 on the last step).
        coeffs: the step's row of the table.
        clip_sample_range: clamp x0_hat to [-r, r]; None: no clipping.
        thresholding: (dynamic_thresholding_ratio, sample_max_value), or None.

    Returns:
        (x_{t-1}, x0_hat), like `scheduler.step(...)`'s `prev_sample`, `pred_original_sample`.
    """
    # each (1, 1, 1, 1): broadcasts on (B, C, H, W)
    a, b, c0, ct, sigma = coeffs.reshape(5, 1, 1, 1, 1).unbind(0)
    x0_hat = a * x_t - b * model_output
    if thresholding is not None:
        x0_hat = threshold_sample(x0_hat, *thresholding)
    elif clip_sample_range is not None:
        x0_hat = x0_hat.clamp(-clip_sample_range, clip_sample_range)
    return c0 * x0_hat + ct * x_t + sigma * noise, x0_hat


class FastDDPMSampler:
    """DDPM ancestral sampling with static buffers, replayable as one CUDA graph per step.

    sampler = FastDDPMSampler(unet, scheduler, batch_size=64)   # CUDA: bf16, channels_last, graph
    images = sampler(seed=0)                                      # (B, C, H, W) in [0, 1], like "pt"

    `unet` and `scheduler` are not modified: the sampler keeps its own prepared copy of the UNet
    and its own scheduler built from `scheduler.config`. Capture (and compile) happens on the first call.

    Args:
        unet: the trained UNet2DModel (minidiff's or diffusers').
        scheduler: a DDPMScheduler; its config is copied.
        batch_size: images per call.
        num_inference_steps: reverse steps (1000: every training step).
        dtype: the UNet copy's dtype (default: bf16 on CUDA, fp32 elsewhere); the step math stays fp32.
        channels_last: the UNet copy's memory format (default: on CUDA).
        use_cuda_graph: replay one captured graph per step (default: on CUDA; needs CUDA).
        compile: torch.compile the step.
        compile_mode: the torch.compile mode.
        fuse_qkv: fuse each attention's q/k/v projections into one.
        generator: the noise generator on the UNet's device (default: a new one; `seed` reseeds it).
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler,
        batch_size: int,
        num_inference_steps: int = 1000,
        dtype: torch.dtype | None = None,
        channels_last: bool | None = None,
        use_cuda_graph: bool | None = None,
        compile: bool = False,
        compile_mode: str | None = "max-autotune-no-cudagraphs",
        fuse_qkv: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        from minidiff.fast.unet import prepare_unet_for_sampling

        self.device = next(unet.parameters()).device
        on_cuda = self.device.type == "cuda"
        self.dtype = dtype if dtype is not None else (torch.bfloat16 if on_cuda else torch.float32)
        channels_last = on_cuda if channels_last is None else channels_last
        self.use_cuda_graph = on_cuda if use_cuda_graph is None else use_cuda_graph
        if self.use_cuda_graph and not on_cuda:
            raise ValueError(f"use_cuda_graph=True needs the UNet on a CUDA device; it is on {self.device}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")

        # 1. a prepared copy of the UNet (dtype, memory format, fused q/k/v) and the step tables
        self.unet = prepare_unet_for_sampling(unet, self.dtype, channels_last, fuse_qkv)
        self.channels_last = channels_last
        scheduler = type(scheduler).from_config(copy.deepcopy(dict(scheduler.config)))
        scheduler.set_timesteps(num_inference_steps)
        self.tables = ddpm_step_tables(scheduler, self.device)
        self.num_inference_steps = len(self.tables.timesteps)

        # 2. static buffers: x_t and z stay contiguous fp32 so the seed -> output rule is layout-free
        config = unet.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        self.shape = (batch_size, config.in_channels, height, width)
        self.x = torch.empty(self.shape, device=self.device, dtype=torch.float32)
        self.noise = torch.empty_like(self.x)
        self.step_index = torch.zeros(1, device=self.device, dtype=torch.int64)
        self.generator = generator if generator is not None else torch.Generator(self.device)
        if self.generator.device.type != self.device.type:
            raise ValueError(f"generator is on {self.generator.device}; expected {self.device}")

        self._denoise = self._denoise_eager
        if compile:
            self._denoise = torch.compile(self._denoise_eager, mode=compile_mode, fullgraph=False)
        self.graph: torch.cuda.CUDAGraph | None = None

    # ---- one step, written once, used by every path ------------------------------------------------
    def _denoise_eager(self, x: torch.Tensor, noise: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
        timestep = self.tables.timesteps.index_select(0, step_index).expand(x.shape[0])  # (B,)
        coeffs = self.tables.coeffs.index_select(0, step_index)  # (1, 5)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        model_input = x.to(dtype=self.dtype, memory_format=memory_format)
        model_output = self.unet(model_input, timestep).sample.float()
        x_prev, _ = ddpm_update(
            x, model_output, noise, coeffs, self.tables.clip_sample_range, self.tables.thresholding
        )
        return x_prev

    def _step(self) -> None:
        """x <- x_{t-1}, step_index <- step_index + 1: device work only, no host input or sync."""
        torch.randn(
            self.shape, generator=self.generator, dtype=torch.float32, device=self.device, out=self.noise
        )
        self.x.copy_(self._denoise(self.x, self.noise, self.step_index))
        self.step_index.add_(1)

    def capture(self, warmup_steps: int = 3) -> float:
        """Warm up (compile, cuDNN autotune) on a side stream, then capture one step; returns seconds.

        Args:
            warmup_steps: eager steps before the capture (their noise draws are undone).
        """
        import time

        start = time.perf_counter()
        generator_state = self.generator.get_state()  # the warm-up's draws are undone below
        self.x.normal_(generator=self.generator)
        self.step_index.zero_()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        # warm-up and capture under the same grad mode, so a compiled step is not recompiled in the capture
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup_steps):
                self._step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.generator.set_state(generator_state)
        self.graph = torch.cuda.CUDAGraph()
        if self.generator is not torch.cuda.default_generators[self.device.index or 0]:
            self.graph.register_generator_state(self.generator)
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self._step()
        torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    @torch.no_grad()
    def __call__(self, seed: int | None = None) -> torch.Tensor:
        """Run all steps; returns (B, C, H, W) float32 images in [0, 1] (the pipeline's "pt" output).

        Args:
            seed: reseed the generator first; None continues from its state.
        """
        if self.use_cuda_graph and self.graph is None:
            self.capture()
        if seed is not None:
            self.generator.manual_seed(seed)
        # x_T first, in the pipeline's order; then one replay (or eager step) per timestep
        self.x.copy_(
            torch.randn(self.shape, generator=self.generator, device=self.device, dtype=torch.float32)
        )
        self.step_index.zero_()
        for _ in range(self.num_inference_steps):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
        return denormalize(self.x)


def sample(
    unet: torch.nn.Module,
    scheduler,
    batch_size: int,
    seed: int = 0,
    num_inference_steps: int = 1000,
    dtype: torch.dtype | None = None,
    channels_last: bool | None = None,
    use_cuda_graph: bool | None = None,
    compile: bool = False,
    fuse_qkv: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One-call fast sampling: `FastDDPMSampler(...)(seed)`. Returns (B, C, H, W) in [0, 1].

    Defaults: on CUDA bf16 + channels_last + one CUDA graph per step; on CPU a plain fp32 loop.

    Args:
        unet: the trained UNet2DModel.
        scheduler: a DDPMScheduler; its config is copied.
        batch_size: the number of images.
        seed: the seed of the noise generator (ignored with `generator`).
        num_inference_steps: reverse steps.
        dtype: the UNet copy's dtype (default: bf16 on CUDA, fp32 elsewhere).
        channels_last: the UNet copy's memory format (default: on CUDA).
        use_cuda_graph: replay one captured graph per step (default: on CUDA).
        compile: torch.compile the step.
        fuse_qkv: fuse each attention's q/k/v projections.
        generator: a generator whose current state is used.
    """
    sampler = FastDDPMSampler(
        unet,
        scheduler,
        batch_size,
        num_inference_steps=num_inference_steps,
        dtype=dtype,
        channels_last=channels_last,
        use_cuda_graph=use_cuda_graph,
        compile=compile,
        fuse_qkv=fuse_qkv,
        generator=generator,
    )
    return sampler(seed=None if generator is not None else seed)
