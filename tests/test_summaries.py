"""The notebooks' statistics, finding sentences and budget paragraphs (calib_lib.study.summaries) on synthetic
tables and per-document records whose answer is known by construction. Self-contained: the tables are built
here, not borrowed from the claim tests."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from calib_lib import power, study
from calib_lib.study import summaries

METHODS = {"wanda 50%": "pruning", "gptq 3-bit g128": "quantization"}
TASKS = ["arc_easy", "piqa", "winogrande", "copa"]
TEXTS = ["wikipedia", "news"]


def _run(method, source, set_index=0, num_samples=16, rng=None, acc_shift=0.0, acc_noise=0.0, ppl_scale=1.0,
         ppl_noise=0.0, replicate=0, se=0.1, **labels):
    """One run's row as ``study.wide`` gives it: perplexity and KL per text, accuracy and its SE per task."""
    rng = rng or np.random.default_rng(0)
    row = {"key": f"{method}|{source}|{set_index}|{num_samples}|{labels.get('data', '')}|{replicate}",
           "method_label": method, "method": method.split()[0], "family": METHODS[method],
           "calibration.source": source, "calibration.set_index": set_index, "calibration.num_samples": num_samples,
           "replicate": replicate, **labels}
    for text in TEXTS:
        row[f"ppl:{text}"] = 30 * ppl_scale * (1 + ppl_noise * rng.standard_normal())
        row[f"kl_mean:{text}"] = 0.5 * ppl_scale
    for task in TASKS:
        row[f"acc:{task}"] = 0.5 + acc_shift + acc_noise * rng.standard_normal()
        row[f"se:acc:{task}"] = se
    row["acc:mean"] = np.mean([row[f"acc:{t}"] for t in TASKS])
    row["se:acc:mean"] = math.sqrt(len(TASKS) * se ** 2) / len(TASKS)
    row["ppl:geomean"] = float(np.exp(np.mean(np.log([row[f"ppl:{t}"] for t in TEXTS]))))
    row["kl:geomean"] = 0.5 * ppl_scale
    return row


def _source_table(random_acc_shift=-0.2, random_ppl_scale=3.0, noise=0.01):
    rng = np.random.default_rng(1)
    rows = [_run(m, s, rng=rng, acc_noise=noise, ppl_noise=0.01) for m in METHODS for s in ["wikipedia", "news", "books", "code"]]
    rows += [_run(m, "random-vocab", rng=rng, acc_shift=random_acc_shift, ppl_scale=random_ppl_scale) for m in METHODS]
    return pd.DataFrame(rows)


def _variance_table(pruning_noise=0.03, quant_noise=0.003, seed=0, ppl_noise=0.001, sets=5):
    rng = np.random.default_rng(seed)
    rows = []
    for method, family in METHODS.items():
        noise = pruning_noise if family == "pruning" else quant_noise
        for source in ["wikipedia", "news", "books", "code"]:
            for k in range(sets):
                rows.append(_run(method, source, k, rng=rng, acc_noise=noise, ppl_noise=ppl_noise))
    return pd.DataFrame(rows)


def _replicates(ppl_sd=(0.01, 0.05), acc_sd=0.01, seed=3):
    """Three float-order replicates of each method's base run (log-perplexity SD per method as given)."""
    rng = np.random.default_rng(seed)
    rows = []
    for (method, _), sd in zip(METHODS.items(), ppl_sd):
        for r in range(3):
            row = _run(method, "wikipedia", replicate=r, rng=rng, acc_noise=acc_sd)
            shift = math.exp(sd * rng.standard_normal())
            for text in TEXTS:
                row[f"ppl:{text}"] *= shift
            row["ppl:geomean"] *= shift
            rows.append(row)
    return pd.DataFrame(rows)


def _documents(keys_correct: dict) -> pd.DataFrame:
    """Per-document task records: {key: {task: 0/1 array}}."""
    rows = []
    for key, tasks in keys_correct.items():
        for task, correct in tasks.items():
            for doc_id, value in enumerate(correct):
                rows.append({"key": key, "kind": "task", "name": task, "doc_id": doc_id, "correct": float(value)})
    return pd.DataFrame(rows)


def test_significance_wording_follows_alpha_and_undefined_p():
    assert summaries.significance(0.01, "yes", "no") == "yes"
    assert summaries.significance(0.2, "yes", "no") == "no"
    assert summaries.significance(float("nan"), "yes", "no") == "no"


# -- 01 ------------------------------------------------------------------------------------------------------

def _count_table():
    rows = []
    for method in METHODS:
        for n, ppl in zip((1, 4, 16, 64), (100.0, 60.0, 50.0, 45.0)):
            rows.append(_run(method, "wikipedia", num_samples=n, ppl_scale=ppl / 30))
    return pd.DataFrame(rows)


def test_sample_count_finding_reports_the_curve_and_the_last_step_share_of_log_perplexity():
    table = _count_table()
    trends, plateaus = summaries.sample_count_analysis(table, ["ppl:geomean", "acc:mean"])
    text = summaries.sample_count_finding(trends, plateaus, dense_ppl=25.0)
    # perplexity 100 -> 45 over the grid; the last step 50 -> 45 is log(50/45) / log(100/45) of the change in log
    # perplexity (as claim F3 measures it), not 5 / 55 of the raw change
    share = round(100 * math.log(50 / 45) / math.log(100 / 45))
    assert share != round(100 * 5 / 55)
    assert "perplexity 100.0 with 1 sample(s), 50.0 with 16 and 45.0 with 64" in text
    assert f"brought {share}% of the total change in log perplexity" in text and text.endswith("Dense perplexity: 25.0.")
    row = plateaus[(plateaus.metric == "ppl:geomean")].iloc[0]
    assert row["scale"] == "log" and row["first"] == pytest.approx(100.0) and row["last"] == pytest.approx(45.0)
    no_tasks = summaries.sample_count_finding(*summaries.sample_count_analysis(table, ["ppl:geomean"]), 25.0)
    assert summaries.NO_TASKS in no_tasks


def test_sample_count_finding_says_whether_the_last_step_leaves_the_float_noise_floor():
    table = _count_table()
    trends, plateaus = summaries.sample_count_analysis(table, ["ppl:geomean"])
    small = pd.DataFrame([{"method_label": m, "metric": "log_ppl", "sd": 0.001, "df": 4, "runs": 3} for m in METHODS])
    large = small.assign(sd=0.2)
    assert "within the float-noise floor" not in summaries.sample_count_finding(trends, plateaus, 25.0, small)
    assert summaries.sample_count_finding(trends, plateaus, 25.0, small).count("beyond the float-noise floor") == 2
    text = summaries.sample_count_finding(trends, plateaus, 25.0, large)
    # log(50/45) = 0.105 < t_{.975,4} sqrt(2) 0.2 = 0.785
    assert text.count("within the float-noise floor") == 2 and "0.2 of log perplexity, 4 df" in text


# -- the noise floor and the interval columns ---------------------------------------------------------------

def test_noise_floor_table_pools_the_replicate_variance_of_log_perplexity():
    reps = _replicates()
    floor = summaries.noise_floor_table(reps)
    for method in METHODS:
        part = reps[reps["method_label"] == method]
        expected = np.std(np.log(part["ppl:geomean"]), ddof=1)
        assert summaries.floor_sd(floor, method, "log_ppl") == pytest.approx(expected)
        assert summaries.floor_dof(floor, method, "log_ppl") == 2
        assert summaries.floor_sd(floor, method, "acc:mean") == pytest.approx(np.std(part["acc:mean"], ddof=1))
    assert set(floor["metric"]) >= {"log_ppl", "log_ppl:text", "kl", "acc:mean", "acc:task"}
    assert summaries.noise_floor_table(None).empty and not summaries.has_floor(summaries.noise_floor_table(None))
    assert np.isnan(summaries.floor_sd(floor, "awq 3-bit g128", "log_ppl"))
    assert summaries.floor_dof(floor, "awq 3-bit g128", "log_ppl") == 0


def test_thresholds_use_the_t_and_studentized_range_quantiles():
    sd = 0.05
    assert summaries.floor_threshold(sd) == pytest.approx(1.959964 * math.sqrt(2) * sd, rel=1e-5)
    assert summaries.floor_threshold(sd, dof=2) == pytest.approx(sps.t.ppf(0.975, 2) * math.sqrt(2) * sd)
    # the range of two runs is their difference: Tukey's criterion for k = 2 is the two-run threshold
    assert summaries.range_threshold(2, sd) == pytest.approx(summaries.floor_threshold(sd), rel=1e-4)
    assert summaries.range_threshold(2, sd, 6) == pytest.approx(summaries.floor_threshold(sd, dof=6), rel=1e-4)
    assert summaries.range_threshold(6, sd, 4) > summaries.range_threshold(2, sd, 4)
    assert np.isnan(summaries.range_threshold(1, sd)) and np.isnan(summaries.floor_threshold(float("nan")))


def test_intervals_add_stored_error_bars_and_the_float_noise_band():
    table = _source_table()
    floor = pd.DataFrame([{"method_label": "wanda 50%", "metric": "log_ppl", "sd": 0.1, "df": 2, "runs": 3},
                          {"method_label": "wanda 50%", "metric": "acc:mean", "sd": 0.02, "df": 2, "runs": 3}])
    shown = summaries.intervals(table, floor)
    z = summaries.Z95
    assert np.allclose(shown["se_lo:acc:mean"], (table["acc:mean"] - z * table["se:acc:mean"]).clip(0, 1))
    assert np.allclose(shown["se_hi:acc:piqa"], (table["acc:piqa"] + z * 0.1).clip(0, 1))
    wanda = shown["method_label"] == "wanda 50%"
    q = sps.t.ppf(0.975, 2)          # the floor's SD comes from 3 replicates (df 2): the t quantile, not z
    assert np.allclose(shown.loc[wanda, "floor_hi:ppl:geomean"], table.loc[wanda, "ppl:geomean"] * math.exp(q * 0.1))
    assert np.allclose(shown.loc[wanda, "floor_lo:acc:mean"], table.loc[wanda, "acc:mean"] - q * 0.02)
    assert shown.loc[~wanda, "floor_lo:ppl:geomean"].isna().all()      # gptq has no replicates: no band
    assert "floor_lo:ppl:geomean" not in summaries.intervals(table, None)


def test_references_give_dense_and_baselines_without_dense_kl():
    rows = pd.DataFrame([{"method_label": "dense", "ppl:geomean": 20.0, "kl:geomean": 1e-12, "replicate": 0},
                         {"method_label": "magnitude 50%", "ppl:geomean": 300.0, "kl:geomean": 2.5, "replicate": 0}])
    refs = summaries.references(rows, metrics=["ppl:geomean", "kl:geomean"])
    assert refs == {"dense": {"ppl:geomean": 20.0}, "magnitude 50%": {"ppl:geomean": 300.0, "kl:geomean": 2.5}}


# -- what a budget can show ----------------------------------------------------------------------------------

def test_docs_needed_inverts_the_accuracy_mde():
    for effect, psi in ((0.05, 0.2), (0.1, 0.3), (0.02, 0.1)):
        n = summaries.docs_needed(effect, psi)
        assert power.accuracy_mde(int(n), discordance=psi) <= effect + 1e-9
        assert power.accuracy_mde(int(n) - 1, discordance=psi) > effect or np.isnan(power.accuracy_mde(int(n) - 1, discordance=psi))
    assert summaries.docs_needed(0.0, 0.2) == math.inf and summaries.docs_needed(0.3, 0.2) == math.inf


def test_expected_range_of_normal_draws():
    assert summaries.expected_range(2) == pytest.approx(2 / math.sqrt(math.pi), rel=1e-6)       # d2 = 1.128
    assert summaries.expected_range(3, 2.0) == pytest.approx(2 * 1.6926, rel=1e-4)
    rng = np.random.default_rng(0)
    simulated = np.ptp(rng.standard_normal((200_000, 5)), axis=1).mean()
    assert summaries.expected_range(5) == pytest.approx(simulated, rel=0.01)
    assert np.isnan(summaries.expected_range(1))


def _discordant_documents(table, flip_share, docs=40, seed=0):
    """Task records for every run of the table: runs of one method disagree on a `flip_share` of documents."""
    rng = np.random.default_rng(seed)
    base = {t: rng.integers(0, 2, docs) for t in TASKS}
    out = {}
    for key in table["key"]:
        out[key] = {t: np.where(rng.random(docs) < flip_share / 2, 1 - base[t], base[t]) for t in TASKS}
    return _documents(out)


def test_budget_facts_use_the_measured_discordance_and_the_power_functions():
    table = _count_table()
    documents = _discordant_documents(table, 0.3, docs=40)
    profile = study.get_profile("quick")
    facts = summaries.budget_facts(profile, table, documents, None, "01_sample_count")
    psi = summaries.discordance(documents, table)
    assert facts["docs_per_task"] == 40 and facts["tasks"] == 4 and 0.2 < psi < 0.4
    assert facts["mde_all"] == pytest.approx(power.accuracy_mde(160, facts["accuracy"], psi))
    assert facts["se_task"] == pytest.approx(0.1) and facts["se_mean"] == pytest.approx(0.05)
    (trend,) = facts["tests"]
    assert trend["test"] == "spearman" and trend["sizes"] == (4,) and trend["smallest_p"] == pytest.approx(2 / 24)
    # without per-document records: the profile's task limit and the conservative 2p(1-p)
    facts = summaries.budget_facts(profile, table, None, None, "01_sample_count")
    assert facts["docs_per_task"] == profile.suite["task_limit"] and np.isnan(facts["discordance"])
    assert facts["mde_all"] == pytest.approx(power.accuracy_mde(4 * profile.suite["task_limit"], facts["accuracy"]))


def test_budget_paragraph_says_what_the_budget_can_and_cannot_show():
    table = _count_table()
    profile = study.get_profile("quick")
    documents = _discordant_documents(table, 0.3, docs=40)
    floor = summaries.noise_floor_table(_replicates())
    text = summaries.budget_paragraph(profile, table, documents, floor, "01_sample_count")
    assert "scored on 40 documents" in text and "standard error of about 10.0 points" in text
    assert "measured between runs of one method" in text
    assert "Float-order replicates (3 runs" in text and "wanda 50%: log-perplexity SD" in text
    assert "cannot reach p < 0.05" in text and "smallest p 0.083" in text
    assert "nan" not in text.lower().replace("n/a", "")
    without = summaries.budget_paragraph(profile, table, None, None, "01_sample_count")
    assert "numerical noise floor is unmeasured" in without and "no per-document records" in without
    no_tasks = table.drop(columns=[c for c in table if "acc" in c])
    assert "task accuracy is unavailable" in summaries.budget_paragraph(profile, no_tasks, None, None, "01_sample_count").lower()
    sources = summaries.budget_paragraph(profile, _source_table(), None, None, "03_source_domain")
    assert "(friedman) can reach p < 0.05" in sources and "(wilcoxon)" in sources


# -- 03 ------------------------------------------------------------------------------------------------------

def test_source_domain_finding_names_random_tokens_worst():
    table = _source_table(-0.2, 3.0)
    analysis = summaries.source_domain_analysis(table, ["ppl:geomean", "acc:mean"])
    text = summaries.source_domain_finding(analysis)
    assert "random-vocab ranks last on 4 of 4 (method, metric) pairs" in text
    assert [t["metric"] for t in analysis["tests"]] == ["perplexity per text", "accuracy per task",
                                                         "log(cross/same) perplexity"]


def test_paired_accuracy_weights_each_task_equally_as_the_mean_accuracy_does():
    # task a: 10 documents, run 1 right on all, run 2 on none; task b: 30 documents, both right on all
    docs = _documents({"r1": {"a": np.ones(10), "b": np.ones(30)}, "r2": {"a": np.zeros(10), "b": np.ones(30)}})
    result = summaries.paired_accuracy(docs, "r1", "r2")
    assert result["difference"] == pytest.approx(0.5)          # mean over tasks of (1 - 0, 1 - 1); pooled would be 0.25
    assert result["n"] == 40 and result["discordant"] == 10
    assert result["p_mcnemar"] == pytest.approx(2 / 2 ** 10)
    assert result["ci_low"] <= 0.5 <= result["ci_high"]
    assert np.isnan(summaries.paired_accuracy(None, "r1", "r2")["difference"])


def test_source_domain_discussion_weighs_sources_against_noise_and_draws():
    table = _source_table(-0.2, 3.0)
    analysis = summaries.source_domain_analysis(table, ["ppl:geomean", "acc:mean"])
    text = summaries.source_domain_discussion(analysis, table)
    assert "source and draw are confounded" in text and "**Same domain**" in text
    assert "**Random tokens, wanda 50%**" in text and "worse than every real source" in text
    assert "**What this budget supports**" in text
    floor = summaries.noise_floor_table(_replicates(ppl_sd=(1e-4, 1e-4)))
    variance = _variance_table(ppl_noise=0.2)
    documents = _discordant_documents(table, 0.2)
    text = summaries.source_domain_discussion(analysis, table, floor, documents, variance)
    assert "beyond the noise floor" in text                       # sources ~1% apart against a 1e-4 floor
    assert "does not exceed what different draws of one source give" in text     # sets 20% apart
    assert "95% paired bootstrap CI" in text and "McNemar p" in text
    assert "nan" not in text.lower().replace("n/a", "")


# -- 04 ------------------------------------------------------------------------------------------------------

def test_task_swing_is_the_range_across_sets():
    table = _variance_table(0.03, 0.003)
    per_task, mean_range = summaries.task_swing(table)
    cell = table[(table["method_label"] == "wanda 50%") & (table["calibration.source"] == "news")]
    row = per_task[(per_task["method_label"] == "wanda 50%") & (per_task["calibration.source"] == "news")
                   & (per_task["metric"] == "acc:piqa")].iloc[0]
    assert np.isclose(row["range"], cell["acc:piqa"].max() - cell["acc:piqa"].min())
    assert np.isclose(row["mean_range"], cell["acc:mean"].max() - cell["acc:mean"].min())
    analysis = summaries.seed_variance_analysis(table, ["ppl:geomean", "acc:mean"])
    assert analysis["tests"][0]["metric"] == "log ppl:geomean"       # spreads of perplexity on the log scale
    text = summaries.seed_variance_finding(analysis)
    assert "single tasks swing by a median" in text and "larger by construction" in text


def test_set_spread_reports_ranges_log_spreads_and_the_floor_ratio():
    table = _variance_table(ppl_noise=0.05)
    floor = summaries.noise_floor_table(_replicates(ppl_sd=(0.01, 0.05)))
    spread = summaries.set_spread(table, ["ppl:geomean", "acc:mean"], floor)
    row = spread[(spread.method_label == "wanda 50%") & (spread["calibration.source"] == "news")
                 & (spread.metric == "ppl:geomean")].iloc[0]
    cell = table[(table.method_label == "wanda 50%") & (table["calibration.source"] == "news")]["ppl:geomean"]
    assert row["sets"] == 5 and row["range"] == pytest.approx(np.ptp(cell))
    assert row["log_sd"] == pytest.approx(np.std(np.log(cell), ddof=1))
    assert row["sd / floor"] == pytest.approx(row["log_sd"] / summaries.floor_sd(floor, "wanda 50%", "log_ppl"))
    assert "ci_low" not in spread                                     # ranges, not bootstrap CIs of 3-5 values


def test_swing_expected_from_the_floor_where_replicates_exist_else_from_the_stored_se():
    table = _variance_table(sets=3)
    floor = pd.DataFrame([{"method_label": "wanda 50%", "metric": "acc:task", "sd": 0.02, "df": 4, "runs": 3},
                          {"method_label": "wanda 50%", "metric": "acc:mean", "sd": 0.01, "df": 2, "runs": 3}])
    swing = summaries.swing_table(table, floor)
    wanda = swing[swing.method_label == "wanda 50%"]
    assert np.allclose(wanda.loc[wanda.metric == "piqa", "expected"], summaries.expected_range(3, 0.02))
    assert np.allclose(wanda.loc[wanda.metric == "mean", "expected"], summaries.expected_range(3, 0.01))
    gptq = swing[swing.method_label == "gptq 3-bit g128"]
    assert np.allclose(gptq.loc[gptq.metric == "piqa", "expected"], summaries.expected_range(3, 0.1))
    assert set(gptq["expected_from"]) == {"binomial SE (documents)"}
    text = summaries.seed_variance_finding(summaries.seed_variance_analysis(table, ["acc:mean"]), None, swing)
    assert "task ranges exceed their expected noise range" in text
    no_tasks = table.drop(columns=[c for c in table if "acc" in c])
    swing = summaries.swing_table(no_tasks, None)
    assert set(swing["metric"]) == {"log ppl geomean", "log ppl wikipedia", "log ppl news"}


# -- 05 (and F4) ---------------------------------------------------------------------------------------------

def _self_table(self_acc, real_acc, self_ppl=(40.0, 35.0), real_ppl=38.0):
    rows = []
    for method in METHODS:
        for (t_label, acc), ppl in zip(self_acc.items(), self_ppl):
            rows.append(_run(method, "self", acc_shift=acc - 0.5, ppl_scale=ppl / 30, data=t_label, kind="self"))
        rows.append(_run(method, "wikipedia", acc_shift=real_acc - 0.5, ppl_scale=real_ppl / 30, data="wikipedia",
                         kind="real"))
        rows.append(_run(method, "random-vocab", acc_shift=-0.2, ppl_scale=5, data="random-vocab", kind="random"))
    return pd.DataFrame(rows)


def test_self_vs_real_picks_by_accuracy_when_tasks_ran_else_by_perplexity():
    # schedule A has the higher accuracy, schedule B the lower perplexity
    table = _self_table({"self (A)": 0.56, "self (B)": 0.52}, real_acc=0.54)
    comparison = summaries.self_calibration_analysis(table)["comparison"]
    assert set(comparison["best self"]) == {"self (A)"} and set(comparison["picked by"]) == {"acc:mean"}
    assert np.allclose(comparison["self - real (points)"], 2.0)
    without_tasks = table.drop(columns=[c for c in table if "acc" in c])
    comparison = summaries.self_calibration_analysis(without_tasks)["comparison"]
    assert set(comparison["best self"]) == {"self (B)"} and set(comparison["picked by"]) == {"ppl:geomean"}
    text = summaries.self_calibration_finding(summaries.self_calibration_analysis(table))
    assert "best self-generated set by acc:mean: self (A)" in text and "(+2.0 points)" in text


def test_every_number_quoted_about_the_best_self_set_comes_from_the_run_it_names():
    """The issue #17 bug: 05 named the schedule picked by perplexity and quoted another schedule's accuracy."""
    table = _self_table({"self (A)": 0.56, "self (B)": 0.52}, real_acc=0.54)
    for pick_by in ("acc:mean", "ppl:geomean", "kl:geomean"):
        comparison = summaries.self_vs_real(table[table.kind == "self"], table[table.kind == "real"], pick_by=pick_by)
        for _, r in comparison.iterrows():
            picked = table.set_index("key").loc[r["self_key"]]
            real = table.set_index("key").loc[r["real_key"]]
            assert picked["data"] == r["best self"] and real["calibration.source"] == r["best real"]
            for short, column in summaries.QUOTED:
                assert r[f"self {short}"] == pytest.approx(picked[column])
                assert r[f"real {short}"] == pytest.approx(real[column])
            assert r["self - real (points)"] == pytest.approx(100 * (picked["acc:mean"] - real["acc:mean"]))
        expected = "self (A)" if pick_by == "acc:mean" else "self (B)"
        assert set(comparison["best self"]) == {expected}
    text = summaries.self_calibration_finding(summaries.self_calibration_analysis(table, pick_by="ppl:geomean"))
    assert "self (B), perplexity 35.0" in text and "self 0.520 vs wikipedia 0.540 (-2.0 points" in text


def test_self_vs_real_picks_do_not_depend_on_row_order_and_ties_go_to_the_lower_perplexity():
    table = _self_table({"self (A)": 0.55, "self (B)": 0.55}, real_acc=0.54)       # tied accuracy
    comparison = summaries.self_vs_real(table[table.kind == "self"], table[table.kind == "real"])
    assert set(comparison["best self"]) == {"self (B)"}                                # lower perplexity
    shuffled = table.sample(frac=1, random_state=3)
    again = summaries.self_vs_real(shuffled[shuffled.kind == "self"], shuffled[shuffled.kind == "real"])
    pd.testing.assert_frame_equal(comparison, again)


def test_paired_comparison_is_of_the_same_two_runs_and_agrees_with_their_accuracies():
    table = _self_table({"self (A)": 0.56, "self (B)": 0.52}, real_acc=0.54)
    correct = {}
    for _, r in table.iterrows():     # documents consistent with each run's accuracy: first round(acc * 50) right
        correct[r["key"]] = {t: (np.arange(50) < round(r[f"acc:{t}"] * 50)).astype(float) for t in TASKS}
    documents = _documents(correct)
    comparison = summaries.self_vs_real(table[table.kind == "self"], table[table.kind == "real"], documents=documents)
    for _, r in comparison.iterrows():
        paired = summaries.paired_accuracy(documents, r["self_key"], r["real_key"])
        assert 100 * paired["difference"] == pytest.approx(r["self - real (points)"])
        assert r["paired ci low (points)"] == pytest.approx(100 * paired["ci_low"]) and r["documents"] == 200
    text = summaries.self_calibration_finding(summaries.self_calibration_analysis(table, documents))
    assert "95% paired bootstrap CI" in text and "200 documents" in text


def test_notebook_05_compares_with_the_best_real_source_as_claim_f4_does():
    table = _self_table({"self (A)": 0.56, "self (B)": 0.52}, real_acc=0.54)
    source = _source_table()
    source.loc[source["calibration.source"] == "books", [f"acc:{t}" for t in TASKS] + ["acc:mean"]] = 0.60
    self_runs, real_runs = summaries.self_vs_real_candidates(table, source)
    assert "random-vocab" not in set(real_runs["calibration.source"])
    assert set(real_runs["calibration.source"]) == {"wikipedia", "news", "books", "code"}
    analysis = summaries.self_calibration_analysis(table, source_table=source)
    every = analysis["comparison_all"]
    assert set(every["best real"]) == {"books"} and set(every["real candidates"]) == {5}
    assert np.allclose(every["self - real (points)"], -4.0)
    text = summaries.self_calibration_finding(analysis)
    assert "against the best of every real source (as claim F4)" in text and "best of 5 real sources books" in text
    # the function claim F4 calls picks the same self-generated set
    f4 = summaries.self_vs_real(self_runs, real_runs)
    pd.testing.assert_frame_equal(f4, every)


def test_notebook_05_and_claim_f4_pick_the_same_self_generated_set():
    from calib_lib import findings
    table = _self_table({"self (A)": 0.56, "self (B)": 0.52}, real_acc=0.54)
    source = table[table["kind"] != "self"].drop(columns=["data", "kind"])
    f4 = findings.f4_self_generated(source, table)
    assert "self (A)" in f4["summary"] and "self (B)" not in f4["summary"]


def test_p_values_in_prose_never_read_zero():
    from calib_lib.study.labels import fmt_p
    assert fmt_p(0.0) == "< 0.001" and fmt_p(3e-7) == "< 0.001"
    assert fmt_p(0.0012) == "0.001" and fmt_p(0.0471) == "0.047" and fmt_p(1.0) == "1.000"
    assert fmt_p(float("nan")) == "n/a" and fmt_p(None) == "n/a"
