"""Can a score computed in seconds, before compression, tell how well a calibration set will do? (issue #21)

Per run with calibration data, its set's diagnostics: the cheap ones every run records
(``data.diagnostics.diagnostics``: vocabulary coverage, distinct-n, Zipf coefficient) and the model-based ones
computed here from the run's spec (``data.diagnostics.model_diagnostics``: the set's perplexity under the
dense model, and the distance of its block inputs, mean and covariance per block, to those of the suite's own
held-out perplexity windows). Then, per method, each diagnostic against each outcome across the runs:
Spearman's rho with a bootstrap CI (resampling runs) and a permutation p, and the concordance: the probability
that the diagnostic orders two runs as their outcome does ((1 + Kendall's tau-b) / 2, bootstrap CI): "can it
pick the better of two sets?" A concordance of 0.5 is a coin; its CI says whether the runs can tell.

Model-based diagnostics are cached on disk per (model, calibration fingerprint, reference), so a notebook
re-executed computes none.
"""
from __future__ import annotations

import functools
import hashlib
import json
import numpy as np
import pandas as pd
from scipy import stats as sps

from ..paths import cache_dir

CHEAP = ("vocab_coverage", "distinct_1", "distinct_2", "distinct_4", "zipf_coefficient")
MODEL_BASED = ("set_perplexity", "activation_mean_distance", "activation_cov_distance")
OUTCOMES = {"kl:geomean": "log KL to dense", "ppl:geomean": "log perplexity", "acc:mean": "mean accuracy"}
QUALITY_VERSION = 1          # bump when a model-based diagnostic changes (the cache is keyed by it)


@functools.lru_cache(maxsize=4)
def _reference_statistics(model_name: str, dtype: str, suite_json: str):
    """Block-input statistics of the suite's held-out perplexity windows (all texts together), once per session."""
    from ..data.diagnostics import block_input_statistics
    import torch

    from ..evaluate.suite import Suite, _resolve_text, evaluation_windows
    from ..runs.runner import pristine_model
    suite = Suite(**json.loads(suite_json))
    model, tokenizer = pristine_model(model_name, dtype)
    windows = torch.cat([evaluation_windows(_resolve_text(text), tokenizer, suite.ppl_seq_len, suite.ppl_windows,
                                            suite.seed) for text in suite.ppl_texts])
    return block_input_statistics(model, windows)


def _suite_json(spec) -> str:
    # Suite.to_dict: the dict every cached diagnostic was keyed by (no 'summarization' field when it has none)
    return json.dumps(spec.suite.to_dict(), sort_keys=True, default=list)


def set_model_diagnostics(spec, expected_fingerprint: str | None = None) -> dict:
    """The model-based diagnostics of a run's calibration set (cached): the set drawn again from the spec (its
    fingerprint checked against the run's), scored by the dense model."""
    from ..data.diagnostics import model_diagnostics
    from ..data.sampling import sample
    from ..runs.runner import pristine_model
    suite_json = _suite_json(spec)
    key = hashlib.sha256(json.dumps([QUALITY_VERSION, spec.model, spec.dtype, expected_fingerprint
                                     or json.dumps(spec.calibration.normalized(), sort_keys=True), suite_json])
                         .encode()).hexdigest()[:24]
    path = cache_dir() / "calibration_quality" / f"{key}.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
    model, tokenizer = pristine_model(spec.model, spec.dtype)
    cal = sample(spec.calibration, tokenizer, model, progress=False)
    out = {**model_diagnostics(model, cal.input_ids, _reference_statistics(spec.model, spec.dtype, suite_json)),
           "fingerprint_matches": expected_fingerprint is None or cal.fingerprint == expected_fingerprint}
    from ..files import atomic_write_text
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out))
    return out


def run_diagnostics(store, table: pd.DataFrame, model_based: bool = True) -> pd.DataFrame:
    """One row per run of `table` that has calibration data: key, method_label, source, the outcomes, the
    cheap diagnostics from its record and (``model_based``) the model-based ones."""
    from ..runs.spec import parse_spec
    rows = []
    runs = table.drop_duplicates("key")
    if "replicate" in runs:                 # float-order replicates share their set: one row per set and run
        runs = runs[runs["replicate"].fillna(0).astype(int) == 0]
    for _, run in runs.iterrows():
        record = store.get(run["key"]) or {}
        cheap = record.get("calibration_diagnostics")
        if not cheap:
            continue
        row = {"key": run["key"], "method_label": run["method_label"], "source": run.get("calibration.source"),
               **{o: run.get(o, np.nan) for o in OUTCOMES}, **{d: cheap.get(d, np.nan) for d in CHEAP}}
        if model_based:
            spec = parse_spec(record["spec"])
            row.update(set_model_diagnostics(spec, record.get("calibration_fingerprint")))
        rows.append(row)
    return pd.DataFrame(rows)


def _outcome(values: pd.Series, outcome: str) -> np.ndarray:
    v = values.astype(float).to_numpy()
    return np.log(v) if outcome in ("kl:geomean", "ppl:geomean") else v


def rho_batch(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of `x`, `y` ([batch, n]): Pearson's r of the average ranks (NaN where
    a row is constant)."""
    rx, ry = sps.rankdata(x, axis=-1), sps.rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(axis=-1, keepdims=True), ry - ry.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=-1) / np.sqrt((rx ** 2).sum(axis=-1) * (ry ** 2).sum(axis=-1))


def tau_b_batch(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair ([batch, n]): sum sign(dx) sign(dy) / sqrt(pairs untied in x x pairs
    untied in y), over all pairs."""
    sx = np.sign(x[..., :, None] - x[..., None, :])
    sy = np.sign(y[..., :, None] - y[..., None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sx * sy).sum(axis=(-2, -1)) / np.sqrt((sx ** 2).sum(axis=(-2, -1)) * (sy ** 2).sum(axis=(-2, -1)))


def _association(x: np.ndarray, y: np.ndarray, n_resamples: int, level: float, seed: int = 0) -> dict:
    """rho, its permutation p (two-sided, pairings) and percentile bootstrap CI; the concordance and its CI."""
    rng = np.random.default_rng(seed)
    rho = float(rho_batch(x[None], y[None])[0])
    permuted = np.stack([rng.permutation(y) for _ in range(n_resamples)])
    null = rho_batch(np.broadcast_to(x, permuted.shape), permuted)
    p = (1 + np.sum(np.abs(null) >= abs(rho) - 1e-12)) / (n_resamples + 1)
    idx = rng.integers(0, len(x), size=(n_resamples, len(x)))
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    boot_rho = rho_batch(x[idx], y[idx])
    boot_c = (1 + tau_b_batch(x[idx], y[idx])) / 2
    return {"rho": rho, "p_value": float(p), "rho_low": float(np.nanpercentile(boot_rho, tails[0])),
            "rho_high": float(np.nanpercentile(boot_rho, tails[1])),
            "concordance": float((1 + tau_b_batch(x[None], y[None])[0]) / 2),
            "concordance_low": float(np.nanpercentile(boot_c, tails[0])),
            "concordance_high": float(np.nanpercentile(boot_c, tails[1]))}


def quality_correlations(frame: pd.DataFrame, diagnostics=CHEAP + MODEL_BASED, outcomes=tuple(OUTCOMES),
                         n_resamples: int = 1000, level: float = 0.95) -> pd.DataFrame:
    """Per (method, diagnostic, outcome): n runs, Spearman's rho with a percentile bootstrap CI over runs
    (resamples with a constant column left out) and a Monte Carlo permutation p, and the concordance
    (1 + tau_b) / 2 with its bootstrap CI. Groups with fewer than 4 runs or a constant column give NaN."""
    rows = []
    for label, part in frame.groupby("method_label", sort=True):
        for diagnostic in diagnostics:
            if diagnostic not in part:
                continue
            for outcome in outcomes:
                if outcome not in part:
                    continue
                data = part[[diagnostic, outcome]].dropna()
                x, y = data[diagnostic].astype(float).to_numpy(), _outcome(data[outcome], outcome)
                row = {"method_label": label, "diagnostic": diagnostic, "outcome": OUTCOMES[outcome], "n": len(x),
                       "rho": np.nan, "rho_low": np.nan, "rho_high": np.nan, "p_value": np.nan,
                       "concordance": np.nan, "concordance_low": np.nan, "concordance_high": np.nan}
                if len(x) >= 4 and np.ptp(x) > 0 and np.ptp(y) > 0:
                    row.update(_association(x, y, n_resamples, level))
                rows.append(row)
    return pd.DataFrame(rows)
