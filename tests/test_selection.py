"""Calibration selectors at a fixed token budget (issue #21): each returns exactly the requested shape, is
reproducible for a seed and never overlaps another set index; greedy coverage against the plain loop; the
mixture's exact shares; bad input."""
import numpy as np
import pytest

from calib_lib.data.sampling import CalibrationSpec, NotEnoughDataError, sample
from calib_lib.data.strategies import candidate_windows, greedy_coverage
from calib_lib.errors import FieldError

WORDS = [f"w{i}" for i in range(300)]


@pytest.fixture
def corpus_file(tmp_path):
    """60 documents with Zipfian word frequencies, each tagged with a marker word."""
    rng = np.random.default_rng(0)
    p = 1 / np.arange(1, len(WORDS) + 1)
    docs = [f"marker{i:03d} " + " ".join(rng.choice(WORDS, size=int(rng.integers(80, 400)), p=p / p.sum()))
            for i in range(60)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs))
    return path


def _spec(path, **kw):
    return CalibrationSpec(**{"source": "custom", "path": str(path), "num_samples": 5, "seq_len": 32, **kw})


def _overlap(a, b):
    return any(da == db and sa < eb and sb < ea for da, sa, ea in a for db, sb, eb in b)


def _plain_greedy(token_sets, n):
    """The textbook loop, written independently: most new tokens, then the larger set, then the earlier one."""
    sets = [set(map(int, t)) for t in token_sets]
    covered, picks, alive = set(), [], list(range(len(sets)))
    for _ in range(n):
        best = max(alive, key=lambda i: (len(sets[i] - covered), len(sets[i]), -i))
        picks.append(best)
        alive.remove(best)
        covered |= sets[best]
    return picks


def test_lazy_greedy_coverage_equals_the_plain_loop():
    rng = np.random.default_rng(1)
    for _ in range(300):
        count = int(rng.integers(2, 30))
        sets = [rng.integers(0, int(rng.integers(3, 40)), size=int(rng.integers(1, 20))) for _ in range(count)]
        n = int(rng.integers(1, count + 1))
        assert greedy_coverage(sets, n) == _plain_greedy(sets, n)


def test_greedy_coverage_on_a_known_case():
    sets = [np.array([1, 2, 3, 4]), np.array([1, 2, 3]), np.array([5, 6]), np.array([4, 5, 6, 7]), np.array([1])]
    # [4,5,6,7] ties [1,2,3,4] at 4 new tokens and size; the earlier wins; then [4,5,6,7] adds 3; then [1,2,3]
    # and [5,6] add nothing: the larger set first
    assert greedy_coverage(sets, 4) == [0, 3, 1, 2]


@pytest.mark.parametrize("strategy", ["coverage"])
def test_selector_sets_are_exact_reproducible_and_disjoint(corpus_file, tiny_llama, strategy):
    _, tok = tiny_llama
    sets = [sample(_spec(corpus_file, strategy=strategy, set_index=k), tok) for k in range(3)]
    for cal in sets:
        assert tuple(cal.input_ids.shape) == (5, 32)
        assert len(set(cal.windows)) == 5
    for i in range(3):
        for j in range(i + 1, 3):
            assert not _overlap(sets[i].windows, sets[j].windows)
    again = sample(_spec(corpus_file, strategy=strategy, set_index=1), tok)
    assert again.fingerprint == sets[1].fingerprint
    other_seed = sample(_spec(corpus_file, strategy=strategy, set_index=1, seed=7), tok)
    assert other_seed.fingerprint != sets[1].fingerprint


def test_coverage_picks_greedily_from_its_own_candidate_block(corpus_file, tiny_llama):
    from calib_lib.data.sources import get_source
    from calib_lib.data.tokenized import tokenize_documents
    _, tok = tiny_llama
    spec = _spec(corpus_file, strategy="coverage", candidates=6, set_index=1)
    cal = sample(spec, tok)
    docs, _, key = get_source("custom").pool(spec)
    tokenized = tokenize_documents(docs, tok, cache_key=key)
    block = candidate_windows(tokenized, spec)
    assert len(block) == 30 and set(cal.windows) <= set(block)
    # the picks are greedy coverage over the block's rows, in pick order
    rows = [tokenized.doc(d)[s:e] for d, s, e in block]
    assert cal.windows == [block[i] for i in greedy_coverage(rows, 5)]
    # and the block is the random strategy's set 1 at 30 samples: the same seeded sequence of windows
    assert block == sample(_spec(corpus_file, set_index=1, num_samples=30), tok).windows
    # the candidates multiplier enters the spec's key; the random strategy's key is unchanged by the field
    assert spec.normalized()["candidates"] == 6 and "candidates" not in _spec(corpus_file).normalized()


def test_too_many_candidates_names_the_fix(corpus_file, tiny_llama):
    _, tok = tiny_llama
    with pytest.raises(NotEnoughDataError, match="lower candidates"):
        sample(_spec(corpus_file, strategy="coverage", candidates=1000), tok)


def test_mix_gives_exact_shares_and_disjoint_sets(corpus_file, tiny_llama):
    _, tok = tiny_llama
    spec = CalibrationSpec("mix", num_samples=7, seq_len=32, mix={"wikipedia": 0.3, "news": 0.7})
    counts = spec.source_entry.counts(spec)
    assert counts == {"news": 5, "wikipedia": 2}                          # 4.9 -> 5, 2.1 -> 2
    sets = [sample(CalibrationSpec("mix", num_samples=7, seq_len=32, set_index=k,
                                   mix={"wikipedia": 0.3, "news": 0.7}), tok) for k in range(2)]
    for cal in sets:
        assert tuple(cal.input_ids.shape) == (7, 32)
        assert sorted(w[0] for w in cal.windows) == ["news"] * 5 + ["wikipedia"] * 2
    for source in ("news", "wikipedia"):
        a = [w[1:] for w in sets[0].windows if w[0] == source]
        b = [w[1:] for w in sets[1].windows if w[0] == source]
        assert not _overlap(a, b)
    # each component's rows are that source's own set at its share (then put in a seeded order)
    news = sample(CalibrationSpec("news", num_samples=5, seq_len=32), tok)
    rows = {tuple(r) for r in sets[0].input_ids.tolist()}
    assert {tuple(r) for r in news.input_ids.tolist()} <= rows
    assert sample(spec, tok).fingerprint == sets[0].fingerprint
    # the same mixture given in another order is the same spec
    assert CalibrationSpec("mix", 7, 32, mix={"news": 0.7, "wikipedia": 0.3}).normalized() == spec.normalized()


def test_uniform_mix_and_a_single_component():
    spec = CalibrationSpec("mix", num_samples=8, seq_len=32, mix={"news": 1 / 3, "code": 1 / 3, "books": 1 / 3})
    assert sum(spec.source_entry.counts(spec).values()) == 8
    assert spec.source_entry.counts(spec) == {"books": 3, "code": 3, "news": 2}
    assert CalibrationSpec("mix", 4, 32, mix={"news": 1.0, "code": 0.0}).source_entry.counts(
        CalibrationSpec("mix", 4, 32, mix={"news": 1.0, "code": 0.0})) == {"code": 0, "news": 4}


@pytest.mark.parametrize("kwargs, message", [
    (dict(source="mix"), "needs mix="),
    (dict(source="mix", mix={"news": 1.2, "code": -0.2}), r"in \[0, 1\]"),
    (dict(source="mix", mix={"news": 0.5, "code": 0.4}), "sum to 1"),
    (dict(source="mix", mix={"news": 0.5, "nowhere": 0.5}), "not a source one can mix"),
    (dict(source="mix", mix={"news": 0.5, "mix": 0.5}), "not a source one can mix"),
    (dict(source="news", mix={"news": 1.0}), "applies to source 'mix' only"),
    (dict(source="news", strategy="coverage", candidates=0), "candidates must be a positive integer"),
])
def test_bad_selection_specs(kwargs, message):
    with pytest.raises(FieldError, match=message):
        CalibrationSpec(**{"num_samples": 4, "seq_len": 32, **kwargs})


def test_mix_run_key_carries_its_components_versions():
    from calib_lib.runs.spec import component_versions, parse_spec
    spec = parse_spec({"model": "tiny-llama", "method": {"name": "wanda", "sparsity": 0.5}, "eval": "tiny",
                       "calibration": {"source": "mix", "num_samples": 4, "seq_len": 32,
                                       "mix": {"news": 0.5, "code": 0.5}}})
    versions = component_versions(spec)
    assert set(versions["mix_sources"]) == {"news", "code"} and versions["strategy"] == 1
    plain = parse_spec({"model": "tiny-llama", "method": {"name": "wanda", "sparsity": 0.5}, "eval": "tiny",
                        "calibration": {"source": "news", "num_samples": 4, "seq_len": 32}})
    assert set(component_versions(plain)) == {"model_loading", "evaluation", "method", "pipeline", "source", "strategy"}


# -- model-based selectors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["activation-kmeans", "least-perplexity"])
def test_model_selectors_are_exact_reproducible_and_disjoint(corpus_file, tiny_llama, strategy):
    model, tok = tiny_llama
    sets = [sample(_spec(corpus_file, strategy=strategy, set_index=k), tok, model) for k in range(3)]
    for cal in sets:
        assert tuple(cal.input_ids.shape) == (5, 32) and len(set(cal.windows)) == 5
    for i in range(3):
        for j in range(i + 1, 3):
            assert not _overlap(sets[i].windows, sets[j].windows)
    assert sample(_spec(corpus_file, strategy=strategy, set_index=2), tok, model).fingerprint == sets[2].fingerprint
    with pytest.raises(Exception, match="pass model="):
        sample(_spec(corpus_file, strategy=strategy), tok)


def test_least_perplexity_keeps_the_lowest_against_a_direct_loss(corpus_file, tiny_llama):
    import torch

    from calib_lib.data.selection import window_perplexities
    from calib_lib.data.sources import get_source
    from calib_lib.data.tokenized import tokenize_documents
    model, tok = tiny_llama
    spec = _spec(corpus_file, strategy="least-perplexity", candidates=3)
    docs, _, key = get_source("custom").pool(spec)
    tokenized = tokenize_documents(docs, tok, cache_key=key)
    block = candidate_windows(tokenized, spec)
    rows = [tokenized.doc(d)[s:e] for d, s, e in block]
    scores = window_perplexities(model, rows, batch_size=4)
    with torch.no_grad():                          # one row at a time, the model's own loss
        direct = [float(torch.exp(model(torch.as_tensor(r)[None], labels=torch.as_tensor(r)[None]).loss)) for r in rows]
    np.testing.assert_allclose(scores, direct, rtol=1e-4)
    cal = sample(spec, tok, model)
    assert cal.windows == [block[i] for i in np.argsort(direct, kind="stable")[:5]]


def test_kmeans_medoids_finds_separated_clusters_and_refuses_too_many():
    from calib_lib.data.selection import kmeans_medoids
    from calib_lib.errors import InvalidInput
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=float)
    points = np.concatenate([c + 0.1 * rng.standard_normal((6, 2)) for c in centres])
    picks = kmeans_medoids(points, 4, seed=3)
    assert len(set(picks)) == 4 and sorted(p // 6 for p in picks) == [0, 1, 2, 3]   # one per cluster
    for p in picks:                                                                  # each its cluster's medoid
        group = points[(p // 6) * 6:(p // 6 + 1) * 6]
        assert np.argmin(((group - group.mean(axis=0)) ** 2).sum(axis=1)) == p % 6
    assert kmeans_medoids(points, 4, seed=3) == picks
    assert len(set(kmeans_medoids(np.zeros((5, 2)), 3))) == 3        # coincident points: still 3 distinct picks
    with pytest.raises(InvalidInput, match="raise candidates"):
        kmeans_medoids(points, 30)


def test_activation_features_follow_cola_layerwise_normalisation(tiny_llama):
    import torch

    from calib_lib.data.selection import _mlp_modules, activation_features
    model, _ = tiny_llama
    rows = [np.arange(3, 19) + i for i in range(3)]
    layers = len(_mlp_modules(model))
    assert layers == model.config.num_hidden_layers
    wide = activation_features(model, rows, dim=layers * model.config.hidden_size)
    assert wide.shape == (3, layers * model.config.hidden_size)
    # the same features by hand: hooks on each layer's MLP, token means, per-layer L2 norm, the seeded projection
    captured = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: captured.append(o.float().mean(dim=1))) for m in _mlp_modules(model)]
    with torch.no_grad():
        model(torch.as_tensor(np.stack(rows)))
    for h in hooks:
        h.remove()
    raw = torch.cat([torch.nn.functional.normalize(c, dim=-1) for c in captured], dim=-1).numpy()
    from calib_lib.data.strategies import seeded_rng
    d = raw.shape[1]
    projection = seeded_rng(0, "activation-projection", d, d).standard_normal((d, d)) / np.sqrt(d)
    np.testing.assert_allclose(wide, raw.astype(np.float64) @ projection, rtol=1e-5, atol=1e-6)


# -- self-generation from prefixes with a perplexity filter (Ji et al.) ----------------------------------------

def test_self_prefix_rows_continue_real_prefixes_of_disjoint_windows(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("CALIB_CACHE", str(tmp_path / "cache"))
    model, tok = tiny_llama
    spec = CalibrationSpec("self-prefix", num_samples=4, seq_len=24, prefix_source="news", prefix_tokens=6,
                           filter_share=0.5)
    cal = sample(spec, tok, model, progress=False)
    assert tuple(cal.input_ids.shape) == (4, 24)
    prefixes = sample(CalibrationSpec("news", num_samples=8, seq_len=6), tok).input_ids.tolist()
    heads = [row[1:7] for row in cal.input_ids.tolist()]
    assert all(row[0] == tok.bos_token_id for row in cal.input_ids.tolist())
    assert all(h in prefixes for h in heads) and len({tuple(h) for h in heads}) == 4
    again = sample(spec, tok, model, progress=False)                                # cached, identical
    assert again.fingerprint == cal.fingerprint
    other = sample(CalibrationSpec("self-prefix", num_samples=4, seq_len=24, prefix_source="news", prefix_tokens=6,
                                   filter_share=0.5, set_index=1), tok, model, progress=False)
    other_heads = {tuple(row[1:7]) for row in other.input_ids.tolist()}
    assert not other_heads & {tuple(h) for h in heads}                              # disjoint prefixes per set


def test_self_prefix_filter_drops_the_highest_perplexity(tiny_llama, tmp_path, monkeypatch):
    import torch

    from calib_lib.data import selfgen
    from calib_lib.data.selection import window_perplexities
    monkeypatch.setenv("CALIB_CACHE", str(tmp_path / "cache"))
    model, tok = tiny_llama
    captured = {}
    original = selfgen.generate_rows

    def spy(*args, **kwargs):
        captured["rows"] = original(*args, **kwargs)
        return captured["rows"]

    monkeypatch.setattr(selfgen, "generate_rows", spy)
    spec = CalibrationSpec("self-prefix", num_samples=3, seq_len=20, prefix_source="news", prefix_tokens=4,
                           filter_share=0.4)
    cal = sample(spec, tok, model, progress=False)
    generated = captured["rows"]
    assert len(generated) == 5                                                      # ceil(3 / 0.6)
    scores = window_perplexities(model, list(generated.numpy()))
    expected = generated[sorted(range(5), key=lambda i: (scores[i], i))[:3]]
    assert torch.equal(cal.input_ids, expected)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prefix_source=None), "needs prefix_source="),
    (dict(prefix_source="random-vocab"), "needs prefix_source="),
    (dict(prefix_source="news", filter_share=1.0), "would drop every generation"),
    (dict(prefix_source="news", filter_share=-0.1), r"in \[0, 1\)"),
    (dict(prefix_source="news", prefix_tokens=31), "prefix_tokens must be"),
    (dict(prefix_source="news", stopword_first=True), "applies to BOS-started"),
])
def test_bad_self_prefix_specs(kwargs, message):
    with pytest.raises(FieldError, match=message):
        CalibrationSpec("self-prefix", num_samples=4, seq_len=32, **kwargs)


# -- one sample per document, chat-template formatting -----------------------------------------------------------

def test_document_start_takes_each_documents_first_tokens(corpus_file, tiny_llama):
    from calib_lib.data.sources import get_source
    from calib_lib.data.tokenized import tokenize_documents
    _, tok = tiny_llama
    sets = [sample(_spec(corpus_file, strategy="document-start", set_index=k), tok) for k in range(3)]
    docs, _, key = get_source("custom").pool(sets[0].spec)
    tokenized = tokenize_documents(docs, tok, cache_key=key)
    for cal in sets:
        assert tuple(cal.input_ids.shape) == (5, 32)
        for row, (d, s, e) in zip(cal.input_ids.tolist(), cal.windows):
            assert (s, e) == (0, 32) and row == tokenized.doc(d)[:32].tolist()
    used = [{w[0] for w in cal.windows} for cal in sets]
    assert not (used[0] & used[1] or used[0] & used[2] or used[1] & used[2])      # one document, one set
    assert sample(_spec(corpus_file, strategy="document-start", set_index=1), tok).fingerprint == sets[1].fingerprint


def test_chat_template_formats_each_document_as_a_user_turn(corpus_file, tiny_llama):
    import copy
    _, tok = tiny_llama
    with pytest.raises(Exception, match="has no chat template"):
        sample(_spec(corpus_file, strategy="document-start", chat_template=True), tok)
    chat = copy.deepcopy(tok)
    chat.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} [end]{% endfor %}"
    formatted = sample(_spec(corpus_file, strategy="document-start", chat_template=True), chat)
    plain = sample(_spec(corpus_file, strategy="document-start"), chat)
    for row, plain_row in zip(formatted.input_ids.tolist(), plain.input_ids.tolist()):
        assert chat.decode(row).startswith("[user] marker") and not chat.decode(plain_row).startswith("[user]")
    assert formatted.fingerprint != plain.fingerprint
    assert formatted.spec.normalized()["chat_template"] is True and "chat_template" not in plain.spec.normalized()
    with pytest.raises(FieldError, match="formats a corpus's documents"):
        CalibrationSpec("self", num_samples=4, seq_len=32, chat_template=True)


@pytest.mark.parametrize("kwargs", [dict(strategy="coverage"), dict(strategy="activation-kmeans"),
                                    dict(strategy="least-perplexity"), dict(strategy="document-start"),
                                    dict(strategy="document-start", chat_template=True)])
def test_every_selector_is_exact_reproducible_and_disjoint(corpus_file, tiny_llama, kwargs):
    """The contract of issue #21 for every selector that cuts a corpus (mix and self-prefix have their own)."""
    import copy
    model, tok = tiny_llama
    if kwargs.get("chat_template"):
        tok = copy.deepcopy(tok)
        tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    sets = [sample(_spec(corpus_file, set_index=k, **kwargs), tok, model) for k in range(3)]
    assert all(tuple(cal.input_ids.shape) == (5, 32) for cal in sets)
    assert sample(_spec(corpus_file, set_index=2, **kwargs), tok, model).fingerprint == sets[2].fingerprint
    for i in range(3):
        for j in range(i + 1, 3):
            assert not _overlap(sets[i].windows, sets[j].windows)
