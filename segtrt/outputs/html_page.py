"""The batch's QA page: one self-contained HTML file that opens from disk (no server, no scripts, no
network): a summary line, then one section per case with its status, preview thumbnail, per-label
statistics, failure reason, warnings and relative links to its files. Every text is HTML-escaped."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Sequence

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
section.case { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 0.8em 1em; margin: 1em 0; }
section.failed { border-color: #c0392b; } section.skipped { border-color: #aaa; color: #666; }
h2 { font-size: 1.1em; margin: 0 0 0.5em 0; } .status { font-weight: normal; font-size: 0.9em; }
.failed .status, .error { color: #c0392b; } .warning { color: #a05a00; } img.thumb { max-width: 640px; width: 100%; border: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: right; } td:first-child, th:first-child { text-align: left; }
ul.files { font-size: 0.9em; }
"""


def render_index_html(output_dir: Path, cases: Sequence[Any], title: str = "segtrt batch") -> str:
    """The page's HTML for ``cases`` (BatchCaseSummary-like: case_id, status, error, files, statistics)."""
    counts = {status: sum(1 for c in cases if c.status == status) for status in ("done", "failed", "skipped")}
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", f'<p class="summary">{len(cases)} cases: {html.escape(summary)}</p>']
    parts.extend(_case_section(Path(output_dir), case) for case in cases)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _case_section(output_dir: Path, case: Any) -> str:
    case_id = html.escape(str(case.case_id))
    lines = [f'<section class="case {html.escape(case.status)}" id="case-{case_id}" data-case-id="{case_id}">',
             f'<h2>{case_id} <span class="status">{html.escape(case.status)}</span></h2>']
    if case.error:
        lines.append(f'<p class="error">{html.escape(str(case.error))}</p>')
    for warning in getattr(case, "warnings", ()):
        lines.append(f'<p class="warning">{html.escape(str(warning))}</p>')
    files = dict(case.files or {})
    if "preview" in files:
        link = _link(output_dir, files["preview"])
        lines.append(f'<a href="{link}"><img class="thumb" src="{link}" alt="preview of {case_id}"></a>')
    if case.statistics:
        lines.append(_statistics_table(case.statistics))
    if files:
        items = "".join(f'<li><a href="{_link(output_dir, path)}">{html.escape(kind)}</a>: '
                        f"{html.escape(Path(path).name)}</li>" for kind, path in files.items())
        lines.append(f'<ul class="files">{items}</ul>')
    lines.append("</section>")
    return "\n".join(lines)


def _statistics_table(rows: Sequence[dict[str, Any]]) -> str:
    head = "<tr><th>label</th><th>voxels</th><th>volume (ml)</th><th>mean</th><th>std</th><th>min</th><th>max</th></tr>"
    body = []
    for row in rows:
        cells = [_number(row.get(k)) for k in ("mean", "std", "min", "max")]
        body.append(f"<tr><td>{html.escape(str(row['name']))}</td><td>{row['voxels']}</td>"
                    f"<td>{row['volume_ml']:.2f}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table class="statistics">{head}{"".join(body)}</table>'


def _number(value: Any) -> str:
    return "" if value is None else f"{float(value):.1f}"


def _link(output_dir: Path, path: Path) -> str:
    """Relative, URL-quoted link from the page's folder to ``path``."""
    from urllib.parse import quote
    relative = os.path.relpath(Path(path).resolve(), Path(output_dir).resolve())
    return html.escape(quote(Path(relative).as_posix()))
