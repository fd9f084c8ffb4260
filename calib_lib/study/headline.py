"""The papers' headline table: what a calibration draw does to one compressed model.

Williams & Aletras (2024) report, per model and method, the mean accuracy across calibration sets with its
standard deviation, and show that a steady mean hides single tasks that swing by many points ("perplexity
12.72 +- 0.18 hides BoolQ 57.0-71.6"). ``headline_table`` gives that row from the seed-variance grid (each
source drawn as several non-overlapping sets, one run per set): per (model, method, source) the mean +- SD
and range of mean accuracy across sets, the task with the largest range and that range, and perplexity
(geometric mean over texts) mean +- SD across sets, and beside them the mean accuracy's standard error from its
documents (the evaluation's own noise, shared by the sets); with a row pooling every real source of a
method ("all sources"; random-vocab and self-generated draws keep their own rows) when there are several.
SDs are sample SDs (ddof 1) of the per-set values; with a handful of sets they are rough, which is why the
range is printed beside them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .tables import task_columns

NOT_REAL = ("random-vocab", "self")          # as summaries.NOT_REAL: data that is not a real text source

ALL_SOURCES = "all sources"
COLUMNS = ["model", "method_label", "source", "sets", "acc_mean", "acc_sd", "acc_min", "acc_max", "acc_doc_se", "widest_task",
           "widest_task_min", "widest_task_max", "ppl_mean", "ppl_sd", "ppl_min", "ppl_max", "summary"]


def _sd(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.std(ddof=1)) if len(values) >= 2 else float("nan")


def _row(part: pd.DataFrame, model: str, label: str, source: str, tasks: list[str]) -> dict:
    row = {"model": model, "method_label": label, "source": source, "sets": int(len(part))}
    acc = part["acc:mean"].dropna() if "acc:mean" in part else pd.Series(dtype=float)
    row.update(acc_mean=float(acc.mean()) if len(acc) else np.nan, acc_sd=_sd(acc),
               acc_min=float(acc.min()) if len(acc) else np.nan, acc_max=float(acc.max()) if len(acc) else np.nan,
               # the evaluation's own uncertainty (documents) beside the spread across sets: a set-to-set SD
               # not well above it is mostly document noise
               acc_doc_se=float(part["se:acc:mean"].mean()) if "se:acc:mean" in part else np.nan)
    widths = {t: float(part[t].max() - part[t].min()) for t in tasks if part[t].notna().sum() >= 2}
    if widths:
        task = max(widths, key=lambda t: (widths[t], t))      # ties: the name decides, so reruns agree
        row.update(widest_task=task.removeprefix("acc:"), widest_task_min=float(part[task].min()),
                   widest_task_max=float(part[task].max()))
    else:
        row.update(widest_task="", widest_task_min=np.nan, widest_task_max=np.nan)
    ppl = part["ppl:geomean"].dropna() if "ppl:geomean" in part else pd.Series(dtype=float)
    row.update(ppl_mean=float(ppl.mean()) if len(ppl) else np.nan, ppl_sd=_sd(ppl),
               ppl_min=float(ppl.min()) if len(ppl) else np.nan, ppl_max=float(ppl.max()) if len(ppl) else np.nan)
    row["summary"] = _summary(row)
    return row


def _summary(row: dict) -> str:
    """'perplexity 12.72 +- 0.18 across 5 sets; mean accuracy 48.1 +- 0.6 (47.2-48.9); boolq 57.0-71.6'."""
    parts = []
    if np.isfinite(row["ppl_mean"]):
        sd = f" +- {row['ppl_sd']:.2f}" if np.isfinite(row["ppl_sd"]) else ""
        parts.append(f"perplexity {row['ppl_mean']:.2f}{sd} across {row['sets']} sets")
    if np.isfinite(row["acc_mean"]):
        sd = f" +- {100 * row['acc_sd']:.1f}" if np.isfinite(row["acc_sd"]) else ""
        se = f", document SE {100 * row['acc_doc_se']:.1f}" if np.isfinite(row["acc_doc_se"]) else ""
        parts.append(f"mean accuracy {100 * row['acc_mean']:.1f}{sd} ({100 * row['acc_min']:.1f}-"
                     f"{100 * row['acc_max']:.1f}{se})")
    if row["widest_task"]:
        parts.append(f"{row['widest_task']} {100 * row['widest_task_min']:.1f}-{100 * row['widest_task_max']:.1f}")
    return "; ".join(parts)


def headline_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, method, source) of the seed-variance grid's table (``study.seed_variance_grid``
    results: one row per run, ``acc:<task>``, ``acc:mean``, ``ppl:geomean`` columns), plus an "all sources"
    row per (model, method) when it has several sources; replicate runs (float-order, ``replicate`` > 0) are
    left out, so each set counts once. Accuracies are shares (0-1); ``summary`` prints them in points."""
    if table is None or table.empty:
        return pd.DataFrame(columns=COLUMNS)
    runs = table[table["replicate"].fillna(0) == 0] if "replicate" in table else table
    runs = runs.drop_duplicates("key") if "key" in runs else runs
    tasks = task_columns(runs)
    model_of = runs["model"] if "model" in runs else pd.Series("", index=runs.index)
    rows = []
    for (model, label), part in runs.groupby([model_of, "method_label"], sort=True):
        sources = sorted(part["calibration.source"].dropna().unique())
        for source in sources:
            rows.append(_row(part[part["calibration.source"] == source], model, label, source, tasks))
        real = [s for s in sources if s not in NOT_REAL]
        if len(real) > 1:         # the pooled row is about real data: random tokens and self-generated text stay apart
            rows.append(_row(part[part["calibration.source"].isin(real)], model, label, ALL_SOURCES, tasks))
    return pd.DataFrame(rows, columns=COLUMNS)


def headline_view(headline: pd.DataFrame) -> pd.DataFrame:
    """The table as a notebook shows it: accuracies in points, rounded."""
    view = headline.copy()
    for column in ("acc_mean", "acc_sd", "acc_min", "acc_max", "acc_doc_se", "widest_task_min", "widest_task_max"):
        view[column] = (100 * view[column]).round(1)
    for column in ("ppl_mean", "ppl_sd", "ppl_min", "ppl_max"):
        view[column] = view[column].round(2)
    return view.set_index(["model", "method_label", "source"])
