"""Pictures: image grids, the forward-noising strip, the signal-to-noise plot, loss curves.

Matplotlib is imported inside the functions and used through `Figure` + `FigureCanvasAgg` (no pyplot,
no global backend switch), so importing this module changes nothing and works without a display.

The forward process (Ho et al. 2020, eq. 4) that these pictures show:
    x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * epsilon,    epsilon ~ N(0, I)
sqrt(alpha_bar_t) is the signal coefficient, and SNR(t) = alpha_bar_t / (1 - alpha_bar_t)
(Kingma et al. 2021, "Variational Diffusion Models", eq. 1).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# sqrt(alpha_bar_T) above which x_T visibly keeps the image. Stable Diffusion's schedule ends at 0.068,
# which Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are Flawed") show leaks
# enough low-frequency signal to bias samples; DDPM's linear 1e-4 -> 0.02 schedule ends at 0.0064.
TERMINAL_SIGNAL_THRESHOLD = 0.05


# ---- images: [-1, 1] -> [0, 1] -> uint8, written here once -------------------------------------------
def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] -> pixels in [0, 1], as diffusers' pipelines convert: (x / 2 + 0.5).clamp(0, 1)."""
    return (images / 2 + 0.5).clamp(0, 1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> uint8, rounding as diffusers saves them: (x * 255).round() (float32 arithmetic)."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8)


def numpy_to_pil(images: np.ndarray) -> list[Image.Image]:
    """NHWC floats in [0, 1] -> PIL images ("L" for 1 channel, "RGB" for 3), rounding as diffusers does:
    (x * 255).round() as uint8.

    Args:
        images: (N, H, W, C) or one (H, W, C) image, floats in [0, 1].
    """
    if images.ndim == 3:
        images = images[None, ...]
    images = (images * 255).round().astype(np.uint8)
    return [Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image) for image in images]


def to_pil_images(images: torch.Tensor) -> list[Image.Image]:
    """(B, C, H, W) in [-1, 1] -> B PIL images, as diffusers' pipeline converts: (x / 2 + 0.5).clamp(0, 1),
    then `numpy_to_pil`."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images have shape {tuple(images.shape)}; expected (B, C, H, W) with C = 1 or 3")
    x = denormalize(images.detach().float())
    return numpy_to_pil(x.cpu().permute(0, 2, 3, 1).numpy())  # (B, H, W, C)


def make_grid(images: list[Image.Image] | torch.Tensor, nrow: int | None = None) -> Image.Image:
    """Paste images side by side, as the tutorial's `make_grid` / diffusers' `make_image_grid` do.

    Args:
        images: PIL images, or a (B, C, H, W) tensor in [-1, 1] (converted with `to_pil_images`).
        nrow: images per row (default: a square-ish grid).
    """
    if isinstance(images, torch.Tensor):
        images = to_pil_images(images)
    images = list(images)
    if not images:
        raise ValueError("make_grid got no images")
    width, height = images[0].size
    if any(image.size != (width, height) for image in images):
        raise ValueError(f"images differ in size: {sorted({image.size for image in images})}")
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    if nrow < 1:
        raise ValueError(f"nrow={nrow!r}; expected a positive int")
    rows = math.ceil(len(images) / nrow)
    mode = images[0].mode if all(image.mode == images[0].mode for image in images) else "RGB"
    grid = Image.new(mode, (nrow * width, rows * height))
    for i, image in enumerate(images):
        grid.paste(image.convert(mode), ((i % nrow) * width, (i // nrow) * height))
    return grid


def make_image_grid(
    images: list[Image.Image], rows: int, cols: int, resize: int | None = None
) -> Image.Image:
    """diffusers' `make_image_grid`: `rows` x `cols` images, row by row, on one RGB canvas.

    Args:
        images: exactly `rows * cols` PIL images.
        rows: the number of rows.
        cols: the number of columns.
        resize: resize every image to `resize` x `resize` pixels first.

    Returns:
        The grid, its cells the size of the first image.
    """
    images = list(images)
    if len(images) != rows * cols:
        raise ValueError(f"got {len(images)} images for rows={rows} x cols={cols}; expected {rows * cols}")
    if resize is not None:
        images = [image.resize((resize, resize)) for image in images]
    width, height = images[0].size
    grid = Image.new("RGB", size=(cols * width, rows * height))
    for i, image in enumerate(images):
        grid.paste(image, box=(i % cols * width, i // cols * height))
    return grid


def save_grid(
    images: list[Image.Image] | torch.Tensor, path: str | os.PathLike, nrow: int | None = None
) -> Path:
    """`make_grid` written to `path` (parent folders are created).

    Args:
        images: PIL images or a (B, C, H, W) tensor in [-1, 1].
        path: the image file to write.
        nrow: images per row (default: a square-ish grid).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, nrow).save(path)
    return path


MIN_GRID_CELL = 64  # pixels: sample grids enlarge smaller images (nearest neighbour, whole factor)


def enlarged(images: list[Image.Image], min_size: int = MIN_GRID_CELL) -> list[Image.Image]:
    """PIL images scaled up by a whole factor (nearest neighbour) to at least `min_size` pixels wide:
    a grid of 16-pixel digits is too small to see."""
    scale = max(1, math.ceil(min_size / images[0].width))
    return [im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST) for im in images]


def _label_below(panel: Image.Image, text: str, band: int) -> Image.Image:
    """The panel with a white band underneath carrying `text` (PIL's default font)."""
    out = Image.new("RGB", (panel.width, panel.height + band), "white")
    out.paste(panel.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=max(10, band - 4))
    draw.text((panel.width // 2, panel.height + band // 2), text, fill="black", font=font, anchor="mm")
    return out


def noising_strip(
    scheduler,
    x0: torch.Tensor,
    timesteps: list[int] | None = None,
    generator: torch.Generator | None = None,
    min_panel: int = 96,
    noise: torch.Tensor | None = None,
) -> Image.Image:
    """One image pushed through the forward process: `scheduler.add_noise(x0, epsilon, t)` at several t,
    side by side, each panel labelled with its t. One epsilon for every panel, so the image fades out.

    x0: (1, C, H, W) in [-1, 1]. timesteps: default 8 evenly spaced over 0 .. T-1. Small images are
    enlarged (nearest neighbour, whole factor) until a panel is at least `min_panel` pixels wide.
    noise: the epsilon, shaped like x0 (default: drawn from N(0, I) with `generator`), e.g.
    `torch.rand_like(x0)` to see what uniform noise does instead. Pixels are clipped to [-1, 1] for display.
    """
    if x0.ndim != 4 or x0.shape[0] != 1:
        raise ValueError(f"x0 has shape {tuple(x0.shape)}; expected (1, C, H, W)")
    if noise is not None and noise.shape != x0.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}; expected x0's shape {tuple(x0.shape)}")
    num_train_timesteps = len(scheduler.alphas_cumprod)
    if timesteps is None:
        timesteps = np.linspace(0, num_train_timesteps - 1, 8).round().astype(int).tolist()
    bad = [t for t in timesteps if not 0 <= int(t) < num_train_timesteps]
    if not timesteps or bad:
        raise ValueError(
            f"timesteps {bad or timesteps} must be a non-empty list in 0..{num_train_timesteps - 1}"
        )

    if noise is None:  # drawn on the generator's device (CPU by default), then moved: same picture anywhere
        noise_device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.randn(x0.shape, generator=generator, device=noise_device, dtype=x0.dtype)
    noise = noise.to(x0.device, x0.dtype)
    n = len(timesteps)
    t = torch.tensor([int(t) for t in timesteps], device=x0.device)
    x_t = scheduler.add_noise(x0.expand(n, -1, -1, -1), noise.expand(n, -1, -1, -1), t)  # (n, C, H, W)

    panels = [
        _label_below(image, f"t = {step}", band=max(14, image.height // 6))
        for image, step in zip(enlarged(to_pil_images(x_t), min_panel), t.tolist())
    ]
    return make_grid(panels, nrow=n)


# ---- schedules --------------------------------------------------------------------------------------
def _alpha_bar(scheduler) -> np.ndarray:
    return scheduler.alphas_cumprod.detach().cpu().double().numpy()  # (T,)


def terminal_signal_warning(scheduler, threshold: float = TERMINAL_SIGNAL_THRESHOLD) -> str | None:
    """A message when x_T still carries the image, i.e. sqrt(alpha_bar_T) > threshold; else None.

    Sampling starts from pure noise x_T ~ N(0, I), but a schedule with signal left at t = T trained the
    model on x_T = sqrt(alpha_bar_T) x_0 + ...: train and sample disagree at the first step.
    The tutorial's first schedule (linear beta 0.001 -> 0.004, 1000 steps) ends at alpha_bar_T ~ 0.082.

    Args:
        scheduler: a scheduler with `alphas_cumprod`.
        threshold: the largest signal coefficient sqrt(alpha_bar_T) that passes.
    """
    alpha_bar_T = float(_alpha_bar(scheduler)[-1])
    signal = math.sqrt(alpha_bar_T)
    if signal <= threshold:
        return None
    return (
        f"alpha_bar_T = {alpha_bar_T:.4f}: the last noisy image x_T = {signal:.3f} * x_0 + "
        f"{math.sqrt(1 - alpha_bar_T):.3f} * noise still holds the image (signal coefficient "
        f"sqrt(alpha_bar_T) = {signal:.3f} > {threshold}), yet sampling starts from pure noise. "
        "Raise beta_end, use beta_schedule='squaredcos_cap_v2', or rescale_betas_zero_snr=True."
    )


# ---- figures: matplotlib through Figure + FigureCanvasAgg, one way for every plot of the package -------------
def new_figure(width: float, height: float):
    """A matplotlib Figure of `width` x `height` inches on the Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write `fig` as a PNG at 110 dpi (its folder made if needed); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_snr(
    scheduler, path: str | os.PathLike, label: str | None = None, threshold: float = TERMINAL_SIGNAL_THRESHOLD
) -> Path:
    """Left: log SNR(t) = log(alpha_bar_t / (1 - alpha_bar_t)) over t. Right: the signal and noise
    coefficients sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t). alpha_bar_T is marked on both.

    `scheduler` may be one scheduler or a list of (label, scheduler) pairs drawn on the same axes,
    e.g. [("linear", DDPMScheduler()), ("squaredcos_cap_v2", DDPMScheduler(beta_schedule=...))].

    Args:
        scheduler: a scheduler, or a list of (label, scheduler) pairs.
        path: the PNG to write.
        label: the legend of a single scheduler (default: its beta_schedule).
        threshold: the signal coefficient drawn as the limit of `terminal_signal_warning`.
    """
    if isinstance(scheduler, list | tuple):
        curves = [(str(name), sched) for name, sched in scheduler]
    else:
        curves = [(label or scheduler.config.get("beta_schedule", type(scheduler).__name__), scheduler)]
    if not curves:
        raise ValueError("plot_snr got an empty list of schedulers")

    fig = new_figure(11, 4)
    ax_snr, ax_coef = fig.subplots(1, 2)
    for name, sched in curves:
        alpha_bar = _alpha_bar(sched)
        t = np.arange(len(alpha_bar))
        with np.errstate(divide="ignore"):
            log_snr = np.log(alpha_bar) - np.log1p(-alpha_bar)
        alpha_bar_T = alpha_bar[-1]
        text = f"{name}: ᾱ_T = {alpha_bar_T:.3g}, √ᾱ_T = {math.sqrt(alpha_bar_T):.3g}"
        (line,) = ax_snr.plot(t, log_snr, label=text)
        ax_snr.plot(t[-1], log_snr[-1], "o", color=line.get_color())
        ax_coef.plot(t, np.sqrt(alpha_bar), color=line.get_color(), label=f"{name}: √ᾱ_t (signal)")
        ax_coef.plot(
            t, np.sqrt(1 - alpha_bar), "--", color=line.get_color(), label=f"{name}: √(1-ᾱ_t) (noise)"
        )
        ax_coef.plot(t[-1], math.sqrt(alpha_bar_T), "o", color=line.get_color())
    ax_snr.axhline(0, color="grey", linewidth=0.5)
    ax_snr.set(xlabel="timestep t", ylabel="log SNR(t) = log(ᾱ_t / (1 - ᾱ_t))", title="signal-to-noise ratio")
    ax_snr.legend(fontsize=8)
    ax_coef.axhline(
        threshold, color="red", linewidth=0.8, linestyle=":", label=f"√ᾱ_T warning level {threshold}"
    )
    ax_coef.set(xlabel="timestep t", ylabel="coefficient", title="x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε", ylim=(0, 1.5))
    ax_coef.set_yticks(np.linspace(0, 1, 6))
    ax_coef.legend(fontsize=7, loc="upper center", ncol=2)  # above the curves, which stay below 1
    return save_figure(fig, path)


# ---- training ---------------------------------------------------------------------------------------
def smoothing_window(num_steps: int) -> int:
    """The moving average's window for a run of `num_steps` losses: 1/50 of the run; below 2 (runs under
    100 steps) there is no average to draw, since a 1-step average is the loss itself."""
    return num_steps // 50


def loss_figure(losses: Sequence[float], evals: dict[int, float] | None = None, ylabel: str = "MSE(ε, ε_θ)"):
    """The figure `plot_losses` writes (a matplotlib Figure, no pyplot): the arguments are plot_losses'."""
    values = np.asarray([float(v) for v in losses], dtype=np.float64)
    if values.size == 0:
        raise ValueError("plot_losses got no loss values")
    window = smoothing_window(values.size)
    steps = np.arange(values.size)

    fig = new_figure(11, 4)
    for ax, scale in zip(fig.subplots(1, 2), ("linear", "log")):
        ax.plot(steps, values, linewidth=0.6, alpha=0.4, label="loss per step")
        if window >= 2:  # the mean of the last `window` losses, drawn at the last of them
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")  # (N - window + 1,)
            ax.plot(steps[window - 1 :], smooth, linewidth=1.5, label=f"moving average over {window} steps")
        ax.set(xlabel="training step", ylabel=ylabel, yscale=scale, title=f"{scale} scale")
        ax.legend(fontsize=8, loc="upper center")
        if evals:
            quality = ax.twinx()
            points = sorted(evals.items())
            quality.plot([s - 1 for s, _ in points], [v for _, v in points], "o-", color="tab:red",
                         label="digit FID (right axis)")  # fmt: skip
            quality.set(ylabel="digit FID (lower is better)", yscale=scale)
            quality.legend(fontsize=8, loc="upper right")
    return fig


def plot_losses(
    losses: Sequence[float],
    path: str | os.PathLike,
    evals: dict[int, float] | None = None,
    ylabel: str = "MSE(ε, ε_θ)",
) -> Path:
    """The loss per step on a linear and a log scale side by side, as the tutorial plots it, with a
    moving average over 1/50 of the run (`smoothing_window`; its legend names the window) drawn over the
    raw values from 100 steps on.

    Args:
        losses: the loss of every step.
        path: the PNG to write.
        evals: step -> digit FID, drawn on a second axis when given.
        ylabel: what the loss is (the training target and its weights).
    """
    return save_figure(loss_figure(losses, evals, ylabel), path)
