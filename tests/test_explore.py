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
    # one embedded record per run (the spec once, each metric a field), folded into (metric, value) in the browser
    data = spec["data"]["values"]
    assert len(data) == 5 and {"key", "method", "source", "ppl:geomean", "acc:piqa"} <= set(data[0])
    fold = next(t for t in spec["transform"] if "fold" in t)
    assert set(fold["fold"]) == {"kl:geomean", "ppl:geomean", "acc:mean", "acc:piqa", "ppl:news"}
    assert fold["as"] == ["metric", "value"]
    dense = next(row for row in data if row["method"] == "dense")
    assert "kl:geomean" not in dense and dense["ppl:geomean"] == 20.0    # left out as in the long table


def test_count_view_reads_calibrated_runs_only():
    spec = explore.count_view(explore.long_table(_runs())).spec()
    assert {row["key"] for row in spec["data"]["values"]} == {"k1", "k2", "k3", "k4"}
    with pytest.raises(ValueError, match="no calibrated runs"):
        explore.count_view(explore.long_table(_runs().iloc[:1]))


def test_count_view_ticks_are_the_sample_counts_run():
    """Not Vega's nice log ticks, which ran the axis to 1,000 for counts up to 128."""
    import re

    import vl_convert
    svg = vl_convert.vegalite_to_svg(explore.count_view(explore.long_table(_runs())).spec())
    x_axis = re.search(r'role-axis-label[^>]*>(.*?)</g>', svg, re.S).group(1)      # the first axis drawn: x
    assert re.findall(r"<text[^>]*>([^<]*)</text>", x_axis) == ["16", "64"]


def _drawn_points(spec: dict, metric: str) -> int:
    """The points Vega draws for ``spec`` with ``metric`` picked (vl-convert runs the real Vega runtime)."""
    import json
    import re

    import vl_convert
    spec = json.loads(json.dumps(spec))
    next(p for p in spec["params"] if p["name"] == "pick_metric")["value"] = metric
    svg = vl_convert.vegalite_to_svg(spec)
    group = re.search(r'<g class="mark-symbol role-mark[^"]*"[^>]*>(.*?)</g>', svg, re.S)
    return group.group(1).count("<path") if group else 0


def test_views_draw_one_point_per_row_of_the_long_table():
    """The browser's fold rebuilds the long table: for every metric, as many points as the table has rows
    (a name with a dot, which Vega-Lite would read as nested access, included); values keep 5 digits."""
    runs = _runs().assign(**{"ppl:wiki.text": [11.0, 12.0, None, 14.0, 15.0],
                             "ppl:geomean": [20.0, 21.123456789, 22.0, 23.0, 24.0]})
    table = explore.long_table(runs)
    runs_spec = explore.runs_view(table).spec()
    count_table = table[(table["samples"] > 0) & (table["replicate"] <= 0)]
    count_spec = explore.count_view(table).spec()
    for metric in table["metric"].unique():
        assert _drawn_points(runs_spec, metric) == (table["metric"] == metric).sum(), metric
        assert _drawn_points(count_spec, metric) == (count_table["metric"] == metric).sum(), metric
    assert next(r for r in runs_spec["data"]["values"] if r["key"] == "k1")["ppl:geomean"] == 21.123


def test_embedded_data_is_smaller_than_the_long_table():
    """Why the views fold in the browser: the spec fields once per run, not once per (run, metric)."""
    import json
    runs = pd.concat([_runs().assign(key=lambda d, i=i: d["key"] + f"-{i}") for i in range(20)], ignore_index=True)
    for task in ("arc_easy", "arc_challenge", "winogrande", "openbookqa", "lambada_openai"):
        runs[f"acc:{task}"] = 0.4
    table = explore.long_table(runs)
    embedded = json.dumps(explore.runs_view(table).spec()["data"]["values"])
    assert len(embedded) < len(table.to_json(orient="records")) / 3


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
