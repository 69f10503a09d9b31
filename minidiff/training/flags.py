"""TrainConfig as command-line flags: one table for `minidiff train` and `minidiff demo`.

Each setting answers to a short hyphenated name and, where diffusers' example
`examples/unconditional_image_generation/train_unconditional.py` has one, to that script's name too:

    minidiff train --learning_rate 1e-4 --train_batch_size 16 --resolution 64 --train_data_dir DIR
    minidiff train --lr 1e-4 --batch-size 16 --image-size 64 --data DIR                       # the same run

`--help` shows every default as the chosen preset resolves it; `--preset diffusers` gives that script's
defaults. Each of its flags is either honoured with its meaning there or refused (REFUSED) with the reason
and what to use instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from minidiff.schedulers.samplers import SAMPLER_NAMES, steps_help
from minidiff.training.config import (
    LOGGERS,
    LR_SCHEDULES,
    MIXED_PRECISION,
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    WEIGHTING_SCHEMES,
    ConfigError,
    TrainConfig,
)

# diffusers' names for what minidiff calls otherwise (its other lr schedules are refused by name)
LR_SCHEDULE_ALIASES = {"constant_with_warmup": "constant"}


def logger_name(text: str) -> str:
    if text == "wandb":
        raise argparse.ArgumentTypeError("'wandb' is not supported (minidiff logs offline); use tensorboard")
    if text not in LOGGERS:
        raise argparse.ArgumentTypeError(f"{text!r} is not supported; expected one of {list(LOGGERS)}")
    return text


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def optional_positive(text: str) -> float | None:
    """A positive number, or 'none' for None (to turn off a setting a preset turns on)."""
    if text.strip().lower() == "none":
        return None
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number (or 'none')")
    return value


def lr_schedule(text: str) -> str:
    value = LR_SCHEDULE_ALIASES.get(text, text)
    if value not in LR_SCHEDULES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not supported; expected one of {[*LR_SCHEDULES, *LR_SCHEDULE_ALIASES]}"
        )
    return value


@dataclass(frozen=True)
class Flag:
    names: tuple[str, ...]  # the short name first, then diffusers' spellings
    dest: str  # the TrainConfig field
    help: str
    type: object = None
    choices: tuple | None = None
    action: object = None  # "store_true", argparse.BooleanOptionalAction, ...
    nargs: str | None = None
    const: object = None


FLAGS = (
    # data
    Flag(("--data", "--dataset_name", "--train_data_dir"), "data", "'digits', a folder of images or a hub dataset id"),
    Flag(("--dataset-config", "--dataset_config_name"), "dataset_config_name", "a hub dataset's configuration"),
    Flag(("--cache-dir", "--cache_dir"), "cache_dir", "where `datasets` keeps hub downloads"),
    Flag(("--image-size", "--resolution"), "image_size", "train at this resolution (square)", positive_int),
    Flag(("--channels",), "channels", "1 or 3 (None: 1 for the digits, 3 otherwise)", int),
    Flag(("--center-crop", "--center_crop"), "center_crop", "shorter side to the size, then the central square "
         "(off: squash to a square, as the tutorial)", action=argparse.BooleanOptionalAction),
    Flag(("--flip", "--random_flip"), "flip", "random horizontal flips", action=argparse.BooleanOptionalAction),
    Flag(("--limit",), "limit", "use only the first N images", positive_int),
    Flag(("--skip-bad-images",), "skip_bad_images", "train on the readable images instead of stopping",
         action=argparse.BooleanOptionalAction),
    Flag(("--stream",), "stream", "decode images in workers during training (None: when the data set is "
         "larger than --data-budget-mb)", action=argparse.BooleanOptionalAction),
    Flag(("--data-budget-mb",), "data_budget_mb", "largest data set (uint8) decoded up front", positive_int),
    Flag(("--num-workers", "--dataloader_num_workers"), "num_workers", "decoding workers when streaming", int),
    # noise schedule
    Flag(("--num-train-timesteps", "--ddpm_num_steps"), "num_train_timesteps", "diffusion steps T", positive_int),
    Flag(("--beta-schedule", "--ddpm_beta_schedule"), "beta_schedule", "linear | scaled_linear | "
         "squaredcos_cap_v2 | sigmoid | laplace"),
    Flag(("--prediction-type", "--prediction_type"), "prediction_type", "what the UNet learns",
         choices=PREDICTION_TYPES),
    Flag(("--rescale-betas-zero-snr",), "rescale_betas_zero_snr", "rescale the betas to a zero terminal SNR "
         "(needs v_prediction or sample)", action=argparse.BooleanOptionalAction),
    Flag(("--timestep-spacing",), "timestep_spacing", "timesteps the saved model's samplers visit",
         choices=TIMESTEP_SPACINGS),
    # optimisation
    Flag(("--epochs", "--num_epochs"), "epochs", "epochs (when --max-steps is not given)", positive_int),
    Flag(("--max-steps", "--max_train_steps"), "max_steps", "optimizer steps (wins over --epochs)", positive_int),
    Flag(("--time-budget",), "time_budget", "seconds of training after which the run ends early, everything saved",
         float),
    Flag(("--batch-size", "--train_batch_size"), "batch_size", "images per micro-batch", positive_int),
    Flag(("--grad-accum", "--gradient_accumulation_steps"), "grad_accum", "micro-batches per optimizer step",
         positive_int),
    Flag(("--lr", "--learning_rate"), "lr", "peak learning rate of AdamW", float),
    Flag(("--lr-scheduler", "--lr_scheduler"), "lr_scheduler", "after the warm-up: constant | linear | cosine "
         "(decay to 0; diffusers' constant_with_warmup = constant)", lr_schedule),
    Flag(("--warmup-steps", "--lr_warmup_steps"), "warmup_steps", "linear lr warm-up steps", int),
    Flag(("--adam-beta1", "--adam_beta1"), "adam_beta1", "AdamW's beta1", float),
    Flag(("--adam-beta2", "--adam_beta2"), "adam_beta2", "AdamW's beta2", float),
    Flag(("--weight-decay", "--adam_weight_decay"), "weight_decay", "AdamW's weight decay", float),
    Flag(("--adam-epsilon", "--adam_epsilon"), "adam_epsilon", "AdamW's epsilon", float),
    Flag(("--snr-gamma", "--snr_gamma"), "snr_gamma", "min-SNR-gamma loss weights with this gamma (the paper's: "
         "5); 'none': plain MSE", optional_positive),
    Flag(("--weighting-scheme", "--weighting_scheme"), "weighting_scheme", "density of training timesteps: none "
         "(uniform) | logit_normal (SD3's: t/T = sigmoid(n), n ~ N(logit_mean, logit_std^2))", choices=WEIGHTING_SCHEMES),
    Flag(("--logit-mean", "--logit_mean"), "logit_mean", "logit_normal's mean (> 0: noisier timesteps)", float),
    Flag(("--logit-std", "--logit_std"), "logit_std", "logit_normal's standard deviation", float),
    Flag(("--grad-clip",), "grad_clip", "clip the global gradient norm to this value", float),
    Flag(("--ema-decay", "--ema_max_decay"), "ema_decay", "largest EMA decay of the weights (0 = no EMA)", float),
    Flag(("--ema-warmup",), "ema_warmup", "EMA decay 1 - (1 + n / inv_gamma) ** -power (else (1 + n) / (10 + n))",
         action=argparse.BooleanOptionalAction),
    Flag(("--ema-inv-gamma", "--ema_inv_gamma"), "ema_inv_gamma", "the EMA warm-up's inv_gamma", float),
    Flag(("--ema-power", "--ema_power"), "ema_power", "the EMA warm-up's power", float),
    Flag(("--mixed-precision", "--mixed_precision"), "mixed_precision", "autocast dtype; auto: bf16 "
         "where it is faster (a few steps timed each way on a CPU; bf16 where a GPU has it)", choices=MIXED_PRECISION),
    Flag(("--seed",), "seed", "seed of every random draw", int),
    Flag(("--device",), "device", "auto | cpu | cuda | cuda:1 | ..."),
    Flag(("--fast",), "fast", "the fast engine: data on the device, one CUDA graph per step (a GPU; bf16)",
         action=argparse.BooleanOptionalAction),
    # outputs
    Flag(("--out", "--output_dir"), "out_dir", "output folder"),
    Flag(("--overwrite", "--overwrite_output_dir"), "overwrite", "replace another run's model and checkpoints in "
         "the output folder", action=argparse.BooleanOptionalAction),
    Flag(("--checkpoint-every", "--checkpointing_steps"), "checkpoint_every", "save a checkpoint every N steps",
         positive_int),
    Flag(("--keep-checkpoints", "--checkpoints_total_limit"), "keep_checkpoints", "keep the newest N checkpoints",
         positive_int),
    Flag(("--resume", "--resume_from_checkpoint"), "resume", "continue a run: 'latest' (the newest intact "
         "checkpoint; the flag alone), 'auto' (that, or start fresh) or a checkpoint file", nargs="?",
         const="latest"),
    Flag(("--sample-every", "--save_images_epochs"), "sample_every", "write a sample grid every N epochs",
         positive_int),
    Flag(("--save-model-every", "--save_model_epochs"), "save_model_every", "write the model folder every N epochs",
         positive_int),
    Flag(("--num-samples", "--eval_batch_size"), "num_samples", "images per sample grid (0: none)", int),
    Flag(("--sampler",), "sampler", "sampler of the grids (None: DDIM for short runs, else DDPM)",
         choices=SAMPLER_NAMES),
    Flag(("--sample-steps", "--ddpm_num_inference_steps"), "sample_steps", "denoising steps of the grids (None: "
         f"{steps_help()})", positive_int),
    Flag(("--eval-every",), "eval_every", "steps between digit FID readings (loss.csv, loss.png)", positive_int),
    Flag(("--eval-samples",), "eval_samples", "images per digit FID reading (minidiff eval's sampler and steps; > 64)", positive_int),
    Flag(("--log-every",), "log_every", "steps between loss.csv writes", positive_int),
    Flag(("--logger",), "logger", "also log to TensorBoard (in --logging-dir)", logger_name),
    Flag(("--logging-dir", "--logging_dir"), "logging_dir", "TensorBoard's folder, inside --out unless absolute"),
)  # fmt: skip


# train_unconditional.py's flags minidiff does not take: the reason, and what to use instead
OFFLINE = "minidiff trains offline and never uploads; upload the model folder afterwards with "
OFFLINE += "`huggingface-cli upload REPO_ID OUT/model`"
REFUSED = {
    "--push_to_hub": OFFLINE,
    "--hub_model_id": OFFLINE,
    "--hub_token": OFFLINE,
    "--hub_private_repo": OFFLINE,
    "--enable_xformers_memory_efficient_attention": "minidiff's attention already runs torch's "
    "scaled_dot_product_attention (flash / memory-efficient kernels); leave the flag out",
    "--preserve_input_precision": "minidiff decodes every image to 8 bits per channel; leave the flag out",
}
TAKES_VALUE = {"--hub_model_id", "--hub_token"}

# the UNet2DModel keys of a --model_config_name_or_path JSON: those TrainConfig sets, those minidiff
# derives from other flags, and the rest, which must keep UNet2DModel's defaults (a test holds these to
# minidiff.models.unet_2d and diffusers)
UNET_CONFIG_FIELDS = ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
                      "norm_num_groups")  # fmt: skip
UNET_DERIVED = ("sample_size", "in_channels", "out_channels", "num_train_timesteps")
UNET_DEFAULTS = {
    "center_input_sample": False, "time_embedding_type": "positional", "time_embedding_dim": None,
    "freq_shift": 0, "flip_sin_to_cos": True, "mid_block_type": "UNetMidBlock2D", "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0,
    "act_fn": "silu", "attention_head_dim": 8, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None, "num_class_embeds": None,
}  # fmt: skip


MODEL_CONFIG = Flag(("--model-config", "--model_config_name_or_path"), "model_config", "")


class _Refuse(argparse.Action):
    """A train_unconditional.py flag minidiff does not take: a usage error with the reason."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is not supported: {REFUSED[option_string]}")


def add_train_flags(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """Every flag of FLAGS, with `defaults`' values shown in --help; plus --use_ema, --quiet, diffusers'
    --model_config_name_or_path and --local_rank, and its flags that are refused with a reason."""
    for flag in FLAGS:
        options = dict(
            dest=flag.dest, default=getattr(defaults, flag.dest), help=flag.help + " (default: %(default)s)"
        )
        if flag.action is not None:
            options["action"] = flag.action
        else:
            options.update(type=flag.type, choices=flag.choices, nargs=flag.nargs, const=flag.const)
        parser.add_argument(
            *flag.names, **{k: v for k, v in options.items() if v is not None or k == "default"}
        )
    parser.add_argument(
        "--use-ema", "--use_ema", dest="use_ema", action="store_true",
        help="diffusers' EMA: the inv_gamma / power warm-up up to --ema-decay (0.9999 unless set)",
    )  # fmt: skip
    parser.add_argument(
        "--model-config", "--model_config_name_or_path", dest="model_config", default=None,
        help="a UNet2DModel config.json (or its folder): the architecture to train",
    )  # fmt: skip
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=-1,
        help="set by launchers; ignored, as minidiff reads LOCAL_RANK from the environment (torchrun sets it)",
    )  # fmt: skip
    for name in REFUSED:
        parser.add_argument(
            name, action=_Refuse, nargs=1 if name in TAKES_VALUE else 0, help=argparse.SUPPRESS
        )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace, defaults: TrainConfig) -> TrainConfig:
    """The TrainConfig the parsed flags describe (their defaults were `defaults`' values)."""
    values = {flag.dest: getattr(args, flag.dest) for flag in FLAGS}
    if args.use_ema:
        values["ema_warmup"] = True
        if values["ema_decay"] == 0:
            values["ema_decay"] = 0.9999  # train_unconditional.py's --ema_max_decay
    if getattr(args, "model_config", None):
        values.update(unet_settings(args.model_config))
    values["progress"] = not args.quiet
    return dataclasses.replace(defaults, **values)


def unet_settings(path: str) -> dict:
    """The TrainConfig fields a UNet2DModel config.json (a file, or a folder holding one) sets; a key
    minidiff cannot train with (a value other than UNet2DModel's default) is refused by name."""
    file = Path(path) / "config.json" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise ConfigError("{model_config}: no such UNet config file (expected a config.json or its folder)",
                          model_config=path)  # fmt: skip
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{{model_config}}: not a JSON file ({err})", model_config=path) from err
    settings = {
        k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in UNET_CONFIG_FIELDS
    }
    other = {}
    for key, value in config.items():
        if key.startswith("_") or key in UNET_CONFIG_FIELDS or key in UNET_DERIVED:
            continue
        if key not in UNET_DEFAULTS or UNET_DEFAULTS[key] != value:
            other[key] = value
    if other:
        refused = ", ".join(f"{k}={v!r}" for k, v in sorted(other.items()))
        raise ConfigError(
            f"{{model_config}} sets {refused}; minidiff trains UNets that differ from UNet2DModel's defaults "
            f"only in {', '.join(UNET_CONFIG_FIELDS)} (the image size and channels come from --resolution and "
            "--channels)", model_config=path,
        )  # fmt: skip
    return settings


def typed_flags(argv: list[str]) -> dict[str, tuple[str, str | None]]:
    """TrainConfig field -> (the flag as typed, its value as typed; None for a switch), from `argv`."""
    names = {"--model-config": MODEL_CONFIG, "--model_config_name_or_path": MODEL_CONFIG}
    for flag in FLAGS:
        for name in flag.names:
            names[name] = flag
            if flag.action is argparse.BooleanOptionalAction:
                names["--no-" + name[2:]] = flag
    typed = {}
    for i, word in enumerate(argv):
        name, eq, text = word.partition("=")
        flag = names.get(name)
        if flag is None:
            continue
        if not eq:
            switch = flag.action is not None or (
                flag.nargs == "?" and (i + 1 == len(argv) or argv[i + 1][:2] == "--")
            )
            text = None if switch else argv[i + 1] if i + 1 < len(argv) else None
        typed[flag.dest] = (name, text)
    return typed


def flag_name(dest: str) -> str | None:
    """The short flag of a TrainConfig field (None when no flag sets it)."""
    return next((flag.names[0] for flag in (*FLAGS, MODEL_CONFIG) if flag.dest == dest), None)


def in_users_words(err: Exception, argv: list[str]) -> str:
    """The error's message; a refused setting (ConfigError) named as the flag the user typed in `argv`."""
    import errno

    if isinstance(err, OSError) and err.errno == errno.ENOSPC and "free some space" not in str(err):
        return (
            f"{err}; every file saved before is intact (writes are atomic): free some space, then run again "
            "(--resume continues a training run from its last checkpoint)"
        )
    if not isinstance(err, ConfigError):
        return str(err).strip() or type(err).__name__
    typed = typed_flags(argv)

    def spell(field: str, value, how: str) -> str:
        flag, text = typed.get(field, (flag_name(field), None))
        if flag is None:
            return f"{field}={value!r}" if how == "" else field
        if how in ("name", "on"):
            return flag_name(field) if flag.startswith("--no-") else flag
        return f"{flag} {text if text is not None else value}"

    return err.render(spell)


# what a train_unconditional.py command line leaves to the defaults, where the presets differ
DIFFUSERS_DEFAULTS_SAID = ("lr", "lr_scheduler", "warmup_steps", "batch_size", "image_size", "epochs",
                           "beta_schedule", "adam_beta1", "weight_decay", "grad_clip")  # fmt: skip


def diffusers_defaults_note(argv: list[str], preset_name: str | None, config: TrainConfig) -> str | None:
    """A command line in diffusers' spelling on another preset: a note saying which defaults differ from
    its script's (None when there is nothing to say)."""
    from minidiff.training.config import PRESETS

    typed = typed_flags(argv)
    diffusers_names = {name for flag in FLAGS for name in flag.names[1:]}
    if preset_name in (None, "diffusers") or not any(f in diffusers_names for f, _ in typed.values()):
        return None
    theirs = PRESETS["diffusers"]
    differ = [
        f"{flag_name(k)} {getattr(config, k)} (its {getattr(theirs, k)})"
        for k in DIFFUSERS_DEFAULTS_SAID
        if k not in typed and getattr(config, k) != getattr(theirs, k)
    ]
    if not differ:
        return None
    return (
        f"note: settings not given come from the {preset_name} preset, not train_unconditional.py: "
        f"{', '.join(differ)}, and the UNet; --preset diffusers gives that script's defaults"
    )


def preset_in(argv: list[str], default: str) -> str:
    """The --preset named on the command line (looked up before parsing: --help shows its defaults)."""
    for i, word in enumerate(argv):
        if word == "--diffusers-defaults":
            return "diffusers"
        if word == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith("--preset="):
            return word.split("=", 1)[1]
    return default
