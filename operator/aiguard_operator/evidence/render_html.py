"""Report → index.html: one self-contained page (inline CSS and SVG, no script, no external
request of any kind), readable on screen and printable."""

from __future__ import annotations

from html import escape

from aiguard_operator.evidence import render_doc
from aiguard_operator.evidence.build import Report

CSS = """
body{font-family:"DejaVu Sans",Arial,sans-serif;color:#0f172a;margin:24px;font-size:13px;
 line-height:1.45}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:2px solid
 #cbd5e1;padding-bottom:4px}
p{margin:4px 0 8px}table{border-collapse:collapse;margin:8px 0 16px;width:100%}
th,td{border:1px solid #cbd5e1;padding:4px 6px;text-align:left;vertical-align:top;
 overflow-wrap:break-word}
td.long{overflow-wrap:anywhere;min-width:9em}
th{background:#f1f5f9;font-weight:600}tr:nth-child(even) td{background:#f8fafc}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:700;font-size:11px;
 white-space:nowrap}
.pass{background:#dcfce7;color:#166534}.attention{background:#fef3c7;color:#92400e}
.no-data{background:#e2e8f0;color:#334155}.empty{color:#64748b;font-style:italic}
.summary{display:flex;gap:10px;flex-wrap:wrap;margin:12px 0}
.summary div{border:1px solid #cbd5e1;border-radius:6px;padding:6px 12px;min-width:90px}
.summary b{display:block;font-size:18px}nav a{margin-right:12px;color:#1d4ed8}
.rule{color:#475569;font-size:12px}.svg{overflow-x:auto}
@media print{body{margin:0}nav{display:none}}
"""


def _num(text: str) -> bool:
    return text.isdigit()


def _long(text: str) -> bool:
    """A word too long to fit a column (hashes, chain ids): may break anywhere."""
    return any(len(word) > 28 for word in text.split())


def _table(t: render_doc.Table) -> str:
    if not t.rows:
        return f'<p class="empty">{escape(t.header[0])}: {escape(t.empty)}.</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in t.header)
    body = []
    for row in t.rows:
        cells = []
        for i, c in enumerate(row):
            if i == t.status_column:
                label = render_doc.STATUS_LABEL.get(c, c)
                cells.append(f'<td><span class="badge {escape(c)}">{escape(label)}</span></td>')
            elif t.status_column is not None and t.header[i] == "Rule":
                cells.append(f'<td class="rule">{escape(c)}</td>')
            else:
                cls = ' class="num"' if _num(c) else ' class="long"' if _long(c) else ""
                cells.append(f"<td{cls}>{escape(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render(report: Report, svg: str) -> str:
    sections = render_doc.sections(report)
    t = report.totals
    counts = {c.status: 0 for c in report.controls}
    for c in report.controls:
        counts[c.status] += 1
    tiles = [
        ("audit events", t["events"]),
        ("refused", t["denied"]),
        ("redactions", t["redactions"]),
        ("failovers", t["failovers"]),
        ("incidents", t["incidents"]),
        ("criteria pass", counts.get("pass", 0)),
        ("attention", counts.get("attention", 0)),
        ("no data", counts.get("no-data", 0)),
    ]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # No external request can be made from this page: a strict CSP says so to the browser.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">",
        f"<title>{escape(render_doc.title(report))}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{escape(render_doc.title(report))}</h1>",
        "<nav>" + "".join(f'<a href="#{s.id}">{escape(s.title)}</a>' for s in sections) + "</nav>",
        '<div class="summary">'
        + "".join(f"<div><b>{n}</b>{escape(label)}</div>" for label, n in tiles)
        + "</div>",
    ]
    for s in sections:
        out.append(f'<h2 id="{s.id}">{escape(s.title)}</h2>')
        out += [f"<p>{escape(p)}</p>" for p in s.paragraphs]
        if s.svg:
            out.append(f'<div class="svg">{svg}</div>')
        out += [_table(tb) for tb in s.tables]
    out.append("</body></html>\n")
    return "\n".join(out)
