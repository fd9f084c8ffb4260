"""The published claims about calibration data, each turned into a test with a verdict.

Claims (Williams & Aletras 2024; Williams, Chrysostomou & Aletras 2024), as tested here:

F1  pruning is more sensitive to the calibration source and draw than quantization
F2  uniformly random vocabulary tokens are the worst calibration data for every method
F3  with more samples quantization plateaus early while pruning keeps improving
F4  self-generated calibration data is within 1 point of the best real source on mean accuracy
F5  single tasks swing far more across calibration sets than the task mean does
F6  perplexity varies little across calibration sets while task accuracy varies a lot

Each function takes the results tables of the study grids (``calib_lib.study``) and returns one row:
claim, test, statistic, p-value, effect size, the numbers behind it, and a verdict: ``holds``,
``does not hold`` or ``inconclusive`` (at this budget). The rules are written next to each function
and printed with the verdicts, so a reader can disagree with a rule rather than with a number.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import stats, study
from .study import summaries

ALPHA = 0.05

CLAIMS = {
    "F1": "Pruning is more sensitive to the calibration source and draw than quantization",
    "F2": "Uniformly random vocabulary tokens are the worst calibration data for every method",
    "F3": "With more calibration samples quantization plateaus early, while pruning keeps improving",
    "F4": "Self-generated calibration data is within 1 point of the best real source on mean accuracy",
    "F5": "Single tasks swing far more across calibration sets than the task mean does",
    "F6": "Perplexity varies little across calibration sets while task accuracy varies a lot",
}


def _row(claim: str, test: dict | None, verdict: str, summary: str, **numbers) -> dict:
    test = test or {}
    return {"claim": claim, "statement": CLAIMS[claim], "verdict": verdict,
            "test": test.get("test", ""), "statistic": test.get("statistic", np.nan),
            "p_value": test.get("p_value", np.nan), "effect_size": test.get("effect_size", np.nan),
            "effect": test.get("effect", ""), "n": test.get("n", np.nan), "summary": summary, **numbers}


def _metric(table: pd.DataFrame) -> tuple[str, str]:
    """The headline metric: mean accuracy where tasks ran, else log perplexity (geometric mean)."""
    if study.has_accuracy(table):
        return "acc:mean", "mean accuracy"
    return "log_ppl", "log perplexity (no task data here)"


def _with_log_ppl(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(log_ppl=np.log(table["ppl:geomean"].astype(float)))


def f1_frame(source_table: pd.DataFrame, variance_table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Every real calibration set's run, with its headline metric's deviation from its method's mean."""
    pooled = pd.concat([source_table, variance_table]).drop_duplicates("key")
    pooled = _with_log_ppl(pooled[pooled["calibration.source"] != "random-vocab"])
    metric, name = _metric(pooled)
    return pooled.assign(deviation=stats.centered(pooled, metric, ["method_label"])), name


def f1_sensitivity(source_table: pd.DataFrame, variance_table: pd.DataFrame) -> dict:
    """Rule: pool every real calibration set (all sources at set 0, all sets of the variance sources),
    take each run's deviation from its method's mean, and compare the two families' spread with
    Brown-Forsythe. Holds: p < 0.05 and pruning's SD is the larger; does not hold: p < 0.05 the other way."""
    pooled, name = f1_frame(source_table, variance_table)
    if pooled["family"].nunique() < 2:
        return _row("F1", None, "inconclusive", "needs a pruning and a quantization method")
    test = stats.brown_forsythe(pooled, "deviation", "family")
    sd = test.get("sd") or {}
    pruning, quantization = sd.get("pruning", np.nan), sd.get("quantization", np.nan)
    verdict = stats.verdict(test["p_value"], pruning > quantization)
    summary = (f"SD of {name} across sources and sets: pruning {pruning:.4g}, quantization {quantization:.4g} "
               f"({len(pooled)} runs)")
    return _row("F1", test, verdict, summary, sd_pruning=pruning, sd_quantization=quantization)


def f2_random_worst(source_table: pd.DataFrame) -> dict:
    """Rule: in every (method, evaluation text or task) block, is random-vocab the worst source? A
    binomial test against the chance rate 1/k (k sources). Holds: p < 0.05 and random-vocab is worst on
    the headline metric for every method; does not hold: it is not worst for some method and the
    binomial test is not significant; otherwise inconclusive."""
    table = _with_log_ppl(source_table)
    metric, name = _metric(table)
    k = table["calibration.source"].nunique()
    blocks = study.ppl_columns(table) + study.task_columns(table)
    worst, total = 0, 0
    for _, part in table.groupby("method_label"):
        by_source = part.set_index("calibration.source")
        for column in blocks:
            values = by_source[column].dropna()
            if "random-vocab" not in values.index or len(values) < 2:
                continue
            total += 1
            bad = values.idxmax() if column.startswith("ppl:") else values.idxmin()
            worst += int(bad == "random-vocab")
    if total == 0 or k < 2:
        return _row("F2", None, "inconclusive", "needs random-vocab and at least one real source")
    binom = sps.binomtest(worst, total, 1 / k, alternative="greater")
    test = {"test": "binomial (random-vocab worst per block vs chance 1/k)", "statistic": worst / total,
            "p_value": float(binom.pvalue), "effect_size": worst / total - 1 / k, "effect": "excess over chance",
            "n": total}
    ranks = study.rank_of(table, metric, "calibration.source", "random-vocab", lower_is_better=metric == "log_ppl")
    worst_everywhere = bool(len(ranks)) and bool((ranks["rank"] == ranks["of"]).all())
    if binom.pvalue < ALPHA and worst_everywhere:
        verdict = "holds"
    elif not worst_everywhere and binom.pvalue >= ALPHA:
        verdict = "does not hold"
    else:
        verdict = "inconclusive"
    per_method = "; ".join(f"{r.method_label}: rank {r['rank']} of {r['of']} (best {r.best})" for _, r in ranks.iterrows())
    summary = f"random-vocab worst in {worst} of {total} blocks (chance {1 / k:.2f}); on {name}: {per_method}"
    return _row("F2", test, verdict, summary, worst_blocks=worst, blocks=total)


def f3_plateau(count_table: pd.DataFrame) -> dict:
    """Rule: the share of each method's total perplexity improvement that the last doubling of
    num_samples still brought. Holds: every pruning method's share exceeds every quantization method's
    and pruning's Spearman trend is significant (p < 0.05); does not hold: some quantization method's
    share is at least a pruning method's; otherwise inconclusive."""
    table = _with_log_ppl(count_table)
    plateau = stats.plateau(table, "calibration.num_samples", "log_ppl", "method_label")
    if plateau.empty:
        return _row("F3", None, "inconclusive", "needs at least three sample counts")
    methods = table.drop_duplicates("method_label").set_index("method_label")
    plateau["family"] = plateau["method_label"].map(methods["family"])
    pruning = plateau[plateau.family == "pruning"]
    quantization = plateau[plateau.family == "quantization"]
    if pruning.empty or quantization.empty:
        return _row("F3", None, "inconclusive", "needs a pruning and a quantization method")
    trend = stats.spearman_trend(table[table["family"] == "pruning"], "calibration.num_samples", "log_ppl",
                                 by="method_label")
    p = float(trend["p_holm"].max())
    rho = float(trend["rho"].max())
    test = {"test": "Spearman (pruning log ppl vs num_samples, permutation p, Holm)", "statistic": rho,
            "p_value": p, "effect_size": float(pruning["last_step_share"].min() - quantization["last_step_share"].max()),
            "effect": "min pruning - max quantization last-step share", "n": int(trend["n"].sum())}
    separated = pruning["last_step_share"].min() > quantization["last_step_share"].max()
    if separated and p < ALPHA and rho < 0:
        verdict = "holds"
    elif not separated:
        verdict = "does not hold"
    else:
        verdict = "inconclusive"
    shares = "; ".join(f"{r.method_label}: {100 * r.last_step_share:.0f}% of the log-perplexity improvement from "
                       f"{r.x_first} to {r.x_last} samples came with the last step ({r.x_before} -> {r.x_last})"
                       for _, r in plateau.iterrows())
    present = set(methods["method"])
    note = "" if present & {"sparsegpt"} else " (the claim names SparseGPT; this profile prunes with " \
        f"{', '.join(sorted(present & {'wanda', 'magnitude'}))})"
    return _row("F3", test, verdict, shares + note, methods=", ".join(sorted(present)))


def f4_self_generated(source_table: pd.DataFrame, self_table: pd.DataFrame) -> dict:
    """Rule: per method, per task, accuracy of the best self-generated set minus that of the best real
    source (both chosen by mean accuracy); bootstrap 95% CI of the mean difference over (method, task).
    Holds: the CI's lower end is at or above -1 point; does not hold: its upper end is below -1 point;
    otherwise inconclusive. Picking the best of several noisy real sources favours real data (the
    winner's curse), as in the papers' own comparison."""
    if not study.has_accuracy(source_table) or not study.has_accuracy(self_table):
        return _row("F4", None, "inconclusive", "task accuracy is unavailable here (no task data)")
    tasks = study.task_columns(self_table)
    real = source_table[source_table["calibration.source"] != "random-vocab"]
    comparison = summaries.self_vs_real(self_table[self_table["kind"] == "self"], real)
    runs = pd.concat([self_table, source_table]).drop_duplicates("key").set_index("key")
    diffs, per_method = [], []
    for _, r in comparison.iterrows():
        best_self, best_real = runs.loc[r["self_key"]], runs.loc[r["real_key"]]
        diffs += [float(best_self[t] - best_real[t]) for t in tasks]
        per_method.append(f"{r.method_label}: {r['best self']} {r['self acc']:.3f} vs "
                          f"{r['best real']} {r['real acc']:.3f} ({r['self - real (points)']:+.1f} points)")
    if len(diffs) < 2:
        return _row("F4", None, "inconclusive", "needs self-generated and real runs with task accuracy")
    low, high = stats.bootstrap_ci(diffs)
    mean = float(np.mean(diffs))
    test = {"test": "bootstrap 95% CI of per-task difference (self - best real)", "statistic": 100 * mean,
            "p_value": np.nan, "effect_size": 100 * mean, "effect": "mean difference (points)", "n": len(diffs)}
    verdict = "holds" if low >= -0.01 else "does not hold" if high < -0.01 else "inconclusive"
    summary = "; ".join(per_method) + f"; CI of the mean per-task difference [{100 * low:+.1f}, {100 * high:+.1f}] points"
    return _row("F4", test, verdict, summary, ci_low_points=100 * low, ci_high_points=100 * high)


def f5_frame(variance_table: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Range across sets of each task (with its (method, source)'s mean-accuracy range) and the mean's ranges."""
    return summaries.task_swing(variance_table)


def f5_task_swing(variance_table: pd.DataFrame) -> dict:
    """Rule: within each (method, source), the range across calibration sets of each task's accuracy
    minus the range of the mean accuracy; Wilcoxon signed-rank over all (method, source, task). Holds:
    p < 0.05 and the median excess is positive; does not hold: p < 0.05 and negative. (An average of
    noisy tasks varies less than its parts by construction: the claim is about how much less.)"""
    tasks = study.task_columns(variance_table)
    if not tasks:
        return _row("F5", None, "inconclusive", "task accuracy is unavailable here (no task data)")
    per_task, mean_range = f5_frame(variance_table)
    if per_task.empty:
        return _row("F5", None, "inconclusive", "needs at least two sets per source")
    excess = per_task["range"] - per_task["mean_range"]
    test = stats.wilcoxon(excess)
    verdict = stats.verdict(test["p_value"], test.get("median", 0) > 0)
    ratio = per_task["range"].median() / mean_range.median() if mean_range.median() > 0 else np.inf
    summary = (f"median range across sets: single task {per_task['range'].median():.3f}, task mean "
               f"{mean_range.median():.3f} (x{ratio:.1f}); largest single-task swing {per_task['range'].max():.3f}")
    return _row("F5", test, verdict, summary, median_task_range=float(per_task["range"].median()),
                median_mean_range=float(mean_range.median()))


def f6_frame(variance_table: pd.DataFrame) -> pd.DataFrame:
    """Relative range across sets (range / mean) of every perplexity text and task accuracy per (method, source)."""
    texts, tasks = study.ppl_columns(variance_table), study.task_columns(variance_table)
    keys = ["method_label", "calibration.source"]
    swing = stats.ranges(variance_table, texts + tasks, keys)
    if swing.empty:
        return swing.assign(relative_range=[], measure=[])
    means = variance_table.groupby(keys)[texts + tasks].mean()
    swing["relative_range"] = [row["range"] / means.loc[(row["method_label"], row["calibration.source"]), row["metric"]]
                               for _, row in swing.iterrows()]
    swing["measure"] = np.where(swing["metric"].str.startswith("ppl:"), "perplexity (per text)",
                                "accuracy (per task)")
    return swing


def f6_ppl_vs_accuracy(variance_table: pd.DataFrame) -> dict:
    """Rule: relative range across calibration sets (range / mean) of each perplexity text and of each
    task's accuracy, per (method, source); Mann-Whitney U between the two groups. Holds: p < 0.05 and
    accuracy's median relative range is the larger; does not hold: p < 0.05 the other way."""
    tasks = study.task_columns(variance_table)
    if not tasks:
        return _row("F6", None, "inconclusive", "task accuracy is unavailable here (no task data)")
    swing = f6_frame(variance_table)
    ppl = swing[swing.metric.str.startswith("ppl:")]["relative_range"]
    acc = swing[swing.metric.str.startswith("acc:")]["relative_range"]
    test = stats.mann_whitney(acc, ppl)
    verdict = stats.verdict(test["p_value"], acc.median() > ppl.median())
    summary = (f"median relative range across sets: perplexity {100 * ppl.median():.1f}%, task accuracy "
               f"{100 * acc.median():.1f}% ({len(ppl)} and {len(acc)} (method, source, metric) cells)")
    return _row("F6", test, verdict, summary, median_rel_range_ppl=float(ppl.median()),
                median_rel_range_acc=float(acc.median()))


def verdicts(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """All six rows from the study tables: source_domain, seed_variance, sample_count, self_calibration."""
    rows = [f1_sensitivity(tables["source_domain"], tables["seed_variance"]),
            f2_random_worst(tables["source_domain"]),
            f3_plateau(tables["sample_count"]),
            f4_self_generated(tables["source_domain"], tables["self_calibration"]),
            f5_task_swing(tables["seed_variance"]),
            f6_ppl_vs_accuracy(tables["seed_variance"])]
    return pd.DataFrame(rows)
