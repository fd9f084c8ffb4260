"""score(model, tokenizer, suite) -> metrics (one tidy row per metric) and per-document records; all inputs
checked up front. ``evaluate()`` is its metrics alone.

Perplexity texts: ``wikitext2`` is the standard WikiText-2 test string in order (non-overlapping
windows from its start, as GPTQ/SparseGPT/Wanda); every other source id scores a fixed seeded set of
windows from its held-out part (documents in a seeded order, concatenated, cut into windows), so the
same source's calibration pool never overlaps what is scored. ``auto`` means wikitext2 where available,
else wikipedia. Tasks run through lm-eval (see ``tasks.py``).

Fidelity to the dense model (``kl_to_dense``): for every perplexity text, the mean KL divergence of the
next-token distribution from the dense model's, its 99th percentile over tokens and top-1 agreement (as
llama.cpp's perplexity tool reports them for quantized models), against the dense model's reference kept
in the cache (``fidelity.py``). The reference is computed from the uncompressed model once per (model, text,
windows); ``runs.runner`` does so before it compresses.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from ..models.context import context_length
from ..errors import FieldError, InvalidInput
from .perplexity import make_windows, perplexity
from .tasks import TASKS, TaskUnavailableError, run_tasks, task_available

# The evaluation protocol's version (windows, task plumbing, metrics): enters every run key. Bump it when a
# change moves any evaluation number (tests/test_golden.py checks).
EVALUATION_VERSION = 2
# 2: per-document records with every run; tasks scored through PackedLM (HFLM's numbers to 1e-4, each shared
#    context forwarded once); optional KL to the dense model.


@dataclass(frozen=True)
class Suite:
    name: str
    ppl_texts: tuple[str, ...] = ("auto",)
    ppl_windows: int | None = 8          # None: every window the text holds
    ppl_seq_len: int = 512
    tasks: tuple[str, ...] = ()
    task_limit: int | None = 200         # documents per task, a seeded subset (None: all)
    optional_tasks: bool = False         # skip (and record) tasks whose data is not available here
    seed: int = 1234
    batch_size: int | None = None        # lm-eval batch; None: chosen from the vocabulary size
    kl_to_dense: bool = False            # KL/top-1 agreement to the dense model's reference on every text
    # generated summaries and their faithfulness (evaluate.summarization.SummarizationEval, or its mapping);
    # None: none (and the suite's dict, hence every existing run key, stays as it was)
    summarization: object = None

    def __post_init__(self):
        # A suite checks itself where it is made (a run spec, a profile, a caller), as CalibrationSpec and
        # the methods do: every task and text must exist and every number be in range. Whether their data
        # is available here is plan()'s concern (a mirror may be set later).
        from ..data.registry import SOURCES
        from .summarization import as_summarization
        object.__setattr__(self, "summarization", as_summarization(self.summarization))
        for name in ("ppl_texts", "tasks"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise FieldError(name, f"expected a list, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for i, task in enumerate(self.tasks):
            if task not in TASKS:
                raise FieldError(f"tasks[{i}]", f"unknown task {task!r}; known: {', '.join(TASKS)}")
        texts = [s for s in SOURCES if not SOURCES[s].synthetic]
        for i, text in enumerate(self.ppl_texts):
            if text != "auto" and text not in texts:
                raise FieldError(f"ppl_texts[{i}]", f"no held-out text {text!r}; use auto or one of: {', '.join(texts)}")
        if not isinstance(self.kl_to_dense, bool):
            raise FieldError("kl_to_dense", f"expected true or false, got {self.kl_to_dense!r}")
        for name, low, nullable in (("ppl_seq_len", 2, False), ("ppl_windows", 1, True), ("task_limit", 1, True),
                                    ("batch_size", 1, True)):
            value = getattr(self, name)
            if value is None and nullable:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise FieldError(name, f"expected an integer >= {low}{' or null' if nullable else ''}, got {value!r}")

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.summarization is None:       # suites without it keep the dict (and the run keys) they had
            del data["summarization"]
        return data


SUITES = {
    "tiny": Suite("tiny", ("auto",), 2, 64, ("arc_easy", "piqa", "copa"), 10, optional_tasks=True),
    "quick": Suite("quick", ("auto",), 8, 512, TASKS, 200, optional_tasks=True),
    "full": Suite("full", ("wikitext2", "c4"), None, 2048, TASKS, None),
}


def get_suite(suite: str | Suite | dict) -> Suite:
    if isinstance(suite, Suite):
        return suite
    if isinstance(suite, dict):
        return Suite(**suite)
    if suite not in SUITES:
        raise InvalidInput(f"unknown evaluation suite {suite!r}; known: {', '.join(SUITES)}")
    return SUITES[suite]


def _resolve_text(text_id: str) -> str:
    if text_id != "auto":
        return text_id
    from ..data import get_source
    return "wikitext2" if get_source("wikitext2").availability()[0] else "wikipedia"


def evaluation_windows(text_id: str, tokenizer, seq_len: int, num_windows: int | None, seed: int) -> torch.Tensor:
    from ..data import get_source
    corpus = get_source(text_id).corpus()
    if text_id == "wikitext2":
        ids = tokenizer(corpus.evaluation_text(), return_tensors="pt").input_ids[0]
        return make_windows(ids, seq_len, num_windows)
    from ..data.tokenized import tokenize_documents
    docs = tokenize_documents(corpus.heldout, tokenizer, cache_key=f"heldout-{text_id}-{corpus.digest[:16]}")
    order = np.random.default_rng(seed).permutation(len(docs))
    stream = torch.from_numpy(np.concatenate([docs.doc(int(i)) for i in order]))
    return make_windows(stream, seq_len, num_windows)


def plan(model, suite: Suite) -> tuple[list[str], list[str], list[dict]]:
    """Check everything before any compute: (ppl texts, tasks to run, skipped-task records)."""
    from ..data import get_source
    limit = context_length(model)
    if limit is not None and suite.ppl_seq_len > limit:
        raise InvalidInput(f"suite {suite.name!r} scores windows of {suite.ppl_seq_len} tokens, longer than "
                         f"the model's context of {limit}")
    texts = [_resolve_text(t) for t in suite.ppl_texts]      # names were checked when the suite was made
    for text_id in texts:
        ok, how = get_source(text_id).availability()
        if not ok:
            raise TaskUnavailableError(f"perplexity text {text_id!r} is unavailable here: {how}")
    tasks, skipped = [], []
    for task in suite.tasks:
        ok, how = task_available(task)
        if ok:
            tasks.append(task)
        elif suite.optional_tasks:
            skipped.append({"kind": "task", "name": task, "metric": "skipped", "value": float("nan"),
                            "stderr": None, "n": 0, "note": how})
        else:
            raise TaskUnavailableError(f"task {task!r} is unavailable here: {how}")
    return texts, tasks, skipped


def ensure_dense_references(model, tokenizer, suite: str | Suite | dict, model_id: str, *,
                            progress: bool = False) -> None:
    """Make sure the dense reference of every perplexity text of ``suite`` is cached: ``model`` must be the
    dense model ``model_id`` names (``fidelity.model_identity``). A no-op for a suite without ``kl_to_dense``."""
    from .fidelity import ensure_reference
    suite = get_suite(suite)
    if not suite.kl_to_dense:
        return
    texts, _, _ = plan(model, replace(suite, tasks=()))
    for text_id in texts:
        windows = evaluation_windows(text_id, tokenizer, suite.ppl_seq_len, suite.ppl_windows, suite.seed)
        ensure_reference(model, windows, model_id=model_id, text_id=text_id, progress=progress)


@dataclass(frozen=True)
class Evaluation:
    metrics: list            # tidy records, one per metric
    documents: list          # records.DocumentBlock per task, per perplexity text, per summarization dataset
    generation: dict | None = None   # the summaries' cost (evaluate.summarization), when the suite asks for them


def score(model, tokenizer, suite: str | Suite | dict = "quick", *, progress: bool = True,
          model_id: str | None = None, model_name: str = "the model") -> Evaluation:
    """Metrics and per-document records of ``model`` on ``suite``.

    ``model_id`` names the dense reference to compare with when the suite asks for ``kl_to_dense``
    (``fidelity.model_identity``); the reference must exist (``ensure_dense_references``).
    """
    from .fidelity import load_reference
    from .records import DocumentBlock
    suite = get_suite(suite)
    texts, tasks, records = plan(model, suite)
    if suite.kl_to_dense and texts and model_id is None:
        raise InvalidInput(f"suite {suite.name!r} asks for KL to the dense model: pass model_id (the dense "
                           "reference's identity, calib_lib.evaluate.fidelity.model_identity) or set kl_to_dense false")
    blocks = []
    for text_id in texts:
        started = time.time()
        windows = evaluation_windows(text_id, tokenizer, suite.ppl_seq_len, suite.ppl_windows, suite.seed)
        # KL(dense || pruned) is infinite for a pruned vocabulary (the dense model puts mass on every token):
        # such a run records KL(pruned || unpruned) instead (runs.runner, evaluate.vocabulary.kl_to_unpruned)
        pruned = getattr(model, "vocab_pruning", None) is not None
        reference = load_reference(model_id, text_id, windows) if suite.kl_to_dense and not pruned else None
        result = perplexity(model, windows, progress=progress, desc=f"ppl {text_id}", reference=reference)
        seconds = time.time() - started
        common = {"kind": "perplexity", "name": text_id, "stderr": None, "n": result.scored_tokens,
                  "windows": result.windows, "seq_len": result.seq_len, "seconds": seconds}
        records.append({**common, "metric": "perplexity", "value": result.perplexity})
        columns = {"doc_id": np.arange(result.windows), "nll": np.asarray(result.window_nll),
                   "tokens": np.asarray(result.window_tokens)}
        if reference is not None:
            for metric, value in (("kl_mean", result.kl_mean), ("kl_p99", result.kl_p99),
                                  ("top1_agreement", result.top1_agreement)):
                records.append({**common, "metric": metric, "value": value})
            columns.update(kl_sum=np.asarray(result.window_kl), top1_matches=np.asarray(result.window_top1))
        blocks.append(DocumentBlock("perplexity", text_id, columns))
    if tasks:
        results, seconds, task_blocks = run_tasks(model, tokenizer, tasks, suite.task_limit, suite.seed,
                                                  suite.batch_size)
        blocks.extend(task_blocks)
        for r in results:
            records.append({"kind": "task", "name": r.task, "metric": r.metric, "value": r.value,
                            "stderr": r.stderr, "n": r.docs, "seconds": seconds[r.task]})
        accs = [r.value for r in results if r.metric == "acc"]
        if accs:
            records.append({"kind": "task", "name": "mean", "metric": "acc", "value": float(np.mean(accs)),
                            "stderr": None, "n": len(accs), "seconds": sum(seconds.values())})
    generation = None
    if suite.summarization is not None:
        if getattr(model, "vocab_pruning", None) is not None:
            raise InvalidInput("summaries from a model with a pruned vocabulary are not supported: drop the suite's "
                               "summarization field or the run's vocabulary")
        from .summarization import score_summaries
        summary_records, summary_blocks, generation = score_summaries(model, tokenizer, suite.summarization,
                                                                      progress=progress, model_name=model_name)
        records.extend(summary_records)
        blocks.extend(summary_blocks)
    return Evaluation(records, blocks, generation)


def evaluate(model, tokenizer, suite: str | Suite | dict = "quick", *, progress: bool = True,
             model_id: str | None = None) -> list[dict]:
    """Tidy records, one per metric: kind, name, metric, value, stderr, n (tokens or documents), seconds."""
    return score(model, tokenizer, suite, progress=progress, model_id=model_id).metrics
