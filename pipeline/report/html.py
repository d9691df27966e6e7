"""Rendering the report blocks (sections.py) as Markdown with images beside it, and as one
self-contained HTML file: inline CSS, images as base64 data URIs, no script, no external resource."""
from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path

from .sections import MISSING

CSS = """body{font-family:system-ui,sans-serif;margin:2rem auto;color:#222;max-width:1200px;padding:0 1rem}
h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:.5rem 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}tr.best{background:#dff3e4;font-weight:bold}
tr.failed{color:#b02a2a}td.missing{color:#999;text-align:center}img{max-width:100%;border:1px solid #ddd}
code{background:#f4f4f4;padding:1px 4px;font-size:12px}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}
dt{font-weight:bold}dd{margin:0}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:10px}
.grid img{width:100%;image-rendering:pixelated}figure{margin:0}figcaption{font-size:12px;color:#555}li{margin:4px 0}"""


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def render_markdown(title: str, blocks: list[dict], out: Path) -> str:
    """Markdown; images are referenced relative to the report's folder."""
    rel = lambda p: os.path.relpath(p, out)
    lines = [f"# {title}", ""]
    for b in blocks:
        kind = b["kind"]
        if kind == "header":
            lines += [f"- **{k}**: {v}" for k, v in b["items"].items()]
        elif kind == "h2":
            lines.append(f"## {b['text']}")
        elif kind == "p":
            lines.append(b["text"])
        elif kind == "table":
            lines += ["| " + " | ".join(map(_md_cell, b["head"])) + " |", "|" + "---|" * len(b["head"])]
            for row, cls in zip(b["rows"], b["classes"]):
                cells = [_md_cell(c) if cls != "best" or c == MISSING else f"**{_md_cell(c)}**" for c in row]
                lines.append("| " + " | ".join(cells) + " |")
        elif kind == "img":
            lines.append(f"![{b['alt']}]({rel(b['path'])})")
        elif kind == "grid":
            lines.append(" ".join(f"![{caption}]({rel(p)})" for p, caption in b["images"]))
        elif kind == "commands":
            lines += [f"- {name}: " + (f"`{cmd}`" if cmd else f"{MISSING} (no params logged)")
                      for name, cmd in b["items"]]
        lines.append("")
    return "\n".join(lines)


def _text(text: str) -> str:
    """Escaped text with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text)))


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(b: dict) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in b["head"])
    body = "".join(f"<tr class='{cls}'>" + "".join("<td class='missing'>—</td>" if c == MISSING else
                                                    f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row, cls in zip(b["rows"], b["classes"]))
    return f"<table id='{b['id']}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(title: str, blocks: list[dict]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{e(title)}</h1>"]
    for b in blocks:
        kind = b["kind"]
        if kind == "header":
            parts.append("<dl id='header'>" + "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>"
                                                      for k, v in b["items"].items()) + "</dl>")
        elif kind == "h2":
            parts.append(f"<h2>{e(b['text'])}</h2>")
        elif kind == "p":
            parts.append(f"<p{' id=' + repr(b['id']) if 'id' in b else ''}>{_text(b['text'])}</p>")
        elif kind == "table":
            parts.append(_table(b))
        elif kind == "img":
            parts.append(_img(b["path"], b["alt"]))
        elif kind == "grid":
            parts.append("<div class='grid'>" + "".join(f"<figure>{_img(p, c)}<figcaption>{e(c)}</figcaption></figure>"
                                                        for p, c in b["images"]) + "</div>")
        elif kind == "commands":
            parts.append("<ul id='reproduce'>" + "".join(
                f"<li>{e(name)}: " + (f"<code>{e(cmd)}</code>" if cmd else f"{MISSING} (no params logged)") + "</li>"
                for name, cmd in b["items"]) + "</ul>")
    return "".join(parts) + "</body></html>"
