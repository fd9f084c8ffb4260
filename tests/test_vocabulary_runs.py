"""Vocabulary pruning as a run (issue #19 item 5): a spec names the step and where its ids come from; the key,
validation, store entry and tables treat it as every other run; what it records is checked against independent
formulations (KL(pruned || unpruned) from the pruned model's own log-softmax, renormalisation lowering every
covered window's NLL, coverage from the kept set); the scoring rules for pruned answers are checked by hand."""
import math

import numpy as np
import pytest
import torch

from calib_lib.errors import InvalidInput
from calib_lib.evaluate.vocabulary import expected_accuracy, kl_to_unpruned, target_coverage
from calib_lib.models.tiny import build_tiny_model
from calib_lib.runs import SpecError, Store, parse_spec, run_specs
from calib_lib.study.tables import wide
from conftest import mirror_available

TINY_EVAL = {"ppl_texts": ["news"], "ppl_windows": 2, "ppl_seq_len": 32}
TASK_EVAL = {**TINY_EVAL, "tasks": ["copa"], "task_limit": 8, "optional_tasks": True}
CAL = {"source": "news", "num_samples": 2, "seq_len": 32}


def spec(**over):
    return parse_spec({"model": "tiny-llama", "method": "dense", "eval": TINY_EVAL, **over})


# -- the spec ------------------------------------------------------------------------------------------------

def test_a_vocabulary_step_has_its_own_key_and_leaves_other_keys_alone():
    plain = spec()
    assert "vocabulary" not in plain.normalized() and "vocabulary" not in plain.versions()
    suite = spec(vocabulary="suite")
    assert suite.key != plain.key and suite.normalized()["vocabulary"] == {"ids": "suite"}
    assert suite.versions()["vocabulary"] >= 1 and suite.label().endswith("[vocab: suite]")
    assert spec(vocabulary={"ids": "suite"}).key == suite.key                 # shorthand = mapping
    cal = spec(vocabulary={"ids": "calibration", "calibration": CAL})
    top = spec(vocabulary={"ids": "frequent", "k": 100, "calibration": CAL})
    assert len({suite.key, cal.key, top.key}) == 3
    assert "vocabulary_source" in cal.versions() and "top-100 of news/2x32/set0" in top.label()


def test_a_calibration_vocabulary_defaults_to_the_run_s_own_set_written_out_in_the_key():
    data = {"method": {"name": "wanda", "sparsity": 0.5}, "calibration": CAL}
    implicit = spec(**data, vocabulary="calibration")
    explicit = spec(**data, vocabulary={"ids": "calibration", "calibration": CAL})
    assert implicit.key == explicit.key
    assert implicit.normalized()["vocabulary"]["calibration"]["source"] == "news"


@pytest.mark.parametrize("vocabulary, path, words", [
    ("everything", "vocabulary.ids", "unknown vocabulary origin"),
    ({"ids": "suite", "k": 5}, "vocabulary.k", "remove k"),
    ({"ids": "suite", "calibration": CAL}, "vocabulary.calibration", "remove calibration"),
    ("calibration", "vocabulary.calibration", "has none"),             # dense: no calibration set to borrow
    ({"ids": "frequent", "calibration": CAL}, "vocabulary.k", "missing"),
    ({"ids": "frequent", "calibration": CAL, "k": 0}, "vocabulary.k", "positive"),
    ({"ids": "calibration", "calibration": CAL, "k": 3}, "vocabulary.k", "frequent only"),
    ({"ids": "calibration", "calibration": {**CAL, "source": "nowhere"}}, "vocabulary.calibration.source",
     "unknown calibration source"),
    ({"ids": "calibration", "calibration": {**CAL, "seq_len": 10**6}}, "vocabulary.calibration.seq_len",
     "exceed the context"),
    ({"ids": "suite", "extra": 1}, "vocabulary.extra", "unknown vocabulary field"),
    (7, "vocabulary", "give the vocabulary"),
])
def test_bad_vocabulary_specs_name_the_field(vocabulary, path, words):
    with pytest.raises(SpecError) as err:
        spec(vocabulary=vocabulary)
    assert err.value.path == path and words in str(err.value)


# -- scoring rules for pruned answers ----------------------------------------------------------------------

def test_expected_accuracy_breaks_ties_uniformly_and_coverage_flags_unscorable_golds():
    inf = -math.inf
    # doc 0: clear win for gold 1; doc 1: all -inf (4 choices), gold 2; doc 2: gold 0 tied with choice 1;
    # doc 3: gold 1 is -inf, choice 0 finite; doc 4: a loglikelihood task (gold -1)
    loglik = [-3, -1, inf, inf, inf, inf, -2, -2, -5, -1, inf, -4]
    gold, n = [1, 2, 0, 1, -1], [2, 4, 3, 2, 1]
    acc = expected_accuracy(loglik, gold, n)
    assert acc[:4].tolist() == [1.0, 0.25, 0.5, 0.0] and math.isnan(acc[4])
    assert target_coverage(loglik, gold, n).tolist() == [True, False, True, False, True]


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
@pytest.mark.parametrize("inputs_kept", [True, False])
def test_kl_to_unpruned_is_the_kl_of_the_two_models_computed_independently(architecture, inputs_kept):
    """sum_kept q log(q / p) from the two models' full log-softmaxes; with every input token kept it is also
    -log(mass p puts on the kept ids), without it the fallback inputs move it off that."""
    import copy

    from calib_lib.compress.vocabulary import ids_from_tokens, prune_vocabulary
    dense, tokenizer = build_tiny_model(architecture)
    windows = torch.randint(3, dense.config.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))
    ids = ids_from_tokens(windows if inputs_kept else windows[:, :8])
    pruned = copy.deepcopy(dense)
    record = prune_vocabulary(pruned, ids, tokenizer)
    sums, counts = kl_to_unpruned(pruned, dense, windows, batch_size=2)
    assert record.oov_tokens == 0                          # its forwards are not counted as evaluation input
    with torch.no_grad():
        dense_logits = dense(windows).logits[:, :-1].double()
        logp = torch.log_softmax(dense_logits, -1)
        logq = torch.log_softmax(pruned(windows).logits[:, :-1].double(), -1)
    q = logq.exp()
    terms = torch.where(q > 0, q * (logq - logp), torch.zeros_like(q)).sum(-1)
    assert counts.tolist() == [15, 15, 15]
    np.testing.assert_allclose(sums, terms.sum(-1).numpy(), rtol=1e-4, atol=1e-6)
    kept_mass = -(torch.logsumexp(dense_logits[..., record.kept_ids], -1) - torch.logsumexp(dense_logits, -1))
    assert np.allclose(sums, kept_mass.sum(-1).numpy(), rtol=1e-4) == inputs_kept
    with pytest.raises(InvalidInput, match="first model must be vocabulary-pruned"):
        kl_to_unpruned(dense, pruned, windows)


# -- the run ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vocabulary_runs(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("vocab") / "r.sqlite")
    eval_ = TASK_EVAL if mirror_available() else TINY_EVAL
    specs = {name: parse_spec({"model": "tiny-llama", "method": "dense", "eval": eval_, **extra})
             for name, extra in (("dense", {}), ("suite", {"vocabulary": "suite"}),
                                 ("calibration", {"vocabulary": {"ids": "calibration", "calibration": CAL}}),
                                 ("frequent", {"vocabulary": {"ids": "frequent", "k": 40, "calibration": CAL}}))}
    summary = run_specs(list(specs.values()), store, progress=False)
    assert summary["failed"] == 0, [store.get(s.key).get("error") for s in specs.values()]
    return store, specs


def test_a_suite_vocabulary_run_records_its_cut_and_only_lowers_perplexity(vocabulary_runs):
    store, specs = vocabulary_runs
    record = store.get(specs["suite"].key)
    vocab = record["vocabulary"]
    assert vocab["ids"] == "suite" and 0 < vocab["kept"] < vocab["vocab_size"]
    assert vocab["model_parameters_after"] < vocab["model_parameters_before"]
    assert (vocab["model_parameters_before"] - vocab["model_parameters_after"]
            == vocab["parameters_before"] - vocab["parameters_after"])     # only the embedding (tied) shrank
    assert set(vocab["coverage"].values()) == {1.0} and vocab["oov_input_tokens"] == 0
    docs = store.documents([specs["dense"].key, specs["suite"].key])
    windows = docs[docs["kind"] == "perplexity"].pivot_table(index="doc_id", columns="key", values="nll")
    # renormalising over kept tokens can only raise a covered target's probability
    assert (windows[specs["suite"].key] <= windows[specs["dense"].key] + 1e-6).all()
    metrics = {(m["name"], m["metric"]): m["value"] for m in record["metrics"]}
    assert metrics[("news", "kl_to_unpruned")] > 0 and ("news", "kl_mean") not in metrics
    assert metrics[("news", "token_coverage")] == 1.0


def test_calibration_vocabularies_count_what_they_miss_and_tables_name_them(vocabulary_runs):
    store, specs = vocabulary_runs
    cal, top = (store.get(specs[name].key)["vocabulary"] for name in ("calibration", "frequent"))
    assert cal["calibration_tokens"] == 64 and top["data_ids"] <= 40 and top["kept"] < cal["kept"]
    assert cal["coverage"]["perplexity/news"] < 1.0 and cal["oov_input_tokens"] > 0
    table = wide(store).set_index("key")
    assert table.loc[specs["dense"].key, "method_label"] == "dense"
    assert table.loc[specs["suite"].key, "method_label"] == "dense + vocab: suite"
    assert table.loc[specs["calibration"].key, "vocabulary"] == "vocab: news/2x32/set0"
    # a text the kept set does not cover has infinite perplexity: the pruned model cannot produce its tokens
    assert math.isinf(table.loc[specs["calibration"].key, "ppl:news"])


def test_a_vocabulary_run_repeats_exactly(vocabulary_runs, tmp_path):
    store, specs = vocabulary_runs
    other = Store(tmp_path / "again.sqlite")
    run_specs([specs["frequent"]], other, progress=False)
    strip = lambda r: [{k: v for k, v in m.items() if k != "seconds"} for m in r["metrics"]]   # noqa: E731
    assert strip(other.get(specs["frequent"].key)) == strip(store.get(specs["frequent"].key))
