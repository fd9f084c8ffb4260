"""The variance decomposition of 04_seed_variance (issue #17): source, set within source, numerical noise and
documents, checked on synthetic runs whose components are known."""
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from calib_lib import plots  # noqa: E402
from calib_lib.study import summaries  # noqa: E402
from calib_lib.study.summaries import COMPONENTS, variance_decomposition  # noqa: E402


def runs_table(values: np.ndarray, label: str = "m", model: str = "tiny", column: str = "acc:mean") -> pd.DataFrame:
    """One row per run of a (sources x sets) array of scores, in the seed-variance grid's columns."""
    sources, sets = values.shape
    return pd.DataFrame([{"key": f"{model}-{label}-s{s}-k{k}", "model": model, "method_label": label,
                          "family": "pruning", "calibration.source": f"src{s}", "calibration.set_index": k,
                          "calibration.num_samples": 16, "calibration.seq_len": 128, "replicate": 0,
                          column: float(values[s, k])}
                         for s in range(sources) for k in range(sets)])


def floor_table(sds: dict, metric: str = "acc:mean", dof: int = 10) -> pd.DataFrame:
    return pd.DataFrame([{"method_label": label, "family": "pruning", "metric": metric, "sd": sd, "df": dof,
                          "runs": dof + 1, "note": ""} for label, sd in sds.items()])


def components(decomposition: pd.DataFrame, value: str = "variance") -> pd.DataFrame:
    return decomposition.pivot_table(index=["method_label", "metric"], columns="component", values=value,
                                     aggfunc="first", dropna=False)


# -- unbiased on average -------------------------------------------------------------------------------------

def test_source_set_and_float_components_are_unbiased_over_200_simulations():
    """y = mu + source + set + float noise with known variances, 8 sources x 3 sets, each run once; the floor SD
    estimated from 11 replicates (10 df) as the noise-floor grid does. Over 200 simulations the mean estimate of
    every component lies within 4 standard errors of the truth."""
    truth = {"source": 4.0, "set within source": 1.0, "numerical noise": 0.25}
    rng = np.random.default_rng(17)
    tables, floors = [], {}
    for seed in range(200):
        source = rng.normal(0, math.sqrt(truth["source"]), size=(8, 1))
        sets = rng.normal(0, math.sqrt(truth["set within source"]), size=(8, 3))
        noise = rng.normal(0, math.sqrt(truth["numerical noise"]), size=(8, 3))
        tables.append(runs_table(10 + source + sets + noise, label=f"sim{seed:03d}"))
        floors[f"sim{seed:03d}"] = float(np.std(rng.normal(0, math.sqrt(truth["numerical noise"]), 11), ddof=1))
    result = variance_decomposition(pd.concat(tables, ignore_index=True), floor_table(floors),
                                    metrics=["acc:mean"])
    estimates = components(result)
    assert len(estimates) == 200
    for component, true in truth.items():
        values = estimates[component].to_numpy(float)
        assert np.isfinite(values).all()
        se = values.std(ddof=1) / math.sqrt(len(values))
        assert abs(values.mean() - true) < 4 * se, (component, values.mean(), true, se)
    # without task records or stored errors the documents are unmeasured, and the shares say so
    assert result.loc[result["component"] == "documents", "variance"].isna().all()
    assert set(result["shares_over"]) == {"source + set within source + numerical noise"}


def test_document_component_is_the_binomial_variance_of_the_mean_accuracy():
    """Per run, 3 tasks of n documents each scored 0/1 with known p: the documents component estimates
    sum_t p_t (1 - p_t) / n / T^2 without bias (var with ddof 1 over n), and the stored standard errors give
    the same number as the per-document records they were computed from."""
    p, n, tasks = np.array([0.3, 0.6, 0.85]), 40, ["a", "b", "c"]
    rng = np.random.default_rng(3)
    table = runs_table(np.zeros((2, 100)))
    records, accuracies, errors = [], [], []
    for key in table["key"]:
        correct = rng.random((3, n)) < p[:, None]
        accuracies.append(correct.mean(axis=1))
        errors.append(correct.std(axis=1, ddof=1) / math.sqrt(n))
        records += [{"key": key, "kind": "task", "name": t, "doc_id": d, "correct": float(correct[i, d])}
                    for i, t in enumerate(tasks) for d in range(n)]
    accuracies, errors = np.array(accuracies), np.array(errors)
    for i, t in enumerate(tasks):
        table[f"acc:{t}"] = accuracies[:, i]
        table[f"se:acc:{t}"] = errors[:, i]
    table["acc:mean"] = accuracies.mean(axis=1)
    documents = pd.DataFrame(records)
    truth = float((p * (1 - p) / n).sum() / len(tasks) ** 2)
    from_records = variance_decomposition(table, documents=documents, metrics=["acc:mean"])
    from_errors = variance_decomposition(table, documents=None, metrics=["acc:mean"])
    estimate = components(from_records).loc[("m", "acc:mean"), "documents"]
    assert estimate == pytest.approx(truth, rel=0.05)
    assert components(from_errors).loc[("m", "acc:mean"), "documents"] == pytest.approx(estimate, rel=1e-9)
    notes = from_records.set_index("component")["note"]
    assert "per-document records" in notes["documents"] and "shared by all runs" in notes["documents"]
    assert "stored standard errors" in from_errors.set_index("component")["note"]["documents"]
    # here every run has its own documents, so the spread between runs *is* the document noise: the set
    # term (no floor, so the residual as observed) agrees with the documents component
    assert components(from_records).loc[("m", "acc:mean"), "set within source"] == pytest.approx(truth, rel=0.2)
    # a single task's accuracy
    single = variance_decomposition(table, documents=documents, metrics=["acc:b"])
    assert components(single).loc[("m", "acc:b"), "documents"] == pytest.approx(0.24 / n, rel=0.1)


def test_perplexity_document_component_is_the_spread_of_log_perplexity_over_window_draws():
    """Windows of varying length with a per-window NLL rate: the delta-method variance of log perplexity (mean
    over two texts of sum nll / sum tokens) and of log KL agrees with the variance of the metric over 400 fresh
    draws of the windows."""
    rng = np.random.default_rng(5)
    windows, texts = 30, ["news", "web"]
    rows, records = [], []
    for draw in range(400):
        key = f"draw{draw}"
        row = {"key": key, "model": "tiny", "method_label": "m", "family": "pruning",
               "calibration.source": f"src{draw % 2}", "calibration.set_index": draw // 2, "replicate": 0}
        for t, text in enumerate(texts):
            tokens = rng.integers(64, 256, windows).astype(float)
            rate = rng.normal(3.0 + t, 0.4, windows)
            nll = tokens * rate
            kl = tokens * rng.gamma(4.0, 0.05, windows)
            row[f"ppl:{text}"] = math.exp(nll.sum() / tokens.sum())
            row[f"kl_mean:{text}"] = kl.sum() / tokens.sum()
            records += [{"key": key, "kind": "perplexity", "name": text, "doc_id": w, "nll": nll[w],
                         "tokens": tokens[w], "kl_sum": kl[w]} for w in range(windows)]
        rows.append(row)
    table = pd.DataFrame(rows)
    result = components(variance_decomposition(table, documents=pd.DataFrame(records), metrics=["log_ppl", "log_kl"]))
    log_ppl = np.log(table[[f"ppl:{t}" for t in texts]]).mean(axis=1)
    log_kl = np.log(table[[f"kl_mean:{t}" for t in texts]]).mean(axis=1)
    assert result.loc[("m", "log_ppl"), "documents"] == pytest.approx(log_ppl.var(ddof=1), rel=0.15)
    assert result.loc[("m", "log_kl"), "documents"] == pytest.approx(log_kl.var(ddof=1), rel=0.15)


# -- against an independent computation ----------------------------------------------------------------------

def test_balanced_design_matches_the_nested_anova_mean_squares_by_hand():
    """With k sources x n sets, E[MS_between] = s2_within + n s2_source and E[MS_within] = s2_within: the source
    component is (MSB - MSW) / n and the set component MSW minus the float variance (REML equals ANOVA in a
    balanced design when the estimate is positive)."""
    rng = np.random.default_rng(11)
    k, n = 5, 4
    values = 3 + rng.normal(0, 1.5, (k, 1)) + rng.normal(0, 0.6, (k, n))
    grand = values.mean()
    msb = n * ((values.mean(axis=1) - grand) ** 2).sum() / (k - 1)
    msw = ((values - values.mean(axis=1, keepdims=True)) ** 2).sum() / (k * (n - 1))
    assert msb > msw
    float_sd = 0.3
    result = variance_decomposition(runs_table(values), floor_table({"m": float_sd}), metrics=["acc:mean"])
    got = components(result).loc[("m", "acc:mean")]
    assert got["source"] == pytest.approx((msb - msw) / n, rel=1e-3)
    assert got["set within source"] == pytest.approx(msw - float_sd ** 2, rel=1e-3)
    assert got["numerical noise"] == pytest.approx(float_sd ** 2)
    anova = variance_decomposition(runs_table(values), floor_table({"m": float_sd}), metrics=["acc:mean"],
                                   method="anova")
    assert components(anova).loc[("m", "acc:mean"), "source"] == pytest.approx((msb - msw) / n, rel=1e-9)


# -- shares, missing pieces, what is left out ----------------------------------------------------------------

def _with_tasks(values: np.ndarray, label: str = "m") -> pd.DataFrame:
    table = runs_table(values, label=label)
    table["acc:a"] = table["acc:mean"]
    table["se:acc:a"] = 0.05
    return table


def test_shares_sum_to_one_over_the_components_included():
    rng = np.random.default_rng(2)
    table = pd.concat([_with_tasks(0.5 + rng.normal(0, 0.05, (3, 3)), "with floor"),
                       _with_tasks(0.5 + rng.normal(0, 0.05, (3, 3)), "without floor")], ignore_index=True)
    result = variance_decomposition(table, floor_table({"with floor": 0.01}))
    for (label, metric), part in result.groupby(["method_label", "metric"]):
        included = part["shares_over"].iloc[0].split(" + ")
        measured = part[part["variance"].notna()]
        assert sorted(included) == sorted(measured["component"])
        assert measured["share"].sum() == pytest.approx(1.0)
        assert part[part["variance"].isna()]["share"].isna().all()
        total = measured["variance"].sum()
        assert part["total_sd"].iloc[0] == pytest.approx(math.sqrt(total))
    without = result[result["method_label"] == "without floor"].set_index("component")
    assert list(without.loc["numerical noise", ["variance", "share"]].isna()) == [True, True]
    assert "not measured" in without.loc["numerical noise", "note"]
    assert "includes numerical noise" in without.loc["set within source", "note"]
    assert "not estimated: numerical noise" in without["annotation"].iloc[0]


def test_one_source_missing_floor_no_sets_and_no_variance_give_nan_and_a_note_not_an_exception():
    rng = np.random.default_rng(4)
    one_source = _with_tasks(0.5 + rng.normal(0, 0.05, (1, 4)), "one source")
    one_set_each = _with_tasks(0.5 + rng.normal(0, 0.05, (3, 1)), "one set each")
    constant = _with_tasks(np.full((3, 3), 0.5), "constant")
    no_sets = _with_tasks(0.5 + rng.normal(0, 0.05, (2, 2)), "no set column")
    table = pd.concat([one_source, one_set_each, constant], ignore_index=True)
    result = variance_decomposition(table, floor=None).set_index(["method_label", "component"])
    assert np.isnan(result.loc[("one source", "source"), "variance"])
    assert "one source" in result.loc[("one source", "source"), "note"]
    # the sets of the one source still say how much a draw moves the score (float noise included)
    assert result.loc[("one source", "set within source"), "variance"] == pytest.approx(
        one_source["acc:mean"].var(ddof=1))
    for component in ("source", "set within source"):
        assert np.isnan(result.loc[("one set each", component), "variance"])
        assert "no source has two or more" in result.loc[("one set each", component), "note"]
    assert "one set left out" in result.loc[("one set each", "source"), "note"]
    assert result.loc[("constant", "source"), "variance"] == 0
    assert result.loc[("constant", "set within source"), "variance"] == 0
    assert result.loc[("constant", "documents"), "share"] == pytest.approx(1.0)
    for label in ("one source", "one set each", "constant"):
        assert "not measured" in result.loc[(label, "numerical noise"), "note"]
    missing = variance_decomposition(no_sets.drop(columns=["calibration.set_index"]), floor=None)
    assert missing.set_index("component").loc["source", "note"].startswith("not estimable")
    assert variance_decomposition(pd.DataFrame(), None).empty
    # a floor measured for another method only: this one's noise is unmeasured
    other = variance_decomposition(one_source, floor_table({"someone else": 0.1})).set_index("component")
    assert np.isnan(other.loc["numerical noise", "variance"])


def test_clipping_the_set_component_at_zero_is_said():
    rng = np.random.default_rng(8)
    table = _with_tasks(0.5 + rng.normal(0, 0.01, (3, 3)))
    result = variance_decomposition(table, floor_table({"m": 0.2})).set_index("component")
    assert result.loc["set within source", "variance"] == 0
    assert "set to 0" in result.loc["set within source", "note"]


def test_replicates_other_sizes_and_duplicate_grid_points_are_left_out():
    rng = np.random.default_rng(6)
    table = _with_tasks(0.5 + rng.normal(0, 0.05, (3, 3)))
    base = variance_decomposition(table, floor_table({"m": 0.01}))
    replicate = table.iloc[[0]].assign(key="rep", replicate=1, **{"acc:mean": 5.0})
    bigger = table.iloc[[1, 2]].assign(key=["big1", "big2"], **{"calibration.num_samples": 64, "acc:mean": -3.0})
    noisy = pd.concat([table, replicate, bigger, table.iloc[[3]]], ignore_index=True)
    result = variance_decomposition(noisy, floor_table({"m": 0.01}))
    assert np.allclose(result["variance"].to_numpy(float), base["variance"].to_numpy(float), equal_nan=True)
    assert "2 runs of other sizes dropped" in result["note"].iloc[0]


# -- finding and figure --------------------------------------------------------------------------------------

def test_finding_sentence_and_figure(tmp_path):
    rng = np.random.default_rng(9)
    table = pd.concat([_with_tasks(0.5 + rng.normal(0, 0.05, (3, 3)), "sparsegpt 50%"),
                       _with_tasks(0.5 + rng.normal(0, 0.05, (1, 3)), "gptq 3-bit g128")], ignore_index=True)
    result = variance_decomposition(table, floor_table({"sparsegpt 50%": 0.01}))
    text = summaries.variance_decomposition_finding(result)
    assert text.startswith("variance decomposition of mean accuracy: the source gives")
    assert "n/a (gptq 3-bit g128)" in text and "nan" not in text.lower().replace("n/a", "")
    v = components(result).loc[("sparsegpt 50%", "acc:mean")]
    share = v["source"] / (v["source"] + v["set within source"])
    assert f"{100 * share:.0f}% (sparsegpt 50%)" in text
    finding = summaries.seed_variance_finding({"tests": [], "per_task": pd.DataFrame(), "mean_range": None},
                                              decomposition=result)
    assert finding.endswith(text + ".")
    assert summaries.variance_decomposition_finding(None) == ""
    view = summaries.decomposition_view(result)
    assert list(view.columns) == ["method_label", "metric", "component", "sd", "share %", "note"]
    fig = plots.variance_shares(result, title="t", subtitle=summaries.DECOMPOSITION_BASIS,
                                components=list(COMPONENTS), labels=summaries.COMPONENT_LABELS)
    paths = plots.save(fig, tmp_path, "04_seed_variance", "variance")
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[-1] == "documents (evaluation sampling, shared by all runs)"
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["sparsegpt 50%", "gptq 3-bit g128"]
