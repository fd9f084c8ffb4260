"""AWQ (Lin et al. 2024, reference code mit-han-lab/llm-awq): activation-aware per-input-channel scaling,
then weight clipping, then RTN.

Layers that read the same input (q/k/v, gate/up, ...) form a group. A group is scaled only where its scale
folds into the module that produces its input, so that the quantized model needs no extra full-precision
multiplier and exports as integer weights (llm-awq's ``apply_scale``):
- a norm whose output the group reads (q/k/v after the attention norm, gate/up after the MLP norm): 1/s goes
  into the norm's weight and bias (for Gemma's ``1 + w`` norms, w becomes (1 + w) / s - 1);
- an earlier linear layer whose output rows reach the group's input channels each divided by the factor
  its rows were divided by (o_proj after v_proj through attention, down_proj after up_proj through the gated
  product, fc2 after fc1 through ReLU): 1/s goes into that layer's rows. With grouped-query attention
  (SmolLM2, Gemma 3) v_proj has fewer rows than o_proj has inputs, so the heads that share a KV head would
  need one scale; llm-awq then leaves o_proj unscaled (see ``AWQ.gqa`` for the variant that ties them);
- a parameterless activation (GELU before GPT-NeoX's dense_4h_to_h): llm-awq's ``ScaledActivation``.
Which case applies is found by probing the block, not from module names: on one calibration sequence, each
earlier linear layer's outputs are divided by distinct positive factors and the group's input is checked to
be divided by the same factors, channel for channel. A group that folds nowhere (GPT-NeoX's attention dense,
o_proj under GQA) is only clipped and rounded, as in llm-awq.

The scale s = mean|x|^r / sqrt(max * min) is searched over r in {0, 1/n_grid, ..., (n_grid-1)/n_grid},
minimising the squared error of the output of the group's lowest common parent module (the attention or MLP
module, or the layer itself), as llm-awq's ``module2inspect``. The stored fake-quant weight is
Q(W diag(s)) diag(1/s), with ``calib_grid.in_scale = s``: folding s as above gives the same function with
integer weights (``tests/test_awq.py`` folds every scale and compares outputs). Then, for every layer except
query/key projections, the clipping range of each output row and group is searched (max |w| shrunk by up to
``max_shrink`` in steps of 1/n_grid) to minimise that group's output error on ``clip_tokens`` evenly spaced
tokens, and the clipped, scaled weights are rounded to the group grid (``quant.rtn``). A fold into a linear
layer also divides its rows by a scale; per-row grids and the per-row clipping search are invariant to that.

Cost: one full-precision pass of the block gives every input, the search references (the parents' outputs),
and, by default, the next block's inputs; a multi-layer group runs its parent module once per grid point on
the search sequences (at 32 x 512 on SmolLM2 these attention and MLP passes are ~90% of AWQ's time, about
20 plain-forward units); a single-layer group's error, and the clipping search's, is a quadratic form in the
input Gram matrix when there are more tokens than channels, evaluated for every grid point at once.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ..blocks import block_linears, input_key
from ..quant import Grid, grid_params, quantize, rtn
from ...errors import FieldError
from .base import Method, QuantParams, register

_QUERY_KEY = re.compile(r"(^|\.)(q_proj|k_proj|q|k|query|key|query_key_value|qkv_proj|c_attn)$")
SEARCH_INPUTS = ("full-precision", "quantized")
GQA_MODES = ("skip", "tie")


_CHUNK = 1 << 21      # elements per stacked quantization: fewer, larger operations, still cache-sized


def _fake_quant_scaled(W: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int, sym: bool) -> torch.Tensor:
    """W [out, n] with its input channels scaled by each row of ``scales`` [R, n], quantized, and scaled back
    (what the scale search scores): [R, out, n]. Each row's grid depends on that row only, so the scaled copies
    are stacked and quantized a few at a time by one ``rtn`` call: the same numbers as R calls, with far fewer
    small operations (which cost milliseconds each on a CPU shared with other processes)."""
    per_call = max(1, _CHUNK // W.numel())
    parts = []
    for chunk in scales.split(per_call):
        S = chunk.unsqueeze(1)
        stacked = (W.unsqueeze(0) * S).reshape(-1, W.shape[1])
        parts.append(rtn(stacked, bits, group_size, sym)[0].view(len(chunk), *W.shape) / S)
    return torch.cat(parts)


def _sq_errors(dW: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per row of dW [..., out, n]: the sum over the tokens x [T, n] of (dW x)^2. Through the Gram matrix,
    sum((dW (x^T x)) * dW), when there are more tokens than channels: fewer products and no [..., out, T]
    temporary."""
    if x.shape[0] > x.shape[1]:
        return ((dW @ (x.T @ x)) * dW).sum(-1)
    return ((dW @ x.T) ** 2).sum(-1)


def _common_parent(block: nn.Module, names: list[str]) -> tuple[str, nn.Module]:
    parts = [n.split(".") for n in names]
    prefix = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        prefix.append(level[0])
    if len(names) == 1:
        prefix = parts[0]
    name = ".".join(prefix)
    return name, (block.get_submodule(name) if name else block)


def _leading(obj, batch: int, k: int):
    """A call's arguments (nested tuples, lists, dicts) cut to their first k sequences: tensors of two or more
    dimensions whose first is the batch (hidden states, masks, per-sequence positions); the rest (shared
    rotary tables, flags) as they are."""
    if isinstance(obj, torch.Tensor):
        return obj[:k] if k < batch and obj.dim() >= 2 and obj.shape[0] == batch else obj
    if isinstance(obj, (tuple, list)):
        items = [_leading(o, batch, k) for o in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)     # named tuples too
    if isinstance(obj, dict):
        return {key: _leading(v, batch, k) for key, v in obj.items()}
    return obj


def _channel_maps(n: int, m: int, tie: bool) -> list[torch.Tensor]:
    """Ways n input channels can read the m output rows of an earlier layer: one to one, or (``tie``) as
    o_proj reads v_proj under grouped-query attention, each KV head's d rows read by n // m query heads."""
    if n == m:
        return [torch.arange(n)]
    if not tie or n < m or n % m:
        return []
    j, rep = torch.arange(n), n // m
    return [(j // (d * rep)) * d + j % d for d in range(1, m + 1) if m % d == 0]


def _is_norm(module: nn.Module, n: int) -> bool:
    """A module whose parameters are all per-channel vectors of width n (LayerNorm, RMSNorm): its output
    divided by s is the same module with weight (and bias) divided by s."""
    return (isinstance(getattr(module, "weight", None), torch.Tensor) and not isinstance(module, nn.Linear)
            and all(p.dim() == 1 and p.numel() == n for p in module.parameters()))


@dataclass
class _Fold:
    """Where a group's 1/s goes: ``module`` of ``kind`` "norm", "linear" (its rows) or "activation"."""
    module: str
    kind: str
    rows: torch.Tensor | None = None   # "linear" with tied scales: the row each input channel reads


@dataclass
class _Pass:
    """What the full-precision pass of a block over every batch recorded."""
    inputs: dict        # linear -> its input, per batch
    order: list         # linears in the order they ran
    producers: dict     # linear -> the leaf module whose output it read (None: computed outside a module)
    groups: list        # lists of linears that read the same tensor, in block order
    calls: dict         # parent module -> (args, kwargs) per search batch
    outputs: dict       # parent module -> its output per search batch (the search's reference)
    block_outputs: list


@register
@dataclass
class AWQ(QuantParams, Method):
    """AWQ with llm-awq's defaults; a variant is named in the label wherever it is used.

    - ``search_samples=None``: the scale search scores every calibration sequence, as the activation
      statistics and the clipping tokens come from every one, so a sample-count study varies all three
      together (llm-awq searches on its whole calibration set). An integer caps the search at the first N
      sequences: an explicit parameter, recorded in the run key and the label.
    - ``search_input="full-precision"``: every block is searched on the unquantized model's activations, as
      llm-awq runs each block in full precision to produce the next block's inputs (quantization is applied
      after the search). ``"quantized"`` feeds each block the outputs of the already quantized blocks before
      it (version 1's order): each block then also adapts to the error of those before it.
    - ``gqa="skip"``: under grouped-query attention o_proj is not scaled, as llm-awq (a scale per o_proj input
      channel cannot be folded into v_proj's fewer rows, and an unfolded one is an extra full-precision
      multiplier). ``"tie"`` searches one scale per v_proj row, shared by the query heads that read it, so it
      folds.
    - ``n_grid=20``, ``max_shrink=0.5``, ``clip_tokens=512``: llm-awq's grid of ratios and of clipping
      shrinks, and its number of clipping tokens.
    """

    n_grid: int = 20
    max_shrink: float = 0.5
    search_samples: int | None = None       # None: the scale search uses every calibration sequence
    search_input: str = "full-precision"    # or "quantized": the quantized blocks' outputs feed the next block
    gqa: str = "skip"                       # o_proj under grouped-query attention: "skip" (llm-awq) or "tie"
    clip_tokens: int = 512                  # tokens used by the clipping search, evenly spaced
    name = "awq"
    version = 2        # 2: groups scaled only where the scale folds; search on all samples, full-precision inputs
    block_level = True

    def validate(self):
        super().validate()
        cap = self.search_samples
        cap_ok = cap is None or (isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1)
        for name, ok, rule in [("n_grid", self.n_grid >= 1, ">= 1"),
                               ("max_shrink", 0 <= self.max_shrink < 1, "in [0, 1)"),
                               ("search_samples", cap_ok, "None (all) or an integer >= 1"),
                               ("search_input", self.search_input in SEARCH_INPUTS, f"one of {SEARCH_INPUTS}"),
                               ("gqa", self.gqa in GQA_MODES, f"one of {GQA_MODES}")]:
            if not ok:
                raise FieldError(name, f"awq {name} must be {rule}, got {getattr(self, name)!r}")

    def variants(self) -> list[str]:
        return super().variants() + [text for text, on in [
            ("quantized-input search", self.search_input == "quantized"), ("tied GQA scales", self.gqa == "tie"),
            (f"search on {self.search_samples} samples", self.search_samples is not None)] if on]

    # -- the full-precision pass ---------------------------------------------------------------
    def _plan(self, hidden) -> list[tuple[int, int, int]]:
        """(batch, how many of its leading sequences the scale search uses, its size)."""
        plan, left = [], self.search_samples
        for b, h in enumerate(hidden):
            k = h.shape[0] if left is None else min(h.shape[0], left)
            if k == 0:
                break
            plan.append((b, k, h.shape[0]))
            left = None if left is None else left - k
        return plan

    def _run(self, block, hidden, calls, linears, n_search: int) -> _Pass:
        """Run the block once over every batch, recording what the search and the folds need."""
        inputs = {name: [] for name in linears}
        order, producers, leaf_outputs = [], {}, {}
        parents = {".".join(n.split(".")[:k]) for n in linears for k in range(1, n.count(".") + 1)}
        parent_calls = {name: [] for name in parents}
        parent_outputs = {name: [] for name in parents}
        batch = {"index": 0}

        def on_linear(module, args, out, name):
            inputs[name].append(args[0])        # all inputs are held, so addresses are not reused
            if batch["index"] == 0:
                order.append(name)
                producers[name] = leaf_outputs.get(input_key(args[0]), (None,))[0]

        def on_leaf(module, args, out, name):
            # Identity modules (dropout in eval) pass their input on: the producer is the module before.
            if batch["index"] == 0 and isinstance(out, torch.Tensor) and not (args and out is args[0]):
                leaf_outputs[input_key(out)] = (name, out)     # holding out keeps its address unique

        def on_call(module, args, kwargs, name):
            if batch["index"] < n_search:
                parent_calls[name].append((args, kwargs))

        def on_output(module, args, out, name):
            if batch["index"] < n_search:
                parent_outputs[name].append(out[0] if isinstance(out, tuple) else out)

        hooks = [layer.register_forward_hook(lambda m, a, o, n=name: on_linear(m, a, o, n))
                 for name, layer in linears.items()]
        hooks += [m.register_forward_hook(lambda m, a, o, n=name: on_leaf(m, a, o, n))
                  for name, m in block.named_modules() if name and not isinstance(m, nn.Linear)
                  and next(m.children(), None) is None]
        for name in parents:
            module = block.get_submodule(name)
            hooks.append(module.register_forward_pre_hook(lambda m, a, k, n=name: on_call(m, a, k, n),
                                                          with_kwargs=True))
            hooks.append(module.register_forward_hook(lambda m, a, o, n=name: on_output(m, a, o, n)))
        block_outputs = []
        try:
            with torch.no_grad():
                for index, (h, (args, kwargs)) in enumerate(zip(hidden, calls)):
                    batch["index"] = index
                    block_outputs.append(block(h, *args, **kwargs))
                    leaf_outputs.clear()
        finally:
            for hook in hooks:
                hook.remove()
        groups: dict[tuple, list[str]] = {}
        for name in order:
            groups.setdefault(input_key(inputs[name][0]), []).append(name)
        parent_calls[""] = [((h, *args), kwargs) for h, (args, kwargs) in list(zip(hidden, calls))[:n_search]]
        parent_outputs[""] = [o[0] if isinstance(o, tuple) else o for o in block_outputs[:n_search]]
        return _Pass(inputs, order, producers, list(groups.values()), parent_calls, parent_outputs, block_outputs)

    # -- where each group's scale folds ----------------------------------------------------------
    @staticmethod
    def _probe(block, h, call, leaders, perturb=None) -> dict[str, torch.Tensor]:
        """The leaders' inputs when the block runs on the first sequence of ``h``; ``perturb`` = (layer, c):
        with that layer's outputs divided by c, as folding 1/c into its rows would."""
        args, kwargs = _leading(call, h.shape[0], 1)
        got = {}

        def record(module, args, out, name):      # returns None: the output stays as it is
            got.setdefault(name, args[0].reshape(-1, args[0].shape[-1]).float())

        hooks = [block.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: record(m, a, o, n)) for n in leaders]
        if perturb is not None:
            layer, c = perturb
            hooks.append(layer.register_forward_hook(lambda m, i, o: o / c.to(o.dtype)))
        try:
            with torch.no_grad():
                block(h[:1], *args, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()
        return got

    def _folds(self, block, hidden, calls, linears, seen: _Pass) -> dict[str, _Fold | None]:
        """For each group (keyed by its first layer) where its scale folds; None: nowhere (left unscaled)."""
        folds, pending = {}, []
        for names in seen.groups:
            producer = seen.producers[names[0]]
            if producer and _is_norm(block.get_submodule(producer), linears[names[0]].in_features):
                folds[names[0]] = _Fold(producer, "norm")
            else:
                pending.append(names[0])
        if not pending:
            return folds
        dtype = next(block.parameters()).dtype
        tol = 1e-3 if dtype in (torch.float32, torch.float64) else 3e-2   # a wrong candidate errs by ~10%
        reference = self._probe(block, hidden[0], calls[0], pending)
        perturbed = {}
        for leader in pending:
            n, x_ref = linears[leader].in_features, reference[leader]
            folds[leader] = None
            # The nearest earlier layer first: it is the one that feeds this group if any does.
            for candidate in reversed(seen.order[:seen.order.index(leader)]):
                m = linears[candidate].out_features
                maps = _channel_maps(n, m, tie=self.gqa == "tie")
                if not maps:
                    continue
                # Distinct factors in [2, 3): a wrong channel map, or a layer that feeds the group through a
                # non-homogeneous op (SiLU, softmax), changes the input by far more than the tolerance.
                c = 2 + torch.rand(m, generator=torch.Generator().manual_seed(m), dtype=torch.float64)
                c = c.float().to(x_ref.device)
                if candidate not in perturbed:
                    perturbed[candidate] = self._probe(block, hidden[0], calls[0], pending, (linears[candidate], c))
                x = perturbed[candidate][leader]
                rows = next((r for r in maps if (x * c[r] - x_ref).norm() <= tol * x_ref.norm()), None)
                if rows is not None:
                    folds[leader] = _Fold(candidate, "linear", None if n == m else rows)
                    break
            producer = seen.producers[leader]
            if folds[leader] is None and producer and not list(block.get_submodule(producer).parameters()):
                folds[leader] = _Fold(producer, "activation")
        return folds

    # -- the scale search ------------------------------------------------------------------------
    def _scales(self, x_mean: torch.Tensor, fold: _Fold) -> tuple[list[float], torch.Tensor]:
        """The grid's ratios and their scales [n_grid, channels]."""
        if fold.rows is not None:      # one scale per row of the fold target: the mean over the channels reading it
            rows = fold.rows.to(x_mean.device)
            count = torch.zeros(int(rows.max()) + 1, device=x_mean.device).index_add_(0, rows, torch.ones_like(x_mean))
            x_mean = torch.zeros_like(count).index_add_(0, rows, x_mean) / count
        ratios = [step / self.n_grid for step in range(self.n_grid)]
        scales = []
        for ratio in ratios:
            s = x_mean.pow(ratio).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            scales.append(s if fold.rows is None else s[rows])
        return ratios, torch.stack(scales)

    def _fake(self, W: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return _fake_quant_scaled(W.float(), scales, self.bits, self.group_size, self.sym).to(W.dtype)

    def _module_losses(self, parent, records, layers, scales) -> list[float]:
        """Squared error of the parent's output, per candidate scale, with the group's layers fake-quantized."""
        originals = [layer.weight.data for layer in layers]
        candidates = [self._fake(W, scales) for W in originals]
        losses = []
        try:
            with torch.no_grad():
                for index in range(len(scales)):
                    for layer, weights in zip(layers, candidates):
                        layer.weight.data = weights[index]
                    loss = 0.0
                    for args, kwargs, reference in records:
                        out = parent(*args, **kwargs)
                        out = out[0] if isinstance(out, tuple) else out
                        loss += ((out - reference).float() ** 2).sum().item()
                    losses.append(loss)
        finally:
            for layer, W in zip(layers, originals):
                layer.weight.data = W
        return losses

    def _linear_losses(self, layer, x: torch.Tensor, scales) -> list[float]:
        """The same for a group that is its own parent (x: the search tokens' inputs): the output error
        sum over tokens of ||(W_q - W) x||^2 needs no forward pass."""
        W = layer.weight.data.float()
        return _sq_errors(self._fake(W, scales) - W, x).double().sum(1).tolist()

    def search_scale(self, block, names, layers, x, fold, seen: _Pass, plan) -> tuple[torch.Tensor, float]:
        """The scale of the group's input channels that minimises its parent's output error, and its ratio."""
        ratios, scales = self._scales(x.abs().mean(0), fold)
        parent_name, parent = _common_parent(block, names)
        if len(names) == 1:
            # x lists the batches' tokens in order, sequence after sequence: the search's are a prefix.
            tokens = sum(seen.inputs[names[0]][b].numel() // x.shape[1] * k // size for b, k, size in plan)
            losses = self._linear_losses(layers[0], x[:tokens], scales)
        else:
            records = []
            for (_, k, size), call, reference in zip(plan, seen.calls[parent_name], seen.outputs[parent_name]):
                records.append((*_leading(call, size, k), _leading(reference, size, k)))
            losses = self._module_losses(parent, records, layers, scales)
        best = min(range(len(losses)), key=losses.__getitem__)     # the first of equal losses, as a strict "<"
        return scales[best], ratios[best]

    # -- clipping and rounding ---------------------------------------------------------------------
    def clip_and_quantize(self, layer: nn.Linear, s: torch.Tensor | None, x: torch.Tensor, clip: bool) -> Grid:
        """Quantize the layer on the scaled input channels (s None: unscaled), each group clipped (unless
        ``clip`` is False) to the range that minimises the squared error of its outputs on ``x``; write W
        back unscaled."""
        W = layer.weight.data.float()
        if s is not None:
            W, x = W * s.unsqueeze(0), x / s.unsqueeze(0)
        out, grid = rtn(W, self.bits, self.group_size, self.sym,
                        clip=(lambda w, a, b: self._clip(w, x[:, a:b])) if clip else None)
        if s is not None:
            out = out / s.unsqueeze(0)
        layer.weight.data.copy_(out.to(layer.weight.dtype))
        grid.in_scale = None if s is None else s.clone()
        return grid

    def _clip(self, w: torch.Tensor, xg: torch.Tensor) -> torch.Tensor:
        """w clamped per row to the shrunk range whose quantized outputs on xg err least (every shrink step
        at once)."""
        steps = int(self.max_shrink * self.n_grid)
        if steps == 0:
            return w
        shrink = torch.tensor([1 - step / self.n_grid for step in range(steps)], dtype=w.dtype, device=w.device)
        limit = w.abs().amax(dim=1, keepdim=True) * shrink.view(-1, 1, 1)      # [steps, rows, 1]
        cw = torch.maximum(torch.minimum(w, limit), -limit)                   # [steps, rows, cols]
        flat = cw.reshape(-1, w.shape[1])
        q = quantize(flat, *grid_params(flat, self.bits, self.sym), self.bits).view_as(cw)
        best = _sq_errors(q - w, xg).argmin(0)   # the first of equal errors: the least shrink, as a strict "<" loop
        return cw[best, torch.arange(w.shape[0], device=w.device)]

    def compress_block(self, block, hidden, calls) -> tuple[list | None, dict]:
        """Compress the block; return (the next block's inputs, or None for the pipeline to run the
        quantized block; per-layer info)."""
        linears = block_linears(block)
        plan = self._plan(hidden)
        seen = self._run(block, hidden, calls, linears, len(plan))
        folds = self._folds(block, hidden, calls, linears, seen)
        info = {}
        for names in seen.groups:
            layers = [linears[n] for n in names]
            x = torch.cat([i.reshape(-1, i.shape[-1]) for i in seen.inputs[names[0]]]).float()
            fold = folds[names[0]]
            s, ratio = (None, None) if fold is None else self.search_scale(block, names, layers, x, fold, seen, plan)
            step = max(1, x.shape[0] // self.clip_tokens)
            x_clip = x[::step][: self.clip_tokens]
            for name, layer in zip(names, layers):
                layer.calib_grid = self.clip_and_quantize(layer, s, x_clip, clip=not _QUERY_KEY.search(name))
                info[name] = {"awq_ratio": ratio, "awq_fold": fold.module if fold else None,
                              "awq_fold_kind": fold.kind if fold else None, "group": names}
        return (seen.block_outputs if self.search_input == "full-precision" else None), info
