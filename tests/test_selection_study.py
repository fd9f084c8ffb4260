"""09's grid and rules: the grid's points, the claims' verdicts on simulated tables (holds, does not hold,
untestable) and their rate of false "holds" on simulated nulls."""
import math

import numpy as np
import pandas as pd
import pytest

from calib_lib import study
from calib_lib.study import get_profile, selection
from calib_lib.stats import UNTESTABLE


def test_selection_grid_points_and_overrides():
    cfg = get_profile("tiny")
    grid = study.selection_grid(cfg)
    labels = pd.DataFrame([{**labels, "key": spec.key, "source": spec.calibration.source,
                            "strategy": spec.calibration.strategy, "set": spec.calibration.set_index}
                           for labels, spec in grid.points])
    assert len(labels) == len(cfg.selectors) * cfg.selection_sets * len(cfg.selection_methods)
    assert labels["key"].is_unique
    mix = labels[labels["selector"] == "mix"]
    assert set(mix["source"]) == {"mix"} and set(mix["set"]) == set(range(cfg.selection_sets))
    assert set(labels.loc[labels["selector"] == "coverage", "strategy"]) == {"coverage"}
    random = labels[labels["selector"] == "random"]
    assert set(random["source"]) == {cfg.base_source} and set(random["strategy"]) == {"document-window"}
    with pytest.raises(ValueError, match="unknown selector"):
        study.selection_grid(get_profile("tiny", selectors=("random", "telepathy")))


def _table(effects: dict, draws: int, sd: float, rng, label="sparsegpt 50%"):
    rows = []
    for selector, effect in effects.items():
        for k in range(draws):
            rows.append({"method_label": label, "selector": selector, "draw": k, "key": f"{selector}{k}",
                         "kl:geomean": math.exp(effect + sd * rng.standard_normal())})
    return pd.DataFrame(rows)


def test_claims_hold_fail_or_stay_untestable():
    rng = np.random.default_rng(0)
    table = _table({"random": 0.0, "coverage": -0.5, "activation-kmeans": 0.5, "mix": 0.0}, 4, 0.05, rng)
    claims = selection.selection_claims(table).set_index("selector")
    assert claims.loc["coverage", "verdict"] == "holds" and claims.loc["coverage", "kl_change"] < -30
    assert claims.loc["activation-kmeans", "verdict"] == "does not hold"
    assert claims.loc["mix", "verdict"] == UNTESTABLE and "draws per selector" in claims.loc["mix", "budget"]
    one = selection.selection_claims(_table({"random": 0.0, "coverage": -0.5}, 1, 0.05, rng)).iloc[0]
    assert one["verdict"] == UNTESTABLE and "one draw" in one["budget"]


def test_claims_on_simulated_nulls_rarely_hold():
    rng = np.random.default_rng(1)
    studies, false = 300, 0
    for _ in range(studies):
        table = _table({s: 0.0 for s in ("random", "coverage", "activation-kmeans", "mix")}, 3, 0.1, rng)
        false += (selection.selection_claims(table)["verdict"] == "holds").any()
    assert false / studies <= 0.075


def test_draws_needed_shrinks_with_the_effect():
    assert selection.draws_needed(0.1, math.log(1.05), 4) > selection.draws_needed(0.1, math.log(1.5), 4) >= 2
    assert math.isnan(selection.draws_needed(float("nan"), 0.1, 4))


def test_finding_names_each_claim_and_the_best_diagnostic():
    rng = np.random.default_rng(2)
    table = _table({"random": 0.0, "coverage": -0.5}, 3, 0.05, rng)
    claims = selection.selection_claims(table)
    scores = pd.DataFrame([{"method_label": "sparsegpt 50%", "diagnostic": "distinct_4", "outcome": "log KL to dense",
                            "n": 12, "rho": -0.6, "rho_low": -0.9, "rho_high": -0.1, "concordance": 0.25}])
    text = selection.selection_finding(claims, None, scores)
    assert "coverage" in text and "holds" in text
    assert "higher means less KL" in text and "75% of the time" in text


def test_random_draws_from_04_join_the_reference():
    table = pd.DataFrame([{"key": "a", "method_label": "sparsegpt 50%", "selector": "random", "draw": 0,
                           "calibration.source": "wikipedia", "calibration.set_index": 0, "kl:geomean": 1.0}])
    variance = pd.DataFrame([{"key": k, "method_label": m, "calibration.source": s, "calibration.set_index": i,
                              "replicate": 0, "kl:geomean": 1.1}
                             for k, m, s, i in (("a", "sparsegpt 50%", "wikipedia", 0), ("b", "sparsegpt 50%", "wikipedia", 1),
                                                ("c", "sparsegpt 50%", "news", 1), ("d", "gptq 3-bit g128", "wikipedia", 1))])
    joined = selection.add_random_draws(table, variance, "wikipedia")
    assert sorted(joined["key"]) == ["a", "b"] and list(joined["draw"]) == [0, 1]
    assert (joined["selector"] == "random").all()
