"""TrainConfig: every setting of a training run, and the named presets "tutorial" and "tiny".

config = preset("tiny", out_dir="out/tiny", max_steps=500)
config = TrainConfig(data="path/to/images")   # the tutorial's settings on a folder of images
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

MIXED_PRECISION = ("no", "bf16", "fp16")
# the schedulers' prediction types (minidiff.scheduling_utils; a test keeps the two equal): this module
# imports no torch, so that `minidiff train --help` answers at once
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")  # likewise minidiff.scheduling_utils'
LR_SCHEDULES = ("constant", "linear", "cosine")
SAMPLERS = ("ddpm", "ddim")
LOGGERS = ("none", "tensorboard")
QUICK_RUN = 500  # runs of fewer steps sample their grids with DDIM, 50 steps (seconds, not minutes)
EVAL_STEPS = 50  # the DDIM steps of the digit FID readings during training (eval_every)
# the sampler and steps of `minidiff demo`'s samples.png: DDPM's stochastic step on 100 trailing timesteps
# corrects more of a short run's errors than DDIM or DPM-Solver++ (benchmarks/TIME_TO_QUALITY.md)
DEMO_SAMPLES = ("ddpm", 100)
TUTORIAL_DATASET = "huggan/smithsonian_butterflies_subset"


@dataclass
class TrainConfig:
    """Everything a run needs. The defaults are the tutorial's; `preset(name)` gives named variants."""

    # data: "digits" (embedded), a folder of images or a hub dataset id; channels None = 1 for digits, else 3
    data: str = TUTORIAL_DATASET
    image_size: int = 32
    channels: int | None = None
    center_crop: bool = False  # False: squash to image_size^2 (the tutorial); True: shorter side, then crop
    flip: bool = True  # random horizontal flips (the tutorial's only augmentation)
    limit: int | None = None  # use only the first `limit` images
    skip_bad_images: bool = False  # train on the readable images instead of stopping (and naming them)
    stream: bool | None = None  # None: decode up front when the uint8 data fits data_budget_mb, else stream
    data_budget_mb: int = 2048
    num_workers: int | None = None  # decoding workers when streaming (None: one per core, at most 4)
    # model: UNet2DModel keywords
    block_out_channels: tuple[int, ...] = (64, 128, 128, 256)
    layers_per_block: int = 2
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    norm_num_groups: int = 32
    # noise schedule (DDPMScheduler keywords)
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"  # what the UNet learns: "epsilon" | "sample" (x_0) | "v_prediction"
    # abar_T = 0 exactly (Lin et al. 2024): the last step starts from pure noise, as sampling does; needs
    # "v_prediction" or "sample" (eps is unlearnable at SNR 0)
    rescale_betas_zero_snr: bool = False
    # which timesteps a sampler of the saved model visits: "trailing" starts at t = T-1 (Lin et al. 2024, Table 2)
    timestep_spacing: str = "leading"
    # optimisation: `max_steps` (optimizer steps), when set, wins over `epochs`; `time_budget` (seconds of
    # training) ends a run early, at a step boundary, with everything saved as at its planned end
    epochs: int = 30
    max_steps: int | None = None
    time_budget: float | None = None
    batch_size: int = 64  # images per micro-batch; an optimizer step sees batch_size * grad_accum
    lr: float = 4e-4
    lr_scheduler: str = "constant"  # after the warm-up: "constant" | "linear" | "cosine" (decay to 0)
    warmup_steps: int = 0  # lr rises linearly over this many steps
    adam_beta1: float = 0.9  # AdamW's defaults
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.01
    # min-SNR-gamma loss weights (Hang et al. 2023): each image's loss times min(SNR_t, gamma) / SNR_t for
    # epsilon, / (SNR_t + 1) for v_prediction, / 1 for sample (`rules.snr_loss_weights`); None: plain MSE
    snr_gamma: float | None = None
    # EMA of the weights, diffusers' EMAModel: 0 = off, else the largest decay d_n may reach
    ema_decay: float = 0.0
    ema_min_decay: float = 0.0
    ema_update_after_step: int = 0
    ema_warmup: bool = False  # d_n = 1 - (1 + n / ema_inv_gamma) ** -ema_power, else (1 + n) / (10 + n)
    ema_inv_gamma: float = 1.0
    ema_power: float = 3 / 4
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"
    grad_clip: float | None = None  # max global grad norm
    grad_accum: int = 1
    seed: int = 0
    device: str = "auto"  # "auto" = cuda if available, else cpu
    fast: bool = (
        False  # the fast engine (minidiff.fast.FastTrainer): data on the device, one CUDA graph per step
    )
    # outputs
    out_dir: str = "out/train"
    overwrite: bool = False  # replace what another run left in out_dir (its model, checkpoints, logs)
    checkpoint_every: int | None = 500  # steps (diffusers' default); None = no checkpoints
    keep_checkpoints: int = 3
    resume: bool | str = False  # True / "latest": the newest intact checkpoint; "auto": that or a fresh
    # start; a path: that checkpoint
    sample_every: int | None = None  # epochs -> out_dir/samples/epoch-XXXX.png
    save_model_every: int | None = None  # epochs -> out_dir/model (the EMA weights when EMA is on)
    num_samples: int = 16  # images per sample grid (0: no grids)
    sampler: str | None = None  # "ddpm" | "ddim"; None: DDIM for runs under QUICK_RUN steps, else DDPM
    sample_steps: int | None = None  # None: 50 for DDIM, num_train_timesteps for DDPM
    eval_every: int | None = None  # steps between digit FID readings (loss.csv's digit_fid, loss.png)
    eval_samples: int = 100  # images each reading samples (DDIM, EVAL_STEPS steps); > 64 for the FID
    log_every: int = 10  # steps between loss.csv writes / progress updates (one host sync each)
    logger: str = "none"  # "none" | "tensorboard" (loss, lr and sample grids in out_dir/logs)
    progress: bool = True

    def validate(self) -> None:
        def positive(name: str, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}; expected a positive int" + (" or None" * allow_none))

        for name in ("image_size", "layers_per_block", "num_train_timesteps", "epochs", "batch_size"):
            positive(name)
        for name in ("grad_accum", "keep_checkpoints", "log_every", "data_budget_mb"):
            positive(name)
        if (
            isinstance(self.num_samples, bool)
            or not isinstance(self.num_samples, int)
            or self.num_samples < 0
        ):
            raise ValueError(f"num_samples={self.num_samples!r}; expected an int >= 0 (0: no sample grids)")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(
                f"time_budget={self.time_budget!r}; expected None or a positive number of seconds"
            )
        if self.eval_every is not None and not (
            isinstance(self.eval_samples, int) and self.eval_samples > 64
        ):
            raise ValueError(
                f"eval_samples={self.eval_samples!r}; the digit FID of 64 features needs more than 64 samples"
            )
        for name in (
            "max_steps",
            "checkpoint_every",
            "sample_every",
            "save_model_every",
            "limit",
            "sample_steps",
        ):
            positive(name, allow_none=True)
        if self.num_workers is not None and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise ValueError(f"num_workers={self.num_workers!r}; expected None or an int >= 0")
        if not isinstance(self.resume, bool | str) or self.resume == "":
            raise ValueError(
                f"resume={self.resume!r}; expected True, False, 'latest', 'auto' or a checkpoint path"
            )
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"mixed_precision {self.mixed_precision!r}; expected one of {list(MIXED_PRECISION)}"
            )
        for name, allowed in (
            ("sampler", (*SAMPLERS, None)),
            ("logger", LOGGERS),
            ("prediction_type", PREDICTION_TYPES),
            ("lr_scheduler", LR_SCHEDULES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r}; expected one of {list(allowed)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay!r}; expected 0 (off) or a value in (0, 1)")
        if not 0.0 <= self.ema_min_decay <= max(self.ema_decay, 0.0):
            raise ValueError(f"ema_min_decay={self.ema_min_decay!r}; expected a value in [0, ema_decay]")
        if self.ema_update_after_step < 0:
            raise ValueError(f"ema_update_after_step={self.ema_update_after_step!r}; expected >= 0")
        if not (self.ema_inv_gamma > 0 and self.ema_power > 0):
            raise ValueError(
                f"ema_inv_gamma={self.ema_inv_gamma!r}, ema_power={self.ema_power!r}; expected positive numbers"
            )
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected a value in [0, 1)")
        if not self.adam_epsilon > 0 or self.weight_decay < 0:
            raise ValueError(
                f"adam_epsilon={self.adam_epsilon!r}, weight_decay={self.weight_decay!r}; expected eps > 0, "
                "weight decay >= 0"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr={self.lr!r}; expected a positive finite number")
        if self.snr_gamma is not None and not (self.snr_gamma > 0 and math.isfinite(self.snr_gamma)):
            raise ValueError(f"snr_gamma={self.snr_gamma!r}; expected None or a positive finite number")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"timestep_spacing {self.timestep_spacing!r}; expected one of {list(TIMESTEP_SPACINGS)}"
            )
        if self.rescale_betas_zero_snr and self.prediction_type == "epsilon":
            raise ValueError(
                "rescale_betas_zero_snr=True with prediction_type 'epsilon': at SNR 0 the sampler divides by "
                "sqrt(abar_T) = 0; expected prediction_type 'v_prediction' (or 'sample'), or "
                "rescale_betas_zero_snr=False (--no-rescale-betas-zero-snr)"
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip={self.grad_clip!r}; expected a positive number or None")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps!r}; expected >= 0")
        if len(self.down_block_types) != len(self.block_out_channels) or len(self.up_block_types) != len(
            self.block_out_channels
        ):
            raise ValueError(
                f"block_out_channels {self.block_out_channels} needs one down and one up block type per "
                f"level; got {len(self.down_block_types)} down and {len(self.up_block_types)} up"
            )
        halvings = len(self.block_out_channels) - 1  # each down block but the last halves H and W
        if self.image_size % 2**halvings:
            raise ValueError(
                f"image_size={self.image_size!r} cannot be halved {halvings} times by the UNet's down path; "
                f"expected a multiple of {2**halvings}"
            )


PRESETS: dict[str, TrainConfig] = {
    # The tutorial, unchanged: 30 epochs of the butterflies at 32x32 (a GPU job).
    "tutorial": TrainConfig(),
    # Embedded digits at 16x16, a 280 k-parameter UNet, the recipe `minidiff demo` trains (150 s of it):
    # zero terminal SNR + v_prediction + trailing timesteps (Lin et al. 2024: DDIM at 20 steps as good as at
    # 100), min-SNR-5 loss weights (Hang et al. 2023), lr 3e-3, bf16 autocast; narrow layers (16, 32, 32)
    # for 2.8x the steps per second of (32, 64, 64). benchmarks/TIME_TO_QUALITY.md measures each lever.
    "tiny": TrainConfig(
        data="digits",
        image_size=16,
        flip=False,  # a mirrored digit is not a digit
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        snr_gamma=5.0,
        max_steps=1800,  # 164 s at 11 steps/s: a 2-core CPU stops at the demo's 150 s budget first
        lr=3e-3,
        warmup_steps=100,
        ema_decay=0.995,
        mixed_precision="bf16",
        out_dir="out/tiny",
        checkpoint_every=250,
    ),
}


def preset(name: str, **overrides) -> TrainConfig:
    """A named TrainConfig ("tutorial" or "tiny") with some fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} is not known; expected one of {list(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown TrainConfig fields {unknown}; expected some of {sorted(fields)}")
    return dataclasses.replace(PRESETS[name], **overrides)


RESUMABLE_CHANGES = {  # fields that may differ between a run and its resumption
    "epochs", "max_steps", "out_dir", "resume", "device", "checkpoint_every", "keep_checkpoints",
    "sample_every", "save_model_every", "num_samples", "sample_steps", "sampler", "log_every", "logger",
    "progress", "overwrite", "stream", "data_budget_mb", "num_workers", "time_budget", "eval_every", "eval_samples",
}  # fmt: skip


def sampling_settings(config: TrainConfig, total_steps: int) -> tuple[str, int]:
    """(sampler, steps) of the sample grids: as set, else DDIM with 50 steps for a quick run (fewer than
    QUICK_RUN steps) and DDPM with every training timestep for a longer one."""
    sampler = config.sampler or ("ddim" if total_steps < QUICK_RUN else "ddpm")
    steps = config.sample_steps or (50 if sampler == "ddim" else config.num_train_timesteps)
    return sampler, steps


def config_dict(config: TrainConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
