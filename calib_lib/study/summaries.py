"""Each study notebook's statistics and the sentences of its finding, as tested functions.

A notebook calls one analysis function (tables and tests it displays) and one finding function (the text
it saves), so what a notebook says is checked in ``tests/test_summaries.py`` and never computed twice:
the 06_findings claims (``calib_lib.findings``) reuse ``task_swing`` and ``self_vs_real`` from here.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import stats
from .labels import fmt
from .tables import long_metrics, ppl_columns, rank_of, same_domain_gap, task_columns

ALPHA = 0.05
NO_TASKS = "task accuracy is unavailable here (no task data: set CALIB_MIRROR or go online)"


def significance(p_value: float, yes: str, no: str, alpha: float = ALPHA) -> str:
    """``yes`` when p < alpha, else ``no`` (an undefined p reads as not significant)."""
    return yes if p_value is not None and not np.isnan(p_value) and p_value < alpha else no


# -- 01 sample count ------------------------------------------------------------------------------

def sample_count_analysis(table: pd.DataFrame, metrics: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(Spearman trend of each metric against num_samples per method, plateau summary per method)."""
    trends = pd.concat([stats.spearman_trend(table, "calibration.num_samples", m, by="method_label").assign(metric=m)
                        for m in metrics], ignore_index=True)
    plateaus = pd.concat([stats.plateau(table, "calibration.num_samples", m, "method_label",
                                        lower_is_better=m.startswith("ppl")).assign(metric=m) for m in metrics],
                         ignore_index=True)
    return trends, plateaus


def sample_count_finding(trends: pd.DataFrame, plateaus: pd.DataFrame, dense_ppl: float) -> str:
    ppl = plateaus[plateaus.metric == "ppl:geomean"].set_index("method_label")
    rho = trends[trends.metric == "ppl:geomean"].set_index("method_label")
    sentences = [
        f"{method}: perplexity {row['first']:.1f} with {row.x_first} sample(s), {row.before:.1f} with {row.x_before} "
        f"and {row['last']:.1f} with {row.x_last} (Spearman rho {fmt(rho.loc[method, 'rho'])}, "
        f"Holm p {fmt(rho.loc[method, 'p_holm'], 3)}); the last step of the grid ({row.x_before} -> "
        f"{row.x_last}) brought {fmt(100 * row.last_step_share, 0)}% of the total change"
        for method, row in ppl.iterrows()]
    acc = plateaus[plateaus.metric == "acc:mean"].set_index("method_label")
    if len(acc):
        sentences += [f"{method}: mean accuracy {row['first']:.3f} -> {row['last']:.3f}" for method, row in acc.iterrows()]
    else:
        sentences.append(NO_TASKS)
    return "; ".join(sentences) + f". Dense perplexity: {dense_ppl:.1f}."


# -- 02 sequence length ---------------------------------------------------------------------------

def sequence_length_trends(table: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    return pd.concat([stats.spearman_trend(table, "calibration.seq_len", m, by=["method_label", "regime"]).assign(metric=m)
                      for m in metrics], ignore_index=True)


def sequence_length_finding(table: pd.DataFrame, trends: pd.DataFrame) -> str:
    ppl = table.pivot_table(index=["regime", "method_label"], columns="calibration.seq_len", values="ppl:geomean")
    rho = trends[trends.metric == "ppl:geomean"].set_index(["regime", "method_label"])
    sentences = []
    for (regime, method), row in ppl.iterrows():
        row = row.dropna()
        best, worst = row.idxmin(), row.idxmax()
        sentences.append(f"{method}, {regime}: lowest perplexity {row[best]:.1f} at seq_len {best}, highest "
                         f"{row[worst]:.1f} at {worst} (Spearman rho {fmt(rho.loc[(regime, method), 'rho'])}, Holm p "
                         f"{fmt(rho.loc[(regime, method), 'p_holm'], 3)})")
    return "; ".join(sentences) + "."


# -- 03 source domain -----------------------------------------------------------------------------

def _friedman_over(table: pd.DataFrame, columns: list[str], group: str, keep: list[str], what: str):
    long = long_metrics(table, columns, keep)
    long["block"] = long["method_label"] + " | " + long["metric"]
    return stats.friedman(long, "value", group, "block") | {"metric": what}, stats.nemenyi(long, "value", group, "block")


def source_domain_analysis(table: pd.DataFrame, metrics: list[str]) -> dict:
    """Friedman tests of the source over (method, text) and (method, task) blocks with Nemenyi post-hoc, the
    same-domain gap with its Wilcoxon test, and random-vocab's rank on each headline metric."""
    keep = ["method_label", "calibration.source"]
    test, posthoc = _friedman_over(table, ppl_columns(table), "calibration.source", keep, "perplexity per text")
    tests, posthocs = [test], {"perplexity": posthoc}
    if "acc:mean" in metrics:
        test, posthoc = _friedman_over(table, task_columns(table), "calibration.source", keep, "accuracy per task")
        tests.append(test)
        posthocs["accuracy"] = posthoc
    gap = same_domain_gap(table)
    tests.append(stats.wilcoxon(gap["log_gap"]) | {"metric": "log(cross/same) perplexity"})
    ranks = pd.concat([rank_of(table, m, "calibration.source", "random-vocab", m.startswith("ppl")) for m in metrics])
    return {"tests": tests, "posthoc": posthocs, "gap": gap, "ranks": ranks}


def source_domain_finding(analysis: dict) -> str:
    tests, gap, ranks = analysis["tests"], analysis["gap"], analysis["ranks"]
    friedman, wil = tests[0], tests[-1]
    worst = ranks[ranks["rank"] == ranks["of"]]
    median_gap = gap["log_gap"].median() if len(gap) else float("nan")
    sentences = [
        f"Calibration source {significance(friedman['p_value'], 'changes', 'does not significantly change')} "
        f"perplexity across texts and methods: Friedman chi2 {fmt(friedman['statistic'])}, p "
        f"{fmt(friedman['p_value'], 4)}, Kendall's W {fmt(friedman['effect_size'])} over {friedman.get('n', 'n/a')} blocks",
        f"calibrating on a text's own domain "
        f"{significance(wil['p_value'], 'lowers' if median_gap > 0 else 'raises', 'does not significantly change')} "
        f"its perplexity: cross-domain / same-domain perplexity, median ratio {fmt(np.exp(median_gap))} (Wilcoxon p "
        f"{fmt(wil['p_value'], 4)}, rank-biserial r {fmt(wil['effect_size'])}, n {wil.get('n')})",
        f"random-vocab ranks last on {len(worst)} of {len(ranks)} (method, metric) pairs"]
    if len(tests) > 2:
        sentences.insert(1, f"for task accuracy: Friedman p {fmt(tests[1]['p_value'], 4)}, Kendall's W "
                            f"{fmt(tests[1]['effect_size'])}")
    return "; ".join(sentences) + "."


# -- 04 seed variance -----------------------------------------------------------------------------

def task_swing(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Range across sets of each task's accuracy within each (method, source), with that cell's range of
    the mean accuracy (``mean_range``); and the mean's ranges. Empty without task columns or sets."""
    keys = ["method_label", "calibration.source"]
    swing = stats.ranges(table, task_columns(table) + ["acc:mean"], keys) if task_columns(table) else pd.DataFrame()
    if swing.empty:
        return swing, pd.Series(dtype=float)
    mean_range = swing[swing.metric == "acc:mean"].set_index(keys)["range"]
    per_task = swing[swing.metric != "acc:mean"].join(mean_range.rename("mean_range"), on=keys)
    return per_task, mean_range


def seed_variance_analysis(table: pd.DataFrame, metrics: list[str]) -> dict:
    """Brown-Forsythe of each metric's deviation from its (method, source) mean between the two families, and
    (with tasks) the Wilcoxon test of single-task range minus mean range across sets."""
    tests = []
    for m in metrics:
        frame = table.assign(deviation=stats.centered(table, m, ["method_label", "calibration.source"]))
        tests.append(stats.brown_forsythe(frame, "deviation", "family") | {"metric": m})
    per_task, mean_range = task_swing(table)
    if len(per_task):
        tests.append(stats.wilcoxon(per_task["range"] - per_task["mean_range"]) | {"metric": "task range - mean range"})
    return {"tests": tests, "per_task": per_task, "mean_range": mean_range}


def seed_variance_finding(analysis: dict) -> str:
    sentences = []
    for t in analysis["tests"]:
        if t["test"] == "Brown-Forsythe" and isinstance(t.get("sd"), dict):
            sds = ", ".join(f"{k} SD {v:.3g}" for k, v in t["sd"].items())
            sentences.append(f"{t['metric']} across sets: {sds} (Brown-Forsythe p {fmt(t['p_value'], 3)})")
    per_task, mean_range = analysis["per_task"], analysis["mean_range"]
    if len(per_task):
        w = analysis["tests"][-1]
        sentences.append(f"single tasks swing by a median {fmt(per_task['range'].median(), 3)} accuracy across sets "
                         f"against {fmt(mean_range.median(), 3)} for the task mean (Wilcoxon p "
                         f"{fmt(w['p_value'], 4)}, r {fmt(w['effect_size'])}, n {w.get('n')})")
    else:
        sentences.append(NO_TASKS)
    return "; ".join(sentences) + "."


# -- 05 self-calibration (and F4) -----------------------------------------------------------------

def selection_metric(table: pd.DataFrame) -> str:
    """What picks 'the best' set: mean accuracy where tasks ran, else perplexity."""
    return "acc:mean" if "acc:mean" in table and table["acc:mean"].notna().any() else "ppl:geomean"


def self_vs_real(self_runs: pd.DataFrame, real_runs: pd.DataFrame, data_column: str = "data") -> pd.DataFrame:
    """Per method: the best self-generated run against the best real run, both picked by the same metric
    (``selection_metric``), with their perplexities and (where tasks ran) accuracies and the difference in
    points. 05 passes the base source as the real runs; F4 passes every real source."""
    metric = selection_metric(pd.concat([self_runs, real_runs]))
    pick = (lambda d: d.loc[d[metric].idxmax()]) if metric == "acc:mean" else (lambda d: d.loc[d[metric].idxmin()])
    rows = []
    for method, selfgen in self_runs.groupby("method_label"):
        real = real_runs[real_runs["method_label"] == method]
        if selfgen.empty or real.empty:
            continue
        best_self, best_real = pick(selfgen), pick(real)
        row = {"method_label": method, "picked by": metric, "best self": best_self[data_column],
               "self ppl": best_self["ppl:geomean"], "best real": best_real["calibration.source"],
               "real ppl": best_real["ppl:geomean"], "self_key": best_self["key"], "real_key": best_real["key"]}
        if metric == "acc:mean":
            row |= {"self acc": best_self["acc:mean"], "real acc": best_real["acc:mean"],
                    "self - real (points)": 100 * (best_self["acc:mean"] - best_real["acc:mean"])}
        rows.append(row)
    return pd.DataFrame(rows)


def self_calibration_analysis(table: pd.DataFrame) -> dict:
    """Friedman tests of the data (self schedules, real, random) over (method, text) and (method, task) blocks,
    and the best self-generated set against the real one."""
    keep = ["method_label", "data"]
    tests = []
    for what, columns in (("perplexity per text", ppl_columns(table)), ("accuracy per task", task_columns(table))):
        if columns:
            tests.append(_friedman_over(table, columns, "data", keep, what)[0])
    comparison = self_vs_real(table[table["kind"] == "self"], table[table["kind"] == "real"])
    random_ppl = table[table["kind"] == "random"].groupby("method_label")["ppl:geomean"].first()
    comparison["random ppl"] = comparison["method_label"].map(random_ppl)
    return {"tests": tests, "comparison": comparison}


def self_calibration_finding(analysis: dict) -> str:
    sentences = []
    for _, r in analysis["comparison"].iterrows():
        s = (f"{r.method_label}: best self-generated set by {r['picked by']} ({r['best self']}) perplexity "
             f"{r['self ppl']:.1f} vs {r['best real']} {r['real ppl']:.1f} vs random-vocab {r['random ppl']:.1f}")
        if "self - real (points)" in r and not pd.isna(r["self - real (points)"]):
            s += (f"; mean accuracy self {r['self acc']:.3f} vs real {r['real acc']:.3f} "
                  f"({r['self - real (points)']:+.1f} points)")
        sentences.append(s)
    tests = analysis["tests"]
    return "; ".join(sentences) + (f". Friedman across data: p {fmt(tests[0]['p_value'], 4)}" if tests else "") + "."
