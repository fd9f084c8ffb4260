"""Per-document records (issue #16): stored with every run, framed by Store.documents(), and the
aggregates equal to lm-eval's own numbers on the same documents; numerical-noise replicates."""
import numpy as np
import pandas as pd
import pytest

from calib_lib import stats
from calib_lib.errors import InvalidInput, StoreError
from calib_lib.evaluate.records import DocumentBlock, pack_blocks, task_block, unpack_blocks
from calib_lib.runs import Store, parse_spec, run_specs
from calib_lib.runs.spec import REPLICATE_BATCH_SIZES, check_replicates, replicates
from conftest import mirror_available

needs_mirror = pytest.mark.skipif(not mirror_available(), reason="needs CALIB_MIRROR (lm-eval task files)")

TINY_EVAL = {"ppl_texts": ["news"], "ppl_windows": 2, "ppl_seq_len": 32}


def _docs():
    return [{"doc_id": 7, "gold": 1, "loglik": [-3.0, -1.0, -2.0], "tokens": [2, 3, 1], "chars": [4, 6, 2],
             "greedy": [False, True, False], "correct": 1.0, "correct_norm": 0.0},
            {"doc_id": 2, "gold": 0, "loglik": [-5.0, -4.0], "tokens": [4, 4], "chars": [8, 8],
             "greedy": [False, False], "correct": 0.0, "correct_norm": 0.0}]


def test_a_task_block_round_trips_and_frames_documents_and_choices():
    block = task_block("arc_easy", _docs())
    again, = unpack_blocks(pack_blocks([block]))
    assert again.kind == "task" and again.name == "arc_easy"
    for name, column in block.columns.items():
        np.testing.assert_array_equal(again.columns[name], column)
    rows = pd.DataFrame(again.rows())
    assert rows["doc_id"].tolist() == [2, 7]                       # sorted by the stable id
    assert rows["gold_loglik"].tolist() == [-5.0, -1.0]
    assert rows["best_other_loglik"].tolist() == [-4.0, -2.0]     # the best wrong choice
    assert rows["tokens"].tolist() == [4, 3]                       # the gold continuation's tokens
    assert rows["nll"].isna().all() and rows["kl_sum"].isna().all()
    choices = pd.DataFrame(again.choice_rows())
    assert len(choices) == 5 and choices["is_gold"].sum() == 2
    assert choices.loc[choices["doc_id"] == 7, "chars"].tolist() == [4, 6, 2]


def test_a_loglikelihood_task_has_no_other_choice_and_windows_have_no_choices():
    block = task_block("lambada_openai", [{"doc_id": 0, "gold": -1, "loglik": [-2.5], "tokens": [1], "chars": [5],
                                           "greedy": [True], "correct": 1.0, "correct_norm": float("nan")}])
    rows = block.rows()
    assert rows["gold_loglik"][0] == -2.5 and np.isnan(rows["best_other_loglik"][0])
    windows = DocumentBlock("perplexity", "news", {"doc_id": np.arange(2), "nll": np.array([3.0, 4.0]),
                                                   "tokens": np.array([31, 31])})
    assert np.isnan(windows.rows()["kl_sum"]).all()
    with pytest.raises(InvalidInput, match="windows, not choices"):
        windows.choice_rows()
    with pytest.raises(InvalidInput, match="missing columns"):
        DocumentBlock("perplexity", "news", {"doc_id": np.arange(2)})


def test_store_keeps_documents_with_the_run_and_frames_them(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    block = task_block("arc_easy", _docs())
    store.put("k1", "failed", "x", {"a": 1}, {"error": "boom"})
    store.put("k1", "done", "x", {"a": 1}, {"metrics": [], "documents": pack_blocks([block])})
    store.put("k1", "failed", "x", {"a": 1}, {"error": "late", "documents": pack_blocks([block, block])})
    assert "documents" not in store.get("k1")                     # kept in their own table, not the record
    frame = store.documents()
    assert frame[["key", "kind", "name"]].drop_duplicates().values.tolist() == [["k1", "task", "arc_easy"]]
    assert len(frame) == 2 and frame["correct"].tolist() == [0.0, 1.0]
    assert len(store.choices()) == 5
    reader = Store(tmp_path / "s.sqlite", read_only=True)
    assert len(reader.documents()) == 2


def test_a_store_without_records_says_how_to_get_them(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.put("k1", "done", "x", {"a": 1}, {"metrics": []})
    with pytest.raises(StoreError, match="no per-document records.*rerun"):
        store.documents()
    with pytest.raises(StoreError, match="for the runs asked for"):
        Store(tmp_path / "s.sqlite", read_only=True).documents(keys=["other"])


def test_runs_record_windows_and_the_frame_adds_up_to_the_perplexity(tmp_path):
    run = parse_spec({"model": "tiny-llama", "method": {"name": "wanda", "sparsity": 0.5},
                      "calibration": {"source": "news", "num_samples": 4, "seq_len": 32}, "eval": TINY_EVAL})
    store = Store(tmp_path / "r.sqlite")
    run_specs([run], store, progress=False)
    docs = store.documents()
    assert set(docs["kind"]) == {"perplexity"} and len(docs) == 2
    ppl, = [m["value"] for m in store.get(run.key)["metrics"] if m["metric"] == "perplexity"]
    assert np.exp(docs["nll"].sum() / docs["tokens"].sum()) == pytest.approx(ppl, rel=1e-9)


@needs_mirror
def test_task_aggregates_are_the_means_of_the_stored_documents(tmp_path):
    suite = {"ppl_texts": [], "tasks": ["arc_easy", "lambada_openai", "winogrande", "copa"], "task_limit": 8}
    run = parse_spec({"model": "tiny-llama", "method": "dense", "eval": suite})
    store = Store(tmp_path / "t.sqlite")
    run_specs([run], store, progress=False)
    docs = store.documents()
    metrics = {(m["name"], m["metric"]): m["value"] for m in store.get(run.key)["metrics"]}
    for task, rows in docs.groupby("name"):
        assert len(rows) == 8 and rows["doc_id"].is_unique
        assert rows["correct"].mean() == pytest.approx(metrics[(task, "acc")], abs=1e-12)
        if (task, "acc_norm") in metrics:
            assert rows["correct_norm"].mean() == pytest.approx(metrics[(task, "acc_norm")], abs=1e-12)
    lambada = docs[docs["name"] == "lambada_openai"]
    assert np.exp(-lambada["gold_loglik"].mean()) == pytest.approx(metrics[("lambada_openai", "perplexity")])
    # acc is the gold choice beating every other one (ties aside)
    mc = docs[docs["name"].isin(["arc_easy", "winogrande", "copa"])]
    assert ((mc["gold_loglik"] > mc["best_other_loglik"]).astype(float) == mc["correct"]).all()
    # the documents are identified in the task's full file: the same seeded subset gives the same ids
    again = Store(tmp_path / "u.sqlite")
    run_specs([run], again, progress=False)
    pd.testing.assert_frame_equal(docs.drop(columns=["key"]).reset_index(drop=True),
                                  again.documents().drop(columns=["key"]).reset_index(drop=True))


# -- numerical-noise replicates ------------------------------------------------------------------------------

def test_replicates_differ_only_in_float_order_and_have_their_own_keys():
    base = parse_spec({"model": "tiny-llama", "method": {"name": "gptq", "bits": 3},
                       "calibration": {"source": "news", "num_samples": 4, "seq_len": 32}, "eval": TINY_EVAL})
    group = replicates(base, 2)
    assert [s.replicate for s in group] == [0, 1, 2]
    assert [s.batch_size for s in group] == [8] + [b for b in REPLICATE_BATCH_SIZES if b != 8][:2]
    assert len({s.key for s in group}) == 3
    assert "replicate" not in base.normalized()                    # a plain run keeps its key
    assert "replicate1(batch 4)" in group[1].label()
    check_replicates([s.normalized() for s in group])
    other = parse_spec({**{k: v for k, v in base.normalized().items() if k != "calibration"},
                        "calibration": {"source": "books", "num_samples": 4, "seq_len": 32}})
    with pytest.raises(InvalidInput, match="differ in calibration.*replicates"):
        check_replicates([base.normalized(), other.normalized()])
    with pytest.raises(InvalidInput, match="at least two"):
        check_replicates([base.normalized()])
    with pytest.raises(InvalidInput, match="replicate"):
        parse_spec({**base.normalized(), "replicate": -1})


def test_a_replicate_sweep_measures_the_floor_of_each_method(tmp_path):
    specs = []
    for method in ({"name": "magnitude", "sparsity": 0.5}, {"name": "sparsegpt", "sparsity": 0.5}):
        data = {"model": "tiny-llama", "method": method, "eval": TINY_EVAL,
                "calibration": {"source": "news", "num_samples": 8, "seq_len": 32}}
        specs += replicates(parse_spec(data), 2)
    store = Store(tmp_path / "n.sqlite")
    run_specs(specs, store, progress=False)
    frame = store.frame()
    frame = frame[frame["metric"] == "perplexity"].assign(log_ppl=lambda f: np.log(f["value"]))
    assert sorted(frame["replicate"].unique()) == [0, 1, 2]
    floors = {m: stats.noise_floor(rows, "log_ppl", ["method"]) for m, rows in frame.groupby("method")}
    assert floors["magnitude"]["sd"] == 0.0                        # data-free: the dither has nothing to act on
    assert floors["sparsegpt"]["configs"] == 1 and floors["sparsegpt"]["runs"] == 3


def test_runs_measure_kl_to_the_dense_model_computed_before_compression(tmp_path, isolated_cache):
    suite = {**TINY_EVAL, "kl_to_dense": True}
    dense = parse_spec({"model": "tiny-llama", "method": "dense", "eval": suite})
    pruned = parse_spec({"model": "tiny-llama", "method": {"name": "magnitude", "sparsity": 0.5}, "eval": suite})
    store = Store(tmp_path / "kl.sqlite")
    run_specs([pruned, dense], store, progress=False)        # the pruned run first: it computes the reference
    metrics = {(r["key"], m["metric"]): m["value"] for r in store.records() for m in r["metrics"]}
    assert metrics[(dense.key, "kl_mean")] == pytest.approx(0.0, abs=1e-6)
    assert metrics[(dense.key, "top1_agreement")] == 1.0
    assert metrics[(pruned.key, "kl_mean")] > 0 and metrics[(pruned.key, "top1_agreement")] < 1.0
    docs = store.documents(keys=[pruned.key])
    # the windows keep the unbiased tail-sampled sums; the mean is never below them (it is the merged lower
    # bound where, near KL 0 as on this random tiny model, the estimate falls under that bound)
    assert metrics[(pruned.key, "kl_mean")] >= docs["kl_sum"].sum() / docs["tokens"].sum() - 1e-12
    assert list(isolated_cache.glob("**/*.npz"))               # the reference is cached, not recomputed per run


def test_dither_moves_values_by_at_most_one_ulp_seeded_by_replicate_and_block():
    import torch
    from calib_lib.compress.pipelines import dither
    hidden = [torch.randn(3, 8, 16), torch.randn(1, 8, 16)]
    once = dither(hidden, 1, 0)
    assert all(torch.equal(a, b) for a, b in zip(once, dither(hidden, 1, 0)))        # seeded: reproducible
    assert not torch.equal(once[0], dither(hidden, 2, 0)[0])                          # another replicate
    assert not torch.equal(once[0], dither(hidden, 1, 1)[0])                          # another block
    for before, after in zip(hidden, once):
        up = torch.abs(torch.nextafter(before, torch.full_like(before, float("inf"))) - before)
        down = torch.abs(torch.nextafter(before, torch.full_like(before, -float("inf"))) - before)
        ulp = torch.maximum(up, down)
        assert torch.all((after - before).abs() <= ulp * 1.0001)                      # one unit in the last place
        assert 0.55 < (after != before).float().mean() < 0.78                         # two thirds move
