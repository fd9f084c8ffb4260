"""Facts about a loaded model that every layer above needs (sampling, compression, evaluation)."""
from __future__ import annotations


def context_length(model) -> int | None:
    """The longest sequence the model takes (its position table), or None when the config has none."""
    return getattr(model.config, "max_position_embeddings", None)
