# conftest.py: diffusers' own deprecation noise off, every other warning on.
# Under numpy 2, diffusers 0.42's DPM-Solver, Euler and Euler ancestral schedulers warn
# "__array__ implementation doesn't accept a copy keyword" (a DeprecationWarning) on every schedule they
# build, and some of its modules send FutureWarnings about their own internals. These filters match the
# module a warning comes from, so minidiff's warnings and your own still show.


def pytest_configure(config):
    for category in ("DeprecationWarning", "FutureWarning"):
        config.addinivalue_line("filterwarnings", f"ignore::{category}:diffusers.*")
