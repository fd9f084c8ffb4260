"""Models: embedded registry (GGUF wheels, tiny test models), loading, provenance."""
from .context import context_length
from .loading import Provenance, UnknownModelError, load_model, model_info, prepare_embedded
from .registry import DEFAULT_MODEL, EMBEDDED, embedded_names

__all__ = ["DEFAULT_MODEL", "EMBEDDED", "Provenance", "UnknownModelError", "context_length", "embedded_names",
           "load_model", "model_info", "prepare_embedded"]
