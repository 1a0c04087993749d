"""A report as plain blocks (paragraphs, lists, tables, figures), written out as Markdown or HTML.

The report is assembled once as this small document model and rendered twice, so report.md
and report.html always say the same thing. Text is plain (no inline markup), which keeps the two
renderers trivially faithful: HTML escapes it, Markdown escapes only what would break a table.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    path: Path
    title: str
    caption: str


@dataclass
class Section:
    heading: str
    blocks: list = field(default_factory=list)


@dataclass
class Document:
    title: str
    banner: str | None
    """A warning shown above everything else (quick runs), or None."""
    sections: list[Section]

    @property
    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------

def to_markdown(doc: Document, base: Path) -> str:
    """Markdown with figures linked as files, relative to `base` (the folder report.md is in)."""
    out = [f"# {doc.title}", ""]
    if doc.banner:
        out += [f"> **WARNING: {doc.banner}**", ""]
    for section in doc.sections:
        out += [f"## {section.heading}", ""]
        for block in section.blocks:
            out += _markdown_block(block, base) + [""]
    return "\n".join(out).rstrip() + "\n"


def _markdown_block(block, base: Path) -> list[str]:
    if isinstance(block, Paragraph):
        return [block.text]
    if isinstance(block, Bullets):
        return [f"- {item}" for item in block.items]
    if isinstance(block, Table):
        lines = [_markdown_row(block.header), "|" + "---|" * len(block.header)]
        return lines + [_markdown_row(row) for row in block.rows]
    if isinstance(block, Figure):
        relative = Path(block.path).resolve().relative_to(Path(base).resolve()).as_posix()
        return [f"![{block.title}]({relative})", "", f"*{block.caption}*"]
    raise TypeError(f"unknown block {type(block).__name__}")


def _markdown_row(cells: list) -> str:
    """One table row; a '|' inside a cell would split it, so it is escaped."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1d2330; background: #ffffff; margin: 0; line-height: 1.5; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 1.8rem; margin: 0.4em 0 0.6em; }
h2 { font-size: 1.3rem; margin-top: 2.2em; padding-bottom: 0.2em; border-bottom: 1px solid #dde2ea; }
.banner { background: #fff3cd; border: 2px solid #d39e00; color: #5c4400; font-weight: 700;
          font-size: 1.15rem; padding: 14px 18px; border-radius: 6px; margin: 0 0 1.2em; }
table { border-collapse: collapse; margin: 0.8em 0 1.4em; font-size: 0.92rem; }
th, td { border: 1px solid #d5dbe5; padding: 5px 8px; text-align: right; white-space: nowrap; }
th { background: #eef2f8; white-space: normal; vertical-align: bottom; }
th:first-child, td:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #f7f9fc; }
.table-wrap { overflow-x: auto; }
figure { margin: 1.2em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e7ee; }
figcaption { color: #4a5468; font-size: 0.9rem; margin-top: 0.4em; }
ul { padding-left: 1.4em; }
"""

# Not needed to read the report: lets a headless browser test see whether every image decoded.
IMAGE_CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { loaded++; }
  }
  document.getElementById("image-check").textContent = "images loaded " + loaded + "/" + images.length;
});
"""


def to_html(doc: Document) -> str:
    """One self-contained page: figures embedded as base64 PNG data URIs, inline CSS, nothing
    fetched from anywhere."""
    e = html.escape
    body = [f"<h1>{e(doc.title)}</h1>"]
    if doc.banner:
        body.append(f'<div class="banner" role="alert">WARNING: {e(doc.banner)}</div>')
    for section in doc.sections:
        body.append(f"<h2>{e(section.heading)}</h2>")
        body += [_html_block(block) for block in section.blocks]
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(doc.title)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        "<main>",
        *body,
        '<div id="image-check" hidden></div>',
        "</main>",
        f"<script>{IMAGE_CHECK_SCRIPT}</script>",
        "</body>",
        "</html>",
        "",
    ])


def _html_block(block) -> str:
    e = html.escape
    if isinstance(block, Paragraph):
        return f"<p>{e(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{e(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{e(str(c))}</th>" for c in block.header)
        rows = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in block.rows)
        return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
    if isinstance(block, Figure):
        data = base64.b64encode(Path(block.path).read_bytes()).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{e(block.title)}">'
                f"<figcaption>{e(block.caption)}</figcaption></figure>")
    raise TypeError(f"unknown block {type(block).__name__}")
