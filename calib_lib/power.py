"""Measurement power: what a study's budget can detect, and what a test can reach at all.

Two questions decide whether a comparison in the notebooks is worth running with a given budget:
the minimum detectable effect (MDE: the true difference a test finds with probability `power` at level
`alpha`), and the smallest p-value the test can produce with that many points (a rank test on 3 sets
cannot get below 0.05 however large the effect). Both use closed forms, documented per function, and sit
at the statistics layer: numpy, scipy and pandas only.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import optimize, stats


def _z_sum(alpha: float, power: float, two_sided: bool) -> tuple[float, float]:
    """The normal quantiles for the test's level and the wanted power: MDE = (z_alpha + z_power) * SE."""
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must lie in (0, 1): got alpha={alpha}, power={power}")
    return float(stats.norm.ppf(1 - alpha / 2 if two_sided else 1 - alpha)), float(stats.norm.ppf(power))


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent documents: sqrt(p (1 - p) / n)."""
    if n < 1 or not 0 <= p <= 1:
        raise ValueError(f"needs n >= 1 and 0 <= p <= 1: got n={n}, p={p}")
    return math.sqrt(p * (1 - p) / n)


def min_detectable_effect(n: int, sd: float, alpha: float = 0.05, power: float = 0.8,
                          two_sided: bool = True) -> float:
    """Smallest true mean difference over n paired units (per-unit SD of the difference `sd`) that a test
    of mean 0 detects with probability `power`: (z_{1-alpha/2} + z_power) * sd / sqrt(n). Normal
    approximation (known SD): a t-test on small n has slightly less power (about 0.79 instead of 0.80 at
    n = 100; noticeably less below n = 20). For two independent groups of n each, pass sd * sqrt(2)."""
    if n < 1 or sd < 0:
        raise ValueError(f"needs n >= 1 and sd >= 0: got n={n}, sd={sd}")
    z_alpha, z_power = _z_sum(alpha, power, two_sided)
    return (z_alpha + z_power) * sd / math.sqrt(n)


def accuracy_mde(n_docs: int, p: float = 0.5, discordance: float | None = None, alpha: float = 0.05,
                 power: float = 0.8, two_sided: bool = True) -> float:
    """Smallest accuracy difference delta between two runs on the same n_docs documents that McNemar's test
    detects with probability `power`. With discordance psi (share of documents exactly one run gets right),
    the per-document difference has variance psi under the null and psi - delta^2 under the alternative;
    delta solves delta sqrt(n) = z_alpha sqrt(psi) + z_power sqrt(psi - delta^2) (normal approximation,
    Connor 1987). Default psi = 2 p (1 - p): the two runs err independently at accuracy p, the most
    discordance two runs at that accuracy can be expected to show without being anti-correlated, so the
    default is conservative; compressed variants of one model agree far more often (measure psi and pass
    it). The exact (discrete) test is slightly conservative: about 0.77 power instead of 0.80 at n = 500,
    psi = 0.2. NaN when no delta <= psi reaches the power (too few documents)."""
    psi = 2 * p * (1 - p) if discordance is None else discordance
    if n_docs < 1 or not 0 < psi <= 1:
        raise ValueError(f"needs n_docs >= 1 and a discordance in (0, 1]: got n_docs={n_docs}, discordance={psi}")
    z_alpha, z_power = _z_sum(alpha, power, two_sided)

    def gap(delta: float) -> float:
        return delta * math.sqrt(n_docs) - z_alpha * math.sqrt(psi) - z_power * math.sqrt(max(psi - delta ** 2, 0.0))

    if gap(psi) <= 0:
        return float("nan")
    return float(optimize.brentq(gap, 0.0, psi))


def rho_mde(n: int, alpha: float = 0.05, power: float = 0.8, two_sided: bool = True) -> float:
    """Smallest correlation detectable on n points: tanh((z_alpha + z_power) / sqrt(n - 3)) (Fisher z
    approximation, which holds for Pearson and approximately for Spearman); NaN below 4 points."""
    if n < 4:
        return float("nan")
    z_alpha, z_power = _z_sum(alpha, power, two_sided)
    return math.tanh((z_alpha + z_power) / math.sqrt(n - 3))


def _smallest_binomial(n: int, p0: float | None) -> float:
    if p0 is None or not 0 < p0 < 1:
        raise ValueError(f"the binomial test needs the chance rate p0 in (0, 1), e.g. p0=0.25: got {p0}")
    # the two-sided (minlike) p is smallest at the least likely outcome, which is all or none correct
    return min(stats.binomtest(0, n, p0).pvalue, stats.binomtest(n, n, p0).pvalue)


# Each entry: (number of sizes, smallest two-sided p). No ties, exact null distributions except Friedman.
_SMALLEST = {
    # signed-rank: all 2^n sign patterns equally likely; all differences one sign is 1 of them per tail
    "wilcoxon": (1, lambda n: 2 / 2 ** n),
    # sign test (and McNemar on n discordant pairs): Binomial(n, 1/2), all n on one side
    "sign": (1, lambda n: 2 / 2 ** n),
    "mcnemar": (1, lambda n: 2 / 2 ** n),
    # permutation Spearman: n! orderings equally likely; the perfect order and its reverse
    "spearman": (1, lambda n: 2 / math.factorial(n)),
    # exact Mann-Whitney: C(n1 + n2, n1) splits equally likely; full separation either way
    "mann_whitney": (2, lambda n1, n2: 2 / math.comb(n1 + n2, n1)),
    # Friedman (scipy's chi-square approximation): the largest statistic, every block ranking alike, is b (k - 1)
    "friedman": (2, lambda k, b: float(stats.chi2.sf(b * (k - 1), k - 1))),
}


def smallest_p(test: str, *sizes: int, p0: float | None = None) -> float:
    """Smallest two-sided p-value `test` can return with this many points, however large the effect:
    "wilcoxon" (n pairs): 2 / 2^n; "sign" / "mcnemar" (n pairs / discordant pairs): 2 / 2^n; "spearman"
    (n points, permutation p): 2 / n!; "mann_whitney" (n1, n2, exact): 2 / C(n1 + n2, n1); "friedman"
    (k groups, b blocks): chi2_{k-1} survival at the maximum statistic b (k - 1); "binomial" (n trials,
    p0= the chance rate): the minlike two-sided p of all or none correct. Capped at 1."""
    test = test.lower()
    if test == "binomial":
        count, formula = 1, (lambda n: _smallest_binomial(n, p0))
    elif test in _SMALLEST:
        count, formula = _SMALLEST[test]
    else:
        raise ValueError(f"unknown test {test!r}; known: {', '.join(sorted([*_SMALLEST, 'binomial']))}")
    if len(sizes) != count or any(int(s) != s or s < 1 for s in sizes):
        raise ValueError(f"{test} takes {count} positive integer size(s), got {sizes}")
    return float(min(1.0, formula(*(int(s) for s in sizes))))


def budget_report(docs_per_task: int, tasks: int = 1, sources: int = 5, sets_per_source: int = 3, runs: int = 1,
                  noise_sd: float | None = None, set_sd: float | None = None, score_sd: float | None = None,
                  accuracy: float = 0.5, discordance: float | None = None, blocks: int | None = None,
                  trend_points: int | None = None, alpha: float = 0.05, power: float = 0.8) -> pd.DataFrame:
    """MDE at `power` and the smallest reachable p for each comparison the notebooks make, for one budget.

    Budget: documents per task and tasks (per-document comparisons of two runs), sources and calibration
    sets per source, runs per set (repeats of the same set, whose spread is the numerical noise floor,
    `noise_sd`, in the metric's units), `set_sd` (SD of the metric between sets of one source, if known),
    `score_sd` (per-document SD of the difference of a continuous score between two runs), `accuracy` and
    `discordance` (see ``accuracy_mde``), `blocks` for the Friedman test of sources (default: tasks), and
    `trend_points` (points in a Spearman trend, e.g. sample counts x sets). Rows needing an unknown SD carry
    NaN in mde and say so. decidable: the smallest p is below alpha, i.e. the test can succeed at all."""
    rows = []

    def add(comparison, test, n, mde, unit, p_min, note=""):
        rows.append({"comparison": comparison, "test": test, "n": n, "mde": mde, "unit": unit,
                     "smallest_p": p_min, "decidable": bool(p_min < alpha), "note": note})

    docs = docs_per_task * tasks
    for label, n in [("one task", docs_per_task)] + ([("all tasks", docs)] if tasks > 1 else []):
        add(f"accuracy of two runs, {label}", "McNemar (exact)", n,
            accuracy_mde(n, accuracy, discordance, alpha, power), "accuracy", smallest_p("mcnemar", n),
            "discordance assumed 2p(1-p)" if discordance is None else "")
    if score_sd is not None:
        add("per-document score of two runs, all tasks", "paired bootstrap / sign-flip", docs,
            min_detectable_effect(docs, score_sd, alpha, power), "score", smallest_p("sign", docs))
    between_runs = np.nan if noise_sd is None else min_detectable_effect(runs, noise_sd * math.sqrt(2), alpha, power)
    add("metric of two sets, over their runs", "Mann-Whitney U", runs, between_runs, "metric",
        smallest_p("mann_whitney", runs, runs), "" if noise_sd is not None else "noise_sd unknown")
    # a source's mean over its sets varies with the sets drawn and with the run noise averaged over runs
    per_set_sd = (np.nan if set_sd is None or noise_sd is None
                  else math.sqrt(set_sd ** 2 + noise_sd ** 2 / runs))
    add("metric of two sources, over their sets", "Mann-Whitney U", sets_per_source,
        min_detectable_effect(sets_per_source, per_set_sd * math.sqrt(2), alpha, power)
        if not np.isnan(per_set_sd) else np.nan, "metric",
        smallest_p("mann_whitney", sets_per_source, sets_per_source),
        "" if not np.isnan(per_set_sd) else "set_sd or noise_sd unknown")
    blocks = tasks if blocks is None else blocks
    if sources >= 3 and blocks >= 1:          # stats.friedman needs three groups
        add("source effect across all sources", "Friedman", blocks, np.nan, "", smallest_p("friedman", sources, blocks),
            "no closed-form MDE")
    if trend_points is not None:
        add("monotone trend", "Spearman (permutation)", trend_points, rho_mde(trend_points, alpha, power), "rho",
            smallest_p("spearman", trend_points))
    return pd.DataFrame(rows)
