"""Refit the in-distribution statistics of the digit network (minidiff/quality/in_distribution.py) and write
them beside its weights:

    python -m scripts.fit_digit_stats                  # -> minidiff/quality/digit_stats.safetensors
"""

from __future__ import annotations

import argparse

from minidiff.quality.digit_net import WEIGHTS_FILE
from minidiff.quality.in_distribution import STATS_FILE, fit_stats, save_stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.fit_digit_stats", description=__doc__)
    parser.add_argument("--out", default=str(STATS_FILE))
    parser.add_argument("--weights", default=str(WEIGHTS_FILE))
    args = parser.parse_args(argv)
    print(f"wrote {save_stats(fit_stats(args.weights), args.out, args.weights)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
