"""Fidelity to the dense model: KL_k from the cached top-k reference against independent formulations, the
per-window records of perplexity, and the reference's cache (round trip, clear errors, nothing partial)."""
import copy
import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, rel_entr

from calib_lib.errors import InvalidInput, Unavailable, UserError
from calib_lib.evaluate import perplexity
from calib_lib.evaluate import fidelity
from calib_lib.evaluate.fidelity import (DenseReference, MissingReference, compute_reference, ensure_reference,
                                         load_reference, reference_path, score_logits)

MODEL_ID = "tiny-llama/float32/loading1"


def _windows(vocab, n=3, seq_len=24, seed=0):
    return torch.randint(4, vocab, (n, seq_len), generator=torch.Generator().manual_seed(seed))


def _perturbed(model, scale=0.5, seed=1):
    """A copy of ``model`` with noise (``scale`` times each weight's spread) added to the weights of its blocks:
    a stand-in for compression."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.model.layers.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std())
    return other


def _peaked(model, factor=30.0):
    """A copy whose next-token distributions are peaked like a trained model's (the random tiny model's are
    nearly uniform): the output layer's weights scaled, i.e. a lower softmax temperature."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.weight.mul_(factor)
    return other


@torch.no_grad()
def _logits(model, windows):
    return model(input_ids=windows, use_cache=False).logits[:, :-1]


def _full_logp(logits):
    return log_softmax(logits.double().numpy(), axis=-1)


def _scores(logits, reference, targets=None, **kwargs):
    return score_logits(logits, targets, **reference.slices(0, reference.windows), **kwargs)


def _reference(model, windows, k, tail_samples=0, **kwargs):
    kwargs.setdefault("save", False)
    return compute_reference(model, windows, model_id=MODEL_ID, text_id="x", k=k, tail_samples=tail_samples, **kwargs)


# -- KL_k against independent formulations ---------------------------------------------------------------------

def test_with_the_whole_vocabulary_kl_is_scipys_rel_entr(tiny_llama):
    dense, _ = tiny_llama
    vocab = dense.config.vocab_size
    windows = _windows(vocab)
    other = _perturbed(dense, scale=1.0)
    reference = _reference(dense, windows, vocab)
    p, q = np.exp(_full_logp(_logits(dense, windows))), np.exp(_full_logp(_logits(other, windows)))
    expected = rel_entr(p, q).sum(-1)
    kl = _scores(_logits(other, windows), reference).kl.numpy()
    assert expected.mean() > 1e-3                                  # a real divergence, not a trivial zero
    np.testing.assert_allclose(kl, expected, rtol=0, atol=1e-5)
    result = perplexity(other, windows, progress=False, reference=reference)
    assert result.kl_mean == pytest.approx(expected.mean(), abs=1e-6)
    assert result.kl_p99 == pytest.approx(np.percentile(expected, 99), abs=1e-5)
    assert result.top1_agreement == pytest.approx((p.argmax(-1) == q.argmax(-1)).mean())


@pytest.mark.parametrize("k", [1, 4, 16, 64])
def test_top_k_kl_is_a_lower_bound_short_by_the_tails_divergence(tiny_llama, k):
    dense = _peaked(tiny_llama[0])
    windows = _windows(dense.config.vocab_size)
    other = _perturbed(dense, scale=0.1)
    reference = _reference(dense, windows, k)
    lp, lq = _full_logp(_logits(dense, windows)), _full_logp(_logits(other, windows))
    exact = rel_entr(np.exp(lp), np.exp(lq)).sum(-1)
    approx = _scores(_logits(other, windows), reference).kl.numpy()
    # The gap, independently: the tails (every token outside the dense top-k) renormalised, their KL weighted
    # by the dense model's remaining mass.
    tail = np.ones(lp.shape, dtype=bool)
    np.put_along_axis(tail, reference.topk_ids.astype(np.int64), False, axis=-1)
    p_tail, q_tail = np.where(tail, np.exp(lp), 0.0), np.where(tail, np.exp(lq), 0.0)
    p_r, q_r = p_tail.sum(-1), q_tail.sum(-1)
    gap = p_r * rel_entr(p_tail / p_r[..., None], q_tail / q_r[..., None]).sum(-1)
    assert (exact - approx >= -1e-6).all()
    np.testing.assert_allclose(exact - approx, gap, rtol=0, atol=1e-6)
    if k == 64:          # a sixth of the vocabulary holds nearly all of a peaked distribution
        assert np.median(p_r) < 0.01
        assert (exact.mean() - approx.mean()) / exact.mean() < 0.01


def test_tail_samples_come_from_the_tail_and_estimate_the_kl_without_bias(tiny_llama):
    dense = _peaked(tiny_llama[0])
    windows = _windows(dense.config.vocab_size)
    other = _perturbed(dense, scale=0.1)
    lp, lq = _full_logp(_logits(dense, windows)), _full_logp(_logits(other, windows))
    exact = rel_entr(np.exp(lp), np.exp(lq)).sum(-1).mean()
    logits = _logits(other, windows)
    merged = _scores(logits, _reference(dense, windows, 4)).kl.mean().item()
    means = []
    for seed in range(40):
        reference = _reference(dense, windows, 4, 4, seed=seed)
        # every sample lies outside its position's top-k, and carries the dense model's log-probability
        assert not (reference.tail_ids[..., :, None] == reference.topk_ids[..., None, :]).any()
        np.testing.assert_allclose(reference.tail_logp, np.take_along_axis(lp, reference.tail_ids.astype(int), -1),
                                   atol=1e-5)
        means.append(_scores(logits, reference).kl.mean().item())
    spread = np.std(means) / np.sqrt(len(means))
    assert abs(np.mean(means) - exact) < 4 * spread
    assert exact - merged > 20 * spread               # the test can tell the estimate from the merged bound
    assert len(set(means)) == len(means)              # each seed draws other samples


def test_chunked_scores_equal_one_pass(tiny_llama):
    dense, _ = tiny_llama
    vocab = dense.config.vocab_size
    windows = _windows(vocab)
    logits = _logits(_perturbed(dense), windows)
    for reference in (_reference(dense, windows, 8), _reference(dense, windows, 8, 4)):
        whole = _scores(logits, reference, windows[:, 1:])
        pieces = _scores(logits, reference, windows[:, 1:], chunk_elements=5 * vocab)
        for a, b in zip(whole, pieces):
            assert torch.equal(a, b)
    sampled = _reference(dense, windows, 8, 4)
    again = compute_reference(dense, windows, model_id=MODEL_ID, text_id="x", k=8, tail_samples=4, batch_size=1,
                              save=False)
    np.testing.assert_array_equal(again.tail_ids, sampled.tail_ids)     # the samples do not depend on batching
    bf16 = score_logits(logits.bfloat16(), windows[:, 1:])           # any float dtype of logits
    assert torch.allclose(bf16.nll, whole.nll, rtol=0.05)


def test_the_dense_model_against_its_own_reference(tiny_llama):
    dense, _ = tiny_llama
    windows = _windows(dense.config.vocab_size, n=4)
    # The same batch size as the reference: the very same logits (another batching could round a near-tie of
    # the random model's nearly uniform distribution the other way).
    for tail_samples in (0, 8):
        reference = _reference(dense, windows, 16, tail_samples, batch_size=2)
        result = perplexity(dense, windows, batch_size=2, progress=False, reference=reference)
        assert abs(result.kl_mean) < 1e-6 and abs(result.kl_p99) < 1e-6
        assert result.top1_agreement == 1.0 and result.window_top1 == (23,) * 4


def test_window_records_add_up_to_the_perplexity(tiny_llama):
    dense, _ = tiny_llama
    windows = _windows(dense.config.vocab_size, n=5, seq_len=20)
    plain = perplexity(dense, windows, batch_size=2, progress=False)
    assert plain.window_tokens == (19,) * 5 and plain.kl_mean is None and plain.window_kl is None
    assert math.exp(sum(plain.window_nll) / sum(plain.window_tokens)) == pytest.approx(plain.perplexity, rel=1e-12)
    with torch.no_grad():
        for row, nll in zip(windows, plain.window_nll):
            logp = torch.log_softmax(dense(row[None]).logits[0, :-1].double(), -1)
            assert nll == pytest.approx(-logp.gather(1, row[1:, None]).sum().item(), rel=1e-6)
    reference = _reference(dense, windows, 4, 4)
    scored = perplexity(_perturbed(dense), windows, batch_size=3, progress=False, reference=reference)
    assert len(scored.window_kl) == len(scored.window_top1) == 5
    assert math.fsum(scored.window_kl) / scored.scored_tokens == pytest.approx(scored.kl_mean, rel=1e-12)
    assert sum(scored.window_top1) / scored.scored_tokens == scored.top1_agreement
    record = scored.to_dict()
    assert record["kl_p99"] == scored.kl_p99 and len(record["window_nll"]) == 5


# -- the cached reference --------------------------------------------------------------------------------------

def test_reference_round_trips_through_the_cache(tiny_llama, isolated_cache):
    dense, _ = tiny_llama
    windows = _windows(dense.config.vocab_size)
    saved = compute_reference(dense, windows, model_id=MODEL_ID, text_id="news", k=8)
    path = reference_path(MODEL_ID, "news", windows, 8)
    assert path.is_file() and isolated_cache / "dense-reference" in path.parents
    loaded = load_reference(MODEL_ID, "news", windows, 8)
    assert (loaded.model_id, loaded.text_id, loaded.windows_digest, loaded.k) == \
           (saved.model_id, saved.text_id, saved.windows_digest, saved.k)
    assert loaded.topk_ids.dtype == np.int32 and loaded.topk_logp.dtype == np.float32
    np.testing.assert_array_equal(loaded.topk_ids, saved.topk_ids)
    np.testing.assert_array_equal(loaded.topk_logp, saved.topk_logp)
    assert loaded.topk_ids.shape == (3, 23, 8) and loaded.seq_len == 24
    # sorted: a smaller k is the first columns, exactly what computing it directly gives
    assert loaded.tail_samples == fidelity.DEFAULT_TAIL_SAMPLES and loaded.tail_ids.shape == (3, 23, loaded.tail_samples)
    np.testing.assert_array_equal(loaded.tail_ids, saved.tail_ids)
    np.testing.assert_array_equal(loaded.tail_logp, saved.tail_logp)
    four = compute_reference(dense, windows, model_id=MODEL_ID, text_id="news", k=4, tail_samples=0, save=False)
    np.testing.assert_array_equal(loaded.top(4).topk_ids, four.topk_ids)
    np.testing.assert_array_equal(loaded.top(4).topk_logp, four.topk_logp)
    assert ensure_reference(dense, windows, model_id=MODEL_ID, text_id="news", k=8).topk_ids.shape == (3, 23, 8)


def test_a_missing_reference_says_how_to_compute_it(tiny_llama, isolated_cache):
    dense, _ = tiny_llama
    windows = _windows(dense.config.vocab_size)
    with pytest.raises(MissingReference) as caught:
        load_reference(MODEL_ID, "news", windows, 8)
    message = str(caught.value)
    assert isinstance(caught.value, Unavailable) and isinstance(caught.value, UserError)
    assert "\n" not in message and MODEL_ID in message and "news" in message
    assert "run the dense model with the same suite" in message and "fidelity.compute_reference(" in message
    compute_reference(dense, windows, model_id=MODEL_ID, text_id="news", k=8)
    for other in (dict(k=16), dict(tail_samples=0), dict(seed=1), dict(text_id="books"), dict(model_id="tiny-llama/bfloat16/loading1"),
                  dict(windows=_windows(dense.config.vocab_size, seed=1))):
        args = {"model_id": MODEL_ID, "text_id": "news", "windows": windows, "k": 8, **other}
        with pytest.raises(MissingReference):
            load_reference(**args)


def test_a_reference_of_other_windows_is_refused_before_any_compute(tiny_llama, monkeypatch):
    dense, _ = tiny_llama
    windows = _windows(dense.config.vocab_size)
    reference = compute_reference(dense, windows, model_id=MODEL_ID, text_id="news", k=8, save=False)
    calls = []
    monkeypatch.setattr(dense, "forward", lambda *a, **k: calls.append(1))
    for other in (_windows(dense.config.vocab_size, seed=1), windows[:2], windows[:, :12]):
        with pytest.raises(InvalidInput, match="computed on other windows.*same text, windows, seq_len and seed"):
            perplexity(dense, other, progress=False, reference=reference)
    assert not calls


def test_a_reference_of_another_vocabulary_is_refused(tiny_llama):
    dense, _ = tiny_llama
    windows = _windows(dense.config.vocab_size)
    reference = compute_reference(dense, windows, model_id=MODEL_ID, text_id="news", k=8, save=False)
    logits = _logits(dense, windows)[..., :100]
    with pytest.raises(InvalidInput, match="another vocabulary"):
        score_logits(logits, None, torch.from_numpy(reference.topk_ids), torch.from_numpy(reference.topk_logp))


def test_a_damaged_reference_is_removed_and_reported(tiny_llama, isolated_cache):
    dense, _ = tiny_llama
    windows = _windows(dense.config.vocab_size)
    compute_reference(dense, windows, model_id=MODEL_ID, text_id="news", k=8)
    path = reference_path(MODEL_ID, "news", windows, 8)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(MissingReference, match="was damaged.*removed.*compute_reference"):
        load_reference(MODEL_ID, "news", windows, 8)
    assert not path.exists()
    again = ensure_reference(dense, windows, model_id=MODEL_ID, text_id="news", k=8)      # recomputed
    np.testing.assert_array_equal(load_reference(MODEL_ID, "news", windows, 8).topk_ids, again.topk_ids)


def test_a_failed_save_leaves_nothing_partial(tiny_llama, isolated_cache, monkeypatch):
    dense, _ = tiny_llama
    windows = _windows(dense.config.vocab_size)
    reference = compute_reference(dense, windows, model_id=MODEL_ID, text_id="news", k=8, save=False)
    path = reference.path()

    def disk_full(handle, **arrays):
        handle.write(b"PK\x03\x04 half a zip file")
        raise OSError(28, "No space left on device")
    real = np.savez_compressed
    monkeypatch.setattr(fidelity.np, "savez_compressed", disk_full)
    with pytest.raises(OSError, match="No space left"):
        reference.save()
    assert not path.exists() and list(path.parent.iterdir()) == []
    monkeypatch.setattr(fidelity.np, "savez_compressed", real)
    reference.save()
    before = path.read_bytes()
    monkeypatch.setattr(fidelity.np, "savez_compressed", disk_full)
    with pytest.raises(OSError):
        compute_reference(dense, windows, model_id=MODEL_ID, text_id="news", k=8)
    assert path.read_bytes() == before and list(path.parent.iterdir()) == [path]      # the old file stands


def test_reference_arrays_are_checked():
    ids, logp = np.zeros((2, 5, 3), np.int32), np.zeros((2, 5, 3), np.float32)
    DenseReference("m", "t", "d", 3, ids, logp)
    with pytest.raises(InvalidInput, match="int32"):
        DenseReference("m", "t", "d", 3, ids.astype(np.int64), logp)
    with pytest.raises(InvalidInput, match="k=4"):
        DenseReference("m", "t", "d", 4, ids, logp)
    with pytest.raises(InvalidInput, match="top 1..3 tokens"):
        DenseReference("m", "t", "d", 3, ids, logp).top(4)


def test_k_is_checked(tiny_llama):
    dense, _ = tiny_llama
    windows = _windows(dense.config.vocab_size)
    for k in (0, dense.config.vocab_size + 1, 2.0, True):
        with pytest.raises(InvalidInput, match="k must be an integer"):
            compute_reference(dense, windows, model_id=MODEL_ID, text_id="x", k=k, save=False)
