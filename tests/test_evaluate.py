"""Evaluation: perplexity protocol, suites, and offline task prompts identical to lm-eval's built-ins."""
import gzip
import json
import math
from pathlib import Path

import lm_eval
import numpy as np
import pytest
import torch
from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks._yaml_loader import load_yaml

from calib_lib.evaluate import SUITES, Suite, TaskUnavailableError, evaluate, make_windows, perplexity
from calib_lib.evaluate.tasks import MIRROR_FILES, offline_config
from calib_lib.paths import mirror_dir
from conftest import mirror_available

needs_mirror = pytest.mark.skipif(not mirror_available(), reason="CALIB_MIRROR is not set (CI sets it)")
BUILTIN_YAML = {
    "arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml",
    "boolq": "super_glue/boolq/default.yaml", "hellaswag": "hellaswag/hellaswag.yaml",
    "lambada_openai": "lambada/lambada_openai.yaml", "openbookqa": "openbookqa/openbookqa.yaml",
    "piqa": "piqa/piqa.yaml", "rte": "super_glue/rte/default.yaml", "winogrande": "winogrande/default.yaml",
    "copa": "super_glue/copa/default.yaml",
}


def test_perplexity_matches_hand_computation(tiny_llama):
    model, _ = tiny_llama
    windows = torch.randint(4, 300, (3, 16), generator=torch.Generator().manual_seed(0))
    result = perplexity(model, windows, batch_size=2, progress=False)
    with torch.no_grad():
        nll = 0.0
        for row in windows:
            logp = torch.log_softmax(model(row[None]).logits[0, :-1].float(), -1)
            nll -= logp.gather(1, row[1:, None]).sum().item()
    assert result.scored_tokens == 3 * 15
    assert result.perplexity == pytest.approx(math.exp(nll / 45), rel=1e-5)


def test_windows_are_non_overlapping_and_checked():
    ids = torch.arange(100)
    w = make_windows(ids, 30, 3)
    assert w[1, 0] == 30 and w.shape == (3, 30)
    with pytest.raises(ValueError, match="holds only 3"):
        make_windows(ids, 30, 4)


def test_window_longer_than_context_fails_before_compute(tiny_llama):
    model, tok = tiny_llama
    with pytest.raises(ValueError, match="longer than the model's context"):
        evaluate(model, tok, Suite("x", ("news",), 1, 4096))


def test_unknown_task_and_suite_fail_clearly(tiny_llama):
    model, tok = tiny_llama
    with pytest.raises(ValueError, match="unknown task"):
        evaluate(model, tok, Suite("x", (), tasks=("mmlu_nope",)))
    with pytest.raises(ValueError, match="unknown evaluation suite"):
        evaluate(model, tok, "huge")


def test_unavailable_task_names_the_mirror_variable(tiny_llama, monkeypatch):
    model, tok = tiny_llama
    monkeypatch.delenv("CALIB_MIRROR", raising=False)
    with pytest.raises(TaskUnavailableError, match="CALIB_MIRROR"):
        evaluate(model, tok, Suite("x", ("news",), 1, 32, tasks=("piqa",)))
    records = evaluate(model, tok, Suite("x", ("news",), 1, 32, tasks=("piqa",), optional_tasks=True), progress=False)
    assert [r["metric"] for r in records] == ["skipped", "perplexity"]


def test_heldout_perplexity_is_deterministic_and_records_token_count(tiny_llama):
    model, tok = tiny_llama
    suite = Suite("x", ("news", "books"), 2, 32)
    a = evaluate(model, tok, suite, progress=False)
    b = evaluate(model, tok, suite, progress=False)
    assert [r["value"] for r in a] == [r["value"] for r in b]
    assert all(r["n"] == 2 * 31 for r in a)


# -- offline task configs against lm-eval's built-in definitions ---------------------------------

def _mirror_docs(task, n=5):
    path = mirror_dir() / MIRROR_FILES[task]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(next(fh)) for _ in range(n)]


def _to_hub_format(task, doc):
    """The same document in the fields of the hub dataset lm-eval's built-in task reads."""
    letters = "ABCDEFGH"
    if task in ("arc_easy", "arc_challenge"):
        return {"question": doc["query"].removeprefix("Question: "), "answerKey": letters[doc["gold"]],
                "choices": {"text": doc["choices"], "label": list(letters[:len(doc["choices"])])}}
    if task == "openbookqa":
        return {"question_stem": doc["query"], "answerKey": letters[doc["gold"]],
                "choices": {"text": doc["choices"], "label": list(letters[:len(doc["choices"])])}}
    if task == "boolq":
        return {**doc, "label": int(doc["label"])}
    if task == "rte":
        return {**doc, "label": 0 if doc["label"] == "entailment" else 1}
    if task == "lambada_openai":
        return {"text": doc["context"] + " " + doc["continuation"]}
    if task == "hellaswag":
        head, sep, tail = doc["ctx"].rpartition(". ")
        ctx_a, ctx_b = (head + ".", tail) if sep else (doc["ctx"], "")
        return {"activity_label": doc["activity_label"], "ctx_a": ctx_a, "ctx_b": ctx_b,
                "endings": doc["endings"], "label": str(doc["label"])}
    return doc


def _task(config, docs, path):
    path.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    config = {k: v for k, v in config.items()
              if k not in ("dataset_name", "training_split", "validation_split", "test_split", "tag",
                           "fewshot_split", "dataset_kwargs")}
    config.update(dataset_path="json", dataset_kwargs={"data_files": {"test": str(path)}}, test_split="test")
    return ConfigurableTask(config=config)


def _requests(task):
    out = []
    for doc in task.test_docs():
        out.append((task.doc_to_text(doc), task.doc_to_target(doc),
                    task.doc_to_choice(doc) if task.OUTPUT_TYPE == "multiple_choice" else None))
    return out


@needs_mirror
@pytest.mark.parametrize("task", sorted(BUILTIN_YAML))
def test_offline_prompts_match_lm_eval_builtin(task, tmp_path):
    docs = _mirror_docs(task)
    builtin = load_yaml(Path(lm_eval.__file__).parent / "tasks" / BUILTIN_YAML[task])
    ours = offline_config(task)
    theirs_task = _task(builtin, [_to_hub_format(task, d) for d in docs], tmp_path / "hub.jsonl")
    ours_task = _task(ours, docs, tmp_path / "ours.jsonl")
    assert _requests(ours_task) == _requests(theirs_task)
    assert {m["metric"] for m in ours["metric_list"]} == {m["metric"] for m in builtin["metric_list"]}
    assert ours_task.OUTPUT_TYPE == theirs_task.OUTPUT_TYPE


@needs_mirror
def test_task_limit_is_a_seeded_subset_identical_across_runs(tiny_llama):
    model, tok = tiny_llama
    suite = Suite("x", (), tasks=("copa",), task_limit=12)
    a = evaluate(model, tok, suite, progress=False)
    b = evaluate(model, tok, suite, progress=False)
    assert a[0]["n"] == 12 and [r["value"] for r in a] == [r["value"] for r in b]
    config = offline_config("copa", limit=12, seed=1)
    other = offline_config("copa", limit=12, seed=2)
    from datasets import load_dataset
    ds = load_dataset("json", data_files=str(mirror_dir() / MIRROR_FILES["copa"]), split="train")
    assert config["process_docs"](ds)["idx"] != other["process_docs"](ds)["idx"]


@needs_mirror
def test_tiny_suite_records_every_metric(tiny_llama):
    model, tok = tiny_llama
    records = evaluate(model, tok, "tiny", progress=False)
    kinds = {(r["name"], r["metric"]) for r in records}
    assert ("wikitext2", "perplexity") in kinds and ("arc_easy", "acc_norm") in kinds
    assert ("mean", "acc") in kinds
    assert all(r["stderr"] is not None for r in records if r["kind"] == "task" and r["name"] != "mean")
    assert SUITES["quick"].task_limit == 200


@needs_mirror
def test_the_subset_is_taken_before_a_task_maps_its_documents_with_the_same_result():
    """HellaSwag's document function runs on the scored subset only: the documents are those of mapping all
    10k first and then selecting (what lm-eval's own order would give), with their ids in the full file."""
    from datasets import load_dataset
    from calib_lib.evaluate.tasks import DOC_ID, hellaswag_docs
    ds = load_dataset("json", data_files=str(mirror_dir() / MIRROR_FILES["hellaswag"]), split="train")
    subset = offline_config("hellaswag", 30, 1234)["process_docs"](ds)
    everything = hellaswag_docs(ds.add_column(DOC_ID, list(range(len(ds)))))
    chosen = sorted(np.random.default_rng(1234).choice(len(ds), size=30, replace=False).tolist())
    assert [dict(d) for d in subset] == [dict(d) for d in everything.select(chosen)]
    assert subset[DOC_ID] == chosen
