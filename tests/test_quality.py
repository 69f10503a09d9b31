"""Sample quality: the shipped digit network, FID / KID through torchmetrics, their ranking of known image
sets, the reference cache, the Inception path offline, `minidiff eval` and the quality-vs-steps sweep."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from tiny import TINY_UNET

from minidiff.quality import digit_net
from minidiff.quality.digit_net import held_out_digits
from minidiff.quality.evaluate import score
from minidiff.quality.features import (
    Features,
    InceptionFeatures,
    as_uint8,
    extract_features,
    feature_network,
)
from minidiff.quality.metrics import digit_scores, fid, kid
from minidiff.quality.reference import load_reference, reference_features, save_reference
from scripts.calibration import blurred, gaussian_noise


@pytest.fixture(scope="module")
def net():
    return feature_network("digit")


@pytest.fixture(scope="module")
def reference(net):
    """Features of the first 1,000 training-split digits at 16x16 (the demo's size)."""
    return reference_features("digits", 16, 1, net, limit=1000)[0]


@pytest.fixture(scope="module")
def held_out():
    return held_out_digits(16)[:300]  # (300, 1, 16, 16) uint8


def test_importing_the_quality_package_loads_neither_torchmetrics_nor_matplotlib():
    import subprocess

    code = "import sys, minidiff.quality; print('torchmetrics' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


# ---- the digit network --------------------------------------------------------------------------------
def test_shipped_weights_are_small_and_accurate_on_the_held_out_split():
    from minidiff.quality.digit_net import accuracy, digit_split

    assert digit_net.WEIGHTS_FILE.stat().st_size < 1024**2  # the bound: < 1 MB
    model = digit_net.load_digit_net()
    for size in (28, 16):  # native, and the demo's size read through the 16 -> 28 enlargement
        assert accuracy(model, *digit_split(digit_net.HELD_OUT_SPLIT, size)) >= 0.98, size


def test_training_is_deterministic_for_a_seed():
    from scripts.train_digit_net import train_digit_net

    first, second = (train_digit_net(seed=3, epochs=1, limit=256).state_dict() for _ in range(2))
    other = train_digit_net(seed=4, epochs=1, limit=256).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)  # the seed does matter


# ---- the metrics rank known sets sensibly -------------------------------------------------------------
def test_metrics_rank_real_below_blurred_below_noise(net, reference, held_out):
    sets = {
        "real": held_out,
        "blurred": blurred(held_out, sigma=1.0),
        "noise": gaussian_noise(len(held_out), 1, 16, seed=0),
    }
    scores = {name: score(reference, extract_features(images, net)) for name, images in sets.items()}
    for key in ("fid", "kid"):
        assert scores["real"][key] < scores["blurred"][key] < scores["noise"][key], (key, scores)
    # the floor is small next to a failure: real digits are at least 10x closer than noise
    assert scores["real"]["fid"] * 10 < scores["noise"]["fid"]
    assert scores["real"]["confident_share"] > 0.9 > 0.05 > scores["noise"]["confident_share"]
    # ten classes nearly equally often for real digits (max log2(10) = 3.32); noise is read as few classes
    assert scores["real"]["class_entropy_bits"] > 3.2 > 1 > scores["noise"]["class_entropy_bits"]


def test_kid_is_reproducible_for_a_seed_and_fid_is_symmetric(net, reference, held_out):
    fake = extract_features(held_out, net)
    assert kid(reference, fake, seed=1) == kid(reference, fake, seed=1)  # subsets drawn from the seed
    assert fid(reference, fake) == pytest.approx(fid(fake, reference), rel=1e-6)
    assert fid(fake, fake) == pytest.approx(0.0, abs=1e-6)


def test_class_histogram_entropy_sees_a_single_digit():
    logits = torch.full((20, 10), -10.0)
    logits[:, 3] = 10.0  # every sample is a confident "3"
    distance = torch.linspace(0.5, 1.5, 20)  # the first half in the digits' distribution
    scores = digit_scores(Features(torch.zeros(20, 4), "x", logits, distance))
    assert scores["class_entropy_bits"] == 0 and scores["class_counts"][3] == 20
    assert scores["confident_share"] == scores["in_distribution_share"] == 0.5
    with pytest.raises(ValueError, match="not the digit classifier"):
        digit_scores(Features(torch.zeros(20, 4), "x", logits))  # no distance: confidence alone is not asked


# ---- a confident digit is a digit: the in-distribution test -------------------------------------------------
def _non_digits(count: int, size: int = 16) -> dict[str, torch.Tensor]:
    """Easy non-digits, uint8 (count, 1, size, size) each, from fixed seeds."""
    g = torch.Generator().manual_seed(0)
    u8 = lambda x: (x.clamp(0, 1) * 255).round().to(torch.uint8)  # noqa: E731
    shape = (count, 1, size, size)
    held_out = held_out_digits(size)[:count].flatten(1)
    order = torch.stack([torch.randperm(size * size, generator=g) for _ in range(count)])
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    period = 1 + torch.arange(count) % 4  # checkerboard squares of 1..4 px
    smooth = torch.nn.functional.interpolate(
        torch.randn(count, 1, 4, 4, generator=g), size=size, mode="bicubic"
    )
    return {
        "Gaussian noise": gaussian_noise(count, 1, size, seed=0),
        "uniform noise": torch.randint(0, 256, shape, generator=g, dtype=torch.uint8),
        "low-pass noise": u8(smooth / 2 + 0.5),
        "black": torch.zeros(shape, dtype=torch.uint8),
        "white": torch.full(shape, 255, dtype=torch.uint8),
        "uniform grey": torch.linspace(0, 255, count).round().to(torch.uint8).view(-1, 1, 1, 1).expand(shape),
        "scrambled digits": torch.gather(held_out, 1, order).view(shape),
        "checkerboards": u8(
            ((rows // period.view(-1, 1, 1) + cols // period.view(-1, 1, 1)) % 2)[:, None].float()
        ),
    }


def _shapes(count: int, size: int = 28, parts: int = 3, strokes: bool = True) -> torch.Tensor:
    """`parts` random line segments (1.5 px wide) or discs (radius 2..6 px) per image, white on black."""
    g = torch.Generator().manual_seed(1)
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    out = torch.zeros(count, 1, size, size)
    for i in range(count):
        for _ in range(parts):
            if strokes:
                a, b = torch.rand(2, generator=g) * size, torch.rand(2, generator=g) * size
                ab = b - a
                t = (((y - a[0]) * ab[0] + (x - a[1]) * ab[1]) / (ab @ ab + 1e-6)).clamp(0, 1)
                ink = 1.5 - ((y - a[0] - t * ab[0]) ** 2 + (x - a[1] - t * ab[1]) ** 2).sqrt()
            else:
                centre, radius = (
                    size * (0.2 + 0.6 * torch.rand(2, generator=g)),
                    2 + 4 * torch.rand(1, generator=g),
                )
                ink = radius - ((y - centre[0]) ** 2 + (x - centre[1]) ** 2).sqrt()
            out[i, 0] = torch.maximum(out[i, 0], ink.clamp(0, 1))
    return (out * 255).round().to(torch.uint8)


def test_easy_non_digits_are_not_confident_digits(net):
    for kind, images in _non_digits(200).items():
        share = digit_scores(extract_features(images, net))["confident_share"]
        assert share <= 0.05, (kind, share)
    # random strokes and discs sometimes draw a digit (a "1", a "0"): a looser bound
    for kind, images in (("strokes", _shapes(100)), ("discs", _shapes(100, strokes=False))):
        share = digit_scores(extract_features(images, net))["confident_share"]
        assert share <= 0.12, (kind, share)


def test_held_out_digits_stay_confident_digits_and_scores_are_deterministic(net):
    from minidiff.quality.in_distribution import THRESHOLD_QUANTILE

    for size in (28, 16):
        images = held_out_digits(size)[:500]
        first, again = extract_features(images, net), extract_features(images, net)
        assert torch.equal(first.distance, again.distance)
        scores = digit_scores(first)
        # 99% of the training digits pass at 28x28; the held-out ones are a little further (measured 95%)
        assert scores["in_distribution_share"] >= THRESHOLD_QUANTILE - 0.07, size
        assert scores["confident_share"] >= 0.9, size


def test_in_distribution_statistics_belong_to_the_shipped_weights(tmp_path):
    from minidiff.quality.in_distribution import STATS_FILE, load_stats

    other = tmp_path / "other.safetensors"
    other.write_bytes(digit_net.WEIGHTS_FILE.read_bytes() + b" ")  # another digest
    with pytest.raises(ValueError, match="refit it with `python -m scripts.fit_digit_stats`"):
        load_stats(STATS_FILE, other)


@pytest.mark.slow
def test_shipped_in_distribution_statistics_equal_a_refit():
    from minidiff.quality.in_distribution import fit_stats, load_stats

    shipped, refit = load_stats(), fit_stats()
    assert shipped.keys() == refit.keys()
    for key in shipped:  # float32 convolutions summed in another order on other CPUs: a small tolerance
        torch.testing.assert_close(shipped[key], refit[key], rtol=1e-4, atol=1e-6)


# ---- bad input --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, message",
    [((4, 2, 16, 16), "2 channels"), ((4, 1, 16, 12), "square"), ((4, 1, 4, 4), "at least 8x8")],
)
def test_images_the_digit_network_cannot_read_are_refused(net, shape, message):
    with pytest.raises(ValueError, match=message):
        extract_features(torch.zeros(shape, dtype=torch.uint8), net)


def test_rgb_and_other_sizes_are_converted_with_a_note(net, held_out):
    rgb32 = torch.nn.functional.interpolate(held_out[:8].float(), size=32).round().to(torch.uint8)
    feats = extract_features(rgb32.expand(-1, 3, -1, -1), net)
    assert (
        len(feats) == 8 and any("grey" in n for n in feats.notes) and any("32x32" in n for n in feats.notes)
    )


def test_non_finite_and_out_of_range_images_are_refused():
    bad = torch.rand(5, 1, 16, 16)
    bad[2, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="1 of 5 images hold NaN"):
        as_uint8(bad)
    with pytest.raises(ValueError, match=r"expected \[0, 1\]"):
        as_uint8(torch.rand(5, 1, 16, 16) * 2 - 1)


def test_too_few_samples_for_a_covariance(net, reference, held_out):
    few = extract_features(held_out[: digit_net.NUM_FEATURES], net)  # N = d: singular covariance
    with pytest.raises(ValueError, match="64 sample images: FID on 64 features needs more than 64 samples"):
        fid(reference, few)
    mean, std = kid(reference, few)  # KID is defined (unbiased) on small sets
    assert math.isfinite(mean) and std > 0


def test_reference_from_another_network_is_refused(tmp_path, net, reference, held_out):
    other = Features(reference.values, "digitnet-000000000000")
    with pytest.raises(ValueError, match="compare features of one network"):
        fid(other, extract_features(held_out, net))
    path = save_reference(tmp_path / "ref.safetensors", other, {"data": "digits"})
    with pytest.raises(ValueError, match="computed with network 'digitnet-000000000000'"):
        load_reference(path, net.id)


def test_reference_features_are_cached_by_data_size_and_network(tmp_path, net):
    first, path, cached = reference_features("digits", 12, 1, net, tmp_path, limit=100)
    assert not cached and path.is_file() and "12px_1ch" in path.name and net.id in path.name
    again, path_again, cached_again = reference_features("digits", 12, 1, net, tmp_path, limit=100)
    assert cached_again and path_again == path and torch.equal(again.values, first.values)
    assert reference_features("digits", 10, 1, net, tmp_path, limit=100)[1] != path  # another size


# ---- Inception, offline -------------------------------------------------------------------------------------
class StandIn(torch.nn.Module):
    """Inception's interface: uint8 (B, 3, H, W) -> (B, 16) features, from a small fixed random conv."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        return torch.relu(self.conv(x.float() / 255)).mean(dim=(2, 3))


def test_inception_path_with_a_stand_in_network(held_out):
    network = InceptionFeatures(extractor=StandIn(), num_features=16)
    real = extract_features(held_out[:150], network)
    assert real.values.shape == (150, 16) and any("3 channels" in n for n in real.notes)
    same = extract_features(held_out[150:], network)
    noise = extract_features(gaussian_noise(150, 1, 16, seed=0), network)
    assert fid(real, same) < fid(real, noise)


def test_evaluate_end_to_end_on_a_stand_in_inception(diffusers_pipeline, tmp_path):
    from minidiff.quality.evaluate import evaluate

    stand_in = {"inception": InceptionFeatures(extractor=StandIn(), num_features=16)}
    report = evaluate(
        diffusers_pipeline, 70, "ddim", 2, "inception", cache_dir=tmp_path, progress=False, networks=stand_in
    )
    scores = report["metrics"]["inception"]
    assert report["networks"]["inception"] == "stand-in-StandIn" and "confident_share" not in scores
    assert scores["fid"] > 0 and math.isfinite(scores["kid"])
    assert any("resized to 299x299" in n for n in report["notes"])


def test_inception_without_torch_fidelity_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import fails as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'minidiff\[fid\]'"):
        feature_network("inception")


def test_inception_weights_offline_say_what_to_fetch(monkeypatch, tmp_path):
    pytest.importorskip("torch_fidelity")

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match="weights-inception-2015-12-05-6726825d.pth into that folder"):
        feature_network("inception")


# ---- minidiff eval and the sweep ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diffusers_pipeline(tmp_path_factory):
    """A random tiny 8x8 pipeline saved by diffusers itself."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("diffusers") / "pipe"
    pipe = diffusers.DDPMPipeline(diffusers.UNet2DModel(**TINY_UNET), diffusers.DDPMScheduler())
    pipe.save_pretrained(folder)
    return folder


def test_eval_command_on_a_pipeline_saved_by_diffusers(diffusers_pipeline, capsys):
    from minidiff.cli import main

    args = ["eval", "--model", str(diffusers_pipeline), "--num-samples", "70", "--steps", "2", "--quiet"]
    assert main([*args, "--sampler", "ddim", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((diffusers_pipeline / "eval.json").read_text())
    assert report["sampler"] == "ddim" and report["steps"] == 2 and report["num_samples"] == 70
    digit = report["metrics"]["digit"]
    assert digit["fid"] > 0 and sum(digit["class_counts"]) == 70 and "digit FID" in printed
    assert report["reference"]["digit"]["count"] == 4000 and not report["reference"]["digit"]["cached"]
    assert any("8x8 images resized to 28x28" in n for n in report["notes"])
    assert main([*args, "--sampler", "ddpm"]) == 0  # the second run reads the cached reference
    assert json.loads((diffusers_pipeline / "eval.json").read_text())["reference"]["digit"]["cached"]


def test_eval_command_defaults_to_the_library_sample_count_and_sampler():
    from minidiff.cli import build_parser
    from minidiff.quality.evaluate import DEFAULT_NUM_SAMPLES, DEFAULT_SAMPLER

    args = build_parser().parse_args(["eval", "--model", "m"])
    assert (args.num_samples, args.sampler) == (DEFAULT_NUM_SAMPLES, DEFAULT_SAMPLER)
    assert DEFAULT_SAMPLER != "ddpm"  # DDPM's T steps take hours for 500 samples on a CPU


def test_eval_errors_write_nothing(diffusers_pipeline, tmp_path, capsys):
    from minidiff.cli import main

    out = tmp_path / "eval.json"
    base = ["eval", "--model", str(diffusers_pipeline), "--steps", "2", "--quiet", "--out", str(out)]
    assert main([*base, "--num-samples", "10"]) == 1  # 10 <= 64 features: FID cannot be computed
    assert "more than 64 samples" in capsys.readouterr().err
    assert main([*base, "--num-samples", "70", "--metrics", "digit,sharpness"]) == 1
    assert "sharpness" in capsys.readouterr().err
    assert not out.exists()


def test_quality_vs_steps_and_its_plot(diffusers_pipeline, tmp_path):
    from minidiff.quality.steps import plot_quality_vs_steps, quality_vs_steps, summarize

    settings = (("ddpm", 2), ("ddim", 1), ("ddim", 2))
    results = quality_vs_steps(diffusers_pipeline, settings, num_samples=70, seeds=(0, 1), progress=False)
    assert [(r["sampler"], r["steps"], r["seed"]) for r in results] == [
        (s, n, seed) for s, n in settings for seed in (0, 1)
    ]
    assert all(r["fid"] > 0 and r["seconds"] > 0 for r in results)
    assert all(row["fid_std"] >= 0 and row["seeds"] == 2 for row in summarize(results))
    path = plot_quality_vs_steps(results, tmp_path / "quality_vs_steps.png")
    assert path.stat().st_size > 10_000


def test_eval_of_an_rgb_model_says_in_one_line_to_use_inception(tmp_path, capsys):
    from minidiff import DDPMPipeline, DDPMScheduler, UNet2DModel
    from minidiff.cli import main

    torch.manual_seed(0)
    folder = tmp_path / "rgb"
    unet = UNet2DModel(**{**TINY_UNET, "in_channels": 3, "out_channels": 3})
    DDPMPipeline(unet, DDPMScheduler()).save_pretrained(folder)
    assert main(["eval", "--model", str(folder), "--num-samples", "70", "--steps", "2", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "makes 3-channel 8x8 images: use --metrics inception" in err, err
    assert "1-channel digit images" in err and not (folder / "eval.json").exists()


def test_eval_prints_the_real_digits_floor_beside_each_score(diffusers_pipeline, net):
    """`minidiff eval`'s table gives, beside the model's digit FID, the FID of as many real held-out digits
    against the same reference: computed, not typed, and far below a random model's."""
    from minidiff.quality.evaluate import evaluate, format_report

    report = evaluate(diffusers_pipeline, 70, "ddim", 2, "digit", progress=False)
    reference = reference_features("digits", 8, 1, net)[0]
    floor = score(reference, extract_features(held_out_digits(8)[:70], net))
    assert report["real"]["digit"]["count"] == 70
    assert report["real"]["digit"]["fid"] == pytest.approx(floor["fid"])
    assert floor["fid"] < report["metrics"]["digit"]["fid"] / 5
    table = format_report(report)
    line = next(line for line in table.splitlines() if line.strip().startswith("digit FID"))
    assert line.split()[2:] == [f"{report['metrics']['digit']['fid']:.2f}", f"{floor['fid']:.2f}"]
    assert "real digits (70 held out)" in table and "what a perfect model scores" in table
    assert max(len(line) for line in table.splitlines()) <= 100
    other = format_report({**report, "data": "my/folder", "real": {}})
    assert "no real-data reference" in other and "held out" not in other.splitlines()[1]


def test_quality_only_measures_and_the_workbench_scripts_run_from_the_checkout():
    # minidiff.quality holds no script (no main()); the scripts that fit or calibrate run as python -m scripts.X
    import ast
    import subprocess
    from pathlib import Path

    import minidiff.quality

    folder = Path(minidiff.quality.__file__).parent
    mains = [
        path.name
        for path in folder.glob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef) and node.name == "main"
    ]
    assert mains == []
    root = Path(__file__).parents[1]
    for script in ("calibration", "train_digit_net", "fit_digit_stats"):
        done = subprocess.run(
            [sys.executable, "-m", f"scripts.{script}", "--help"], cwd=root, capture_output=True, text=True
        )
        assert done.returncode == 0 and f"python -m scripts.{script}" in done.stdout, (script, done.stderr)
