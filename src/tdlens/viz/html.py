"""A small self-contained HTML report: a title, paragraphs and tables of text and images.

Every string is escaped: labels and names come from models and data, untrusted input.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HtmlImage", "HtmlTable", "write_html_page"]


@dataclass(frozen=True)
class HtmlImage:
    """An image cell of an :class:`HtmlTable`.

    Attributes:
        path: The image file.
        alt: The alternative text.
        width: The displayed width in pixels; the image's own width when ``None``.
    """

    path: Path
    alt: str = ""
    width: int | None = None


@dataclass(frozen=True)
class HtmlTable:
    """A table of text and image cells.

    Attributes:
        header: The column titles.
        rows: The rows; each cell is a string (escaped) or an :class:`HtmlImage`.
        caption: A caption shown above the table.
    """

    header: Sequence[str]
    rows: Sequence[Sequence[str | HtmlImage]]
    caption: str = ""


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0 2em; }
caption { text-align: left; font-weight: bold; padding-bottom: .4em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { image-rendering: pixelated; }
"""


def _image_tag(image: HtmlImage, page_dir: Path, embed: bool) -> str:
    """Renders an image as an ``<img>`` tag, inlined as a data URI when ``embed`` is set."""
    if embed:
        mime = mimetypes.guess_type(image.path.name)[0] or "application/octet-stream"
        data = base64.b64encode(image.path.read_bytes()).decode("ascii")
        src = f"data:{mime};base64,{data}"
    else:
        src = Path(os.path.relpath(image.path, page_dir)).as_posix()
    width = f' width="{image.width}"' if image.width else ""
    return f'<img src="{html.escape(src)}" alt="{html.escape(image.alt)}"{width}>'


def write_html_page(
    path: str | os.PathLike[str],
    title: str,
    tables: Sequence[HtmlTable],
    *,
    paragraphs: Sequence[str] = (),
    embed_images: bool = True,
) -> Path:
    """Writes a self-contained HTML page: a title, paragraphs of text, then tables.

    Args:
        path: Where the page is written; parent folders are created.
        title: The page title and heading.
        tables: The tables, in order.
        paragraphs: Plain-text paragraphs shown under the heading (escaped).
        embed_images: Whether images are inlined as base64 data URIs, so that the page needs
            no other file; otherwise they are linked by paths relative to the page.

    Returns:
        The path of the page.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    page_dir = target.parent.resolve()

    def cell(value: str | HtmlImage) -> str:
        if isinstance(value, HtmlImage):
            return _image_tag(value, page_dir, embed_images)
        return html.escape(value)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f"<p>{html.escape(text)}</p>" for text in paragraphs]
    for table in tables:
        parts.append("<table>")
        if table.caption:
            parts.append(f"<caption>{html.escape(table.caption)}</caption>")
        parts.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in table.header) + "</tr>")
        for row in table.rows:
            parts.append("<tr>" + "".join(f"<td>{cell(value)}</td>" for value in row) + "</tr>")
        parts.append("</table>")
    parts += ["</body>", "</html>", ""]
    target.write_text("\n".join(parts), encoding="utf-8")
    return target
