"""calib_lib.stats against independent formulations of each statistic on small data."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from calib_lib import stats


def _frame(groups: dict) -> pd.DataFrame:
    return pd.DataFrame([{"g": g, "v": v} for g, values in groups.items() for v in values])


def test_kruskal_effect_size_matches_formula_and_detects_a_shift():
    rng = np.random.default_rng(0)
    groups = {"a": rng.normal(0, 1, 12), "b": rng.normal(0, 1, 12), "c": rng.normal(3, 1, 12)}
    result = stats.kruskal(_frame(groups), "v", "g")
    h = sps.kruskal(*groups.values()).statistic
    assert result["statistic"] == pytest.approx(h)
    assert result["effect_size"] == pytest.approx((h - 3 + 1) / (36 - 3))
    assert result["p_value"] < 0.001
    same = stats.kruskal(_frame({"a": [1, 2, 3, 4], "b": [1, 2, 3, 4]}), "v", "g")
    assert same["p_value"] > 0.5


def test_kruskal_undefined_cases_say_why():
    assert "two groups" in stats.kruskal(_frame({"a": [1, 2, 3]}), "v", "g")["note"]
    assert np.isnan(stats.kruskal(_frame({"a": [1, 1], "b": [1, 1]}), "v", "g")["p_value"])


def test_friedman_kendalls_w_equals_the_rank_sum_definition():
    rng = np.random.default_rng(1)
    blocks, k = 6, 4
    data = rng.normal(size=(blocks, k)) + np.arange(k)           # group 3 tends to rank highest
    frame = pd.DataFrame([{"block": b, "g": f"s{j}", "v": data[b, j]} for b in range(blocks) for j in range(k)])
    result = stats.friedman(frame, "v", "g", "block")
    ranks = np.apply_along_axis(sps.rankdata, 1, data)
    rank_sums = ranks.sum(axis=0)
    s = ((rank_sums - rank_sums.mean()) ** 2).sum()
    w = 12 * s / (blocks ** 2 * (k ** 3 - k))
    assert result["effect_size"] == pytest.approx(w)
    assert result["statistic"] == pytest.approx(blocks * (k - 1) * w)
    pairs = stats.nemenyi(frame, "v", "g", "block")
    assert len(pairs) == k * (k - 1) // 2 and pairs["p_adjusted"].between(0, 1).all()


def test_brown_forsythe_is_anova_on_absolute_deviations_from_the_median():
    rng = np.random.default_rng(2)
    groups = {"pruning": rng.normal(0, 3, 15), "quantization": rng.normal(0, 1, 15)}
    result = stats.brown_forsythe(_frame(groups), "v", "g")
    deviations = [np.abs(x - np.median(x)) for x in groups.values()]
    assert result["statistic"] == pytest.approx(sps.f_oneway(*deviations).statistic)
    assert result["effect_size"] == pytest.approx(np.std(groups["pruning"], ddof=1) / np.std(groups["quantization"], ddof=1))
    assert result["p_value"] < 0.05


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    low, high = stats.bootstrap_ci(values)
    assert (low, high) == stats.bootstrap_ci(values)
    assert low < np.mean(values) < high
    assert np.isnan(stats.bootstrap_ci([1.0])[0])
    assert stats.bootstrap_ci([2.0, 2.0]) == (2.0, 2.0)


def test_spearman_trend_per_group_with_holm_adjustment():
    frame = pd.DataFrame({"m": ["a"] * 5 + ["b"] * 5, "x": list(range(5)) * 2,
                          "y": [5, 4, 3, 2, 1] + [1, 3, 2, 5, 4]})
    table = stats.spearman_trend(frame, "x", "y", by="m").set_index("m")
    assert table.loc["a", "rho"] == pytest.approx(-1.0)
    assert table.loc["b", "rho"] == pytest.approx(sps.spearmanr(range(5), [1, 3, 2, 5, 4]).statistic)
    p = table["p_value"].sort_values()
    # Holm with two tests: the smaller p doubles; the larger is max(2 * p_min, p_max)
    assert table["p_holm"].min() == pytest.approx(min(1, 2 * p.iloc[0]))
    assert table["p_holm"].max() == pytest.approx(min(1, max(2 * p.iloc[0], p.iloc[1])))
    # exact permutation p for a perfect order of 3 points: 2 of the 3! orders are as extreme -> 1/3
    three = stats.spearman_trend(pd.DataFrame({"x": [1, 2, 3], "y": [3.0, 2.0, 1.0]}), "x", "y")
    assert three.loc[0, "rho"] == pytest.approx(-1.0) and three.loc[0, "p_value"] == pytest.approx(1 / 3)


def test_wilcoxon_and_mann_whitney_effect_sizes():
    all_positive = stats.wilcoxon([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    assert all_positive["effect_size"] == pytest.approx(1.0)
    mixed = stats.wilcoxon([1.0, -2.0, 3.0, -4.0])
    # ranks 1..4, positive ranks 1 + 3 = 4 of 10 -> r = (2*4 - 10) / 10
    assert mixed["effect_size"] == pytest.approx(-0.2)
    mw = stats.mann_whitney([1, 2, 3], [4, 5, 6])
    assert mw["effect_size"] == pytest.approx(-1.0)             # every a below every b: U = 0
    assert stats.mann_whitney([4, 5, 6], [1, 2, 3])["effect_size"] == pytest.approx(1.0)


def test_plateau_share_of_the_last_step():
    frame = pd.DataFrame({"m": ["q"] * 4 + ["p"] * 4, "n": [1, 2, 4, 8] * 2,
                          "ppl": [100, 60, 50, 49, 100, 80, 60, 40]})
    table = stats.plateau(frame, "n", "ppl", "m").set_index("m")
    assert table.loc["q", "total_gain"] == 51 and table.loc["q", "last_step_share"] == pytest.approx(1 / 51)
    assert table.loc["p", "last_step_share"] == pytest.approx(20 / 60)


def test_ranges_and_centering():
    frame = pd.DataFrame({"m": ["a", "a", "a", "b", "b"], "x": [1.0, 4.0, 2.0, 5.0, 5.0]})
    out = stats.ranges(frame, ["x"], ["m"]).set_index("m")
    assert out.loc["a", "range"] == 3.0 and out.loc["b", "range"] == 0.0
    assert stats.centered(frame, "x", ["m"]).tolist() == pytest.approx([-4 / 3, 5 / 3, -1 / 3, 0.0, 0.0])


def test_verdict():
    assert stats.verdict(0.01, True) == "holds"
    assert stats.verdict(0.01, False) == "does not hold"
    assert stats.verdict(0.2, True) == "inconclusive"
    assert stats.verdict(float("nan"), True) == "inconclusive"


def test_figures_are_byte_identical_when_redrawn(tmp_path):
    """Reruns of a notebook must not churn committed figures: strip jitter and SVG ids are seeded."""
    import matplotlib
    matplotlib.use("Agg")
    from calib_lib import plots
    plots.style()
    table = pd.DataFrame({"s": ["a", "b"] * 6, "v": np.arange(12.0), "method_label": ["m", "n", "n", "m"] * 3})
    files = []
    for attempt in range(2):
        fig = plots.points(table, "s", ["v"], title="t", subtitle="s")
        files.append([p.read_bytes() for p in plots.save(fig, tmp_path / str(attempt), "nb", "points")])
        fig = plots.spread(table, "s", "v", hue="method_label", title="t", subtitle="s")
        files[-1] += [p.read_bytes() for p in plots.save(fig, tmp_path / str(attempt), "nb", "spread")]
    assert files[0] == files[1]
