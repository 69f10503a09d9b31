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
}
SITE_TO_REPO = {site: repo for repo, site in EXTERNAL.items()}
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s#]+)(#[^)\s]*)?(\))")


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


def on_page_markdown(markdown, page, config, files):
    site_path = page.file.src_uri
    repo_path = SITE_TO_REPO.get(site_path, f"docs/{site_path}")

    def rewrite(match: re.Match) -> str:
        target = match.group(2)
        if "://" in target or target.startswith(("/", "mailto:")):
            return match.group(0)
        linked = repo_to_site(posixpath.normpath(posixpath.join(posixpath.dirname(repo_path), target)))
        if linked is None:  # not part of the site: mkdocs --strict reports it
            return match.group(0)
        new = posixpath.relpath(linked, posixpath.dirname(site_path) or ".")
        return f"{match.group(1)}{new}{match.group(3) or ''}{match.group(4)}"

    return LINK.sub(rewrite, markdown)
