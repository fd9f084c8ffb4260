"""Fidelity to the dense model: KL divergence of the next-token distribution and top-1 agreement.

llama.cpp's perplexity tool reports, for a quantized model against its full-precision original, the mean
KL(P_dense || Q_compressed) per token, percentiles of the per-token KL and how often both models' most likely
token agree. Here the same numbers come out of ``perplexity(model, windows, reference=...)``, in the forward
pass that scores perplexity.

The dense model's distributions are computed once per (model, text, windows) and cached in compact form
(``DenseReference``): for every scored position the top-k log-probabilities and their token ids; the rest of
the probability mass, p_r = 1 - sum(top-k), is implied. Two estimates of the KL use it:

- ``tail_samples = 0``: the remainder merged into one category (a lower bound, by the log-sum inequality),

      KL_k = sum_{i in top-k} p_i (log p_i - log q_i) + p_r (log p_r - log q_r),   q_r = 1 - sum_{i in top-k} q_i

  short of the exact KL by p_r * KL(tail_p / p_r || tail_q / q_r), the divergence of the renormalised tails.
- ``tail_samples = m > 0``: the reference also keeps m tokens drawn from the dense model's tail (outside the
  top-k) with their log-probabilities, by systematic sampling along the tail sorted by probability (one uniform
  offset per position, so every draw has the tail's distribution and the draws are spread over it); the tail's
  share of the KL is then estimated without bias:

      KL_k,m = sum_{i in top-k} p_i (log p_i - log q_i) + p_r * mean_j (log p_{t_j} - log q_{t_j})

  Per token this is an estimate (it can be slightly negative); over a text's thousands of tokens its error
  averages out. Where the KL is near 0 a text's mean estimate could still fall below the merged bound of the
  same tokens, which the exact mean never does: ``perplexity`` then reports the bound (``TokenScores.kl_bound``),
  which is closer to the exact value, so no mean KL comes out negative.

On SmolLM2-135M (49k vocabulary, WikiText-2 perplexity ~29: flat distributions) the merged bound falls 19-26% short
of the exact mean KL at k = 32, 10-15% at k = 128 and still 0.3-0.4% at k = 8192 (33 MB a window), while 16 top
tokens plus 16 tail samples (the storage of k = 32) are within 0.25% of it (``benchmarks/kl_reference.py``;
numbers in benchmarks/RESULTS.md). Hence the defaults below; ``tail_samples=0`` gives the merged bound.
"""
from __future__ import annotations

import hashlib
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..data.tokenized import DamagedCacheEntry
from ..errors import InvalidInput, Unavailable
from ..files import atomic_write
from ..paths import cache_dir

# Chosen by measurement (benchmarks/kl_reference.py, SmolLM2-135M, three crude compressions, three seeds): the
# smallest stored size whose mean-KL error is well under 1% (at most 0.25%; p99 within 1.6%). 64 + 64 brings p99
# within 0.5% at four times the storage.
DEFAULT_K = 16
DEFAULT_TAIL_SAMPLES = 16
# Elements of one [positions, vocab] slice of logits processed at a time: 2^24 fp32 values are 64 MiB, and a
# slice makes about two temporaries of that size. Gemma's 262k vocabulary gives 64 positions a slice, so a
# batch of 511-token windows never needs a second full-size copy of its logits.
CHUNK_ELEMENTS = 1 << 24
# 1 - sum of top-k probabilities, computed in float64, cannot resolve less than float64's epsilon: a remainder
# of the compressed model below it is rounding, and flooring it keeps log q_r finite (k = vocabulary size, or
# a compressed model certain of one token).
_REMAINDER_FLOOR = float(np.finfo(np.float64).eps)
# The layout of a cached reference file; enters its name, so a change never reads an old file.
REFERENCE_FORMAT = 1


class MissingReference(Unavailable):
    """The dense model's reference for these windows is not in the cache; the message says how to make it."""


def windows_digest(windows: torch.Tensor) -> str:
    """sha256 of the windows' shape and token ids: what ties a reference to exactly the windows it scored."""
    array = np.ascontiguousarray(windows.detach().cpu().numpy(), dtype="<i8")
    h = hashlib.sha256(f"{array.shape}".encode())
    h.update(array.tobytes())
    return h.hexdigest()


def model_identity(name: str, dtype: str) -> str:
    """The identity of a dense model loaded by ``calib_lib.models.load_model(name, dtype)``: its name, dtype and
    the loading version (a change in how weights are loaded gives a new reference)."""
    from ..models.registry import LOADING_VERSION
    return f"{name}/{dtype}/loading{LOADING_VERSION}"


# -- per-token scores from logits ------------------------------------------------------------------------------

class TokenScores(NamedTuple):
    nll: torch.Tensor | None         # [b, T] float64: -log q(target); None without targets
    kl: torch.Tensor | None          # [b, T] float64: KL(dense || model) estimate; None without a reference
    top1: torch.Tensor | None        # [b, T] bool: argmax of the model == the dense model's argmax
    kl_bound: torch.Tensor | None = None   # [b, T] float64: the merged lower bound (equals kl without tail samples)


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a)) for a <= 0 (-inf at a >= 0, which only rounding produces), accurate at both ends:
    expm1 where exp(a) is near 1 (a small remainder after a large top-k mass), log1p elsewhere."""
    a = a.clamp(max=0.0)
    return torch.where(a > -math.log(2.0), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def kl_topk(topk_logp: torch.Tensor, logq_at_topk: torch.Tensor, tail_logp: torch.Tensor | None = None,
            logq_at_tail: torch.Tensor | None = None) -> torch.Tensor:
    """KL(P || Q) per position from the dense model's top-k log-probabilities and the other model's
    log-probabilities of the same tokens (``[..., k]`` each; computed in float64): the remainders merged (a
    lower bound) or, given the dense model's tail samples and the other model's log-probabilities of them
    (``[..., m]``, m > 0), the tail's share estimated from the samples."""
    lp, lq = topk_logp.double(), logq_at_topk.double()
    p = lp.exp()
    # p_i = 0 (a -inf log-probability) contributes nothing; without the guard 0 * inf would be NaN.
    top = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p)).sum(-1)
    log_pr = _log1mexp(torch.logsumexp(lp, -1))
    pr = log_pr.exp()
    if tail_logp is not None and tail_logp.shape[-1] > 0:
        tail = (tail_logp.double() - logq_at_tail.double()).mean(-1)
        return top + torch.where(pr > 0, pr * tail, torch.zeros_like(pr))
    log_qr = _log1mexp(torch.logsumexp(lq, -1)).clamp(min=math.log(_REMAINDER_FLOOR))
    return top + torch.where(pr > 0, pr * (log_pr - log_qr), torch.zeros_like(pr))


def _slices(logits: torch.Tensor, chunk_elements: int):
    """(row, start, stop) slices of ``[b, T, V]`` logits, each ``[stop - start, V]`` contiguous in memory
    when the logits are (``logits[:, :-1]`` of a model's output is): no slice is copied to be read."""
    b, t, v = logits.shape
    step = max(1, chunk_elements // max(1, v))
    for row in range(b):
        for start in range(0, t, step):
            yield row, start, min(t, start + step)


def _log_normaliser(x: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last axis of fp32 logits, in float64: max, then exp in fp32 (exact enough: the
    terms that matter have x - max near 0) summed in float64. A float32 logsumexp would carry an error of
    ~1e-6 into every log-probability, which the remainder 1 - sum(top-k) amplifies for peaked distributions."""
    mx = x.amax(-1, keepdim=True)
    return mx.squeeze(-1).double() + torch.exp(x - mx).sum(-1, dtype=torch.float64).log()


def score_logits(logits: torch.Tensor, targets: torch.Tensor | None = None, topk_ids: torch.Tensor | None = None,
                 topk_logp: torch.Tensor | None = None, tail_ids: torch.Tensor | None = None,
                 tail_logp: torch.Tensor | None = None, *, chunk_elements: int = CHUNK_ELEMENTS) -> TokenScores:
    """Per-token NLL of ``targets`` and, given the dense reference's slices for the same positions, per-token
    KL(dense || model) (``kl_topk``) and top-1 agreement, from one model's ``logits``.

    ``logits``: ``[b, T, V]`` (any float dtype; position t predicts ``targets[:, t]``); ``targets``: ``[b, T]``;
    ``topk_ids``, ``topk_logp``: ``[b, T, k]``, sorted by decreasing log-probability (as the reference stores
    them); ``tail_ids``, ``tail_logp``: ``[b, T, m]`` tail samples, or None (the merged bound). Pure: nothing is
    cached or changed. Works through ``chunk_elements`` logits at a time, so no full-vocabulary float64 (or
    second fp32) copy of a batch's logits is ever made.
    """
    b, t, vocab = logits.shape
    with_ref = topk_ids is not None
    with_tail = tail_ids is not None and tail_ids.shape[-1] > 0
    if with_ref != (topk_logp is not None) or (tail_ids is None) != (tail_logp is None) or (with_tail and not with_ref):
        raise InvalidInput("score_logits: pass topk_ids with topk_logp, and tail_ids with tail_logp")
    shapes = [x.shape for x in (topk_ids, topk_logp, tail_ids, tail_logp) if x is not None]
    if with_ref and (any(s[:2] != (b, t) for s in shapes) or topk_logp.shape != topk_ids.shape
                     or (with_tail and tail_logp.shape != tail_ids.shape)):
        raise InvalidInput(f"score_logits: reference slices of shapes {[tuple(s) for s in shapes]} do not match "
                           f"logits of shape {tuple(logits.shape)}")
    if with_ref:
        largest = max(int(x.max()) for x in (topk_ids, tail_ids if with_tail else topk_ids) if x.numel())
        if largest >= vocab:
            raise InvalidInput(f"the dense reference holds token ids up to {largest} but the model has {vocab} "
                               "logits: the reference is of a model with another vocabulary")
    device = logits.device
    nll = torch.empty(b, t, dtype=torch.float64, device=device) if targets is not None else None
    kl = torch.empty(b, t, dtype=torch.float64, device=device) if with_ref else None
    top1 = torch.empty(b, t, dtype=torch.bool, device=device) if with_ref else None
    bound = torch.empty(b, t, dtype=torch.float64, device=device) if with_tail else None
    ids = topk_ids.long() if with_ref else None          # gather wants int64; [b, T, k] is small
    tids = tail_ids.long() if with_tail else None
    for row, s, e in _slices(logits, chunk_elements):
        x = logits[row, s:e].float()                       # a no-op view for fp32 logits
        lse = _log_normaliser(x)
        if targets is not None:
            nll[row, s:e] = lse - x.gather(-1, targets[row, s:e, None]).squeeze(-1).double()
        if with_ref:
            logq = x.gather(-1, ids[row, s:e]).double() - lse[:, None]
            if with_tail:
                logq_tail = x.gather(-1, tids[row, s:e]).double() - lse[:, None]
                kl[row, s:e] = kl_topk(topk_logp[row, s:e], logq, tail_logp[row, s:e], logq_tail)
                bound[row, s:e] = kl_topk(topk_logp[row, s:e], logq)
            else:
                kl[row, s:e] = kl_topk(topk_logp[row, s:e], logq)
            top1[row, s:e] = x.argmax(-1) == ids[row, s:e, 0]
    return TokenScores(nll, kl, top1, bound if with_tail else kl)


def reference_slices(logits: torch.Tensor, k: int, tail_samples: int = 0, offsets: torch.Tensor | None = None, *,
                     chunk_elements: int = CHUNK_ELEMENTS) -> tuple[torch.Tensor, ...]:
    """The dense model's compact distributions from its ``[b, T, V]`` logits: ``(topk_ids, topk_logp, tail_ids,
    tail_logp)``, ``[b, T, k]`` and ``[b, T, tail_samples]``, int32 ids and float32 natural-log probabilities,
    the top-k sorted by decreasing probability (so the first k' of them are the top-k' for any k' < k).

    Tail sample j of a position is the token at quantile (j + u) / m of the tail's distribution, the tail being
    every token outside the top-k in order of decreasing probability and u that position's ``offsets`` value
    (uniform on [0, 1)): systematic sampling, so each sample is distributed as the tail and together they cover
    it from its likeliest tokens to its least likely.
    """
    b, t, vocab = logits.shape
    m = tail_samples
    if m and (offsets is None or offsets.shape != (b, t)):
        raise InvalidInput(f"reference_slices: {m} tail samples need one offset per position, shape {(b, t)}")
    if m and k >= vocab:
        raise InvalidInput(f"reference_slices: the top {k} tokens leave no tail of a {vocab}-token vocabulary to sample")
    device = logits.device
    ids = torch.empty(b, t, k, dtype=torch.int32, device=device)
    logp = torch.empty(b, t, k, dtype=torch.float32, device=device)
    tail_ids = torch.empty(b, t, m, dtype=torch.int32, device=device)
    tail_logp = torch.empty(b, t, m, dtype=torch.float32, device=device)
    # Sampling sorts the whole vocabulary and keeps float64 cumulative sums: four times the slice's bytes.
    for row, s, e in _slices(logits, chunk_elements // 4 if m else chunk_elements):
        x = logits[row, s:e].float()
        lse = _log_normaliser(x)[:, None]
        if not m:
            values, top = x.topk(k, dim=-1)                 # sorted, largest first
            ids[row, s:e], logp[row, s:e] = top.int(), (values.double() - lse).float()
            continue
        values, order = x.sort(-1, descending=True)
        ids[row, s:e], logp[row, s:e] = order[:, :k].int(), (values[:, :k].double() - lse).float()
        tail_lp = values[:, k:].double() - lse
        cdf = tail_lp.exp().cumsum(-1)                       # unnormalised: the last entry is p_r
        quantiles = (torch.arange(m, dtype=torch.float64, device=device) + offsets[row, s:e, None].double()) / m
        at = torch.searchsorted(cdf, (quantiles * cdf[:, -1:]).contiguous()).clamp(max=vocab - k - 1)
        tail_ids[row, s:e] = order[:, k:].gather(-1, at).int()
        tail_logp[row, s:e] = tail_lp.gather(-1, at).float()
    return ids, logp, tail_ids, tail_logp


def exact_kl(dense_logits: torch.Tensor, logits: torch.Tensor, *, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """KL(dense || model) per position over the full vocabulary, in float64 (``[b, T, V]`` each -> ``[b, T]``):
    what the reference's estimates approximate. For measuring them (benchmarks/kl_reference.py); a run never
    holds the dense model's logits."""
    b, t, _ = logits.shape
    out = torch.empty(b, t, dtype=torch.float64, device=logits.device)
    for row, s, e in _slices(logits, chunk_elements // 2):           # float64: half the positions a slice
        lp = torch.log_softmax(dense_logits[row, s:e].double(), -1)
        lq = torch.log_softmax(logits[row, s:e].double(), -1)
        out[row, s:e] = torch.where(lp > -math.inf, lp.exp() * (lp - lq), torch.zeros_like(lp)).sum(-1)
    return out


# -- the dense reference ---------------------------------------------------------------------------------------

def _empty(reference_ids: np.ndarray, dtype) -> np.ndarray:
    return np.zeros(reference_ids.shape[:2] + (0,), dtype=dtype)


@dataclass(frozen=True, eq=False)
class DenseReference:
    """The dense model's next-token distributions on a set of windows: top-k per scored position, and
    ``tail_samples`` tokens sampled from the rest (none: the merged lower bound).

    ``topk_ids`` (int32) and ``topk_logp`` (float32, natural log) are ``[n, seq_len - 1, k]``, sorted by
    decreasing log-probability: position t of window w is the distribution of token t + 1 given tokens 0..t.
    ``tail_ids`` / ``tail_logp`` are ``[n, seq_len - 1, tail_samples]`` (``reference_slices``), drawn with
    ``seed``.
    """
    model_id: str            # the dense model (``model_identity``), as given by the caller
    text_id: str             # the text the windows came from
    windows_digest: str      # ``windows_digest(windows)``
    k: int
    topk_ids: np.ndarray
    topk_logp: np.ndarray
    tail_ids: np.ndarray | None = field(default=None)
    tail_logp: np.ndarray | None = field(default=None)
    seed: int = 0

    def __post_init__(self):
        if self.tail_ids is None and self.tail_logp is None:
            object.__setattr__(self, "tail_ids", _empty(self.topk_ids, np.int32))
            object.__setattr__(self, "tail_logp", _empty(self.topk_ids, np.float32))
        for ids, logp, what in ((self.topk_ids, self.topk_logp, "top-k"), (self.tail_ids, self.tail_logp, "tail")):
            if ids is None or logp is None or ids.dtype != np.int32 or logp.dtype != np.float32:
                raise InvalidInput(f"dense reference {what} arrays must be int32 ids and float32 log-probabilities, "
                                   f"got {getattr(ids, 'dtype', None)} and {getattr(logp, 'dtype', None)}")
            if ids.ndim != 3 or ids.shape != logp.shape or ids.shape[:2] != self.topk_ids.shape[:2]:
                raise InvalidInput(f"dense reference {what} arrays must both be [windows, seq_len - 1, ...] like "
                                   f"the top-k, got {ids.shape} and {logp.shape}")
        if self.topk_ids.shape[2] != self.k:
            raise InvalidInput(f"dense reference arrays must be [windows, seq_len - 1, k={self.k}], got "
                               f"{self.topk_ids.shape}")

    @property
    def windows(self) -> int:
        return self.topk_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.topk_ids.shape[1] + 1

    @property
    def tail_samples(self) -> int:
        return self.tail_ids.shape[2]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.topk_ids, self.topk_logp, self.tail_ids, self.tail_logp))

    def slices(self, start: int, stop: int, device=None) -> dict:
        """``score_logits`` keywords for windows ``start:stop`` (tensors on ``device``)."""
        out = {name: torch.from_numpy(getattr(self, name)[start:stop]).to(device)
               for name in ("topk_ids", "topk_logp")}
        if self.tail_samples:
            out.update({name: torch.from_numpy(getattr(self, name)[start:stop]).to(device)
                        for name in ("tail_ids", "tail_logp")})
        return out

    def top(self, k: int) -> "DenseReference":
        """The merged-remainder reference of the first ``k`` tokens per position (exact: they are stored sorted).
        Tail samples are dropped: they were drawn from outside this reference's own top-k."""
        if not 1 <= k <= self.k:
            raise InvalidInput(f"a reference with k={self.k} holds the top 1..{self.k} tokens, not {k}")
        return DenseReference(self.model_id, self.text_id, self.windows_digest, k,
                              np.ascontiguousarray(self.topk_ids[..., :k]),
                              np.ascontiguousarray(self.topk_logp[..., :k]))

    def path(self) -> Path:
        return _path(self.model_id, self.text_id, self.windows_digest, self.k, self.tail_samples, self.seed,
                     self.windows, self.seq_len)

    def _meta(self) -> dict:
        return {"model_id": self.model_id, "text_id": self.text_id, "windows_digest": self.windows_digest,
                "k": self.k, "seed": self.seed, "format": REFERENCE_FORMAT}

    def arrays(self) -> dict:
        """The four arrays by name, as saved."""
        return {name: getattr(self, name) for name in ("topk_ids", "topk_logp", "tail_ids", "tail_logp")}

    def save(self, path: str | Path | None = None) -> Path:
        """Write the reference (to its place in the cache unless ``path`` is given), atomically.

        Compressed npz: the token ids are < 2^18 (Gemma's vocabulary), so their upper bytes are zeros that
        deflate removes, and the log-probabilities' sign and exponent bits repeat: a third smaller
        (benchmarks/kl_reference.py prints both sizes), and inflating costs far less than the forward pass
        that reads it. At the defaults a scored token takes 256 bytes raw: 1 MB for the quick suite's 8 x 512
        tokens, ~75 MB for all ~300k tokens of WikiText-2.
        """
        path = Path(path) if path is not None else self.path()
        meta, arrays = self._meta(), self.arrays()
        with atomic_write(path) as handle:
            np.savez_compressed(handle, **arrays, **{key: np.array(value) for key, value in meta.items()},
                                sha256=np.array(_digest(meta, arrays)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "DenseReference":
        """A saved reference, after checking its digest; ``DamagedCacheEntry`` for a file that fails it."""
        try:
            with np.load(path) as data:     # allow_pickle stays False: a damaged file cannot run code
                arrays = {key: data[key] for key in ("topk_ids", "topk_logp", "tail_ids", "tail_logp")}
                meta = {key: data[key].item() for key in ("model_id", "text_id", "windows_digest", "k", "seed", "format")}
                recorded = str(data["sha256"])
        # What np.load and zipfile raise for truncated, emptied or altered files (as data/tokenized.py).
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as err:
            raise DamagedCacheEntry(f"{path}: {type(err).__name__}: {err}") from err
        if meta["format"] != REFERENCE_FORMAT or _digest(meta, arrays) != recorded:
            raise DamagedCacheEntry(f"{path}: content does not match its recorded sha256")
        try:
            return cls(str(meta["model_id"]), str(meta["text_id"]), str(meta["windows_digest"]), int(meta["k"]),
                       seed=int(meta["seed"]), **arrays)
        except InvalidInput as err:
            raise DamagedCacheEntry(f"{path}: {err}") from err


def _digest(meta: dict, arrays: dict) -> str:
    h = hashlib.sha256(repr(sorted((k, str(v)) for k, v in meta.items())).encode())
    for name in sorted(arrays):
        array = arrays[name]
        h.update(f"{name}{array.shape}{array.dtype.str}".encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _path(model_id: str, text_id: str, digest: str, k: int, tail_samples: int, seed: int, n: int,
          seq_len: int) -> Path:
    # A readable folder per model (a slug, with a hash of the identity so that two ids never share one) and a
    # file per (text, windows, k, tail samples and their seed).
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_")[:80] or "model"
    folder = f"{slug}-{hashlib.sha256(model_id.encode()).hexdigest()[:8]}"
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text_id)
    tail = f"-t{tail_samples}s{seed}" if tail_samples else ""
    return (cache_dir() / "dense-reference" / folder /
            f"{text}-{n}x{seq_len}-{digest[:16]}-k{k}{tail}-f{REFERENCE_FORMAT}.npz")


def reference_path(model_id: str, text_id: str, windows: torch.Tensor, k: int = DEFAULT_K,
                   tail_samples: int = DEFAULT_TAIL_SAMPLES, seed: int = 0) -> Path:
    """Where the reference of ``model_id`` on ``windows`` of ``text_id`` is cached."""
    n, seq_len = windows.shape
    return _path(model_id, text_id, windows_digest(windows), k, tail_samples, seed, n, seq_len)


def _how_to_compute(model_id: str, text_id: str, k: int, tail_samples: int, seed: int) -> str:
    extra = f", tail_samples={tail_samples}" + (f", seed={seed}" if seed else "")
    return (f"compute the dense model's reference first: run the dense model with the same suite (kl_to_dense), "
            f"or call calib_lib.evaluate.fidelity.compute_reference(dense_model, windows, model_id={model_id!r}, "
            f"text_id={text_id!r}, k={k}{extra})")


def load_reference(model_id: str, text_id: str, windows: torch.Tensor, k: int = DEFAULT_K,
                   tail_samples: int = DEFAULT_TAIL_SAMPLES, seed: int = 0) -> DenseReference:
    """The cached reference of ``model_id`` on exactly these ``windows``; ``MissingReference`` when there is
    none (or the file was damaged: it is then removed, so the next computation replaces it)."""
    path = reference_path(model_id, text_id, windows, k, tail_samples, seed)
    n, seq_len = windows.shape
    what = f"{model_id} on {text_id} ({n} windows of {seq_len} tokens, k={k}, {tail_samples} tail samples)"
    how = _how_to_compute(model_id, text_id, k, tail_samples, seed)
    if not path.exists():
        raise MissingReference(f"no dense reference for {what} in {path.parent}: {how}")
    try:
        reference = DenseReference.load(path)
    except DamagedCacheEntry as err:
        path.unlink(missing_ok=True)
        raise MissingReference(f"the dense reference for {what} was damaged ({err}) and was removed: {how}") from err
    found = (reference.model_id, reference.text_id, reference.k, reference.tail_samples, reference.seed)
    if found != (model_id, text_id, k, tail_samples, seed):
        # Only a file copied under another name gets here; it is not the reference asked for.
        raise MissingReference(f"{path} holds the reference of {reference.model_id} on {reference.text_id} "
                               f"(k={reference.k}, {reference.tail_samples} tail samples), not of {what}: remove "
                               f"it and {how}")
    return reference


def check_reference(reference: DenseReference, windows: torch.Tensor) -> None:
    """Refuse a reference computed on other windows than ``windows`` (InvalidInput naming both)."""
    digest = windows_digest(windows)
    if reference.windows_digest != digest:
        n, seq_len = windows.shape
        raise InvalidInput(
            f"the dense reference of {reference.model_id} on {reference.text_id} was computed on other windows "
            f"({reference.windows} x {reference.seq_len} tokens, digest {reference.windows_digest[:12]}) than "
            f"these ({n} x {seq_len}, digest {digest[:12]}): score the same windows (same text, windows, "
            f"seq_len and seed) or compute the reference on these with "
            f"calib_lib.evaluate.fidelity.compute_reference")


def sample_offsets(digest: str, seed: int, n: int, t: int) -> torch.Tensor:
    """One uniform offset per position for systematic tail sampling, from the windows and ``seed`` alone:
    drawn on the CPU, so a reference computed on any device samples the same quantiles."""
    generator = torch.Generator().manual_seed(int(hashlib.sha256(f"{digest}/{seed}".encode()).hexdigest()[:15], 16))
    return torch.rand(n, t, generator=generator, dtype=torch.float64)


def _check_count(name: str, value, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"{name} must be an integer from {low} to {high}, got {value!r}")


@torch.no_grad()
def compute_reference(model, windows: torch.Tensor, *, model_id: str, text_id: str, k: int = DEFAULT_K,
                      tail_samples: int = DEFAULT_TAIL_SAMPLES, seed: int = 0, batch_size: int | None = None,
                      progress: bool = False, save: bool = True) -> DenseReference:
    """The dense ``model``'s top-``k`` next-token log-probabilities on ``windows`` and ``tail_samples`` samples
    of the rest (``reference_slices``), saved to the cache (unless ``save`` is false) where
    ``load_reference(model_id, text_id, windows, k, tail_samples, seed)`` finds it.

    ``model_id`` must identify the dense weights (``model_identity``): every compressed model scored against
    this reference is compared with them.
    """
    from .windows import window_logits
    n, seq_len = windows.shape
    vocab = model.config.vocab_size
    _check_count("k", k, 1, vocab)
    _check_count("tail_samples", tail_samples, 0, vocab)
    if tail_samples and k == vocab:
        raise InvalidInput(f"k={k} keeps the whole vocabulary: there is no tail to sample; set tail_samples=0")
    digest = windows_digest(windows)
    offsets = sample_offsets(digest, seed, n, seq_len - 1) if tail_samples else None
    arrays = [np.empty((n, seq_len - 1, width), dtype=dtype)
              for width, dtype in ((k, np.int32), (k, np.float32), (tail_samples, np.int32), (tail_samples, np.float32))]
    for start, batch, out in window_logits(model, windows, batch_size, progress, desc=f"dense reference {text_id}"):
        stop = start + batch.size(0)
        part = None if offsets is None else offsets[start:stop].to(out.device)
        for array, piece in zip(arrays, reference_slices(out[:, :-1], k, tail_samples, part)):
            array[start:stop] = piece.cpu().numpy()
    reference = DenseReference(model_id, text_id, digest, k, *arrays[:2], *arrays[2:], seed=seed)
    if save:
        reference.save()
    return reference


def ensure_reference(model, windows: torch.Tensor, *, model_id: str, text_id: str, k: int = DEFAULT_K,
                     tail_samples: int = DEFAULT_TAIL_SAMPLES, seed: int = 0, batch_size: int | None = None,
                     progress: bool = False) -> DenseReference:
    """The cached reference when it is there (and intact), else computed from ``model`` (the dense one) and saved."""
    if getattr(model, "vocab_pruning", None) is not None:
        # a pruned vocabulary's -inf logits cached under the dense model's identity would poison every later KL
        raise InvalidInput("the dense reference must come from the dense model, and this model's vocabulary is "
                           "pruned (compress.vocabulary): compute the reference before pruning")
    try:
        return load_reference(model_id, text_id, windows, k, tail_samples, seed)
    except MissingReference:
        return compute_reference(model, windows, model_id=model_id, text_id=text_id, k=k, tail_samples=tail_samples,
                                 seed=seed, batch_size=batch_size, progress=progress)
