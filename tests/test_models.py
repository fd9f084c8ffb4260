"""Model loading: tiny fixtures, embedded registry, cache integrity, clear errors."""
import json

import pytest
import torch

from calib_lib.models import EMBEDDED, UnknownModelError, load_model
from calib_lib.models import loading
from calib_lib.models.tiny import ARCHITECTURES, build_tiny_model, build_tokenizer

QUIET = dict(log=lambda *a: None)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_models_forward_and_are_deterministic(arch):
    model_a, tok = build_tiny_model(arch)
    model_b, _ = build_tiny_model(arch)
    ids = tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model_a(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), name
    linear = [m for m in model_a.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) >= 8, "decoder blocks must hold nn.Linear layers for the compression driver"


def test_tiny_seed_changes_weights():
    a, _ = build_tiny_model("llama", seed=0)
    b, _ = build_tiny_model("llama", seed=1)
    assert not torch.equal(a.lm_head.weight, b.lm_head.weight)


def test_offline_tokenizer_round_trips_any_text():
    tok = build_tokenizer()
    text = "Calibration data — ünïcode, digits 2024, and code: def f(x): return x**2"
    ids = tok(text).input_ids
    assert tok.decode(ids) == text
    assert tok.bos_token_id is not None and tok.eos_token_id is not None


def test_load_model_tiny_has_provenance(tiny_llama):
    model, tokenizer = tiny_llama
    prov = model.calib_provenance
    assert prov.source == "tiny" and prov.from_4bit_grid is False
    assert tokenizer.pad_token is not None


def test_unknown_name_lists_embedded_names_and_hub_hint():
    with pytest.raises(UnknownModelError) as err:
        load_model("no-such-model", **QUIET)
    message = str(err.value)
    for name in EMBEDDED:
        assert name in message
    assert "hub id" in message


def test_hub_id_offline_fails_fast_with_clear_error(monkeypatch):
    monkeypatch.setattr(loading, "hub_reachable", lambda: False)
    with pytest.raises(UnknownModelError, match="not reachable"):
        load_model("some-org/definitely-not-cached-model", **QUIET)


def test_local_directory_round_trip(tmp_path, tiny_llama):
    model, tokenizer = tiny_llama
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, _ = load_model(str(tmp_path), **QUIET)
    assert loaded.calib_provenance.source == "local"
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_local_directory_without_config_is_refused(tmp_path):
    with pytest.raises(UnknownModelError, match="no config.json"):
        load_model(str(tmp_path), **QUIET)


def _fake_builder(calls):
    def build(entry, out):
        calls.append(entry.name)
        model, tok = build_tiny_model("llama")
        model.save_pretrained(out)
        tok.save_pretrained(out)
    return build


def test_corrupt_cache_entry_is_rebuilt_never_loaded(isolated_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(loading, "_build_cache", _fake_builder(calls))
    entry = EMBEDDED["smollm2-135m"]
    path = loading.prepare_embedded(entry, **QUIET)
    assert calls == ["smollm2-135m"]
    assert loading.verify_cache(entry) is not None
    loading.prepare_embedded(entry, **QUIET)
    assert len(calls) == 1, "a verified cache must not be rebuilt"

    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF                       # flip one byte in the middle
    weights.write_bytes(bytes(data))
    assert loading.verify_cache(entry) is None
    model, _ = load_model("smollm2-135m", **QUIET)
    assert len(calls) == 2, "a corrupted entry must be rebuilt before loading"
    assert model.calib_provenance.from_4bit_grid is True


def test_half_written_cache_entry_is_rebuilt(isolated_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(loading, "_build_cache", _fake_builder(calls))
    entry = EMBEDDED["smollm2-135m"]
    path = loading.prepare_embedded(entry, **QUIET)
    manifest = json.loads((path / loading.MANIFEST).read_text())
    (path / "model.safetensors").write_bytes(b"")       # truncated, as after a crash mid-copy
    assert manifest["files"]["model.safetensors"]
    loading.prepare_embedded(entry, **QUIET)
    assert len(calls) == 2


def test_interrupted_build_leaves_no_entry(isolated_cache, monkeypatch):
    def failing(entry, out):
        (out / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(loading, "_build_cache", failing)
    entry = EMBEDDED["smollm2-135m"]
    with pytest.raises(KeyboardInterrupt):
        loading.prepare_embedded(entry, **QUIET)
    assert not loading.model_cache_path(entry).exists()
    assert loading.verify_cache(entry) is None


def test_embedded_registry_pins_every_file():
    for entry in EMBEDDED.values():
        if entry.kind != "gguf":
            continue
        assert len(entry.gguf_sha256) == 64
        for dist in entry.dists:
            assert len(dist.sha256) == 64 and dist.version
        assert all(0 <= i < len(entry.dists) for i, _ in entry.members)
