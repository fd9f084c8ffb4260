"""PackedLM scores what lm-eval's HFLM scores: per request, per document and per metric, on every tiny
architecture and every task; a model that cannot take a packed batch falls back to HFLM with one warning."""
import logging
import random
import warnings

import pytest
import torch
from lm_eval import simple_evaluate
from lm_eval.api.registry import get_model
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from calib_lib.evaluate.fast_lm import PackedLM, make_lm
from calib_lib.evaluate.tasks import TASKS, offline_config
from calib_lib.models import load_model
from conftest import mirror_available

needs_mirror = pytest.mark.skipif(not mirror_available(), reason="CALIB_MIRROR is not set (CI sets it)")
TINY = ("tiny-llama", "tiny-gemma3", "tiny-gptneox", "tiny-opt")
MAX_LENGTH = 32


@pytest.fixture(autouse=True)
def _quiet_lm_eval():
    # HFLM warns on every in-memory model and every left truncation; the tests look at numbers
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    return load_model(request.param, log=lambda *a: None)


def _greedy(model, context, n):
    """The model's own greedy continuation of ``context`` (so that some is_greedy answers are True)."""
    tokens = list(context)
    with torch.no_grad():
        for _ in range(n):
            tokens.append(int(model(torch.tensor([tokens])).logits[0, -1].argmax()))
    return tokens[len(context):]


def _requests(model, tokenizer, seed=0):
    """Multiple-choice-like requests: shared contexts with continuations of 1 to 6 tokens (greedy ones among
    them), one-token choices of one context, a context+continuation of exactly max_length + 1 tokens (the
    longest HFLM scores untruncated), longer ones (HFLM truncates them from the left), duplicates, in a
    shuffled order."""
    rng = random.Random(seed)
    vocab = len(tokenizer)

    def tokens(n):
        return [rng.randrange(4, vocab) for _ in range(n)]

    requests = []
    for doc in range(6):
        context = [tokenizer.bos_token_id] + tokens(rng.randrange(2, 20))
        continuations = [tokens(1), tokens(1), tokens(3), tokens(6),
                         _greedy(model, context, 3), _greedy(model, context, 1)]
        requests += [((f"doc{doc}", f"choice{i}"), context, c) for i, c in enumerate(continuations)]
    context = tokens(12)
    requests += [(("yes/no", word), context, [token]) for word, token in (("no", 5), ("yes", 6))]
    requests.append((("exact", "fit"), tokens(MAX_LENGTH - 3), tokens(4)))
    requests += [(("long", str(i)), tokens(MAX_LENGTH + 8), tokens(3)) for i in range(2)]
    requests += [requests[0], requests[4], requests[-1]]
    rng.shuffle(requests)
    return requests


class _Hook:
    def __init__(self):
        self.calls = []

    def add_partial(self, kind, key, answer):
        self.calls.append((kind, key, answer))


def _assert_same(ours, theirs):
    """Log-likelihoods within 1e-4, or 1e-6 relative where a sum is so large that 1e-4 is below fp32's
    resolution (a random tiny model's HellaSwag ending: -1190 nats, whose fp32 spacing is 1.2e-4); greedy
    flags identical."""
    assert len(ours) == len(theirs)
    for (ll, greedy), (ll_ref, greedy_ref) in zip(ours, theirs, strict=True):
        assert ll == pytest.approx(ll_ref, abs=1e-4, rel=1e-6)
        assert greedy == greedy_ref


@pytest.mark.parametrize("layout", [{}, {"row_tokens": 16, "token_budget": 48}], ids=["default", "small-rows"])
def test_packed_matches_hflm_on_every_tiny_architecture(tiny, layout):
    model, tokenizer = tiny
    requests = _requests(model, tokenizer)
    hflm = make_lm(model, tokenizer, batch_size=4, packed=False, max_length=MAX_LENGTH)
    packed = make_lm(model, tokenizer, batch_size=4, max_length=MAX_LENGTH, **layout)
    hflm.cache_hook, packed.cache_hook = _Hook(), _Hook()
    theirs = hflm._loglikelihood_tokens(requests, disable_tqdm=True)
    ours = packed._loglikelihood_tokens(requests, disable_tqdm=True)

    assert packed.packing_enabled()
    _assert_same(ours, theirs)
    assert any(greedy for _, greedy in theirs)                # the greedy continuations really are greedy
    # the long requests were truncated as HFLM truncates them and scored alone (their duplicate once), the
    # rest were packed: one group per distinct context, the continuation tokens past the shared context
    # forwarded once each; several documents share a row unless rows are too short to hold two
    assert packed.stats["unpacked_requests"] == 0 and packed.stats["alone_groups"] == 2
    assert packed.stats["groups"] == 6 + 1 + 1 + 2
    assert packed.stats["tokens"] < sum(len(c) + len(x) - 1 for _, c, x in requests)
    if layout:
        assert packed.stats["rows"] > 2 and packed.stats["batches"] > 1
    else:
        assert packed.stats["rows"] == packed.stats["batches"] == 1 + 2
    # the cache hook sees every request once with its answer, as HFLM's does
    assert sorted(key for _, key, _ in packed.cache_hook.calls) == sorted(key for _, key, _ in hflm.cache_hook.calls)
    answers = {key: answer for _, key, answer in hflm.cache_hook.calls}
    for kind, key, answer in packed.cache_hook.calls:
        assert kind == "loglikelihood"
        _assert_same([answer], [answers[key]])
    assert packed.continuation_tokens == {key: len(x) for key, _, x in requests}


def test_requests_past_the_sliding_window_are_scored_alone():
    """Our mask has no window: a request longer than Gemma 3's sliding window (64 tokens on the tiny
    model) is scored alone under the model's own mask; packed, it would score 0.3 nats off."""
    model, tokenizer = load_model("tiny-gemma3", log=lambda *a: None)
    assert model.config.sliding_window == 64
    rng = random.Random(1)
    long_context, short_context = [rng.randrange(4, 384) for _ in range(90)], [rng.randrange(4, 384) for _ in range(30)]
    requests = [((str(i), str(j)), context, [rng.randrange(4, 384) for _ in range(3)])
                for i, context in enumerate((long_context, short_context)) for j in range(3)]
    packed = make_lm(model, tokenizer)
    _assert_same(packed._loglikelihood_tokens(requests, disable_tqdm=True),
                 make_lm(model, tokenizer, packed=False)._loglikelihood_tokens(requests, disable_tqdm=True))
    assert packed.stats["alone_groups"] == 3 and packed.stats["groups"] == 1 + 3


def test_architecture_that_cannot_pack_falls_back_with_one_warning():
    """MPT adds ALiBi biases from row indices, not position ids: a packed row would score silently different
    numbers. The self-check sees it, warns once, and every request goes through HFLM."""
    from transformers import AutoModelForCausalLM, MptConfig

    from calib_lib.models.tiny import build_tokenizer
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(MptConfig(d_model=64, n_layers=2, n_heads=4,
                                                       vocab_size=len(tokenizer))).eval()
    requests = _requests(model, tokenizer)
    packed = make_lm(model, tokenizer, batch_size=4, max_length=MAX_LENGTH)
    with pytest.warns(UserWarning, match="PackedLM: MptForCausalLM scores packed rows differently"):
        ours = packed._loglikelihood_tokens(requests, disable_tqdm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # checked once: no second warning
        again = packed._loglikelihood_tokens(requests, disable_tqdm=True)
    theirs = make_lm(model, tokenizer, batch_size=4, packed=False,
                     max_length=MAX_LENGTH)._loglikelihood_tokens(requests, disable_tqdm=True)
    assert ours == theirs == again                            # HFLM's own path: identical, not just close
    assert packed.packing_enabled() is False and packed.stats["groups"] == 0
    assert packed.continuation_tokens == {key: len(x) for key, _, x in requests}


def test_attention_without_custom_masks_is_not_packed(tiny_llama, monkeypatch):
    model, tokenizer = tiny_llama
    packed = make_lm(model, tokenizer)
    monkeypatch.setattr(model.config, "_attn_implementation", "flash_attention_2")
    with pytest.warns(UserWarning, match="'flash_attention_2' attention"):
        assert packed.packing_enabled() is False


def test_rolling_loglikelihood_goes_through_hflm(tiny_llama):
    from lm_eval.api.instance import Instance
    model, tokenizer = tiny_llama
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
                for text in ("The quick brown fox jumps over the lazy dog. " * 6, "It was the best of times.")]
    packed = make_lm(model, tokenizer, max_length=MAX_LENGTH)
    hflm = make_lm(model, tokenizer, packed=False, max_length=MAX_LENGTH)
    assert packed.loglikelihood_rolling(requests, disable_tqdm=True) == \
        hflm.loglikelihood_rolling(requests, disable_tqdm=True)
    assert packed.stats["groups"] == 0 and packed.stats["unpacked_requests"] > 0


def test_make_lm_and_the_registry(tiny_llama):
    model, tokenizer = tiny_llama
    assert get_model("calib-packed") is PackedLM
    assert type(make_lm(model, tokenizer)) is PackedLM
    assert type(make_lm(model, tokenizer, packed=False)) is HFLM
    lm = make_lm(model, tokenizer)
    # token counts of pairs never scored: lm-eval's encoding, its empty-context rule included
    assert lm.continuation_token_count("The quick", " brown fox") == len(lm._encode_pair("The quick", " brown fox")[1])
    encoded = lm.tok_encode("the lazy dog", add_special_tokens=False)
    assert lm.continuation_token_count("", "the lazy dog") == len(encoded) - (encoded[0] == lm.prefix_token_id)


# -- whole tasks through lm-eval: per-document responses and metrics ------------------------------------------

def _evaluate(lm, task, limit, seed=1234):
    # our own manager: without one simple_evaluate indexes every lm-eval task YAML (seconds a call)
    out = simple_evaluate(model=lm, tasks=[offline_config(task, limit, seed)],
                          task_manager=TaskManager(include_defaults=False), num_fewshot=0, bootstrap_iters=0,
                          log_samples=True, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                          fewshot_random_seed=seed, verbosity="ERROR")
    (name, metrics), = out["results"].items()
    samples = {s["doc_id"]: s for s in out["samples"][name]}
    metrics = {k: v for k, v in metrics.items() if "," in k and "_stderr" not in k}
    return samples, metrics


def _assert_same_task(model, tokenizer, task, limit):
    packed = make_lm(model, tokenizer)
    ours, our_metrics = _evaluate(packed, task, limit)
    theirs, their_metrics = _evaluate(make_lm(model, tokenizer, packed=False), task, limit)
    assert packed.packing_enabled() and packed.stats["groups"] > 0
    assert sorted(ours) == sorted(theirs) and len(ours) == limit
    for doc_id, sample in theirs.items():
        assert ours[doc_id]["arguments"] == sample["arguments"]
        _assert_same([r[0] for r in ours[doc_id]["resps"]], [r[0] for r in sample["resps"]])
        for args in sample["arguments"]:
            assert packed.continuation_tokens[args] == len(packed._encode_pair(*args)[1])
    assert our_metrics.keys() == their_metrics.keys()
    for key, value in their_metrics.items():
        if key.startswith("perplexity"):          # a continuous function of the log-likelihoods
            assert our_metrics[key] == pytest.approx(value, rel=1e-4)
        else:                                     # accuracies: the same choices won
            assert our_metrics[key] == value


@needs_mirror
@pytest.mark.parametrize("task", TASKS)
def test_every_task_scores_the_same_per_document(tiny_llama, task):
    _assert_same_task(*tiny_llama, task, limit=6)


@pytest.mark.integration
@needs_mirror
def test_smollm_scores_the_same_per_document_on_every_task():
    model, tokenizer = load_model("smollm2-135m", log=lambda *a: None)
    for task in TASKS:
        _assert_same_task(model, tokenizer, task, limit=3)
