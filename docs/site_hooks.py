"""MkDocs hooks: put the repository's Markdown that lives outside docs/ into the site.

README.md is the site's home page, CHANGELOG.md its changelog, benchmarks/*.md its benchmarks section.
Every page is written with links relative to its place in the repository (so they work on GitHub); this
hook rewrites them into links between the site's pages.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
# repository path -> site path, for the pages that live outside docs/
EXTERNAL = {
    "README.md": "index.md",
    "CHANGELOG.md": "changelog.md",
    "benchmarks/README.md": "benchmarks/README.md",
    "benchmarks/ANCHORS.md": "benchmarks/ANCHORS.md",
    "benchmarks/RESULTS-cpu.md": "benchmarks/RESULTS-cpu.md",
    "benchmarks/TIME_TO_QUALITY.md": "benchmarks/TIME_TO_QUALITY.md",
    **{
        f"benchmarks/time_to_quality/{run}time_to_quality.{ext}": f"benchmarks/time_to_quality/{run}time_to_quality.{ext}"
        for run in ("", "avx2/")
        for ext in ("csv", "json", "png")
    },  # fmt: skip
}
SITE_TO_REPO = {site: repo for repo, site in EXTERNAL.items()}
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s#]+)(#[^)\s]*)?(\))")
HREF = re.compile(r'(href=")([^"#]+)(#[^"]*)?(")')
# What nbconvert's template would fetch from a CDN when the page is read: MathJax (KaTeX typesets instead)
# and, for notebooks with Mermaid diagrams (this one has none), the Mermaid loader
CDN_SCRIPTS = re.compile(
    r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->"
    r'|<script type="module">(?:(?!</script>).)*?jp-Mermaid.*?</script>',
    re.S,
)


def on_files(files, config):
    for repo_path, site_path in EXTERNAL.items():
        files.append(File.generated(config, site_path, abs_src_path=str(ROOT / repo_path)))
    return files


def repo_to_site(repo_path: str) -> str | None:
    if repo_path in EXTERNAL:
        return EXTERNAL[repo_path]
    if repo_path.startswith("docs/"):
        return repo_path[len("docs/") :]
    return None


def rewriter(site_path: str, html: bool = False):
    """A re.sub callback: (prefix, target, #anchor, suffix) from the page's repository place to the site's."""
    repo_path = SITE_TO_REPO.get(site_path, f"docs/{site_path}")

    def rewrite(match: re.Match) -> str:
        target, anchor = match.group(2), match.group(3) or ""
        if "://" in target or target.startswith(("/", "mailto:", "data:")):
            return match.group(0)
        linked_repo = posixpath.normpath(posixpath.join(posixpath.dirname(repo_path), target))
        linked = repo_to_site(linked_repo)
        if linked is None:  # not part of the site: mkdocs --strict reports it
            return match.group(0)
        new = posixpath.relpath(linked, posixpath.dirname(site_path) or ".")
        if html:  # a rendered page (the notebook): link to the built file
            new = new[: -len(".md")] + ".html" if new.endswith(".md") else new
            new = new.replace("README.html", "index.html")
        return f"{match.group(1)}{new}{anchor}{match.group(4)}"

    return rewrite


def on_page_markdown(markdown, page, config, files):
    return LINK.sub(rewriter(page.file.src_uri), markdown)


def on_page_content(html, page, config, files):
    """Notebook pages skip the Markdown stage: their links are rewritten in the rendered HTML, and the
    scripts nbconvert would load from a CDN are left out (docs/javascripts/katex-init.js typesets)."""
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    html = CDN_SCRIPTS.sub("", html)
    return HREF.sub(rewriter(page.file.src_uri, html=True), html)
