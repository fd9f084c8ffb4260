"""AWQ (Lin et al. 2024): activation-aware per-input-channel scaling, then weight clipping, then RTN.

For every group of linear layers that read the same input (q/k/v, gate/up, ...) the scale
s = mean|x|^r / sqrt(max * min) is searched over r in {0, 1/20, ..., 19/20}, minimising the squared
error of the output of the group's lowest common parent module (the attention or MLP module, or the
layer itself), as llm-awq's ``module2inspect``. The scale is an exact re-parameterisation,
W x = (W diag(s)) (x / s): llm-awq folds 1/s into the previous operation; here the stored fake-quant
weight is Q(W diag(s)) diag(1/s), the same function, so no architecture-specific folding is needed.
Then, for every layer except query/key projections, the clipping range of each output row and group is
searched (max |w| shrunk by up to 50% in 20 steps) to minimise that group's output error, and the
clipped, scaled weights are rounded to the group grid.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ..blocks import block_linears
from ..quant import Grid, grid_params, quantize, rtn
from ...errors import FieldError
from .base import Method, QuantParams, register

_QUERY_KEY = re.compile(r"(^|\.)(q_proj|k_proj|q|k|query|key|query_key_value|qkv_proj|c_attn)$")


def _fake_quant_scaled(W: torch.Tensor, s: torch.Tensor, bits: int, group_size: int, sym: bool) -> torch.Tensor:
    """W with its input channels scaled by s, quantized, and scaled back (what the scale search scores)."""
    return rtn(W * s.unsqueeze(0), bits, group_size, sym)[0] / s.unsqueeze(0)


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


@register
@dataclass
class AWQ(QuantParams, Method):
    n_grid: int = 20
    max_shrink: float = 0.5
    search_samples: int = 8        # calibration sequences used by the scale search (whole batches)
    clip_tokens: int = 512         # tokens used by the clipping search, evenly spaced
    name = "awq"
    block_level = True

    def validate(self):
        super().validate()
        for name, ok, rule in [("n_grid", self.n_grid >= 1, ">= 1"), ("max_shrink", 0 <= self.max_shrink < 1, "in [0, 1)"),
                               ("search_samples", self.search_samples >= 1, ">= 1")]:
            if not ok:
                raise FieldError(name, f"awq {name} must be {rule}, got {getattr(self, name)!r}")

    # -- statistics ----------------------------------------------------------------------------
    def _collect(self, block, hidden, calls, linears, n_batches: int):
        """One pass over the block: every linear's inputs (all batches), how layers group by shared
        input, and the call arguments of every module that can be a group's parent (first batches)."""
        inputs = {name: [] for name in linears}
        candidates = {".".join(n.split(".")[:k]) for n in linears for k in range(1, n.count(".") + 2)}
        parent_calls = {name: [] for name in candidates}
        batch = {"index": 0}
        hooks = [layer.register_forward_hook(lambda m, i, o, n=name: inputs[n].append(i[0]))
                 for name, layer in linears.items()]
        hooks += [block.get_submodule(name).register_forward_pre_hook(
            lambda m, args, kwargs, n=name: parent_calls[n].append((args, kwargs))
            if batch["index"] < n_batches else None, with_kwargs=True) for name in candidates]
        try:
            with torch.no_grad():
                for index, (h, (args, kwargs)) in enumerate(zip(hidden, calls)):
                    batch["index"] = index
                    block(h, *args, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()
        groups: dict[tuple, list[str]] = {}
        for name in linears:                    # registration order follows the block's modules
            first = inputs[name][0]             # all inputs are held, so addresses are not reused
            groups.setdefault((first.data_ptr(), tuple(first.shape)), []).append(name)
        parent_calls[""] = [(( h,) + tuple(args), kwargs) for h, (args, kwargs) in list(zip(hidden, calls))[:n_batches]]
        return inputs, list(groups.values()), parent_calls

    # -- the search --------------------------------------------------------------------------
    @staticmethod
    def _out(parent, records):
        outs = []
        for args, kwargs in records:
            out = parent(*args, **kwargs)
            outs.append(out[0] if isinstance(out, tuple) else out)
        return outs

    def search_scale(self, parent, records, layers: list[nn.Linear], x_mean: torch.Tensor):
        originals = [l.weight.data.clone() for l in layers]
        with torch.no_grad():
            reference = self._out(parent, records)
            best = (float("inf"), None, None)
            for step in range(self.n_grid):
                ratio = step / self.n_grid
                s = x_mean.pow(ratio).clamp(min=1e-4)
                s = s / (s.max() * s.min()).sqrt()
                for layer, W in zip(layers, originals):
                    layer.weight.data = _fake_quant_scaled(W.float(), s, self.bits, self.group_size,
                                                           self.sym).to(W.dtype)
                out = self._out(parent, records)
                loss = sum(((o - r).float() ** 2).sum().item() for o, r in zip(out, reference))
                if loss < best[0]:
                    best = (loss, ratio, s.clone())
            for layer, W in zip(layers, originals):
                layer.weight.data = W
        return best[2], best[1]

    def clip_and_quantize(self, layer: nn.Linear, s: torch.Tensor, x: torch.Tensor, clip: bool) -> Grid:
        """Quantize the layer on the scaled input channels, each group clipped (unless ``clip`` is False)
        to the range that minimises the squared error of its outputs on ``x``; write W back unscaled."""
        W = layer.weight.data.float() * s.unsqueeze(0)
        xs = x / s.unsqueeze(0)
        out, grid = rtn(W, self.bits, self.group_size, self.sym,
                        clip=(lambda w, a, b: self._clip(w, xs[:, a:b])) if clip else None)
        layer.weight.data.copy_((out / s.unsqueeze(0)).to(layer.weight.dtype))
        grid.in_scale = s.clone()
        return grid

    def _clip(self, w: torch.Tensor, xg: torch.Tensor) -> torch.Tensor:
        """w clamped per row to the shrunk range whose quantized outputs on xg err least."""
        org = xg @ w.T
        max_abs = w.abs().amax(dim=1, keepdim=True)
        best_err = torch.full((w.shape[0],), float("inf"), device=w.device)
        best_max = max_abs.clone()
        for step in range(int(self.max_shrink * self.n_grid)):
            limit = max_abs * (1 - step / self.n_grid)
            cw = torch.clamp(w, -limit, limit)
            scale, zero = grid_params(cw, self.bits, self.sym)
            err = ((xg @ quantize(cw, scale, zero, self.bits).T - org) ** 2).mean(0)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_max = torch.where(better.unsqueeze(1), limit, best_max)
        return torch.clamp(w, -best_max, best_max)

    def compress_block(self, block, hidden, calls) -> dict:
        linears = block_linears(block)
        per_batch = hidden[0].shape[0]
        n_batches = max(1, -(-self.search_samples // per_batch))
        inputs, groups, parent_calls = self._collect(block, hidden, calls, linears, n_batches)
        info = {}
        for names in groups:
            x = torch.cat([i.reshape(-1, i.shape[-1]) for i in inputs[names[0]]]).float()
            x_mean = x.abs().mean(0)
            parent_name, parent = _common_parent(block, names)
            records = parent_calls[parent_name]
            layers = [linears[n] for n in names]
            s, ratio = self.search_scale(parent, records, layers, x_mean)
            step = max(1, x.shape[0] // self.clip_tokens)
            x_clip = x[::step][: self.clip_tokens]
            for name, layer in zip(names, layers):
                layer.calib_grid = self.clip_and_quantize(layer, s, x_clip, clip=not _QUERY_KEY.search(name))
                info[name] = {"awq_ratio": ratio, "group": names}
        return info
