"""The claim rules of calib_lib.findings: on synthetic result tables built so that each claim holds, or fails,
by construction; on bad input (never an exception, always "untestable" naming what is missing); and on
seeded simulated studies: without the claimed effect "holds" must come out at most 5% of the time."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from calib_lib import findings, stats, study
from calib_lib.findings import UNTESTABLE

TASKS = ["arc_easy", "piqa", "winogrande", "copa"]
TEXTS = ["wikipedia", "news"]
SOURCES = ["wikipedia", "news", "books", "code", "c4", "wikitext2"]
PAPER = {"sparsegpt 50%": "pruning", "gptq 3-bit g128": "quantization"}       # the methods the claims name


# -- helpers shared with tests/test_summaries.py (keep their names and signatures) ---------------------------

METHODS = {"wanda 50%": "pruning", "gptq 3-bit g128": "quantization"}


def _run(method, source, set_index=0, num_samples=16, rng=None, acc_shift=0.0, acc_noise=0.0, ppl_scale=1.0,
         ppl_noise=0.0, **labels):
    rng = rng or np.random.default_rng(0)
    row = {"key": f"{method}|{source}|{set_index}|{num_samples}|{labels.get('data', '')}", "method_label": method,
           "method": method.split()[0], "family": study.method_family(method.split()[0]), "calibration.source": source,
           "calibration.set_index": set_index, "calibration.num_samples": num_samples, **labels}
    for text in TEXTS:
        row[f"ppl:{text}"] = 30 * ppl_scale * (1 + ppl_noise * rng.standard_normal())
    for task in TASKS:
        row[f"acc:{task}"] = 0.5 + acc_shift + acc_noise * rng.standard_normal()
    row["acc:mean"] = np.mean([row[f"acc:{t}"] for t in TASKS])
    row["ppl:geomean"] = float(np.exp(np.mean(np.log([row[f"ppl:{t}"] for t in TEXTS]))))
    return row


def _variance_table(pruning_noise, quant_noise, seed=0, ppl_noise=0.001):
    rng = np.random.default_rng(seed)
    rows = []
    for method, family in METHODS.items():
        noise = pruning_noise if family == "pruning" else quant_noise
        for source in ["wikipedia", "news", "books", "code"]:
            for k in range(5):
                rows.append(_run(method, source, k, rng=rng, acc_noise=noise, ppl_noise=ppl_noise))
    return pd.DataFrame(rows)


def _source_table(random_acc_shift, random_ppl_scale, noise=0.01):
    rng = np.random.default_rng(1)
    rows = [_run(m, s, rng=rng, acc_noise=noise, ppl_noise=0.01) for m in METHODS for s in ["wikipedia", "news", "books", "code"]]
    rows += [_run(m, "random-vocab", rng=rng, acc_shift=random_acc_shift, ppl_scale=random_ppl_scale) for m in METHODS]
    return pd.DataFrame(rows)


# -- this file's tables ----------------------------------------------------------------------------------------

def _paper_run(method, source, set_index=0, num_samples=16, rng=None, acc_shift=0.0, acc_noise=0.0, log_ppl=0.0,
               ppl_noise=0.0, **labels):
    """A run row; log perplexity moves by `ppl_noise` (shared by the texts) around log(30) + `log_ppl`."""
    rng = rng or np.random.default_rng(0)
    row = _run(method, source, set_index, num_samples, rng, acc_shift, acc_noise, **labels)
    shared = ppl_noise * rng.standard_normal()
    for text in TEXTS:
        row[f"ppl:{text}"] = float(np.exp(np.log(30) + log_ppl + shared + 0.2 * ppl_noise * rng.standard_normal()))
    row["ppl:geomean"] = float(np.exp(np.mean(np.log([row[f"ppl:{t}"] for t in TEXTS]))))
    return row


def _spread_table(pruning_noise, quant_noise, seed=0, sets=5, sources=SOURCES, acc_noise=0.0, methods=PAPER):
    """Every source drawn `sets` times; each family's log perplexity spreads by its own SD."""
    rng = np.random.default_rng(seed)
    rows = [_paper_run(method, source, k, rng=rng, ppl_noise=pruning_noise if family == "pruning" else quant_noise,
                       acc_noise=acc_noise)
            for method, family in methods.items() for source in sources for k in range(sets)]
    return pd.DataFrame(rows)


def _floor(sd_log_ppl=1e-4, sd_acc=1e-4, df=4, methods=PAPER):
    rows = [{"method_label": m, "family": f, "metric": metric, "sd": sd, "df": df, "runs": df + 1, "note": ""}
            for m, f in methods.items()
            for metric, sd in (("log_ppl", sd_log_ppl), ("log_ppl:text", sd_log_ppl), ("acc:mean", sd_acc),
                               ("acc:task", sd_acc))]
    return pd.DataFrame(rows)


# -- each rule on tables built to hold or to fail -----------------------------------------------------------

def test_f1_follows_which_family_spreads_more():
    table = _spread_table(0.2, 0.02)
    holds = findings.f1_sensitivity(table[table["calibration.set_index"] == 0], table, floor=_floor())
    assert holds["verdict"] == "holds", holds["summary"]
    assert holds["sd_pruning"] > holds["sd_quantization"] and holds["ci_low"] > 0
    table = _spread_table(0.02, 0.2)
    reverse = findings.f1_sensitivity(table[table["calibration.set_index"] == 0], table, floor=_floor())
    assert reverse["verdict"] == "does not hold" and reverse["ci_high"] < np.log(2)


def test_f1_spread_within_the_float_floor_does_not_hold_up():
    table = _spread_table(0.2, 0.02)
    row = findings.f1_sensitivity(table[table["calibration.set_index"] == 0], table, floor=_floor(sd_log_ppl=0.3))
    assert row["verdict"] == "inconclusive" and "float floor" in row["summary"]


def test_f1_falls_back_to_other_methods_and_says_so():
    methods = {"wanda 50%": "pruning", "awq 3-bit g128": "quantization"}
    table = _spread_table(0.2, 0.02, methods=methods)
    row = findings.f1_sensitivity(table[table["calibration.set_index"] == 0], table)
    assert "the claim names sparsegpt" in row["summary"] and "wanda 50% stands in" in row["summary"]
    assert "no noise floor given" in row["summary"]


def test_f1_untestable_with_few_sets_says_how_many_would_do():
    table = _spread_table(0.2, 0.02, sets=2, sources=SOURCES[:3])
    row = findings.f1_sensitivity(table[table["calibration.set_index"] == 0], table)
    assert row["verdict"] == UNTESTABLE and row["mde"] > np.log(2)
    assert "needs >= 18 real calibration sets per method" in row["what_would_decide"]


def _random_table(random_log_ppl, random_acc_shift, noise=0.01, random_draws=3, sets=4):
    """Source-domain and seed-variance tables: every real source drawn `sets` times, random-vocab
    `random_draws` times, shifted by `random_log_ppl` and `random_acc_shift`."""
    rng = np.random.default_rng(1)
    rows = [_paper_run(m, s, k, rng=rng, acc_noise=noise, ppl_noise=noise) for m in PAPER for s in SOURCES[:4]
            for k in range(sets)]
    rows += [_paper_run(m, "random-vocab", k, rng=rng, log_ppl=random_log_ppl, acc_shift=random_acc_shift,
                        acc_noise=noise, ppl_noise=noise) for m in PAPER for k in range(random_draws)]
    table = pd.DataFrame(rows)
    source = table[(table["calibration.set_index"] == 0) | (table["calibration.source"] == "random-vocab")]
    return source, table[table["calibration.source"] != "random-vocab"]


def test_f2_random_tokens_worst_or_not():
    holds = findings.f2_random_worst(*_random_table(0.5, -0.08))
    assert holds["verdict"] == "holds", holds["summary"]
    assert holds["ci_low"] > 0 and holds["p_value"] < 0.05
    better = findings.f2_random_worst(*_random_table(-0.5, +0.08))
    assert better["verdict"] == "does not hold" and "credibly worse than random-vocab" in better["summary"]


def test_f2_counts_draws_not_blocks_and_a_tie_is_no_evidence():
    source, variance = _random_table(0.5, -0.08)
    frame = findings.f2_frame(source, variance)
    assert set(frame["measure"]) == {"log_ppl", "acc"} and len(frame) == 2 * 2 * 4
    assert (frame["n_random"] == 3).all() and (frame["n_real"] == 4).all()
    # random-vocab's runs equal to one real source's: a difference of exactly 0, and no "holds"
    tied = source.copy()
    books = variance[variance["calibration.source"] == "books"]
    for method in PAPER:
        rows = tied.index[(tied["calibration.source"] == "random-vocab") & (tied["method_label"] == method)]
        same = books[books["method_label"] == method].iloc[:len(rows)]
        for column in [c for c in tied.columns if c.startswith(("ppl:", "acc:"))]:
            tied.loc[rows, column] = same[column].to_numpy()
    frame = findings.f2_frame(tied, variance)
    assert findings.f2_random_worst(tied, variance)["verdict"] != "holds"
    assert frame.loc[frame["source"] == "books", "difference"].abs().max() < 0.05


def test_f2_without_a_second_draw_is_untestable():
    source, variance = _random_table(0.5, -0.08, random_draws=1, sets=1)
    row = findings.f2_random_worst(source, variance)
    assert row["verdict"] == UNTESTABLE and "draw-to-draw" in row["summary"]
    assert "seed-variance grid" in row["what_would_decide"]


def test_f2_leaves_out_a_method_drawn_once_per_source_and_names_it():
    """Source-domain runs of a method without sets (Wanda, AWQ in the standard profile) must not make F2
    untestable for the methods with draws: same verdict and numbers as without them, the extra method named."""
    source, variance = _random_table(0.5, -0.08)
    rng = np.random.default_rng(7)
    extra = pd.DataFrame([_paper_run("wanda 50%", s, 0, rng=rng, acc_noise=0.01, ppl_noise=0.01,
                                     **({"log_ppl": -0.5, "acc_shift": 0.08} if s == "random-vocab" else {}))
                          for s in (*SOURCES[:4], "random-vocab")])
    alone = findings.f2_random_worst(source, variance)
    row = findings.f2_random_worst(pd.concat([source, extra], ignore_index=True), variance)
    assert alone["verdict"] == row["verdict"] == "holds"      # random-vocab is *best* for wanda: not tested
    assert row["ci_low"] == alone["ci_low"] and row["n"] == alone["n"]
    assert "not tested, one draw per source (no draw-to-draw SD): wanda 50%" in row["summary"]
    assert "not tested" not in alone["summary"]


def test_f2_inconclusive_says_which_comparison_and_how_many_draws_would_decide():
    # random tokens slightly *better* than the real sources for every method, not beyond the draw noise
    row = findings.f2_random_worst(*_random_table(-0.004, +0.0005, noise=0.01, random_draws=4, sets=4))
    assert row["verdict"] == "inconclusive", row["summary"]
    decide = row["what_would_decide"]
    assert "random-vocab's badness minus" in decide and "below 0: random tokens did better" in decide
    assert "credibly better than that source (does not hold)" in decide and "sets of random-vocab" in decide
    factor = float(decide.split("about ")[1].split("x the draws")[0])
    assert factor > 1                                # it needs more draws than it has, never fewer


def _count_table(pruning_keeps_improving: bool, counts=(1, 2, 4, 8, 16, 32, 64, 128), methods=PAPER):
    rows = []
    for method, family in methods.items():
        d = 5.0 if (family == "pruning") == pruning_keeps_improving else 1.0
        for n in counts:
            y = 0.5 * 10 ** (-np.log2(n) / d)
            rows.append(_paper_run(method, "wikipedia", num_samples=n, log_ppl=y))
    table = pd.DataFrame(rows)
    rng = np.random.default_rng(3)
    for text in TEXTS:
        table[f"ppl:{text}"] *= np.exp(0.002 * rng.standard_normal(len(table)))
    return table


def test_f3_saturation_fits_decide_which_plateaus_first():
    holds = findings.f3_plateau(_count_table(True), _floor(sd_log_ppl=0.002))
    assert holds["verdict"] == "holds", holds["summary"]
    assert holds["ci_low"] > 0 and "90% of its improvement" in holds["summary"]
    assert findings.f3_plateau(_count_table(False), _floor(sd_log_ppl=0.002))["verdict"] == "does not hold"


def test_f3_needs_six_sample_counts_and_names_the_methods_it_used():
    row = findings.f3_plateau(_count_table(True, counts=(1, 4, 16, 64)))
    assert row["verdict"] == UNTESTABLE and ">= 6 sample counts" in row["what_would_decide"]
    wanda = findings.f3_plateau(_count_table(True, methods={"wanda 50%": "pruning", "gptq 3-bit g128": "quantization"}))
    assert "the claim names sparsegpt" in wanda["summary"]


def _self_case(difference, docs=6000, seed=2):
    """Per method, one real source and one self-generated set, scored on the same documents; self's
    per-document correctness differs from real's on 5% of documents, shifted by `difference` on average."""
    rng = np.random.default_rng(seed)
    rows, documents = [], []
    for method in PAPER:
        real_correct = {t: (rng.random(docs) < 0.6).astype(float) for t in TASKS[:2]}
        self_correct = {}
        for t, c in real_correct.items():
            s = c.copy()
            flip = rng.random(docs) < np.where(c == 1, 0.025 / 0.6, 0.025 / 0.4)    # 5% discordant, balanced
            s[flip] = 1 - s[flip]
            move = rng.random(docs) < abs(difference) / (0.6 if difference < 0 else 0.4)
            s[move & (s == (1 if difference < 0 else 0))] = 0 if difference < 0 else 1
            self_correct[t] = s
        for kind, data, source, correct in (("real", "wikipedia", "wikipedia", real_correct),
                                            ("self", "self (t 1->1)", "self", self_correct)):
            row = _paper_run(method, source, data=data, kind=kind)
            for t in TASKS:
                row[f"acc:{t}"] = correct[t].mean() if t in correct else np.nan
            row["acc:mean"] = np.mean([correct[t].mean() for t in correct])
            rows.append(row)
            for t, c in correct.items():
                documents.append(pd.DataFrame({"key": row["key"], "kind": "task", "name": t,
                                               "doc_id": np.arange(docs), "correct": c}))
    table = pd.DataFrame(rows).drop(columns=[f"acc:{t}" for t in TASKS[2:]])
    return table[table["kind"] == "real"].drop(columns=["data", "kind"]), table, pd.concat(documents)


def test_f4_is_an_equivalence_test_on_paired_documents():
    source, selfgen, documents = _self_case(0.0)
    holds = findings.f4_self_generated(source, selfgen, documents)
    assert holds["verdict"] == "holds", holds["summary"]
    assert -0.01 < holds["ci_low"] and holds["ci_high"] < 0.01
    source, selfgen, documents = _self_case(-0.06)
    assert findings.f4_self_generated(source, selfgen, documents)["verdict"] == "does not hold"


def test_f4_without_documents_or_with_few_says_what_is_missing():
    source, selfgen, documents = _self_case(0.0, docs=40)
    row = findings.f4_self_generated(source, selfgen, None)
    assert row["verdict"] == UNTESTABLE and "per-document records" in row["summary"]
    assert "self (t 1->1)" in row["summary"]                 # names the runs it would compare
    row = findings.f4_self_generated(source, selfgen, documents)
    assert row["verdict"] == UNTESTABLE and "documents per task" in row["what_would_decide"]
    assert "points (90% CI" in row["summary"]                # what the budget shows, though it cannot decide


def _binomial_spread_table(docs=20, sets=5, seed=0):
    """No calibration effect: every set's task accuracy is a fresh binomial draw on `docs` documents."""
    rng = np.random.default_rng(seed)
    rows = []
    for method in PAPER:
        for source in SOURCES:
            for k in range(sets):
                row = _paper_run(method, source, k, rng=rng)
                for t in TASKS:
                    row[f"acc:{t}"] = rng.binomial(docs, 0.5) / docs
                row["acc:mean"] = np.mean([row[f"acc:{t}"] for t in TASKS])
                rows.append(row)
    return pd.DataFrame(rows)


def test_f5_pure_noise_does_not_hold_up():
    # the old rule (ranges, Wilcoxon) said "holds" on exactly this: a mean of noisy tasks varies less by construction
    table = _binomial_spread_table()
    row = findings.f5_task_swing(table, docs_per_task=20)
    assert row["verdict"] != "holds", row["summary"]
    assert "binomial" in row["summary"] or row["verdict"] == UNTESTABLE


def test_f5_accuracy_components_separate_coherent_shifts_from_document_flips():
    inputs = findings.simulate_study("F5", replace(findings.QUICK, docs_per_task=400, tasks=2), "null", seed=4)
    components = findings.accuracy_components(inputs["variance_table"], inputs["documents"])
    assert set(components["noise_from"]) == {"documents"}
    # no calibration effect: the excess is noise around 0, small against the total
    assert abs(components["excess"].mean()) < 0.5 * components["total"].mean()
    row = findings.f5_task_swing(inputs["variance_table"])
    assert row["verdict"] == UNTESTABLE and "binomial noise" in row["summary"]


def test_f6_rank_agreement():
    budget = replace(findings.QUICK, variance_sources=6, sets=6, docs_per_task=400)
    inputs = findings.simulate_study("F6", budget, "claimed", seed=0)
    row = findings.f6_ppl_vs_accuracy(inputs["variance_table"], None, inputs["documents"], inputs["floor"])
    assert row["verdict"] == "holds", row["summary"]
    # perplexity ranks the sets as accuracy does: the claim is contradicted
    table = inputs["variance_table"].copy()
    table["acc:mean"] = 0.5 - 0.5 * (np.log(table["ppl:geomean"]) - np.log(table["ppl:geomean"]).mean())
    row = findings.f6_ppl_vs_accuracy(table, None, inputs["documents"], inputs["floor"])
    assert row["verdict"] == "does not hold" and row["ci_low"] > 0.5
    # accuracy does not move across sets: rho's half is decided, and what would decide names the other half
    inputs = findings.simulate_study("F6", budget, "null", seed=0)
    row = findings.f6_ppl_vs_accuracy(inputs["variance_table"], None, inputs["documents"], inputs["floor"])
    assert row["verdict"] == "inconclusive" and row["ci_high"] < 0.5, row["summary"]
    assert row["what_would_decide"].startswith("rho is decided") and "documents per task" in row["what_would_decide"]


# -- bad input: untestable, naming what is missing; never an exception ----------------------------------------

def test_bad_input_is_untestable_and_never_raises():
    out = findings.verdicts({})
    assert list(out["claim"]) == list(findings.CLAIMS) and (out["verdict"] == UNTESTABLE).all()
    assert out["summary"].str.contains("table").all()
    table = _spread_table(0.2, 0.02)
    one_run = table.head(1)
    nan_table = table.assign(**{f"ppl:{t}": np.nan for t in TEXTS}, **{f"acc:{t}": np.nan for t in TASKS},
                             **{"acc:mean": np.nan})
    flat = table.assign(**{f"ppl:{t}": 30.0 for t in TEXTS})
    for bad in (one_run, nan_table, flat, table.iloc[:0]):
        rows = findings.verdicts({"source_domain": bad, "seed_variance": bad, "sample_count": bad,
                                  "self_calibration": bad.assign(kind="self")})
        assert set(rows["verdict"]) <= set(findings.VERDICTS)
        assert not rows["summary"].str.contains("could not be computed").any(), rows["summary"].tolist()
        assert (rows.loc[rows["verdict"] == UNTESTABLE, "summary"].str.len() > 12).all()
    flat_row = findings.f1_sensitivity(flat, flat)
    assert flat_row["verdict"] == UNTESTABLE and "no variance" in flat_row["summary"]


def test_missing_replicates_are_named():
    table = _spread_table(0.2, 0.02)
    floor = _floor(methods={"gptq 3-bit g128": "quantization"})
    row = findings.f1_sensitivity(table[table["calibration.set_index"] == 0], table, floor=floor)
    assert row["verdict"] == UNTESTABLE and "replicates of sparsegpt 50%" in row["summary"]
    assert "noise-floor grid" in row["what_would_decide"]


def test_holm_across_the_claims_can_withdraw_a_holds():
    rows = pd.DataFrame([findings._row(c, "holds", summary="x", p_value=p)
                         for c, p in zip(findings.CLAIMS, [0.001, 0.03, 0.04, np.nan, 0.2, 0.01])])
    rows.loc[3, "verdict"] = UNTESTABLE
    out = findings.holm(rows)
    assert out.loc[0, "verdict"] == "holds" and np.isclose(out.loc[0, "p_holm"], 0.005)
    assert out.loc[1, "verdict"] == "inconclusive" and "Holm" in out.loc[1, "summary"]
    assert np.isnan(out.loc[3, "p_holm"]) and out.loc[3, "verdict"] == UNTESTABLE


def test_verdicts_table_has_the_columns_the_notebook_shows():
    table = _spread_table(0.2, 0.02)
    tables = {"source_domain": _random_table(1.0, -0.2)[0], "seed_variance": table, "sample_count": _count_table(True),
              "self_calibration": _self_case(0.0)[1]}
    out = findings.verdicts(tables, None, _floor(), docs_per_task=20)
    assert list(out.columns[:len(findings.COLUMNS)]) == findings.COLUMNS
    assert list(out["claim"]) == list(findings.CLAIMS)
    assert set(out["verdict"]) <= set(findings.VERDICTS)
    untestable = out[out["verdict"] == UNTESTABLE]
    assert (untestable["what_would_decide"].str.len() > 5).all()
    assert findings.discussion(out.assign(model="m")).startswith("Of the six claims")
    assert "F4" in findings.budget_paragraph(out)


def test_noise_floor_table_matches_stats_noise_floor():
    inputs = findings.simulate_study("F1", findings.QUICK, "null", seed=0)
    rows = []
    for label, family in PAPER.items():
        for rep in range(3):
            rows.append(_paper_run(label, "wikipedia", rng=np.random.default_rng(rep + 10 * len(label)), ppl_noise=0.05,
                             acc_noise=0.02) | {"replicate": rep, "key": f"{label}{rep}"})
    replicates = pd.DataFrame(rows)
    table = findings.noise_floor_table(replicates)
    replicates["log_ppl"] = findings.log_ppl(replicates)
    for label in PAPER:
        part = replicates[replicates["method_label"] == label]
        expected = stats.noise_floor(part, "log_ppl", ["method_label", "calibration.source"])
        got = table[(table["method_label"] == label) & (table["metric"] == "log_ppl")].iloc[0]
        assert np.isclose(got["sd"], expected["sd"]) and got["df"] == expected["df"]
    assert set(table["metric"]) == {"log_ppl", "log_ppl:text", "acc:mean", "acc:task"}
    assert len(inputs["floor"]) and findings.noise_floor_table(pd.DataFrame()).empty


def test_budgets_follow_the_profiles():
    quick = findings.Budget.from_profile(study.get_profile("quick"))
    standard = findings.Budget.from_profile(study.get_profile("standard"))
    assert quick.docs_per_task == 20 and len(quick.sample_counts) == 4 and quick.sets == 3
    assert standard.docs_per_task == 300 and len(standard.sample_counts) == 8 and standard.replicates == 4
    # standard draws sets for the claims' pair only: the simulated budget has those two methods, and
    # random-vocab drawn as often as a real source
    assert [family for _, family in standard.methods] == ["pruning", "quantization"]
    assert standard.random_sets == standard.sets == 5 and standard.variance_sources == 6


def test_the_module_docstring_states_every_rule():
    for claim in findings.CLAIMS:
        assert f"\n{claim}  {findings.RULES[claim]}\n" in findings.__doc__


# -- simulated studies ---------------------------------------------------------------------------------------

BASE = findings.Budget("test")
LOW_NOISE = findings.Noise(float_log_ppl=(("pruning", 0.004), ("quantization", 0.004)), set_log_ppl=0.005)
# A budget per rule at which it is testable (else "holds <= 5%" would be trivially true) and cheap to simulate.
CASES = {
    "F1": (replace(BASE, sources=6, variance_sources=4, sets=5), findings.Noise()),
    "F2": (replace(BASE, sources=4, variance_sources=4, sets=6, random_sets=6, tasks=6, docs_per_task=400),
           findings.Noise()),
    "F3": (replace(BASE, sample_counts=(1, 2, 4, 8, 16, 32, 64, 128)), LOW_NOISE),
    "F4": (replace(BASE, sources=2, schedules=1, tasks=2, docs_per_task=1500), findings.Noise(doc_noise=0.05)),
    "F5": (replace(BASE, variance_sources=8, sets=5, tasks=6, docs_per_task=100), findings.Noise(doc_noise=0.3)),
    "F6": (replace(BASE, variance_sources=4, sets=5, tasks=4, docs_per_task=100), findings.Noise()),
}


@pytest.mark.parametrize("claim", list(findings.CLAIMS))
def test_holds_at_most_5_percent_without_the_effect(claim):
    budget, noise = CASES[claim]
    null = findings.simulate(claim, budget, "null", n_sims=200, seed=11, noise=noise)
    assert null["holds"] <= 0.05, null
    assert null[UNTESTABLE] <= 0.5, f"{claim}: the null is mostly untestable at this budget, so it checks nothing"


@pytest.mark.parametrize("claim", ["F1", "F5", "F6"])
def test_holds_stays_rare_on_the_boundary_nulls(claim):
    budget, noise = CASES[claim]
    other = [s for s in findings.NULLS[claim] if s != "null"][0]
    result = findings.simulate(claim, budget, other, n_sims=100, seed=12, noise=noise)
    assert result["holds"] <= 0.05, result


@pytest.mark.parametrize("claim,least", [("F1", 0.7), ("F2", 0.6), ("F3", 0.8), ("F4", 0.3)])
def test_the_rules_find_the_claimed_effect(claim, least):
    budget, noise = CASES[claim]
    assert findings.simulated_power(claim, budget, n_sims=30, seed=13, noise=noise) >= least


def test_an_untestable_budget_has_no_power():
    assert findings.simulated_power("F3", findings.QUICK, n_sims=5) == 0.0       # 4 sample counts
    assert findings.simulate("F3", findings.QUICK, n_sims=5)[UNTESTABLE] == 1.0


def test_the_simulations_vectorised_pooled_sd_equals_stats_noise_floor():
    """findings._pooled_sd (the simulations' fast floor) against stats.noise_floor on the same replicate runs."""
    rng = np.random.default_rng(7)
    codes = np.repeat(np.arange(5), [3, 2, 4, 1, 3])
    values = rng.normal(size=(len(codes), 2)) * 0.05 + codes[:, None]
    values[2, 1] = np.nan
    sd, dof, runs, note = findings._pooled_sd(codes, values)
    long = pd.DataFrame({"config": np.tile(codes, 2), "column": np.repeat([0, 1], len(codes)),
                         "value": values.T.ravel()})
    reference = stats.noise_floor(long, "value", ["config", "column"])
    assert sd == pytest.approx(reference["sd"], rel=1e-12) and dof == reference["df"] and runs == reference["runs"]
