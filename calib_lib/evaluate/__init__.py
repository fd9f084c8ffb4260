"""Evaluation: perplexity windows, lm-eval zero-shot tasks on the model in memory, per-document records and
fidelity (KL) to the dense model."""
from .perplexity import PerplexityResult, make_windows, perplexity
from .suite import SUITES, Evaluation, Suite, evaluate, get_suite, score
from .tasks import TASKS, TaskUnavailableError

__all__ = ["Evaluation", "PerplexityResult", "SUITES", "Suite", "TASKS", "TaskUnavailableError", "evaluate",
           "get_suite", "make_windows", "perplexity", "score"]
