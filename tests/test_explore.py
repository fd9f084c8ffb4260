"""The interactive views: the long table they read, the Vega-Lite spec (filters, tooltips, fixed colours), and
the HTML they write (the Vega bundle inline once, no CDN, a failure marker the browser check reads). The
browser itself is exercised by scripts/browser_check.py (needs Chromium)."""
from __future__ import annotations


import pandas as pd
import pytest

from calib_lib import explore


def _runs():
    rows = []
    for i, (method, source, n) in enumerate([("dense", None, None), ("sparsegpt", "wikipedia", 16),
                                             ("sparsegpt", "news", 16), ("sparsegpt", "wikipedia", 64),
                                             ("gptq", "wikipedia", 16)]):
        rows.append({"key": f"k{i}", "model": "smollm2-135m", "method": method,
                     "method_label": {"dense": "dense", "sparsegpt": "sparsegpt 50%", "gptq": "gptq 3-bit g128"}[method],
                     "family": {"dense": "none", "sparsegpt": "pruning", "gptq": "quantization"}[method],
                     "calibration.source": source, "calibration.set_index": None if source is None else 0,
                     "calibration.num_samples": n, "calibration.seq_len": None if n is None else 128,
                     "replicate": 0, "kl:geomean": 1e-14 if method == "dense" else 0.5 + i / 10,
                     "ppl:geomean": 20.0 + i, "acc:mean": 0.5, "acc:piqa": 0.6, "ppl:news": 30.0 + i,
                     "se:acc:piqa": 0.05})
    return pd.DataFrame(rows)


def test_long_table_one_row_per_run_and_metric():
    table = explore.long_table(_runs())
    assert set(table["metric"]) == {"kl:geomean", "ppl:geomean", "acc:mean", "acc:piqa", "ppl:news"}
    assert not table["metric"].str.startswith("se:").any()           # standard errors are not metrics to pick
    # the dense model's KL to itself (float rounding) is left out; its perplexity stays
    dense = table[table["method"] == "dense"]
    assert "kl:geomean" not in set(dense["metric"]) and "ppl:geomean" in set(dense["metric"])
    assert (dense["source"] == "none").all() and (dense["set"] == -1).all()
    assert len(table) == 5 * 5 - 1
    row = table[(table["key"] == "k3") & (table["metric"] == "ppl:geomean")].iloc[0]
    assert row["value"] == 23.0 and row["samples"] == 64 and row["source"] == "wikipedia"


def test_runs_view_spec_has_the_filters_tooltips_and_fixed_colours():
    from calib_lib.plots import method_color
    view = explore.runs_view(explore.long_table(_runs()))
    spec = view.spec()
    names = {p["name"] for p in spec["params"]}
    assert {"pick_model", "pick_method", "pick_source", "pick_set", "pick_metric"} <= names
    metric = next(p for p in spec["params"] if p["name"] == "pick_metric")
    assert metric["value"] == "kl:geomean" and "acc:piqa" in metric["bind"]["options"]
    tooltip = [t["field"] for t in spec["encoding"]["tooltip"]]
    assert {"method", "source", "set", "samples", "seq_len", "key", "value"} <= set(tooltip)
    scale = spec["encoding"]["color"]["scale"]
    assert scale["range"][scale["domain"].index("sparsegpt 50%")] == method_color("sparsegpt 50%")
    data = next(iter(spec["datasets"].values()))
    assert len(data) == 24 and {"key", "metric", "value"} <= set(data[0])


def test_count_view_reads_calibrated_runs_only():
    spec = explore.count_view(explore.long_table(_runs())).spec()
    data = next(iter(spec["datasets"].values()))
    assert {row["key"] for row in data} == {"k1", "k2", "k3", "k4"}
    with pytest.raises(ValueError, match="no calibrated runs"):
        explore.count_view(explore.long_table(_runs().iloc[:1]))


def test_html_has_the_bundle_once_and_no_cdn(monkeypatch, tmp_path):
    monkeypatch.setattr(explore, "_loaded", False)
    table = explore.long_table(_runs())
    first, second = explore.runs_view(table).html(), explore.count_view(table).html()
    assert "vegaEmbed" in first and len(first) > 500_000             # the Vega bundle, inline
    assert len(second) < len(first) / 5                               # ... only in the first view
    for text in (first, second):
        assert "cdn.jsdelivr" not in text and "https://" not in text.split("vegaEmbed(target")[1][:200]
        assert "data-calib-failed" in text and 'class="calib-view"' in text
    # the spec cannot close the script tag early, whatever a run's fields hold
    runs = _runs().assign(**{"calibration.source": ["</script><b>x"] * 5})
    assert "</script><b>" not in explore.runs_view(explore.long_table(runs)).html(include_bundle=False)
    path = tmp_path / "view.html"
    explore.runs_view(table).save(path)
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("calib-view-") >= 1 and "vegaEmbed" in page


def test_empty_store_says_so():
    with pytest.raises(ValueError, match="no runs"):
        explore.runs_view(explore.long_table(pd.DataFrame()))
