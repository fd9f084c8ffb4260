"""Finished runs archived as one immutable file each (issue #18): the SQLite store imports them on opening,
writes each finished run's file before its row, and reads an archive-only folder (a fresh clone) without
writing anything. Fake records and blocks: no model runs."""
import gc
import os
import sqlite3
import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml

from calib_lib.cli import main
from calib_lib.errors import StoreError
from calib_lib.evaluate.records import DocumentBlock, pack_blocks, task_block
from calib_lib.runs import Store, expand_grid
from calib_lib.runs import archive as archive_module
from calib_lib.runs import store as store_module
from calib_lib.runs.archive import RunArchive, file_name, key_of

SPEC = {"model": "tiny-llama", "method": {"name": "wanda", "sparsity": 0.5},
        "eval": {"ppl_texts": ["news"], "ppl_windows": 2, "ppl_seq_len": 32},
        "calibration": {"source": "news", "num_samples": 4, "seq_len": 32}}


def _blocks(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    docs = [{"doc_id": i, "gold": int(rng.integers(2)), "loglik": list(rng.normal(size=2)), "tokens": [2, 3],
             "chars": [4, 6], "greedy": [True, False], "correct": float(rng.integers(2)), "correct_norm": 0.0}
            for i in range(3)]
    windows = DocumentBlock("perplexity", "news", {"doc_id": np.arange(2), "nll": rng.random(2) * 60,
                                                   "tokens": np.array([31, 31])})
    return pack_blocks([task_block("arc_easy", docs), windows])


def _record(seed: int) -> dict:
    # keys deliberately out of alphabetical order: frame() takes its columns in the record's order
    return {"metrics": [{"kind": "perplexity", "name": "news", "metric": "ppl", "value": 10.0 + seed, "n": 2,
                         "seconds": 0.1},
                        {"kind": "task", "name": "arc_easy", "metric": "acc", "value": 0.5, "stderr": 0.1, "n": 3}],
            "versions": {"method": 1}, "calibration_fingerprint": f"fp{seed}", "timings": {"total": 1.5},
            "documents": _blocks(seed)}


def _spec(seed: int) -> dict:
    return {"model": "m", "method": {"name": "wanda", "sparsity": 0.5}, "eval": {"name": "tiny"},
            "calibration": {"source": "news", "set_index": seed}, "replicate": 0, "batch_size": None}


def _fill(store: Store, runs: int = 3) -> list[str]:
    keys = [f"{seed:032x}" for seed in range(runs)]
    for seed, key in enumerate(keys):
        store.put(key, "done", f"run {seed}", _spec(seed), _record(seed))
    return keys


def _blobs(path) -> list:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT key, kind, name, data FROM documents ORDER BY key, kind, name").fetchall()
    finally:
        db.close()


def _tree(folder) -> dict:
    """Every file under ``folder``: relative path -> (bytes, mtime)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _same_store(a: Store, b: Store) -> None:
    assert a.records() == b.records()
    pd.testing.assert_frame_equal(a.frame(), b.frame())
    pd.testing.assert_frame_equal(a.documents(), b.documents())
    pd.testing.assert_frame_equal(a.choices(), b.choices())


def test_a_finished_run_round_trips_through_its_file(tmp_path):
    runs = tmp_path / "runs"
    first = Store(tmp_path / "a.sqlite", archive=runs)
    keys = _fill(first)
    first.put("f" * 32, "failed", "broken", _spec(9), {"error": "boom", "traceback": "...", "metrics": []})
    assert sorted(p.name for p in runs.iterdir()) == [f"{k}.zip" for k in keys]     # failed runs are not archived
    with zipfile.ZipFile(runs / f"{keys[0]}.zip") as zf:
        infos = {i.filename: i for i in zf.infolist()}
    assert list(infos) == ["run.json", "documents/perplexity/news", "documents/task/arc_easy"]
    assert infos["run.json"].compress_type == zipfile.ZIP_DEFLATED
    assert infos["documents/task/arc_easy"].compress_type == zipfile.ZIP_STORED     # npz: compressed already
    assert RunArchive(runs).read(keys[0])["record"] == {k: v for k, v in _record(0).items() if k != "documents"}

    second = Store(tmp_path / "b.sqlite", archive=runs)          # a fresh cache, from the files alone
    assert second.count() == {"done": 3}
    _same_store(first, second)
    assert _blobs(tmp_path / "b.sqlite") == [row for row in _blobs(tmp_path / "a.sqlite") if row[0] != "f" * 32]
    db_text = "SELECT key, spec, record, finished FROM runs WHERE status = 'done' ORDER BY key"
    a, b = (sqlite3.connect(tmp_path / name) for name in ("a.sqlite", "b.sqlite"))
    assert a.execute(db_text).fetchall() == b.execute(db_text).fetchall()   # same text and finished time
    a.close(), b.close()


def test_the_same_run_gives_the_same_bytes(tmp_path):
    store = Store(tmp_path / "s.sqlite", archive=tmp_path / "runs")
    keys = _fill(store)
    # exported again from the store's rows (another path through the code), into another folder
    assert store.export_archive(tmp_path / "again") == 3
    for key in keys:
        assert (tmp_path / "runs" / f"{key}.zip").read_bytes() == (tmp_path / "again" / f"{key}.zip").read_bytes()
    run = RunArchive(tmp_path / "runs").read(keys[0])
    assert archive_module.pack(run) == (tmp_path / "runs" / f"{keys[0]}.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "runs" / f"{keys[0]}.zip") as zf:
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert {i.external_attr >> 16 for i in zf.infolist()} == {0o100644}


def test_opening_again_imports_nothing_twice_and_rewrites_no_file(tmp_path):
    runs = tmp_path / "runs"
    keys = _fill(Store(tmp_path / "a.sqlite", archive=runs))
    before = _tree(runs)
    for _ in range(2):
        store = Store(tmp_path / "b.sqlite", archive=runs)
        assert store.count() == {"done": 3} and len(store.records()) == 3
    assert _tree(runs) == before
    assert store.export_archive() == 0 and _tree(runs) == before          # every run has its file already
    store.put(keys[0], "done", "again", _spec(0), _record(7))              # done already: nothing changes
    assert _tree(runs) == before and store.get(keys[0])["calibration_fingerprint"] == "fp0"


def test_a_failed_run_is_replaced_by_its_archived_finished_run(tmp_path):
    keys = _fill(Store(tmp_path / "a.sqlite", archive=tmp_path / "runs"), runs=1)
    cache = Store(tmp_path / "b.sqlite")
    cache.put(keys[0], "failed", "run 0", _spec(0), {"error": "boom", "metrics": []})
    assert Store(tmp_path / "b.sqlite", archive=tmp_path / "runs").count() == {"done": 1}


def test_an_archived_file_is_never_replaced(tmp_path):
    runs = tmp_path / "runs"
    archive = RunArchive(runs)
    key = "0" * 32
    run = {"key": key, "status": "done", "label": "x", "spec": _spec(0), "record": {"metrics": []},
           "finished": 1.0, "documents": {}}
    assert archive.write(run) is True
    before = _tree(runs)
    assert archive.write({**run, "record": {"metrics": [], "other": 1}, "finished": 2.0}) is False
    assert _tree(runs) == before
    # a sweep that computes a run whose file is already there (not yet imported) keeps the file's run
    store = Store(tmp_path / "s.sqlite")
    store.archive = archive                 # as if the file arrived (git pull) after the store was opened
    store.put(key, "done", "x", _spec(0), {"metrics": [], "other": 2})
    assert store.get(key) == {"status": "done", "spec": _spec(0), "metrics": []}
    assert _tree(runs) == before


def test_odd_keys_map_to_readable_file_names_and_back(tmp_path):
    for key in ("a/b c", ".hidden", "..", "100%", "ünï"):
        name = file_name(key)
        assert "/" not in name and not name.startswith(".") and key_of(name) == key
    assert file_name("0123abcd") == "0123abcd.zip"
    archive = RunArchive(tmp_path / "runs")
    archive.write({"key": "a/b", "status": "done", "label": "x", "spec": {}, "record": {}, "finished": 0.0,
                   "documents": {}})
    assert archive.keys() == {"a/b"} and archive.read("a/b")["key"] == "a/b"
    assert key_of(".calib-run-1@h~ab.tmp") is None and key_of("notes.txt") is None


@pytest.mark.parametrize("where", ["fsync", "link", "interrupt"])
def test_an_interrupted_write_leaves_no_file(tmp_path, monkeypatch, where):
    runs = tmp_path / "runs"
    store = Store(tmp_path / "s.sqlite", archive=runs)

    def boom(*args, **kwargs):
        if where == "interrupt":
            raise KeyboardInterrupt
        raise OSError(28, "No space left on device")

    if where == "fsync":
        monkeypatch.setattr(archive_module.os, "fsync", boom)
    else:
        monkeypatch.setattr(archive_module, "_link_new", boom)
    with pytest.raises(KeyboardInterrupt if where == "interrupt" else StoreError) as err:
        _fill(store, runs=1)
    if where != "interrupt":
        assert f"cannot write archived run {runs / ('0' * 32 + '.zip')}" in str(err.value)
    assert list(runs.iterdir()) == []                       # neither the file nor its temporary file
    monkeypatch.undo()
    assert store.count() == {}                              # and no row: the run is computed again


def test_a_killed_writer_between_file_and_row_loses_nothing(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    store = Store(tmp_path / "s.sqlite", archive=runs)

    def killed(db, run):
        raise KeyboardInterrupt                             # the process dies after the file, before the row

    monkeypatch.setattr(store_module, "_insert", killed)
    with pytest.raises(KeyboardInterrupt):
        _fill(store, runs=1)
    monkeypatch.undo()
    assert [p.name for p in runs.iterdir()] == ["0" * 32 + ".zip"]
    assert Store(tmp_path / "s.sqlite").count() == {}                      # the row is not there ...
    assert Store(tmp_path / "s.sqlite", archive=runs).count() == {"done": 1}   # ... until the next opening


@pytest.mark.parametrize("how", ["truncated", "garbage", "flipped", "renamed", "empty"])
def test_a_damaged_file_names_itself_and_the_fix(tmp_path, how):
    runs = tmp_path / "runs"
    keys = _fill(Store(tmp_path / "a.sqlite", archive=runs), runs=2)
    path = runs / f"{keys[1]}.zip"
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "flipped":                                  # one bit of a stored block: its CRC fails
        at = data.index(b"PK\x03\x04", 10) + 200
        path.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1:])
    elif how == "renamed":                                  # another run's file under this key
        path.write_bytes((runs / f"{keys[0]}.zip").read_bytes())
    else:
        path.write_bytes(b"")
    with pytest.raises(StoreError) as err:
        Store(tmp_path / "b.sqlite", archive=runs)
    message = str(err.value)
    assert str(path) in message and f"git checkout -- {path}" in message and "delete it" in message
    assert "\n" not in message
    with pytest.raises(StoreError, match="damaged"):
        Store(tmp_path / "c.sqlite", read_only=False, archive=runs)


def test_a_read_only_store_reads_an_archive_only_folder_and_writes_nothing(tmp_path):
    _fill(Store(tmp_path / "work" / "runs.sqlite", archive=tmp_path / "work" / "runs"))
    clone = tmp_path / "clone"                                          # what a fresh git clone has
    (clone / "runs").mkdir(parents=True)
    for path in (tmp_path / "work" / "runs").iterdir():
        (clone / "runs" / path.name).write_bytes(path.read_bytes())
    before = _tree(clone)
    reader = Store(clone / "runs.sqlite", read_only=True, archive=clone / "runs")
    _same_store(reader, Store(tmp_path / "work" / "runs.sqlite", read_only=True))
    with pytest.raises(StoreError, match="read-only"):
        reader.put("x", "done", "x", {}, {"metrics": []})
    assert _tree(clone) == before and sorted(p.name for p in clone.iterdir()) == ["runs"]
    private = reader._private.parent
    assert private.is_dir() and not private.is_relative_to(tmp_path)
    del reader
    gc.collect()
    assert not private.exists()                                        # the private copy goes with the store
    with pytest.raises(StoreError, match="holds no runs"):
        Store(clone / "runs.sqlite", read_only=True, archive=tmp_path / "empty")


def test_a_read_only_store_behind_its_archive_reads_both_and_changes_neither(tmp_path):
    runs = tmp_path / "runs"
    _fill(Store(tmp_path / "new.sqlite", archive=runs))                 # three runs in the archive
    behind = Store(tmp_path / "runs.sqlite")
    behind.put("e" * 32, "done", "only in the store", _spec(5), _record(5))
    before = _tree(tmp_path)
    reader = Store(tmp_path / "runs.sqlite", read_only=True, archive=runs)
    assert reader.count() == {"done": 4}
    assert len(reader.documents()["key"].unique()) == 4
    assert _tree(tmp_path) == before                                   # no -wal, no -shm, no new file
    # up to date: read in place, without a copy
    assert Store(tmp_path / "new.sqlite", read_only=True, archive=runs)._private is None


def _grid(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"base": SPEC, "grid": {"method": ["magnitude", "rtn"]}}))
    return path, expand_grid(yaml.safe_load(path.read_text()))


def test_cli_exports_a_store_and_reads_a_clean_clone(tmp_path, capsys):
    grid, specs = _grid(tmp_path)
    results = tmp_path / "results"
    store = Store(results / "runs.sqlite")
    store.put(specs[0].key, "done", specs[0].label(), specs[0].normalized(), _record(0))
    assert main(["store", "export", "--store", str(results / "runs.sqlite")]) == 0
    assert "1 run file(s) written to" in capsys.readouterr().out
    assert [p.name for p in (results / "runs").iterdir()] == [f"{specs[0].key}.zip"]
    assert main(["store", "export", "--store", str(results / "runs.sqlite")]) == 0
    assert "0 run file(s) written" in capsys.readouterr().out
    (results / "runs.sqlite").unlink()                                 # a clean clone: the archive only
    before = _tree(results)
    assert main(["status", str(grid), "--store", str(results / "runs.sqlite")]) == 0   # finds runs/ beside it
    assert capsys.readouterr().out.startswith("done 1  pending 1  failed 0")
    assert _tree(results) == before
    assert main(["status", str(grid), "--store", str(results / "runs.sqlite"), "--no-archive"]) == 2
    assert "no results store at" in capsys.readouterr().err


def test_cli_refuses_bad_stores_and_archives_in_one_line(tmp_path, capsys):
    grid, _ = _grid(tmp_path)
    assert main(["store", "export", "--store", str(tmp_path / "missing.sqlite")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no results store at" in err and "Check --store" in err
    Store(tmp_path / "s.sqlite")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    for argv in (["store", "export", "--store", str(tmp_path / "s.sqlite"), "--archive", str(blocker)],
                 ["sweep", str(grid), "--store", str(tmp_path / "s.sqlite"), "--archive", str(blocker)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"cannot create the run archive folder {blocker}" in err
        assert "choose another --archive" in err


def test_a_finished_run_only_the_cache_holds_is_written_out_on_opening(tmp_path):
    """Recorded without an archive (or its file deleted): the next writable opening with the archive writes
    the file, so no finished run lives in the git-ignored cache alone."""
    keys = _fill(Store(tmp_path / "runs.sqlite"), runs=2)
    assert not (tmp_path / "runs").exists()
    Store(tmp_path / "runs.sqlite", archive=tmp_path / "runs")
    assert RunArchive(tmp_path / "runs").keys() == set(keys)
    (tmp_path / "runs" / file_name(keys[0])).unlink()
    Store(tmp_path / "runs.sqlite", archive=tmp_path / "runs")
    assert RunArchive(tmp_path / "runs").keys() == set(keys)


def test_a_failure_recorded_after_the_archive_has_the_run_records_the_archived_run(tmp_path):
    keys = _fill(Store(tmp_path / "a.sqlite", archive=tmp_path / "runs"), runs=1)
    other = Store(tmp_path / "b.sqlite")                      # a cache that has not seen the file yet
    other.archive = RunArchive(tmp_path / "runs")
    other.put(keys[0], "failed", "run 0", _spec(0), {"error": "boom", "metrics": []})
    assert other.count() == {"done": 1}
