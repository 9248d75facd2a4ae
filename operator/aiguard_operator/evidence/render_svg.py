"""Report → dataflow.svg: workload → sidecar (policy) → provider/model, with volumes.

Three columns of boxes, edges labelled with request counts (and redactions where there were
any). Plain SVG 1.1 with its own fonts and colours: no script, no external reference, so it
renders the same inline in index.html and on its own.
"""

from __future__ import annotations

from collections import defaultdict
from xml.sax.saxutils import escape

from aiguard_operator.evidence.build import Flow, Report

BOX_W = 250
BOX_H = 44
GAP = 18
COLS = (20, 380, 740)
TOP = 56
WIDTH = COLS[2] + BOX_W + 20


def _box(x: int, y: int, title: str, sub: str, fill: str) -> str:
    return (
        f'<g><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{fill}" '
        f'stroke="#334155" stroke-width="1"/>'
        f'<text x="{x + 10}" y="{y + 18}" font-size="13" font-weight="600">'
        f"{escape(_fit(title))}</text>"
        f'<text x="{x + 10}" y="{y + 35}" font-size="11" fill="#475569">{escape(_fit(sub))}</text>'
        "</g>"
    )


def _fit(text: str, limit: int = 36) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _edge(x1: int, y1: int, x2: int, y2: int, label: str, *, warn: bool, near_end: bool) -> str:
    """A curve from (x1, y1) to (x2, y2). Its label sits just above the end the edge has to
    itself (the target's row for fan-out, the source's row for fan-in), so labels of edges
    that share the other end do not overlap."""
    mx = (x1 + x2) // 2
    colour = "#b45309" if warn else "#2563eb"
    path = f"M{x1},{y1} C{mx},{y1} {mx},{y2} {x2},{y2}"
    lx, ly = (x2 - 60, y2 - 6) if near_end else (x1 + 60, y1 - 6)
    return (
        f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.6" '
        f'marker-end="url(#arrow)"/>'
        f'<text x="{lx}" y="{ly}" font-size="11" text-anchor="middle" fill="{colour}" '
        f'stroke="#ffffff" stroke-width="3" paint-order="stroke">{escape(label)}</text>'
    )


def render(report: Report) -> str:
    flows: list[Flow] = report.flows
    workloads = sorted({(f.namespace, f.workload) for f in flows})
    sidecars = sorted({(f.namespace, f.policy) for f in flows})
    targets = sorted({(f.provider, f.model) for f in flows})
    rows = max(len(workloads), len(sidecars), len(targets), 1)
    height = TOP + rows * (BOX_H + GAP) + 20

    def y(i: int) -> int:
        return TOP + i * (BOX_H + GAP)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Arial, sans-serif" '
        'role="img" aria-label="aiguard data flows">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        '<path d="M0,0 L10,5 L0,10 z" fill="#334155"/></marker></defs>',
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
    ]
    for x, title in zip(
        COLS,
        ("Workload (ServiceAccount)", "aiguard sidecar (AIPolicy)", "Provider / model"),
        strict=True,
    ):
        parts.append(
            f'<text x="{x}" y="32" font-size="14" font-weight="700" fill="#0f172a">'
            f"{escape(title)}</text>"
        )
    if not flows:
        parts.append(f'<text x="{COLS[0]}" y="{TOP + 20}" font-size="13">no requests in the '
                     "period</text></svg>")  # fmt: skip
        return "".join(parts) + "\n"

    w_index = {k: i for i, k in enumerate(workloads)}
    s_index = {k: i for i, k in enumerate(sidecars)}
    t_index = {k: i for i, k in enumerate(targets)}
    w_req: dict[tuple[str, str], int] = defaultdict(int)
    s_req: dict[tuple[str, str], int] = defaultdict(int)
    t_req: dict[tuple[str, str], int] = defaultdict(int)
    ws: dict[tuple[tuple[str, str], tuple[str, str]], list[int]] = defaultdict(lambda: [0, 0])
    st: dict[tuple[tuple[str, str], tuple[str, str]], list[int]] = defaultdict(lambda: [0, 0])
    for f in flows:
        w, s, t = (f.namespace, f.workload), (f.namespace, f.policy), (f.provider, f.model)
        w_req[w] += f.requests
        s_req[s] += f.requests
        t_req[t] += f.requests
        ws[(w, s)][0] += f.requests
        ws[(w, s)][1] += f.blocked
        st[(s, t)][0] += f.requests
        st[(s, t)][1] += f.redactions

    for (ns, sa), i in w_index.items():
        parts.append(_box(COLS[0], y(i), f"{ns}/{sa}", f"{w_req[(ns, sa)]} requests", "#e0f2fe"))
    for (ns, pol), i in s_index.items():
        parts.append(_box(COLS[1], y(i), pol, f"{ns} · {s_req[(ns, pol)]} decided", "#dcfce7"))
    for (prov, model), i in t_index.items():
        fill = "#f1f5f9" if prov == "(not sent)" else "#fef9c3"
        parts.append(_box(COLS[2], y(i), prov, f"{model} · {t_req[(prov, model)]}", fill))
    mid = BOX_H // 2
    for (w, s), (n, blocked) in sorted(ws.items()):
        label = f"{n} req" + (f", {blocked} blocked" if blocked else "")
        parts.append(
            _edge(COLS[0] + BOX_W, y(w_index[w]) + mid, COLS[1] - 4, y(s_index[s]) + mid, label,
                  warn=bool(blocked), near_end=False)
        )  # fmt: skip
    for (s, t), (n, redactions) in sorted(st.items()):
        label = f"{n} req" + (f", {redactions} redacted" if redactions else "")
        parts.append(
            _edge(COLS[1] + BOX_W, y(s_index[s]) + mid, COLS[2] - 4, y(t_index[t]) + mid, label,
                  warn=t[0] == "(not sent)", near_end=True)
        )  # fmt: skip
    parts.append("</svg>")
    return "".join(parts) + "\n"
