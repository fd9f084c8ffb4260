"""Notebook 07's grid, table and rule (issue #19 items 3-4): the grid pairs every pruned run with its
full-vocabulary run; the table's paired numbers come from the documents; V1's TOST holds at most alpha of the
time when the true loss sits on the margin (a simulated null), and says which budget would decide it."""
import numpy as np
import pandas as pd
import pytest

from calib_lib import study
from calib_lib.stats import UNTESTABLE, paired_tost
from calib_lib.study.vocabulary import V1_MARGIN, vocabulary_verdict


def test_the_grid_pairs_each_pruned_run_with_its_full_vocabulary_run():
    cfg = study.get_profile("quick")
    grid = study.vocabulary_grid(cfg)
    keys = {spec.key for spec in grid.specs}
    for labels, spec in grid.points:
        assert labels["base_key"] in keys
        base = next(s for s in grid.specs if s.key == labels["base_key"])
        assert base.vocabulary is None and base.method == spec.method and base.method_params == spec.method_params
        assert (labels["vocabulary_kind"] == "none") == (spec.vocabulary is None)
    kinds = [labels["vocabulary_kind"] for labels, _ in grid.points]
    assert kinds.count("task") == 1 + len(cfg.vocab_methods)
    assert kinds.count("calibration") == len(cfg.vocab_sources) * len(cfg.vocab_sizes)
    # the full-vocabulary runs are the claims' runs: the grid adds only the pruned ones
    assert study.dense_grid(cfg).specs[0].key in keys


def _pairs(rng, tasks, docs, mean, flips):
    """{task: per-document differences in {-1, 0, 1}} with P(differ) = flips and expectation `mean`."""
    p_up, p_down = (flips + mean) / 2, (flips - mean) / 2
    return {f"t{i}": rng.choice([1.0, -1.0, 0.0], size=docs, p=[p_up, p_down, 1 - p_up - p_down])
            for i in range(tasks)}


def _table(pairs_by_method, cut=0.5):
    rows = []
    for method, pairs in pairs_by_method.items():
        tost = paired_tost(pairs, V1_MARGIN)
        rows.append({"vocabulary_kind": "task", "model": "m", "method_label": f"{method} + vocab: suite",
                     "parameter_cut": cut, "difference": tost["difference"],
                     "ci95_low": tost["difference"] - 1.96 * tost["se"], "ci95_high": tost["difference"] + 1.96 * tost["se"],
                     "ci90_low": tost["ci_low"], "ci90_high": tost["ci_high"], "p_tost": tost["p_tost"],
                     "mde": tost["mde"], "documents": tost["documents"], "docs_per_task": tost["docs_per_task"],
                     "needed_docs_per_task": tost["needed_docs_per_task"]})
    return pd.DataFrame(rows)


def test_v1_holds_at_most_alpha_of_the_time_when_the_true_loss_is_the_margin():
    rng = np.random.default_rng(0)
    # 1.5% of documents flip (a loss of 1 point: 1.25% lose, 0.25% gain): 6 x 300 documents resolve +-1 point
    verdicts = [vocabulary_verdict(_table({"dense": _pairs(rng, 6, 300, -V1_MARGIN, 0.015)}))["verdict"]
                for _ in range(400)]
    assert verdicts.count("holds") / len(verdicts) <= 0.075      # TOST's size, with Monte Carlo slack
    assert verdicts.count(UNTESTABLE) / len(verdicts) < 0.5


def test_v1_decides_both_ways_and_names_the_budget_it_lacks():
    rng = np.random.default_rng(1)
    same = vocabulary_verdict(_table({"dense": _pairs(rng, 6, 300, 0.0, 0.01), "sparsegpt 50%": _pairs(rng, 6, 300, 0.0, 0.01)}))
    assert same["verdict"] == "holds" and same["ci95_contains_zero"]
    worse = vocabulary_verdict(_table({"dense": _pairs(rng, 6, 300, -0.05, 0.08)}))
    assert worse["verdict"] == "does not hold"
    small = vocabulary_verdict(_table({"dense": _pairs(rng, 4, 20, 0.0, 0.05)}))
    assert small["verdict"] == UNTESTABLE and "documents per task" in small["what_would_decide"]
    assert vocabulary_verdict(_table({"dense": _pairs(rng, 6, 300, 0.0, 0.01)}, cut=0.0))["verdict"] != "holds"
    assert vocabulary_verdict(pd.DataFrame())["verdict"] == UNTESTABLE


@pytest.mark.parametrize("loglik, gold, expected", [
    ([-1.0, -2.0], True, [1.0, 0.0]),
    ([-np.inf, -np.inf, -np.inf], True, [1 / 3] * 3),
])
def test_expected_accuracy_from_stored_choices(loglik, gold, expected):
    from calib_lib.study.vocabulary import _expected_accuracy

    class FakeStore:
        def choices(self, keys):
            rows = []
            for g in range(len(loglik)):               # one document per possible gold choice
                for c, ll in enumerate(loglik):
                    rows.append({"key": "k", "name": "t", "doc_id": g, "loglik": ll, "is_gold": c == g})
            return pd.DataFrame(rows)

    out = _expected_accuracy(FakeStore(), ["k"])
    assert out.sort_values("doc_id")["expected"].tolist() == pytest.approx(expected)


def test_v1_names_each_methods_outcome_when_the_claim_stays_open():
    """One method whose answers barely move decides (holds) while a noisier one leaves the claim open: the
    verdict stays open and the summary says which method decided what."""
    rng = np.random.default_rng(2)
    mixed = vocabulary_verdict(_table({"dense": _pairs(rng, 6, 300, 0.0, 0.005),
                                       "gptq 3-bit g128": _pairs(rng, 6, 300, 0.0, 0.25)}))
    assert mixed["verdict"] == UNTESTABLE
    assert "m dense holds:" in mixed["summary"] and f"m gptq 3-bit g128 {UNTESTABLE}:" in mixed["summary"]


def test_tradeoff_figure_labels_many_calibration_vocabularies_with_one_range():
    """Twelve calibration-set vocabularies sit on one spot (standard): one line with their range, not twelve
    stacked labels running off the axes; a few keep a label each."""
    import matplotlib.pyplot as plt

    from calib_lib import plots

    def table(n):
        rows = [{"method_label": "dense", "vocabulary_kind": "none", "vocabulary_data": "full vocabulary",
                 "parameters_after": 135e6, "difference": 0.0}]
        rows += [{"method_label": "dense + vocab", "vocabulary_kind": "calibration", "vocabulary_data": f"set{i}",
                  "parameters_after": 106e6 + i * 1e5, "difference": -0.12 + 0.001 * i} for i in range(n)]
        return pd.DataFrame(rows)
    for n, expected in ((12, ["12 sets: -12.0 (set0) to -10.9 (set11)"]), (3, ["set0", "set1", "set2"])):
        fig = plots.vocabulary_tradeoff(table(n), title="t", subtitle="s")
        assert [t.get_text() for t in fig.axes[0].texts] == expected
        plt.close(fig)


def test_finding_states_a_range_only_where_its_ends_differ():
    """One calibration vocabulary (or several alike) reads '68 tokens', not '68-68 tokens' or 'x% (a) to x% (a)'."""
    from calib_lib.study.vocabulary import vocabulary_finding

    def row(data, kept, cover):
        return {"method_label": "dense + vocab", "vocabulary_kind": "calibration", "vocabulary_data": data,
                "kept": kept, "task_token_coverage": cover, "gold_covered": 0.5, "difference": -0.1}
    task = {"method_label": "dense + vocab: suite", "vocabulary_kind": "task", "vocabulary_data": "suite",
            "kept": 131, "vocab_size": 384, "kept_share": 131 / 384, "parameter_cut": 0.22,
            "parameters_before": 51_200, "parameters_after": 40_000, "difference": np.nan}
    verdict = {"verdict": UNTESTABLE, "summary": "s"}
    one = vocabulary_finding(pd.DataFrame([task, row("news 4x32", 68, 0.77)]), verdict)
    assert "keep 68 tokens; they cover 77.0% of the tasks' tokens and 50% of their gold answers" in one
    assert "(0.0512 M -> 0.04 M)" in one                    # a tiny model's size, not '0 M -> 0 M'
    big = vocabulary_finding(pd.DataFrame([task | {"parameters_before": 3.8804e9, "parameters_after": 134.5e6},
                                           row("news 4x32", 68, 0.77)]), verdict)
    assert "(3,880 M -> 134 M)" in big                      # whole millions, never '3.88e+03 M'
    two = vocabulary_finding(pd.DataFrame([task, row("news 4x32", 68, 0.77), row("code 4x32", 1_500, 0.9)]),
                             verdict)
    assert "keep 68-1,500 tokens; they cover 77.0% (news 4x32) to 90.0% (code 4x32)" in two
    assert "and 50% of their gold answers" in two
    alike = vocabulary_finding(pd.DataFrame([task, row("a", 68, 0.77001), row("b", 70, 0.76999)]), verdict)
    assert "they cover 77.0% of the tasks' tokens" in alike           # equal as printed: one number
