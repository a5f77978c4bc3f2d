"""The report pages' building blocks, shared by every report of genlab/experiments (compare on images, points
and text): a report is a list of blocks (("h1"|"h2"|"p", text), ("ul", [text]), ("table", header, rows),
("img", relative path, caption), ("code", text)) rendered twice, to Markdown and to HTML, so the two always
say the same; plus the tables and the figure guard that several reports use.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable
from pathlib import Path

from genlab.experiments.compare.conclusions import direction, fmt, label

logger = logging.getLogger("genlab")
FIGURES = "figures"


def figure_block(out: Path, problems: list[str], name: str, caption: str, draw: Callable[[Path], Path | None]
                 ) -> list[tuple]:
    """Draw one figure into out/figures/name and return its block; a figure that fails is named in the report
    (and in `problems`) and the rest goes on."""
    try:
        path = draw(out / FIGURES / name)
    except Exception as err:  # a broken figure must not cost the report
        problems.append(f"figure {name}: {type(err).__name__}: {err}")
        logger.debug("figure %s failed", name, exc_info=True)
        return [("p", f"(figure {name} could not be drawn: {type(err).__name__}: {err})")]
    return [] if path is None else [("img", f"{FIGURES}/{name}", caption)]


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def values(rows: list[dict]) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        if row["status"] == "ok" and row["value"] is not None:
            out.setdefault(row["metric"], {}).setdefault(row["family"], []).append(float(row["value"]))
    return out


def metric_table(table, floor, metrics: list[str], families: list[str]) -> tuple[list, list]:
    """Metric rows x family columns of "mean ± std" (scores) or the mean (settings such as NFE)."""
    with_floor = any(m in floor for m in metrics)
    header = ["metric", "better", *families, *["real data"] * with_floor]
    rows = []
    for m in metrics:
        by_family = table.get(m, {})
        cells = [(by_family[f].text() if direction(m) else fmt(by_family[f].mean)) if f in by_family else ""
                 for f in families]
        rows.append([label(m), direction(m) or "-", *cells, *[fmt(floor.get(m))] * with_floor])
    return header, rows


def mean_of(runs, key: str) -> str:
    """The mean of a run metric over the runs that have it ("" when none does)."""
    xs = [r.metrics[key] for r in runs if isinstance(r.metrics.get(key), (int, float))]
    return fmt(sum(xs) / len(xs)) if xs else ""


def runs_table(results) -> tuple[list, list]:
    header = ["run", "status", "steps", "training s", "diverged", "error"]
    rows = [[Path(r.folder).name, r.status, r.metrics.get("train_steps", ""), fmt(r.metrics.get("train_seconds")),
             r.diverged_reason or "", r.error or ""] for r in results]
    return header, rows


def reproduce_blocks(s, env: dict) -> list[tuple]:
    """The "Reproduce" section: the command of settings `s` (its `command()`), the machine, the versions."""
    return [
        ("h2", "Reproduce"),
        ("code", s.command()),
        ("ul", [f"machine: {env.get('cpu')}, {env.get('cores')} cores"
                + (f", GPU {env['gpu']}" if env.get("gpu") else "") + f"; {env.get('platform')}",
                f"versions: genlab {env.get('genlab')}"
                + (f" (commit {env['git_commit']})" if env.get("git_commit") else "")
                + f", torch {env.get('torch')}, lightning {env.get('lightning')}, numpy {env.get('numpy')}, "
                  f"python {env.get('python')}",
                f"date: {env.get('date')}",
                f"configs: {s.config_dir}; overrides given: {' '.join(s.overrides) or 'none'}",
                "results.csv: one row per family x seed x metric (blank values: no value)"]),
    ]


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
