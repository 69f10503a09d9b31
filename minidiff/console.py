"""How the `minidiff` command talks: every run event and warning as one line, and flags read with every
default in `--help` and the closest known name beside an unknown one (`--lerning_rate`: did you mean
`--learning_rate`?, diffusers' spellings included).

Run events (a damaged checkpoint set aside, images skipped, a resume, a fallback) are logged on the
"minidiff" loggers, so no PYTHONWARNINGS value hides them; `warnings.warn` is kept for what calling code
should change (a deprecated name, an ignored config key), and the command shows those as one line too.
Without `--debug` each is its first line (`warning: ...` for warnings and events at WARNING); with
`--debug` its whole text and where it came from. Lines go through tqdm.write, so a progress bar stays whole.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import sys
import warnings
from collections.abc import Iterator


def say(text: str) -> None:
    """A line on stderr that does not tear a progress bar."""
    if "tqdm" in sys.modules:
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)


def one_line(text: str, debug: bool, origin: str) -> str:
    """`text`'s first line; with `debug` all of it and `origin` (what sent it, from where)."""
    text = text.strip()
    return f"{text}\n  ({origin})" if debug else (text.splitlines()[0] if text else origin)


class _LineHandler(logging.Handler):
    """Log records as one line each through `say`; WARNING and above start with `warning: `."""

    def __init__(self, debug: bool):
        super().__init__()
        self.debug = debug

    def emit(self, record: logging.LogRecord) -> None:
        origin = f"{record.levelname} from {record.name} at {record.pathname}:{record.lineno}"
        text = one_line(record.getMessage(), self.debug, origin)
        say(f"warning: {text}" if record.levelno >= logging.WARNING else text)


def setup_logging(debug: bool = False) -> None:
    """Show the "minidiff" loggers' INFO and above as lines (once, however often it is called)."""
    logger = logging.getLogger("minidiff")
    for handler in [h for h in logger.handlers if isinstance(h, _LineHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(_LineHandler(debug))
    logger.setLevel(logging.INFO)


@contextlib.contextmanager
def clean_warnings(debug: bool) -> Iterator[None]:
    """Every warning as one `warning: ...` line (its first); with --debug its full text and origin."""

    def show(message, category, filename, lineno, file=None, line=None):
        say(f"warning: {one_line(str(message), debug, f'{category.__name__} at {filename}:{lineno}')}")

    previous = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


class Parser(argparse.ArgumentParser):
    """argparse, with every default in --help and the closest known flag named beside an unknown one."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            message += did_you_mean(self, message.split(":", 1)[1].split())
        super().error(message)


def did_you_mean(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    """'; did you mean --learning_rate?' for '--lerning_rate': the closest flag of the subcommand typed
    (diffusers' spellings included), from every flag `--help` shows."""
    commands = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
    argv = getattr(parser, "argv", [])
    chosen = next((commands[word] for word in argv if word in commands), parser)
    known = [o for a in chosen._actions if a.help != argparse.SUPPRESS for o in a.option_strings]
    hints = {}
    for word in (w.split("=")[0] for w in unknown if w.startswith("--")):
        close = difflib.get_close_matches(word, known, n=1, cutoff=0.75)
        if close:
            hints[word] = close[0]
    if len(hints) == 1:
        return f"; did you mean {next(iter(hints.values()))}?"
    return f"; did you mean {', '.join(f'{v} (for {k})' for k, v in hints.items())}?" if hints else ""
