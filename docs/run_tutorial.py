"""Run docs/tutorial.ipynb top to bottom and keep its outputs: `make notebook`.

    python docs/run_tutorial.py                          # default settings (~3 minutes on 2 CPU cores);
                                                         # rewrites docs/tutorial.ipynb with its outputs
    python docs/run_tutorial.py --quick --out /tmp/t.ipynb   # a few steps of everything (the test's setting)

The kernel sees MINIDIFF_TUTORIAL_QUICK=1 in quick mode. A cell that raises stops the run with the cell's
error, and nothing is written. A full run stores the digest of the code cells in the notebook's metadata
(`minidiff.code_sha256`): tests/test_notebook.py checks that the committed outputs came from the code
cells as they are now.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import time
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parent / "tutorial.ipynb"
QUICK_ENV = "MINIDIFF_TUTORIAL_QUICK"


def code_digest(nb) -> str:
    """sha256 of the code cells' sources, in order: what the outputs depend on."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.encode() + b"\0")
    return digest.hexdigest()


def execute(
    path: str | os.PathLike = NOTEBOOK, quick: bool = False, timeout: int = 600, progress: bool = False
):
    """The notebook at `path`, executed in a fresh kernel (cwd: its folder); raises on the first cell error.
    `progress` prints a line as each code cell starts: "cell n of N (elapsed), first line of the cell"."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    code_cells = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    previous = os.environ.get(QUICK_ENV)
    os.environ[QUICK_ENV] = "1" if quick else "0"  # the kernel inherits the environment
    started = time.perf_counter()

    def announce(cell, cell_index: int) -> None:
        if cell_index not in code_cells:  # nbclient calls this for markdown cells too
            return
        first = next((line for line in cell.source.splitlines() if line.strip()), "")
        n = code_cells.index(cell_index) + 1
        elapsed = time.perf_counter() - started
        print(f"cell {n} of {len(code_cells)} ({elapsed:4.0f} s)  {first[:70]}", file=sys.stderr, flush=True)

    try:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(Path(path).parent)}},
            on_cell_start=announce if progress else None,
        )
        client.execute()
    finally:
        if previous is None:
            os.environ.pop(QUICK_ENV, None)
        else:
            os.environ[QUICK_ENV] = previous
    nb.metadata["minidiff"] = {
        "code_sha256": code_digest(nb),
        "quick": quick,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (the test's setting)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: over the notebook)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds any one cell may take")
    args = parser.parse_args(argv)
    if args.quick and args.out is None:
        parser.error(
            "--quick makes a notebook of noise pictures: give --out PATH (it must not replace the tutorial)"
        )
    import nbformat

    nb = execute(NOTEBOOK, quick=args.quick, timeout=args.timeout, progress=True)
    out = args.out or NOTEBOOK
    tmp = out.with_name(out.name + ".tmp")
    nbformat.write(nb, tmp)
    tmp.replace(out)  # the old notebook stays whole until the new one is written
    print(f"ran {NOTEBOOK.name} in {nb.metadata['minidiff']['seconds']:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
