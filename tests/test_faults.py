"""Fault injection: damaged caches heal, killed writes leave no half file, file and store errors are one
line with exit code 2, concurrent sweeps split the work, bad custom data is named precisely."""
import json
import multiprocessing
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import yaml

from calib_lib import files
from calib_lib.cli import main
from calib_lib.data import selfgen
from calib_lib.data.corpora import local_file_documents
from calib_lib.data.sampling import CalibrationSpec, export_set, sample
from calib_lib.data.tokenized import (DamagedCacheEntry, TokenizedDocs, load_tokenized, save_tokenized,
                                      tokenize_documents)
from calib_lib.errors import InvalidInput, StoreError
from calib_lib.models import EMBEDDED, loading
from calib_lib.runs import Store, expand_grid, parse_spec, run_specs
from calib_lib.runs import store as store_module
from calib_lib.runs import sweep as sweep_module
from calib_lib.runs.store import Claimant
from conftest import REPO
from test_models import QUIET, _fake_builder

TINY_EVAL = {"ppl_texts": ["news"], "ppl_windows": 2, "ppl_seq_len": 32}
SPEC = {"model": "tiny-llama", "method": {"name": "wanda", "sparsity": 0.5}, "eval": TINY_EVAL,
        "calibration": {"source": "news", "num_samples": 4, "seq_len": 32}}


def _damage(path, how: str) -> None:
    """Damage a file the ways a crash or a bad disk does."""
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif how == "emptied":
        path.write_bytes(b"")
    elif how == "flipped":                       # a few flipped bytes in the middle
        damaged = bytearray(data)
        for offset in (len(data) // 3, len(data) // 2, 2 * len(data) // 3):
            damaged[offset] ^= 0x5A
        path.write_bytes(bytes(damaged))
    else:
        raise AssertionError(how)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("calib: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# -- damaged caches heal -----------------------------------------------------------------------

@pytest.mark.parametrize("how", ["truncated", "emptied", "flipped"])
def test_damaged_tokenized_cache_is_rebuilt(how, tiny_llama, isolated_cache):
    _, tok = tiny_llama
    docs = [f"document {i} " + "word " * (20 + i) for i in range(30)]
    first = tokenize_documents(docs, tok, cache_key="docs")
    (path,) = (isolated_cache / "tokenized").glob("*.npz")
    _damage(path, how)
    with pytest.raises(DamagedCacheEntry):
        load_tokenized(path)
    again = tokenize_documents(docs, tok, cache_key="docs")
    assert np.array_equal(again.ids, first.ids) and np.array_equal(again.offsets, first.offsets)
    healed = load_tokenized(path)                     # rebuilt on disk, not only in memory
    assert np.array_equal(healed.ids, first.ids)


def test_every_altered_byte_of_a_tokenized_entry_is_caught_or_harmless(tmp_path):
    """np.load alone raises half a dozen exception types for altered zip files, and returns altered
    arrays for some; with the digest, any single altered byte is refused or changes nothing read."""
    docs = TokenizedDocs(np.arange(200, dtype=np.int64), np.array([0, 50, 120, 200], dtype=np.int64))
    path, probe = tmp_path / "entry.npz", tmp_path / "probe.npz"
    save_tokenized(path, docs)
    data = path.read_bytes()
    for offset in range(len(data)):
        altered = bytearray(data)
        altered[offset] ^= 0xFF
        probe.write_bytes(bytes(altered))
        try:
            read = load_tokenized(probe)
        except DamagedCacheEntry:
            continue
        assert np.array_equal(read.ids, docs.ids) and np.array_equal(read.offsets, docs.offsets), offset


def test_tokenized_cache_without_digest_is_rebuilt(tiny_llama, isolated_cache):
    """An entry of the old layout (no sha256) cannot be verified, so it is rebuilt once."""
    _, tok = tiny_llama
    first = tokenize_documents(["alpha beta", "gamma delta"], tok, cache_key="old")
    (path,) = (isolated_cache / "tokenized").glob("*.npz")
    np.savez(path, ids=first.ids + 1, offsets=first.offsets)        # wrong ids, no digest
    assert np.array_equal(tokenize_documents(["alpha beta", "gamma delta"], tok, cache_key="old").ids, first.ids)


@pytest.mark.parametrize("how", ["truncated", "emptied", "flipped", "other spec"])
def test_damaged_self_generated_set_is_regenerated(how, tiny_llama, isolated_cache):
    model, tok = tiny_llama
    spec = CalibrationSpec("self", 3, 16, t_init=1.5, t_final=0.8)
    first = sample(spec, tok, model, progress=False)
    (path,) = (isolated_cache / "self_generated").glob("*.jsonl")
    if how == "other spec":                            # intact, but not the set this spec asks for
        other = sample(CalibrationSpec("self", 3, 16, set_index=1, t_init=1.5, t_final=0.8), tok, model,
                       progress=False)
        export_set(other, path, tok)
    else:
        _damage(path, how)
    again = sample(spec, tok, model, progress=False)
    assert torch.equal(again.input_ids, first.input_ids)
    assert selfgen._cached_set(path, spec, tok) is not None, "the entry is rebuilt on disk"


@pytest.mark.parametrize("manifest", ["[]", '{"cache_format": 1, "files": "model.safetensors"}', "{trunc"])
def test_altered_model_manifest_is_rebuilt(manifest, isolated_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(loading, "_build_cache", _fake_builder(calls))
    entry = EMBEDDED["smollm2-135m"]
    path = loading.prepare_embedded(entry, **QUIET)
    (path / loading.MANIFEST).write_text(manifest)
    assert loading.verify_cache(entry) is None
    loading.prepare_embedded(entry, **QUIET)
    assert len(calls) == 2 and loading.verify_cache(entry) is not None


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_build_folders_of_killed_builds_are_removed(isolated_cache, monkeypatch):
    monkeypatch.setattr(loading, "_build_cache", _fake_builder([]))
    entry = EMBEDDED["smollm2-135m"]
    models = isolated_cache / "models"
    dead = models / f".{entry.name}-build-{_dead_pid()}@{files.HOST}~abc"
    live = models / f".{entry.name}-build-{files.owner_tag()}~def"      # a build running right now
    for folder in (dead, live):
        (folder / "model").mkdir(parents=True)
    loading.prepare_embedded(entry, **QUIET)
    assert not dead.exists() and live.exists()
    assert sorted(p.name for p in models.iterdir()) == sorted([entry.name, live.name])


# -- atomic writes ------------------------------------------------------------------------------

_SLOW_WRITER = """
import sys, time
from calib_lib.files import atomic_write
with atomic_write(sys.argv[1]) as handle:
    handle.write(b"new" * 1000)
    handle.flush()
    print("writing", flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("existed", [False, True])
def test_killed_write_leaves_no_half_file(tmp_path, existed):
    target = tmp_path / "cache" / "entry.npz"
    if existed:
        files.atomic_write_bytes(target, b"old")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (target.read_bytes() == b"old") if existed else not target.exists()
    leftovers = [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and str(proc.pid) in leftovers[0].name
    files.atomic_write_bytes(target, b"fresh")                  # the next write clears what the kill left
    assert target.read_bytes() == b"fresh" and list(target.parent.iterdir()) == [target]


def test_temporary_file_of_a_live_writer_is_kept(tmp_path):
    live = tmp_path / files.temp_name(".entry.", ".tmp")
    live.write_bytes(b"in progress")
    files.atomic_write_bytes(tmp_path / "entry", b"done")
    assert live.exists()


def test_exported_set_respects_the_umask(tmp_path, tiny_llama):
    _, tok = tiny_llama
    cal = sample(CalibrationSpec("random-vocab", 2, 8), tok)
    previous = os.umask(0o022)
    try:
        export_set(cal, tmp_path / "set.jsonl", tok)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "set.jsonl").stat().st_mode) == 0o644


# -- file errors: one line, exit code 2 ---------------------------------------------------------

def test_out_under_a_file_fails_before_any_work(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    monkeypatch.setattr("calib_lib.models.load_model", lambda *a, **k: pytest.fail("loaded the model first"))
    code = main(["data", "sample", "--source", "random-vocab", "--num-samples", "2", "--seq-len", "8",
                 "--model", "tiny-llama", "--out", str(blocker / "set.jsonl")])
    assert code == 2
    err = _one_line_error(capsys)
    assert str(blocker) in err and "not a directory" in err
    assert main(["eval", "--model", "tiny-llama", "--suite", "tiny", "--json", str(blocker / "r.json")]) == 2
    assert str(blocker) in _one_line_error(capsys)


def _refuse_temp_files(monkeypatch, directory):
    """os.open as for a user who may not write ``directory`` (the tests may run as root)."""
    real_open = os.open

    def guarded(path, *args, **kwargs):
        if str(path).startswith(str(directory)) and str(path).endswith(".tmp"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", guarded)


def test_unwritable_out_names_the_target_not_a_temp_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / "locked" / "set.jsonl"
    out.parent.mkdir()
    _refuse_temp_files(monkeypatch, out.parent)
    code = main(["data", "sample", "--source", "random-vocab", "--num-samples", "2", "--seq-len", "8",
                 "--model", "tiny-llama", "--out", str(out), "--reference", "none"])
    assert code == 2
    err = _one_line_error(capsys)
    assert f"{out}: Permission denied" in err and ".tmp" not in err and not list(out.parent.iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any directory")
def test_out_in_a_read_only_directory(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code = main(["data", "sample", "--source", "random-vocab", "--num-samples", "2", "--seq-len", "8",
                 "--model", "tiny-llama", "--out", str(locked / "set.jsonl")])
    assert code == 2 and "not writable" in _one_line_error(capsys)


def test_cache_pointing_at_a_file(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("")
    monkeypatch.setenv("CALIB_CACHE", str(blocker))
    (tmp_path / "docs.txt").write_text("one document\n\nanother document")
    code = main(["data", "sample", "--source", "custom", "--path", str(tmp_path / "docs.txt"),
                 "--num-samples", "1", "--seq-len", "4", "--model", "tiny-llama", "--reference", "none"])
    assert code == 2
    err = _one_line_error(capsys)
    assert f"CALIB_CACHE='{blocker}' is not a directory" in err


def test_a_bug_keeps_its_traceback(monkeypatch):
    import calib_lib.cli as cli
    monkeypatch.setattr(cli, "cmd_model_list", lambda args: np.zeros(3).reshape(2))   # numpy's ValueError
    with pytest.raises(ValueError, match="reshape"):
        main(["model", "list"])
    monkeypatch.setattr(cli, "cmd_model_list", lambda args: {}["missing"])
    with pytest.raises(KeyError):
        main(["model", "list"])


def test_interrupt_mentions_the_store_only_for_runs(monkeypatch, capsys, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("calib_lib.models.load_model", interrupted)
    assert main(["data", "sample", "--source", "random-vocab", "--model", "tiny-llama"]) == 130
    assert capsys.readouterr().err == "calib: interrupted.\n"
    monkeypatch.setattr("calib_lib.runs.run_specs", interrupted)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    assert main(["run", str(spec_path), "--store", str(tmp_path / "s.sqlite")]) == 130
    assert "finished run is in the store" in capsys.readouterr().err


# -- the results store ---------------------------------------------------------------------------

def _grid_file(tmp_path, methods=("magnitude", "rtn")):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"base": {**SPEC, "method": "wanda"}, "grid": {"method": list(methods)}}))
    return path


def _filled_store(path, runs=40) -> Store:
    store = Store(path)
    for i in range(runs):
        store.put(f"key{i}", "done", f"run {i}", {"i": i}, {"metrics": [], "padding": "x" * 2000})
    return store


def test_status_of_a_mistyped_store_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "runs.sqlite"
    assert main(["status", str(_grid_file(tmp_path)), "--store", str(missing)]) == 2
    assert f"no results store at {missing}" in _one_line_error(capsys)
    assert not (tmp_path / "no").exists()


def test_reading_a_store_leaves_no_wal_files(tmp_path, capsys):
    path = tmp_path / "runs.sqlite"
    _filled_store(path, runs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.sqlite"]
    grid = _grid_file(tmp_path)
    assert main(["status", str(grid), "--store", str(path), "-v"]) == 0
    assert Store(path, read_only=True).count() == {"done": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml", "runs.sqlite"]


def test_reading_during_a_sweep_goes_through_the_wal(tmp_path):
    """While a sweep runs its -wal file stays, so readers use SQLite's locks (not an immutable open)."""
    path = tmp_path / "runs.sqlite"
    store = _filled_store(path, runs=1)
    with store.claimant():
        assert (tmp_path / "runs.sqlite-wal").exists()
        store.put("late", "done", "late run", {}, {"metrics": []})
        assert Store(path, read_only=True).count() == {"done": 2}      # sees the run still in the WAL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.sqlite"]


@pytest.mark.parametrize("verb", ["status", "sweep"])
def test_a_file_that_is_not_a_store(verb, tmp_path, capsys):
    path = tmp_path / "notes.sqlite"
    path.write_text("these are my notes, not a database\n" * 50)
    before = path.read_bytes()
    assert main([verb, str(_grid_file(tmp_path)), "--store", str(path)]) == 2
    assert f"results store {path}: it is not a results store" in _one_line_error(capsys)
    assert path.read_bytes() == before


@pytest.mark.parametrize("verb", ["status", "sweep"])
def test_a_store_with_damaged_pages(verb, tmp_path, capsys):
    path = tmp_path / "runs.sqlite"
    _filled_store(path)
    data = bytearray(path.read_bytes())
    for page in range(1, len(data) // 4096, 2):            # keep the header page, garble every other page
        data[page * 4096 + 8: page * 4096 + 600] = os.urandom(592)
    path.write_bytes(bytes(data))
    assert main([verb, str(_grid_file(tmp_path)), "--store", str(path)]) == 2
    err = _one_line_error(capsys)
    assert str(path) in err and "damaged" in err and "git checkout" in err


def test_store_path_that_cannot_be_opened(tmp_path, capsys):
    folder = tmp_path / "runs.sqlite"
    folder.mkdir()
    assert main(["sweep", str(_grid_file(tmp_path)), "--store", str(folder)]) == 2
    assert "cannot be opened" in _one_line_error(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["sweep", str(_grid_file(tmp_path)), "--store", str(blocker / "runs.sqlite")]) == 2
    assert f"cannot create the folder of the results store {blocker / 'runs.sqlite'}" in _one_line_error(capsys)
    with pytest.raises(StoreError):
        Store(folder, read_only=True)


def test_failed_runs_show_their_reason(tmp_path, capsys, monkeypatch):
    from calib_lib.runs import runner

    def fail(spec, progress=False):
        raise RuntimeError("disk on fire\nsecond line of the message")
    monkeypatch.setattr(runner, "execute", fail)
    grid = _grid_file(tmp_path, methods=({"name": "wanda", "sparsity": 0.5}, {"name": "rtn", "bits": 4}))
    store = str(tmp_path / "s.sqlite")
    assert main(["sweep", str(grid), "--store", store]) == 1
    out = capsys.readouterr().out
    assert "0 done now, 2 failed" in out
    assert "failed  tiny-llama wanda 50% news/4x32/set0: RuntimeError: disk on fire\n" in out
    assert "second line" not in out
    assert main(["status", str(grid), "--store", store, "-v"]) == 0
    out = capsys.readouterr().out
    assert out.count(": RuntimeError: disk on fire") == 2


def test_label_shows_n_and_m_only_for_n_m_pruning():
    assert parse_spec(SPEC).label() == "tiny-llama wanda 50% news/4x32/set0"
    assert "2:4" in parse_spec({**SPEC, "method": {"name": "wanda", "n": 2, "m": 4}}).label()


def test_duplicate_yaml_keys_are_refused(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text("model: tiny-llama\nmethod: wanda\nmodel: tiny-opt\n")
    assert main(["run", str(path), "--store", str(tmp_path / "s.sqlite")]) == 2
    err = _one_line_error(capsys)
    assert f"{path}, line 3: the key 'model' appears twice" in err and "first on line 1" in err


# -- concurrent sweeps ---------------------------------------------------------------------------

def _fake_execute(log_path, rendezvous=None):
    """A run that takes 0.2 s and logs who computed it. With ``rendezvous``, the first run of each
    process waits there for the other process's first run: both sweeps must compute at once."""
    waited = False

    def execute(spec, progress=False):
        nonlocal waited
        if rendezvous is not None and not waited:
            waited = True
            rendezvous.wait(60)
        time.sleep(0.2)
        with open(log_path, "a") as log:
            log.write(f"{spec.key} {os.getpid()}\n")
        return {"metrics": []}
    return execute


_SPLIT_GRID = {"base": SPEC, "grid": {"calibration.set_index": list(range(10))}}


def _sweep_worker(store_path, log_path, rendezvous):
    from calib_lib.runs import runner
    runner.execute = _fake_execute(log_path, rendezvous)
    run_specs(expand_grid(_SPLIT_GRID), Store(store_path), progress=False)


def test_concurrent_sweeps_split_the_work(tmp_path):
    store_path, log_path = tmp_path / "s.sqlite", tmp_path / "computed.log"
    Store(store_path)
    ctx = multiprocessing.get_context("spawn")
    rendezvous = ctx.Barrier(2)
    procs = [ctx.Process(target=_sweep_worker, args=(store_path, log_path, rendezvous)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    computed = [line.split() for line in log_path.read_text().splitlines()]
    keys = [key for key, _ in computed]
    assert len(keys) == len(set(keys)) == 10, "every run computed exactly once"
    assert len({pid for _, pid in computed}) == 2, "both sweeps took a share"
    assert Store(store_path).count() == {"done": 10}


def _sql(path, query: str, *params):
    db = sqlite3.connect(path)
    try:
        with db:
            return db.execute(query, params).fetchall()
    finally:
        db.close()


def _lease(store, key, pid, host, heartbeat_age=0.0):
    """Make another sweep (process ``pid`` on ``host``) hold run ``key``."""
    assert store.claim(key, Claimant(f"{pid}@{host}~test", pid, host), since=time.time()) == "claimed"
    _sql(store.path, "UPDATE leases SET heartbeat = ? WHERE key = ?", time.time() - heartbeat_age, key)


@pytest.mark.parametrize("holder", ["dead process here", "stale heartbeat elsewhere"])
def test_runs_of_a_dead_sweep_are_taken_over(holder, tmp_path, monkeypatch):
    from calib_lib.runs import runner
    log_path = tmp_path / "computed.log"
    monkeypatch.setattr(runner, "execute", _fake_execute(log_path))
    spec = parse_spec(SPEC)
    store = Store(tmp_path / "s.sqlite")
    if holder == "dead process here":
        _lease(store, spec.key, _dead_pid(), files.HOST)
    else:
        _lease(store, spec.key, 1, "elsewhere", heartbeat_age=store_module.LEASE_STALE_S + 1)
    assert run_specs([spec], store, progress=False) == {"total": 1, "cached": 0, "done": 1, "failed": 0}
    assert log_path.read_text().split()[0] == spec.key


def test_a_live_sweeps_run_is_waited_for_not_recomputed(tmp_path, monkeypatch):
    from calib_lib.runs import runner
    monkeypatch.setattr(runner, "execute", lambda spec, progress=False: pytest.fail("computed twice"))
    monkeypatch.setattr(sweep_module, "WAIT_POLL_S", 0.05)
    spec = parse_spec(SPEC)
    store = Store(tmp_path / "s.sqlite")
    _lease(store, spec.key, 1, "elsewhere")                     # another machine computes it now
    finish = threading.Timer(0.3, store.put, args=(spec.key, "done", spec.label(), spec.normalized(),
                                                   {"metrics": []}))
    finish.start()
    try:
        assert run_specs([spec], store, progress=False) == {"total": 1, "cached": 1, "done": 0, "failed": 0}
    finally:
        finish.join()


def test_leases_are_released_when_a_sweep_ends(tmp_path, monkeypatch):
    from calib_lib.runs import runner

    def interrupted(spec, progress=False):
        raise KeyboardInterrupt
    monkeypatch.setattr(runner, "execute", interrupted)
    store = Store(tmp_path / "s.sqlite")
    with pytest.raises(KeyboardInterrupt):
        run_specs([parse_spec(SPEC)], store, progress=False)
    assert _sql(store.path, "SELECT COUNT(*) FROM leases") == [(0,)]


# -- custom data ---------------------------------------------------------------------------------

def _jsonl(path, *lines):
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else json.dumps(line).encode() for line in lines))
    return path


@pytest.mark.parametrize("lines, message", [
    ([{"text": "fine"}, {"text": 1.5}], r"line 2: the field 'text' holds a number \(1.5\), not text"),
    ([{"text": "fine"}, {"text": ["a"]}], r"line 2: the field 'text' holds a list"),
    ([{"text": "fine"}, b'{"text": "broken', {"text": "ok"}], r"line 2: not valid JSON"),
    ([{"text": "fine"}, {"text": "ok"}, b'{"text": "\xff\xfe"}'], r"line 3: not UTF-8 text \(byte 0xff"),
    ([{"text": "fine"}, {"body": "x", "id": 3}], r"1 of 2 records lack the text field 'text' \(first at line 2, "
                                                r"whose fields are \['body', 'id'\]\)"),
    ([{"text": "fine"}, "a bare string"], r"line 2: a string where a JSON object was expected"),
    ([{"text": "same words"}] * 12, r"all 12 documents are identical"),
])
def test_bad_jsonl_is_named_by_file_and_line(tmp_path, lines, message):
    path = _jsonl(tmp_path / "data.jsonl", *lines)
    with pytest.raises(InvalidInput, match=message) as err:
        local_file_documents(str(path))
    assert str(path) in str(err.value)


def test_null_texts_are_dropped_and_counted(tmp_path):
    import pandas as pd
    path = _jsonl(tmp_path / "data.jsonl", {"text": "one"}, {"text": None}, {"text": "two"}, {"text": None})
    with pytest.warns(UserWarning, match="skipped 2 record"):
        assert local_file_documents(str(path)) == ["one", "two"]
    parquet = tmp_path / "data.parquet"
    pd.DataFrame({"text": ["one", None, "two"]}).to_parquet(parquet)
    with pytest.warns(UserWarning, match="skipped 1 record"):
        assert local_file_documents(str(parquet)) == ["one", "two"]


def test_non_text_parquet_columns_are_refused(tmp_path):
    import pandas as pd
    path = tmp_path / "numbers.parquet"
    pd.DataFrame({"text": [0.5, 1.5, None], "label": ["a", "b", "c"]}).to_parquet(path)
    with pytest.raises(InvalidInput, match=r"column 'text' holds float64 values, not text"):
        local_file_documents(str(path))
    pd.DataFrame({"text": [["a", "list"], ["of", "words"]]}).to_parquet(path := tmp_path / "lists.parquet")
    with pytest.raises(InvalidInput, match=r"lists.parquet, row 1: the column 'text' holds .* \(type ndarray\), not text"):
        local_file_documents(str(path))
    with pytest.raises(InvalidInput, match=r"no column 'body'; columns: \['text'\]"):
        local_file_documents(str(path), text_field="body")


def test_bad_custom_data_through_the_cli(tmp_path, capsys):
    path = _jsonl(tmp_path / "data.jsonl", {"text": "fine"}, {"text": 7})
    code = main(["data", "sample", "--source", "custom", "--path", str(path), "--num-samples", "1",
                 "--seq-len", "4", "--model", "tiny-llama", "--reference", "none"])
    assert code == 2
    assert f"custom source {path}, line 2: the field 'text' holds a number (7)" in _one_line_error(capsys)


def test_null_texts_are_reported_by_the_cli(tmp_path, capsys):
    path = _jsonl(tmp_path / "data.jsonl", {"text": "a few words of text"}, {"text": None},
                  {"text": "and some more words"})
    assert main(["data", "sample", "--source", "custom", "--path", str(path), "--num-samples", "1",
                 "--seq-len", "4", "--model", "tiny-llama", "--reference", "none"]) == 0
    assert f"calib: warning: custom source {path}: skipped 1 record(s) whose 'text' is null\n" in capsys.readouterr().err


# -- evaluation output ---------------------------------------------------------------------------

def test_skipped_tasks_say_why(capsys, monkeypatch):
    monkeypatch.delenv("CALIB_MIRROR", raising=False)
    assert main(["eval", "--model", "tiny-llama", "--suite", "tiny"]) == 0
    out = capsys.readouterr().out
    for task in ("arc_easy", "piqa", "copa"):
        assert f"{task:<15} skipped: set CALIB_MIRROR to the offline mirror or go online" in out


def test_lm_eval_git_hash_is_quiet_outside_a_checkout(tmp_path, capfd, monkeypatch):
    from calib_lib.evaluate import tasks
    monkeypatch.chdir(tmp_path)
    assert tasks._git_hash_quietly() is None
    assert capfd.readouterr().err == ""
