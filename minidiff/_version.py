"""The version of minidiff: its one source (pyproject.toml reads it through setuptools' `dynamic`, the
package re-exports it as `minidiff.__version__`; the CHANGELOG's newest heading names the same)."""

__version__ = "0.4.0"
