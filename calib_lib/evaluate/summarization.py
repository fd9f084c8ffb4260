"""Generation-based evaluation: summaries of held-out documents and their faithfulness metrics, per document.

A suite's ``summarization`` field (``SummarizationEval``) asks for it; ``score_summaries`` generates
(``generation.py``), scores every document (``summary_metrics.py``, ``ner.py``, ``nli.py``) and returns tidy
metric records (kind ``summary``, name the dataset: means over documents with their standard errors, and the
truncation count), the generation cost per dataset (with the dataset's content digest) and one ``summary``
document block per dataset (per document: its index and stable name, every metric, the token counts, the
summary and the raw generation), which the store keeps with the run (``Store.summaries()``).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import FieldError, InvalidInput
from .generation import PROMPTS

# Per-document numeric columns of a summary block (besides doc_id and the texts).
SUMMARY_NUMBERS = ("rouge1", "rouge2", "rougeL", "coverage", "density", "compression", "novel_1grams",
                   "novel_2grams", "novel_3grams", "entities", "unsupported_entities", "entity_hallucination",
                   "nli_consistency", "input_tokens", "document_tokens", "truncated", "generated_tokens")
SUMMARY_TEXTS = ("doc_name", "summary", "generation", "stopped")
# The metrics whose mean over documents becomes a run's metric record ("summary/<dataset>/<metric>").
SUMMARY_MEANS = ("rouge1", "rouge2", "rougeL", "coverage", "density", "novel_1grams", "novel_2grams", "novel_3grams",
                 "entity_hallucination", "nli_consistency", "generated_tokens")


@dataclass(frozen=True)
class SummarizationEval:
    """What a suite's summarization evaluation does (every field enters the run key)."""
    datasets: tuple = ("bbc-xsum",)   # data.summarization.SUMMARY_DATASETS, each scored on the same model
    documents: int | None = 12        # a seeded subset of each dataset (None: every document)
    max_new_tokens: int = 48
    max_input_tokens: int = 512       # the whole prompt; a longer document keeps its head (generation.py)
    prompt: str = "auto"              # auto (the chat template where the model has one) | chat | plain
    batch_size: int = 8
    nli_model: str | None = "auto"    # auto: SummaC's model where this machine can load it, else none (decided when
                                      # the spec is made, so the key says which: nli.auto_choice); None: not
                                      # scored; a name or folder: required (a sweep refuses it when missing)
    seed: int = 1234

    def __post_init__(self):
        from ..data.summarization import SUMMARY_DATASETS
        datasets = self.datasets
        if isinstance(datasets, str) or not isinstance(datasets, (list, tuple)) or not datasets:
            raise FieldError("summarization.datasets", f"expected a non-empty list of dataset names, got {datasets!r}")
        object.__setattr__(self, "datasets", tuple(datasets))
        for i, name in enumerate(self.datasets):
            if name not in SUMMARY_DATASETS:
                raise FieldError(f"summarization.datasets[{i}]", f"unknown dataset {name!r}; known: "
                                                                  f"{', '.join(SUMMARY_DATASETS)}")
        if len(set(self.datasets)) != len(self.datasets):
            raise FieldError("summarization.datasets", f"a dataset is named twice in {list(self.datasets)}")
        if self.prompt not in PROMPTS:
            raise FieldError("summarization.prompt", f"use one of {', '.join(PROMPTS)}, got {self.prompt!r}")
        for name, nullable in (("documents", True), ("max_new_tokens", False), ("max_input_tokens", False),
                               ("batch_size", False), ("seed", False)):
            value = getattr(self, name)
            if value is None and nullable:
                continue
            low = 0 if name == "seed" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise FieldError(f"summarization.{name}", f"expected an integer >= {low}"
                                                          f"{' or null' if nullable else ''}, got {value!r}")
        if self.nli_model is not None and (not isinstance(self.nli_model, str) or not self.nli_model.strip()):
            raise FieldError("summarization.nli_model", f"give auto, null or a model name, got {self.nli_model!r}")
        if self.nli_model == "auto":
            from .nli import auto_choice
            choice, why = auto_choice()
            object.__setattr__(self, "nli_model", choice)
            object.__setattr__(self, "_nli_unavailable", why)     # not a field: neither in the key nor compared

    def to_dict(self) -> dict:
        data = asdict(self)
        data["datasets"] = list(self.datasets)
        return data


def as_summarization(value) -> SummarizationEval | None:
    if value is None or isinstance(value, SummarizationEval):
        return value
    if not isinstance(value, dict):
        raise FieldError("summarization", f"expected a mapping of summarization fields, got {value!r}")
    known = set(SummarizationEval.__dataclass_fields__)
    unknown = [k for k in value if k not in known]
    if unknown:
        raise FieldError(f"summarization.{unknown[0]}", f"unknown field; known: {', '.join(sorted(known))}")
    return SummarizationEval(**value)


def selected_documents(cfg: SummarizationEval, dataset: str) -> list[tuple[int, object]]:
    """(index in the dataset, SummaryDocument) of the seeded subset of ``dataset``, in dataset order."""
    from ..data.summarization import get_dataset
    docs = get_dataset(dataset).documents
    if cfg.documents is None or cfg.documents >= len(docs):
        return list(enumerate(docs))
    chosen = np.sort(np.random.default_rng(cfg.seed).permutation(len(docs))[:cfg.documents])
    return [(int(i), docs[int(i)]) for i in chosen]


def check_resources(cfg: SummarizationEval | None) -> None:
    """What a sweep refuses before any of its runs starts (nothing is stored): a dataset unavailable here, the
    entity recogniser or ROUGE missing, a named NLI model that cannot load."""
    if cfg is None:
        return
    from .ner import recognizer
    from .nli import check_nli
    for dataset in cfg.datasets:
        selected_documents(cfg, dataset)
    recognizer()
    import importlib.util
    if importlib.util.find_spec("rouge_score") is None:
        from ..errors import Unavailable
        raise Unavailable("ROUGE needs rouge-score; pip install rouge-score==0.1.2 (in requirements.txt)")
    check_nli(cfg.nli_model)


def check_summarization(cfg: SummarizationEval | None, tokenizer, model_name: str = "the model") -> None:
    """Everything that can be refused before a run computes: the data, the prompt, a named NLI model."""
    if cfg is None:
        return
    from .generation import prompt_mode
    check_resources(cfg)
    prompt_mode(tokenizer, cfg.prompt, model_name)


def score_summaries(model, tokenizer, cfg: SummarizationEval, *, progress: bool = False,
                    model_name: str = "the model"):
    """(metric records, one DocumentBlock "summary"/<dataset> per dataset, cost per dataset) of ``model`` on
    ``cfg``; the cost: seconds of generation and of scoring, prompt and generated tokens, tokens per second,
    seconds per document."""
    check_summarization(cfg, tokenizer, model_name)
    records, blocks, costs = [], [], {}
    for dataset in cfg.datasets:
        r, b, c = _score_dataset(model, tokenizer, cfg, dataset, progress, model_name)
        records.extend(r)
        blocks.append(b)
        costs[dataset] = c
    return records, blocks, costs


def _score_dataset(model, tokenizer, cfg: SummarizationEval, dataset: str, progress: bool, model_name: str):
    from . import nli, summary_metrics
    from .ner import recognizer
    from .records import DocumentBlock
    chosen = selected_documents(cfg, dataset)
    started = time.time()
    generated, cost = generate_for(model, tokenizer, cfg, dataset, [d.document for _, d in chosen], progress,
                                   model_name)
    rows = []
    ner = recognizer()
    summary_entities = ner.entities([g["summary"] for g in generated])
    for (index, doc), gen, ents in zip(chosen, generated, summary_entities):
        row = {"doc_id": index, "doc_name": doc.doc_id, **summary_metrics.lexical_scores(gen["source"], doc.reference, gen["summary"]),
               **summary_metrics.entity_scores(gen["source"], ents)}
        row.update({k: gen[k] for k in ("input_tokens", "document_tokens", "truncated", "generated_tokens",
                                        "summary", "generation", "stopped")})
        rows.append(row)
    nli_note = None
    values = np.full(len(rows), np.nan)
    if cfg.nli_model is None:
        why = getattr(cfg, "_nli_unavailable", "")
        nli_note = f"unavailable here (nli_model auto): {why}" if why else "not asked for (nli_model: null)"
    else:
        values = nli.consistency([(g["source"], g["summary"]) for g in generated], cfg.nli_model)
    for row, value in zip(rows, values):
        row["nli_consistency"] = float(value)
    columns = {"doc_id": np.asarray([r["doc_id"] for r in rows], dtype=np.int64)}
    for name in SUMMARY_NUMBERS:
        columns[name] = np.asarray([r[name] for r in rows], dtype=np.float64)
    for name in SUMMARY_TEXTS:
        columns[name] = np.asarray([r[name] for r in rows], dtype=str)
    block = DocumentBlock("summary", dataset, columns)
    common = {"kind": "summary", "name": dataset}
    records = []
    for metric in SUMMARY_MEANS:
        x = columns[metric][~np.isnan(columns[metric])]
        record = {**common, "metric": metric, "value": float(x.mean()) if x.size else float("nan"),
                  "stderr": float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else None, "n": int(x.size)}
        if metric == "nli_consistency" and nli_note:
            record["note"] = nli_note
        elif metric == "nli_consistency":
            record["note"] = f"model {nli.resolve(cfg.nli_model)}"
        elif metric == "entity_hallucination":
            record["note"] = f"recogniser {ner.name}; documents with entities in their summary: {x.size}"
        records.append(record)
    records.append({**common, "metric": "truncated", "value": float(cost["truncated"]), "stderr": None,
                    "n": len(rows), "note": f"documents cut to their first tokens (prompt limit {cost['input_limit']})"})
    seconds = time.time() - started
    for record in records:
        record["seconds"] = seconds
    from ..data.summarization import get_dataset
    cost = {**cost, "scoring_seconds": seconds - cost["seconds"], "total_seconds": seconds,
            "dataset_digest": get_dataset(dataset).digest}
    return records, block, cost


def generate_for(model, tokenizer, cfg: SummarizationEval, dataset: str, documents: list[str], progress: bool,
                 model_name: str):
    from .generation import generate_summaries
    if not documents:
        raise InvalidInput(f"summarization dataset {dataset!r} has no documents to score")
    return generate_summaries(model, tokenizer, documents, max_new_tokens=cfg.max_new_tokens,
                              max_input_tokens=cfg.max_input_tokens, prompt=cfg.prompt, batch_size=cfg.batch_size,
                              progress=progress, model_name=model_name)
