"""Zero-shot tasks through lm-evaluation-harness, online by lm-eval's own names, offline over the mirror.

Offline task configs read the mirror's files (absolute paths) and reproduce lm-eval's standard prompt,
choices, target and metrics of each task (lm-eval 0.4 task YAMLs), so numbers are comparable with
published ones. ``tests/test_evaluate.py`` renders a few documents through both this config and
lm-eval's built-in task and checks the requests are identical.

Notes on the mirror's formats: ARC and OpenBookQA come reformatted by llm-foundry (query / choices /
gold; ARC's query already starts with "Question: "), LAMBADA as context / continuation, RTE, BoolQ and
COPA with SuperGLUE's original fields, PIQA and WinoGrande with their original fields, HellaSwag with
``ctx`` = ctx_a + " " + ctx_b already cleaned. lm-eval capitalises ctx_b; the mirror no longer
separates ctx_b, so its first letter is capitalised where it starts the last sentence of ctx.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..paths import mirror_dir
from ..errors import InvalidInput, Unavailable

# -- document functions (module level: lm-eval calls them per document) ---------------------------

def _hellaswag_preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _capitalise_last_fragment(ctx: str) -> str:
    head, sep, tail = ctx.rpartition(". ")
    if sep and tail[:1].islower():
        return head + sep + tail[0].upper() + tail[1:]
    return ctx


def hellaswag_docs(dataset):
    def one(doc):
        return {"query": _hellaswag_preprocess(doc["activity_label"] + ": " + _capitalise_last_fragment(doc["ctx"])),
                "choices": [_hellaswag_preprocess(e) for e in doc["endings"]], "gold": int(doc["label"])}
    return dataset.map(one)


def winogrande_text(doc):
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_target(doc):
    return doc["sentence"][doc["sentence"].index("_") + 1:].strip()


def winogrande_choice(doc):
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]


def _lower_first(choice: str) -> str:
    return choice[0].lower() + choice[1:]


def copa_text(doc):
    return doc["premise"].strip()[:-1] + " " + {"cause": "because", "effect": "therefore"}[doc["question"]]


def copa_target(doc):
    return " " + _lower_first(doc["choice1"] if doc["label"] == 0 else doc["choice2"])


def copa_choice(doc):
    return [" " + _lower_first(doc["choice1"]), " " + _lower_first(doc["choice2"])]


def rte_target(doc):
    return 0 if doc["label"] in ("entailment", 0) else 1


def boolq_target(doc):
    return int(doc["label"])


_ACC = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
_ACC_NORM = _ACC + [{"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]

@dataclass(frozen=True)
class Task:
    """One zero-shot task: its mirror file, lm-eval's built-in name, and the fields of its offline lm-eval
    config (lm-eval 0.4's task YAML for it, as data; the document functions above where YAML uses Python)."""
    name: str
    mirror_file: str
    config: dict
    builtin: str = ""                     # lm-eval's name online, when it differs from ``name``


def _choice_task(name: str, mirror_file: str, metrics: list, **config) -> Task:
    return Task(name, mirror_file, {"metric_list": metrics, **config})


REGISTRY: dict[str, Task] = {t.name: t for t in (
    _choice_task("arc_easy", "tasks/arc_easy.jsonl", _ACC_NORM, doc_to_text="{{query}}\nAnswer:",
                 doc_to_target="{{gold}}", doc_to_choice="{{choices}}"),
    _choice_task("arc_challenge", "tasks/arc_challenge.jsonl", _ACC_NORM, doc_to_text="{{query}}\nAnswer:",
                 doc_to_target="{{gold}}", doc_to_choice="{{choices}}"),
    _choice_task("boolq", "tasks/boolq.jsonl", _ACC, doc_to_text="{{passage}}\nQuestion: {{question}}?\nAnswer:",
                 doc_to_target=boolq_target, doc_to_choice=["no", "yes"]),
    _choice_task("hellaswag", "tasks/hellaswag.jsonl.gz", _ACC_NORM, process_docs=hellaswag_docs,
                 doc_to_text="{{query}}", doc_to_target="{{gold}}", doc_to_choice="choices"),
    Task("lambada_openai", "tasks/lambada_openai.jsonl", dict(
        output_type="loglikelihood", doc_to_text="{{context}}", doc_to_target="{{' ' + continuation}}",
        metric_list=[{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                     {"metric": "acc", "aggregation": "mean", "higher_is_better": True}])),
    _choice_task("openbookqa", "tasks/openbookqa.jsonl", _ACC_NORM, doc_to_text="{{query}}",
                 doc_to_target="{{gold}}", doc_to_choice="{{choices}}"),
    _choice_task("piqa", "tasks/piqa.jsonl.gz", _ACC_NORM, doc_to_text="Question: {{goal}}\nAnswer:",
                 doc_to_target="label", doc_to_choice="{{[sol1, sol2]}}"),
    # RTE: lm-eval's SuperGLUE copy, whose fields the mirror has
    Task("rte", "tasks/rte.jsonl", dict(doc_to_text="{{premise}}\nQuestion: {{hypothesis}} True or False?\nAnswer:",
                                        doc_to_target=rte_target, doc_to_choice=["True", "False"],
                                        metric_list=_ACC), builtin="sglue_rte"),
    _choice_task("winogrande", "tasks/winogrande.jsonl.gz", _ACC, doc_to_text=winogrande_text,
                 doc_to_target=winogrande_target, doc_to_choice=winogrande_choice),
    _choice_task("copa", "tasks/copa.jsonl", _ACC, doc_to_text=copa_text, doc_to_target=copa_target,
                 doc_to_choice=copa_choice),
)}
TASKS = tuple(REGISTRY)
MIRROR_FILES = {name: task.mirror_file for name, task in REGISTRY.items()}


class TaskUnavailableError(Unavailable):
    pass


DOC_ID = "calib_doc_id"      # a document's index in the task's full test split, added before any subset


def _seeded_subset(limit: int | None, seed: int, inner=None):
    """process_docs that numbers every document (``DOC_ID``: a stable id for per-document records, whatever
    subset is scored) and keeps a seeded subset of ``limit`` documents (in their original order). ``inner``
    (a task's own document function: a per-document map) runs on the subset only: the same documents as
    mapping all first (HellaSwag's 10k), without the cost."""
    def process(dataset):
        dataset = dataset.add_column(DOC_ID, list(range(len(dataset))))
        if limit is not None and limit < len(dataset):
            rng = np.random.default_rng(seed)
            dataset = dataset.select(sorted(rng.choice(len(dataset), size=limit, replace=False).tolist()))
        return inner(dataset) if inner is not None else dataset
    return process


def offline_config(task: str, limit: int | None = None, seed: int = 1234) -> dict:
    if task not in REGISTRY:
        raise InvalidInput(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    root = mirror_dir()
    if root is None or not (root / MIRROR_FILES[task]).is_file():
        raise TaskUnavailableError(
            f"task {task!r} needs its data: set CALIB_MIRROR to the offline mirror (with "
            f"{MIRROR_FILES[task]}) or go online so lm-eval can fetch it from the hub")
    spec = dict(REGISTRY[task].config)
    inner = spec.pop("process_docs", None)
    return {
        "task": f"calib_{task}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str((root / MIRROR_FILES[task]).resolve())}},
        "test_split": "test",
        "output_type": spec.pop("output_type", "multiple_choice"),
        "process_docs": _seeded_subset(limit, seed, inner),
        "metadata": {"version": 1.0},
        **spec,
    }


def task_available(task: str) -> tuple[bool, str]:
    from ..net import hub_reachable
    root = mirror_dir()
    if root is not None and (root / MIRROR_FILES.get(task, "")).is_file():
        return True, "mirror"
    if hub_reachable():
        return True, "hub"
    return False, "set CALIB_MIRROR to the offline mirror or go online"


@dataclass(frozen=True)
class TaskResult:
    task: str
    metric: str
    value: float
    stderr: float | None
    docs: int


def _git_hash_quietly() -> str | None:
    """lm-eval's ``get_git_commit_hash``, without git's complaint on stderr outside a checkout."""
    import subprocess
    try:
        return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).decode().strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


def _gold(task, doc, choices: list[str]) -> int:
    """The gold choice exactly as lm-eval's multiple-choice scoring finds it (``ConfigurableTask.
    process_results``): the text function for multiple-input tasks (WinoGrande), else the target, as an index
    or as one of the choices."""
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = int(gold) if gold.isdigit() else choices.index(gold)
    return int(gold)


def _task_documents(task, samples: list[dict], encode) -> list[dict]:
    """Per-document records from lm-eval's logged samples; ``encode(context, continuation)`` gives the
    continuation's token count (lm-eval's own encoding of the pair)."""
    docs = []
    for sample in samples:
        doc = sample["doc"]
        lls, greedy = zip(*sample["filtered_resps"])
        continuations = [args[1] for args in sample["arguments"]]
        tokens = [encode(*args) for args in sample["arguments"]]
        if task.OUTPUT_TYPE == "multiple_choice":
            choices = task.doc_to_choice(doc)
            gold = _gold(task, doc, choices)
            chars = [len(c) for c in choices]          # what lm-eval divides by for acc_norm
        else:                                          # loglikelihood (LAMBADA): one continuation, the target
            gold, chars = -1, [len(c) for c in continuations]
        docs.append({"doc_id": int(doc.get(DOC_ID, sample["doc_id"])), "gold": gold,
                     "loglik": [float(x) for x in lls], "greedy": [bool(x) for x in greedy],
                     "tokens": tokens, "chars": chars,
                     "correct": float(sample["acc"]) if "acc" in sample else float("nan"),
                     "correct_norm": float(sample["acc_norm"]) if "acc_norm" in sample else float("nan")})
    return docs


def _aggregate(task: str, block, lm_eval_metrics: dict, docs: int) -> list[TaskResult]:
    """Each metric derived from the per-document rows, checked against lm-eval's own aggregate of the
    same documents (a mismatch is a bug in the extraction, never a user error)."""
    rows = block.rows()
    results = []
    for key, theirs in lm_eval_metrics.items():
        if "," not in key or key.startswith("alias") or "_stderr" in key:
            continue
        metric = key.split(",")[0]
        stderr = lm_eval_metrics.get(f"{metric}_stderr,none")
        stderr = float(stderr) if isinstance(stderr, (int, float)) else None
        if metric in ("acc", "acc_norm"):
            values = rows["correct" if metric == "acc" else "correct_norm"]
            ours = float(np.mean(values))
        elif metric == "perplexity":                   # LAMBADA: exp of the mean negative log-likelihood
            ours = float(np.exp(-np.mean(rows["gold_loglik"])))
        else:
            ours = float(theirs)
        if not np.isclose(ours, float(theirs), rtol=1e-9, atol=1e-12):
            raise RuntimeError(f"{task} {metric}: per-document rows give {ours}, lm-eval {theirs}")
        results.append(TaskResult(task, metric, ours, stderr, docs))
    return results


def run_tasks(model, tokenizer, tasks: list[str], limit: int | None = None, seed: int = 1234,
              batch_size: int | None = None, packed: bool = True):
    """Evaluate the in-memory ``model`` on ``tasks``.

    Returns (results, seconds per task, per-document blocks). ``packed`` scores through ``PackedLM`` (each
    multiple-choice context forwarded once for all its choices; same numbers as lm-eval's HFLM to 1e-4),
    else through HFLM itself.
    """
    import time

    import lm_eval.evaluator
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from .fast_lm import make_lm
    from .records import task_block

    # lm-eval records the git hash of the working directory with git's stderr attached to ours, so
    # every evaluation outside a checkout printed "fatal: not a git repository". Same hash, quietly.
    lm_eval.evaluator.get_git_commit_hash = _git_hash_quietly

    configs = []
    for task in tasks:
        ok, how = task_available(task)
        if not ok:
            raise TaskUnavailableError(f"task {task!r} is unavailable: {how}")
        configs.append(offline_config(task, limit, seed) if how == "mirror" else REGISTRY[task].builtin or task)
    lm = make_lm(model, tokenizer, batch_size=batch_size, packed=packed)     # None: bounded by the logits' size
    encode = getattr(lm, "continuation_token_count", None) or (lambda ctx, cont: len(lm._encode_pair(ctx, cont)[1]))
    manager = TaskManager(include_defaults=any(isinstance(c, str) for c in configs))
    results, seconds, blocks = [], {}, []
    for task, config in zip(tasks, configs):
        started = time.time()
        (task_object,) = manager.load([config])["tasks"].values()
        out = simple_evaluate(model=lm, tasks=[task_object], task_manager=manager, num_fewshot=0,
                              limit=limit if isinstance(config, str) else None, bootstrap_iters=100,
                              log_samples=True, random_seed=seed, numpy_random_seed=seed,
                              torch_random_seed=seed, fewshot_random_seed=seed, verbosity="ERROR")
        seconds[task] = time.time() - started
        (name, metrics), = out["results"].items()
        docs = out["n-samples"][name]["effective"]
        block = task_block(task, _task_documents(task_object, out["samples"][name], encode))
        blocks.append(block)
        results.extend(_aggregate(task, block, metrics, docs))
    return results, seconds, blocks
