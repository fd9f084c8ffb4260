"""CalibrationSpec -> CalibrationSet: exact, reproducible, non-overlapping calibration samples.

``sample`` checks the request against the model and hands it to the spec's source, which owns how its
data is built (``sources.py``); windows of real text are cut by the registered strategies
(``strategies.py``). The spec and set types live in ``spec.py``, set files in ``setfile.py``; they are
re-exported here so ``from calib_lib.data.sampling import CalibrationSpec, sample`` keeps working.
"""
from __future__ import annotations

from ..models.context import context_length
from ..errors import InvalidInput
from .setfile import EXPORT_FORMAT, export_set, import_set, is_exported_set
from .sources import get_source, random_vocab_ids
from .spec import CalibrationSet, CalibrationSpec, fingerprint
from .strategies import NotEnoughDataError, concat_chunks, document_windows

__all__ = ["EXPORT_FORMAT", "CalibrationSet", "CalibrationSpec", "NotEnoughDataError", "concat_chunks",
           "document_windows", "export_set", "fingerprint", "import_set", "is_exported_set", "random_vocab_ids",
           "sample"]


def sample(spec: CalibrationSpec, tokenizer, model=None, *, progress: bool = True) -> CalibrationSet:
    """Build the calibration set that ``spec`` names, for ``tokenizer`` (and ``model`` for 'self')."""
    context = context_length(model) if model is not None else None
    if context is not None and spec.seq_len > context:
        raise InvalidInput(f"seq_len {spec.seq_len} is longer than the model's context of {context} tokens")
    return get_source(spec.source).build(spec, tokenizer, model, progress=progress)
