"""The claim tests of calib_lib.findings on synthetic result tables built so that each claim holds, or
fails, by construction: a verdict rule that cannot tell the two apart fails here."""
import numpy as np
import pandas as pd
import pytest

from calib_lib import findings

TASKS = ["arc_easy", "piqa", "winogrande", "copa"]
TEXTS = ["wikipedia", "news"]
METHODS = {"wanda 50%": "pruning", "gptq 3-bit g128": "quantization"}


def _run(method, source, set_index=0, num_samples=16, rng=None, acc_shift=0.0, acc_noise=0.0, ppl_scale=1.0,
         ppl_noise=0.0, **labels):
    rng = rng or np.random.default_rng(0)
    row = {"key": f"{method}|{source}|{set_index}|{num_samples}|{labels.get('data', '')}", "method_label": method,
           "method": method.split()[0], "family": METHODS[method], "calibration.source": source,
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


def test_f1_follows_which_family_spreads_more():
    holds = findings.f1_sensitivity(_variance_table(0.03, 0.003).query("`calibration.set_index` == 0"),
                                    _variance_table(0.03, 0.003))
    assert holds["verdict"] == "holds" and holds["sd_pruning"] > holds["sd_quantization"]
    reverse = findings.f1_sensitivity(_variance_table(0.003, 0.03).query("`calibration.set_index` == 0"),
                                      _variance_table(0.003, 0.03))
    assert reverse["verdict"] == "does not hold"


def _source_table(random_acc_shift, random_ppl_scale, noise=0.01):
    rng = np.random.default_rng(1)
    rows = [_run(m, s, rng=rng, acc_noise=noise, ppl_noise=0.01) for m in METHODS for s in ["wikipedia", "news", "books", "code"]]
    rows += [_run(m, "random-vocab", rng=rng, acc_shift=random_acc_shift, ppl_scale=random_ppl_scale) for m in METHODS]
    return pd.DataFrame(rows)


def test_f2_random_tokens_worst_or_not():
    assert findings.f2_random_worst(_source_table(-0.2, 3.0))["verdict"] == "holds"
    assert findings.f2_random_worst(_source_table(+0.2, 0.5))["verdict"] == "does not hold"


def _count_table(pruning_keeps_improving: bool):
    rows = []
    counts = [1, 2, 4, 8, 16, 32, 64, 128]
    for method, family in METHODS.items():
        for i, n in enumerate(counts):
            improving = (family == "pruning") == pruning_keeps_improving
            scale = 2.0 - i / len(counts) if improving else (2.0 if i == 0 else 1.2 - 0.001 * i)
            rows.append(_run(method, "wikipedia", num_samples=n, ppl_scale=scale))
    return pd.DataFrame(rows)


def test_f3_plateau_rule():
    holds = findings.f3_plateau(_count_table(True))
    assert holds["verdict"] == "holds", holds["summary"]
    assert findings.f3_plateau(_count_table(False))["verdict"] == "does not hold"
    assert "SparseGPT" in holds["summary"]           # says the profile prunes with another method


def _self_table(shift):
    rng = np.random.default_rng(2)
    rows = []
    for m in METHODS:
        rows.append(_run(m, "self", rng=rng, acc_shift=shift, acc_noise=0.002, data="self (t 1->1)", kind="self"))
        rows.append(_run(m, "wikipedia", rng=rng, acc_noise=0.002, data="wikipedia", kind="real"))
    return pd.DataFrame(rows)


def test_f4_within_one_point_or_not():
    source = _source_table(-0.2, 3.0, noise=0.001)
    assert findings.f4_self_generated(source, _self_table(0.0))["verdict"] == "holds"
    assert findings.f4_self_generated(source, _self_table(-0.10))["verdict"] == "does not hold"


def test_f5_and_f6_on_noisy_tasks_and_stable_perplexity():
    table = _variance_table(0.05, 0.05, ppl_noise=0.002)
    f5 = findings.f5_task_swing(table)
    assert f5["verdict"] == "holds" and f5["median_task_range"] > f5["median_mean_range"]
    f6 = findings.f6_ppl_vs_accuracy(table)
    assert f6["verdict"] == "holds" and f6["median_rel_range_acc"] > f6["median_rel_range_ppl"]
    stable_acc = _variance_table(0.0005, 0.0005, ppl_noise=0.2)
    assert findings.f6_ppl_vs_accuracy(stable_acc)["verdict"] == "does not hold"


def test_without_task_data_accuracy_claims_are_inconclusive_and_say_why():
    table = _variance_table(0.03, 0.003).drop(columns=[f"acc:{t}" for t in TASKS] + ["acc:mean"])
    for row in (findings.f5_task_swing(table), findings.f6_ppl_vs_accuracy(table)):
        assert row["verdict"] == "inconclusive" and "unavailable" in row["summary"]
    f1 = findings.f1_sensitivity(table.query("`calibration.set_index` == 0"), table)
    assert "log perplexity" in f1["summary"]


def test_verdicts_table_has_six_claims():
    tables = {"source_domain": _source_table(-0.2, 3.0), "seed_variance": _variance_table(0.03, 0.003),
              "sample_count": _count_table(True), "self_calibration": _self_table(0.0)}
    out = findings.verdicts(tables)
    assert list(out["claim"]) == ["F1", "F2", "F3", "F4", "F5", "F6"]
    assert set(out["verdict"]) <= {"holds", "does not hold", "inconclusive"}
    assert out["summary"].str.len().min() > 10
    with pytest.raises(KeyError):
        findings.verdicts({})
