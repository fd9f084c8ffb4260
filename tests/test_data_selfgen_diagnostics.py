"""Self-calibration generation and set diagnostics."""
import math

import numpy as np
import pytest
import torch

from calib_lib.data import diagnostics as dg
from calib_lib.data.sampling import CalibrationSpec, sample
from calib_lib.data.selfgen import generate_rows, start_token_id, stop_word_ids, temperature_at


def test_temperature_schedule_is_linear_then_constant():
    assert temperature_at(0, 0.5, 1.5, 10) == 0.5
    assert temperature_at(5, 0.5, 1.5, 10) == pytest.approx(1.0)
    assert temperature_at(10, 0.5, 1.5, 10) == 1.5
    assert temperature_at(37, 0.5, 1.5, 10) == 1.5
    assert temperature_at(3, 2.0, 1.0, 0) == 1.0


def test_generation_starts_from_bos_fills_rows_and_is_deterministic(tiny_llama):
    model, tok = tiny_llama
    kw = dict(seed=7, t_init=1.0, t_final=1.0, steps=10, stopword_first=False, progress=False)
    a = generate_rows(model, tok, 5, 40, **kw)
    b = generate_rows(model, tok, 5, 40, **kw)
    assert a.shape == (5, 40) and torch.equal(a, b)
    bos = start_token_id(tok, model)
    assert (a[:, 0] == bos).all()
    c = generate_rows(model, tok, 5, 40, **{**kw, "seed": 8})
    assert not torch.equal(a, c)


def test_generations_after_eos_restart_from_bos(tiny_llama):
    """A model that always emits EOS produces rows of [BOS, EOS] pieces, concatenated to seq_len."""
    model, tok = tiny_llama
    eos, bos = tok.eos_token_id, start_token_id(tok, model)
    with torch.no_grad():
        saved = model.lm_head.bias
        model.lm_head.bias = torch.nn.Parameter(torch.full((len(tok),), -1e4))
        model.lm_head.bias.data[eos] = 1e4
        try:
            rows = generate_rows(model, tok, 2, 9, seed=0, t_init=1.0, t_final=1.0, steps=0,
                                 stopword_first=False, progress=False)
        finally:
            model.lm_head.bias = saved
    assert rows[0].tolist() == [bos, eos] * 4 + [bos]


def test_stopword_first_restricts_first_token(tiny_llama):
    model, tok = tiny_llama
    allowed = set(stop_word_ids(tok))
    rows = generate_rows(model, tok, 6, 12, seed=0, t_init=2.0, t_final=1.0, steps=10,
                         stopword_first=True, progress=False)
    assert set(rows[:, 1].tolist()) <= allowed


def test_self_set_is_cached_by_model_and_spec(tiny_llama, isolated_cache):
    model, tok = tiny_llama
    spec = CalibrationSpec("self", 3, 24, t_init=1.5, t_final=0.8)
    first = sample(spec, tok, model, progress=False)
    files = list((isolated_cache / "self_generated").glob("*.jsonl"))
    assert len(files) == 1
    second = sample(spec, tok, model, progress=False)
    assert torch.equal(first.input_ids, second.input_ids)
    other = sample(CalibrationSpec("self", 3, 24, set_index=1, t_init=1.5, t_final=0.8), tok, model, progress=False)
    assert not torch.equal(first.input_ids, other.input_ids)
    files[0].write_text("damaged")
    third = sample(spec, tok, model, progress=False)
    assert torch.equal(first.input_ids, third.input_ids), "a damaged cache entry is regenerated identically"


def test_self_needs_a_model(tiny_llama):
    _, tok = tiny_llama
    with pytest.raises(ValueError, match="pass model="):
        sample(CalibrationSpec("self", 2, 8), tok)


def test_distinct_n_on_a_hand_example():
    ids = torch.tensor([[1, 2, 1, 2, 3]])
    assert dg.distinct_n(ids, 1) == pytest.approx(3 / 5)
    assert dg.distinct_n(ids, 2) == pytest.approx(3 / 4)     # (1,2) (2,1) (1,2) (2,3)


def test_zipf_coefficient_recovers_exponent():
    counts = np.round(10_000 / np.arange(1, 301) ** 1.2).astype(int)
    ids = torch.from_numpy(np.repeat(np.arange(300), counts))
    assert dg.zipf_coefficient(ids) == pytest.approx(1.2, abs=0.05)


def test_divergence_is_zero_for_same_distribution_and_positive_otherwise():
    a = torch.tensor([0, 1, 2, 3] * 50)
    same = dg.unigram_divergence(a, a.clone(), vocab_size=10)
    assert same["kl_bits"] == pytest.approx(0, abs=1e-12) and same["js_bits"] == pytest.approx(0, abs=1e-12)
    far = dg.unigram_divergence(a, torch.tensor([5, 6, 7] * 50), vocab_size=10)
    assert far["kl_bits"] > 1 and 0.5 < far["js_bits"] <= 1


def test_diagnostics_report(tiny_llama):
    _, tok = tiny_llama
    ids = sample(CalibrationSpec("random-vocab", 4, 64), tok).input_ids
    report = dg.diagnostics(ids, len(tok), reference_ids=ids)
    assert 0 < report["vocab_coverage"] <= 1 and report["tokens"] == 256
    assert math.isfinite(report["zipf_coefficient"]) and report["unigram_kl_bits"] == pytest.approx(0, abs=1e-9)
