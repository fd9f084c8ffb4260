"""Calibration sampling: exact shapes, disjoint sets, determinism, held-out separation, bad input."""
import json

import numpy as np
import pytest
import torch

from calib_lib.data.corpora import split_groups
from calib_lib.data import get_source
from calib_lib.data.sampling import (CalibrationSpec, NotEnoughDataError, export_set, fingerprint,
                                     import_set, random_vocab_ids, sample)

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar "
         "papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


@pytest.fixture
def corpus_file(tmp_path):
    """40 documents of different lengths, each tagged with a unique marker word."""
    rng = np.random.default_rng(0)
    docs = []
    for i in range(40):
        body = " ".join(rng.choice(WORDS, size=int(rng.integers(60, 400))))
        docs.append(f"marker{i:03d} {body}")
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs))
    return path, docs


def _spec(path, **kw):
    return CalibrationSpec(**{"source": "custom", "path": str(path), "num_samples": 6, "seq_len": 48, **kw})


def _doc_intervals(cal):
    return {(d, s, e) for d, s, e in cal.windows}


def _overlap(a, b):
    return any(da == db and sa < eb and sb < ea for da, sa, ea in a for db, sb, eb in b)


@pytest.mark.parametrize("strategy", ["document-window", "concat-chunk"])
def test_sets_are_exact_deterministic_and_disjoint(corpus_file, tiny_llama, strategy):
    _, tok = tiny_llama
    path, _ = corpus_file
    sets = [sample(_spec(path, set_index=k, strategy=strategy), tok) for k in range(3)]
    for cal in sets:
        assert cal.input_ids.shape == (6, 48) and cal.input_ids.dtype == torch.long
    again = sample(_spec(path, set_index=1, strategy=strategy), tok)
    assert torch.equal(again.input_ids, sets[1].input_ids)
    assert again.fingerprint == sets[1].fingerprint
    for i in range(3):
        for j in range(i + 1, 3):
            assert not _overlap(_doc_intervals(sets[i]), _doc_intervals(sets[j]))
            rows_i = {tuple(r) for r in sets[i].input_ids.tolist()}
            assert not rows_i & {tuple(r) for r in sets[j].input_ids.tolist()}


def test_windows_are_real_contiguous_text_of_one_document(corpus_file, tiny_llama):
    _, tok = tiny_llama
    path, docs = corpus_file
    cal = sample(_spec(path), tok)
    pool, _, _ = get_source("custom").pool(cal.spec)
    for row, (d, s, e) in zip(cal.input_ids.tolist(), cal.windows):
        assert row == tok(pool[d], add_special_tokens=False).input_ids[s:e]
        assert e - s == 48


def test_sizes_are_nested_and_seeds_differ(corpus_file, tiny_llama):
    _, tok = tiny_llama
    path, _ = corpus_file
    small = sample(_spec(path, num_samples=3), tok)
    large = sample(_spec(path, num_samples=6), tok)
    assert torch.equal(small.input_ids, large.input_ids[:3])
    other_seed = sample(_spec(path, seed=1), tok)
    assert not torch.equal(other_seed.input_ids, large.input_ids)


def test_calibration_never_reads_held_out_documents(corpus_file, tiny_llama):
    _, tok = tiny_llama
    path, docs = corpus_file
    groups = [(str(i), d) for i, d in enumerate(docs)]
    digest_pool, heldout = split_groups(groups, "t")
    assert heldout and not set(digest_pool) & set(heldout)
    pool, _, _ = get_source("custom").pool(_spec(path))
    held_markers = {d.split()[0] for d in docs} - {d.split()[0] for d in pool}
    assert len(held_markers) == 4                      # 10% of 40 documents held out
    text = " ".join(tok.decode(r) for k in range(3)
                    for r in sample(_spec(path, set_index=k, num_samples=10, seq_len=32), tok).input_ids.tolist())
    assert not any(m in text for m in held_markers)


def test_split_keeps_groups_whole():
    docs = [("play-a", "x1"), ("play-a", "x2"), ("play-b", "y"), ("play-c", "z")] + \
           [(f"g{i}", f"t{i}") for i in range(20)]
    pool, heldout = split_groups(docs, "salt")
    if "x1" in heldout or "x2" in heldout:
        assert {"x1", "x2"} <= set(heldout)
    else:
        assert {"x1", "x2"} <= set(pool)
    assert len(pool) + len(heldout) == len(docs)


def test_shortfall_error_says_how_much_is_available(corpus_file, tiny_llama):
    _, tok = tiny_llama
    path, _ = corpus_file
    with pytest.raises(NotEnoughDataError, match=r"supplies only \d+ non-overlapping windows.*at most \d+ set"):
        sample(_spec(path, num_samples=50, set_index=20), tok)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_samples=0), "num_samples must be a positive integer"),
    (dict(seq_len=-5), "seq_len must be a positive integer"),
    (dict(source="nope"), "unknown calibration source"),
    (dict(strategy="windows"), "unknown strategy"),
    (dict(set_index=-1), "set_index"),
])
def test_bad_specs_are_rejected(kwargs, message):
    base = dict(source="news", num_samples=4, seq_len=32)
    with pytest.raises(ValueError, match=message):
        CalibrationSpec(**{**base, **kwargs})


def test_custom_without_path_is_rejected():
    with pytest.raises(ValueError, match="needs path"):
        CalibrationSpec("custom", 4, 32)


def test_seq_len_longer_than_context_is_rejected(corpus_file, tiny_llama):
    model, tok = tiny_llama
    path, _ = corpus_file
    with pytest.raises(ValueError, match="longer than the model's context"):
        sample(_spec(path, seq_len=4096), tok, model)


def test_bad_custom_files(tmp_path, tiny_llama):
    _, tok = tiny_llama
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ")
    with pytest.raises(ValueError, match="holds no text"):
        sample(_spec(empty), tok)
    no_field = tmp_path / "rows.jsonl"
    no_field.write_text(json.dumps({"body": "hello"}) + "\n")
    with pytest.raises(ValueError, match="lack the text field 'text'"):
        sample(_spec(no_field), tok)
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 100)
    with pytest.raises(ValueError, match="not UTF-8"):
        sample(_spec(binary), tok)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sample(_spec(tmp_path / "missing.txt"), tok)
    unknown = tmp_path / "data.csv"
    unknown.write_text("a,b\n")
    with pytest.raises(ValueError, match=r"use a \.txt, \.jsonl or \.parquet"):
        sample(_spec(unknown), tok)


def test_random_vocab_excludes_special_tokens(tiny_llama):
    _, tok = tiny_llama
    a = sample(CalibrationSpec("random-vocab", 8, 64), tok)
    b = sample(CalibrationSpec("random-vocab", 8, 64, set_index=1), tok)
    assert not set(a.input_ids.unique().tolist()) & set(tok.all_special_ids)
    assert torch.equal(a.input_ids, sample(CalibrationSpec("random-vocab", 8, 64), tok).input_ids)
    assert not torch.equal(a.input_ids, b.input_ids)
    assert len(random_vocab_ids(tok)) == len(tok) - len(set(tok.all_special_ids))


def test_export_import_round_trip_and_custom_source(corpus_file, tiny_llama, tmp_path):
    _, tok = tiny_llama
    path, _ = corpus_file
    cal = sample(_spec(path, set_index=2), tok)
    out = tmp_path / "set.jsonl"
    assert export_set(cal, out, tok) == cal.fingerprint
    lines = out.read_text().splitlines()
    assert json.loads(lines[0])["fingerprint"] == cal.fingerprint and len(lines) == 7
    assert json.loads(lines[1])["text"] == tok.decode(cal.input_ids[0])
    back = import_set(out, tok)
    assert torch.equal(back.input_ids, cal.input_ids) and back.fingerprint == cal.fingerprint
    via_custom = sample(CalibrationSpec("custom", 6, 48, path=str(out)), tok)
    assert torch.equal(via_custom.input_ids, cal.input_ids)

    tampered = tmp_path / "tampered.jsonl"
    rows = [json.loads(l) for l in lines]
    rows[1]["input_ids"][0] += 1
    tampered.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match="fingerprint"):
        import_set(tampered, tok)


def test_fingerprint_depends_on_values_and_shape():
    ids = torch.arange(12).view(3, 4)
    assert fingerprint(ids) != fingerprint(ids.view(4, 3))
    assert fingerprint(ids) == fingerprint(ids.clone())
    changed = ids.clone()
    changed[0, 0] = 99
    assert fingerprint(changed) != fingerprint(ids)
