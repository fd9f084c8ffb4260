"""The paper's dynamic vocabulary (the token ids of the evaluation data itself, for ``compress.vocabulary``),
and what a pruned vocabulary costs on that data.

Williams & Aletras (2023) keep the tokens of the task's own documents. ``ids_from_suite`` gives exactly the
ids that ``evaluate(model, tokenizer, suite)`` forwards: the suite's perplexity windows and every lm-eval
request of its tasks (the same seeded documents), so a model pruned to them reads no token outside its
vocabulary and scores every target. It lives here, not beside the other vocabulary sources, because it needs
the evaluation layer (tasks, windows), which the compression layer may not import.

``suite_tokens`` gives the same tokens per task and text, so a calibration-derived vocabulary's coverage of each
(the share of its tokens kept) is measured without a forward pass; ``kl_to_unpruned`` measures what pruning
takes from the model's predictions on a text: KL(pruned || unpruned), finite where KL(unpruned || pruned) is not
(the unpruned model puts mass on every token). When the text's tokens are all kept it is exactly -log of the
probability mass the unpruned model put on the kept tokens, per position.

How accuracy is scored when a task's answer holds a pruned token: the pruned model gives it probability 0
(log-likelihood -inf), as it would when deployed: it cannot produce that token. lm-eval's argmax then picks the
first of tied choices, so a document whose every choice is -inf counts as right when its gold is choice 0.
``expected_accuracy`` scores ties as a uniform random pick among the tied choices (1/ties when gold is among
them), the rule the vocabulary notebook reports beside lm-eval's; ``target_coverage`` says per document whether
its gold continuation was scorable at all.
"""
from __future__ import annotations

import numpy as np
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


# suite_tokens per (tokenizer, suite): a sweep's vocabulary runs share one suite, and building lm-eval's
# requests for its tasks costs seconds each time. Only what is available is cached (a task that was missing is
# looked for again next time: the cache key holds the availability of everything asked for).
_SUITE_TOKENS: dict = {}


def suite_tokens(tokenizer, suite="quick") -> dict[tuple[str, str], torch.Tensor]:
    """Every token ``evaluate(model, tokenizer, suite)`` forwards, per ``("perplexity", text)`` and
    ``("task", task)``: the suite's windows and every lm-eval request of its tasks (same seeded documents)."""
    import json

    from .suite import get_suite
    from .tasks import task_available
    suite = get_suite(suite)
    key = (getattr(tokenizer, "name_or_path", None), len(tokenizer), type(tokenizer).__name__,
           json.dumps(suite.to_dict(), sort_keys=True), tuple(task_available(t)[0] for t in suite.tasks))
    if key[0] is None or key not in _SUITE_TOKENS:
        pieces = _suite_tokens(tokenizer, suite)
        if key[0] is None:
            return pieces
        _SUITE_TOKENS[key] = pieces
    return {name: tokens.clone() for name, tokens in _SUITE_TOKENS[key].items()}


def _suite_tokens(tokenizer, suite) -> dict[tuple[str, str], torch.Tensor]:
    from ..data import get_source
    from .suite import _resolve_text, evaluation_windows
    from .tasks import TaskUnavailableError, task_available
    pieces = {}
    for text in suite.ppl_texts:
        text_id = _resolve_text(text)
        ok, how = get_source(text_id).availability()
        if not ok:
            raise TaskUnavailableError(f"perplexity text {text_id!r} is unavailable here: {how}")
        pieces[("perplexity", text_id)] = evaluation_windows(text_id, tokenizer, suite.ppl_seq_len,
                                                             suite.ppl_windows, suite.seed).reshape(-1)
    for task in suite.tasks:
        ok, how = task_available(task)
        if not ok:
            if suite.optional_tasks:
                continue                    # evaluate() skips it too
            raise TaskUnavailableError(f"task {task!r} is unavailable here: {how}")
        pieces[("task", task)] = torch.tensor(_task_ids(tokenizer, task, how, suite.task_limit, suite.seed),
                                              dtype=torch.long)
    return pieces


def ids_from_suite(tokenizer, suite="quick") -> torch.Tensor:
    """The paper's dynamic setting: the ids of the evaluation data itself, every perplexity window and every
    task request that ``evaluate(model, tokenizer, suite)`` scores (the same texts, windows and documents)."""
    from .suite import get_suite
    suite = get_suite(suite)
    pieces = [t for t in suite_tokens(tokenizer, suite).values() if t.numel()]
    if not pieces:
        raise InvalidInput(f"suite {suite.name!r} scores no text and no available task, so it yields no tokens: "
                           "use a suite with perplexity texts or tasks whose data is here")
    return ids_from_tokens(torch.cat(pieces), what=f"the evaluation data of suite {suite.name!r}")


@torch.no_grad()
def kl_to_unpruned(pruned, unpruned, windows: torch.Tensor, batch_size: int | None = None,
                   progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per window, the summed KL(pruned || unpruned) over its predicted positions and their count.

    ``pruned``: the model after ``prune_vocabulary``; ``unpruned``: the same model before (a copy). At each
    position sum_{t kept} q(t) log(q(t) / p(t)): finite, where KL(unpruned || pruned) is not. When every input
    token is kept it is -log of the mass p puts on the kept tokens (what renormalisation spreads); input tokens
    outside the kept set, read as the fallback row, change the hidden states too, and this counts that as well.
    The pruned model's out-of-vocabulary counter is left as it was."""
    from .windows import window_logits
    record = getattr(pruned, "vocab_pruning", None)
    if record is None or getattr(unpruned, "vocab_pruning", None) is not None:
        raise InvalidInput("kl_to_unpruned(pruned, unpruned, windows): the first model must be vocabulary-pruned "
                           "and the second the same model before pruning (copy it, then prune)")
    oov_before = record.oov_tokens
    sums, counts = np.zeros(len(windows)), np.zeros(len(windows), dtype=np.int64)
    pairs = zip(window_logits(pruned, windows, batch_size, progress, desc="kl to unpruned"),
                window_logits(unpruned, windows, batch_size, False))
    for (start, batch, logits_q), (_, _, logits_p) in pairs:
        index = record.kept_ids.to(logits_q.device)
        for row in range(len(batch)):                    # one window at a time: Gemma's logits are 1 GB a window
            logq = torch.log_softmax(logits_q[row, :-1].index_select(-1, index).float(), dim=-1)
            logp = torch.log_softmax(logits_p[row, :-1].float(), dim=-1).index_select(-1, index)
            per_position = (logq.exp() * (logq - logp)).sum(dim=-1).double().clamp_min(0)
            sums[start + row] = float(per_position.sum())
            counts[start + row] = per_position.numel()
    record.reset_oov_count()
    getattr(record._embedding, "vocab_oov_count").add_(oov_before)
    return sums, counts


def expected_accuracy(loglik, gold, n_choices) -> np.ndarray:
    """Per document, the accuracy of an argmax that breaks ties uniformly at random: 1/ties when the gold
    choice is among the ``ties`` choices of highest log-likelihood, else 0 (lm-eval takes the first of them).
    ``loglik``: flat per-choice log-likelihoods in document order, ``n_choices`` per document (a
    ``DocumentBlock``'s ``choice_loglik``); documents of a loglikelihood task (gold -1) get NaN."""
    loglik, gold, n_choices = np.asarray(loglik, float), np.asarray(gold, int), np.asarray(n_choices, int)
    out = np.full(len(gold), np.nan)
    starts = np.concatenate([[0], np.cumsum(n_choices)[:-1]])
    for i, (start, n, g) in enumerate(zip(starts, n_choices, gold)):
        if g < 0:
            continue
        values = loglik[start:start + n]
        best = values == values.max()            # all -inf: every choice ties
        out[i] = best[g] / best.sum()
    return out


def target_coverage(loglik, gold, n_choices) -> np.ndarray:
    """Per document, whether its gold continuation is scorable (finite log-likelihood): False where it holds a
    token a pruned vocabulary removed. Loglikelihood tasks (gold -1): their one continuation."""
    loglik, gold, n_choices = np.asarray(loglik, float), np.asarray(gold, int), np.asarray(n_choices, int)
    starts = np.concatenate([[0], np.cumsum(n_choices)[:-1]])
    return np.isfinite(loglik[starts + np.maximum(gold, 0)])
