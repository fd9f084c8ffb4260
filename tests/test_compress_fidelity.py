"""The methods against straightforward re-derivations of the published algorithms, and the driver's refusals.

Each reference below is written from the papers' pseudo-code in float64 without the implementation's
shortcuts (no lazy batch updates, an explicit inverse instead of the one-factorisation Cholesky trick):
GPTQ with act-order, dynamic and static groups below the block size (both grid timings), SparseGPT N:M
across several lazy blocks, Wanda N:M through the driver, and Gemma 3 with sliding and global layers on
sequences longer than the window.
"""
import pytest
import torch
from torch import nn

from calib_lib.compress import compress, decoder_blocks
from calib_lib.compress.blocks import block_linears
from calib_lib.compress.methods.pruning import sparsegpt_solve
from calib_lib.compress.methods.quantization import gptq_solve
from calib_lib.compress.quant import grid_params, quantize
from calib_lib.errors import InvalidInput, Unsupported
from calib_lib.models import load_model
from test_compress_driver import _input_sq_norms, tokens

D = torch.float64


def _problem(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g, dtype=D)
    X = torch.randn(4 * cols, cols, generator=g, dtype=D) @ (torch.eye(cols, dtype=D)
                                                            + 0.4 * torch.randn(cols, cols, generator=g, dtype=D))
    return W, 2 / X.shape[0] * X.T @ X


def _upper_inverse_cholesky(H, percdamp):
    """U with U^T U = (H + damp I)^-1, from an explicit inverse (the reference code's route)."""
    Hd = H + percdamp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=D)
    return torch.linalg.cholesky(torch.linalg.inv(Hd)).T


def reference_gptq(W, H, bits, gs, act_order, static, blocksize, timing, percdamp=0.01):
    """GPTQ column by column with the error of each column applied to all later columns at once."""
    cols = W.shape[1]
    perm = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order else torch.arange(cols)
    static_grids = [grid_params(W[:, g:g + gs], bits, False) for g in range(0, cols, gs)]
    Wc, Hp = W[:, perm].clone(), H[perm][:, perm]
    U = _upper_inverse_cholesky(Hp, percdamp)
    Q = torch.zeros_like(Wc)
    block_start = Wc.clone()
    for j in range(cols):
        if j % blocksize == 0:
            block_start = Wc.clone()              # what the lazy reference reads for a group's grid
        if static:
            scale, zero = static_grids[int(perm[j]) // gs]
        elif j % gs == 0:
            source = Wc if timing == "updated" else block_start
            scale, zero = grid_params(source[:, j:j + gs], bits, False)
        Q[:, j] = quantize(Wc[:, j:j + 1], scale, zero, bits)[:, 0]
        err = (Wc[:, j] - Q[:, j]) / U[j, j]
        Wc[:, j + 1:] -= err[:, None] * U[j, j + 1:][None, :]
    return Q[:, torch.argsort(perm)]


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("timing", ["updated", "reference"])
def test_gptq_groups_below_block_size_equal_the_sequential_reference(act_order, static, timing):
    W, H = _problem(rows=5, cols=18, seed=3)              # groups of 4 in blocks of 8; a narrow last group
    Q, grid, _ = gptq_solve(W, H, bits=3, group_size=4, act_order=act_order, static_groups=static, blocksize=8,
                            group_grid=timing)
    assert torch.allclose(Q, reference_gptq(W, H, 3, 4, act_order, static, 8, timing), atol=1e-9)
    assert grid.on_grid(Q)


def test_the_two_grid_timings_differ_when_a_group_starts_inside_a_block():
    W, H = _problem(rows=5, cols=18, seed=3)
    updated = gptq_solve(W, H, bits=3, group_size=4, blocksize=8)[0]
    reference = gptq_solve(W, H, bits=3, group_size=4, blocksize=8, group_grid="reference")[0]
    assert not torch.allclose(updated, reference)
    assert torch.allclose(gptq_solve(W, H, bits=3, group_size=8, blocksize=8)[0],
                          gptq_solve(W, H, bits=3, group_size=8, blocksize=8, group_grid="reference")[0])


def reference_sparsegpt_nm(W, H, n, m, percdamp=0.01):
    """SparseGPT N:M: at the first column of every group of m, prune the n weights of each row with the lowest
    w^2 / [U]_jj^2 (on the weights updated so far); a pruned weight's error goes to all later columns."""
    U = _upper_inverse_cholesky(H, percdamp)
    Wc = W.clone()
    mask = torch.zeros_like(W, dtype=torch.bool)
    for j in range(W.shape[1]):
        if j % m == 0:
            score = Wc[:, j:j + m] ** 2 / torch.diag(U)[j:j + m] ** 2
            idx = torch.topk(score, n, dim=1, largest=False).indices
            mask[:, j:j + m].scatter_(1, idx, True)
        err = torch.where(mask[:, j], Wc[:, j], torch.zeros_like(Wc[:, j])) / U[j, j]
        Wc[:, j + 1:] -= err[:, None] * U[j, j + 1:][None, :]
        Wc[mask[:, j], j] = 0
    return Wc, mask


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_sparsegpt_nm_across_several_blocks_equals_the_sequential_reference(n, m):
    W, H = _problem(rows=6, cols=32, seed=5)               # four lazy blocks of 8 columns
    P, mask, _ = sparsegpt_solve(W, H, 0.0, n=n, m=m, blocksize=8)
    R, ref_mask = reference_sparsegpt_nm(W, H, n, m)
    assert torch.equal(mask, ref_mask)
    assert torch.allclose(P, R, atol=1e-9)


def _wanda_nm_by_hand(layer, sq, n, m):
    score = layer.weight.abs().double() * sq.sqrt()
    rows, cols = score.shape
    idx = torch.topk(score.reshape(rows, cols // m, m), n, dim=2, largest=False).indices
    mask = torch.zeros(rows, cols // m, m, dtype=torch.bool).scatter_(2, idx, True).reshape(rows, cols)
    layer.weight.data[mask] = 0


def _mixed_gemma3():
    """A tiny Gemma 3 with one sliding (window 8) and one global layer."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig
    _, tok = load_model("tiny-gemma3", log=lambda *a: None)
    config = Gemma3TextConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, sliding_window=8, vocab_size=len(tok),
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=256,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return model, tok


@pytest.mark.parametrize("arch", ["tiny-llama", "mixed-gemma3"])
@pytest.mark.parametrize("sequential", ["block", "layer"])
def test_wanda_nm_through_the_driver_equals_many_pass_loops(arch, sequential):
    """The driver against the whole model re-run for every layer's inputs (many-pass loops), for N:M Wanda,
    on Llama and on a Gemma 3 whose sliding layer sees sequences four times its window: each block must
    get its own attention mask and rotary embeddings from the capture."""
    make = _mixed_gemma3 if arch == "mixed-gemma3" else (lambda: load_model(arch, log=lambda *a: None))
    (model, tok), (ref, _) = make(), make()
    cal = tokens(tok, 4, 32, 0)
    compress(model, "wanda", cal, batch_size=2, progress=False, n=2, m=4, sequential=sequential)
    for block in decoder_blocks(ref):
        linears = block_linears(block)      # named_modules order is the execution order in these blocks
        if sequential == "block":
            sq = _input_sq_norms(ref, cal, linears)
            for name, layer in linears.items():
                _wanda_nm_by_hand(layer, sq[name], 2, 4)
        else:
            for name, layer in linears.items():
                _wanda_nm_by_hand(layer, _input_sq_norms(ref, cal, {name: layer})[name], 2, 4)
    for (name, a), (_, b) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), name


def test_sliding_window_shorter_than_the_sequence_changes_the_statistics():
    """The mixed Gemma 3 is a real test of per-block masks: its sliding layer's window matters here."""
    model, tok = _mixed_gemma3()
    ids = tokens(tok, 1, 32, 0)
    with torch.no_grad():
        windowed = model(ids).logits
        model.config.sliding_window = 64
        for layer in decoder_blocks(model):
            layer.self_attn.sliding_window = 64 if layer.self_attn.sliding_window else None
        assert not torch.allclose(windowed, model(ids).logits)


# -- refusals: never a silent zero or skip -------------------------------------------------------

@pytest.mark.parametrize("method", ["sparsegpt", "gptq", "wanda"])
@pytest.mark.parametrize("sequential", ["block", "layer"])
def test_a_layer_without_calibration_input_is_refused_by_name(method, sequential):
    model, tok = load_model("tiny-llama", log=lambda *a: None)
    decoder_blocks(model)[1].mlp.unused = nn.Linear(64, 64)          # never called in the forward
    with pytest.raises(Unsupported, match=r"mlp\.unused received no calibration input"):
        compress(model, method, tokens(tok, 2, 16, 0), progress=False, sequential=sequential)


def test_data_free_methods_compress_a_layer_the_data_never_reaches():
    model, _ = load_model("tiny-llama", log=lambda *a: None)
    unused = decoder_blocks(model)[1].mlp.unused = nn.Linear(64, 64)
    compress(model, "magnitude", progress=False, sparsity=0.5)
    assert (unused.weight == 0).float().mean().item() == pytest.approx(0.5)


def test_fused_expert_weights_are_refused_by_name():
    model, tok = load_model("tiny-llama", log=lambda *a: None)
    decoder_blocks(model)[0].mlp.experts_gate_up = nn.Parameter(torch.zeros(4, 64, 32))
    for method in ("magnitude", "wanda"):
        with pytest.raises(InvalidInput, match=r"mlp\.experts_gate_up \[4, 64, 32\].*fused expert"):
            compress(model, method, tokens(tok, 2, 16, 0), progress=False)


class _TwoTowers(nn.Module):
    """A model with two ModuleLists of num_hidden_layers blocks and no get_decoder()."""

    def __init__(self, get_decoder: bool):
        super().__init__()
        self.config = type("Config", (), {"num_hidden_layers": 2})()
        self.vision = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
        self.text = nn.Module()
        self.text.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
        if get_decoder:
            self.get_decoder = lambda: self.text


def test_decoder_blocks_come_from_the_decoder_and_ambiguity_is_refused():
    towers = _TwoTowers(get_decoder=True)
    assert decoder_blocks(towers) is towers.text.layers
    with pytest.raises(InvalidInput, match=r"2 ModuleLists .*vision, text\.layers.*ambiguous"):
        decoder_blocks(_TwoTowers(get_decoder=False))
    model, _ = load_model("tiny-opt", log=lambda *a: None)
    assert decoder_blocks(model) is model.get_decoder().layers
