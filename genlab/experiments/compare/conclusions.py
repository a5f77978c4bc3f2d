"""The numbers of a comparison and the sentences drawn from them.

`results_rows` flattens the runs into results.csv's table, one row per family x seed x metric.
Everything after it is a pure function of those rows, so the report's conclusions always say
what the table says (tests perturb the numbers and check that the text follows):

- `summarise`: mean, sample standard deviation (ddof = 1) and count over the seeds of each
  family, from the finite values of runs that were scored. Bits/dim are ranked only between
  families whose bits are of the same unit (8-bit pixels, binarised pixels, continuous density:
  the `unit` column): one "metric" per unit.
- `welch_p`: Welch's unequal-variance t-test (Welch 1947) of the first two families of a
  ranking. Their gap is called *within noise* when p >= ALPHA, or when either family has a
  single seed (no spread to compare the gap with).
- `conclusions`: per ranked metric, the order by mean with the seed spread; the count of first
  places; the diverged and failed runs; the seed-to-seed spread of the primary metric.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy.stats import ttest_ind_from_stats

from genlab.eval.scores import HIGHER_IS_BETTER, IMAGE_METRICS, POINT_METRICS

ALPHA = 0.05  # significance level of the Welch t-test between the first two families
COST_METRICS = ("samples_per_s", "nfe")
TRAINING_METRICS = ("train_steps", "images_seen", "train_seconds")
LIKELIHOOD = "nll_bpd"
#: a text comparison: the validation loss three ways (bits/char is the one ranked), then speed
TEXT_METRICS = ("bits_per_char", "loss_per_token", "perplexity", "gen_tokens_per_s")
TEXT_TRAINING_METRICS = ("train_steps", "tokens_seen", "train_seconds", "train_tokens_per_s")
INFILL_PREFIX = "infill_"  # infill_exact_<span>, infill_token_acc_<span>: shares of spans (tokens) filled right
# spreads, settings and budgets, not scores; loss per token and perplexity restate bits/char (ranked once)
UNRANKED = frozenset({"kid_std", "nfe", *TRAINING_METRICS, "tokens_seen", "loss_per_token", "perplexity"})
HIGHER = HIGHER_IS_BETTER | {"samples_per_s", "gen_tokens_per_s", "train_tokens_per_s"}
PRIMARY_METRIC = {"image": "fd", "vector": "mmd2", "text": "bits_per_char"}
RESULT_COLUMNS = ("family", "seed", "metric", "unit", "value", "floor", "better", "status", "diverged", "error")

LABELS = {"fd": "FD", "kid": "KID", "kid_std": "KID std", "mmd2": "MMD^2", "sw": "sliced Wasserstein",
          "nll_bpd": "bits/dim", "samples_per_s": "samples/s", "nfe": "network evaluations per sample",
          "class_kl": "class KL", "class_coverage": "class coverage", "mode_coverage": "mode coverage",
          "high_quality": "high-quality share", "train_steps": "training steps", "images_seen": "images seen",
          "train_seconds": "training seconds", "bits_per_char": "validation bits/char",
          "loss_per_token": "validation loss per token (nats)", "perplexity": "validation perplexity per token",
          "gen_tokens_per_s": "generated tokens/s", "tokens_seen": "tokens seen",
          "train_tokens_per_s": "training tokens/s"}


def ranked_name(metric: str, unit: str | None) -> str:
    """The name under which a value is ranked: the metric, with its unit when it has one
    ("nll_bpd [binarised pixels]"), so that values of different units are never ranked together."""
    return f"{metric} [{unit}]" if unit else metric


def _base(metric: str) -> tuple[str, str | None]:
    """(metric, unit) of a ranked name."""
    name, _, unit = metric.partition(" [")
    return name, (unit[:-1] if unit else None)


def label(metric: str) -> str:
    """How the report names a metric ("bits/dim of binarised pixels" for a ranked name with a unit)."""
    name, unit = _base(metric)
    if name.startswith(INFILL_PREFIX):  # infill_exact_4 -> "infill exact match, 4-token spans"
        what, _, span = name[len(INFILL_PREFIX):].rpartition("_")
        return f"infill {'exact match' if what == 'exact' else 'token accuracy'}, {span}-token spans"
    return LABELS.get(name, name) + (f" of {unit}" if unit else "")


def direction(metric: str) -> str:
    """"higher" or "lower" (is better), or "" for metrics that are not scores."""
    metric = _base(metric)[0]
    if metric in UNRANKED:
        return ""
    return "higher" if metric in HIGHER or metric.startswith(INFILL_PREFIX) else "lower"


def metric_names(kind: str) -> tuple[str, ...]:
    """The metrics of results.csv for "image", "vector" or "text" data, in report order (a text run's infill
    metrics follow, one per span length it was scored on)."""
    if kind == "text":
        return (*TEXT_METRICS, *TEXT_TRAINING_METRICS)
    quality = IMAGE_METRICS if kind == "image" else POINT_METRICS
    return (*quality, LIKELIHOOD, *COST_METRICS, *TRAINING_METRICS)


def results_rows(results, kind: str) -> list[dict]:
    """results.csv: one row per family x seed x metric (a failed run's values are blank, not zero).

    Args:
        results: RunResult objects (genlab/eval/compare.py).
        kind: "image", "vector" or "text" (which quality metrics every run should have).
    """
    names = list(metric_names(kind))
    for r in results:
        names += [m for m in r.metrics if m not in names]
    floor: dict = {}  # the floor belongs to the data, the same for every run: a failed run's rows show it too
    for r in results:
        floor = {**r.floor, **floor}
    rows = []
    for r in results:
        for metric in names:
            value = r.metrics.get(metric)
            rows.append({"family": r.family, "seed": r.seed, "metric": metric,
                         "unit": (r.likelihood_unit or "") if metric == LIKELIHOOD else "",
                         "value": value if _finite(value) else None, "floor": floor.get(metric),
                         "better": direction(metric), "status": r.status, "diverged": int(r.diverged),
                         "error": r.error or r.diverged_reason or ""})
    return rows


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _number(value) -> float | None:
    """A table cell as a float (CSV text included), None when blank or not finite."""
    if value in (None, ""):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Summary:
    """One family's values of one metric over its seeds."""

    family: str
    mean: float
    std: float  # sample standard deviation (ddof = 1); 0 with one seed
    n: int

    def text(self) -> str:
        """"12.3 ± 1.1" (or "12.3" for a single seed)."""
        return fmt(self.mean) + (f" ± {fmt(self.std, 2)}" if self.n > 1 else "")


def fmt(value: float | None, digits: int = 4) -> str:
    """A number with `digits` significant digits ("" when None)."""
    return "" if value is None else f"{value:.{digits}g}"


def summarise(rows: list[dict], by_unit: bool = False) -> dict[str, dict[str, Summary]]:
    """metric -> family -> Summary over the seeds, from the scored rows (status "ok") with a value.

    With `by_unit`, a metric whose rows carry a unit is keyed by `ranked_name(metric, unit)`: one
    table per unit, the tables that rankings may be drawn from.
    """
    values: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        x = _number(row.get("value"))
        if row.get("status") == "ok" and x is not None:
            key = ranked_name(row["metric"], row.get("unit")) if by_unit else row["metric"]
            values.setdefault(key, {}).setdefault(row["family"], []).append(x)
    return {metric: {family: Summary(family, statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0,
                                     len(xs))
                     for family, xs in by_family.items()}
            for metric, by_family in values.items()}


def floors(rows: list[dict]) -> dict[str, float]:
    """metric -> the real-vs-real floor (the same for every run of a dataset; the first one given)."""
    found: dict[str, float] = {}
    for row in rows:
        x = _number(row.get("floor"))
        if x is not None:
            found.setdefault(row["metric"], x)
    return found


def ranking(by_family: dict[str, Summary], metric: str) -> list[Summary]:
    """The families' summaries of `metric`, best mean first (ties keep the given order)."""
    sign = -1.0 if direction(metric) == "higher" else 1.0
    return sorted(by_family.values(), key=lambda s: sign * s.mean)


def welch_p(a: Summary, b: Summary) -> float | None:
    """Two-sided p-value of Welch's t-test that a and b have the same mean; None with fewer than 2 seeds each."""
    if a.n < 2 or b.n < 2:
        return None
    if a.std == 0 and b.std == 0:
        return 1.0 if a.mean == b.mean else 0.0

    return float(ttest_ind_from_stats(a.mean, a.std, a.n, b.mean, b.std, b.n, equal_var=False).pvalue)


def separation(first: Summary, second: Summary) -> tuple[bool, str]:
    """(whether the leader's gap is real, the words saying so) for the first two of a ranking."""
    p = welch_p(first, second)
    if p is None:
        return False, "a single seed gives no spread, so this gap cannot be told from noise"
    if p < ALPHA:
        return True, f"a clear gap (Welch t-test {_p(p)})"
    return False, f"within noise (Welch t-test {_p(p)}: the gap is no larger than the seed-to-seed spread)"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def tied_leaders(ranked: list[Summary]) -> list[Summary]:
    """The families sharing the best mean exactly (e.g. every one at mode coverage 0)."""
    return [s for s in ranked if s.mean == ranked[0].mean]


def metric_sentence(metric: str, ranked: list[Summary], floor: float | None) -> str:
    """One conclusion: the order of the families on `metric`, with spreads and whether the lead is real."""
    head = f"{label(metric)} ({direction(metric)} is better"
    head += f"; real data score {fmt(floor)})" if floor is not None else ")"
    first = ranked[0]
    if len(ranked) == 1:
        return f"{head}: only {first.family} has a value, {first.text()} ({_seeds(first)})."
    tied = tied_leaders(ranked)
    if len(tied) > 1:
        rest = "".join(f", then {s.family} {s.text()}" for s in ranked[len(tied):])
        return f"{head}: {', '.join(s.family for s in tied)} tie for first at {fmt(first.mean)}{rest}."
    rest = ", ".join(f"{s.family} {s.text()}" for s in ranked[1:])
    _, words = separation(first, ranked[1])
    return (f"{head}: {first.family} ranks first with {first.text()} ({_seeds(first)}), then {rest}; "
            f"{first.family} vs {ranked[1].family}: {words}.")


def _seeds(s: Summary) -> str:
    return f"{s.n} seed{'s' * (s.n != 1)}"


def conclusions(rows: list[dict]) -> list[str]:
    """The report's conclusions, every one computed from `rows` (results.csv's table)."""
    table, floor = summarise(rows, by_unit=True), floors(rows)
    runs = _runs(rows)
    lines = []
    firsts: dict[str, list[str]] = {}
    clear: dict[str, int] = {}
    ranked_metrics = [m for m in _metric_order(rows) if direction(m) and m in table]

    for metric in ranked_metrics:
        ranked = ranking(table[metric], metric)
        if len(ranked) < 2 or len(tied_leaders(ranked)) > 1:
            continue  # a lone value or a tie is nobody's first place
        firsts.setdefault(ranked[0].family, []).append(label(metric))
        if len(ranked) > 1 and separation(ranked[0], ranked[1])[0]:
            clear[ranked[0].family] = clear.get(ranked[0].family, 0) + 1
    if firsts:
        parts = [f"{family} on {len(names)} ({', '.join(names)})"
                 for family, names in sorted(firsts.items(), key=lambda kv: -len(kv[1]))]
        lines.append(f"First places over {len(ranked_metrics)} ranked metrics: {'; '.join(parts)}. Clear leads "
                     f"(Welch p < {ALPHA:g} against the runner-up): "
                     + (", ".join(f"{f} {k}" for f, k in sorted(clear.items(), key=lambda kv: -kv[1])) or "none")
                     + ".")
    units = {m: _base(m)[1] for m in ranked_metrics if _base(m)[0] == LIKELIHOOD and _base(m)[1]}
    if len(units) > 1:
        lines.append("Bits/dim are ranked within each unit only (" + "; ".join(
            f"{u}: {', '.join(sorted(table[m]))}" for m, u in units.items()) + "): a bit of a binarised pixel, of an "
            "8-bit pixel and of a continuous density are different quantities.")
    lines += [metric_sentence(m, ranking(table[m], m), floor.get(m)) for m in ranked_metrics]
    lines += _stability(runs, table)
    with_likelihood = {f for m in table if _base(m)[0] == LIKELIHOOD for f in table[m]}
    no_likelihood = sorted(f for f, rs in _by_family(runs).items()
                           if any(r["status"] == "ok" for r in rs) and f not in with_likelihood)
    if no_likelihood and with_likelihood:
        lines.append(f"No likelihood (bits/dim left blank): {', '.join(no_likelihood)}.")
    return lines


def _metric_order(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.setdefault(ranked_name(row["metric"], row.get("unit")), None)
    return list(seen)


def _runs(rows: list[dict]) -> list[dict]:
    """One entry per family x seed: status, diverged flag, error."""
    runs: dict[tuple, dict] = {}
    for row in rows:
        runs.setdefault((row["family"], str(row["seed"])), {
            "family": row["family"], "status": row.get("status"),
            "diverged": str(row.get("diverged")) in ("1", "True", "true"), "error": row.get("error") or ""})
    return list(runs.values())


def _by_family(runs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for run in runs:
        out.setdefault(run["family"], []).append(run)
    return out


def _stability(runs: list[dict], table: dict[str, dict[str, Summary]]) -> list[str]:
    """Sentences on failed and diverged runs and on the seed-to-seed spread of the primary metric."""
    lines = []
    families = _by_family(runs)
    failed = {f: [r for r in rs if r["status"] == "failed"] for f, rs in families.items()}
    for family, bad in failed.items():
        if bad:
            lines.append(f"{family} failed in {len(bad)} of {len(families[family])} runs: {bad[-1]['error']}")
    diverged = {f: sum(r["diverged"] for r in rs) for f, rs in families.items()}
    if any(diverged.values()):
        parts = [f"{f} {k} of {len(families[f])}" for f, k in diverged.items() if k]
        lines.append(f"Diverged runs (NaN loss, failure, or fewer than 3 classes/modes covered by at least a quarter "
                     f"of their share of the samples): {', '.join(parts)}; "
                     f"none for {', '.join(f for f, k in diverged.items() if not k) or 'no family'}.")
    else:
        lines.append("No run diverged (no NaN loss, no failure, every run covers at least 3 classes/modes).")
    primary = next((m for m in PRIMARY_METRIC.values() if m in table), None)
    spread = [s for s in table.get(primary, {}).values() if s.n > 1]
    if len(spread) > 1:
        ordered = sorted(spread, key=lambda s: s.std)
        lines.append(f"Seed-to-seed spread of {label(primary)} at the end (standard deviation): smallest "
                     f"{ordered[0].family} ({fmt(ordered[0].std, 2)}), largest {ordered[-1].family} "
                     f"({fmt(ordered[-1].std, 2)}).")
    return lines
