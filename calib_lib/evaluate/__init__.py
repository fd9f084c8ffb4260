"""Evaluation: perplexity windows and lm-eval zero-shot tasks on the model in memory."""
from .perplexity import PerplexityResult, make_windows, perplexity
from .suite import SUITES, Suite, evaluate, get_suite
from .tasks import TASKS, TaskUnavailableError

__all__ = ["PerplexityResult", "SUITES", "Suite", "TASKS", "TaskUnavailableError", "evaluate",
           "get_suite", "make_windows", "perplexity"]
