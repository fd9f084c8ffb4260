"""Interactive views of a results store, for analysts: filter by model, method, source, set and metric; hover
for a run's spec. Vega-Lite charts through Altair that work in JupyterLab and in an exported HTML file with no
kernel and no network.

    from calib_lib import explore
    table = explore.runs_table(store)                  # one row per (run, metric)
    explore.runs_view(table)                           # every run: a metric by source, method and set
    explore.count_view(table)                          # a metric against the calibration sample count

Why the views embed one row per run: a view carries its data inside the notebook and again in its HTML
export, so the long table (one row per run and metric, every spec field repeated ~30 times) would grow a
committed explore notebook by megabytes per hundred runs. Each view embeds one row per run (its spec once, its
metrics as columns, 5 significant digits) and folds it into (metric, value) rows in the browser (Vega-Lite
``fold``): the same points, about eight times fewer bytes.

Why inline JavaScript: Altair's default HTML output loads Vega from a CDN, so a committed HTML file would show
nothing offline (and nothing on the machines this project runs on). The Vega / Vega-Lite / vega-embed bundle
comes from the ``vl-convert-python`` wheel and is written into the first view a kernel displays (``load()``
writes it on its own); every later view reuses it. JupyterLab runs a view's script only in a trusted output:
one the kernel just produced, or a notebook trusted with ``jupyter trust``.
"""
from __future__ import annotations

import html
import json
import re
import uuid

import pandas as pd

# Spec columns a tooltip shows, in order (those the table has)
SPEC_COLUMNS = ("model", "method_label", "family", "calibration.source", "calibration.set_index",
                "calibration.num_samples", "calibration.seq_len", "calibration.t_init", "calibration.t_final",
                "replicate", "vocabulary", "key")
SHORT = {"calibration.source": "source", "calibration.set_index": "set", "calibration.num_samples": "samples",
         "calibration.seq_len": "seq_len", "calibration.t_init": "t_init", "calibration.t_final": "t_final",
         "method_label": "method"}
# the metrics offered, leading ones first: summaries, then per task and per text
LEADING = ("kl:geomean", "ppl:geomean", "acc:mean", "top1:mean")
PER_RUN_PREFIXES = ("acc:", "acc_norm:", "ppl:", "kl_mean:", "top1:",
                    # generated summaries (08), per dataset: means over its documents
                    "rouge1:", "rouge2:", "rougeL:", "coverage:", "density:", "novel_2grams:", "entity_hallucination:")

_loaded = False


def runs_table(store, keys=None) -> pd.DataFrame:
    """One row per (run, metric) of the store's finished runs (``study.tables.wide``): the spec columns under
    short names (source, set, samples, ...), ``metric`` and ``value``. Data-free runs get source 'none'; a
    run's set is -1 where it has none."""
    from .study.tables import wide
    runs = wide(store, keys)
    return long_table(runs)


def long_table(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs_table`` from a wide table (one row per run)."""
    if runs is None or runs.empty:
        return pd.DataFrame(columns=[SHORT.get(c, c) for c in SPEC_COLUMNS] + ["metric", "value"])
    runs = runs.drop_duplicates("key")
    metrics = [m for m in LEADING if m in runs] + sorted(
        c for c in runs.columns if c.startswith(PER_RUN_PREFIXES) and c not in LEADING)
    spec = [c for c in SPEC_COLUMNS if c in runs]
    out = runs[spec + metrics].melt(id_vars=spec, value_vars=metrics, var_name="metric", value_name="value")
    out = out[pd.to_numeric(out["value"], errors="coerce") > 0].rename(columns=SHORT)
    if "method" in out:
        # the dense model scored against itself: KL 0 up to float rounding (1e-14), agreement 1; no information
        out = out[~((out["method"] == "dense") & out["metric"].str.startswith(("kl", "top1")))]
    if "source" in out:
        out["source"] = out["source"].fillna("none").astype(str)
    for column in ("set", "samples", "seq_len", "replicate"):
        if column in out:
            out[column] = pd.to_numeric(out[column], errors="coerce").fillna(-1).astype(int)
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].where(out[column].notna(), "").astype(str)
    out["value"] = out["value"].astype(float)
    return out.reset_index(drop=True)


# digits kept per embedded value: the tooltips show 4, the log axes need far fewer
EMBED_DIGITS = 5


def embedded_rows(table: pd.DataFrame) -> tuple[list[dict], list[str]]:
    """What a view embeds for the long ``table``: one record per run (its spec columns once, each metric a field
    rounded to ``EMBED_DIGITS`` significant digits, a metric the run lacks left out) and the metric names in
    the table's order, for the view to fold back into (metric, value) rows."""
    metrics = list(dict.fromkeys(table["metric"]))
    spec = [c for c in table.columns if c not in ("metric", "value")]
    runs = table.drop_duplicates("key").set_index("key")[[c for c in spec if c != "key"]]
    values = table.pivot(index="key", columns="metric", values="value")
    records = []
    for key, row in runs.iterrows():
        record = {"key": key}
        for column, value in row.items():
            record[column] = value.item() if hasattr(value, "item") else value
        for metric, value in values.loc[key].items():
            if pd.notna(value):
                record[metric] = float(f"{value:.{EMBED_DIGITS}g}")
        records.append(record)
    return records, metrics


def _field(name: str) -> str:
    """A column name as a Vega-Lite field reference: dots and brackets would read as nested access."""
    return re.sub(r"([.\[\]\\])", r"\\\1", name)


def _folded(alt, chart, table: pd.DataFrame):
    """``chart`` (a chart or a layer) with ``table``'s runs as its data, each run's metrics folded into
    (metric, value) rows, the ones the long table has (a positive value) kept. Later transforms (the dropdown
    filter) come after the fold; on a layer they must sit at its top, before its layers' own transforms."""
    records, metrics = embedded_rows(table)
    # explicit values, not a DataFrame: Altair's 5,000-row guard does not apply, and no column is retyped
    return (chart.properties(data=alt.Data(values=records))
            .transform_fold([_field(m) for m in metrics], as_=["metric", "value"])
            .transform_filter("isValid(datum.value) && datum.value > 0"))


def _select(alt, name: str, values, label: str, default=None, allow_all: bool = True):
    values = sorted(dict.fromkeys(values), key=str)
    options = ([None] if allow_all else []) + values
    labels = (["all"] if allow_all else []) + [str(v) for v in values]
    return alt.param(name=name, value=default if default is not None else (None if allow_all else values[0]),
                     bind=alt.binding_select(options=options, labels=labels, name=f"{label} "))


def _filters(alt, table: pd.DataFrame, default_metric: str):
    """The shared dropdowns (model, method, source, set, metric) and the filter expression they make."""
    params, conditions = [], []
    for column, label in (("model", "model"), ("method", "method"), ("source", "source"), ("set", "set")):
        if column in table and table[column].nunique() > 0:
            name = f"pick_{column}"
            params.append(_select(alt, name, table[column].unique().tolist(), label))
            conditions.append(f"({name} == null || datum['{column}'] == {name})")
    metrics = list(dict.fromkeys(table["metric"]))
    default = default_metric if default_metric in metrics else metrics[0]
    params.append(_select(alt, "pick_metric", metrics, "metric", default=default, allow_all=False))
    conditions.append("datum.metric == pick_metric")
    return params, " && ".join(conditions)


def _colour(alt, table: pd.DataFrame):
    """One colour per method, the one it has in every static figure (``plots.method_color``)."""
    from .plots import method_color, method_order
    methods = method_order(table["method"].unique())
    return alt.Color("method:N", title="method",
                     scale=alt.Scale(domain=methods, range=[method_color(m) for m in methods]))


def _tooltip(alt, table: pd.DataFrame) -> list:
    shown = [SHORT.get(c, c) for c in SPEC_COLUMNS]
    return ([alt.Tooltip(c, type="nominal") for c in shown if c in table and c != "key"]
            + [alt.Tooltip("metric:N"), alt.Tooltip("value:Q", format=".4g"), alt.Tooltip("key:N", title="run key")])


def runs_view(table: pd.DataFrame, *, title: str = "Every run", default_metric: str = "kl:geomean", width: int = 620):
    """Every run as a point: x the calibration source, one colour per method (side by side), y the chosen metric
    (log scale: KL and perplexity span orders of magnitude, accuracy stays readable); dropdowns filter by model,
    method, source, set and pick the metric; hover shows the run's spec and key; click a legend entry to
    highlight a method."""
    import altair as alt
    if table.empty:
        raise ValueError("no runs to show: the store has no finished run")
    params, condition = _filters(alt, table, default_metric)
    highlight = alt.selection_point(fields=["method"], bind="legend")
    chart = (_folded(alt, alt.Chart(title=alt.TitleParams(title, subtitle="dropdowns filter; hover a point for "
                                                          "its run; click a legend entry to highlight a method")),
                     table)
             .mark_point(filled=True, size=70)
             .encode(x=alt.X("source:N", title="calibration source"), xOffset=alt.XOffset("method:N"),
                     y=alt.Y("value:Q", scale=alt.Scale(type="log"), title="value (log scale)"),
                     color=_colour(alt, table), shape=alt.Shape("family:N", title="family"),
                     opacity=alt.condition(highlight, alt.value(0.9), alt.value(0.12)),
                     tooltip=_tooltip(alt, table))
             .add_params(*params, highlight).transform_filter(condition)
             .properties(width=width, height=340))
    return View(chart)


def count_view(table: pd.DataFrame, *, title: str = "Calibration sample count", default_metric: str = "kl:geomean",
               width: int = 620):
    """The chosen metric against the number of calibration samples (log-log), one line per (method, source,
    sequence length, set), for the runs of the first float-order replicate; the same dropdowns and tooltips as
    ``runs_view``."""
    import altair as alt
    data = table[(table.get("samples", pd.Series(-1, index=table.index)) > 0)]
    if "replicate" in data:
        data = data[data["replicate"] <= 0]
    if data.empty:
        raise ValueError("no calibrated runs to show against the sample count")
    params, condition = _filters(alt, data, default_metric)
    highlight = alt.selection_point(fields=["method"], bind="legend")
    # ticks at the sample counts run, and no "nice" widening: a log axis rounded out to powers of ten runs to
    # 1,000 for counts up to 128, squeezing the points into the left half
    counts = sorted({int(n) for n in data["samples"]})
    encode = dict(x=alt.X("samples:Q", scale=alt.Scale(type="log", nice=False, padding=14),
                          axis=alt.Axis(values=counts, format="d"), title="calibration samples (log scale)"),
                  y=alt.Y("value:Q", scale=alt.Scale(type="log"), title="value (log scale)"),
                  color=_colour(alt, data), detail="line:N",
                  opacity=alt.condition(highlight, alt.value(0.9), alt.value(0.12)))
    lines = alt.Chart().mark_line(strokeWidth=1.2).encode(**encode)
    points = alt.Chart().mark_point(filled=True, size=45).encode(**encode, tooltip=_tooltip(alt, data))
    layer = alt.layer(lines, points, title=alt.TitleParams(title, subtitle="one line per method, source, length "
                                                           "and set; hover a point for its run"))
    chart = (_folded(alt, layer, data)
             .transform_calculate(line="datum.method + ' | ' + datum.source + ' | ' + datum.seq_len + "
                                       "' tokens | set ' + datum.set")
             .add_params(*params, highlight).transform_filter(condition)
             .properties(width=width, height=320))
    return View(chart)


def _bundle() -> str:
    """The Vega + Vega-Lite + vega-embed JavaScript, for the Vega-Lite version Altair writes (vl-convert)."""
    import vl_convert
    from altair.utils._importers import vl_version_for_vl_convert
    return vl_convert.javascript_bundle(vl_version=vl_version_for_vl_convert())


def load() -> "_Script":
    """The bundle as a display object (show it once, before the views; the first view does it otherwise)."""
    global _loaded
    _loaded = True
    return _Script(_bundle())


class _Script:
    def __init__(self, script: str):
        self.script = script

    def _repr_html_(self) -> str:
        # a module script would defer; the views below must find vegaEmbed defined
        return f'<script type="text/javascript">{self.script}</script>'


class View:
    """An Altair chart rendered as HTML with inline JavaScript (no CDN): ``display(view)`` in a notebook;
    ``view.chart`` is the Altair chart, ``view.spec()`` its Vega-Lite JSON."""

    def __init__(self, chart):
        self.chart = chart

    def spec(self) -> dict:
        return self.chart.to_dict()

    def html(self, include_bundle: bool | None = None) -> str:
        global _loaded
        if include_bundle is None:
            include_bundle = not _loaded
        div = f"calib-view-{uuid.uuid4().hex[:12]}"
        spec = json.dumps(self.spec()).replace("</", "<\\/")       # never closes the script tag early
        bundle = _Script(_bundle())._repr_html_() if include_bundle else ""
        _loaded = _loaded or include_bundle
        return (f'{bundle}<div id="{div}" class="calib-view"></div>\n<script type="text/javascript">\n'
                f'(function() {{\n  var target = document.getElementById({json.dumps(div)});\n'
                f'  if (typeof vegaEmbed === "undefined") {{\n'
                f'    target.innerHTML = {json.dumps(html.escape(MISSING))};\n'
                f'    target.setAttribute("data-calib-failed", "no vegaEmbed");\n    return;\n  }}\n'
                f'  vegaEmbed(target, {spec}, {{"actions": {{"export": true, "source": false, "compiled": false, '
                f'"editor": false}}}}).catch(function(err) {{ target.innerText = "view failed: " + err; '
                f'target.setAttribute("data-calib-failed", String(err)); console.error(err); }});\n}})();\n</script>')

    def _repr_html_(self) -> str:
        return self.html()

    def save(self, path) -> None:
        """A standalone HTML page with the bundle inline."""
        from .files import atomic_write_text
        atomic_write_text(path, f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'></head><body>"
                                f"{self.html(include_bundle=True)}</body></html>\n")


MISSING = ("This interactive view needs its JavaScript, written into the first view a kernel shows: restart the "
           "kernel and run the notebook from the top, or run display(explore.load()) first; an executed notebook "
           "opened from disk shows its views once trusted (jupyter trust NOTEBOOK).")
