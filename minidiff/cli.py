"""The `minidiff` command. Each subcommand is a thin shell over a library function.

    minidiff demo                                   # train the tiny preset on the embedded digits -> out/demo/
    minidiff train --preset tutorial --data DIR     # the butterfly tutorial (a GPU job)
    minidiff sample --model DIR --num 16 --sampler ddim --steps 50   # samplers: minidiff/schedulers/samplers.py
    minidiff noise --schedule linear --beta-start 0.001 --beta-end 0.004
    minidiff parity --model DIR                     # per-layer comparison with diffusers
    minidiff eval --model DIR --sampler ddim --steps 50   # digit FID / KID of 500 samples -> eval.json

Heavy modules (torch models, datasets, matplotlib, diffusers) load inside the subcommands, after the
settings, paths and output paths are checked: `--help` and a wrong path answer at once. Errors print one
line naming the flag as typed (exit status 1); run events and warnings one line each (minidiff/console.py;
`--debug`, before or after the subcommand, shows tracebacks and their full text); bad flags are argparse
errors (status 2), an unknown one with the closest known name. An interrupted training run exits 130
(SIGINT) or 143 (SIGTERM) after saving its work. Sampling of more than a few seconds says its expected time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from minidiff.console import Parser, clean_warnings, setup_logging
from minidiff.console import say as _say
from minidiff.cost import announce_cost as _say_cost
from minidiff.files import check_hub_dataset, check_pipeline_folder, check_writable

# ---- train / demo ---------------------------------------------------------------------------------------


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


def _report(result, extra: dict[str, Path] | None = None) -> None:
    from minidiff.training.run import report_text

    print(report_text(result, extra))


def _train(args: argparse.Namespace):
    """Train as the flags say; an interrupted run says where it stopped and how to go on. Settings, paths
    and the output folder's lock are checked before torch is imported: a wrong path fails at once."""
    from minidiff.training.flags import config_from_args, diffusers_defaults_note
    from minidiff.training.preflight import check_before_start, hold_out_dir

    config = config_from_args(args, args.defaults)
    note = diffusers_defaults_note(args.argv, getattr(args, "preset", None), config)
    if note:
        _say(note)
    check_before_start(config)
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun rank 0 writes (and locks)
    with hold_out_dir(config.out_dir) if main_process else contextlib.nullcontext():
        return config, _train_now(args, config)


def _train_now(args: argparse.Namespace, config):
    from minidiff.training import train
    from minidiff.training.loop import TrainingInterrupted

    try:
        return train(config)
    except TrainingInterrupted as stop:
        _say_interrupted(args, stop)
        raise


def _say_interrupted(args: argparse.Namespace, stop) -> None:
    """Where an interrupted run stopped and the command that goes on from there."""
    print(f"minidiff {args.command}: interrupted: {stop}", file=sys.stderr)
    if stop.checkpoint is not None:
        print(f"continue with: {stop.continue_with(sys.argv[1:])}", file=sys.stderr)


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
    try:
        demo = run_demo(config, args.quality_settings, args.quality_samples)
    except TrainingInterrupted as stop:
        _say_interrupted(args, stop)
        raise
    _report(demo.train, demo.files)
    print("\n".join(demo.summary()))
    print(f"demo finished in {demo.seconds:.0f} s; everything is in {demo.train.out_dir}")
    return 0


# ---- sample / noise / parity / eval ----------------------------------------------------------------------
def cmd_sample(args: argparse.Namespace) -> int:
    check_pipeline_folder(args.model, "--model")
    check_writable(args.out)
    import torch

    from minidiff.pipelines.pipeline_ddpm import DDPMPipeline, with_sampler
    from minidiff.schedulers.samplers import CHOICES, steps_for
    from minidiff.training.preflight import pick_device
    from minidiff.viz import enlarged, save_grid

    if args.fast and args.sampler != CHOICES["fast"].sampler:
        raise ValueError(f"--fast samples with {CHOICES['fast'].sampler}; got --sampler {args.sampler!r}")
    pipeline = with_sampler(DDPMPipeline.from_pretrained(args.model), args.sampler)
    device = pick_device(args.device)
    pipeline.to(device)
    steps = steps_for(args.sampler, pipeline.scheduler.config.num_train_timesteps, args.steps)
    what = f"{args.num} images, {args.sampler} with {steps} steps"
    if not args.fast:  # the fast sampler's CUDA graphs and bf16 make a plain forward's time no guide
        _say_cost(pipeline.unet, what, args.num, steps)
    started = time.perf_counter()
    if args.fast:  # minidiff.fast: on-device step tables, one CUDA graph per step (bf16 on a GPU)
        from minidiff.fast import sample
        from minidiff.viz import numpy_to_pil

        images = sample(
            pipeline.unet, pipeline.scheduler, args.num, seed=args.seed, num_inference_steps=steps
        )
        images = numpy_to_pil(images.cpu().permute(0, 2, 3, 1).numpy())  # [0, 1] NCHW -> PIL
    else:
        generator = torch.Generator(device).manual_seed(args.seed)
        images = pipeline(
            batch_size=args.num, generator=generator, num_inference_steps=steps, eta=args.eta,
            progress=not args.quiet,
        ).images  # fmt: skip
    path = save_grid(enlarged(images), args.out)  # small images enlarged to 64 px, nearest neighbour
    print(f"{what}, in {time.perf_counter() - started:.1f} s")
    print(f"  samples  {path}")
    return 0


def cmd_noise(args: argparse.Namespace) -> int:
    if args.index < 0:
        raise ValueError(f"--index {args.index}; expected the index of an image, >= 0")
    check_writable(args.out, folder=True)
    check_hub_dataset(args.data)
    from minidiff.data import load_dataset
    from minidiff.schedulers.scheduling_ddpm import DDPMScheduler

    scheduler = DDPMScheduler(
        num_train_timesteps=args.num_train_timesteps, beta_start=args.beta_start, beta_end=args.beta_end,
        beta_schedule=args.schedule,
    )  # fmt: skip
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
    check_pipeline_folder(args.model, "--model", pipeline=False)  # a hub id offline: before diffusers loads
    from minidiff.parity import parity_table

    print(parity_table(args.model, args.timestep, args.batch_size, args.dtype, args.device, args.seed))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    local = Path(args.model).is_dir()
    out = Path(args.out) if args.out else (Path(args.model) / "eval.json" if local else Path("eval.json"))
    check_pipeline_folder(args.model, "--model")
    check_writable(out)
    if args.cache_dir:
        check_writable(args.cache_dir, folder=True)
    from minidiff.files import atomic_write_text
    from minidiff.quality.evaluate import evaluate, format_report, load_pipeline
    from minidiff.schedulers.samplers import steps_for
    from minidiff.training.preflight import pick_device

    pipeline = load_pipeline(args.model).to(pick_device(args.device))
    steps = steps_for(args.sampler, pipeline.scheduler.config.num_train_timesteps, args.steps)
    batch = min(args.batch_size, args.num_samples)
    _say_cost(pipeline.unet, f"{args.num_samples} samples, {args.sampler} with {steps} steps", batch, steps,
              -(-args.num_samples // batch))  # fmt: skip
    del pipeline
    report = evaluate(
        args.model, num_samples=args.num_samples, sampler=args.sampler, steps=args.steps, metrics=args.metrics,
        data=args.data, seed=args.seed, batch_size=args.batch_size, device=pick_device(args.device),
        cache_dir=args.cache_dir or (None if local else out.parent / "eval" / "reference"),
        progress=not args.quiet,
    )  # fmt: skip
    for note in report["notes"]:
        print(f"note: {note}")
    print(format_report(report))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"  {'eval.json':<30}  {out}")
    return 0


# ---- the parser: one small function per subcommand ------------------------------------------------------
def _add_sampler_flags(parser: argparse.ArgumentParser, purpose: str) -> None:
    """--sampler (the names of minidiff/schedulers/samplers.py; default: the table's choice for `purpose`)
    and --steps (default: the sampler's own count)."""
    from minidiff.schedulers.samplers import CHOICES, SAMPLER_NAMES, steps_help
    from minidiff.training.flags import positive_int

    parser.add_argument("--sampler", choices=SAMPLER_NAMES, default=CHOICES[purpose].sampler)
    parser.add_argument("--steps", type=positive_int, default=None, help=f"sampling steps ({steps_help()})")


def _demo_parser(commands, common) -> None:
    from minidiff.schedulers.samplers import CHOICES, DEMO_SWEEP
    from minidiff.training.demo import DEMO_QUALITY_SAMPLES
    from minidiff.training.flags import add_train_flags, positive_int

    demo = commands.add_parser(
        "demo", parents=[common], help="train the tiny preset on the embedded digits; write out/demo/",
        description="Train the tiny preset on the embedded digits into out/demo (replaced on each run); "
        "then its digit FID against sampling steps, the noising strip and the SNR plot. Takes every flag of "
        "`minidiff train`.",
    )  # fmt: skip
    demo.set_defaults(func=cmd_demo, defaults=_defaults("demo", "tiny"))
    add_train_flags(demo, _defaults("demo", "tiny"))
    demo.add_argument(
        "--quality-samples", type=positive_int, default=DEMO_QUALITY_SAMPLES,
        help="images per sampler for the digit FID and quality_vs_steps.png (> 64; default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--quality-settings", default=DEMO_SWEEP,
        help="the samplers of the quality plot; samples.png comes from the tiny preset's sampler "
        f"({':'.join(map(str, CHOICES['demo']))}) when it is one of them, else from the first "
        "(default: %(default)s)",
    )  # fmt: skip


def _train_parser(commands, common, argv: list[str]) -> None:
    from minidiff.training.flags import add_train_flags, preset_in

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
        default=argparse.SUPPRESS, help="the same as --preset diffusers: train_unconditional.py's defaults",
    )  # fmt: skip
    defaults = _defaults("train", preset_in(argv, "tutorial"))
    train.set_defaults(func=cmd_train, defaults=defaults)
    add_train_flags(train, defaults)


def _sample_parser(commands, common) -> None:
    from minidiff.schedulers.samplers import SAMPLER_NAMES
    from minidiff.training.flags import positive_int

    sample = commands.add_parser("sample", parents=[common], help="a grid of images from a pipeline")
    sample.add_argument("--model", required=True, help="pipeline folder (e.g. out/demo/model) or hub id")
    sample.add_argument("--num", type=positive_int, default=16, help="number of images")
    _add_sampler_flags(sample, "sample")
    # the flag's former name, still accepted (not shown in --help)
    sample.add_argument("--scheduler", dest="sampler", choices=SAMPLER_NAMES, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)  # fmt: skip
    sample.add_argument("--eta", type=float, default=0.0, help="DDIM's noise scale (0 = deterministic)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    sample.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    sample.add_argument("--out", default="samples.png", help="PNG file of the grid")
    sample.add_argument("--quiet", action="store_true", help="no progress bar")
    sample.add_argument("--fast", action="store_true", help="minidiff.fast (DDPM; CUDA graph, bf16 on a GPU)")
    sample.set_defaults(func=cmd_sample)


def _noise_parser(commands, common) -> None:
    from minidiff.training.flags import positive_int

    noise = commands.add_parser("noise", parents=[common], help="a schedule's noising strip and log-SNR plot")
    noise.add_argument("--data", default="digits", help="where the clean image comes from")
    noise.add_argument("--index", type=int, default=0, help="which image of the data")
    noise.add_argument("--image-size", type=positive_int, default=32, help="images are resized to this")
    noise.add_argument("--schedule", default="squaredcos_cap_v2", help="linear, scaled_linear, sigmoid, ...")
    noise.add_argument("--beta-start", type=float, default=0.0001, help="beta_1 (linear schedules)")
    noise.add_argument("--beta-end", type=float, default=0.02, help="beta_T (linear schedules)")
    noise.add_argument("--num-train-timesteps", type=positive_int, default=1000, help="T")
    noise.add_argument("--seed", type=int, default=0, help="seed of the noise drawn")
    noise.add_argument("--out", default="out/noise", help="folder for noise.png and snr.png")
    noise.set_defaults(func=cmd_noise)


def _parity_parser(commands, common) -> None:
    from minidiff.training.flags import positive_int

    parity = commands.add_parser("parity", parents=[common], help="a UNet, layer by layer, against diffusers")
    parity.add_argument("--model", required=True, help="pipeline folder (its unet/), UNet folder or hub id")
    parity.add_argument("--timestep", type=int, default=500, help="the timestep fed to both UNets")
    parity.add_argument("--batch-size", type=positive_int, default=1, help="random inputs per forward")
    parity.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="dtype of both")
    parity.add_argument("--device", default=None, help="run both models on this device (None: cpu)")
    parity.add_argument("--seed", type=int, default=0, help="seed of the random input")
    parity.set_defaults(func=cmd_parity)


def _eval_parser(commands, common) -> None:
    from minidiff.training.flags import positive_int

    ev = commands.add_parser("eval", parents=[common], help="digit FID / KID (Inception FID) of a pipeline")
    ev.add_argument("--model", required=True, help="pipeline folder (minidiff or diffusers) or hub id")
    # 500 = minidiff.quality.evaluate.DEFAULT_NUM_SAMPLES (not imported: --help stays light)
    ev.add_argument("--num-samples", type=positive_int, default=500, help="images (FID depends on the count)")
    _add_sampler_flags(ev, "eval")  # minutes on a CPU where DDPM's T steps take hours
    ev.add_argument("--metrics", default="digit", help="comma list out of digit, inception (minidiff[fid])")
    ev.add_argument("--data", default="digits", help="the real images: 'digits', a folder, or a hub id")
    ev.add_argument("--seed", type=int, default=0, help="seed of the sampling noise and KID's subsets")
    ev.add_argument("--batch-size", type=positive_int, default=250, help="images per sampling batch")
    ev.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    ev.add_argument("--out", default=None, help="eval.json path (None: MODEL/eval.json)")
    ev.add_argument("--cache-dir", default=None, help="reference features (None: MODEL/eval/reference)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_eval)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `minidiff` parser; `argv` only decides which preset's defaults `train --help` shows."""
    from minidiff._version import __version__

    argv = sys.argv[1:] if argv is None else argv
    parser = Parser(
        prog="minidiff",
        description="DDPM diffusion in plain PyTorch: train, sample, inspect, compare with diffusers.",
    )
    parser.argv = argv  # an unknown flag's closest name comes from the subcommand typed
    parser.add_argument("--version", action="version", version=f"minidiff {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    common = argparse.ArgumentParser(add_help=False)  # --debug after the subcommand works too
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _demo_parser(commands, common)
    _train_parser(commands, common, argv)
    _sample_parser(commands, common)
    _noise_parser(commands, common)
    _parity_parser(commands, common)
    _eval_parser(commands, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # errors name the flags as typed
    if args.command is None:
        parser.print_help()
        return 0
    setup_logging(args.debug)
    try:
        with clean_warnings(args.debug):
            return args.func(args)
    except KeyboardInterrupt as stop:  # TrainingInterrupted says where it stopped (_train printed it)
        if not hasattr(stop, "exit_code"):
            print(f"minidiff {args.command}: interrupted", file=sys.stderr)
        return getattr(stop, "exit_code", 130)
    except Exception as err:  # the library's errors name the bad value; no traceback without --debug
        if args.debug:
            raise
        from minidiff.training.flags import in_users_words

        print(f"minidiff {args.command}: error: {in_users_words(err, argv)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
