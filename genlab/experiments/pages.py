"""Report pages shared by the studies of genlab.experiments: a list of blocks rendered to Markdown and to HTML.

A report is built once as a list of blocks, each a tuple: ("h1", text), ("h2", text), ("p", text),
("ul", [items]), ("table", header, rows), ("img", relative path, caption), ("code", text); it is
rendered twice, so report.md and report.html always say the same. Pages link figures by relative
paths, so a report folder is self-contained.
"""

from __future__ import annotations

import html
import re
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (temporary name, then rename), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def to_markdown(blocks: list[tuple]) -> str:
    """The blocks as GitHub-flavoured Markdown."""
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}")
        elif kind == "h2":
            out.append(f"## {block[1]}")
        elif kind == "p":
            out.append(block[1])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "table":
            header, rows = block[1], block[2]
            lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})\n\n*{block[2]}*")
        elif kind == "code":
            out.append(f"```\n{block[1]}\n```")
    return "\n\n".join(out) + "\n"


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.7em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}th,td{border:1px solid #ddd;padding:0.25em 0.6em;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}figure{margin:1em 0}
img{max-width:100%}figcaption{color:#555;font-size:0.9em}pre{background:#f6f6f6;padding:0.8em;overflow-x:auto}
li{margin:0.3em 0}"""


def _inline(text: str) -> str:
    """Escaped text with Markdown's `code` spans as <code> elements."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def to_html(blocks: list[tuple], title: str) -> str:
    """The blocks as one HTML page (figures linked from figures/, styles inline)."""
    e = html.escape
    out = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>{e(title)}</title>"
           f"<style>{CSS}</style></head>\n<body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{e(block[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            header, rows = block[1], block[2]
            head = "".join(f"<th>{e(str(h))}</th>" for h in header)
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            out.append(f"<figure><img src=\"{e(block[1])}\" alt=\"{e(block[2])}\">"
                       f"<figcaption>{e(block[2])}</figcaption></figure>")
        elif kind == "code":
            out.append(f"<pre><code>{e(block[1])}</code></pre>")
    out.append("</body>\n</html>\n")
    return "\n".join(out)
