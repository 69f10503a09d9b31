"""A real `python -m minidiff train` process, SIGKILLed at several moments, never loses its work.

The kills land (1) just after a checkpoint appeared (the process is already in the next step) and
(2) while a checkpoint is being written: we poll the checkpoint folder for the process's temporary file
and kill the moment it exists; a temporary file left behind proves the kill landed before the rename.
After each kill every complete step-*.pt still loads, and `--resume` continues from the newest one.
The run that survived the kills ends bit-identical (torch.equal on every tensor of the model, the EMA and
the optimizer, and every logged loss) to a run of the same length that was never interrupted.

Every process runs with one torch thread, so the float sums happen in the same order in each of them.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import TINY_TRAIN

from minidiff.training.checkpoint import list_checkpoints, load_checkpoint

TOTAL_STEPS = 8
TRAIN_ARGS = [
    "--preset", "tiny", "--data", "digits", "--image-size", "8", "--limit", "20", "--batch-size", "8",
    "--max-steps", str(TOTAL_STEPS), "--checkpoint-every", "1", "--keep-checkpoints", "2",
    "--sample-steps", "2", "--num-samples", "1", "--device", "cpu", "--quiet",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start(out: Path, *extra: str) -> subprocess.Popen:
    log = open(out.parent / f"{out.name}.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "minidiff", "train", *TRAIN_ARGS, "--out", str(out), *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=ENV,
    )


def step_of(path: Path) -> int:
    return int(re.search(r"step-(\d+)", path.name).group(1))


def wait_until(proc: subprocess.Popen, found, timeout: float = 60.0):
    """Poll (every ~1 ms) until `found()` returns something truthy; None if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hit = found()
        if hit:
            return hit
        if proc.poll() is not None:
            return found() or None
        time.sleep(0.001)
    proc.kill()
    raise TimeoutError("the training process made no progress in time")


def sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def temporary_files(ckpt_dir: Path, pid: int) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    return [p for p in ckpt_dir.iterdir() if p.name.endswith(f".tmp-{pid}")]


def check_complete_checkpoints(ckpt_dir: Path) -> int:
    """Every step-*.pt loads whole; returns the newest step."""
    checkpoints = list_checkpoints(ckpt_dir)
    assert checkpoints, "no complete checkpoint survived"
    for path in checkpoints:
        ckpt = load_checkpoint(path)
        assert ckpt["step"] == step_of(path) and len(ckpt["losses"]) == ckpt["step"]
    return step_of(checkpoints[-1])


def tensors_of(ckpt: dict) -> dict[str, torch.Tensor]:
    """model, EMA and optimizer tensors of a checkpoint, flattened to name -> tensor."""
    flat = {f"model.{k}": v for k, v in ckpt["model"].items()}
    flat.update({f"ema.{k}": v for k, v in ckpt["ema"]["model"].items()})
    for index, state in ckpt["optimizer"]["state"].items():
        flat.update({f"optimizer.{index}.{k}": v for k, v in state.items() if torch.is_tensor(v)})
    return flat


def test_sigkill_at_any_moment_then_resume_is_bit_exact(tmp_path):
    straight_out, crash_out = tmp_path / "straight", tmp_path / "crash"
    ckpt_dir = crash_out / "checkpoints"
    straight = start(straight_out)  # runs beside the crashing one

    # 1. kill N = 3 steps in: the moment step-3.pt exists the process is already on step 4
    proc = start(crash_out)
    wait_until(proc, lambda: (ckpt_dir / "step-00000003.pt").exists())
    sigkill(proc)
    newest = check_complete_checkpoints(ckpt_dir)
    assert newest >= 3
    kills = 1

    # 2. kill mid-write: poll for the process's temporary checkpoint file and kill as soon as it exists.
    #    If the rename won the race (no temporary file left), resume and try again on a later step.
    caught_mid_write = False
    while not caught_mid_write and newest < TOTAL_STEPS - 1:
        proc = start(crash_out, "--resume")
        pid = proc.pid
        hit = wait_until(proc, lambda pid=pid: temporary_files(ckpt_dir, pid))
        if hit is None:  # finished before we saw a temporary file
            break
        sigkill(proc)
        kills += 1
        caught_mid_write = bool(temporary_files(ckpt_dir, pid))  # died before os.replace
        newest_before = newest
        newest = check_complete_checkpoints(ckpt_dir)
        assert newest >= newest_before  # nothing complete was lost
    assert caught_mid_write, "never managed to kill the process while it wrote a checkpoint"

    # 3. resume to the end; compare with the run that was never killed
    proc = start(crash_out, "--resume")
    assert proc.wait(timeout=120) == 0, (crash_out.parent / "crash.log").read_text()[-3000:]
    assert straight.wait(timeout=120) == 0, (straight_out.parent / "straight.log").read_text()[-3000:]
    a = load_checkpoint(straight_out / "checkpoints" / f"step-{TOTAL_STEPS:08d}.pt")
    b = load_checkpoint(ckpt_dir / f"step-{TOTAL_STEPS:08d}.pt")
    assert torch.equal(a["losses"], b["losses"])  # every logged loss, as float64
    ta, tb = tensors_of(a), tensors_of(b)
    assert ta.keys() == tb.keys() and len(ta) > 100
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"
    model_a = load_file(straight_out / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    model_b = load_file(crash_out / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["step-00000007.pt", "step-00000008.pt"]
    assert not list(ckpt_dir.glob(".step-*.tmp-*"))  # the resumed run removed the half-written files
    print(f"survived {kills} SIGKILLs (one mid-write); resumed run bit-identical over {len(ta)} tensors")


def test_non_finite_loss_stops_the_cli_and_keeps_the_last_good_checkpoint(tmp_path):
    """lr = 1e30: step 1 blows the weights up, a later loss is inf/nan. Exit status 1, the step named,
    every checkpoint left behind holds only finite losses and loads."""
    out = tmp_path / "nan"
    args = ["--lr", "1e30", "--warmup-steps", "0", "--ema-decay", "0"]
    proc = subprocess.run(
        [sys.executable, "-m", "minidiff", "train", *TRAIN_ARGS, "--out", str(out), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    match = re.search(r"error: loss is (nan|inf) at step (\d+); training stopped", proc.stderr)
    assert match, proc.stderr[-2000:]
    bad_step = int(match.group(2))
    checkpoints = list_checkpoints(out / "checkpoints")
    assert checkpoints and step_of(checkpoints[-1]) == bad_step - 1  # the last good one is kept
    ckpt = load_checkpoint(checkpoints[-1])
    assert torch.isfinite(ckpt["losses"]).all()
    assert not (out / "model").exists()  # no final model from a broken run


# ---- in-process: full disk, failing writes, the fp16 scaler, unwritable folders -----------------------


def tiny(out: Path, **overrides):
    from minidiff.training.config import preset

    return preset("tiny", **{**TINY_TRAIN, "out_dir": str(out), **overrides})


def test_full_disk_is_detected_before_training(tmp_path, monkeypatch):
    from minidiff.training import train

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=2**20))  # 1 MiB left
    with pytest.raises(OSError, match=r"has 1\.0 MiB free; this run writes up to .* MiB") as info:
        train(tiny(tmp_path / "run", max_steps=2, checkpoint_every=1))
    assert info.value.errno == errno.ENOSPC
    assert not (tmp_path / "run" / "loss.csv").exists()  # not one step ran


def test_failing_checkpoint_write_keeps_the_previous_ones(tmp_path, monkeypatch):
    """The disk fills up while step 3's checkpoint is written: training stops with the OS error, the
    half-written file is removed, steps 1 and 2 still load."""
    import minidiff.training.checkpoint as checkpoint
    from minidiff.training import train

    real_save, calls = torch.save, []

    def save_until_full(obj, f):
        calls.append(1)
        if len(calls) == 3:
            Path(f).write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_full)
    with pytest.raises(OSError, match="No space left"):
        train(tiny(tmp_path / "run", max_steps=4, checkpoint_every=1, keep_checkpoints=5))
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert [step_of(p) for p in list_checkpoints(ckpt_dir)] == [1, 2]
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step-00000001.pt", "step-00000002.pt"]
    check_complete_checkpoints(ckpt_dir)


def test_full_disk_while_saving_on_the_command_line(tmp_path, monkeypatch, capsys):
    """The disk fills up while step 2's checkpoint is written (the writer raises ENOSPC half-way): one
    clear line, exit 1, step 1's checkpoint intact, no half-written file; --resume then goes on."""
    import minidiff.training.checkpoint as checkpoint
    from minidiff import cli

    real_save, calls = torch.save, []

    def save_until_full(obj, f):
        calls.append(1)
        if len(calls) == 2:
            Path(f).write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    out = tmp_path / "run"
    argv = ["train", *TRAIN_ARGS, "--max-steps", "3", "--out", str(out)]
    monkeypatch.setattr(checkpoint.torch, "save", save_until_full)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (above: the log's lines)
    assert err == (
        "minidiff train: error: [Errno 28] No space left on device; every file saved before is intact (writes "
        "are atomic): free some space, then run again (--resume continues a training run from its last checkpoint)"
    )
    ckpt_dir = out / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step-00000001.pt"]
    check_complete_checkpoints(ckpt_dir)
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert cli.main([*argv, "--resume"]) == 0


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_fp16_scaler_skips_a_non_finite_step_instead_of_stopping():
    """With mixed_precision='fp16' a NaN in the batch makes inf/nan gradients: GradScaler skips the
    optimizer step (weights unchanged) and lowers its scale, as torch.amp.GradScaler does."""
    from minidiff.training import build_noise_scheduler, build_unet, make_train_state, train_step
    from minidiff.training.config import TrainConfig

    config = TrainConfig(
        **{k: v for k, v in TINY_TRAIN.items() if k not in ("limit", "mixed_precision")},
        mixed_precision="fp16",
    )
    state = make_train_state(config, build_unet(config, 1), build_noise_scheduler(config), total_steps=1)
    before = [p.detach().clone() for p in state.unet.parameters()]
    scale = state.grad_scaler.get_scale()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    x[0, 0, 0, 0] = float("nan")
    loss = train_step(state, [(x, torch.randn(4, 1, 8, 8, generator=g), torch.tensor([1, 2, 3, 4]))])
    assert not torch.isfinite(loss)
    assert all(torch.equal(a, b) for a, b in zip(before, state.unet.parameters()))  # the step was skipped
    assert state.grad_scaler.get_scale() < scale


def _unwritable_targets(tmp_path: Path) -> list[tuple[str, Path]]:
    """Folders training must refuse. Tests run as root in CI, where chmod does not stop writes, so the
    portable cases are a path below a regular file and (Linux) a path inside /proc; chmod is added
    when not root."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    targets = [("below a regular file", blocker / "run")]
    if Path("/proc/self").is_dir():
        targets.append(("inside /proc", Path("/proc/minidiff-cannot-write-here")))
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        targets.append(("read-only folder (chmod 500)", locked / "run"))
    return targets


def test_unwritable_output_folder_fails_before_training(tmp_path, capsys):
    from minidiff import cli

    for what, target in _unwritable_targets(tmp_path):
        argv = [
            "train",
            "--preset",
            "tiny",
            "--limit",
            "4",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(target),
        ]
        assert cli.main(argv) == 1, what
        err = capsys.readouterr().err
        assert f"output folder {str(target)!r} is not writable" in err, (what, err)
