"""The papers' headline table (study.headline): per (model, method, source) the spread across sets."""
import numpy as np
import pandas as pd

from calib_lib.study import headline


def _table():
    rows = []
    acc = {"news": [0.50, 0.52, 0.54], "wiki": [0.60, 0.61, 0.59]}
    boolq = {"news": [0.57, 0.716, 0.60], "wiki": [0.65, 0.66, 0.64]}
    for source in ("news", "wiki"):
        for k in range(3):
            rows.append({"key": f"{source}{k}", "model": "m", "method_label": "sparsegpt 50%", "replicate": 0,
                         "calibration.source": source, "calibration.set_index": k, "acc:mean": acc[source][k],
                         "se:acc:mean": 0.01, "acc:boolq": boolq[source][k], "acc:piqa": 0.7,
                         "ppl:geomean": 12.72 + 0.18 * (k - 1)})
    rows.append({**rows[0], "key": "news0r1", "replicate": 1, "acc:mean": 0.9})     # float replicate: left out
    return pd.DataFrame(rows)


def test_headline_rows_match_an_independent_computation():
    h = headline.headline_table(_table()).set_index("source")
    assert list(h.index) == ["news", "wiki", headline.ALL_SOURCES]
    news = h.loc["news"]
    assert news["sets"] == 3
    assert np.isclose(news["acc_mean"], 0.52) and np.isclose(news["acc_sd"], np.std([0.50, 0.52, 0.54], ddof=1))
    assert (news["acc_min"], news["acc_max"]) == (0.50, 0.54)
    assert news["widest_task"] == "boolq" and (news["widest_task_min"], news["widest_task_max"]) == (0.57, 0.716)
    assert np.isclose(news["ppl_sd"], 0.18) and np.isclose(news["ppl_mean"], 12.72)
    assert np.isclose(news["acc_doc_se"], 0.01)
    assert "perplexity 12.72 +- 0.18 across 3 sets" in news["summary"] and "boolq 57.0-71.6" in news["summary"]
    pooled = h.loc[headline.ALL_SOURCES]
    assert pooled["sets"] == 6 and np.isclose(pooled["acc_mean"], np.mean([0.50, 0.52, 0.54, 0.60, 0.61, 0.59]))


def test_headline_of_nothing_or_one_set_gives_nan_not_an_error():
    assert headline.headline_table(pd.DataFrame()).empty
    one = _table().iloc[:1]
    row = headline.headline_table(one).iloc[0]
    assert row["sets"] == 1 and np.isnan(row["acc_sd"]) and row["widest_task"] == ""
    view = headline.headline_view(headline.headline_table(_table()))
    assert view.loc[("m", "sparsegpt 50%", "news"), "acc_mean"] == 52.0


def test_the_pooled_row_leaves_random_and_self_generated_draws_out():
    table = _table()
    random = table.iloc[:3].assign(key=["r0", "r1", "r2"], **{"calibration.source": "random-vocab", "acc:mean": 0.3})
    h = headline.headline_table(pd.concat([table, random], ignore_index=True)).set_index("source")
    assert "random-vocab" in h.index and h.loc[headline.ALL_SOURCES, "sets"] == 6
    assert np.isclose(h.loc[headline.ALL_SOURCES, "acc_mean"], np.mean([0.50, 0.52, 0.54, 0.60, 0.61, 0.59]))
