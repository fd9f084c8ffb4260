"""PackedLM: lm-eval's HFLM with less forward work for loglikelihood requests, and the same numbers.

lm-eval keeps its prompts, documents, filters and metrics; only ``_loglikelihood_tokens`` (tokens in,
``(sum of log-probs, is_greedy)`` out) is replaced. HFLM forwards every (context, continuation) pair as its
own row and computes log-softmax over the whole vocabulary at every position of every row. PackedLM:

1. Groups requests by context tokens and forwards each context once: a group is the tokens its requests'
   inputs share (the context, and any common start of the continuations), then each request's remaining
   tokens as its own branch. A 4-D additive mask lets a branch attend to the shared part and causally to
   itself, never to another branch; position ids restart where the shared part ends, so every request
   sees exactly the positions and keys of its own unpacked row. A multiple-choice document's context runs
   once for all its choices; one-token choices (BoolQ's no/yes) need no branch at all.
2. Lays groups end to end in rows of ~512 tokens (first fit, longest first; the mask keeps documents apart
   and positions restart at 0 for each), so that rows are nearly full, and batches rows by length under a
   token budget (rows x padded length) and a logit budget (scored positions x vocabulary), right-padded.
   Padding a batch of single documents to its longest one wasted 42% of the tokens forwarded on a sample
   of the ten tasks; packed rows waste a few percent.
3. Computes the output head only where a continuation token is predicted, through transformers'
   ``logits_to_keep`` (a boolean mask of positions), so whatever the model applies after its head (Gemma's
   final logit softcapping) still happens, and log-softmax runs over those positions only: with Gemma's
   262k-token vocabulary the head and its softmax are most of HFLM's cost.

The mask is additive float (0 where a key is seen, the dtype's minimum elsewhere): transformers 5 passes a
4-D mask to the attention function untouched (``masking_utils._preprocess_mask_arguments``), for every
layer type (Gemma 3's sliding-window layers included: ``create_sliding_window_causal_mask`` returns it
as-is), and sdpa takes bool or additive masks while eager attention *adds* the mask to its scores, where a
boolean mask would be added as 0/1 and silently ignored. Because our mask carries no window, a request
longer than the model's sliding window is scored alone in a row under the model's own mask, as is a
request longer than ``max_length``, truncated from the left exactly as HFLM truncates it: HFLM's forward,
with the head restricted all the same. loglikelihood_rolling's windows, and requests HFLM rejects (an
empty context or continuation), go through HFLM's own path.

Before its first packed batch a PackedLM checks, once, that the model scores a probe of packed rows as it
scores the same requests unpacked (``_check_packing``); a model that does not (another attention kernel,
a mask built from a 2-D padding mask, positions it ignores) is scored through HFLM with one warning.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

# Tokens per packed row: groups (a context and its continuations) are laid end to end up to this length. On
# a CPU a row of 512 tokens under a custom mask runs at 98% of the speed of a plain causal row of 128 to 512
# (SmolLM2: 764 vs 779 tokens/s), 1024 at 92%: attention over the whole row grows with its square. A group
# longer than this gets a row of its own.
DEFAULT_ROW_TOKENS = 512
# Rows x padded length per forward. Activations stay small at this size (SmolLM2: ~30 MB per layer) while
# the matrix products are large enough to run at full speed on a CPU.
DEFAULT_TOKEN_BUDGET = 4096
# Scored positions x vocabulary per forward: 64 Mi elements (256 MiB of fp32 logits, a few copies live at
# once: logits, softcapping, log-softmax). Gemma 3's 262k vocabulary gets 256 scored positions a forward,
# SmolLM2's 49k about 1,300; HFLM at batch 4 x 474 tokens holds 1.9 GiB of Gemma logits, twice.
DEFAULT_LOGIT_BUDGET = 1 << 26
# Attention kernels that take a custom 4-D float mask as given; flash and flex attention need other formats.
PACKABLE_ATTENTION = ("sdpa", "eager")
# Largest per-token log-prob difference between the packed and the unpacked probe: fp32 reductions in
# another order differ by ~1e-6, a wrong mask or position by 1e-2 and more (tiny random models included).
_CHECK_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-3}
_CHECK_TOLERANCE_LOW_PRECISION = 5e-2

# lm-eval's request: ((context, continuation), context tokens, continuation tokens); the key is None for
# loglikelihood_rolling's windows
Request = tuple[tuple[str, str] | None, list[int], list[int]]


@dataclass
class _Group:
    """Requests that share their context: the tokens their inputs share, then one branch per request with
    tokens past them. Indices are within the group; a row places groups end to end."""
    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    branches: list[int] = field(default_factory=list)    # 0: shared part; 1, 2, ...: a request's branch
    scored: list[int] = field(default_factory=list)      # indices whose logits are needed, ascending
    # per request: (its index among the unique requests, its indices into ``scored``, its continuation)
    requests: list[tuple[int, list[int], list[int]]] = field(default_factory=list)
    # scored in a row of its own under the model's own mask (a request longer than the model's attention
    # window, or truncated to max_length): exactly HFLM's forward, but for the output head
    alone: bool = False


def _common_prefix_length(sequences: list[list[int]]) -> int:
    first, n = sequences[0], min(len(s) for s in sequences)
    for other in sequences[1:]:
        i = 0
        while i < n and other[i] == first[i]:
            i += 1
        n = i
    return n


def _group(members: list[tuple[int, list[int], list[int]]], alone: bool = False) -> _Group:
    """The group of requests ``(index, context_enc, continuation_enc)`` that share their context.

    Request i's unpacked input is x_i = (context + continuation)[:-1]; the logits at x_i's positions
    len(context)-1 ... len(x_i)-1 predict the continuation. The group holds the prefix all x_i share once
    (the context, and the continuations' common start), then x_i's remainder for each request."""
    inputs = [ctx + cont[:-1] for _, ctx, cont in members]
    shared = _common_prefix_length(inputs)
    group = _Group(tokens=list(inputs[0][:shared]), positions=list(range(shared)), branches=[0] * shared,
                   alone=alone)
    starts = []                                 # index of each branch's first token
    for branch, x in enumerate(inputs, start=1):
        starts.append(len(group.tokens))
        group.tokens += x[shared:]
        group.positions += range(shared, len(x))
        group.branches += [branch] * (len(x) - shared)
    # index in the group of position j of request i's input
    needed = [[j if j < shared else starts[i] + j - shared for j in range(len(ctx) - 1, len(inputs[i]))]
              for i, (_, ctx, _) in enumerate(members)]
    group.scored = sorted({r for rows in needed for r in rows})
    rank = {r: k for k, r in enumerate(group.scored)}
    group.requests = [(index, [rank[r] for r in rows], cont)
                      for (index, _, cont), rows in zip(members, needed)]
    return group


def _rows(groups: list[_Group], row_tokens: int, max_scored: int) -> list[list[_Group]]:
    """Groups packed into rows of at most ``row_tokens`` tokens and ``max_scored`` scored positions, first
    fit in decreasing length (rows come out nearly full, so batches of rows need little padding)."""
    rows, room = [], []                         # room: (tokens, scored positions) each row has left
    for group in sorted(groups, key=lambda g: -len(g.tokens)):
        need = (len(group.tokens), len(group.scored))
        if group.alone:
            rows.append([group])
            room.append((-1, -1))
            continue
        for i, (tokens, scored) in enumerate(room):
            if need[0] <= tokens and need[1] <= scored:
                rows[i].append(group)
                room[i] = (tokens - need[0], scored - need[1])
                break
        else:
            rows.append([group])
            room.append((row_tokens - need[0], max_scored - need[1]))
    return rows


def _length(row: list[_Group]) -> int:
    return sum(len(g.tokens) for g in row)


def _scored(row: list[_Group]) -> int:
    return sum(len(g.scored) for g in row)


def _batches(rows: list[list[_Group]], token_budget: int, max_scored: int) -> list[list[list[_Group]]]:
    """Rows sorted longest first (so the first batch shows the peak memory at once, as HFLM does), filled
    while rows x padded length and scored positions stay within budget. A row over a budget on its own, or
    one scored under the model's own mask, gets a batch of its own."""
    batches, current, scored = [], [], 0
    for row in sorted(rows, key=lambda r: -_length(r)):
        length = _length(current[0]) if current else _length(row)
        if current and ((len(current) + 1) * length > token_budget or scored + _scored(row) > max_scored
                        or row[0].alone or current[0][0].alone):
            batches.append(current)
            current, scored = [], 0
        current.append(row)
        scored += _scored(row)
    if current:
        batches.append(current)
    return batches


class PackingUnsupported(RuntimeError):
    """The model's output for a packed batch is not what PackedLM asked for (it scores through HFLM)."""


@register_model("calib-packed")
class PackedLM(HFLM):
    """HFLM whose loglikelihood requests share forward passes (see the module's docstring); same results.

    ``continuation_tokens`` maps each scored (context, continuation) to its continuation's token count,
    lm-eval's own encoding of the pair, for per-document records. ``stats`` counts the work done.
    """

    def __init__(self, *args, row_tokens: int = DEFAULT_ROW_TOKENS, token_budget: int = DEFAULT_TOKEN_BUDGET,
                 logit_budget: int = DEFAULT_LOGIT_BUDGET, **kwargs):
        super().__init__(*args, **kwargs)
        # lm-eval passes model_args from its command line as strings
        self.row_tokens = int(row_tokens)
        self.token_budget = int(token_budget)
        self.logit_budget = int(logit_budget)
        self.continuation_tokens: dict[tuple[str, str], int] = {}
        # requests; contexts (groups), rows and forwards they took; tokens forwarded (without and with
        # padding); positions the head ran at; requests scored alone; requests handed to HFLM
        self.stats = {"requests": 0, "groups": 0, "rows": 0, "batches": 0, "tokens": 0, "padded_tokens": 0,
                      "scored_positions": 0, "alone_groups": 0, "unpacked_requests": 0}
        self._packing: bool | None = None          # None until checked on the first call

    # -- lm-eval's entry point ---------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        self.stats["requests"] += len(requests)
        for key, _, continuation_enc in requests:
            if key is not None:
                self.continuation_tokens[key] = len(continuation_enc)
        if not requests or not self.packing_enabled():
            self.stats["unpacked_requests"] += len(requests)
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)

        results: list[tuple[float, bool] | None] = [None] * len(requests)
        routes = [self._route(request) for request in requests]
        packable = [i for i, route in enumerate(routes) if route != "hflm"]
        unpacked = [i for i, route in enumerate(routes) if route == "hflm"]
        if unpacked:
            # HFLM's own path for what packing cannot reproduce; it calls the cache hook itself
            answers = super()._loglikelihood_tokens([requests[i] for i in unpacked], disable_tqdm=disable_tqdm,
                                                    override_bs=override_bs)
            for i, answer in zip(unpacked, answers, strict=True):
                results[i] = answer
            self.stats["unpacked_requests"] += len(unpacked)

        # identical requests are scored once
        unique: dict[tuple, int] = {}
        first_of = [unique.setdefault((tuple(requests[i][1]), tuple(requests[i][2])), len(unique))
                    for i in packable]
        alone = {unique[(tuple(requests[i][1]), tuple(requests[i][2]))] for i in packable if routes[i] == "alone"}
        members: dict[tuple, list] = {}
        groups = []
        for (context, continuation), index in unique.items():
            if index in alone:
                # HFLM's left truncation: the last max_length tokens of context + continuation[:-1]
                x = (list(context) + list(continuation))[-(self.max_length + 1):][:-1]
                groups.append(_group([(index, x[:len(x) - len(continuation) + 1], list(continuation))], alone=True))
            else:
                members.setdefault(context, []).append((index, list(context), list(continuation)))
        groups += [_group(group) for group in members.values()]
        answers = self._score(groups, len(unique), disable_tqdm=disable_tqdm)
        for i, index in zip(packable, first_of):
            results[i] = answers[index]
            self.cache_hook.add_partial("loglikelihood", requests[i][0], answers[index])
        return results

    def continuation_token_count(self, context: str, continuation: str) -> int:
        """Tokens of ``continuation`` after ``context``, as lm-eval encoded (or would encode) the pair."""
        if (context, continuation) in self.continuation_tokens:
            return self.continuation_tokens[(context, continuation)]
        if context == "":              # TemplateLM.loglikelihood's rule for an empty context
            tokens = self.tok_encode(continuation, add_special_tokens=False)
            return len(tokens) - (tokens[:1] == [self.prefix_token_id])
        return len(self._encode_pair(context, continuation)[1])

    # -- when packing applies -------------------------------------------------------------------------------

    def packing_enabled(self) -> bool:
        """Whether this model scores packed rows as it scores unpacked ones (checked once, then remembered)."""
        if self._packing is None:
            why = self._check_packing()
            self._packing = why is None
            if why is not None:
                warnings.warn(f"PackedLM: {type(self.model).__name__} {why}; scoring through lm-eval's HFLM "
                              "instead (the same numbers, without the speed-up)", stacklevel=2)
        return self._packing

    def _vocab(self) -> int:
        """Rows of the output head (the vocabulary its logits cover, padding rows included); for a model whose
        vocabulary is pruned (``compress.vocabulary``), the original vocabulary its logits still cover."""
        pruning = getattr(self.model, "vocab_pruning", None)
        if pruning is not None:
            return pruning.vocab_size
        head = self.model.get_output_embeddings()
        weight = getattr(head, "weight", None)
        return int(weight.shape[0]) if weight is not None else int(self.config.get_text_config().vocab_size)

    def _window(self) -> int | None:
        """The shortest attention window of the model's layers (sliding or chunked), if any."""
        config = self.config.get_text_config() if hasattr(self.config, "get_text_config") else self.config
        windows = [w for w in (getattr(config, "sliding_window", None), getattr(config, "attention_chunk_size", None))
                   if isinstance(w, int) and w > 0]
        return min(windows) if windows else None

    def _route(self, request: Request) -> str:
        """"packed" (shares rows under our mask), "alone" (a row of its own under the model's own mask) or
        "hflm" (HFLM's own path)."""
        key, context_enc, continuation_enc = request
        if (key is None                                   # loglikelihood_rolling's windows
                or not context_enc or not continuation_enc or len(continuation_enc) > self.max_length):
            return "hflm"                                 # (HFLM asserts on the last three)
        length = len(context_enc) + len(continuation_enc)
        window = self._window()
        if length > self.max_length + 1:                  # HFLM truncates it from the left
            return "alone"
        if window is not None and length - 1 > window:    # our mask has no window
            return "alone"
        return "packed"

    def _check_packing(self) -> str | None:
        """None when a probe of packed rows scores as the same requests unpacked, else why it does not."""
        if self.backend != "causal":
            return "is not a decoder-only model"
        attention = getattr(self.config, "_attn_implementation", None)
        if attention not in PACKABLE_ATTENTION:
            return f"uses {attention!r} attention, which does not take a custom 4-D mask as given"
        # probe with ids the model keeps: every id, or the kept ones of a pruned vocabulary (a pruned id would
        # score -inf both ways, and count as out of vocabulary)
        pruning = getattr(self.model, "vocab_pruning", None)
        pool = torch.arange(self._vocab()) if pruning is None else pruning.kept_ids
        generator = torch.Generator().manual_seed(0)

        def tokens(n):
            return pool[torch.randint(len(pool) // 8, max(1, len(pool) // 2), (n,), generator=generator)].tolist()

        # a group with a one-token continuation, two continuations that share their first tokens and one
        # longer than another group's context; two shorter groups laid in one row (documents side by side),
        # padded to the first row's length; a request alone under the model's own mask
        first, second, third, fourth = tokens(11), tokens(4), tokens(7), tokens(9)
        shared = tokens(2)
        probe = [(first, tokens(1)), (first, shared + tokens(2)), (first, shared + tokens(3)), (first, tokens(6)),
                 (second, tokens(3)), (second, tokens(1)), (third, tokens(2)), (third, tokens(2)), (fourth, tokens(3))]
        counted = dict(self.stats)
        try:
            groups = [_group([(i, c, x) for i, (c, x) in enumerate(probe) if c is context], alone=context is fourth)
                      for context in (first, second, third, fourth)]
            packed = self._score(groups, len(probe), disable_tqdm=True, per_token=True,
                                 row_tokens=len(groups[0].tokens))
            worst = 0.0
            for (context, continuation), (logprobs, _) in zip(probe, packed):
                x = torch.tensor([context + continuation[:-1]], device=self.device)
                logits = self._model_call(x)[0, len(context) - 1:]
                reference = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
                reference = reference.gather(1, torch.tensor(continuation, device=self.device)[:, None])[:, 0]
                worst = max(worst, (reference.float().cpu() - logprobs.float().cpu()).abs().max().item())
        except Exception as err:     # any failure of the packed forward means: do not pack this model
            return f"cannot take a packed batch ({type(err).__name__}: {err})"
        finally:
            self.stats = counted      # the probe is not part of the work done
        dtype = next(self.model.parameters()).dtype
        tolerance = _CHECK_TOLERANCE.get(dtype, _CHECK_TOLERANCE_LOW_PRECISION)
        if not worst <= tolerance:
            return (f"scores packed rows differently from unpacked ones (log-prob difference {worst:.2g} > "
                    f"{tolerance:g})")
        return None

    # -- the packed forward --------------------------------------------------------------------------------

    def _score(self, groups: list[_Group], count: int, disable_tqdm: bool = False, per_token: bool = False,
               row_tokens: int | None = None):
        """Answers for requests 0..count-1 held by ``groups``: ``(sum of log-probs, is_greedy)``, or with
        ``per_token`` (the self-check) the tensor of per-token log-probs in place of the sum."""
        answers: list = [None] * count
        max_scored = max(1, self.logit_budget // self._vocab())
        rows = _rows(groups, row_tokens or self.row_tokens, max_scored)
        batches = _batches(rows, self.token_budget, max_scored)
        progress = tqdm(total=sum(len(g.requests) for g in groups), disable=disable_tqdm or self.rank != 0,
                        desc="Running loglikelihood requests (packed)")
        for batch in batches:
            logprobs, greedy = self._forward(batch)
            offset = 0                # logits come flattened in row-major order: row by row, group by group
            for group in (group for row in batch for group in row):
                for index, picks, continuation in group.requests:
                    where = torch.tensor(picks, device=logprobs.device) + offset
                    target = torch.tensor(continuation, device=logprobs.device)
                    chosen = logprobs[where, target]
                    is_greedy = bool((greedy[where] == target).all())
                    # HFLM: float() of the sum, in the log-softmax dtype
                    answers[index] = (chosen, is_greedy) if per_token else (float(chosen.sum()), is_greedy)
                offset += len(group.scored)
                progress.update(len(group.requests))
        progress.close()
        if not per_token:
            self.stats["groups"] += len(groups)
            self.stats["rows"] += len(rows)
            self.stats["batches"] += len(batches)
        return answers

    def _forward(self, batch: list[list[_Group]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-softmax and argmax at every scored position of the batch, in order (``[n, vocab]``, ``[n]``)."""
        length = max(_length(row) for row in batch)
        size = (len(batch), length)
        # Each group's tokens get a document id of their own (padding: one per pad token, so that a pad's
        # row of the mask is never empty); a token sees the earlier tokens of its document that are in the
        # shared part or its own branch. Padding (token 0, as HFLM pads) follows every real token of a row,
        # so no real token sees it.
        tokens = torch.zeros(size, dtype=torch.long)
        positions = torch.zeros(size, dtype=torch.long)
        documents = torch.arange(length).repeat(len(batch), 1) + (1 << 30)
        branches = torch.zeros(size, dtype=torch.long)
        keep = torch.zeros(size, dtype=torch.bool)
        document = 0
        for b, row in enumerate(batch):
            start = 0
            for group in row:
                end = start + len(group.tokens)
                tokens[b, start:end] = torch.tensor(group.tokens)
                positions[b, start:end] = torch.tensor(group.positions)
                branches[b, start:end] = torch.tensor(group.branches)
                documents[b, start:end] = document
                keep[b, [start + i for i in group.scored]] = True
                start, document = end, document + 1
        own_mask = batch[0][0].alone
        if own_mask:
            # a request alone in its row runs as HFLM runs it: the model builds its own mask (windows included)
            arguments = {}
        else:
            index = torch.arange(length)
            causal = (index[None, :] <= index[:, None])[None]
            same_document = documents[:, None, :] == documents[:, :, None]
            visible_branch = (branches[:, None, :] == 0) | (branches[:, None, :] == branches[:, :, None])
            sees = causal & same_document & visible_branch
            dtype = next(self.model.parameters()).dtype
            mask = torch.zeros(sees.shape, dtype=dtype).masked_fill_(~sees, torch.finfo(dtype).min)[:, None]
            arguments = {"attention_mask": mask.to(self.device), "position_ids": positions.to(self.device)}
        with (torch.no_grad(),
              torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                             enabled=self.mixed_precision_dtype is not None)):
            logits = self.model(input_ids=tokens.to(self.device), logits_to_keep=keep.to(self.device),
                                use_cache=False, **arguments).logits
        scored = int(keep.sum())
        if logits.ndim != 2 or logits.shape[0] != scored:
            raise PackingUnsupported(f"asked for logits at {scored} positions, got shape {tuple(logits.shape)} "
                                     "(its forward does not take a boolean logits_to_keep)")
        logprobs = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
        self.stats["alone_groups"] += own_mask
        self.stats["tokens"] += sum(_length(row) for row in batch)
        self.stats["padded_tokens"] += size[0] * size[1]
        self.stats["scored_positions"] += scored
        return logprobs, logprobs.argmax(dim=-1)


def hflm_batch_size(model, longest: int = 512) -> int:
    """HFLM's requests per forward, bounding its fp32 logits (batch x length x vocabulary) to ~2 GiB:
    Gemma's 262k-token vocabulary would need ~9 GiB of logits at 16 x 512."""
    vocab = getattr(model.config, "vocab_size", 32000)
    return max(1, min(16, (1 << 29) // (vocab * longest)))


def make_lm(model, tokenizer, batch_size: int | None = None, packed: bool = True, **kwargs) -> HFLM:
    """An lm-eval model over the in-memory ``model``: a PackedLM, or with ``packed=False`` lm-eval's own HFLM.

    ``batch_size`` is HFLM's (requests per forward; by default bounded by the logits' size); a PackedLM
    uses it only for requests it hands to HFLM, and lays out its own rows by ``row_tokens``,
    ``token_budget`` and ``logit_budget`` (keyword arguments passed on).
    """
    cls = PackedLM if packed else HFLM
    return cls(pretrained=model, tokenizer=tokenizer, device=str(next(model.parameters()).device),
               batch_size=batch_size or hflm_batch_size(model), **kwargs)
