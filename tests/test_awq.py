"""AWQ against the published method (Lin et al. 2024; mit-han-lab/llm-awq).

- Every scale folds: folding each searched scale into the module before its layers (a norm's weight, Gemma's
  1 + w included, or an earlier layer's rows) gives the fake-quant model's outputs with integer weights and no
  extra multiplier; the fold targets are llm-awq's (o_proj only when v_proj has its shape).
- A slow re-derivation of the scale search and the clipping search, written from the paper's description and
  llm-awq's procedure (explicit loops over ratios, groups and shrink steps), picks the same ratios and weights.
- The defaults: the search uses every calibration sequence and full-precision block inputs; the variants
  (a cap, quantized inputs, tied GQA scales) are explicit and named.
"""
import copy

import pytest
import torch
from torch import nn

from calib_lib.compress import compress, decoder_blocks, make_method
from calib_lib.compress.blocks import block_linears, capture_block_inputs
from calib_lib.compress.methods.awq import AWQ, _fake_quant_scaled, _sq_errors
from calib_lib.compress.quant import Grid, rtn
from calib_lib.models import load_model

QUIET = dict(log=lambda *a: None)
BITS, GROUP = 3, 16

_ATTN = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
# llm-awq's prev_op for each layer (auto_scale.py); Gemma 3 as Llama, with its MLP norm.
PUBLISHED = {
    "llama": {**dict.fromkeys(_ATTN, "input_layernorm"), "self_attn.o_proj": "self_attn.v_proj",
              "mlp.gate_proj": "post_attention_layernorm", "mlp.up_proj": "post_attention_layernorm",
              "mlp.down_proj": "mlp.up_proj"},
    "gemma3": {**dict.fromkeys(_ATTN, "input_layernorm"), "self_attn.o_proj": "self_attn.v_proj",
               "mlp.gate_proj": "pre_feedforward_layernorm", "mlp.up_proj": "pre_feedforward_layernorm",
               "mlp.down_proj": "mlp.up_proj"},
    "opt": {**dict.fromkeys(_ATTN, "self_attn_layer_norm"), "self_attn.out_proj": "self_attn.v_proj",
            "fc1": "final_layer_norm", "fc2": "fc1"},
}


def tokens(n, length, seed):
    return torch.randint(4, 384, (n, length), generator=torch.Generator().manual_seed(seed))


def mha_llama():
    """tiny-llama with as many KV heads as heads, so that o_proj folds into v_proj."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=384, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()


def model_named(name):
    return mha_llama() if name == "mha-llama" else load_model(name, **QUIET)[0]


# -- folding ---------------------------------------------------------------------------------------

def _scales_by_weight_plus_one(norm: nn.Module) -> bool:
    """Whether a norm multiplies by 1 + weight (Gemma) rather than weight: with zero parameters its output
    is not zero."""
    saved = [p.data.clone() for p in norm.parameters()]
    for p in norm.parameters():
        p.data.zero_()
    with torch.no_grad():
        out = norm(torch.randn(3, saved[0].numel()))
    for p, value in zip(norm.parameters(), saved):
        p.data = value
    return bool(out.abs().max() > 0)


def fold(model, report, expected: dict):
    """A copy of the fake-quant model with every scale folded into the module before its layers: each layer
    holds its integer-grid weight W_q (the stored weight times its in_scale). Checks the fold targets."""
    config = model.config
    folded = copy.deepcopy(model)
    for b, block in enumerate(decoder_blocks(folded)):
        row_factor, folded_into = {}, {}
        for name, layer in block_linears(block).items():
            s = layer.calib_grid.in_scale
            target = report["layers"][f"{b}.{name}"]["awq_fold"]
            assert target == (expected[name] if s is not None else None), name
            if s is None:
                continue
            layer.weight.data = layer.weight.data * s
            if target in folded_into:          # q/k/v (gate/up) share one scale and one fold
                assert torch.equal(folded_into[target], s)
                continue
            folded_into[target] = s
            prev = block.get_submodule(target)
            if isinstance(prev, nn.Linear):
                if prev.out_features != s.numel():    # v_proj under GQA: the scale of each KV group's first head
                    heads, kv = config.num_attention_heads, config.num_key_value_heads
                    s = s.view(kv, heads // kv, -1)[:, 0].reshape(-1)
                prev.weight.data /= s.unsqueeze(1)
                if prev.bias is not None:
                    prev.bias.data /= s
                row_factor[target] = s
            elif _scales_by_weight_plus_one(prev):
                prev.weight.data = (1 + prev.weight.data) / s - 1
            else:
                for p in prev.parameters():
                    p.data /= s
        for name, layer in block_linears(block).items():     # integer weights: on a grid with no in_scale
            grid, rows = layer.calib_grid, row_factor.get(name, torch.ones(layer.out_features))
            assert Grid(grid.bits, grid.scale / rows.unsqueeze(1), grid.zero, grid.g_idx).on_grid(layer.weight), name
    return folded


def assert_same_outputs(a, b):
    ids = tokens(3, 24, 7)
    with torch.no_grad():
        ref, out = a(ids).logits, b(ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("name, arch, params, o_scaled", [
    ("tiny-llama", "llama", {}, False),             # GQA: o_proj left unscaled, as llm-awq
    ("tiny-gemma3", "gemma3", {}, False),           # GQA, and norms that multiply by 1 + w
    ("mha-llama", "llama", {}, True),               # o_proj folds into v_proj
    ("tiny-opt", "opt", {}, True),                  # LayerNorm biases; fc2 folds into fc1 through ReLU
    ("tiny-llama", "llama", {"gqa": "tie"}, True),  # the variant: one scale per v_proj row
    ("tiny-gemma3", "gemma3", {"gqa": "tie", "search_input": "quantized"}, True),
])
def test_every_scale_folds_into_the_previous_module(name, arch, params, o_scaled):
    model = model_named(name)
    report = compress(model, "awq", tokens(6, 32, 0), batch_size=4, progress=False, bits=BITS,
                      group_size=GROUP, **params)
    o_name = next(n for n in PUBLISHED[arch] if n.endswith(("o_proj", "out_proj")))
    assert all((info["awq_fold"] is not None) == o_scaled for key, info in report["layers"].items()
               if key.endswith(o_name))
    assert_same_outputs(model, fold(model, report, PUBLISHED[arch]))


def test_scales_that_differ_within_a_kv_group_do_not_fold():
    """What version 1 did on GQA models (o_proj scaled per channel) is not an integer model: the fold check
    catches it."""
    model = model_named("tiny-llama")
    report = compress(model, "awq", tokens(6, 32, 0), batch_size=4, progress=False, bits=BITS,
                      group_size=GROUP, gqa="tie")
    o_proj = decoder_blocks(model)[0].self_attn.o_proj
    untied = 1 + 0.5 * torch.rand(o_proj.in_features, generator=torch.Generator().manual_seed(1))
    o_proj.calib_grid.in_scale = o_proj.calib_grid.in_scale * untied
    o_proj.weight.data /= untied          # the same fake-quant model, with another scale split
    folded = fold(model, report, PUBLISHED["llama"])
    with pytest.raises(AssertionError):
        assert_same_outputs(model, folded)


# -- a slow re-derivation of the searches --------------------------------------------------------

def slow_quantize(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Min-max asymmetric rounding of each row of w, the range holding 0 (the package's grid, as GPTQ's
    reference; llm-awq's leaves 0 out, which differs only for a group of one sign)."""
    maxq = 2 ** bits - 1
    lo = torch.clamp(w.min(dim=1, keepdim=True).values, max=0)
    hi = torch.clamp(w.max(dim=1, keepdim=True).values, min=0)
    empty = (lo == 0) & (hi == 0)
    lo, hi = torch.where(empty, -1.0, lo), torch.where(empty, 1.0, hi)
    scale = (hi - lo) / maxq
    zero = torch.round(-lo / scale)
    return scale * (torch.clamp(torch.round(w / scale) + zero, 0, maxq) - zero)


def slow_fake_quant(W: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    out = torch.empty_like(W)
    for a in range(0, W.shape[1], group_size):
        out[:, a:a + group_size] = slow_quantize(W[:, a:a + group_size], bits)
    return out


def slow_awq(block, hidden, calls, groups, bits, group_size, n_grid=20, max_shrink=0.5, clip_tokens=512):
    """AWQ on one block, step by step: (ratio per layer, new weight per layer).

    ``groups``: (layers reading one input, the module whose output error the search scores, or None when
    the group is not scaled). Scale: s = mean|x|^r / sqrt(max(.) min(.)) for r = 0, 1/n_grid, ...; the first r
    with the least squared output error wins. Clip: per output row and input group, the shrink of max|w| (by
    0, 1/n_grid, ... up to max_shrink) with the least mean squared group output error; q/k not clipped."""
    linears = block_linears(block)
    inputs, parent_io = {n: [] for n in linears}, {}
    parents = {parent for _, parent in groups if parent is not None}
    hooks = [linears[n].register_forward_hook(lambda m, i, o, n=n: inputs[n].append(i[0])) for n in linears]
    for p in parents:
        module = block.get_submodule(p)
        parent_io[p] = []
        hooks.append(module.register_forward_pre_hook(
            lambda m, a, k, p=p: parent_io[p].append([a, k]), with_kwargs=True))
        hooks.append(module.register_forward_hook(lambda m, a, o, p=p: parent_io[p][-1].append(o)))
    with torch.no_grad():
        for h, (args, kwargs) in zip(hidden, calls):
            block(h, *args, **kwargs)
    for hook in hooks:
        hook.remove()
    ratios, weights = {}, {}
    for names, parent in groups:
        x = torch.cat([i.reshape(-1, i.shape[-1]) for i in inputs[names[0]]])
        originals = {n: linears[n].weight.data.clone() for n in names}
        s, best_ratio = torch.ones(x.shape[1]), None
        if parent is not None:
            x_mean, best_loss = x.abs().mean(0), float("inf")
            module = block.get_submodule(parent)
            for step in range(n_grid):
                ratio = step / n_grid
                candidate = x_mean.pow(ratio).clamp(min=1e-4)
                candidate = candidate / (candidate.max() * candidate.min()).sqrt()
                for n in names:
                    linears[n].weight.data = slow_fake_quant(originals[n] * candidate, bits, group_size) / candidate
                loss = 0.0
                with torch.no_grad():
                    for args, kwargs, reference in parent_io[parent]:
                        out = module(*args, **kwargs)
                        out, reference = [o[0] if isinstance(o, tuple) else o for o in (out, reference)]
                        loss += ((out - reference) ** 2).sum().item()
                if loss < best_loss:
                    best_loss, best_ratio, s = loss, ratio, candidate
            for n in names:
                linears[n].weight.data = originals[n]
        xs = x / s
        xs = xs[::max(1, xs.shape[0] // clip_tokens)][:clip_tokens]
        for n in names:
            ratios[n] = best_ratio
            W = originals[n] * s
            if not n.endswith(("q_proj", "k_proj")):
                for a in range(0, W.shape[1], group_size):
                    w, xg = W[:, a:a + group_size], xs[:, a:a + group_size]
                    limit = w.abs().amax(dim=1, keepdim=True)
                    best_err, best_limit = torch.full((w.shape[0],), float("inf")), limit.clone()
                    for step in range(int(max_shrink * n_grid)):
                        shrunk = limit * (1 - step / n_grid)
                        q = slow_quantize(torch.clamp(w, -shrunk, shrunk), bits)
                        err = ((xg @ q.T - xg @ w.T) ** 2).mean(0)
                        better = err < best_err
                        best_err[better], best_limit[better] = err[better], shrunk[better]
                    W[:, a:a + group_size] = torch.clamp(w, -best_limit, best_limit)
            weights[n] = slow_fake_quant(W, bits, group_size) / s
    return ratios, weights


@pytest.mark.parametrize("name", ["mha-llama", "tiny-gemma3"])
def test_scale_and_clip_search_match_a_slow_re_derivation(name):
    model = model_named(name)
    blocks = decoder_blocks(model)
    hidden, per_block = capture_block_inputs(model, blocks, tokens(6, 24, 0), 4)
    o_parent = "self_attn.o_proj" if name == "mha-llama" else None      # GQA: o_proj not scaled
    groups = [(_ATTN, "self_attn"), (["self_attn.o_proj"], o_parent), (["mlp.gate_proj", "mlp.up_proj"], "mlp"),
              (["mlp.down_proj"], "mlp.down_proj")]
    ratios, weights = slow_awq(copy.deepcopy(blocks[0]), hidden, per_block[0], groups, BITS, GROUP)
    outputs, info = AWQ(bits=BITS, group_size=GROUP).compress_block(blocks[0], hidden, per_block[0])
    assert {n: i["awq_ratio"] for n, i in info.items()} == ratios
    assert len(set(ratios.values()) - {None, 0.0}) >= 2                      # the search is not trivial
    for n, layer in block_linears(blocks[0]).items():
        torch.testing.assert_close(layer.weight.data, weights[n], rtol=0, atol=1e-5, msg=n)


def test_batched_evaluations_equal_their_plain_forms():
    gen = torch.Generator().manual_seed(0)
    W, scales = torch.randn(24, 40, generator=gen), torch.rand(5, 40, generator=gen) + 0.5
    one_by_one = torch.stack([rtn(W * s, 3, 16, False)[0] / s for s in scales])
    assert torch.equal(_fake_quant_scaled(W, scales, 3, 16, False), one_by_one)
    assert torch.equal(_fake_quant_scaled(W, torch.ones(1, 40), 3, 16, False)[0], rtn(W, 3, 16, False)[0])
    dW = torch.randn(5, 24, 40, generator=gen)
    for tokens_ in (10, 100):                                   # direct and through the Gram matrix
        x = torch.randn(tokens_, 40, generator=gen)
        torch.testing.assert_close(_sq_errors(dW, x), ((dW @ x.T) ** 2).sum(-1), rtol=1e-4, atol=1e-3)


# -- defaults and variants -----------------------------------------------------------------------

def test_defaults_are_the_published_choices_and_variants_are_named():
    awq = AWQ()
    assert (awq.search_samples, awq.search_input, awq.gqa, awq.version) == (None, "full-precision", "skip", 2)
    assert awq.label() == "awq 4-bit g128"
    assert AWQ(bits=3, search_samples=8, search_input="quantized", gqa="tie").label() == \
        "awq 3-bit g128 (quantized-input search, tied GQA scales, search on 8 samples)"


@pytest.mark.parametrize("params, message", [
    (dict(search_samples=0), "search_samples"), (dict(search_samples=True), "search_samples"),
    (dict(search_input="fp16"), "search_input"), (dict(gqa="average"), "gqa"), (dict(max_shrink=1.0), "max_shrink"),
])
def test_bad_parameters_are_rejected(params, message):
    with pytest.raises(ValueError, match=message):
        make_method("awq", **params)


@pytest.mark.parametrize("cap, expected", [(None, 7), (3, 3), (5, 5), (50, 7)])
def test_the_search_uses_every_sequence_unless_capped(monkeypatch, cap, expected):
    """Search losses cover exactly ``search_samples`` sequences (all by default), cutting a batch if need be."""
    seen = []
    original = AWQ._module_losses

    def count(self, parent, records, layers, scales):
        seen.append(sum(args[0].shape[0] if args else kwargs["hidden_states"].shape[0]
                        for args, kwargs, _ in records))
        return original(self, parent, records, layers, scales)

    monkeypatch.setattr(AWQ, "_module_losses", count)
    params = {} if cap is None else {"search_samples": cap}
    compress(model_named("tiny-llama"), "awq", tokens(7, 16, 0), batch_size=4, progress=False, **params)
    assert seen and set(seen) == {expected}


@pytest.mark.parametrize("search_input", ["full-precision", "quantized"])
def test_blocks_are_searched_on_full_precision_inputs_by_default(monkeypatch, search_input):
    model, ids = model_named("tiny-llama"), tokens(6, 16, 0)
    blocks = decoder_blocks(model)
    hidden, per_block = capture_block_inputs(model, blocks, ids, 4)
    with torch.no_grad():
        dense = [blocks[0](h, *args, **kwargs) for h, (args, kwargs) in zip(hidden, per_block[0])]
    received = []
    original = AWQ.compress_block
    monkeypatch.setattr(AWQ, "compress_block", lambda self, b, h, c: (received.append(h), original(self, b, h, c))[1])
    compress(model, "awq", ids, batch_size=4, progress=False, search_input=search_input)
    same = all(torch.allclose(a, b, atol=1e-6) for a, b in zip(received[1], dense))    # block 1's inputs
    assert same == (search_input == "full-precision")


def test_grid_records_the_scale_and_unscaled_groups_are_plain_rtn():
    model = model_named("tiny-llama")
    report = compress(model, "awq", tokens(4, 32, 0), progress=False, bits=3, group_size=32)
    assert all(v["awq_ratio"] is None or 0 <= v["awq_ratio"] < 1 for v in report["layers"].values())
    block = decoder_blocks(model)[0]
    down = block.mlp.down_proj
    assert down.calib_grid.in_scale is not None and down.calib_grid.on_grid(down.weight.data)
    o_proj = block.self_attn.o_proj                            # GQA: unscaled, clipped and rounded
    assert o_proj.calib_grid.in_scale is None and o_proj.calib_grid.on_grid(o_proj.weight.data)
