"""08: pruned models in summarization (Chrysostomou, Zhao, Williams & Aletras, 2024): do they hallucinate less,
do their summaries lean on the source more, and does the calibration data change either?

Per-document records (``Store.summaries()``) make every comparison paired: the dense model and every pruned run
summarise the same documents (their stable names and the dataset's digest are checked). A method's value on a
document is its mean over the method's runs (every source and set the grid drew), compared with the dense
model's on that document; the interval resamples the runs too, so with several sets the claim is about pruning
with calibration data of this kind, not with these particular sets. A document enters a comparison only where both sides have a value:
an empty summary has no coverage, no novel n-grams and no entities, so the share of empty summaries is reported
beside every comparison (a model that degenerates is judged on the documents it answered).

Rules (``published_claims``), per (model, dataset, method, metric): the effect is the pruned-minus-dense mean,
signed so that the claimed direction is positive, with a 95% interval whose standard error comes from a
two-stage bootstrap over the method's runs (its calibration sets) and the documents (``two_level_bootstrap``),
on a t quantile with runs - 1 degrees of freedom (documents - 1 for a single run).
**holds**: the interval lies above 0 (the claimed direction, beyond the documents' noise; noted when the whole
interval is below the margin: real but smaller than the effect of interest); **does not hold**: the interval lies
below the smallest effect of interest (``margin``: the data exclude an effect that large in the claimed
direction, the other direction included); otherwise **cannot decide**, with the documents that would (the
interval's half-width shrinks as 1/sqrt(n); at half the margin one of the two always follows). Fewer than
``MIN_DOCUMENTS`` paired documents decide nothing (a percentile bootstrap of a handful covers far less than 95%).
Each comparison is at 95% on its own: the finding says how many were made.

Calibration source (``source_effect``), this project's own question: per (model, dataset, method, metric), the
runs' means over documents grouped by source, with the sets as replicates (the question is whether a *source*
moves the metric beyond what another draw of the same source does): Tukey-HSD intervals for every pair of
sources (scipy). **holds** (the source matters): some interval excludes 0; **does not hold**: every interval lies
within +- margin; otherwise cannot decide (with one set per source there is no between-set spread to judge by).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from .. import stats

# metric -> (what it measures, claimed direction of pruning: +1 higher / -1 lower, margin, claim id)
CLAIM_METRICS = {
    "entity_hallucination": ("share of the summary's named entities absent from the document", -1, 0.05, "S1"),
    "nli_consistency": ("SummaC-ZS NLI consistency with the document (-1..1)", +1, 0.05, "S1"),
    "coverage": ("share of summary words inside a fragment copied from the document", +1, 0.03, "S2"),
    "novel_2grams": ("share of summary bigrams absent from the document", -1, 0.03, "S2"),
}
CLAIMS = {"S1": "pruned models hallucinate less than the dense model (fewer unsupported entities, higher NLI "
                "consistency)",
          "S2": "pruned models' summaries overlap the source more (higher coverage, fewer novel bigrams)"}
REPORTED = ("rouge1", "rouge2", "rougeL", "coverage", "density", "novel_1grams", "novel_2grams", "novel_3grams",
            "entity_hallucination", "nli_consistency", "generated_tokens", "summary_words", "empty")
ALPHA = 0.05
SHOWN = 4            # decided comparisons the finding names one by one (the tables have them all)
MIN_DOCUMENTS = 10   # paired documents below which a comparison decides nothing


def summary_documents(store, grid) -> pd.DataFrame:
    """One row per (run, dataset, document): the grid's labels (model, method_label, source, set_index) and every
    per-document metric and text of ``Store.summaries()``. Empty when no run of the grid is finished."""
    keys = [spec.key for spec in grid.specs]
    states = store.status(keys)
    done = [k for k in keys if states.get(k) == "done"]
    if not done:
        return pd.DataFrame()
    docs = store.summaries(done)
    _check_same_documents(store, done, docs)
    labels = pd.DataFrame([{"key": spec.key, **labels} for labels, spec in grid.points]).drop_duplicates("key")
    out = labels.merge(docs.drop(columns="label"), on="key", how="inner")
    out["empty"] = (out["summary"].str.strip() == "").astype(float)
    out["summary_words"] = out["summary"].map(lambda text: len(text.split())).astype(float)
    return out


def _check_same_documents(store, keys, docs: pd.DataFrame) -> None:
    """Runs compared document by document must have read the same dataset: one content digest per dataset, and
    one document name per index."""
    from ..errors import InvalidInput
    digests: dict[str, set] = {}
    for key in keys:
        for dataset, cost in (store.get(key).get("generation") or {}).items():
            digests.setdefault(dataset, set()).add(cost.get("dataset_digest"))
    changed = [d for d, found in digests.items() if len(found - {None}) > 1]
    if changed:
        raise InvalidInput(f"the runs read different versions of {changed}: their documents cannot be paired; rerun "
                           "the older runs (bump SUMMARY_DATA_VERSION where the dataset's construction changed)")
    if "doc_name" in docs:
        names = docs.dropna(subset=["doc_name"]).groupby(["dataset", "doc_id"])["doc_name"].nunique()
        if (names > 1).any():
            raise InvalidInput("the runs name the same document index differently: their documents cannot be paired")


def run_means(docs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, dataset): its labels, the mean of every reported metric over its documents, its standard
    error (``se:<metric>``, SD / sqrt(documents with a value)) and 95% half-width (``half:<metric>``, t quantile),
    the share of empty summaries (``empty``) and the count of truncated documents."""
    if docs.empty:
        return pd.DataFrame()
    by = ["model", "dataset", "method_label", "source", "set_index", "key"]
    present = [m for m in REPORTED if m in docs]
    groups = docs.groupby(by, sort=False)[present]
    out = groups.mean().reset_index()
    counts = groups.count().reset_index(drop=True)
    se = (groups.std(ddof=1) / np.sqrt(groups.count())).reset_index(drop=True)
    for metric in present:
        out[f"se:{metric}"] = se[metric].to_numpy()
        dof = counts[metric].to_numpy() - 1.0
        out[f"half:{metric}"] = se[metric].to_numpy() * sps.t.ppf(0.975, np.where(dof > 0, dof, np.nan))
    out["documents"] = docs.groupby(by, sort=False).size().values
    out["truncated"] = docs.groupby(by, sort=False)["truncated"].sum().values
    return out


def _verdict(low: float, high: float, margin: float) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "cannot decide"
    if low > 0:
        return "holds"
    if high < margin:
        return "does not hold"
    return "cannot decide"


def documents_needed(n: int, half_width: float, margin: float) -> int | None:
    """Documents at which the interval's half-width falls to half the margin (then one of the two verdicts
    follows): n * (half_width / (margin / 2))^2, from the 1/sqrt(n) shrinkage of a paired mean's interval."""
    if n < 2 or not np.isfinite(half_width) or half_width <= 0:
        return None
    return int(math.ceil(n * (half_width / (margin / 2)) ** 2))


def two_level_bootstrap(matrix: np.ndarray, dense: np.ndarray, n_resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """(difference, standard error): the mean over documents of (the method's mean over its runs - the dense
    value), and its SE from a two-stage bootstrap that resamples the runs (calibration sets) and, independently,
    the documents, both with replacement, so that the runs' spread and the documents' both count. With R >= 2 runs
    the bootstrap SD is scaled by sqrt(R / (R - 1)) (a bootstrap of R clusters under-states their variance by
    (R - 1) / R). ``matrix``: runs x documents, NaN where a run has no value (an empty summary); ``dense``: one
    value per document. A document counts in a resample where one of the drawn runs has a value there."""
    runs, docs = matrix.shape

    def difference(values: np.ndarray, base: np.ndarray) -> np.ndarray:
        per_doc = np.nanmean(values, axis=-2)
        valid = ~np.isnan(per_doc)
        return np.where(valid, per_doc - base, 0.0).sum(axis=-1) / np.maximum(valid.sum(axis=-1), 1)

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # a resample of runs with no value on a document
        observed = float(difference(matrix, dense))
        rng = np.random.default_rng(seed)
        run_idx = rng.integers(0, runs, size=(n_resamples, runs))
        doc_idx = rng.integers(0, docs, size=(n_resamples, docs))
        diffs = difference(matrix[run_idx[:, :, None], doc_idx[:, None, :]], dense[doc_idx])
    se = float(np.std(diffs, ddof=1)) * (np.sqrt(runs / (runs - 1)) if runs > 1 else 1.0)
    return observed, se


def paired_effect(pruned: pd.DataFrame, dense: pd.Series, direction: int, margin: float, seed: int = 0) -> dict:
    """The claim's signed effect (pruned - dense, times ``direction``) over the documents both have: ``pruned`` is
    runs x documents (one row per calibration set), ``dense`` one value per document. Interval: the difference +-
    t x SE, the SE from the two-stage bootstrap over runs and documents (``two_level_bootstrap``), t on R - 1
    degrees of freedom for R >= 2 runs (the runs are the scarce replicates: on 200 simulated null studies with a
    set-to-set spread the false 'holds' rate was 1.5-3.5% with 3-9 runs, where a bootstrap over documents alone
    gave about 40%), on documents - 1 for one run (whose set-to-set spread cannot be seen: the claim is then about
    that one set, and the row says so). ``p_documents``: the sign-flip test over documents of the runs' mean
    (``stats.paired_bootstrap``; descriptive, it ignores the runs' spread). Then the verdict and the documents
    needed (from the half-width: an under-estimate where the runs' spread dominates)."""
    dense = dense.dropna()
    pruned = pruned.reindex(columns=dense.index)
    pruned = pruned.loc[:, pruned.notna().any(axis=0)]
    dense = dense.reindex(pruned.columns)
    n = int(pruned.shape[1])
    per_doc = pruned.mean(axis=0)
    out = {"documents": n, "pruned": float(per_doc.mean()) if n else np.nan,
           "dense": float(dense.mean()) if n else np.nan}
    if n < MIN_DOCUMENTS:
        return {**out, "difference": np.nan, "effect": np.nan, "effect_low": np.nan, "effect_high": np.nan,
                "p_documents": np.nan, "verdict": "cannot decide", "documents_needed": None,
                "note": f"{n} paired documents: fewer than {MIN_DOCUMENTS}, no interval is trusted"}
    difference, se = two_level_bootstrap(pruned.to_numpy(dtype=float), dense.to_numpy(dtype=float), seed=seed)
    runs = int(pruned.shape[0])
    half_width = float(sps.t.ppf(0.975, runs - 1 if runs > 1 else n - 1)) * se
    low, high = sorted([direction * (difference - half_width), direction * (difference + half_width)])
    verdict = _verdict(low, high, margin)
    half = (high - low) / 2
    test = stats.paired_bootstrap(per_doc.to_numpy(), dense.to_numpy(), seed=seed)
    return {**out, "difference": difference, "effect": direction * difference, "effect_low": low,
            "effect_high": high, "p_documents": test.get("p_value", np.nan), "verdict": verdict,
            "documents_needed": documents_needed(n, half, margin) if verdict == "cannot decide" else None,
            "note": "; ".join(x for x in ("smaller than the margin" if verdict == "holds" and high < margin else "",
                                          "one calibration set: its own spread is not in the interval" if runs == 1
                                          else "") if x)}


def published_claims(docs: pd.DataFrame, metrics: dict = CLAIM_METRICS) -> pd.DataFrame:
    """One row per (model, dataset, pruning method, claim metric): the rule of the module docstring."""
    rows = []
    if docs.empty:
        return pd.DataFrame(rows)
    for (model, dataset), part in docs.groupby(["model", "dataset"], sort=False):
        dense = part[part["method_label"] == "dense"].groupby("doc_id")
        for method, runs in part[part["method_label"] != "dense"].groupby("method_label", sort=False):
            per_doc = runs.groupby("doc_id")
            for metric, (what, direction, margin, claim) in metrics.items():
                base = {"claim": claim, "model": model, "dataset": dataset, "method_label": method, "metric": metric,
                        "direction": "lower" if direction < 0 else "higher", "margin": margin,
                        "runs": runs["key"].nunique(), "scored": int(per_doc.ngroups),
                        "empty_pruned": float(runs["empty"].mean()) if "empty" in runs else np.nan,
                        "empty_dense": (float(part.loc[part["method_label"] == "dense", "empty"].mean())
                                        if "empty" in part else np.nan)}
                if metric not in part:
                    rows.append({**base, "documents": 0, "verdict": "untestable", "note": "not recorded"})
                    continue
                sides = {"pruned": runs[metric], "dense": part.loc[part["method_label"] == "dense", metric]}
                missing = [side for side, values in sides.items() if values.isna().all()]
                if dense.ngroups == 0 or missing:
                    note = ("the NLI model was not available to every run compared" if metric == "nli_consistency"
                            else f"no values on the {' and '.join(missing) or 'dense'} side")
                    rows.append({**base, "documents": 0, "verdict": "untestable", "note": note})
                    continue
                matrix = runs.pivot_table(index="key", columns="doc_id", values=metric, aggfunc="first", dropna=False)
                result = paired_effect(matrix, dense[metric].mean(), direction, margin)
                rows.append({**base, **result})
    return pd.DataFrame(rows)


def source_effect(runs: pd.DataFrame, metrics: dict = CLAIM_METRICS, alpha: float = ALPHA) -> pd.DataFrame:
    """Per (model, dataset, method, metric): the rule of the module docstring, with the largest pairwise source
    gap, its Tukey-HSD interval (``stats.tukey_half_width``, as in 09 and ``calib sensitivity``), the pooled SD
    between sets of one source on its degrees of freedom, and the sets per source that would decide."""
    rows = []
    if runs.empty:
        return pd.DataFrame(rows)
    pruned = runs[runs["method_label"] != "dense"]
    for (model, dataset, method), part in pruned.groupby(["model", "dataset", "method_label"], sort=False):
        for metric, (what, direction, margin, claim) in metrics.items():
            values = part[["source", metric]].dropna()
            groups = {s: g[metric].to_numpy() for s, g in values.groupby("source", sort=True)}
            base = {"model": model, "dataset": dataset, "method_label": method, "metric": metric, "margin": margin,
                    "sources": len(groups), "sets": min((len(g) for g in groups.values()), default=0)}
            means = {s: float(g.mean()) for s, g in groups.items()}
            if len(groups) < 2:
                note = ("no values (the NLI model was unavailable)" if metric == "nli_consistency" and not groups
                        else "no values" if not groups else "needs two sources")
                rows.append({**base, "verdict": "untestable", "note": note})
                continue
            best, worst = max(means, key=means.get), min(means, key=means.get)
            base.update(highest=best, lowest=worst, gap=means[best] - means[worst])
            if base["sets"] < 2:
                rows.append({**base, "verdict": "cannot decide",
                             "note": "one set per source: no between-set spread to judge a source by; draw at least 2"})
                continue
            # Tukey-HSD over every pair of sources, the sets as replicates (stats.pooled_sd, tukey_half_width)
            names = list(groups)
            set_sd, df = stats.pooled_sd(values[metric], values["source"])
            pairs = [(a, b) for n, a in enumerate(names) for b in names[n + 1:]]
            halves = np.array([stats.tukey_half_width(set_sd, df, len(names), len(groups[a]), len(groups[b]), alpha)
                               for a, b in pairs])
            gaps = np.array([means[a] - means[b] for a, b in pairs])
            lows, highs = gaps - halves, gaps + halves
            half_best = stats.tukey_half_width(set_sd, df, len(names), len(groups[best]), len(groups[worst]), alpha)
            half = float(np.max(halves))
            if set_sd == 0:                       # sets that agree exactly: any gap between sources is beyond them
                verdict = "holds" if np.any(gaps != 0) else "does not hold"
            elif np.any((lows > 0) | (highs < 0)):
                verdict = "holds"
            elif np.all((lows > -margin) & (highs < margin)):
                verdict = "does not hold"
            else:
                verdict = "cannot decide"
            rows.append({**base, "gap_low": base["gap"] - half_best, "gap_high": base["gap"] + half_best,
                         "set_sd": set_sd, "df": df, "verdict": verdict,
                         "sets_needed": (int(math.ceil(base["sets"] * (half / (margin / 2)) ** 2))
                                         if verdict == "cannot decide" else None), "note": ""})
    return pd.DataFrame(rows)


def cost_table(store, grids) -> pd.DataFrame:
    """Per (model, method, dataset): the measured generation cost of the runs of ``grids`` (median over them):
    seconds per document, generated tokens per second, prompt tokens per document, and the compression's seconds."""
    rows = []
    points = {spec.key: labels for grid in grids for labels, spec in grid.points}
    states = store.status(list(points))
    for key, labels in points.items():
        if states.get(key) != "done":
            continue
        record = store.get(key)
        for dataset, cost in (record.get("generation") or {}).items():
            rows.append({"model": labels["model"], "method_label": labels["method_label"], "dataset": dataset,
                         "seconds_per_document": cost["seconds_per_document"],
                         "generated_tokens_per_second": cost["generated_tokens_per_second"],
                         "prompt_tokens_per_document": cost["prompt_tokens"] / max(cost["documents"], 1),
                         "scoring_seconds": cost["scoring_seconds"],
                         "compression_seconds": record.get("timings", {}).get("compression", 0.0),
                         "run_seconds": record.get("timings", {}).get("total", np.nan)})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.groupby(["model", "method_label", "dataset"], sort=False).median(numeric_only=True).reset_index()


def examples(docs: pd.DataFrame, dataset: str, count: int = 2) -> pd.DataFrame:
    """The reference-free view of a few documents: each method's summary side by side (the first set of the
    first source), with its unsupported-entity count."""
    part = docs[(docs["dataset"] == dataset)]
    if part.empty:
        return pd.DataFrame()
    first = part[(part["set_index"] <= 0)]
    first = first[first["source"].isin(["none", first.loc[first["source"] != "none", "source"].min()])]
    ids = sorted(first["doc_id"].unique())[:count]
    out = first[first["doc_id"].isin(ids)][["model", "doc_id", "method_label", "summary", "unsupported_entities"]]
    return out.sort_values(["model", "doc_id", "method_label"]).reset_index(drop=True)


# -- figures -------------------------------------------------------------------------------------------------

def effects_figure(claims: pd.DataFrame, title: str, subtitle: str):
    """One panel per claim metric: each method's effect (claimed direction positive) with its 95% interval, the
    margin dashed, one colour per (model, dataset)."""
    import matplotlib.pyplot as plt
    shown = claims[claims["verdict"] != "untestable"] if not claims.empty else claims
    metrics = [m for m in CLAIM_METRICS if not shown.empty and m in set(shown["metric"])]
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(3.6 * max(len(metrics), 1), 3.4), squeeze=False)
    groups = list(shown.groupby(["model", "dataset"], sort=False).groups) if not shown.empty else []
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labelled: dict = {}                   # (model, dataset) -> the handle of its first drawn point
    for ax, metric in zip(axes[0], metrics):
        part = shown[shown["metric"] == metric]
        methods = list(dict.fromkeys(part["method_label"]))
        for g, (model, dataset) in enumerate(groups):
            rows = part[(part["model"] == model) & (part["dataset"] == dataset)]
            offset = (g - (len(groups) - 1) / 2) * 0.18
            for _, r in rows[np.isfinite(rows["effect"].astype(float))].iterrows():
                y = methods.index(r["method_label"]) + offset
                drawn = ax.errorbar(r["effect"], y, xerr=[[r["effect"] - r["effect_low"]],
                                                          [r["effect_high"] - r["effect"]]],
                                    fmt="o", color=colours[g % len(colours)], capsize=3)
                labelled.setdefault((model, dataset), drawn)
        # a method with no estimate anywhere would leave its row blank: say why
        for i, method in enumerate(methods):
            rows = part[part["method_label"] == method]
            if not np.isfinite(rows["effect"].astype(float)).any():
                most = int(rows["documents"].max())
                ax.text(0.5, i, "not estimated" + (f": {most} paired docs (< {MIN_DOCUMENTS})"
                                                   if most < MIN_DOCUMENTS else ""),
                        transform=ax.get_yaxis_transform(), ha="center", va="center", fontsize=7, color="0.4",
                        bbox=dict(facecolor="white", edgecolor="none", pad=1.0), zorder=5)
        margin = CLAIM_METRICS[metric][2]
        if not np.isfinite(part["effect"].astype(float)).any():
            ax.set_xlim(-2 * margin, 2 * margin)              # nothing drawn: the margin's scale, around 0
        ax.set_ylim(-0.5, len(methods) - 0.5)                 # no row on the frame
        ax.axvline(0, color="black", lw=0.8)
        ax.axvline(margin, color="grey", ls="--", lw=0.8)
        ax.set_yticks(range(len(methods)), methods)
        ax.set_title(f"{metric}\n(claimed: {'lower' if CLAIM_METRICS[metric][1] < 0 else 'higher'})", fontsize=9)
        ax.set_xlabel("effect vs dense (claimed direction > 0)")
    if labelled:
        order = [group for group in groups if group in labelled]          # the groups' order, whichever drew first
        fig.legend([labelled[g] for g in order], [f"{model} / {dataset}" for model, dataset in order],
                   loc="lower center", ncol=min(len(order), 4), fontsize=8, bbox_to_anchor=(0.5, -0.08))
    fig.suptitle(f"{title}\n{subtitle}", fontsize=10)
    fig.tight_layout()
    return fig


def runs_figure(runs: pd.DataFrame, metrics: list[str], title: str, subtitle: str):
    """One panel per metric: each run's mean over documents (dot, coloured by calibration source, with its 95%
    interval over documents) per method, the dense model as a dashed line; one row of panels per (model, dataset)."""
    import matplotlib.pyplot as plt
    groups = list(runs.groupby(["model", "dataset"], sort=False).groups) if not runs.empty else [("", "")]
    fig, axes = plt.subplots(len(groups), len(metrics), figsize=(3.3 * len(metrics), 2.9 * len(groups)),
                             squeeze=False)
    sources = sorted(s for s in runs["source"].unique() if s != "none") if not runs.empty else []
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    legend: dict = {}                     # label -> handle, from the first panel that draws it
    for row, (model, dataset) in enumerate(groups):
        part = runs[(runs["model"] == model) & (runs["dataset"] == dataset)] if not runs.empty else runs
        methods = [m for m in dict.fromkeys(part["method_label"]) if m != "dense"] if not part.empty else []
        for col, metric in enumerate(metrics):
            ax = axes[row][col]
            dense = part.loc[part["method_label"] == "dense", metric] if not part.empty else pd.Series(dtype=float)
            if len(dense) and np.isfinite(dense.iloc[0]):
                legend.setdefault("dense", ax.axhline(float(dense.iloc[0]), color="black", ls="--", lw=0.9))
            for s, source in enumerate(sources):
                pts = part[part["source"] == source]
                xs = [methods.index(m) + (s - (len(sources) - 1) / 2) * 0.12 for m in pts["method_label"]]
                drawn = ax.errorbar(xs, pts[metric], yerr=pts.get(f"half:{metric}", 0 * pts[metric]).fillna(0),
                                    fmt="o", ms=4, capsize=2, lw=0.8, color=colours[s % len(colours)])
                if np.isfinite(pts[metric].astype(float)).any():
                    legend.setdefault(source, drawn)
            ax.set_xticks(range(len(methods)), methods, rotation=20, fontsize=8)
            ax.set_xlim(-0.5, max(len(methods), 1) - 0.5)
            ax.set_title(f"{metric} · {model} / {dataset}", fontsize=8)
    if legend:
        order = [label for label in ("dense", *sources) if label in legend]
        fig.legend([legend[label] for label in order], order, loc="lower center", ncol=len(order), fontsize=8,
                   bbox_to_anchor=(0.5, -0.04))
    fig.suptitle(f"{title}\n{subtitle}", fontsize=10)
    fig.tight_layout()
    return fig


# -- the finding ---------------------------------------------------------------------------------------------

def _claim_sentence(claims: pd.DataFrame, claim: str) -> str:
    part = claims[(claims["claim"] == claim) & (claims["verdict"] != "untestable")]
    if part.empty:
        return f"{claim} ({CLAIMS[claim]}): untestable here (no runs or no values)."
    counts = part["verdict"].value_counts()
    summary = ", ".join(f"{counts.get(v, 0)} {v}" for v in ("holds", "does not hold", "cannot decide"))
    decided = part[part["verdict"] != "cannot decide"]
    items = [f"{r.method_label} on {r.model}/{r.dataset}: {r.metric} {r.effect:+.3f} [{r.effect_low:+.3f}, "
             f"{r.effect_high:+.3f}] {r.verdict}" for r in decided.itertuples()]
    detail = "; ".join(items[:SHOWN]) + (f"; and {len(items) - SHOWN} more" if len(items) > SHOWN else "")
    open_ = part[part["verdict"] == "cannot decide"]
    need = (f" Undecided comparisons would need about {int(open_['documents_needed'].max())} documents "
            f"(now {int(open_['documents'].max())})." if not open_.empty and open_["documents_needed"].notna().any() else "")
    return (f"{claim} ({CLAIMS[claim]}), per method x metric x model x dataset: {summary}"
            + (f" ({detail})." if detail else ".") + need)


def summarization_finding(claims: pd.DataFrame, sources: pd.DataFrame) -> str:
    """The notebook's takeaway, generated from the two tables."""
    if claims.empty:
        return "No summarization runs are finished: nothing to conclude."
    tested = claims[claims["verdict"] != "untestable"]
    parts = [f"{len(tested)} pruned-versus-dense comparisons, each at 95% on its own (no correction for their "
             "number)."]
    empty = claims.groupby(["model", "dataset", "method_label"])["empty_pruned"].first().dropna()
    if (empty > 0.1).any():
        worst = empty.idxmax()
        parts.append(f"Empty summaries are common ({worst[2]} on {worst[0]}/{worst[1]}: {empty.max():.0%} of "
                     "documents), and such documents leave the source comparisons: read those on the documents "
                     "answered.")
    parts += [_claim_sentence(claims, "S1"), _claim_sentence(claims, "S2")]
    testable = sources[sources["verdict"] != "untestable"] if not sources.empty else sources
    if not sources.empty and testable.empty:
        parts.append("Calibration source: untestable here (one source per method; the question needs several sets "
                     "of several sources, as the standard profile draws).")
    elif not testable.empty:
        counts = testable["verdict"].value_counts()
        holds = testable[testable["verdict"] == "holds"]
        text = (f"Calibration source: {counts.get('holds', 0)} of {len(testable)} comparisons show a source effect "
                f"beyond set-to-set variation, {counts.get('does not hold', 0)} exclude one larger than the margin, "
                f"{counts.get('cannot decide', 0)} cannot decide")
        if not holds.empty:
            text += " (" + "; ".join(f"{r.method_label} {r.metric} on {r.model}/{r.dataset}: {r.highest} vs {r.lowest} "
                                     f"{r.gap:+.3f}" for r in holds.itertuples()) + ")"
        needed = testable["sets_needed"].dropna() if "sets_needed" in testable else pd.Series(dtype=float)
        if not needed.empty:
            text += f"; about {int(needed.max())} sets per source would decide the rest"
        parts.append(text + ".")
    return " ".join(parts)


# -- what the notebook calls -----------------------------------------------------------------------------------

def datasets_table(profile) -> pd.DataFrame:
    """The profile's summarization datasets: what, where from, how built, documents held and scored."""
    from ..data.summarization import SUMMARY_DATASETS, get_dataset
    cfg = profile.summary_eval or {}
    rows = []
    for name in cfg.get("datasets", ()):
        entry = SUMMARY_DATASETS[name]
        ok, how = entry.availability()
        data = get_dataset(name) if ok else None
        held = len(data.documents) if data else 0
        scored = held if cfg.get("documents") is None else min(cfg["documents"], held)
        rows.append({"dataset": name, "what": data.description if data else entry.description,
                     "origin": data.origin if data else how, "construction": data.construction if data else "",
                     "documents": held, "scored per run": scored})
    return pd.DataFrame(rows)


def summarization_grids(profile, models=None) -> list:
    """08's grid on each of ``models`` (default the profile's ``summary_models``)."""
    from dataclasses import replace

    from .grids import summarization_grid
    return [summarization_grid(replace(profile, model=m)) for m in (models or profile.summary_models)]


def run_summaries(session, models=None) -> tuple[list, pd.DataFrame, pd.DataFrame]:
    """Run every missing run of 08's grids through the notebook session; (grids, per-document table, per-run
    means)."""
    grids = summarization_grids(session.profile, models)
    for grid in grids:
        session.run(grid)
    docs = pd.concat([summary_documents(session.store, g) for g in grids], ignore_index=True)
    return grids, docs, run_means(docs)


def short_settings(profile) -> str:
    """A figure subtitle's part: documents, datasets, decoding."""
    from ..evaluate.summarization import SummarizationEval
    cfg = SummarizationEval(**(profile.summary_eval or {}))
    return (f"{cfg.documents or 'all'} documents of {', '.join(cfg.datasets)}; greedy, <= {cfg.max_new_tokens} new "
            f"tokens; calibration {profile.num_samples} x {profile.seq_len}")


def evaluation_settings(profile) -> str:
    """One line: what every run of 08 generates and how."""
    from ..evaluate.summarization import SummarizationEval
    cfg = SummarizationEval(**(profile.summary_eval or {}))
    return (f"{cfg.documents or 'all'} documents of each of {', '.join(cfg.datasets)}; prompt {cfg.prompt} (the chat "
            f"template where the model has one); prompt and document within {cfg.max_input_tokens} tokens (longer "
            f"documents keep their head); greedy decoding, at most {cfg.max_new_tokens} new tokens, the first "
            f"sentence kept; NLI model {cfg.nli_model}")


CLAIM_COLUMNS = ("claim", "model", "dataset", "method_label", "metric", "runs", "documents", "empty_pruned",
                 "empty_dense", "pruned", "dense", "effect", "effect_low", "effect_high", "margin", "verdict",
                 "documents_needed", "p_documents", "note")
SOURCE_COLUMNS = ("model", "dataset", "method_label", "metric", "sources", "sets", "highest", "lowest", "gap",
                  "gap_low", "gap_high", "margin", "set_sd", "df", "verdict", "sets_needed", "note")


def claims_view(claims: pd.DataFrame) -> pd.DataFrame:
    """The claims table in reading order (``CLAIM_COLUMNS`` present), numbers rounded to 3 decimals."""
    return claims[[c for c in CLAIM_COLUMNS if c in claims]].round(3) if not claims.empty else claims


def sources_view(sources: pd.DataFrame) -> pd.DataFrame:
    """The source-effect table in reading order (``SOURCE_COLUMNS`` present), rounded to 3 decimals."""
    return sources[[c for c in SOURCE_COLUMNS if c in sources]].round(3) if not sources.empty else sources
