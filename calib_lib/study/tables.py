"""Result tables of the studies: one row per run with metrics as columns, and the summaries the
notebooks and findings share."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..runs.store import Store
from .labels import method_family, method_label


PERPLEXITY_METRICS = {"perplexity": "ppl", "kl_mean": "kl_mean", "kl_p99": "kl_p99", "top1_agreement": "top1"}


def wide(store: Store, keys: list[str] | None = None) -> pd.DataFrame:
    """One row per finished run: spec fields (with ``replicate`` and ``batch_size``), then per evaluation
    text ``ppl:<text>`` and, where the suite scored fidelity to the dense model, ``kl_mean:<text>``,
    ``kl_p99:<text>`` and ``top1:<text>``; per task ``acc:<task>`` (``acc_norm:<task>`` where the task has
    it) with its stored standard error as ``se:acc:<task>``; and the summaries ``acc:mean`` (with
    ``se:acc:mean`` = sqrt(sum of the tasks' squared SEs) / tasks), ``ppl:geomean`` (geometric mean over
    the texts), ``kl:geomean`` (geometric mean of ``kl_mean`` over the texts) and ``top1:mean``."""
    tidy = store.frame()
    if tidy.empty:
        return tidy
    if keys is not None:
        tidy = tidy[tidy["key"].isin(set(keys))]
        if tidy.empty:
            return tidy
    tidy = tidy[tidy["metric"] != "skipped"]
    spec_cols = [c for c in tidy.columns if c in ("key", "model", "method", "suite", "replicate", "batch_size",
                                                  "calibration_fingerprint", "vocabulary")
                 or c.startswith(("method.", "calibration."))]
    runs = tidy[spec_cols].drop_duplicates("key").set_index("key")
    is_text = tidy["kind"] != "task"
    prefix = tidy["metric"].map(lambda m: PERPLEXITY_METRICS.get(m, m)).where(
        is_text, tidy["metric"].map(lambda m: {"perplexity": "ppl"}.get(m, m)))
    column = prefix + ":" + tidy["name"]
    values = pd.DataFrame({"key": tidy["key"], "column": column, "value": tidy["value"].astype(float)})
    if "stderr" in tidy:
        se = tidy[~is_text & tidy["stderr"].notna()]
        values = pd.concat([values, pd.DataFrame({"key": se["key"], "column": "se:" + column[se.index],
                                                  "value": se["stderr"].astype(float)})], ignore_index=True)
    metrics = values.pivot_table(index="key", columns="column", values="value", aggfunc="first")
    out = runs.join(metrics).reset_index()
    ppl_cols = [c for c in out.columns if c.startswith("ppl:") and c != "ppl:lambada_openai"]
    if ppl_cols:
        out["ppl:geomean"] = np.exp(np.log(out[ppl_cols].astype(float)).mean(axis=1))
    kl_cols = kl_columns(out)
    if kl_cols:
        kl = out[kl_cols].astype(float)
        out["kl:geomean"] = np.exp(np.log(kl.where(kl > 0)).mean(axis=1, skipna=False))
    top1 = [c for c in out.columns if c.startswith("top1:")]
    if top1:
        out["top1:mean"] = out[top1].astype(float).mean(axis=1)
    tasks = task_columns(out)
    if "acc:mean" in out and tasks and all(f"se:{t}" in out for t in tasks):
        se = out[[f"se:{t}" for t in tasks]].astype(float)
        out["se:acc:mean"] = np.sqrt((se ** 2).sum(axis=1, skipna=False)) / len(tasks)
    if "replicate" in out:
        out["replicate"] = out["replicate"].fillna(0).astype(int)
    out["method_label"] = [method_label({"name": r["method"], **{k.split(".", 1)[1]: r[k] for k in out.columns
                                          if k.startswith("method.") and pd.notna(r[k])}})
                           for _, r in out.iterrows()]
    if "vocabulary" in out:                 # 'dense + vocab: suite': never mistaken for the run without it
        out["method_label"] = [label if not isinstance(v, str) else f"{label} + {v}"
                               for label, v in zip(out["method_label"], out["vocabulary"])]
    out["family"] = out["method"].map(method_family)
    return out


def kl_columns(table: pd.DataFrame) -> list[str]:
    """The per-text mean KL-to-dense columns present (``kl_mean:<text>``)."""
    return sorted(c for c in table.columns if c.startswith("kl_mean:"))


def has_kl(table: pd.DataFrame) -> bool:
    """Whether the runs were scored against the dense model (KL columns with values)."""
    return "kl:geomean" in table.columns and table["kl:geomean"].notna().any()


def figure_metrics(table: pd.DataFrame) -> list[str]:
    """The panels of a notebook's main figure: perplexity, KL to dense where measured, mean accuracy where
    tasks ran."""
    return (["ppl:geomean"] + (["kl:geomean"] if has_kl(table) else [])
            + (["acc:mean"] if has_accuracy(table) else []))


def documents(store: Store, *tables: pd.DataFrame | None) -> pd.DataFrame | None:
    """The per-document records (``Store.documents``) of the runs of every table given (a notebook that pairs
    its runs with another grid's, as 05 with 03's real sources, passes both), or None where the store has none
    for them (runs scored before evaluation version 2)."""
    from ..errors import StoreError
    keys = [k for t in tables if t is not None and not t.empty and "key" in t for k in t["key"]]
    if not keys:
        return None
    try:
        return store.documents(list(dict.fromkeys(keys)))
    except StoreError:
        return None


def task_columns(table: pd.DataFrame) -> list[str]:
    """The per-task accuracy columns present (not the mean)."""
    return sorted(c for c in table.columns if c.startswith("acc:") and c != "acc:mean")


def ppl_columns(table: pd.DataFrame) -> list[str]:
    return sorted(c for c in table.columns if c.startswith("ppl:") and c not in ("ppl:geomean", "ppl:lambada_openai"))


def has_accuracy(table: pd.DataFrame) -> bool:
    return "acc:mean" in table.columns and table["acc:mean"].notna().any()


def long_metrics(table: pd.DataFrame, columns: list[str], keep: list[str]) -> pd.DataFrame:
    """Metric columns stacked into (metric, value) rows, keeping the `keep` columns (for blocked tests)."""
    return table.melt(id_vars=keep, value_vars=columns, var_name="metric", value_name="value").dropna(
        subset=["value"])


def same_domain_gap(table: pd.DataFrame) -> pd.DataFrame:
    """For each method and each evaluation text that is also a calibration source: perplexity on that text
    after calibrating on it (same domain) against the geometric mean after calibrating on each other real
    source (cross domain). ``log_gap`` > 0: same-domain calibration scored better."""
    real = table[table["calibration.source"] != "random-vocab"]
    rows = []
    for method, part in real.groupby("method_label"):
        by_source = part.set_index("calibration.source")
        for column in ppl_columns(part):
            text = column.split(":", 1)[1]
            if text not in by_source.index:
                continue
            same = float(by_source.loc[text, column])
            others = by_source.drop(index=text)[column].astype(float).dropna()
            if others.empty:
                continue
            cross = float(np.exp(np.log(others).mean()))
            rows.append({"method_label": method, "text": text, "same_domain_ppl": same,
                         "cross_domain_ppl": cross, "log_gap": float(np.log(cross) - np.log(same))})
    return pd.DataFrame(rows)


def rank_of(table: pd.DataFrame, column: str, group: str, target: str, lower_is_better: bool) -> pd.DataFrame:
    """Per method, the rank (1 = best) of `target` among the values of `group` on `column`, and how many."""
    rows = []
    for method, part in table.groupby("method_label"):
        means = part.groupby(group)[column].mean().dropna()
        if target not in means.index:
            continue
        ranks = means.rank(ascending=lower_is_better, method="min")
        rows.append({"method_label": method, "metric": column, "rank": int(ranks[target]), "of": len(means),
                     "value": float(means[target]),
                     "best": str(means.idxmin() if lower_is_better else means.idxmax())})
    return pd.DataFrame(rows)
