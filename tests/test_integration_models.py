"""The real default model, end to end (prepared once per cache; later loads verify and read safetensors)."""
import pytest
import torch

from calib_lib.data import load_eval_text
from calib_lib.evaluate import make_windows, perplexity
from calib_lib.models import load_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm():
    return load_model("smollm2-135m")


def test_smollm_provenance_and_shape(smollm):
    model, _ = smollm
    prov = model.calib_provenance
    assert prov.source == "embedded-gguf" and prov.from_4bit_grid and prov.quantization == "Q4_1"
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert next(model.parameters()).dtype == torch.float32


def test_smollm_is_a_real_language_model(smollm):
    """A random 135M model scores perplexity ~ vocab size (49k); a trained one far lower."""
    model, tokenizer = smollm
    ids = tokenizer(load_eval_text("news"), return_tensors="pt").input_ids[0]
    result = perplexity(model, make_windows(ids, 256, 4), progress=False)
    assert result.scored_tokens == 4 * 255
    assert 2 < result.perplexity < 60


def test_smollm_greedy_generation_is_deterministic(smollm):
    model, tokenizer = smollm
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        a = model.generate(ids, max_new_tokens=8, do_sample=False)
        b = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(a, b)
    assert "Paris" in tokenizer.decode(a[0, ids.shape[1]:])


def test_declared_context_matches_the_loaded_config(smollm):
    """Specs are checked against the registry's context length before loading: it must be the real one."""
    from calib_lib.models.context import context_length, declared_context_length
    model, _ = smollm
    assert declared_context_length("smollm2-135m") == context_length(model) == 8192
