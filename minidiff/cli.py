"""The `minidiff` command. Each subcommand is a thin shell over a library function.

    minidiff demo                                   # train the tiny preset on the embedded digits -> out/demo/
    minidiff train --preset tutorial --data DIR     # the butterfly tutorial (a GPU job)
    minidiff sample --model DIR --num 16 --scheduler ddim --steps 50
    minidiff noise --schedule linear --beta-start 0.001 --beta-end 0.004
    minidiff parity --model DIR                     # per-layer comparison with diffusers
    minidiff eval --model DIR --sampler ddim --steps 50   # digit FID / KID of 500 samples -> eval.json

Heavy modules (torch models, datasets, matplotlib, diffusers) are imported inside the subcommands, so
`minidiff --help` answers quickly. Errors from the library print their whole message and exit with
status 1 (`--debug`, before or after the subcommand, shows the traceback); bad flags are argparse errors
(status 2); an interrupted training run exits 130 (SIGINT) or 143 (SIGTERM) after saving its work.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


class _TqdmHandler(logging.Handler):
    """Log lines through tqdm.write, so they do not tear the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def _setup_logging() -> None:
    logger = logging.getLogger("minidiff")
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


# ---- train / demo ---------------------------------------------------------------------------------------
DEMO_TIME_BUDGET = 150.0  # seconds of training (the tiny preset stops at 1,800 steps anyway)
DEMO_QUALITY_SAMPLES = 250  # per sampler (> 64 for a defined FID): one batch, the sweep well under a minute


def _preset_in(argv: list[str], default: str) -> str:
    """The --preset named on the command line (looked up before parsing: --help shows its defaults)."""
    for i, word in enumerate(argv):
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
        defaults = dataclasses.replace(
            defaults, out_dir="out/demo", overwrite=True, time_budget=DEMO_TIME_BUDGET, num_samples=0
        )
    return defaults


def _report(result, extra: dict[str, Path] | None = None) -> None:
    rate = result.steps / result.train_seconds if result.train_seconds > 0 else float("nan")
    print(
        f"trained {result.steps} steps ({result.epochs_completed} epochs) in {result.seconds:.0f} s; "
        f"{rate:.2f} steps/s ({result.train_seconds:.0f} s of steps)"
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
    width = max(len(k) for k in files)
    for what, path in files.items():
        print(f"  {what:<{width}}  {path}")


def _train(args: argparse.Namespace):
    """Train as the flags say; an interrupted run says where it stopped and how to go on."""
    from minidiff.training import train
    from minidiff.training.flags import config_from_args
    from minidiff.training.loop import TrainingInterrupted

    _setup_logging()
    config = config_from_args(args, args.defaults)
    try:
        return config, train(config)
    except TrainingInterrupted as stop:
        import shlex

        argv = [word for word in sys.argv[1:] if word != "--overwrite"]
        resume = [] if "--resume" in argv or "--resume_from_checkpoint" in argv else ["--resume"]
        print(f"minidiff {args.command}: interrupted: {stop}", file=sys.stderr)
        if stop.checkpoint is not None:
            print(f"continue with: minidiff {shlex.join(argv + resume)}", file=sys.stderr)
        raise


def cmd_train(args: argparse.Namespace) -> int:
    from minidiff.training.distributed import is_main

    _, result = _train(args)
    if is_main():  # under torchrun: one report (rank 0 wrote the files)
        _report(result)
    return 0


def _noise_pictures(noise_scheduler, x0, out_dir: Path, seed: int) -> dict[str, Path]:
    """noise.png (the tutorial's noising strip at 8 timesteps) and snr.png; prints the terminal-signal warning."""
    import torch

    from minidiff.viz import noising_strip, plot_snr, terminal_signal_warning

    out_dir.mkdir(parents=True, exist_ok=True)
    noise_png = out_dir / "noise.png"
    noising_strip(noise_scheduler, x0, generator=torch.Generator().manual_seed(seed)).save(noise_png)
    snr_png = plot_snr(noise_scheduler, out_dir / "snr.png")
    warning = terminal_signal_warning(noise_scheduler)
    if warning:
        print(f"warning: {warning}")
    return {"noising strip": noise_png, "log-SNR plot": Path(snr_png)}


def cmd_demo(args: argparse.Namespace) -> int:
    """Train under a time budget, then measure what the model draws: digit FID of DDIM at 10 to 50 steps and
    DDPM at 50 and 100 (quality_vs_steps.png); samples.png shows the first 16 images of DEMO_SAMPLES' sampler."""
    from minidiff.data import load_dataset
    from minidiff.quality.calibration import parse_settings
    from minidiff.quality.digit_net import NUM_FEATURES
    from minidiff.quality.steps import plot_quality_vs_steps, quality_vs_steps
    from minidiff.training import build_noise_scheduler
    from minidiff.training.config import DEMO_SAMPLES
    from minidiff.viz import enlarged, save_grid, to_pil_images

    started = time.perf_counter()
    settings = parse_settings(args.quality_settings)  # bad quality flags fail now, not after training
    if args.quality_samples <= NUM_FEATURES:
        raise ValueError(
            f"--quality-samples {args.quality_samples}: FID on the digit network's {NUM_FEATURES} features "
            f"needs more than {NUM_FEATURES} samples"
        )
    budget = f"at most {args.time_budget:.0f} s or " if args.time_budget else ""
    print(
        f"minidiff demo: training the tiny preset on {args.data!r} ({args.image_size}x{args.image_size}), "
        f"{budget}{args.max_steps} steps; then {args.quality_samples} samples per sampler for the quality plot"
    )
    config, result = _train(args)
    runs = quality_vs_steps(
        result.model_dir, settings, args.quality_samples, seeds=[config.seed],
        progress=config.progress, keep_images=True,
    )  # fmt: skip
    shown = next((r for r in runs if (r["sampler"], r["steps"]) == DEMO_SAMPLES), runs[0])  # samples.png
    grid = to_pil_images(shown["images"][: max(config.num_samples, 16)].float() / 127.5 - 1)
    result.samples_png = save_grid(enlarged(grid), result.out_dir / "samples.png")
    plot = plot_quality_vs_steps(runs, result.out_dir / "quality_vs_steps.png")
    x0 = load_dataset(config.data, config.image_size, flip=False, channels=config.channels, limit=1)[0][None]
    pictures = _noise_pictures(build_noise_scheduler(config), x0, result.out_dir, config.seed)
    _report(result, {**pictures, "quality vs steps": Path(plot)})
    print(f"sample quality ({args.quality_samples} samples each, digit network; lower FID is better):")
    for run in runs:
        print(
            f"  {run['sampler'].upper():4} {run['steps']:4d} steps: digit FID {run['fid']:6.2f}, "
            f"confident digits {100 * run['confident_share']:5.1f}%, sampling {run['seconds']:5.1f} s"
        )
    print(
        f"the demo's samples ({shown['sampler'].upper()}, {shown['steps']} steps): digit FID {shown['fid']:.2f}, "
        f"{100 * shown['confident_share']:.1f}% confident digits"
    )
    print(f"demo finished in {time.perf_counter() - started:.0f} s; everything is in {result.out_dir}")
    return 0


# ---- sample / noise / parity ------------------------------------------------------------------------
def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from minidiff.pipeline_ddpm import DDPMPipeline
    from minidiff.scheduling_ddim import DDIMScheduler
    from minidiff.scheduling_ddpm import DDPMScheduler
    from minidiff.training import sampler_from_config
    from minidiff.training.preflight import pick_device
    from minidiff.viz import enlarged, save_grid

    pipeline = DDPMPipeline.from_pretrained(args.model)
    scheduler_class = DDIMScheduler if args.scheduler == "ddim" else DDPMScheduler
    pipeline.scheduler = sampler_from_config(scheduler_class, pipeline.scheduler.config)
    device = pick_device(args.device)
    pipeline.to(device)
    steps = args.steps or (50 if args.scheduler == "ddim" else pipeline.scheduler.config.num_train_timesteps)
    started = time.perf_counter()
    if args.fast:  # minidiff.fast: on-device step tables, one CUDA graph per step (bf16 on a GPU)
        from minidiff.fast import sample
        from minidiff.viz import numpy_to_pil

        if args.scheduler != "ddpm":
            raise ValueError(f"--fast samples with DDPM; got --scheduler {args.scheduler!r}")
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
    print(f"{args.num} images, {args.scheduler} with {steps} steps, in {time.perf_counter() - started:.1f} s")
    print(f"  samples  {path}")
    return 0


def cmd_noise(args: argparse.Namespace) -> int:
    from minidiff.data import load_dataset
    from minidiff.scheduling_ddpm import DDPMScheduler

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

    from minidiff.files import atomic_write_text
    from minidiff.quality.evaluate import evaluate, format_report
    from minidiff.training.preflight import pick_device

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


def _add_eval_parser(commands, common: argparse.ArgumentParser) -> None:
    from minidiff.training.flags import positive_int

    ev = commands.add_parser(
        "eval", parents=[common], help="sample a pipeline and measure digit FID / KID (and Inception FID)"
    )
    ev.add_argument("--model", required=True, help="pipeline folder (minidiff or diffusers) or hub id")
    ev.add_argument(  # 500 = minidiff.quality.evaluate.DEFAULT_NUM_SAMPLES (not imported: --help stays light)
        "--num-samples", type=positive_int, default=500, help="images to sample (FID depends on it)"
    )
    ev.add_argument("--steps", type=positive_int, default=None, help="sampling steps (ddpm: T, ddim: 50)")
    ev.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm")
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
        "--quality-settings", default="ddim:10,ddim:20,ddim:50,ddpm:50,ddpm:100",
        help=f"the samplers of the quality plot; samples.png comes from the tiny preset's sampler ({demo_samples}) "
        "when it is one of them, else from the first (default: %(default)s)",
    )  # fmt: skip

    preset_name = _preset_in(argv, "tutorial")
    train = commands.add_parser(
        "train", parents=[common], help="train a DDPM (presets: tiny, tutorial)",
        description="Train a DDPM. Every flag also answers to the name diffusers' train_unconditional.py gives "
        "it (shown beside it); defaults are the chosen --preset's.",
    )  # fmt: skip
    train.add_argument("--preset", choices=["tiny", "tutorial"], default="tutorial", help="starting settings")
    train.set_defaults(func=cmd_train, defaults=_defaults("train", preset_name))
    add_train_flags(train, _defaults("train", preset_name))

    sample = commands.add_parser(
        "sample", parents=[common], help="sample a grid of images from a pipeline folder or hub id"
    )
    sample.add_argument("--model", required=True, help="pipeline folder (e.g. out/demo/model) or hub id")
    sample.add_argument("--num", type=positive_int, default=16, help="number of images")
    sample.add_argument("--scheduler", choices=["ddpm", "ddim"], default="ddpm")
    sample.add_argument(
        "--steps", type=positive_int, default=None, help="denoising steps (ddpm: T, ddim: 50)"
    )
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
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except KeyboardInterrupt as stop:  # TrainingInterrupted says where it stopped (_train printed it)
        if not hasattr(stop, "exit_code"):
            print(f"minidiff {args.command}: interrupted", file=sys.stderr)
        return getattr(stop, "exit_code", 130)
    except Exception as err:  # the library's errors name the bad value; no traceback without --debug
        if args.debug:
            raise
        message = str(err).strip() or type(err).__name__
        print(f"minidiff {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
