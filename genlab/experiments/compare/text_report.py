"""The report of `genlab compare` on a text corpus (gpt against mdlm): validation bits/char and their curves over
training time, infill accuracy, generation and training speed, generated samples, and conclusions computed from
results.csv (genlab/experiments/compare/conclusions.py), rendered by genlab/experiments/compare/blocks.py.

MDLM's bits/char are its ELBO, an upper bound on its negative log-likelihood, where GPT's are exact: the
report says so wherever bits/char appear, and the conclusions say which way the bound can move a gap.
"""

from __future__ import annotations

from pathlib import Path

from genlab.experiments.compare import figures as F
from genlab.experiments.compare.blocks import (
    figure_block,
    metric_table,
    reproduce_blocks,
    runs_table,
)
from genlab.experiments.compare.conclusions import (
    ALPHA,
    INFILL_PREFIX,
    PRIMARY_METRIC,
    conclusions,
    fmt,
    label,
    summarise,
)
from genlab.experiments.compare.scoring import (
    TEXT_GEN_N,
    TEXT_INFILL_N,
    best_and_worst,
    read_text_samples,
)

SAMPLE_CHARS = 600  # characters of each generated text shown in the report


def text_report_blocks(inputs: dict, kind: str, rows: list[dict], problems: list[str]) -> list[tuple]:
    """The blocks of a text comparison's report (the same block kinds as report.report_blocks)."""
    s, results, env = inputs["settings"], inputs["results"], inputs["environment"]
    out = Path(s.out)
    families = list(s.families)
    colours = F.family_colours(families)
    table = summarise(rows)
    primary = PRIMARY_METRIC[kind]
    by_family = {f: [(r.seed, Path(r.folder)) for r in results if r.family == f and r.status != "failed"]
                 for f in families}
    bounded = sorted({r.family for r in results if r.bound})
    infill = sorted((m for m in table if m.startswith(INFILL_PREFIX)), key=_infill_order)

    def figure(name: str, caption: str, draw) -> list[tuple]:
        return figure_block(out, problems, name, caption, draw)

    blocks: list[tuple] = [
        ("h1", f"genlab compare: {s.data}"),
        ("p", f"{', '.join(families)} on the text corpus {s.data}: {s.seeds} seed{'s' * (s.seeds > 1)} each, "
              f"{s.budget_text()} per run, each family with its default config, trained one after another (never two "
              f"at once) on the same training split, scored on the same validation split."),
        ("h2", "Samples"),
        *_sample_blocks(results, families, kind, primary),
        ("h2", "Conclusions"),
        ("ul", conclusions(rows) + _bound_sentences(bounded, table, primary)),
        ("p", f"Rule: families are ranked by their mean over seeds; the leader's gap to the runner-up is called "
              f"clear when Welch's t-test gives p < {ALPHA:g}, and within noise otherwise (or with one seed). "
              f"Nothing here is written by hand: every sentence is computed from results.csv."),
        ("h2", "Validation loss"),
        ("p", "On the whole validation split, every token after the first scored once (`genlab eval`'s numbers). "
              "Bits per character compare across tokenizers; loss per token and perplexity only within one."
              + (f" {', '.join(bounded)}: an upper bound (the ELBO), not an exact likelihood." if bounded else "")),
        *figure("curves.png", f"{label(primary)} during training for every seed against training time"
                + (f" ({', '.join(bounded)}: upper bounds)" if bounded else "") + ".",
                lambda p: F.training_curves(by_family, primary, None, colours, p)),
        ("table", *metric_table(table, {}, ["bits_per_char", "loss_per_token", "perplexity"], families)),
        ("table", *_likelihood_table(results, families)),
        ("h2", "Infill"),
        ("p", f"{TEXT_INFILL_N} validation windows per span length, the span cut from the middle of each window and "
              f"filled by the family; exact match is the share of spans reproduced whole, token accuracy the share "
              f"of span tokens. How each family fills:"),
        ("ul", [f"{f}: {m}" for f, m in _infill_methods(results, families).items()]),
        ("table", *metric_table(table, {}, infill, families)),
        ("h2", "Speed"),
        ("p", f"Generation: {TEXT_GEN_N} texts of each run's `max_new_tokens` from the start of a document, timed "
              f"after a warm-up call on the comparing process's CPU (torch threads: {env.get('torch_threads')}), with "
              f"each family's own sampler settings (gpt: KV cache; mdlm: its configured denoising steps). Training: "
              f"tokens predicted per second of the training clock (evaluation time excluded)."),
        ("table", *metric_table(table, {}, ["gen_tokens_per_s", "train_tokens_per_s", "train_steps", "tokens_seen",
                                             "train_seconds"], families)),
    ]
    for family in families:
        blocks += figure(f"losses-{family}.png", f"{family}: logged training losses, every seed.",
                         lambda p, f=family: F.loss_traces(by_family[f], f, colours[f], p))
    blocks += [("h2", "Runs"), ("table", *runs_table(results)), *reproduce_blocks(s, env)]
    if problems:
        blocks += [("h2", "Problems while writing this report"), ("ul", list(problems))]
    return blocks


def _infill_order(metric: str) -> tuple[int, int, str]:
    """infill_exact_16 after infill_exact_4: by kind, then by span length."""
    what, _, span = metric[len(INFILL_PREFIX):].rpartition("_")
    return (0 if what == "exact" else 1), int(span) if span.isdigit() else 0, metric


def _sample_blocks(results, families, kind, primary) -> list[tuple]:
    """The generated texts of each family's best seed (by bits/char), each cut to SAMPLE_CHARS characters."""
    blocks: list[tuple] = []
    for family in families:
        pair = best_and_worst(results, family, kind)
        if pair is None:
            continue
        best = pair[0]
        texts = read_text_samples(Path(best.folder))
        if not texts:
            continue
        blocks.append(("p", f"{family}, seed {best.seed} (its best by {label(primary)}, "
                            f"{fmt(best.metrics.get(primary))}):"))
        blocks += [("code", text[:SAMPLE_CHARS] + ("..." if len(text) > SAMPLE_CHARS else "")) for text in texts]
    return blocks or [("p", "(no run produced samples)")]


def _bound_sentences(bounded: list[str], table: dict, primary: str) -> list[str]:
    """Which bits/char are bounds, and what that does to a gap (computed from who has a bound and who leads)."""
    if not bounded or primary not in table:
        return []
    exact = [f for f in table[primary] if f not in bounded]
    line = (f"{', '.join(bounded)}: {label(primary)} is an upper bound (the ELBO); the true value is lower or equal, "
            f"so its gap to an exact family is at most the one shown")
    if exact:
        best_bound = min(table[primary][f].mean for f in bounded if f in table[primary])
        best_exact = min(table[primary][f].mean for f in exact)
        line += (f" (here the bound lies {fmt(best_bound - best_exact, 3)} bits/char above the best exact value, "
                 f"a ratio of {fmt(best_bound / best_exact, 3)})" if best_bound >= best_exact
                 else "; here the bound is already below the best exact value, so the lead is real")
    return [line + "."]


def _likelihood_table(results, families) -> tuple[list, list]:
    header = ["family", "bits/char are", "what it measures"]
    notes = {r.family: (r.likelihood, r.bound) for r in results if r.likelihood}
    return header, [[f, ("an upper bound" if notes[f][1] else "exact") if f in notes else "", notes.get(f, ("",))[0]]
                    for f in families]


def _infill_methods(results, families) -> dict[str, str]:
    methods = {r.family: r.infill_method for r in results if r.infill_method}
    return {f: methods[f] for f in families if f in methods}
