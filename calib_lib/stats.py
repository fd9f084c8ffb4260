"""Statistics for the studies: thin wrappers over scipy, statsmodels and scikit-posthocs.

Every function takes a tidy DataFrame (one row per observation) and returns a tidy table or a small
dict the notebooks print, with the test's name, statistic, p-value, an effect size and the n behind it,
so a reader can check each claim. None of the tests is written by hand.

Small samples are the rule here (3 calibration sets, 5 sources): functions return NaN with a
``note`` instead of raising when a test is undefined (fewer than two groups, a constant metric), and
the bootstrap uses the percentile method, which stays defined for n = 2.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scikit_posthocs as sp
from scipy import stats
from statsmodels.stats.multitest import multipletests


def _groups(df: pd.DataFrame, value: str, group: str) -> tuple[list[str], list[np.ndarray]]:
    names, arrays = [], []
    for name, part in df.groupby(group, sort=True):
        values = part[value].dropna().to_numpy(dtype=float)
        if len(values):
            names.append(name)
            arrays.append(values)
    return names, arrays


def _undefined(test: str, note: str, **extra) -> dict:
    return {"test": test, "statistic": np.nan, "p_value": np.nan, "effect_size": np.nan,
            "effect": "", "note": note, **extra}


def kruskal(df: pd.DataFrame, value: str, group: str) -> dict:
    """Kruskal-Wallis H across groups; effect size epsilon^2 = (H - k + 1) / (n - k) (Tomczak & Tomczak 2014)."""
    names, arrays = _groups(df, value, group)
    n, k = sum(len(a) for a in arrays), len(arrays)
    if k < 2 or n <= k:
        return _undefined("Kruskal-Wallis", f"needs two groups and more observations than groups (k={k}, n={n})",
                          k=k, n=n)
    if np.ptp(np.concatenate(arrays)) == 0:
        return _undefined("Kruskal-Wallis", "all values are equal", k=k, n=n)
    result = stats.kruskal(*arrays)
    epsilon2 = max(0.0, (result.statistic - k + 1) / (n - k))
    return {"test": "Kruskal-Wallis", "statistic": float(result.statistic), "p_value": float(result.pvalue),
            "effect_size": float(epsilon2), "effect": "epsilon^2", "k": k, "n": n, "note": ""}


def dunn(df: pd.DataFrame, value: str, group: str, p_adjust: str = "holm") -> pd.DataFrame:
    """Dunn's post-hoc test after Kruskal-Wallis: one row per pair, p-values adjusted (Holm by default)."""
    names, arrays = _groups(df, value, group)
    if len(names) < 2:
        return pd.DataFrame(columns=["a", "b", "p_adjusted"])
    matrix = sp.posthoc_dunn(arrays, p_adjust=p_adjust)
    rows = [{"a": names[i], "b": names[j], "p_adjusted": float(matrix.iloc[i, j])}
            for i in range(len(names)) for j in range(i + 1, len(names))]
    return pd.DataFrame(rows).sort_values("p_adjusted", ignore_index=True)


def friedman(df: pd.DataFrame, value: str, group: str, block: str) -> dict:
    """Friedman test of `group` with repeated `block`s (e.g. sources within each method x set);
    effect size Kendall's W = chi2 / (b (k - 1)). Blocks missing any group are dropped."""
    wide = df.pivot_table(index=block, columns=group, values=value, aggfunc="mean").dropna()
    b, k = wide.shape
    if k < 3 or b < 2:
        return _undefined("Friedman", f"needs at least 3 groups and 2 complete blocks (k={k}, blocks={b})",
                          k=k, n=b)
    if np.ptp(wide.to_numpy()) == 0:
        return _undefined("Friedman", "all values are equal", k=k, n=b)
    result = stats.friedmanchisquare(*[wide[c].to_numpy() for c in wide.columns])
    return {"test": "Friedman", "statistic": float(result.statistic), "p_value": float(result.pvalue),
            "effect_size": float(result.statistic / (b * (k - 1))), "effect": "Kendall's W",
            "k": k, "n": b, "note": ""}


def nemenyi(df: pd.DataFrame, value: str, group: str, block: str) -> pd.DataFrame:
    """Nemenyi post-hoc test after Friedman, one row per pair."""
    wide = df.pivot_table(index=block, columns=group, values=value, aggfunc="mean").dropna()
    if wide.shape[1] < 2 or wide.shape[0] < 2:
        return pd.DataFrame(columns=["a", "b", "p_adjusted"])
    matrix = sp.posthoc_nemenyi_friedman(wide.to_numpy())
    names = list(wide.columns)
    rows = [{"a": names[i], "b": names[j], "p_adjusted": float(matrix.iloc[i, j])}
            for i in range(len(names)) for j in range(i + 1, len(names))]
    return pd.DataFrame(rows).sort_values("p_adjusted", ignore_index=True)


def brown_forsythe(df: pd.DataFrame, value: str, group: str) -> dict:
    """Levene's test centred on the median (Brown-Forsythe) for unequal spread between groups;
    effect size: ratio of the largest to the smallest group standard deviation."""
    names, arrays = _groups(df, value, group)
    if len(arrays) < 2 or min(len(a) for a in arrays) < 2:
        return _undefined("Brown-Forsythe", "needs two groups with at least two observations each",
                          k=len(arrays), n=sum(len(a) for a in arrays))
    sds = [float(np.std(a, ddof=1)) for a in arrays]
    if max(sds) == 0:
        return _undefined("Brown-Forsythe", "no group varies", k=len(arrays), n=sum(len(a) for a in arrays))
    result = stats.levene(*arrays, center="median")
    ratio = max(sds) / min(sds) if min(sds) > 0 else np.inf
    return {"test": "Brown-Forsythe", "statistic": float(result.statistic), "p_value": float(result.pvalue),
            "effect_size": float(ratio), "effect": "SD ratio (max/min)", "k": len(arrays),
            "n": sum(len(a) for a in arrays), "note": "", "sd": dict(zip(names, sds))}


def bootstrap_ci(values, statistic=np.mean, level: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI (scipy.stats.bootstrap); (nan, nan) for fewer than two values."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return (np.nan, np.nan)
    if np.ptp(values) == 0:
        return (float(values[0]), float(values[0]))
    result = stats.bootstrap((values,), statistic, confidence_level=level, n_resamples=n_resamples,
                             method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def describe(df: pd.DataFrame, value: str, by: list[str] | str, level: float = 0.95) -> pd.DataFrame:
    """n, mean, standard deviation, range and a bootstrap CI of the mean for each group."""
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, part in df.groupby(by, sort=True):
        values = part[value].dropna().to_numpy(dtype=float)
        low, high = bootstrap_ci(values, level=level)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "n": len(values), "mean": values.mean() if len(values) else np.nan,
                     "sd": values.std(ddof=1) if len(values) > 1 else np.nan,
                     "min": values.min() if len(values) else np.nan, "max": values.max() if len(values) else np.nan,
                     "range": np.ptp(values) if len(values) else np.nan, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def _spearman(x: np.ndarray, y: np.ndarray) -> dict:
    """Spearman's rho; the p-value is an exact permutation test for small n (the t approximation
    scipy uses gives p = 0 for a perfect rank order of 3 points, where the exact p is 1/3), seeded
    Monte Carlo above 8 points."""
    rho = float(stats.spearmanr(x, y).statistic)
    result = stats.permutation_test((x, y), lambda a, b: stats.spearmanr(a, b).statistic,
                                    permutation_type="pairings", n_resamples=9999,
                                    alternative="two-sided", rng=np.random.default_rng(0))
    return {"rho": rho, "p_value": float(result.pvalue), "p_method": "exact permutation" if len(x) <= 7
            else "permutation (9,999 resamples)"}


def spearman_trend(df: pd.DataFrame, x: str, y: str, by: list[str] | str | None = None) -> pd.DataFrame:
    """Spearman's rho between x and y (a monotone trend), per group of `by`, with permutation p-values
    (Holm-adjusted across groups in ``p_holm``)."""
    by = [] if by is None else ([by] if isinstance(by, str) else list(by))
    parts = df.groupby(by, sort=True) if by else [((), df)]
    rows = []
    for key, part in parts:
        part = part[[x, y]].dropna()
        key = key if isinstance(key, tuple) else (key,)
        row = {**dict(zip(by, key)), "n": len(part), "rho": np.nan, "p_value": np.nan}
        if len(part) >= 3 and part[x].nunique() > 1 and part[y].nunique() > 1:
            row.update(_spearman(part[x].to_numpy(dtype=float), part[y].to_numpy(dtype=float)))
        rows.append(row)
    table = pd.DataFrame(rows)
    ok = table["p_value"].notna()
    table["p_holm"] = np.nan
    if ok.any():
        table.loc[ok, "p_holm"] = multipletests(table.loc[ok, "p_value"], method="holm")[1]
    return table


def mann_whitney(a, b) -> dict:
    """Two-sided Mann-Whitney U; effect size: rank-biserial correlation r = 2U/(n_a n_b) - 1, with U the
    count of pairs where a is larger (ties count half): r > 0 when a tends to be larger, +1 when every a is."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) == 0 or len(b) == 0:
        return _undefined("Mann-Whitney U", "an empty group", n=len(a) + len(b))
    result = stats.mannwhitneyu(a, b, alternative="two-sided")
    r = 2 * result.statistic / (len(a) * len(b)) - 1
    return {"test": "Mann-Whitney U", "statistic": float(result.statistic), "p_value": float(result.pvalue),
            "effect_size": float(r), "effect": "rank-biserial r", "n": len(a) + len(b), "note": ""}


def verdict(p_value: float, direction_ok: bool, alpha: float = 0.05) -> str:
    """'holds' (significant and in the claimed direction), 'does not hold' (significant the other way
    or in the wrong direction), or 'inconclusive' (not significant or undefined)."""
    if p_value is None or np.isnan(p_value):
        return "inconclusive"
    if p_value < alpha:
        return "holds" if direction_ok else "does not hold"
    return "inconclusive"


def table(results: list[dict] | dict) -> pd.DataFrame:
    """Test results as one printable table (statistic, p, effect size), rounded for reading."""
    results = [results] if isinstance(results, dict) else results
    frame = pd.DataFrame([{k: v for k, v in r.items() if not isinstance(v, dict)} for r in results])
    return frame.round({"statistic": 3, "p_value": 4, "effect_size": 3})


def wilcoxon(differences) -> dict:
    """Wilcoxon signed-rank test that paired differences centre on zero; effect size: matched-pairs
    rank-biserial correlation (positive: differences mostly above zero)."""
    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d)]
    if len(d) < 2 or np.all(d == 0):
        return _undefined("Wilcoxon signed-rank", "needs two non-zero paired differences", n=len(d))
    result = stats.wilcoxon(d)
    ranks = stats.rankdata(np.abs(d[d != 0]))
    positive, total = ranks[d[d != 0] > 0].sum(), ranks.sum()
    r = (2 * positive - total) / total
    return {"test": "Wilcoxon signed-rank", "statistic": float(result.statistic), "p_value": float(result.pvalue),
            "effect_size": float(r), "effect": "rank-biserial r", "n": len(d), "note": "",
            "median": float(np.median(d))}


def centered(table: pd.DataFrame, value: str, by: list[str]) -> pd.Series:
    """Each value minus the mean of its group: the draw-to-draw part of a metric (e.g. by method x source)."""
    return table[value] - table.groupby(by)[value].transform("mean")


def ranges(table: pd.DataFrame, values: list[str], by: list[str]) -> pd.DataFrame:
    """Long table of max - min of each value column within each group (e.g. across calibration sets)."""
    rows = []
    for key, part in table.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        for column in values:
            column_values = part[column].dropna()
            if len(column_values) >= 2:
                rows.append({**dict(zip(by, key)), "metric": column,
                             "range": float(column_values.max() - column_values.min()),
                             "sd": float(column_values.std(ddof=1)), "n": len(column_values)})
    return pd.DataFrame(rows)


def plateau(table: pd.DataFrame, x: str, y: str, by: str | list[str], lower_is_better: bool = True) -> pd.DataFrame:
    """How a metric moves along x (e.g. num_samples) per group: its value at the smallest, second-largest
    and largest x, the total change, and the share of that change left for the last step (near 0: the
    metric had plateaued; near 1: it was still improving)."""
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, part in table.groupby(by, sort=True):
        curve = part.groupby(x)[y].mean().dropna().sort_index()
        key = key if isinstance(key, tuple) else (key,)
        if len(curve) < 3:
            continue
        first, before, last = curve.iloc[0], curve.iloc[-2], curve.iloc[-1]
        total = first - last if lower_is_better else last - first
        step = before - last if lower_is_better else last - before
        rows.append({**dict(zip(by, key)), "x_first": curve.index[0], "x_before": curve.index[-2],
                     "x_last": curve.index[-1], "first": float(first), "before": float(before), "last": float(last),
                     "total_gain": float(total), "last_step_gain": float(step),
                     "last_step_share": float(step / total) if total != 0 else np.nan})
    return pd.DataFrame(rows)
