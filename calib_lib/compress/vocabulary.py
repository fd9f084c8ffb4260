"""Vocabulary pruning: keep only some rows of a causal LM's input embedding and output head.

Williams & Aletras (2023), "Frustratingly simple memory efficiency for pre-trained language models via dynamic
embedding pruning", observe that the text a model sees in a task uses a small part of its vocabulary, while the
embedding matrix is a large part of a small model (Gemma-3-270M: 170M of its 268M parameters). Dropping the rows
of tokens the text never uses saves that memory and changes nothing for the tokens that stay. Their "dynamic"
setting keeps the tokens of the task's own documents (``evaluate.vocabulary.ids_from_suite``, in the evaluation
layer, which this one may not import); this project asks what happens when
the kept tokens come from a calibration set instead (``ids_from_calibration``), or from the k most frequent
tokens of a corpus (``ids_most_frequent``).

``prune_vocabulary(model, kept_ids, tokenizer)`` prunes the model **in place** (as ``compress`` does: a copy would
double the memory the transform exists to save) and attaches a ``VocabularyPruning`` record as
``model.vocab_pruning``. Everything is checked before the model is touched, so a refused request leaves it as it
was. Special tokens (the tokenizer's, the config's and the generation config's bos/eos/pad ids), id 0 (what
lm-eval pads batches with) and a fallback row are always kept. Tied embeddings stay tied: the one shrunken matrix
serves both ends.

The pruned model still speaks original token ids, so tokenizers, ``evaluate()``, ``perplexity``, lm-eval (HFLM
and PackedLM) and ``generate`` work on it unchanged:

- in: a forward pre-hook on the input embedding maps each original id to its row through a lookup table. An id
  outside the kept set is mapped to the fallback row (unk if the tokenizer has one, else eos) and counted
  (``model.vocab_pruning.oov_tokens``): never an index error. An id outside the original vocabulary is a caller's
  bug and raises InvalidInput (the dense model would raise an IndexError, or assert on a GPU).
- out: a forward hook on the head scatters its compact logits into a tensor of the original vocabulary's width,
  with -inf at pruned ids; a forward hook on the model masks them again after whatever the model applies to its
  logits (Gemma's final logit softcapping would turn -inf into -cap). Callers keep indexing logits by original id.
  The full-width logits cost what the dense model's cost (per forward, not per parameter); the memory saved is
  the embedding and head rows.

Renormalisation. log-softmax over the pruned model's logits equals the dense model's log-softmax restricted to
the kept ids and renormalised over them: log q(t) = log p(t) - log sum_{k kept} p(k). The probability mass the
dense model put on pruned tokens is spread over the kept ones in proportion, so for text whose tokens are all kept
every token's probability goes up (or stays) and perplexity can only go down: a pruned model's perplexity is not
comparable with a dense model's as a quality measure unless the kept set covers the text and the pruned mass is
reported. A target token outside the kept set has probability 0 (the pruned model cannot produce it): its NLL is
infinite, so perplexity over text with such tokens is infinite (``VocabularyPruning.coverage`` says which share
of a text is kept), and ``generate`` never emits a pruned id.

Not handled: saving a pruned model (its config still says the original vocabulary size and its state dict holds
the compact matrices), a loss computed inside forward (``labels=``) of a model that post-processes its logits
(it sees the head's values, before the model-level mask), and models whose head or embedding is not a plain
``nn.Linear`` / ``nn.Embedding`` (refused with Unsupported).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInput, Unsupported

# The version of what a run's vocabulary step produces (which ids are kept, how the model is pruned, how
# out-of-vocabulary tokens are scored): enters the key of every run that prunes its vocabulary.
VOCABULARY_VERSION = 1

# Names of what pruning adds to the embedding and the head (non-persistent buffers: they follow .to(device),
# stay out of the state dict).
_ROW_OF_ID = "vocab_row_of_id"      # on the embedding: [V] long, original id -> compact row, -1 where pruned
_OOV_COUNT = "vocab_oov_count"      # on the embedding: scalar long, input tokens sent to the fallback row
_FALLBACK_ROW = "vocab_fallback_row"  # on the embedding: scalar long, the compact row of the fallback id
_KEPT_IDS = "vocab_kept_ids"        # on the head: [k] long, the original id of each compact row
_PRUNED = "vocab_pruned"            # on the head: [V] bool, True at pruned ids
# lm-eval's HFLM and PackedLM pad batches with token 0: keep it, so padding is never counted as out of vocabulary.
_PAD_OF_LM_EVAL = 0
_SPECIAL_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


# -- where the kept ids come from ------------------------------------------------------------------------------

def _as_ids(values, what: str) -> torch.Tensor:
    """A flat int64 tensor of ``values`` (a tensor, array or iterable of ints); InvalidInput for anything else."""
    if isinstance(values, (str, bytes)):
        raise InvalidInput(f"{what} must be integer token ids, got a string: tokenize text with ids_from_texts")
    if isinstance(values, torch.Tensor):
        ids = values.detach().cpu()
    else:
        try:
            ids = torch.as_tensor(values if isinstance(values, np.ndarray) else list(values))
        except (TypeError, ValueError, RuntimeError) as err:
            raise InvalidInput(f"{what} must be integer token ids, got {type(values).__name__} ({err})") from err
    if ids.numel() == 0:
        return torch.zeros(0, dtype=torch.long)     # ([] arrives as float32) each caller says what was empty
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise InvalidInput(f"{what} must be integer token ids, got {ids.dtype}: pass ids as a LongTensor or ints")
    return ids.reshape(-1).long()


def ids_from_tokens(token_ids, *, what: str = "the token ids") -> torch.Tensor:
    """The distinct ids of any collection of token ids (perplexity windows, a token stream), sorted."""
    ids = _as_ids(token_ids, what)
    if ids.numel() == 0:
        raise InvalidInput(f"no tokens in {what}: build the kept vocabulary from a source with text in it")
    return torch.unique(ids)


def ids_from_calibration(calibration) -> torch.Tensor:
    """The distinct ids of a calibration set (``data.CalibrationSet`` or its LongTensor ``[n, seq_len]``)."""
    input_ids = getattr(calibration, "input_ids", calibration)
    if not isinstance(input_ids, torch.Tensor):
        raise InvalidInput(f"expected a CalibrationSet or a LongTensor of token ids, got {type(calibration).__name__}: "
                           "draw one with calib_lib.data.sampling.sample")
    return ids_from_tokens(input_ids, what="the calibration set")


def _texts(texts) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise InvalidInput(f"texts must be strings, got {bad[0]}: pass a list of documents")
    return texts


def _text_tokens(tokenizer, texts) -> torch.Tensor:
    from ..data.tokenized import tokenize_documents
    texts = _texts(texts)
    tokens = torch.from_numpy(tokenize_documents(texts, tokenizer).ids)
    if tokens.numel() == 0:
        raise InvalidInput(f"the texts yielded no tokens ({len(texts)} text(s), all empty): pass non-empty documents")
    return tokens


def ids_from_texts(tokenizer, texts) -> torch.Tensor:
    """The distinct ids of ``texts`` (one string or an iterable of strings) under ``tokenizer``, sorted."""
    return torch.unique(_text_tokens(tokenizer, texts))


def most_frequent_of(token_ids, k: int, *, what: str = "the token ids") -> torch.Tensor:
    """The ``k`` most frequent ids of a collection of token ids (a calibration set's, a token stream's; ties:
    lower id first), sorted by id; fewer when it holds fewer distinct tokens."""
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise InvalidInput(f"k must be a positive integer (tokens to keep), got {k!r}")
    ids = _as_ids(token_ids, what)
    if ids.numel() == 0:
        raise InvalidInput(f"no tokens in {what}: build the kept vocabulary from a source with text in it")
    if int(ids.min()) < 0:
        raise InvalidInput(f"{what} holds negative ids: pass token ids from the model's tokenizer")
    counts = torch.bincount(ids)
    # stable sort by decreasing count: equal counts keep increasing id order
    order = torch.sort(counts, descending=True, stable=True).indices
    top = order[:k]
    return torch.sort(top[counts[top] > 0]).values


def ids_most_frequent(tokenizer, texts, k: int) -> torch.Tensor:
    """The ``k`` most frequent ids of ``texts`` (ties: lower id first), sorted by id; fewer when the texts hold
    fewer distinct tokens. Special tokens and the fallback come on top when the model is pruned."""
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise InvalidInput(f"k must be a positive integer (tokens to keep), got {k!r}")
    return most_frequent_of(_text_tokens(tokenizer, texts), k, what="the texts")


# -- the pruned model ------------------------------------------------------------------------------------------

@dataclass(eq=False)
class VocabularyPruning:
    """What ``prune_vocabulary`` did to a model (``model.vocab_pruning``), and its out-of-vocabulary count."""

    vocab_size: int                     # the original vocabulary: logits keep this width, ids keep their meaning
    kept_ids: torch.Tensor              # sorted original ids of the rows kept (cpu LongTensor)
    fallback_id: int                    # the original id whose row out-of-vocabulary input tokens get
    tied: bool                          # input embedding and head share one matrix (counted once below)
    parameters_before: int              # embedding + head (+ head bias), tied counted once
    parameters_after: int
    bytes_before: int
    bytes_after: int                    # the kept rows' bytes, without the lookup tables below
    lookup_bytes: int                   # id -> row table, kept ids and pruned mask (original vocabulary size)
    _embedding: nn.Module = field(repr=False, default=None)

    @property
    def kept(self) -> int:
        return int(self.kept_ids.numel())

    @property
    def oov_tokens(self) -> int:
        """Input tokens outside the kept set that reached the model since pruning (or the last reset); each
        was read as the fallback row."""
        return int(getattr(self._embedding, _OOV_COUNT))

    def reset_oov_count(self) -> None:
        getattr(self._embedding, _OOV_COUNT).zero_()

    def covers(self, token_ids: torch.Tensor) -> torch.Tensor:
        """True where an original token id is kept (a bool tensor of ``token_ids``' shape)."""
        kept = torch.zeros(self.vocab_size, dtype=torch.bool)
        kept[self.kept_ids] = True
        ids = torch.as_tensor(token_ids).cpu().long()
        inside = (ids >= 0) & (ids < self.vocab_size)
        return inside & kept[ids.clamp(0, self.vocab_size - 1)]

    def coverage(self, token_ids: torch.Tensor) -> float:
        """The share of ``token_ids`` that is kept: 1.0 means the pruned model scores them all (finite NLL)."""
        covered = self.covers(token_ids)
        return float(covered.float().mean()) if covered.numel() else 1.0

    def report(self) -> dict:
        return {"vocab_size": self.vocab_size, "kept": self.kept, "removed": self.vocab_size - self.kept,
                "fallback_id": self.fallback_id, "tied": self.tied,
                "parameters_before": self.parameters_before, "parameters_after": self.parameters_after,
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "lookup_bytes": self.lookup_bytes, "oov_tokens": self.oov_tokens}


def _embedding_and_head(model) -> tuple[nn.Embedding, nn.Linear]:
    """The model's input embedding and output head, or Unsupported saying what pruning needs."""
    name = type(model).__name__
    need = "vocabulary pruning needs a causal LM whose get_input_embeddings() is an nn.Embedding and " \
           "get_output_embeddings() an nn.Linear (load it with AutoModelForCausalLM)"
    try:
        embedding = model.get_input_embeddings()
    except (AttributeError, NotImplementedError) as err:
        raise Unsupported(f"cannot find the input embedding of {name} ({type(err).__name__}): {need}") from err
    if not isinstance(embedding, nn.Embedding):
        raise Unsupported(f"the input embedding of {name} is {type(embedding).__name__}, not an nn.Embedding: {need}")
    try:
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError) as err:
        raise Unsupported(f"cannot find the output head of {name} ({type(err).__name__}): {need}") from err
    if not isinstance(head, nn.Linear):
        raise Unsupported(f"the output head of {name} is {type(head).__name__}, not an nn.Linear: {need}")
    if head.weight.shape[0] != embedding.weight.shape[0]:
        raise Unsupported(f"{name}'s head has {head.weight.shape[0]} rows but its embedding "
                          f"{embedding.weight.shape[0]}: pruning needs one vocabulary for both ends")
    return embedding, head


def _ids_of(value) -> list[int]:
    """A config field's token ids (an int, a list of ints, or None)."""
    if value is None:
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def always_kept_ids(model, tokenizer=None) -> list[int]:
    """The ids every pruned vocabulary keeps: the tokenizer's special tokens, the config's and generation config's
    bos/eos/pad ids (``generate`` must be able to stop), the embedding's padding row and id 0 (lm-eval pads with it);
    ids outside the model's vocabulary are left out (the model could not read them anyway)."""
    embedding, _ = _embedding_and_head(model)
    vocab = embedding.weight.shape[0]
    ids = [_PAD_OF_LM_EVAL]
    if tokenizer is not None:
        ids += list(getattr(tokenizer, "all_special_ids", []))
    for config in (model.config, getattr(model, "generation_config", None)):
        for name in _SPECIAL_FIELDS:
            ids += _ids_of(getattr(config, name, None))
    if embedding.padding_idx is not None:
        ids.append(int(embedding.padding_idx))
    return sorted({i for i in ids if 0 <= i < vocab})


def _default_fallback(model, tokenizer) -> int | None:
    """unk when the tokenizer has one (what it would have made of an unknown word), else the first eos."""
    unk = getattr(tokenizer, "unk_token_id", None) if tokenizer is not None else None
    if isinstance(unk, int):
        return unk
    for config in (model.config, getattr(model, "generation_config", None)):
        eos = _ids_of(getattr(config, "eos_token_id", None))
        if eos:
            return eos[0]
    return None


def _parameter_bytes(*tensors) -> tuple[int, int]:
    """(elements, bytes) of distinct tensors (a tied matrix counted once)."""
    seen = {id(t): t for t in tensors if t is not None}
    return sum(t.numel() for t in seen.values()), sum(t.numel() * t.element_size() for t in seen.values())


# -- hooks (module-level functions reading the hooked module's buffers: a deepcopy of the model stays right) --

def _remap_input_ids(embedding, args, kwargs):
    """Forward pre-hook of the embedding: original ids -> compact rows; ids outside the kept set -> fallback row
    (counted)."""
    if args:
        input_ids, args = args[0], args[1:]
    else:
        key = "input" if "input" in kwargs else "input_ids"
        input_ids = kwargs.pop(key)
    row_of_id = getattr(embedding, _ROW_OF_ID)
    vocab = row_of_id.numel()
    outside = (input_ids < 0) | (input_ids >= vocab)
    if bool(outside.any()):                                    # one sync per forward: the dense model would raise
        bad = sorted(set(input_ids[outside].flatten()[:3].tolist()))
        raise InvalidInput(f"token ids {bad} are outside the original vocabulary of {vocab} ids: encode text with "
                           "the model's own tokenizer")
    rows = row_of_id[input_ids]
    pruned = rows < 0
    getattr(embedding, _OOV_COUNT).add_(pruned.sum())
    rows = torch.where(pruned, getattr(embedding, _FALLBACK_ROW), rows)
    return (rows, *args), kwargs


def _expand_logits(head, args, compact):
    """Forward hook of the head: compact logits ``[..., k]`` -> original width ``[..., V]``, -inf at pruned ids."""
    pruned = getattr(head, _PRUNED)
    full = compact.new_full((*compact.shape[:-1], pruned.numel()), float("-inf"))
    return full.index_copy_(-1, getattr(head, _KEPT_IDS), compact)      # in place: one full-width tensor


def _mask_model_logits(model, args, output):
    """Forward hook of the model: -inf at pruned ids again after the model's own logit post-processing (Gemma's
    final softcapping maps -inf to -cap, which would give pruned tokens probability)."""
    pruned = getattr(model.get_output_embeddings(), _PRUNED)
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, tuple):           # return_dict=False: (loss?, logits, ...)
        logits = next((x for x in output if isinstance(x, torch.Tensor) and x.dim() >= 2
                       and x.shape[-1] == pruned.numel()), None)
    if not isinstance(logits, torch.Tensor) or logits.shape[-1] != pruned.numel():
        return None
    if logits.requires_grad and torch.is_grad_enabled():
        masked = logits.masked_fill(pruned, float("-inf"))
        if hasattr(output, "logits"):
            output.logits = masked
            return output
        return tuple(masked if x is logits else x for x in output)
    logits.masked_fill_(pruned, float("-inf"))
    return None


def kept_vocabulary(model, kept_ids, tokenizer=None, *, fallback: int | None = None) -> tuple[torch.Tensor, int]:
    """(every id ``prune_vocabulary`` would keep, sorted; its fallback id), checking every input: ``kept_ids``
    plus ``always_kept_ids`` and the fallback. The model is not changed."""
    if getattr(model, "vocab_pruning", None) is not None:
        raise Unsupported("this model's vocabulary is already pruned: load the model again and prune it once, "
                          "with the union of the ids to keep")
    embedding, head = _embedding_and_head(model)
    vocab = embedding.weight.shape[0]
    data_ids = _as_ids(kept_ids, "kept_ids")
    if data_ids.numel() == 0:
        raise InvalidInput("kept_ids is empty (keeping zero tokens): build it from a source with text in it "
                           "(ids_from_calibration, ids_from_texts, ids_most_frequent, ids_from_suite)")
    outside = data_ids[(data_ids < 0) | (data_ids >= vocab)]
    if outside.numel():
        shown = ", ".join(str(i) for i in sorted(set(outside.tolist()))[:5])
        raise InvalidInput(f"kept_ids holds {outside.numel()} id(s) outside the model's vocabulary of {vocab} ids "
                           f"(0..{vocab - 1}): {shown}; build the kept ids with this model's tokenizer")
    if fallback is None:
        fallback = _default_fallback(model, tokenizer)
        if fallback is None:
            raise InvalidInput("no fallback row: the tokenizer has no unk token and the config no eos id; "
                               "pass fallback=<a token id> for out-of-vocabulary input tokens")
    if not isinstance(fallback, int) or isinstance(fallback, bool) or not 0 <= fallback < vocab:
        # checked for the default too: a tokenizer's unk id need not lie inside the model's embedding
        raise InvalidInput(f"fallback must be a token id in 0..{vocab - 1}, got {fallback!r}; pass fallback=<a "
                           "token id of this model>")

    kept = torch.unique(torch.cat([data_ids, torch.tensor(always_kept_ids(model, tokenizer) + [fallback])]))
    return kept, fallback


@torch.no_grad()
def prune_vocabulary(model, kept_ids, tokenizer=None, *, fallback: int | None = None) -> VocabularyPruning:
    """Keep only ``kept_ids`` (plus ``always_kept_ids`` and the fallback) of ``model``'s input embedding and output
    head, **in place**; return the record also attached as ``model.vocab_pruning``.

    ``kept_ids``: original token ids (``ids_from_calibration``, ``ids_from_texts``, ``ids_most_frequent``,
    ``evaluate.vocabulary.ids_from_suite``, or any ints). ``tokenizer``: its special tokens are kept and its unk
    is the default fallback. ``fallback``: the original id whose row input tokens outside the kept set read
    (default: unk, else eos). The model keeps taking original ids and returning logits over the original
    vocabulary (see the module's docstring). Every input is checked before anything is changed.
    """
    kept, fallback = kept_vocabulary(model, kept_ids, tokenizer, fallback=fallback)
    embedding, head = _embedding_and_head(model)
    vocab = embedding.weight.shape[0]
    tied = head.weight is embedding.weight
    device = embedding.weight.device
    params_before, bytes_before = _parameter_bytes(embedding.weight, head.weight, head.bias)

    # Everything is checked: from here on the model changes.
    kept_on_device = kept.to(device)
    row_of_id = torch.full((vocab,), -1, dtype=torch.long)
    row_of_id[kept] = torch.arange(kept.numel())
    pruned = torch.ones(vocab, dtype=torch.bool)
    pruned[kept] = False

    new_embedding = nn.Parameter(embedding.weight.index_select(0, kept_on_device).clone(),
                                 requires_grad=embedding.weight.requires_grad)
    embedding.weight = new_embedding
    embedding.num_embeddings = kept.numel()
    if embedding.padding_idx is not None:
        embedding.padding_idx = int(row_of_id[embedding.padding_idx])   # always kept, so a real row
    embedding.register_buffer(_ROW_OF_ID, row_of_id.to(device), persistent=False)
    embedding.register_buffer(_OOV_COUNT, torch.zeros((), dtype=torch.long, device=device), persistent=False)
    embedding.register_buffer(_FALLBACK_ROW, torch.tensor(int(row_of_id[fallback]), device=device),
                              persistent=False)
    embedding.register_forward_pre_hook(_remap_input_ids, with_kwargs=True)

    head_device = head.weight.device
    if tied:
        head.weight = new_embedding
    else:
        head.weight = nn.Parameter(head.weight.index_select(0, kept.to(head_device)).clone(),
                                   requires_grad=head.weight.requires_grad)
    if head.bias is not None:
        head.bias = nn.Parameter(head.bias.index_select(0, kept.to(head_device)).clone(),
                                 requires_grad=head.bias.requires_grad)
    head.out_features = kept.numel()
    head.register_buffer(_KEPT_IDS, kept.to(head_device), persistent=False)
    head.register_buffer(_PRUNED, pruned.to(head_device), persistent=False)
    head.register_forward_hook(_expand_logits)
    model.register_forward_hook(_mask_model_logits)

    params_after, bytes_after = _parameter_bytes(embedding.weight, head.weight, head.bias)
    lookup = sum(t.numel() * t.element_size() for t in (row_of_id, kept, pruned))
    record = VocabularyPruning(vocab, kept, int(fallback), tied, params_before, params_after, bytes_before,
                               bytes_after, lookup, _embedding=embedding)
    model.vocab_pruning = record
    return record
