"""Study profiles and grids: what each notebook runs, so notebooks hold no logic of their own.

A *profile* fixes the budget of every study (model, methods, calibration sizes, sources, sets,
evaluation suite). Every notebook builds its grid from the same profile and the same evaluation suite,
so runs are shared through the store: the source-domain run of ``wikipedia`` at set 0 is also the
seed-variance run at set 0, the sample-count run at the base size and the sequence-length run at the
base length. ``make run`` executes all notebooks on ``quick``; CI executes them on ``tiny``.

    profile = get_profile("quick")
    grid = sample_count_grid(profile)
    run(grid, store)                       # only missing runs execute
    table = grid.results(store)            # one row per (run, grid label): metrics as columns
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .runs.spec import RunSpec, parse_spec
from .runs.store import Store

PRUNING = ("magnitude", "wanda", "sparsegpt")
QUANTIZATION = ("rtn", "gptq", "awq")

CAVEAT_4BIT = ("The embedded models (SmolLM2-135M, Gemma-3-270M) are dequantized from 4-bit GGUF files, "
               "so their weights already sit on a 4-bit grid: quantization results, 4-bit above all, differ "
               "from fp16 checkpoints (here GPTQ does not beat RTN at 4 bits).")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    model: str
    methods: tuple                       # method mappings, e.g. {"name": "wanda", "sparsity": 0.5}
    base_source: str                     # the real source of every study that does not vary the source
    sources: tuple | str                 # real sources compared in 03 ("available": every one available here)
    num_samples: int                     # base calibration size ...
    seq_len: int                         # ... and length
    sample_counts: tuple                 # 01: num_samples grid at seq_len
    seq_lens: tuple                      # 02: seq_len grid, at token_budget and at num_samples
    token_budget: int
    variance_sources: tuple              # 04: sources drawn `sets` times
    sets: int
    schedules: tuple                     # 05: (t_init, t_final) of self-generation
    suite: dict                          # evaluation suite shared by all runs (see evaluate.Suite)
    seed: int = 0
    backend: str = "local"               # sweep backend: local or ray
    findings_models: tuple = ("smollm2-135m", "gemma3-270m")   # 06_findings: the models each claim is tested on
    extra: dict = field(default_factory=dict)


def _suite(name, ppl_texts, windows, seq_len, tasks, limit):
    return {"name": name, "ppl_texts": list(ppl_texts), "ppl_windows": windows, "ppl_seq_len": seq_len,
            "tasks": list(tasks), "task_limit": limit, "optional_tasks": True, "seed": 1234, "batch_size": None}


WANDA = {"name": "wanda", "sparsity": 0.5}
SPARSEGPT = {"name": "sparsegpt", "sparsity": 0.5}
GPTQ3 = {"name": "gptq", "bits": 3, "group_size": 128}
AWQ3 = {"name": "awq", "bits": 3, "group_size": 128}
# Sources every machine can fetch from PyPI: the quick profile gives the same runs with or without the
# offline mirror (only task accuracy needs the mirror or the hub).
PYPI_SOURCES = ("wikipedia", "news", "books", "code")

PROFILES = {
    "tiny": Profile(
        "tiny", "a tiny random Llama: checks that every notebook runs end to end (CI); numbers mean nothing",
        model="tiny-llama", methods=(WANDA, {"name": "gptq", "bits": 3, "group_size": 32}),
        base_source="wikipedia", sources=("wikipedia", "news"), num_samples=4, seq_len=32,
        sample_counts=(1, 2, 4, 8), seq_lens=(16, 32, 64), token_budget=128,
        variance_sources=("wikipedia", "news"), sets=3, schedules=((1.0, 1.0), (1.5, 0.5)),
        suite=_suite("study-tiny", ("wikipedia", "news"), 2, 64, ("arc_easy", "copa"), 8),
        findings_models=("tiny-llama",)),
    "quick": Profile(
        "quick", "SmolLM2-135M on CPU in about half an hour: small calibration sets, a reduced evaluation",
        model="smollm2-135m", methods=(WANDA, GPTQ3),
        base_source="wikipedia", sources=PYPI_SOURCES, num_samples=16, seq_len=128,
        sample_counts=(1, 4, 16, 64), seq_lens=(32, 128, 512), token_budget=2048,
        variance_sources=("wikipedia", "news"), sets=3, schedules=((1.0, 1.0), (1.5, 0.5)),
        suite=_suite("study-quick", PYPI_SOURCES, 3, 256, ("arc_easy", "piqa", "winogrande", "copa"), 20)),
    "standard": Profile(
        "standard", "SmolLM2-135M on CPU for hours: the papers' methods at 32 x 512, five sets, every source",
        model="smollm2-135m", methods=(WANDA, SPARSEGPT, GPTQ3, AWQ3),
        base_source="wikipedia", sources="available", num_samples=32, seq_len=512,
        sample_counts=(1, 2, 4, 8, 16, 32, 64, 128), seq_lens=(64, 128, 256, 512, 1024), token_budget=16384,
        variance_sources=PYPI_SOURCES, sets=5, schedules=((1.0, 1.0), (1.5, 0.5), (0.5, 1.5), (2.0, 1.0)),
        suite=_suite("study-standard", ("auto",) + PYPI_SOURCES, 8, 512,
                     ("arc_easy", "arc_challenge", "boolq", "hellaswag", "lambada_openai", "openbookqa",
                      "piqa", "rte", "winogrande", "copa"), 200)),
    "paper": Profile(
        "paper", "the papers' settings (128 x 2048, ten non-overlapping sets, every source, ten full tasks): "
                 "meant for GPUs through the Ray backend",
        model="smollm2-135m", methods=(WANDA, SPARSEGPT, GPTQ3, AWQ3),
        base_source="c4", sources="available", num_samples=128, seq_len=2048,
        sample_counts=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), seq_lens=(128, 256, 512, 1024, 2048),
        token_budget=262144, variance_sources="available", sets=10,
        schedules=((1.0, 1.0), (1.5, 0.5), (0.5, 1.5), (2.0, 1.0)),
        suite=_suite("study-paper", ("wikitext2", "c4"), None, 2048,
                     ("arc_easy", "arc_challenge", "boolq", "hellaswag", "lambada_openai", "openbookqa",
                      "piqa", "rte", "winogrande", "copa"), None), backend="ray"),
}


def get_profile(name: str, **overrides) -> Profile:
    """A profile by name; keyword overrides replace fields (e.g. ``model="gemma3-270m"``); None is ignored."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - set(Profile.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown profile field(s) {sorted(unknown)}; known: {', '.join(Profile.__dataclass_fields__)}")
    for key in ("methods", "sources", "sample_counts", "seq_lens", "variance_sources", "schedules"):
        if isinstance(overrides.get(key), list):
            overrides[key] = tuple(tuple(v) if isinstance(v, list) else v for v in overrides[key])
    return replace(PROFILES[name], **overrides)


def available_real_sources() -> tuple[str, ...]:
    from .data.sources import SOURCES
    return tuple(s.id for s in SOURCES.values() if not s.synthetic and s.availability()[0])


def resolve_sources(sources) -> tuple[str, ...]:
    """Real sources of a profile; 'available' means every real source this machine can load."""
    if sources == "available":
        return available_real_sources()
    from .data.sources import get_source
    missing = [(s, get_source(s).availability()[1]) for s in sources if not get_source(s).availability()[0]]
    if missing:
        raise RuntimeError("calibration source(s) unavailable here: "
                           + "; ".join(f"{s} ({why})" for s, why in missing))
    return tuple(sources)


def _int(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def method_label(method: dict) -> str:
    """'wanda 50%', 'sparsegpt 2:4', 'gptq 3-bit g128', 'dense'."""
    method = {k: _int(v) for k, v in method.items()}
    name = method["name"]
    if name == "dense":
        return "dense"
    order = " (block order)" if method.get("sequential") == "block" else ""    # "layer" is the default
    if name in PRUNING:
        if method.get("n"):
            return f"{name} {method['n']}:{method['m']}{order}"
        return f"{name} {round(100 * method.get('sparsity', 0.5))}%{order}"
    group = method.get("group_size", 128)
    return f"{name} {method.get('bits', 4)}-bit" + (f" g{group}" if group else "") + order


def method_family(name: str) -> str:
    return "pruning" if name in PRUNING else "quantization" if name in QUANTIZATION else "none"


# -- grids ---------------------------------------------------------------------------------------

@dataclass
class Grid:
    """Specs plus, for each, the labels that place it in a study (a run may sit at two grid points)."""
    name: str
    points: list[tuple[dict, RunSpec]]

    @property
    def specs(self) -> list[RunSpec]:
        unique = {}
        for _, spec in self.points:
            unique.setdefault(spec.key, spec)
        return list(unique.values())

    def results(self, store: Store) -> pd.DataFrame:
        """One row per grid point that has a finished run: labels, spec fields and metrics as columns."""
        runs = wide(store, [spec.key for spec in self.specs])
        if runs.empty:
            return runs
        labels = pd.DataFrame([{"key": spec.key, **labels} for labels, spec in self.points])
        table = labels.merge(runs, on="key", how="inner", suffixes=("_grid", ""))
        for column in ("calibration.num_samples", "calibration.seq_len", "calibration.seed",
                       "calibration.set_index", "calibration.schedule_steps"):
            # whole numbers again (a store with dense runs turns these into floats with NaN)
            if column in table and table[column].notna().all():
                table[column] = table[column].astype(int)
        return table


def _spec(profile: Profile, method: dict, **calibration) -> RunSpec:
    # parse_spec keeps the calibration only for methods that need one (not dense, magnitude, rtn)
    data = {"model": profile.model, "method": dict(method), "eval": dict(profile.suite),
            "calibration": {"source": profile.base_source, "num_samples": profile.num_samples,
                            "seq_len": profile.seq_len, "seed": profile.seed, "set_index": 0, **calibration}}
    return parse_spec(data)


def dense_grid(profile: Profile) -> Grid:
    return Grid("dense", [({"method_label": "dense"}, _spec(profile, {"name": "dense"}))])


def sample_count_grid(profile: Profile) -> Grid:
    return Grid("sample_count", [({"method_label": method_label(m)}, _spec(profile, m, num_samples=n))
                                 for m in profile.methods for n in profile.sample_counts])


def sequence_length_grid(profile: Profile) -> Grid:
    """Each seq_len at a fixed token budget (num_samples = budget / seq_len) and at a fixed sample count."""
    points = []
    for m in profile.methods:
        for length in profile.seq_lens:
            if profile.token_budget // length >= 1:
                points.append(({"method_label": method_label(m), "regime": f"fixed budget ({profile.token_budget} tokens)"},
                               _spec(profile, m, seq_len=length, num_samples=profile.token_budget // length)))
            points.append(({"method_label": method_label(m), "regime": f"fixed count ({profile.num_samples} samples)"},
                           _spec(profile, m, seq_len=length)))
    return Grid("sequence_length", points)


def source_domain_grid(profile: Profile) -> Grid:
    sources = resolve_sources(profile.sources) + ("random-vocab",)
    return Grid("source_domain", [({"method_label": method_label(m)}, _spec(profile, m, source=s))
                                  for m in profile.methods for s in sources])


def seed_variance_grid(profile: Profile) -> Grid:
    sources = resolve_sources(profile.variance_sources)
    return Grid("seed_variance", [({"method_label": method_label(m)}, _spec(profile, m, source=s, set_index=k))
                                  for m in profile.methods for s in sources for k in range(profile.sets)])


def self_calibration_grid(profile: Profile) -> Grid:
    """Self-generated data for each temperature schedule, against the base real source and random tokens."""
    points = []
    for m in profile.methods:
        label = method_label(m)
        for t_init, t_final in profile.schedules:
            points.append(({"method_label": label, "data": f"self (t {t_init:g}->{t_final:g})", "kind": "self"},
                           _spec(profile, m, source="self", t_init=float(t_init), t_final=float(t_final))))
        points.append(({"method_label": label, "data": profile.base_source, "kind": "real"},
                       _spec(profile, m)))
        points.append(({"method_label": label, "data": "random-vocab", "kind": "random"},
                       _spec(profile, m, source="random-vocab")))
    return Grid("self_calibration", points)


GRIDS = {"dense": dense_grid, "sample_count": sample_count_grid, "sequence_length": sequence_length_grid,
         "source_domain": source_domain_grid, "seed_variance": seed_variance_grid,
         "self_calibration": self_calibration_grid}


def run(grid: Grid, store: Store, backend: str | None = None, progress: bool = True,
        log_dir: str | Path | None = None) -> dict:
    """Execute the grid's missing runs (the store keeps every finished one) and say what happened.

    Progress bars and library chatter go to ``<log_dir>/<grid>.log`` (default: a ``logs`` folder next to
    the store), so an executed notebook shows one summary line instead of pages of bars."""
    import contextlib
    import time

    from .runs.sweep import run_specs, status
    log_dir = Path(log_dir or store.path.parent / "logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{grid.name}.log"
    started = time.time()
    with open(log_path, "a", encoding="utf-8") as log, contextlib.redirect_stderr(log):
        summary = run_specs(grid.specs, store, backend=backend or "local", progress=progress)
    print(f"grid {grid.name}: {summary['total']} runs, {summary['cached']} already in the store, "
          f"{summary['done']} done now, {summary['failed']} failed ({time.time() - started:.1f} s); log: {log_path}")
    failed = status(grid.specs, store)["failed"]
    if failed:
        first = store.get(failed[0].key)
        raise RuntimeError(f"{len(failed)} run(s) of grid {grid.name!r} failed; first: {str(first.get('error')).rstrip('.')}. "
                           f"Fix the cause and re-run: finished runs are kept in {store.path}.")
    return summary


# -- results ---------------------------------------------------------------------------------------

def wide(store: Store, keys: list[str] | None = None) -> pd.DataFrame:
    """One row per finished run: spec fields, then ``ppl:<text>``, ``acc:<task>`` (acc_norm where the task
    has it is ``acc_norm:<task>``), ``acc:mean`` and ``ppl:geomean`` (geometric mean over the texts)."""
    tidy = store.frame()
    if tidy.empty:
        return tidy
    if keys is not None:
        tidy = tidy[tidy["key"].isin(set(keys))]
        if tidy.empty:
            return tidy
    tidy = tidy[tidy["metric"] != "skipped"]
    spec_cols = [c for c in tidy.columns if c in ("key", "model", "method", "suite", "calibration_fingerprint")
                 or c.startswith(("method.", "calibration."))]
    runs = tidy[spec_cols].drop_duplicates("key").set_index("key")
    prefix = tidy["metric"].where(tidy["kind"] == "task", "ppl").map(
        lambda m: {"perplexity": "ppl", "acc": "acc"}.get(m, m))
    column = prefix + ":" + tidy["name"]
    values = pd.DataFrame({"key": tidy["key"], "column": column, "value": tidy["value"].astype(float)})
    metrics = values.pivot_table(index="key", columns="column", values="value", aggfunc="first")
    out = runs.join(metrics).reset_index()
    ppl_cols = [c for c in out.columns if c.startswith("ppl:") and c != "ppl:lambada_openai"]
    if ppl_cols:
        out["ppl:geomean"] = np.exp(np.log(out[ppl_cols].astype(float)).mean(axis=1))
    out["method_label"] = [method_label({"name": r["method"], **{k.split(".", 1)[1]: r[k] for k in out.columns
                                          if k.startswith("method.") and pd.notna(r[k])}})
                           for _, r in out.iterrows()]
    out["family"] = out["method"].map(method_family)
    return out


def task_columns(table: pd.DataFrame) -> list[str]:
    """The per-task accuracy columns present (not the mean)."""
    return sorted(c for c in table.columns if c.startswith("acc:") and c != "acc:mean")


def ppl_columns(table: pd.DataFrame) -> list[str]:
    return sorted(c for c in table.columns if c.startswith("ppl:") and c not in ("ppl:geomean", "ppl:lambada_openai"))


def has_accuracy(table: pd.DataFrame) -> bool:
    return "acc:mean" in table.columns and table["acc:mean"].notna().any()


def describe_budget(profile: Profile) -> str:
    suite = profile.suite
    tasks = ", ".join(suite["tasks"]) or "none"
    limit = suite["task_limit"] or "all"
    windows = suite["ppl_windows"] or "all"
    return (f"model {profile.model}; methods {', '.join(method_label(m) for m in profile.methods)}; "
            f"base calibration {profile.base_source} {profile.num_samples} x {profile.seq_len} tokens; "
            f"perplexity on {windows} windows of {suite['ppl_seq_len']} tokens of each of "
            f"{', '.join(suite['ppl_texts'])}; tasks {tasks} ({limit} documents each)")


# -- findings: each notebook states its finding once, the overview collects them ------------------

def save_finding(results_dir: str | Path, notebook: str, text: str, numbers: dict | None = None) -> None:
    """Store a notebook's finding (written atomically: a reader never sees half a file)."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "findings.json"
    findings = json.loads(path.read_text()) if path.exists() else {}
    findings[notebook] = {"text": text, "numbers": numbers or {}}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(findings, indent=2, sort_keys=True, default=float))
    os.replace(tmp, path)


def load_findings(results_dir: str | Path) -> dict:
    path = Path(results_dir) / "findings.json"
    return json.loads(path.read_text()) if path.exists() else {}


def fmt(value: float, digits: int = 2) -> str:
    """A number for prose: NaN reads as 'n/a'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


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
