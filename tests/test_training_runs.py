"""Training runs that lose nothing: default checkpoints, Ctrl-C / SIGTERM, refused overwrites, resume past
damage, bad images named at once, streamed data = resident data, diffusers' flags, config.json, TensorBoard."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minidiff.cli import main
from minidiff.training import preset, train
from minidiff.training.checkpoint import list_checkpoints, load_checkpoint

# the tiny preset's net at 8x8 on 40 digits, batches of 8: each run takes seconds
SMALL = ["--preset", "tiny", "--image-size", "8", "--limit", "40", "--batch-size", "8", "--sample-steps", "2",
         "--num-samples", "1", "--device", "cpu", "--quiet", "--mixed-precision", "no",
         "--warmup-steps", "1"]  # fmt: skip
# precision pinned ("auto" measures, and runs compared bit for bit must not differ) and a warm-up within 20% of
# every run here (a longer one is fitted to each run's length, and a run resumed longer would not match)
SMALL_CONFIG = dict(
    warmup_steps=1,
    image_size=8,
    limit=40,
    batch_size=8,
    sample_steps=2,
    num_samples=1,
    device="cpu",
    progress=False,
    mixed_precision="no",
)


def _digest(folder: Path) -> dict[str, str]:
    """Every file's hash, but the folder's lock (which names its latest holder)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".minidiff.lock"
    }


def test_presets_checkpoint_by_default():
    # a run never loses more than its checkpoint interval: 250 steps of the tiny preset are 25 s to 2 min on
    # 2 CPU cores; 500 of the tutorial (diffusers' default) under half a minute on a GPU
    assert preset("tiny").checkpoint_every == 250 and preset("tutorial").checkpoint_every == 500


# ---- 1. Ctrl-C and SIGTERM keep everything ----------------------------------------------------------------
def test_ctrl_c_saves_a_checkpoint_and_the_model_then_resumes(tmp_path):
    """A real Ctrl-C: SIGINT to a training process."""
    signum, code = signal.SIGINT, 130
    out = tmp_path / "run"
    argv = [
        *SMALL,
        "--max-steps",
        "100000",
        "--checkpoint-every",
        "100000",
        "--log-every",
        "1",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors: one thread, whatever else the machine runs
    command = [sys.executable, "-m", "minidiff", "train", *argv]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # a few steps in: loss.csv has rows
        csv = out / "loss.csv"
        if csv.exists() and len(csv.read_text().splitlines()) > 4:
            break
        time.sleep(0.2)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    (checkpoint,) = list_checkpoints(out / "checkpoints")  # written although the interval was not reached
    step = load_checkpoint(checkpoint)["step"]
    assert step >= 4 and (out / "model" / "model_index.json").is_file()
    assert f"{signal.Signals(signum).name} at step {step}: saved checkpoint {checkpoint}" in err
    assert "continue with: minidiff train" in err and "--resume" in err
    # the command it names continues the run
    assert main(["train", *argv[:-4], "--out", str(out), "--max-steps", str(step + 2), "--resume"]) == 0
    assert len((out / "loss.csv").read_text().splitlines()) == 1 + step + 2


def test_sigterm_stops_after_the_step_with_everything_saved(tmp_path, monkeypatch):
    """SIGTERM (a scheduler ending a job) in this process, at the third step."""
    from minidiff.training.loop import TrainingInterrupted
    from minidiff.training.step import PlainEngine

    real_step, calls = PlainEngine.step, []

    def step(self, *args):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, *args)

    monkeypatch.setattr(PlainEngine, "step", step)
    with pytest.raises(TrainingInterrupted) as stop:
        train(preset("tiny", out_dir=str(tmp_path), max_steps=50, **SMALL_CONFIG))
    assert stop.value.exit_code == 143 and stop.value.step == 3
    assert (
        load_checkpoint(stop.value.checkpoint)["step"] == 3
        and (tmp_path / "model" / "model_index.json").is_file()
    )
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


# ---- 2. never overwrite a trained model without being asked ---------------------------------------------------
def test_a_new_run_refuses_another_runs_output_folder(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *SMALL, "--max-steps", "2", "--checkpoint-every", "1", "--out", str(out)]
    assert main(argv) == 0
    before = _digest(out)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "holds 2 checkpoint(s) and a model of an earlier run" in err and "--overwrite" in err
    assert _digest(out) == before  # nothing changed
    assert main([*argv, "--overwrite", "--max-steps", "3", "--checkpoint-every", "3"]) == 0
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [
        "step-00000003.pt"
    ]  # the old ones went


def test_a_refused_run_leaves_no_empty_folder(tmp_path, capsys):
    out = tmp_path / "new"
    assert main(["train", *SMALL, "--data", str(tmp_path / "missing"), "--out", str(out)]) == 1
    assert not out.exists()


# ---- 3. resume survives damage -------------------------------------------------------------------------------
def test_resume_skips_a_truncated_newest_checkpoint(tmp_path, caplog):
    settings = dict(SMALL_CONFIG, checkpoint_every=2, keep_checkpoints=3)
    straight = train(preset("tiny", out_dir=str(tmp_path / "a"), max_steps=6, **settings))
    train(preset("tiny", out_dir=str(tmp_path / "b"), max_steps=4, **settings))
    newest = tmp_path / "b" / "checkpoints" / "step-00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a crash mid-copy, a full disk...
    # a run event: logged (WARNING, logger minidiff.training.checkpoint), so no PYTHONWARNINGS value hides it
    with caplog.at_level("WARNING", logger="minidiff"):
        resumed = train(preset("tiny", out_dir=str(tmp_path / "b"), max_steps=6, resume=True, **settings))
    events = [r for r in caplog.records if r.name == "minidiff.training.checkpoint"]
    assert len(events) == 1 and re.search(
        r"step-00000004.pt.*could not be read; moved aside to step-00000004", events[0].getMessage()
    )
    assert resumed.losses == straight.losses  # resumed at step 2, bit for bit
    # the damaged file left the rotation: not read, counted nor listed again, and no second warning
    aside = newest.with_name("step-00000004.pt.damaged")
    assert aside.stat().st_size == 1000
    assert [p.name for p in resumed.checkpoints] == [
        "step-00000002.pt",
        "step-00000004.pt",
        "step-00000006.pt",
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="minidiff"):
        train(preset("tiny", out_dir=str(tmp_path / "b"), max_steps=7, resume=True, **settings))
    assert not [r for r in caplog.records if r.name == "minidiff.training.checkpoint"]
    newest.write_bytes(newest.read_bytes()[:1000])  # the resumed run wrote step 4 again: damage it again
    with pytest.raises(ValueError, match=r"step-00000004.pt' \(1000 bytes\) could not be read"):
        train(preset("tiny", out_dir=str(tmp_path / "b"), max_steps=6, resume=str(newest), **settings))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"the file is empty \(0 bytes\)"):
        train(preset("tiny", out_dir=str(tmp_path / "b"), max_steps=6, resume=str(empty), **settings))


def test_resume_without_a_checkpoint_says_so_unless_auto(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--max-steps", "2", "--out", str(out), "--resume"]) == 1
    assert "no checkpoint in" in capsys.readouterr().err and not out.exists()
    assert main(["train", *SMALL, "--max-steps", "2", "--out", str(out), "--resume", "auto"]) == 0


# ---- 4. bad images, all named at once ------------------------------------------------------------------------
@pytest.fixture
def folder_with_bad_images(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(folder / f"good-{i:02d}.png")
    for i in range(23):
        (folder / f"bad-{i:02d}.png").write_bytes(b"not a png" if i % 2 else b"")
    return folder


def test_every_unreadable_image_is_named_in_one_error(folder_with_bad_images, tmp_path, capsys):
    argv = ["train", *SMALL, "--data", str(folder_with_bad_images), "--limit", "100", "--max-steps", "2"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "23 of 35 images in" in err and "... and 3 more" in err  # the first 20, one per line, and a count
    assert sum("bad-" in line and ".png" in line for line in err.splitlines()) == 20
    assert "--skip-bad-images" in err
    assert main([*argv, "--out", str(tmp_path / "b"), "--skip-bad-images"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert warned == [
        f"warning: skipped 23 of 35 images in {str(folder_with_bad_images)!r} that cannot be read; "
        "training on the other 12"
    ]  # one line; --debug adds the names


def test_sixteen_bit_and_palette_images_keep_their_values(tmp_path):
    from minidiff.data import ConvertMode

    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    sixteen = Image.fromarray(ramp)  # mode I;16
    grey = np.asarray(ConvertMode("L")(sixteen))
    assert grey.max() == 255 and np.array_equal(
        grey, np.round(ramp / 257).astype(np.uint8)
    )  # not clipped at 255
    palette = (
        Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, "L").convert("RGB").quantize(64)
    )
    assert palette.mode == "P"
    np.testing.assert_array_equal(np.asarray(ConvertMode("RGB")(palette)), np.asarray(palette.convert("RGB")))


def test_cli_prints_the_whole_message_and_debug_works_after_the_subcommand(tmp_path, capsys):
    assert main(["train", *SMALL, "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1
    with pytest.raises(FileNotFoundError):
        main(["train", *SMALL, "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--debug"])
    with pytest.raises(FileNotFoundError):
        main(["--debug", "train", *SMALL, "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])


# ---- 6. data that streams ------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 1])
def test_streamed_data_trains_the_resident_run_bit_for_bit(tmp_path, workers):
    settings = dict(SMALL_CONFIG, limit=20, max_steps=7, flip=True, checkpoint_every=7)  # 3 batches per epoch
    resident = train(preset("tiny", out_dir=str(tmp_path / "r"), stream=False, **settings))
    streamed = train(
        preset("tiny", out_dir=str(tmp_path / "s"), stream=True, num_workers=workers, **settings)
    )
    assert streamed.losses == resident.losses
    a, b = (load_checkpoint(r.checkpoints[-1])["model"] for r in (resident, streamed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and resuming mid-epoch from a streamed checkpoint continues the stream at the right batch
    train(
        preset(
            "tiny",
            out_dir=str(tmp_path / "t"),
            stream=True,
            **{**settings, "max_steps": 4, "checkpoint_every": 4},
        )
    )
    resumed = train(preset("tiny", out_dir=str(tmp_path / "t"), stream=True, resume=True, **settings))
    assert resumed.losses == resident.losses


def test_a_data_set_over_the_budget_streams(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="minidiff")
    train(preset("tiny", out_dir=str(tmp_path), max_steps=1, data_budget_mb=1, **{**SMALL_CONFIG, "limit": None,
                                                                                  "image_size": 16}))  # fmt: skip
    assert "streaming 5000 images" in caplog.text  # 5,000 x 16 x 16 bytes = 1.2 MB > 1 MB


# ---- 7. diffusers' flags, --help, config.json, TensorBoard ---------------------------------------------------
def test_a_train_unconditional_command_line_trains(tmp_path):
    out = tmp_path / "run"
    argv = [
        "train", "--preset", "tiny", "--dataset_name", "digits", "--resolution", "8", "--train_batch_size", "8",
        "--max_train_steps", "3", "--num_epochs", "5", "--gradient_accumulation_steps", "1", "--learning_rate",
        "2e-3", "--lr_scheduler", "cosine", "--lr_warmup_steps", "1", "--adam_beta1", "0.95", "--adam_beta2",
        "0.999", "--adam_weight_decay", "1e-6", "--adam_epsilon", "1e-8", "--use_ema", "--ema_max_decay", "0.99",
        "--ema_inv_gamma", "1.0", "--ema_power", "0.75", "--mixed_precision", "no", "--checkpointing_steps", "2",
        "--checkpoints_total_limit", "1", "--save_images_epochs", "1", "--save_model_epochs", "1",
        "--prediction_type", "v_prediction", "--ddpm_num_steps", "100", "--ddpm_beta_schedule", "linear",
        "--ddpm_num_inference_steps", "3", "--random_flip", "--center_crop", "--dataloader_num_workers", "0",
        "--eval_batch_size", "2", "--logger", "tensorboard", "--output_dir", str(out), "--seed", "3",
        "--device", "cpu", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    settings = json.loads((out / "config.json").read_text())
    expected = dict(lr=2e-3, lr_scheduler="cosine", warmup_steps=1, adam_beta1=0.95, weight_decay=1e-6,
                    ema_decay=0.99, ema_warmup=True, prediction_type="v_prediction", num_train_timesteps=100,
                    beta_schedule="linear", sample_steps=3, flip=True, center_crop=True, keep_checkpoints=1,
                    num_samples=2, image_size=8, batch_size=8, max_steps=3, seed=3, _total_steps=3)  # fmt: skip
    assert {k: settings[k] for k in expected} == expected
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000003.pt"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "logs"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3] and events.Images("samples")


@pytest.mark.parametrize("name, size", [("tiny", "16"), ("tutorial", "32")])
def test_help_shows_the_presets_defaults(name, size, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--preset", name, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        f"--image-size IMAGE_SIZE, --resolution IMAGE_SIZE train at this resolution (square) (default: {size})"
        in text
    )


def test_unsupported_diffusers_lr_schedule_is_named(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--lr_scheduler", "polynomial"])
    assert "'polynomial' is not supported; expected one of" in capsys.readouterr().err


def test_short_runs_sample_with_ddim_and_say_so(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="minidiff")
    config = preset("tiny", out_dir=str(tmp_path), max_steps=2, **{**SMALL_CONFIG, "sample_steps": None})
    train(config)
    assert "sample grids: DDIM with 50 steps" in caplog.text
    settings = json.loads((tmp_path / "config.json").read_text())
    assert (settings["sampler"], settings["sample_steps"]) == ("ddim", 50)


def test_fast_runs_checkpoint_too(tmp_path):
    result = train(
        preset("tiny", out_dir=str(tmp_path), fast=True, max_steps=3, checkpoint_every=2, **SMALL_CONFIG)
    )
    assert [p.name for p in result.checkpoints] == ["step-00000002.pt", "step-00000003.pt"]
    assert os.path.isfile(tmp_path / "model" / "model_index.json")


# ---- a time budget and digit FID readings during training --------------------------------------------------
def test_a_time_budget_ends_the_run_early_with_everything_saved(tmp_path):
    config = preset("tiny", out_dir=str(tmp_path), max_steps=100_000, time_budget=1.0, checkpoint_every=10**6,
                    **SMALL_CONFIG)  # fmt: skip
    result = train(config)
    assert 0 < result.steps < 100_000 and len(result.losses) == result.steps
    assert 0.9 < result.train_seconds < 60  # the steps alone; about the budget, plus the step that crossed it
    (checkpoint,) = result.checkpoints  # the run's end is checkpointed like a planned one
    assert load_checkpoint(checkpoint)["step"] == result.steps and result.model_dir.is_dir()


def test_digit_fid_readings_go_into_loss_csv_and_survive_a_resume(tmp_path):
    settings = dict(SMALL_CONFIG, eval_every=2, eval_samples=65, checkpoint_every=2, sample_steps=2)
    train(preset("tiny", out_dir=str(tmp_path), max_steps=2, **settings))
    result = train(preset("tiny", out_dir=str(tmp_path), max_steps=4, resume=True, **settings))
    assert sorted(result.evals) == [2, 4] and all(v > 0 for v in result.evals.values())
    rows = (tmp_path / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss,digit_fid" and rows[1].endswith(",") and not rows[2].endswith(",")
    assert float(rows[4].split(",")[2]) == result.evals[4]
    with pytest.raises(ValueError, match="more than 64 samples"):
        train(preset("tiny", out_dir=str(tmp_path / "x"), eval_every=2, eval_samples=10))


# ---- 8. one run per folder; damaged checkpoints and warnings on the command line; what a refusal says ------
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _wait_for(found, proc: subprocess.Popen, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if found():
            return True
        time.sleep(0.01)
    return found()


def test_two_processes_cannot_share_an_output_folder(tmp_path):
    """Two real `minidiff train` processes into one folder: the second is refused at once, naming the
    first (pid), and writes nothing; the first's files stay its own."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "minidiff", "train", *SMALL, "--out", str(out), "--max-steps", "100000",
            "--checkpoint-every", "1000"]  # fmt: skip
    first = subprocess.Popen(
        [*argv, "--seed", "1"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        assert _wait_for(lambda: (out / "config.json").is_file(), first), first.stderr.read().decode()[-2000:]
        second = subprocess.run([*argv, "--seed", "2"], env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        err = second.stderr.strip()
        assert f"output folder {str(out)!r} is in use by another run (pid {first.pid} on " in err, err
        assert len(err.splitlines()) == 1 and "started 20" in err
        assert json.loads((out / "config.json").read_text())["seed"] == 1  # the second wrote nothing
        assert first.poll() is None  # and the first goes on
    finally:
        first.kill()
        first.wait(timeout=30)
        first.stderr.close()


def test_a_killed_lock_holder_leaves_no_stale_lock(tmp_path, capsys):
    """SIGKILL a process that holds the folder's lock: the OS drops the lock, the next run starts."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from minidiff.files import FolderLock; "
         f"FolderLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["train", *SMALL, "--out", str(out), "--max-steps", "1"]) == 1
        assert f"is in use by another run (pid {holder.pid} on" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [".minidiff.lock"]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
    assert main(["train", *SMALL, "--out", str(out), "--max-steps", "1"]) == 0


def test_cli_warnings_are_one_line_and_debug_shows_them_whole(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *SMALL, "--out", str(out), "--checkpoint-every", "1", "--num-samples", "0"]
    assert main([*argv, "--max-steps", "2"]) == 0
    newest = out / "checkpoints" / "step-00000002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    capsys.readouterr()
    with warnings.catch_warnings():  # as PYTHONWARNINGS=ignore: a run's events are logged, so they still show
        warnings.simplefilter("ignore")
        assert main([*argv, "--max-steps", "3", "--resume"]) == 0
    captured = capsys.readouterr()
    warned = [line for line in captured.err.splitlines() if line.startswith("warning")]
    assert warned == [
        f"warning: checkpoint {str(newest)!r} (1000 bytes) could not be read; moved aside to "
        "step-00000002.pt.damaged; resuming from step-00000001.pt"
    ]
    assert "miniz" not in captured.err and "UserWarning" not in captured.err
    assert "step-00000002.pt.damaged" not in captured.out  # not listed among the outputs
    newest = out / "checkpoints" / "step-00000003.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    assert main([*argv, "--max-steps", "3", "--resume", "--debug"]) == 0
    err = capsys.readouterr().err
    assert (
        "PytorchStreamReader" in err and "from minidiff.training.checkpoint at" in err
    )  # all, and its origin


def test_refused_resume_says_why_and_what_to_do(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *SMALL, "--out", str(out), "--checkpoint-every", "1", "--lr_scheduler", "cosine"]
    assert main([*argv, "--max_train_steps", "2"]) == 0
    assert main([*argv, "--max_train_steps", "3", "--resume"]) == 1
    err = capsys.readouterr().err
    assert (
        "cannot resume: the checkpoint was trained with other settings: --max_train_steps 3 (the checkpoint's is "
        "2: its cosine lr schedule is laid out over the run's length; keep 2, or stop early with --time-budget)"
    ) in err


def test_a_batch_larger_than_the_data_is_a_note(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="minidiff")
    train(
        preset("tiny", out_dir=str(tmp_path), max_steps=1, **{**SMALL_CONFIG, "limit": 3, "batch_size": 16})
    )
    assert "a batch of 16 is larger than the 3 images of 'digits': each step trains on all 3" in caplog.text


def test_the_end_of_run_grid_costs_a_fraction_of_the_training(tmp_path, caplog, monkeypatch):
    """On a machine where a denoising step of the grid takes 100 s, a quick run's automatic grid (DDIM,
    50 steps: 83 min) is cut to 10 steps of one image, and the log says so."""
    import logging

    import minidiff.cost

    monkeypatch.setattr(minidiff.cost, "step_seconds", lambda unet, batch_size: 100.0)
    caplog.set_level(logging.INFO, logger="minidiff")
    settings = {**SMALL_CONFIG, "sample_steps": None, "num_samples": 4}
    result = train(preset("tiny", out_dir=str(tmp_path), max_steps=1, **settings))
    assert (
        "sample grid: 1 image, DDIM with 10 steps (~4.2 min) instead of DDIM with 50 steps (~83.3 min)"
        in caplog.text
    )
    assert result.samples_png.is_file()
