"""`python -m minidiff ...` (and `torchrun ... -m minidiff train ...`) run the `minidiff` command."""

from minidiff.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
