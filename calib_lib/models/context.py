"""Facts about a loaded model that every layer above needs (sampling, compression, evaluation)."""
from __future__ import annotations


def context_length(model) -> int | None:
    """The longest sequence the model takes (its position table), or None when the config has none."""
    return getattr(model.config, "max_position_embeddings", None)


def declared_context_length(name_or_path: str) -> int | None:
    """A model's context without loading it: the registry's value for an embedded model, the config of a
    local checkpoint directory, or of a hub model already in the local Hugging Face cache; None when it
    cannot be known offline (the run then checks it after loading)."""
    import json
    from pathlib import Path

    from .registry import EMBEDDED
    entry = EMBEDDED.find(name_or_path)
    if entry is not None:
        return entry.context_length
    config = Path(name_or_path).expanduser() / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("max_position_embeddings")
    try:
        from transformers import AutoConfig
        return getattr(AutoConfig.from_pretrained(name_or_path, local_files_only=True), "max_position_embeddings", None)
    except (OSError, ValueError):
        return None
