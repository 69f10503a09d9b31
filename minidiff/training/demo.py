"""`minidiff demo` as a library function: train the `tiny` preset on the embedded digits for a fixed number of
steps, then measure what the model draws.

    result = run_demo(demo_config(out_dir="out/demo"))
    print("\\n".join(result.summary()))          # the quality table; result.files: every picture written

The demo trains DEMO_STEPS steps on every machine (seed, data order and schedule fixed), so its model, and
the quality below, are the same on every CPU up to float rounding; only the time differs. A time cap
(DEMO_TIME_CAP seconds of training) is a guard for a very slow machine: when it fires the result says how
many steps were trained and what quality that many steps give (DEMO_CURVE, from
benchmarks/TIME_TO_QUALITY.md).
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from minidiff.schedulers.samplers import DEMO_SWEEP, parse_settings
from minidiff.training.config import DEMO_SAMPLES, PRESETS, TrainConfig, preset

# the tiny preset's 1,200 steps: DDPM 100 reaches digit FID <= 10, >= 75% confident, 10/10 classes
DEMO_STEPS = PRESETS["tiny"].max_steps
DEMO_TIME_CAP = 900.0  # seconds of training: a guard, not the plan (1,200 steps at 1.3 steps/s)
DEMO_QUALITY_SAMPLES = 250  # per sampler (> 64 for a defined FID): one batch each
# the recipe's quality against steps with the demo's sampler (DDPM, 100 trailing steps; 500 samples, fp32
# training): steps -> (digit FID, share of confident digits), means over sampling seeds 0, 1, 2;
# benchmarks/TIME_TO_QUALITY.md
DEMO_CURVE = {
    300: (17.4, 0.566),
    500: (9.9, 0.685),
    700: (6.3, 0.753),
    900: (4.6, 0.801),
    1000: (4.8, 0.815),
    1200: (3.6, 0.842),
}


@dataclass
class DemoResult:
    """What `run_demo` trained and measured.

    Args:
        train: the training run's TrainResult (steps, losses, model folder, ...).
        runs: one dict per quality setting (sampler, steps, fid, confident_share, seconds, images).
        shown: the run of samples.png (DEMO_SAMPLES' sampler when it is one of the settings).
        files: what was written, by name (samples, quality plot, noising strip, SNR plot).
        seconds: the whole demo's time.
        planned_steps: the steps the demo was to train; `train.steps` is fewer when the time cap fired.
        quality_samples: images per quality setting.
        time_cap: the seconds of training the guard allowed (None: no cap).
    """

    train: object
    runs: list[dict]
    shown: dict
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    planned_steps: int = DEMO_STEPS
    quality_samples: int = DEMO_QUALITY_SAMPLES
    time_cap: float | None = DEMO_TIME_CAP

    @property
    def capped(self) -> bool:
        """Whether the time cap stopped training before the planned steps."""
        return self.train.steps < self.planned_steps

    def summary(self) -> list[str]:
        """The lines `minidiff demo` prints at the end: the quality table, the demo's samples, the cap."""
        lines = [f"sample quality ({self.quality_samples} samples each, digit network; lower FID is better):"]
        width = max(len(run["sampler"]) for run in self.runs)
        for run in self.runs:
            lines.append(
                f"  {run['sampler'].upper():{width}} {run['steps']:4d} steps: digit FID {run['fid']:6.2f}, "
                f"confident digits {100 * run['confident_share']:5.1f}%, sampling {run['seconds']:5.1f} s"
            )
        shown = self.shown
        lines.append(
            f"the demo's samples ({shown['sampler'].upper()}, {shown['steps']} steps): digit FID "
            f"{shown['fid']:.2f}, {100 * shown['confident_share']:.1f}% confident digits"
        )
        if self.capped:
            lines.append(cap_note(self.train.steps, self.planned_steps, self.time_cap))
        return lines


def cap_note(steps: int, planned: int, cap: float | None = DEMO_TIME_CAP) -> str:
    """What the time cap cost: the steps trained and the quality the recipe has at that many steps."""
    known = sorted(DEMO_CURVE)
    head = f"note: the time cap of {cap or 0:.0f} s stopped training after {steps} of {planned} steps: "
    best = f"(at {known[-1]}: digit FID {DEMO_CURVE[known[-1]][0]}, {100 * DEMO_CURVE[known[-1]][1]:.0f}%)"
    if steps < known[0]:
        fid, share = DEMO_CURVE[known[0]]
        return (
            head
            + f"worse than the recipe at {known[0]} steps (digit FID {fid}, {100 * share:.0f}% confident) {best}; --time-budget raises the cap"
        )
    at = known[bisect.bisect_right(known, steps) - 1]
    fid, share = DEMO_CURVE[at]
    return (
        head
        + f"the recipe at {at} steps gives about digit FID {fid}, {100 * share:.0f}% confident {best}; --time-budget raises the cap"
    )


def demo_config(**overrides) -> TrainConfig:
    """The demo's TrainConfig: the tiny preset (DEMO_STEPS steps, precision "auto") into out/demo, replaced
    each run, DEMO_TIME_CAP as a guard, no grid from training (samples.png comes from the quality runs)."""
    base = preset("tiny", out_dir="out/demo", overwrite=True, time_budget=DEMO_TIME_CAP, num_samples=0)
    return dataclasses.replace(base, **overrides)


def run_demo(
    config: TrainConfig | None = None,
    quality_settings: str = DEMO_SWEEP,
    quality_samples: int = DEMO_QUALITY_SAMPLES,
    say=print,
) -> DemoResult:
    """Train `config` (default `demo_config()`), then the digit FID of DDIM, DPM-Solver++ and DDPM at a few
    step counts (quality_vs_steps.png), samples.png (the first 16 images of DEMO_SAMPLES' sampler), the
    noising strip (noise.png) and the SNR plot (snr.png).

    Args:
        config: the training run (default: `demo_config()`).
        quality_settings: "SAMPLER:STEPS,..." of the quality plot.
        quality_samples: images per setting (> 64).
        say: where the progress lines go (the expected sampling time).

    Returns:
        A DemoResult.
    """
    from minidiff.quality.digit_net import NUM_FEATURES
    from minidiff.quality.metrics import check_fid_count

    started = time.perf_counter()
    config = config or demo_config()
    settings = parse_settings(quality_settings)  # bad quality settings fail now, not after training
    check_fid_count(quality_samples, NUM_FEATURES, f"quality_samples={quality_samples}")
    from minidiff.training.loop import train

    result = train(config)
    runs, shown, files = _measure(result, config, settings, quality_samples, say)
    seconds = time.perf_counter() - started
    return DemoResult(
        result, runs, shown, files, seconds, config.max_steps, quality_samples, config.time_budget
    )


def _measure(result, config: TrainConfig, settings, quality_samples: int, say):
    """The quality runs of the trained model and the pictures: (runs, shown, files)."""
    from minidiff.cost import FEW_SECONDS, cost_line, sampling_seconds, step_seconds
    from minidiff.data import load_dataset
    from minidiff.quality.evaluate import load_pipeline
    from minidiff.quality.steps import plot_quality_vs_steps, quality_vs_steps
    from minidiff.training.run import build_noise_scheduler
    from minidiff.viz import enlarged, save_grid, to_pil_images

    unet = load_pipeline(result.model_dir).unet  # quality_vs_steps samples on the CPU
    step, steps = step_seconds(unet, quality_samples), sum(n for _, n in settings)
    if sampling_seconds(step, steps) > FEW_SECONDS:
        what = f"quality plot: {quality_samples} samples at {len(settings)} settings"
        say(f"expected: {cost_line(what, step, steps)}")
    runs = quality_vs_steps(
        result.model_dir,
        settings,
        quality_samples,
        seeds=[config.seed],
        progress=config.progress,
        keep_images=True,
    )
    shown = next((r for r in runs if (r["sampler"], r["steps"]) == DEMO_SAMPLES), runs[0])
    grid = to_pil_images(shown["images"][: max(config.num_samples, 16)].float() / 127.5 - 1)
    out_dir = Path(result.out_dir)
    result.samples_png = save_grid(enlarged(grid), out_dir / "samples.png")
    x0 = load_dataset(config.data, config.image_size, flip=False, channels=config.channels, limit=1)[0][None]
    files = noise_pictures(build_noise_scheduler(config), x0, out_dir, config.seed, say)
    files["quality vs steps"] = Path(plot_quality_vs_steps(runs, out_dir / "quality_vs_steps.png"))
    return runs, shown, files


def noise_pictures(noise_scheduler, x0, out_dir: Path, seed: int, say=print) -> dict[str, Path]:
    """noise.png (the tutorial's noising strip at 8 timesteps) and snr.png; says the terminal-signal warning.

    Args:
        noise_scheduler: the DDPMScheduler whose forward process is drawn.
        x0: one clean image (1, C, H, W) in [-1, 1].
        out_dir: where the two pictures go.
        seed: the seed of the strip's noise.
        say: where the warning goes.
    """
    import torch

    from minidiff.viz import noising_strip, plot_snr, terminal_signal_warning

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    noise_png = out_dir / "noise.png"
    noising_strip(noise_scheduler, x0, generator=torch.Generator().manual_seed(seed)).save(noise_png)
    snr_png = plot_snr(noise_scheduler, out_dir / "snr.png")
    warning = terminal_signal_warning(noise_scheduler)
    if warning:
        say(f"warning: {warning}")
    return {"noising strip": noise_png, "log-SNR plot": Path(snr_png)}
