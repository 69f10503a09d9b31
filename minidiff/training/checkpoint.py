"""Training checkpoints: one file per checkpoint, written atomically, read without unpickling code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (model and EMA weights,
optimizer, lr scheduler and grad scaler states, the step and epoch, the RNG states), saved with
`torch.save` and read back with `torch.load(weights_only=True)`, which refuses anything else: a
checkpoint cannot run code when it is loaded.

Files are named `step-00001200.pt` inside `<out_dir>/checkpoints/`. Writing goes through a
temporary file in the same folder, then flush + fsync + `os.replace`, so a crash mid-save leaves the
previous checkpoints intact and never a half-written `step-*.pt`.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from minidiff.files import atomic_path
from minidiff.training.config import RESUMABLE_CHANGES, ConfigError, TrainConfig, config_dict
from minidiff.training.run import Progress

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)\.pt$")
DAMAGED = ".damaged"  # the suffix of a checkpoint that could not be read, set aside by a resume


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}.pt"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically (`minidiff.files.atomic_path`: tmp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (weights_only: tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    size = path.stat().st_size
    if size == 0:
        empty = ValueError(f"checkpoint {str(path)!r} could not be read: the file is empty (0 bytes)")
        empty.size = 0
        raise empty
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated file, not a torch file, or a pickled object that is not data
        why = str(err).strip() or "the file ends too early (truncated?)"
        unreadable = ValueError(
            f"checkpoint {str(path)!r} ({size} bytes) could not be read: {type(err).__name__}: {why}"
        )
        unreadable.size = size
        raise unreadable from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(state).__name__}; expected a dict")
    return state


def checkpoint_to_resume(
    folder: str | os.PathLike,
    resume: bool | str,
    map_location: str | torch.device = "cpu",
    set_aside: bool = True,
) -> tuple[Path, dict[str, Any]] | None:
    """(path, contents) of the checkpoint `resume` names: a path (damaged: an error with the reason), or
    for True / "latest" / "auto" the newest intact one in `folder`. Damaged newer ones are renamed
    `step-*.pt.damaged` (`set_aside`; only the process that writes files should), so they leave the
    rotation, with one warning naming each and where it went. None when `folder` holds no checkpoint and
    resume is "auto"; an error otherwise."""
    if isinstance(resume, str) and resume not in ("latest", "auto"):
        return Path(resume), load_checkpoint(resume, map_location)
    damaged: list[tuple[Path, ValueError]] = []
    for path in reversed(list_checkpoints(folder)):
        try:
            state = load_checkpoint(path, map_location)
        except FileNotFoundError:  # another process of the run set it aside meanwhile
            continue
        except ValueError as err:
            damaged.append((path, err))
            continue
        for bad, err in damaged:
            aside = bad.with_name(bad.name + DAMAGED)
            if set_aside:
                os.replace(bad, aside)
            logger.warning(  # an event of the run: logged, so that no PYTHONWARNINGS value hides it
                "checkpoint %r (%d bytes) could not be read; %s; resuming from %s\n%s", str(bad), err.size,
                "moved aside to " + aside.name if set_aside else "skipped it", path.name, err,
            )  # fmt: skip
        return path, state
    if damaged:  # never start afresh over checkpoints that exist but cannot be read
        raise ValueError(
            f"no intact checkpoint in {str(folder)!r}:\n  " + "\n  ".join(str(e) for _, e in damaged)
        )
    if resume == "auto":
        return None
    raise FileNotFoundError(
        f"no checkpoint in {str(folder)!r} to resume from; run without resume (--resume) to start fresh, "
        "or with resume='auto' (--resume auto) to resume when there is one"
    )


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The `step-*.pt` files of `folder`, oldest step first (temporary files are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_stale_temporary_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the `.step-*.pt.tmp-<pid>` files of writes that a crash cut short (never complete
    checkpoints; rank 0 is the only writer, so no other live process owns them); returns their paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    mine = f".tmp-{os.getpid()}"
    stale = [p for p in folder.glob(".step-*.pt.tmp-*") if not p.name.endswith(mine)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def prune_checkpoints(folder: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints; returns the deleted paths."""
    if keep < 1:
        raise ValueError(f"keep_checkpoints must be >= 1, got {keep}")
    old = list_checkpoints(folder)[:-keep]
    for path in old:
        path.unlink(missing_ok=True)
    return old


# ---- RNG states ------------------------------------------------------------------------------------
def capture_rng_states(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """The global torch CPU / CUDA RNG states and the named generators' states, as tensors."""
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "generators": {}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    for name, generator in generators.items():
        states["generators"][name] = generator.get_state()
    return states


def restore_rng_states(states: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])
    missing = sorted(set(generators) - set(states["generators"]))
    if missing:
        raise ValueError(f"checkpoint has no state for the generators {missing}")
    for name, generator in generators.items():
        generator.set_state(states["generators"][name].cpu())


# ---- a training engine <-> a checkpoint dict --------------------------------------------------------------
FORMAT = "minidiff-train-checkpoint-2"


def state_to_checkpoint(
    engine,
    progress: Progress,
    config: TrainConfig,
    losses: list[float],
    evals: dict[int, float] | None = None,
) -> dict[str, Any]:
    """Everything needed to continue a run bit for bit, as tensors and plain containers. `engine` is
    the plain or the fast engine: both expose unet, ema, optimizer, lr_scheduler, grad_scaler and
    noise_generator."""
    return {
        "format": FORMAT,
        "config": config_dict(config),
        "model": engine.unet.state_dict(),  # no DDP `module.` prefix: any number of processes
        "ema": engine.ema.state_dict() if engine.ema is not None else None,
        "optimizer": engine.optimizer.state_dict(),
        "lr_scheduler": engine.lr_scheduler.state_dict(),
        "grad_scaler": engine.grad_scaler.state_dict() if engine.grad_scaler is not None else None,
        "step": progress.step,
        "epoch": progress.epoch,
        "batch_in_epoch": progress.batch_in_epoch,
        "rng": capture_rng_states({"noise": engine.noise_generator}),
        "losses": torch.tensor(losses, dtype=torch.float64),  # (steps,)
        "evals": dict(evals or {}),  # step -> digit FID
    }


def _cannot_resume(changed: list[str], saved: dict, config: TrainConfig) -> ConfigError:
    """Why a checkpoint cannot go on under `config`, each changed setting named, and what to do."""
    parts = []
    for name in changed:
        was = repr(saved.get(name)).replace("{", "{{").replace("}", "}}")  # literal text of the template
        if name in ("epochs", "max_steps"):
            parts.append(
                f"{{{name}}} (the checkpoint's is {was}: its {config.lr_scheduler} lr schedule is laid out over "
                f"the run's length; keep {was}, or stop early with {{time_budget:name}})"
            )
        else:
            parts.append(f"{{{name}}} (the checkpoint's is {was})")
    return ConfigError(
        "cannot resume: the checkpoint was trained with other settings: " + "; ".join(parts),
        **{name: getattr(config, name) for name in changed}, time_budget=config.time_budget,
    )  # fmt: skip


def checkpoint_to_state(
    ckpt: dict[str, Any], engine, config: TrainConfig
) -> tuple[Progress, list[float], dict[int, float]]:
    """Load a checkpoint into `engine` and its noise generator; returns where the run stood, the losses
    logged so far and the digit FID readings."""
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"checkpoint format {ckpt.get('format')!r}; expected {FORMAT!r}")
    # a setting added since the checkpoint was saved counts as trained with its default
    saved = {**config_dict(TrainConfig()), **ckpt["config"]}
    current = config_dict(config)
    resumable = RESUMABLE_CHANGES
    if config.lr_scheduler != "constant":  # a decaying lr was laid out over the run's length
        resumable = resumable - {"epochs", "max_steps"}
    changed = sorted(k for k, v in current.items() if k not in resumable and saved.get(k) != v)
    if changed:
        raise _cannot_resume(changed, saved, config)
    engine.unet.load_state_dict(ckpt["model"])
    if engine.ema is not None:
        engine.ema.load_state_dict(ckpt["ema"])
    engine.optimizer.load_state_dict(ckpt["optimizer"])
    engine.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    for group, lr in zip(engine.lr_scheduler.optimizer.param_groups, engine.lr_scheduler.get_last_lr()):
        group["lr"] = lr  # the fast engine's schedule steps a host-side twin that has no optimizer state
    if (
        engine.grad_scaler is not None and ckpt["grad_scaler"] is not None
    ):  # (fp16 since the checkpoint: fresh)
        engine.grad_scaler.load_state_dict(ckpt["grad_scaler"])
    restore_rng_states(ckpt["rng"], {"noise": engine.noise_generator})
    progress = Progress(ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"])
    return progress, ckpt["losses"].tolist(), dict(ckpt.get("evals", {}))
