"""Grids of runs over any spec fields, executed locally or as Ray tasks, written to the store.

    base: {model: smollm2-135m, eval: quick, calibration: {num_samples: 32, seq_len: 512}}
    grid:
      method: [{name: wanda, sparsity: 0.5}, {name: sparsegpt, sparsity: 0.5}]
      calibration.source: [news, books]
      calibration.set_index: [0, 1, 2]

Runs already done in the store are skipped, so an interrupted sweep rerun finishes only the missing
runs. Only the driver writes the store; with Ray each run is a task and its record comes back to it.
Sweeps of one store running at the same time split the work: each run is claimed in the store before
it is computed (see ``store.py``), and a sweep waits for the runs another one is computing.
"""
from __future__ import annotations

import collections
import copy
import itertools
import os
import time
import traceback
import warnings
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from ..errors import InvalidInput
from .spec import RunSpec, SpecError, parse_spec, spec_data
from .store import Store

WAIT_POLL_S = 5.0        # how often a sweep looks again at runs that another sweep is computing


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, line: int, first: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping, which plain YAML resolves silently
    (the last one wins) and which in a spec is almost always an editing mistake."""

    def construct_mapping(self, node, deep=False):
        first_line = {}
        for key_node, _ in node.value:           # before merge keys (<<) are expanded: overriding is fine
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in first_line:
                    raise _DuplicateKey(key, line, first_line[key])
                first_line[key] = line
            except TypeError:                     # an unhashable key: the base class reports it
                continue
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except _DuplicateKey as err:
        raise InvalidInput(f"{path}, line {err.line}: the key {err.key!r} appears twice in one mapping (first "
                           f"on line {err.first}); YAML would keep only the last, so remove one") from err
    except yaml.YAMLError as err:
        raise InvalidInput(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise InvalidInput(f"{path} must hold a mapping")
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
              progress: bool = True, num_cpus: int | None = None, progress_file=None) -> dict:
    """Run every spec not yet done; return counts of what happened.

    Each run is claimed in the store before it is computed. Runs that another sweep of the same store
    is computing are waited for, and taken over if that sweep dies, so when this returns every spec is
    settled; those finished by the other sweep count as cached (or failed).
    """
    if backend not in ("local", "ray"):
        raise InvalidInput(f"unknown backend {backend!r}; use local or ray")
    started = time.time()
    pending = status(specs, store)
    todo = pending["pending"] + pending["failed"]
    summary = {"total": len(specs), "cached": len(pending["done"]), "done": 0, "failed": 0}
    if not todo:
        return summary
    todo = _check_before_runs(todo, store, summary)
    if not todo:
        return summary
    with store.claimant() as me, tqdm(total=len(todo), desc="runs" if backend == "local" else "runs (ray)",
                                      disable=not progress, file=progress_file) as bar:
        if backend == "local":
            _run_local(_claimed(todo, store, me, started, summary, bar, batch=1), store, summary, bar)
        else:
            # Ray queues every claimed run at once; other sweeps take what is left or was given up.
            _run_ray(_claimed(todo, store, me, started, summary, bar, batch=None), store, address, summary,
                     bar, num_cpus)
    return summary


def _check_before_runs(specs: list[RunSpec], store: Store, summary: dict) -> list[RunSpec]:
    """What would fail every run of a kind, found before any run starts (``evaluate.summarization.check_resources``:
    a summarization dataset unavailable here, the entity recogniser missing, a named NLI model that does not load).
    When every run would fail, the first reason is raised and nothing is stored; otherwise those runs are recorded
    as failed with their reason (so a notebook names them) and the others go on. Returns the runs to compute."""
    from ..evaluate.summarization import check_resources
    refused: dict = {}
    for cfg in {s.suite.summarization for s in specs if s.suite.summarization is not None}:
        try:
            check_resources(cfg)
        except Exception as err:         # Unavailable, InvalidInput, a damaged download: named in the record
            refused[cfg] = err
    if not refused:
        return specs
    bad = [s for s in specs if s.suite.summarization in refused]
    if len(bad) == len(specs):
        raise next(iter(refused.values()))
    for spec in bad:
        err = refused[spec.suite.summarization]
        store.put(spec.key, "failed", spec.label(), spec.normalized(),
                  {"error": f"{type(err).__name__}: {err}", "traceback": "", "metrics": []})
        summary["failed"] += 1
    warnings.warn(f"{len(bad)} run(s) scoring summaries refused before starting: {next(iter(refused.values()))}",
                  stacklevel=3)
    return [s for s in specs if s.suite.summarization not in refused]


def _claimed(todo, store: Store, me, since: float, summary: dict, bar, batch: int | None):
    """Claim the runs of ``todo`` in turn; yield them in lists of at most ``batch`` (None: every run
    that can be claimed now). A run another live sweep holds is looked at again every WAIT_POLL_S,
    until that sweep records it or dies (then it is claimed here)."""
    queue, waiting = collections.deque(todo), []
    while queue or waiting:
        if not queue:
            bar.set_postfix_str(f"waiting for {len(waiting)} run(s) another sweep is computing")
            time.sleep(WAIT_POLL_S)
            queue, waiting = collections.deque(waiting), []
        mine = []
        while queue and (batch is None or len(mine) < batch):
            spec = queue.popleft()
            outcome = store.claim(spec.key, me, since)
            if outcome == "claimed":
                mine.append(spec)
            elif outcome == "busy":
                waiting.append(spec)
            else:                                         # recorded by another sweep meanwhile
                summary["cached" if outcome == "done" else "failed"] += 1
                bar.update()
        if mine:
            yield mine


def _record(store: Store, spec: RunSpec, record: dict | None, error: dict | None, summary: dict) -> None:
    if error is None:
        store.put(spec.key, "done", spec.label(), spec.normalized(), record)
        summary["done"] += 1
    else:
        store.put(spec.key, "failed", spec.label(), spec.normalized(), error)
        summary["failed"] += 1


def _run_local(batches, store, summary, bar):
    from .runner import execute
    for batch in batches:
        for spec in batch:
            try:
                record, error = execute(spec), None
            except Exception as err:                  # recorded, and the sweep goes on
                record, error = None, _failure(err)
            _record(store, spec, record, error, summary)
            bar.update()


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


def _run_ray(batches, store, address, summary, bar, num_cpus):
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
        for batch in batches:
            futures = {task.remote(spec_data(spec.normalized()), threads): spec for spec in batch}
            while futures:
                ready, _ = ray.wait(list(futures), num_returns=1)
                spec = futures.pop(ready[0])
                try:
                    record, error = ray.get(ready[0])
                except Exception as err:              # the worker died
                    record, error = None, _failure(err)
                _record(store, spec, record, error, summary)   # only the driver writes
                bar.update()
    finally:
        if started_here:
            ray.shutdown()
