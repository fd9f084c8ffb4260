"""A profile's whole run list, in the order that makes a partial sweep most useful.

The notebooks compute their own runs when executed; a long profile (``standard``: tens of CPU-hours here)
is better computed first, in the background, by one resumable sweep, and read by the notebooks afterwards
(they then start no run). ``plan`` lists every run the notebooks of a profile will ask for, once each, in
priority order:

1. models in the order of ``findings_models`` (the profile's own model first), all of one model before the
   next, so one model's evidence is complete before the next begins; 09's selector grid (tier 3) comes after
   every model's;
2. within a model, the claims' runs first: the dense model and data-free baselines, then the grids the six
   verdicts read (noise floor, source domain, seed variance, sample count, self-calibration), for the first
   pruning and the first quantization method of the profile (the pair the verdicts compare), then the same
   grids for the other methods and 07's vocabulary grid, then the grids only notebooks 01-05 read (sequence
   length); the other
   models get only what ``06_findings`` reads for them (``profiles.findings_profile``);
3. within a grid, the grid's own order.

A sweep stopped anywhere and started again computes only what is missing (``runs.sweep.run_specs``), so the
order only decides which evidence exists first.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from ..runs.store import Store
from .grids import GRIDS
from .labels import method_label
from .profiles import PROFILES, Profile, claim_methods, findings_profile, get_profile
from .vocabulary import vocabulary_profiles

VERDICT_GRIDS = ("baselines", "noise_floor", "source_domain", "seed_variance", "sample_count", "self_calibration")
NOTEBOOK_ONLY_GRIDS = ("sequence_length", "selection")
# 09's selector grid (tier 3): its own question, computed after every model's verdict runs; 08's summaries (tier
# 4) last, on each of the profile's summary_models
LATE_GRIDS = ("selection",)
SUMMARY_GRIDS = ("summarization",)
# 07's grid: its own claim (the task-derived vocabulary keeps accuracy), on every model, after the six claims' runs
VOCABULARY_GRIDS = ("vocabulary",)


# The grids each study notebook reads, and computes where runs are missing, for the profile's model; 06 reads
# VERDICT_GRIDS for each findings model, 07 its grids for each of ``vocabulary_profiles``, 08 the summary grid of
# each summary model; 00 and 10 only read the store.
# (tests/test_study.py checks every run a notebook adds on the tiny profile against these.)
NOTEBOOK_GRIDS = {"01_sample_count": ("dense", "baselines", "noise_floor", "sample_count"),
                  "02_sequence_length": ("dense", "noise_floor", "sequence_length"),
                  "03_source_domain": ("dense", "baselines", "noise_floor", "seed_variance", "source_domain"),
                  "04_seed_variance": ("dense", "noise_floor", "seed_variance"),
                  "05_self_calibration": ("dense", "noise_floor", "self_calibration", "source_domain"),
                  "07_vocabulary": ("dense", "vocabulary"),
                  "09_selection": ("dense", "seed_variance", "selection")}


def notebook_keys(profile: Profile, notebooks, model: str | None = None) -> set[str]:
    """Keys of every run the `notebooks` read on `profile` (`model`: the notebooks' --model, which 06 and 08
    take as their only model)."""
    from .summarization import summarization_grids
    keys = set()
    for name in notebooks:
        if name == "06_findings":
            # 06 builds each model's profile from the profile's name (findings_profile("standard", model)), so a
            # --model other than the profile's own reads the claims' grids, not the whole profile for it
            base = PROFILES.get(profile.name, profile) if model else profile
            for each in ([model] if model else profile.findings_models):
                cfg = findings_profile(base, each)
                keys |= {spec.key for grid in VERDICT_GRIDS for spec in GRIDS[grid](cfg).specs}
        elif name == "07_vocabulary":
            keys |= {spec.key for cfg in vocabulary_profiles(profile, model).values()
                     for grid in NOTEBOOK_GRIDS[name] for spec in GRIDS[grid](cfg).specs}
        elif name == "08_summarization":
            if profile.summary_eval:
                keys |= {spec.key for grid in summarization_grids(profile, [model] if model else None)
                         for spec in grid.specs}
        else:
            keys |= {spec.key for grid in NOTEBOOK_GRIDS.get(name, ()) for spec in GRIDS[grid](profile).specs}
    return keys


def claim_pair(profile: Profile) -> set[str]:
    """Labels of the claims' pair of methods (``profiles.claim_methods``)."""
    return {method_label(m) for m in claim_methods(profile)}


def plan(profile: str | Profile, models: list[str] | None = None) -> pd.DataFrame:
    """One row per distinct run: ``order``, ``model``, ``grid`` (the first grid that asks for it), ``tier``
    (0: dense, baselines and the claims' method pair; 1: other methods and 07's vocabulary; 2: notebook-only grids;
    3: 09's selectors; 4: 08's summaries), ``method_label``,
    ``key``, ``label`` and ``spec`` (the RunSpec). `models`: default the profile's ``findings_models`` with its own
    model first."""
    base = get_profile(profile) if isinstance(profile, str) else profile
    named = set(models or ())                 # 08 --model X summarises on X, a summary model or not
    models = list(dict.fromkeys(models or (base.model, *base.findings_models, *base.summary_models)))
    rows, seen = [], set()
    for model_rank, model in enumerate(models):
        cfg = findings_profile(base, model)
        pair = claim_pair(cfg)
        grids = ((VERDICT_GRIDS + VOCABULARY_GRIDS if model in (base.model, *base.findings_models) else ())
                 + (NOTEBOOK_ONLY_GRIDS if model == base.model else ())
                 + (SUMMARY_GRIDS if (model in base.summary_models or model in named) and base.summary_eval
                    else ()))
        for grid_rank, grid_name in enumerate(grids):
            for position, (labels, spec) in enumerate(GRIDS[grid_name](cfg).points):
                if spec.key in seen:
                    continue
                seen.add(spec.key)
                label = labels.get("method_label", "")
                tier = (4 if grid_name in SUMMARY_GRIDS
                        else 3 if grid_name in LATE_GRIDS
                        else 2 if grid_name in NOTEBOOK_ONLY_GRIDS
                        else 1 if grid_name in VOCABULARY_GRIDS
                        else 0 if label in pair or grid_name == "baselines" else 1)
                rows.append({"model_rank": model_rank, "tier": tier, "grid_rank": grid_rank, "position": position,
                             "model": model, "grid": grid_name, "method_label": label, "key": spec.key,
                             "label": spec.label(), "spec": spec})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = (frame.assign(_late=(frame["tier"] >= 3).astype(int) + (frame["tier"] >= 4).astype(int))
             .sort_values(["_late", "model_rank", "tier", "grid_rank", "position"], kind="stable")
             .drop(columns="_late").reset_index(drop=True))
    frame.insert(0, "order", range(len(frame)))
    return frame.drop(columns=["model_rank", "grid_rank", "position"])


def cost_class(spec: dict) -> tuple:
    """What a run's cost depends on most, from its normalized spec: the model, the method, whether its
    calibration text is generated first (self), whether it generates summaries, whether it prunes the vocabulary."""
    calibration = spec.get("calibration") or {}
    return (spec["model"], spec["method"]["name"], calibration.get("source") == "self",
            bool(spec["eval"].get("summarization")), spec.get("vocabulary") is not None)


def run_costs(store: Store) -> pd.DataFrame:
    """One row per finished run: its ``key``, ``cost_class`` and ``seconds`` (its wall-clock total)."""
    rows = [{"key": run["key"], "cost_class": cost_class(run["spec"]),
             "seconds": ((run.get("timings") or {}).get("total"))} for run in store.records("done")]
    return pd.DataFrame(rows, columns=["key", "cost_class", "seconds"]).dropna(subset=["seconds"])


PHASES = ("calibration", "compression", "evaluation", "total")


def phase_times(store: Store) -> pd.DataFrame:
    """Where the time of the finished runs goes: per model and method (``+ vocabulary`` where it prunes the
    embedding, ``+ summaries`` where it generates them), the median wall-clock seconds of each phase, the median
    CPU seconds of the whole run where recorded (all threads; a pause or a second job on the machine does not
    count), and the number of runs. Medians, because paused or shared runs record inflated wall times."""
    rows = []
    for run in store.records("done"):
        model, name, _, summaries, vocabulary = cost_class(run["spec"])
        method = name + (" + vocabulary" if vocabulary else "") + (" + summaries" if summaries else "")
        wall, cpu = run.get("timings") or {}, run.get("cpu_seconds") or {}
        rows.append({"model": model, "method": method, **{p: wall.get(p) for p in PHASES},
                     "cpu_total": cpu.get("total")})
    columns = ["model", "method", *PHASES, "cpu_total"]
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        return pd.DataFrame(columns=[*columns, "runs"]).set_index(["model", "method"])
    grouped = frame.groupby(["model", "method"])
    table = grouped[[*PHASES, "cpu_total"]].median().astype(float).round(1)
    table["runs"] = grouped.size()
    return table


def store_contents(runs: pd.DataFrame, where: str = "runs/") -> str:
    """One line on what a results table (``study.wide``) holds: the finished runs per model, the methods, and
    the vocabulary-pruned runs per method as a count of vocabularies (a long sweep has a dozen, one label each,
    which would bury the methods)."""
    if runs.empty:
        return f"No finished runs in `{where}` yet."
    models = ", ".join(f"{model} {count}" for model, count in runs["model"].value_counts().items())
    pruned = runs["vocabulary"].map(lambda v: isinstance(v, str)) if "vocabulary" in runs else \
        pd.Series(False, index=runs.index)
    # tables.wide labels a vocabulary-pruned run '<method label> + <vocabulary>': the method label is the rest
    base = pd.Series([label[:-len(f" + {v}")] if p else label for label, v, p
                      in zip(runs["method_label"], runs.get("vocabulary", pruned), pruned)], index=runs.index)
    text = (f"{len(runs)} finished runs in `{where}` ({models}); methods: "
            f"{', '.join(sorted(base[~pruned].unique())) or 'none without a pruned vocabulary'}.")
    if pruned.any():
        vocabularies = runs[pruned].groupby(base[pruned])["vocabulary"].nunique()
        text += (" With a pruned vocabulary (07): " + ", ".join(
            f"{label} ({n} {'vocabulary' if n == 1 else 'vocabularies'})" for label, n in vocabularies.items()) + ".")
    return text


def estimated_seconds(frame: pd.DataFrame, store: Store | None) -> pd.Series:
    """Each planned run's expected wall-clock seconds: the median of the finished runs of its cost class
    (``cost_class``), else of its model's runs of the same method and kind (summaries or not), else of its
    model's runs of that kind, else NaN (no such run yet).
    Medians, because runs computed while the machine was shared or the sweep was paused record inflated times."""
    costs = run_costs(store) if store is not None else None
    if costs is None or costs.empty:
        return pd.Series(float("nan"), index=frame.index)
    by_class = costs.groupby("cost_class")["seconds"].median()
    by_method = costs.groupby(costs["cost_class"].map(lambda c: (c[0], c[1], c[3])))["seconds"].median()
    by_kind = costs.groupby(costs["cost_class"].map(lambda c: (c[0], c[3])))["seconds"].median()

    def estimate(spec) -> float:
        cls = cost_class(spec.normalized())
        for table, part in ((by_class, cls), (by_method, (cls[0], cls[1], cls[3])), (by_kind, (cls[0], cls[3]))):
            if part in table.index:
                return float(table[part])
        return float("nan")

    return frame["spec"].map(estimate)


def plan_summary(frame: pd.DataFrame, store: Store | None = None) -> pd.DataFrame:
    """Runs per (model, tier, grid), how many are done in `store`, and ``hours_left``: the wall-clock hours its
    missing runs are expected to take on the machines that computed the stored ones (``estimated_seconds``; NaN
    where no finished run of the model and kind tells)."""
    if frame.empty:
        return pd.DataFrame(columns=["model", "tier", "grid", "runs", "done", "hours_left"])
    states = store.status(frame["key"].tolist()) if store is not None else {}
    done = frame["key"].map(lambda key: states.get(key) == "done")
    seconds = estimated_seconds(frame, store)
    left = seconds.where(~done, 0.0) / 3600
    out = (frame.assign(done=done, hours_left=left).groupby(["model", "tier", "grid"], sort=False)
           .agg(runs=("key", "size"), done=("done", "sum"),
                hours_left=("hours_left", lambda h: h.sum(min_count=len(h)))).reset_index())
    return out


def run_plan(profile: str | Profile, store: Store, *, models: list[str] | None = None, backend: str = "local",
             address: str | None = None, limit: int | None = None, log_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Compute the plan's missing runs in its order (at most `limit` of them; None: all), each recorded as
    soon as it finishes, and return the sweep's counts. Progress and library chatter go to
    ``<log_dir>/plan.log`` (default: ``logs`` beside the store)."""
    import contextlib

    from ..runs.sweep import run_specs
    frame = plan(profile, models)
    specs = list(frame["spec"])
    if limit is not None:
        states = store.status([spec.key for spec in specs])
        specs = [spec for spec in specs if states.get(spec.key) != "done"][:limit]
    log_dir = Path(log_dir or store.path.parent / "logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log_dir / "plan.log", "a", encoding="utf-8") as log, contextlib.redirect_stderr(log):
        summary = run_specs(specs, store, backend=backend, address=address, progress=progress)
    summary["seconds"] = round(time.time() - started, 1)
    return summary


READ_FOR = {
    "quick": "how each study works and what its figures look like, in minutes on a CPU; its budget is too small "
             "to decide the claims (every verdict says which budget would)",
    "standard": "the evidence: the budget the verdicts need (SmolLM2-135M whole, Gemma-3-270M for the claims); "
                "read the verdicts, the headline table and the variance decomposition here",
    "paper": "the papers' own settings, for GPUs through Ray",
}


def results_guide(results_dir: str | Path, figures_dir: str | Path, profile: str,
                  profiles=("quick", "standard")) -> str:
    """Markdown: per profile, where its results and figures are, how many of its planned runs are in its
    archive (run files, counted without opening a database) and whether its notebooks were executed, and what
    to read it for. `results_dir`, `figures_dir`: those of the notebook's own `profile` (results/<profile>;
    figures/ for quick, figures/<profile> for the others: ``notebooks.default_figures_dir``)."""
    results_root = Path(results_dir).parent
    figures_root = Path(figures_dir) if profile == "quick" else Path(figures_dir).parent
    lines = ["| profile | results | figures | runs done / planned | notebooks executed | read it for |",
             "|---|---|---|---|---|---|"]
    for name in profiles:
        folder = results_root / name
        try:
            keys = set(plan(name)["key"])
        except Exception as err:          # a source unavailable here: say so instead of failing the overview
            keys, note = set(), f" (plan unavailable here: {str(err).splitlines()[0][:80]})"
        else:
            note = ""
        archived = {p.stem for p in (folder / "runs").glob("*.zip")} if (folder / "runs").is_dir() else set()
        executed = sorted(p.stem for p in folder.glob("0*.html"))
        shown_figures = f"{figures_root.name}/" + ("" if name == "quick" else f"{name}/")   # repo-relative, not this machine's path
        lines.append(f"| `{name}` | `{results_root.name}/{name}/` | `{shown_figures}` | "
                     f"{len(keys & archived)} / {len(keys)}{note} | {len(executed)} | {READ_FOR.get(name, '')} |")
    return "\n".join(lines)
