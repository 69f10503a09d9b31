"""The `minidiff` command. Each subcommand is a thin shell over a library function.

Heavy modules (torch models, datasets, matplotlib) are imported inside the subcommands, so
`minidiff --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys

from minidiff import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minidiff",
        description="DDPM diffusion in plain PyTorch: train, sample, inspect, compare with diffusers.",
    )
    parser.add_argument("--version", action="version", version=f"minidiff {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
