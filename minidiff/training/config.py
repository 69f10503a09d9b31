"""TrainConfig: every setting of a training run, and the named presets "tutorial", "tiny" and "diffusers".

config = preset("tiny", out_dir="out/tiny", max_steps=500)
config = TrainConfig(data="path/to/images")   # the tutorial's settings on a folder of images
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from minidiff.schedulers.samplers import CHOICES, SAMPLER_NAMES, Choice, steps_for

MIXED_PRECISION = (
    "no",
    "bf16",
    "fp16",
    "auto",
)  # auto: bf16 only where measured faster (training/precision.py)
# the schedulers' prediction types (minidiff.schedulers.scheduling_utils; a test keeps the two equal): this module
# imports no torch, so that `minidiff train --help` answers at once
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")  # likewise minidiff.schedulers.scheduling_utils'
LR_SCHEDULES = ("constant", "linear", "cosine")
# the density of training timesteps (diffusers' SD3 scripts' --weighting_scheme; rules.draw_timesteps)
WEIGHTING_SCHEMES = ("none", "logit_normal")
LOGGERS = ("none", "tensorboard")
QUICK_RUN = 500  # runs of fewer steps sample their grids with the "quick_grid" choice (seconds, not minutes)
# the sampler and steps of `minidiff demo`'s samples.png (minidiff/schedulers/samplers.py's "demo" choice)
DEMO_SAMPLES = tuple(CHOICES["demo"])
TUTORIAL_DATASET = "huggan/smithsonian_butterflies_subset"


@dataclass
class TrainConfig:
    """Every setting of a training run. The defaults are the tutorial's; `preset(name)` gives named variants.

    The fields come in groups, each documented by the comment beside it in the source and in the Training
    guide (docs/training.md): the data (`data`, `image_size`, `channels`, crop, flips, streaming), the model
    (UNet2DModel keywords), the noise schedule (DDPMScheduler keywords: `prediction_type`,
    `rescale_betas_zero_snr`, `timestep_spacing`), the optimisation (`epochs` or `max_steps`, `batch_size`,
    `lr` and its schedule, AdamW, `snr_gamma`, EMA, `mixed_precision`, clipping, accumulation, `seed`,
    `device`, `fast`) and the outputs (`out_dir`, checkpoints and `resume`, sample grids, digit FID
    readings, logging). `minidiff train --help` lists them as flags, with diffusers' names.
    """

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
    dataset_config_name: str | None = None  # a hub dataset's configuration (datasets' `name`)
    cache_dir: str | None = None  # where `datasets` keeps hub downloads (None: its default cache)
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
    # which timesteps training sees (`rules.draw_timesteps`): "none" = uniform t ~ U{0..T-1} (DDPM);
    # "logit_normal" = t / T = sigmoid(n), n ~ N(logit_mean, logit_std^2) (SD3: the middle noise levels more often)
    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    # EMA of the weights, diffusers' EMAModel: 0 = off, else the largest decay d_n may reach
    ema_decay: float = 0.0
    ema_min_decay: float = 0.0
    ema_update_after_step: int = 0
    ema_warmup: bool = False  # d_n = 1 - (1 + n / ema_inv_gamma) ** -ema_power, else (1 + n) / (10 + n)
    ema_inv_gamma: float = 1.0
    ema_power: float = 3 / 4
    mixed_precision: str = (
        "no"  # "no" | "bf16" | "fp16" | "auto" (bf16 where it is faster: training/precision.py)
    )
    grad_clip: float | None = None  # max global grad norm
    grad_accum: int = 1
    seed: int = 0
    device: str = "auto"  # "auto" = cuda if available, else cpu
    fast: bool = False  # the fast engine (training/fast_engine.py): data on the device, one CUDA graph a step
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
    sampler: str | None = (
        None  # a name of minidiff/schedulers/samplers.py; None: DDIM under QUICK_RUN steps, else DDPM
    )
    sample_steps: int | None = None  # None: the sampler's default (DDIM 50, DDPM num_train_timesteps, ...)
    eval_every: int | None = None  # steps between digit FID readings (loss.csv's digit_fid, loss.png)
    eval_samples: int = 100  # images each reading samples (DDIM, 50 steps); > 64 for the FID
    log_every: int = 10  # steps between loss.csv writes / progress updates (one host sync each)
    logger: str = "none"  # "none" | "tensorboard" (loss, lr and sample grids in out_dir/logging_dir)
    logging_dir: str = "logs"  # the TensorBoard folder, inside out_dir unless absolute
    progress: bool = True

    def validate(self) -> None:
        """Raise `ConfigError` naming the first setting out of range, and what it expects."""
        for fields, accepts, expected in CHECKS:
            for name in fields:
                if not accepts(getattr(self, name)):
                    raise ConfigError(f"{{{name}}}; {expected}", **{name: getattr(self, name)})
        if self.resume == "":
            raise ConfigError(
                "{resume}; expected True, False, 'latest', 'auto' or a checkpoint path", resume=""
            )
        if not 0.0 <= self.ema_min_decay <= max(self.ema_decay, 0.0):
            raise ConfigError(
                "{ema_min_decay}; expected a value in [0, ema_decay]", ema_min_decay=self.ema_min_decay
            )
        levels = len(self.block_out_channels)
        if len(self.down_block_types) != levels or len(self.up_block_types) != levels:
            raise ConfigError(
                f"{{block_out_channels}} needs one down and one up block type per level; got "
                f"{len(self.down_block_types)} down and {len(self.up_block_types)} up",
                block_out_channels=self.block_out_channels,
            )
        if self.rescale_betas_zero_snr and self.prediction_type == "epsilon":
            raise ConfigError(
                "{rescale_betas_zero_snr:on} with {prediction_type}: at SNR 0 the sampler divides by "
                "sqrt(abar_T) = 0; expected v_prediction (or sample), or no zero terminal SNR",
                rescale_betas_zero_snr=True,
                prediction_type=self.prediction_type,
            )
        halvings = levels - 1  # each down block but the last halves H and W
        if self.image_size % 2**halvings:
            raise ConfigError(
                f"{{image_size}} cannot be halved {halvings} times by the UNet's down path; "
                f"expected a multiple of {2**halvings}",
                image_size=self.image_size,
            )


class ConfigError(ValueError):
    """A refused setting. The message is a template naming settings as `{field}` (said `field=value`),
    `{field:name}` (the name alone) or `{field:on}` (how to switch it on): `str()` says them as TrainConfig
    fields; `render(spell)` lets the command line say them as the flags the user typed."""

    def __init__(self, template: str, **values):
        self.template, self.values = template, values
        super().__init__(self.render())

    def render(self, spell=None) -> str:
        """`spell(field, value, how)` -> the words for one setting (how: "", "name" or "on")."""
        spell = spell or _as_field
        return self.template.format(**{k: _Said(k, v, spell) for k, v in self.values.items()})


def _as_field(field: str, value, how: str) -> str:
    return {"name": field, "on": f"{field}=True"}.get(how, f"{field}={value!r}")


@dataclass(frozen=True)
class _Said:
    field: str
    value: object
    spell: object

    def __format__(self, how: str) -> str:
        return self.spell(self.field, self.value, how)


def _int_at_least(low: int, allow_none: bool = False):
    def accepts(value) -> bool:
        if value is None:
            return allow_none
        return not isinstance(value, bool) and isinstance(value, int) and value >= low

    return accepts


def _number_in(low: float, high: float, low_open: bool = False, allow_none: bool = False):
    """A finite number in [low, high) (or (low, high) when low_open)."""

    def accepts(value) -> bool:
        if value is None:
            return allow_none
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        return (low < value if low_open else low <= value) and value < high

    return accepts


def _one_of(allowed: tuple):
    return lambda value: value in allowed


# (fields, test of one value, what is expected): TrainConfig.validate reads it top to bottom
CHECKS = (
    (("image_size", "layers_per_block", "num_train_timesteps", "epochs", "batch_size", "grad_accum",
      "keep_checkpoints", "log_every", "data_budget_mb", "eval_samples"), _int_at_least(1), "expected a positive int"),
    (("max_steps", "checkpoint_every", "sample_every", "save_model_every", "limit", "sample_steps"),
     _int_at_least(1, allow_none=True), "expected a positive int or None"),
    (("num_samples",), _int_at_least(0), "expected an int >= 0 (0: no sample grids)"),
    (("num_workers",), _int_at_least(0, allow_none=True), "expected None or an int >= 0"),
    (("warmup_steps", "ema_update_after_step"), _int_at_least(0), "expected an int >= 0"),
    (("time_budget",), _number_in(0, math.inf, low_open=True, allow_none=True),
     "expected None or a positive number of seconds"),
    (("resume",), lambda value: isinstance(value, bool | str),
     "expected True, False, 'latest', 'auto' or a checkpoint path"),
    (("mixed_precision",), _one_of(MIXED_PRECISION), f"expected one of {list(MIXED_PRECISION)}"),
    (("sampler",), _one_of((*SAMPLER_NAMES, None)), f"expected one of {[*SAMPLER_NAMES, None]}"),
    (("logger",), _one_of(LOGGERS), f"expected one of {list(LOGGERS)}"),
    (("prediction_type",), _one_of(PREDICTION_TYPES), f"expected one of {list(PREDICTION_TYPES)}"),
    (("timestep_spacing",), _one_of(TIMESTEP_SPACINGS), f"expected one of {list(TIMESTEP_SPACINGS)}"),
    (("lr_scheduler",), _one_of(LR_SCHEDULES), f"expected one of {list(LR_SCHEDULES)}"),
    (("ema_decay",), _number_in(0, 1), "expected 0 (off) or a value in (0, 1)"),
    (("ema_inv_gamma", "ema_power", "adam_epsilon"), _number_in(0, math.inf, low_open=True),
     "expected a positive number"),
    (("adam_beta1", "adam_beta2"), _number_in(0, 1), "expected a value in [0, 1)"),
    (("weight_decay",), _number_in(0, math.inf), "expected a number >= 0"),
    (("lr",), _number_in(0, math.inf, low_open=True), "expected a positive finite number"),
    (("grad_clip",), _number_in(0, math.inf, low_open=True, allow_none=True), "expected a positive number or None"),
    (("snr_gamma",), _number_in(0, math.inf, low_open=True, allow_none=True), "expected None or a positive number"),
    (("weighting_scheme",), _one_of(WEIGHTING_SCHEMES), f"expected one of {list(WEIGHTING_SCHEMES)}"),
    (("logit_mean",), _number_in(-math.inf, math.inf), "expected a finite number"),
    (("logit_std",), _number_in(0, math.inf, low_open=True), "expected a positive finite number"),
)  # fmt: skip


PRESETS: dict[str, TrainConfig] = {
    # The tutorial, unchanged: 30 epochs of the butterflies at 32x32 (a GPU job).
    "tutorial": TrainConfig(),
    # Embedded digits at 16x16, a 280 k-parameter UNet, the recipe `minidiff demo` trains (all 1,200 steps):
    # zero terminal SNR + v_prediction + trailing timesteps (Lin et al. 2024: DDIM at 20 steps as good as at
    # 100), min-SNR-5 loss weights (Hang et al. 2023), logit-normal timesteps (Esser et al. 2024), lr 3e-3, bf16
    # autocast where faster; narrow layers (16, 32, 32)
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
        weighting_scheme="logit_normal",  # SD3's timestep density: the middle noise levels more often,
        logit_std=0.7,  # narrower than SD3's 1.0: 75% confident digits in 690 steps, not 910 (0.5 spoils DDIM)
        max_steps=1200,  # fixed on every machine (minidiff demo): DDPM 100 digit FID <= 10, >= 75% confident
        lr=3e-3,
        warmup_steps=100,
        ema_decay=0.995,
        mixed_precision="auto",  # bf16 where measured faster (0.8x the time on native bf16; 6.7x on AVX2)
        out_dir="out/tiny",
        checkpoint_every=250,
    ),
}


# The chapter's task on a CPU: a folder of colour images (the butterflies) at 32x32 with the tiny preset's recipe
# and UNet (3 channels): 850 steps, about 10 minutes of fp32 training on a 2-core AVX2 CPU (docs/training.md
# shows what they draw). The precision is measured ("auto"), the warm-up fits the run.
PRESETS["cpu32"] = dataclasses.replace(
    PRESETS["tiny"],
    data=TUTORIAL_DATASET,
    image_size=32,
    flip=True,
    max_steps=850,  # 10 minutes at 1.4 steps/s (fp32 on a 2-core AVX2 CPU: 3.3x the time of a tiny step)
    warmup_steps=50,
    weighting_scheme="none",  # uniform t: what docs/images/cpu32_butterflies.png was trained with
    out_dir="out/cpu32",
)


# diffusers' examples/unconditional_image_generation/train_unconditional.py, flag for flag: its defaults
# and its built-in UNet (36 M parameters at 64x64, six levels). It always clips gradients at 1.0.
PRESETS["diffusers"] = TrainConfig(
    image_size=64,
    block_out_channels=(128, 128, 256, 256, 512, 512),
    layers_per_block=2,
    down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    beta_schedule="linear",
    epochs=100,
    batch_size=16,
    lr=1e-4,
    lr_scheduler="cosine",
    warmup_steps=500,
    adam_beta1=0.95,
    weight_decay=1e-6,
    flip=False,
    grad_clip=1.0,
    out_dir="ddpm-model-64",
    sample_every=10,
    save_model_every=10,
    sampler="ddpm",
    sample_steps=1000,
    logger="tensorboard",
)


def preset(name: str, **overrides) -> TrainConfig:
    """A named TrainConfig ("tutorial", "tiny", "cpu32" or "diffusers") with some fields replaced.

    Args:
        name: the preset's name, a key of `PRESETS`.
        **overrides: TrainConfig fields to replace, e.g. `out_dir="out/tiny"`, `epochs=5`.

    Returns:
        The TrainConfig.
    """
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} is not known; expected one of {list(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown TrainConfig fields {unknown}; expected some of {sorted(fields)}")
    return dataclasses.replace(PRESETS[name], **overrides)


RESUMABLE_CHANGES = {  # fields that may differ between a run and its resumption
    "epochs", "max_steps", "out_dir", "resume", "device", "mixed_precision", "checkpoint_every", "keep_checkpoints",
    "sample_every", "save_model_every", "num_samples", "sample_steps", "sampler", "log_every", "logger",
    "progress", "overwrite", "stream", "data_budget_mb", "num_workers", "time_budget", "eval_every", "eval_samples",
    "cache_dir", "logging_dir",
}  # fmt: skip


def sampling_settings(config: TrainConfig, total_steps: int) -> tuple[str, int]:
    """(sampler, steps) of the sample grids: as set, else the "quick_grid" choice for a quick run (fewer than
    QUICK_RUN steps: DDIM) and the "grid" choice for a longer one (DDPM); steps as set, else the sampler's
    default (DDIM 50, DDPM every timestep)."""
    choice = CHOICES["quick_grid" if total_steps < QUICK_RUN else "grid"]
    if config.sampler is not None and config.sampler != choice.sampler:
        choice = Choice(config.sampler)
    return choice.sampler, steps_for(
        choice.sampler, config.num_train_timesteps, config.sample_steps or choice.steps
    )


def config_dict(config: TrainConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
