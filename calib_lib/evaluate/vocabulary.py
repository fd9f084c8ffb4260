"""The paper's dynamic vocabulary: the token ids of the evaluation data itself, for ``compress.vocabulary``.

Williams & Aletras (2023) keep the tokens of the task's own documents. ``ids_from_suite`` gives exactly the
ids that ``evaluate(model, tokenizer, suite)`` forwards: the suite's perplexity windows and every lm-eval
request of its tasks (the same seeded documents), so a model pruned to them reads no token outside its
vocabulary and scores every target. It lives here, not beside the other vocabulary sources, because it needs
the evaluation layer (tasks, windows), which the compression layer may not import.
"""
from __future__ import annotations

import torch

from ..compress.vocabulary import ids_from_tokens
from ..errors import InvalidInput

def _request_ids(tokenizer, context: str, continuation: str) -> list[int]:
    """Every id lm-eval's HFLM forwards for one (context, continuation) request: it moves the context's
    trailing spaces to the continuation, encodes context + continuation whole and the context alone
    (``TemplateLM._encode_pair``)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    ids = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    return ids + (tokenizer(context, add_special_tokens=False)["input_ids"] if context else [])


def _task_ids(tokenizer, task: str, how: str, limit: int | None, seed: int) -> list[int]:
    """The ids of every request of ``task`` as ``evaluate.tasks.run_tasks`` scores it (same documents)."""
    from lm_eval.tasks import TaskManager

    from .tasks import REGISTRY, offline_config
    config = offline_config(task, limit, seed) if how == "mirror" else REGISTRY[task].builtin or task
    manager = TaskManager(include_defaults=isinstance(config, str))
    (task_object,) = manager.load([config])["tasks"].values()
    task_object.build_all_requests(limit=limit if isinstance(config, str) else None, rank=0, world_size=1)
    ids = []
    for instance in task_object.instances:
        context, continuation = instance.args[:2]
        ids += _request_ids(tokenizer, context, continuation)
    return ids


def ids_from_suite(tokenizer, suite="quick") -> torch.Tensor:
    """The paper's dynamic setting: the ids of the evaluation data itself, every perplexity window and every
    task request that ``evaluate(model, tokenizer, suite)`` scores (the same texts, windows and documents)."""
    from ..data import get_source
    from .suite import _resolve_text, evaluation_windows, get_suite
    from .tasks import TaskUnavailableError, task_available
    suite = get_suite(suite)
    pieces = []
    for text in suite.ppl_texts:
        text_id = _resolve_text(text)
        ok, how = get_source(text_id).availability()
        if not ok:
            raise TaskUnavailableError(f"perplexity text {text_id!r} is unavailable here: {how}")
        pieces.append(evaluation_windows(text_id, tokenizer, suite.ppl_seq_len, suite.ppl_windows,
                                         suite.seed).reshape(-1))
    for task in suite.tasks:
        ok, how = task_available(task)
        if not ok:
            if suite.optional_tasks:
                continue                    # evaluate() skips it too
            raise TaskUnavailableError(f"task {task!r} is unavailable here: {how}")
        pieces.append(torch.tensor(_task_ids(tokenizer, task, how, suite.task_limit, suite.seed), dtype=torch.long))
    if not pieces:
        raise InvalidInput(f"suite {suite.name!r} scores no text and no available task, so it yields no tokens: "
                           "use a suite with perplexity texts or tasks whose data is here")
    return ids_from_tokens(torch.cat(pieces), what=f"the evaluation data of suite {suite.name!r}")
