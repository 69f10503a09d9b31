"""Checks a run makes before it spends any time: the settings and paths make sense (before torch loads),
the output folder is its own (one run at a time) and writable, the device exists, the disk has room for
what the run will write, the digit FID readings and the fast engine can do what is asked. Each fails at
once, naming the value and what was expected. Every check before a start lives here: `minidiff train`
calls `check_before_start` before torch loads, `train` calls `check_run`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from minidiff.files import LOCK_NAME, FolderLock, check_hub_dataset, check_writable, looks_local, writable_dir
from minidiff.training.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    import torch


class RunExists(ConfigError, FileExistsError):
    """The output folder holds another run's model or checkpoints."""


class MissingPath(ConfigError, FileNotFoundError):
    """A path a setting names does not exist."""


def check_run(config: TrainConfig) -> None:
    """Every check `train` makes before it spends any time: `check_before_start`, then what needs the
    library loaded (the digit FID readings' sample count, what the fast engine cannot do)."""
    check_before_start(config)
    if config.eval_every is not None:  # the digit FID readings: refused now, not at the first reading
        from minidiff.quality.digit_net import NUM_FEATURES
        from minidiff.quality.metrics import check_fid_count

        check_fid_count(config.eval_samples, NUM_FEATURES, f"eval_samples={config.eval_samples}")
    if config.fast:
        check_fast_supported(config)


def check_fast_supported(config: TrainConfig) -> None:
    """What the fast engine (minidiff/training/fast_engine.py) does not do: a ValueError naming each.

    Args:
        config: the run's settings.
    """
    import minidiff.training.distributed as distributed

    unsupported = {
        "grad_accum > 1": config.grad_accum != 1,
        "mixed_precision='fp16' (use 'bf16')": config.mixed_precision == "fp16",
        "several processes (torchrun)": distributed.world_size() > 1,
    }
    named = [name for name, used in unsupported.items() if used]
    if named:
        raise ValueError(f"fast=True does not support {', '.join(named)}; train without --fast for those")


def check_before_start(config: TrainConfig) -> None:
    """What can be checked without torch or `datasets`: every setting in range, the data, the checkpoint
    to resume from and the output folder exist where they must (a wrong path fails in well under a second)."""
    config.validate()
    data = Path(str(config.data)).expanduser()
    if str(config.data) != "digits":  # minidiff.data.DEFAULT_DATASET (not imported: it loads torch)
        if data.is_file():
            raise ConfigError(
                "{data} is a file; expected a folder of images, a hub id or 'digits'", data=config.data
            )
        if not data.exists() and looks_local(config.data):
            raise MissingPath("{data}: that folder does not exist", data=config.data)
        if data.is_dir() and not any(p.is_file() for p in data.rglob("*")):
            raise ConfigError("{data}: that folder holds no image files", data=config.data)
        if config.dataset_config_name is not None and data.is_dir():
            raise ConfigError(
                "{dataset_config_name} names a configuration of a hub dataset; {data} is a local folder",
                dataset_config_name=config.dataset_config_name, data=config.data,
            )  # fmt: skip
    if isinstance(config.resume, str) and config.resume not in ("latest", "auto"):
        if not Path(config.resume).is_file():
            raise MissingPath("{resume}: that checkpoint file does not exist", resume=config.resume)
    check_writable(config.out_dir, folder=True)
    check_hub_dataset(config.data)  # a hub id offline: now, not after torch and `datasets` load


@contextlib.contextmanager
def hold_out_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Create `out_dir` if needed and hold its lock (`minidiff.files.FolderLock`) for the block: a second
    run into it is refused at once, naming the holder. A folder this call created is removed again when
    the block fails with nothing written into it."""
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(out_dir).acquire()
    except OSError as err:
        raise PermissionError(f"output folder {str(out_dir)!r} is not writable: {err}") from err
    try:
        yield out_dir
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                if [p.name for p in out_dir.iterdir()] == [LOCK_NAME]:
                    (out_dir / LOCK_NAME).unlink()
                out_dir.rmdir()  # only succeeds when nothing else was written there
        raise
    finally:
        lock.release()


def claim_out_dir(config: TrainConfig) -> Path:
    """The output folder, writable, and free of another run's work unless asked.

    A new run (no resume) into a folder that holds a trained model or checkpoints of another run is
    refused with the reason; `overwrite` removes that run's checkpoints, sample grids and logs first
    (its model folder is replaced, all at once, when this run saves its own)."""
    from minidiff.training.checkpoint import DAMAGED, list_checkpoints

    out_dir = Path(config.out_dir)
    checkpoints = list_checkpoints(out_dir / "checkpoints")
    has_model = (out_dir / "model" / "model_index.json").is_file()
    if not config.resume and (checkpoints or has_model):
        if not config.overwrite:
            held = ([f"{len(checkpoints)} checkpoint(s)"] if checkpoints else []) + (
                ["a model"] if has_model else []
            )
            raise RunExists(
                f"{{out_dir}} holds {' and '.join(held)} of an earlier run; continue it with {{resume:on}}, "
                "replace it with {overwrite:on}, or choose another {out_dir:name}",
                out_dir=config.out_dir, resume=True, overwrite=True,
            )  # fmt: skip
        for path in [*checkpoints, *(out_dir / "checkpoints").glob(f"step-*.pt{DAMAGED}")]:
            path.unlink()
        (out_dir / "samples.png").unlink(missing_ok=True)  # this run may draw none
        logs = Path(config.logging_dir)
        inside = [] if logs.is_absolute() or ".." in logs.parts else [str(logs)]  # never outside out_dir
        for folder in ("samples", "logs", *inside):
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
    import torch

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
