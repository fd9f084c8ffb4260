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


# -- figures: one colour per method, uncertainty marks, readable labels ----------------------------------------

def _figure_table():
    rows = []
    for method, scale in (("sparsegpt 50%", 1.0), ("gptq 3-bit g128", 2.0)):
        for i, source in enumerate(["wikipedia", "news", "books", "code", "c4", "wikitext2", "random-vocab"]):
            for n in (1, 4, 16, 64):
                rows.append({"method_label": method, "calibration.source": source, "calibration.num_samples": n,
                             "ppl:geomean": scale * (40 + 5 * i) * (1 + 1 / n), "acc:mean": 0.5 + 0.01 * i,
                             "se:acc:mean": 0.05})
    return pd.DataFrame(rows)


def test_each_method_label_has_one_colour_whatever_else_is_in_the_figure():
    from calib_lib import plots
    assert plots.method_color("sparsegpt 50%") == plots.METHOD_COLORS["sparsegpt"].lower()
    assert plots.method_color("gptq 3-bit g32") == plots.method_color("gptq 3-bit g128") == plots.METHOD_COLORS["gptq"].lower()
    structured = plots.method_color("sparsegpt 2:4")
    assert structured != plots.method_color("sparsegpt 50%") and structured == plots.method_color("sparsegpt 2:4")
    assert plots.method_color("gptq 3-bit g128 (layer order)") != plots.method_color("gptq 3-bit g128")
    assert plots.method_color("newmethod 9-bit") == plots.method_color("newmethod 9-bit")      # stable fallback
    assert plots.palette(["gptq 3-bit g128"]) == {"gptq 3-bit g128": plots.palette(["sparsegpt 50%", "gptq 3-bit g128"])["gptq 3-bit g128"]}
    assert plots.method_order(["rtn 3-bit g128", "gptq 3-bit g128", "sparsegpt 2:4", "dense", "sparsegpt 50%"]) == [
        "dense", "sparsegpt 50%", "sparsegpt 2:4", "rtn 3-bit g128", "gptq 3-bit g128"]
    assert plots.method_color("pruning") == plots.METHOD_COLORS["sparsegpt"].lower()                  # families, as in F1


def _colors_drawn(fig):
    from matplotlib.colors import to_hex
    colors = set()
    for ax in fig.axes:
        for line in ax.lines:
            colors.add(to_hex(line.get_color()))
        for collection in ax.collections:
            colors.update(to_hex(c) for c in collection.get_facecolors())
    return colors


def test_figures_draw_every_method_in_its_colour_with_error_bars_and_the_noise_band(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.collections import PolyCollection
    from calib_lib import plots
    plots.style()
    table = _figure_table()
    table["se_lo:acc:mean"], table["se_hi:acc:mean"] = table["acc:mean"] - 0.1, table["acc:mean"] + 0.1
    table["floor_lo:ppl:geomean"], table["floor_hi:ppl:geomean"] = table["ppl:geomean"] * 0.9, table["ppl:geomean"] * 1.1
    one = table[table["calibration.source"] == "wikipedia"]
    fig = plots.trend(one, "calibration.num_samples", ["ppl:geomean", "acc:mean"], logy=["ppl:geomean"],
                      reference={"ppl:geomean": 30.0}, references={"magnitude 50%": {"ppl:geomean": 300.0}},
                      title="t", subtitle="s")
    drawn = _colors_drawn(fig)
    assert {plots.method_color("sparsegpt 50%"), plots.method_color("gptq 3-bit g128")} <= drawn
    ppl_ax, acc_ax = fig.axes[:2]
    assert any(isinstance(c, PolyCollection) for c in ppl_ax.collections)                   # the float-noise band
    assert any(type(c).__name__ == "LineCollection" for c in acc_ax.collections)            # the error bars
    legend = " ".join(t.get_text() for t in acc_ax.get_legend().get_texts())
    assert "stored standard errors" in legend and "float-noise floor" in legend
    assert plots.method_color("magnitude 50%") in {matplotlib.colors.to_hex(l.get_color()) for l in ppl_ax.lines}
    plots.save(fig, tmp_path, "nb", "trend")
    # several runs per point: dots, mean and a range (never called a CI)
    fig = plots.points(table, "calibration.source", ["ppl:geomean"], logy=["ppl:geomean"], title="t", subtitle="s")
    legend = " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert "range (min-max) over 4 runs" in legend and "CI" not in legend
    # one run per point and no interval columns: the legend says so
    bare = table[table["calibration.num_samples"] == 1][["method_label", "calibration.source", "ppl:geomean"]]
    fig = plots.points(bare, "calibration.source", ["ppl:geomean"], title="t", subtitle="s")
    assert "no uncertainty measured" in " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_category_and_log_axis_labels_do_not_overlap():
    import matplotlib
    matplotlib.use("Agg")
    from calib_lib import plots
    plots.style()
    table = _figure_table()
    table = table[table["calibration.num_samples"] == 16].assign(
        data=lambda d: "self (t " + d["calibration.source"].str.len().astype(str) + "->0.5) " + d["calibration.source"])
    fig = plots.points(table, "data", ["ppl:geomean", "acc:mean"], logy=["ppl:geomean"], title="t", subtitle="s")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    import math
    for ax in fig.axes:
        for axis in (ax.get_xticklabels(), ax.get_yticklabels()):
            labels = [label for label in axis if label.get_text()]
            rotation = labels[0].get_rotation() % 180 if labels else 0
            if rotation == 0:
                boxes = [label.get_window_extent(renderer) for label in labels]
                assert all(not a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), ax.get_ylabel()
            else:
                # parallel rotated labels: the gap between neighbouring baselines must hold a line of text
                anchors = sorted(ax.transData.transform((t, 0))[0] for t in ax.get_xticks())
                height = labels[0].get_fontsize() * fig.dpi / 72
                gaps = [(b - a) * math.sin(math.radians(rotation)) for a, b in zip(anchors, anchors[1:])]
                assert min(gaps) >= height, (gaps, height)
    for low, high in ((375, 381), (20, 2000), (0.9, 1.2), (1e-4, 3e-3)):
        ticks = plots._nice_log_ticks(low, high)
        assert 2 <= len(ticks) <= 7 and all(low <= t <= high * 1.0001 for t in ticks), (low, high, ticks)


def test_title_and_subtitle_clear_a_y_label_taller_than_its_panel():
    """A rotated y-label longer than the panel is tall reaches above the axes; the subtitle goes above it."""
    import matplotlib
    matplotlib.use("Agg")
    from calib_lib import plots
    plots.style()
    long = "a metric whose name is much longer than the panel is tall, as the KL label once was"
    table = _figure_table().rename(columns={"ppl:geomean": long})
    fig = plots.trend(table, "calibration.num_samples", [long], title="Title", subtitle="subtitle")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    label = fig.axes[0].yaxis.label.get_window_extent(renderer)
    texts = [t for t in fig.texts if t.get_text() in ("Title", "subtitle")]
    assert label.y1 > fig.axes[0].get_window_extent(renderer).y1                  # the label does stick out
    assert len(texts) == 2 and all(t.get_window_extent(renderer).y0 > label.y1 for t in texts)
    # a canvas without get_renderer (MPLBACKEND=svg or pdf) still gets its titles
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    fig, ax = plt.subplots()
    FigureCanvasSVG(fig)
    ax.set_ylabel("y")
    plots._finish(fig, "Title", "subtitle")
    assert [t.get_text() for t in fig.texts] == ["subtitle", "Title"]


def test_spread_draws_the_noise_reference_and_keeps_method_colours():
    import matplotlib
    matplotlib.use("Agg")
    from calib_lib import plots
    plots.style()
    swing = pd.DataFrame({"metric": ["a", "a", "b", "b"] * 2, "range": [0.1, 0.2, 0.05, 0.0, 0.3, 0.2, 0.1, 0.15],
                          "expected": 0.08, "method_label": ["sparsegpt 50%"] * 4 + ["gptq 3-bit g128"] * 4})
    fig = plots.spread(swing, "metric", "range", hue="method_label", expected="expected", expected_label="noise",
                       title="t", subtitle="s", logy=True)
    legend = " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert "noise" in legend and "1 zero spread(s) not shown" in legend
    assert {plots.method_color("sparsegpt 50%"), plots.method_color("gptq 3-bit g128")} <= _colors_drawn(fig)


def test_pooled_sd_and_tukey_half_width_equal_scipy_tukey_hsd():
    from scipy import stats as sps
    rng = np.random.default_rng(7)
    for sizes in ((3, 3, 3), (2, 4, 5, 3), (5, 2, 4)):
        groups = [rng.normal(loc, 1.3, n) for loc, n in zip(rng.normal(0, 2, len(sizes)), sizes)]
        values = np.concatenate(groups)
        labels = np.concatenate([[i] * n for i, n in enumerate(sizes)])
        sd, df = stats.pooled_sd(values, labels)
        assert df == len(values) - len(sizes)
        ci = sps.tukey_hsd(*groups).confidence_interval(0.95)
        for a in range(len(sizes)):
            for b in range(a + 1, len(sizes)):
                half = stats.tukey_half_width(sd, df, len(sizes), sizes[a], sizes[b])
                diff = groups[a].mean() - groups[b].mean()
                assert ci.low[a, b] == pytest.approx(diff - half, rel=1e-6)
                assert ci.high[a, b] == pytest.approx(diff + half, rel=1e-6)
    assert np.isnan(stats.pooled_sd([1.0, 2.0], ["a", "b"])[0]) and np.isnan(stats.tukey_half_width(1.0, 0, 2, 1, 1))
    assert stats.pooled_sd([1.0, 2.0, 3.0, 10.0], list("aaab")) == (pytest.approx(1.0), 2)   # a group of one adds nothing
