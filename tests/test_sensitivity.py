"""calib sensitivity: the designed grid, its statistics (checked against independent formulations and on
simulated nulls), the recommendation, bad input, and the command end to end on a tiny model."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from calib_lib.errors import InvalidInput, UserError
from calib_lib.study import sensitivity as sens
from calib_lib.study.grids import seed_variance_grid


# -- methods, baselines, profile, grid -----------------------------------------------------------------------

def test_parse_method_defaults_and_settings():
    assert sens.parse_method("wanda") == {"name": "wanda", "sparsity": 0.5}
    assert sens.parse_method("gptq") == {"name": "gptq", "bits": 3, "group_size": 128}
    assert sens.parse_method("gptq:bits=4,group_size=64") == {"name": "gptq", "bits": 4, "group_size": 64}
    assert sens.parse_method("wanda:n=2,m=4") == {"name": "wanda", "n": 2, "m": 4}
    assert sens.parse_method("sparsegpt:sparsity=0.6") == {"name": "sparsegpt", "sparsity": 0.6}
    assert sens.parse_method({"name": "awq", "bits": 4}) == {"name": "awq", "bits": 4}


@pytest.mark.parametrize("text, words", [("nonsense", "unknown method"), ("rtn", "reads no calibration data"),
                                         ("magnitude", "reads no calibration data"), ("gptq:bits", "key=value"),
                                         ("gptq:colour=red", "gptq:colour=red")])
def test_parse_method_refuses_with_the_fix(text, words):
    with pytest.raises(InvalidInput, match=words):
        sens.parse_method(text)


def test_data_free_baseline_matches_the_setting():
    assert sens.data_free_baseline({"name": "wanda", "sparsity": 0.5}) == {"name": "magnitude", "sparsity": 0.5}
    assert sens.data_free_baseline({"name": "sparsegpt", "n": 2, "m": 4}) == {"name": "magnitude", "n": 2, "m": 4}
    assert sens.data_free_baseline({"name": "gptq", "bits": 4, "group_size": 64}) == {"name": "rtn", "bits": 4,
                                                                                       "group_size": 64}


def test_profile_and_grid_share_the_study_runs():
    profile = sens.sensitivity_profile("tiny-llama", ["wanda", "gptq:bits=4,group_size=32"], "tiny")
    assert profile.variance_sources == ("wikipedia", "news") and profile.sets == 2
    assert profile.num_samples in profile.sample_counts
    grid = sens.sensitivity_grid(profile)
    parts = pd.DataFrame([{**labels, "key": spec.key} for labels, spec in grid.points])
    per_method = parts[parts["method_label"] == "wanda 50%"]["part"].value_counts().to_dict()
    assert per_method == {"source": 4, "random": 1, "count": len(profile.sample_counts), "replicate": 2}
    assert set(parts.loc[parts["part"] == "baseline", "method_label"]) == {"magnitude 50%", "rtn 4-bit g32"}
    # the source runs are the study's seed-variance runs (same keys), and the first source's set 0 at the base
    # count is also a count point and replicate 0
    assert set(parts.loc[parts["part"] == "source", "key"]) == {s.key for s in seed_variance_grid(profile).specs}
    wanda = parts[parts["method_label"] == "wanda 50%"]
    base = set(wanda.loc[wanda["part"] == "replicate", "key"]) & set(wanda.loc[wanda["part"] == "count", "key"])
    assert len(base) == 1 and base <= set(wanda.loc[wanda["part"] == "source", "key"])
    assert len(grid.specs) == 1 + 2 + 2 * (4 + 1 + len(profile.sample_counts) + 2) - 2 * 2


@pytest.mark.parametrize("sources, words", [(["wikipedia"], "at least two sources"),
                                            (["wikipedia", "random-vocab"], "not a real calibration source"),
                                            (["wikipedia", "nowhere"], "not a real calibration source")])
def test_profile_refuses_bad_sources(sources, words):
    with pytest.raises(InvalidInput, match=words):
        sens.sensitivity_profile("tiny-llama", ["wanda"], "tiny", sources)


def test_unknown_budget_and_duplicate_method():
    with pytest.raises(InvalidInput, match="unknown budget"):
        sens.sensitivity_profile("tiny-llama", ["wanda"], "huge")
    with pytest.raises(InvalidInput, match="the same method twice"):
        sens.sensitivity_profile("tiny-llama", ["wanda", "wanda:sparsity=0.5"], "tiny")


def test_check_calibration_fails_before_any_run_when_the_corpus_is_too_small(tiny_llama):
    _, tokenizer = tiny_llama
    profile = sens.sensitivity_profile("tiny-llama", ["wanda"], "tiny")
    profile = replace(profile, num_samples=10 ** 6, sample_counts=(10 ** 6,))
    with pytest.raises(UserError, match="non-overlapping windows"):
        sens.check_calibration(profile, sens.sensitivity_grid(profile).specs, tokenizer)


def test_cost_estimate_uses_the_table_then_the_store(tmp_path):
    profile = sens.sensitivity_profile("smollm2-135m", ["wanda"], "quick")
    specs = sens.sensitivity_grid(profile).specs
    cost = sens.estimate_cost(profile, "quick", specs)
    assert cost["missing"] == cost["runs"] == len(specs)
    assert 60 < cost["seconds"] < 3600 and "2-core CPU" in cost["basis"]
    assert "to compute" in sens.describe_cost(cost)


# -- statistics ---------------------------------------------------------------------------------------------

def _table(means: dict, sd: float, sets: int, rng, metric="kl:geomean", label="wanda 50%"):
    rows = []
    for source, mean in means.items():
        for k in range(sets):
            y = mean + sd * rng.standard_normal()
            rows.append({"part": "source", "method_label": label, "calibration.source": source,
                         "calibration.set_index": k, "key": f"{label}-{source}-{k}",
                         metric: math.exp(y) if metric in sens.LOG else y})
    return pd.DataFrame(rows)


def test_pooled_set_sd_matches_an_anova_fit():
    import statsmodels.formula.api as smf
    rng = np.random.default_rng(0)
    table = _table({"a": 0.0, "b": 0.3, "c": -0.2}, 0.1, 4, rng)
    table.loc[table.index[:1], "kl:geomean"] *= 1.0          # unbalanced after dropping one row below
    table = table.drop(index=table.index[5])
    comparison = sens.source_comparison(table, "kl:geomean")
    fit = smf.ols("y ~ C(source)", data=pd.DataFrame({"y": np.log(table["kl:geomean"]),
                                                       "source": table["calibration.source"]})).fit()
    assert comparison["set_sd"].iloc[0] == pytest.approx(math.sqrt(fit.scale), rel=1e-9)
    assert comparison["df"].iloc[0] == fit.df_resid
    # the gap is each source's mean minus the best other one's (geometric means on the KL scale)
    means = np.log(table.groupby("calibration.source")["kl:geomean"].apply(lambda v: np.exp(np.log(v).mean())))
    row = comparison.set_index("source").loc["b"]
    assert row["gap"] == pytest.approx(means["b"] - means.drop("b").min())
    assert row["versus"] == means.drop("b").idxmin()


def test_a_clearly_worse_source_is_flagged_and_the_best_kept():
    rng = np.random.default_rng(1)
    table = _table({"wikipedia": 0.0, "news": 0.02, "code": 0.6}, 0.05, 3, rng)
    comparison = sens.source_comparison(table, "kl:geomean").set_index("source")
    assert not comparison.loc["code", "could_be_best"] and comparison.loc["code", "gap_low"] > 0
    assert comparison.loc["wikipedia", "could_be_best"] and comparison.loc["news", "could_be_best"]
    # higher-is-better metrics: 'worse' is still positive
    acc = _table({"wikipedia": 0.6, "news": 0.6, "code": 0.3}, 0.01, 3, rng, metric="acc:mean")
    c = sens.source_comparison(acc, "acc:mean").set_index("source")
    assert not c.loc["code", "could_be_best"] and c.loc["code", "gap"] > 0


def test_intervals_match_scipy_tukey_hsd():
    from scipy.stats import tukey_hsd
    rng = np.random.default_rng(6)
    table = _table({"a": 0.0, "b": 0.2, "c": 0.5}, 0.1, 3, rng)
    comparison = sens.source_comparison(table, "kl:geomean").set_index("source")
    y = np.log(table["kl:geomean"])
    groups = {s: y[table["calibration.source"] == s].to_numpy() for s in ("a", "b", "c")}
    ci = tukey_hsd(*groups.values()).confidence_interval(0.95)
    names = list(groups)
    for source, row in comparison.iterrows():
        i, j = names.index(source), names.index(row["versus"])
        assert row["gap_low"] == pytest.approx(ci.low[i, j], rel=1e-6)
        assert row["gap_high"] == pytest.approx(ci.high[i, j], rel=1e-6)


def test_simulated_nulls_rarely_rule_out_a_source():
    """Every source alike: any 'worse than the best' is a false claim; Tukey's HSD keeps the family-wise rate at
    alpha (5%; 7.5% allows for 400 studies' sampling error)."""
    rng = np.random.default_rng(2)
    studies, flagged = 400, 0
    for _ in range(studies):
        table = _table({s: 0.0 for s in ("a", "b", "c", "d")}, 0.1, 2, rng)
        flagged += not sens.source_comparison(table, "kl:geomean")["could_be_best"].all()
    assert flagged / studies <= 0.075


def test_random_check_and_sample_counts():
    rng = np.random.default_rng(3)
    table = _table({"wikipedia": 0.0, "news": 0.05}, 0.05, 3, rng)
    comparison = sens.source_comparison(table, "kl:geomean")
    random = pd.DataFrame([{"part": "random", "method_label": "wanda 50%", "key": "r", "kl:geomean": math.exp(1.5)}])
    counts = pd.DataFrame([{"part": "count", "method_label": "wanda 50%", "key": f"n{n}", "calibration.num_samples": n,
                            "kl:geomean": math.exp(v)} for n, v in ((1, 1.0), (4, 0.5), (16, 0.01), (64, 0.0))])
    table = pd.concat([table, random, counts], ignore_index=True)
    r = sens.random_check(table, comparison, "kl:geomean").iloc[0]
    assert r["worse"] and r["worst_real"] == "news"
    c = sens.sample_count_check(table, comparison, "kl:geomean").set_index("num_samples")
    assert list(c["enough"]) == [False, False, True, True]
    assert c.loc[1, "worse_than_largest"] and not c.loc[16, "worse_than_largest"]
    text = sens.recommendation(comparison, sens.random_check(table, comparison, "kl:geomean"),
                               sens.sample_count_check(table, comparison, "kl:geomean"), pd.DataFrame(),
                               sens.sensitivity_profile("tiny-llama", ["wanda"], "tiny"))
    assert "16 samples" in text and "avoid them" in text and "cannot be told apart" in text


def test_recommendation_names_the_source_to_avoid():
    rng = np.random.default_rng(4)
    table = _table({"wikipedia": 0.0, "news": 0.02, "code": 0.8}, 0.05, 3, rng)
    comparison = sens.source_comparison(table, "kl:geomean")
    baseline = pd.DataFrame([{"part": "baseline", "method_label": "magnitude 50%", "key": "m",
                              "kl:geomean": math.exp(1.0)}])
    text = sens.recommendation(comparison, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(),
                               sens.sensitivity_profile("tiny-llama", ["wanda"], "tiny"), pd.concat([table, baseline]))
    assert "avoid code" in text and "use " in text
    best = comparison.sort_values("gap").iloc[0]
    expected = f"{100 * (best['mean'] / math.exp(1.0) - 1):+.1f}%"
    assert f"Against no calibration data (magnitude 50%): KL to dense {expected} with {best['source']}" in text


def test_paired_extremes_against_a_direct_computation():
    rng = np.random.default_rng(5)
    table = _table({"wikipedia": 0.0, "code": 0.5}, 0.01, 2, rng)
    comparison = sens.source_comparison(table, "kl:geomean")
    docs = []
    for key, source in zip(table["key"], table["calibration.source"]):
        for task, n in (("arc_easy", 30), ("piqa", 10)):
            p = 0.7 if source == "wikipedia" else 0.5
            docs += [{"key": key, "kind": "task", "name": task, "doc_id": d, "correct": float(rng.random() < p)}
                     for d in range(n)]
    documents = pd.DataFrame(docs)
    e = sens.paired_extremes(table, documents, comparison).iloc[0]
    assert (e["best"], e["worst"], e["documents"]) == ("wikipedia", "code", 40)
    mean = documents.merge(table[["key", "calibration.source"]], on="key").groupby(
        ["calibration.source", "name"])["correct"].mean().unstack()
    direct = (mean.loc["wikipedia"] - mean.loc["code"]).mean()      # each task weighted equally
    assert e["difference"] == pytest.approx(direct)
    assert e["ci_low"] <= e["difference"] <= e["ci_high"]


# -- the command -------------------------------------------------------------------------------------------

def test_sensitivity_command_end_to_end(tmp_path, capsys):
    from calib_lib.cli import main
    results = tmp_path / "sens"
    assert main(["sensitivity", "--model", "tiny-llama", "--method", "wanda", "--budget", "tiny",
                 "--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    html = results / "tiny-llama-wanda50pct-tiny.html"
    assert html.is_file() and "report:" in out
    text = html.read_text()
    assert "Recommendation" in text and "data:image/png;base64" in text and "Traceback" not in text
    assert "sensitivity.open_report" not in text                  # the code is hidden: it reads as a report
    assert len(list((results / "runs").glob("*.zip"))) == 10
    # a rerun computes nothing
    assert main(["sensitivity", "--model", "tiny-llama", "--method", "wanda", "--budget", "tiny",
                 "--results-dir", str(results), "--dry-run"]) == 0
    assert "10 already in the store, 0 to compute" in capsys.readouterr().out


def test_sensitivity_command_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from calib_lib.cli import main
    monkeypatch.setattr("calib_lib.models.loading.hub_reachable", lambda: False)   # offline, as here
    results = tmp_path / "sens"
    assert main(["sensitivity", "--model", "nobody/no-such-model", "--method", "wanda", "--budget", "tiny",
                 "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("calib: Cannot load model 'nobody/no-such-model'") and len(err.strip().splitlines()) == 1
    assert not list(results.glob("*.ipynb")) and not list((results / "runs").glob("*.zip"))
    assert main(["sensitivity", "--model", "tiny-llama", "--method", "rtn", "--budget", "tiny",
                 "--results-dir", str(results)]) == 2
    assert "reads no calibration data" in capsys.readouterr().err


def test_local_checkpoints_work_and_conv1d_is_refused_before_any_run(tmp_path, tiny_llama, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    from calib_lib.cli import main
    model, tokenizer = tiny_llama
    good = tmp_path / "my-llama"
    model.save_pretrained(good)
    tokenizer.save_pretrained(good)
    results = tmp_path / "sens"
    assert main(["sensitivity", "--model", str(good), "--method", "gptq:bits=4,group_size=32", "--budget", "tiny",
                 "--results-dir", str(results), "--dry-run"]) == 0
    assert "sensitivity of" in capsys.readouterr().out
    gpt2 = tmp_path / "my-gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=tokenizer.vocab_size + 8,
                               n_positions=64)).save_pretrained(gpt2)
    tokenizer.save_pretrained(gpt2)
    assert main(["sensitivity", "--model", str(gpt2), "--method", "wanda", "--budget", "tiny",
                 "--results-dir", str(results)]) == 2
    assert "Conv1D" in capsys.readouterr().err
    assert not (results / "runs").is_dir() or not list((results / "runs").glob("*.zip"))
