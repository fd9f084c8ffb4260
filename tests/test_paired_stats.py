"""Paired statistics (calib_lib.stats) and power (calib_lib.power) against independent formulations:
brute-force resampling and enumeration, scipy/statsmodels counterparts, hand-computed ANOVA, simulation."""
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from calib_lib import power, stats


# -- paired bootstrap ------------------------------------------------------------------------------------

def test_paired_bootstrap_ci_matches_brute_force_resampling_of_documents():
    rng = np.random.default_rng(3)
    base = rng.normal(0, 2, 300)                           # shared document difficulty: cancels in pairs
    a, b = base + rng.normal(0.3, 0.5, 300), base + rng.normal(0, 0.5, 300)
    result = stats.paired_bootstrap(a, b, n_resamples=4000)
    index = np.random.default_rng(99).integers(0, 300, size=(20000, 300))
    brute = a[index].mean(axis=1) - b[index].mean(axis=1)
    low, high = np.percentile(brute, [2.5, 97.5])
    width = high - low
    assert result["statistic"] == pytest.approx(a.mean() - b.mean())
    assert result["ci_low"] == pytest.approx(low, abs=0.05 * width)
    assert result["ci_high"] == pytest.approx(high, abs=0.05 * width)
    # pairing matters: an unpaired interval would be about 4x wider here (SD 2 of the shared part)
    assert width < 0.2
    assert result["p_value"] < 0.001 and result["n"] == 300


def test_paired_bootstrap_median_resamples_pairs_together():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=40), rng.normal(size=40)
    result = stats.paired_bootstrap(a, b, statistic=np.median, n_resamples=3000)
    index = np.random.default_rng(5).integers(0, 40, size=(20000, 40))
    brute = np.median(a[index], axis=1) - np.median(b[index], axis=1)
    low, high = np.percentile(brute, [2.5, 97.5])
    assert result["statistic"] == pytest.approx(np.median(a) - np.median(b))
    assert result["ci_low"] == pytest.approx(low, abs=0.1 * (high - low))
    assert result["ci_high"] == pytest.approx(high, abs=0.1 * (high - low))


def test_paired_bootstrap_p_value_is_the_exact_sign_flip_test():
    a = np.array([2.1, 0.4, 1.7, 3.0, -0.2, 1.1, 0.9, 2.5])
    b = np.array([1.0, 0.6, 0.2, 1.9, -0.5, 1.4, 0.1, 1.0])
    d = a - b
    flips = np.array(list(itertools.product([1, -1], repeat=len(d))))
    null = (flips * d).mean(axis=1)
    exact = np.mean(np.abs(null) >= abs(d.mean()) - 1e-12)
    result = stats.paired_bootstrap(a, b)
    assert result["p_method"] == "exact sign-flip"
    assert result["p_value"] == pytest.approx(exact)


def test_paired_bootstrap_on_correctness_reduces_to_exact_mcnemar():
    a = np.array([1, 1, 1, 1, 1, 0, 1, 0, 1, 1])
    b = np.array([0, 0, 1, 0, 1, 0, 0, 0, 1, 1])            # 4 documents only a gets right, 0 the other way
    boot = stats.paired_bootstrap(a, b)
    assert boot["statistic"] == pytest.approx(0.4)
    assert boot["p_value"] == pytest.approx(stats.mcnemar_exact(a, b)["p_value"])
    assert boot["p_value"] == pytest.approx(2 / 2 ** 4)


def test_paired_bootstrap_degenerate_input():
    with pytest.raises(ValueError, match="one value per document"):
        stats.paired_bootstrap([1, 2, 3], [1, 2])
    assert np.isnan(stats.paired_bootstrap([1.0], [0.0])["p_value"])
    assert "two documents" in stats.paired_bootstrap([1.0, np.nan], [0.0, 1.0])["note"]
    same = stats.paired_bootstrap([1, 0, 1], [1, 0, 1])
    assert (same["statistic"], same["p_value"], same["ci_low"], same["ci_high"]) == (0.0, 1.0, 0.0, 0.0)


# -- McNemar ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("a_only, b_only, both, neither", [(9, 2, 30, 10), (0, 5, 3, 1), (4, 4, 10, 0), (13, 0, 2, 2)])
def test_mcnemar_exact_matches_binomtest_and_statsmodels(a_only, b_only, both, neither):
    a = np.array([1] * a_only + [0] * b_only + [1] * both + [0] * neither)
    b = np.array([0] * a_only + [1] * b_only + [1] * both + [0] * neither)
    order = np.random.default_rng(0).permutation(len(a))
    result = stats.mcnemar_exact(a[order], b[order].astype(bool))
    reference = sm_mcnemar([[both, a_only], [b_only, neither]], exact=True)
    assert result["p_value"] == pytest.approx(reference.pvalue)
    assert result["p_value"] == pytest.approx(sps.binomtest(b_only, a_only + b_only, 0.5).pvalue)
    assert result["statistic"] == reference.statistic
    assert result["effect_size"] == pytest.approx((a.mean() - b.mean()))
    assert result["odds_ratio"] == (a_only / b_only if b_only else np.inf)
    assert result["n"] == len(a) and result["n_discordant"] == a_only + b_only


def test_mcnemar_exact_degenerate_input():
    assert stats.mcnemar_exact([1, 0, 1], [1, 0, 1])["p_value"] == 1.0
    assert np.isnan(stats.mcnemar_exact([1, 0], [1, 0])["odds_ratio"])
    with pytest.raises(ValueError, match="0/1"):
        stats.mcnemar_exact([0.5, 1], [1, 0])
    with pytest.raises(ValueError, match="one value per document"):
        stats.mcnemar_exact([1, 0, 1], [1, 0])


# -- variance components ---------------------------------------------------------------------------------

def _nested(sources: int, sets: int, docs: int, sds: tuple[float, float, float], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    u_source = rng.normal(0, sds[0], sources)
    u_set = rng.normal(0, sds[1], (sources, sets))
    noise = rng.normal(0, sds[2], (sources, sets, docs))
    values = 1.0 + u_source[:, None, None] + u_set[:, :, None] + noise
    # set names repeat across sources ("set0" in every source) as they do in the studies
    return pd.DataFrame([{"source": f"src{i}", "set": f"set{j}", "v": values[i, j, k]}
                         for i in range(sources) for j in range(sets) for k in range(docs)])


def _hand_anova(frame: pd.DataFrame) -> tuple[float, float, float]:
    """Textbook two-level nested ANOVA (a sources, b sets each, n docs per set) with numpy alone."""
    y = frame.sort_values(["source", "set"])["v"].to_numpy()
    a, b = frame["source"].nunique(), frame["set"].nunique()
    y = y.reshape(a, b, -1)
    n = y.shape[2]
    cell, source, grand = y.mean(axis=2), y.mean(axis=(1, 2)), y.mean()
    ms_source = b * n * ((source - grand) ** 2).sum() / (a - 1)
    ms_set = n * ((cell - source[:, None]) ** 2).sum() / (a * (b - 1))
    ms_error = ((y - cell[:, :, None]) ** 2).sum() / (a * b * (n - 1))
    return (ms_source - ms_set) / (b * n), (ms_set - ms_error) / n, ms_error


def test_variance_components_anova_equals_hand_computation_and_reml_agrees_on_balanced_data():
    frame = _nested(8, 4, 6, (1.0, 0.7, 0.5), seed=11)
    hand = _hand_anova(frame)
    assert min(hand) > 0                                     # REML equals ANOVA only when no estimate is negative
    anova = stats.variance_components(frame, "v", ["source", "set"], method="anova").set_index("component")
    reml = stats.variance_components(frame, "v", ["source", "set"]).set_index("component")
    assert anova["variance"].tolist() == pytest.approx(list(hand), rel=1e-9)
    assert reml["variance"].tolist() == pytest.approx(list(hand), rel=1e-2)
    assert anova["share"].sum() == pytest.approx(1.0)
    assert anova["levels"].tolist() == [8, 32, 192]


def test_variance_components_recovers_known_variances():
    frame = _nested(40, 5, 8, (1.0, math.sqrt(0.5), 0.5), seed=12)
    table = stats.variance_components(frame, "v", ["source", "set"]).set_index("component")["variance"]
    assert table["residual"] == pytest.approx(0.25, rel=0.1)
    assert table["set"] == pytest.approx(0.5, rel=0.25)
    assert table["source"] == pytest.approx(1.0, rel=0.5)       # 40 sources: SE of this estimate ~ 0.25


def test_variance_components_rejects_what_it_cannot_estimate():
    frame = _nested(4, 3, 2, (1.0, 1.0, 1.0), seed=13)
    with pytest.raises(ValueError, match="balanced"):
        stats.variance_components(frame.iloc[1:], "v", ["source", "set"], method="anova")
    with pytest.raises(ValueError, match="two levels"):
        stats.variance_components(frame[frame.source == "src0"], "v", ["source"])
    # no set variance: this draw's ANOVA estimate is negative, reported as 0 with a note
    flat = _nested(6, 4, 5, (1.0, 0.0, 1.0), seed=2)
    assert _hand_anova(flat)[1] < 0
    table = stats.variance_components(flat, "v", ["source", "set"], method="anova").set_index("component")
    assert table.loc["set", "variance"] == 0 and "negative" in table.loc["set", "note"]


# -- power -----------------------------------------------------------------------------------------------

def test_min_detectable_effect_gives_80_percent_power_by_simulation():
    n, sd = 200, 1.5
    mde = power.min_detectable_effect(n, sd)
    d = np.random.default_rng(7).normal(mde, sd, size=(2000, n))
    rejected = sps.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8, abs=0.03)
    assert power.min_detectable_effect(n, sd, two_sided=False) < mde


def test_accuracy_mde_gives_80_percent_power_for_exact_mcnemar_by_simulation():
    n, psi = 500, 0.2
    delta = power.accuracy_mde(n, discordance=psi)
    rng = np.random.default_rng(8)
    # each document: only a right (psi + delta) / 2, only b right (psi - delta) / 2, else concordant
    outcome = rng.choice(3, p=[(psi + delta) / 2, (psi - delta) / 2, 1 - psi], size=(2000, n))
    a_only, b_only = (outcome == 0).sum(axis=1), (outcome == 1).sum(axis=1)
    p = np.minimum(1, 2 * sps.binom.cdf(np.minimum(a_only, b_only), a_only + b_only, 0.5))
    # the exact test is a little conservative against the normal approximation (0.77 on this draw)
    assert (p < 0.05).mean() == pytest.approx(0.8, abs=0.04)
    # default discordance 2p(1-p) = 0.5 at p = 0.5: more discordance, larger MDE
    assert power.accuracy_mde(n) > delta
    assert np.isnan(power.accuracy_mde(3))
    assert power.binomial_se(0.5, 100) == pytest.approx(0.05)


def test_smallest_p_wilcoxon_sign_and_mann_whitney_match_scipy_on_the_most_extreme_data():
    assert power.smallest_p("wilcoxon", 5) == pytest.approx(sps.wilcoxon([1, 2, 3, 4, 5], method="exact").pvalue)
    assert power.smallest_p("sign", 7) == pytest.approx(sps.binomtest(7, 7, 0.5).pvalue)
    separated = sps.mannwhitneyu([1, 2, 3], [4, 5, 6, 7], method="exact").pvalue
    assert power.smallest_p("mann_whitney", 3, 4) == pytest.approx(separated)
    assert power.smallest_p("mann_whitney", 1, 1) == 1.0


def test_smallest_p_spearman_by_enumerating_permutations():
    x = np.arange(4)
    rhos = np.array([sps.spearmanr(x, perm).statistic for perm in itertools.permutations(x)])
    assert power.smallest_p("spearman", 4) == pytest.approx(np.mean(np.abs(rhos) >= 1 - 1e-12))
    assert power.smallest_p("spearman", 3) == pytest.approx(1 / 3)      # the value stats.spearman_trend reaches


def test_smallest_p_friedman_and_binomial():
    ordered = np.tile(np.arange(4.0), (6, 1))                # every block ranks the 4 groups alike
    assert power.smallest_p("friedman", 4, 6) == pytest.approx(sps.friedmanchisquare(*ordered.T).pvalue)
    assert power.smallest_p("binomial", 5, p0=0.25) == pytest.approx(
        min(sps.binomtest(k, 5, 0.25).pvalue for k in range(6)))
    assert power.smallest_p("binomial", 6, p0=0.5) == pytest.approx(2 / 2 ** 6)
    with pytest.raises(ValueError, match="p0"):
        power.smallest_p("binomial", 5)
    with pytest.raises(ValueError, match="known: .*wilcoxon"):
        power.smallest_p("t-test", 5)
    with pytest.raises(ValueError, match="2 positive integer"):
        power.smallest_p("mann_whitney", 3)


def test_budget_report_flags_comparisons_that_cannot_reach_alpha():
    report = power.budget_report(200, tasks=5, sources=5, sets_per_source=3, runs=3, noise_sd=0.01, set_sd=0.05,
                                 score_sd=1.0, trend_points=8).set_index("comparison")
    assert list(report.columns) == ["test", "n", "mde", "unit", "smallest_p", "decidable", "note"]
    assert report.loc["accuracy of two runs, one task", "mde"] == pytest.approx(power.accuracy_mde(200))
    assert report.loc["accuracy of two runs, all tasks", "n"] == 1000
    # three sets per source: exact Mann-Whitney cannot go below 2 / C(6, 3) = 0.1
    sources = report.loc["metric of two sources, over their sets"]
    assert sources["smallest_p"] == pytest.approx(0.1) and not sources["decidable"]
    assert sources["mde"] == pytest.approx(power.min_detectable_effect(3, math.sqrt(2 * (0.05 ** 2 + 0.01 ** 2 / 3))))
    assert report.loc["monotone trend", "decidable"]
    unknown = power.budget_report(100).set_index("comparison")
    assert np.isnan(unknown.loc["metric of two sets, over their runs", "mde"])
    assert not unknown.loc["metric of two sets, over their runs", "decidable"]      # one run per set


# -- the numerical noise floor -----------------------------------------------------------------------------

def test_noise_floor_is_the_within_configuration_sd_of_a_one_way_anova():
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm
    rng = np.random.default_rng(11)
    rows = [{"config": c, "value": mu + rng.normal(0, 0.02)}
            for c, (mu, n) in enumerate([(3.0, 3), (3.5, 2), (4.1, 4), (5.0, 1)]) for _ in range(n)]
    df = pd.DataFrame(rows)
    floor = stats.noise_floor(df, "value", "config")
    fit = anova_lm(smf.ols("value ~ C(config)", data=df[df["config"] != 3]).fit())
    assert floor["sd"] == pytest.approx(math.sqrt(fit.loc["Residual", "mean_sq"]), rel=1e-12)
    assert floor["df"] == int(fit.loc["Residual", "df"]) == 6
    assert floor["configs"] == 3 and floor["runs"] == 9            # the single run adds nothing
    assert stats.noise_floor(df[df["config"] == 3], "value", "config")["note"]


def test_beyond_noise_floor_keeps_its_level_on_pure_float_noise():
    """Simulated null: two configurations with the same true value, three replicates each, noise SD known
    from a pooled floor: 'beyond' comes out about alpha of the time, and a real shift is found."""
    rng = np.random.default_rng(12)
    hits = 0
    for _ in range(2000):
        a, b = rng.normal(0, 0.05, 3), rng.normal(0, 0.05, 3)
        hits += stats.beyond_noise_floor(a.mean() - b.mean(), 0.05, 3, 3)["beyond"]
    assert 0.03 < hits / 2000 < 0.07
    assert stats.beyond_noise_floor(0.2, 0.05, 3, 3)["beyond"]
    exact = stats.beyond_noise_floor(0.001, 0.0)
    assert exact["beyond"] and exact["threshold"] == 0.0
    assert stats.beyond_noise_floor(0.1, float("nan"))["beyond"] is None


def test_beyond_noise_floor_with_an_estimated_floor_needs_the_t_quantile():
    """Simulated null where the floor SD is itself estimated from one configuration's 3 replicates (df 2, the
    quick profile): the t rule keeps alpha, while treating that SD as known (normal) says 'beyond' far too
    often, which is why every notebook passes the floor's df."""
    rng = np.random.default_rng(3)
    t_hits = z_hits = 0
    n = 4000
    for _ in range(n):
        replicates = rng.normal(0, 0.05, 3)
        sd = replicates.std(ddof=1)
        a, b = rng.normal(0, 0.05, 2)
        t_hits += stats.beyond_noise_floor(a - b, sd, dof=2)["beyond"]
        z_hits += stats.beyond_noise_floor(a - b, sd)["beyond"]
    assert 0.035 < t_hits / n < 0.065
    assert z_hits / n > 0.12
    assert stats.beyond_noise_floor(0.1, 0.05, dof=0)["beyond"] is None


def test_paired_documents_matches_runs_on_the_same_documents():
    docs = pd.DataFrame({"key": ["a"] * 3 + ["b"] * 3, "kind": "task", "name": "copa",
                         "doc_id": [1, 2, 3, 2, 3, 4], "correct": [1, 0, 1, 1, 1, 0]})
    both = stats.paired_documents(docs, "a", "b", "correct")
    assert both["doc_id"].tolist() == [2, 3] and both["a"].tolist() == [0, 1] and both["b"].tolist() == [1, 1]
    with pytest.raises(ValueError, match="run c has no"):
        stats.paired_documents(docs, "a", "c", "correct")
