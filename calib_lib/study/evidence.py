"""The six verdicts' inputs for one model, from a store: what ``06_findings`` reads, and what
``calib study --verdicts`` reads while a long sweep is still filling the store.

``verdict_inputs`` gathers the grids the verdicts read (``VERDICT_GRIDS``), the per-document records of their
runs and the float-noise floor; with ``run=True`` (the notebook) it first computes the missing runs, with
``run=False`` (the interim view) it reads what is stored and counts what is missing, so that a partial
``standard`` sweep can be read after any session without starting a run. The rules themselves
(``findings.verdicts``) are the same in both: a claim whose runs are missing is "untestable at this budget"
with what it needs, never guessed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ..errors import StoreError
from .grids import GRIDS, run as run_grid
from .planning import VERDICT_GRIDS
from .profiles import Profile, findings_profile


@dataclass
class VerdictInputs:
    model: str
    profile: Profile
    tables: dict[str, pd.DataFrame]
    documents: pd.DataFrame | None
    floor: pd.DataFrame
    docs_per_task: int | None
    completeness: pd.DataFrame = field(default_factory=pd.DataFrame)   # grid, asked, stored
    note: str = ""                                                      # why per-document records are missing


def verdict_inputs(profile: str | Profile, model: str, store, *, run: bool = True, backend: str | None = None) -> VerdictInputs:
    """The tables, documents and float floor ``findings.verdicts`` reads for `model` on `profile`'s findings
    budget (``findings_profile``). ``run``: compute missing runs first (else read only what is stored)."""
    from .. import findings
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
    return VerdictInputs(model, cfg, tables, documents, findings.noise_floor_table(tables["noise_floor"]),
                         cfg.suite["task_limit"], pd.DataFrame(rows), note)


def model_verdicts(inputs: VerdictInputs) -> pd.DataFrame:
    """The six rows of ``findings.verdicts`` for one model, with its name."""
    from .. import findings
    return findings.verdicts(inputs.tables, inputs.documents, inputs.floor,
                             docs_per_task=inputs.docs_per_task).assign(model=inputs.model)
