"""Ratios, the printed table, the JSON file and RESULTS.md: all generated from the measured rows."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

from benchmarks.harness import Row

REFERENCE_IMPLS = ("diffusers fp32", "diffusers DDPMPipeline fp32", "diffusers DDPMScheduler.step")


def add_ratios(rows: list[Row]) -> None:
    """ratio_vs_diffusers = diffusers fp32 time / row time; _best: the fastest diffusers row's time instead.
    Only rows doing the same unit of work are compared (sampler_step: one group per sampler), and a group
    without a row named in REFERENCE_IMPLS takes its one diffusers row as the reference."""
    for key in {(r.case, r.batch, r.unit) for r in rows}:
        group = [r for r in rows if (r.case, r.batch, r.unit) == key and r.median_ms]
        reference = [r for r in group if r.impl in REFERENCE_IMPLS]
        theirs = [r for r in group if r.impl.startswith("diffusers")]
        reference = reference or (theirs if len(theirs) == 1 else [])
        best = min((r.median_ms for r in theirs), default=None)
        for row in group:
            if reference:
                row.ratio_vs_diffusers = reference[0].median_ms / row.median_ms
            if best:
                row.ratio_vs_diffusers_best = best / row.median_ms


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _time(row: Row) -> str:
    if row.median_ms is None:
        return "-"
    return f"{row.median_ms / 1000:.3f} s" if row.median_ms >= 1000 else f"{row.median_ms:.3f} ms"


RATIO = "t_diffusers/t"  # the default table's one ratio column: the fastest diffusers row's time / this row's
WIDTH = 100  # the default table fits this many columns; --wide shows every column
LEGEND = [
    f"{RATIO}: fastest diffusers time, same work / this row's time; > 1: faster than diffusers",
    "rel err: ||out - ref|| / ||ref|| against diffusers fp32 (0: bit for bit)",
    "No quality figure (FID, KID): the benchmark UNet has random weights, its images are noise",
]
COLUMNS = ["case", "batch", "implementation", "median", "runs", "t_diffusers fp32/t", "t_fastest diffusers/t",
           "img/s", "compile/capture s", "peak MiB", "rel err", "note"]  # fmt: skip


def table_rows(rows: list[Row]) -> list[list[str]]:
    """Every column of COLUMNS, a list of cells per row (--wide, RESULTS.md)."""
    return [
        [
            r.case,
            str(r.batch),
            r.impl,
            _time(r),
            str(r.runs),
            _fmt(r.ratio_vs_diffusers, ".2f"),
            _fmt(r.ratio_vs_diffusers_best, ".2f"),
            _fmt(r.throughput, ".0f"),
            _fmt(r.compile_s, ".1f"),
            _fmt(r.peak_mem_mb, ".0f"),
            _fmt(r.accuracy_rel_err, ".1e"),
            r.note,
        ]
        for r in rows
    ]


def _aligned(body: list[list[str]], right: set[int]) -> list[str]:
    """The cells of each line padded to their column's width (right-aligned for the columns in `right`)."""
    widths = [max(len(line[i]) for line in body) for i in range(len(body[0]))]
    return [
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))
        ).rstrip()
        for line in body
    ]


def format_table(rows: list[Row], wide: bool = False) -> str:
    """The table `python -m benchmarks` prints: the legend, then the rows grouped by case and batch, in at
    most WIDTH columns (a note that does not fit goes on its own line below its row); `wide`: every
    column of COLUMNS, one line per row."""
    if wide:
        lines = _aligned([COLUMNS] + table_rows(rows), right={1, 4, 5, 6, 7, 8, 9})
        return "\n".join(LEGEND + ["", lines[0], "-" * len(lines[0])] + lines[1:])
    header = ["implementation", "median", RATIO, "rel err"]
    body = [
        [r.impl, _time(r), _fmt(r.ratio_vs_diffusers_best, ".2f"), _fmt(r.accuracy_rel_err, ".1e")]
        for r in rows
    ]
    lines = _aligned([header] + body, right={1, 2})
    used = max(len(line) for line in lines)
    out = LEGEND + ["", "  " + lines[0], "  " + "-" * used]
    group = None
    for row, line in zip(rows, lines[1:]):
        if (row.case, row.batch) != group:
            group = (row.case, row.batch)
            units = {r.unit for r in rows if (r.case, r.batch) == group} - {"-", ""}
            out.append(f"{row.case}, batch {row.batch}" + (f" ({units.pop()})" if len(units) == 1 else ""))
        note = row.note
        if note and len(line) + 4 + len(note) <= WIDTH:
            out.append(f"  {line.ljust(used)}  {note}".rstrip())
        else:
            out.append(f"  {line}")
            out += (
                textwrap.wrap(note, WIDTH, initial_indent="      ", subsequent_indent="      ")
                if note
                else []
            )
    return "\n".join(out)


def targets(rows: list[Row], meta: dict) -> list[str]:
    """The issue's targets, checked against this run's rows (a line each; missing rows say so)."""

    def find(case, batch, prefix):
        found = [
            r
            for r in rows
            if r.case == case and r.batch == batch and r.impl.startswith(prefix) and r.median_ms
        ]
        return min(found, key=lambda r: r.median_ms) if found else None

    lines = []
    for batch, seconds in ((64, 1.0), (1, 0.5)):
        fast = find("sampling", batch, "minidiff fast")
        plain, best = find("sampling", batch, "diffusers DDPMPipeline"), find("sampling", batch, "diffusers")
        if fast is None or plain is None:
            lines.append(f"sampling, batch {batch}: not measured in this run")
            continue
        text = (
            f"sampling ({fast.unit}), batch {batch}: {fast.impl} {fast.median_ms / 1000:.3f} s "
            f"(target <= {seconds} s for 1000 steps); {plain.median_ms / fast.median_ms:.1f}x diffusers fp32"
        )
        if batch == 64:
            text += " (target 20x)"
            if best is not plain:
                text += f", {best.median_ms / fast.median_ms:.2f}x {best.impl} (target 3x)"
        lines.append(text)
    fast, best = find("train_step", 64, "minidiff fast"), find("train_step", 64, "diffusers")
    if fast and best:
        lines.append(
            f"training, batch 64: {fast.impl} {fast.throughput:.0f} img/s (target >= 10,000); "
            f"{best.median_ms / fast.median_ms:.2f}x {best.impl} (target 1.5x)"
        )
    mine, theirs = find("sd_unet_forward", 2, "minidiff"), find("sd_unet_forward", 2, "diffusers")
    if mine and theirs:
        lines.append(
            f"{meta.get('device', '').upper()} sd_unet_forward, batch 2: {mine.impl} "
            f"{theirs.median_ms / mine.median_ms:.2f}x {theirs.impl} (target >= 0.95x), "
            f"rel err {_fmt(mine.accuracy_rel_err, '.1e')}"
        )
    if meta.get("device") == "cpu":
        for case, prefix in (("scheduler_step", "minidiff"), ("unet_forward", "minidiff")):
            for batch in sorted({r.batch for r in rows if r.case == case}):
                fast, ref = find(case, batch, prefix), find(case, batch, "diffusers")
                if fast and ref:
                    target = "2x" if case == "scheduler_step" else "> 1x"
                    lines.append(
                        f"CPU {case}, batch {batch}: {fast.impl} {ref.median_ms / fast.median_ms:.2f}x {ref.impl} "
                        f"(target {target})"
                    )
    return lines


def sampler_table(rows: list[Row]) -> list[str]:
    """The sampler_step case, a line per sampler: both libraries' whole-run and per-call times
    (one call = scale_model_input + step), the ratio."""
    timed = [r for r in rows if r.case == "sampler_step" and r.median_ms]
    theirs = {r.unit: r for r in timed if r.impl.startswith("diffusers")}
    lines = [
        "| sampler | batch | steps | step calls | diffusers run | minidiff run | diffusers per call "
        "| minidiff per call | t_diffusers/t (> 1: minidiff faster) | rel err |",
        "|" + "---|" * 10,
    ]
    for m in (r for r in timed if r.impl.startswith("minidiff") and r.unit in theirs):
        d = theirs[m.unit]
        lines.append(
            f"| {d.extra['sampler']} | {d.batch} | {d.extra['steps']} | {d.extra['calls']} | {_time(d)} "
            f"| {_time(m)} | {d.extra['per_call_ms']:.3f} ms | {m.extra['per_call_ms']:.3f} ms "
            f"| {_fmt(m.ratio_vs_diffusers, '.2f')} | {_fmt(m.accuracy_rel_err, '.1e')} |"
        )
    return lines if len(lines) > 2 else []


def write_json(path: str | Path, meta: dict, rows: list[Row]) -> None:
    payload = {"meta": meta, "rows": [r.to_dict() for r in rows], "targets": targets(rows, meta)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def results_markdown(meta: dict, rows: list[Row]) -> str:
    header = [
        "# Benchmark results (generated by `python -m benchmarks`; do not edit by hand)",
        "",
        f"- device: **{meta['device_name']}** ({meta['device']}; CPU: {meta.get('cpu_model', 'not recorded')}); "
        f"torch {meta['torch']}, CUDA {meta['cuda']}, "
        f"diffusers {meta['diffusers']}, Python {meta['python']}; CPU threads: {meta['cpu_threads']}; {meta['date']}",
        f"- command: `{meta['command']}`; mode: {'quick (tiny UNet)' if meta['quick'] else 'full'}; "
        f"UNet: {meta['unet_parameters'] / 1e6:.1f} M parameters, {meta['unet_config']['sample_size']}x"
        f"{meta['unet_config']['sample_size']}",
        *[
            f"- rows of cases not run by that command come from an earlier run: `{m['command']}`; "
            f"CPU: {m.get('cpu_model', 'not recorded')}; CPU threads: {m['cpu_threads']}; {m['date']}"
            for m in meta.get("merged", [])
        ],
        f"- precision flags pinned in both libraries: cudnn.allow_tf32={meta['cudnn_allow_tf32']}, "
        f"matmul.allow_tf32={meta['matmul_allow_tf32']}; fp32 rows are true fp32",
        "- times: medians of alternating runs after warm-up (CUDA events on GPU); fresh random inputs; "
        "compile / capture time apart; ratios: t_diffusers fp32/t = diffusers fp32 time / row time, "
        "t_fastest diffusers/t = the fastest diffusers row's time / row time (> 1: faster than diffusers)",
        "- rel err: $\\lVert \\text{out} - \\text{ref} \\rVert / \\lVert \\text{ref} \\rVert$ against the reference named in the JSON "
        "(`accuracy_ref`); for sampling: final images vs diffusers' fp32 pipeline with the same seed and noise",
        "- no quality figure (FID, KID): the benchmark UNet has seeded random weights, so its images are "
        "noise; rel err against diffusers' images is the accuracy check",
        "",
        "## Targets",
        "",
    ]
    lines = header + [f"- {line}" for line in targets(rows, meta)]
    samplers = sampler_table(rows)
    if samplers:
        lines += ["", "## Samplers: the scheduler's own cost over one sampling run (no UNet)", ""] + samplers
    lines += ["", "## All rows", ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    if meta.get("profile"):
        lines += ["", "## Where the time goes (kernel launches per UNet forward, torch.profiler)", ""]
        lines += [f"- {name}: {count} CUDA kernels" for name, count in meta["profile"].items()]
    return "\n".join(lines) + "\n"
