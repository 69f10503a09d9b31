"""Training a DDPM: the rules of a step, two engines that run them, and the one loop around both.

from minidiff.training import preset, train
result = train(preset("tiny", out_dir="out/tiny"))

config.py       TrainConfig: every setting of a run; the presets "tutorial", "tiny", "cpu32" (colour
                32x32 folders on a CPU) and "diffusers" (train_unconditional.py's own defaults)
rules.py        the rules: target per prediction_type, loss (min-SNR weights), AdamW, lr schedule, clipping,
                data order, EMA
step.py         the plain engine: one eager optimizer step (`train_step`), batches drawn on the host
fast_engine.py  the fast engine `FastTrainer`: the data on the device, each step one CUDA graph
loop.py         `train`: the loop that drives either engine
precision.py    the precision of a run: "auto" keeps bf16 only where a timed step is faster
demo.py         `minidiff demo` as a function: a fixed number of steps, then the quality plot and pictures
run.py          what every run shares: model, noise schedule, data, progress, loss log, output files
data.py         the images of a run: resident on the device, or streamed through DataLoader workers
flags.py        TrainConfig as command-line flags, with diffusers' train_unconditional.py names
checkpoint.py   atomic checkpoints with everything a bit-exact resume needs
distributed.py  torchrun / DistributedDataParallel helpers
preflight.py    every check before step 1: settings and paths, the output folder (held, writable, room on
                its disk), the device, what the fast engine and the digit FID readings can do
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# public name -> the module that defines it; imported on first use, so that `minidiff train --help`
# (which reads the presets and the flags) does not load torch
_EXPORTS = {
    "EMA": "rules", "loss_fn": "rules", "snr_loss_weights": "rules", "training_target": "rules",
    "PRESETS": "config", "TrainConfig": "config", "preset": "config",
    "train": "loop", "TrainingInterrupted": "loop",
    "TrainResult": "run", "build_noise_scheduler": "run", "build_unet": "run",
    "PlainEngine": "step", "TrainState": "step", "make_train_state": "step", "train_step": "step",
}  # fmt: skip
__all__ = [
    "EMA", "PRESETS", "PlainEngine", "TrainConfig", "TrainResult", "TrainState", "TrainingInterrupted",
    "build_noise_scheduler", "build_unet", "loss_fn", "make_train_state", "preset", "snr_loss_weights", "train",
    "train_step", "training_target",
]  # fmt: skip


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'minidiff.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"minidiff.training.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from minidiff.training.config import PRESETS, TrainConfig, preset
    from minidiff.training.loop import TrainingInterrupted, train
    from minidiff.training.rules import EMA, loss_fn, snr_loss_weights, training_target
    from minidiff.training.run import TrainResult, build_noise_scheduler, build_unet
    from minidiff.training.step import PlainEngine, TrainState, make_train_state, train_step
