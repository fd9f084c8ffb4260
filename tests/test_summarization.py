"""Summarization evaluation (issue #20): datasets, prompts and truncation, batched greedy generation against a
plain greedy loop, the metrics against independent re-derivations, the NLI score against a direct computation,
runs and the store, and the verdict rules on simulated nulls."""
from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from calib_lib.errors import InvalidInput, Unavailable
from calib_lib.evaluate import generation, nli, summary_metrics
from calib_lib.evaluate.summarization import SummarizationEval, selected_documents
from calib_lib.models.tiny import build_tiny_model, build_tokenizer


# -- metrics ------------------------------------------------------------------------------------------------

def algorithm_1(document: list[str], summary: list[str]) -> list[list[str]]:
    """Grusky, Naaman & Artzi (2018), Algorithm 1, line by line (0-based): for each summary position i, scan the
    document with j; on a match extend to <i', j'>, keep the longest, continue the scan at j'."""
    fragments, i = [], 0
    while i < len(summary):
        f, j = [], 0
        while j < len(document):
            if summary[i] == document[j]:
                i2, j2 = i, j
                while i2 < len(summary) and j2 < len(document) and summary[i2] == document[j2]:
                    i2, j2 = i2 + 1, j2 + 1
                if len(f) < i2 - i:
                    f = summary[i:i2]
                j = j2
            else:
                j += 1
        i += max(len(f), 1)
        if f:
            fragments.append(f)
    return fragments


def test_fragments_follow_the_papers_algorithm_on_random_texts():
    rng = random.Random(0)
    vocab = list("abcdefg")
    for _ in range(600):
        doc = [rng.choice(vocab[:rng.randint(2, 7)]) for _ in range(rng.randint(0, 30))]
        summ = [rng.choice(vocab) for _ in range(rng.randint(1, 15))]
        assert summary_metrics.fragments(doc, summ) == algorithm_1(doc, summ)
    # starts inside a match are not tried: the exhaustive longest match would be [a a b]
    assert summary_metrics.fragments(list("aaab"), list("aab")) == [["a", "a"], ["b"]]


def test_coverage_density_and_novel_ngrams_by_hand():
    doc = "The cat sat on the mat. It was warm."
    summ = "The cat sat on a warm mat"
    # fragments: [the cat sat on] [warm] [mat]; 'a' is novel
    scores = summary_metrics.fragment_scores(doc, summ)
    assert scores["coverage"] == pytest.approx(6 / 7)
    assert scores["density"] == pytest.approx((16 + 1 + 1) / 7)
    assert scores["compression"] == pytest.approx(9 / 7)
    assert summary_metrics.novel_ngrams(doc, summ, 1) == pytest.approx(1 / 7)
    # bigrams: the cat, cat sat, sat on | on a, a warm, warm mat -> 3 of 6 novel
    assert summary_metrics.novel_ngrams(doc, summ, 2) == pytest.approx(3 / 6)
    assert np.isnan(summary_metrics.novel_ngrams(doc, "cat", 2))
    assert np.isnan(summary_metrics.fragment_scores(doc, "")["coverage"])


def test_rouge_and_entity_scores():
    assert summary_metrics.rouge("the cat sat", "the cat sat")["rouge2"] == pytest.approx(1.0)
    assert summary_metrics.rouge("the cats sat", "the cat sat")["rouge1"] == pytest.approx(1.0)   # stemmed
    doc = "Prime Minister  Tony Blair met the BBC in London on Monday."
    got = summary_metrics.entity_scores(doc, ["tony blair", "London", "Paris", "2022"])
    assert (got["entities"], got["unsupported_entities"]) == (4, 2) and got["entity_hallucination"] == 0.5
    assert np.isnan(summary_metrics.entity_scores(doc, [])["entity_hallucination"])
    # word boundaries: "10" is not in "100", "May" not in "mayor"; an entity without a word is not counted
    got = summary_metrics.entity_scores("In 2010 the mayor spent 100 dollars.", ["10", "May", "2010", "$"])
    assert (got["entities"], got["unsupported_entities"]) == (3, 2)


def test_the_recogniser_finds_entities_offline():
    from calib_lib.evaluate.ner import recognizer
    got = recognizer().entities(["Apple bought a London firm for $1 billion on Monday.", ""])
    assert "Apple" in got[0] and "London" in got[0] and got[1] == []


def test_sentences():
    assert summary_metrics.sentences("He left. She stayed at 3.5 p.m. today! Why? OK") == [
        "He left.", "She stayed at 3.5 p.m. today!", "Why?", "OK"]
    assert summary_metrics.sentences('He said "Go." Then (it rained.) Next') == ['He said "Go."', "Then (it rained.)",
                                                                              "Next"]


# -- NLI ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_nli(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast
    path = tmp_path_factory.mktemp("nli")
    tok = build_tokenizer()
    tok = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, unk_token="<unk>", pad_token="<pad>",
                                  cls_token="<s>", sep_token="</s>")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=3,
                        id2label={0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"},
                        label2id={"ENTAILMENT": 0, "NEUTRAL": 1, "CONTRADICTION": 2})
    BertForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_nli_consistency_equals_a_direct_summac_zs_computation(tiny_nli):
    tokenizer, model, entail, contra = nli.load_nli(tiny_nli)
    assert (entail, contra) == (0, 2)
    pairs = [("The cat sat. The dog ran away. It rained.", "The cat sat. It was sunny."),
             ("One sentence only.", "A claim."), ("Some text.", "")]
    got = nli.consistency(pairs, tiny_nli, batch_size=3)

    def one(premise, hypothesis):
        enc = tokenizer(premise, hypothesis, return_tensors="pt", truncation=True, max_length=nli.MAX_PAIR_TOKENS)
        with torch.no_grad():
            p = torch.softmax(model(**enc).logits, -1)[0]
        return float(p[0] - p[2])
    expected = []
    for doc, summ in pairs[:2]:
        premises, hyps = summary_metrics.sentences(doc), summary_metrics.sentences(summ)
        expected.append(np.mean([max(one(p, h) for p in premises) for h in hyps]))
    np.testing.assert_allclose(got[:2], expected, atol=1e-5)
    assert np.isnan(got[2])


def test_an_albert_nli_folder_with_only_a_sentencepiece_model_loads_and_scores(tmp_path):
    """SummaC's default model (tals/albert-xlarge-vitaminc-mnli) ships its tokenizer as ``spiece.model`` with no
    ``tokenizer.json``: reading it needs the sentencepiece package, which requirements.txt pins. Without it the
    folder would load as 'unavailable' and every summary would go without its NLI score."""
    import sentencepiece as spm
    from transformers import AlbertConfig, AlbertForSequenceClassification
    corpus = tmp_path / "corpus.txt"
    words = "the cat sat on a mat and the dog ran away while it rained all day".split()
    rng = np.random.default_rng(0)
    corpus.write_text("\n".join(" ".join(rng.choice(words, 10)) for _ in range(300)))
    folder = tmp_path / "albert-nli"
    folder.mkdir()
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "spiece"), vocab_size=30,
                                   pad_id=0, unk_id=1, bos_id=2, eos_id=3, minloglevel=2,
                                   control_symbols=["[CLS]", "[SEP]", "[MASK]"])
    torch.manual_seed(0)
    config = AlbertConfig(vocab_size=30, embedding_size=16, hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=64, num_labels=3,
                          id2label={0: "entailment", 1: "neutral", 2: "contradiction"},
                          label2id={"entailment": 0, "neutral": 1, "contradiction": 2})
    AlbertForSequenceClassification(config).save_pretrained(folder)
    (folder / "spiece.model").write_bytes((tmp_path / "spiece.model").read_bytes())
    assert not (folder / "tokenizer.json").exists()
    tokenizer, model, entail, contra = nli.load_nli(str(folder))
    assert (entail, contra) == (0, 2)
    encoded = tokenizer("the cat sat", "the dog ran")["input_ids"]
    assert encoded[0] == tokenizer.cls_token_id and encoded.count(tokenizer.sep_token_id) == 2
    scores = nli.consistency([("The cat sat. The dog ran.", "The cat sat.")], str(folder))
    assert -1 <= scores[0] <= 1


def test_a_named_nli_model_that_is_missing_is_refused_with_the_reason(tmp_path):
    with pytest.raises(Unavailable, match="cannot be loaded"):
        nli.check_nli(str(tmp_path / "no-such-model"))
    nli.check_nli("auto")          # auto: recorded as unavailable at scoring time instead
    nli.check_nli(None)


# -- prompts, truncation, generation ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = build_tiny_model("llama")
    return model, tokenizer


def test_truncation_keeps_the_head_and_counts_it(tiny):
    _, tok = tiny
    doc = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)
    p = generation.build_prompt(tok, "plain", doc, 64)
    assert len(p.input_ids) <= 64 and p.truncated and p.kept_tokens < p.document_tokens
    assert doc.startswith(p.source[:30])
    short = generation.build_prompt(tok, "plain", "the quick brown fox", 64)
    assert not short.truncated and short.source == "the quick brown fox"
    with pytest.raises(InvalidInput, match="empty document"):
        generation.build_prompt(tok, "plain", "  ", 64)
    with pytest.raises(InvalidInput, match="allow at least"):
        generation.build_prompt(tok, "plain", doc, 12)


def test_chat_prompt_needs_a_template(tiny):
    _, tok = tiny
    assert generation.prompt_mode(tok, "auto") == "plain"
    with pytest.raises(InvalidInput, match="no chat template.*prompt: plain"):
        generation.prompt_mode(tok, "chat", "tiny-llama")


def greedy_without_cache(model, ids: list[int], steps: int) -> list[int]:
    out = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([out])).logits[0, -1]
            out.append(int(torch.argmax(logits)))
    return out[len(ids):]


def test_batched_cached_generation_equals_a_plain_greedy_loop(tiny):
    model, tok = tiny
    docs = ["the quick brown fox jumps over the lazy dog", "It was the best of times, it was the worst of times.",
            "Numbers such as 10 and 2024 appear in text too, as do names and places and dates."]
    records, cost = generation.generate_summaries(model, tok, docs, max_new_tokens=6, max_input_tokens=64,
                                                  batch_size=2, progress=False)
    newline, blank = generation._line_tokens(tok)
    eos = {tok.eos_token_id, model.generation_config.eos_token_id} - {None}
    for doc, record in zip(docs, records):
        prompt = generation.build_prompt(tok, "plain", doc, 64).input_ids
        expected = greedy_without_cache(model, prompt, 6)
        cut, has_text = expected, False             # the documented stopping rules, applied by hand
        for n, t in enumerate(expected):
            if t in eos:
                cut = expected[:n]
                break
            if newline[t] and has_text:
                cut = expected[:n + 1]
                break
            has_text = has_text or not blank[t]
        assert record["generated_tokens"] == len(cut)
        assert record["generation"] == tok.decode(cut, skip_special_tokens=True)
    assert cost["documents"] == 3 and cost["generated_tokens"] == sum(r["generated_tokens"] for r in records)
    again, _ = generation.generate_summaries(model, tok, docs, max_new_tokens=6, max_input_tokens=64, batch_size=2,
                                             progress=False)
    assert [r["generation"] for r in again] == [r["generation"] for r in records]


def test_line_end_criterion_stops_after_text_only():
    newline = torch.tensor([False, True, False, True])       # ids 1 and 3 hold a line break; 3 is only "\n"
    blank = torch.tensor([False, False, True, True])          # 2 is a space
    stop = generation._LineEnd(1, newline, blank)
    ids = torch.tensor([[9 % 4, 3, 2, 0], [0, 2, 0, 3], [0, 3, 3, 2]]).clamp(max=3)
    assert stop(ids, None).tolist() == [False, True, False]


def test_summary_is_the_first_sentence_of_the_first_line():
    assert generation._cut("\n  The firm grew. It then fell.\nMore") == "The firm grew."
    assert generation._cut("   ") == ""


# -- datasets -----------------------------------------------------------------------------------------------

def test_xsum_construction():
    from calib_lib.data.summarization import xsum_pair
    words = " ".join(["word"] * 60)
    pair = xsum_pair("a/1.txt", f"Title here\n\nThe intro sentence of the story.\n\n{words}\n\nMore body.")
    assert pair.reference == "The intro sentence of the story." and pair.document == f"{words}\n\nMore body."
    assert xsum_pair("a/2.txt", "Title\n\nOnly an intro paragraph here.") is None


def test_bbc_xsum_is_the_news_sources_held_out_part_and_never_in_a_pool():
    from calib_lib.data.corpora import pypi_news
    from calib_lib.data.summarization import get_dataset
    data = get_dataset("bbc-xsum")
    corpus = pypi_news()
    pool = "\x00".join(corpus.pool)
    assert 150 < len(data.documents) <= len(corpus.heldout)
    for d in data.documents[:40]:
        assert d.reference not in pool and d.document[:200] not in pool
    assert [d.doc_id for d in data.documents] == sorted(d.doc_id for d in data.documents)


def test_aclsum_pairs_and_detokenisation():
    from calib_lib.data.summarization import aclsum_pair, detokenize, get_dataset
    assert detokenize("a model , which ( 2 ) is n't bad .") == "a model, which (2) isn't bad."
    record = {"id": "x", "summary": {"challenge": "C.", "approach": "A.", "outcome": "O."},
              "sentences": {"abstract": ["We do it ."], "introduction": ["First , this ."], "conclusion": []}}
    pair = aclsum_pair(record)
    assert pair.reference == "C. A. O." and pair.document == "We do it.\n\nFirst, this."
    data = get_dataset("aclsum")
    assert len(data.documents) == 250 and all(d.document and d.reference for d in data.documents)


def test_a_dataset_with_an_empty_document_or_a_repeated_id_is_refused():
    from calib_lib.data.summarization import SummaryDataset, SummaryDocument, check_documents
    ok = SummaryDocument("a", "text", "ref")
    for docs, message in (((ok, SummaryDocument("b", "  ", "ref")), "document 'b': empty document"),
                          ((ok, SummaryDocument("c", "text", "")), "document 'c': empty reference summary"),
                          ((ok, ok), "'a' appears twice")):
        with pytest.raises(InvalidInput, match=message):
            check_documents(SummaryDataset("x", "", "", "", docs))
    with pytest.raises(InvalidInput, match="unknown summarization dataset 'xsum'"):
        from calib_lib.data.summarization import get_dataset
        get_dataset("xsum")


def test_seeded_document_subset():
    cfg = SummarizationEval(datasets=("bbc-xsum",), documents=5, seed=3)
    a, b = selected_documents(cfg, "bbc-xsum"), selected_documents(cfg, "bbc-xsum")
    assert [i for i, _ in a] == [i for i, _ in b] and len(a) == 5 and [i for i, _ in a] == sorted(i for i, _ in a)
    assert [i for i, _ in selected_documents(SummarizationEval(documents=5, seed=4), "bbc-xsum")] != [i for i, _ in a]


# -- specs, runs and the store ------------------------------------------------------------------------------

SUMMARY = {"datasets": ["bbc-xsum"], "documents": 3, "max_new_tokens": 5, "max_input_tokens": 96, "batch_size": 2,
           "nli_model": None}


def spec_data(**suite):
    return {"model": "tiny-llama", "method": {"name": "wanda", "sparsity": 0.5},
            "calibration": {"source": "wikipedia", "num_samples": 2, "seq_len": 32},
            "eval": {"name": "s", "ppl_texts": [], "tasks": [], **suite}}


def test_suites_without_summaries_keep_their_keys_and_fields_are_checked():
    from calib_lib.evaluate.suite import SUITES
    from calib_lib.runs.spec import SpecError, parse_spec
    assert "summarization" not in SUITES["quick"].to_dict()
    plain = parse_spec(spec_data())
    with_summaries = parse_spec(spec_data(summarization=SUMMARY))
    assert plain.key != with_summaries.key and "summary_metrics" in with_summaries.versions()
    assert "summary_metrics" not in plain.versions()
    for bad, path in (({**SUMMARY, "documents": 0}, "eval.summarization.documents"),
                      ({**SUMMARY, "datasets": ["xsum"]}, r"eval.summarization.datasets\[0\]"),
                      ({**SUMMARY, "prompt": "shout"}, "eval.summarization.prompt"),
                      ({**SUMMARY, "beams": 4}, "eval.summarization.beams")):
        with pytest.raises(SpecError, match=path):
            parse_spec(spec_data(summarization=bad))
    with pytest.raises(SpecError, match="pruned vocabulary"):
        parse_spec({**spec_data(summarization=SUMMARY), "vocabulary": "suite"})


def test_a_run_stores_its_summaries_and_a_chat_prompt_without_template_stores_nothing(tmp_path):
    from calib_lib.runs.spec import parse_spec
    from calib_lib.runs.store import Store
    from calib_lib.runs.sweep import run_specs
    store = Store(tmp_path / "runs.sqlite", archive=tmp_path / "runs")
    spec = parse_spec(spec_data(summarization=SUMMARY))
    run_specs([spec], store, progress=False)
    docs = store.summaries([spec.key])
    assert len(docs) == 3 and set(docs["dataset"]) == {"bbc-xsum"} and docs["summary"].map(type).eq(str).all()
    assert {"rouge1", "coverage", "entity_hallucination", "nli_consistency", "truncated"} <= set(docs.columns)
    frame = store.frame()
    nli_row = frame[(frame["kind"] == "summary") & (frame["metric"] == "nli_consistency")].iloc[0]
    assert "not asked for" in nli_row["note"]
    record = store.get(spec.key)
    assert record["generation"]["bbc-xsum"]["documents"] == 3
    with pytest.raises(Exception, match="no per-document|perplexity windows only|no task"):
        store.choices([spec.key])
    bad = parse_spec(spec_data(summarization={**SUMMARY, "prompt": "chat"}))
    run_specs([bad], store, progress=False)
    failed = store.get(bad.key)
    assert failed["status"] != "done" and "no chat template" in json.dumps(failed)
    with pytest.raises(Exception, match="no generated summaries|no per-document records"):
        store.summaries([bad.key])


def test_a_sweep_with_a_named_nli_model_that_is_missing_starts_no_run(tmp_path):
    from calib_lib.runs.spec import parse_spec
    from calib_lib.runs.store import Store
    from calib_lib.runs.sweep import run_specs
    store = Store(tmp_path / "runs.sqlite", archive=tmp_path / "runs")
    spec = parse_spec(spec_data(summarization={**SUMMARY, "nli_model": str(tmp_path / "missing-nli")}))
    with pytest.raises(Unavailable, match="NLI model .*missing-nli cannot be loaded"):
        run_specs([spec], store, progress=False)
    assert store.get(spec.key) is None and not list((tmp_path / "runs").glob("*.zip"))


def test_a_sweep_refuses_only_the_runs_whose_summaries_cannot_be_scored(tmp_path):
    from calib_lib.runs.spec import parse_spec
    from calib_lib.runs.store import Store
    from calib_lib.runs.sweep import run_specs
    store = Store(tmp_path / "runs.sqlite", archive=tmp_path / "runs")
    good = parse_spec(spec_data())
    bad = parse_spec(spec_data(summarization={**SUMMARY, "nli_model": str(tmp_path / "missing-nli")}))
    with pytest.warns(UserWarning, match="refused before starting"):
        summary = run_specs([good, bad], store, progress=False)
    assert summary["done"] == 1 and summary["failed"] == 1
    assert store.get(good.key)["status"] == "done" and "missing-nli" in store.get(bad.key)["error"]


def test_auto_nli_is_decided_when_the_spec_is_made(monkeypatch):
    from calib_lib.evaluate import nli as nli_module
    from calib_lib.runs.spec import parse_spec
    monkeypatch.setattr(nli_module, "auto_choice", lambda: (None, "not cached, hub unreachable"))
    offline = parse_spec(spec_data(summarization={**SUMMARY, "nli_model": "auto"}))
    assert offline.suite.summarization.nli_model is None
    assert offline.key == parse_spec(spec_data(summarization={**SUMMARY, "nli_model": None})).key
    assert "hub unreachable" in offline.suite.summarization._nli_unavailable
    monkeypatch.setattr(nli_module, "auto_choice", lambda: (nli_module.DEFAULT_NLI_MODEL, ""))
    online = parse_spec(spec_data(summarization={**SUMMARY, "nli_model": "auto"}))
    assert online.suite.summarization.nli_model == nli_module.DEFAULT_NLI_MODEL and online.key != offline.key


# -- the rules on simulated nulls ---------------------------------------------------------------------------

def _docs(effect: float, n_docs: int, rng, runs_per_method=5, noise=0.2, set_sd=0.0):
    rows = []
    base = rng.uniform(0.2, 0.8, n_docs)
    for d in range(n_docs):
        rows.append({"model": "m", "dataset": "x", "method_label": "dense", "source": "none", "set_index": -1,
                     "key": "dense", "doc_id": d, "coverage": base[d]})
    for r in range(runs_per_method):
        values = base + effect + rng.normal(0, set_sd) + rng.normal(0, noise, n_docs)
        for d in range(n_docs):
            rows.append({"model": "m", "dataset": "x", "method_label": "wanda 50%", "source": "news", "set_index": r,
                         "key": f"w{r}", "doc_id": d, "coverage": values[d]})
    return pd.DataFrame(rows)


def test_claim_rule_rarely_holds_under_the_null_and_decides_with_enough_documents():
    from calib_lib.study import summarization as s
    metric = {"coverage": ("", +1, 0.03, "S2")}
    rng = np.random.default_rng(0)
    verdicts = [s.published_claims(_docs(0.0, 40, rng), metric)["verdict"].iloc[0] for _ in range(200)]
    assert verdicts.count("holds") / len(verdicts) <= 0.05          # one-sided: ~2.5% expected
    # a set-to-set spread (the calibration sets differ, the method does not): the runs are the replicates
    spread = [s.published_claims(_docs(0.0, 60, rng, noise=0.05, set_sd=0.05), metric)["verdict"].iloc[0]
              for _ in range(200)]
    assert spread.count("holds") / len(spread) <= 0.05
    one_set = s.published_claims(_docs(0.2, 40, rng, runs_per_method=1), metric).iloc[0]
    assert "one calibration set" in one_set["note"]
    big = s.published_claims(_docs(0.1, 200, rng, noise=0.1), metric).iloc[0]
    assert big["verdict"] == "holds" and big["effect_low"] > 0
    none = s.published_claims(_docs(0.0, 400, rng, noise=0.05), metric).iloc[0]
    assert none["verdict"] == "does not hold" and none["effect_high"] < 0.03
    small = s.published_claims(_docs(0.0, 12, rng, noise=0.3), metric).iloc[0]
    assert small["verdict"] == "cannot decide" and small["documents_needed"] > 12
    few = s.published_claims(_docs(0.3, s.MIN_DOCUMENTS - 1, rng, noise=0.01), metric).iloc[0]
    assert few["verdict"] == "cannot decide" and "fewer than" in few["note"]


def test_claims_figure_labels_each_model_and_dataset_once_and_says_why_a_row_is_blank():
    """Two (model, dataset) groups, each in the legend once whichever point comes first; a method whose every
    comparison has too few paired documents gets a note in its row instead of nothing."""
    import matplotlib
    matplotlib.use("Agg")
    from calib_lib.study import summarization as s
    rng = np.random.default_rng(3)
    docs = pd.concat([_docs(0.1, 40, rng).assign(model=model) for model in ("m1", "m2")], ignore_index=True)
    few = _docs(0.1, s.MIN_DOCUMENTS - 2, rng).query("method_label != 'dense'").assign(method_label="sparsegpt 50%")
    docs = pd.concat([docs, few.assign(model="m1"), few.assign(model="m2")], ignore_index=True)
    claims = s.published_claims(docs, {"coverage": ("", +1, 0.03, "S2")})
    # the first method of each group has no estimate: the old rule labelled only a group's point on it
    claims = pd.concat([claims[claims["method_label"] == "sparsegpt 50%"],
                        claims[claims["method_label"] != "sparsegpt 50%"]], ignore_index=True)
    fig = s.effects_figure(claims, title="t", subtitle="s")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["m1 / x", "m2 / x"]
    notes = [t.get_text() for t in fig.axes[0].texts]
    assert notes == [f"not estimated: {s.MIN_DOCUMENTS - 2} paired docs (< {s.MIN_DOCUMENTS})"]


def test_claims_figure_legend_follows_the_groups_and_an_empty_panel_keeps_the_margin_scale():
    import matplotlib
    matplotlib.use("Agg")
    from calib_lib.study import summarization as s

    def row(metric, model, effect):
        return {"claim": "S2", "metric": metric, "model": model, "dataset": "x", "method_label": "wanda 50%",
                "effect": effect, "effect_low": effect - 0.01, "effect_high": effect + 0.01, "documents": 40,
                "verdict": "cannot decide"}
    nan = float("nan")
    claims = pd.DataFrame([row("coverage", "m1", nan), row("coverage", "m2", 0.02),       # m2 draws first
                           row("novel_2grams", "m1", 0.01), row("novel_2grams", "m2", 0.03),
                           row("entity_hallucination", "m1", nan), row("entity_hallucination", "m2", nan)])
    fig = s.effects_figure(claims, title="t", subtitle="s")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["m1 / x", "m2 / x"]
    empty = next(ax for ax in fig.axes if ax.get_title().startswith("entity_hallucination"))
    margin = s.CLAIM_METRICS["entity_hallucination"][2]
    assert empty.get_xlim() == (-2 * margin, 2 * margin)
    assert [t.get_text() for t in empty.texts] == ["not estimated"]          # 40 documents: no count given


def test_runs_figure_legend_has_dense_and_every_source_even_if_the_first_panel_lacks_them():
    import matplotlib
    matplotlib.use("Agg")
    from calib_lib.study import summarization as s
    runs = pd.DataFrame([
        {"model": "m1", "dataset": "x", "method_label": "dense", "source": "none", "a": np.nan, "b": 0.5},
        {"model": "m1", "dataset": "x", "method_label": "wanda 50%", "source": "news", "a": np.nan, "b": 0.4},
        {"model": "m1", "dataset": "x", "method_label": "wanda 50%", "source": "wikipedia", "a": 0.2, "b": 0.3}])
    fig = s.runs_figure(runs, ["a", "b"], title="t", subtitle="s")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["dense", "news", "wikipedia"]


def test_source_rule_rarely_finds_an_effect_under_the_null():
    from calib_lib.study import summarization as s
    metric = {"coverage": ("", +1, 0.03, "S2")}
    rng = np.random.default_rng(1)
    found = 0
    for _ in range(300):
        runs = pd.DataFrame([{"model": "m", "dataset": "x", "method_label": "wanda 50%", "source": src,
                              "set_index": k, "coverage": rng.normal(0.8, 0.02)}
                             for src in ("news", "code", "wikipedia") for k in range(3)])
        found += s.source_effect(runs, metric)["verdict"].iloc[0] == "holds"
    assert found / 300 <= 0.075
    one_set = pd.DataFrame([{"model": "m", "dataset": "x", "method_label": "w", "source": src, "set_index": 0,
                             "coverage": 0.5} for src in ("news", "code")])
    row = s.source_effect(one_set, metric).iloc[0]
    assert row["verdict"] == "cannot decide" and "one set per source" in row["note"]
