"""Self-calibration (Williams, Chrysostomou & Aletras, 2024): the model writes its own calibration data.

Generation starts from the BOS token alone (no prompt) and samples until EOS or until the row is
full; short generations are concatenated (each from BOS again) to fill ``seq_len``. The temperature
of step i follows t_i = t_init + (i / n) (t_final - t_init) for i <= n, then t_final. Optionally the
first token is restricted to English stop words. Generated sets are cached by (model, spec) as
exported jsonl files, which the ``custom`` source can also import. A cached file is checked on every
read (its token ids against the recorded fingerprint, its spec, shape and tokenizer against the
request); one that fails is generated again.
"""
from __future__ import annotations

import hashlib
import json
import time

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from ..paths import cache_dir
from ..errors import InvalidInput
from .setfile import export_set, import_set
from .spec import CalibrationSet
from .tokenized import tokenizer_digest

STOP_WORDS = ("the", "a", "an", "in", "on", "it", "this", "that", "i", "we", "he", "she", "they", "there",
              "as", "at", "for", "of", "to", "and", "but", "if", "when", "what", "is", "was", "my", "our",
              "his", "her", "one", "after", "by", "with", "from", "you", "these", "some")


def temperature_at(step: int, t_init: float, t_final: float, steps: int) -> float:
    """The linear schedule: step 0 samples at t_init, step ``steps`` and later at t_final."""
    if steps <= 0 or step >= steps:
        return t_final
    return t_init + (step / steps) * (t_final - t_init)


class ScheduledTemperature(LogitsProcessor):
    def __init__(self, prompt_len: int, t_init: float, t_final: float, steps: int):
        self.prompt_len, self.t_init, self.t_final, self.steps = prompt_len, t_init, t_final, steps

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        return scores / temperature_at(step, self.t_init, self.t_final, self.steps)


class FirstTokenAllowList(LogitsProcessor):
    def __init__(self, prompt_len: int, allowed: list[int]):
        self.prompt_len, self.allowed = prompt_len, torch.tensor(sorted(set(allowed)))

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] != self.prompt_len:
            return scores
        masked = torch.full_like(scores, float("-inf"))
        masked[:, self.allowed] = scores[:, self.allowed]
        return masked


def stop_word_ids(tokenizer) -> list[int]:
    """Ids of stop words that the tokenizer encodes as one token (lower-case and capitalised)."""
    ids = []
    for word in STOP_WORDS:
        for form in (word, word.capitalize()):
            encoded = tokenizer(form, add_special_tokens=False).input_ids
            if len(encoded) == 1:
                ids.append(encoded[0])
    if not ids:
        raise InvalidInput("no English stop word is a single token for this tokenizer")
    return ids


def start_token_id(tokenizer, model) -> int:
    for candidate in (tokenizer.bos_token_id, getattr(model.generation_config, "bos_token_id", None),
                      tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise InvalidInput("the tokenizer has neither a BOS nor an EOS token to start generation from")


def _cache_path(spec, model, tokenizer):
    prov = getattr(model, "calib_provenance", None)
    identity = {"model": prov.to_dict() if prov else type(model).__name__,
                "tokenizer": tokenizer_digest(tokenizer), "spec": spec.normalized(), "version": 1}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return cache_dir() / "self_generated" / f"{key}.jsonl"


@torch.no_grad()
def generate_rows(model, tokenizer, num_rows: int, seq_len: int, *, seed: int, t_init: float,
                  t_final: float, steps: int, stopword_first: bool, batch_size: int = 16,
                  progress: bool = True, prefixes: list[list[int]] | None = None) -> torch.Tensor:
    """``[num_rows, seq_len]`` token ids, each row one or more BOS-started generations concatenated.
    ``prefixes`` (one list of token ids per row, all of one length): each row's first generation continues
    BOS + its prefix instead of BOS alone (the temperature schedule counts from the end of the prompt);
    later fills of the row start from BOS."""
    bos = start_token_id(tokenizer, model)
    eos = tokenizer.eos_token_id
    allowed = stop_word_ids(tokenizer) if stopword_first else None
    device = next(model.parameters()).device
    rows: list[list[int]] = [[] for _ in range(num_rows)]
    bar = tqdm(total=num_rows * seq_len, desc="self-generating", unit="tok", disable=not progress, leave=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        while True:
            pending = [i for i, r in enumerate(rows) if len(r) < seq_len]
            if not pending:
                break
            for start in range(0, len(pending), batch_size):
                chunk = pending[start:start + batch_size]
                # Fill rows with the same remaining length together: generation length is one number.
                remaining = max(seq_len - len(rows[i]) for i in chunk)
                prompt = torch.full((len(chunk), 1), bos, dtype=torch.long, device=device)
                if prefixes is not None and not rows[chunk[0]]:
                    # first fill of rows that start with a prefix (chunks never mix first and later fills:
                    # first fills all have seq_len left, later ones fewer)
                    prompt = torch.cat([prompt, torch.tensor([prefixes[i] for i in chunk], dtype=torch.long,
                                                             device=device)], dim=1)
                width = prompt.shape[1]
                remaining -= width - 1
                processors = [ScheduledTemperature(width, t_init, t_final, steps)]
                if allowed:
                    processors.insert(0, FirstTokenAllowList(width, allowed))
                out = model.generate(
                    prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                    max_new_tokens=max(1, remaining - 1), logits_processor=LogitsProcessorList(processors),
                    temperature=1.0, top_k=0, top_p=1.0, pad_token_id=eos if eos is not None else bos,
                    eos_token_id=eos, use_cache=True)
                for row_index, generated in zip(chunk, out.tolist()):
                    piece = list(generated[:width])
                    for token in generated[width:]:
                        piece.append(token)
                        if token == eos:
                            break          # the rest is padding
                    take = piece[: seq_len - len(rows[row_index])]
                    rows[row_index].extend(take)
                    bar.update(len(take))
    bar.close()
    return torch.tensor(rows, dtype=torch.long)


# What reading a truncated, emptied or altered exported set raises (JSON, UTF-8, fingerprint and
# tokenizer checks are ValueErrors; a header or row of the wrong JSON type gives the others).
_DAMAGE = (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError)


def _cached_set(path, spec, tokenizer):
    """The set cached at ``path`` if it is intact and is the one ``spec`` asks for, else None."""
    try:
        cached = import_set(path, tokenizer)
    except _DAMAGE:
        return None
    if cached.spec.normalized() != spec.normalized() \
            or tuple(cached.input_ids.shape) != (spec.num_samples, spec.seq_len):
        return None
    cached.spec = spec
    return cached


def self_generated_set(spec, model, tokenizer, *, progress: bool = True):
    path = _cache_path(spec, model, tokenizer)
    if path.exists():
        cached = _cached_set(path, spec, tokenizer)
        if cached is not None:
            return cached
        path.unlink(missing_ok=True)          # damaged cache entry: generate again
    started = time.time()
    # Each set index draws its own generations; the seed mixes in set_index so sets differ.
    seed = int(hashlib.sha256(f"self:{spec.seed}:{spec.set_index}".encode()).hexdigest()[:8], 16)
    ids = generate_rows(model, tokenizer, spec.num_samples, spec.seq_len, seed=seed, t_init=spec.t_init,
                        t_final=spec.t_final, steps=spec.schedule_steps,
                        stopword_first=spec.stopword_first, progress=progress)
    cal = CalibrationSet(spec, ids, "synthetic:self-generated", tokenizer_digest(tokenizer),
                         seconds=time.time() - started)
    export_set(cal, path, tokenizer)
    return cal


def prefix_generated_set(spec, model, tokenizer, prefixes, *, progress: bool = True):
    """Ji et al. (ICLR 2025), "self-generating then sampling": the model continues short prefixes of real text
    (``prefix_tokens`` tokens of ``prefix_source``, each a window of that source's set ``set_index``, so sets
    never share a prefix), and the ``filter_share`` of generations with the highest perplexity under the model
    is dropped: ceil(num_samples / (1 - filter_share)) rows are generated and the num_samples with the lowest
    perplexity kept (ties to the earlier). Sampling follows the spec's temperature schedule (default 1.0:
    plain sampling). Taken from the paper: prefixes of real text as the prompt, a perplexity filter on the
    generations. What differs: prefix length, filter share and sampling settings are parameters here (16
    tokens, 20%, temperature 1 by default), not values checked against the authors' code; rows shorter than
    seq_len after EOS are filled with BOS-started generations, as in the self-calibration set. Cached like it.
    `prefixes`: a callable giving the prefix rows (the source draws them: ``sources.SelfPrefixSource``)."""
    from .selection import window_perplexities
    path = _cache_path(spec, model, tokenizer)
    if path.exists():
        cached = _cached_set(path, spec, tokenizer)
        if cached is not None:
            return cached
        path.unlink(missing_ok=True)
    started = time.time()
    prefixes = prefixes()                   # [generated rows][prefix_tokens]: drawn only when not cached
    generated = len(prefixes)
    seed = int(hashlib.sha256(f"self-prefix:{spec.seed}:{spec.set_index}".encode()).hexdigest()[:8], 16)
    ids = generate_rows(model, tokenizer, generated, spec.seq_len, seed=seed, t_init=spec.t_init,
                        t_final=spec.t_final, steps=spec.schedule_steps, stopword_first=False,
                        progress=progress, prefixes=prefixes)
    scores = window_perplexities(model, list(ids.numpy()))
    keep = sorted(range(generated), key=lambda i: (scores[i], i))[:spec.num_samples]
    cal = CalibrationSet(spec, ids[keep], f"synthetic:prefix-generated from {spec.prefix_source}",
                         tokenizer_digest(tokenizer), seconds=time.time() - started)
    export_set(cal, path, tokenizer)
    return cal
