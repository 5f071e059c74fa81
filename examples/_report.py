"""The short HTML report every example writes: its numbers in a table and its figures."""

from __future__ import annotations

import html
from pathlib import Path


def write_report(
    path: Path, title: str, numbers: dict, images: list[Path] = (), body: str = ""
) -> Path:
    """Write ``numbers`` (escaped: captions and words come from models) and ``images``."""
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>"
        f"{html.escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</td></tr>"
        for k, v in numbers.items()
    )
    pictures = "".join(
        f'<img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}">' for p in images
    )
    path.write_text(
        f"<!doctype html><meta charset='utf-8'><title>tdlens: {html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1>{body}<table>{rows}</table>{pictures}",
        encoding="utf-8",
    )
    return path
