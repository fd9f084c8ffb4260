"""Run specs, keys, the store, sweeps: nothing lost, nothing duplicated, identical numbers on rerun."""
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import yaml

from calib_lib.runs import SpecError, Store, expand_grid, parse_spec, run_specs, status
from conftest import REPO

# Evaluation version 2 (per-document records, PackedLM, KL to the dense model) gave every run a new key.
# wanda-layer: naming the layer order (the default before 2026-11-25) keeps a key apart from the block order's.
PINNED_KEYS = {"wanda": "d3595cff289b6f496dbff8ff212fad6d", "wanda-layer": "1a6e5a663c086dcff16d54c147eab3cc",
               "dense": "2229f85772bd0f91ed81384f4fba3232"}

TINY_EVAL = {"ppl_texts": ["news"], "ppl_windows": 2, "ppl_seq_len": 32}
BASE = {"model": "tiny-llama", "eval": TINY_EVAL, "calibration": {"num_samples": 4, "seq_len": 32}}
GRID = {"base": BASE, "grid": {"method": [{"name": "wanda", "sparsity": 0.5}, {"name": "sparsegpt", "sparsity": 0.5}],
                               "calibration.source": ["news", "books"], "calibration.set_index": [0, 1, 2]}}


def numbers(record):
    """A run's metrics without their wall-clock timings."""
    return [{k: v for k, v in m.items() if k != "seconds"} for m in record["metrics"]]


def spec(**over):
    data = {"model": "tiny-llama", "method": {"name": "wanda", "sparsity": 0.5},
            "calibration": {"source": "news", "num_samples": 4, "seq_len": 32}, "eval": TINY_EVAL, **over}
    return parse_spec(data)


@pytest.mark.parametrize("data, path", [
    ({"method": {"name": "sparsegpt", "sparsity": 1.5}}, "method.sparsity"),
    ({"method": {"name": "gptq", "bits": 1}}, "method.bits"),
    ({"method": {"name": "wanda", "n": 4, "m": 2}}, "method.n"),
    ({"method": {"name": "rtn", "group_size": 0}}, "method.group_size"),
    ({"method": {"name": "rtn", "group_size": -3}}, "method.group_size"),
    ({"method": {"name": "wanda", "sparsty": 0.5}}, "method.sparsty"),
    ({"method": {"name": "gptq", "bits": "4"}}, "method.bits"),
    ({"method": {"name": "quantum"}}, "method.name"),
    ({"calibration": {"source": "news", "num_samples": 0, "seq_len": 32}}, "calibration.num_samples"),
    ({"calibration": {"source": "nowhere", "num_samples": 4, "seq_len": 32}}, "calibration.source"),
    ({"calibration": {"source": "news", "num_samples": 4, "seq_len": 32, "colour": 1}}, "calibration.colour"),
    ({"eval": {"ppl_windows": 2, "tasks": ["arc_easy"], "wat": 1}}, "eval.wat"),
    ({"batch_size": 0}, "batch_size"),
    ({"extra": True}, "extra"),
    # checked against the data and the model before anything loads (issue: they used to fail mid-run)
    ({"eval": {"tasks": ["arc_eazy"]}}, "eval.tasks[0]"),
    ({"eval": {"ppl_texts": ["auto", "newz"]}}, "eval.ppl_texts[1]"),
    ({"eval": {"ppl_texts": ["self"]}}, "eval.ppl_texts[0]"),
    ({"eval": {"tasks": "arc_easy"}}, "eval.tasks"),
    ({"eval": {"ppl_seq_len": 4096}}, "eval.ppl_seq_len"),
    ({"eval": {"ppl_windows": 0}}, "eval.ppl_windows"),
    ({"calibration": {"source": "news", "num_samples": 4, "seq_len": 4096}}, "calibration.seq_len"),
    ({"calibration": {"source": "news", "num_samples": 4, "seq_len": 32, "seed": -1}}, "calibration.seed"),
])
def test_bad_specs_name_the_field_path(data, path):
    base = {"model": "tiny-llama", "method": {"name": "wanda", "sparsity": 0.5},
            "calibration": {"source": "news", "num_samples": 4, "seq_len": 32}}
    with pytest.raises(SpecError) as err:
        parse_spec({**base, **data})
    assert err.value.path == path and str(err.value).startswith(path + ":")


def test_grid_errors_name_the_grid_point():
    base = {**BASE, "calibration": {**BASE["calibration"], "source": "news"}}
    bad = {"base": base, "grid": {"method": [{"name": "wanda", "sparsity": 0.5}, {"name": "wanda", "sparsity": 1.5}]}}
    with pytest.raises(SpecError, match=r"method.sparsity: .*grid point"):
        expand_grid(bad)
    with pytest.raises(SpecError, match="grid.calibration.seed"):
        expand_grid({"base": BASE, "grid": {"calibration.seed": []}})


def test_key_is_stable_normalised_and_version_sensitive(monkeypatch):
    a = spec()
    b = parse_spec({"model": "tiny-llama", "eval": TINY_EVAL, "method": {"sparsity": 0.5, "name": "wanda", "n": 0},
                    "calibration": {"seq_len": 32, "num_samples": 4, "source": "news", "seed": 0}})
    assert a.key == b.key                                # defaults and order do not matter
    assert spec(calibration={"source": "news", "num_samples": 4, "seq_len": 32, "set_index": 1}).key != a.key
    before = a.key
    from calib_lib.compress import METHODS
    monkeypatch.setattr(METHODS["wanda"], "version", 2)
    assert spec().key != before                          # a changed algorithm is not a cache hit
    monkeypatch.undo()
    from calib_lib.data.registry import STRATEGIES
    import dataclasses
    strategy = STRATEGIES["document-window"]
    monkeypatch.setitem(STRATEGIES._items, "document-window", dataclasses.replace(strategy, version=2))
    assert spec().key != before                          # so is a changed sampling strategy


def test_keys_survive_refactors():
    """Keys depend on the spec and the component versions only: these literals hold until a version or
    the spec format changes (then every store needs the migration of runs/migrate.py)."""
    assert spec().key == PINNED_KEYS["wanda"]
    assert spec(method={"name": "wanda", "sparsity": 0.5, "sequential": "layer"}).key == PINNED_KEYS["wanda-layer"]
    # an option added later enters the key only when set (so adding it kept every stored GPTQ run)
    gptq = {"name": "gptq", "bits": 3}
    assert spec(method={**gptq, "group_grid": "updated"}).key == spec(method=gptq).key
    assert spec(method={**gptq, "group_grid": "reference"}).key != spec(method=gptq).key
    assert parse_spec({"model": "smollm2-135m", "method": "dense", "eval": "quick"}).key == PINNED_KEYS["dense"]
    assert spec(method={"name": "gptq", "bits": 3}).versions() == {
        "model_loading": 1, "evaluation": 2, "method": 1, "pipeline": 1, "source": 1, "strategy": 1}


def test_store_is_atomic_without_duplicates_and_keeps_done_runs(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.put("k1", "failed", "x", {"a": 1}, {"error": "boom", "traceback": "...", "metrics": []})
    store.put("k1", "done", "x", {"a": 1}, {"metrics": [{"value": 1.0}]})
    store.put("k1", "failed", "x", {"a": 1}, {"error": "late failure", "metrics": []})
    assert store.count() == {"done": 1}
    assert store.get("k1")["metrics"] == [{"value": 1.0}]


def _writer(path, worker):
    store = Store(path)
    for i in range(30):
        store.put(f"key{(i + worker) % 40}", "done", "w", {"i": i}, {"metrics": [], "worker": worker})


def test_store_is_safe_with_several_writers(tmp_path):
    path = tmp_path / "many.sqlite"
    Store(path)
    procs = [multiprocessing.get_context("spawn").Process(target=_writer, args=(path, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert Store(path).count() == {"done": 33}           # keys 0..32 from the overlapping ranges


def test_failed_run_is_recorded_with_traceback_and_retried(tmp_path, monkeypatch):
    from calib_lib.runs import runner
    store = Store(tmp_path / "f.sqlite")
    s = spec()
    monkeypatch.setattr(runner, "execute", lambda spec, progress=False: (_ for _ in ()).throw(RuntimeError("disk on fire")))
    assert run_specs([s], store, progress=False)["failed"] == 1
    failed = store.records("failed")[0]
    assert "disk on fire" in failed["error"] and "Traceback" in failed["traceback"] and failed["metrics"] == []
    monkeypatch.undo()
    assert run_specs([s], store, progress=False)["done"] == 1
    assert store.count() == {"done": 1}


def test_sweep_rerun_is_all_cache_hits_with_identical_numbers(tmp_path):
    specs = expand_grid(GRID)
    assert len(specs) == 12
    store = Store(tmp_path / "r.sqlite")
    assert run_specs(specs, store, progress=False) == {"total": 12, "cached": 0, "done": 12, "failed": 0}
    assert run_specs(specs, store, progress=False) == {"total": 12, "cached": 12, "done": 0, "failed": 0}
    other = Store(tmp_path / "again.sqlite")
    run_specs(specs[:3], other, progress=False)
    for s in specs[:3]:
        assert numbers(store.get(s.key)) == numbers(other.get(s.key))
    record = store.get(specs[0].key)
    for field in ("calibration_fingerprint", "calibration_diagnostics", "timings", "peak_rss_mib",
                  "environment", "versions", "model_provenance"):
        assert record[field], field
    frame = store.frame()
    assert len(frame) == 12 and set(frame["calibration.source"]) == {"news", "books"}


def test_runs_record_cpu_seconds_that_a_pause_does_not_inflate(tmp_path, monkeypatch):
    """Wall-clock timings count a pause (SIGSTOP, a wait for the CPU); the CPU seconds beside them do not."""
    from calib_lib.runs import runner
    real = runner.compress_run

    def paused(*args, **kwargs):
        time.sleep(1.0)                       # the process gets no CPU, as under SIGSTOP
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "compress_run", paused)
    record = runner.execute(spec())
    wall, cpu = record["timings"], record["cpu_seconds"]
    assert set(cpu) == set(wall) >= {"load", "calibration", "compression", "evaluation", "total"}
    assert all(value >= 0 for value in cpu.values())
    # CPU seconds count every thread (up to 2x the wall time of the compression itself, ~0.05 s here)
    assert wall["compression"] >= 1.0 and wall["compression"] - cpu["compression"] > 0.6
    assert cpu["total"] >= cpu["evaluation"] > 0


def _done(store_path) -> int:
    """Finished runs, read without taking a write lock (the sweep may be writing)."""
    import sqlite3
    if not store_path.exists():
        return 0
    try:
        # A plain SELECT takes no write lock. (A "mode=ro" connection cannot open a WAL database while
        # the writer holds it, which would read as 0 forever.)
        db = sqlite3.connect(store_path, timeout=30)
        try:
            return db.execute("SELECT COUNT(*) FROM runs WHERE status = 'done'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError as err:
        if "no such table" in str(err):       # the sweep has not created it yet
            return 0
        raise


def _sweep_cmd(grid_path, store_path):
    return [sys.executable, "-m", "calib_lib.cli", "sweep", str(grid_path), "--store", str(store_path)]


def test_killing_a_sweep_at_random_points_loses_and_duplicates_nothing(tmp_path):
    grid_path = tmp_path / "grid.yaml"
    grid = {"base": BASE, "grid": {"method": [{"name": "wanda", "sparsity": 0.5}, {"name": "sparsegpt", "sparsity": 0.5}],
                                   "calibration.source": ["news"], "calibration.set_index": list(range(16))}}
    grid_path.write_text(yaml.safe_dump(grid))
    store_path = tmp_path / "killed.sqlite"
    specs = expand_grid(grid)
    rng = random.Random(0)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    history = [0]
    for attempt in range(4):              # interrupt at random points: SIGKILL, and once Ctrl-C
        # A background job of a non-interactive shell (CI) inherits SIGINT as ignored; give the sweep
        # the default disposition, as a terminal would, so Ctrl-C really interrupts it.
        proc = subprocess.Popen(_sweep_cmd(grid_path, store_path), cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        # A random point measured in progress, not wall time (tiny runs take ~0.1 s, machines differ):
        # as soon as one more run has finished, plus a random few milliseconds into the next.
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and _done(store_path) <= history[-1]:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGINT if attempt == 1 else signal.SIGKILL)
        proc.wait()
        done_now = _done(store_path)
        assert done_now >= history[-1], "a completed run was lost"
        history.append(done_now)
    assert history[-1] < len(specs), f"the sweep finished before it was interrupted: {history}"
    assert len(set(history)) >= 3, f"interruptions did not land mid-sweep: {history}"
    finish = subprocess.run(_sweep_cmd(grid_path, store_path), cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert finish.returncode == 0, finish.stderr[-2000:]
    missing = len(specs) - history[-1]
    assert f"{history[-1]} already in" in finish.stdout and f"{missing} done now" in finish.stdout
    store = Store(store_path)
    assert store.count() == {"done": len(specs)}
    with __import__("sqlite3").connect(store_path) as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM runs").fetchone() == (len(specs), len(specs))
    reference = Store(tmp_path / "clean.sqlite")
    run_specs(specs, reference, progress=False)
    for s in specs:
        assert numbers(store.get(s.key)) == numbers(reference.get(s.key))


def test_cli_status_and_run(tmp_path, capsys):
    from calib_lib.cli import main
    grid_path = tmp_path / "g.yaml"
    grid_path.write_text(yaml.safe_dump({"base": BASE, "grid": {"method": ["magnitude", "rtn"],
                                                                "calibration.source": ["news"]}}))
    store = str(tmp_path / "c.sqlite")
    assert main(["status", str(grid_path), "--store", store]) == 2    # reading never creates a store
    assert "no results store" in capsys.readouterr().err and not (tmp_path / "c.sqlite").exists()
    assert main(["sweep", str(grid_path), "--store", store]) == 0
    assert main(["status", str(grid_path), "--store", store]) == 0
    assert "done 2" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": "tiny-llama", "method": {"name": "gptq", "bits": 1}}))
    assert main(["run", str(bad), "--store", store]) == 2
    assert "method.bits" in capsys.readouterr().err


def test_ray_cluster_runs_a_grid_with_identical_numbers(tmp_path):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster
    specs = expand_grid({"base": BASE, "grid": {"method": [{"name": "wanda", "sparsity": 0.5}, "rtn"],
                                                "calibration.source": ["news"], "calibration.set_index": [0, 1]}})
    local = Store(tmp_path / "local.sqlite")
    run_specs(specs, local, progress=False)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import torch
    cpus = torch.get_num_threads()                       # tasks reserve the driver's thread count
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus, "include_dashboard": False})
    cluster.add_node(num_cpus=cpus)                      # the head and one worker process
    try:
        remote = Store(tmp_path / "ray.sqlite")
        summary = run_specs(specs, remote, backend="ray", address=cluster.address, progress=False)
        assert summary == {"total": 3, "cached": 0, "done": 3, "failed": 0}
        for s in specs:
            assert numbers(remote.get(s.key)) == numbers(local.get(s.key))
            assert remote.get(s.key)["environment"]["torch_threads"] == cpus
    finally:
        ray.shutdown()
        cluster.shutdown()


def _legacy_store(path, rows):
    """A store as the code-digest releases wrote it: no meta table."""
    import sqlite3
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE runs (key TEXT PRIMARY KEY, status TEXT NOT NULL, label TEXT NOT NULL, "
                     "spec TEXT NOT NULL, record TEXT NOT NULL, finished REAL NOT NULL)")
    db.executemany("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()


def test_old_code_digest_store_is_refused_then_migrated_in_place(tmp_path):
    from calib_lib.cli import main
    from calib_lib.runs.migrate import LEGACY_CURRENT, MigrationNeeded
    current, stale = spec(), spec(calibration={"source": "news", "num_samples": 4, "seq_len": 32, "set_index": 2})
    record = lambda digest: json.dumps({"code_version": digest, "metrics": [{"kind": "perplexity", "value": 9.0}]})
    path = tmp_path / "old.sqlite"
    _legacy_store(path, [("oldkey1", "done", "x", json.dumps(current.normalized()), record(LEGACY_CURRENT["wanda"]), 1.0),
                         ("oldkey2", "done", "y", json.dumps(stale.normalized()), record("an-older-digest"), 2.0),
                         ("oldkey3", "failed", "z", json.dumps(stale.normalized()), record(LEGACY_CURRENT["wanda"]), 3.0)])
    for read_only in (False, True):
        with pytest.raises(MigrationNeeded, match=f"calib store migrate {path}"):
            Store(path, read_only=read_only)
    assert main(["store", "migrate", str(path)]) == 0
    assert (tmp_path / "old.sqlite.before-migration").is_file()
    store = Store(path)
    assert store.count() == {"done": 1}
    migrated = store.get(current.key)
    assert migrated["metrics"] == [{"kind": "perplexity", "value": 9.0}]
    assert migrated["versions"] == current.versions() and migrated["legacy_code_version"] == LEGACY_CURRENT["wanda"]
    assert status([current, stale], store) == {"done": [current], "failed": [], "pending": [stale]}
    assert main(["store", "migrate", str(path)]) == 0              # a second migration changes nothing
    assert Store(path).count() == {"done": 1}


def test_a_new_store_is_stamped_with_the_key_scheme(tmp_path):
    import sqlite3
    from calib_lib.runs.migrate import KEY_SCHEME, key_scheme
    Store(tmp_path / "new.sqlite")
    assert key_scheme(sqlite3.connect(tmp_path / "new.sqlite")) == KEY_SCHEME
