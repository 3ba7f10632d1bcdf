"""What the HTML pages are rendered with: the Jinja2 templates and the table cells.

The pages are rendered from the templates in ``pyrocollapse/templates/`` with
autoescaping, so every value taken from a run (names, notes, options) is HTML-escaped.
"""

from __future__ import annotations

import base64
import functools
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The Jinja2 templates of the pages (rendered with autoescaping: every value is escaped).
_TEMPLATES = Path(__file__).parent.parent / "templates"
#: Shown for a value that is missing or not finite.
_DASH = "–"


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    """The Jinja2 environment of the pages (imported on first use)."""
    try:
        import jinja2
    except ImportError as e:  # pragma: no cover - jinja2 is a dependency
        raise ImportError(
            "the HTML pages need Jinja2, which is not installed: pip install 'jinja2>=3.1'"
        ) from e
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(**context)


@dataclass(frozen=True)
class _Cell:
    """One table cell: its text, whether it is left-aligned text, an optional link, an
    optional CSS class, a list of links (``{"label", "href"}``) shown after the text, and
    an optional background colour (a CSS colour built by the page code, e.g. the shade of
    a heat-map cell; escaped like every other value)."""

    value: str
    text: bool = False
    href: str | None = None
    cls: str = ""
    links: tuple[dict[str, Any], ...] = ()
    background: str = ""

    @property
    def classes(self) -> str:
        return " ".join(c for c in ("text" if self.text else "", self.cls) if c)


@dataclass(frozen=True)
class _Column:
    """A table column: its header and what it shows, in plain words."""

    name: str
    caption: str = ""
    text: bool = False


@dataclass
class _Table:
    columns: list[_Column]
    rows: list[list[_Cell]]
    row_classes: list[str] | None = None

    @property
    def captioned(self) -> list[_Column]:
        return [c for c in self.columns if c.caption]


def _num(value: Any, spec: str = ".4g") -> str:
    """A number as text (``–`` for None and non-finite values); anything else as ``str``."""
    if value is None:
        return _DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        return format(value, spec) if math.isfinite(value) else _DASH
    return str(value)


def _cell(value: Any, spec: str = ".4g") -> _Cell:
    if isinstance(value, _Cell):
        return value
    if isinstance(value, str):
        return _Cell(value, text=True)
    return _Cell(_num(value, spec))


def _table(
    headers: list[str | _Column],
    rows: list[list[Any]],
    row_classes: list[str] | None = None,
) -> _Table:
    columns = [
        h if isinstance(h, _Column) else _Column(str(h), text=(i == 0))
        for i, h in enumerate(headers)
    ]
    return _Table(columns, [[_cell(v) for v in row] for row in rows], row_classes)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _shade(fraction: float) -> str:
    """The background of a heat-map cell: blue with opacity ``fraction`` (clipped to
    [0, 1]; ``""`` for a value that is not finite)."""
    if not _finite(fraction):
        return ""
    alpha = min(max(float(fraction), 0.0), 1.0)
    return f"rgba(33, 102, 172, {alpha:.2f})"


def _verdict_class(verdict: str) -> str:
    return {
        "healthy": "healthy",
        "partial collapse": "partial",
        "near collapse": "near",
        "full collapse": "full",
    }.get(verdict, "partial")


def _image_src(path: Path, relative: str, self_contained: bool) -> str:
    if not self_contained:
        return relative
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
