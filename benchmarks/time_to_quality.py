"""python -m benchmarks.time_to_quality [--quick] [--out DIR]: training seconds to a digit FID, two recipes.

The same data (the embedded digits at 16x16, one batch order), seed and UNet2DModel config, trained in one
process, turn about, `--interval` seconds of training each (so a busy machine slows both alike):

  diffusers  diffusers' UNet2DModel + DDPMScheduler and the tutorial's loop: AdamW 4e-4, MSE on the
             noise, squaredcos_cap_v2, epsilon, fp32; sampled by DDPM with every training step
  minidiff   the `tiny` preset `minidiff demo` trains (minidiff.training's plain engine, every lever the
             preset sets), sampled as the demo samples (DEMO_SAMPLES: DDPM, 100 trailing steps)

After each interval both models are scored: digit FID of `--samples` samples (each recipe with its own
sampler, the same sample count and seed). Training seconds to digit FID 20 and 10 are read off each curve
(linear between the two readings around the crossing), and their ratio. At the end the minidiff model is
scored with several samplers: FID against sampling seconds. Writes time_to_quality.csv (one row per reading),
time_to_quality.json (the summary and the hardware), time_to_quality.png.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from minidiff.training.precision import cpu_capability, native_bf16, resolve_precision

THRESHOLDS = (20.0, 10.0)
RECIPES = ("diffusers", "minidiff")
FINAL_SETTINGS = "ddim:10,ddim:20,ddim:50,ddim:100,ddpm:50,ddpm:100,ddpm:1000"
DATA = "digits"


# ---- the hardware ---------------------------------------------------------------------------------------
# torch's kernels and oneDNN held to AVX2 (both documented by PyTorch and oneDNN): an AVX2-only CPU on any x86
AVX2_HOLD = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def hold_avx2(argv: list[str]) -> None:
    """Run this benchmark again under AVX2_HOLD (the variables act only when set before torch loads)."""
    env = {**os.environ, **AVX2_HOLD}
    rest = [a for a in argv if a != "--avx2"]
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.time_to_quality", *rest], env)


def hardware() -> dict:
    """CPU model, cores, the bf16 matrix units it has, torch's version and threads."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:  # not Linux: the model from platform, no flags
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "amx": bool({"amx_bf16", "amx_tile"} & flags),
        "avx512_bf16": "avx512_bf16" in flags,
        # what torch runs: its kernel level and oneDNN's bf16 (lower than the flags under the AVX2 hold)
        "cpu_capability": cpu_capability(),
        "native_bf16": native_bf16(),
        "avx2_hold": all(os.environ.get(k) == v for k, v in AVX2_HOLD.items()),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# ---- the two recipes --------------------------------------------------------------------------------------
class DiffusersRecipe:
    """The tutorial's loop on diffusers' classes: x_t = add_noise(x_0, eps, t), loss = MSE(eps_theta, eps)."""

    name = "diffusers"

    def __init__(
        self, unet_kwargs: dict, images: torch.Tensor, batch_size: int, seed: int, sample_steps: int
    ):
        import diffusers

        torch.manual_seed(seed)
        self.unet = diffusers.UNet2DModel(**unet_kwargs)
        self.scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=4e-4)
        self.batches = Batches(images, batch_size, seed)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.sampler, self.sample_steps = "ddpm", sample_steps
        self.steps = 0

    def step(self) -> None:
        clean = self.batches.next()
        noise = torch.randn(clean.shape, generator=self.generator)
        timesteps = torch.randint(0, 1000, (len(clean),), generator=self.generator)
        noisy = self.scheduler.add_noise(clean, noise, timesteps)
        self.unet.train()
        loss = F.mse_loss(self.unet(noisy, timesteps, return_dict=False)[0], noise)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.steps += 1

    @torch.no_grad()
    def sample(self, num_samples: int, seed: int) -> torch.Tensor:
        """uint8 (N, C, H, W) from diffusers' DDPMPipeline, DDPM with `sample_steps` steps."""
        import diffusers

        from minidiff.quality.features import as_uint8

        pipeline = diffusers.DDPMPipeline(self.unet.eval(), self.scheduler)
        pipeline.set_progress_bar_config(disable=True)
        images = pipeline(
            batch_size=num_samples,
            generator=torch.Generator().manual_seed(seed),
            num_inference_steps=self.sample_steps,
            output_type="np",
        ).images  # (N, H, W, C) in [0, 1]
        return as_uint8(torch.from_numpy(images).permute(0, 3, 1, 2).float())


class MinidiffRecipe:
    """The tiny preset on minidiff's plain engine (the engine `minidiff demo` trains with)."""

    name = "minidiff"

    def __init__(self, config, images: torch.Tensor, sampler: str, sample_steps: int):
        from minidiff.training.data import ResidentImages
        from minidiff.training.run import build_noise_scheduler, build_unet, make_noise_generator
        from minidiff.training.step import PlainEngine

        self.unet = build_unet(config, images.shape[1])
        # "auto": bf16 only where a measured step is faster (the demo's rule); the JSON records the choice
        self.config, self.precision = resolve_precision(
            config, self.unet, images.shape[1], torch.device("cpu")
        )
        config = self.config
        self.scheduler = build_noise_scheduler(config)
        data = ResidentImages(images)
        total = config.max_steps or 10**6
        self.engine = PlainEngine(
            self.unet, self.scheduler, data, config, total, make_noise_generator(config, torch.device("cpu"))
        )
        self.batches = Batches(images, config.batch_size, config.seed, data=data, engine=self.engine)
        self.sampler, self.sample_steps = sampler, sample_steps
        self.steps = 0

    def step(self) -> None:
        self.engine.step(self.batches.next_index())
        self.steps += 1

    def pipeline(self):
        from minidiff.pipelines.pipeline_ddpm import DDPMPipeline

        return DDPMPipeline(self.engine.sampling_model, self.scheduler)

    @torch.no_grad()
    def sample(self, num_samples: int, seed: int) -> torch.Tensor:
        from minidiff.pipelines.pipeline_ddpm import with_sampler
        from minidiff.quality.evaluate import generate

        pipeline = with_sampler(self.pipeline(), self.sampler)
        was_training = self.unet.training
        images, _ = generate(pipeline, num_samples, self.sample_steps, seed, progress=False)
        self.unet.train(was_training)
        return images


class Batches:
    """The epochs' image order of minidiff's rules (`epoch_order`, no flips), for both recipes: with
    `engine`, the engine reads the batches itself (`next_index`); else `next` returns x_0 in [-1, 1]."""

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int, data=None, engine=None):
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.per_epoch = -(-len(images) // batch_size)
        self.epoch, self.batch = 0, 0
        self.data, self.engine = data, engine
        self.order = None
        self._start()

    def _start(self) -> None:
        from minidiff.training.rules import epoch_order

        self.order, _ = epoch_order(len(self.images), self.seed, self.epoch, flip=False)
        if self.engine is not None:
            self.engine.start_epoch(self.order, None)

    def _advance(self) -> None:
        self.batch += 1
        if self.batch == self.per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
            self._start()

    def next_index(self) -> int:
        b = self.batch
        self._advance()
        return b

    def next(self) -> torch.Tensor:
        from minidiff.training.rules import to_model_range

        b = self.next_index()
        index = self.order[b * self.batch_size : (b + 1) * self.batch_size]
        return to_model_range(self.images.index_select(0, index))


# ---- scoring and reading the curves ------------------------------------------------------------------------
def crossing(readings: list[tuple[float, float]], threshold: float) -> float | None:
    """Training seconds at which the FID first reaches `threshold`: linear between the readings (seconds,
    FID) around the first crossing; None if it never does."""
    previous = None
    for seconds, value in readings:
        if value <= threshold:
            if previous is None or previous[1] <= threshold:
                return seconds
            (s0, f0), (s1, f1) = previous, (seconds, value)
            return s0 + (s1 - s0) * (f0 - threshold) / (f0 - f1)
        previous = (seconds, value)
    return None


def parse_settings(text: str) -> list[tuple[str, int]]:
    """ "ddim:20,ddpm:1000" -> [("ddim", 20), ("ddpm", 1000)] (any sampler `with_sampler` knows)."""
    settings = []
    for item in text.split(","):
        sampler, _, steps = item.strip().partition(":")
        if not (sampler and steps.isdigit() and int(steps) > 0):
            raise SystemExit(f"--sampler-settings: {item!r}; expected SAMPLER:STEPS, e.g. ddim:20")
        settings.append((sampler, int(steps)))
    return settings


def train_for(recipe, seconds: float) -> float:
    """Steps of `recipe` until `seconds` of training are spent (whole steps); the seconds spent."""
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        recipe.step()
    return time.perf_counter() - started


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.time_to_quality", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a seconds-long run on a tiny UNet (CI)")
    parser.add_argument("--out", default="benchmarks/time_to_quality", help="folder of the CSV, JSON and PNG")
    parser.add_argument("--train-seconds", type=float, default=None, help="training seconds per recipe (600)")
    parser.add_argument(
        "--interval", type=float, default=None, help="training seconds between readings (120)"
    )
    parser.add_argument("--samples", type=int, default=None, help="samples per reading, > 64 (100)")
    parser.add_argument("--ddpm-steps", type=int, default=None, help="diffusers' DDPM sampling steps (1000)")
    parser.add_argument(
        "--sampler-settings", default=None,
        help=f"samplers scored on the final minidiff model (default: {FINAL_SETTINGS})",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--avx2", action="store_true",
        help="run under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2: an AVX2-only CPU (no native bf16)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


QUICK_NET = dict(  # TrainConfig fields: a two-level net at 16x16 that trains in milliseconds
    block_out_channels=(8, 16),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
)


def main(argv: list[str] | None = None) -> int:
    from minidiff.data import load_dataset_uint8
    from minidiff.quality.features import extract_features, feature_network
    from minidiff.quality.metrics import digit_scores, fid
    from minidiff.training.config import DEMO_SAMPLES, preset

    args = parse_args(argv)
    if args.avx2 and not hardware()["avx2_hold"]:
        hold_avx2(sys.argv[1:] if argv is None else argv)
    quick = args.quick
    train_seconds = args.train_seconds or (2.0 if quick else 600.0)
    interval = args.interval or (1.0 if quick else 120.0)
    num_samples = args.samples or (70 if quick else 100)
    ddpm_steps = args.ddpm_steps or (10 if quick else 1000)
    settings = parse_settings(args.sampler_settings or ("ddim:5,ddpm:10" if quick else FINAL_SETTINGS))
    if num_samples <= 64:
        raise SystemExit(f"--samples {num_samples}: the digit FID on 64 features needs more than 64 samples")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. the data, the recipes, the reference features
    config = preset("tiny", seed=args.seed, device="cpu", **(QUICK_NET if quick else {}))
    images = load_dataset_uint8(DATA, config.image_size, channels=1, limit=256 if quick else None)
    unet_kwargs = dict(
        sample_size=config.image_size, in_channels=1, out_channels=1, layers_per_block=config.layers_per_block,
        block_out_channels=tuple(config.block_out_channels), down_block_types=tuple(config.down_block_types),
        up_block_types=tuple(config.up_block_types), norm_num_groups=config.norm_num_groups,
    )  # fmt: skip
    demo_sampler, demo_steps = DEMO_SAMPLES
    recipes = [
        DiffusersRecipe(unet_kwargs, images, config.batch_size, config.seed, ddpm_steps),
        MinidiffRecipe(config, images, demo_sampler, 5 if quick else demo_steps),
    ]
    network = feature_network("digit")
    from minidiff.quality.reference import reference_features

    reference = reference_features(DATA, config.image_size, 1, network)[0]

    hw = hardware()
    print(
        f"{hw['cpu']}: torch CPU capability {hw['cpu_capability']}{' (AVX2 hold)' if hw['avx2_hold'] else ''}, "
        f"{'native' if hw['native_bf16'] else 'no native'} bf16, {hw['torch_threads']} threads; minidiff "
        f"{recipes[1].precision.line}", flush=True,
    )  # fmt: skip

    # 2. train in turns, score after every interval
    rows, spent = [], {r.name: 0.0 for r in recipes}
    started = time.perf_counter()
    while min(spent.values()) < train_seconds - 1e-9:
        for recipe in recipes:
            spent[recipe.name] += train_for(recipe, min(interval, train_seconds - spent[recipe.name]))
            sample_started = time.perf_counter()
            samples = recipe.sample(num_samples, args.seed)
            sampling_s = time.perf_counter() - sample_started
            feats = extract_features(samples, network)
            scores = digit_scores(feats)
            row = {
                "recipe": recipe.name, "train_seconds": round(spent[recipe.name], 2), "steps": recipe.steps,
                "sampler": f"{recipe.sampler}:{recipe.sample_steps}", "samples": num_samples,
                "digit_fid": fid(reference, feats), "confident_share": scores["confident_share"],
                "classes": sum(c > 0 for c in scores["class_counts"]), "sampling_seconds": round(sampling_s, 2),
            }  # fmt: skip
            rows.append(row)
            print(
                f"{row['recipe']:9} {row['train_seconds']:7.1f} s, {row['steps']:5d} steps: digit FID "
                f"{row['digit_fid']:7.2f}, {100 * row['confident_share']:5.1f}% confident ({row['sampler']})",
                flush=True,
            )

    # 3. the final minidiff model under several samplers
    from minidiff.quality.steps import quality_vs_steps

    final = quality_vs_steps(recipes[1].pipeline(), settings, num_samples, seeds=[args.seed], progress=False)
    samplers = [
        {"sampler": f"{r['sampler']}:{r['steps']}", "digit_fid": r["fid"], "sampling_seconds": r["seconds"],
         "confident_share": r["confident_share"]}
        for r in final
    ]  # fmt: skip

    # 4. the crossings, the files
    summary = {"hardware": hardware(), "settings": {
        "train_seconds": train_seconds, "interval": interval, "samples": num_samples, "ddpm_steps": ddpm_steps,
        "seed": args.seed, "quick": quick, "minidiff_config": {
            k: v for k, v in dataclasses.asdict(recipes[1].config).items() if k in CONFIG_KEYS},
        "precision": recipes[1].precision.line,
    }, "thresholds": {}, "samplers": samplers, "wall_seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    for threshold in THRESHOLDS:
        reached = {
            name: crossing(
                [(r["train_seconds"], r["digit_fid"]) for r in rows if r["recipe"] == name], threshold
            )
            for name in RECIPES
        }
        ratio = (
            reached["diffusers"] / reached["minidiff"]
            if reached["diffusers"] is not None and reached["minidiff"]
            else None
        )
        first = {name: min(r["train_seconds"] for r in rows if r["recipe"] == name) for name in RECIPES}
        # reached by the first reading: the crossing is only bounded from above (a ratio with it is a bound)
        upper_bounds = [
            name for name in RECIPES if reached[name] is not None and reached[name] == first[name]
        ]
        summary["thresholds"][str(threshold)] = {**reached, "ratio": ratio, "upper_bounds": upper_bounds}
    write_csv(rows, out / "time_to_quality.csv")
    (out / "time_to_quality.json").write_text(json.dumps(summary, indent=2, default=list) + "\n")
    plot(rows, samplers, summary, out / "time_to_quality.png")
    for threshold, values in summary["thresholds"].items():
        times = ", ".join(
            f"{name} {'<= ' * (name in values['upper_bounds'])}{_seconds(values[name])}" for name in RECIPES
        )
        ratio = "n/a" if values["ratio"] is None else f"{values['ratio']:.2f}"
        print(f"training to digit FID {threshold}: {times}; diffusers / minidiff = {ratio}")
    print(f"wrote {out}/time_to_quality.csv, .json, .png")
    return 0


CONFIG_KEYS = (
    "block_out_channels", "layers_per_block", "batch_size", "lr", "warmup_steps", "ema_decay", "prediction_type",
    "rescale_betas_zero_snr", "timestep_spacing", "snr_gamma", "weighting_scheme", "logit_mean", "logit_std",
    "mixed_precision", "beta_schedule",
)  # fmt: skip


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f} s"


def write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot(rows: list[dict], samplers: list[dict], summary: dict, path: Path) -> Path:
    """Left: digit FID against training seconds, both recipes. Right: the final minidiff model's digit FID
    against sampling seconds, one point per sampler setting."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    for name, color in zip(RECIPES, ("tab:red", "tab:blue")):
        mine = [r for r in rows if r["recipe"] == name]
        left.plot([r["train_seconds"] for r in mine], [r["digit_fid"] for r in mine], marker="o", color=color,
                  label=f"{name} ({mine[0]['sampler']})")  # fmt: skip
    for threshold in THRESHOLDS:
        left.axhline(threshold, color="grey", linestyle=":", linewidth=1)
    left.set(xlabel="training seconds", ylabel="digit FID (lower is better)", yscale="log")
    left.legend(fontsize=8)
    left.grid(True, which="both", alpha=0.2)
    for r in samplers:
        right.scatter(r["sampling_seconds"], r["digit_fid"], color="tab:blue")
        right.annotate(r["sampler"], (r["sampling_seconds"], r["digit_fid"]), fontsize=8,
                       xytext=(4, 4), textcoords="offset points")  # fmt: skip
    times = [r["sampling_seconds"] for r in samplers]
    # a log axis only over a decade or more (a narrower log axis has no tick labels)
    wide = bool(times) and max(times) >= 10 * min(times)
    right.set(xlabel=f"sampling seconds ({summary['settings']['samples']} images)", xscale="log" if wide else "linear",
              ylabel="digit FID", title="the final minidiff model, per sampler")  # fmt: skip
    right.grid(True, which="both", alpha=0.2)
    hw = summary["hardware"]
    fig.suptitle(
        f"{summary['settings']['samples']} samples per reading; {hw['cpu']} ({hw['cpu_capability']}"
        f"{', AVX2 hold' if hw['avx2_hold'] else ''}), {hw['torch_threads']} threads, "
        f"torch {hw['torch']}",
        fontsize=9,
    )
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
