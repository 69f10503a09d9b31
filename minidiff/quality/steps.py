"""Quality against the number of sampling steps, with the time each setting takes: the speed-quality
trade-off of one trained model in one table and one picture.

    results = quality_vs_steps("out/demo/model")     # DDPM 1000; DDIM 10 to 250; DPM-Solver++ 10, 20
    plot_quality_vs_steps(results, "out/demo/quality_vs_steps.png")

The settings are (sampler, steps) pairs over minidiff/schedulers/samplers.py's names; its QUALITY_SWEEP is the default.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from minidiff.pipelines.pipeline_ddpm import with_sampler
from minidiff.quality.evaluate import (
    DEFAULT_NUM_SAMPLES,
    check_digit_model,
    generate,
    image_shape,
    load_pipeline,
    score,
)
from minidiff.quality.features import extract_features, feature_network
from minidiff.quality.reference import CACHE_SUBDIR, reference_features
from minidiff.schedulers.samplers import QUALITY_SWEEP, parse_settings

DEFAULT_SETTINGS = tuple(parse_settings(QUALITY_SWEEP))


def quality_vs_steps(
    model,
    settings: Sequence[tuple[str, int]] = DEFAULT_SETTINGS,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seeds: Sequence[int] = (0,),
    data: str = "digits",
    batch_size: int = 250,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    keep_images: bool = False,
) -> list[dict[str, object]]:
    """Digit FID, KID and confident share of `num_samples` samples for every (sampler, steps) in `settings`
    and every seed, with the sampling time.

    Args:
        model: a pipeline folder, hub id or DDPMPipeline.
        settings: (sampler name, steps) pairs (default: `minidiff.schedulers.samplers.QUALITY_SWEEP`).
        num_samples: images sampled per setting and seed.
        seeds: the seeds of the sampling noise; several give a mean and spread per setting.
        data: the real images: "digits" (the training split), a folder of images or a hub dataset id.
        batch_size: images sampled per UNet batch.
        device: where sampling and feature extraction run.
        cache_dir: the folder of cached reference features (default: eval/reference/ inside the model folder,
            when it is a local folder).
        progress: show progress bars.
        keep_images: also keep each setting's samples, as uint8 (N, C, H, W) under "images".

    Returns:
        One dict per (setting, seed): sampler, steps, seed, seconds and the scores.
    """
    pipeline = load_pipeline(model)
    pipeline.to(device)
    if cache_dir is None and isinstance(model, str | os.PathLike) and Path(model).is_dir():
        cache_dir = Path(model) / CACHE_SUBDIR
    channels, size = image_shape(pipeline)
    shape = (num_samples, channels, size, size)
    check_digit_model(shape, str(model) if isinstance(model, str | os.PathLike) else "the pipeline")
    network = feature_network("digit")
    network.notes(shape)  # refuses images the network cannot read
    reference, _, _ = reference_features(data, size, channels, network, cache_dir, device=device)
    results = []
    for sampler, steps in settings:
        runner = with_sampler(pipeline, sampler)
        for seed in seeds:
            images, seconds = generate(runner, num_samples, steps, seed, batch_size, progress)
            scores = score(reference, extract_features(images, network, device=device), seed)
            row = {"sampler": sampler, "steps": steps, "seed": seed, "num_samples": num_samples}
            results.append(
                {**row, "seconds": seconds, **scores, **({"images": images} if keep_images else {})}
            )
    return results


def mean_and_std(rows: Sequence[dict], keys: Sequence[str], point: dict | None = None) -> dict[str, float]:
    """Mean and standard deviation over `rows` of each of `keys` (rows without a key are left out); with
    `point`, its values stand in for the means (a fixed set's own figure, its spread from resamples)."""
    out = {}
    for key in keys:
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[key] = point[key] if point is not None else statistics.mean(values)
            out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def summarize(results: Sequence[dict], key: str = "fid") -> list[dict[str, object]]:
    """Mean and standard deviation over seeds of `key` and of the sampling time, per (sampler, steps)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in results:
        groups.setdefault((row["sampler"], row["steps"]), []).append(row)
    return [
        {"sampler": sampler, "steps": steps, "seeds": len(rows), **mean_and_std(rows, (key, "seconds"))}
        for (sampler, steps), rows in groups.items()
    ]


def plot_quality_vs_steps(results: Sequence[dict], path: str | os.PathLike, title: str | None = None) -> Path:
    """Digit FID (left axis, mean +- std over seeds) and sampling time (right axis) against the number of
    sampling steps (log scale): one line per sampler (a single setting is a point), in the order they come.

    Args:
        results: what `quality_vs_steps` returned.
        path: the PNG file to write.
        title: the plot's title (default: the samples per point and seeds).

    Returns:
        The path written.
    """
    from minidiff.viz import new_figure, save_figure

    summary = summarize(results)
    if not summary:
        raise ValueError("plot_quality_vs_steps got no results")
    fig = new_figure(7.5, 4.2)
    ax = fig.subplots()
    ax_time = ax.twinx()
    samplers = list(dict.fromkeys(r["sampler"] for r in summary))
    for i, sampler in enumerate(samplers):
        color, marker = f"C{i}", "osD^v<>p"[i % 8]
        rows = sorted((r for r in summary if r["sampler"] == sampler), key=lambda r: r["steps"])
        steps = [r["steps"] for r in rows]
        ax.errorbar(
            steps, [r["fid"] for r in rows], yerr=[r["fid_std"] for r in rows], color=color, marker=marker,
            capsize=3, label=f"{sampler.upper()} digit FID",
        )  # fmt: skip
        ax_time.plot(
            steps, [r["seconds"] for r in rows], color="grey", marker=marker, markerfacecolor="none",
            linestyle=":", label=f"{sampler.upper()} sampling time",
        )  # fmt: skip
    ax.set(xscale="log", xlabel="sampling steps", ylabel="digit FID (lower is better)", ylim=(0, None))
    ax_time.set(ylabel="sampling time (s), grey", ylim=(0, None))
    counts = {r["sampler"].upper(): r["seeds"] for r in summary}  # seeds per point, by sampler
    if len(set(counts.values())) == 1:
        seeds = str(next(iter(counts.values())))
    else:
        seeds = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
    samples = results[0].get("num_samples", "?")
    ax.set_title(title or f"{samples} samples per point; mean +- std over seeds ({seeds})")
    handles = ax.get_legend_handles_labels()[0] + ax_time.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="upper center")
    ax.grid(True, which="both", alpha=0.2)
    return save_figure(fig, path)
