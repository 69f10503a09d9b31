"""What the digit metrics say about known image sets, so that a model's figure can be read against them.

    python -m scripts.calibration --model out/demo/model --seeds 0,1,2 --json calibration.json \
        --plot docs/images/quality_vs_steps.png

Rows, all against the same reference (the 4,000 training-split digits at the model's size):
- real held-out digits (the 1,000 digits the network never trained on): the floor, what a perfect model
  would score with this many samples;
- the same digits blurred (Gaussian, sigma = 1 px at the model's size), and pure Gaussian noise (x_T as
  the pipeline would output it, (x / 2 + 0.5).clamp(0, 1)): two kinds of failure;
- the model with each sampler setting of --settings (with --model; by default minidiff/schedulers/samplers.py's
  QUALITY_SWEEP: DDPM's 1,000 steps, DDIM at 10 / 20 / 50 / 100 / 250 steps, DPM-Solver++ at 10 / 20).
Noise and model rows show the mean and standard deviation over seeds (drawn afresh for every seed). The
held-out and blurred sets are fixed: their figure is the set's own, their spread the standard deviation
over 10 bootstrap resamples (drawn with replacement).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from minidiff.quality.digit_net import held_out_digits
from minidiff.quality.evaluate import DEFAULT_NUM_SAMPLES, score
from minidiff.quality.features import Features, extract_features, feature_network
from minidiff.quality.metrics import CONFIDENT_RULE
from minidiff.quality.reference import reference_features
from minidiff.quality.steps import mean_and_std
from minidiff.schedulers.samplers import QUALITY_SWEEP, parse_settings
from minidiff.viz import denormalize, to_uint8

KEYS = ("fid", "kid", "confident_share", "in_distribution_share", "class_entropy_bits")
FIGURES = (*KEYS, "seconds")  # the table's columns, mean and std of each (quality.steps.mean_and_std)
BOOTSTRAP_RESAMPLES = 10


def blurred(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """uint8 images under a Gaussian blur of `sigma` pixels (kernel 2 * ceil(3 sigma) + 1)."""
    from torchvision.transforms.functional import gaussian_blur

    size = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur(images.float(), [size, size], [sigma, sigma]).round().clamp(0, 255).to(torch.uint8)


def gaussian_noise(count: int, channels: int, image_size: int, seed: int) -> torch.Tensor:
    """x_T ~ N(0, I) as the pipeline would output it: uint8 of (x / 2 + 0.5).clamp(0, 1)."""
    x = torch.randn(count, channels, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    return to_uint8(denormalize(x))


def bootstrap(features: Features, seed: int) -> Features:
    """The same number of rows, drawn with replacement."""
    rows = torch.randint(0, len(features), (len(features),), generator=torch.Generator().manual_seed(seed))
    logits, distance = (t[rows] if t is not None else None for t in (features.logits, features.distance))
    return Features(features.values[rows], features.network, logits, distance)


def calibrate_real(
    image_size: int, seeds: list[int], num_samples: int = DEFAULT_NUM_SAMPLES, channels: int = 1
) -> dict[str, dict]:
    """Held-out, blurred and noise rows of `num_samples` images each: {name: summary}."""
    network = feature_network("digit")
    reference, _, _ = reference_features("digits", image_size, channels, network)
    held_out = held_out_digits(image_size, channels)[:num_samples]
    fixed = {
        "real held-out digits (floor)": extract_features(held_out, network),
        "held-out digits, blurred (sigma 1 px)": extract_features(blurred(held_out), network),
    }
    table = {}
    for name, feats in fixed.items():
        resamples = [score(reference, bootstrap(feats, s), s) for s in range(1, BOOTSTRAP_RESAMPLES + 1)]
        table[name] = mean_and_std(resamples, FIGURES, point=score(reference, feats))
    noise = [
        score(reference, extract_features(gaussian_noise(len(held_out), channels, image_size, s), network), s)
        for s in seeds
    ]
    table["Gaussian noise"] = mean_and_std(noise, FIGURES)
    return table


def markdown_table(table: dict[str, dict], num_samples: int, seeds: int) -> str:
    """The README's calibration table: mean +- std over seeds."""

    def cell(row: dict, key: str, scale: float = 1.0, fmt: str = ".2f") -> str:
        if key not in row:
            return "-"
        return f"{row[key] * scale:{fmt}} ± {row[key + '_std'] * scale:{fmt}}"

    lines = [
        f"| images ({num_samples} per row, {seeds} seeds) | digit FID | digit KID | "
        f"confident digits ({CONFIDENT_RULE}) | class entropy (bits) | sampling time |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        seconds = f"{row['seconds']:.0f} s" if "seconds" in row else "-"
        lines.append(
            f"| {name} | {cell(row, 'fid')} | {cell(row, 'kid', 1, '.3g')} | {cell(row, 'confident_share', 100, '.1f')} % "
            f"| {cell(row, 'class_entropy_bits', 1, '.3f')} | {seconds} |"
        )
    return "\n".join(lines)


def model_rows(args, seeds: list[int], table: dict) -> list[dict]:
    """quality_vs_steps one (setting, seed) at a time; runs already in --json are kept, and the file is
    rewritten after every run, so a long calibration can be stopped and resumed."""
    from minidiff.quality.steps import plot_quality_vs_steps, quality_vs_steps

    path = Path(args.json) if args.json else None
    runs = json.loads(path.read_text())["runs"] if path is not None and path.is_file() else []
    settings = parse_settings(args.settings)
    for sampler, steps in settings:
        for seed in seeds:
            done = [r for r in runs if (r["sampler"], r["steps"], r["seed"]) == (sampler, steps, seed)]
            if not args.report_only and (not done or done[0]["num_samples"] != args.num_samples):
                runs = [r for r in runs if r not in done]
                runs += quality_vs_steps(
                    args.model, [(sampler, steps)], args.num_samples, [seed], batch_size=args.batch_size
                )
                if path is not None:
                    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n", encoding="utf-8")
        rows = [r for r in runs if (r["sampler"], r["steps"]) == (sampler, steps) and r["seed"] in seeds]
        name = f"model, {sampler.upper()} {steps} steps"
        table[name + (f" ({len(rows)} seeds)" if len(rows) != len(seeds) else "")] = mean_and_std(
            rows, FIGURES
        )
    if args.plot:
        print(f"wrote {plot_quality_vs_steps(runs, args.plot)}")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.calibration", description=__doc__)
    parser.add_argument("--model", default=None, help="a pipeline folder to add the sampler rows for")
    parser.add_argument(
        "--image-size", type=int, default=16, help="without --model: the size to calibrate at"
    )
    parser.add_argument(
        "--num-samples", type=int, default=DEFAULT_NUM_SAMPLES, help="images per row (at most 1,000)"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    parser.add_argument("--settings", default=QUALITY_SWEEP, help="SAMPLER:STEPS,... (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--json", default=None, help="the model runs, kept here (resumable)")
    parser.add_argument("--plot", default=None, help="write quality_vs_steps.png here (with --model)")
    parser.add_argument("--report-only", action="store_true", help="sample nothing: use the runs in --json")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    size = args.image_size
    if args.model:
        from minidiff.quality.evaluate import image_shape, load_pipeline

        _, size = image_shape(load_pipeline(args.model))
    table = calibrate_real(size, seeds, args.num_samples)
    if args.model:
        model_rows(args, seeds, table)
    print(markdown_table(table, args.num_samples, len(seeds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
