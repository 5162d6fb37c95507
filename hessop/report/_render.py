"""The report's HTML: number formatting, tables, figures and PNGs, and the self-contained page (shared by the
sections and the runner of :mod:`hessop.report`)."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

__all__ = ["CSS", "figure", "kv_table", "num", "page", "png", "section_html", "table", "yes_no"]


def num(x: float, digits: int = 6) -> str:
    """``x`` to ``digits`` significant digits (``"nan"`` for a non-finite value)."""
    return "nan" if not math.isfinite(x) else f"{x:.{digits}g}"


def table(head: list[str], rows: list[list[str]]) -> str:
    """An HTML table: the escaped ``head`` over ``rows`` of HTML cells."""
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def kv_table(rows: list[tuple[str, str]]) -> str:
    """A two-column table of (name, HTML value) rows."""
    return "<table class='kv'>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def yes_no(flag: bool) -> str:
    """A green "yes" or a red "NO"."""
    return '<span class="ok">yes</span>' if flag else '<span class="bad">NO</span>'


def figure(rows: int, cols: int, width: float, height: float) -> tuple[Any, Any]:
    """A matplotlib Figure (not pyplot's: no global state) and its ``(rows, cols)`` array of axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def png(fig: Any) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1.5em;
color:#1d2329;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:2px solid #dde3ea;padding-bottom:.2em;margin-top:1.8em}
h3{font-size:1.05em;margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.4em 0;font-size:.93em}
th,td{border:1px solid #d5dbe1;padding:.28em .7em;text-align:right}th{background:#f1f4f7}
td:first-child,th:first-child{text-align:left}table.kv td{text-align:left}
.ok{color:#18794e;font-weight:600}.bad{color:#c62828;font-weight:700}
.meta{color:#5b6670;font-size:.9em;margin:.2em 0}.lead{color:#3b4650}
img{max-width:100%;border:1px solid #e3e7eb;margin:.6em 0}
code{background:#f1f4f7;padding:.05em .3em;border-radius:3px;font-size:.92em}
.cols{display:flex;gap:2.5em;flex-wrap:wrap;align-items:flex-start}
"""


def section_html(key: str, title: str, body: str, pngs: dict[str, bytes]) -> str:
    """One section of the page: its title, HTML fragment and figures embedded as base64 PNGs."""
    images = []
    for stem, data in pngs.items():
        images.append(f'<img alt="{html.escape(stem)}" src="data:image/png;base64,'
                      f'{base64.b64encode(data).decode("ascii")}">')
    return f'<section id="{key}"><h2>{html.escape(title)}</h2>{body}{"".join(images)}</section>'


def page(description: str, info: list[list[str]], command: list[str], versions: str, sections: list[str]) -> str:
    """The self-contained report page: the description, the run's facts ``info`` (rows of HTML), the command,
    the versions and the sections' HTML."""
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>hessop report</title>"
            f"<style>{CSS}</style></head><body><h1>hessop report</h1>"
            f"<p class='lead'>{html.escape(description)}</p>{kv_table(info)}"
            f"<p class='meta'>Command: <code>{html.escape(' '.join(command))}</code><br>{html.escape(versions)}</p>"
            f"{''.join(sections)}</body></html>")
