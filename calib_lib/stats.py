"""Statistics for the studies: thin wrappers over scipy, statsmodels and scikit-posthocs.

Every function takes a tidy DataFrame (one row per observation) and returns a tidy table or a small
dict the notebooks print, with the test's name, statistic, p-value, an effect size and the n behind it,
so a reader can check each claim. None of the tests is written by hand.

Small samples are the rule here (3 calibration sets, 5 sources): functions return NaN with a
``note`` instead of raising when a test is undefined (fewer than two groups, a constant metric), and
the bootstrap uses the percentile method, which stays defined for n = 2.
"""
from __future__ import annotations

import functools

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


# -- paired comparisons over documents and variance components (issue #16) --------------------------------

def _paired_arrays(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Two runs' per-document values as float arrays, pairs with a missing value on either side dropped."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if len(a) != len(b):
        raise ValueError(f"paired values need one value per document in each run: got {len(a)} and {len(b)}")
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep]


def _difference_of(statistic):
    """statistic(x) - statistic(y) as a scipy resampling statistic; vectorized when `statistic` takes axis=,
    which makes 2,000 resamples a single array operation instead of a Python loop."""
    try:
        statistic(np.zeros((1, 2)), axis=-1)
    except TypeError:
        return (lambda x, y: statistic(x) - statistic(y)), False
    return (lambda x, y, axis=-1: statistic(x, axis=axis) - statistic(y, axis=axis)), True


def paired_bootstrap(a, b, statistic=np.mean, level: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Difference statistic(a) - statistic(b) between two runs scored on the same documents (same order):
    0/1 correctness or a continuous score such as the gold-choice log-likelihood margin.

    CI: percentile bootstrap over documents (scipy.stats.bootstrap, paired=True: a document is resampled
    with both its values, so the between-document variance the two runs share cancels). p-value: paired
    sign-flip permutation test (scipy.stats.permutation_test, permutation_type="samples": each document's
    two values are swapped at random), two-sided; exact when 2**n <= n_resamples, otherwise Monte Carlo with
    floor 1 / (n_resamples + 1). For 0/1 data the exact version is McNemar's test (see ``mcnemar_exact``,
    which also reaches p-values below that floor). Pairs with a NaN on either side are dropped; a length
    mismatch raises ValueError; fewer than two documents give the ``_undefined`` result."""
    a, b = _paired_arrays(a, b)
    n = len(a)
    label = getattr(statistic, "__name__", "statistic")
    name = f"paired bootstrap ({label})"
    if n < 2:
        return _undefined(name, f"needs at least two documents scored by both runs (n={n})", n=n,
                          ci_low=np.nan, ci_high=np.nan)
    difference, vectorized = _difference_of(statistic)
    observed = float(difference(a, b))
    result = {"test": name, "statistic": observed, "effect_size": observed,
              "effect": f"{label}(a) - {label}(b)",
              "n": n, "level": level, "note": ""}
    if np.all(a == b):
        # identical runs: every resample and every swap gives 0, which scipy flags as degenerate
        return result | {"p_value": 1.0, "ci_low": 0.0, "ci_high": 0.0, "note": "the two runs agree on every document"}
    rng = np.random.default_rng(seed)
    ci = stats.bootstrap((a, b), difference, paired=True, vectorized=vectorized, confidence_level=level,
                         n_resamples=n_resamples, method="percentile", rng=rng).confidence_interval
    test = stats.permutation_test((a, b), difference, permutation_type="samples", vectorized=vectorized,
                                  n_resamples=n_resamples, alternative="two-sided", rng=rng)
    p_method = "exact sign-flip" if 2 ** n <= n_resamples else f"sign-flip ({n_resamples:,} resamples)"
    return result | {"p_value": float(test.pvalue), "ci_low": float(ci.low), "ci_high": float(ci.high),
                     "p_method": p_method}


def mcnemar_exact(correct_a, correct_b) -> dict:
    """Exact two-sided McNemar test of two runs' 0/1 correctness on the same documents: under the null the
    discordant documents split evenly, so the count only run a gets right is Binomial(discordant, 1/2)
    (scipy.stats.binomtest). statistic: the smaller discordant count (as statsmodels reports it);
    effect_size: accuracy(a) - accuracy(b) = (a_only - b_only) / n; odds_ratio: a_only / b_only (inf when
    b_only = 0, NaN without discordant pairs). Pairs with a NaN are dropped; values other than 0/1 raise."""
    a, b = _paired_arrays(correct_a, correct_b)
    if not np.all(np.isin(a, (0, 1)) & np.isin(b, (0, 1))):
        raise ValueError("McNemar's test needs 0/1 (or boolean) correctness per document")
    n = len(a)
    if n == 0:
        return _undefined("McNemar (exact)", "no document scored by both runs", n=0)
    a_only, b_only = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    discordant = a_only + b_only
    p_value = float(stats.binomtest(a_only, discordant, 0.5).pvalue) if discordant else 1.0
    odds = a_only / b_only if b_only else (np.inf if a_only else np.nan)
    return {"test": "McNemar (exact)", "statistic": float(min(a_only, b_only)), "p_value": p_value,
            "effect_size": (a_only - b_only) / n, "effect": "accuracy(a) - accuracy(b)", "odds_ratio": float(odds),
            "a_only": a_only, "b_only": b_only, "n_discordant": discordant, "n": n,
            "note": "" if discordant else "no discordant documents"}


def _nested_labels(df: pd.DataFrame, groups: list[str]) -> pd.DataFrame:
    """One label column per nesting depth naming the full path (source, source|set, ...), so a set called
    'seed0' in two sources is two different sets."""
    labels, path = {}, None
    for depth, column in enumerate(groups):
        part = df[column].astype(str)
        path = part if path is None else path + "\x1f" + part
        labels[f"_l{depth}"] = path
    return pd.DataFrame(labels, index=df.index)


def _anova_components(data: pd.DataFrame, depth: int) -> tuple[list[float], float]:
    """Method-of-moments (ANOVA) estimates for a balanced nested design. Mean squares come from statsmodels'
    sequential comparison of the nested OLS fits y ~ 1, y ~ level 0, y ~ level 1, ...; with m_j observations
    per level-j cell, E[MS_j] = s2_e + sum_{i >= j} m_i s2_i, solved from the deepest level up."""
    from statsmodels.formula.api import ols
    from statsmodels.stats.anova import anova_lm
    sizes = []
    for j in range(depth):
        counts = data.groupby(f"_l{j}").size()
        children = data.groupby(f"_l{j}")[f"_l{j + 1}"].nunique() if j + 1 < depth else None
        if counts.nunique() != 1 or (children is not None and children.nunique() != 1):
            raise ValueError(f"method='anova' needs a balanced design (level {j} cells differ in size); "
                             "use method='reml'")
        sizes.append(int(counts.iloc[0]))
    fits = [ols("_y ~ 1", data).fit()] + [ols(f"_y ~ C(_l{j})", data).fit() for j in range(depth)]
    if fits[-1].df_resid < 1:
        raise ValueError("no replicates inside the innermost group: its variance cannot be told from the residual")
    steps = anova_lm(*fits)
    mean_squares = (steps["ss_diff"] / steps["df_diff"]).to_numpy()[1:]
    residual = float(fits[-1].ssr / fits[-1].df_resid)
    upper = np.append(mean_squares[1:], residual)
    return [float((ms - below) / m) for ms, below, m in zip(mean_squares, upper, sizes)], residual


def _reml_components(data: pd.DataFrame, depth: int) -> tuple[list[float], float]:
    """REML fit of y = mu + u_source + u_set(source) + ... + e with statsmodels MixedLM: the outermost
    factor is the grouping (a random intercept), each deeper factor a variance component within it."""
    import warnings
    from statsmodels.regression.mixed_linear_model import MixedLM
    vc = {f"_l{j}": f"0 + C(_l{j})" for j in range(1, depth)}
    model = MixedLM.from_formula("_y ~ 1", data, groups="_l0", re_formula="1", vc_formula=vc or None)
    with warnings.catch_warnings():
        # boundary fits (a component at 0) are expected with few sets; the estimate is still the REML one
        warnings.simplefilter("ignore")
        fit = model.fit(reml=True)
    inner = dict(zip(model.exog_vc.names, np.atleast_1d(fit.vcomp))) if vc else {}
    return [float(fit.cov_re.iloc[0, 0])] + [float(inner[f"_l{j}"]) for j in range(1, depth)], float(fit.scale)


def variance_components(df: pd.DataFrame, value: str, groups: list[str], method: str = "reml",
                        residual: str = "residual") -> pd.DataFrame:
    """Share of the variance of `value` from each nested grouping factor and the residual.

    `groups` lists the factors outermost first, each nested in the one before (["source", "set"]: sets
    within sources); the residual is what varies inside the innermost group (documents, numerical noise
    between runs). Model: y = mu + u_1 + u_2(1) + ... + e, every term independent, normal, with its own
    variance. Estimators: "reml" (default): statsmodels MixedLM, any (unbalanced) design, estimates kept >= 0;
    "anova": method-of-moments from mean squares, balanced designs only (equal cells at every level), where
    it equals REML unless an estimate is negative; negative estimates are reported as 0 (note column).
    No confidence interval is given: with a handful of sources or sets a Wald interval on a variance is
    misleading, and a hierarchical bootstrap is left to the caller. One row per component: component,
    variance, share (of the total), levels (number of distinct cells; observations for the residual)."""
    groups = [groups] if isinstance(groups, str) else list(groups)
    if method not in ("reml", "anova"):
        raise ValueError(f"method must be 'reml' or 'anova', not {method!r}")
    data = df[groups + [value]].dropna()
    data = pd.concat([data[[value]].rename(columns={value: "_y"}).astype(float), _nested_labels(data, groups)],
                     axis=1)
    depth = len(groups)
    if depth == 0 or data["_l0"].nunique() < 2:
        raise ValueError(f"needs at least one grouping factor with two levels (groups={groups})")
    variances, noise = (_anova_components if method == "anova" else _reml_components)(data, depth)
    notes = ["negative estimate set to 0" if v < 0 else "" for v in variances]
    variances = [max(v, 0.0) for v in variances] + [noise]
    total = sum(variances)
    levels = [data[f"_l{j}"].nunique() for j in range(depth)] + [len(data)]
    return pd.DataFrame({"component": groups + [residual], "variance": variances,
                         "share": [v / total if total > 0 else np.nan for v in variances], "levels": levels,
                         "method": method, "note": notes + [""]})


# -- the numerical noise floor (issue #16) ---------------------------------------------------------------

def noise_floor(df: pd.DataFrame, value: str, config: list[str] | str) -> dict:
    """How much `value` moves between runs of one configuration that differ only in float order
    (replicates: ``calib_lib.runs.spec.replicates``). `df` has one row per run; `config` names the columns
    that identify a configuration (every row sharing them is a replicate of it). Returns the pooled SD over
    configurations (sqrt of the replicate variances averaged with weights n - 1: the within-configuration
    SD of a one-way layout), its degrees of freedom, the largest replicate range, and a per-configuration
    table (n, sd, range). Configurations with a single run add nothing; none with two or more gives NaN
    and a note. Pass a scale-free value (log perplexity, KL, accuracy): the floor of raw perplexity grows
    with the perplexity."""
    config = [config] if isinstance(config, str) else list(config)
    data = df[config + [value]].dropna(subset=[value])
    per = (data.groupby(config, dropna=False)[value]
           # identical replicates have SD exactly 0 (np.std can give 1e-16: its mean of n equal floats need
           # not equal them), which beyond_noise_floor reads as a deterministic method
           .agg(n="size", sd=lambda v: (0.0 if np.max(v) == np.min(v) else float(np.std(v, ddof=1)))
                if len(v) > 1 else np.nan,
                range=lambda v: float(np.max(v) - np.min(v)))
           .reset_index())
    replicated = per[per["n"] >= 2]
    if replicated.empty:
        return {"sd": np.nan, "df": 0, "configs": 0, "runs": int(len(data)), "max_range": np.nan,
                "table": per, "note": "no configuration has two or more replicate runs"}
    dof = (replicated["n"] - 1).sum()
    pooled = float(np.sqrt(((replicated["n"] - 1) * replicated["sd"] ** 2).sum() / dof))
    return {"sd": pooled, "df": int(dof), "configs": int(len(replicated)), "runs": int(replicated["n"].sum()),
            "max_range": float(replicated["range"].max()), "table": per, "note": ""}


def beyond_noise_floor(difference: float, floor_sd: float, n_a: int = 1, n_b: int = 1,
                       alpha: float = 0.05, dof: int | None = None) -> dict:
    """Whether a difference between two configurations' means (over n_a and n_b runs) is larger than
    float-order noise alone produces: statistic |difference| / (floor_sd * sqrt(1/n_a + 1/n_b)), two-sided.
    `dof`: the degrees of freedom of floor_sd (replicate runs minus configurations, ``noise_floor``'s df):
    a t reference distribution, because a floor measured from a few replicates is itself uncertain (the
    convention of every notebook: ``summaries.floor_threshold``); None treats the SD as known (normal).
    `threshold` is the smallest |difference| that passes at `alpha`. A floor of exactly 0 (a deterministic
    method such as magnitude pruning) makes any non-zero difference real."""
    if n_a < 1 or n_b < 1 or not np.isfinite(floor_sd) or floor_sd < 0 or (dof is not None and dof < 1):
        return {"difference": difference, "z": np.nan, "p_value": np.nan, "threshold": np.nan, "beyond": None,
                "note": "needs a measured noise floor (replicate runs) and n >= 1 on both sides"}
    se = floor_sd * np.sqrt(1 / n_a + 1 / n_b)
    reference = stats.norm if dof is None else stats.t(dof)
    critical = float(reference.ppf(1 - alpha / 2))
    if se == 0:
        return {"difference": difference, "z": np.inf if difference else 0.0, "p_value": 0.0 if difference else 1.0,
                "threshold": 0.0, "beyond": bool(difference != 0), "note": "the noise floor is 0: runs are exact"}
    z = abs(difference) / se
    p_value = float(2 * reference.sf(z))
    return {"difference": difference, "z": float(z), "p_value": p_value, "threshold": critical * se,
            "beyond": bool(p_value < alpha), "note": ""}


def paired_documents(documents: pd.DataFrame, key_a: str, key_b: str, value: str,
                     kinds: tuple[str, ...] = ("task",)) -> pd.DataFrame:
    """Two runs' per-document `value` side by side (columns a, b), matched on (kind, name, doc_id), from
    ``Store.documents()``; only documents both runs scored. Feed a, b to ``paired_bootstrap`` or
    ``mcnemar_exact``."""
    rows = documents[documents["kind"].isin(kinds)]
    index = ["kind", "name", "doc_id"]
    a = rows[rows["key"] == key_a].set_index(index)[value]
    b = rows[rows["key"] == key_b].set_index(index)[value]
    if a.empty or b.empty:
        missing = key_a if a.empty else key_b
        raise ValueError(f"run {missing} has no per-document {', '.join(kinds)} records in this frame")
    both = pd.concat({"a": a, "b": b}, axis=1, join="inner").reset_index()
    return both


# -- equivalence of two runs over documents (claims F4 and V1) ----------------------------------------------

UNTESTABLE = "untestable at this budget"     # the verdict of a rule whose budget cannot decide it


def paired_accuracy_differences(documents: pd.DataFrame, key_a: str, key_b: str) -> dict[str, np.ndarray] | None:
    """{task: correct(a) - correct(b) per document both runs scored} (``paired_documents``, matched on task and
    doc_id), or None when either run has no task records."""
    try:
        pairs = paired_documents(documents, key_a, key_b, "correct").dropna(subset=["a", "b"])
    except ValueError:
        return None
    out = {task: (part["a"] - part["b"]).to_numpy(dtype=float)
           for task, part in pairs.groupby("name", sort=True, observed=True)}
    return out or None


def paired_tost(pairs: dict[str, np.ndarray], margin: float, alpha: float = 0.05, power: float = 0.8) -> dict:
    """TOST equivalence of two runs from per-document accuracy differences ``{task: a - b}``: the mean over
    tasks (each weighted equally), its SE over documents, the (1 - 2 alpha) CI, the TOST p against +-`margin`,
    the `power` equivalence bound (``mde``, from the discordance alone, with one pseudo-pair each way so that
    zero flips is not zero variance) and the documents per task that bound needs to reach `margin`."""
    import math
    tasks = sorted(pairs)
    means, variances, psis, sizes = [], [], [], []
    for task in tasks:
        d = pairs[task]
        n = len(d)
        psi = (np.count_nonzero(d) + 1) / (n + 2)               # discordance, one pseudo-pair each way
        means.append(d.mean())
        variances.append(max(d.var(ddof=1) if n > 1 else 0.0, psi - d.mean() ** 2, 1 / (n + 2)))
        psis.append(psi)
        sizes.append(n)
    means, variances, psis, sizes = map(np.asarray, (means, variances, psis, sizes))
    t = len(tasks)
    z = float(stats.norm.ppf(1 - alpha))
    k_power = z + float(stats.norm.ppf(1 - (1 - power) / 2))       # TOST: z_(1-alpha) + z_(1-(1-power)/2)
    se = math.sqrt(float(np.sum(variances / sizes)) / t ** 2)
    se_pre = math.sqrt(float(np.sum(psis / sizes)) / t ** 2)
    est = float(means.mean())
    p_low, p_high = float(stats.norm.sf((est + margin) / se)), float(stats.norm.cdf((est - margin) / se))
    return {"tasks": t, "documents": int(sizes.sum()), "docs_per_task": int(np.median(sizes)),
            "difference": est, "se": se, "ci_low": est - z * se, "ci_high": est + z * se,
            "p_tost": max(p_low, p_high), "mde": k_power * se_pre, "discordance": float(psis.mean()),
            "needed_docs_per_task": math.ceil(float(psis.mean()) * (k_power / margin) ** 2 / t)}


@functools.lru_cache(maxsize=256)
def studentized_range_quantile(level: float, groups: int, dof: int) -> float:
    """scipy's studentized-range quantile (Tukey's HSD), cached: it integrates numerically and takes ~0.1-1 s
    a call, while a study asks for the same (level, groups, df) again and again."""
    return float(stats.studentized_range.ppf(level, groups, dof))


def pooled_sd(values, groups) -> tuple[float, int]:
    """The SD pooled within groups (sqrt of the residual sum of squares over sum(n_g - 1)) and its degrees of
    freedom: the error of a one-way comparison whose replicates are the groups' members (calibration sets, draws).
    A group of one adds no error and no degree of freedom; (nan, 0) when no group has two members."""
    frame = pd.DataFrame({"y": np.asarray(values, dtype=float), "g": np.asarray(groups)}).dropna(subset=["y"])
    residual = frame["y"] - frame.groupby("g")["y"].transform("mean")
    df = int((frame.groupby("g").size() - 1).sum())
    return (float(np.sqrt((residual ** 2).sum() / df)) if df > 0 else float("nan")), df


def tukey_half_width(sd: float, df: int, groups: int, n_a: int, n_b: int, alpha: float = 0.05) -> float:
    """Half-width of the Tukey-HSD (Tukey-Kramer for unequal sizes) interval for mean_a - mean_b, simultaneous at
    1 - alpha over every pair of `groups` groups, with pooled SD `sd` on `df` degrees of freedom (``pooled_sd``);
    NaN without error degrees of freedom or fewer than two groups. Equal to ``scipy.stats.tukey_hsd``'s interval."""
    if df <= 0 or groups < 2 or not np.isfinite(sd):
        return float("nan")
    q = studentized_range_quantile(1 - alpha, groups, df) / np.sqrt(2)
    return float(q * sd * np.sqrt(1 / n_a + 1 / n_b))
