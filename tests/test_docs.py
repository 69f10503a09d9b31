"""The documentation site: `mkdocs build --strict` passes (no broken link, no missing reference, no docstring
that names an argument the signature lacks), and every public name of minidiff has a reference entry."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_jupyter")
missing = [name for name in PLUGINS if importlib.util.find_spec(name.split(".")[0]) is None]
pytestmark = pytest.mark.skipif(
    bool(missing), reason=f"the docs extra is not installed (missing {missing}): pip install -e '.[docs]'"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_site_builds_strict(site):
    """Every page of the navigation was written; the notebook kept its committed pictures."""
    for page in ("index.html", "math.html", "training.html", "quality.html", "parity.html",
                 "reliability.html", "benchmarks/index.html", "changelog.html", "README.zh.html",
                 "api/minidiff.html", "api/training.html", "api/quality.html"):  # fmt: skip
        assert (site / page).is_file(), page
    notebook = (site / "tutorial.html").read_text(encoding="utf-8")
    assert "data:image/png;base64" in notebook, "the notebook page shows none of its committed pictures"


def _anchors(html: str) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', html))


def test_every_public_name_has_a_reference_entry(site):
    import minidiff

    anchors = _anchors((site / "api" / "minidiff.html").read_text(encoding="utf-8"))
    names = [name for name in minidiff.__all__ if name != "__version__"]
    missing = [name for name in names if f"minidiff.{name}" not in anchors]
    assert not missing, f"no entry in docs/api/minidiff.md for {missing}"


@pytest.mark.parametrize("package", ["training", "quality"])
def test_every_public_name_of_the_subpackages_has_an_entry(site, package):
    module = importlib.import_module(f"minidiff.{package}")
    anchors = set()
    for page in (site / "api").glob("*.html"):
        anchors |= _anchors(page.read_text(encoding="utf-8"))
    missing = [
        name
        for name in module.__all__
        if f"minidiff.{package}.{name}" not in anchors and f"minidiff.{name}" not in anchors
    ]
    assert not missing, f"no entry in docs/api/{package}.md for {missing}"
