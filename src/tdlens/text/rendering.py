"""Text explanations as HTML and as coloured terminal text.

Colours: positive scores red, negative blue, opacity by ``|score| / max |score|`` of the row;
NaN (a future position of a generated token) grey. Tokens come from the model's vocabulary
and the user's data, so every string is HTML-escaped (a token ``<script>`` shows as text).
"""

from __future__ import annotations

import html as _html
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .attribution import TextAttribution

_STYLE = (
    "<style>.tdlens-text{font-family:monospace;line-height:1.9}"
    ".tdlens-text .row{margin:2px 0}.tdlens-text .label{color:#555;margin-right:8px}"
    ".tdlens-text span.el{padding:1px 2px;border-radius:3px}</style>"
)


def _rows(e: TextAttribution) -> list[tuple[str, list[float]]]:
    rows = []
    for k, values in enumerate(e.scores.double().tolist()):
        name = e.target_names[k] if k < len(e.target_names) else str(e.targets[k])
        rows.append((name, values))
    return rows


def _scale(values: list[float]) -> float:
    finite = [abs(v) for v in values if not math.isnan(v)]
    top = max(finite, default=0.0)
    return top if top > 0 else 1.0


def _background(value: float, scale: float) -> str:
    if math.isnan(value):
        return "rgba(160,160,160,0.35)"
    alpha = min(1.0, abs(value) / scale)
    colour = "220,40,40" if value >= 0 else "40,90,220"
    return f"rgba({colour},{alpha:.3f})"


def html(e: TextAttribution, *, standalone: bool = True) -> str:
    """One ``div`` per target row, one ``span`` per element with the score in its title."""
    esc = _html.escape
    parts = [_STYLE, f'<div class="tdlens-text" data-method="{esc(e.method)}">']
    for name, values in _rows(e):
        scale = _scale(values)
        parts.append(f'<div class="row"><span class="label">{esc(name)}:</span>')
        for element, value in zip(e.elements, values):
            shown = "n/a (future position)" if math.isnan(value) else f"{value:.6g}"
            parts.append(
                f'<span class="el" style="background:{_background(value, scale)}" '
                f'title="{esc(shown)}">{esc(element)}</span> '
            )
        parts.append("</div>")
    parts.append("</div>")
    body = "".join(parts)
    if not standalone:
        return body
    title = esc(e.text[:60])
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title></head>'
        f"<body>{body}</body></html>"
    )


def _ansi(value: float, scale: float) -> str:
    if math.isnan(value):
        return "\x1b[48;2;90;90;90m"
    alpha = min(1.0, abs(value) / scale)
    fade = int(255 - alpha * 200)
    red, blue = (255, fade) if value >= 0 else (fade, 255)
    return f"\x1b[48;2;{red};{fade};{blue}m\x1b[38;2;0;0;0m"


def terminal(e: TextAttribution) -> str:
    """Each target row as ``name: elements`` on 24-bit colour backgrounds."""
    lines = []
    for name, values in _rows(e):
        scale = _scale(values)
        cells = [f"{_ansi(v, scale)}{el}\x1b[0m" for el, v in zip(e.elements, values)]
        lines.append(f"{name}: " + " ".join(cells))
    return "\n".join(lines)
