"""The parity writer's kit: the `[reference]` extra holds diffusers, transformers and pytest, and the example
test file and warning filters that docs/parity.md shows run as written, in a folder of their own, with
diffusers' deprecation noise gone and minidiff's and the user's own warnings still printed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "docs" / "parity_example"
# Warnings a user's own tests raise: minidiff's FutureWarning for a config key read as an attribute (the
# same as diffusers'), and a DeprecationWarning of the user's code. The filters must not hide them.
OWN_WARNINGS = """
import warnings

import minidiff


def test_own_warnings_still_show():
    assert minidiff.DDPMScheduler().num_train_timesteps == 1000
    warnings.warn("my own API is deprecated", DeprecationWarning)
"""


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[;! ]", requirement, maxsplit=1)[0].lower() for requirement in requirements}


def test_the_reference_extra_is_the_parity_writers_kit():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    assert _requirement_names(extras["reference"]) == {"diffusers", "transformers", "pytest"}
    assert any(
        requirement.startswith("minidiff[") and "reference" in requirement for requirement in extras["test"]
    )


def _run_pytest(folder: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("PYTHONWARNINGS", None)  # which warnings print is what these tests check: the kit's filters alone
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "."],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.mark.parametrize("config", [None, "conftest.py", "pytest.ini"])
def test_the_docs_example_runs_as_written(tmp_path, config):
    """The example file, copied as a reader would, with one of the two filter fragments (or none: then
    diffusers' numpy-2 DeprecationWarnings are printed, which shows the check can fail)."""
    pytest.importorskip("diffusers")
    shutil.copy(KIT / "docs_example_test.py", tmp_path)
    (tmp_path / "own_warnings_test.py").write_text(OWN_WARNINGS, encoding="utf-8")
    if config:
        shutil.copy(KIT / config, tmp_path)
    result = _run_pytest(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"\b8 passed\b", output), output
    third_party = [line for line in output.splitlines() if re.search(r"site-packages.*Warning", line)]
    if config is None:
        assert any("diffusers" in line and "DeprecationWarning" in line for line in third_party), output
        return
    assert third_party == [], "\n".join(third_party)
    assert "Accessing config attribute `num_train_timesteps`" in output  # minidiff's own FutureWarning
    assert "DeprecationWarning: my own API is deprecated" in output  # the user's own warning


def test_the_parity_page_shows_the_kit_files_verbatim():
    """docs/parity.md shows the three files whole, in fenced blocks (readable on GitHub and on the site);
    the tests above run the files themselves, so the page shows what was tested."""
    page = (ROOT / "docs" / "parity.md").read_text(encoding="utf-8")
    for name, language in (
        ("docs_example_test.py", "python"),
        ("conftest.py", "python"),
        ("pytest.ini", "ini"),
    ):
        text = (KIT / name).read_text(encoding="utf-8")
        assert f"```{language}\n{text}```" in page, f"docs/parity.md does not show {name} as it is"
