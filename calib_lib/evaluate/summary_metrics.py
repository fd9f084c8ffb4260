"""Per-document metrics of a generated summary against its reference and its source document.

- **ROUGE-1/2/L** F-measure against the reference (``rouge-score``, Porter stemmer: the settings of the
  XSum and CNN/DailyMail literature).
- **Extractive fragments** (Grusky, Naaman & Artzi, 2018, "Newsroom", Algorithm 1): the summary is covered
  greedily, left to right, by the longest token spans it shares with the document. *Coverage* is the share of
  summary tokens inside a shared fragment (1: every word copied), *density* the mean squared fragment length
  per summary token (how long the copied runs are), *compression* document tokens per summary token. Tokens:
  lower-cased words (``\\w+``): punctuation is not a token here, where the paper's spaCy tokens include it, so
  its density thresholds are not directly comparable.
- **Novel n-grams**: the share of the summary's n-gram occurrences (n = 1, 2, 3) that never occur in the
  document (XSum's measure of abstraction).
- **Entity faithfulness** (Nan et al., 2021, "entity-level factual consistency", precision against the
  source): the named entities of the summary whose words do not occur, consecutively, in the document
  (case-insensitive, on word boundaries), as a share of the summary's entities (NaN for a summary without entities); the
  recogniser is named by ``ner.py``.
- **NLI consistency** (Laban et al., 2022, SummaC-ZS): per summary sentence, the largest P(entailment) -
  P(contradiction) of an NLI model over the document's sentences, averaged over the summary's sentences
  (-1..1, higher is more faithful); computed only when the NLI model is available (``nli.py``).

``SUMMARY_METRICS_VERSION`` enters the key of every run that scores summaries.
"""
from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

SUMMARY_METRICS_VERSION = 2
# 2: fragments as the paper's pseudo-code (a match's inner starts skipped); entities matched on word boundaries

_WORD = re.compile(r"\w+")
# a sentence ends after . ! or ? (and a closing quote or bracket, kept with it) before a capital or a digit
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")


def words(text: str) -> list[str]:
    """Lower-cased word tokens: the unit of fragments and novel n-grams."""
    return _WORD.findall(text.lower())


def sentences(text: str) -> list[str]:
    """Sentences of plain prose: split after ., ! or ? followed by space and a capital or digit (paragraph
    breaks always split). Enough for news and abstracts; the NLI score's unit."""
    out = []
    for paragraph in re.split(r"\n\s*\n|\n", text):
        out.extend(s.strip() for s in _SENTENCE_END.split(paragraph.strip()) if s.strip())
    return out


def fragments(document: list[str], summary: list[str]) -> list[list[str]]:
    """Grusky et al.'s greedy extractive fragments of ``summary`` in ``document`` (token lists), as the paper's
    Algorithm 1 (and the newsroom code) computes them: at summary position i the document is scanned left to
    right; at a match the shared span is extended as far as it goes, kept if it is the longest so far, and the
    scan resumes where the span ended (starts inside a match are not tried); then i moves past the longest span
    (or one word when there is none). A word that occurs nowhere is skipped."""
    positions = defaultdict(list)
    for j, token in enumerate(document):
        positions[token].append(j)
    found, i = [], 0
    while i < len(summary):
        best, resume = 0, 0
        for j in positions.get(summary[i], ()):
            if j < resume:                      # inside the previous match: the scan has moved past it
                continue
            k = 0
            while i + k < len(summary) and j + k < len(document) and summary[i + k] == document[j + k]:
                k += 1
            best, resume = max(best, k), j + k
        if best:
            found.append(summary[i:i + best])
        i += max(best, 1)
    return found


def fragment_scores(document: str, summary: str) -> dict:
    doc, summ = words(document), words(summary)
    if not summ:
        return {"coverage": np.nan, "density": np.nan, "compression": np.nan}
    lengths = np.asarray([len(f) for f in fragments(doc, summ)], dtype=float)
    return {"coverage": float(lengths.sum() / len(summ)), "density": float((lengths ** 2).sum() / len(summ)),
            "compression": len(doc) / len(summ)}


def novel_ngrams(document: str, summary: str, n: int) -> float:
    """Share of the summary's n-gram occurrences absent from the document (NaN for a summary shorter than n)."""
    doc, summ = words(document), words(summary)
    grams = [tuple(summ[i:i + n]) for i in range(len(summ) - n + 1)]
    if not grams:
        return np.nan
    source = {tuple(doc[i:i + n]) for i in range(len(doc) - n + 1)}
    return float(np.mean([g not in source for g in grams]))


_ROUGE = None


def rouge(reference: str, summary: str) -> dict:
    """ROUGE-1, -2, -L F-measures (rouge-score, Porter stemmer)."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer
        _ROUGE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = _ROUGE.score(reference, summary)
    return {name: float(scores[name].fmeasure) for name in ("rouge1", "rouge2", "rougeL")}


def entity_scores(document: str, summary_entities: list[str]) -> dict:
    """How many of the summary's entities are not in the document: an entity is supported when its words occur
    in the document as consecutive words (lower-cased ``\\w+`` tokens, so "10" is not found in "100" nor "May"
    in "mayor"); an entity without a word character is not counted."""
    source = " " + " ".join(words(document)) + " "
    entities = [e for e in (" ".join(words(x)) for x in summary_entities) if e]
    unsupported = sum(f" {e} " not in source for e in entities)
    return {"entities": len(entities), "unsupported_entities": unsupported,
            "entity_hallucination": unsupported / len(entities) if entities else np.nan}


def lexical_scores(document: str, reference: str, summary: str) -> dict:
    """Every metric that needs no model: ROUGE, fragments, novel 1/2/3-grams."""
    out = rouge(reference, summary) if summary.strip() else {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    out.update(fragment_scores(document, summary))
    for n in (1, 2, 3):
        out[f"novel_{n}grams"] = novel_ngrams(document, summary, n)
    return out
