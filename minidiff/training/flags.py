"""TrainConfig as command-line flags: one table for `minidiff train` and `minidiff demo`.

Each setting answers to a short hyphenated name and, where diffusers' example
`examples/unconditional_image_generation/train_unconditional.py` has one, to that script's name too:

    minidiff train --learning_rate 1e-4 --train_batch_size 16 --resolution 64 --train_data_dir DIR
    minidiff train --lr 1e-4 --batch-size 16 --image-size 64 --data DIR                       # the same run

`--help` shows every default as the chosen preset resolves it.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from minidiff.training.config import (
    LOGGERS,
    LR_SCHEDULES,
    MIXED_PRECISION,
    PREDICTION_TYPES,
    SAMPLERS,
    TIMESTEP_SPACINGS,
    TrainConfig,
)

# diffusers' names for what minidiff calls otherwise (its other lr schedules are refused by name)
LR_SCHEDULE_ALIASES = {"constant_with_warmup": "constant"}


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
    Flag(("--grad-clip",), "grad_clip", "clip the global gradient norm to this value", float),
    Flag(("--ema-decay", "--ema_max_decay"), "ema_decay", "largest EMA decay of the weights (0 = no EMA)", float),
    Flag(("--ema-warmup",), "ema_warmup", "EMA decay 1 - (1 + n / inv_gamma) ** -power (else (1 + n) / (10 + n))",
         action=argparse.BooleanOptionalAction),
    Flag(("--ema-inv-gamma", "--ema_inv_gamma"), "ema_inv_gamma", "the EMA warm-up's inv_gamma", float),
    Flag(("--ema-power", "--ema_power"), "ema_power", "the EMA warm-up's power", float),
    Flag(("--mixed-precision", "--mixed_precision"), "mixed_precision", "autocast dtype",
         choices=MIXED_PRECISION),
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
    Flag(("--sampler",), "sampler", "sampler of the grids (None: DDIM for short runs, else DDPM)", choices=SAMPLERS),
    Flag(("--sample-steps", "--ddpm_num_inference_steps"), "sample_steps", "denoising steps of the grids (None: 50 "
         "for DDIM, T for DDPM)", positive_int),
    Flag(("--eval-every",), "eval_every", "steps between digit FID readings (loss.csv, loss.png)", positive_int),
    Flag(("--eval-samples",), "eval_samples", "images per digit FID reading (DDIM, 50 steps; > 64)", positive_int),
    Flag(("--log-every",), "log_every", "steps between loss.csv writes", positive_int),
    Flag(("--logger",), "logger", "also log to TensorBoard (out/logs)", choices=LOGGERS),
)  # fmt: skip


def add_train_flags(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """Every flag of FLAGS, with `defaults`' values shown in --help; plus --use_ema and --quiet."""
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
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace, defaults: TrainConfig) -> TrainConfig:
    """The TrainConfig the parsed flags describe (their defaults were `defaults`' values)."""
    values = {flag.dest: getattr(args, flag.dest) for flag in FLAGS}
    if args.use_ema:
        values["ema_warmup"] = True
        if values["ema_decay"] == 0:
            values["ema_decay"] = 0.9999  # train_unconditional.py's --ema_max_decay
    values["progress"] = not args.quiet
    return dataclasses.replace(defaults, **values)
