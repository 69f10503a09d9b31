"""Evaluate a pipeline: sample it, read the samples with each feature network, compare with the real data.

    report = evaluate("out/demo/model", num_samples=500)   # DPM-Solver++, 20 steps (samplers.CHOICES["eval"])
    print(format_report(report))          # the table `minidiff eval` prints; `report` is eval.json's content

Samples come from `DDPMPipeline` (the step of any sampler of minidiff/schedulers/samplers.py on the pipeline's own
schedule), batch after batch from one CPU generator seeded by `seed`: the same (seed, batch_size) give the
same samples on any device. `digit_fid` is the one-number reading a training run takes (eval_every).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from minidiff.pipelines.pipeline_ddpm import with_sampler
from minidiff.quality.features import Features, as_uint8, extract_features, feature_network
from minidiff.quality.metrics import CONFIDENT_RULE, check_fid_count, digit_scores, fid, kid
from minidiff.quality.reference import CACHE_SUBDIR, reference_features
from minidiff.schedulers.samplers import CHOICES, steps_for

# Samples per evaluation: FID varies by about 4% between seeds there (README). FID depends on the count:
# compare figures of equal counts.
DEFAULT_NUM_SAMPLES = 500
# The default sampler, at its default steps (the table's "eval" choice, DPM-Solver++ 20; a training run's
# digit FID readings use it too). Compare figures of one sampler and step count only.
DEFAULT_SAMPLER = CHOICES["eval"].sampler
METRIC_GROUPS = ("digit", "inception")  # one per feature network


def load_pipeline(model):
    """A DDPMPipeline from a folder or hub id (saved by minidiff or diffusers), or the pipeline itself."""
    from minidiff.pipelines.pipeline_ddpm import DDPMPipeline

    return model if isinstance(model, DDPMPipeline) else DDPMPipeline.from_pretrained(model)


def image_shape(pipeline) -> tuple[int, int]:
    """(channels, size) of the pipeline's images (square only)."""
    config = pipeline.unet.config
    size = config.sample_size
    if not isinstance(size, int):
        if len(set(size)) != 1:
            raise ValueError(f"sample_size {tuple(size)} is not square; the metrics read square images")
        size = size[0]
    return config.in_channels, int(size)


@torch.no_grad()
def generate(
    pipeline,
    num_samples: int,
    steps: int,
    seed: int = 0,
    batch_size: int = 250,
    progress: bool = True,
) -> tuple[torch.Tensor, float]:
    """`num_samples` images as uint8 (N, C, H, W) and the seconds sampling took. NaN / inf samples raise."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r}; expected a positive int")
    generator = torch.Generator().manual_seed(seed)  # CPU: the same samples on any device
    images, started, done = [], time.perf_counter(), 0
    while done < num_samples:
        batch = min(batch_size, num_samples - done)
        pipeline.set_progress_bar_config(desc=f"sampling {done + batch}/{num_samples}", leave=False)
        x = pipeline(
            batch_size=batch,
            generator=generator,
            num_inference_steps=steps,
            output_type="pt",
            progress=progress,
        ).images  # (B, C, H, W) in [0, 1]
        images.append(as_uint8(x.float().cpu()))  # refuses non-finite samples
        done += batch
    return torch.cat(images), time.perf_counter() - started


def score(reference: Features, samples: Features, seed: int = 0) -> dict[str, object]:
    """FID, KID (mean and std over subsets) and, for a classifier, its scores of the samples."""
    kid_mean, kid_std = kid(reference, samples, seed=seed)
    scores: dict[str, object] = {"fid": fid(reference, samples), "kid": kid_mean, "kid_std": kid_std}
    if samples.logits is not None:
        scores.update(digit_scores(samples))
    return scores


def check_metrics(metrics: str | list[str] | tuple[str, ...]) -> list[str]:
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in names if m not in METRIC_GROUPS]
    if unknown or not names:
        raise ValueError(
            f"metrics {unknown or names} not known; expected a list out of {list(METRIC_GROUPS)}"
        )
    return names


def check_digit_model(shape: tuple[int, int, int, int], model_name: str) -> None:
    """The digit metrics read 1-channel digit images: a model of other images (RGB, e.g. butterflies) would
    get digit scores that mean nothing, so it is refused with the metric to use instead."""
    _, channels, height, width = shape
    if channels != 1:
        raise ValueError(
            f"the digit network reads 1-channel digit images; {model_name} makes {channels}-channel "
            f"{height}x{width} images: use --metrics inception"
        )


def prepare_networks(
    names: list[str],
    shape: tuple[int, int, int, int],
    networks: dict | None = None,
    model_name: str = "the model",
) -> tuple[dict, list[str]]:
    """The feature network of each metric group, checked against the samples' `shape` (N, C, H, W) and
    count before anything is sampled; and the notes on how the images will be converted."""
    if "digit" in names:
        check_digit_model(shape, model_name)
    nets = {name: (networks or {}).get(name) or feature_network(name) for name in names}
    notes: list[str] = []
    for name, net in nets.items():
        notes += net.notes(shape)  # refuses what the network cannot read
        check_fid_count(shape[0], net.num_features, f"--num-samples {shape[0]} ({name} network)")
    return nets, notes


def real_reference(
    data: str, nets: dict, size: int, channels: int, count: int, references: dict, seed: int, device="cpu"
) -> dict[str, dict]:
    """The scores of real images the reference never saw, as many as the samples: the floor a perfect
    model reaches with this sample count, printed beside the model's scores.

    Only the embedded digits have such a set (the digit network's 1,000 held-out digits, indices
    4000..4999); for other data the answer is empty.
    """
    if data != "digits":
        return {}
    from minidiff.quality.digit_net import held_out_digits

    held_out = held_out_digits(size, channels)[:count]
    return {
        name: {
            **score(references[name], extract_features(held_out, net, device=device), seed),
            "count": len(held_out),
        }
        for name, net in nets.items()
    }


def evaluate(
    model,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
    metrics: str | list[str] | tuple[str, ...] = ("digit",),
    data: str = "digits",
    seed: int = 0,
    batch_size: int = 250,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    networks: dict | None = None,
) -> dict[str, object]:
    """Sample `model` and score the samples against `data` with each metric group's network (`minidiff eval`).

    Every check (sampler, metrics, image shape, sample count) runs before the first sample is drawn.

    Args:
        model: a pipeline folder or hub id (saved by minidiff or diffusers), or a DDPMPipeline.
        num_samples: how many images to sample and score.
        sampler: a sampler name of `minidiff.schedulers.samplers.SAMPLERS` (default dpmsolver++).
        steps: sampling steps (default: the sampler's own, `minidiff.schedulers.samplers.steps_for`: T for ddpm, 50
            for ddim, 20 for dpmsolver++, ...).
        metrics: the metric groups, "digit" and/or "inception" (a list, or a comma-separated string).
        data: the real images: "digits" (the training split), a folder of images or a hub dataset id.
        seed: seeds the sampling noise and KID's subsets.
        batch_size: images sampled per UNet batch.
        device: where sampling and feature extraction run.
        cache_dir: the folder of cached reference features (default: eval/reference/ inside the model folder,
            when it is a local folder; None otherwise: no caching).
        progress: show progress bars.
        networks: feature networks by group name in place of the default ones (e.g. a stand-in Inception).

    Returns:
        The report: the settings, the scores of each group under "metrics", the networks' ids, the reference
        files, the seconds spent and notes on image conversions (`format_report` prints it).
    """
    names = check_metrics(metrics)
    from_files = isinstance(model, str | os.PathLike)
    if cache_dir is None and from_files and Path(model).is_dir():
        cache_dir = Path(model) / CACHE_SUBDIR
    pipeline = with_sampler(load_pipeline(model), sampler)
    pipeline.to(device)
    steps = steps_for(sampler, pipeline.scheduler.config.num_train_timesteps, steps)
    channels, size = image_shape(pipeline)
    model_name = str(model) if from_files else "the pipeline"
    nets, notes = prepare_networks(names, (num_samples, channels, size, size), networks, model_name)
    seconds: dict[str, dict] = {"reference": {}, "features": {}}
    references, reference_info = {}, {}
    for name, net in nets.items():
        started = time.perf_counter()
        feats, path, cached = reference_features(data, size, channels, net, cache_dir, device=device)
        seconds["reference"][name] = time.perf_counter() - started
        references[name] = feats
        reference_info[name] = {"file": str(path) if path else None, "cached": cached, "count": len(feats)}
    images, sampling_s = generate(pipeline, num_samples, steps, seed, batch_size, progress)
    results = {}
    for name, net in nets.items():
        started = time.perf_counter()
        feats = extract_features(images, net, device=device)
        seconds["features"][name] = time.perf_counter() - started
        results[name] = score(references[name], feats, seed)
    real = real_reference(data, nets, size, channels, num_samples, references, seed, device)
    settings = {"sampler": sampler, "steps": steps, "num_samples": num_samples, "seed": seed}
    return {
        "model": str(model) if from_files else "(pipeline object)",
        **settings,
        "batch_size": batch_size,
        "data": data,
        "image_size": size,
        "channels": channels,
        "device": str(device),
        "metrics": results,
        "networks": {name: net.id for name, net in nets.items()},
        "reference": reference_info,
        "real": real,  # the same scores for held-out real images (digits only): the floor
        "seconds": {"sampling": sampling_s, **seconds},
        "notes": notes,
    }


def digit_fid(
    pipeline,
    data: str,
    num_samples: int,
    seed: int = 0,
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> float:
    """The digit FID of `num_samples` images of `pipeline` against all of `data`, on the UNet's device.

    The reading a training run takes every `eval_every` steps.

    Args:
        pipeline: any DDPMPipeline.
        data: the real images: "digits" (the training split), a folder of images or a hub dataset id.
        num_samples: how many images to sample.
        seed: seeds the sampling noise.
        sampler: a sampler name of `minidiff.schedulers.samplers.SAMPLERS`, built on the pipeline's schedule.
        steps: sampling steps (default: the sampler's own count).
        cache_dir: the folder of cached reference features (None: no caching).

    Returns:
        The FID.
    """
    network = feature_network("digit")
    channels, size = image_shape(pipeline)
    device = pipeline.device
    reference, _, _ = reference_features(data, size, channels, network, cache_dir, device=device)
    runner = with_sampler(pipeline, sampler)
    steps = steps_for(sampler, pipeline.scheduler.config.num_train_timesteps, steps)
    images, _ = generate(runner, num_samples, steps, seed, progress=False)
    return fid(reference, extract_features(images, network, device=device))


def format_report(report: dict) -> str:
    """The table `minidiff eval` prints.

    Args:
        report: what `evaluate` returned.

    Returns:
        The table as text: a heading with the settings, then one line per score and timing; beside each
        score, the same score of as many real held-out digits (the floor), when the data has them.
    """
    rows = []
    real = report.get("real", {})
    for name, scores in report["metrics"].items():
        floor = real.get(name, {})

        def beside(key, fmt, floor=floor):
            return format(floor[key], fmt) if key in floor else ""

        rows.append((f"{name} FID", f"{scores['fid']:.2f}", beside("fid", ".2f")))
        kid_floor = f"{floor['kid']:.4g} +- {floor['kid_std']:.2g}" if "kid" in floor else ""
        rows.append(
            (
                f"{name} KID (+- std over subsets)",
                f"{scores['kid']:.4g} +- {scores['kid_std']:.2g}",
                kid_floor,
            )
        )
        if "confident_share" in scores:
            rows.append(
                (
                    f"confident digits ({CONFIDENT_RULE})",
                    f"{scores['confident_share']:.1%}",
                    beside("confident_share", ".1%"),
                )
            )
            rows.append(
                (
                    "class entropy (bits, max 3.32)",
                    f"{scores['class_entropy_bits']:.3f}",
                    beside("class_entropy_bits", ".3f"),
                )
            )
    seconds = report["seconds"]
    rows.append((f"sampling {report['num_samples']} images", f"{seconds['sampling']:.1f} s", ""))
    for name, value in seconds["features"].items():
        rows.append((f"{name} features of the samples", f"{value:.2f} s", ""))
    head = (
        f"{report['sampler']} with {report['steps']} steps, {report['num_samples']} samples (seed {report['seed']}) "
        f"vs {report['data']!r} at {report['image_size']}x{report['image_size']}"
    )
    count = next((floor["count"] for floor in real.values()), None)
    columns = ("", "samples", f"real digits ({count} held out)" if count else "")
    width = max(len(label) for label, _, _ in rows)
    value_width = max(len(columns[1]), *(len(value) for _, value, _ in rows))
    lines = [head, f"  {'':<{width}}  {columns[1]:<{value_width}}  {columns[2]}".rstrip()]
    lines += [f"  {label:<{width}}  {value:<{value_width}}  {ref}".rstrip() for label, value, ref in rows]
    if count:
        lines += [
            f"  real digits: {count} digits that neither the reference nor the digit network saw, scored the",
            "  same way: what a perfect model scores with this many samples",
        ]
    else:
        lines += [
            "  no real-data reference: held-out real images exist for the embedded digits only,",
            f"  not for {report['data']!r}",
        ]
    return "\n".join(lines)
