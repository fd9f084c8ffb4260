"""One driver for any Hugging Face causal LM whose decoder blocks hold nn.Linear layers.

``compress(model, method, calibration)`` checks the inputs and hands the model to the method's
pipeline (``pipelines.py``: data-free, layer order, block order, block level). Embeddings and lm_head
are left untouched.
"""
from __future__ import annotations

import time

import torch

from ..models.context import context_length
from ..errors import InvalidInput
from .blocks import decoder_blocks
from .methods import METHODS, Method
from .pipelines import PIPELINES


def make_method(method: str | Method, **params) -> Method:
    if isinstance(method, Method):
        if params:
            raise InvalidInput("pass parameters either in the Method object or as keywords, not both")
        return method
    cls = METHODS.get(method)
    try:
        return cls(**params)
    except TypeError as err:
        raise InvalidInput(f"{method}: {err}") from err


@torch.no_grad()
def compress(model, method: str | Method, calibration: torch.Tensor | None = None, *,
             batch_size: int = 8, progress: bool = True, float_noise: int = 0, **params) -> dict:
    """Compress ``model`` in place with ``method`` using ``calibration`` (LongTensor [n, seq_len]).

    ``float_noise`` > 0 makes a numerical-noise replicate: block inputs dithered at rounding level, seeded by
    it (``pipelines.dither``); 0, the default, computes the run itself.

    Returns a report: the method and its parameters, the pipeline, per-layer info (sparsity, damping
    retries, ...) and wall time.
    """
    method = make_method(method, **params)
    pipeline = PIPELINES.get(method.pipeline)
    started = time.time()
    blocks = decoder_blocks(model)
    if pipeline.needs_calibration:
        if calibration is None or calibration.dim() != 2:
            raise InvalidInput(f"{method.name} needs calibration data: a LongTensor [num_samples, seq_len]")
        limit = context_length(model)
        if limit is not None and calibration.shape[1] > limit:
            raise InvalidInput(f"calibration seq_len {calibration.shape[1]} exceeds the model context of {limit}")
    was_training = model.training
    model.eval()
    try:
        layers = pipeline.run(model, blocks, method, calibration, batch_size, progress, float_noise)
    finally:
        model.train(was_training)
    retries = sum(v.get("damping_retries", 0) for v in layers.values())
    return {"method": method.name, "params": method.params(), "pipeline": pipeline.name, "layers": layers,
            "damping_retries": retries, "seconds": time.time() - started,
            "calibration_shape": list(calibration.shape) if calibration is not None else None}
