"""CalibrationSpec -> CalibrationSet: exact, reproducible, non-overlapping calibration samples.

Real sources draw token windows from the source's calibration pool, never from its held-out part.
All sets of one (source, seq_len, seed, strategy) come from one seeded sequence of disjoint windows:
set k takes windows ``k*n .. (k+1)*n - 1``, so sets with different ``set_index`` never share a window,
and a set of n samples is the first n windows of the same set with more samples (nested sizes).
"""
from __future__ import annotations

import hashlib
import json
import time
import zlib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import FieldError
from ..evaluate.perplexity import context_length
from .corpora import local_file_documents, split_groups
from .sources import SOURCES, get_source
from .tokenized import TokenizedDocs, tokenize_documents, tokenizer_digest

STRATEGIES = ("document-window", "concat-chunk")
EXPORT_FORMAT = "calib_lib.calibration_set"


@dataclass(frozen=True)
class CalibrationSpec:
    source: str
    num_samples: int = 128
    seq_len: int = 2048
    seed: int = 0
    set_index: int = 0
    strategy: str = "document-window"
    # source == "custom": a local .txt/.jsonl/.parquet file, an exported set, or a hub dataset id
    path: str | None = None
    text_field: str = "text"
    # source == "self": the linear temperature schedule of Williams et al. (2024)
    t_init: float = 1.0
    t_final: float = 1.0
    schedule_steps: int = 10
    stopword_first: bool = False

    def __post_init__(self):
        if self.source not in SOURCES:
            raise FieldError("source", f"unknown calibration source {self.source!r}; known: {', '.join(SOURCES)}")
        for name in ("num_samples", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise FieldError(name, f"{name} must be a positive integer, got {value!r}")
        if self.seq_len < 2:
            raise FieldError("seq_len", "seq_len must be at least 2 tokens")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise FieldError("seed", f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.set_index, int) or self.set_index < 0:
            raise FieldError("set_index", f"set_index must be a non-negative integer, got {self.set_index!r}")
        if self.strategy not in STRATEGIES:
            raise FieldError("strategy", f"unknown strategy {self.strategy!r}; use one of {STRATEGIES}")
        if self.source == "custom" and not self.path:
            raise FieldError("path", "source 'custom' needs path= (a .txt/.jsonl/.parquet file, an exported "
                             "set, or a hub dataset id)")
        if self.source == "self":
            if self.t_init <= 0 or self.t_final <= 0:
                raise FieldError("t_init", "temperatures t_init and t_final must be positive")
            if self.schedule_steps < 0:
                raise FieldError("schedule_steps", "schedule_steps must be >= 0")

    def normalized(self) -> dict:
        """The fields that determine the data (source-specific options only where they apply)."""
        out = {k: getattr(self, k) for k in ("source", "num_samples", "seq_len", "seed", "set_index")}
        if self.source not in ("random-vocab", "self"):
            out["strategy"] = self.strategy
        if self.source == "custom":
            out.update(path=self.path, text_field=self.text_field)
        if self.source == "self":
            out.update(t_init=float(self.t_init), t_final=float(self.t_final),
                       schedule_steps=self.schedule_steps, stopword_first=self.stopword_first)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "CalibrationSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown calibration field(s) {sorted(unknown)}; known: {sorted(known)}")
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


def _rng(seed: int, *keys) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *(zlib.crc32(str(k).encode()) for k in keys)]))


class NotEnoughDataError(ValueError):
    pass


def _shortfall(spec: CalibrationSpec, available: int, what: str) -> NotEnoughDataError:
    sets = available // spec.num_samples
    return NotEnoughDataError(
        f"source {spec.source!r} supplies only {available} non-overlapping windows of {spec.seq_len} "
        f"tokens ({what}), so at most {sets} set(s) of {spec.num_samples} samples (set_index 0.."
        f"{max(sets - 1, 0)}), or one set of at most {available} samples. Lower num_samples, seq_len "
        f"or set_index, or use the other strategy.")


def document_windows(docs: TokenizedDocs, spec: CalibrationSpec) -> list[tuple[int, int, int]]:
    """GPTQ-style windows without replacement: a uniformly chosen document (one with at least
    seq_len tokens), then a random one of its disjoint window slots, until set ``set_index`` is full."""
    L, need = spec.seq_len, spec.num_samples * (spec.set_index + 1)
    rng = _rng(spec.seed, spec.source, "document-window", L)
    lengths = docs.lengths()
    eligible = np.flatnonzero(lengths >= L)
    # Tile each eligible document with disjoint slots from a random offset, then draw slots.
    slots: dict[int, list[int]] = {}
    for d in eligible:
        count = int(lengths[d] // L)
        offset = int(rng.integers(0, lengths[d] - count * L + 1))
        slots[int(d)] = list(offset + L * rng.permutation(count))
    available = sum(len(s) for s in slots.values())
    if available < need:
        raise _shortfall(spec, available, f"{len(eligible)} documents have at least {L} tokens")
    alive = [int(d) for d in eligible]
    chosen = []
    while len(chosen) < need:
        pick = int(rng.integers(len(alive)))
        doc = alive[pick]
        start = int(slots[doc].pop())
        chosen.append((doc, start, start + L))
        if not slots[doc]:
            alive[pick] = alive[-1]
            alive.pop()
    return chosen[spec.set_index * spec.num_samples:]


def concat_chunks(docs: TokenizedDocs, spec: CalibrationSpec) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """AWQ-style: documents in a seeded order, concatenated, cut into consecutive seq_len blocks."""
    L, n = spec.seq_len, spec.num_samples
    order = _rng(spec.seed, spec.source, "concat-chunk").permutation(len(docs))
    stream = np.concatenate([docs.doc(int(i)) for i in order]) if len(docs) else np.zeros(0, np.int64)
    available = len(stream) // L
    if available < n * (spec.set_index + 1):
        raise _shortfall(spec, available, f"{len(stream)} tokens in the pool")
    first = spec.set_index * n
    windows = [(-1, (first + j) * L, (first + j + 1) * L) for j in range(n)]
    return stream, windows


def _pool_documents(spec: CalibrationSpec) -> tuple[list[str], str, str]:
    """(pool documents, origin, cache key) of a real or custom source."""
    if spec.source == "custom":
        path = Path(spec.path).expanduser()
        if path.is_file() or path.suffix in (".txt", ".jsonl", ".parquet", ".gz", ".json"):
            docs = local_file_documents(spec.path, spec.text_field)
            origin = f"file:{path.resolve()}"
        else:
            docs = _hub_documents(spec.path, spec.text_field)
            origin = f"hub:{spec.path}"
        digest = hashlib.sha256("\x00".join(docs).encode()).hexdigest()
        if len(docs) >= 10:
            docs, _ = split_groups([(str(i), d) for i, d in enumerate(docs)], f"custom:{digest}")
        return docs, origin, f"custom-{digest[:16]}-{spec.text_field}"
    corpus = get_source(spec.source).corpus()
    return corpus.pool, corpus.origin, f"{spec.source}-{corpus.digest[:16]}"


def _hub_documents(dataset_id: str, text_field: str) -> list[str]:
    from ..net import hub_reachable
    if not hub_reachable():
        raise FileNotFoundError(f"custom source {dataset_id!r} is not a local file and the Hugging Face "
                                "hub is not reachable; pass a local .txt/.jsonl/.parquet file")
    from datasets import load_dataset
    data = load_dataset(dataset_id, split="train")
    if text_field not in data.column_names:
        raise ValueError(f"dataset {dataset_id} has no field {text_field!r}; fields: {data.column_names}")
    return [t for t in data[text_field] if t and t.strip()]


def random_vocab_ids(tokenizer) -> np.ndarray:
    """Every id of the tokenizer's vocabulary except special and added control tokens."""
    special = set(tokenizer.all_special_ids)
    special |= {i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special}
    return np.asarray([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)


def sample(spec: CalibrationSpec, tokenizer, model=None, *, progress: bool = True) -> CalibrationSet:
    """Build the calibration set that ``spec`` names, for ``tokenizer`` (and ``model`` for 'self')."""
    started = time.time()
    context = context_length(model) if model is not None else None
    if context is not None and spec.seq_len > context:
        raise ValueError(f"seq_len {spec.seq_len} is longer than the model's context of {context} tokens")
    digest = tokenizer_digest(tokenizer)
    if spec.source == "custom" and is_exported_set(spec.path):
        result = import_set(spec.path, tokenizer)
        if tuple(result.input_ids.shape) != (spec.num_samples, spec.seq_len):
            raise ValueError(f"{spec.path} holds a set of shape {tuple(result.input_ids.shape)}, but the "
                             f"spec asks for ({spec.num_samples}, {spec.seq_len})")
        result.spec = spec
        return result
    if spec.source == "random-vocab":
        vocab = random_vocab_ids(tokenizer)
        rng = _rng(spec.seed, "random-vocab", spec.set_index, spec.seq_len)
        ids = torch.from_numpy(vocab[rng.integers(0, len(vocab), size=(spec.num_samples, spec.seq_len))])
        return CalibrationSet(spec, ids, "synthetic:uniform non-special vocabulary", digest,
                              seconds=time.time() - started)
    if spec.source == "self":
        if model is None:
            raise ValueError("source 'self' generates text with the model: pass model=")
        from .selfgen import self_generated_set
        return self_generated_set(spec, model, tokenizer, progress=progress)
    docs, origin, key = _pool_documents(spec)
    tokenized = tokenize_documents(docs, tokenizer, cache_key=key)
    if spec.strategy == "document-window":
        windows = document_windows(tokenized, spec)
        rows = [tokenized.doc(d)[s:e] for d, s, e in windows]
    else:
        stream, windows = concat_chunks(tokenized, spec)
        rows = [stream[s:e] for _, s, e in windows]
    ids = torch.from_numpy(np.stack(rows).astype(np.int64))
    return CalibrationSet(spec, ids, origin, digest, windows, time.time() - started)


# ---------------------------------------------------------------- export / import

def export_set(cal: CalibrationSet, path: str | Path, tokenizer) -> str:
    """Write ``cal`` as jsonl (a header line, then one line per sample with ids and decoded text).

    The file appears complete or not at all. Returns the fingerprint, which the header records.
    """
    from ..fetch import atomic_write_bytes
    header = {"format": EXPORT_FORMAT, "version": 1, **cal.metadata(), "windows": cal.windows}
    lines = [json.dumps(header)]
    for i, row in enumerate(cal.input_ids.tolist()):
        lines.append(json.dumps({"index": i, "input_ids": row, "text": tokenizer.decode(row)}))
    atomic_write_bytes(Path(path), ("\n".join(lines) + "\n").encode())
    return cal.fingerprint


def is_exported_set(path: str | None) -> bool:
    if not path or not Path(path).expanduser().is_file() or not str(path).endswith(".jsonl"):
        return False
    with open(Path(path).expanduser(), encoding="utf-8") as handle:
        first = handle.readline()
    try:
        return json.loads(first).get("format") == EXPORT_FORMAT
    except (ValueError, AttributeError):
        return False


def import_set(path: str | Path, tokenizer=None) -> CalibrationSet:
    """Read an exported set back: the identical tensor, checked against the recorded fingerprint."""
    path = Path(path).expanduser()
    with open(path, encoding="utf-8") as handle:
        header = json.loads(handle.readline())
        rows = [json.loads(line)["input_ids"] for line in handle if line.strip()]
    if header.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} is not an exported calibration set")
    ids = torch.tensor(rows, dtype=torch.long)
    if fingerprint(ids) != header["fingerprint"]:
        raise ValueError(f"{path}: token ids do not match the recorded fingerprint (file edited or damaged)")
    if tokenizer is not None and header.get("tokenizer_digest") not in (None, tokenizer_digest(tokenizer)):
        raise ValueError(f"{path} was tokenized with a different tokenizer than the model's; its ids "
                         "would mean different text. Re-sample it for this model.")
    spec = CalibrationSpec.from_dict(header["spec"])
    windows = [tuple(w) for w in header.get("windows", [])]
    return CalibrationSet(spec, ids, header["origin"], header.get("tokenizer_digest", ""), windows)
