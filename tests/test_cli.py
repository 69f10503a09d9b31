"""The `minidiff` command: every subcommand on tiny settings, --help, bad flags and library errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert "trained 1 step in" in printed
    for path in (out / "samples.png", out / "loss.png", out / "loss.csv", out / "model"):
        assert str(path) in printed
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert len(set(modes.values())) == 1, modes  # the weights too (safetensors writes 0600)
    again = ["train", "--preset", "tiny", "--out", str(out), "--max-steps", "1", "--quiet", *TRAIN_TINY]
    assert main([*again, "--overwrite", "--num-samples", "0"]) == 0
    printed = capsys.readouterr().out
    assert "samples.png" not in printed and not (out / "samples.png").exists()  # only files that exist


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
    printed = capsys.readouterr().out
    assert "trained 1 step in" in printed and "resumed at step 1, the run now has 2 steps" in printed
    assert len((tmp_path / "loss.csv").read_text().splitlines()) == 1 + 2


def test_sample_with_every_kind_of_sampler(trained, tmp_path, capsys):
    for sampler in ("ddpm", "ddim", "dpmsolver++", "euler_a"):
        png = tmp_path / f"{sampler}.png"
        args = ["sample", "--model", str(trained / "model"), "--num", "4", "--steps", "3", "--quiet"]
        assert main([*args, "--sampler", sampler, "--out", str(png), "--device", "cpu"]) == 0
        assert Image.open(png).size == (2 * 64, 2 * 64)  # a 2 x 2 grid of 8 x 8 digits enlarged 8 times
        printed = capsys.readouterr().out
        assert str(png) in printed and f"{sampler} with 3 steps" in printed


def test_sample_steps_default_from_the_table_and_the_old_flag_name(trained, tmp_path, capsys):
    png = tmp_path / "s.png"
    args = [
        "sample",
        "--model",
        str(trained / "model"),
        "--num",
        "1",
        "--quiet",
        "--device",
        "cpu",
        "--out",
        str(png),
    ]
    assert main([*args, "--scheduler", "dpmsolver++"]) == 0  # sample's former flag: still accepted
    assert "dpmsolver++ with 20 steps" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    helptext = capsys.readouterr().out
    assert "--sampler" in helptext and "--scheduler" not in helptext and "dpmsolver++: 20" in helptext


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
        "ddim:2,ddpm:100,dpmsolver++:3",
        "--sampler",  # the training run's grids: any sampler of the table
        "euler",
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
    assert "DPMSOLVER++    3 steps: digit FID" in printed
    assert json.loads((out / "config.json").read_text())["sampler"] == "euler"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--quality-samples", "64"], "needs more than 64 samples"),
        (["--quality-settings", "ddim:10,ddpm"], "expected SAMPLER:STEPS"),
        (
            ["--quality-settings", "ddpm:10,heun:10"],
            "setting 'heun:10'; expected SAMPLER:STEPS with SAMPLER one of",
        ),
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
        (["sample", "--model", "m", "--sampler", "heun"], "invalid choice: 'heun'"),
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


# ---- diffusers' command lines: every flag of train_unconditional.py is honoured or refused with a reason ----
FLAGS_FILE = Path(__file__).parent / "data" / "train_unconditional_flags.txt"


def _diffusers_flags() -> list[list[str]]:
    lines = [line.split() for line in FLAGS_FILE.read_text().splitlines()]
    return [words for words in lines if words and not words[0].startswith("#")]


def test_the_flag_list_is_train_unconditional_py_whole():
    names = [words[0] for words in _diffusers_flags()]
    assert len(names) == len(set(names)) == 45


@pytest.mark.parametrize("words", _diffusers_flags(), ids=lambda words: words[0])
def test_every_train_unconditional_flag_is_honoured_or_refused_with_a_reason(words, capsys):
    from minidiff.cli import build_parser
    from minidiff.training.flags import REFUSED

    argv = ["train", *words]
    if words[0] in REFUSED:
        with pytest.raises(SystemExit) as info:
            build_parser(argv).parse_args(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and f"{words[0]} is not supported: {REFUSED[words[0]]}" in err
        assert "unrecognized" not in err
    else:
        build_parser(argv).parse_args(argv)  # accepted (argparse exits 2 otherwise)


def test_diffusers_preset_is_train_unconditional_py_defaults():
    """--diffusers-defaults = --preset diffusers: the script's defaults, flag for flag (those not
    listed here have no counterpart in TrainConfig)."""
    from minidiff.cli import build_parser
    from minidiff.training.flags import config_from_args

    argv = ["train", "--diffusers-defaults"]
    args = build_parser(argv).parse_args(argv)
    config = config_from_args(args, args.defaults)
    script = dict(image_size=64, batch_size=16, num_samples=16, epochs=100, sample_every=10, save_model_every=10,
                  grad_accum=1, lr=1e-4, lr_scheduler="cosine", warmup_steps=500, adam_beta1=0.95, adam_beta2=0.999,
                  weight_decay=1e-6, adam_epsilon=1e-8, ema_decay=0.0, ema_inv_gamma=1.0, ema_power=0.75,
                  mixed_precision="no", prediction_type="epsilon", num_train_timesteps=1000, sample_steps=1000,
                  beta_schedule="linear", checkpoint_every=500, flip=False, center_crop=False, logger="tensorboard",
                  logging_dir="logs", out_dir="ddpm-model-64", grad_clip=1.0, layers_per_block=2,
                  block_out_channels=(128, 128, 256, 256, 512, 512))  # fmt: skip
    assert {k: getattr(config, k) for k in script} == script


def test_unet_config_defaults_are_unet2dmodels():
    """--model_config_name_or_path refuses keys that differ from these defaults: they must be
    UNet2DModel's, in minidiff and in diffusers."""
    import inspect

    from minidiff.models.unet_2d import UNet2DModel
    from minidiff.training.flags import UNET_DEFAULTS

    ours = inspect.signature(UNet2DModel.__init__).parameters
    assert {k: ours[k].default for k in UNET_DEFAULTS} == UNET_DEFAULTS
    diffusers = pytest.importorskip("diffusers")
    theirs = inspect.signature(diffusers.UNet2DModel.__init__).parameters
    assert {k: theirs[k].default for k in UNET_DEFAULTS} == UNET_DEFAULTS


def test_model_config_name_or_path_sets_the_architecture(tmp_path, capsys):
    import json

    from minidiff.cli import build_parser
    from minidiff.training.flags import config_from_args

    folder = tmp_path / "unet"
    folder.mkdir()
    unet = dict(block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4, sample_size=8,
                down_block_types=["DownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "UpBlock2D"])  # fmt: skip
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", **unet}))
    argv = ["train", "--model_config_name_or_path", str(folder)]
    args = build_parser(argv).parse_args(argv)
    config = config_from_args(args, args.defaults)
    assert config.block_out_channels == (8, 16) and config.down_block_types == ("DownBlock2D", "DownBlock2D")
    (folder / "config.json").write_text(json.dumps({**unet, "act_fn": "gelu"}))
    assert main([*argv, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert f"--model_config_name_or_path {folder} sets act_fn='gelu'; minidiff trains UNets" in err


def test_a_diffusers_command_line_on_another_preset_says_which_defaults_differ(tmp_path, capsys):
    argv = [
        "train",
        "--preset",
        "tiny",
        "--train_data_dir",
        str(tmp_path / "missing"),
        "--learning_rate",
        "1e-3",
    ]
    assert main(argv) == 1  # the data folder is missing; the note comes before
    err = capsys.readouterr().err
    assert "note: settings not given come from the tiny preset, not train_unconditional.py" in err
    assert "--lr-scheduler constant (its cosine)" in err and "--lr " not in err  # typed: not listed


# ---- errors in the user's words, before torch is imported --------------------------------------------------
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--resolution", "30"], "--resolution 30 cannot be halved 3 times by the UNet's down path"),
        (["--image-size", "30"], "--image-size 30 cannot be halved 3 times"),
        (["--learning_rate=nan"], "--learning_rate nan; expected a positive finite number"),
        (["--data", "./no/such/folder"], "--data ./no/such/folder: that folder does not exist"),
        (
            ["--train_data_dir", "./no/such/folder"],
            "--train_data_dir ./no/such/folder: that folder does not exist",
        ),
        (
            ["--resume_from_checkpoint", "./no/ckpt.pt"],
            "--resume_from_checkpoint ./no/ckpt.pt: that checkpoint",
        ),
    ],
)
def test_refused_settings_are_named_as_typed_before_torch_loads(flags, message, tmp_path):
    """A subprocess, so that it can prove torch was never imported."""
    code = (
        "import sys; from minidiff.cli import main; "
        f"code = main(['train', '--out', {str(tmp_path / 'run')!r}, *{flags!r}]); "
        "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert done.stdout.strip() == "no torch" and not (tmp_path / "run").exists()


def test_sample_announces_its_cost_and_a_cheaper_setting(trained, tmp_path, monkeypatch, capsys):
    import minidiff.cost

    monkeypatch.setattr(minidiff.cost, "step_seconds", lambda unet, batch_size: 1.0)  # a slow machine
    args = [
        "sample",
        "--model",
        str(trained / "model"),
        "--num",
        "4",
        "--steps",
        "60",
        "--quiet",
        "--device",
        "cpu",
    ]
    assert main([*args, "--out", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert (
        "expected: 4 images, ddpm with 60 steps: ~60 s (1 s a step); ddim with 50 steps: ~50 s or dpmsolver++ "
        "with 20 steps: ~20 s; --sampler NAME --steps N chooses"
    ) in out
    monkeypatch.setattr(minidiff.cost, "step_seconds", lambda unet, batch_size: 0.01)
    assert main([*args, "--out", str(tmp_path / "s.png")]) == 0
    assert "expected" not in capsys.readouterr().out  # 0.6 s: not worth a line


def test_eval_announces_the_cost_of_its_own_default_steps(trained, monkeypatch, capsys):
    """The estimate uses the sampler's default step count (DPM-Solver++: 20), not every training timestep."""
    import importlib

    import minidiff.cost

    monkeypatch.setattr(minidiff.cost, "step_seconds", lambda unet, batch_size: 1.0)

    def stop(*args, **kwargs):
        raise RuntimeError("stopped after the estimate")

    # the module (minidiff.quality.evaluate, the attribute, is the function of that name)
    monkeypatch.setattr(importlib.import_module("minidiff.quality.evaluate"), "evaluate", stop)
    assert main(["eval", "--model", str(trained / "model"), "--quiet", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "expected: 500 samples, dpmsolver++ with 20 steps:" in out


# ---- help, unknown flags, checks before work (one wording, before a model loads) -------------------------
@pytest.mark.parametrize("command", ["noise", "sample", "eval", "parity"])
def test_help_shows_every_default(command, capsys):
    from minidiff.cli import build_parser

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    subparser = build_parser([command])._subparsers._group_actions[0].choices[command]
    for action in subparser._actions:
        if action.option_strings and action.default not in (None, False, "==SUPPRESS==") and action.help:
            assert f"(default: {action.default})" in text, (command, action.dest)
    if command == "noise":
        assert "(default: squaredcos_cap_v2)" in text and "(default: 0.0001)" in text


@pytest.mark.parametrize(
    "argv, hint",
    [
        (["train", "--lerning_rate", "1e-4"], "did you mean --learning_rate?"),  # diffusers' spelling
        (["train", "--lerningrate", "1e-4"], "did you mean --learning_rate?"),
        (["sample", "--model", "m", "--sampeler", "ddim"], "did you mean --sampler?"),
        (
            ["eval", "--model", "m", "--num-smaples", "9", "--seeed", "1"],
            "--num-samples (for --num-smaples), --seed",
        ),
    ],
)
def test_unknown_flags_get_the_closest_known_name(argv, hint, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "unrecognized arguments" in err and hint in err


def test_unknown_flag_far_from_every_name_gets_no_guess(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--zzzz", "1"])
    assert "did you mean" not in capsys.readouterr().err


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def test_every_writing_command_checks_its_output_path_first(trained, a_file, monkeypatch, capsys):
    # `sample --out a_file/grid.png` fails before the model loads (no sampling, no raw [Errno 17]), in the
    # words `train` uses for the same mistake
    import importlib

    import minidiff.pipelines.pipeline_ddpm as pipeline_ddpm

    evaluate = importlib.import_module("minidiff.quality.evaluate")

    def never(*args, **kwargs):
        raise AssertionError("loaded a model before checking the output path")

    monkeypatch.setattr(pipeline_ddpm.DDPMPipeline, "from_pretrained", never)
    monkeypatch.setattr(evaluate, "load_pipeline", never)
    wording = f"output folder {str(a_file)!r} is not writable: it is a file"
    model = str(trained / "model")
    runs = {
        "sample": ["sample", "--model", model, "--out", str(a_file / "grid.png")],
        "eval": ["eval", "--model", model, "--out", str(a_file / "eval.json")],
        "eval --cache-dir": ["eval", "--model", model, "--out", str(a_file.parent / "e.json"),
                             "--cache-dir", str(a_file)],
        "noise": ["noise", "--out", str(a_file)],
        "train": ["train", "--preset", "tiny", "--out", str(a_file), *TRAIN_TINY],
    }  # fmt: skip
    for what, argv in runs.items():
        assert main(argv) == 1, what
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"error: {wording}") and len(err.splitlines()) == 1, (what, err)
    assert main(["sample", "--model", model, "--out", str(a_file / "deeper" / "grid.png")]) == 1
    assert f"{str(a_file)!r} is a file" in capsys.readouterr().err
    folder = a_file.parent / "grid.png"
    folder.mkdir()
    assert main(["sample", "--model", model, "--out", str(folder)]) == 1
    assert f"output file {str(folder)!r} is not writable: it is a folder" in capsys.readouterr().err


def test_a_hub_id_offline_fails_at_once_with_one_message_in_every_command(monkeypatch, capsys):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    messages = {}
    for command in ("sample", "eval", "parity"):
        started = time.perf_counter()
        assert main([command, "--model", "google/ddpm-cifar10-32"]) == 1
        seconds = time.perf_counter() - started
        err = capsys.readouterr().err.strip()
        messages[command] = err.split("error: ", 1)[1]
        assert seconds < 3 and "could not be downloaded from the Hugging Face hub" in err, (command, seconds)
    assert len(set(messages.values())) == 1, messages


def test_a_hub_dataset_offline_fails_before_anything_loads(tmp_path, monkeypatch, capsys):
    import minidiff.files

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(minidiff.files, "hub_reachable", lambda timeout=3.0: False)  # no network
    hub_id = "huggan/smithsonian_butterflies_subset"
    messages = set()
    for argv in (["noise", "--data", hub_id, "--out", str(tmp_path / "n")],
                 ["train", "--data", hub_id, "--out", str(tmp_path / "t"), "--max-steps", "1"]):  # fmt: skip
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        messages.add(err.split("error: ", 1)[1])
        assert "hub could not be reached" in err and len(err.splitlines()) == 1
    assert len(messages) == 1 and not (tmp_path / "n").exists() and not (tmp_path / "t").exists()
