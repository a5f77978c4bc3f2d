"""`genlab rlhf report RUNS... --out DIR`: results.csv, samples, the over-optimisation and frontier plots, HTML + Markdown.

Every policy (SFT, PPO, DPO) is re-scored here the same way (`evaluate_policy`: the same held-out
prompts and seeds, KL to the SFT model, the reward model as proxy, the oracle as gold); best-of-n
rows come from its stage (analytic KL). The over-optimisation picture plots oracle and proxy
reward against sqrt(KL) for best-of-n and for PPO's evaluations along training, with Gao et al.
2022's forms fitted to the oracle's gain over SFT.
"""

from __future__ import annotations

import csv
import html
import json
import math
import shutil
from pathlib import Path

import torch

from genlab.data.chat import write_jsonl
from genlab.experiments.compare.figures import new_figure, save_figure
from genlab.experiments.rlhf.best_of_n import SAMPLES
from genlab.experiments.rlhf.config import load_rlhf_config
from genlab.experiments.rlhf.reward import load_reward_model
from genlab.experiments.rlhf.stage import CONFIG_NAME, read_metrics, read_result
from genlab.experiments.rlhf.task import evaluate_policy, load_task
from genlab.rlhf import fit_gold_form, gold_form

COLUMNS = ("run", "method", "setting", "oracle", "oracle_se", "proxy", "proxy_se", "kl", "sqrt_kl", "length", "ended")
POLICIES = ("sft", "ppo", "dpo")


def pipeline_rows(root: Path) -> tuple[list[dict], dict[str, list[dict]], list[dict]]:
    """(result rows, samples per "<method>-<setting>", PPO's evaluations along training) of one pipeline folder."""
    root = Path(root)
    read_result(root / "sft")
    cfg = load_rlhf_config(root / "sft" / CONFIG_NAME)
    task = load_task(cfg, root)
    reward_model = load_reward_model(task, root)
    sft = task.policy_from(root / "sft").eval()
    rows, samples = [], {}
    for method in POLICIES:
        if not (root / method / "result.json").is_file():
            continue
        read_result(root / method)
        net = sft if method == "sft" else task.policy_from(root / method).eval()
        ev = evaluate_policy(task, net, sft, reward_model)
        own = load_rlhf_config(root / method / CONFIG_NAME)  # the config the stage ran with
        setting = {"sft": "-", "ppo": f"iter={own.ppo.iterations}", "dpo": f"beta={own.dpo.beta}"}[method]
        rows.append(_row(root.name, method, setting, ev))
        samples[f"{method}-{setting}"] = ev["samples"]
    if (root / "best-of-n" / "result.json").is_file():
        for r in read_result(root / "best-of-n")["rows"]:
            rows.append(_row(root.name, "best-of-n", f"n={r['n']}", r | {"ended": float("nan")}))
            path = root / "best-of-n" / SAMPLES / f"best-of-{r['n']}.jsonl"
            samples[f"best-of-n-n={r['n']}"] = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    trace = [m for m in read_metrics(root / "ppo") if "eval_oracle" in m]
    return rows, samples, trace


def _row(run: str, method: str, setting: str, ev: dict) -> dict:
    kl = max(float(ev["kl"]), 0.0)
    return {"run": run, "method": method, "setting": setting, "oracle": ev["oracle"], "oracle_se": ev["oracle_se"],
            "proxy": ev.get("proxy", float("nan")), "proxy_se": ev.get("proxy_se", float("nan")), "kl": ev["kl"],
            "sqrt_kl": math.sqrt(kl), "length": ev["length"], "ended": ev.get("ended", float("nan"))}


def _fit(form: str, xs: list[float], gains: list[float]) -> tuple[float, float] | None:
    pts = [(x, y) for x, y in zip(xs, gains) if x > 0 and math.isfinite(y)]
    if len(pts) < 2:
        return None
    return fit_gold_form(form, torch.tensor([p[0] for p in pts]), torch.tensor([p[1] for p in pts]))


def overoptimisation_figure(rows: list[dict], trace: list[dict], path: Path) -> tuple[Path, dict]:
    """Oracle and proxy against sqrt(KL): best-of-n and PPO checkpoints, with Gao et al.'s fitted forms."""
    sft = next(r for r in rows if r["method"] == "sft")
    bon = [r for r in rows if r["method"] == "best-of-n"]
    fig = new_figure(10, 4)
    axes = fig.subplots(1, 2)
    fits = {}
    for ax, key in zip(axes, ("oracle", "proxy")):
        base = sft[key]
        if bon:
            d = [r["sqrt_kl"] for r in bon]
            ax.plot(d, [r[key] for r in bon], "o", color="tab:blue", label="best-of-n")
            ab = _fit("bon", d, [r[key] - bon[0][key] for r in bon])
            if ab:
                fits[f"bon_{key}"] = ab
                grid = torch.linspace(0, max(d), 50, dtype=torch.float64)
                ax.plot(grid, bon[0][key] + gold_form("bon", grid, *ab), "-", color="tab:blue", alpha=0.6,
                        label=f"d(a - b d): a={ab[0]:.2f}, b={ab[1]:.2f}")
        if trace:
            d = [math.sqrt(max(t["eval_kl"], 0.0)) for t in trace]
            ys = [t[f"eval_{key}"] for t in trace]
            ax.plot(d, ys, "s", color="tab:red", label="PPO checkpoints")
            ab = _fit("rl", d, [y - base for y in ys])
            if ab:
                fits[f"rl_{key}"] = ab
                grid = torch.linspace(1e-3, max(d), 50, dtype=torch.float64)
                ax.plot(grid, base + gold_form("rl", grid, *ab), "-", color="tab:red", alpha=0.6,
                        label=f"d(a - b log d): a={ab[0]:.2f}, b={ab[1]:.2f}")
        ax.axhline(base, color="0.4", linestyle="--", linewidth=1, label="SFT")
        ax.set_xlabel("sqrt(KL to SFT) (nats^0.5)")
        ax.set_ylabel(f"{key} reward")
        ax.set_title(f"{key} ({'gold' if key == 'oracle' else 'reward model'})")
        ax.legend(fontsize=7)
    return save_figure(fig, path), fits


def frontier_figure(rows: list[dict], trace: list[dict], path: Path) -> Path:
    """Oracle reward against KL to SFT for SFT, best-of-n, PPO (checkpoints and final) and DPO on one plot."""
    fig = new_figure(6, 4.5)
    ax = fig.subplots()
    styles = {"sft": ("k", "*"), "best-of-n": ("tab:blue", "o"), "ppo": ("tab:red", "s"), "dpo": ("tab:green", "^")}
    for method, (colour, marker) in styles.items():
        pts = [r for r in rows if r["method"] == method]
        if pts:
            ax.errorbar([r["kl"] for r in pts], [r["oracle"] for r in pts], yerr=[r["oracle_se"] for r in pts],
                        fmt=marker, color=colour, label=method, markersize=8 if method != "best-of-n" else 6)
    if trace:
        ax.plot([t["eval_kl"] for t in trace], [t["eval_oracle"] for t in trace], ":", color="tab:red", alpha=0.6,
                label="PPO along training")
    ax.set_xlabel("KL(policy || SFT) (nats)")
    ax.set_ylabel("oracle reward (held-out prompts)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def turning_point(trace: list[dict]) -> str:
    """Whether PPO's oracle reward turns down while its proxy keeps rising (from its evaluations), in words.

    A change counts when it exceeds twice the evaluations' standard error; otherwise it is "level".
    """
    if len(trace) < 3:
        return "too few PPO evaluations to tell"
    best = max(range(len(trace)), key=lambda i: trace[i]["eval_oracle"])
    peak, last = trace[best], trace[-1]
    where = f"the oracle peaks at iteration {int(peak['step'])} of {int(last['step'])} (KL {peak['eval_kl']:.2f})"
    drop = peak["eval_oracle"] - last["eval_oracle"]
    if best == len(trace) - 1 or drop <= 2 * max(peak["eval_oracle_se"], last["eval_oracle_se"]):
        return where + "; no significant turn-down after it"
    change = last["eval_proxy"] - peak["eval_proxy"]
    noise = 2 * max(peak.get("eval_proxy_se", 0.0), last.get("eval_proxy_se", 0.0))
    proxy = "keeps rising" if change > noise else ("falls too" if change < -noise else "stays level")
    verdict = "over-optimisation of the proxy" if change >= -noise else "both fall"
    return (f"{where}, then falls to {last['eval_oracle']:.3f} (from {peak['eval_oracle']:.3f}) while the proxy "
            f"{proxy} ({peak['eval_proxy']:.2f} -> {last['eval_proxy']:.2f}): {verdict}")


def write_rlhf_report(runs: list[Path], out: Path) -> dict[str, Path]:
    """Write OUT/results.csv, OUT/samples/*.jsonl, OUT/figures/*.png, OUT/report.md and OUT/report.html."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, traces, all_samples = [], {}, {}
    for root in runs:
        r, s, t = pipeline_rows(Path(root))
        rows += r
        traces[Path(root).name] = t
        for k, v in s.items():
            all_samples[k if len(runs) == 1 else f"{Path(root).name}-{k}"] = v
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    if (out / "samples").exists():
        shutil.rmtree(out / "samples")
    for name, records in all_samples.items():
        write_jsonl(out / "samples" / f"{name}.jsonl", [{"prompt": r["prompt"], "completion": r["completion"],
                                                         "oracle": r["oracle"], **({"proxy": r["proxy"]} if "proxy" in r else {})}
                                                        for r in records])
    first = Path(runs[0]).name
    first_rows = [r for r in rows if r["run"] == first]
    over, fits = overoptimisation_figure(first_rows, traces[first], out / "figures" / "overoptimisation.png")
    front = frontier_figure(first_rows, traces[first], out / "figures" / "frontier.png")
    md = _markdown(rows, fits, turning_point(traces[first]), all_samples)
    (out / "report.md").write_text(md, encoding="utf-8")
    (out / "report.html").write_text(_html(md), encoding="utf-8")
    return {"results": out / "results.csv", "overoptimisation": over, "frontier": front, "markdown": out / "report.md",
            "html": out / "report.html"}


def _fmt(x: float, digits: int = 3) -> str:
    return "-" if not math.isfinite(x) else f"{x:.{digits}f}"


def _markdown(rows: list[dict], fits: dict, turn: str, samples: dict) -> str:
    lines = ["# RLHF report", "", "Oracle = the gold reward (never optimised); proxy = the reward model. KL to the SFT "
             "model (best-of-n: analytic log n - (n-1)/n).", "",
             "| run | method | setting | oracle | +- se | proxy | KL | length | ended |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['method']} | {r['setting']} | {_fmt(r['oracle'])} | {_fmt(r['oracle_se'])} | "
                     f"{_fmt(r['proxy'])} | {_fmt(r['kl'])} | {_fmt(r['length'], 1)} | {_fmt(r['ended'], 2)} |")
    lines += ["", "## Over-optimisation", "", "![oracle and proxy against sqrt(KL)](figures/overoptimisation.png)", ""]
    for k, (a, b) in fits.items():
        lines.append(f"- fit {k}: a = {a:.3f}, b = {b:.3f}")
    lines += ["", f"PPO: {turn}.", "", "## Frontier", "", "![oracle reward against KL](figures/frontier.png)", "",
              "## Samples before (SFT) and after", ""]
    keys = [k for k in samples if k.split("-")[0] in ("sft", "ppo", "dpo")] + \
           [k for k in samples if k.startswith("best-of-n")][-1:]
    for i in range(min(5, min((len(samples[k]) for k in keys), default=0))):
        lines.append(f"**{samples[keys[0]][i]['prompt']}**")
        lines.append("")
        for k in keys:
            s = samples[k][i]
            lines.append(f"- {k} (oracle {s['oracle']:.2f}): {' '.join(s['completion'].split())}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _html(md: str) -> str:
    """A small HTML rendering of the Markdown report (tables, images, lists, headings)."""
    body = []
    table: list[str] = []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-"):
                table.append(line)
            continue
        if table:
            cells = [[html.escape(c.strip()) for c in row.strip("|").split("|")] for row in table]
            body.append("<table border=1 cellpadding=3><tr>" + "".join(f"<th>{c}</th>" for c in cells[0]) + "</tr>" +
                        "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[1:]) + "</table>")
            table = []
        if line.startswith("!["):
            alt, src = line[2:].split("](")
            body.append(f'<img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt)}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.startswith("**"):
            body.append(f"<p><b>{html.escape(line.strip('*'))}</b></p>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    return "<!doctype html><meta charset=utf-8><title>RLHF report</title>\n" + "\n".join(body) + "\n"
