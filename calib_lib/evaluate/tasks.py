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


def _seeded_subset(limit: int | None, seed: int, inner=None):
    """process_docs that keeps a seeded subset of ``limit`` documents (in their original order)."""
    def process(dataset):
        if inner is not None:
            dataset = inner(dataset)
        if limit is None or limit >= len(dataset):
            return dataset
        rng = np.random.default_rng(seed)
        return dataset.select(sorted(rng.choice(len(dataset), size=limit, replace=False).tolist()))
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


def task_batch_size(model, longest: int = 512) -> int:
    """Requests per lm-eval batch, bounding the fp32 logits (batch x length x vocab) to ~2 GiB:
    Gemma's 262k-token vocabulary would need ~9 GiB of logits at 16 x 512."""
    vocab = getattr(model.config, "vocab_size", 32000)
    return max(1, min(16, (1 << 29) // (vocab * longest)))


def _git_hash_quietly() -> str | None:
    """lm-eval's ``get_git_commit_hash``, without git's complaint on stderr outside a checkout."""
    import subprocess
    try:
        return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).decode().strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


def run_tasks(model, tokenizer, tasks: list[str], limit: int | None = None, seed: int = 1234,
              batch_size: int | None = None) -> tuple[list[TaskResult], dict[str, float]]:
    """Evaluate the in-memory ``model`` on ``tasks``; returns (results, seconds per task)."""
    import time

    import lm_eval.evaluator
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # lm-eval records the git hash of the working directory with git's stderr attached to ours, so
    # every evaluation outside a checkout printed "fatal: not a git repository". Same hash, quietly.
    lm_eval.evaluator.get_git_commit_hash = _git_hash_quietly

    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise InvalidInput(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    configs = []
    for task in tasks:
        ok, how = task_available(task)
        if not ok:
            raise TaskUnavailableError(f"task {task!r} is unavailable: {how}")
        configs.append(offline_config(task, limit, seed) if how == "mirror" else REGISTRY[task].builtin or task)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, device=str(next(model.parameters()).device),
              batch_size=batch_size or task_batch_size(model))
    manager = TaskManager(include_defaults=any(isinstance(c, str) for c in configs))
    results, seconds = [], {}
    for task, config in zip(tasks, configs):
        started = time.time()
        out = simple_evaluate(model=lm, tasks=[config], task_manager=manager, num_fewshot=0,
                              limit=limit if isinstance(config, str) else None, bootstrap_iters=100,
                              log_samples=False, random_seed=seed, numpy_random_seed=seed,
                              torch_random_seed=seed, fewshot_random_seed=seed, verbosity="ERROR")
        seconds[task] = time.time() - started
        (name, metrics), = out["results"].items()
        docs = out["n-samples"][name]["effective"]
        for key, value in metrics.items():
            if "," not in key or key.startswith("alias") or "_stderr" in key:
                continue
            metric = key.split(",")[0]
            stderr = metrics.get(f"{metric}_stderr,none")
            results.append(TaskResult(task, metric, float(value),
                                      float(stderr) if isinstance(stderr, (int, float)) else None, docs))
    return results, seconds
