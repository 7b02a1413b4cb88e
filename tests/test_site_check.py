"""scripts/site_check.py, the docs build's proof that a page needs nothing from outside (.ci/run
runs it on the real site, after the strict build)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "site_check.py"
spec = importlib.util.spec_from_file_location("site_check", SCRIPT)
assert spec and spec.loader
site_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(site_check)

SELF_CONTAINED = """<html><head>
<link rel="stylesheet" href="../assets/main.css"><link rel="canonical" href="https://x.example/">
<script src="../assets/mermaid/mermaid.min.js"></script></head>
<body><a href="https://leap.energy">Leap</a><pre class="mermaid">graph LR; a-->b</pre>
<img src="data:image/png;base64,AAAA" alt=""><style>p { background: url(img/x.png) }</style>
</body></html>"""


def site(tmp_path: Path, page: str, css: str = "") -> Path:
    (tmp_path / "page").mkdir()
    (tmp_path / "page" / "index.html").write_text(page)
    (tmp_path / "main.css").write_text(css)
    return tmp_path


def test_a_self_contained_site_passes(tmp_path: Path) -> None:
    assert site_check.check_site(site(tmp_path, SELF_CONTAINED, "p { color: red }")) == []
    assert site_check.main([str(tmp_path)]) == 0


def test_everything_a_browser_would_fetch_from_outside_is_named(tmp_path: Path) -> None:
    page = SELF_CONTAINED.replace(
        "</head>",
        '<script src="https://unpkg.com/x.js"></script>'
        '<link rel="preconnect" href="https://fonts.gstatic.com">'
        '<link rel="stylesheet" href="//cdn.example/s.css"></head>',
    ).replace('<img src="data:', '<img srcset="https://img.example/a.png 2x" src="data:')
    page = page.replace("url(img/x.png)", "url('https://img.example/bg.png')")
    css = "@import 'https://fonts.googleapis.com/css?family=Roboto';"
    problems = site_check.check_site(site(tmp_path, page, css))
    assert problems == [
        "page/index.html: <script src=https://unpkg.com/x.js>",
        "page/index.html: <link href=https://fonts.gstatic.com>",
        "page/index.html: <link href=//cdn.example/s.css>",
        "page/index.html: <img srcset=https://img.example/a.png>",
        "page/index.html: <style> loads https://img.example/bg.png",
        "main.css: loads https://fonts.googleapis.com/css?family=Roboto",
    ]
    assert site_check.main([str(tmp_path)]) == 1


def test_a_diagram_needs_the_local_mermaid(tmp_path: Path) -> None:
    page = SELF_CONTAINED.replace('<script src="../assets/mermaid/mermaid.min.js"></script>', "")
    assert site_check.check_site(site(tmp_path, page)) == [
        f"page/index.html: a Mermaid diagram, but no local {site_check.MERMAID_SCRIPT}"
    ]
