"""Experiments: run specs and keys, the results store, sweeps (local or Ray)."""
from .spec import RunSpec, SpecError, component_versions, parse_spec
from .store import Store
from .sweep import expand_grid, load_yaml, run_specs, status

__all__ = ["RunSpec", "SpecError", "Store", "component_versions", "expand_grid", "load_yaml", "parse_spec",
           "run_specs", "status"]
