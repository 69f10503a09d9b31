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


def test_no_page_loads_anything_from_the_network(site):
    """Formulas are typeset by the KaTeX copy in the site, and no page names a script, stylesheet or font
    on another host (the notebook's MathJax from a CDN is left out)."""
    assert (site / "javascripts" / "katex" / "katex.min.js").is_file()
    assert len(list((site / "javascripts" / "katex" / "fonts").glob("*.woff2"))) >= 19
    remote = re.compile(r'<(?:script|link)\b[^>]*(?:src|href)="(https?:)?//[^"]*"')
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        assert not remote.search(html), f"{page.relative_to(site)} loads {remote.search(html).group(0)}"
        assert "mathjax" not in html.lower(), f"{page.relative_to(site)} still loads MathJax"
        assert not re.search(r'import\("https?://', html), f"{page.relative_to(site)} imports a remote module"
    math = (site / "math.html").read_text(encoding="utf-8")
    assert math.count('class="arithmatex"') >= 20, "math.md's formulas are not marked for KaTeX"
    assert "\\tag{DDPM 4}" in math and "\\tag{DDIM 12}" in math, "the papers' equation numbers are gone"


def test_the_notebook_contents_link_to_its_headings(site):
    html = (site / "tutorial.html").read_text(encoding="utf-8")
    ids = _anchors(html)
    links = set(re.findall(r'href="#([^"]+)"', html))
    assert "422-the-scheduler-and-add_noise" in links
    assert links <= ids, f"links to missing headings: {sorted(links - ids)}"


NOTEBOOK = {
    "cells": [
        {
            "cell_type": "markdown",
            "metadata": {},
            "source": ["# A notebook\n", "\n", "See [below](#{anchor}).\n"],
        },
        {"cell_type": "markdown", "metadata": {}, "source": ["## The `add_noise` step\n", "\n", "text\n"]},
    ],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}


def _build_tiny_site(tmp_path: Path, anchor: str) -> subprocess.CompletedProcess:
    """A two-page MkDocs project with the site's anchor hook and a notebook that links to `#anchor`."""
    import json

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[the step](notebook.ipynb)\n", encoding="utf-8")
    notebook = json.loads(json.dumps(NOTEBOOK).replace("{anchor}", anchor))
    (docs / "notebook.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    (tmp_path / "mkdocs.yml").write_text(
        "site_name: tiny\nuse_directory_urls: false\nstrict: true\n"
        f"hooks:\n  - {ROOT / 'docs' / 'anchor_hooks.py'}\n"
        "plugins:\n  - mkdocs-jupyter:\n      execute: false\n      cache: false\n",
        encoding="utf-8",
    )
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


@pytest.mark.parametrize("anchor", ["the-add_noise-step", "the-add-noise-step"])
def test_a_broken_anchor_in_a_notebook_fails_the_strict_build(tmp_path, anchor):
    """The hook that checks the notebook pages' links can fail: the same tiny site builds with the heading's
    real id and is refused with a misspelt one. Its contents entry (slugged by mkdocs-jupyter without the
    code span) is pointed at the heading's real id either way."""
    result = _build_tiny_site(tmp_path, anchor)
    output = result.stdout + result.stderr
    if anchor == "the-add_noise-step":
        assert result.returncode == 0, output
        html = (tmp_path / "site" / "notebook.html").read_text(encoding="utf-8")
        assert 'href="#the-add_noise-step"' in html and 'href="#the-step"' not in html
    else:
        assert result.returncode != 0, output
        assert "links to '#the-add-noise-step', an anchor its target page does not have" in output


@pytest.mark.parametrize("page", ["docs/math.md", "docs/samplers.md", "docs/parity.md"])
def test_formulas_are_written_as_math(page):
    """Formulas are $...$ / $$...$$ (GitHub renders them, KaTeX on the site), not ASCII in code blocks:
    outside math and code, no `sqrt(`, `alpha_bar`, `eps_theta`-style symbol names remain."""
    text = (ROOT / page).read_text(encoding="utf-8")
    prose = re.sub(r"```.*?```", "", text, flags=re.S)  # fenced code
    prose = re.sub(r"\$\$.*?\$\$", "", prose, flags=re.S)  # display math
    prose = re.sub(r"`[^`]*`", "", prose)  # inline code
    prose = re.sub(r"\$[^$\n]+\$", "", prose)  # inline math
    ascii_math = re.findall(r"sqrt\(|alpha_bar|\w+_theta|\beps\b|\bsigma_\w|\bbeta_t\b|\bprod_|\^\d", prose)
    assert not ascii_math, f"{page} writes formulas as plain text: {sorted(set(ascii_math))}"
    assert text.count("$$") % 2 == 0, f"{page} has an unclosed $$ block"
    if page != "docs/parity.md":  # the display equations carry the papers' numbers
        assert "\\tag{" in text
