"""Report → report.md (GitHub-flavoured Markdown tables)."""

from __future__ import annotations

from aiguard_operator.evidence import render_doc
from aiguard_operator.evidence.build import Report


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ") or " "


def render(report: Report) -> str:
    lines = [f"# {render_doc.title(report)}", ""]
    for s in render_doc.sections(report):
        lines += [f"## {s.title}", ""]
        for p in s.paragraphs:
            lines += [p, ""]
        if s.svg:
            lines += ["![data flows](dataflow.svg)", ""]
        for t in s.tables:
            if not t.rows:
                lines += [f"*{t.header[0]}: {t.empty}.*", ""]
                continue
            lines.append("| " + " | ".join(_cell(h) for h in t.header) + " |")
            lines.append("|" + "---|" * len(t.header))
            for row in t.rows:
                cells = list(row)
                if t.status_column is not None:
                    cells[t.status_column] = render_doc.STATUS_LABEL.get(
                        cells[t.status_column], cells[t.status_column]
                    )
                lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
            lines.append("")
    return "\n".join(lines)
