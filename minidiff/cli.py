"""The `minidiff` command. Each subcommand is a thin shell over a library function.

    minidiff demo                                   # train the tiny preset on the embedded digits -> out/demo/
    minidiff train --preset tutorial --data DIR     # the butterfly tutorial (a GPU job)
    minidiff sample --model DIR --num 16 --sampler ddim --steps 50   # samplers: minidiff/schedulers/samplers.py
    minidiff noise --schedule linear --beta-start 0.001 --beta-end 0.004
    minidiff parity --model DIR                     # per-layer comparison with diffusers
    minidiff eval --model DIR --sampler ddim --steps 50   # digit FID / KID of 500 samples -> eval.json

Heavy modules (torch models, datasets, matplotlib, diffusers) are imported inside the subcommands, after
the settings and paths are checked, so `minidiff --help` and a wrong path answer at once. Errors print one
line naming the flag as it was typed and exit with status 1; warnings are one `warning: ...` line each
(`--debug`, before or after the subcommand, shows tracebacks and the warnings' full text); bad flags are
argparse errors (status 2); an interrupted training run exits 130 (SIGINT) or 143 (SIGTERM) after saving
its work. Sampling that takes more than a few seconds is announced with its expected time first.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import time
import warnings
from pathlib import Path

# the demo's fixed steps, time cap, sweep and samples: minidiff/training/demo.py, minidiff/schedulers/samplers.py
from minidiff.schedulers.samplers import DEMO_SWEEP as DEMO_QUALITY_SWEEP
from minidiff.training.demo import DEMO_QUALITY_SAMPLES


class _TqdmHandler(logging.Handler):
    """Log lines through tqdm.write, so they do not tear the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"warning: {text}" if record.levelno >= logging.WARNING else text


def _setup_logging() -> None:
    logger = logging.getLogger("minidiff")
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(_Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _say(text: str) -> None:
    """A line on stderr that does not tear a progress bar."""
    if "tqdm" in sys.modules:
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)


@contextlib.contextmanager
def _clean_warnings(debug: bool):
    """Every warning as one `warning: ...` line (its first); with --debug its full text and origin."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message).strip()
        if debug:
            _say(f"warning: {text}\n  ({category.__name__} at {filename}:{lineno})")
        else:
            _say(f"warning: {text.splitlines()[0] if text else category.__name__}")

    previous = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def _in_users_words(err: Exception, argv: list[str]) -> str:
    """The error's message; a refused setting (ConfigError) named as the flag the user typed."""
    from minidiff.training.config import ConfigError
    from minidiff.training.flags import flag_name, typed_flags

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


# ---- train / demo ---------------------------------------------------------------------------------------
def _preset_in(argv: list[str], default: str) -> str:
    """The --preset named on the command line (looked up before parsing: --help shows its defaults)."""
    for i, word in enumerate(argv):
        if word == "--diffusers-defaults":
            return "diffusers"
        if word == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith("--preset="):
            return word.split("=", 1)[1]
    return default


def _defaults(command: str, preset_name: str):
    """The TrainConfig a command starts from: the preset, and for the demo out/demo, replaced each time."""
    import dataclasses

    from minidiff.training.config import PRESETS

    if preset_name not in PRESETS:  # argparse's choices name it; any preset's defaults do meanwhile
        preset_name = "tutorial"
    defaults = PRESETS[preset_name]
    if command == "demo":  # its own samples.png comes from the quality runs: no grid from training
        from minidiff.training.demo import demo_config

        return demo_config()
    return dataclasses.replace(defaults, data="digits")  # one default data set, offline: the embedded digits


def _steps(n: int) -> str:
    return f"{n} step" + "s" * (n != 1)


def _report(result, extra: dict[str, Path] | None = None) -> None:
    """What this start did (steps, time, speed), where the run stands, and the files that exist."""
    done = result.steps - result.first_step
    rate = done / result.train_seconds if result.train_seconds > 0 else float("nan")
    resumed = f"; resumed at step {result.first_step}, the run now has {_steps(result.steps)}"
    epochs = f"{result.epochs_completed} epoch" + "s" * (result.epochs_completed != 1)
    print(
        f"trained {_steps(done)} in {result.seconds:.0f} s; {rate:.2f} steps/s ({result.train_seconds:.0f} s "
        f"of steps){resumed if result.first_step else ''}; {epochs} in all"
    )
    print(
        f"final loss (mean of the last 100 steps): {sum(result.losses[-100:]) / len(result.losses[-100:]):.4f}"
    )
    files = {
        "samples": result.samples_png,
        "loss plot": result.loss_png,
        "loss per step": result.loss_csv,
        "model (pipeline folder)": result.model_dir,
        **(extra or {}),
    }
    for grid in result.sample_grids:
        files[f"samples {grid.stem}"] = grid
    for ckpt in result.checkpoints:
        files[f"checkpoint {ckpt.stem}"] = ckpt
    files = {what: path for what, path in files.items() if path is not None and Path(path).exists()}
    width = max(len(k) for k in files)
    for what, path in files.items():
        print(f"  {what:<{width}}  {path}")


def _train(args: argparse.Namespace):
    """Train as the flags say; an interrupted run says where it stopped and how to go on. Settings, paths
    and the output folder's lock are checked before torch is imported: a wrong path fails at once."""
    from minidiff.training.flags import config_from_args
    from minidiff.training.preflight import check_before_start, hold_out_dir

    config = config_from_args(args, args.defaults)
    _note_diffusers_defaults(args, config)
    check_before_start(config)
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun rank 0 writes (and locks)
    with hold_out_dir(config.out_dir) if main_process else contextlib.nullcontext():
        return config, _train_now(args, config)


def _train_now(args: argparse.Namespace, config):
    from minidiff.training import train
    from minidiff.training.loop import TrainingInterrupted

    _setup_logging()
    try:
        return train(config)
    except TrainingInterrupted as stop:
        _say_interrupted(args, stop)
        raise


def _say_interrupted(args: argparse.Namespace, stop) -> None:
    """Where an interrupted run stopped and the command that goes on from there."""
    import shlex

    argv = [word for word in sys.argv[1:] if word != "--overwrite"]
    resume = [] if "--resume" in argv or "--resume_from_checkpoint" in argv else ["--resume"]
    print(f"minidiff {args.command}: interrupted: {stop}", file=sys.stderr)
    if stop.checkpoint is not None:
        print(f"continue with: minidiff {shlex.join(argv + resume)}", file=sys.stderr)


# what a train_unconditional.py command line leaves to the defaults, where the presets differ
DIFFUSERS_DEFAULTS_SAID = ("lr", "lr_scheduler", "warmup_steps", "batch_size", "image_size", "epochs",
                           "beta_schedule", "adam_beta1", "weight_decay", "grad_clip")  # fmt: skip


def _note_diffusers_defaults(args: argparse.Namespace, config) -> None:
    """A command line in diffusers' spelling on another preset: say which defaults differ from its script's."""
    from minidiff.training.config import PRESETS
    from minidiff.training.flags import FLAGS, flag_name, typed_flags

    typed = typed_flags(args.argv)
    diffusers_names = {name for flag in FLAGS for name in flag.names[1:]}
    if getattr(args, "preset", None) in (None, "diffusers") or not any(
        f in diffusers_names for f, _ in typed.values()
    ):
        return
    theirs = PRESETS["diffusers"]
    differ = [
        f"{flag_name(k)} {getattr(config, k)} (its {getattr(theirs, k)})"
        for k in DIFFUSERS_DEFAULTS_SAID
        if k not in typed and getattr(config, k) != getattr(theirs, k)
    ]
    if differ:
        _say(
            f"note: settings not given come from the {args.preset} preset, not train_unconditional.py: "
            f"{', '.join(differ)}, and the UNet; --preset diffusers gives that script's defaults"
        )


def cmd_train(args: argparse.Namespace) -> int:
    _, result = _train(args)
    from minidiff.training.distributed import is_main  # (torch is loaded by now)

    if is_main():  # under torchrun: one report (rank 0 wrote the files)
        _report(result)
    return 0


def _noise_pictures(noise_scheduler, x0, out_dir: Path, seed: int) -> dict[str, Path]:
    """noise.png and snr.png (minidiff.training.demo.noise_pictures); prints the terminal-signal warning."""
    from minidiff.training.demo import noise_pictures

    return noise_pictures(noise_scheduler, x0, out_dir, seed)


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the tiny preset for its fixed steps, then measure what the model draws
    (minidiff.training.demo.run_demo); print where everything is and the quality table."""
    from minidiff.training.demo import run_demo
    from minidiff.training.flags import config_from_args
    from minidiff.training.loop import TrainingInterrupted
    from minidiff.training.preflight import check_before_start

    config = config_from_args(args, args.defaults)
    check_before_start(config)  # bad settings and paths fail before torch loads; run_demo checks the rest
    print(
        f"minidiff demo: the tiny preset on {args.data!r} ({args.image_size}x{args.image_size}), {args.max_steps} "
        f"steps (the same model on every machine; time cap {args.time_budget or 0:.0f} s); then "
        f"{args.quality_samples} samples per sampler for the quality plot", flush=True,
    )  # fmt: skip
    _setup_logging()
    try:
        demo = run_demo(config, args.quality_settings, args.quality_samples)
    except TrainingInterrupted as stop:
        _say_interrupted(args, stop)
        raise
    _report(demo.train, demo.files)
    print("\n".join(demo.summary()))
    print(f"demo finished in {demo.seconds:.0f} s; everything is in {demo.train.out_dir}")
    return 0


# ---- sample / noise / parity ------------------------------------------------------------------------
def _local_pipeline_checked(model: str) -> None:
    """A local-looking --model that is not a pipeline folder fails before torch is imported."""
    from minidiff.files import looks_local

    index = Path(model).expanduser() / "model_index.json"
    if looks_local(model) and not index.is_file():
        raise FileNotFoundError(
            f"--model {model}: {index} does not exist; expected a pipeline folder (OUT/model)"
        )


def _say_cost(unet, what: str, batch: int, steps: int, batches: int = 1, cheaper: bool = True) -> None:
    """Print the expected time of sampling before it starts, when it is more than a few seconds, and of
    the samplers of minidiff/schedulers/samplers.py that take fewer steps by default (`cheaper`)."""
    from minidiff.cost import FEW_SECONDS, cheaper_samplers, cost_line, sampling_seconds, step_seconds

    step = step_seconds(unet, batch)
    if sampling_seconds(step, steps, batches) > FEW_SECONDS:
        options = cheaper_samplers(steps) if cheaper else []
        how = "; --sampler NAME --steps N chooses" if options else ""
        print(f"expected: {cost_line(what, step, steps, batches, options)}{how}", flush=True)


def cmd_sample(args: argparse.Namespace) -> int:
    _local_pipeline_checked(args.model)
    import torch

    from minidiff.pipelines.pipeline_ddpm import DDPMPipeline
    from minidiff.schedulers.samplers import default_steps, scheduler_for
    from minidiff.training.preflight import pick_device
    from minidiff.viz import enlarged, save_grid

    pipeline = DDPMPipeline.from_pretrained(args.model)
    pipeline.scheduler = scheduler_for(args.sampler, pipeline.scheduler.config)
    device = pick_device(args.device)
    pipeline.to(device)
    steps = args.steps or default_steps(args.sampler, pipeline.scheduler.config.num_train_timesteps)
    if not args.fast:  # the fast sampler's CUDA graphs and bf16 make a plain forward's time no guide
        _say_cost(pipeline.unet, f"{args.num} images, {args.sampler} with {steps} steps", args.num, steps)
    started = time.perf_counter()
    if args.fast:  # minidiff.fast: on-device step tables, one CUDA graph per step (bf16 on a GPU)
        from minidiff.fast import sample
        from minidiff.viz import numpy_to_pil

        if args.sampler != "ddpm":
            raise ValueError(f"--fast samples with DDPM; got --sampler {args.sampler!r}")
        images = sample(
            pipeline.unet, pipeline.scheduler, args.num, seed=args.seed, num_inference_steps=steps
        )
        images = numpy_to_pil(images.cpu().permute(0, 2, 3, 1).numpy())  # [0, 1] NCHW -> PIL
    else:
        images = pipeline(
            batch_size=args.num,
            generator=torch.Generator(device).manual_seed(args.seed),
            num_inference_steps=steps,
            eta=args.eta,
            progress=not args.quiet,
        ).images
    path = save_grid(enlarged(images), args.out)  # small images enlarged to 64 px, nearest neighbour
    print(f"{args.num} images, {args.sampler} with {steps} steps, in {time.perf_counter() - started:.1f} s")
    print(f"  samples  {path}")
    return 0


def cmd_noise(args: argparse.Namespace) -> int:
    from minidiff.data import load_dataset
    from minidiff.schedulers.scheduling_ddpm import DDPMScheduler

    scheduler = DDPMScheduler(
        num_train_timesteps=args.num_train_timesteps,
        beta_start=args.beta_start,
        beta_end=args.beta_end,
        beta_schedule=args.schedule,
    )
    if args.index < 0:
        raise ValueError(f"--index {args.index}; expected the index of an image, >= 0")
    dataset = load_dataset(args.data, args.image_size, flip=False, limit=args.index + 1)
    if args.index >= len(dataset):
        raise ValueError(f"--index {args.index}; {args.data!r} holds only {len(dataset)} images")
    x0 = dataset[args.index][None]  # (1, C, H, W)
    files = _noise_pictures(scheduler, x0, Path(args.out), args.seed)
    alpha_bar_T = float(scheduler.alphas_cumprod[-1])
    print(f"{args.schedule} schedule, T = {args.num_train_timesteps}: alpha_bar_T = {alpha_bar_T:.4g}")
    for what, path in files.items():
        print(f"  {what:<13}  {path}")
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    import torch

    from minidiff.parity import compare_unet, load_both_unets

    reference, ours = load_both_unets(args.model)
    config = ours.config
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    generator = torch.Generator().manual_seed(args.seed)
    sample = torch.randn(args.batch_size, config.in_channels, size, size, generator=generator)  # (B, C, H, W)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    report = compare_unet(
        reference, ours, sample, torch.tensor(args.timestep), dtype=dtype, device=args.device
    )
    print(report.table())
    return 0


# ---- eval ----------------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    import json

    _local_pipeline_checked(args.model)
    from minidiff.files import atomic_write_text
    from minidiff.quality.evaluate import evaluate, format_report, load_pipeline
    from minidiff.schedulers.samplers import default_steps
    from minidiff.training.preflight import pick_device

    pipeline = load_pipeline(args.model).to(pick_device(args.device))
    steps = args.steps or default_steps(args.sampler, pipeline.scheduler.config.num_train_timesteps)
    batch = min(args.batch_size, args.num_samples)
    _say_cost(pipeline.unet, f"{args.num_samples} samples, {args.sampler} with {steps} steps", batch, steps,
              -(-args.num_samples // batch))  # fmt: skip
    del pipeline
    local = Path(args.model).is_dir()
    out = Path(args.out) if args.out else (Path(args.model) / "eval.json" if local else Path("eval.json"))
    report = evaluate(
        args.model,
        num_samples=args.num_samples,
        sampler=args.sampler,
        steps=args.steps,
        metrics=args.metrics,
        data=args.data,
        seed=args.seed,
        batch_size=args.batch_size,
        device=pick_device(args.device),
        cache_dir=args.cache_dir or (None if local else out.parent / "eval" / "reference"),
        progress=not args.quiet,
    )
    for note in report["notes"]:
        print(f"note: {note}")
    print(format_report(report))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"  {'eval.json':<30}  {out}")
    return 0


def _add_sampler_flags(parser: argparse.ArgumentParser, default: str = "ddpm") -> None:
    """--sampler (the names of minidiff/schedulers/samplers.py) and --steps (default: the sampler's own count)."""
    from minidiff.schedulers.samplers import SAMPLER_NAMES, steps_help
    from minidiff.training.flags import positive_int

    parser.add_argument("--sampler", choices=SAMPLER_NAMES, default=default, help="default: %(default)s")
    parser.add_argument("--steps", type=positive_int, default=None, help=f"sampling steps ({steps_help()})")


def _add_eval_parser(commands, common: argparse.ArgumentParser) -> None:
    from minidiff.training.flags import positive_int

    ev = commands.add_parser(
        "eval", parents=[common], help="sample a pipeline and measure digit FID / KID (and Inception FID)"
    )
    ev.add_argument("--model", required=True, help="pipeline folder (minidiff or diffusers) or hub id")
    ev.add_argument(  # 500 = minidiff.quality.evaluate.DEFAULT_NUM_SAMPLES (not imported: --help stays light)
        "--num-samples", type=positive_int, default=500, help="images to sample (FID depends on it)"
    )
    # = minidiff.quality.evaluate.DEFAULT_SAMPLER: minutes on a CPU where DDPM's T steps take hours
    _add_sampler_flags(ev, default="dpmsolver++")
    ev.add_argument("--metrics", default="digit", help="comma list out of digit, inception (minidiff[fid])")
    ev.add_argument("--data", default="digits", help="the real images: 'digits', a folder, or a hub id")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--batch-size", type=positive_int, default=250, help="images per sampling batch")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--out", default=None, help="eval.json path (default: MODEL/eval.json)")
    ev.add_argument(
        "--cache-dir",
        default=None,
        help="folder of cached reference features (default: MODEL/eval/reference)",
    )
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_eval)


# ---- the parser ------------------------------------------------------------------------------------------
def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `minidiff` parser; `argv` only decides which preset's defaults `train --help` shows."""
    from minidiff import __version__
    from minidiff.schedulers.samplers import SAMPLER_NAMES
    from minidiff.training.config import DEMO_SAMPLES
    from minidiff.training.flags import add_train_flags, positive_int

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="minidiff",
        description="DDPM diffusion in plain PyTorch: train, sample, inspect, compare with diffusers.",
    )
    parser.add_argument("--version", action="version", version=f"minidiff {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    common = argparse.ArgumentParser(add_help=False)  # --debug after the subcommand works too
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", parents=[common], help="train the tiny preset on the embedded digits; write out/demo/",
        description="Train the tiny preset on the embedded digits into out/demo (replaced on each run); "
        "then its digit FID against sampling steps, the noising strip and the SNR plot. Takes every flag of "
        "`minidiff train`.",
    )  # fmt: skip
    demo.set_defaults(func=cmd_demo, defaults=_defaults("demo", "tiny"))
    demo_samples = ":".join(map(str, DEMO_SAMPLES))
    add_train_flags(demo, _defaults("demo", "tiny"))
    demo.add_argument(
        "--quality-samples", type=positive_int, default=DEMO_QUALITY_SAMPLES,
        help="images per sampler for the digit FID and quality_vs_steps.png (> 64; default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--quality-settings", default=DEMO_QUALITY_SWEEP,
        help=f"the samplers of the quality plot; samples.png comes from the tiny preset's sampler ({demo_samples}) "
        "when it is one of them, else from the first (default: %(default)s)",
    )  # fmt: skip

    preset_name = _preset_in(argv, "tutorial")
    train = commands.add_parser(
        "train", parents=[common], help="train a DDPM (presets: tiny, tutorial, cpu32, diffusers)",
        description="Train a DDPM. Every flag also answers to the name diffusers' train_unconditional.py gives "
        "it (shown beside it), and that script's other flags are honoured or refused with the reason. Defaults "
        "are the chosen --preset's: tutorial (the butterfly tutorial: lr 4e-4 constant, batch 64, 32 px, "
        "30 epochs), tiny (the digits demo), cpu32 (a folder of colour images at 32 px on a CPU: the tiny recipe, "
        "850 steps) or diffusers (train_unconditional.py's own: lr 1e-4 cosine with 500 warm-up steps, batch "
        "16, 64 px, 100 epochs, its 6-level UNet). --data defaults to the embedded digits (offline) for every "
        "preset.",
    )  # fmt: skip
    train.add_argument(
        "--preset",
        choices=["tiny", "tutorial", "cpu32", "diffusers"],
        default="tutorial",
        help="starting settings",
    )
    train.add_argument(
        "--diffusers-defaults", dest="preset", action="store_const", const="diffusers",
        help="the same as --preset diffusers: train_unconditional.py's defaults",
    )  # fmt: skip
    train.set_defaults(func=cmd_train, defaults=_defaults("train", preset_name))
    add_train_flags(train, _defaults("train", preset_name))

    sample = commands.add_parser(
        "sample", parents=[common], help="sample a grid of images from a pipeline folder or hub id"
    )
    sample.add_argument("--model", required=True, help="pipeline folder (e.g. out/demo/model) or hub id")
    sample.add_argument("--num", type=positive_int, default=16, help="number of images")
    _add_sampler_flags(sample)
    # the flag's former name, still accepted (not shown in --help)
    sample.add_argument("--scheduler", dest="sampler", choices=SAMPLER_NAMES, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)  # fmt: skip
    sample.add_argument("--eta", type=float, default=0.0, help="DDIM's noise scale (0 = deterministic)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--device", default="auto")
    sample.add_argument("--out", default="samples.png", help="PNG file of the grid")
    sample.add_argument("--quiet", action="store_true", help="no progress bar")
    sample.add_argument(
        "--fast", action="store_true", help="minidiff.fast sampler (DDPM; CUDA graph + bf16 on a GPU)"
    )
    sample.set_defaults(func=cmd_sample)

    noise = commands.add_parser(
        "noise", parents=[common], help="the noising strip and the log-SNR plot of a schedule"
    )
    noise.add_argument("--data", default="digits", help="where the clean image comes from")
    noise.add_argument("--index", type=int, default=0, help="which image of the data")
    noise.add_argument("--image-size", type=positive_int, default=32)
    noise.add_argument(
        "--schedule", default="squaredcos_cap_v2", help="linear | scaled_linear | squaredcos_cap_v2 | ..."
    )
    noise.add_argument("--beta-start", type=float, default=0.0001)
    noise.add_argument("--beta-end", type=float, default=0.02)
    noise.add_argument("--num-train-timesteps", type=positive_int, default=1000)
    noise.add_argument("--seed", type=int, default=0)
    noise.add_argument("--out", default="out/noise", help="folder for noise.png and snr.png")
    noise.set_defaults(func=cmd_noise)

    parity = commands.add_parser(
        "parity", parents=[common], help="per-layer comparison of a UNet in minidiff and diffusers"
    )
    parity.add_argument("--model", required=True, help="pipeline folder (its unet/) or UNet folder")
    parity.add_argument("--timestep", type=int, default=500)
    parity.add_argument("--batch-size", type=positive_int, default=1)
    parity.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parity.add_argument("--device", default=None, help="run both models on this device (default: cpu)")
    parity.add_argument("--seed", type=int, default=0)
    parity.set_defaults(func=cmd_parity)
    _add_eval_parser(commands, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # errors name the flags as typed
    if args.command is None:
        parser.print_help()
        return 0
    try:
        with _clean_warnings(args.debug):
            return args.func(args)
    except KeyboardInterrupt as stop:  # TrainingInterrupted says where it stopped (_train printed it)
        if not hasattr(stop, "exit_code"):
            print(f"minidiff {args.command}: interrupted", file=sys.stderr)
        return getattr(stop, "exit_code", 130)
    except Exception as err:  # the library's errors name the bad value; no traceback without --debug
        if args.debug:
            raise
        print(f"minidiff {args.command}: error: {_in_users_words(err, argv)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
