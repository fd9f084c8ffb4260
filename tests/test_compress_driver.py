"""The layer-wise driver end to end on tiny models of every supported family."""
import pytest
import torch

from calib_lib.compress import METHODS, compress, decoder_blocks, make_method
from calib_lib.compress.blocks import block_linears
from calib_lib.models import load_model

FAMILIES = ["tiny-llama", "tiny-gemma3", "tiny-gptneox", "tiny-opt"]
QUIET = dict(log=lambda *a: None)
CONFIGS = [("magnitude", dict(sparsity=0.5)), ("wanda", dict(sparsity=0.5)), ("sparsegpt", dict(sparsity=0.5)),
           ("wanda", dict(n=2, m=4)), ("sparsegpt", dict(n=2, m=4)), ("magnitude", dict(n=4, m=8)),
           ("rtn", dict(bits=3, group_size=32)), ("gptq", dict(bits=3, group_size=32, act_order=True)),
           ("awq", dict(bits=4, group_size=32)), ("spqr", dict(bits=3, group_size=16))]


def tokens(tok, n, L, seed):
    return torch.randint(4, len(tok), (n, L), generator=torch.Generator().manual_seed(seed))


def fresh(name):
    return load_model(name, **QUIET)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method, params", CONFIGS, ids=[f"{m}-{p}" for m, p in CONFIGS])
def test_every_method_on_every_family(family, method, params):
    model, tok = fresh(family)
    embed_before = model.get_input_embeddings().weight.clone()
    head_before = model.get_output_embeddings().weight.clone()
    report = compress(model, method, tokens(tok, 6, 32, 0), batch_size=4, progress=False, **params)
    assert report["method"] == method
    for block in decoder_blocks(model):
        for name, layer in block_linears(block).items():
            W = layer.weight.data
            if "n" in params:
                zeros = (W == 0).reshape(W.shape[0], -1, params["m"]).sum(-1)
                assert (zeros >= params["n"]).all(), name
            elif "sparsity" in params:
                assert (W == 0).float().mean().item() == pytest.approx(0.5, abs=0.01), name
            else:
                assert layer.calib_grid.on_grid(W), name
    assert torch.equal(model.get_input_embeddings().weight, embed_before)
    assert torch.equal(model.get_output_embeddings().weight, head_before)
    with torch.no_grad():
        assert torch.isfinite(model(tokens(tok, 2, 16, 1)).logits).all()


def test_wanda_rows_have_exact_sparsity(tiny_llama):
    model, tok = fresh("tiny-llama")
    compress(model, "wanda", tokens(tok, 4, 32, 0), progress=False, sparsity=0.25)
    for layer in block_linears(decoder_blocks(model)[0]).values():
        per_row = (layer.weight == 0).sum(1)
        assert (per_row == int(layer.weight.shape[1] * 0.25)).all()


def _wanda_by_hand(layer, sq):
    score = layer.weight.abs().double() * sq.sqrt()
    idx = torch.topk(score, layer.weight.shape[1] // 2, dim=1, largest=False).indices
    layer.weight.data.scatter_(1, idx, 0.0)


def _input_sq_norms(model, cal, layers: dict) -> dict:
    """Run the whole model on the calibration tokens; per layer, the squared norm of each input column."""
    sq = {}
    hooks = [l.register_forward_hook(lambda m, i, o, n=n: sq.__setitem__(
        n, sq.get(n, 0) + (i[0].double() ** 2).reshape(-1, i[0].shape[-1]).sum(0)))
        for n, l in layers.items()]
    with torch.no_grad():
        model(cal, use_cache=False)
    for h in hooks:
        h.remove()
    return sq


@pytest.mark.parametrize("sequential", ["block", "layer"])
def test_driver_is_sequential_on_compressed_outputs(sequential):
    """Independent reference: recompute each layer's inputs by running the whole (partially compressed)
    model, then apply Wanda by hand. "block": all layers of a block from one run with the block dense.
    "layer": one run per layer, in the block's execution order, with the layers before it already pruned
    (the many-pass true-sequential loop of the reference GPTQ code). The driver must agree exactly."""
    model, tok = fresh("tiny-llama")
    ref_model, _ = fresh("tiny-llama")
    cal = tokens(tok, 4, 32, 0)
    compress(model, "wanda", cal, batch_size=2, progress=False, sparsity=0.5, sequential=sequential)
    for block in decoder_blocks(ref_model):
        linears = block_linears(block)      # named_modules order is the execution order in a Llama block
        if sequential == "block":
            sq = _input_sq_norms(ref_model, cal, linears)
            for n, layer in linears.items():
                _wanda_by_hand(layer, sq[n])
        else:
            for n, layer in linears.items():
                _wanda_by_hand(layer, _input_sq_norms(ref_model, cal, {n: layer})[n])
    for (n, a), (_, b) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method, params", [("sparsegpt", dict(sparsity=0.5)), ("gptq", dict(bits=3, group_size=32))])
def test_layer_and_block_order_differ_only_after_the_first_layers(family, method, params):
    """Both orders see the same inputs for the first layer(s) of block 0 (nothing is compressed before
    them) and then diverge: the layer order feeds later layers the compressed layers' outputs."""
    weights = {}
    for sequential in ("block", "layer"):
        model, tok = fresh(family)
        compress(model, method, tokens(tok, 6, 32, 0), batch_size=4, progress=False, sequential=sequential, **params)
        weights[sequential] = {n: l.weight.data.clone() for n, l in block_linears(decoder_blocks(model)[0]).items()}
    names = list(weights["block"])
    assert torch.equal(weights["block"][names[0]], weights["layer"][names[0]])
    assert any(not torch.equal(weights["block"][n], weights["layer"][n]) for n in names[1:])


class _RoutingBlock(torch.nn.Module):
    """A block that sends a batch through a different layer depending on its data (like an MoE)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.a(x) if x.sum() > 0 else self.b(x)


def test_layer_order_refuses_blocks_whose_batches_take_different_layers():
    import threading
    from calib_lib.compress.lockstep import Lockstep
    before = threading.active_count()
    hidden = [torch.ones(1, 4, 8), -torch.ones(1, 4, 8)]
    with pytest.raises(RuntimeError, match="batch 1 reached b where batch 0 reached a.*sequential='block'"):
        Lockstep(_RoutingBlock(), hidden, [((), {})] * 2, make_method("wanda")).run()
    assert threading.active_count() == before


def test_a_failing_solve_stops_every_batch_and_is_raised(monkeypatch):
    import threading
    from calib_lib.compress.methods.quantization import GPTQCompressor
    calls = []

    def failing(self):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("solver failed on purpose")
        return {}
    monkeypatch.setattr(GPTQCompressor, "solve", failing)
    model, tok = fresh("tiny-llama")
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="solver failed on purpose"):
        compress(model, "gptq", tokens(tok, 6, 32, 0), batch_size=2, progress=False, bits=3)
    assert len(calls) == 3 and threading.active_count() == before


def test_same_configuration_twice_gives_identical_weights():
    outs = []
    for _ in range(2):
        model, tok = fresh("tiny-gemma3")
        compress(model, "gptq", tokens(tok, 4, 32, 0), progress=False, bits=3, group_size=32)
        outs.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(outs[0], outs[1])


def _rel_error(name, method, params, seed=0):
    model, tok = fresh(name)
    ev = tokens(tok, 4, 48, 99)
    with torch.no_grad():
        ref = model(ev).logits
    compress(model, method, tokens(tok, 16, 48, seed), progress=False, **params)
    with torch.no_grad():
        return ((model(ev).logits - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-opt"])
def test_known_orderings_end_to_end(family):
    assert _rel_error(family, "sparsegpt", dict(sparsity=0.5)) < _rel_error(family, "magnitude", dict(sparsity=0.5))
    rtn_err = _rel_error(family, "rtn", dict(bits=3, group_size=32))
    assert _rel_error(family, "gptq", dict(bits=3, group_size=32)) < rtn_err
    assert _rel_error(family, "awq", dict(bits=3, group_size=32)) < rtn_err


def test_gpt2_conv1d_is_refused_with_a_clear_error():
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64))
    with pytest.raises(ValueError, match="Conv1D"):
        compress(model, "wanda", torch.randint(0, 100, (2, 16)), progress=False)


@pytest.mark.parametrize("method, params, message", [
    ("sparsegpt", dict(sparsity=1.5), "sparsity must be in"),
    ("wanda", dict(n=4, m=2), "0 < N < M"),
    ("gptq", dict(bits=1), "bits must be an integer in 2..8"),
    ("rtn", dict(group_size=0), "group_size must be a positive integer or -1"),
    ("awq", dict(max_shrink=1.0), "max_shrink"),
    ("gptq", dict(sequential="per-layer"), "sequential must be one of layer, block"),
    ("gptq", dict(bogus=1), "unexpected keyword"),
    ("nope", dict(), "unknown compression method"),
])
def test_bad_parameters_are_rejected_before_any_work(method, params, message):
    with pytest.raises(ValueError, match=message):
        make_method(method, **params)


def test_methods_that_need_calibration_say_so():
    model, _ = fresh("tiny-llama")
    with pytest.raises(ValueError, match="needs calibration data"):
        compress(model, "gptq", None, progress=False)
    assert {"magnitude", "wanda", "sparsegpt", "rtn", "gptq", "awq"} <= set(METHODS)


def test_layers_reading_one_input_share_statistics_computed_once(monkeypatch):
    """q/k/v (and gate/up) read the same tensor: its Hessian is accumulated once and shared, and the
    result is identical to accumulating it per layer."""
    from calib_lib.compress.methods import hessian
    calls = []
    original = hessian.HessianCollector.add_batch
    monkeypatch.setattr(hessian.HessianCollector, "add_batch",
                        lambda self, inp: (calls.append(id(self)), original(self, inp)))
    model, tok = fresh("tiny-llama")
    compress(model, "gptq", tokens(tok, 4, 32, 0), batch_size=2, progress=False, bits=3, group_size=32)
    # per block: 7 linears, 4 distinct inputs (qkv, o, gate/up, down); 2 batches; 2 blocks
    assert len(calls) == 4 * 2 * 2
    layer = block_linears(decoder_blocks(model)[0])["self_attn.k_proj"]
    H = torch.zeros(64, 64)
    ref_model, _ = fresh("tiny-llama")
    first = decoder_blocks(ref_model)[0]
    xs = []
    hook = first.self_attn.k_proj.register_forward_hook(lambda m, i, o: xs.append(i[0].reshape(-1, 64)))
    with torch.no_grad():
        for start in (0, 2):
            ref_model(tokens(tok, 4, 32, 0)[start:start + 2], use_cache=False)
    hook.remove()
    X = torch.cat(xs)
    H = 2 / X.shape[0] * X.T @ X
    from calib_lib.compress.methods.quantization import gptq_solve
    Q, _, _ = gptq_solve(first.self_attn.k_proj.weight.data, H, bits=3, group_size=32)
    assert torch.allclose(layer.weight.data, Q, atol=1e-5)
