"""Grids of runs over any spec fields, executed locally or as Ray tasks, written to the store.

    base: {model: smollm2-135m, eval: quick, calibration: {num_samples: 32, seq_len: 512}}
    grid:
      method: [{name: wanda, sparsity: 0.5}, {name: sparsegpt, sparsity: 0.5}]
      calibration.source: [news, books]
      calibration.set_index: [0, 1, 2]

Runs already done in the store are skipped, so an interrupted sweep rerun finishes only the missing
runs. Only the driver writes the store; with Ray each run is a task and its record comes back to it.
"""
from __future__ import annotations

import copy
import itertools
import os
import traceback
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from .spec import RunSpec, SpecError, parse_spec
from .store import Store


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping")
    return data


def _set_path(data: dict, dotted: str, value, where: str) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None or isinstance(child, str):       # "method: wanda" -> {"name": "wanda"}
            child = {} if child is None else {"name": child}
            node[part] = child
        if not isinstance(child, dict):
            raise SpecError(where, f"cannot set {dotted}: {part} is not a mapping")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def expand_grid(data: dict) -> list[RunSpec]:
    """All specs of a grid, validated before anything runs (errors name the grid point and field)."""
    unknown = set(data) - {"base", "grid"}
    if unknown:
        raise SpecError(sorted(unknown)[0], "unknown field; a grid file has 'base' and 'grid'")
    base = data.get("base", {})
    grid = data.get("grid", {}) or {}
    if not isinstance(grid, dict):
        raise SpecError("grid", "expected a mapping of field paths to lists of values")
    for path, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"grid.{path}", "expected a non-empty list of values")
    specs, seen = [], set()
    for combo in itertools.product(*grid.values()):
        point = dict(zip(grid, combo))
        spec_data = copy.deepcopy(base)
        for path, value in point.items():
            _set_path(spec_data, path, value, f"grid.{path}")
        try:
            spec = parse_spec(spec_data)
        except SpecError as err:
            raise SpecError(err.path, f"{str(err).split(': ', 1)[1]} (at grid point {point})") from err
        if spec.key not in seen:
            seen.add(spec.key)
            specs.append(spec)
    return specs


def status(specs: list[RunSpec], store: Store) -> dict[str, list[RunSpec]]:
    state = store.status([s.key for s in specs])
    out = {"done": [], "failed": [], "pending": []}
    for s in specs:
        out[state.get(s.key, "pending")].append(s)
    return out


def _failure(err: BaseException) -> dict:
    return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(), "metrics": []}


def run_specs(specs: list[RunSpec], store: Store, backend: str = "local", address: str | None = None,
              progress: bool = True, num_cpus: int | None = None) -> dict:
    """Run every spec not yet done; return counts of what happened."""
    pending = status(specs, store)
    todo = pending["pending"] + pending["failed"]
    summary = {"total": len(specs), "cached": len(pending["done"]), "done": 0, "failed": 0}
    if not todo:
        return summary
    if backend == "local":
        _run_local(todo, store, progress, summary)
    elif backend == "ray":
        _run_ray(todo, store, address, progress, summary, num_cpus)
    else:
        raise ValueError(f"unknown backend {backend!r}; use local or ray")
    return summary


def _record(store: Store, spec: RunSpec, record: dict | None, error: dict | None, summary: dict) -> None:
    if error is None:
        store.put(spec.key, "done", spec.label(), spec.normalized(), record)
        summary["done"] += 1
    else:
        store.put(spec.key, "failed", spec.label(), spec.normalized(), error)
        summary["failed"] += 1


def _run_local(todo, store, progress, summary):
    from .runner import execute
    for spec in tqdm(todo, desc="runs", disable=not progress):
        try:
            record, error = execute(spec), None
        except Exception as err:                      # recorded, and the sweep goes on
            record, error = None, _failure(err)
        _record(store, spec, record, error, summary)


def _remote_execute(spec_data: dict, threads: int):
    import torch

    from .runner import execute
    # Ray sets OMP_NUM_THREADS=1 in tasks; a different BLAS thread count changes reduction order, and
    # GPTQ at 3 bits turns those last-bit differences into different roundings (seen: WikiText-2
    # perplexity 103 vs 116 for the same spec). Use the driver's thread count so numbers match local runs.
    torch.set_num_threads(threads)
    spec = parse_spec(spec_data)
    try:
        return execute(spec), None
    except Exception as err:
        return None, _failure(err)


def _run_ray(todo, store, address, progress, summary, num_cpus):
    import ray
    passthrough = {k: v for k, v in os.environ.items()
                   if k.startswith(("CALIB_", "HF_", "TRANSFORMERS_", "TOKENIZERS_"))}
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 runtime_env={"env_vars": passthrough}, log_to_driver=False)
    try:
        import torch
        threads = torch.get_num_threads()
        # Reserve the CPUs the task will use, but never more than a node has (it would never start).
        largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
        task = ray.remote(num_cpus=max(1, min(threads, int(largest))))(_remote_execute)
        futures = {task.remote(_spec_dict(spec), threads): spec for spec in todo}
        bar = tqdm(total=len(futures), desc="runs (ray)", disable=not progress)
        while futures:
            ready, _ = ray.wait(list(futures), num_returns=1)
            spec = futures.pop(ready[0])
            try:
                record, error = ray.get(ready[0])
            except Exception as err:                  # the worker died
                record, error = None, _failure(err)
            _record(store, spec, record, error, summary)   # only the driver writes
            bar.update()
        bar.close()
    finally:
        if started_here:
            ray.shutdown()


def _spec_dict(spec: RunSpec) -> dict:
    n = spec.normalized()
    data = {"model": n["model"], "dtype": n["dtype"], "method": n["method"], "eval": n["eval"],
            "batch_size": n["batch_size"]}
    if n["calibration"] is not None:
        data["calibration"] = n["calibration"]
    return data
