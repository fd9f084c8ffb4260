"""The grid of each study: which runs a notebook needs, placed at its grid points, and running them.

    profile = get_profile("quick")
    grid = sample_count_grid(profile)
    run(grid, store)                       # only missing runs execute
    table = grid.results(store)            # one row per (run, grid label): metrics as columns

Runs are shared between grids through the store: the source-domain run of ``wikipedia`` at set 0 is also
the seed-variance run at set 0, the sample-count run at the base size and the sequence-length run at the
base length.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..runs.spec import RunSpec, parse_spec
from ..runs.store import Store
from ..errors import InvalidInput, RunsFailed
from .labels import method_label
from .profiles import Profile, resolve_sources
from .tables import wide


@dataclass
class StudyGrid:
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


def dense_grid(profile: Profile) -> StudyGrid:
    return StudyGrid("dense", [({"method_label": "dense"}, _spec(profile, {"name": "dense"}))])


def baseline_grid(profile: Profile) -> StudyGrid:
    """The dense model and the data-free baselines (magnitude, RTN): what calibration data is measured against."""
    return StudyGrid("baselines", [({"method_label": "dense"}, _spec(profile, {"name": "dense"}))]
                     + [({"method_label": method_label(m)}, _spec(profile, m)) for m in profile.baselines])


def noise_floor_grid(profile: Profile) -> StudyGrid:
    """Each method's base run and ``profile.replicates`` replicates of it that differ only in float order
    (``runs.spec.replicates``): their spread is the numerical noise floor every between-set difference is
    measured against."""
    from ..runs.spec import replicates
    return StudyGrid("noise_floor", [({"method_label": method_label(m), "replicate": r.replicate}, r)
                                     for m in profile.methods
                                     for r in replicates(_spec(profile, m), profile.replicates)])


def _count_methods(profile: Profile) -> tuple:
    return profile.methods if profile.count_methods is None else profile.count_methods


def sample_count_grid(profile: Profile) -> StudyGrid:
    return StudyGrid("sample_count", [({"method_label": method_label(m)}, _spec(profile, m, num_samples=n))
                                 for m in _count_methods(profile) for n in profile.sample_counts])


def sequence_length_grid(profile: Profile) -> StudyGrid:
    """Each seq_len at a fixed token budget (num_samples = budget / seq_len) and, where the profile's
    ``seq_len_regimes`` include "count", at a fixed sample count."""
    unknown = set(profile.seq_len_regimes) - {"budget", "count"}
    if unknown:
        raise InvalidInput(f"unknown seq_len_regimes {sorted(unknown)} in profile {profile.name!r}; known: budget, count")
    points = []
    for m in _count_methods(profile):
        for length in profile.seq_lens:
            if "budget" in profile.seq_len_regimes and profile.token_budget // length >= 1:
                points.append(({"method_label": method_label(m), "regime": f"fixed budget ({profile.token_budget} tokens)"},
                               _spec(profile, m, seq_len=length, num_samples=profile.token_budget // length)))
            if "count" in profile.seq_len_regimes:
                points.append(({"method_label": method_label(m), "regime": f"fixed count ({profile.num_samples} samples)"},
                               _spec(profile, m, seq_len=length)))
    return StudyGrid("sequence_length", points)


def source_domain_grid(profile: Profile) -> StudyGrid:
    sources = resolve_sources(profile.sources, profile.optional_sources) + ("random-vocab",)
    return StudyGrid("source_domain", [({"method_label": method_label(m)}, _spec(profile, m, source=s))
                                  for m in profile.methods for s in sources])


def seed_variance_grid(profile: Profile) -> StudyGrid:
    sources = resolve_sources(profile.variance_sources)
    methods = profile.methods if profile.variance_methods is None else profile.variance_methods
    return StudyGrid("seed_variance", [({"method_label": method_label(m)}, _spec(profile, m, source=s, set_index=k))
                                  for m in methods for s in sources for k in range(profile.sets)])


def self_calibration_grid(profile: Profile) -> StudyGrid:
    """Self-generated data for each temperature schedule, against the base real source and random tokens."""
    points = []
    for m in profile.methods + tuple(x for x in profile.self_methods if x not in profile.methods):
        label = method_label(m)
        for t_init, t_final in profile.schedules:
            points.append(({"method_label": label, "data": f"self (t {t_init:g}->{t_final:g})", "kind": "self"},
                           _spec(profile, m, source="self", t_init=float(t_init), t_final=float(t_final))))
        points.append(({"method_label": label, "data": profile.base_source, "kind": "real"},
                       _spec(profile, m)))
        points.append(({"method_label": label, "data": "random-vocab", "kind": "random"},
                       _spec(profile, m, source="random-vocab")))
    return StudyGrid("self_calibration", points)


def vocabulary_grid(profile: Profile) -> StudyGrid:
    """07: the dense model and each vocabulary-pruned run, each with the run it is compared with (``base_key``:
    the same model and method without vocabulary pruning). The task-derived vocabulary (the suite's own tokens,
    the paper's setting) on the dense model and stacked on each of ``vocab_methods``; the tokens of one set of
    each of ``vocab_sources`` at each of ``vocab_sizes`` samples; the k most frequent tokens of the base
    source's largest such set."""
    dense = _spec(profile, {"name": "dense"})

    def vocab(base: RunSpec, vocabulary: dict) -> RunSpec:
        data = {**_spec_data(base), "vocabulary": vocabulary}
        return parse_spec(data)

    def point(spec, base, kind, data, **extra):
        return ({"method_label": method_label(dict((("name", spec.method),) + spec.method_params)),
                 "vocabulary_kind": kind, "vocabulary_data": data, "base_key": base.key, **extra}, spec)

    points = [point(dense, dense, "none", "full vocabulary")]
    for m in ({"name": "dense"},) + tuple(profile.vocab_methods):
        base = _spec(profile, m)
        if m["name"] != "dense":
            points.append(point(base, base, "none", "full vocabulary"))
        points.append(point(vocab(base, {"ids": "suite"}), base, "task", "the tasks' own tokens"))
    sources = resolve_sources(profile.vocab_sources) if profile.vocab_sources else ()
    for source in sources:
        for n in profile.vocab_sizes:
            cal = {"source": source, "num_samples": n, "seq_len": profile.seq_len, "seed": profile.seed, "set_index": 0}
            points.append(point(vocab(dense, {"ids": "calibration", "calibration": cal}), dense, "calibration",
                                f"{source} {n}x{profile.seq_len}", source=source, num_samples=n))
    if profile.vocab_frequent and profile.vocab_sizes:
        cal = {"source": profile.base_source, "num_samples": max(profile.vocab_sizes), "seq_len": profile.seq_len,
               "seed": profile.seed, "set_index": 0}
        for k in profile.vocab_frequent:
            points.append(point(vocab(dense, {"ids": "frequent", "k": k, "calibration": cal}), dense, "frequent",
                                f"top {k} of {profile.base_source} {cal['num_samples']}x{profile.seq_len}",
                                source=profile.base_source, num_samples=cal["num_samples"]))
    return StudyGrid("vocabulary", points)


def _spec_data(spec: RunSpec) -> dict:
    from ..runs.spec import spec_data
    return spec_data(spec.normalized())


def selection_grid(profile: Profile) -> StudyGrid:
    """09: every (method, selector, draw) at the profile's base source and size (``study.selectors``); methods:
    ``selection_methods`` (None: the claims' pair)."""
    from .profiles import claim_methods
    from .selectors import SELECTORS
    unknown = [s for s in profile.selectors if s not in SELECTORS]
    if unknown:
        raise InvalidInput(f"unknown selector(s) {unknown} in profile {profile.name!r}; known: {', '.join(SELECTORS)}")
    methods = profile.selection_methods if profile.selection_methods is not None else claim_methods(profile)
    points = []
    for m in methods:
        for name in profile.selectors:
            override = SELECTORS[name][0](profile)
            for k in range(profile.selection_sets):
                points.append(({"method_label": method_label(m), "selector": name, "draw": k},
                               _spec(profile, m, set_index=k, **override)))
    return StudyGrid("selection", points)


def summarization_spec(profile: Profile, method: dict, **calibration) -> RunSpec:
    """A run of 08: the profile's model and calibration (base size), scored only on generated summaries."""
    if not profile.summary_eval:
        raise InvalidInput(f"profile {profile.name!r} has no summary_eval: 08 (summarization) has nothing to score")
    suite = {"name": f"summaries-{profile.name}", "ppl_texts": [], "tasks": [], "summarization": dict(profile.summary_eval)}
    data = {"model": profile.model, "method": dict(method), "eval": suite,
            "calibration": {"source": profile.base_source, "num_samples": profile.num_samples,
                            "seq_len": profile.seq_len, "seed": profile.seed, "set_index": 0, **calibration}}
    return parse_spec(data)


def summarization_grid(profile: Profile) -> StudyGrid:
    """08: the dense model and every (method, source, set) of ``summary_methods`` x ``summary_sources`` x
    ``summary_sets`` on ``profile.model``, each scored on the summaries of ``summary_eval``."""
    points = [({"method_label": "dense", "source": "none", "set_index": -1, "model": profile.model},
               summarization_spec(profile, {"name": "dense"}))]
    sources = resolve_sources(profile.summary_sources) if profile.summary_sources else ()
    for m in profile.summary_methods:
        for source in sources:
            for k in range(profile.summary_sets):
                points.append(({"method_label": method_label(m), "source": source, "set_index": k,
                                "model": profile.model}, summarization_spec(profile, m, source=source, set_index=k)))
    return StudyGrid("summarization", points)


GRIDS = {"dense": dense_grid, "baselines": baseline_grid, "noise_floor": noise_floor_grid,
         "sample_count": sample_count_grid, "sequence_length": sequence_length_grid,
         "source_domain": source_domain_grid, "seed_variance": seed_variance_grid,
         "self_calibration": self_calibration_grid, "vocabulary": vocabulary_grid,
         "selection": selection_grid, "summarization": summarization_grid}


def run(grid: StudyGrid, store: Store, backend: str | None = None, progress: bool = True,
        log_dir: str | Path | None = None) -> dict:
    """Execute the grid's missing runs (the store keeps every finished one) and say what happened.

    Progress bars and library chatter go to ``<log_dir>/<grid>.log`` (default: a ``logs`` folder next to
    the store), so an executed notebook shows one summary line instead of pages of bars."""
    import contextlib
    import time

    from ..runs.sweep import run_specs, status
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
        raise RunsFailed(f"{len(failed)} run(s) of grid {grid.name!r} failed; first: {str(first.get('error')).rstrip('.')}. "
                           f"Fix the cause and re-run: finished runs are kept in {store.path}.")
    return summary
