"""A calibration-sensitivity report for any model and method: does the calibration data matter for *my* model?

    calib sensitivity --model smollm2-135m --method wanda --budget quick

Practitioners ask it on every compression tool's tracker (which dataset, which domain, how many rows) and get
rules of thumb. This module designs the grid that answers it for one model and its methods, reads the finished
runs and turns them into the statistics and the plain recommendation of the report notebook
(``calib_lib/templates/sensitivity.ipynb``):

* the grid (``sensitivity_grid``): per method, ``sets`` non-overlapping calibration sets of each source, one
  set of random tokens (the known-bad reference), a sample-count check on the first source's set 0, and
  float-order replicates of the base run (the noise floor); once: the dense model and the data-free baseline
  of each method's family (magnitude pruning at the same sparsity, round-to-nearest at the same bits). Sizes,
  seed and evaluation suite are those of the study profile of the same name, so a run here is the very run
  (same key) the study notebooks make and a store can serve both;
* which sources could be the best (``source_comparison``): each source against the best of the others, with
  Tukey's HSD intervals (simultaneous over every pair) on each metric, the sets as replicates and the pooled
  set-to-set SD as the error (the question is whether a *source* is better beyond what another draw of it
  would give);
* whether the best and worst source differ on the very documents (``paired_extremes``): per-document accuracy
  averaged over each source's sets, paired bootstrap;
* whether more samples help (``sample_count_check``): each count against the largest, judged against the
  set-to-set spread of one run at the base count;
* the recommendation (``recommendation``), generated from those numbers, with "cannot tell at this budget"
  where the data do not decide.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from .. import stats
from ..errors import InvalidInput
from .grids import StudyGrid, _spec
from .labels import method_family, method_label
from .profiles import (AWQ3, GPTQ3, MIRROR_SOURCES, PYPI_SOURCES, SPARSEGPT, SPQR3, WANDA, Profile, get_profile,
                       resolve_sources)

ALPHA = 0.05
# log KL to the dense model leads: the most sensitive of the three (no document noise of its own to speak of)
METRICS = {"kl:geomean": ("KL to dense", "lower"), "ppl:geomean": ("perplexity", "lower"),
           "acc:mean": ("mean accuracy", "higher")}
LOG = ("kl:geomean", "ppl:geomean")
DEFAULT_SETTINGS = {"wanda": WANDA, "sparsegpt": SPARSEGPT, "gptq": GPTQ3, "awq": AWQ3, "spqr": SPQR3}


@dataclass(frozen=True)
class Budget:
    name: str
    profile: str                 # the study profile whose sizes, seed and suite the runs share (same run keys)
    sources: tuple               # real sources compared by default ...
    optional_sources: tuple      # ... and those added where this machine has them
    sets: int                    # non-overlapping sets per source
    counts: tuple                # sample counts checked (on the first source's set 0; the base count is added)
    replicates: int              # float-order replicates of each method's base run
    description: str


BUDGETS = {
    "tiny": Budget("tiny", "tiny", ("wikipedia", "news"), (), 2, (2, 8), 1,
                   "a tiny random model's check that the report runs end to end; numbers mean nothing"),
    "quick": Budget("quick", "quick", ("wikipedia", "news", "code"), (), 2, (4, 16, 64), 2,
                    "minutes on a CPU: three sources of different domains drawn twice each, 16 x 128 tokens, "
                    "counts 4-64, a reduced evaluation (KL and perplexity on 4 texts, 4 tasks x 20 documents): "
                    "enough to see large source effects in KL, not accuracy differences of a few points"),
    "standard": Budget("standard", "standard", PYPI_SOURCES, MIRROR_SOURCES, 5, (8, 32, 128), 4,
                       "hours on a CPU: every source (c4 and wikitext2 where the mirror or the hub has them) drawn "
                       "five times, 32 x 512 tokens, counts 8-128, six tasks of 300 documents"),
}


def get_budget(name: str) -> Budget:
    if name not in BUDGETS:
        raise InvalidInput(f"unknown budget {name!r}; choose one of: {', '.join(BUDGETS)}")
    return BUDGETS[name]


def _scalar(text: str):
    import yaml
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_method(text: str | dict) -> dict:
    """A method as the command line gives it: ``wanda`` (the studies' setting: 50%), ``gptq`` (3-bit, group
    128), or with settings ``gptq:bits=4,group_size=64``, ``wanda:n=2,m=4``; a mapping passes through. Only
    methods that read calibration data: the data-free ones have nothing to be sensitive to."""
    from ..compress import METHODS
    if isinstance(text, dict):
        method = dict(text)
    else:
        name, _, rest = str(text).partition(":")
        name = name.strip()
        settings = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise InvalidInput(f"method {text!r}: settings are key=value pairs separated by commas, "
                                   "e.g. gptq:bits=4,group_size=128")
            settings[key.strip()] = _scalar(value.strip())
        if name in DEFAULT_SETTINGS and not ({"sparsity", "n", "m"} & set(settings) and name in ("wanda", "sparsegpt")):
            method = {**DEFAULT_SETTINGS[name], **settings}
        else:
            method = {"name": name, **settings}
    name = method.get("name")
    calibrated = sorted(n for n, m in METHODS.items() if m.needs_calibration)
    if name not in METHODS:
        raise InvalidInput(f"unknown method {name!r}; a sensitivity report takes one that reads calibration data: "
                           f"{', '.join(calibrated)}")
    if not METHODS[name].needs_calibration:
        raise InvalidInput(f"method {name!r} reads no calibration data, so there is nothing to be sensitive to; "
                           f"choose one of {', '.join(calibrated)} (the report adds {name} as a baseline itself)")
    try:
        METHODS[name](**{k: v for k, v in method.items() if k != "name"})
    except TypeError as err:
        raise InvalidInput(f"method {text!r}: {err}; see `calib_lib.compress.METHODS[{name!r}]` for its settings") from err
    return method


def data_free_baseline(method: dict) -> dict:
    """The data-free method of the same family and setting: what calibration data is measured against
    (magnitude pruning at the same sparsity or n:m pattern; round-to-nearest at the same bits and group)."""
    family = method_family(method["name"])
    if family == "pruning":
        keep = {k: method[k] for k in ("sparsity", "n", "m") if k in method}
        return {"name": "magnitude", **keep}
    if family == "quantization":
        keep = {k: method[k] for k in ("bits", "group_size", "sym") if k in method}
        return {"name": "rtn", **keep}
    raise InvalidInput(f"method {method['name']!r} is neither pruning nor quantization: no data-free baseline")


def sensitivity_profile(model: str, methods, budget: str = "quick", sources=None) -> Profile:
    """The study profile of `budget` for `model` and `methods` (each parsed by ``parse_method``), comparing
    `sources` (default the budget's; 'available' every real source this machine has)."""
    b = get_budget(budget)
    methods = tuple(parse_method(m) for m in (methods if isinstance(methods, (list, tuple)) else [methods]))
    if not methods:
        raise InvalidInput("give at least one --method")
    labels = [method_label(m) for m in methods]
    if len(set(labels)) < len(labels):
        raise InvalidInput(f"the same method twice: {labels}")
    if sources is None:
        chosen = resolve_sources(b.sources, b.optional_sources)
    else:
        sources = [sources] if isinstance(sources, str) else list(sources)
        if sources == ["available"]:
            chosen = resolve_sources("available")
        else:
            from ..data.sources import SOURCES
            bad = [s for s in sources if s not in SOURCES or SOURCES[s].synthetic]
            if bad:
                real = sorted(s for s, src in SOURCES.items() if not src.synthetic)
                raise InvalidInput(f"not a real calibration source: {bad}; choose from {', '.join(real)} "
                                   "(random tokens are added as the reference by the report itself)")
            chosen = resolve_sources(tuple(dict.fromkeys(sources)))
    if len(chosen) < 2:
        raise InvalidInput(f"a sensitivity report compares at least two sources; got {list(chosen)}")
    base = get_profile(b.profile)
    counts = tuple(sorted(set(b.counts) | {base.num_samples}))
    baselines = tuple(dict.fromkeys(map(lambda m: tuple(sorted(data_free_baseline(m).items())), methods)))
    return replace(base, name=f"sensitivity-{b.name}", model=model, methods=methods,
                   baselines=tuple(dict(b_) for b_ in baselines), base_source=chosen[0], sources=chosen,
                   variance_sources=chosen, sets=b.sets, sample_counts=counts, replicates=b.replicates,
                   optional_sources=(), variance_methods=None, count_methods=None, self_methods=(),
                   findings_models=(model,), vocab_sources=(), vocab_sizes=(), vocab_methods=(), vocab_frequent=(),
                   description=f"sensitivity report, budget {b.name}: {b.description}")


def sensitivity_grid(profile: Profile) -> StudyGrid:
    """Every run of the report, each labelled with its ``part``: dense, baseline, source (sets x sources),
    random, count (the first source's set 0 at each count) and replicate (float-order replicates of the base
    run, ``replicate`` >= 1; replicate 0 is the base run itself). A run may sit at several points."""
    from ..runs.spec import replicates
    points = [({"method_label": "dense", "part": "dense"}, _spec(profile, {"name": "dense"}))]
    points += [({"method_label": method_label(m), "part": "baseline"}, _spec(profile, m)) for m in profile.baselines]
    for m in profile.methods:
        label = method_label(m)
        for source in profile.variance_sources:
            for k in range(profile.sets):
                points.append(({"method_label": label, "part": "source"}, _spec(profile, m, source=source, set_index=k)))
        points.append(({"method_label": label, "part": "random"}, _spec(profile, m, source="random-vocab")))
        for n in profile.sample_counts:
            points.append(({"method_label": label, "part": "count"}, _spec(profile, m, num_samples=n)))
        for r in replicates(_spec(profile, m), profile.replicates):
            points.append(({"method_label": label, "part": "replicate", "replicate": r.replicate}, r))
    return StudyGrid("sensitivity", points)


# -- cost -----------------------------------------------------------------------------------------------

# Seconds per run measured on this project's 2-core CPU (2026-12, SmolLM2-135M, one job at a time): evaluation
# of the budget's suite, plus each method's compression at the budget's calibration size. Other models are
# scaled by their parameter count (Gemma-3-270M, whose 262k-token vocabulary makes every forward pass dear,
# measured ~3x); a store that already holds runs of the model replaces these with its own medians.
_TINY_RUN_SECONDS = 4.0                    # a tiny random model on the tiny budget, whatever the method
_EVAL_SECONDS = {"tiny": 1.0, "quick": 22.0, "standard": 175.0}
_COMPRESS_SECONDS = {"tiny": {}, "quick": {"wanda": 3, "sparsegpt": 15, "gptq": 14, "awq": 60, "spqr": 40,
                                           "magnitude": 2, "rtn": 0.3},
                     "standard": {"wanda": 12, "sparsegpt": 69, "gptq": 164, "awq": 500, "spqr": 300,
                                  "magnitude": 2, "rtn": 0.3}}
_MODEL_FACTOR = {"smollm2-135m": 1.0, "gemma3-270m": 3.0}


def _model_factor(model: str) -> float:
    if model in _MODEL_FACTOR:
        return _MODEL_FACTOR[model]
    from ..models import EMBEDDED
    if EMBEDDED.find(model) is not None:
        return 0.05                                          # the tiny random models
    try:
        from transformers import AutoConfig
        cfg = AutoConfig.from_pretrained(model)
        hidden, layers = getattr(cfg, "hidden_size", 576), getattr(cfg, "num_hidden_layers", 30)
        return max(0.05, hidden * hidden * layers / (576 * 576 * 30))
    except Exception:                                       # noqa: BLE001 - an estimate, never a failure
        return 1.0


def estimate_cost(profile: Profile, budget: str, specs, store=None) -> dict:
    """{runs, missing, seconds, basis}: the runs of `specs` not done in `store` and their estimated seconds on
    this machine (medians of the store's own finished runs of the model and method where it has them, else the
    measured table above)."""
    states = store.status([s.key for s in specs]) if store is not None else {}
    missing = [s for s in specs if states.get(s.key) != "done"]
    measured = {}
    if store is not None and len(missing) < len(specs):
        done = [s for s in specs if states.get(s.key) == "done"]
        for spec in done:
            total = ((store.get(spec.key) or {}).get("timings") or {}).get("total")
            if total:
                measured.setdefault(spec.method, []).append(float(total))
    factor = _model_factor(profile.model)
    table = _COMPRESS_SECONDS.get(get_budget(budget).profile, {})
    tiny = factor < 1 and get_budget(budget).profile == "tiny"
    seconds, from_store = 0.0, 0
    for spec in missing:
        if spec.method in measured:
            seconds += float(np.median(measured[spec.method]))
            from_store += 1
        elif tiny:
            seconds += _TINY_RUN_SECONDS
        else:
            seconds += factor * (_EVAL_SECONDS.get(get_budget(budget).profile, 16.0) + table.get(spec.method, 15))
    basis = (f"{from_store} from this store's finished runs, the rest " if from_store else "") + \
        "from runs measured on a 2-core CPU (scaled by model size; a GPU is much faster)"
    return {"runs": len(specs), "missing": len(missing), "seconds": seconds, "basis": basis}


def describe_cost(cost: dict) -> str:
    minutes = cost["seconds"] / 60
    when = f"~{minutes:.0f} min" if minutes >= 1 else f"~{cost['seconds']:.0f} s"
    return (f"{cost['runs']} runs, {cost['runs'] - cost['missing']} already in the store, {cost['missing']} to "
            f"compute: {when} (estimate: {cost['basis']})")


def check_calibration(profile: Profile, specs, tokenizer) -> None:
    """Sample every real calibration set of the grid before any run starts, so that a budget the corpus cannot
    fill without overlap fails at once (with the sampler's message naming the fix), not after hours of runs."""
    from ..data.sampling import sample
    from ..data.sources import get_source
    seen = set()
    for spec in specs:
        cal = spec.calibration
        if cal is None or get_source(cal.source).synthetic:
            continue
        if (cal.source, cal.num_samples, cal.seq_len, cal.set_index) in seen:
            continue
        seen.add((cal.source, cal.num_samples, cal.seq_len, cal.set_index))
        sample(cal, tokenizer, progress=False)


# -- reading the runs -------------------------------------------------------------------------------------

def _value(table: pd.DataFrame, metric: str) -> pd.Series:
    values = table[metric].astype(float)
    return np.log(values.where(values > 0)) if metric in LOG else values


def _percent(log_difference: float) -> str:
    return f"{100 * (math.exp(log_difference) - 1):+.1f}%"


def _show(metric: str, difference: float) -> str:
    return _percent(difference) if metric in LOG else f"{100 * difference:+.1f} points"


def source_comparison(table: pd.DataFrame, metric: str, alpha: float = ALPHA) -> pd.DataFrame:
    """Per (method, source): sets, mean (geometric for KL and perplexity), and the comparison with the best of
    the *other* sources: ``gap`` = this source's mean minus that one's (on the log scale for KL and
    perplexity; worse positive), ``versus`` (that source), and its 95% interval ``gap_low``..``gap_high`` from
    Tukey's HSD (Tukey-Kramer for unequal sets), simultaneous over every pair of sources, so that "this source
    is worse than that one" is wrong with probability <= alpha for all claims together, even when every source
    is alike. ``could_be_best``: no other source is detectably better (``gap_low`` <= 0). The error is the
    pooled SD between sets of one source (``set_sd``, on ``df`` degrees of freedom): the question is whether a
    *source* is better beyond what another draw of it gives. Sources with one set add no error of their own."""
    rows = []
    if table is None or table.empty or metric not in table:
        return pd.DataFrame(rows)
    lower = METRICS[metric][1] == "lower"
    for label, part in table[table["part"] == "source"].groupby("method_label", sort=False):
        part = part.assign(_y=_value(part, metric)).dropna(subset=["_y"])
        if part.empty:
            continue
        sign = 1.0 if lower else -1.0                        # 'worse' positive on every metric
        groups = part.groupby("calibration.source", sort=True)["_y"]
        means, counts = groups.mean(), groups.size()
        set_sd, df = stats.pooled_sd(part["_y"], part["calibration.source"])
        for source, mean in means.items():
            others = means.drop(source)
            if others.empty:
                continue
            best_other = others.idxmin() if lower else others.idxmax()
            gap = sign * (mean - others[best_other])
            half = stats.tukey_half_width(set_sd, df, len(means), counts[source], counts[best_other], alpha)
            rows.append({"method_label": label, "metric": metric, "source": source, "sets": int(counts[source]),
                         "mean": math.exp(mean) if metric in LOG else mean, "gap": gap, "versus": best_other,
                         "gap_low": gap - half, "gap_high": gap + half,
                         "could_be_best": not (np.isfinite(half) and gap - half > 0), "set_sd": set_sd, "df": df})
    out = pd.DataFrame(rows)
    if not out.empty:
        out = out.sort_values(["method_label", "gap"], kind="stable").reset_index(drop=True)
    return out


def random_check(table: pd.DataFrame, comparison: pd.DataFrame, metric: str, alpha: float = ALPHA) -> pd.DataFrame:
    """Per method: the random-token run against the *worst* real source's mean, judged with the pooled set SD
    (a new draw of that source would land within t * SD * sqrt(1 + 1/sets)): ``gap`` (worse positive),
    ``worse`` True when beyond that."""
    rows = []
    if table is None or comparison is None or comparison.empty or metric not in table:
        return pd.DataFrame(rows)
    lower = METRICS[metric][1] == "lower"
    for label, part in table[table["part"] == "random"].groupby("method_label", sort=False):
        y = _value(part, metric).dropna()
        real = comparison[(comparison["method_label"] == label) & (comparison["metric"] == metric)]
        if y.empty or real.empty:
            continue
        means = real.set_index("source")["mean"]
        means = np.log(means) if metric in LOG else means
        worst = means.idxmax() if lower else means.idxmin()
        gap = (1 if lower else -1) * (float(y.iloc[0]) - float(means[worst]))
        sd, df = float(real["set_sd"].iloc[0]), int(real["df"].iloc[0])
        n = int(real.set_index("source")["sets"][worst])
        threshold = float(sps.t.ppf(1 - alpha / 2, df)) * sd * math.sqrt(1 + 1 / n) if df > 0 else float("nan")
        rows.append({"method_label": label, "metric": metric, "worst_real": worst, "gap": gap,
                     "threshold": threshold, "worse": bool(np.isfinite(threshold) and gap > threshold)})
    return pd.DataFrame(rows)


def sample_count_check(table: pd.DataFrame, comparison: pd.DataFrame, metric: str, alpha: float = ALPHA) -> pd.DataFrame:
    """Per (method, count): the metric of the first source's set 0 at that count, ``gap`` to the largest
    count (worse positive) and whether that is beyond the set-to-set spread of one run (``threshold`` =
    t(df) * sqrt(2) * the pooled set SD of ``source_comparison``; measured at the base count, so at larger
    counts, whose draws differ less, it errs towards "no difference"). ``enough``: this count and every larger
    one are not detectably worse than the largest."""
    rows = []
    if table is None or table.empty or metric not in table:
        return pd.DataFrame(rows)
    lower = METRICS[metric][1] == "lower"
    for label, part in table[table["part"] == "count"].groupby("method_label", sort=False):
        part = part.assign(_y=_value(part, metric)).dropna(subset=["_y"]).sort_values("calibration.num_samples")
        if part.empty:
            continue
        real = comparison[(comparison["method_label"] == label) & (comparison["metric"] == metric)] \
            if comparison is not None and not comparison.empty else pd.DataFrame()
        sd = float(real["set_sd"].iloc[0]) if len(real) else float("nan")
        df = int(real["df"].iloc[0]) if len(real) else 0
        threshold = float(sps.t.ppf(1 - alpha / 2, df)) * math.sqrt(2) * sd if df > 0 else float("nan")
        largest = float(part["_y"].iloc[-1])
        gaps = [(1 if lower else -1) * (float(y) - largest) for y in part["_y"]]
        worse = [bool(np.isfinite(threshold) and g > threshold) for g in gaps]
        for i, (n, y) in enumerate(zip(part["calibration.num_samples"], part["_y"])):
            rows.append({"method_label": label, "metric": metric, "num_samples": int(n),
                         "value": math.exp(y) if metric in LOG else float(y), "gap": gaps[i], "threshold": threshold,
                         "worse_than_largest": worse[i], "enough": np.isfinite(threshold) and not any(worse[i:])})
    return pd.DataFrame(rows)


def paired_extremes(table: pd.DataFrame, documents: pd.DataFrame | None, comparison: pd.DataFrame,
                    n_resamples: int = 2000) -> pd.DataFrame:
    """Per method: the best and the worst source by KL (else the first metric compared), their per-document
    accuracy averaged over each source's sets (every run scores the same documents), and the paired
    difference best - worst: mean with each task weighted equally (as ``acc:mean``), 95% paired bootstrap CI
    over documents. It treats these sets as given: whether *these* calibration sets change the answers; the
    MCB intervals of ``source_comparison`` say whether the sources differ beyond another draw."""
    rows = []
    if documents is None or documents.empty or comparison is None or comparison.empty:
        return pd.DataFrame(rows)
    tasks = documents[documents["kind"] == "task"]
    if tasks.empty:
        return pd.DataFrame(rows)
    lead = next((m for m in METRICS if (comparison["metric"] == m).any()), None)
    for label, part in comparison[comparison["metric"] == lead].groupby("method_label", sort=False):
        ordered = part.sort_values("gap")
        best, worst = ordered["source"].iloc[0], ordered["source"].iloc[-1]
        runs = table[(table["part"] == "source") & (table["method_label"] == label)]

        def averaged(source):
            keys = set(runs.loc[runs["calibration.source"] == source, "key"])
            rows_ = tasks[tasks["key"].isin(keys)]
            return rows_.groupby(["name", "doc_id"])["correct"].mean()

        both = pd.concat({"a": averaged(best), "b": averaged(worst)}, axis=1, join="inner").dropna().reset_index()
        if both.empty:
            continue
        per_task = both.groupby("name")["doc_id"].transform("size").to_numpy(float)
        weight = len(both) / (both["name"].nunique() * per_task)
        a, b = both["a"].to_numpy(float) * weight, both["b"].to_numpy(float) * weight
        boot = stats.paired_bootstrap(a, b, n_resamples=n_resamples)
        rows.append({"method_label": label, "by": lead, "best": best, "worst": worst, "documents": len(both),
                     "difference": float(np.mean(a - b)), "ci_low": boot["ci_low"], "ci_high": boot["ci_high"]})
    return pd.DataFrame(rows)


def _names(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _against_baseline(table: pd.DataFrame | None, profile: Profile, label: str, metric: str,
                      rows: pd.DataFrame) -> str:
    """'Against no data (magnitude 50%): KL -67% with the best source.' ('' without the baseline run)."""
    if table is None or table.empty or metric not in table:
        return ""
    method = next((m for m in profile.methods if method_label(m) == label), None)
    if method is None:
        return ""
    baseline = method_label(data_free_baseline(method))
    runs = table[(table["part"] == "baseline") & (table["method_label"] == baseline)]
    if runs.empty or not np.isfinite(float(runs[metric].iloc[0])):
        return ""
    base = float(_value(runs, metric).iloc[0])
    best = rows.sort_values("gap").iloc[0]
    value = math.log(best["mean"]) if metric in LOG else float(best["mean"])
    return (f"Against no calibration data ({baseline}): {METRICS[metric][0]} {_show(metric, value - base)} "
            f"with {best['source']}.")


def recommendation(comparisons: pd.DataFrame, randoms: pd.DataFrame, counts: pd.DataFrame,
                   extremes: pd.DataFrame, profile: Profile, table: pd.DataFrame | None = None) -> str:
    """The report's plain advice, per method, generated from the statistics above: which sources could be the
    best (and how far behind the best the others may be), which to avoid, how many samples suffice, and what
    this budget cannot tell; with `table` (the report's runs), also what the best source gains over the method's
    data-free baseline."""
    lines = []
    if comparisons is None or comparisons.empty:
        return "No finished runs of the source grid: nothing to recommend yet."
    order = [method_label(m) for m in profile.methods]
    for label, part in sorted(comparisons.groupby("method_label", sort=False),
                              key=lambda item: order.index(item[0]) if item[0] in order else len(order)):
        lead = next(m for m in METRICS if (part["metric"] == m).any())
        name = METRICS[lead][0]
        rows = part[part["metric"] == lead]
        good = rows[rows["could_be_best"]]
        bad = rows[~rows["could_be_best"]]
        bound = float(good["gap_high"].max()) if len(good) else float("nan")
        text = [f"**{label}** ({profile.model}):"]
        if rows["set_sd"].isna().all():
            text.append("one set per source, so the draw-to-draw spread is unknown and no source can be told "
                        "from another; use at least two sets per source.")
        elif bad.empty:
            text.append(f"{_names(good['source'])} cannot be told apart on {name} at this budget: each could be "
                        f"the best, and differences up to {_show(lead, bound)} from the best are not excluded (95% "
                        "simultaneous bound; more sets per source narrow it).")
        else:
            text.append(f"use {_names(good['source'])} (each could be the best on {name}; within "
                        f"{_show(lead, bound)} of the best, 95% simultaneous bound); avoid "
                        + _names([f"{r.source} ({_show(lead, r.gap)} against {r.versus}, "
                                  f"at least {_show(lead, r.gap_low)})" for r in bad.itertuples()]) + ".")
        gain = _against_baseline(table, profile, label, lead, rows)
        if gain:
            text.append(gain)
        rnd = randoms[(randoms["method_label"] == label) & (randoms["metric"] == lead)] if randoms is not None and len(randoms) else pd.DataFrame()
        if len(rnd):
            r = rnd.iloc[0]
            text.append(f"Random tokens: {_show(lead, r.gap)} against the worst real source ({r.worst_real}), "
                        + ("beyond another draw of it: avoid them." if r.worse else
                           "not beyond another draw of it at this budget."))
        spread = float(rows["set_sd"].iloc[0])
        if np.isfinite(spread) and lead in LOG:
            text.append(f"A new draw of the same source moves {name} by {100 * (math.exp(spread) - 1):.1f}% (SD).")
        cnt = counts[(counts["method_label"] == label) & (counts["metric"] == lead)] if counts is not None and len(counts) else pd.DataFrame()
        if len(cnt):
            enough = cnt[cnt["enough"]]
            largest = int(cnt["num_samples"].max())
            if enough.empty:
                text.append("Sample count: cannot tell how many samples suffice (no spread between sets measured).")
            else:
                n = int(enough["num_samples"].min())
                if n == largest:
                    text.append(f"More samples help: every count below {largest} is detectably worse than "
                                f"{largest} on {name}; try more than {largest}.")
                else:
                    text.append(f"{n} samples of {profile.seq_len} tokens suffice: {largest} are not detectably "
                                f"better on {name} ({_show(lead, float(cnt.loc[cnt['num_samples'] == n, 'gap'].iloc[0]))} "
                                f"for {n}, within the draw-to-draw spread).")
        ext = extremes[extremes["method_label"] == label] if extremes is not None and len(extremes) else pd.DataFrame()
        if len(ext):
            e = ext.iloc[0]
            head = f"Accuracy, {e.best} vs {e.worst} on the same {e.documents} documents: "
            if e.ci_low == e.ci_high == e.difference == 0:
                text.append(head + "the same answers on every document.")
            else:
                decided = e.ci_low > 0 or e.ci_high < 0
                text.append(head + f"{100 * e.difference:+.1f} points (95% CI {100 * e.ci_low:+.1f} to "
                            f"{100 * e.ci_high:+.1f}): " + ("these sets change the answers." if decided else
                            "no difference detectable at this budget; differences of a few points need hundreds "
                            "of documents per task (`--budget standard`)."))
        lines.append(" ".join(text))
    return "\n\n".join(lines)


@dataclass
class Report:
    """What the report notebook shows, from the store: the grid's table, the per-document records, the
    noise floor, and each analysis."""
    profile: Profile
    budget: str
    table: pd.DataFrame
    documents: pd.DataFrame | None
    floor: pd.DataFrame
    seconds: float = float("nan")        # the runs' own timings, summed (compression and evaluation)

    def metrics(self) -> list[str]:
        return [m for m in METRICS if m in self.table and self.table[m].notna().any()]

    def comparisons(self) -> pd.DataFrame:
        parts = [source_comparison(self.table, m) for m in self.metrics()]
        parts = [p for p in parts if not p.empty]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def randoms(self, comparisons: pd.DataFrame) -> pd.DataFrame:
        parts = [random_check(self.table, comparisons, m) for m in self.metrics()]
        parts = [p for p in parts if not p.empty]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def counts(self, comparisons: pd.DataFrame) -> pd.DataFrame:
        parts = [sample_count_check(self.table, comparisons, m) for m in self.metrics()]
        parts = [p for p in parts if not p.empty]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def decomposition(self) -> pd.DataFrame:
        from .summaries import variance_decomposition
        return variance_decomposition(self.table[self.table["part"] == "source"], self.floor, self.documents)


def open_report(model: str, methods, budget: str, sources=None, results_dir: str | Path = "results/sensitivity",
                run_missing: bool = False) -> Report:
    """The report's data from the store in `results_dir` (``study.results_store``); with `run_missing` the
    missing runs are computed first (the command line computes them before the notebook, with a progress bar)."""
    from .grids import run
    from .session import results_store
    from .summaries import noise_floor_table
    from .tables import documents as documents_of
    profile = sensitivity_profile(model, methods, budget, sources)
    grid = sensitivity_grid(profile)
    store = results_store(results_dir)
    if run_missing:
        run(grid, store)
    table = grid.results(store)
    if table.empty:
        raise InvalidInput(f"no finished run of this report in {Path(results_dir) / 'runs'}; run `calib sensitivity` "
                           "(it computes them) first")
    missing = {s.key for s in grid.specs} - set(table["key"])
    if missing:
        raise InvalidInput(f"{len(missing)} of the report's {len(grid.specs)} runs are not in {Path(results_dir) / 'runs'}; "
                           "run `calib sensitivity` with the same arguments again: it computes only the missing ones")
    replicate_rows = table[table["part"] == "replicate"]
    seconds = sum(float(((store.get(key) or {}).get("timings") or {}).get("total") or 0)
                  for key in table["key"].unique())
    return Report(profile, budget, table, documents_of(store, table), noise_floor_table(replicate_rows), seconds)


def compute_runs(model: str, methods, budget: str = "quick", sources=None, *,
                 results_dir: str | Path = "results/sensitivity", out: str | Path | None = None,
                 dry_run: bool = False, log=print) -> dict:
    """The runs of ``calib sensitivity``: check the inputs and every calibration set, print the cost, compute the
    missing runs (a progress bar on the terminal; resumable: every finished run is kept). Returns the profile,
    the report's path (`out`, default ``<results_dir>/<model>-<methods>-<budget>.ipynb``), the cost and the
    template's parameters (``notebooks.sensitivity_report`` executes the template)."""
    import contextlib
    import sys

    from ..runs.sweep import run_specs, status
    from .session import results_store
    profile = sensitivity_profile(model, methods, budget, sources)
    grid = sensitivity_grid(profile)
    results_dir = Path(results_dir)
    slug = "-".join([Path(model).name] + [method_label(m).replace(" ", "").replace("%", "pct") for m in profile.methods]
                    + [budget])
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in slug)
    out = Path(out) if out else results_dir / f"{slug}.ipynb"
    if out.suffix != ".ipynb":
        raise InvalidInput(f"--out {out}: give the report notebook's path, ending in .ipynb (the HTML is written beside it)")
    store = results_store(results_dir)
    cost = estimate_cost(profile, budget, grid.specs, store)
    log(f"sensitivity of {model} to its calibration data, budget {budget}: {describe_cost(cost)}")
    parameters = {"model": model, "methods": [dict(m) for m in profile.methods], "budget": budget,
                  "sources": list(profile.variance_sources), "results_dir": str(results_dir.resolve())}
    result = {"profile": profile, "report": out, "cost": cost, "parameters": parameters, "seconds": 0.0}
    if dry_run:
        return result
    if cost["missing"]:
        # before any run: an unknown model, an architecture the driver cannot compress (GPT-2's Conv1D, fused
        # expert weights), a budget the corpus cannot fill without overlap
        from ..compress.blocks import block_linears, decoder_blocks
        from ..runs.runner import pristine_model
        # the runs' own model cache: the runs below reuse this load instead of loading the model again
        loaded, tokenizer = pristine_model(model, "float32")
        for block in decoder_blocks(loaded):
            block_linears(block)
        check_calibration(profile, grid.specs, tokenizer)
    started = time.time()
    # the runs' bar on the terminal; the libraries' own bars and chatter (lm-eval, datasets) in a log
    log_path = results_dir / "logs" / f"{slug}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    terminal = sys.stderr
    with open(log_path, "a", encoding="utf-8") as chatter, contextlib.redirect_stderr(chatter):
        summary = run_specs(grid.specs, store, progress=True, progress_file=terminal)
    if summary["failed"]:
        first = store.get(status(grid.specs, store)["failed"][0].key)
        raise InvalidInput(f"{summary['failed']} run(s) failed; first: {str(first.get('error')).strip().splitlines()[-1]}. "
                           f"Finished runs are kept in {results_dir / 'runs'} (log: {log_path}); fix the cause and "
                           "run again.")
    log(f"runs: {summary['done']} computed, {summary['cached']} from the store ({time.time() - started:.0f} s)")
    result["seconds"] = time.time() - started
    return result
