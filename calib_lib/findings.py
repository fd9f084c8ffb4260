"""The published claims about calibration data, each turned into a decision rule with a verdict.

Claims (Williams & Aletras 2024; Williams, Chrysostomou & Aletras 2024), as tested here:

F1  pruning is more sensitive to the calibration source and draw than quantization
F2  uniformly random vocabulary tokens are the worst calibration data for every method
F3  with more samples quantization plateaus early while pruning keeps improving
F4  self-generated calibration data is within 1 point of the best real source on mean accuracy
F5  single tasks swing far more across calibration sets than the task mean does
F6  perplexity varies little across calibration sets while task accuracy varies a lot

Every rule has four outcomes (``ALPHA`` = 0.05; CIs are two-sided 95% intervals, except F4's 90% TOST
interval; every ``p_value`` is compared with alpha, the one-sided tests' p doubled so that p < alpha exactly
when the CI excludes the null on the claimed side):

* **untestable at this budget**: decided before the effect is looked at, from the design and the noise alone
  (sizes, noise SDs, discordance): the test lacks the points it needs, its smallest attainable p exceeds
  alpha, or its minimum detectable effect at 80% power (MDE) exceeds the claimed effect (``CLAIMED``). The
  row says what is missing and what budget would decide it. Bad input (too few points, groups with no
  variance, missing replicate runs or per-document records) lands here too; no rule raises.
* **holds**: the CI excludes "no effect" on the claimed side (F4, F6: it lies inside the claimed bound) and the
  effect exceeds the measured float-noise floor where a floor table is given; ``verdicts`` then requires
  Holm's p across the six claims of one model to stay below alpha.
* **does not hold**: the CI excludes the claimed effect (F4: it lies outside the +-1 point band); never a
  point estimate.
* **inconclusive**: testable, but the CI spans both.

The decision rules, one line each (``RULES``; the README quotes them; each function's docstring has the details;
'not' = does not hold, 'above floor' = beyond the float-noise floor, a rule untestable for bad input as above):

F1  log SD ratio SparseGPT/GPTQ, log ppl over all real sets, 95% CI: holds >0 & above floor; not <log 2; untestable MDE>log 2
F2  random-vocab - each real source over draws, log ppl & accuracy, 95% CI: holds all >0; not any <0; untestable MDE>margin
F3  doublings to 90% of the fitted gain, SparseGPT-GPTQ, 95% CI: holds >0 & above floor; not <2; untestable <6 counts|MDE>2
F4  self - best real, paired over documents, TOST 90% CI: holds inside +-1 pt (all methods); not outside; untestable bound>1
F5  task minus mean between-set variance beyond document noise, 95% CI: holds >0 & above floor; not <3 pt^2; untestable MDE>3
F6  Spearman(-log ppl, accuracy) over real sets, 95% CI: holds <0.5 & accuracy varies beyond noise; not >0.5; untestable MDE>.5

Inputs: the study tables (``calib_lib.study``: one row per run, metrics as columns), the per-document frame
(``Store.documents()``), and a noise-floor table (``noise_floor_table``: per method and metric, the pooled SD
of float-order replicates). ``simulate`` / ``simulated_power`` / ``power_table`` simulate studies at a
profile's budget (``Budget.from_profile``: documents with binomial correctness, sets, sources, replicates
with a float-noise SD) and count each rule's verdicts; ``tests/test_findings.py`` checks that "holds" comes
out at most 5% of the time on 200 studies without the claimed effect.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from . import stats
from .stats import UNTESTABLE
from .study import summaries
from .study.tables import has_accuracy, ppl_columns, task_columns

ALPHA = 0.05
POWER = 0.8
VERDICTS = ("holds", "does not hold", "inconclusive", UNTESTABLE)

CLAIMS = {
    "F1": "Pruning is more sensitive to the calibration source and draw than quantization",
    "F2": "Uniformly random vocabulary tokens are the worst calibration data for every method",
    "F3": "With more calibration samples quantization plateaus early, while pruning keeps improving",
    "F4": "Self-generated calibration data is within 1 point of the best real source on mean accuracy",
    "F5": "Single tasks swing far more across calibration sets than the task mean does",
    "F6": "Perplexity varies little across calibration sets while task accuracy varies a lot",
}

# The claimed effect of each rule, in the units of its effect column (see RULES).
CLAIMED = {"F1": math.log(2.0), "F2": 1.0, "F3": 2.0, "F4": 0.01, "F5": 3e-4, "F6": 0.5}
UNITS = {"F1": "log SD ratio", "F2": "claimed margins (0.2 log ppl; 2 points)", "F3": "doublings",
         "F4": "accuracy (points / 100)", "F5": "accuracy^2", "F6": "Spearman rho"}

RULES = {
    "F1": "log SD ratio SparseGPT/GPTQ, log ppl over all real sets, 95% CI: holds >0 & above floor; not <log 2; untestable MDE>log 2",
    "F2": "random-vocab - each real source over draws, log ppl & accuracy, 95% CI: holds all >0; not any <0; untestable MDE>margin",
    "F3": "doublings to 90% of the fitted gain, SparseGPT-GPTQ, 95% CI: holds >0 & above floor; not <2; untestable <6 counts|MDE>2",
    "F4": "self - best real, paired over documents, TOST 90% CI: holds inside +-1 pt (all methods); not outside; untestable bound>1",
    "F5": "task minus mean between-set variance beyond document noise, 95% CI: holds >0 & above floor; not <3 pt^2; untestable MDE>3",
    "F6": "Spearman(-log ppl, accuracy) over real sets, 95% CI: holds <0.5 & accuracy varies beyond noise; not >0.5; untestable MDE>.5",
}

COLUMNS = ["claim", "statement", "verdict", "test", "statistic", "p_value", "p_holm", "effect_size", "ci_low",
           "ci_high", "effect", "n", "mde", "smallest_p", "rule", "summary", "what_would_decide"]

# The papers' methods for each family, then the fall-backs, most alike first.
PREFERRED = {"pruning": ("sparsegpt", "wanda"), "quantization": ("gptq", "awq", "spqr")}
NOT_REAL = ("random-vocab", "self")


def _z(tail: float) -> float:
    return float(sps.norm.ppf(1 - tail))


def _z_sum(alpha: float = ALPHA, power: float = POWER) -> float:
    """z_{1-alpha/2} + z_power: a test whose two-sided (1 - alpha) CI must exclude 0 detects an effect of this many
    SEs with probability `power`."""
    return _z(alpha / 2) + float(sps.norm.ppf(power))


def _two(p: float) -> float:
    """A one-sided p in the claimed direction as the two-sided p: below alpha exactly when the (1 - alpha) CI
    excludes the null on the claimed side."""
    return float(min(1.0, 2 * p))


def _row(claim: str, verdict: str, *, summary: str, what_would_decide: str = "", **numbers) -> dict:
    row = {c: np.nan for c in COLUMNS}
    row.update({"claim": claim, "statement": CLAIMS[claim], "verdict": verdict, "test": "", "effect": "",
                "rule": RULES[claim], "summary": summary, "what_would_decide": what_would_decide})
    row.update(numbers)
    return row


def _untestable(claim: str, missing: str, decide: str, **numbers) -> dict:
    return _row(claim, UNTESTABLE, summary=f"untestable: {missing}", what_would_decide=decide, **numbers)


def _decide(holds: bool, contradicted: bool) -> str:
    return "holds" if holds else "does not hold" if contradicted else "inconclusive"


def _fmt(value, digits: int = 3) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "n/a" if not np.isfinite(value) else f"{value:.{digits}g}"


# -- inputs: methods, measures, runs, the noise floor ----------------------------------------------------------

def _needs_calibration(name) -> bool:
    from .compress import METHODS
    return isinstance(name, str) and name in METHODS and bool(getattr(METHODS[name], "needs_calibration", True))


def _calibrated(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of methods that read calibration data (not dense, magnitude, RTN)."""
    if table is None or table.empty or "method" not in table:
        return pd.DataFrame(columns=[] if table is None else table.columns)
    return table[table["method"].map(_needs_calibration) & table["family"].isin(["pruning", "quantization"])]


def _structured(part: pd.DataFrame) -> pd.Series:
    if "method.n" not in part:
        return pd.Series(False, index=part.index)
    return part["method.n"].notna()


def pick_methods(table: pd.DataFrame) -> tuple[dict, str]:
    """The method (label) of each family the claims compare: SparseGPT (unstructured) for pruning and GPTQ for
    quantization as the papers, else the closest calibrated method the table has, said in the note."""
    table = _calibrated(table)
    if table.empty:
        return {}, ""
    counts = table["method_label"].value_counts()
    structured = set(table.loc[_structured(table), "method_label"])
    first = table.drop_duplicates("method_label").set_index("method_label")
    chosen, notes = {}, []
    for family, preferred in PREFERRED.items():
        labels = [label for label in first.index if first.loc[label, "family"] == family]
        if not labels:
            continue
        rank = {label: (preferred.index(first.loc[label, "method"]) if first.loc[label, "method"] in preferred
                        else len(preferred), label in structured, -counts[label], label) for label in labels}
        best = min(labels, key=rank.get)
        chosen[family] = best
        if first.loc[best, "method"] != preferred[0]:
            notes.append(f"the claim names {preferred[0]} for {family}; this table has none, so {best} stands in")
    return chosen, "; ".join(notes)


def _real_runs(*tables: pd.DataFrame) -> pd.DataFrame:
    """Every run of a calibrated method on real data (no random-vocab, no self-generated), each once."""
    parts = [t for t in tables if t is not None and not t.empty]
    if not parts:
        return pd.DataFrame()
    pooled = _calibrated(pd.concat(parts, ignore_index=True).drop_duplicates("key"))
    if "calibration.source" in pooled:
        pooled = pooled[~pooled["calibration.source"].isin(NOT_REAL)]
    if "replicate" in pooled:
        pooled = pooled[pooled["replicate"].fillna(0) == 0]
    return pooled


def log_ppl(table: pd.DataFrame) -> pd.Series:
    """Mean over evaluation texts of log perplexity (the log of ``ppl:geomean``): a scale-free measure."""
    columns = ppl_columns(table)
    if not columns:
        return pd.Series(np.nan, index=table.index)
    return np.log(table[columns].astype(float)).mean(axis=1, skipna=False)


def _kl(table: pd.DataFrame, documents: pd.DataFrame | None) -> pd.Series:
    """Log of the mean KL divergence to the dense model per run (mean over texts): from ``kl_mean:<text>``
    columns where the table has them, else from the per-document records (summed KL / scored tokens)."""
    columns = [c for c in table.columns if c.startswith("kl_mean:")]
    if columns:
        return np.log(table[columns].astype(float)).mean(axis=1, skipna=False)
    if documents is None or "kl_sum" not in documents:
        return pd.Series(np.nan, index=table.index)
    rows = documents[(documents["kind"] == "perplexity") & documents["key"].isin(set(table["key"]))]
    rows = rows.dropna(subset=["kl_sum"])
    if rows.empty:
        return pd.Series(np.nan, index=table.index)
    per_text = rows.groupby(["key", "name"])[["kl_sum", "tokens"]].sum()
    kl = np.log(per_text["kl_sum"] / per_text["tokens"]).groupby(level="key").mean()
    return table["key"].map(kl)


MEASURES = {"log_ppl": "log perplexity (mean over texts)", "kl": "log KL divergence to the dense model",
            "acc": "mean accuracy"}


def measure(table: pd.DataFrame, name: str = "log_ppl", documents: pd.DataFrame | None = None) -> pd.Series:
    """A scale-free per-run measure: "log_ppl", "kl" (log mean KL to dense) or "acc" (mean accuracy)."""
    if name == "log_ppl":
        return log_ppl(table)
    if name == "kl":
        return _kl(table, documents)
    if name == "acc":
        return table["acc:mean"].astype(float) if "acc:mean" in table else pd.Series(np.nan, index=table.index)
    raise ValueError(f"unknown measure {name!r}; known: {', '.join(MEASURES)}")


def _pooled_sd(codes: np.ndarray, values: np.ndarray) -> tuple[float, int, int, str]:
    """``stats.noise_floor``'s pooled replicate SD, vectorised: `codes` (runs,) names each run's configuration,
    `values` (runs, m) holds m metrics that each count as their own configurations (texts, tasks); variances
    pooled with weights n - 1 over configurations with >= 2 runs (NaNs dropped). Returns (sd, df, runs, note)."""
    values = np.asarray(values, dtype=float).reshape(len(codes), -1)
    groups = int(codes.max()) + 1 if len(codes) else 0
    ss, dof, runs = 0.0, 0, 0
    for column in values.T:
        keep = ~np.isnan(column)
        c, x = codes[keep], column[keep]
        n = np.bincount(c, minlength=groups)
        mean = np.bincount(c, weights=x, minlength=groups) / np.maximum(n, 1)
        dev = np.bincount(c, weights=(x - mean[c]) ** 2, minlength=groups)
        ok = n >= 2
        ss += float(dev[ok].sum())
        dof += int((n[ok] - 1).sum())
        runs += int(n[ok].sum())
    if dof == 0:
        return np.nan, 0, 0, "no configuration has two or more replicate runs"
    return math.sqrt(ss / dof), dof, runs, ""


# The float-noise floor per method and metric: the one that notebooks 01-05 draw (``stats.noise_floor`` on the
# noise-floor grid's replicates), so 06 measures its claims against the same floor.
noise_floor_table = summaries.noise_floor_table


@dataclass
class _Floor:
    status: str          # "none" (no table given), "missing" (no replicates of this method), "ok"
    sd: float = np.nan
    df: int = 0
    runs: int = 0

    def threshold(self, alpha: float = ALPHA) -> float:
        """The smallest difference between two single runs that float noise alone makes unlikely: the same
        convention as notebooks 01-05 (``summaries.floor_threshold``), t_{1 - alpha/2, df} sqrt 2 SD, whose t
        quantile on the SD's degrees of freedom says that a floor from a few replicates is itself uncertain."""
        if self.status != "ok":
            return 0.0
        return summaries.floor_threshold(self.sd, alpha, self.df)

    def half_width(self, alpha: float = ALPHA) -> float:
        """Half the (1 - alpha) interval of one run's value under float noise alone (t on the floor's df, as
        ``threshold``); 0 where no floor was measured."""
        if self.status != "ok":
            return 0.0
        return float(sps.t.ppf(1 - alpha / 2, self.df)) * self.sd


def _floor(floor: pd.DataFrame | None, label: str, metric: str) -> _Floor:
    """The float-noise floor of one method and metric: status "none" (no floor table given), "missing" (the
    table has no replicates of it) or "ok" with its pooled SD and degrees of freedom."""
    if floor is None:
        return _Floor("none")
    if floor.empty or "metric" not in floor:
        return _Floor("missing")
    labels, metrics = floor["method_label"].to_numpy(), floor["metric"].to_numpy()
    hit = np.flatnonzero((labels == label) & (metrics == metric))
    if not len(hit):
        return _Floor("missing")
    sd, dof = float(floor["sd"].to_numpy()[hit[0]]), int(floor["df"].to_numpy()[hit[0]])
    runs = int(floor["runs"].to_numpy()[hit[0]]) if "runs" in floor else dof + 1
    if not np.isfinite(sd) or dof < 1:
        return _Floor("missing")
    return _Floor("ok", sd, dof, runs)


def _pool(floors: list[_Floor]) -> _Floor:
    """Several methods' floors as one: variances pooled with their degrees of freedom."""
    dof = sum(f.df for f in floors)
    return _Floor("ok", math.sqrt(sum(f.df * f.sd ** 2 for f in floors) / dof), dof)


def _floor_missing(label: str, metric: str) -> str:
    return (f"the noise floor table has no float-order replicates of {label} for {metric} (needs >= 2 replicate "
            "runs: study.noise_floor_grid)")


def _beyond_floor_f(variance: float, dof: int, fl: _Floor, alpha: float = ALPHA) -> tuple[bool, float, str]:
    """Is a between-set variance (with `dof`) larger than the float-noise variance? F test, p doubled
    (``_two``) so that it compares with alpha as the CIs do."""
    if fl.status == "none":
        return True, np.nan, "no noise floor given: not checked"
    if fl.sd == 0:
        return variance > 0, 0.0 if variance > 0 else 1.0, "float noise floor 0 (exact runs)"
    ratio = variance / fl.sd ** 2
    p = _two(float(sps.f.sf(ratio, dof, fl.df)))
    return p < alpha, p, f"spread / float floor {math.sqrt(ratio):.3g}x (F test p {_fmt(p)})"


# -- document-level accuracy noise (F5, F6) --------------------------------------------------------------------

def _doc_matrices(documents: pd.DataFrame, keys: list[str]) -> dict[str, np.ndarray] | None:
    """{task: array (len(keys), documents)} of 0/1 correctness on the documents every run scored; None if a
    key has no task records."""
    rows = documents[(documents["kind"] == "task") & documents["key"].isin(set(keys))]
    run = pd.Categorical(rows["key"], categories=keys).codes
    if rows.empty or len(np.unique(run)) != len(keys):
        return None
    task, names = pd.factorize(rows["name"])
    doc, doc_ids = pd.factorize(rows["doc_id"])
    pair, _ = pd.factorize(task.astype(np.int64) * (len(doc_ids) + 1) + doc)      # one column per (task, document)
    matrix = np.full((len(keys), pair.max() + 1), np.nan)
    matrix[run, pair] = rows["correct"].to_numpy(dtype=float)
    task_of = np.zeros(pair.max() + 1, dtype=np.int64)
    task_of[pair] = task
    complete = ~np.isnan(matrix).any(axis=0)
    out = {}
    for j, name in enumerate(names):
        columns = complete & (task_of == j)
        if columns.any():
            out[str(name)] = matrix[:, columns]
    return out


def _cell_components(variance_table: pd.DataFrame, documents: pd.DataFrame | None = None,
                     docs_per_task: int | None = None) -> tuple[list[dict], list[str]]:
    """Per (method, source) cell: arrays of each task's total and noise variance across sets (see
    ``accuracy_components``) and the same for the mean accuracy."""
    tasks = task_columns(variance_table) if variance_table is not None else []
    table = _calibrated(variance_table) if tasks else pd.DataFrame()
    if table.empty:
        return [], tasks
    if "calibration.source" in table:         # the claim is about draws of real data (the papers' C4 sets)
        table = table[~table["calibration.source"].isin(NOT_REAL)]
    table = table.drop_duplicates("key").dropna(subset=tasks)
    keys = list(table["key"])
    matrices = _doc_matrices(documents, keys) if documents is not None and keys else None
    names = [t.split(":", 1)[1] for t in tasks]
    with_docs = matrices is not None and all(name in matrices for name in names)
    accuracy = table[tasks].to_numpy(dtype=float)                     # runs x tasks
    labels = np.asarray(table["method_label"], dtype=object)
    sources = np.asarray(table["calibration.source"], dtype=object)
    codes, uniques = pd.factorize(pd.Series(labels + "\x1f" + sources.astype(str)), sort=True)
    cells = []
    for c in range(len(uniques)):
        rows_of = np.flatnonzero(codes == c)
        sets = len(rows_of)
        if sets < 2:
            continue
        acc = accuracy[rows_of]
        if with_docs:
            noise = np.array([matrices[name][rows_of].var(axis=0, ddof=1).sum() / matrices[name].shape[1] ** 2
                              for name in names])
            source_of_noise = "documents"
        elif docs_per_task:
            p = acc.mean(axis=0)
            noise = p * (1 - p) / docs_per_task
            source_of_noise = "binomial"
        else:
            noise, source_of_noise = np.full(len(tasks), np.nan), "none"
        cells.append({"method_label": labels[rows_of[0]], "calibration.source": sources[rows_of[0]], "sets": sets,
                      "total": acc.var(axis=0, ddof=1), "noise": noise,
                      "mean_total": float(acc.mean(axis=1).var(ddof=1)),
                      "mean_noise": float(noise.sum() / len(tasks) ** 2), "noise_from": source_of_noise})
    return cells, tasks


def accuracy_components(variance_table: pd.DataFrame, documents: pd.DataFrame | None = None,
                        docs_per_task: int | None = None) -> pd.DataFrame:
    """Per (method, source) cell of the seed-variance table, the variance of accuracy across calibration sets
    and the part of it document-flip noise alone explains, for each task and for the mean over tasks.

    With per-document records: noise of task t = sum over its documents of the variance across sets of that
    document's correctness / n_t^2 (exact when documents flip independently from set to set, which is what
    "no calibration effect" means); the excess (total - noise) estimates the covariance between documents, a
    coherent shift of the task. Without records: the binomial bound p (1 - p) / n_t with n_t = `docs_per_task`
    (it overstates the noise, so the excess is conservative). Columns: method_label, calibration.source,
    sets, task ("mean" for the mean accuracy), total, noise, excess (accuracy^2), noise_from."""
    cells, tasks = _cell_components(variance_table, documents, docs_per_task)
    rows = []
    for c in cells:
        base = {"method_label": c["method_label"], "calibration.source": c["calibration.source"], "sets": c["sets"]}
        for j, t in enumerate(tasks):
            rows.append(base | {"task": t, "total": c["total"][j], "noise": c["noise"][j],
                                "excess": c["total"][j] - c["noise"][j], "noise_from": c["noise_from"]})
        rows.append(base | {"task": "mean", "total": c["mean_total"], "noise": c["mean_noise"],
                            "excess": c["mean_total"] - c["mean_noise"], "noise_from": c["noise_from"]})
    return pd.DataFrame(rows)


def _docs_per_task(documents: pd.DataFrame | None, docs_per_task: int | None) -> int | None:
    """Documents per task: the median count in the per-document records where there are any (a task limit
    overstates tasks that have fewer documents), else `docs_per_task`."""
    if documents is not None and not documents.empty and "kind" in documents:
        tasks = documents[documents["kind"] == "task"]
        if not tasks.empty:
            return int(tasks.groupby(["key", "name"], observed=True).size().median())
    return int(docs_per_task) if docs_per_task else None


# -- F1 ------------------------------------------------------------------------------------------------------

def f1_frame(source_table: pd.DataFrame, variance_table: pd.DataFrame, measure_name: str = "log_ppl",
             documents: pd.DataFrame | None = None) -> tuple[pd.DataFrame, str]:
    """Every real calibration set's run (each source at set 0, every set of the variance sources) with its
    scale-free measure (``value``) and its deviation from its method's mean."""
    pooled = _real_runs(source_table, variance_table)
    if pooled.empty:
        return pooled.assign(value=[], deviation=[]), MEASURES[measure_name]
    pooled = pooled.assign(value=measure(pooled, measure_name, documents).to_numpy())
    pooled = pooled.dropna(subset=["value"])
    pooled["deviation"] = pooled["value"] - pooled.groupby("method_label")["value"].transform("mean")
    return pooled, MEASURES[measure_name]


def _sd_ci(sd: float, dof: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Two-sided (1 - alpha) chi-square interval of a standard deviation with `dof` degrees of freedom."""
    if dof < 1 or not np.isfinite(sd):
        return np.nan, np.nan
    return (sd * math.sqrt(dof / sps.chi2.ppf(1 - alpha / 2, dof)), sd * math.sqrt(dof / sps.chi2.ppf(alpha / 2, dof)))


def f1_spreads(source_table, variance_table, documents=None, floor=None, measure_name: str = "log_ppl",
               alpha: float = ALPHA) -> pd.DataFrame:
    """Per calibrated method: runs, SD of the measure across real calibration sets with its 95% interval, and
    the float-noise floor's SD (the data of F1's figure)."""
    pooled, _ = f1_frame(source_table, variance_table, measure_name, documents)
    rows = []
    for label, part in pooled.groupby("method_label"):
        n = len(part)
        sd = float(part["value"].std(ddof=1)) if n > 1 else np.nan
        low, high = _sd_ci(sd, n - 1, alpha)
        fl = _floor(floor, label, measure_name)
        rows.append({"method_label": label, "family": part["family"].iloc[0], "runs": n, "sd": sd, "sd_low": low,
                     "sd_high": high, "floor_sd": fl.sd, "floor_runs": fl.runs})
    return pd.DataFrame(rows)


def f1_sensitivity(source_table: pd.DataFrame, variance_table: pd.DataFrame, documents: pd.DataFrame | None = None,
                   floor: pd.DataFrame | None = None, *, measure_name: str = "log_ppl", alpha: float = ALPHA) -> dict:
    """F1. Effect: log(SD_pruning / SD_quantization) of a scale-free measure (log perplexity by default; "kl"
    or "acc") across every real calibration set: each source at set 0 and every set of the variance sources,
    SparseGPT against GPTQ (else the closest methods, said in the summary). F test of the variance ratio
    (normal runs), 95% CI. Untestable when the MDE, (z_.975 + z_.8) sqrt(1/(2 df_p) + 1/(2 df_q)), exceeds
    log 2. Holds: CI > 0 and pruning's spread exceeds its float-noise floor (F test against the replicate
    variance); does not hold: CI < log 2 (the data exclude pruning being twice as sensitive)."""
    theta1 = CLAIMED["F1"]
    pooled, name = f1_frame(source_table, variance_table, measure_name, documents)
    if pooled.empty:
        missing = ("no KL to the dense model in these runs (needs the dense reference: suite kl_to_dense and "
                   "evaluation version 2)" if measure_name == "kl" else f"no real calibration runs with {name}")
        return _untestable("F1", missing, "run the source-domain and seed-variance grids")
    chosen, note = pick_methods(pooled)
    if set(chosen) != {"pruning", "quantization"}:
        return _untestable("F1", "needs a calibrated pruning and a calibrated quantization method",
                           "run SparseGPT and GPTQ on the source-domain and seed-variance grids")
    values = {f: pooled.loc[pooled["method_label"] == chosen[f], "value"].to_numpy(dtype=float) for f in chosen}
    n_p, n_q = len(values["pruning"]), len(values["quantization"])
    df_p, df_q = n_p - 1, n_q - 1
    k = _z_sum(alpha)
    needed = math.ceil((k / theta1) ** 2) + 1                       # equal df: se^2 = 1/df
    decide = f"needs >= {needed} real calibration sets per method (sources x sets); has {n_p} and {n_q}"
    if min(n_p, n_q) < 3:
        return _untestable("F1", f"needs >= 3 real calibration runs per method (has {chosen['pruning']} {n_p}, "
                                 f"{chosen['quantization']} {n_q})", decide)
    var_p, var_q = float(np.var(values["pruning"], ddof=1)), float(np.var(values["quantization"], ddof=1))
    if np.ptp(values["pruning"]) == 0 or np.ptp(values["quantization"]) == 0:
        flat = chosen["pruning"] if np.ptp(values["pruning"]) == 0 else chosen["quantization"]
        return _untestable("F1", f"{flat} has no variance across calibration sets ({name} identical)", decide)
    fl = _floor(floor, chosen["pruning"], measure_name)
    if fl.status == "missing":
        return _untestable("F1", _floor_missing(chosen["pruning"], measure_name),
                           "run the noise-floor grid (float-order replicates of each method)")
    se = math.sqrt(1 / (2 * df_p) + 1 / (2 * df_q))
    mde = k * se
    common = dict(test="F test of the variance ratio (pruning / quantization)", effect=f"log SD ratio of {name}",
                  n=n_p + n_q, mde=mde, smallest_p=0.0)
    if mde > theta1:
        return _untestable("F1", f"MDE {mde:.2f} > claimed log 2 = {theta1:.2f} with {n_p} and {n_q} sets", decide,
                           **common)
    ratio = var_p / var_q
    theta = 0.5 * math.log(ratio)
    p = _two(float(sps.f.sf(ratio, df_p, df_q)))
    low = theta - 0.5 * math.log(sps.f.ppf(1 - alpha / 2, df_p, df_q))
    high = theta - 0.5 * math.log(sps.f.ppf(alpha / 2, df_p, df_q))
    beyond, p_floor, floor_note = _beyond_floor_f(var_p, df_p, fl, alpha)
    p_claim = max(p, p_floor) if np.isfinite(p_floor) else p
    verdict = _decide(low > 0 and beyond, high < theta1)
    summary = (f"SD of {name} across real calibration sets: {chosen['pruning']} {math.sqrt(var_p):.3g} ({n_p} sets), "
               f"{chosen['quantization']} {math.sqrt(var_q):.3g} ({n_q}); ratio {math.exp(theta):.2f} "
               f"(95% CI {math.exp(low):.2f}-{math.exp(high):.2f}); pruning's {floor_note}")
    if note:
        summary += f"; {note}"
    return _row("F1", verdict, summary=summary, what_would_decide="" if verdict != "inconclusive" else decide,
                statistic=ratio, p_value=p_claim, effect_size=theta, ci_low=low, ci_high=high, **common,
                sd_pruning=math.sqrt(var_p), sd_quantization=math.sqrt(var_q))


# -- F2 ------------------------------------------------------------------------------------------------------

F2_MARGIN = {"log_ppl": 0.2, "acc": 0.02}       # the size the budget must resolve: +22% perplexity, -2 points
F2_MEASURES = {"log_ppl": "log perplexity", "acc": "mean accuracy"}


def f2_frame(source_table: pd.DataFrame, variance_table: pd.DataFrame | None = None,
             alpha: float = ALPHA) -> pd.DataFrame:
    """Random-vocab against every real source, per calibrated method and measure (log perplexity; mean accuracy
    where tasks ran): one row per (method, measure, real source) with the draws of each (``n_random``,
    ``n_real``: runs of the source at different calibration sets), ``difference`` = badness of random-vocab
    minus that of the source (log perplexity, or minus accuracy: > 0 means random-vocab is worse), its SE from
    the draw-to-draw SD of the method (``sd_draw``: pooled SD between the sets of one source, float noise
    included, with ``df``), the 95% CI, the one-sided t p of 'random-vocab is worse', and the MDE at 80% power."""
    runs = pd.concat([t for t in (source_table, variance_table) if t is not None and len(t)], ignore_index=True)
    runs = _calibrated(runs.drop_duplicates("key")) if len(runs) else runs
    if runs.empty or "calibration.source" not in runs:
        return pd.DataFrame()
    runs = runs[runs["calibration.source"] != "self"]
    if "replicate" in runs:
        runs = runs[runs["replicate"].fillna(0) == 0]
    measures = {"log_ppl": log_ppl(runs)}
    if has_accuracy(runs):
        measures["acc"] = -runs["acc:mean"].astype(float)
    rows = []
    for measure, badness in measures.items():
        data = runs.assign(_bad=badness.to_numpy()).dropna(subset=["_bad"])
        for label, part in data.groupby("method_label", sort=True):
            by_source = part.groupby("calibration.source")["_bad"]
            n, mean = by_source.size(), by_source.mean()
            if "random-vocab" not in n.index or len(n) < 2:
                continue
            real = part[part["calibration.source"] != "random-vocab"]
            groups = real.groupby("calibration.source")["_bad"]
            dof = int((groups.size() - 1).clip(lower=0).sum())
            ss = float(groups.apply(lambda v: float(((v - v.mean()) ** 2).sum())).sum())
            sd = math.sqrt(ss / dof) if dof > 0 else np.nan
            tq = float(sps.t.ppf(1 - alpha / 2, dof)) if dof > 0 else np.nan
            tp = float(sps.t.ppf(POWER, dof)) if dof > 0 else np.nan
            for source in n.index.drop("random-vocab"):
                se = sd * math.sqrt(1 / n["random-vocab"] + 1 / n[source]) if dof > 0 else np.nan
                diff = float(mean["random-vocab"] - mean[source])
                p = float(sps.t.sf(diff / se, dof)) if dof > 0 and se > 0 else np.nan
                rows.append({"method_label": label, "family": part["family"].iloc[0], "measure": measure,
                             "source": source, "n_random": int(n["random-vocab"]), "n_real": int(n[source]),
                             "difference": diff, "sd_draw": sd, "df": dof, "se": se, "ci_low": diff - tq * se,
                             "ci_high": diff + tq * se, "p_worse": p, "mde": (tq + tp) * se,
                             "margin": F2_MARGIN[measure]})
    return pd.DataFrame(rows)


def f2_random_worst(source_table: pd.DataFrame, variance_table: pd.DataFrame | None = None,
                    floor: pd.DataFrame | None = None, *, alpha: float = ALPHA) -> dict:
    """F2. For every calibrated method, measure (log perplexity; mean accuracy where tasks ran) and real
    source: random-vocab's badness minus the source's, over their draws, with a t interval whose SE comes from
    the draw-to-draw SD between the calibration sets of one source (the seed-variance grid; float noise
    included). The units are draws, not (text, task) blocks: a source's draw moves every text and task of a
    method together, so blocks are not independent evidence, and one draw per source gives a rank test no p
    below 1/k. 'The worst for every method' is an intersection-union test: holds
    when every comparison's 95% CI lies above 0 (p = the largest doubled one-sided p). Does not hold when some
    real source is credibly worse than random-vocab (its CI below 0 at the Bonferroni level over all
    comparisons). Methods without a draw-to-draw SD (every source drawn once) are left out and named in the
    summary. Untestable when no method has one (no source with >= 2 sets) or when a comparison's MDE
    exceeds the claimed margin (``F2_MARGIN``: 0.2 log perplexity, 2 accuracy points). There are no ties to
    break: a difference of 0 is a difference of 0. The float floor is inside the draw-to-draw SD; `floor`
    is not needed."""
    if source_table is None or source_table.empty or "calibration.source" not in source_table:
        return _untestable("F2", "no source-domain runs", "run the source-domain grid (real sources and random-vocab)")
    frame = f2_frame(source_table, variance_table, alpha)
    if frame.empty:
        return _untestable("F2", "needs random-vocab and >= 1 real source run for a calibrated method",
                           "run the source-domain grid with random-vocab")
    # A method whose every source was drawn once has no draw-to-draw SD: it is left out and named, so that
    # source-domain runs of more methods (Wanda, AWQ) never make the claim untestable for the methods with draws.
    undrawn = sorted(frame.loc[(frame["df"] < 1) | frame["se"].isna(), "method_label"].unique())
    frame = frame[~frame["method_label"].isin(undrawn)]
    if frame.empty:
        return _untestable("F2", "no draw-to-draw SD: needs a real source drawn at >= 2 calibration sets per method",
                           "run the seed-variance grid (sets of each variance source) beside the source-domain grid")
    untested = (f"; not tested, one draw per source (no draw-to-draw SD): {', '.join(undrawn)}" if undrawn else "")
    if (frame["se"] <= 0).any():
        flat = frame.loc[frame["se"] <= 0].iloc[0]
        return _untestable("F2", f"no variance between the draws of a source ({flat['method_label']}, "
                                 f"{F2_MEASURES[flat['measure']]}: identical values)",
                           "a model and evaluation whose numbers move with the calibration data")
    ratio = frame["mde"] / frame["margin"]
    worst_case = frame.loc[ratio.idxmax()]
    mde = float(ratio.max())
    sets_needed = math.ceil(int(worst_case["df"]) * max(mde, 1) ** 2)
    decide = (f"needs MDE <= the claimed margin in every comparison (worst: {worst_case['method_label']}, "
              f"{F2_MEASURES[worst_case['measure']]} vs {worst_case['source']}, {mde:.2f} margins): more draws of "
              f"random-vocab and the real sources (e.g. >= {max(2, math.ceil(mde ** 2))} sets each), or ~{sets_needed} "
              "draw-to-draw degrees of freedom")
    common = dict(test="t tests of random-vocab minus each real source over draws (intersection-union over methods, "
                       "measures and sources)",
                  effect="random-vocab's margin over the closest real source, in claimed margins (0.2 log ppl; "
                         "2 accuracy points)", n=int(len(frame)), mde=mde, smallest_p=0.0)
    if mde > 1:
        return _untestable("F2", f"a comparison's MDE is {mde:.2f}x the claimed margin ({worst_case['method_label']}, "
                                 f"{F2_MEASURES[worst_case['measure']]} vs {worst_case['source']}){untested}", decide,
                           **common)
    p = _two(float(frame["p_worse"].max()))
    m = len(frame)
    z_band = frame["se"] * sps.t.ppf(1 - alpha / (2 * m), frame["df"])
    against = frame[frame["difference"] + z_band < 0]
    verdict = _decide(p < alpha, not against.empty)
    if verdict == "inconclusive":
        decide = _f2_would_decide(frame, m, alpha)
    scaled = frame.assign(s=frame["difference"] / frame["margin"], lo=frame["ci_low"] / frame["margin"],
                          hi=frame["ci_high"] / frame["margin"])
    closest = scaled.loc[scaled["s"].idxmin()]
    parts = []
    for (label, measure), part in frame.groupby(["method_label", "measure"], sort=True):
        near = part.loc[part["difference"].idxmin()]
        unit, scale = _f2_unit(measure)
        parts.append(f"{label}, {F2_MEASURES[measure]}: random-vocab worse than {int((part['ci_low'] > 0).sum())} of "
                     f"{len(part)} sources beyond noise; closest {near['source']} {scale * near['difference']:+.3g} "
                     f"{unit} (95% CI {scale * near['ci_low']:+.3g} to {scale * near['ci_high']:+.3g})")
    summary = "; ".join(parts) + f"; draws per source: random-vocab {int(frame['n_random'].min())}" + untested
    if len(against):
        summary += "; credibly worse than random-vocab: " + ", ".join(
            f"{r.source} ({r.method_label}, {F2_MEASURES[r.measure]})" for r in against.head(4).itertuples())
    return _row("F2", verdict, summary=summary, what_would_decide="" if verdict != "inconclusive" else decide,
                statistic=float(closest["s"]), p_value=p, effect_size=float(closest["s"]),
                ci_low=float(closest["lo"]), ci_high=float(closest["hi"]), **common)


def _f2_unit(measure: str) -> tuple[str, int]:
    """How an F2 difference reads in prose: its unit and the factor from the measure's own scale."""
    return ("log ppl", 1) if measure == "log_ppl" else ("points", 100)


def _f2_would_decide(frame: pd.DataFrame, m: int, alpha: float = ALPHA) -> str:
    """What would decide an inconclusive F2 whose comparisons are powered (MDE within the margin): the binding
    comparison and the draws its interval needs to leave 0, were its difference to stay as it is. Where some
    real source looks better than random-vocab (a difference below 0), the route is 'does not hold' (its
    Bonferroni band over the m comparisons below 0); else 'holds' (the weakest comparison's 95% CI above 0)."""
    z = frame["difference"] / frame["se"]
    negative = frame["difference"] < 0
    row = frame.loc[z[negative].idxmin()] if negative.any() else frame.loc[z.idxmin()]
    level = 1 - alpha / (2 * m) if negative.any() else 1 - alpha / 2
    unit, scale = _f2_unit(row["measure"])
    what = (f"{row['method_label']}, {F2_MEASURES[row['measure']]}: random-vocab's badness minus {row['source']}'s "
            f"{scale * row['difference']:+.3g} {unit} (95% CI {scale * row['ci_low']:+.3g} to "
            f"{scale * row['ci_high']:+.3g}; below 0: random tokens did better)")
    route = ("to show random tokens credibly better than that source (does not hold)" if negative.any()
             else "to put every interval above 0 (holds)")
    if row["difference"] == 0:
        return f"{what}: a difference of exactly 0 decides nothing at any number of draws"
    factor = (float(sps.norm.ppf(level)) * row["se"] / abs(row["difference"])) ** 2
    draws = max(int(row["n_random"]), int(row["n_real"]))
    return (f"{what}: about {max(factor, 1):.1f}x the draws {route}, ~{math.ceil(max(factor, 1) * draws)} sets "
            f"of random-vocab and of each real source if the difference stays as it is")


# -- F3 ------------------------------------------------------------------------------------------------------

LOG2_10 = math.log2(10.0)


def _saturation_grid(counts: np.ndarray, extra_doublings: float = 3.0, size: int = 160):
    """For y = a + b x with x = (n / n_1)^(-c): per candidate D (doublings from n_1 to 90% of the asymptotic
    improvement; c = log2(10) / D) the residual projector and the slope row, for any y over these counts."""
    counts = np.asarray(counts, dtype=float)
    span = math.log2(counts.max() / counts.min())
    grid = np.linspace(0.1, span + extra_doublings, size)
    doublings = np.log2(counts / counts.min())
    x = 10.0 ** (-doublings[None, :] / grid[:, None])                    # grid x points
    design = np.stack([np.ones_like(x), x], axis=-1)                     # grid x points x 2
    pinv = np.linalg.pinv(design)                                         # grid x 2 x points
    residual = np.eye(len(counts))[None] - design @ pinv                 # grid x points x points
    return grid, residual, pinv, design


def _fit_doublings(y: np.ndarray, grid, residual, pinv) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares D for each row of y (batch x points): the grid point with the smallest residual sum of
    squares among fits that improve (b > 0); D = 0 where no fit improves (flat from the first count). Returns
    (D, a, b)."""
    y = np.atleast_2d(y)
    rss = np.einsum("bi,gij,bj->bg", y, residual, y)
    coef = np.einsum("gkj,bj->bgk", pinv, y)                             # batch x grid x (a, b)
    rss = np.where(coef[..., 1] > 0, rss, np.inf)
    best = np.argmin(rss, axis=1)
    none = ~np.isfinite(rss[np.arange(len(y)), best])
    d = np.where(none, 0.0, grid[best])
    chosen = coef[np.arange(len(y)), best]
    a = np.where(none, y.mean(axis=1), chosen[:, 0])
    b = np.where(none, 0.0, chosen[:, 1])
    return d, a, b


def _curve(n, n1, a, b, d):
    n = np.asarray(n, dtype=float)
    if d <= 0:
        return np.full_like(n, a)
    return a + b * 10.0 ** (-np.log2(n / n1) / d)


def f3_fits(count_table: pd.DataFrame, floor=None, *, n_boot: int = 400, seed: int = 0, alpha: float = ALPHA,
            methods: dict | None = None) -> dict:
    """The saturation fit of each chosen method (``pick_methods``) on log perplexity over num_samples, with a
    parametric bootstrap (noise SD: the fit's residual SD, at least the float floor): per family the counts,
    points, D (doublings to 90% of the asymptotic improvement), a, b, sigma and D's bootstrap draws."""
    table = _calibrated(count_table)
    table = table.assign(value=log_ppl(table)).dropna(subset=["value"])
    chosen, note = pick_methods(table) if methods is None else (methods, "")
    rng = np.random.default_rng(seed)
    fits = {}
    for family, label in chosen.items():
        part = table[table["method_label"] == label]
        counts = part["calibration.num_samples"].to_numpy(dtype=float)
        y = part["value"].to_numpy(dtype=float)
        distinct = int(np.unique(counts).size)
        fit = {"label": label, "counts": counts, "y": y, "distinct": distinct, "note": ""}
        if distinct >= 3 and len(y) > 3:
            grid, residual, pinv, _ = _saturation_grid(counts)
            d, a, b = (v[0] for v in _fit_doublings(y[None], grid, residual, pinv))
            fitted = _curve(counts, counts.min(), a, b, d)
            sigma = float(np.sqrt(np.sum((y - fitted) ** 2) / max(len(y) - 3, 1)))
            fl = _floor(floor, label, "log_ppl")
            if fl.status == "ok":
                sigma = max(sigma, fl.sd)
            draws = fitted[None] + sigma * rng.standard_normal((n_boot, len(y)))
            boot = _fit_doublings(draws, grid, residual, pinv)[0]
            fit.update(d=float(d), a=float(a), b=float(b), sigma=sigma, boot=boot, n1=float(counts.min()),
                       n_max=float(counts.max()), floor=fl)
        fits[family] = fit
    return {"fits": fits, "note": note}


def f3_plateau(count_table: pd.DataFrame, floor: pd.DataFrame | None = None, *, n_boot: int = 400, seed: int = 0,
               alpha: float = ALPHA, min_counts: int = 6) -> dict:
    """F3. Per method, fit log perplexity = a + b n^(-c) over the sample counts (profile least squares over c,
    b > 0); D = log2(n90 / n_1) = log2(10) / c, the doublings from the first count until 90% of the asymptotic
    improvement is reached. Effect: D(SparseGPT) - D(GPTQ) (else the closest methods); its SE from a
    parametric bootstrap (noise: the fit's residual SD, at least the float floor) and a 95% CI with the t
    quantile on the fits' residual degrees of freedom (the noise SD is itself estimated; a percentile interval
    said 'holds' 4% of the time on nulls). Untestable: < 6 sample counts or MDE = (t_.975 + t_.8) SE > 2
    doublings. Holds: CI > 0 and pruning's fitted improvement after GPTQ's n90 exceeds the float floor; does
    not hold: CI < 2 doublings."""
    theta1 = CLAIMED["F3"]
    if count_table is None or count_table.empty or "calibration.num_samples" not in count_table:
        return _untestable("F3", "no sample-count runs", f"run the sample-count grid with >= {min_counts} counts")
    chosen, note = pick_methods(count_table)
    if set(chosen) != {"pruning", "quantization"}:
        return _untestable("F3", "needs a calibrated pruning and a calibrated quantization method",
                           "run SparseGPT and GPTQ on the sample-count grid")
    if floor is not None:
        for label in chosen.values():
            if _floor(floor, label, "log_ppl").status == "missing":
                return _untestable("F3", _floor_missing(label, "log_ppl"), "run the noise-floor grid")
    fits = f3_fits(count_table, floor, n_boot=n_boot, seed=seed, alpha=alpha, methods=chosen)["fits"]
    distinct = min(f["distinct"] for f in fits.values())
    if distinct < min_counts:
        return _untestable("F3", f"needs >= {min_counts} sample counts per method to fit a saturation curve "
                                 f"(has {distinct})", f">= {min_counts} sample counts (e.g. 1, 2, 4, ..., 128)",
                           smallest_p=np.nan)
    p_fit, q_fit = fits["pruning"], fits["quantization"]
    boot = p_fit["boot"] - q_fit["boot"]
    sd_boot = float(np.std(boot, ddof=1))
    dof = max(len(p_fit["y"]) + len(q_fit["y"]) - 6, 1)
    mde = (float(sps.t.ppf(1 - alpha / 2, dof)) + float(sps.t.ppf(POWER, dof))) * sd_boot
    common = dict(test="saturation fits, parametric bootstrap of D(pruning) - D(quantization)",
                  effect="doublings to 90% of the asymptotic improvement, pruning - quantization",
                  n=int(len(p_fit["y"]) + len(q_fit["y"])), mde=mde, smallest_p=0.0)
    if sd_boot == 0 and p_fit["sigma"] == 0:
        return _untestable("F3", "the curves have no noise to bootstrap (groups with no variance)",
                           "replicate runs at each sample count", **common)
    reps = math.ceil((mde / theta1) ** 2) if np.isfinite(mde) else np.inf
    decide = (f"needs ~{reps}x the points per curve (e.g. {reps} replicate runs or sets at each of the "
              f"{distinct} sample counts)")
    if mde > theta1:
        return _untestable("F3", f"MDE {mde:.2f} doublings > claimed {theta1:g} with {distinct} sample counts", decide,
                           **common)
    theta = p_fit["d"] - q_fit["d"]
    # the bootstrap SD with a t quantile on the fits' residual degrees of freedom: the noise SD the bootstrap
    # draws from is itself estimated (a percentile interval, which treats it as known, holds 'holds' at ~4%
    # instead of 2.5% on 8 counts)
    tq = float(sps.t.ppf(1 - alpha / 2, dof))
    low, high = theta - tq * sd_boot, theta + tq * sd_boot
    p = _two(float(sps.t.sf(theta / sd_boot, dof))) if sd_boot > 0 else float(theta <= 0)
    # beyond the floor: pruning still improves, after quantization's n90, by more than float noise
    n90_q = q_fit["n1"] * 2 ** q_fit["d"]
    start = min(max(n90_q, p_fit["n1"]), p_fit["n_max"])
    gain = float(_curve([start], p_fit["n1"], p_fit["a"], p_fit["b"], p_fit["d"])[0]
                 - _curve([p_fit["n_max"]], p_fit["n1"], p_fit["a"], p_fit["b"], p_fit["d"])[0])
    fl = p_fit["floor"]
    beyond = fl.status == "none" or gain > fl.threshold(alpha)
    verdict = _decide(low > 0 and beyond, high < theta1)

    def describe(f):
        n90 = f["n1"] * 2 ** f["d"]
        lo, hi = np.quantile(f["boot"], [alpha / 2, 1 - alpha / 2])
        where = "beyond the grid" if n90 > f["n_max"] else "inside the grid"
        return (f"{f['label']}: 90% of its improvement by n = {n90:.3g} ({where}; D {f['d']:.2f}, 95% CI "
                f"{lo:.2f}-{hi:.2f} doublings)")

    summary = (f"{describe(p_fit)}; {describe(q_fit)}; pruning gains {gain:.3g} log ppl after n = {start:.3g}"
               + ("" if fl.status != "ok" else f" (floor threshold {fl.threshold(alpha):.3g})"))
    if note:
        summary += f"; {note}"
    return _row("F3", verdict, summary=summary, what_would_decide="" if verdict != "inconclusive" else decide,
                statistic=theta, p_value=p, effect_size=theta, ci_low=low, ci_high=high, **common)


# -- F4 ------------------------------------------------------------------------------------------------------

def f4_frame(source_table: pd.DataFrame, self_table: pd.DataFrame, documents: pd.DataFrame | None,
             floor: pd.DataFrame | None = None, *, margin: float = CLAIMED["F4"], alpha: float = ALPHA) -> pd.DataFrame:
    """Per method: the best self-generated set and the best real source (``summaries.self_vs_real``, as in
    notebook 05), their per-document accuracy difference (mean over tasks, each task weighted equally), its
    SE over documents, the 90% CI, the TOST p
    and the 80%-power equivalence bound (``mde``) from the discordance alone."""
    if "data" not in self_table:
        self_table = self_table.assign(data=self_table.get("calibration.source", "self"))
    self_runs = self_table[self_table["kind"] == "self"]
    real = pd.concat([_calibrated(source_table), self_table[self_table["kind"] == "real"]],
                     ignore_index=True).drop_duplicates(["key", "method_label"])
    real = real[~real["calibration.source"].isin(NOT_REAL)]
    comparison = summaries.self_vs_real(self_runs, real)
    rows = []
    for _, r in comparison.iterrows():
        row = {"method_label": r["method_label"], "best_self": r["best self"], "best_real": r["best real"],
               "self_key": r["self_key"], "real_key": r["real_key"], "picked_by": r["picked by"]}
        pairs = stats.paired_accuracy_differences(documents, r["self_key"], r["real_key"]) if documents is not None else None
        if pairs is None:
            rows.append(row | {"status": "no per-document records"})
            continue
        fl = _floor(floor, r["method_label"], "acc:mean")
        rows.append(row | {"status": "ok", **stats.paired_tost(pairs, margin, alpha, power=POWER), "float_sd": fl.sd})
    return pd.DataFrame(rows)


def f4_self_generated(source_table: pd.DataFrame, self_table: pd.DataFrame, documents: pd.DataFrame | None = None,
                      floor: pd.DataFrame | None = None, *, margin: float = CLAIMED["F4"], alpha: float = ALPHA) -> dict:
    """F4. Per method, the best self-generated set against the best real source (both picked by
    ``summaries.self_vs_real``, as notebook 05 does: by mean accuracy where tasks ran), paired over documents
    (``Store.documents()``): the mean over tasks of the per-document difference in correctness, its SE from
    the documents (float-order noise reaches accuracy as document flips, so it is in that variance already;
    `floor` is only reported). TOST with a +-1 point margin: holds when the 90% CI lies inside (-1, +1)
    points for every method (p = max TOST p over methods); does not hold when it lies outside for some method
    (at any budget). Otherwise untestable when the bound the design reaches with 80% power at a true difference of 0,
    (z_.95 + z_.9) SE (SE from the discordance alone), exceeds the margin: the row says how many documents per
    task would do. Picking the best of several noisy real sources favours real data (winner's curse)."""
    if self_table is None or self_table.empty or "kind" not in self_table:
        return _untestable("F4", "no self-generated runs", "run the self-calibration grid")
    if not has_accuracy(self_table) or source_table is None or not has_accuracy(source_table):
        return _untestable("F4", "task accuracy is unavailable here (no task data)",
                           "an evaluation suite with tasks (set CALIB_MIRROR or go online)")
    frame = f4_frame(source_table, self_table, documents, floor, margin=margin, alpha=alpha)
    if frame.empty:
        return _untestable("F4", "needs a self-generated and a real run of the same method",
                           "run the self-calibration and source-domain grids")
    picks = "; ".join(f"{r.method_label}: {r.best_self} vs {r.best_real}" for r in frame.itertuples())
    if "difference" not in frame or frame["difference"].isna().any():
        missing = frame.loc[frame["status"] != "ok", "method_label"].tolist()
        return _untestable("F4", f"needs per-document records (Store.documents()) of both runs ({picks}); missing "
                                 f"for {', '.join(missing)}", "rerun under evaluation version 2 (records documents)")
    worst = frame.loc[frame["p_tost"].idxmax()]
    mde = float(frame["mde"].max())
    decide = (f"needs >= {frame['needed_docs_per_task'].max():,.0f} documents per task ({frame['tasks'].max()} "
              f"tasks; has {int(frame['docs_per_task'].min())}) for a +-{100 * margin:g} point equivalence at 80% power")
    common = dict(test=f"TOST (+-{100 * margin:g} point) on per-document differences, self - best real",
                  effect="mean accuracy difference, self - best real (least equivalent method)",
                  n=int(frame["documents"].sum()), mde=mde, smallest_p=0.0)
    outside = frame[(frame["ci_low"] > margin) | (frame["ci_high"] < -margin)]
    per = "; ".join(f"{r.method_label}: {r.best_self} - {r.best_real} {100 * r.difference:+.1f} points (90% CI "
                    f"{100 * r.ci_low:+.1f} to {100 * r.ci_high:+.1f}, {r.documents} documents)"
                    for r in frame.itertuples())
    # a CI wholly outside the margin contradicts equivalence at any budget: only "holds" needs the power
    if mde > margin and outside.empty:
        # the differences too: what the budget shows, even where it cannot decide
        return _untestable("F4", f"the 80%-power equivalence bound is +-{100 * mde:.1f} points > +-{100 * margin:g} "
                                 f"({per})", decide, **common)
    p = float(frame["p_tost"].max())
    verdict = _decide(p < alpha, not outside.empty)
    return _row("F4", verdict, summary=per, what_would_decide="" if verdict != "inconclusive" else decide,
                statistic=float(worst["difference"]) / float(worst["se"]), p_value=p,
                effect_size=float(worst["difference"]), ci_low=float(worst["ci_low"]), ci_high=float(worst["ci_high"]),
                **common, ci_low_points=100 * float(worst["ci_low"]), ci_high_points=100 * float(worst["ci_high"]))


# -- F5 ------------------------------------------------------------------------------------------------------

def f5_frame(variance_table: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Range across sets of each task (with its (method, source)'s mean-accuracy range) and the mean's ranges
    (``summaries.task_swing``; kept for notebook 04. The F5 rule reads ``accuracy_components``)."""
    return summaries.task_swing(variance_table)


def f5_cells(variance_table: pd.DataFrame, documents=None, docs_per_task=None) -> pd.DataFrame:
    """Per (method, source) cell: mean over tasks of the single-task total, noise and excess variance across
    sets, the same for the mean accuracy, and theta = task excess - mean excess (accuracy^2): F5's units of
    replication (``accuracy_components`` has them per task)."""
    cells, _ = _cell_components(variance_table, documents, docs_per_task)
    if not cells:
        return pd.DataFrame()
    frame = pd.DataFrame({
        "method_label": [c["method_label"] for c in cells],
        "calibration.source": [c["calibration.source"] for c in cells],
        "sets": [c["sets"] for c in cells],
        "task_total": [float(np.mean(c["total"])) for c in cells],
        "task_noise": [float(np.mean(c["noise"])) for c in cells],
        "mean_total": [c["mean_total"] for c in cells],
        "mean_noise": [c["mean_noise"] for c in cells],
        "noise_from": [c["noise_from"] for c in cells]})
    frame["task_excess"] = frame["task_total"] - frame["task_noise"]
    frame["mean_excess"] = frame["mean_total"] - frame["mean_noise"]
    frame["theta"] = frame["task_excess"] - frame["mean_excess"]
    return frame


def f5_task_swing(variance_table: pd.DataFrame, documents: pd.DataFrame | None = None,
                  floor: pd.DataFrame | None = None, *, docs_per_task: int | None = None,
                  alpha: float = ALPHA) -> dict:
    """F5. Per (method, source) cell of the seed-variance grid: the variance of each task's accuracy across
    calibration sets beyond its document-flip noise (``accuracy_components``), averaged over tasks, minus the
    same for the mean accuracy. No calibration effect gives 0; a task-specific set effect of variance tau^2
    gives tau^2 (1 - 1/T); a shift shared by all tasks gives 0. One-sample t over cells, 95% CI. Untestable
    when the MDE, (t_.975 + t_.8) SE, exceeds 3 points^2 (a single task's set SD of 2 points against 1 for the
    mean). Holds: CI > 0 and single tasks' between-set variance exceeds the float floor of task accuracy
    (F test); does not hold: CI < 3 points^2."""
    theta1 = CLAIMED["F5"]
    tasks = task_columns(variance_table) if variance_table is not None else []
    if not tasks:
        return _untestable("F5", "task accuracy is unavailable here (no task data)",
                           "an evaluation suite with tasks (set CALIB_MIRROR or go online)")
    if len(tasks) < 2:
        return _untestable("F5", "needs >= 2 tasks (a mean over one task is the task)", "an evaluation suite with >= 2 tasks")
    n_docs = _docs_per_task(documents, docs_per_task)
    cells = f5_cells(variance_table, documents, n_docs)
    if cells.empty:
        return _untestable("F5", "needs >= 2 calibration sets per (method, source)", "run the seed-variance grid")
    if (cells["noise_from"] == "none").any():
        return _untestable("F5", "the binomial noise of accuracy is unknown: needs per-document records "
                                 "(Store.documents()) or the documents per task", "rerun under evaluation version 2")
    labels = sorted(cells["method_label"].unique())
    if floor is not None:
        for label in labels:
            if _floor(floor, label, "acc:task").status == "missing":
                return _untestable("F5", _floor_missing(label, "acc:task"), "run the noise-floor grid")
    c = len(cells)
    sets = int(cells["sets"].median())
    decide_base = f"(method, source) cells with >= {max(sets, 3)} sets each (has {c} cells)"
    if c < 3:
        return _untestable("F5", f"needs >= 3 (method, source) cells (has {c})", f"needs >= 3 {decide_base}")
    theta_c = cells["theta"].to_numpy(float)
    sd = float(theta_c.std(ddof=1))
    if sd == 0:
        return _untestable("F5", "no variance between cells (identical accuracies)", f"more {decide_base}")
    dof = c - 1
    se = sd / math.sqrt(c)
    mde = (float(sps.t.ppf(1 - alpha / 2, dof)) + float(sps.t.ppf(POWER, dof))) * se
    needed = math.ceil(c * (mde / theta1) ** 2)
    decide = f"needs >= {needed} {decide_base}, or more documents per task"
    common = dict(test="t over (method, source) cells of single-task minus mean-accuracy excess variance",
                  effect="task - mean between-set variance beyond binomial noise (accuracy^2)", n=c, mde=mde,
                  smallest_p=0.0)
    if mde > theta1:
        return _untestable("F5", f"MDE {1e4 * mde:.1f} points^2 > claimed {1e4 * theta1:g} points^2 with {c} cells",
                           decide, **common)
    theta = float(theta_c.mean())
    tq = float(sps.t.ppf(1 - alpha / 2, dof))
    low, high = theta - tq * se, theta + tq * se
    p = _two(float(sps.t.sf(theta / se, dof)))
    # beyond the float floor: single-task accuracy moves across sets more than between replicates
    floors = [_floor(floor, label, "acc:task") for label in labels]
    total = float(cells["task_total"].mean())
    dof_sets = int((cells["sets"] - 1).sum())
    if floor is None:
        beyond, p_floor, floor_note = True, np.nan, "no noise floor given: not checked"
    else:
        beyond, p_floor, floor_note = _beyond_floor_f(total, dof_sets, _pool(floors), alpha)
    p_claim = max(p, p_floor) if np.isfinite(p_floor) else p
    verdict = _decide(low > 0 and beyond, high < theta1)
    summary = (f"between-set SD beyond binomial noise: single task {100 * math.sqrt(max(cells['task_excess'].mean(), 0)):.2f} "
               f"points, task mean {100 * math.sqrt(max(cells['mean_excess'].mean(), 0)):.2f} points (noise SDs "
               f"{100 * math.sqrt(cells['task_noise'].mean()):.2f} and {100 * math.sqrt(cells['mean_noise'].mean()):.2f}); "
               f"difference {1e4 * theta:.2f} points^2 (95% CI {1e4 * low:.2f} to {1e4 * high:.2f}) over {c} cells; "
               f"noise from {cells['noise_from'].iloc[0]}; single tasks vs float floor: {floor_note}")
    return _row("F5", verdict, summary=summary, what_would_decide="" if verdict != "inconclusive" else decide,
                statistic=theta / se, p_value=p_claim, effect_size=theta, ci_low=low, ci_high=high, **common)


# -- F6 ------------------------------------------------------------------------------------------------------

def f6_frame(variance_table: pd.DataFrame, source_table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every real calibration run in a (method, source) cell with >= 2 sets: -log perplexity and mean accuracy,
    their deviations from the cell's mean (``*_dev``: what changes with the draw, the source held fixed) and
    those deviations over the method's SD of them (``*_z``, so methods with different spreads pool)."""
    runs = _real_runs(variance_table, source_table)
    if runs.empty or "acc:mean" not in runs:
        return pd.DataFrame()
    runs = runs.assign(neg_log_ppl=-log_ppl(runs)).dropna(subset=["neg_log_ppl", "acc:mean"])
    cell = ["method_label", "calibration.source"]
    runs = runs[runs.groupby(cell)["key"].transform("size") >= 2].copy()
    if runs.empty:
        return runs
    for column in ("neg_log_ppl", "acc:mean"):
        runs[f"{column}_dev"] = runs[column] - runs.groupby(cell)[column].transform("mean")
        sd = runs.groupby("method_label")[f"{column}_dev"].transform(lambda v: float(np.sqrt(np.mean(v ** 2))))
        runs[f"{column}_z"] = runs[f"{column}_dev"] / sd.where(sd > 0)
    return runs


def f6_ppl_vs_accuracy(variance_table: pd.DataFrame, source_table: pd.DataFrame | None = None,
                       documents: pd.DataFrame | None = None, floor: pd.DataFrame | None = None, *,
                       docs_per_task: int | None = None, rho_max: float = CLAIMED["F6"], alpha: float = ALPHA) -> dict:
    """F6. Spearman's rho between -log perplexity and mean accuracy across calibration sets, the source held
    fixed: on the runs' deviations from their (method, source) cell's mean, each method's deviations over
    their SD, pooled over cells and methods (the sources' own differences would otherwise give a few
    clustered points the weight of many); SE from Fisher's z with variance 1.06 / (n - cells - 3). The claim
    is that perplexity does not track what the calibration draw does to accuracy, and that accuracy does vary:
    holds when rho's 95% CI lies below 0.5 (non-superiority) and the mean accuracy's between-set variance
    exceeds its document-flip noise (t over (method, source) cells; and the float floor of mean accuracy where
    given); p = the larger of the two. Does not hold: CI above 0.5 (perplexity ranks the sets as accuracy
    does). Untestable when the bound reachable with 80% power at rho = 0, tanh((z_.975 + z_.8) SE), exceeds
    0.5, or the accuracy noise cannot be measured."""
    if variance_table is None or not has_accuracy(variance_table):
        return _untestable("F6", "task accuracy is unavailable here (no task data)",
                           "an evaluation suite with tasks (set CALIB_MIRROR or go online)")
    runs = f6_frame(variance_table, source_table)
    cell = ["method_label", "calibration.source"]
    cells_n = runs.groupby(cell).ngroups if len(runs) else 0
    sets = int(runs.groupby(cell).size().median()) if len(runs) else 0
    k = _z_sum(alpha)
    needed = math.ceil(3 + 1.06 * (k / math.atanh(rho_max)) ** 2)
    decide = (f"needs >= {needed} runs beyond the (method, source) cell means (has {max(len(runs) - cells_n, 0)}: "
              f"{cells_n} cells of {sets} sets), e.g. >= {1 + math.ceil(needed / max(cells_n, 1))} sets per cell")
    if len(runs):
        runs = runs.dropna(subset=["neg_log_ppl_z", "acc:mean_z"])      # a method whose values never move
    dof = len(runs) - (runs.groupby(cell).ngroups if len(runs) else 0)  # residual df after the cell means
    if dof - 3 < 1 or runs["neg_log_ppl_z"].nunique() < 3 or runs["acc:mean_z"].nunique() < 3:
        return _untestable("F6", "needs calibration sets whose perplexity and accuracy both vary within a (method, "
                                 "source) cell (groups with no variance, or too few sets)", decide)
    rho = float(np.clip(sps.spearmanr(runs["neg_log_ppl_z"], runs["acc:mean_z"]).statistic, -0.999, 0.999))
    z_bar = math.atanh(rho)
    se = math.sqrt(1.06 / (dof - 3))
    mde = math.tanh(k * se)
    per = [(label, len(part), float(sps.spearmanr(part["neg_log_ppl_z"], part["acc:mean_z"]).statistic))
           for label, part in runs.groupby("method_label") if len(part) >= 4]
    # accuracy varies beyond noise (mean accuracy's excess variance across sets)
    cells = f5_cells(variance_table, documents, _docs_per_task(documents, docs_per_task))
    common = dict(test="Spearman rho within (method, source) cells (Fisher z) non-superiority to 0.5, with "
                       "accuracy's between-set variance beyond noise",
                  effect="Spearman rho(-log ppl, mean accuracy) across sets", n=int(len(runs)), mde=mde,
                  smallest_p=0.0)
    if cells.empty or len(cells) < 2:
        return _untestable("F6", "needs >= 2 (method, source) cells with >= 2 sets to measure accuracy's variation",
                           "run the seed-variance grid", **common)
    if (cells["noise_from"] == "none").any():
        return _untestable("F6", "the binomial noise of accuracy is unknown: needs per-document records or the "
                                 "documents per task", "rerun under evaluation version 2", **common)
    labels = sorted(cells["method_label"].unique())
    if floor is not None:
        for label in labels:
            if _floor(floor, label, "acc:mean").status == "missing":
                return _untestable("F6", _floor_missing(label, "acc:mean"), "run the noise-floor grid", **common)
    if mde > rho_max:
        return _untestable("F6", f"the 80%-power bound at rho = 0 is {mde:.2f} > {rho_max:g}", decide, **common)
    excess = cells["mean_excess"].to_numpy(float)
    sd_ex = float(excess.std(ddof=1))
    if sd_ex > 0:
        p_acc = _two(float(sps.t.sf(excess.mean() / (sd_ex / math.sqrt(len(excess))), len(excess) - 1)))
    else:
        p_acc = 0.0 if excess.mean() > 0 else 1.0
    if floor is not None:
        floors = [_floor(floor, label, "acc:mean") for label in labels]
        _, p_floor, floor_note = _beyond_floor_f(float(cells["mean_total"].mean()), int((cells["sets"] - 1).sum()),
                                                 _pool(floors), alpha)
        p_acc = max(p_acc, p_floor)
    else:
        floor_note = "no noise floor given"
    z = _z(alpha / 2)
    low, high = math.tanh(z_bar - z * se), math.tanh(z_bar + z * se)
    p_ns = _two(float(sps.norm.cdf((z_bar - math.atanh(rho_max)) / se)))
    p = max(p_ns, p_acc)
    verdict = _decide(high < rho_max and p_acc < alpha, low > rho_max)
    beyond = 100 * math.sqrt(max(excess.mean(), 0))          # mean accuracy's between-set SD beyond noise, points
    if verdict == "inconclusive" and high < rho_max:
        # rho's half is decided; what is missing is accuracy moving beyond its noise across sets
        decide = (f"rho is decided (95% CI below {rho_max:g}); the claim's other half, mean accuracy varying across "
                  f"sets beyond noise, is not shown (between-set SD beyond noise {beyond:.2f} points, against a "
                  f"document noise SD of "
                  f"{100 * math.sqrt(float(cells['mean_noise'].mean())):.2f}): more documents per task (the noise "
                  f"falls as 1/sqrt(documents)) or more sets per cell; if accuracy moves no more than this, no "
                  f"budget will show it")
    rhos = ", ".join(f"{label} {r:+.2f} ({n} runs)" for label, n, r in per)
    summary = (f"rho(-log ppl, accuracy) across sets within (method, source): pooled {rho:+.2f} (95% CI {low:+.2f} "
               f"to {high:+.2f}, {len(runs)} runs in {cells_n} cells){'; per method: ' + rhos if rhos else ''}; "
               f"mean accuracy's between-set SD beyond noise "
               f"{beyond:.2f} points (t p {_fmt(p_acc)}; {floor_note})")
    return _row("F6", verdict, summary=summary, what_would_decide="" if verdict != "inconclusive" else decide,
                statistic=rho, p_value=p, effect_size=rho, ci_low=low, ci_high=high, **common,
                p_accuracy_varies=p_acc)


# -- all six, with Holm --------------------------------------------------------------------------------------

TABLES = {"F1": ("source_domain", "seed_variance"), "F2": ("source_domain",), "F3": ("sample_count",),
          "F4": ("source_domain", "self_calibration"), "F5": ("seed_variance",), "F6": ("seed_variance",)}


def _safe(claim: str, function, *args, **kwargs) -> dict:
    """A rule's row; an unexpected error becomes an untestable row that names it (never raise in a notebook)."""
    try:
        return function(*args, **kwargs)
    except Exception as err:                                 # noqa: BLE001 - reported in the row
        return _untestable(claim, f"the rule could not be computed ({type(err).__name__}: {err})",
                           "fix the input named in the error")


def holm(table: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Holm-adjusted p-values across the testable claims (``p_holm``); a 'holds' whose Holm p is not below
    alpha becomes 'inconclusive' and says so."""
    table = table.copy()
    table["p_holm"] = np.nan
    ok = table["p_value"].notna() & (table["verdict"] != UNTESTABLE)
    if ok.any():
        table.loc[ok, "p_holm"] = multipletests(table.loc[ok, "p_value"].astype(float), method="holm")[1]
    lost = (table["verdict"] == "holds") & ~(table["p_holm"] < alpha)
    table.loc[lost, "verdict"] = "inconclusive"
    table.loc[lost, "summary"] = table.loc[lost, "summary"] + " (raw p < alpha, but not after Holm across the claims)"
    return table


def verdicts(tables: dict[str, pd.DataFrame], documents: pd.DataFrame | None = None,
             floor: pd.DataFrame | None = None, *, docs_per_task: int | None = None, alpha: float = ALPHA,
             f1_measure: str = "log_ppl", n_boot: int = 400) -> pd.DataFrame:
    """The six rows for one model, Holm-adjusted across them. `tables`: the study tables by grid name
    (source_domain, seed_variance, sample_count, self_calibration; a missing one makes its claims
    untestable); `documents`: ``Store.documents()`` (or None); `floor`: ``noise_floor_table`` (or None: the
    floor is not checked); `docs_per_task`: the documents per task where there are no per-document records."""
    tables = tables or {}
    get = tables.get
    rows = []
    calls = {
        "F1": lambda: f1_sensitivity(get("source_domain"), get("seed_variance"), documents, floor,
                                     measure_name=f1_measure, alpha=alpha),
        "F2": lambda: f2_random_worst(get("source_domain"), get("seed_variance"), floor, alpha=alpha),
        "F3": lambda: f3_plateau(get("sample_count"), floor, n_boot=n_boot, alpha=alpha),
        "F4": lambda: f4_self_generated(get("source_domain"), get("self_calibration"), documents, floor, alpha=alpha),
        "F5": lambda: f5_task_swing(get("seed_variance"), documents, floor, docs_per_task=docs_per_task, alpha=alpha),
        "F6": lambda: f6_ppl_vs_accuracy(get("seed_variance"), get("source_domain"), documents, floor,
                                         docs_per_task=docs_per_task, alpha=alpha),
    }
    for claim, call in calls.items():
        missing = [name for name in TABLES[claim] if get(name) is None or get(name).empty]
        if missing:
            rows.append(_untestable(claim, f"no {' or '.join(missing)} table", f"run the {', '.join(missing)} grid(s)"))
        else:
            rows.append(_safe(claim, call))
    frame = pd.DataFrame(rows)
    ordered = COLUMNS + [c for c in frame.columns if c not in COLUMNS]
    return holm(frame[ordered], alpha)


# -- simulated studies: false positives on nulls, power at a budget ------------------------------------------

@dataclass(frozen=True)
class Budget:
    """What a profile's grids give the rules: calibrated methods (label, family), real sources at set 0 (03),
    variance sources and sets each (04), sample counts (01), perplexity texts, tasks and documents per task,
    self-generation schedules (05), float-order replicates beside each method's base run, and draws of
    random-vocab."""
    name: str
    methods: tuple = (("sparsegpt 50%", "pruning"), ("gptq 3-bit g128", "quantization"))
    sources: int = 4
    variance_sources: int = 2
    sets: int = 3
    sample_counts: tuple = (1, 4, 16, 64)
    texts: int = 4
    tasks: int = 4
    docs_per_task: int = 20
    schedules: int = 2
    replicates: int = 2
    random_sets: int = 1                 # draws of random-vocab (the source-domain grid has one)

    @classmethod
    def from_profile(cls, profile, *, mirror: bool = True, docs_if_unlimited: int = 1000) -> "Budget":
        """A profile's budget. 'available' sources count the PyPI sources plus, with `mirror`, the offline
        mirror's (c4, wikitext2); optional sources count with `mirror`; a task limit of None (the whole task)
        counts as `docs_if_unlimited` documents."""
        from .study.labels import method_family, method_label
        from .study.profiles import MIRROR_SOURCES, PYPI_SOURCES
        everything = len(PYPI_SOURCES) + (len(MIRROR_SOURCES) if mirror else 0)
        sources = (everything if profile.sources == "available"
                   else len(profile.sources) + (len(profile.optional_sources) if mirror else 0))
        drawn = () if profile.variance_sources == "available" else tuple(profile.variance_sources)
        variance = everything if profile.variance_sources == "available" else len(
            [s for s in drawn if s not in ("random-vocab", "self")])
        # a profile that draws sets for some methods only (variance_methods: the claims' pair) gives the rules
        # those methods' draws; simulating every method would overstate the pooled claims' power (F5, F6)
        drawn_methods = profile.methods if profile.variance_methods is None else profile.variance_methods
        methods = tuple((method_label(m), method_family(m["name"])) for m in drawn_methods
                        if _needs_calibration(m["name"]))
        suite = profile.suite
        return cls(profile.name, methods, sources, variance, profile.sets, tuple(profile.sample_counts),
                   len(suite["ppl_texts"]), len(suite["tasks"]), int(suite["task_limit"] or docs_if_unlimited),
                   len(profile.schedules), profile.replicates,
                   # random-vocab among the variance sources: drawn as many times as a real source (F2's draws)
                   random_sets=profile.sets if "random-vocab" in drawn else 1)


@dataclass(frozen=True)
class Noise:
    """The simulated measurement. Log perplexity of a run: its method's level, a source effect, a set effect
    and float-order noise (``float_log_ppl``, per family: the measured replicate SDs of benchmarks/noise-floor
    .jsonl are ~0.004 for pruning and 0.04-0.3 for GPTQ 3-bit; 80% of it shared by the texts). Correctness of
    document d in run r: 1[s_d + e_rd + shift_r > 0], with s_d ~ N(0, 1) the document's ease (shared by all
    runs) and e_rd ~ N(0, doc_noise^2) (independent flips: two runs disagree on ~20% of documents at
    doc_noise 0.5); a run-level shift moves accuracy by a chosen number of points."""
    float_log_ppl: tuple = (("pruning", 0.004), ("quantization", 0.06))
    set_log_ppl: float = 0.03              # set-to-set SD of log ppl within a source, where sets matter
    source_log_ppl: float = 0.05           # source-to-source SD of log ppl
    doc_noise: float = 0.5

    def floor(self, family: str) -> float:
        return dict(self.float_log_ppl).get(family, 0.01)


QUICK = Budget("quick")


def _acc_shift(points, doc_noise: float):
    """Latent shift that moves the accuracy of the document model from 0.5 by `points` (a share)."""
    return math.sqrt(1 + doc_noise ** 2) * sps.norm.ppf(np.clip(0.5 + np.asarray(points, dtype=float), 1e-6, 1 - 1e-6))


class _Sim:
    """Builds the tables the rules read (one row per run, ``ppl:<text>`` and ``acc:<task>`` columns) and the
    per-document frame, vectorised over runs and documents."""

    def __init__(self, budget: Budget, noise: Noise, rng: np.random.Generator):
        self.b, self.noise, self.rng = budget, noise, rng
        self.ease = rng.standard_normal((budget.tasks, budget.docs_per_task))
        self.texts = [f"text{j}" for j in range(budget.texts)]
        self.task_names = [f"task{j}" for j in range(budget.tasks)]
        self.level = np.log(30.0) + 0.3 * rng.standard_normal(budget.texts)
        self.count = 0

    def runs(self, spec: pd.DataFrame, run_log_ppl: np.ndarray, family_floor: np.ndarray,
             acc_shift: np.ndarray | None = None, docs: bool = False) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """`spec`: one row per run (method_label, family, calibration.* ...); `run_log_ppl`: each run's log ppl
        offset (without float noise); `family_floor`: each run's float SD; `acc_shift`: (runs, tasks) accuracy
        shifts in points/100."""
        b, rng, r = self.b, self.rng, len(spec)
        spec = spec.reset_index(drop=True).copy()
        spec["key"] = [f"sim{self.count + i}" for i in range(r)]
        self.count += r
        spec["method"] = spec["method_label"].str.split().str[0]
        shared = 0.8 * family_floor[:, None] * rng.standard_normal((r, 1))
        own = 0.6 * family_floor[:, None] * rng.standard_normal((r, b.texts))
        log_ppl = self.level[None] + run_log_ppl[:, None] + shared + own
        metrics = {f"ppl:{t}": np.exp(log_ppl[:, j]) for j, t in enumerate(self.texts)}
        shift = np.zeros((r, b.tasks)) if acc_shift is None else np.broadcast_to(acc_shift, (r, b.tasks))
        latent = _acc_shift(shift, self.noise.doc_noise)
        correct = (self.ease[None] + self.noise.doc_noise * rng.standard_normal((r, b.tasks, b.docs_per_task))
                   + latent[..., None]) > 0
        acc = correct.mean(axis=2)
        metrics |= {f"acc:{t}": acc[:, j] for j, t in enumerate(self.task_names)}
        metrics["acc:mean"] = acc.mean(axis=1)
        table = pd.concat([spec, pd.DataFrame(metrics)], axis=1)
        table["ppl:geomean"] = np.exp(log_ppl.mean(axis=1))
        documents = None
        if docs:
            n = b.docs_per_task
            documents = pd.DataFrame({
                "key": pd.Categorical.from_codes(np.repeat(np.arange(r), b.tasks * n), spec["key"].tolist()),
                "kind": "task",
                "name": pd.Categorical.from_codes(np.tile(np.repeat(np.arange(b.tasks), n), r), self.task_names),
                "doc_id": np.tile(np.arange(n), r * b.tasks),
                "correct": correct.reshape(-1).astype(float)})
        return table, documents

    def floor_table(self, families: dict) -> pd.DataFrame:
        """The noise-floor table (as ``noise_floor_table`` makes it) of each method's base run and its
        ``replicates`` float-order replicates: log perplexity with the family's float noise, accuracy with
        independent document flips."""
        b, rng, n = self.b, self.rng, self.b.replicates + 1
        codes = np.zeros(n, dtype=int)
        rows = []
        for label, family in families.items():
            f = self.noise.floor(family)
            log_ppl = (0.8 * f * rng.standard_normal((n, 1)) + 0.6 * f * rng.standard_normal((n, b.texts)))
            correct = (self.ease[None] + self.noise.doc_noise * rng.standard_normal((n, b.tasks, b.docs_per_task))) > 0
            acc = correct.mean(axis=2)
            for metric, values in (("log_ppl", log_ppl.mean(axis=1)), ("log_ppl:text", log_ppl),
                                   ("acc:mean", acc.mean(axis=1)), ("acc:task", acc)):
                sd, dof, runs, note = _pooled_sd(codes, values)
                rows.append({"method_label": label, "family": family, "metric": metric, "sd": sd, "df": dof,
                             "runs": runs, "note": note})
        return pd.DataFrame(rows)


def _grid(budget: Budget, methods, sources: int, sets: int, set0_sources: int = 0) -> pd.DataFrame:
    """Run specs: each method x source x set (sources beyond `set0_sources`... all at set 0 when sets == 1)."""
    rows = [{"method_label": label, "family": family, "calibration.source": f"src{s}", "calibration.set_index": k,
             "calibration.num_samples": 16}
            for label, family in methods for s in range(sources) for k in range(sets)]
    return pd.DataFrame(rows)


def _families(methods) -> dict:
    return {label: family for label, family in methods}


def _method_effects(rng, spec: pd.DataFrame, column: str, sd: float) -> np.ndarray:
    """A random effect per distinct (method, `column`) value, e.g. a source effect shared by a source's sets."""
    codes = pd.factorize(spec["method_label"] + "|" + spec[column].astype(str))[0]
    return sd * rng.standard_normal(codes.max() + 1)[codes]


def _sim_f1(budget, noise, rng, scenario):
    """Every real set of each method; the set and source effects per family depend on the scenario."""
    sim = _Sim(budget, noise, rng)
    methods = budget.methods
    base = _grid(budget, methods, budget.sources, 1)
    extra = _grid(budget, methods, budget.variance_sources, budget.sets)
    extra = extra[extra["calibration.set_index"] > 0]
    spec = pd.concat([base, extra], ignore_index=True)
    family = spec["family"].to_numpy()
    if scenario == "null":
        # no calibration effect; the adversarial case: pruning's float noise is the larger
        noise = replace(noise, float_log_ppl=(("pruning", 0.02), ("quantization", 0.01)))
        sim.noise = noise
        effect = np.zeros(len(spec))
    else:
        # quantization's set effect `set_log_ppl`; pruning's total spread exp(theta) times quantization's
        theta = 0.0 if scenario == "equal" else CLAIMED["F1"]
        total_q = math.hypot(noise.set_log_ppl, noise.floor("quantization") * math.sqrt(0.64 + 0.36 / budget.texts))
        fp = noise.floor("pruning") * math.sqrt(0.64 + 0.36 / budget.texts)
        set_p = math.sqrt(max((math.exp(theta) * total_q) ** 2 - fp ** 2, 0.0))
        sd = np.where(family == "pruning", set_p, noise.set_log_ppl)
        effect = sd * rng.standard_normal(len(spec))
    floors = np.array([noise.floor(f) for f in family])
    table, _ = sim.runs(spec, effect, floors)
    source_table = table[table["calibration.set_index"] == 0]
    variance_table = table[table["calibration.source"].isin([f"src{s}" for s in range(budget.variance_sources)])]
    floor = sim.floor_table(_families(methods))
    return dict(source_table=source_table, variance_table=variance_table, floor=floor)


def _sim_f2(budget, noise, rng, scenario):
    """Real sources at set 0 and the variance sources' other sets, random-vocab at set 0, per method. A draw
    (the calibration data) is shared by every method: its source and set effects are common to all methods
    (70%) with a method-specific part. Null: no source effect at all, random-vocab one more draw; claimed:
    random-vocab worse by 0.3 log perplexity and 4 points (above the claimed margins 0.2 and 2)."""
    sim = _Sim(budget, noise, rng)
    methods = budget.methods
    base = _grid(budget, methods, budget.sources, 1)
    extra = _grid(budget, methods, budget.variance_sources, budget.sets)
    extra = extra[extra["calibration.set_index"] > 0]
    spec = pd.concat([base, extra, pd.DataFrame([{"method_label": m, "family": f, "calibration.source": "random-vocab",
                                                  "calibration.set_index": k, "calibration.num_samples": 16}
                                                 for m, f in methods for k in range(budget.random_sets)])],
                     ignore_index=True)
    random = (spec["calibration.source"] == "random-vocab").to_numpy()
    source_code = pd.factorize(spec["calibration.source"])[0]
    draw_code = pd.factorize(spec["calibration.source"] + "|" + spec["calibration.set_index"].astype(str))[0]
    method_draw = pd.factorize(spec["method_label"] + "|" + pd.Series(draw_code).astype(str))[0]
    shared, own = math.sqrt(0.7), math.sqrt(0.3)
    source_sd = 0.0 if scenario == "null" else noise.source_log_ppl
    draw = lambda codes, sd: sd * rng.standard_normal(codes.max() + 1)[codes]            # noqa: E731
    log_ppl = (draw(source_code, source_sd) + shared * draw(draw_code, noise.set_log_ppl)
               + own * draw(method_draw, noise.set_log_ppl))
    acc = (-0.2 * draw(source_code, source_sd) - 0.2 * (shared * draw(draw_code, noise.set_log_ppl)
                                                         + own * draw(method_draw, noise.set_log_ppl)))
    if scenario == "claimed":
        log_ppl = log_ppl + 0.3 * random
        acc = acc - 0.04 * random
    floors = np.array([noise.floor(f) for f in spec["family"]])
    table, _ = sim.runs(spec, log_ppl, floors, acc[:, None] * np.ones((1, budget.tasks)))
    random = table["calibration.source"] == "random-vocab"
    source_table = table[(table["calibration.set_index"] == 0) | random]
    variance_table = table[table["calibration.source"].isin([f"src{s}" for s in range(budget.variance_sources)])]
    return dict(source_table=source_table, variance_table=variance_table)


def _sim_f3(budget, noise, rng, scenario):
    """log ppl = a + b 10^(-log2(n / n1) / D) + set and float noise at each sample count; D 3 doublings for
    both families under the null, 4 (pruning) against 2 (quantization) under the claim."""
    sim = _Sim(budget, noise, rng)
    methods = [m for m in budget.methods if m[0] in pick_methods(pd.DataFrame(
        [{"method": l.split()[0], "method_label": l, "family": f} for l, f in budget.methods]))[0].values()]
    counts = np.asarray(budget.sample_counts, dtype=float)
    rows = [{"method_label": label, "family": family, "calibration.source": "src0", "calibration.set_index": 0,
             "calibration.num_samples": int(n)} for label, family in methods for n in counts]
    spec = pd.DataFrame(rows)
    d = {"pruning": 3.0, "quantization": 3.0} if scenario == "null" else {"pruning": 4.0, "quantization": 2.0}
    n = spec["calibration.num_samples"].to_numpy(float)
    dd = spec["family"].map(d).to_numpy(float)
    curve = 0.3 * 10.0 ** (-np.log2(n / counts.min()) / dd)
    if scenario == "flat":
        curve = np.zeros_like(curve)
    effect = curve + noise.set_log_ppl * rng.standard_normal(len(spec))
    floors = np.array([noise.floor(f) for f in spec["family"]])
    table, _ = sim.runs(spec, effect, floors)
    return dict(count_table=table, floor=sim.floor_table(_families(methods)))


def _sim_f4(budget, noise, rng, scenario):
    """Per method, real sources at set 0 (equal accuracy) and self-generated schedules 1 point worse than them
    (null: the equivalence margin) or equal (the claim), with documents for every run."""
    sim = _Sim(budget, noise, rng)
    methods = budget.methods
    real = _grid(budget, methods, budget.sources, 1)
    real["kind"] = "real"
    real["data"] = real["calibration.source"]
    selfgen = pd.DataFrame([{"method_label": label, "family": family, "calibration.source": "self",
                             "calibration.set_index": 0, "calibration.num_samples": 16, "kind": "self",
                             "data": f"self (t{j})"} for label, family in methods for j in range(budget.schedules)])
    spec = pd.concat([real, selfgen], ignore_index=True)
    diff = -CLAIMED["F4"] if scenario == "null" else 0.0
    acc = np.where(spec["kind"].to_numpy() == "self", diff, 0.0)[:, None] * np.ones((1, budget.tasks))
    floors = np.array([noise.floor(f) for f in spec["family"]])
    table, documents = sim.runs(spec, np.zeros(len(spec)), floors, acc, docs=True)
    source_table = table[table["kind"] == "real"].drop(columns=["kind", "data"])
    base = table[(table["kind"] == "real") & (table["calibration.source"] == "src0")]
    self_table = pd.concat([table[table["kind"] == "self"], base], ignore_index=True)
    # no floor table: F4 reads float noise through the documents (see f4_self_generated)
    return dict(source_table=source_table, self_table=self_table, documents=documents, floor=None)


def _flip_variance(doc_noise: float) -> float:
    """Mean over documents of p_d (1 - p_d) in the document model: the chance that two independent runs split
    on a document, halved (1/4 - arcsin(r) / (2 pi) with r = 1 / (1 + doc_noise^2))."""
    return 0.25 - math.asin(1 / (1 + doc_noise ** 2)) / (2 * math.pi)


def _sim_accuracy_sets(budget, noise, rng, task_sd: float, shared_sd: float, spearman: float = 0.0,
                       sources: int | None = None):
    """Seed-variance cells (method x variance source x set) with task-specific (`task_sd`) and shared
    (`shared_sd`) set effects on accuracy (points/100). The shared effect is correlated with the run's
    -log ppl signal (source and set effects) so that the *measured* values (float noise on perplexity,
    document flips on accuracy) have Spearman `spearman` where that is reachable."""
    sim = _Sim(budget, noise, rng)
    spec = _grid(budget, budget.methods, budget.variance_sources if sources is None else sources, budget.sets)
    r = len(spec)
    # -log ppl: a set effect (what the claim is about: the draw, the source held fixed) and a source effect
    set_effect = rng.standard_normal(r)
    signal = -(noise.set_log_ppl * set_effect
               + _method_effects(rng, spec, "calibration.source", noise.source_log_ppl))
    floors = np.array([noise.floor(f) for f in spec["family"]])
    shared = np.zeros(r)
    if shared_sd > 0:
        set_var = noise.set_log_ppl ** 2
        rel_ppl = set_var / (set_var + floors ** 2 * (0.64 + 0.36 / budget.texts))
        acc_noise = _flip_variance(noise.doc_noise) / (budget.tasks * budget.docs_per_task)
        rel_acc = shared_sd ** 2 / (shared_sd ** 2 + task_sd ** 2 / budget.tasks + acc_noise)
        pearson = 2 * math.sin(math.pi * spearman / 6)
        latent = np.minimum(1.0, pearson / np.sqrt(rel_ppl * rel_acc))
        shared = shared_sd * (latent * -set_effect + np.sqrt(1 - latent ** 2) * rng.standard_normal(r))
    shifts = shared[:, None] + task_sd * rng.standard_normal((r, budget.tasks))
    table, documents = sim.runs(spec, -signal, floors, shifts, docs=True)
    return table, documents, sim.floor_table(_families(budget.methods))


def _sim_f5(budget, noise, rng, scenario):
    """Null: no set effect on accuracy (independent document flips only); 'shared': a set effect shared by all
    tasks (SD 2 points), which moves the mean as much as each task; claimed: task-specific set effects with
    tau^2 (1 - 1/T) = 3 points^2."""
    t = budget.tasks
    task_sd = math.sqrt(CLAIMED["F5"] * t / max(t - 1, 1)) if scenario == "claimed" else 0.0
    shared_sd = 0.02 if scenario == "shared" else 0.0
    table, documents, floor = _sim_accuracy_sets(budget, noise, rng, task_sd, shared_sd)
    return dict(variance_table=table, documents=documents, floor=floor)


def _sim_f6(budget, noise, rng, scenario):
    """Null: no set effect on accuracy; 'boundary': accuracy moves across sets (SD 2 points) with Spearman 0.5
    to -log ppl (the claim's bound); claimed: it moves independently of perplexity (rho 0)."""
    sets = {"null": (0.0, 0.0), "boundary": (0.02, CLAIMED["F6"]), "claimed": (0.02, 0.0)}[scenario]
    sources = max(budget.variance_sources, 1)
    table, documents, floor = _sim_accuracy_sets(budget, noise, rng, 0.0, sets[0], sets[1], sources)
    return dict(variance_table=table, documents=documents, floor=floor)


SIMULATORS = {"F1": _sim_f1, "F2": _sim_f2, "F3": _sim_f3, "F4": _sim_f4, "F5": _sim_f5, "F6": _sim_f6}
RULE_OF = {"F1": f1_sensitivity, "F2": f2_random_worst, "F3": f3_plateau, "F4": f4_self_generated,
           "F5": f5_task_swing, "F6": f6_ppl_vs_accuracy}
# Scenarios without the claimed effect, on which "holds" must stay at or below alpha.
NULLS = {"F1": ("null", "equal"), "F2": ("null",), "F3": ("null", "flat"), "F4": ("null",), "F5": ("null", "shared"),
         "F6": ("null", "boundary")}


def simulate_study(claim: str, budget: Budget, scenario: str = "claimed", *, seed: int = 0,
                   noise: Noise | None = None) -> dict:
    """The inputs of `claim`'s rule (keyword arguments) for one simulated study at `budget`: "claimed" (the
    claimed effect) or one of ``NULLS[claim]``."""
    return SIMULATORS[claim](budget, noise or Noise(), np.random.default_rng(seed), scenario)


def _apply(claim: str, inputs: dict, **kwargs) -> dict:
    rule = RULE_OF[claim]
    if claim == "F1":
        return rule(inputs["source_table"], inputs["variance_table"], floor=inputs["floor"], **kwargs)
    if claim == "F2":
        return rule(inputs["source_table"], inputs["variance_table"], **kwargs)
    if claim == "F3":
        return rule(inputs["count_table"], inputs["floor"], n_boot=kwargs.pop("n_boot", 200), **kwargs)
    if claim == "F4":
        return rule(inputs["source_table"], inputs["self_table"], inputs["documents"], inputs["floor"], **kwargs)
    if claim == "F5":
        return rule(inputs["variance_table"], inputs["documents"], inputs["floor"], **kwargs)
    return rule(inputs["variance_table"], None, inputs["documents"], inputs["floor"], **kwargs)


def simulate(claim: str, budget: Budget, scenario: str = "claimed", *, n_sims: int = 200, seed: int = 0,
             noise: Noise | None = None) -> dict:
    """Share of `n_sims` seeded simulated studies at `budget` in which `claim`'s rule says each verdict."""
    counts = dict.fromkeys(VERDICTS, 0)
    for i in range(n_sims):
        row = _apply(claim, simulate_study(claim, budget, scenario, seed=seed * 100_003 + i, noise=noise))
        counts[row["verdict"]] += 1
    return {"claim": claim, "budget": budget.name, "scenario": scenario, "n_sims": n_sims,
            **{v: counts[v] / n_sims for v in VERDICTS}}


def simulated_power(claim: str, budget: Budget, *, n_sims: int = 200, seed: int = 0, noise: Noise | None = None) -> float:
    """The rule's power: the share of simulated studies with the claimed effect (``CLAIMED``) at `budget`
    whose verdict is "holds" (an untestable budget has power 0 by construction)."""
    return simulate(claim, budget, "claimed", n_sims=n_sims, seed=seed, noise=noise)["holds"]


def power_table(budgets: list[Budget], claims=tuple(CLAIMS), *, n_sims: int = 200, seed: int = 0,
                noise: Noise | None = None, nulls: bool = True, cache=None) -> pd.DataFrame:
    """For each budget and claim: power (share 'holds' with the claimed effect), the shares 'does not hold'
    and untestable with the effect, and (``nulls``) the largest share 'holds' over the claim's null scenarios.
    `cache`: a CSV path; rows computed before for the same budget, noise, n_sims and seed are reused."""
    from pathlib import Path
    noise = noise or Noise()
    cached = pd.DataFrame()
    if cache is not None and Path(cache).exists():
        try:
            cached = pd.read_csv(cache)
        except (OSError, ValueError, pd.errors.ParserError):
            cached = pd.DataFrame()
    rows = []
    for budget in budgets:
        signature = repr((budget, noise, n_sims, seed, nulls))
        for claim in claims:
            if len(cached) and "signature" in cached:
                hit = cached[(cached["signature"] == signature) & (cached["claim"] == claim)]
                if len(hit):
                    rows.append(hit.iloc[0].to_dict())
                    continue
            claimed = simulate(claim, budget, "claimed", n_sims=n_sims, seed=seed, noise=noise)
            row = {"budget": budget.name, "claim": claim, "power": claimed["holds"],
                   "does_not_hold_when_true": claimed["does not hold"], "untestable": claimed[UNTESTABLE],
                   "n_sims": n_sims}
            if nulls:
                row["holds_on_null"] = max(simulate(claim, budget, s, n_sims=n_sims, seed=seed + 1, noise=noise)["holds"]
                                           for s in NULLS[claim])
            rows.append(row | {"signature": signature})
    table = pd.DataFrame(rows)
    if cache is not None:
        from .files import atomic_write_text
        keep = cached[~cached["signature"].isin(table["signature"])] if len(cached) and "signature" in cached else None
        atomic_write_text(Path(cache), pd.concat([keep, table]).to_csv(index=False) if keep is not None
                          else table.to_csv(index=False))
    return table.drop(columns=["signature"])


# -- figures: one per claim, every point with its uncertainty --------------------------------------------------

Z95 = float(sps.norm.ppf(0.975))


def _color(label: str) -> str:
    from . import plots
    if hasattr(plots, "method_color"):
        return plots.method_color(label)
    return {"pruning": "#0072B2", "quantization": "#D55E00"}.get(str(label), "#666666")


def _order(labels) -> list:
    from . import plots
    labels = list(dict.fromkeys(labels))
    return plots.method_order(labels) if hasattr(plots, "method_order") else sorted(labels)


def _titled(fig, title: str, subtitle: str):
    from . import plots
    fig.tight_layout()
    return plots._finish(fig, title, subtitle)


def _verdict_line(row: dict | pd.Series | None) -> str:
    if row is None:
        return ""
    return f"verdict: {row['verdict']}" + (f" (p {_fmt(row['p_value'])}, Holm p {_fmt(row.get('p_holm'))})"
                                           if np.isfinite(float(row.get("p_value", np.nan))) else "")


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.4", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def figure_f1(source_table, variance_table, documents=None, floor=None, *, verdict=None, model: str = "",
              measure_name: str = "log_ppl"):
    """SD of the measure across real calibration sets per method (95% chi-square interval) against the float
    floor (SD of the replicate runs), log scale."""
    import matplotlib.pyplot as plt
    spreads = f1_spreads(source_table, variance_table, documents, floor, measure_name)
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    if spreads.empty:
        _empty(ax, "no real calibration runs of a calibrated method")
    else:
        order = _order(spreads["method_label"])
        spreads = spreads.set_index("method_label").loc[order].reset_index()
        x = np.arange(len(spreads))
        for i, r in spreads.iterrows():
            color = _color(r.method_label)
            if np.isfinite(r.sd) and r.sd > 0:
                ax.errorbar([i], [r.sd], yerr=[[r.sd - r.sd_low], [r.sd_high - r.sd]], fmt="o", color=color,
                            capsize=3, ms=6, label="SD across calibration sets (95% interval)" if i == 0 else None)
            if np.isfinite(r.floor_sd) and r.floor_sd > 0:
                ax.plot([i - 0.25, i + 0.25], [r.floor_sd] * 2, color=color, lw=2, ls=":",
                        label="float-noise floor (SD of the replicate runs)" if i == 0 else None)
                ax.annotate(f"floor: {r.floor_runs} runs", xy=(i + 0.27, r.floor_sd), fontsize=7, color=color,
                            va="center")
        ax.set_yscale("log")
        ax.set_xticks(x, [f"{r.method_label}\n({r.runs} sets)" for r in spreads.itertuples()], fontsize=8)
        ax.set_ylabel(f"SD of {MEASURES[measure_name]}")
        ax.legend(fontsize=7.5, loc="best")
    return _titled(fig, f"F1 · sensitivity to the calibration data ({model})",
                   f"spread of {MEASURES[measure_name]} across every real calibration set; {_verdict_line(verdict)}")


def figure_f2(source_table, variance_table=None, *, verdict=None, model: str = ""):
    """Random-vocab minus each real source per method (log perplexity; accuracy points), over their draws,
    with 95% t intervals from the draw-to-draw SD; the claimed margin dashed."""
    import matplotlib.pyplot as plt
    frame = f2_frame(source_table, variance_table)
    measures = [m for m in F2_MEASURES if len(frame) and m in set(frame["measure"])] or ["log_ppl"]
    fig, axes = plt.subplots(1, len(measures), figsize=(5.2 * len(measures), 3.9), squeeze=False)
    for ax, measure in zip(axes[0], measures):
        part = frame[frame["measure"] == measure] if len(frame) else frame
        if part.empty:
            _empty(ax, "needs random-vocab and a real source")
            continue
        scale, unit = (1.0, "log perplexity") if measure == "log_ppl" else (100.0, "accuracy points")
        sources = sorted(part["source"].unique())
        labels = _order(part["method_label"])
        width = 0.7 / max(len(labels), 1)
        for j, label in enumerate(labels):
            rows = part[part["method_label"] == label].set_index("source").reindex(sources)
            x = np.arange(len(sources)) - 0.35 + width * (j + 0.5)
            y = scale * rows["difference"].to_numpy(float)
            low, high = scale * rows["ci_low"].to_numpy(float), scale * rows["ci_high"].to_numpy(float)
            ok = np.isfinite(low) & np.isfinite(high)
            ax.errorbar(x, y, yerr=np.where(ok, [y - low, high - y], 0), fmt="o", color=_color(label), capsize=2.5,
                        ms=5, label=f"{label} (random-vocab: {int(rows['n_random'].max())} draw(s))")
        ax.axhline(0, color="0.4", lw=1)
        ax.axhline(scale * F2_MARGIN[measure], color="0.4", lw=0.8, ls="--")
        ax.annotate("claimed margin", xy=(1, scale * F2_MARGIN[measure]), xycoords=("axes fraction", "data"),
                    ha="right", va="bottom", fontsize=7, color="0.4")
        ax.set_xticks(np.arange(len(sources)), sources, rotation=30, ha="right", fontsize=8)
        sign = "" if measure == "log_ppl" else "-"
        ax.set_ylabel(f"random-vocab - source, {sign}{unit}\n(> 0: random-vocab worse)", fontsize=8.5)
        ax.set_title(F2_MEASURES[measure], fontsize=10)
    axes[0][-1].legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    return _titled(fig, f"F2 · is random-vocab the worst calibration data? ({model})",
                   "bars: 95% t intervals from the draw-to-draw SD (sets of one source, float noise included); "
                   f"{_verdict_line(verdict)}")


def figure_f3(count_table, floor=None, *, verdict=None, model: str = "", dense_log_ppl: float | None = None):
    """Log perplexity against the sample count per method: points with the float floor's 95% band, the fitted
    saturation curve, and where it reaches 90% of its improvement (bootstrap 95% interval)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.8, 4.0))
    table = _calibrated(count_table) if count_table is not None else pd.DataFrame()
    if table.empty or "calibration.num_samples" not in table:
        _empty(ax, "no sample-count runs")
        return _titled(fig, f"F3 · sample count ({model})", _verdict_line(verdict))
    fits = f3_fits(count_table, floor)["fits"]
    table = table.assign(value=log_ppl(table))
    for label in _order(table["method_label"]):
        part = table[table["method_label"] == label].sort_values("calibration.num_samples")
        color = _color(label)
        fl = _floor(floor, label, "log_ppl")
        err = fl.half_width()
        ax.errorbar(part["calibration.num_samples"], part["value"], yerr=err, fmt="o", color=color, capsize=2.5,
                    ms=5, label=label + ("" if fl.status == "ok" else " (no floor measured)"))
        fit = next((f for f in fits.values() if f["label"] == label and "d" in f), None)
        if fit is not None:
            grid = np.geomspace(fit["n1"], fit["n_max"], 100)
            ax.plot(grid, _curve(grid, fit["n1"], fit["a"], fit["b"], fit["d"]), color=color, lw=1.2)
            n90 = fit["n1"] * 2 ** fit["d"]
            lo, hi = fit["n1"] * 2 ** np.quantile(fit["boot"], [0.025, 0.975])
            y = fit["a"] + 0.1 * fit["b"]
            ax.errorbar([min(n90, fit["n_max"] * 8)], [y], xerr=[[max(min(n90, fit["n_max"] * 8) - lo, 0)],
                                                                  [max(min(hi, fit["n_max"] * 8) - min(n90, fit["n_max"] * 8), 0)]],
                        fmt="|", color=color, ms=12, capsize=3)
    if dense_log_ppl is not None and np.isfinite(dense_log_ppl):
        ax.axhline(dense_log_ppl, ls="--", color="0.4", lw=1)
        ax.annotate("dense", xy=(1, dense_log_ppl), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                    fontsize=7.5, color="0.4")
    ax.set_xscale("log", base=2)
    counts = sorted(table["calibration.num_samples"].unique())
    ax.set_xticks(counts, [f"{c:g}" for c in counts])
    ax.set_xlabel("calibration samples")
    ax.set_ylabel("log perplexity (mean over texts)")
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    return _titled(fig, f"F3 · where each method stops improving ({model})",
                   "lines: fitted a + b n^-c; '|' with bar: 90% of the fitted improvement reached (bootstrap 95% "
                   f"interval); bars on points: ±t float-floor SD (t on its df); {_verdict_line(verdict)}")


def figure_f4(source_table, self_table, documents=None, floor=None, *, verdict=None, model: str = ""):
    """Self-generated minus best real source per method (points), paired over documents, 90% CI (TOST), with
    the ±1 point band."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    try:
        frame = f4_frame(source_table, self_table, documents, floor)
    except (KeyError, ValueError):
        frame = pd.DataFrame()
    ax.axhspan(-100 * CLAIMED["F4"], 100 * CLAIMED["F4"], color="0.85", zorder=0, label="±1 point (claim)")
    ax.axhline(0, color="0.4", lw=0.8)
    if frame.empty or "difference" not in frame or frame["difference"].isna().all():
        _empty(ax, "no per-document records of the compared runs")
    else:
        frame = frame.dropna(subset=["difference"])
        order = _order(frame["method_label"])
        frame = frame.set_index("method_label").loc[order].reset_index()
        for i, r in frame.iterrows():
            ax.errorbar([i], [100 * r.difference], yerr=[[100 * (r.difference - r.ci_low)], [100 * (r.ci_high - r.difference)]],
                        fmt="D", color=_color(r.method_label), capsize=4, ms=6)
        ax.set_xticks(range(len(frame)), [f"{r.method_label}\n{r.best_self} vs {r.best_real}" for r in frame.itertuples()],
                      fontsize=7.5)
        ax.legend(fontsize=7.5, loc="best")
    ax.set_ylabel("mean accuracy, self - best real (points)")
    return _titled(fig, f"F4 · self-generated vs the best real calibration data ({model})",
                   f"paired over documents; bars: 90% CI (TOST at ±1 point); {_verdict_line(verdict)}")


def figure_f5(variance_table, documents=None, floor=None, *, docs_per_task=None, verdict=None, model: str = ""):
    """Per (method, source): between-set variance of single tasks (mean over tasks) and of the mean accuracy,
    total against document-flip noise (log scale); and the cells' differences beyond noise with their mean's
    95% CI."""
    import matplotlib.pyplot as plt
    cells = f5_cells(variance_table, documents, _docs_per_task(documents, docs_per_task))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0), gridspec_kw={"width_ratios": [1.6, 1]})
    if cells.empty or (cells["noise_from"] == "none").all():
        for ax in axes:
            _empty(ax, "needs >= 2 sets per (method, source) and per-document records or documents per task")
        return _titled(fig, f"F5 · single tasks vs the task mean ({model})", _verdict_line(verdict))
    cells = cells.assign(cell=cells["method_label"] + " | " + cells["calibration.source"].astype(str))
    x = np.arange(len(cells))
    ax = axes[0]
    for column, noise, marker, name in (("task_total", "task_noise", "o", "single task (mean over tasks)"),
                                        ("mean_total", "mean_noise", "s", "mean accuracy")):
        colors = [_color(label) for label in cells["method_label"]]
        shift = -0.15 if marker == "o" else 0.15
        ax.scatter(x + shift, 1e4 * cells[column].clip(lower=1e-8), c=colors, marker=marker, s=30,
                   label=f"{name}: between-set variance")
        ax.scatter(x + shift, 1e4 * cells[noise].clip(lower=1e-8), facecolors="none", edgecolors=colors, marker=marker,
                   s=30, label=f"{name}: document-flip noise")
    ax.set_yscale("log")
    ax.set_xticks(x, cells["cell"], rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("variance across sets (points²)")
    ax.legend(fontsize=7, loc="best")
    ax = axes[1]
    for i, r in cells.iterrows():
        ax.scatter([0.0 + 0.06 * (i - len(cells) / 2) / max(len(cells), 1)], [1e4 * r.theta], color=_color(r.method_label),
                   s=18, alpha=0.8)
    theta = cells["theta"].to_numpy(float)
    if len(theta) >= 2:
        se = theta.std(ddof=1) / math.sqrt(len(theta))
        t = float(sps.t.ppf(0.975, len(theta) - 1))
        ax.errorbar([0.3], [1e4 * theta.mean()], yerr=[[1e4 * t * se]], fmt="D", color="0.2", capsize=4,
                    label="mean over cells, 95% CI")
    ax.axhline(0, color="0.4", lw=0.8)
    ax.axhline(1e4 * CLAIMED["F5"], color="0.4", lw=0.8, ls="--", label="claimed (3 points²)")
    ax.set_xlim(-0.4, 0.7)
    ax.set_xticks([])
    ax.set_ylabel("task - mean variance beyond noise (points²)")
    ax.legend(fontsize=7, loc="best")
    return _titled(fig, f"F5 · do single tasks swing more than the task mean? ({model})",
                   f"{int(cells['sets'].median())} sets per (method, source); noise from "
                   f"{cells['noise_from'].iloc[0]}; {_verdict_line(verdict)}")


def figure_f6(variance_table, source_table=None, documents=None, floor=None, *, docs_per_task=None, verdict=None,
              model: str = ""):
    """Every real calibration run: -log perplexity against mean accuracy, both centred on the method's mean;
    bars: 95% intervals (stored task SEs or binomial for accuracy, float floor for perplexity)."""
    import matplotlib.pyplot as plt
    runs = f6_frame(variance_table, source_table)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if runs.empty:
        _empty(ax, "no real calibration runs with task accuracy")
        return _titled(fig, f"F6 · perplexity vs accuracy across calibration sets ({model})", _verdict_line(verdict))
    n_docs = _docs_per_task(documents, docs_per_task)
    tasks = len(task_columns(runs))
    for label in _order(runs["method_label"]):
        part = runs[runs["method_label"] == label]
        if "se:acc:mean" in part and part["se:acc:mean"].notna().any():
            yerr = Z95 * part["se:acc:mean"].to_numpy(float)
        elif n_docs and tasks:
            p = part["acc:mean"].to_numpy(float)
            yerr = Z95 * np.sqrt(p * (1 - p) / (n_docs * tasks))
        else:
            yerr = None
        fl = _floor(floor, label, "log_ppl")
        xerr = fl.half_width() if fl.status == "ok" else None
        ax.errorbar(part["neg_log_ppl_dev"], 100 * part["acc:mean_dev"],
                    yerr=None if yerr is None else 100 * yerr, xerr=xerr, fmt="o", color=_color(label), ms=4.5,
                    capsize=2, alpha=0.85, label=f"{label} ({len(part)} sets)")
    ax.axhline(0, color="0.7", lw=0.8)
    ax.axvline(0, color="0.7", lw=0.8)
    ax.set_xlabel("-log perplexity, minus its (method, source) mean (right: better)")
    ax.set_ylabel("mean accuracy, minus its (method, source) mean (points)")
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    return _titled(fig, f"F6 · does perplexity rank calibration sets as accuracy does? ({model})",
                   "one dot per calibration set, the source held fixed; bars: 95% intervals of one run "
                   f"(accuracy: stored SEs or binomial; perplexity: float floor); {_verdict_line(verdict)}")


FIGURES = {"F1": figure_f1, "F2": figure_f2, "F3": figure_f3, "F4": figure_f4, "F5": figure_f5, "F6": figure_f6}


# -- prose generated from the verdicts ------------------------------------------------------------------------

def verdict_table(verdicts_frame: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader needs, rounded: claim, model, verdict, effect with its CI, p, Holm p, MDE, smallest
    p and what would decide it."""
    keep = ["model", "claim", "verdict", "effect", "effect_size", "ci_low", "ci_high", "p_value", "p_holm", "mde",
            "smallest_p", "what_would_decide"]
    table = verdicts_frame[[c for c in keep if c in verdicts_frame]].copy()
    return table.round({"effect_size": 3, "ci_low": 3, "ci_high": 3, "p_value": 4, "p_holm": 4, "mde": 3,
                        "smallest_p": 4})


def budget_paragraph(verdicts_frame: pd.DataFrame, power: pd.DataFrame | None = None, budget: str = "") -> str:
    """'What this budget can show': per claim, testable or not, the MDE against the claimed effect, and the
    simulated power of the rule at this budget."""
    lines = []
    for claim in CLAIMS:
        rows = verdicts_frame[verdicts_frame["claim"] == claim]
        if rows.empty:
            continue
        untestable = rows["verdict"] == UNTESTABLE
        text = f"**{claim}** ({UNITS[claim]}; claimed {CLAIMED[claim]:.3g}): "
        if untestable.all():
            text += "untestable here: " + "; ".join(dict.fromkeys(
                f"{r.summary.removeprefix('untestable: ')} -> {r.what_would_decide}" for r in rows.itertuples()))
        else:
            mdes = rows["mde"].dropna()
            text += (f"testable (MDE {', '.join(_fmt(m) for m in mdes)})" if len(mdes) else "testable")
        if power is not None and len(power):
            hit = power[(power["claim"] == claim)]
            if len(hit):
                text += "; simulated power " + ", ".join(f"{r.budget} {100 * r.power:.0f}%" for r in hit.itertuples())
        lines.append(text)
    head = f"With the `{budget}` budget: " if budget else ""
    return head + "  \n".join(lines)


def discussion(verdicts_frame: pd.DataFrame, power: pd.DataFrame | None = None) -> str:
    """A closing paragraph generated from the verdicts: what held, what did not, what could not be decided and
    what budget would decide it."""
    parts = []
    for verdict, words in (("holds", "held"), ("does not hold", "did not hold"), ("inconclusive", "were inconclusive"),
                           (UNTESTABLE, "were untestable at this budget")):
        rows = verdicts_frame[verdicts_frame["verdict"] == verdict]
        if rows.empty:
            continue
        who = ", ".join(f"{r.claim}" + (f" ({r.model})" if "model" in rows and verdicts_frame["model"].nunique() > 1
                                        else "") for r in rows.itertuples())
        parts.append(f"{who} {words}")
    text = "Of the six claims, " + "; ".join(parts) + "."
    decided = verdicts_frame[verdicts_frame["verdict"].isin(["holds", "does not hold"])]
    for r in decided.itertuples():
        text += (f" {r.claim}: {r.verdict}, effect {_fmt(r.effect_size)} {UNITS[r.claim]} (CI {_fmt(r.ci_low)} to "
                 f"{_fmt(r.ci_high)}, Holm p {_fmt(r.p_holm)}).")
    open_rows = verdicts_frame[verdicts_frame["verdict"].isin(["inconclusive", UNTESTABLE])]
    needs = list(dict.fromkeys(f"{r.claim}: {r.what_would_decide}" for r in open_rows.itertuples()
                               if isinstance(r.what_would_decide, str) and r.what_would_decide))
    if needs:
        text += " What would decide the rest: " + "; ".join(needs) + "."
    if power is not None and len(power):
        claims = set(verdicts_frame["claim"])
        per = power[power["claim"].isin(claims)]
        text += (" Simulated power of the rules (share 'holds' when the claimed effect is there): "
                 + "; ".join(f"{claim} " + ", ".join(f"{100 * r.power:.0f}% at {r.budget}" for r in part.itertuples())
                             for claim, part in per.groupby("claim")) + ".")
        if "holds_on_null" in per:
            text += (f" Without the effect they say 'holds' at most {100 * per['holds_on_null'].max():.1f}% of the "
                     "time.")
    text += (" A verdict here is about these models at this budget; 'untestable' is a statement about the "
             "budget, not the claim.")
    return text


# -- the verdicts' inputs from a store (06_findings, and `calib study --verdicts` on a partial sweep) ---------

@dataclass
class VerdictInputs:
    """What ``verdicts`` reads for one model: its verdict grids' tables, their per-document records, the
    float-noise floor, and how many of each grid's runs the store holds (``completeness``)."""
    model: str
    tables: dict
    documents: pd.DataFrame | None
    floor: pd.DataFrame
    docs_per_task: int | None
    completeness: pd.DataFrame = field(default_factory=pd.DataFrame)   # model, grid, asked, stored
    note: str = ""                                                      # why per-document records are missing


def verdict_inputs(profile, model: str, store, *, run: bool = True, backend: str | None = None) -> VerdictInputs:
    """The verdict grids (``study.planning.VERDICT_GRIDS``) of `model` on `profile`'s findings budget
    (``study.findings_profile``). ``run=True`` (06_findings) computes the missing runs first; ``run=False`` (the
    interim view of a long sweep) reads only what is stored: a claim whose runs are missing is then
    "untestable at this budget" with what it needs, by the same rules."""
    from .errors import StoreError
    from .study import GRIDS, findings_profile, run as run_grid
    from .study.planning import VERDICT_GRIDS
    cfg = findings_profile(profile, model)
    tables, rows = {}, []
    for name in VERDICT_GRIDS:
        grid = GRIDS[name](cfg)
        if run:
            run_grid(grid, store, backend or cfg.backend)
        tables[name] = grid.results(store)
        stored = len(set(tables[name]["key"])) if len(tables[name]) else 0
        rows.append({"model": model, "grid": name, "asked": len(grid.specs), "stored": stored})
    keys = list(dict.fromkeys(k for t in tables.values() if len(t) for k in t["key"]))
    documents, note = None, ""
    if not keys:
        note = "no run of its verdict grids is stored yet"
    else:
        try:
            documents = store.documents(keys)
        except StoreError as err:                  # runs scored before evaluation version 2
            note = f"no per-document records ({str(err).split(':')[0]}); the paired tests are untestable"
    return VerdictInputs(model, tables, documents, noise_floor_table(tables["noise_floor"]),
                         cfg.suite["task_limit"], pd.DataFrame(rows), note)


def model_verdicts(inputs: VerdictInputs) -> pd.DataFrame:
    """The six rows of ``verdicts`` for one model, with its name."""
    return verdicts(inputs.tables, inputs.documents, inputs.floor, docs_per_task=inputs.docs_per_task).assign(
        model=inputs.model)
