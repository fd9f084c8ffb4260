"""Vocabulary pruning (issue #19): the pruned model's log-softmax over kept tokens is the dense model's restricted
and renormalised, on every tiny architecture (tied and untied); it takes original ids (those outside the kept set
read the fallback row and are counted) and returns logits over the original vocabulary, so perplexity, lm-eval and
generate run on it unchanged; bad input is refused before anything changes."""
import copy
import logging
import math

import numpy as np
import pytest
import torch

from calib_lib.compress.vocabulary import (VocabularyPruning, always_kept_ids, ids_from_calibration,
                                           ids_from_texts, ids_from_tokens, ids_most_frequent, prune_vocabulary)
from calib_lib.errors import InvalidInput, Unsupported, UserError
from calib_lib.evaluate import Suite, evaluate, make_windows, perplexity
from calib_lib.models.tiny import build_tiny_model
from conftest import mirror_available

needs_mirror = pytest.mark.skipif(not mirror_available(), reason="CALIB_MIRROR is not set (CI sets it)")
ARCHITECTURES = ("llama", "gemma3", "gpt_neox", "opt")      # untied, tied, untied, tied
TEXT = ("The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times. "
        "Pruning sets weights to zero; quantization stores them with fewer bits.")
OTHER_TEXT = "Numbers such as 0 1 2 3 4 5 6 7 8 9 10 100 and 2024 appear in text too, as do names and code."


def _pruned(architecture="llama", text=TEXT, **config):
    """(dense, pruned, tokenizer, record): two copies of the same tiny model, the second pruned to ``text``."""
    dense, tokenizer = build_tiny_model(architecture)
    for key, value in config.items():
        setattr(dense.config, key, value)
    model = copy.deepcopy(dense)
    record = prune_vocabulary(model, ids_from_texts(tokenizer, text), tokenizer)
    return dense, model, tokenizer, record


def _ids(tokenizer, text):
    return tokenizer(text, return_tensors="pt").input_ids


def _restricted(dense_logits, kept):
    """The dense model's log-softmax restricted to ``kept`` and renormalised, computed independently."""
    return torch.log_softmax(dense_logits[..., kept].double(), -1)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_kept_log_probs_are_the_dense_ones_renormalised(architecture):
    dense, model, tokenizer, record = _pruned(architecture)
    x = _ids(tokenizer, TEXT)
    with torch.no_grad():
        dense_logits, logits = dense(x).logits, model(x).logits
    kept = record.kept_ids
    assert logits.shape == dense_logits.shape                  # logits over the original vocabulary
    logp = torch.log_softmax(logits.double(), -1)
    assert torch.allclose(logp[..., kept], _restricted(dense_logits, kept), atol=1e-5, rtol=0)
    pruned = torch.ones(record.vocab_size, dtype=torch.bool)
    pruned[kept] = False
    assert torch.isneginf(logits[..., pruned]).all()           # probability exactly 0
    assert model.vocab_pruning is record and record.oov_tokens == 0


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_tied_stays_tied_and_the_parameter_count_drops_by_the_removed_rows(architecture):
    dense, model, tokenizer, record = _pruned(architecture)
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = dense.get_output_embeddings().weight is dense.get_input_embeddings().weight
    assert record.tied == tied == (architecture in ("gemma3", "opt"))
    assert (head.weight is embedding.weight) == tied
    removed, hidden = record.vocab_size - record.kept, embedding.weight.shape[1]
    dropped = sum(p.numel() for p in dense.parameters()) - sum(p.numel() for p in model.parameters())
    assert dropped == removed * hidden * (1 if tied else 2)
    assert record.parameters_before - record.parameters_after == dropped
    assert record.bytes_before - record.bytes_after == dropped * 4          # fp32
    assert embedding.weight.shape[0] == head.weight.shape[0] == record.kept
    # the kept rows are the dense rows of the kept ids, in order
    assert torch.equal(embedding.weight, dense.get_input_embeddings().weight[record.kept_ids])
    assert torch.equal(head.weight, dense.get_output_embeddings().weight[record.kept_ids])


def test_special_tokens_and_the_fallback_are_always_kept():
    dense, tokenizer = build_tiny_model("llama")
    record = prune_vocabulary(dense, [200], tokenizer)
    assert set(record.kept_ids.tolist()) == {0, 1, 2, 3, 200}              # unk, bos, eos, pad + the one asked
    assert record.fallback_id == tokenizer.unk_token_id == 0
    assert set(always_kept_ids(build_tiny_model("llama")[0], tokenizer)) == {0, 1, 2, 3}
    # without a tokenizer: the config's ids, and eos as the fallback
    model, _ = build_tiny_model("llama")
    record = prune_vocabulary(model, [200])
    assert record.fallback_id == model.config.eos_token_id == 2


def test_logit_softcapping_cannot_give_pruned_tokens_probability():
    """Gemma's final softcapping maps -inf to -cap: the model-level hook masks pruned ids again after it."""
    dense, model, tokenizer, record = _pruned("gemma3", final_logit_softcapping=30.0)
    x = _ids(tokenizer, TEXT)
    with torch.no_grad():
        dense_logits, logits = dense(x).logits, model(x).logits
    assert dense_logits.abs().max() < 30.0                     # the cap applies
    logp = torch.log_softmax(logits.double(), -1)
    assert torch.allclose(logp[..., record.kept_ids], _restricted(dense_logits, record.kept_ids), atol=1e-5, rtol=0)
    assert torch.allclose(logp[..., record.kept_ids].exp().sum(-1), torch.ones(1, dtype=torch.float64))


def test_tokens_outside_the_kept_set_read_the_fallback_row_and_are_counted():
    _, model, tokenizer, record = _pruned("llama")
    x = _ids(tokenizer, TEXT + " " + OTHER_TEXT)
    outside = ~record.covers(x)
    assert outside.sum() > 3
    as_fallback = torch.where(outside, torch.tensor(record.fallback_id), x)
    with torch.no_grad():
        logits = model(x).logits                               # no IndexError
        assert record.oov_tokens == int(outside.sum())
        assert torch.equal(logits, model(as_fallback).logits)  # read exactly as the fallback token
    assert record.oov_tokens == int(outside.sum())             # (the fallback itself is kept: not counted)
    assert 0 < record.coverage(x) < 1 and record.coverage(_ids(tokenizer, TEXT)) == 1.0
    assert record.report()["oov_tokens"] == record.oov_tokens
    record.reset_oov_count()
    assert record.oov_tokens == 0
    # an id outside the original vocabulary is the caller's bug: a clear error, as the dense model would fail
    with pytest.raises(InvalidInput, match="outside the original vocabulary of 384 ids"):
        model(torch.tensor([[5, 384]]))


def test_generate_never_emits_a_pruned_id():
    dense, model, tokenizer, record = _pruned("llama")
    x = _ids(tokenizer, "The quick brown")
    kept = set(record.kept_ids.tolist())
    options = dict(max_new_tokens=40, do_sample=True, top_k=0, top_p=1.0, num_return_sequences=4,
                   attention_mask=torch.ones_like(x), pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    out = model.generate(x, **options)
    assert set(out[:, x.shape[1]:].flatten().tolist()) <= kept
    torch.manual_seed(0)
    assert not set(dense.generate(x, **options)[:, x.shape[1]:].flatten().tolist()) <= kept   # the test can fail
    greedy = model.generate(x, max_new_tokens=20, do_sample=False, attention_mask=torch.ones_like(x),
                            pad_token_id=tokenizer.pad_token_id)
    assert set(greedy[:, x.shape[1]:].flatten().tolist()) <= kept


def test_perplexity_runs_and_cannot_go_up_on_text_the_vocabulary_covers():
    dense, model, tokenizer, record = _pruned("llama")
    windows = make_windows(_ids(tokenizer, TEXT * 3)[0], 16)
    ours = perplexity(model, windows, batch_size=2, progress=False)
    theirs = perplexity(dense, windows, batch_size=2, progress=False)
    assert math.isfinite(ours.perplexity) and ours.perplexity < theirs.perplexity
    assert all(a <= b for a, b in zip(ours.window_nll, theirs.window_nll))
    # per token: the dense NLL minus the log of the kept mass (renormalisation), computed independently
    with torch.no_grad():
        logp = _restricted(dense(windows).logits[:, :-1], record.kept_ids)
    row = {int(t): i for i, t in enumerate(record.kept_ids)}
    targets = torch.tensor([[row[int(t)] for t in w[1:]] for w in windows])
    expected = -logp.gather(-1, targets[..., None]).sum() / ours.scored_tokens
    assert ours.nll == pytest.approx(float(expected), abs=1e-5)
    # a target outside the kept set has probability 0: infinite perplexity, not a crash, and counted on input
    mixed = make_windows(_ids(tokenizer, (TEXT + " " + OTHER_TEXT) * 2)[0], 16)
    record.reset_oov_count()
    assert perplexity(model, mixed, progress=False).perplexity == math.inf
    assert record.oov_tokens == int((~record.covers(mixed)).sum())


def test_lm_eval_scores_the_pruned_model_packed_as_unpacked():
    """PackedLM reads the original vocabulary's width and probes with kept ids, so it packs a pruned model and
    scores what HFLM scores (a pruned continuation: -inf both ways)."""
    from calib_lib.evaluate.fast_lm import make_lm
    _, model, tokenizer, record = _pruned("llama")
    kept = record.kept_ids.tolist()
    context = kept[4:14]
    requests = [((f"c{i}", str(j)), context[: 4 + i], [kept[-1 - j], kept[5 + j]]) for i in range(3) for j in range(3)]
    requests.append((("pruned", "x"), context, [kept[6], 300]))
    assert 300 not in kept
    logging.disable(logging.WARNING)
    try:
        packed = make_lm(model, tokenizer, batch_size=4)
        hflm = make_lm(model, tokenizer, batch_size=4, packed=False)
        ours = packed._loglikelihood_tokens(requests, disable_tqdm=True)
        theirs = hflm._loglikelihood_tokens(requests, disable_tqdm=True)
    finally:
        logging.disable(logging.NOTSET)
    assert packed.packing_enabled() and packed._vocab() == 384
    for (ll, greedy), (ll_ref, greedy_ref) in zip(ours[:-1], theirs[:-1]):
        assert ll == pytest.approx(ll_ref, abs=1e-4) and math.isfinite(ll) and greedy == greedy_ref
    assert ours[-1][0] == theirs[-1][0] == -math.inf
    assert record.oov_tokens == 0                              # the probe and lm-eval's padding read kept ids


@needs_mirror
def test_the_dynamic_setting_keeps_every_token_the_suite_scores():
    """The paper's setting: prune to the evaluation data itself; evaluate() then reads no token outside the
    kept set and scores every target (finite perplexity and log-likelihoods)."""
    from calib_lib.evaluate.vocabulary import ids_from_suite
    model, tokenizer = build_tiny_model("llama")
    suite = Suite("vocab", ("wikitext2",), ppl_windows=2, ppl_seq_len=64, tasks=("copa",), task_limit=8)
    ids = ids_from_suite(tokenizer, suite)
    record = prune_vocabulary(model, ids, tokenizer)
    assert record.kept < record.vocab_size
    logging.disable(logging.WARNING)
    try:
        records = evaluate(model, tokenizer, suite, progress=False)
    finally:
        logging.disable(logging.NOTSET)
    assert record.oov_tokens == 0
    values = {(r["name"], r["metric"]): r["value"] for r in records}
    assert math.isfinite(values[("wikitext2", "perplexity")]) and ("copa", "acc") in values
    with pytest.raises(InvalidInput, match="scores no text and no available task, so it yields no tokens"):
        ids_from_suite(tokenizer, Suite("empty", (), tasks=()))


def test_pruned_model_survives_deepcopy():
    _, model, tokenizer, record = _pruned("gemma3")
    twin = copy.deepcopy(model)
    x = _ids(tokenizer, TEXT + " " + OTHER_TEXT)
    with torch.no_grad():
        assert torch.equal(model(x).logits, twin(x).logits)
    assert twin.vocab_pruning.oov_tokens == record.oov_tokens > 0
    twin.vocab_pruning.reset_oov_count()
    assert record.oov_tokens > 0                               # each copy counts its own


# -- where the kept ids come from --------------------------------------------------------------------------------

def test_vocabulary_sources():
    _, tokenizer = build_tiny_model("llama")
    from_text = ids_from_texts(tokenizer, [TEXT, OTHER_TEXT])
    assert torch.equal(from_text, torch.unique(torch.cat([_ids(tokenizer, TEXT)[0], _ids(tokenizer, OTHER_TEXT)[0]])))
    assert torch.equal(ids_from_texts(tokenizer, TEXT), ids_from_texts(tokenizer, [TEXT]))
    calibration = torch.tensor([[7, 9, 7], [9, 11, 5]])
    assert ids_from_calibration(calibration).tolist() == [5, 7, 9, 11]
    from calib_lib.data.sampling import CalibrationSpec, sample
    drawn = sample(CalibrationSpec("random-vocab", num_samples=2, seq_len=8), tokenizer, progress=False)
    assert torch.equal(ids_from_calibration(drawn), torch.unique(drawn.input_ids))
    assert ids_from_tokens([3, 3, 1]).tolist() == [1, 3] == ids_from_tokens(np.array([[3], [1]])).tolist()
    # the k most frequent: counts decide, ties go to the lower id; result sorted by id
    tokens = _ids(tokenizer, TEXT)[0]
    counts = torch.bincount(tokens)
    top = ids_most_frequent(tokenizer, TEXT, 5)
    assert len(top) == 5 and torch.equal(top, torch.sort(top).values)
    assert counts[top].min() >= counts[[i for i in range(len(counts)) if i not in top.tolist()]].max()
    assert torch.equal(ids_most_frequent(tokenizer, TEXT, 10_000), torch.unique(tokens))   # fewer when fewer


# -- bad input: a clear one-line error naming the fix, and nothing changed ---------------------------------------

def _snapshot(model):
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    return {k: v.clone() for k, v in model.state_dict().items()}, hooks, dict(model.named_buffers())


def _assert_unchanged(model, snapshot):
    state, hooks, buffers = snapshot
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hooks
    assert dict(model.named_buffers()).keys() == buffers.keys()
    assert getattr(model, "vocab_pruning", None) is None


@pytest.mark.parametrize("kept, error, match", [
    ([], InvalidInput, "keeping zero tokens"),
    (torch.empty(0, dtype=torch.long), InvalidInput, "keeping zero tokens"),
    ([5, 384, 1000], InvalidInput, r"2 id\(s\) outside the model's vocabulary of 384 ids \(0..383\): 384, 1000"),
    ([-1, 5], InvalidInput, "outside the model's vocabulary"),
    (torch.tensor([1.0, 2.0]), InvalidInput, "integer token ids"),
    ([True, False], InvalidInput, "integer token ids"),
    ("hello", InvalidInput, "got a string: tokenize text with ids_from_texts"),
])
def test_bad_kept_ids_are_refused_before_anything_changes(kept, error, match):
    model, tokenizer = build_tiny_model("llama")
    before = _snapshot(model)
    with pytest.raises(error, match=match) as caught:
        prune_vocabulary(model, kept, tokenizer)
    assert "\n" not in str(caught.value)
    _assert_unchanged(model, before)


@pytest.mark.parametrize("fallback", [384, -1, 2.0, True])
def test_a_fallback_outside_the_vocabulary_is_refused(fallback):
    model, tokenizer = build_tiny_model("llama")
    before = _snapshot(model)
    with pytest.raises(InvalidInput, match=r"fallback must be a token id in 0..383"):
        prune_vocabulary(model, [5], tokenizer, fallback=fallback)
    _assert_unchanged(model, before)


def test_a_model_whose_embedding_or_head_cannot_be_found_is_refused():
    model, tokenizer = build_tiny_model("llama")
    before = _snapshot(model)
    for attribute, value, match in [
        ("get_input_embeddings", lambda: None, "input embedding of LlamaForCausalLM is NoneType, not an nn.Embedding"),
        ("get_output_embeddings", lambda: None, "output head of LlamaForCausalLM is NoneType, not an nn.Linear"),
    ]:
        original = getattr(model, attribute)
        setattr(model, attribute, value)
        try:
            with pytest.raises(Unsupported, match=match) as caught:
                prune_vocabulary(model, [5], tokenizer)
        finally:
            setattr(model, attribute, original)
        assert "load it with AutoModelForCausalLM" in str(caught.value) and "\n" not in str(caught.value)

    def missing():
        raise NotImplementedError
    model.get_input_embeddings = missing
    with pytest.raises(Unsupported, match="cannot find the input embedding of LlamaForCausalLM"):
        prune_vocabulary(model, [5], tokenizer)
    del model.get_input_embeddings
    _assert_unchanged(model, before)


def test_pruning_twice_is_refused_and_sources_without_tokens_fail_clearly():
    _, model, tokenizer, record = _pruned("llama")
    with pytest.raises(Unsupported, match="already pruned: load the model again"):
        prune_vocabulary(model, [5], tokenizer)
    assert model.vocab_pruning is record
    for call, match in [
        (lambda: ids_from_texts(tokenizer, []), r"the texts yielded no tokens \(0 text"),
        (lambda: ids_from_texts(tokenizer, ["", ""]), r"the texts yielded no tokens \(2 text"),
        (lambda: ids_from_texts(tokenizer, [TEXT, 5]), "texts must be strings"),
        (lambda: ids_from_calibration(torch.empty(0, 8, dtype=torch.long)), "no tokens in the calibration set"),
        (lambda: ids_from_calibration("wikitext2"), "expected a CalibrationSet"),
        (lambda: ids_from_tokens([]), "no tokens in the token ids"),
        (lambda: ids_most_frequent(tokenizer, TEXT, 0), "k must be a positive integer"),
        (lambda: ids_most_frequent(tokenizer, [""], 5), "yielded no tokens"),
    ]:
        with pytest.raises(InvalidInput, match=match) as caught:
            call()
        assert isinstance(caught.value, UserError) and "\n" not in str(caught.value)
    assert isinstance(record, VocabularyPruning)


def test_a_pruned_model_cannot_become_the_dense_reference():
    """Its -inf logits cached under the dense model's identity would poison every later KL to dense."""
    from calib_lib.evaluate.fidelity import ensure_reference
    _, pruned, tokenizer, _ = _pruned()
    windows = torch.tensor([tokenizer(TEXT)["input_ids"][:16]])
    with pytest.raises(InvalidInput, match="vocabulary is\\s+pruned"):
        ensure_reference(pruned, windows, model_id="tiny", text_id="t")
