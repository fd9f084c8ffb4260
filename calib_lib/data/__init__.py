"""Calibration data: sources (registry), held-out splits, sampling, self-generation, export, diagnostics."""
from .corpora import Corpus
from .sources import SOURCES, Source, SourceUnavailableError, get_source, load_eval_text, source_table

__all__ = ["Corpus", "SOURCES", "Source", "SourceUnavailableError", "get_source", "load_eval_text",
           "source_table"]
