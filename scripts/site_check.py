"""Check that a built documentation site needs nothing from outside to show its pages.

Every HTML page is read: a script, style sheet, icon, image, frame or media element whose
address is absolute (``http://``, ``https://`` or ``//``) would be fetched from another host when
the page opens, and is an error; so is ``url(...)`` or ``@import`` of another host in a page's
inline styles or in the site's CSS files. Links a reader clicks (``<a href>``) and metadata that
no browser fetches (``rel="canonical"``) may point anywhere. A page with a Mermaid diagram must
load the site's own copy of Mermaid: the theme otherwise fetches it from a CDN.

Usage: python scripts/site_check.py SITE_DIR   (exit 1 and one line per problem)
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

EXTERNAL = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)
CSS_EXTERNAL = re.compile(r"(?:url\(\s*['\"]?|@import\s+['\"])\s*((?:https?:)?//[^'\")\s]+)", re.I)
FETCHED = {  # element -> the attributes a browser loads on its own
    "script": ("src",),
    "img": ("src", "srcset"),
    "iframe": ("src",),
    "frame": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "audio": ("src",),
    "video": ("src", "poster"),
    "source": ("src", "srcset"),
    "track": ("src",),
    "input": ("src",),
}
NOT_FETCHED_RELS = {"canonical", "alternate", "author", "license", "help", "next", "prev", "me"}
MERMAID_SCRIPT = "assets/mermaid/mermaid.min.js"


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.scripts: list[str] = []
        self.has_mermaid = False
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "script" and values.get("src"):
            self.scripts.append(values["src"])
        if "mermaid" in values.get("class", "").split():
            self.has_mermaid = True
        names = FETCHED.get(tag, ())
        if tag == "link":
            rels = set(values.get("rel", "").lower().split())
            names = () if rels and rels <= NOT_FETCHED_RELS else ("href",)
        for name in names:
            for address in values.get(name, "").split(","):
                if EXTERNAL.match(address):
                    self.problems.append(f"<{tag} {name}={address.strip().split()[0]}>")
        for found in CSS_EXTERNAL.findall(values.get("style", "")):
            self.problems.append(f"<{tag} style> loads {found}")
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.problems += [f"<style> loads {found}" for found in CSS_EXTERNAL.findall(data)]


def check_site(site: Path) -> list[str]:
    """One message per thing a page of ``site`` would fetch from another host."""
    problems: list[str] = []
    pages = sorted(site.rglob("*.html"))
    if not pages:
        return [f"{site}: no HTML page (not a built site?)"]
    for path in pages:
        page = _Page()
        page.feed(path.read_text(encoding="utf-8"))
        where = path.relative_to(site)
        problems += [f"{where}: {problem}" for problem in page.problems]
        if page.has_mermaid and not any(s.endswith(MERMAID_SCRIPT) for s in page.scripts):
            problems.append(f"{where}: a Mermaid diagram, but no local {MERMAID_SCRIPT}")
    for path in sorted(site.rglob("*.css")):
        for found in CSS_EXTERNAL.findall(path.read_text(encoding="utf-8", errors="replace")):
            problems.append(f"{path.relative_to(site)}: loads {found}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    problems = check_site(Path(argv[0]))
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{argv[0]}: every page loads only what the site itself serves")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
