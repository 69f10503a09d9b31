"""The fast training engine: the same rules as the plain one, the data on the device, each step one
CUDA graph.

The plain engine spends most of a batch-64 step in Python and kernel launches: ~2,400 eager kernels for
forward + backward + AdamW, a host->device copy of every batch. `FastTrainer.step()` replays one CUDA
graph that runs, with no host input and no host sync, the rules of `minidiff.training.rules`:

1. the batch: gather uint8 images of the device-resident data set at the epoch's order (`epoch_order`,
   copied to the device once per epoch), mirror the flipped ones, [0, 255] -> [-1, 1]; eps ~ N(0, I),
   t ~ U{0..T-1} (or logit-normal: `rules.draw_timesteps`) from the run's noise generator (`draw_batch`)
2. the loss (`loss_fn`: `add_noise`, the target of the scheduler's prediction_type, MSE, min-SNR weights
   when config.snr_gamma is set) under bf16
   autocast with fp32 master weights, channels_last activations, optionally torch.compile'd
3. backward, `clip_gradients`, fused capturable AdamW (`make_optimizer`; lr is a device tensor)
4. the EMA update (`EMA.apply`, 1 - d_n a device tensor)

What changes between steps comes from the host as two tiny fills before each replay: the batch's
position in the epoch, the lr of the run's torch lr scheduler (stepped on a host-side twin of the
optimizer) and the EMA's 1 - d_n. On CPU the same stages run eagerly, and a run is bit for bit the plain
engine's (tests/test_engines.py).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from minidiff.training.config import TrainConfig
from minidiff.training.preflight import check_fast_supported
from minidiff.training.rules import (
    EMA,
    clip_gradients,
    draw_batch,
    loss_fn,
    make_lr_scheduler,
    make_optimizer,
)


class FastTrainer:
    """The fast engine, driven like the plain one:

        trainer = FastTrainer(unet, noise_scheduler, images_uint8, config)
        trainer.start_epoch(*epoch_order(len(images_uint8), config.seed, 0, config.flip))
        loss = trainer.step(batch_in_epoch)     # a 0-d device tensor: no host sync

    Mixed precision, lr, EMA, clipping and the rest come from `config`, as for the plain engine.

    Args:
        unet: the model to train, on the device to train on.
        noise_scheduler: the DDPMScheduler of the forward process.
        images_uint8: the whole data set (N, C, H, W) as uint8 (`minidiff.data.load_dataset_uint8`).
        config: the run's settings.
        total_steps: the length of the lr schedule (default: config.max_steps, else config.epochs epochs).
        noise_generator: the generator of t and eps (default: a new one seeded with config.seed + 1).
        use_cuda_graph: capture the step in a CUDA graph (default: on CUDA).
        channels_last: train in channels_last (default: on CUDA).
        compile: torch.compile the loss.
        compile_mode: the torch.compile mode.
    """

    def __init__(
        self,
        unet: nn.Module,
        noise_scheduler,
        images_uint8: torch.Tensor,
        config: TrainConfig,
        total_steps: int | None = None,
        *,
        noise_generator: torch.Generator | None = None,
        use_cuda_graph: bool | None = None,
        channels_last: bool | None = None,
        compile: bool = False,
        compile_mode: str | None = "max-autotune-no-cudagraphs",
    ) -> None:
        check_fast_supported(config)
        self.device = next(unet.parameters()).device
        if config.mixed_precision == "auto":  # (train() resolves it first; this is for direct use)
            from minidiff.training.precision import resolve_precision

            config, _ = resolve_precision(config, unet, unet.config.in_channels, self.device)
        on_cuda = self.device.type == "cuda"
        self.use_cuda_graph = on_cuda if use_cuda_graph is None else use_cuda_graph
        self.channels_last = on_cuda if channels_last is None else channels_last
        if self.use_cuda_graph and not on_cuda:
            raise ValueError(f"use_cuda_graph=True needs the UNet on a CUDA device; it is on {self.device}")
        if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
            raise ValueError(
                f"images_uint8 of dtype {images_uint8.dtype} and shape {tuple(images_uint8.shape)}; "
                "expected a uint8 tensor (N, C, H, W) as data.load_dataset_uint8 returns"
            )
        num_images = images_uint8.shape[0]
        if not 1 <= config.batch_size <= num_images:
            raise ValueError(
                f"batch_size {config.batch_size}; expected 1 .. {num_images} (the data set size)"
            )
        self.config, self.noise_scheduler = config, noise_scheduler
        self.unet = unet.train()
        if self.channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.data = images_uint8.to(self.device)
        self.batches_per_epoch = math.ceil(num_images / config.batch_size)
        if total_steps is None:
            total_steps = config.max_steps or config.epochs * self.batches_per_epoch
        self.noise_generator = noise_generator or torch.Generator(self.device).manual_seed(config.seed + 1)
        if self.noise_generator.device.type != self.device.type:
            raise ValueError(f"noise_generator is on {self.noise_generator.device}; expected {self.device}")

        # optimizer (fused on CUDA, capturable in a graph: then lr is a device tensor) and its lr schedule,
        # which steps a host-side twin optimizer: the graph reads the lr, the host never reads the device
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        self.lr = torch.tensor(config.lr, dtype=torch.float32, device=self.device)
        lr = self.lr if self.use_cuda_graph else None
        self.optimizer = make_optimizer(self.params, config, on_cuda or None, self.use_cuda_graph, lr)
        self._lr_twin = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
        self.lr_scheduler = make_lr_scheduler(self._lr_twin, config, total_steps)
        self.grad_scaler = None  # bf16 needs none
        self.ema = EMA.from_config(self.unet, config)
        self.ema_factor: float | torch.Tensor = torch.zeros((), device=self.device)  # 1 - d_n

        # device copies of the epoch's order and flips, and the batch position the graph reads
        self.order = torch.zeros(num_images, dtype=torch.int64, device=self.device)
        self.flips = torch.zeros(num_images, dtype=torch.bool, device=self.device) if config.flip else None
        self.batch_index = torch.zeros(1, dtype=torch.int64, device=self.device)
        self._loss = torch.compile(loss_fn, mode=compile_mode) if compile else loss_fn
        self.compiled = compile
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}  # batch rows -> graph, loss
        self.capture_seconds = 0.0

    @property
    def sampling_model(self) -> nn.Module:
        """What the run samples from and saves: the EMA weights when EMA is on."""
        return self.ema.model if self.ema is not None else self.unet

    # ---- the stages, written once for the eager and the captured step ---------------------------------
    def _rows(self, first_batch: int) -> int:
        """Images in batch `first_batch` of the epoch: batch_size, or fewer for the last one."""
        size = self.config.batch_size
        return min(size, self.data.shape[0] - first_batch * size)

    def _index(self, rows: int) -> torch.Tensor:
        """The image indices of the batch at `self.batch_index`, read on the device."""
        size = self.config.batch_size
        if rows < size:  # the epoch's last, short batch: a fixed slice
            return self.order[self.order.numel() - rows :]
        full = self.order[: (self.order.numel() // size) * size].view(-1, size)  # (full batches, B)
        return full.index_select(0, self.batch_index).view(size)

    def _optimize(self, rows: int) -> torch.Tensor:
        """Stages 1-4 on the batch at `self.batch_index`; returns the loss (a device tensor)."""
        index = self._index(rows)
        clean, noise, timesteps = draw_batch(
            self.data, index, self.flips, self.noise_generator, self.config, self.device
        )
        if self.channels_last:  # same values, the layout the channels_last convolutions want
            clean, noise = (x.contiguous(memory_format=torch.channels_last) for x in (clean, noise))
        bf16 = self.config.mixed_precision == "bf16"
        with torch.autocast(self.device.type, torch.bfloat16, enabled=bf16, cache_enabled=False):
            loss = self._loss(self.unet, self.noise_scheduler, clean, noise, timesteps, self.config.snr_gamma)
        loss.backward()
        clip_gradients(self.params, self.config.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.apply(self.unet, self.ema_factor)
        return loss.detach()

    # ---- driving it -----------------------------------------------------------------------------------
    def start_epoch(self, order: torch.Tensor, flips: torch.Tensor | None, first_batch: int = 0) -> None:
        """Set the epoch's image order and flips, from `rules.epoch_order`.

        Args:
            order: (N,) the image indices in the epoch's order.
            flips: (N,) bool, which images are flipped; None without flips.
            first_batch: unused (any batch may come first: the data is resident); the plain engine's signature.
        """
        self.order.copy_(order)
        if self.flips is not None:
            self.flips.copy_(flips)

    def step(self, first_batch: int, count: int = 1) -> torch.Tensor:
        """One optimizer step on a batch of the epoch: a graph replay on CUDA (captured at the first batch
        of each size), eager elsewhere.

        Args:
            first_batch: the batch's index in the epoch.
            count: batches in the step; only 1 (gradient accumulation is refused).

        Returns:
            The loss as a 0-d device tensor (no host sync).
        """
        if count != 1:
            raise ValueError(f"the fast engine takes one batch per step; got {count} (grad_accum is refused)")
        if not 0 <= first_batch < self.batches_per_epoch:
            raise ValueError(f"batch {first_batch}; an epoch has batches 0 .. {self.batches_per_epoch - 1}")
        rows = self._rows(first_batch)
        self.batch_index.fill_(first_batch)
        lr = self._lr_twin.param_groups[0]["lr"]
        one_minus_decay = self.ema.next_one_minus_decay() if self.ema is not None else 0.0
        if self.use_cuda_graph:
            self.lr.fill_(lr)
            self.ema_factor.fill_(one_minus_decay)
            if rows not in self.graphs:
                self.capture(rows)
            graph, loss = self.graphs[rows]
            graph.replay()
            loss = loss.clone()  # the graph's output is overwritten by the next replay
        else:
            self.optimizer.param_groups[0]["lr"] = lr
            self.ema_factor = one_minus_decay
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._optimize(rows)
        self._lr_twin.step()
        self.lr_scheduler.step()
        return loss

    def capture(self, rows: int, warmup_steps: int = 3) -> float:
        """Warm up on a side stream (compile, autotune, AdamW's state), then capture one step on batches
        of `rows` images. The warm-up steps are undone: weights, EMA, AdamW state and the generator go
        back to where they were, so the first replay is the next real step.

        Args:
            rows: the batch size of the graph.
            warmup_steps: eager steps before the capture.

        Returns:
            The seconds the warm-up and capture took.
        """
        start = time.perf_counter()
        snapshot = self._snapshot()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(warmup_steps):
                self.optimizer.zero_grad(set_to_none=True)
                self._optimize(rows)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._restore(snapshot)
        graph = torch.cuda.CUDAGraph()
        if self.noise_generator is not torch.cuda.default_generators[self.device.index or 0]:
            graph.register_generator_state(self.noise_generator)
        self.optimizer.zero_grad(set_to_none=True)  # gradients then live in the graph's memory pool
        with torch.cuda.graph(graph):
            loss = self._optimize(rows)
        torch.cuda.synchronize(self.device)
        self.graphs[rows] = (graph, loss)
        self.capture_seconds += time.perf_counter() - start
        return self.capture_seconds

    def _snapshot(self) -> dict:
        """Copies of every tensor a step changes (AdamW state only if it exists yet)."""
        modules = [self.unet] + ([self.ema.model] if self.ema is not None else [])
        tensors = [t for m in modules for t in m.state_dict().values()]
        tensors += [t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        return dict(
            tensors=[(t, t.detach().clone()) for t in tensors],
            had_state=set(self.optimizer.state),
            generator=self.noise_generator.get_state(),
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
        self.noise_generator.set_state(snapshot["generator"])
