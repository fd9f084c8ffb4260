"""Per-document records: what every evaluation scored, document by document, so that two runs scored on
the same documents can be compared pair-wise (``calib_lib.stats.paired_bootstrap``, ``mcnemar_exact``).

A ``DocumentBlock`` holds one task or perplexity text of one run as columns:

- a task: for every document its stable id (its index in the task's full test split, whatever subset was
  scored), the gold choice (-1 for a loglikelihood task such as LAMBADA), and per choice (flat arrays, in
  document order, ``n_choices`` per document) the continuation's log-likelihood (sum over its tokens), its
  token and character counts and whether it is the greedy continuation; per document ``correct`` (acc) and
  ``correct_norm`` (acc_norm: log-likelihood per character, lm-eval's definition), NaN where the task has
  no such metric.
- a summarization dataset (``evaluate.summarization``): for every document its index in the dataset, every
  summary metric, the prompt and generated token counts, and the summary and raw generation as text.
- a perplexity text: for every window its summed NLL and scored token count and, when the dense model's
  reference was given, its summed KL divergence to the dense model and its count of top-1 agreements.

Blocks are packed as compressed ``.npz`` bytes: a run of the ten tasks at 300 documents and three texts
is ~60 kB, small enough to store with each run and to commit.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidInput

# Frame columns: one row per (run key, kind, name, doc_id); NaN where a column does not apply.
DOCUMENT_COLUMNS = ("correct", "correct_norm", "gold_loglik", "best_other_loglik", "nll", "tokens",
                    "kl_sum", "top1_matches")
CHOICE_COLUMNS = ("loglik", "tokens", "chars", "greedy")
TASK_COLUMNS = ("doc_id", "gold", "n_choices", "correct", "correct_norm") + tuple(f"choice_{c}" for c in CHOICE_COLUMNS)
WINDOW_COLUMNS = ("doc_id", "nll", "tokens")
# A generated summary per document (evaluate.summarization): metrics, token counts and the texts.
SUMMARY_COLUMNS = ("doc_id", "rouge1", "coverage", "entity_hallucination", "summary")
KINDS = ("task", "perplexity", "summary")


@dataclass(frozen=True)
class DocumentBlock:
    kind: str                       # "task", "perplexity" or "summary"
    name: str                       # the task or the text
    columns: dict = field(default_factory=dict)     # name -> 1-D numpy array

    def __post_init__(self):
        need = {"task": TASK_COLUMNS, "summary": SUMMARY_COLUMNS}.get(self.kind, WINDOW_COLUMNS)
        missing = [c for c in need if c not in self.columns]
        if self.kind not in KINDS or missing:
            raise InvalidInput(f"document block {self.kind}/{self.name}: unknown kind or missing columns {missing}")
        if self.kind == "task":
            per_doc = {len(self.columns[c]) for c in ("doc_id", "gold", "n_choices", "correct", "correct_norm")}
            per_choice = {len(self.columns[f"choice_{c}"]) for c in CHOICE_COLUMNS}
            if len(per_doc) != 1 or per_choice != {int(np.sum(self.columns["n_choices"]))}:
                raise InvalidInput(f"document block task/{self.name}: column lengths disagree")

    @property
    def documents(self) -> int:
        return len(self.columns["doc_id"])

    def pack(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in self.columns.items()})
        return buffer.getvalue()

    @classmethod
    def unpack(cls, kind: str, name: str, blob: bytes) -> "DocumentBlock":
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            return cls(kind, name, {k: data[k] for k in data.files})

    def rows(self) -> dict[str, np.ndarray]:
        """The frame columns (``DOCUMENT_COLUMNS`` plus ``doc_id``), one entry per document."""
        n = self.documents
        nan = np.full(n, np.nan)
        c = self.columns
        if self.kind == "summary":
            raise InvalidInput(f"summary/{self.name} holds generated summaries, not scored choices or windows: read "
                               "it with Store.summaries()")
        if self.kind == "perplexity":
            return {"doc_id": c["doc_id"], "correct": nan, "correct_norm": nan, "gold_loglik": nan,
                    "best_other_loglik": nan, "nll": c["nll"].astype(float), "tokens": c["tokens"].astype(float),
                    "kl_sum": c.get("kl_sum", nan).astype(float),
                    "top1_matches": c.get("top1_matches", nan).astype(float)}
        starts = np.concatenate([[0], np.cumsum(c["n_choices"])[:-1]]).astype(int)
        gold_ll, other_ll, tokens = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        for i, (start, count, gold) in enumerate(zip(starts, c["n_choices"], c["gold"])):
            lls = c["choice_loglik"][start:start + count]
            if gold < 0:                     # a loglikelihood task: its one continuation is the target
                gold_ll[i], tokens[i] = lls[0], c["choice_tokens"][start]
                continue
            gold_ll[i], tokens[i] = lls[gold], c["choice_tokens"][start + gold]
            others = np.delete(lls, gold)
            other_ll[i] = others.max() if others.size else np.nan
        return {"doc_id": c["doc_id"], "correct": c["correct"].astype(float),
                "correct_norm": c["correct_norm"].astype(float), "gold_loglik": gold_ll,
                "best_other_loglik": other_ll, "nll": nan, "tokens": tokens, "kl_sum": nan, "top1_matches": nan}

    def choice_rows(self) -> dict[str, np.ndarray]:
        """One entry per (document, choice): doc_id, choice index, is_gold and the choice columns."""
        c = self.columns
        if self.kind != "task":
            raise InvalidInput(f"{self.kind}/{self.name} has windows, not choices")
        counts = c["n_choices"].astype(int)
        doc_id = np.repeat(c["doc_id"], counts)
        choice = np.concatenate([np.arange(k) for k in counts]) if counts.size else np.zeros(0, int)
        gold = np.repeat(c["gold"], counts)
        return {"doc_id": doc_id, "choice": choice, "is_gold": choice == gold,
                **{col: c[f"choice_{col}"] for col in CHOICE_COLUMNS}}


def task_block(name: str, docs: list[dict]) -> DocumentBlock:
    """A task's block from per-document dicts: doc_id, gold, loglik/tokens/chars/greedy (lists per choice),
    correct, correct_norm (NaN where the task has no such metric)."""
    docs = sorted(docs, key=lambda d: d["doc_id"])
    flat = {col: np.asarray([v for d in docs for v in d[col]], dtype=dtype)
            for col, dtype in (("loglik", np.float64), ("tokens", np.int32), ("chars", np.int32),
                               ("greedy", bool))}
    return DocumentBlock("task", name, {
        "doc_id": np.asarray([d["doc_id"] for d in docs], dtype=np.int64),
        "gold": np.asarray([d["gold"] for d in docs], dtype=np.int32),
        "n_choices": np.asarray([len(d["loglik"]) for d in docs], dtype=np.int32),
        "correct": np.asarray([d["correct"] for d in docs], dtype=np.float64),
        "correct_norm": np.asarray([d["correct_norm"] for d in docs], dtype=np.float64),
        **{f"choice_{k}": v for k, v in flat.items()}})


def pack_blocks(blocks: list[DocumentBlock]) -> dict[str, bytes]:
    """``{"kind/name": packed bytes}``: how a run record carries its blocks to the store."""
    return {f"{b.kind}/{b.name}": b.pack() for b in blocks}


def unpack_blocks(packed: dict[str, bytes]) -> list[DocumentBlock]:
    out = []
    for where, blob in packed.items():
        kind, _, name = where.partition("/")
        out.append(DocumentBlock.unpack(kind, name, blob))
    return out
