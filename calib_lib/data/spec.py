"""CalibrationSpec (what data to draw) and CalibrationSet (the drawn token ids and where they came from).

The spec is flat, as users write it; which of its fields apply depends on the source (``path`` for
``custom``, the temperature schedule for ``self``, ``strategy`` for sources sampled from a corpus).
Each registered source says which options it takes and checks them (``sources.Source``), so this module
has no per-source branch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from ..errors import FieldError, InvalidInput
from .registry import SOURCES, STRATEGIES


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise FieldError(name, f"{name} must be a positive integer, got {value!r}")


def _non_negative_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FieldError(name, f"{name} must be a non-negative integer, got {value!r}")


@dataclass(frozen=True)
class CalibrationSpec:
    source: str
    num_samples: int = 128
    seq_len: int = 2048
    seed: int = 0
    set_index: int = 0
    strategy: str = "document-window"
    # selector strategies (``coverage``, ...): the candidate pool of a set is num_samples x candidates windows
    candidates: int = 4
    # source == "mix": ((source, share), ...) with shares in [0, 1] summing to 1 (a mapping is accepted)
    mix: tuple = ()
    # source == "self-prefix" (Ji et al. 2025): continue prefix_tokens-token prefixes of prefix_source, drop the
    # filter_share of generations with the highest perplexity
    prefix_source: str | None = None
    prefix_tokens: int = 16
    filter_share: float = 0.2
    # corpus sources: format each document as a user turn of the model's chat template before tokenizing
    chat_template: bool = False
    # source == "custom": a local .txt/.jsonl/.parquet file, an exported set, or a hub dataset id
    path: str | None = None
    text_field: str = "text"
    # source == "self": the linear temperature schedule of Williams et al. (2024)
    t_init: float = 1.0
    t_final: float = 1.0
    schedule_steps: int = 10
    stopword_first: bool = False

    def __post_init__(self):
        if isinstance(self.mix, dict) or (isinstance(self.mix, (list, tuple)) and self.mix):
            pairs = self.mix.items() if isinstance(self.mix, dict) else self.mix
            try:
                object.__setattr__(self, "mix", tuple(sorted((str(k), v) for k, v in pairs)))
            except (TypeError, ValueError) as err:
                raise FieldError("mix", f"mix must be a mapping {{source: share}}, got {self.mix!r}") from err
        if self.mix and self.source != "mix":
            raise FieldError("mix", f"mix= applies to source 'mix' only, not {self.source!r}")
        if self.source not in SOURCES:
            raise FieldError("source", f"unknown calibration source {self.source!r}; known: {', '.join(SOURCES)}")
        _positive_int("num_samples", self.num_samples)
        _positive_int("seq_len", self.seq_len)
        if self.seq_len < 2:
            raise FieldError("seq_len", "seq_len must be at least 2 tokens")
        # numpy's SeedSequence takes only non-negative entropy: a negative seed would fail at sampling time.
        _non_negative_int("seed", self.seed)
        _non_negative_int("set_index", self.set_index)
        if self.strategy not in STRATEGIES:
            raise FieldError("strategy", f"unknown strategy {self.strategy!r}; use one of {tuple(STRATEGIES)}")
        _positive_int("candidates", self.candidates)
        if not isinstance(self.chat_template, bool):
            raise FieldError("chat_template", f"chat_template must be true or false, got {self.chat_template!r}")
        if self.chat_template and not SOURCES.get(self.source).uses_strategy:
            raise FieldError("chat_template", f"chat_template formats a corpus's documents; source {self.source!r} "
                             "has none (use a corpus source, custom or mix)")
        SOURCES.get(self.source).check(self)

    @property
    def source_entry(self):
        """The registered ``sources.Source`` this spec draws from."""
        return SOURCES.get(self.source)

    def normalized(self) -> dict:
        """The fields that determine the data (source-specific options only where they apply)."""
        out = {k: getattr(self, k) for k in ("source", "num_samples", "seq_len", "seed", "set_index")}
        source = self.source_entry
        if source.uses_strategy:
            out["strategy"] = self.strategy
            out.update({name: getattr(self, name) for name in STRATEGIES.get(self.strategy).options})
            if self.chat_template:                  # only when set: the keys of existing specs stay as they were
                out["chat_template"] = True
        out.update(source.options(self))
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "CalibrationSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidInput(f"unknown calibration field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class CalibrationSet:
    spec: CalibrationSpec
    input_ids: torch.Tensor                 # LongTensor [num_samples, seq_len]
    origin: str                             # backend the text came from
    tokenizer_digest: str
    windows: list[tuple[int, int, int]] = field(default_factory=list)  # (doc, start, end) per row
    seconds: float = 0.0

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.input_ids)

    def metadata(self) -> dict:
        return {"spec": self.spec.normalized(), "fingerprint": self.fingerprint, "origin": self.origin,
                "tokenizer_digest": self.tokenizer_digest, "shape": list(self.input_ids.shape),
                "seconds": round(self.seconds, 3)}


def fingerprint(input_ids: torch.Tensor) -> str:
    """sha256 of the token ids and shape: identifies the data itself, however it was produced."""
    array = np.ascontiguousarray(input_ids.cpu().numpy().astype("<i8"))
    h = hashlib.sha256(json.dumps(list(array.shape)).encode())
    h.update(array.tobytes())
    return h.hexdigest()
