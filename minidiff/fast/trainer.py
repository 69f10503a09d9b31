"""Fast DDPM training: the whole step on the device, replayed as one CUDA graph.

The plain loop (minidiff.training) spends most of a batch-64 step in Python and kernel launches:
a DataLoader decoding and flipping images on the CPU, a host->device copy, ~2,400 eager kernels for
forward + backward + AdamW, a per-step `loss.item()` sync. `FastTrainer.step()` instead replays one
CUDA graph that does, with no host input and no host sync:

1. batch: indices from an on-device permutation (drawn once per epoch), gather uint8 images from the
   data set resident on the GPU, random horizontal flips, [0, 255] -> [-1, 1]  (the tutorial's transform)
2. forward process (Ho et al. 2020, eq. 4): t ~ U{0..T-1}, eps ~ N(0, I),
   x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
3. loss (eq. 14, L_simple): || eps - eps_theta(x_t, t) ||^2, under bf16 autocast (fp32 master weights),
   channels_last activations, the UNet optionally compiled by torch.compile inside the graph
4. backward, gradient-norm clipping, fused AdamW (capturable: lr is a device tensor read from a table)
5. EMA of the weights with foreach ops (diffusers' EMAModel update: ema -= (1 - decay) (ema - param))
6. the loss is written to an on-device log; `losses()` reads it back (one sync per call, not per step).

On CPU the same stages run eagerly in fp32 (`draw_batch` + `train_step`), which is what the tests compare
with the plain loss: same x_0, eps and t in, same loss out.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class FastTrainer:
    """trainer = FastTrainer(unet, noise_scheduler, images_uint8, batch_size=64, learning_rate=1e-4)
    for _ in range(n): trainer.step()          # no host sync
    trainer.losses()                           # the per-step losses since the last call (one sync)
    """

    def __init__(
        self,
        unet: nn.Module,
        noise_scheduler,
        images_uint8: torch.Tensor,
        batch_size: int,
        learning_rate: float = 1e-4,
        lr_at_step: Callable[[int], float] | None = None,
        max_steps: int = 100_000,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = 1.0,
        ema_decay_at_step: Callable[[int], float] | None = None,
        flip: bool = True,
        mixed_precision: bool | None = None,
        channels_last: bool | None = None,
        use_cuda_graph: bool | None = None,
        compile: bool = False,
        compile_mode: str | None = "max-autotune-no-cudagraphs",
        log_every: int = 100,
        generator: torch.Generator | None = None,
    ) -> None:
        self.unet = unet.train()
        self.device = next(unet.parameters()).device
        on_cuda = self.device.type == "cuda"
        self.mixed_precision = on_cuda if mixed_precision is None else mixed_precision
        self.channels_last = on_cuda if channels_last is None else channels_last
        self.use_cuda_graph = on_cuda if use_cuda_graph is None else use_cuda_graph
        if self.use_cuda_graph and not on_cuda:
            raise ValueError(f"use_cuda_graph=True needs the UNet on a CUDA device; it is on {self.device}")
        if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
            raise ValueError(
                f"images_uint8 of dtype {images_uint8.dtype} and shape {tuple(images_uint8.shape)}; "
                "expected a uint8 tensor (N, C, H, W) as data.load_dataset_uint8 returns"
            )
        if not 1 <= batch_size <= images_uint8.shape[0]:
            raise ValueError(
                f"batch_size {batch_size}; expected 1 .. {images_uint8.shape[0]} (the data set size)"
            )
        config = noise_scheduler.config
        if config.prediction_type not in SUPPORTED_PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type {config.prediction_type!r}; expected one of {list(SUPPORTED_PREDICTION_TYPES)}"
            )
        self.prediction_type = config.prediction_type
        self.num_train_timesteps = int(config.num_train_timesteps)
        self.batch_size, self.max_grad_norm, self.flip = batch_size, max_grad_norm, flip
        if self.channels_last:
            self.unet.to(memory_format=torch.channels_last)

        # 1. device-resident data and tables: the data set as uint8, sqrt(abar) and sqrt(1 - abar), lr, EMA decay
        self.data = images_uint8.to(self.device)
        self.steps_per_epoch = self.data.shape[0] // batch_size  # the last partial batch is dropped
        alphas_cumprod = torch.as_tensor(noise_scheduler.alphas_cumprod).to(self.device, torch.float32)
        self.sqrt_alpha_prod = alphas_cumprod**0.5  # (T,)
        self.sqrt_one_minus_alpha_prod = (1 - alphas_cumprod) ** 0.5  # (T,)
        lr_values = [lr_at_step(s) if lr_at_step else learning_rate for s in range(max_steps)]
        self.lr_values = lr_values
        self.lr_table = torch.tensor(lr_values, dtype=torch.float32, device=self.device)  # (max_steps,)
        self.max_steps = max_steps

        # 2. optimizer: fused AdamW on CUDA, capturable when graphed, lr a device tensor updated in the graph
        self.lr = torch.tensor(lr_values[0], dtype=torch.float32, device=self.device)
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=self.lr if self.use_cuda_graph else lr_values[0],
            betas=adam_betas,
            eps=adam_eps,
            weight_decay=weight_decay,
            fused=on_cuda or None,
            capturable=self.use_cuda_graph,
        )

        # 3. EMA copy of the weights (diffusers' EMAModel update rule), decay from a table
        self.ema_unet = None
        if ema_decay_at_step is not None:
            memo = {
                id(m._internal_dict): m._internal_dict for m in unet.modules() if hasattr(m, "_internal_dict")
            }
            self.ema_unet = copy.deepcopy(self.unet, memo).eval().requires_grad_(False)
            trainable = [p.requires_grad for p in self.unet.parameters()]
            self.ema_params = [
                e for e, t in zip(self.ema_unet.parameters(), trainable) if t
            ]  # as self.params
            decays = [ema_decay_at_step(s) for s in range(max_steps)]
            self.one_minus_decay = 1 - torch.tensor(decays, dtype=torch.float32, device=self.device)

        # 4. counters and logs, all device tensors (the graph reads and increments them)
        self.global_step = torch.zeros(1, dtype=torch.int64, device=self.device)
        self.batch_in_epoch = torch.zeros(1, dtype=torch.int64, device=self.device)
        self.order = torch.zeros(self.steps_per_epoch * batch_size, dtype=torch.int64, device=self.device)
        self.log_every = log_every
        self.loss_log = torch.zeros(log_every, dtype=torch.float32, device=self.device)
        self.steps_done = 0  # host-side count: decides epochs and log reads without asking the device
        self.steps_logged = 0
        self.generator = generator if generator is not None else torch.Generator(self.device).manual_seed(0)
        if self.generator.device.type != self.device.type:
            raise ValueError(f"generator is on {self.generator.device}; expected {self.device}")

        self.compiled = compile
        self._loss = torch.compile(self.loss, mode=compile_mode) if compile else self.loss
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capture_seconds = 0.0

    # ---- the stages ----------------------------------------------------------------------------------
    def draw_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 1 + the random part of 2: (x_0 in [-1, 1], eps, t), all drawn on the device."""
        batch = self.batch_size
        index = self.order.view(-1, batch).index_select(0, self.batch_in_epoch).view(batch)  # (B,)
        images = self.data.index_select(0, index).float() / 255  # (B, C, H, W) in [0, 1], as ToTensor
        if self.flip:  # RandomHorizontalFlip, p = 0.5 per image
            flipped = torch.rand(batch, generator=self.generator, device=self.device) < 0.5  # (B,)
            images = torch.where(flipped[:, None, None, None], images.flip(-1), images)
        clean = (images - 0.5) / 0.5  # Normalize([0.5], [0.5]): [0, 1] -> [-1, 1]
        noise = torch.randn(clean.shape, generator=self.generator, device=self.device)
        timesteps = torch.randint(
            0, self.num_train_timesteps, (batch,), generator=self.generator, device=self.device
        )
        return clean, noise, timesteps

    def loss(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Stages 2 + 3: forward process and L_simple (mean over every element, in fp32)."""
        sqrt_a = self.sqrt_alpha_prod.index_select(0, timesteps)[:, None, None, None]  # (B, 1, 1, 1)
        sqrt_1ma = self.sqrt_one_minus_alpha_prod.index_select(0, timesteps)[:, None, None, None]
        noisy = sqrt_a * clean + sqrt_1ma * noise  # eq. 4
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = sqrt_a * noise - sqrt_1ma * clean
        else:
            target = clean
        if self.channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            self.device.type, torch.bfloat16, enabled=self.mixed_precision, cache_enabled=False
        ):
            prediction = self.unet(noisy, timesteps).sample
        return F.mse_loss(prediction.float(), target.float())

    def train_step(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Stages 3-5 on a given batch; returns the loss as a device tensor (no sync)."""
        step = self.global_step
        if self.use_cuda_graph:  # the graph reads lr from the table at the device-side step counter
            self.lr.copy_(self.lr_table.index_select(0, step).reshape(()))
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_values[self.steps_done]
        loss = self._loss(clean, noise, timesteps)
        loss.backward()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm, foreach=True)
        self.optimizer.step()
        if self.ema_unet is not None:  # ema <- ema - (1 - decay) * (ema - param)
            ema_params = self.ema_params
            diffs = torch._foreach_sub(ema_params, [p.detach() for p in self.params])
            torch._foreach_mul_(diffs, self.one_minus_decay.index_select(0, step).reshape(()))
            torch._foreach_sub_(ema_params, diffs)
        return loss.detach()

    def _full_step(self) -> None:
        loss = self.train_step(*self.draw_batch())
        slot = torch.remainder(self.global_step, self.log_every)
        self.loss_log.index_copy_(0, slot, loss.view(1))
        self.global_step.add_(1)
        self.batch_in_epoch.add_(1)

    # ---- driving it -------------------------------------------------------------------------------
    def _start_epoch_if_due(self) -> None:
        if self.steps_done % self.steps_per_epoch == 0:  # host-side arithmetic: no device read
            permutation = torch.randperm(self.data.shape[0], generator=self.generator, device=self.device)
            self.order.copy_(permutation[: self.order.numel()])
            self.batch_in_epoch.zero_()

    def capture(self, warmup_steps: int = 3) -> float:
        """Warm up on a side stream (compiles, autotunes, creates AdamW's state), then capture one step.

        The warm-up steps are undone afterwards: weights, EMA, AdamW state, counters and the generator
        go back to where they were, so the first replay is the next real step and `step()` / `losses()`
        count exactly the steps the caller asked for.
        """
        start = time.perf_counter()
        snapshot = self._snapshot()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(warmup_steps):
                self._eager_step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._restore(snapshot)
        self.graph = torch.cuda.CUDAGraph()
        if self.generator is not torch.cuda.default_generators[self.device.index or 0]:
            self.graph.register_generator_state(self.generator)
        self.optimizer.zero_grad(set_to_none=True)  # gradients then live in the graph's memory pool
        with torch.cuda.graph(self.graph):
            self._full_step()
        torch.cuda.synchronize(self.device)
        self.capture_seconds = time.perf_counter() - start
        return self.capture_seconds

    def _snapshot(self) -> dict:
        """Copies of everything a training step changes (AdamW state only if it exists yet)."""
        modules = [self.unet] + ([self.ema_unet] if self.ema_unet is not None else [])
        tensors = [t for m in modules for t in m.state_dict().values()]
        tensors += [self.global_step, self.batch_in_epoch, self.order, self.loss_log]
        optimizer_state = [t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        return dict(
            tensors=[(t, t.detach().clone()) for t in tensors + optimizer_state],
            had_state=set(self.optimizer.state),
            generator=self.generator.get_state(),
            counts=(self.steps_done, self.steps_logged),
        )

    @torch.no_grad()
    def _restore(self, snapshot: dict) -> None:
        for tensor, saved in snapshot["tensors"]:
            tensor.copy_(saved)
        for param, state in self.optimizer.state.items():
            if param not in snapshot["had_state"]:  # created by the warm-up: zeros = AdamW's fresh state
                for value in state.values():
                    if torch.is_tensor(value):
                        value.zero_()
        self.generator.set_state(snapshot["generator"])
        self.steps_done, self.steps_logged = snapshot["counts"]

    def _eager_step(self) -> None:
        self._start_epoch_if_due()
        self.optimizer.zero_grad(set_to_none=True)
        self._full_step()
        self.steps_done += 1

    def step(self) -> None:
        """One training step: one graph replay on CUDA (captured on the first call), eager elsewhere."""
        if self.steps_done >= self.max_steps:
            raise ValueError(f"max_steps {self.max_steps} reached: the lr / EMA tables end there")
        if self.use_cuda_graph and self.graph is None:
            self.capture()
        if self.graph is None:
            self._eager_step()
            return
        self._start_epoch_if_due()
        self.graph.replay()
        self.steps_done += 1

    def losses(self) -> list[float]:
        """The losses of the steps since the last call (at most `log_every` of them): one host sync."""
        count = self.steps_done - self.steps_logged
        if count > self.log_every:
            raise ValueError(
                f"{count} steps since the last losses() call but the log holds {self.log_every}; "
                "call losses() at least every log_every steps"
            )
        values = self.loss_log.tolist()
        slots = [(self.steps_logged + i) % self.log_every for i in range(count)]
        self.steps_logged = self.steps_done
        return [values[s] for s in slots]
