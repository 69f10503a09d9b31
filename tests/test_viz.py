"""minidiff.viz: grids, the noising strip, the SNR plot and its warning, loss plots."""

from __future__ import annotations

import math
import subprocess
import sys

import diffusers
import numpy as np
import pytest
import torch
from diffusers.utils import make_image_grid, numpy_to_pil
from PIL import Image

from minidiff import DDPMScheduler, viz

# The tutorial's first schedule: linear beta 0.001 -> 0.004 over 1000 steps.
FIRST = {"num_train_timesteps": 1000, "beta_start": 0.001, "beta_end": 0.004}


def _images(batch: int = 5, channels: int = 3, size: tuple[int, int] = (6, 4)) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, channels, *size, generator=g) * 2.4 - 1.2  # a little outside [-1, 1] too


@pytest.mark.parametrize("channels", [1, 3])
def test_to_pil_images_match_diffusers_pipeline_conversion(channels):
    x = _images(channels=channels)
    ours = viz.to_pil_images(x)
    # diffusers' DDPMPipeline: (x / 2 + 0.5).clamp(0, 1) -> NHWC numpy -> numpy_to_pil
    theirs = numpy_to_pil((x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy())
    assert [im.mode for im in ours] == [im.mode for im in theirs] == ["L" if channels == 1 else "RGB"] * 5
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same rounding: exact


def test_make_grid_layout_matches_diffusers(tmp_path):
    images = viz.to_pil_images(_images(batch=6))  # 6 images of 4 x 6 (W x H)
    grid = viz.make_grid(images, nrow=3)  # 3 per row -> 2 rows
    np.testing.assert_array_equal(np.asarray(grid), np.asarray(make_image_grid(images, rows=2, cols=3)))
    square = viz.make_grid(_images(batch=5))  # default: ceil(sqrt(5)) = 3 per row, 2 rows, one gap
    assert square.size == (3 * 4, 2 * 6)
    saved = viz.save_grid(images, tmp_path / "sub" / "grid.png", nrow=2)
    np.testing.assert_array_equal(np.asarray(Image.open(saved)), np.asarray(viz.make_grid(images, nrow=2)))
    with pytest.raises(ValueError, match="no images"):
        viz.make_grid([])
    with pytest.raises(ValueError, match="differ in size"):
        viz.make_grid([Image.new("RGB", (4, 4)), Image.new("RGB", (5, 4))])
    with pytest.raises(ValueError, match="expected \\(B, C, H, W\\)"):
        viz.to_pil_images(torch.zeros(2, 2, 4, 4))


def test_noising_strip_panels_are_add_noise():
    x0 = _images(batch=1, size=(8, 8)).clamp(-1, 1)
    timesteps = [0, 250, 999]
    strip = viz.noising_strip(DDPMScheduler(), x0, timesteps, generator=torch.Generator().manual_seed(3))
    scale = math.ceil(96 / 8)  # panels are enlarged to >= 96 px
    panel = 8 * scale
    assert strip.width == len(timesteps) * panel and strip.height > panel  # a label band underneath

    reference = diffusers.DDPMScheduler()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    for i, t in enumerate(timesteps):
        x_t = reference.add_noise(x0, noise, torch.tensor([t]))
        expected = viz.to_pil_images(x_t)[0].resize((panel, panel), Image.Resampling.NEAREST)
        got = strip.crop((i * panel, 0, (i + 1) * panel, panel))
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))  # same float32 ops: exact
    # the label band holds dark text pixels
    band = np.asarray(strip.crop((0, panel, panel, strip.height)).convert("L"))
    assert band.min() < 100

    default = viz.noising_strip(DDPMScheduler(), x0)
    assert default.width == 8 * panel  # 8 timesteps by default
    with pytest.raises(ValueError, match="1000"):
        viz.noising_strip(DDPMScheduler(), x0, [0, 1000])
    with pytest.raises(ValueError, match="expected \\(1, C, H, W\\)"):
        viz.noising_strip(DDPMScheduler(), x0.expand(2, -1, -1, -1))

    # a given epsilon (here the chapter's uniform torch.rand_like) is used as it is
    uniform = torch.rand(x0.shape, generator=torch.Generator().manual_seed(4))
    strip = viz.noising_strip(DDPMScheduler(), x0, [999], noise=uniform)
    x_t = reference.add_noise(x0, uniform, torch.tensor([999]))
    expected = viz.to_pil_images(x_t)[0].resize((panel, panel), Image.Resampling.NEAREST)
    np.testing.assert_array_equal(np.asarray(strip.crop((0, 0, panel, panel))), np.asarray(expected))
    with pytest.raises(ValueError, match="noise has shape"):
        viz.noising_strip(DDPMScheduler(), x0, noise=torch.rand(1, 3, 4, 4))


def test_terminal_signal_warning():
    first = DDPMScheduler(**FIRST)
    alpha_bar_T = float(diffusers.DDPMScheduler(**FIRST).alphas_cumprod[-1])
    assert 0.07 < alpha_bar_T < 0.09  # the tutorial's first schedule keeps signal (~0.082)
    message = viz.terminal_signal_warning(first)
    assert message is not None
    assert f"alpha_bar_T = {alpha_bar_T:.4f}" in message
    assert f"sqrt(alpha_bar_T) = {math.sqrt(alpha_bar_T):.3f}" in message
    # DDPM's linear 1e-4 -> 0.02 and the cosine schedule end in (near) pure noise
    assert viz.terminal_signal_warning(DDPMScheduler()) is None
    assert viz.terminal_signal_warning(DDPMScheduler(beta_schedule="squaredcos_cap_v2")) is None
    # the threshold decides: sqrt(alpha_bar_T) of the default schedule is ~0.0064
    assert viz.terminal_signal_warning(DDPMScheduler(), threshold=0.001) is not None


def test_plots_write_pngs_without_pyplot(tmp_path):
    # A fresh process: importing viz must not import matplotlib; plotting must not import pyplot.
    code = f"""
import sys
from minidiff import DDPMScheduler, viz
assert "matplotlib" not in sys.modules
first = DDPMScheduler(num_train_timesteps=1000, beta_start=0.001, beta_end=0.004)
viz.plot_snr(first, {str(tmp_path / "one.png")!r}, label="first")
viz.plot_snr([("first", first), ("cosine", DDPMScheduler(beta_schedule="squaredcos_cap_v2"))],
             {str(tmp_path / "two.png")!r})
viz.plot_losses([1.0, 0.5, 0.3, 0.2, 0.25, 0.1], {str(tmp_path / "loss.png")!r})
assert "matplotlib.pyplot" not in sys.modules
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in ("one", "two", "loss"):
        with Image.open(tmp_path / f"{name}.png") as image:
            assert image.width > 600 and image.height > 200


def test_plot_losses_rejects_empty(tmp_path):
    with pytest.raises(ValueError, match="no loss values"):
        viz.plot_losses([], tmp_path / "loss.png")
    with pytest.raises(ValueError, match="empty list"):
        viz.plot_snr([], tmp_path / "snr.png")


@pytest.mark.parametrize("num_steps", [6, 99, 100, 1653])
def test_loss_legend_names_the_moving_average_window(num_steps):
    """The smoothed line's legend says over how many steps it averages (1/50 of the run), and a run too
    short for a window of 2 draws no average instead of a "1-step average" that is the loss itself."""
    losses = np.linspace(1.0, 0.1, num_steps) + 0.05 * np.sin(np.arange(num_steps))
    figure = viz.loss_figure(losses)
    for ax in figure.axes:
        labels = [text.get_text() for text in ax.get_legend().get_texts()]
        window = num_steps // 50
        if window >= 2:
            assert labels == ["loss per step", f"moving average over {window} steps"]
            smooth = ax.get_lines()[1].get_ydata()
            # the mean of the last `window` losses
            assert smooth[-1] == pytest.approx(losses[-window:].mean())
        else:
            assert labels == ["loss per step"] and len(ax.get_lines()) == 1
