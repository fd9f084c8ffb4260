"""Calibration quality scores (#21 item 2): the model-based diagnostics against direct computations, the
association statistics against scipy, their behaviour on simulated nulls, and the run-level table."""
import numpy as np
import pytest
import torch
from scipy import stats as sps

from calib_lib.data.diagnostics import activation_distance, block_input_statistics, set_perplexity
from calib_lib.study import quality


def test_set_perplexity_is_the_token_weighted_loss(tiny_llama):
    model, _ = tiny_llama
    ids = torch.randint(3, 200, (5, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        losses = [float(model(r[None], labels=r[None]).loss) for r in ids]       # mean over 11 predictions each
    assert set_perplexity(model, ids, batch_size=2) == pytest.approx(float(np.exp(np.mean(losses))), rel=1e-5)


def test_block_input_statistics_match_numpy(tiny_llama):
    model, _ = tiny_llama
    ids = torch.randint(3, 200, (4, 10), generator=torch.Generator().manual_seed(1))
    stats = block_input_statistics(model, ids, batch_size=3)
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    assert len(stats) == model.config.num_hidden_layers
    for layer, (mean, cov) in enumerate(stats):
        flat = hidden[layer].reshape(-1, hidden[layer].shape[-1]).double().numpy()
        np.testing.assert_allclose(mean, flat.mean(axis=0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(cov, np.cov(flat, rowvar=False), rtol=1e-5, atol=1e-8)
    same = activation_distance(stats, stats)
    assert same == {"activation_mean_distance": 0.0, "activation_cov_distance": 0.0}
    other = block_input_statistics(model, torch.randint(3, 200, (4, 10), generator=torch.Generator().manual_seed(2)))
    assert activation_distance(other, stats)["activation_mean_distance"] > 0


def test_rank_statistics_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(4, 25))
        x, y = rng.integers(0, 6, n).astype(float), rng.integers(0, 6, n).astype(float)
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        assert quality.rho_batch(x[None], y[None])[0] == pytest.approx(sps.spearmanr(x, y).statistic)
        assert quality.tau_b_batch(x[None], y[None])[0] == pytest.approx(sps.kendalltau(x, y).statistic)


def test_association_finds_a_real_predictor_and_rarely_a_null_one():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(20)
    strong = quality._association(x, x + 0.1 * rng.standard_normal(20), 1000, 0.95)
    assert strong["rho"] > 0.8 and strong["rho_low"] > 0.5 and strong["p_value"] < 0.01
    assert strong["concordance_low"] > 0.6
    false = 0
    for seed in range(200):
        r = np.random.default_rng(100 + seed)
        result = quality._association(r.standard_normal(12), r.standard_normal(12), 300, 0.95, seed=seed)
        false += result["p_value"] < 0.05
    assert false / 200 <= 0.08


def test_quality_correlations_table():
    import pandas as pd
    rng = np.random.default_rng(2)
    x = rng.standard_normal(10)
    frame = pd.DataFrame({"method_label": "wanda 50%", "key": [f"k{i}" for i in range(10)],
                          "distinct_1": x, "kl:geomean": np.exp(x + 0.1 * rng.standard_normal(10)),
                          "acc:mean": 0.5})
    table = quality.quality_correlations(frame, diagnostics=("distinct_1",), n_resamples=200)
    kl = table[table["outcome"] == "log KL to dense"].iloc[0]
    assert kl["n"] == 10 and kl["rho"] > 0.8
    acc = table[table["outcome"] == "mean accuracy"].iloc[0]
    assert np.isnan(acc["rho"])                                           # a constant outcome: nothing to say


def test_run_diagnostics_reads_records_and_caches_model_scores(tmp_path, monkeypatch):
    from calib_lib.runs import Store, parse_spec, run_specs
    from calib_lib.study.tables import wide
    monkeypatch.setenv("CALIB_CACHE", str(tmp_path / "cache"))
    specs = [parse_spec({"model": "tiny-llama", "method": {"name": "wanda", "sparsity": 0.5}, "eval": "tiny",
                         "calibration": {"source": source, "num_samples": 2, "seq_len": 16}})
             for source in ("news", "wikipedia")]
    store = Store(tmp_path / "runs.sqlite")
    run_specs(specs, store, progress=False)
    frame = quality.run_diagnostics(store, wide(store))
    assert set(frame["source"]) == {"news", "wikipedia"} and frame["fingerprint_matches"].all()
    assert (frame["set_perplexity"] > 1).all() and (frame["activation_mean_distance"] > 0).all()
    cached = list((tmp_path / "cache" / "calibration_quality").glob("*.json"))
    assert len(cached) == 2
    again = quality.run_diagnostics(store, wide(store))
    assert again["set_perplexity"].tolist() == frame["set_perplexity"].tolist()


def test_one_pass_statistics_equal_the_separate_ones(tiny_llama):
    from calib_lib.data.diagnostics import model_diagnostics, set_statistics
    model, _ = tiny_llama
    ids = torch.randint(3, 200, (3, 9), generator=torch.Generator().manual_seed(3))
    perplexity, stats = set_statistics(model, ids, batch_size=2)
    assert perplexity == pytest.approx(set_perplexity(model, ids), rel=1e-6)
    separate = block_input_statistics(model, ids)
    for (m, c), (m2, c2) in zip(stats, separate):
        np.testing.assert_allclose(m, m2) and np.testing.assert_allclose(c, c2)
    assert model_diagnostics(model, ids, separate)["activation_mean_distance"] == 0
