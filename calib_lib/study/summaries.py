"""Each study notebook's statistics and the sentences of its finding, as tested functions.

A notebook calls one analysis function (tables and tests it displays) and one finding function (the text
it saves), so what a notebook says is checked in ``tests/test_summaries.py`` and never computed twice:
the 06_findings claims (``calib_lib.findings``) reuse ``task_swing`` and ``self_vs_real`` from here.

Shared by every notebook: ``noise_floor_table`` (the float-order noise floor of each method, from the
noise-floor grid's replicate runs), ``intervals`` (the uncertainty columns the figures draw: 95% intervals
from the stored standard errors, the float-noise band) and ``budget_paragraph`` (what the profile's budget
can show: standard errors, minimum detectable effects, the noise floor, the smallest p of each test).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import integrate
from scipy import stats as sps

from .. import power, stats
from .labels import fmt, fmt_p
from .tables import kl_columns, long_metrics, ppl_columns, rank_of, same_domain_gap, task_columns

ALPHA = 0.05
NO_TASKS = "task accuracy is unavailable here (no task data: set CALIB_MIRROR or go online)"
Z95 = float(sps.norm.ppf(0.975))
LOG_METRICS = ("ppl", "kl", "kl_mean", "kl_p99")           # metrics whose spreads are read on a log scale


def significance(p_value: float, yes: str, no: str, alpha: float = ALPHA) -> str:
    """``yes`` when p < alpha, else ``no`` (an undefined p reads as not significant)."""
    return yes if p_value is not None and not np.isnan(p_value) and p_value < alpha else no


def is_log_metric(column: str) -> bool:
    """Perplexity and KL columns: compared as ratios (log differences), never as raw differences."""
    return column.split(":", 1)[0] in LOG_METRICS


# -- the noise floor --------------------------------------------------------------------------------------

FLOOR_METRIC = {"ppl:geomean": "log_ppl", "kl:geomean": "kl", "acc:mean": "acc:mean"}


def noise_floor_table(replicates: pd.DataFrame | None) -> pd.DataFrame:
    """Per method and metric, the pooled SD of float-order replicates (``stats.noise_floor``) from the
    noise-floor grid's table (``study.noise_floor_grid``: each method's base run and its replicates).
    Metrics: ``log_ppl`` (log of ``ppl:geomean``), ``log_ppl:text`` (one text's log perplexity, pooled over
    texts), ``kl`` (log of ``kl:geomean``), ``acc:mean`` and ``acc:task`` (one task, pooled over tasks).
    Columns: method_label, family, metric, sd, df, runs, note. An empty or replicate-free table gives an
    empty floor table (then no figure draws a floor and every paragraph says it is unmeasured)."""
    out = pd.DataFrame(columns=["method_label", "family", "metric", "sd", "df", "runs", "note"])
    if replicates is None or replicates.empty or "method_label" not in replicates:
        return out
    data = replicates.copy()
    config = ["method_label"] + [c for c in ("calibration.source", "calibration.num_samples", "calibration.seq_len",
                                             "calibration.set_index") if c in data]
    data[config] = data[config].astype(str)
    texts = ppl_columns(data)
    data["_log_ppl"] = np.log(data[texts].astype(float)).mean(axis=1, skipna=False) if texts else np.nan
    kl = kl_columns(data)
    if kl:
        values = data[kl].astype(float)
        data["_kl"] = np.log(values.where(values > 0)).mean(axis=1, skipna=False)
    rows = []

    def add(label, family, metric, frame, value, cfg):
        result = stats.noise_floor(frame, value, cfg)
        rows.append({"method_label": label, "family": family, "metric": metric, "sd": result["sd"],
                     "df": result["df"], "runs": result["runs"], "note": result["note"]})

    for label, part in data.groupby("method_label"):
        family = part["family"].iloc[0] if "family" in part else ""
        add(label, family, "log_ppl", part, "_log_ppl", config)
        if texts:
            long = part.melt(id_vars=config, value_vars=texts, var_name="_text", value_name="_v")
            long["_v"] = np.log(long["_v"].astype(float))
            add(label, family, "log_ppl:text", long, "_v", config + ["_text"])
        if kl and part["_kl"].notna().any():
            add(label, family, "kl", part, "_kl", config)
        if "acc:mean" in part and part["acc:mean"].notna().any():
            add(label, family, "acc:mean", part, "acc:mean", config)
            long = part.melt(id_vars=config, value_vars=task_columns(part), var_name="_task", value_name="_v")
            add(label, family, "acc:task", long, "_v", config + ["_task"])
    return pd.DataFrame(rows, columns=out.columns)


def _floor_row(floor: pd.DataFrame | None, label: str, metric: str):
    if floor is None or floor.empty:
        return None
    hit = floor[(floor["method_label"] == label) & (floor["metric"] == metric)]
    if hit.empty or int(hit["df"].iloc[0]) < 1 or not np.isfinite(float(hit["sd"].iloc[0])):
        return None
    return hit.iloc[0]


def floor_sd(floor: pd.DataFrame | None, label: str, metric: str) -> float:
    """The float-noise SD of `label` on `metric` (``noise_floor_table`` names: log_ppl, kl, acc:mean, ...);
    NaN where the floor table has no replicates of it."""
    row = _floor_row(floor, label, metric)
    return float("nan") if row is None else float(row["sd"])


def floor_dof(floor: pd.DataFrame | None, label: str, metric: str) -> int:
    """Degrees of freedom of that SD (replicate runs minus configurations); 0 where unmeasured."""
    row = _floor_row(floor, label, metric)
    return 0 if row is None else int(row["df"])


def range_threshold(k: int, sd: float, dof: float | None = None, alpha: float = ALPHA) -> float:
    """The range (max - min) of k single runs that noise of this SD alone exceeds with probability alpha:
    the studentized range quantile q_{1-alpha}(k, dof) x sd (Tukey's criterion; `dof` of the SD estimate,
    None: a known SD). For k = 2 it equals ``floor_threshold``. NaN for k < 2 or an unknown SD."""
    if k < 2 or not np.isfinite(sd) or (dof is not None and dof < 1):
        return float("nan")
    return float(sps.studentized_range.ppf(1 - alpha, k, dof if dof is not None else np.inf)) * sd


def floor_threshold(sd: float, alpha: float = ALPHA, dof: float | None = None) -> float:
    """The smallest difference between two single runs that noise of this SD alone makes unlikely at
    `alpha` (two-sided): t_{1-alpha/2, dof} x sqrt(2) x sd, in the SD's units (log units for perplexity and
    KL). With few replicates the SD itself is uncertain, and the t quantile (dof of the SD) says so; None
    treats the SD as known (the normal quantile, as ``stats.beyond_noise_floor``)."""
    if not np.isfinite(sd) or (dof is not None and dof < 1):
        return float("nan")
    q = sps.t.ppf(1 - alpha / 2, dof) if dof is not None else sps.norm.ppf(1 - alpha / 2)
    return float(q) * math.sqrt(2) * sd


def _t_quantile(level: float, dof: int) -> float:
    """The two-sided `level` quantile of t on `dof` degrees of freedom (NaN without any)."""
    return float(sps.t.ppf(0.5 + level / 2, dof)) if dof >= 1 else float("nan")


def has_floor(floor: pd.DataFrame | None) -> bool:
    return floor is not None and not floor.empty and bool((floor["df"] >= 1).any())


# -- the uncertainty columns the figures draw ------------------------------------------------------------

def intervals(table: pd.DataFrame, floor: pd.DataFrame | None = None, z: float = Z95) -> pd.DataFrame:
    """The table with the interval columns ``plots`` draws (see ``calib_lib.plots``): for every accuracy
    column with a stored standard error (``se:acc:<task>``, ``se:acc:mean``) ``se_lo:``/``se_hi:`` = value
    +- z SE, clipped to [0, 1]; and, for each method the floor table has replicates of, ``floor_lo:``/
    ``floor_hi:`` for ``ppl:geomean`` (value x exp(+-q SD of log perplexity)), ``kl:geomean`` (the same on log
    KL) and ``acc:mean`` (+- q SD), q the t quantile on the floor's degrees of freedom (the convention of every
    floor comparison: ``floor_threshold``; a floor from a few replicates is itself uncertain). The band is a
    95% interval, from this one run, for the configuration's value averaged over float orders (a new
    replicate would land within sqrt 2 times as far; two runs differ beyond noise past ``floor_threshold``)."""
    out = table.copy()
    for column in [c for c in table.columns if c.startswith(("acc:", "acc_norm:"))]:
        if f"se:{column}" in table:
            se = table[f"se:{column}"].astype(float)
            out[f"se_lo:{column}"] = (table[column] - z * se).clip(0, 1)
            out[f"se_hi:{column}"] = (table[column] + z * se).clip(0, 1)
    if not has_floor(floor) or "method_label" not in table:
        return out
    for column, metric in FLOOR_METRIC.items():
        if column not in table:
            continue
        sd = table["method_label"].map(lambda label: floor_sd(floor, label, metric)).astype(float)
        if sd.notna().sum() == 0:
            continue
        level = 2 * sps.norm.cdf(z) - 1
        q = table["method_label"].map(lambda label: _t_quantile(level, floor_dof(floor, label, metric))).astype(float)
        half = q * sd
        value = table[column].astype(float)
        if is_log_metric(column):
            out[f"floor_lo:{column}"] = value * np.exp(-half)
            out[f"floor_hi:{column}"] = value * np.exp(half)
        else:
            out[f"floor_lo:{column}"] = value - half
            out[f"floor_hi:{column}"] = value + half
    return out


def references(*tables: pd.DataFrame, metrics: list[str]) -> dict:
    """{method label: {metric: value}} of the dense model and the data-free baselines (the horizontal lines of
    a figure), from tables with one row per such run; labels that appear more than once take their first
    replicate's row."""
    refs = {}
    for table in tables:
        if table is None or table.empty:
            continue
        rows = table.sort_values("replicate") if "replicate" in table else table
        for _, row in rows.drop_duplicates("method_label").iterrows():
            values = {m: float(row[m]) for m in metrics if m in row and pd.notna(row[m])}
            if row["method_label"] == "dense":
                values.pop("kl:geomean", None)             # 0 by definition: not a line on a log axis
            refs.setdefault(row["method_label"], values)
    return refs


# -- what a budget can show -------------------------------------------------------------------------------

def discordance(documents: pd.DataFrame | None, table: pd.DataFrame, max_runs: int = 12) -> float:
    """Median share of task documents that exactly one of two runs of the same method gets right, over the
    pairs of the table's runs (at most `max_runs` per method): what McNemar's test and the accuracy MDE
    depend on. NaN without per-document records."""
    if documents is None or documents.empty or "correct" not in documents:
        return float("nan")
    rows = documents[(documents["kind"] == "task") & documents["key"].isin(set(table["key"]))]
    if rows.empty:
        return float("nan")
    matrix = rows.pivot_table(index=["name", "doc_id"], columns="key", values="correct", aggfunc="first")
    shares = []
    for _, part in table.groupby("method_label"):
        keys = [k for k in dict.fromkeys(part["key"]) if k in matrix.columns][:max_runs]
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                both = matrix[[a, b]].dropna()
                if len(both):
                    shares.append(float((both[a] != both[b]).mean()))
    return float(np.median(shares)) if shares else float("nan")


def docs_needed(effect: float, discordance_share: float, alpha: float = ALPHA, power_: float = 0.8) -> float:
    """Documents two runs must share for McNemar's test to detect an accuracy difference `effect` with
    probability `power_` (the inverse of ``power.accuracy_mde``): n = ((z_a sqrt(psi) + z_b sqrt(psi -
    effect^2)) / effect)^2, rounded up; inf for a zero effect or one larger than the discordance allows."""
    effect, psi = abs(effect), discordance_share
    if not (effect > 0 and np.isfinite(psi) and 0 < psi <= 1) or effect > psi:
        return float("inf")
    z_a, z_b = float(sps.norm.ppf(1 - alpha / 2)), float(sps.norm.ppf(power_))
    return float(math.ceil(((z_a * math.sqrt(psi) + z_b * math.sqrt(psi - effect ** 2)) / effect) ** 2))


def expected_range(n: int, sd: float = 1.0) -> float:
    """Expected range (max - min) of n independent normal draws with this SD: d_n x sd (d_2 = 1.128,
    d_3 = 1.693, d_5 = 2.326), the spread noise alone gives n calibration sets."""
    if n < 2 or not np.isfinite(sd):
        return float("nan")
    value, _ = integrate.quad(lambda x: 1 - sps.norm.cdf(x) ** n - sps.norm.sf(x) ** n, -np.inf, np.inf)
    return float(value * sd)


def _docs_per_task(profile, documents: pd.DataFrame | None) -> float:
    if documents is not None and not documents.empty and (documents["kind"] == "task").any():
        tasks = documents[documents["kind"] == "task"]
        return float(tasks.groupby(["key", "name"])["doc_id"].nunique().median())
    limit = profile.suite.get("task_limit") if profile is not None else None
    return float(limit) if limit else float("nan")


def _count(table: pd.DataFrame, x: str, by: list[str]) -> int:
    """The fewest distinct values of x in any group of `by` (the points a per-group test gets)."""
    if x not in table or table.empty:
        return 0
    by = [b for b in by if b in table]
    return int(table.groupby(by)[x].nunique().min()) if by else int(table[x].nunique())


def _notebook_tests(notebook: str | None, table: pd.DataFrame) -> list[dict]:
    """The tests `notebook` runs, with the points each gets in this table and the smallest p it can reach."""
    rows = []

    def add(what, test, *sizes, mde=float("nan"), unit=""):
        if min(sizes, default=0) < 1:
            return
        rows.append({"what": what, "test": test, "sizes": sizes, "smallest_p": power.smallest_p(test, *sizes),
                     "mde": mde, "unit": unit})

    methods = table["method_label"].nunique() if "method_label" in table else 1
    texts = len(ppl_columns(table))
    name = notebook or ""
    if name.startswith("01"):
        n = _count(table, "calibration.num_samples", ["method_label"])
        add(f"a monotone trend over {n} sample counts (per method)", "spearman", n, mde=power.rho_mde(n), unit="rho")
    elif name.startswith("02"):
        n = _count(table, "calibration.seq_len", ["method_label", "regime"])
        add(f"a monotone trend over {n} sequence lengths (per method and regime)", "spearman", n,
            mde=power.rho_mde(n), unit="rho")
    elif name.startswith("03"):
        k = table["calibration.source"].nunique() if "calibration.source" in table else 0
        if k >= 3:
            add(f"a source effect ({k} sources, {methods * texts} method x text blocks)", "friedman", k, methods * texts)
        gaps = len(same_domain_gap(table)) if "calibration.source" in table and texts else 0
        add(f"the same-domain gap ({gaps} method x text pairs)", "wilcoxon", gaps)
    elif name.startswith("04"):
        sets = _count(table, "calibration.set_index", ["method_label", "calibration.source"])
        add(f"two sources told apart by their {sets} sets each", "mann_whitney", sets, sets)
        tasks = len(task_columns(table))
        cells = table.groupby(["method_label", "calibration.source"]).ngroups if "calibration.source" in table else 0
        add(f"task swing vs mean swing ({cells * tasks} method x source x task ranges, not independent: "
            f"{cells} cells share each mean range)", "wilcoxon", cells * tasks)
    elif name.startswith("05"):
        k = table["data"].nunique() if "data" in table else 0
        if k >= 3:
            add(f"a calibration-data effect ({k} data, {methods * texts} method x text blocks)", "friedman", k,
                methods * texts)
    return rows


def budget_facts(profile, table: pd.DataFrame, documents: pd.DataFrame | None = None,
                 floor: pd.DataFrame | None = None, notebook: str | None = None, *, alpha: float = ALPHA,
                 power_: float = 0.8) -> dict:
    """The numbers behind ``budget_paragraph``: documents per task and tasks, the median stored standard
    error of a task's and of the mean accuracy, the discordance between runs of one method (from the
    per-document records), the accuracy MDE of two runs on one task and on all tasks (``power.accuracy_mde``),
    the float-noise floor per method (SD and the smallest difference two single runs need to exceed it, for
    log perplexity, log KL and mean accuracy), and the notebook's tests with their smallest reachable p."""
    tasks = task_columns(table) if table is not None else []
    docs = _docs_per_task(profile, documents)
    se_task = table[[f"se:{t}" for t in tasks if f"se:{t}" in table]].stack().median() if tasks else float("nan")
    se_mean = table["se:acc:mean"].median() if "se:acc:mean" in table else float("nan")
    accuracy = float(table["acc:mean"].median()) if "acc:mean" in table and table["acc:mean"].notna().any() else 0.5
    psi = discordance(documents, table) if tasks else float("nan")
    psi_used = psi if np.isfinite(psi) and psi > 0 else None
    mde_task = mde_all = float("nan")
    if tasks and np.isfinite(docs):
        mde_task = power.accuracy_mde(int(docs), accuracy, psi_used, alpha, power_)
        mde_all = power.accuracy_mde(int(docs) * len(tasks), accuracy, psi_used, alpha, power_)
    floors = []
    if has_floor(floor):
        for label in sorted(floor["method_label"].unique()):
            row = {"method_label": label}
            for metric in ("log_ppl", "kl", "acc:mean"):
                sd = floor_sd(floor, label, metric)
                row[metric] = sd
                row[f"{metric} df"] = floor_dof(floor, label, metric)
                row[f"{metric} threshold"] = floor_threshold(sd, alpha, floor_dof(floor, label, metric))
            runs = floor.loc[(floor["method_label"] == label) & (floor["metric"] == "log_ppl"), "runs"]
            row["runs"] = int(runs.max()) if len(runs) else 0
            floors.append(row)
    return {"docs_per_task": docs, "tasks": len(tasks), "se_task": float(se_task) if tasks else float("nan"),
            "se_mean": float(se_mean), "accuracy": accuracy, "discordance": psi,
            "mde_task": mde_task, "mde_all": mde_all, "floor": pd.DataFrame(floors),
            "tests": _notebook_tests(notebook, table) if table is not None and not table.empty else [],
            "alpha": alpha, "power": power_}


def _points(share: float, digits: int = 1) -> str:
    return "n/a" if share is None or not np.isfinite(share) else f"{100 * share:.{digits}f}"


def _ratio_percent(log_difference: float) -> str:
    """A log difference as the percentage change it means (0.095 -> '10%')."""
    if not np.isfinite(log_difference):
        return "n/a"
    value = 100 * (math.exp(log_difference) - 1)
    return f"{value:.2g}%" if value < 10 else f"{value:.0f}%"


def budget_paragraph(profile, table: pd.DataFrame, documents: pd.DataFrame | None = None,
                     floor: pd.DataFrame | None = None, notebook: str | None = None, *, alpha: float = ALPHA,
                     power_: float = 0.8) -> str:
    """"What this budget can show", from the data: the standard errors of the accuracies, the smallest
    accuracy difference two runs can be told apart by (80% power, McNemar on shared documents), the
    float-noise floor of each method where replicate runs exist (or that it is unmeasured), and for each
    test the notebook runs, whether it can reach p < alpha at all with the points it has."""
    f = budget_facts(profile, table, documents, floor, notebook, alpha=alpha, power_=power_)
    sentences = []
    if f["tasks"]:
        docs = "an unknown number of" if not np.isfinite(f["docs_per_task"]) else f"{f['docs_per_task']:.0f}"
        sentences.append(
            f"Each of the {f['tasks']} tasks is scored on {docs} documents: one run's task accuracy has a standard "
            f"error of about {_points(f['se_task'])} points (median of the stored SEs) and its mean accuracy over "
            f"the tasks about {_points(f['se_mean'])} points.")
        if np.isfinite(f["discordance"]) and f["discordance"] > 0:
            basis = f"discordance {f['discordance']:.2f}, measured between runs of one method"
        elif np.isfinite(f["discordance"]):
            basis = (f"no two runs of one method disagree on any document here, so the discordance is assumed "
                     f"2p(1-p) at accuracy {f['accuracy']:.2f}")
        else:
            basis = f"discordance assumed 2p(1-p) at accuracy {f['accuracy']:.2f}, no per-document records"

        found = [f"{_points(v)} points {where}" for v, where in ((f["mde_task"], "on one task"),
                                                                  (f["mde_all"], "over all tasks pooled"))
                 if np.isfinite(v)]
        missing = [where for v, where in ((f["mde_task"], "on one task"), (f["mde_all"], "over all tasks pooled"))
                   if not np.isfinite(v)]
        s = (f"For McNemar's test to detect an accuracy difference between two runs scored on the same documents "
             f"with {100 * power_:.0f}% power at alpha {alpha:g} ({basis}), it must be at least "
             + " and ".join(found) if found else
             f"With this few documents, McNemar's test detects no accuracy difference between two runs with "
             f"{100 * power_:.0f}% power at alpha {alpha:g} ({basis})")
        if found and missing:
            s += f" ({' and '.join(missing)}: no difference is detectable with this few documents)"
        sentences.append(s + "; smaller accuracy differences in this notebook are not resolved.")
    else:
        sentences.append(NO_TASKS[0].upper() + NO_TASKS[1:] + ": the comparisons rest on perplexity alone.")
    if len(f["floor"]):
        parts = []
        for _, r in f["floor"].iterrows():
            part = (f"{r['method_label']}: log-perplexity SD {r['log_ppl']:.3g}, so two single runs differ beyond "
                    f"float noise only when their perplexities differ by more than "
                    f"{_ratio_percent(r['log_ppl threshold'])} ({_ratio_percent(floor_threshold(r['log_ppl'], alpha))} "
                    f"were the SD known exactly: more replicates narrow it)")
            if np.isfinite(r.get("kl", np.nan)):
                part += f"; log-KL SD {r['kl']:.3g} (KL beyond {_ratio_percent(r['kl threshold'])})"
            if np.isfinite(r.get("acc:mean", np.nan)):
                part += (f"; mean-accuracy SD {_points(r['acc:mean'])} points (beyond "
                         f"{_points(r['acc:mean threshold'])} points)")
            parts.append(part)
        runs = int(f["floor"]["runs"].max())
        sentences.append(f"Float-order replicates ({runs} runs of each method's base configuration, differing only "
                         f"in float order; {runs - 1} df per SD, so the thresholds use the t quantile) set the noise "
                         f"floor: " + "; ".join(parts) + ". Shaded bands in the figures are this floor (+-t SD, t on its degrees of freedom).")
    else:
        sentences.append("No float-order replicate runs are in the store, so the numerical noise floor is "
                         "unmeasured: a difference between two single runs may be float noise alone "
                         "(study.noise_floor_grid measures it).")
    for t in f["tests"]:
        can = t["smallest_p"] < alpha
        s = (f"The test of {t['what']} ({t['test'].replace('_', '-')}) "
             + (f"can reach p < {alpha:g} (smallest p {t['smallest_p']:.2g})" if can
                else f"cannot reach p < {alpha:g} however large the effect (smallest p {t['smallest_p']:.2g}): "
                     "read its curve, not its p-value"))
        if t["unit"] == "rho" and np.isfinite(t["mde"]):
            s += f"; it detects |rho| >= {t['mde']:.2f} with {100 * power_:.0f}% power"
        sentences.append(s + ".")
    return " ".join(sentences)


# -- 01 sample count ------------------------------------------------------------------------------

def plateau_on_scale(table: pd.DataFrame, x: str, metric: str, by: str = "method_label") -> pd.DataFrame:
    """``stats.plateau`` of one metric, perplexity and KL on the log scale: the shares (``last_step_share``)
    and gains are of log perplexity, as claim F3 measures them, while ``first``, ``before`` and ``last`` stay in
    the metric's units. ``scale`` says which."""
    if not is_log_metric(metric):
        return stats.plateau(table, x, metric, by, lower_is_better=False).assign(metric=metric, scale="linear")
    logged = table.assign(_log=np.log(table[metric].astype(float).where(table[metric] > 0)))
    out = stats.plateau(logged, x, "_log", by, lower_is_better=True)
    for column in ("first", "before", "last"):
        out[column] = np.exp(out[column])
    return out.assign(metric=metric, scale="log")


def sample_count_analysis(table: pd.DataFrame, metrics: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(Spearman trend of each metric against num_samples per method, plateau summary per method: the share
    of the total change the grid's last step brought, on log perplexity / log KL and on raw accuracy)."""
    trends = pd.concat([stats.spearman_trend(table, "calibration.num_samples", m, by="method_label").assign(metric=m)
                        for m in metrics], ignore_index=True)
    plateaus = pd.concat([plateau_on_scale(table, "calibration.num_samples", m) for m in metrics], ignore_index=True)
    return trends, plateaus


def sample_count_finding(trends: pd.DataFrame, plateaus: pd.DataFrame, dense_ppl: float,
                         floor: pd.DataFrame | None = None) -> str:
    """Per method: perplexity along the grid, its trend, the last step's share of the change in log perplexity
    and (with a floor table) whether that last step is beyond float noise; then accuracy, dense perplexity."""
    ppl = plateaus[plateaus.metric == "ppl:geomean"].set_index("method_label")
    rho = trends[trends.metric == "ppl:geomean"].set_index("method_label")
    sentences = []
    for method, row in ppl.iterrows():
        s = (f"{method}: perplexity {row['first']:.1f} with {row.x_first} sample(s), {row.before:.1f} with "
             f"{row.x_before} and {row['last']:.1f} with {row.x_last} (Spearman rho {fmt(rho.loc[method, 'rho'])}, "
             f"Holm p {fmt_p(rho.loc[method, 'p_holm'])}); the last step of the grid ({row.x_before} -> "
             f"{row.x_last}) brought {fmt(100 * row.last_step_share, 0)}% of the total change in log perplexity")
        sd, dof = floor_sd(floor, method, "log_ppl"), floor_dof(floor, method, "log_ppl")
        if np.isfinite(sd):
            step = math.log(row.before) - math.log(row["last"])
            limit = floor_threshold(sd, ALPHA, dof)
            s += (f", a {_ratio_percent(abs(step))} change that is {'beyond' if abs(step) > limit else 'within'} the "
                  f"float-noise floor (two single runs differ by more than {_ratio_percent(limit)} with p < {ALPHA:g}; "
                  f"floor SD {sd:.3g} of log perplexity, {dof} df)")
        sentences.append(s)
    acc = plateaus[plateaus.metric == "acc:mean"].set_index("method_label")
    if len(acc):
        sentences += [f"{method}: mean accuracy {row['first']:.3f} -> {row['last']:.3f}" for method, row in acc.iterrows()]
    else:
        sentences.append(NO_TASKS)
    return "; ".join(sentences) + f". Dense perplexity: {dense_ppl:.1f}."


# -- 02 sequence length ---------------------------------------------------------------------------

def sequence_length_trends(table: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    return pd.concat([stats.spearman_trend(table, "calibration.seq_len", m, by=["method_label", "regime"]).assign(metric=m)
                      for m in metrics], ignore_index=True)


def sequence_length_finding(table: pd.DataFrame, trends: pd.DataFrame, floor: pd.DataFrame | None = None) -> str:
    """Per regime and method: the lowest and highest perplexity over the lengths, the trend, and (with a floor
    table) whether the spread between them is beyond float noise."""
    ppl = table.pivot_table(index=["regime", "method_label"], columns="calibration.seq_len", values="ppl:geomean")
    rho = trends[trends.metric == "ppl:geomean"].set_index(["regime", "method_label"])
    sentences = []
    for (regime, method), row in ppl.iterrows():
        row = row.dropna()
        best, worst = row.idxmin(), row.idxmax()
        s = (f"{method}, {regime}: lowest perplexity {row[best]:.1f} at seq_len {best}, highest "
             f"{row[worst]:.1f} at {worst} (Spearman rho {fmt(rho.loc[(regime, method), 'rho'])}, Holm p "
             f"{fmt_p(rho.loc[(regime, method), 'p_holm'])})")
        sd, dof = floor_sd(floor, method, "log_ppl"), floor_dof(floor, method, "log_ppl")
        if np.isfinite(sd):
            gap = math.log(row[worst]) - math.log(row[best])
            limit = range_threshold(len(row), sd, dof)
            s += (f", a {_ratio_percent(gap)} spread {'beyond' if gap > limit else 'within'} what float noise "
                  f"alone gives {len(row)} single runs ({_ratio_percent(limit)}, studentized range at p {ALPHA:g})")
        sentences.append(s)
    return "; ".join(sentences) + "."


# -- 03 source domain -----------------------------------------------------------------------------

def _friedman_over(table: pd.DataFrame, columns: list[str], group: str, keep: list[str], what: str):
    long = long_metrics(table, columns, keep)
    long["block"] = long["method_label"] + " | " + long["metric"]
    return stats.friedman(long, "value", group, "block") | {"metric": what}, stats.nemenyi(long, "value", group, "block")


def source_domain_analysis(table: pd.DataFrame, metrics: list[str]) -> dict:
    """Friedman tests of the source over (method, text) and (method, task) blocks with Nemenyi post-hoc, the
    same-domain gap with its Wilcoxon test, and random-vocab's rank on each headline metric."""
    keep = ["method_label", "calibration.source"]
    test, posthoc = _friedman_over(table, ppl_columns(table), "calibration.source", keep, "perplexity per text")
    tests, posthocs = [test], {"perplexity": posthoc}
    if "acc:mean" in metrics:
        test, posthoc = _friedman_over(table, task_columns(table), "calibration.source", keep, "accuracy per task")
        tests.append(test)
        posthocs["accuracy"] = posthoc
    gap = same_domain_gap(table)
    tests.append(stats.wilcoxon(gap["log_gap"]) | {"metric": "log(cross/same) perplexity"})
    ranks = pd.concat([rank_of(table, m, "calibration.source", "random-vocab", m.startswith("ppl")) for m in metrics])
    return {"tests": tests, "posthoc": posthocs, "gap": gap, "ranks": ranks}


def source_domain_finding(analysis: dict) -> str:
    tests, gap, ranks = analysis["tests"], analysis["gap"], analysis["ranks"]
    friedman, wil = tests[0], tests[-1]
    worst = ranks[ranks["rank"] == ranks["of"]]
    median_gap = gap["log_gap"].median() if len(gap) else float("nan")
    sentences = [
        f"Calibration source {significance(friedman['p_value'], 'changes', 'does not significantly change')} "
        f"perplexity across texts and methods: Friedman chi2 {fmt(friedman['statistic'])}, p "
        f"{fmt_p(friedman['p_value'])}, Kendall's W {fmt(friedman['effect_size'])} over {friedman.get('n', 'n/a')} blocks",
        f"calibrating on a text's own domain "
        f"{significance(wil['p_value'], 'lowers' if median_gap > 0 else 'raises', 'does not significantly change')} "
        f"its perplexity: cross-domain / same-domain perplexity, median ratio {fmt(np.exp(median_gap))} (Wilcoxon p "
        f"{fmt_p(wil['p_value'])}, rank-biserial r {fmt(wil['effect_size'])}, n {wil.get('n')})",
        f"random-vocab ranks last on {len(worst)} of {len(ranks)} (method, metric) pairs"]
    if len(tests) > 2:
        sentences.insert(1, f"for task accuracy: Friedman p {fmt_p(tests[1]['p_value'])}, Kendall's W "
                            f"{fmt(tests[1]['effect_size'])}")
    return "; ".join(sentences) + "."


def paired_accuracy(documents: pd.DataFrame | None, key_a: str, key_b: str, n_resamples: int = 2000) -> dict:
    """Mean accuracy of run a minus run b on the documents both scored, each task weighted equally (as
    ``acc:mean``): the difference, its 95% paired bootstrap CI over documents (``stats.paired_bootstrap``) and
    the exact McNemar p on the pooled documents (``stats.mcnemar_exact``). NaNs and a note without records."""
    empty = {"difference": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_mcnemar": np.nan, "n": 0,
             "discordant": 0, "note": "no per-document records"}
    if documents is None or documents.empty:
        return empty
    try:
        pairs = stats.paired_documents(documents, key_a, key_b, "correct")
    except (ValueError, KeyError):
        return empty
    pairs = pairs.dropna(subset=["a", "b"])
    if pairs.empty:
        return empty
    per_task = pairs.groupby("name")["doc_id"].transform("size").to_numpy(float)
    weight = len(pairs) / (pairs["name"].nunique() * per_task)          # mean of weighted values = acc:mean
    a, b = pairs["a"].to_numpy(float), pairs["b"].to_numpy(float)
    boot = stats.paired_bootstrap(a * weight, b * weight, n_resamples=n_resamples)
    mcnemar = stats.mcnemar_exact(a, b)
    return {"difference": float(np.mean((a - b) * weight)), "ci_low": boot["ci_low"], "ci_high": boot["ci_high"],
            "p_mcnemar": mcnemar["p_value"], "n": int(len(pairs)), "discordant": int(mcnemar["n_discordant"]),
            "note": boot.get("note", "")}


def _ci_points(r: dict) -> str:
    return (f"{100 * r['difference']:+.1f} points (95% paired bootstrap CI {100 * r['ci_low']:+.1f} to "
            f"{100 * r['ci_high']:+.1f}, McNemar p {fmt_p(r['p_mcnemar'])}, {r['n']} documents)")


def _pooled_set_sd(variance_table: pd.DataFrame | None, label: str) -> tuple[float, int]:
    """SD of log perplexity between calibration sets of one real source (pooled over the real sources) and its df."""
    if variance_table is None or variance_table.empty or "ppl:geomean" not in variance_table:
        return float("nan"), 0
    part = variance_table[(variance_table["method_label"] == label)
                          & ~variance_table["calibration.source"].isin(NOT_REAL)].assign(
        _v=lambda d: np.log(d["ppl:geomean"].astype(float)))
    result = stats.noise_floor(part, "_v", "calibration.source")
    return result["sd"], result["df"]


def source_domain_discussion(analysis: dict, table: pd.DataFrame, floor: pd.DataFrame | None = None,
                             documents: pd.DataFrame | None = None, variance_table: pd.DataFrame | None = None,
                             *, alpha: float = ALPHA) -> str:
    """The closing discussion of 03, from the data: per method, how far apart the real sources are in
    perplexity against the float-noise floor and against the draw-to-draw spread (04's sets, where they are in
    the store: one draw per source confounds source with draw); the same-domain gap; random tokens on
    perplexity, KL and accuracy (paired over documents, against what this budget can detect); and what the
    budget supports. Markdown bullets."""
    bullets = []
    real = table[~table["calibration.source"].isin(["random-vocab", "self"])]
    for method, part in real.groupby("method_label"):
        by = part.set_index("calibration.source")["ppl:geomean"].astype(float).dropna()
        if len(by) < 2:
            continue
        span = math.log(by.max()) - math.log(by.min())
        s = (f"**{method}**: the {len(by)} real sources span {_ratio_percent(span)} in perplexity "
             f"({by.idxmin()} {by.min():.1f} to {by.idxmax()} {by.max():.1f})")
        sd = floor_sd(floor, method, "log_ppl")
        if np.isfinite(sd):
            limit = range_threshold(len(by), sd, floor_dof(floor, method, "log_ppl"), alpha)
            s += (f"; float noise alone spreads {len(by)} single runs over more than {_ratio_percent(limit)} only "
                  f"{100 * alpha:g}% of the time (studentized range; SD {sd:.3g} of log perplexity, "
                  f"{floor_dof(floor, method, 'log_ppl')} df), so this span is "
                  f"{'beyond' if span > limit else 'within'} the noise floor")
        set_sd, dof = _pooled_set_sd(variance_table, method)
        if np.isfinite(set_sd) and dof >= 1:
            limit = range_threshold(len(by), set_sd, dof, alpha)
            s += (f"; drawing {len(by)} calibration sets of one source would spread them over up to "
                  f"{_ratio_percent(limit)} (04's sets: SD {set_sd:.3g} of log perplexity, {dof} df, float noise "
                  f"included), so the source span {'exceeds' if span > limit else 'does not exceed'} what different "
                  "draws of one source give")
        else:
            s += ("; each source is one draw (set 0), so source and draw are confounded here: 04_seed_variance "
                  "measures how much a different draw of the same source moves perplexity")
        bullets.append(s + ".")
    gap, tests = analysis.get("gap", pd.DataFrame()), analysis.get("tests", [])
    if len(gap):
        wil = tests[-1]
        best = gap.loc[gap["log_gap"].idxmax()]
        s = (f"**Same domain**: calibrating on a text's own source gives a median cross/same perplexity ratio of "
             f"{np.exp(gap['log_gap'].median()):.3f} over {len(gap)} (method, text) pairs (Wilcoxon p "
             f"{fmt_p(wil['p_value'])}); the largest advantage is {best['text']} with {best['method_label']} "
             f"({np.exp(best['log_gap']):.3f})")
        limits = gap["method_label"].map(lambda m: floor_threshold(floor_sd(floor, m, "log_ppl:text"), alpha,
                                                                    floor_dof(floor, m, "log_ppl:text")))
        if limits.notna().any():
            beyond = int((gap["log_gap"].abs() > limits).sum())
            s += (f"; {beyond} of {int(limits.notna().sum())} gaps exceed what float noise gives two single runs of "
                  "one text")
        bullets.append(s + ".")
    random = table[table["calibration.source"] == "random-vocab"]
    for method, rand in random.groupby("method_label"):
        reals = real[real["method_label"] == method].dropna(subset=["ppl:geomean"])
        if reals.empty:
            continue
        best_real = reals.loc[reals["ppl:geomean"].idxmin()]
        r = rand.iloc[0]
        s = (f"**Random tokens, {method}**: perplexity {r['ppl:geomean']:.1f} against {best_real['ppl:geomean']:.1f} "
             f"for the best real source ({best_real['calibration.source']}), "
             f"{'worse' if r['ppl:geomean'] > reals['ppl:geomean'].max() else 'not worse'} than every real source")
        if "kl:geomean" in table and pd.notna(r.get("kl:geomean")) and pd.notna(best_real.get("kl:geomean")):
            s += f"; KL to dense {r['kl:geomean']:.3g} against {best_real['kl:geomean']:.3g} nats/token"
        if "acc:mean" in table and pd.notna(r.get("acc:mean")):
            paired = paired_accuracy(documents, r["key"], best_real["key"])
            if np.isfinite(paired["difference"]):
                s += f"; mean accuracy random - {best_real['calibration.source']} {_ci_points(paired)}"
                psi = paired["discordant"] / paired["n"] if paired["n"] else float("nan")
                need = docs_needed(paired["difference"], psi, alpha)
                tasks = max(len(task_columns(table)), 1)
                if paired["ci_low"] <= 0 <= paired["ci_high"]:
                    s += ("; the accuracy difference is not resolved at this budget" +
                          (f" (a difference this size needs about {math.ceil(need / tasks):,} documents per task)"
                           if np.isfinite(need) else ""))
            else:
                s += (f"; mean accuracy {r['acc:mean']:.3f} against {best_real['acc:mean']:.3f} (no per-document "
                      "records for a paired test)")
        bullets.append(s + ".")
    if "kl:geomean" in table and table["kl:geomean"].notna().any():
        rhos = []
        for method, part in table.groupby("method_label"):
            part = part.dropna(subset=["kl:geomean", "ppl:geomean"])
            if len(part) >= 3 and part["kl:geomean"].nunique() > 1 and part["ppl:geomean"].nunique() > 1:
                rhos.append((method, float(sps.spearmanr(part["kl:geomean"], part["ppl:geomean"]).statistic)))
        if rhos:
            bullets.append("**KL to dense** orders the sources like perplexity where rho is near 1: "
                           + ", ".join(f"{m} rho {v:.2f}" for m, v in rhos)
                           + " (Spearman over the sources, random-vocab included).")
    friedman = tests[0] if tests else {}
    supported = significance(friedman.get("p_value", np.nan), "a source effect on perplexity (Friedman p "
                             f"{fmt_p(friedman.get('p_value', np.nan))})", "no source effect on perplexity at "
                             f"p < {alpha:g} (Friedman p {fmt_p(friedman.get('p_value', np.nan))})", alpha)
    bullets.append(f"**What this budget supports**: {supported}; accuracy differences between sources smaller than "
                   "the minimum detectable effect above are not resolved, and with one draw per source the source "
                   "effect includes the draw's.")
    return "\n".join(f"* {b}" for b in bullets)


# -- 04 seed variance -----------------------------------------------------------------------------

def task_swing(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Range across sets of each task's accuracy within each (method, source), with that cell's range of
    the mean accuracy (``mean_range``); and the mean's ranges. Empty without task columns or sets."""
    keys = ["method_label", "calibration.source"]
    swing = stats.ranges(table, task_columns(table) + ["acc:mean"], keys) if task_columns(table) else pd.DataFrame()
    if swing.empty:
        return swing, pd.Series(dtype=float)
    mean_range = swing[swing.metric == "acc:mean"].set_index(keys)["range"]
    per_task = swing[swing.metric != "acc:mean"].join(mean_range.rename("mean_range"), on=keys)
    return per_task, mean_range


def set_spread(table: pd.DataFrame, metrics: list[str], floor: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (method, source, metric): the number of sets, mean, min, max and *range* (with 3 sets a bootstrap
    'CI' would just be the range); perplexity and KL also as ``log_range`` and ``log_sd`` (scale-free), and
    ``sd / floor``: the between-set SD over the float-noise SD of that method (on the log scale for
    perplexity and KL; > 1: the sets differ by more than float noise)."""
    rows = []
    for (method, source), part in table.groupby(["method_label", "calibration.source"]):
        for m in metrics:
            values = part[m].astype(float).dropna().to_numpy()
            if not len(values):
                continue
            row = {"method_label": method, "calibration.source": source, "metric": m, "sets": len(values),
                   "mean": values.mean(), "min": values.min(), "max": values.max(), "range": np.ptp(values)}
            scale = np.log(values[values > 0]) if is_log_metric(m) else values
            sd = float(np.std(scale, ddof=1)) if len(scale) > 1 else np.nan
            if is_log_metric(m):
                row |= {"log_range": float(np.ptp(scale)) if len(scale) else np.nan, "log_sd": sd}
            fl = floor_sd(floor, method, FLOOR_METRIC.get(m, m))
            row["sd / floor"] = sd / fl if np.isfinite(fl) and fl > 0 else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def swing_table(table: pd.DataFrame, floor: pd.DataFrame | None = None) -> pd.DataFrame:
    """The 04 swing figure's data: per (method, source) the range across sets of each task's accuracy and of
    the mean (``metric`` without the ``acc:`` prefix), or of each text's log perplexity without tasks; with
    ``expected``, the range noise alone gives that many sets: d_n x the float-noise SD of the method where
    replicates exist (``acc:task`` / ``acc:mean`` / ``log_ppl:text``), else d_n x the median stored SE
    (``expected_from`` says which)."""
    tasks = task_columns(table)
    keys = ["method_label", "calibration.source"]
    if tasks:
        columns = tasks + ["acc:mean"]
        data = table
    else:
        columns = ["ppl:geomean"] + ppl_columns(table)
        data = table.assign(**{c: np.log(table[c].astype(float)) for c in columns})
    swing = stats.ranges(data, columns, keys)
    if swing.empty:
        return swing
    expected, source = [], []
    for _, r in swing.iterrows():
        if tasks:
            metric = "acc:mean" if r["metric"] == "acc:mean" else "acc:task"
        else:
            metric = "log_ppl" if r["metric"] == "ppl:geomean" else "log_ppl:text"
        sd, why = floor_sd(floor, r["method_label"], metric), "float-noise floor"
        if not np.isfinite(sd) and tasks and f"se:{r['metric']}" in table:
            cell = table[(table["method_label"] == r["method_label"]) & (table["calibration.source"] == r["calibration.source"])]
            sd, why = float(cell[f"se:{r['metric']}"].median()), "binomial SE (documents)"
        expected.append(expected_range(int(r["n"]), sd))
        source.append(why if np.isfinite(sd) else "")
    swing["expected"], swing["expected_from"] = expected, source
    swing["metric"] = swing["metric"].str.replace("acc:", "", regex=False).str.replace("ppl:", "log ppl ", regex=False)
    return swing


def seed_variance_analysis(table: pd.DataFrame, metrics: list[str]) -> dict:
    """Brown-Forsythe of each metric's deviation from its (method, source) mean between the two families
    (perplexity and KL on the log scale: raw perplexity would compare the families' scales), and (with tasks)
    the Wilcoxon test of single-task range minus mean range across sets."""
    tests = []
    for m in metrics:
        values = np.log(table[m].astype(float)) if is_log_metric(m) else table[m]
        frame = table.assign(_value=values)
        frame = frame.assign(deviation=stats.centered(frame, "_value", ["method_label", "calibration.source"]))
        tests.append(stats.brown_forsythe(frame, "deviation", "family")
                     | {"metric": f"log {m}" if is_log_metric(m) else m})
    per_task, mean_range = task_swing(table)
    if len(per_task):
        tests.append(stats.wilcoxon(per_task["range"] - per_task["mean_range"]) | {"metric": "task range - mean range"})
    return {"tests": tests, "per_task": per_task, "mean_range": mean_range}


def seed_variance_finding(analysis: dict, spread: pd.DataFrame | None = None, swing: pd.DataFrame | None = None,
                          decomposition: pd.DataFrame | None = None) -> str:
    """The family SDs across sets (log perplexity), each method's between-set SD against its float-noise
    floor (``set_spread``), and the task swing against the mean's and against what noise alone gives
    (``swing_table``): a task's range exceeding the mean's is built in (averaging shrinks ranges), so the
    comparison with noise is the one that says whether the draw matters. With `decomposition`
    (``variance_decomposition``), its sentence (``variance_decomposition_finding``) closes the finding."""
    sentences = []
    for t in analysis["tests"]:
        if t["test"] == "Brown-Forsythe" and isinstance(t.get("sd"), dict):
            sds = ", ".join(f"{k} SD {v:.3g}" for k, v in t["sd"].items())
            sentences.append(f"{t['metric']} across sets: {sds} (Brown-Forsythe p {fmt_p(t['p_value'])})")
    if spread is not None and len(spread) and spread["sd / floor"].notna().any():
        ratio = spread[spread["metric"] == "ppl:geomean"].groupby("method_label")["sd / floor"].median().dropna()
        if len(ratio):
            sentences.append("between-set SD of log perplexity over the float-noise SD (median over sources): "
                             + ", ".join(f"{m} {v:.2g}x" for m, v in ratio.items())
                             + " (above 1: the draw moves perplexity more than float order does)")
    per_task, mean_range = analysis["per_task"], analysis["mean_range"]
    if len(per_task):
        w = analysis["tests"][-1]
        s = (f"single tasks swing by a median {fmt(per_task['range'].median(), 3)} accuracy across sets "
             f"against {fmt(mean_range.median(), 3)} for the task mean (Wilcoxon p {fmt_p(w['p_value'])}, r "
             f"{fmt(w['effect_size'])}, n {w.get('n')}; larger by construction, since a mean's range cannot exceed "
             "the mean of its parts' ranges)")
        if swing is not None and len(swing) and swing["expected"].notna().any():
            tasks = swing[swing["metric"] != "mean"].dropna(subset=["expected"])
            if len(tasks):
                source = tasks["expected_from"].mode().iloc[0]
                s += (f"; noise alone ({source}) would give a median range of {fmt(tasks['expected'].median(), 3)}, "
                      f"and {int((tasks['range'] > tasks['expected']).sum())} of {len(tasks)} task ranges exceed "
                      "their expected noise range")
        sentences.append(s)
    else:
        sentences.append(NO_TASKS)
    decomposed = variance_decomposition_finding(decomposition)
    if decomposed:
        sentences.append(decomposed)
    return "; ".join(sentences) + "."


# -- 04 variance decomposition (issue #17) ---------------------------------------------------------------

COMPONENTS = ("source", "set within source", "numerical noise", "documents")
BETWEEN_RUNS = COMPONENTS[:3]                          # the components that make runs differ from each other
DECOMPOSITION_METRICS = ("log_ppl", "log_kl", "acc:mean")
DECOMPOSITION_BASIS = ("bars: shares of the variance of one score were everything drawn afresh (source, set, float "
                       "order, evaluation documents); hatched: the documents' sampling variance, shared by all runs "
                       "and so not part of the spread between them")
COMPONENT_LABELS = {"source": "source", "set within source": "set within source (calibration draw)",
                    "numerical noise": "numerical noise (float order)",
                    "documents": "documents (evaluation sampling, shared by all runs)"}
SET_COLUMN = "calibration.set_index"
_DECOMPOSITION_LABELS = {"log_ppl": "log perplexity", "log_kl": "log KL to dense", "acc:mean": "mean accuracy"}
_DECOMPOSITION_FLOOR = {"log_ppl": "log_ppl", "log_kl": "kl", "acc:mean": "acc:mean"}
_DECOMPOSITION_COLUMNS = ["model", "method_label", "family", "metric", "metric_label", "component", "variance", "sd",
                          "share", "shares_over", "runs", "sources", "total_sd", "between_sd", "annotation", "note"]


def _decomposition_label(metric: str) -> str:
    if metric in _DECOMPOSITION_LABELS:
        return _DECOMPOSITION_LABELS[metric]
    kind, _, name = metric.partition(":")
    return {"log_ppl": f"log perplexity of {name}", "acc": f"{name} accuracy"}.get(kind, metric)


def _decomposition_floor(metric: str) -> str:
    """The ``noise_floor_table`` metric whose SD is the float noise of `metric`."""
    if metric in _DECOMPOSITION_FLOOR:
        return _DECOMPOSITION_FLOOR[metric]
    return {"log_ppl": "log_ppl:text", "acc": "acc:task"}.get(metric.partition(":")[0], metric)


def _decomposition_values(table: pd.DataFrame, metric: str) -> pd.Series | None:
    """One value per run of `metric` on the scale it is decomposed on; None where the table lacks it."""
    def log_mean(columns):
        values = table[columns].astype(float)
        return np.log(values.where(values > 0)).mean(axis=1, skipna=False)

    if metric == "log_ppl":
        return log_mean(ppl_columns(table)) if ppl_columns(table) else None
    if metric == "log_kl":
        return log_mean(kl_columns(table)) if kl_columns(table) else None
    if metric.startswith("log_ppl:"):
        column = "ppl:" + metric.split(":", 1)[1]
        return log_mean([column]) if column in table else None
    if metric.startswith("acc:") and metric in table:
        return table[metric].astype(float)
    return None


def _window_variance(documents: pd.DataFrame | None, keys: list, texts: list[str], value: str,
                     log_ratio: bool) -> pd.Series:
    """Per run key, the sampling variance of the mean over `texts` of each text's ratio sum(value) / sum(tokens)
    over its windows (NLL per token: log perplexity; KL per token), by the ratio estimator's delta method:
    var(r) = W / (W - 1) x sum_w (value_w - r tokens_w)^2 / (sum_w tokens_w)^2 for W windows; with
    ``log_ratio``, of log r (var(r) / r^2). NaN for a run missing a text or with fewer than two windows."""
    empty = pd.Series(np.nan, index=pd.Index(keys, name="key"), dtype=float)
    if documents is None or documents.empty or value not in documents or "tokens" not in documents or not texts:
        return empty
    windows = documents[(documents["kind"] == "perplexity") & documents["key"].isin(keys)
                        & documents["name"].isin(texts)][["key", "name", value, "tokens"]].dropna()
    windows = windows[windows["tokens"] > 0]
    if windows.empty:
        return empty
    sums = windows.groupby(["key", "name"])[[value, "tokens"]].transform("sum")
    ratio = sums[value] / sums["tokens"]
    windows = windows.assign(_d2=(windows[value] - ratio * windows["tokens"]) ** 2)
    per = windows.groupby(["key", "name"]).agg(n=("tokens", "size"), tokens=("tokens", "sum"), total=(value, "sum"),
                                                d2=("_d2", "sum"))
    n = per["n"].astype(float)
    var = (n / (n - 1).where(n >= 2)) * per["d2"] / per["tokens"] ** 2
    if log_ratio:
        r = per["total"] / per["tokens"]
        var = var / (r ** 2).where(r > 0)
    wide_var = var.unstack("name").reindex(index=keys, columns=texts)
    return wide_var.sum(axis=1, skipna=False) / len(texts) ** 2


def _task_variance(documents: pd.DataFrame | None, keys: list, tasks: list[str]) -> pd.Series:
    """Per run key, the sampling variance of the mean accuracy over `tasks`: sum_t var(correct_t) / n_t / T^2
    (sample variance of the 0/1 outcomes, ddof 1: the square of the standard error lm-eval stores). NaN for a
    run missing a task or with a task of fewer than two documents."""
    empty = pd.Series(np.nan, index=pd.Index(keys, name="key"), dtype=float)
    if documents is None or documents.empty or "correct" not in documents or not tasks:
        return empty
    rows = documents[(documents["kind"] == "task") & documents["key"].isin(keys)
                     & documents["name"].isin(tasks)][["key", "name", "correct"]].dropna()
    if rows.empty:
        return empty
    grouped = rows.groupby(["key", "name"])["correct"]
    n = grouped.size().astype(float)
    var = grouped.var(ddof=1) / n.where(n >= 2)
    wide_var = var.unstack("name").reindex(index=keys, columns=tasks)
    return wide_var.sum(axis=1, skipna=False) / len(tasks) ** 2


def _documents_variance(runs: pd.DataFrame, metric: str, documents: pd.DataFrame | None) -> tuple[float, str]:
    """The documents component of one group: the mean over its runs of each run's sampling variance (see
    ``variance_decomposition``), and a note saying where it came from or why it is missing."""
    keys = list(runs["key"]) if "key" in runs else []
    kind, _, name = metric.partition(":")
    tasks = []
    if metric in ("log_ppl", "log_kl") or kind == "log_ppl":
        texts = ([c.split(":", 1)[1] for c in (ppl_columns(runs) if metric != "log_kl" else kl_columns(runs))]
                 if metric in ("log_ppl", "log_kl") else [name])
        per_run = _window_variance(documents, keys, texts, "kl_sum" if metric == "log_kl" else "nll",
                                   log_ratio=metric == "log_kl")
        origin, missing = "per-window records", "no per-window records with two or more windows per text"
    else:
        tasks = ([c.split(":", 1)[1] for c in task_columns(runs)] if metric == "acc:mean" else [name])
        per_run = _task_variance(documents, keys, tasks)
        origin, missing = "per-document records", "no per-document records and no stored standard errors"
        se = [f"se:acc:{t}" for t in tasks]
        if tasks and all(c in runs for c in se) and per_run.isna().any():
            stored = runs.set_index("key")[se].astype(float)
            stored = (stored ** 2).sum(axis=1, skipna=False) / len(tasks) ** 2
            filled = per_run.isna() & stored.reindex(per_run.index).notna()
            if filled.any():
                origin = "stored standard errors" if filled.all() else f"{origin} and stored standard errors"
                per_run = per_run.fillna(stored.reindex(per_run.index))
    per_run = per_run.dropna()
    if per_run.empty:
        return float("nan"), f"not measured: {missing}"
    note = f"mean over {len(per_run)} runs of one score's sampling variance ({origin})"
    if len(per_run) < len(keys):
        note += f"; {len(keys) - len(per_run)} of {len(keys)} runs lack records"
    return float(per_run.mean()), note + "; shared by all runs (paired), so not part of the spread between runs"


def _base_runs(part: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The runs at one calibration size and length (the most common: the grid's base), and a note naming
    what was dropped."""
    columns = [c for c in ("calibration.num_samples", "calibration.seq_len") if c in part]
    if not columns:
        return part, ""
    sizes = part.groupby(columns, dropna=False).size()
    if len(sizes) <= 1:
        return part, ""
    base = sizes.idxmax()
    base = base if isinstance(base, tuple) else (base,)
    keep = np.logical_and.reduce([part[c] == b for c, b in zip(columns, base)])
    return part[keep], (f"kept the {int(keep.sum())} runs at {' x '.join(str(b) for b in base)} "
                        f"({' x '.join(c.split('.', 1)[1] for c in columns)}); {int((~keep).sum())} runs of other "
                        "sizes dropped")


def _sd_text(metric: str, sd: float) -> str:
    if not np.isfinite(sd):
        return "n/a"
    return f"±{_ratio_percent(sd)}" if metric.startswith("log") else f"{100 * sd:.1f} pts"


def _decompose(runs: pd.DataFrame, metric: str, label: str, floor: pd.DataFrame | None,
               documents: pd.DataFrame | None, method: str, group_note: str) -> tuple[dict, dict, dict]:
    """({component: variance}, {component: note}, facts) of one (model, method, metric) group; `runs` has
    the metric in ``_y``."""
    variance = dict.fromkeys(COMPONENTS, float("nan"))
    notes = dict.fromkeys(COMPONENTS, "")
    runs = runs.dropna(subset=["_y"])
    facts = {"runs": len(runs), "sources": 0}
    floor_metric = _decomposition_floor(metric)
    sd = floor_sd(floor, label, floor_metric)
    if np.isfinite(sd):
        variance["numerical noise"] = sd ** 2
        dof = floor_dof(floor, label, floor_metric)
        notes["numerical noise"] = f"float-order replicate SD {sd:.3g} squared ({dof} df)"
    else:
        notes["numerical noise"] = (f"not measured: no float-order replicates of {label} on {floor_metric} in the "
                                    "floor table (study.noise_floor_grid)")
    variance["documents"], notes["documents"] = _documents_variance(runs, metric, documents)
    if "calibration.source" not in runs or SET_COLUMN not in runs:
        why = f"not estimable: the table has no calibration.source / {SET_COLUMN} column"
        notes["source"] = notes["set within source"] = why
        return variance, notes, facts
    sets = runs.groupby("calibration.source")[SET_COLUMN].nunique()
    single = sorted(str(s) for s in sets[sets < 2].index)
    if single:
        runs = runs[~runs["calibration.source"].isin(set(sets[sets < 2].index))]
        group_note = "; ".join(filter(None, [group_note, f"source(s) with one set left out: {', '.join(single)}"]))
    sources = int(runs["calibration.source"].nunique())
    facts.update(runs=len(runs), sources=sources)
    residual = float("nan")
    if sources >= 2:
        if np.ptp(runs["_y"].to_numpy(float)) == 0:
            variance["source"], residual = 0.0, 0.0
            notes["source"] = "every run scores the same"
        else:
            try:
                vc = stats.variance_components(runs, "_y", ["calibration.source"], method=method)
                variance["source"], residual = float(vc["variance"].iloc[0]), float(vc["variance"].iloc[1])
                notes["source"] = "; ".join(filter(None, [
                    f"{method.upper()} over {sources} sources ({sources - 1} df"
                    + (": a rough estimate)" if sources < 5 else ")"), str(vc["note"].iloc[0])]))
            except (ValueError, np.linalg.LinAlgError) as error:
                notes["source"] = notes["set within source"] = f"not estimable: {error}"
    elif sources == 1:
        residual = float(np.var(runs["_y"].to_numpy(float), ddof=1))
        notes["source"] = "not estimable: one source with two or more sets (the source component needs two)"
    else:
        notes["source"] = notes["set within source"] = ("not estimable: no source has two or more calibration "
                                                        "sets")
    if np.isfinite(residual):
        noise = variance["numerical noise"]
        if not np.isfinite(noise):
            variance["set within source"] = residual
            notes["set within source"] = ("between-set variance as observed; includes numerical noise (not measured, "
                                          "so not subtracted)")
        elif residual - noise < 0:
            variance["set within source"] = 0.0
            notes["set within source"] = (f"between-set variance {residual:.3g} is below the float-noise variance "
                                          f"{noise:.3g}: set to 0 (the sets differ no more than float order makes "
                                          "them)")
        else:
            variance["set within source"] = residual - noise
            notes["set within source"] = f"between-set variance {residual:.3g} minus float-noise variance {noise:.3g}"
    if group_note:
        notes = {c: "; ".join(filter(None, [n, group_note])) for c, n in notes.items()}
    return variance, notes, facts


def variance_decomposition(table: pd.DataFrame, floor: pd.DataFrame | None = None,
                           documents: pd.DataFrame | None = None, metrics=DECOMPOSITION_METRICS, *,
                           method: str = "reml") -> pd.DataFrame:
    """How much the calibration data matters: per (model, method label, metric), the variance of one run's
    score split into four components, with each one's share.

    `table`: one row per run of the seed-variance grid (``study.seed_variance_grid``: ``calibration.source``,
    ``calibration.set_index``); runs on random-vocab or self-generated data (``NOT_REAL``), replicate runs (``replicate`` > 0), second grid points of one run and runs at
    other calibration sizes than the most common (num_samples x seq_len: the base) are left out. `floor`:
    ``noise_floor_table``. `documents`: ``tables.documents`` (per-document and per-window records), optional.

    Metrics (each on a scale where the spread means the same at any level): ``log_ppl``, the mean over texts
    of log perplexity (= log of ``ppl:geomean``, the floor table's ``log_ppl``); ``log_kl``, the mean over texts
    of log KL to dense (= log of ``kl:geomean``), where scored; ``acc:mean``, the mean accuracy over tasks;
    optionally ``acc:<task>`` and ``log_ppl:<text>`` (floors ``acc:task`` and ``log_ppl:text``). Metrics the
    table lacks are skipped.

    Components (variances on the metric's scale):

    * **source**: variance between the sources' true means. Nested model y = mu + u_source + e, fitted by
      ``stats.variance_components(runs, y, ["calibration.source"], method)`` (REML by default: any unbalanced
      design, estimate kept >= 0). The sets are the observations within a source: each set is run once, so a
      set factor below the source would not be told from the residual.
    * **set within source**: that fit's residual, the variance between sets of one source as observed, minus
      the float-order variance every single run also carries: max(residual - numerical noise, 0) (a note says
      when it was clipped). Without a floor the residual is kept whole and the note says it includes the noise.
    * **numerical noise**: the float-order replicate variance, ``floor_sd(floor, method, metric)`` squared (runs
      of one configuration that differ only in float order); NaN with a note where unmeasured.
    * **documents**: the sampling variance of one run's score from scoring a finite set of documents, the mean
      over the group's runs of: for accuracy, sum_t SE_t^2 / T^2 with SE_t^2 = var(correct) / n over the task's
      documents (else the stored ``se:acc:<task>``); for log perplexity (and log KL), the mean over texts of
      each text's log perplexity sum(nll) / sum(tokens) over its windows, whose variance is the ratio
      estimator's W / (W - 1) sum_w (nll_w - r tokens_w)^2 / (sum_w tokens_w)^2 (delta method; log KL: that of
      KL divided by KL^2), summed over texts / X^2 as the metric averages them (the texts are fixed, only their
      windows sampled; windows are treated as independent draws, though consecutive windows of the shuffled
      held-out stream can share a document, and with a handful of windows per text the estimate is itself
      rough). Every run is scored on the same
      documents (paired), so this variance moves all runs together and is *not* part of the spread between
      runs: it is the yardstick of how precisely one score is known, not something a calibration set causes.

    Shares: ``share`` = variance / the sum over the components that were measured (``shares_over`` names them):
    the variance of a score were source, set, float order and documents all drawn afresh, the four independent
    terms adding up. With documents included the bar answers "how much of one reported number's uncertainty is
    the calibration data's"; ``between_sd`` (source + set + noise) is the SD between runs alone, ``total_sd``
    the SD over the included components, ``annotation`` both on the metric's scale (log metrics as +-%, i.e.
    exp(SD) - 1; accuracy in points).

    A group with fewer than two sources (of two or more sets each), no variance or no floor does not raise:
    the components it cannot estimate are NaN with a note naming what is missing (a source with a single set
    is left out, and said). One row per (model, method_label, metric, component); columns
    ``_DECOMPOSITION_COLUMNS``."""
    empty = pd.DataFrame(columns=_DECOMPOSITION_COLUMNS)
    if table is None or table.empty or "method_label" not in table:
        return empty
    data = table
    if "replicate" in data:
        data = data[data["replicate"].fillna(0).astype(int) == 0]
    if "calibration.source" in data:
        # the question is what real data does: random tokens or self-generated text drawn as sets (for F2's
        # and F4's draw-to-draw comparisons) would count as one more, very different, "source"
        data = data[~data["calibration.source"].isin(NOT_REAL)]
    if "key" in data:
        data = data.drop_duplicates(["key", "method_label"])
    data = data.assign(_model=data["model"].astype(str) if "model" in data else "")
    available = [m for m in dict.fromkeys(metrics)
                 if (values := _decomposition_values(data, m)) is not None and values.notna().any()]
    rows = []
    for (model, label), part in data.groupby(["_model", "method_label"], sort=True):
        family = str(part["family"].iloc[0]) if "family" in part else ""
        part, group_note = _base_runs(part)
        for metric in available:
            runs = part.assign(_y=_decomposition_values(part, metric))
            variance, notes, facts = _decompose(runs, metric, label, floor, documents, method, group_note)
            included = [c for c in COMPONENTS if np.isfinite(variance[c])]
            total = sum(variance[c] for c in included)
            between = [variance[c] for c in BETWEEN_RUNS if np.isfinite(variance[c])]
            total_sd = math.sqrt(total) if included else float("nan")
            between_sd = math.sqrt(sum(between)) if between else float("nan")
            annotation = f"total SD {_sd_text(metric, total_sd)}; between runs {_sd_text(metric, between_sd)}"
            missing = [c for c in COMPONENTS if c not in included]
            if missing:
                annotation += f"\nnot estimated: {', '.join(missing)}"
            for component in COMPONENTS:
                v = variance[component]
                rows.append({"model": model, "method_label": label, "family": family, "metric": metric,
                             "metric_label": _decomposition_label(metric), "component": component, "variance": v,
                             "sd": math.sqrt(v) if np.isfinite(v) else float("nan"),
                             "share": v / total if np.isfinite(v) and total > 0 else float("nan"),
                             "shares_over": " + ".join(included), **facts, "total_sd": total_sd,
                             "between_sd": between_sd, "annotation": annotation, "note": notes[component]})
    return pd.DataFrame(rows, columns=_DECOMPOSITION_COLUMNS) if rows else empty


def decomposition_view(decomposition: pd.DataFrame) -> pd.DataFrame:
    """The decomposition as the notebook shows it: per (method, metric, component) the SD on the metric's scale
    (log units or accuracy), the share in percent, rounded, and the note."""
    if decomposition is None or decomposition.empty:
        return pd.DataFrame(columns=["method_label", "metric", "component", "sd", "share %", "note"])
    view = decomposition.assign(**{"share %": 100 * decomposition["share"].astype(float)})
    columns = (["model"] if decomposition["model"].nunique() > 1 else []) + [
        "method_label", "metric_label", "component", "sd", "share %", "note"]
    return (view[columns].rename(columns={"metric_label": "metric"})
            .round({"sd": 4, "share %": 1}).reset_index(drop=True))


def decomposition_sentence(decomposition: pd.DataFrame | None) -> str:
    """``variance_decomposition_finding`` as a sentence to display under the figure (or why there is none)."""
    text = variance_decomposition_finding(decomposition)
    if not text:
        return ("No variance decomposition: the table has no runs with a calibration source and set to split "
                "(see `summaries.variance_decomposition`).")
    return text[0].upper() + text[1:] + "."


def _percent(share: float) -> str:
    return f"{_points(share, 0)}%" if share is not None and np.isfinite(share) else "n/a"


def _listing(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def variance_decomposition_finding(decomposition: pd.DataFrame | None,
                                   metrics: tuple[str, ...] = ("log_ppl", "acc:mean")) -> str:
    """One sentence per metric, every method in it: the source's share of the calibration-driven variance
    (source + set within source, float noise removed), float noise's share of the variance between runs
    (source + set + noise), and the documents' sampling variance of one score as a multiple of the variance
    between runs. '' without a decomposition."""
    if decomposition is None or decomposition.empty:
        return ""
    sentences = []
    for metric in metrics:
        part = decomposition[decomposition["metric"] == metric]
        if part.empty:
            continue
        wide_v = part.pivot_table(index=["model", "method_label"], columns="component", values="variance",
                                  aggfunc="first", dropna=False).reindex(columns=list(COMPONENTS))
        several = part["model"].nunique() > 1
        source, noise, documents = [], [], []
        for (model, label), v in wide_v.iterrows():
            name = f"{model} {label}" if several else label
            calibration = v["source"] + v["set within source"]
            between = v[list(BETWEEN_RUNS)].sum(min_count=1)     # without a floor the set term holds the noise
            source.append(f"{_percent(v['source'] / calibration if calibration > 0 else np.nan)} ({name})")
            noise.append(_percent(v["numerical noise"] / between if between > 0 else np.nan))
            ratio = v["documents"] / between if between > 0 else np.nan
            documents.append(f"{ratio:.2g}x" if np.isfinite(ratio) else "n/a")
        estimated = part.loc[part["sources"] >= 2, "sources"]
        fewest = int(estimated.min()) if len(estimated) else 0
        rough = f"; {fewest} sources, so a rough split" if 2 <= fewest < 5 else ""
        sentences.append(
            f"variance decomposition of {_decomposition_label(metric)}: the source gives {_listing(source)} of the "
            f"calibration-driven variance (source + set within source, float noise removed{rough}), float noise "
            f"{_listing(noise)} of the variance between runs, and one score's sampling variance from its documents "
            f"(shared by all runs) is {_listing(documents)} the variance between runs")
    return "; ".join(sentences)


# -- 05 self-calibration (and F4) -----------------------------------------------------------------

def selection_metric(table: pd.DataFrame) -> str:
    """What picks 'the best' set: mean accuracy where tasks ran, else perplexity."""
    return "acc:mean" if "acc:mean" in table and table["acc:mean"].notna().any() else "ppl:geomean"


NOT_REAL = ("random-vocab", "self")
QUOTED = (("ppl", "ppl:geomean"), ("kl", "kl:geomean"), ("acc", "acc:mean"), ("acc se", "se:acc:mean"))


def self_vs_real_candidates(self_table: pd.DataFrame, source_table: pd.DataFrame | None = None
                            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(self-generated runs, real runs) for ``self_vs_real``: the self-calibration grid's self runs, and its
    real runs plus, where given, every run of the source-domain grid on a real source (not random-vocab, not
    self, replicate 0), each (key, method) once. 05 passes the store's source-domain table, as claim F4 does,
    so both compare with the same real candidates."""
    self_runs = self_table[self_table["kind"] == "self"] if "kind" in self_table else self_table.iloc[0:0]
    parts = [self_table[self_table["kind"] == "real"]] if "kind" in self_table else []
    if source_table is not None and not source_table.empty and "calibration.source" in source_table:
        extra = source_table[~source_table["calibration.source"].isin(NOT_REAL)
                             & source_table["method_label"].isin(set(self_runs["method_label"]))]
        if "replicate" in extra:
            extra = extra[extra["replicate"].fillna(0) == 0]
        parts.append(extra)
    real = pd.concat(parts, ignore_index=True) if parts else self_table.iloc[0:0]
    return self_runs, real.drop_duplicates(["key", "method_label"])


def _pick(runs: pd.DataFrame, metric: str) -> pd.Series:
    """The best run by `metric` (highest accuracy, lowest perplexity or KL); ties broken by the lower
    perplexity, then by the label, so the pick never depends on row order."""
    data = runs.dropna(subset=[metric])
    if data.empty:
        data = runs
    order = [metric] + (["ppl:geomean"] if metric != "ppl:geomean" and "ppl:geomean" in data else []) + ["key"]
    ascending = [metric != "acc:mean"] + [True] * (len(order) - 1)
    return data.sort_values(order, ascending=ascending, kind="mergesort").iloc[0]


def self_vs_real(self_runs: pd.DataFrame, real_runs: pd.DataFrame, data_column: str = "data", *,
                 pick_by: str | None = None, documents: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per method: the best self-generated run against the best real run, both picked by the same metric
    (`pick_by`, default ``selection_metric``: mean accuracy where tasks ran, else perplexity; ties broken by
    perplexity), and every number quoted about them read from those two runs: perplexity, KL to dense, mean
    accuracy and its stored SE (``self ppl`` / ``real ppl``, ``self kl``, ``self acc``, ``self acc se``, ...),
    ``self - real (points)``; with `documents` (``Store.documents()``), the same difference paired over the
    documents both runs scored (``paired_accuracy``: 95% bootstrap CI, McNemar p). The one function notebook
    05 and claim F4 (06) call, so both name the same runs and quote the same numbers. ``real candidates``:
    how many real runs the best real was picked from."""
    metric = pick_by or selection_metric(pd.concat([self_runs, real_runs]))
    rows = []
    for method, selfgen in self_runs.groupby("method_label"):
        real = real_runs[real_runs["method_label"] == method]
        if selfgen.empty or real.empty:
            continue
        best_self, best_real = _pick(selfgen, metric), _pick(real, metric)
        row = {"method_label": method, "picked by": metric, "best self": best_self[data_column],
               "best real": best_real["calibration.source"], "real candidates": int(real["key"].nunique()),
               "self_key": best_self["key"], "real_key": best_real["key"]}
        for short, column in QUOTED:
            if column in selfgen or column in real:
                row[f"self {short}"] = float(best_self.get(column, np.nan))
                row[f"real {short}"] = float(best_real.get(column, np.nan))
        if np.isfinite(row.get("self acc", np.nan)) and np.isfinite(row.get("real acc", np.nan)):
            row["self - real (points)"] = 100 * (row["self acc"] - row["real acc"])
            if documents is not None:
                paired = paired_accuracy(documents, best_self["key"], best_real["key"])
                row |= {"paired ci low (points)": 100 * paired["ci_low"], "paired ci high (points)": 100 * paired["ci_high"],
                        "McNemar p": paired["p_mcnemar"], "documents": paired["n"]}
        rows.append(row)
    return pd.DataFrame(rows)


def self_calibration_analysis(table: pd.DataFrame, documents: pd.DataFrame | None = None,
                              source_table: pd.DataFrame | None = None, pick_by: str | None = None) -> dict:
    """Friedman tests of the data (self schedules, real, random) over (method, text) and (method, task) blocks;
    the best self-generated set against the base real source (``comparison``) and, with the source-domain
    table, against the best of every real source (``comparison_all``, what claim F4 tests), both from
    ``self_vs_real`` on ``self_vs_real_candidates``."""
    keep = ["method_label", "data"]
    tests = []
    for what, columns in (("perplexity per text", ppl_columns(table)), ("accuracy per task", task_columns(table))):
        if columns:
            tests.append(_friedman_over(table, columns, "data", keep, what)[0])
    self_runs, _ = self_vs_real_candidates(table)
    comparison = self_vs_real(self_runs, table[table["kind"] == "real"], pick_by=pick_by, documents=documents)
    random = table[table["kind"] == "random"].groupby("method_label")
    for short, column in (("random ppl", "ppl:geomean"), ("random kl", "kl:geomean"), ("random acc", "acc:mean")):
        if column in table and len(comparison):
            comparison[short] = comparison["method_label"].map(random[column].first())
    result = {"tests": tests, "comparison": comparison}
    if source_table is not None and not source_table.empty:
        self_runs, real_runs = self_vs_real_candidates(table, source_table)
        if real_runs["calibration.source"].nunique() > 1:
            result["comparison_all"] = self_vs_real(self_runs, real_runs, pick_by=pick_by, documents=documents)
    return result


def _self_sentence(r: pd.Series, against: str) -> str:
    s = (f"{r.method_label}: best self-generated set by {r['picked by']}: {r['best self']}, perplexity "
         f"{r['self ppl']:.1f}; {against} {r['best real']}: {r['real ppl']:.1f}")
    if "random ppl" in r and pd.notna(r.get("random ppl")):
        s += f"; random-vocab: {r['random ppl']:.1f}"
    if pd.notna(r.get("self - real (points)", np.nan)):
        s += (f"; mean accuracy of the same two runs: self {r['self acc']:.3f} vs {r['best real']} {r['real acc']:.3f}"
              f" ({r['self - real (points)']:+.1f} points")
        if pd.notna(r.get("paired ci low (points)", np.nan)):
            s += (f", 95% paired bootstrap CI {r['paired ci low (points)']:+.1f} to {r['paired ci high (points)']:+.1f}, "
                  f"McNemar p {fmt_p(r['McNemar p'])}, {int(r['documents'])} documents")
        s += ")"
    return s


def self_calibration_finding(analysis: dict) -> str:
    """Per method, the best self-generated set against the base source and, where the store has more real
    sources, against the best of them (as claim F4 compares): every number of a sentence comes from the two
    runs ``self_vs_real`` picked and the sentence names."""
    every = analysis.get("comparison_all")
    every = every.set_index("method_label") if every is not None and len(every) else None
    sentences = []
    for _, r in analysis["comparison"].iterrows():
        s = _self_sentence(r, "base source")
        if every is not None and r.method_label in every.index and every.loc[r.method_label, "real candidates"] > 1:
            a = every.loc[r.method_label].copy()
            a["method_label"] = r.method_label
            if a["real_key"] == r["real_key"] and a["self_key"] == r["self_key"]:
                s += (f"; {r['best real']} is also the best of the {a['real candidates']} real sources by "
                      f"{a['picked by']} (the comparison claim F4 tests)")
            else:
                s += "; against the best of every real source (as claim F4): " + _self_sentence(
                    a, f"best of {a['real candidates']} real sources").split(": ", 1)[1]
        sentences.append(s)
    tests = analysis["tests"]
    return "; ".join(sentences) + (f". Friedman across data: p {fmt_p(tests[0]['p_value'])}" if tests else "") + "."
