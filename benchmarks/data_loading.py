"""Resident vs streamed training data: peak memory, time to the first step, steps per second.

    python -m benchmarks.data_loading                     # 20,000 generated 64x64 PNGs, both modes
    python -m benchmarks.data_loading --images 2000 --steps 20

Writes the images once into a cache folder, then runs `minidiff train` twice in a fresh process each,
`--no-stream` (every image decoded into memory before step 1) and `--stream` (DataLoader workers decode
batches during training). It samples the proportional resident memory (PSS) of the training process and its workers
(/proc, Linux) every 0.1 s and times the loss log's rows as they appear (--log-every 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_images(folder: Path, count: int, size: int) -> None:
    """`count` random-blob PNGs (size x size RGB), written once."""
    import numpy as np
    from PIL import Image

    if folder.is_dir() and len(list(folder.glob("*.png"))) == count:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # smooth images compress like photos
        Image.fromarray(low).resize((size, size), Image.Resampling.BILINEAR).save(folder / f"{i:06d}.png")


def tree_pss_mb(pid: int) -> float:
    """Proportional resident memory (PSS: shared pages split between the processes sharing them) of a
    process and all its descendants, in MiB; forked workers' shared pages are not counted twice."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            rollup = Path(f"/proc/{current}/smaps_rollup").read_text()
            total += int(next(line.split()[1] for line in rollup.splitlines() if line.startswith("Pss:")))
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, StopIteration):
            continue
        todo += [int(c) for c in children]
    return total / 1024


def run(folder: Path, stream: bool, steps: int, size: int, workers: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="minidiff-data-"))
    command = [
        sys.executable, "-m", "minidiff", "train", "--preset", "tiny", "--data", str(folder), "--channels", "3",
        "--image-size", str(size), "--max-steps", str(steps), "--log-every", "1", "--sampler", "ddim",
        "--sample-steps", "1", "--num-samples", "1", "--checkpoint-every", str(10**6), "--quiet", "--out",
        str(out), "--stream" if stream else "--no-stream", "--num-workers", str(workers), "--device", "cpu",
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, rows, first, last = 0.0, 0, None, None
    while process.poll() is None:
        peak = max(peak, tree_pss_mb(process.pid))
        csv = out / "loss.csv"
        now_rows = len(csv.read_text().splitlines()) - 1 if csv.exists() else 0
        if now_rows > rows:
            first = first or time.perf_counter() - started
            rows, last = now_rows, time.perf_counter() - started
        time.sleep(0.1)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr.read()}")
    shutil.rmtree(out, ignore_errors=True)
    return dict(mode="streamed" if stream else "resident", peak_pss_mb=peak, first_step_s=first,
                steps_per_s=(rows - 1) / (last - first) if rows > 1 else None)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "minidiff-data-bench"))
    args = parser.parse_args(argv)
    folder = Path(args.cache) / f"{args.images}x{args.size}"
    make_images(folder, args.images, args.size)
    print(f"{args.images} PNGs at {args.size}x{args.size}, tiny preset's net at that size, batch 64, "
          f"{args.steps} steps, {os.cpu_count()} cores")  # fmt: skip
    print("| data | peak memory (PSS, process + workers) | time to first step | steps/s |")
    print("|---|---|---|---|")
    for stream in (False, True):
        r = run(folder, stream, args.steps, args.size, args.workers)
        print(
            f"| {r['mode']} | {r['peak_pss_mb']:.0f} MiB | {r['first_step_s']:.1f} s | {r['steps_per_s']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
