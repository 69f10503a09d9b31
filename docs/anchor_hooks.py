"""MkDocs hook: the strict build checks the anchors of pages that skip the Markdown stage.

MkDocs validates the links of Markdown pages (`validation: anchors` in mkdocs.yml). A notebook page is
rendered to HTML by mkdocs-jupyter, so neither its own links nor its table of contents are checked; this
hook does both, and a link to a missing heading is a warning, which fails `mkdocs build --strict`.

mkdocs-jupyter slugs its table of contents from a Markdown copy of the notebook, where a heading's code
span is dropped (`4.2.2 The scheduler and `add_noise`` -> `422-the-scheduler-and`), while the page's
headings are slugged by nbconvert from the full text (`422-the-scheduler-and-add_noise`). The contents
entries are taken from the page's own headings, in order, so each entry links to the id its heading has.
"""

from __future__ import annotations

import logging
import posixpath
import re
from urllib.parse import unquote

log = logging.getLogger("mkdocs.hooks.anchor_hooks")

ID = re.compile(r'\sid="([^"]+)"')
HEADING = re.compile(r'<h([1-6])[^>]*\sid="([^"]+)"')
HREF = re.compile(r'\shref="([^"]*)"')
_ids: dict[str, set[str]] = {}  # site url of every page -> the ids in its content
_rendered: list = []  # the pages rendered without the Markdown stage


def _toc_items(items):
    for item in items:
        yield item
        yield from _toc_items(item.children)


def align_toc(toc, html: str) -> None:
    """Point each table-of-contents entry at the id of its heading in `html` (the n-th entry of a level
    is the n-th heading of that level); entries already pointing at an existing id are left alone."""
    ids = set(ID.findall(html))
    by_level: dict[int, list[str]] = {}
    for level, anchor in HEADING.findall(html):
        by_level.setdefault(int(level), []).append(anchor)
    seen: dict[int, int] = {}
    for item in _toc_items(toc):
        n = seen.get(item.level, 0)
        seen[item.level] = n + 1
        headings = by_level.get(item.level, [])
        if item.id not in ids and n < len(headings):
            item.id = headings[n]


def broken_links(page_url: str, hrefs, ids: dict[str, set[str]]) -> list[str]:
    """The links of the page at `page_url` that name an anchor missing from the page they point to.

    `ids` maps each site page's url to the ids in its content; links outside the site are not checked."""
    broken = []
    for href in hrefs:
        if "://" in href or href.startswith(("mailto:", "data:")) or "#" not in href:
            continue
        target, anchor = href.split("#", 1)
        if not anchor:
            continue
        url = (
            posixpath.normpath(posixpath.join(posixpath.dirname(page_url), unquote(target)))
            if target
            else page_url
        )
        if url in ids and unquote(anchor) not in ids[url]:
            broken.append(href)
    return broken


def on_page_content(html, page, config, files):
    _ids[page.url] = set(ID.findall(html))
    if not page.file.src_uri.endswith(".md"):
        if page.toc is not None:
            align_toc(page.toc, html)
        _rendered.append(page)
    return html


def on_env(env, config, files):
    """All pages are rendered by now: check every link and contents entry of the notebook pages."""
    for page in _rendered:
        hrefs = HREF.findall(page.content or "") + [item.url for item in _toc_items(page.toc or [])]
        for href in broken_links(page.url, hrefs, _ids):
            log.warning("%s links to '%s', an anchor its target page does not have", page.file.src_uri, href)
    _ids.clear()
    _rendered.clear()
    return env
