"""Evaluation: perplexity windows (and, with lm-eval, zero-shot tasks)."""
from .perplexity import PerplexityResult, make_windows, perplexity

__all__ = ["PerplexityResult", "make_windows", "perplexity"]
