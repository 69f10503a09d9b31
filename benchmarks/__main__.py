"""python -m benchmarks [--quick] [--device cpu|cuda] [--json PATH] [--results-md PATH] [--compile train,sample]

Runs every case (scheduler step, each sampler's scheduler over a whole run, UNet forward, Stable Diffusion's
UNet forward, train step, sampling) with diffusers and minidiff in this process, prints a table, and writes JSON and a RESULTS.md
generated from the measurements.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

CASES = ("scheduler_step", "sampler_step", "unet_forward", "sd_unet_forward", "train_step", "sampling")
# cases that build what they time (a scheduler alone, Stable Diffusion's UNet): no UNet2DModel argument
UNET_FREE = ("scheduler_step", "sampler_step", "sd_unet_forward")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="tiny UNet, few runs and steps (CPU / CI)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    parser.add_argument("--json", default=None, help="write all rows as JSON here")
    parser.add_argument("--results-md", default=None, help="write the Markdown report here")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list out of {','.join(CASES)}")
    parser.add_argument(
        "--compile",
        default="train,sample",
        help="compiled variants to run on CUDA (each ~60-100 s of compile): 'train', 'sample', or 'none'",
    )
    parser.add_argument(
        "--compile-batch", type=int, default=64, help="the one batch size compiled variants use"
    )
    parser.add_argument("--sample-steps", type=int, default=None, help="default: 1000 (--quick: 10)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=330.0,
        help="compiled variants are skipped once this is nearly spent",
    )
    parser.add_argument(
        "--merge",
        default=None,
        metavar="JSON",
        help="start from the rows of an earlier --json file (same device); the cases run now replace theirs",
    )
    parser.add_argument("--tf32", action="store_true", help="allow TF32 in cuDNN and matmuls (default: off)")
    parser.add_argument(
        "--wide", action="store_true", help="print every column (default: a table of at most 100 columns)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise SystemExit(f"--cases {unknown} unknown; expected a comma list out of {list(CASES)}")
    compile_names = frozenset() if args.compile == "none" else frozenset(args.compile.split(","))
    if compile_names - {"train", "sample"}:
        raise SystemExit(
            f"--compile {args.compile!r}; expected 'train', 'sample', both comma-separated, or 'none'"
        )

    # Precision flags: set here, explicitly, for both libraries (never at import).
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    warnings.filterwarnings("ignore", category=FutureWarning)

    from benchmarks.cases import (
        QUICK_UNET,
        TUTORIAL_UNET,
        Settings,
        build_unets,
    )
    from benchmarks.harness import environment
    from benchmarks.report import format_table

    quick, cuda = args.quick, device.type == "cuda"
    settings = Settings(
        device=device,
        unet_config=QUICK_UNET if quick else TUTORIAL_UNET,
        rounds=2 if quick else (30 if cuda else 8),
        sample_rounds=1 if quick else (2 if cuda else 1),
        warmup=1 if quick else 3,
        sample_steps=args.sample_steps or (10 if quick else 1000),
        compile=compile_names,
        deadline=time.monotonic() + args.budget_s,
    )
    batches = {
        "unet_forward": (1, 8) if quick else (1, 64, 256),
        "sd_unet_forward": (2,),  # the guidance pair
        "train_step": (4,) if quick else (64, 256),
        "sampling": (1, 4) if quick else (1, 64),
        "scheduler_step": (64,),
        "sampler_step": (64,),
    }
    unets = build_unets(settings)
    meta = environment(device)
    meta.update(
        command="python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
        quick=quick,
        unet_config=settings.unet_config,
        unet_parameters=sum(p.numel() for p in unets[1].parameters()),
        sample_steps=settings.sample_steps,
    )
    rows = earlier_rows(args.merge, meta) if args.merge else []
    rows, failed = run_jobs(args, settings, unets, meta, cases, batches, rows)
    if cuda:
        from benchmarks.profiling import kernel_counts

        try:
            meta["profile"] = kernel_counts(unets, device)
        except Exception as err:  # the profile is optional
            meta["profile"] = {"profiler failed": f"{type(err).__name__}: {err}"}
        write_outputs(args, meta, rows)
    print(format_table(rows, wide=args.wide))
    return 1 if failed else 0


def run_jobs(
    args, settings, unets, meta: dict, cases: list[str], batches: dict, rows: list
) -> tuple[list, set]:
    """Pass 1: every case and batch without compiled variants (minutes of compile must not cost these
    rows); pass 2: the cases with compiled variants again at --compile-batch, while the budget lasts.
    The results are written after every case, so a run cut short still leaves them."""
    from benchmarks.cases import Settings, scheduler_step, unet_forward
    from benchmarks.cases_loops import sampling, train_step
    from benchmarks.cases_samplers import sampler_step
    from benchmarks.cases_sd import sd_unet_forward
    from benchmarks.harness import Row
    from benchmarks.report import add_ratios

    cuda = settings.device.type == "cuda"
    runners = {"scheduler_step": scheduler_step, "unet_forward": unet_forward, "train_step": train_step}
    runners.update(sampling=sampling, sampler_step=sampler_step, sd_unet_forward=sd_unet_forward)
    compile_name = {"train_step": "train", "sampling": "sample"}
    jobs = [(case, batch, frozenset()) for case in cases for batch in batches[case]]
    jobs += [
        (case, args.compile_batch, settings.compile & {compile_name[case]})
        for case in cases
        if cuda and compile_name.get(case) in settings.compile and args.compile_batch in batches[case]
    ]
    failed: set = set()
    for case, batch, compile_here in jobs:
        here = Settings(**{**settings.__dict__, "compile": compile_here})
        if compile_here:
            why = here.wants_compile(next(iter(compile_here)))
            if why is not None or (case, batch) in failed:
                for row in rows:  # the placeholder rows of pass 1 say why no compiled row came
                    if (row.case, row.batch) == (case, batch) and row.runs == 0:
                        row.note = why or "skipped: the uncompiled run of this case failed"
                write_outputs(args, meta, rows)
                continue
        start = time.perf_counter()
        try:
            new = runners[case](here, batch) if case in UNET_FREE else runners[case](here, unets, batch)
        except Exception as err:  # one failing case must not cost the others their rows
            traceback.print_exc()
            failed.add((case, batch))
            message = f"{type(err).__name__}: {err}".replace("\n", " ").replace("|", "/")[:300]
            new = [Row(case, "FAILED" + (" (compiled pass)" if compile_here else ""), batch, "-", "-")]
            new[0].note = message
        if not compile_here and compile_name.get(case) in settings.compile and cuda:
            for row in new:  # placeholders for the compiled variants, filled in by pass 2
                if row.runs == 0 and not row.impl.startswith("FAILED"):
                    row.note = (
                        f"compiled variants run at batch {args.compile_batch} only"
                        if batch != args.compile_batch
                        else "compiled pass not reached (time limit)"
                    )
        merge_rows(rows, new)
        print(f"[{case} batch {batch}: {time.perf_counter() - start:.1f} s]", file=sys.stderr, flush=True)
        add_ratios(rows)
        write_outputs(args, meta, rows)  # after every case: a run cut short still leaves its results
    return rows, failed


def earlier_rows(path: str, meta: dict) -> list:
    """The rows of an earlier run on the same device, for --merge; `meta` records where they came from."""
    import dataclasses
    import json

    from benchmarks.harness import Row

    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        fields = {field.name for field in dataclasses.fields(Row)}  # older files may hold retired columns
        earlier = payload["meta"]
        rows = [Row(**{key: value for key, value in row.items() if key in fields}) for row in payload["rows"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(
            f"--merge {path!r}: not a JSON file written by --json ({type(err).__name__}: {err})"
        ) from None
    keys = ("device", "device_name", "quick")
    if [earlier.get(k) for k in keys] != [meta[k] for k in keys]:
        raise SystemExit(
            f"--merge {path!r}: its rows come from {[earlier.get(k) for k in keys]} ({', '.join(keys)}), "
            f"this run is {[meta[k] for k in keys]}; merge only runs of one device and mode"
        )
    here = {key: earlier[key] for key in ("command", "date", "cpu_threads", "cpu_model") if key in earlier}
    meta["merged"] = earlier.get("merged", []) + [here]
    return rows


def merge_rows(rows: list, new: list) -> None:
    """Add `new` rows next to their case and batch; one with the same implementation replaces the old row."""
    for row in new:
        key = (row.case, row.batch)
        same = [i for i, old in enumerate(rows) if (old.case, old.batch) == key]
        replaced = [i for i in same if rows[i].impl == row.impl]
        if replaced:
            rows[replaced[0]] = row
        else:
            rows.insert(same[-1] + 1 if same else len(rows), row)


def write_outputs(args: argparse.Namespace, meta: dict, rows: list) -> None:
    from benchmarks.report import results_markdown, write_json

    if args.json:
        write_json(args.json, meta, rows)
    if args.results_md:
        Path(args.results_md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results_md).write_text(results_markdown(meta, rows), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
