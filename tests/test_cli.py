"""The `minidiff` command: every subcommand on tiny settings, --help, bad flags and library errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from minidiff.cli import main

# The tiny preset's net at 8x8 on 32 digits, a few steps: each command runs in seconds.
TRAIN_TINY = [
    "--image-size",
    "8",
    "--limit",
    "32",
    "--batch-size",
    "8",
    "--sample-steps",
    "2",
    "--num-samples",
    "4",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", "--preset", "tiny", "--out", str(out), "--max-steps", "3", "--quiet", *TRAIN_TINY])
    assert code == 0
    return out


def test_train_writes_outputs_that_diffusers_loads(trained, capsys):
    diffusers = pytest.importorskip("diffusers")
    for name in ("samples.png", "loss.png", "loss.csv", "model/model_index.json"):
        assert (trained / name).is_file(), name
    assert len((trained / "loss.csv").read_text().splitlines()) == 1 + 3  # header + one row per step
    pipe = diffusers.DDPMPipeline.from_pretrained(trained / "model")
    assert pipe.unet.config.sample_size == 8 and pipe.unet.config.in_channels == 1


def test_train_prints_where_files_went(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["train", "--preset", "tiny", "--out", str(out), "--max-steps", "1", "--quiet", *TRAIN_TINY])
        == 0
    )
    printed = capsys.readouterr().out
    assert "trained 1 steps" in printed
    for path in (out / "samples.png", out / "loss.png", out / "loss.csv", out / "model"):
        assert str(path) in printed


def test_train_prediction_type_reaches_the_saved_scheduler(tmp_path, capsys):
    """--prediction-type sets what the UNet learns and is saved with the model, as diffusers reads it."""
    diffusers = pytest.importorskip("diffusers")
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--out", str(out), "--max-steps", "2", "--quiet", *TRAIN_TINY]
    assert main([*argv, "--prediction-type", "v_prediction", "--lr-scheduler", "cosine"]) == 0
    scheduler = diffusers.DDPMScheduler.from_pretrained(out / "model", subfolder="scheduler")
    assert scheduler.config.prediction_type == "v_prediction"


def test_train_resume(tmp_path, capsys):
    args = [
        "train",
        "--preset",
        "tiny",
        "--out",
        str(tmp_path),
        "--checkpoint-every",
        "1",
        "--quiet",
        *TRAIN_TINY,
    ]
    assert main([*args, "--max-steps", "1"]) == 0
    assert main([*args, "--max-steps", "2"]) == 1  # checkpoints there: refuses to start over
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--max-steps", "2", "--resume"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert len((tmp_path / "loss.csv").read_text().splitlines()) == 1 + 2


def test_sample_ddpm_and_ddim(trained, tmp_path, capsys):
    for scheduler in ("ddpm", "ddim"):
        png = tmp_path / f"{scheduler}.png"
        args = ["sample", "--model", str(trained / "model"), "--num", "4", "--steps", "3", "--quiet"]
        assert main([*args, "--scheduler", scheduler, "--out", str(png), "--device", "cpu"]) == 0
        assert Image.open(png).size == (2 * 64, 2 * 64)  # a 2 x 2 grid of 8 x 8 digits enlarged 8 times
        assert str(png) in capsys.readouterr().out


def test_noise_pictures_and_terminal_signal_warning(tmp_path, capsys):
    out = tmp_path / "noise"
    args = ["noise", "--out", str(out), "--image-size", "8", "--schedule", "linear"]
    assert main([*args, "--beta-start", "0.001", "--beta-end", "0.004"]) == 0
    printed = capsys.readouterr().out
    assert (out / "noise.png").is_file() and (out / "snr.png").is_file()
    assert "warning: alpha_bar_T = 0.08" in printed  # the tutorial's first schedule keeps signal at t = T
    assert main(["noise", "--out", str(out), "--image-size", "8"]) == 0  # squaredcos_cap_v2: no warning
    assert "warning" not in capsys.readouterr().out


def test_parity_prints_the_table(trained, capsys):
    pytest.importorskip("diffusers")
    assert main(["parity", "--model", str(trained / "model")]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:2] == ["module", "shape"]
    assert "conv_in" in table and "modules compared" in table


def test_demo_writes_the_readme_files(tmp_path, capsys):
    diffusers = pytest.importorskip("diffusers")
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--limit",
        "32",
        "--sample-steps",
        "2",
        "--num-samples",
        "4",
        "--image-size",
        "8",
        "--quality-samples",
        "65",
        "--quality-settings",
        "ddim:2,ddpm:100,ddim:3",
    ]
    assert main([*args, "--quiet"]) == 0
    for name in ("samples.png", "noise.png", "snr.png", "loss.png", "loss.csv", "quality_vs_steps.png"):
        assert (out / name).is_file(), name
    diffusers.DDPMPipeline.from_pretrained(out / "model")
    printed = capsys.readouterr().out
    assert "demo finished in" in printed and str(out / "noise.png") in printed
    # samples.png: the demo's sampler (DDPM, 100 steps) when it is one of the settings
    assert "steps/s" in printed and "the demo's samples (DDPM, 100 steps): digit FID" in printed
    assert printed.count("steps: digit FID") == 3  # one row per sampler setting


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--quality-samples", "64"], "needs more than 64 samples"),
        (["--quality-settings", "ddim:10,ddpm"], "expected SAMPLER:STEPS"),
    ],
)
def test_demo_refuses_bad_quality_flags_before_training(tmp_path, capsys, flags, message):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet", *flags]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing trained, nothing written


@pytest.mark.parametrize("command", [[], ["train"], ["sample"], ["noise"], ["parity"], ["demo"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0 and "usage: minidiff" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--mixed-precision", "fp8"], "invalid choice: 'fp8'"),
        (["train", "--prediction-type", "x0"], "invalid choice: 'x0'"),
        (["train", "--max-steps", "0"], "'0' is not a positive integer"),
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        (["sample"], "the following arguments are required: --model"),
        (["sample", "--model", "m", "--scheduler", "euler"], "invalid choice: 'euler'"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_bad_flags_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_library_errors_are_one_line_and_exit_1(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "--preset", "tiny", "--out", str(blocker / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("minidiff train: error: output folder") and "not writable" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["sample", "--model", str(tmp_path / "missing"), "--quiet"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["noise", "--schedule", "cosine", "--out", str(tmp_path / "n")]) == 1
    assert "beta_schedule 'cosine'" in capsys.readouterr().err


def test_the_installed_command_exits_non_zero_on_a_bad_flag():
    done = subprocess.run(
        [sys.executable, "-m", "minidiff", "train", "--lr", "fast"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "invalid float value: 'fast'" in done.stderr
