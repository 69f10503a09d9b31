"""The benchmark harness runs end to end in --quick mode on CPU and writes sane results (no timing asserted)."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest

from benchmarks.__main__ import main, parse_args
from benchmarks.harness import Row
from benchmarks.report import RATIO, WIDTH, add_ratios, format_table


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(
            ["--quick", "--device", "cpu", "--json", str(out / "r.json"), "--results-md", str(out / "R.md")]
        )
    payload = json.loads((out / "r.json").read_text())
    payload["printed"] = printed.getvalue()  # what `make bench` shows
    return code, payload, (out / "R.md").read_text()


def test_quick_run_writes_every_case(quick_run):
    code, payload, _ = quick_run
    assert code == 0
    cases = {(row["case"], row["batch"]) for row in payload["rows"]}
    assert {
        "scheduler_step",
        "sampler_step",
        "unet_forward",
        "sd_unet_forward",
        "train_step",
        "sampling",
    } == {case for case, _ in cases}
    assert payload["meta"]["device"] == "cpu" and payload["meta"]["diffusers"] == "0.42.1"


def test_times_are_positive_and_accuracy_is_reported(quick_run):
    _, payload, _ = quick_run
    timed = [row for row in payload["rows"] if row["runs"] > 0]
    assert len(timed) >= 12
    for row in timed:
        assert math.isfinite(row["median_ms"]) and row["median_ms"] > 0, row
        assert math.isfinite(row["ratio_vs_diffusers"]) and row["ratio_vs_diffusers"] > 0, row
        if not row["impl"].startswith("diffusers"):  # every minidiff row carries its error vs diffusers fp32
            assert row["accuracy_ref"], row
            # fp32 on CPU: the fast and plain paths agree with diffusers to rounding (1e-4 is the brief's bound)
            assert 0 <= row["accuracy_rel_err"] < 1e-4, row
    skipped = [row for row in payload["rows"] if row["runs"] == 0]
    assert all(row["note"] for row in skipped)  # a row not run says why


def test_stable_diffusion_rows_pair_both_libraries_with_equal_outputs(quick_run):
    _, payload, markdown = quick_run
    rows = [row for row in payload["rows"] if row["case"] == "sd_unet_forward"]
    assert [(row["impl"], row["batch"]) for row in rows] == [("diffusers fp32", 2), ("minidiff fp32", 2)]
    assert rows[1]["accuracy_rel_err"] == 0.0  # the same fp32 operations in the same order on CPU
    assert rows[1]["ratio_vs_diffusers"] == pytest.approx(rows[0]["median_ms"] / rows[1]["median_ms"])
    assert "sd_unet_forward, batch 2: minidiff fp32" in markdown and "target >= 0.95x" in markdown


def test_no_quality_figure_for_the_random_benchmark_unet(quick_run):
    """The benchmark UNet has random weights: its images are noise, and a FID or KID of them means nothing."""
    _, payload, markdown = quick_run
    sampling = [row for row in payload["rows"] if row["case"] == "sampling" and row["runs"] > 0]
    assert {row["batch"] for row in sampling} == {1, 4}
    assert all("digit_kid" not in row for row in payload["rows"])
    table = payload["printed"].split("\n\n", 1)[1]  # the printed table below its legend
    for text in (markdown.split("## All rows")[1], table):
        assert "KID" not in text and "FID" not in text
    assert "no quality figure" in markdown.lower() and "No quality figure" in payload["printed"]


def test_printed_table_fits_100_columns_with_one_explained_ratio(quick_run):
    _, payload, _ = quick_run
    printed = payload["printed"].splitlines()
    assert max(len(line) for line in printed) <= WIDTH == 100, max(printed, key=len)
    legend = next(line for line in printed if line.startswith(RATIO + ":"))
    assert "> 1: faster than diffusers" in legend
    header = next(line for line in printed if "implementation" in line)
    assert header.split() == ["implementation", "median", RATIO, "rel", "err"]  # one ratio column
    rows = [Row(**row) for row in payload["rows"]]
    for row in rows:  # every row is shown with its ratio to the fastest diffusers row, 2 decimals
        if row.ratio_vs_diffusers_best is not None:
            assert any(row.impl in line and f"{row.ratio_vs_diffusers_best:.2f}" in line for line in printed)
    assert "sampler_step, batch 64" in payload["printed"]
    wide = format_table(rows, wide=True).splitlines()
    assert max(len(line) for line in wide) > WIDTH  # --wide: every column
    wide_header = next(line for line in wide if line.startswith("case"))
    assert all(
        name in wide_header for name in ("img/s", "peak MiB", "t_diffusers fp32/t", "t_fastest diffusers/t")
    )
    assert parse_args(["--wide"]).wide and not parse_args([]).wide


def test_sampler_rows_pair_each_sampler_with_diffusers(quick_run):
    _, payload, markdown = quick_run
    rows = [row for row in payload["rows"] if row["case"] == "sampler_step"]
    samplers = ["ddpm", "ddim", "pndm", "dpmsolver++", "euler", "euler_a"]
    assert [row["extra"]["sampler"] for row in rows] == [s for s in samplers for _ in "dm"]
    for theirs, ours in zip(rows[::2], rows[1::2]):
        assert theirs["impl"].startswith("diffusers ") and ours["impl"] == "minidiff " + theirs["impl"][10:]
        assert theirs["ratio_vs_diffusers"] == 1.0  # each sampler is compared with its own diffusers class
        assert ours["ratio_vs_diffusers"] == pytest.approx(theirs["median_ms"] / ours["median_ms"])
        assert ours["extra"]["per_call_ms"] == pytest.approx(ours["median_ms"] / ours["extra"]["calls"])
        # the same fp32 operations in the same order on CPU: the final samples are equal
        assert ours["accuracy_rel_err"] == 0.0, ours
    assert rows[4]["extra"]["calls"] > rows[4]["extra"]["steps"]  # PNDM's Runge-Kutta warm-up is counted
    table = markdown.split("## Samplers")[1].split("## All rows")[0]
    assert all(f"| {sampler} | 64 |" in table for sampler in samplers)


def test_merge_reruns_one_case_and_keeps_the_other_rows(quick_run, tmp_path):
    _, payload, _ = quick_run
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps(payload))
    merged, md = tmp_path / "merged.json", tmp_path / "merged.md"
    args = ["--quick", "--device", "cpu", "--cases", "sampler_step", "--merge", str(earlier)]
    assert main(args + ["--json", str(merged), "--results-md", str(md)]) == 0
    rows = json.loads(merged.read_text())["rows"]
    key = [(row["case"], row["batch"], row["impl"]) for row in rows]
    assert key == [
        (row["case"], row["batch"], row["impl"]) for row in payload["rows"]
    ]  # same rows, same order
    assert [row for row in rows if row["case"] != "sampler_step"] == [
        row for row in payload["rows"] if row["case"] != "sampler_step"
    ]
    assert payload["meta"]["command"] in md.read_text()  # the earlier run is named in the header
    earlier.write_text(json.dumps({**payload, "meta": {**payload["meta"], "device": "cuda"}}))
    with pytest.raises(SystemExit, match="merge only runs of one device"):
        main(args)


def test_results_markdown_names_the_setup(quick_run):
    _, payload, markdown = quick_run
    assert "torch " + payload["meta"]["torch"] in markdown
    assert "diffusers 0.42.1" in markdown and "cudnn.allow_tf32=False" in markdown
    all_rows = markdown.split("## All rows")[1]
    assert all_rows.count("\n| ") == len(payload["rows"]) + 1  # header + one line per row


def test_ratios_use_the_diffusers_rows():
    rows = [
        Row("train_step", "diffusers fp32", 64, "fp32", "step", median_ms=40.0),
        Row("train_step", "diffusers bf16 compile(reduce-overhead)", 64, "bf16", "step", median_ms=10.0),
        Row("train_step", "minidiff fast", 64, "bf16", "step", median_ms=5.0),
    ]
    add_ratios(rows)
    assert rows[2].ratio_vs_diffusers == 8.0 and rows[2].ratio_vs_diffusers_best == 2.0


def test_bad_arguments_fail_loudly():
    with pytest.raises(SystemExit):
        main(["--quick", "--device", "cpu", "--cases", "nonsense"])
    with pytest.raises(SystemExit):
        main(["--quick", "--device", "cpu", "--compile", "everything"])
