"""Rendering the report context as Markdown (images beside it) and as one self-contained HTML file."""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path

COLUMNS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
MISSING = "—"
HEAD = ["run", "backbone", "lr", "epochs", *COLUMNS, "train s", "ms/img", "status"]


def _num(v, digits=3):
    return MISSING if v is None else f"{v:.{digits}f}"


def _cells(r) -> list[str]:
    return [r.name, r.params.get("model.backbone", MISSING), r.params.get("train.lr", MISSING),
            r.params.get("train.epochs", MISSING), *(_num(r.get(c)) for c in COLUMNS),
            _num(r.metrics.get("train_summary/train_seconds"), 0), _num(r.get("ms_per_image"), 1), r.status]


def _delta(r, base, metric) -> str:
    if base is None or r.get(metric) is None or base.get(metric) is None:
        return MISSING
    return f"{r.get(metric) - base.get(metric):+.3f}"


def render_markdown(ctx: dict, out: Path) -> str:
    rel = lambda p: os.path.relpath(p, out)
    lines = [f"# {ctx['title']}", ""] + [f"- **{k}**: {v}" for k, v in ctx["header"].items()] + [""]
    if ctx["empty_reason"]:
        return "\n".join(lines + [ctx["empty_reason"], ""])
    lines += ["## Leaderboard", "", "| " + " | ".join(HEAD + [f"Δ{ctx['sort_by']} vs baseline"]) + " |",
              "|" + "---|" * (len(HEAD) + 1)]
    for i, r in enumerate(ctx["rows"]):
        cells = _cells(r)
        if i == 0 and r.get(ctx["sort_by"]) is not None:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells + [_delta(r, ctx["baseline"], ctx["sort_by"])]) + " |")
    if ctx["baseline"] is not None:
        lines += ["", f"Baseline: {ctx['baseline'].name} ({ctx['baseline'].run_id})."]
    for title, key in (("Curves of the top runs", "curves"), ("Per-class AP50", "per_class")):
        if ctx[key]:
            lines += ["", f"## {title}", "", f"![{title}]({rel(ctx[key])})"]
    lines += ["", "## Tuning", ""]
    if not ctx["tuning"]:
        lines.append("No tuning study recorded (`fcos-exp tune`).")
    else:
        for s in ctx["tuning"]["studies"]:
            lines.append(f"- study **{s['name']}**: trials {s['counts']}; best {_num(s['best_value'], 4)} with {s['best_params']}")
            lines += [f"  ![{f.stem}]({rel(f)})" for f in s["figures"]]
    if ctx["detections"]:
        lines += ["", "## Detections of the best run", ""] + [f"![detections]({rel(p)})" for p in ctx["detections"]]
    lines += ["", "## Reproduce", ""] + [f"- {r.name}: `{ctx['commands'][r.run_id]}`" for r in ctx["rows"]]
    return "\n".join(lines) + "\n"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


CSS = """body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1200px}
table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}tr.best{background:#e6f4ea;font-weight:bold}
tr.failed{color:#a33}img{max-width:100%;border:1px solid #ddd;margin:6px 0}code{background:#f4f4f4;padding:2px 4px}
.missing{color:#999}dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}dt{font-weight:bold}"""


def render_html(ctx: dict) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(ctx['title'])}</title>"
             f"<style>{CSS}</style></head><body><h1>{e(ctx['title'])}</h1><dl>"]
    parts += [f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in ctx["header"].items()] + ["</dl>"]
    if ctx["empty_reason"]:
        parts.append(f"<p id='empty'>{e(ctx['empty_reason'])}</p></body></html>")
        return "".join(parts)
    parts.append("<h2>Leaderboard</h2><table id='leaderboard'><tr>"
                 + "".join(f"<th>{e(h)}</th>" for h in HEAD + [f"Δ{ctx['sort_by']} vs baseline"]) + "</tr>")
    for i, r in enumerate(ctx["rows"]):
        cls = "best" if i == 0 and r.get(ctx["sort_by"]) is not None else ("failed" if r.status != "FINISHED" else "")
        cells = _cells(r) + [_delta(r, ctx["baseline"], ctx["sort_by"])]
        parts.append(f"<tr class='{cls}' data-run='{r.run_id}'>" + "".join(
            f"<td class='missing'>{MISSING}</td>" if c == MISSING else f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
    parts.append("</table>")
    if ctx["baseline"] is not None:
        parts.append(f"<p>Baseline: {e(ctx['baseline'].name)} ({e(ctx['baseline'].run_id)}).</p>")
    for title, key in (("Curves of the top runs", "curves"), ("Per-class AP50", "per_class")):
        if ctx[key]:
            parts.append(f"<h2>{title}</h2>{_img(ctx[key], title)}")
    parts.append("<h2>Tuning</h2>")
    if not ctx["tuning"]:
        parts.append("<p>No tuning study recorded (<code>fcos-exp tune</code>).</p>")
    else:
        for s in ctx["tuning"]["studies"]:
            parts.append(f"<p>Study <b>{e(str(s['name']))}</b>: trials {e(str(s['counts']))}; best "
                         f"{_num(s['best_value'], 4)} with {e(str(s['best_params']))}</p>")
            parts += [_img(f, f.stem) for f in s["figures"]]
    if ctx["detections"]:
        parts.append("<h2>Detections of the best run</h2>" + "".join(_img(p, "detections") for p in ctx["detections"]))
    parts.append("<h2>Reproduce</h2><ul>" + "".join(
        f"<li>{e(r.name)}: <code>{e(ctx['commands'][r.run_id])}</code></li>" for r in ctx["rows"]) + "</ul>")
    return "".join(parts) + "</body></html>"
