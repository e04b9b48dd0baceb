"""Self-contained HTML reports: headings, text, matplotlib figures, images and tables in one file.

Every image is embedded as a base64 PNG data URI, so the report can be mailed, archived or opened
offline with nothing beside it — studies write one into ``runs/<name>/report.html``.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from xai_lightning.logging.figure import figure_to_array
from xai_lightning.logging.sink import check_image

__all__ = ["HtmlReport"]

_STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
figure { display: inline-block; margin: .5em; vertical-align: top; text-align: center; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #555; max-width: 560px; }
table { border-collapse: collapse; margin: 1em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f2f2f2; }
.row { display: flex; flex-wrap: wrap; gap: .5em; align-items: flex-start; }
.note { color: #555; }
"""


def _png_data_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(check_image(image)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _format_cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.4g}"
    return html.escape(str(value))


class HtmlReport:
    """Build a report section by section, then :meth:`write` it.

    Example::

        report = HtmlReport("Robust vs standard")
        report.heading("Accuracy")
        report.figure(fig, "validation accuracy per epoch")
        report.write("runs/study/report.html")
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self._parts: list[str] = []
        self._row_open = False

    def heading(self, text: str, level: int = 2) -> "HtmlReport":
        self._close_row()
        self._parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
        return self

    def text(self, text: str, css_class: str | None = None) -> "HtmlReport":
        self._close_row()
        attribute = f' class="{css_class}"' if css_class else ""
        self._parts.append(f"<p{attribute}>{html.escape(text)}</p>")
        return self

    def preformatted(self, text: str) -> "HtmlReport":
        """A block of monospaced text (configuration, logs)."""
        self._close_row()
        self._parts.append(f"<pre>{html.escape(text)}</pre>")
        return self

    def begin_row(self) -> "HtmlReport":
        """Put the following figures/images side by side until the next heading, text or table."""
        self._close_row()
        self._parts.append('<div class="row">')
        self._row_open = True
        return self

    def image(self, image: np.ndarray, caption: str = "", width: int | None = None) -> "HtmlReport":
        style = f' style="width:{width}px"' if width else ""
        self._parts.append(
            f'<figure><img src="{_png_data_uri(image)}" alt="{html.escape(caption)}"{style}>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        return self

    def figure(self, figure: Any, caption: str = "", width: int | None = None) -> "HtmlReport":
        """Embed a matplotlib figure (rendered with Agg; the caller closes it)."""
        return self.image(figure_to_array(figure), caption, width)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "") -> "HtmlReport":
        self._close_row()
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{_format_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self._parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self

    def _close_row(self) -> None:
        if self._row_open:
            self._parts.append("</div>")
            self._row_open = False

    def render(self) -> str:
        self._close_row()
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>" + "\n".join(self._parts) + "</body></html>\n"
        )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf-8")
        return path
