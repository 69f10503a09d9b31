"""Checks a run makes before it spends any time: the device exists, the output folder is writable,
its disk has room for what the run will write. Each fails at once, naming the value and what was expected.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import torch

from minidiff.training.config import TrainConfig


def writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and prove we can write there, before any training time is spent."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise PermissionError(f"output folder {str(path)!r} is not writable: {err}") from err
    return path


def claim_out_dir(config: TrainConfig) -> Path:
    """The output folder, writable, and free of another run's work unless asked.

    A new run (no resume) into a folder that holds a trained model or checkpoints of another run is
    refused with the reason; `overwrite` removes that run's checkpoints, sample grids and logs first
    (its model folder is replaced, all at once, when this run saves its own)."""
    from minidiff.training.checkpoint import list_checkpoints

    out_dir = Path(config.out_dir)
    checkpoints = list_checkpoints(out_dir / "checkpoints")
    has_model = (out_dir / "model" / "model_index.json").is_file()
    if not config.resume and (checkpoints or has_model):
        if not config.overwrite:
            held = ([f"{len(checkpoints)} checkpoint(s)"] if checkpoints else []) + (
                ["a model"] if has_model else []
            )
            raise FileExistsError(
                f"{str(out_dir)!r} holds {' and '.join(held)} of an earlier run; continue it with resume=True "
                "(--resume), replace it with overwrite=True (--overwrite), or choose another out_dir"
            )
        for path in checkpoints:
            path.unlink()
        for folder in ("samples", "logs"):
            shutil.rmtree(out_dir / folder, ignore_errors=True)
    return writable_dir(out_dir)


def check_free_space(out_dir: Path, config: TrainConfig, unet: torch.nn.Module) -> None:
    """Fail before the first step when `out_dir`'s disk cannot hold what the run will write: keep + 1
    checkpoints at a time (weights, EMA, AdamW's two moments each) and the model folder (written twice:
    staged, then swapped in)."""
    weights = sum(p.numel() * p.element_size() for p in unet.parameters())
    per_checkpoint = weights * (3 + (config.ema_decay > 0))
    checkpoints = per_checkpoint * (config.keep_checkpoints + 1) if config.checkpoint_every else 0
    need = checkpoints + 2 * weights + 2**20  # + 1 MiB for loss.csv, plots and grids
    free = shutil.disk_usage(out_dir).free
    if free < need:
        raise OSError(
            errno.ENOSPC,
            f"output folder {str(out_dir)!r} has {free / 2**20:.1f} MiB free; this run writes up to "
            f"{need / 2**20:.1f} MiB (keep_checkpoints={config.keep_checkpoints} checkpoints of "
            f"{per_checkpoint / 2**20:.1f} MiB + the model); free some space or choose another out_dir",
        )


def pick_device(device: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; any other name is checked to exist on this machine, so a
    wrong --device fails at once with its name, not deep inside torch after the data loaded."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device {device!r} is not a torch device; expected 'auto', 'cpu', 'cuda', 'cuda:1', ..."
        ) from err
    if chosen.type == "meta":
        raise ValueError(
            f"device {device!r} holds no data; expected a real device ('auto', 'cpu', 'cuda', ...)"
        )
    backend = getattr(torch, chosen.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    if chosen.type != "cpu" and not (backend is not None and backend.is_available()):
        raise ValueError(f"device {device!r} is not available on this machine; expected 'auto' or 'cpu'")
    if chosen.type != "cpu" and chosen.index is not None and chosen.index >= backend.device_count():
        raise ValueError(
            f"device {device!r}: this machine has {backend.device_count()} {chosen.type} device(s)"
        )
    return chosen
