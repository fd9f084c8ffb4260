"""Experiments: run specs and keys, the results store, sweeps (local or Ray)."""
from .spec import RunSpec, SpecError, code_version, parse_spec
from .store import Store
from .sweep import expand_grid, load_yaml, run_specs, status

__all__ = ["RunSpec", "SpecError", "Store", "code_version", "expand_grid", "load_yaml", "parse_spec",
           "run_specs", "status"]
