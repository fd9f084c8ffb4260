"""Compression cost (and quality) on a real model: one line per method.

For each method: wall seconds of compress(), the process's peak RSS, the unit (wall seconds of one
plain forward pass of the same calibration tokens through the whole model), their ratio, and, with
--ppl, WikiText-2 (or held-out) perplexity after compression. Each method runs in its own process so
peak RSS is its own. Results are appended to --out as jsonl as they finish (an interrupted run keeps
what it measured).

    python benchmarks/compress.py --num-samples 32 --seq-len 512 --ppl --out benchmarks/smollm2-32x512.jsonl
    python benchmarks/compress.py --num-samples 128 --seq-len 512 --settings "50%,3-bit g128"
    python benchmarks/compress.py --methods wanda,sparsegpt,gptq --sequential block --ppl   # one order only
    python benchmarks/compress.py --methods awq --settings "3-bit g128" --awq-search-samples all,8,4,2,1 --ppl
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time

import torch

CONFIGS = [
    ("dense", {}),
    ("magnitude", {"sparsity": 0.5}), ("wanda", {"sparsity": 0.5}), ("sparsegpt", {"sparsity": 0.5}),
    ("magnitude", {"n": 2, "m": 4}), ("wanda", {"n": 2, "m": 4}), ("sparsegpt", {"n": 2, "m": 4}),
    ("rtn", {"bits": 3, "group_size": 128}), ("gptq", {"bits": 3, "group_size": 128}),
    ("awq", {"bits": 3, "group_size": 128}),
    ("rtn", {"bits": 4, "group_size": 128}), ("gptq", {"bits": 4, "group_size": 128}),
    ("awq", {"bits": 4, "group_size": 128}),
    # SpQR stores statistics (0.625 bits per weight at g16) and outliers (32 bits each) on top of its bits; on
    # SmolLM2-135M (8 x 128 news tokens) 2-bit with threshold 1 stores 3.02 bits per weight (1.2% outliers),
    # 3-bit with the reference's 0.2 stores 4.2 (1.8%); each row's avg_bits says exactly.
    ("spqr", {"bits": 2, "group_size": 16, "outlier_threshold": 1.0}), ("spqr", {"bits": 3, "group_size": 16}),
]


def calibration(args, tokenizer):
    from calib_lib.data import get_source
    from calib_lib.data.sampling import CalibrationSpec, sample
    source = args.source
    if source == "auto":
        source = "c4" if get_source("c4").availability()[0] else "news"
    return sample(CalibrationSpec(source, args.num_samples, args.seq_len, seed=0), tokenizer)


def eval_windows(tokenizer, args):
    from calib_lib.data import get_source, load_eval_text
    from calib_lib.evaluate import make_windows
    text_id = "wikitext2" if get_source("wikitext2").availability()[0] else "wikipedia"
    ids = tokenizer(load_eval_text(text_id), return_tensors="pt").input_ids[0]
    return text_id, make_windows(ids, 512, args.eval_windows)


class PeakRSS:
    """Peak resident memory while a block of code runs (ru_maxrss would include model loading)."""

    def __enter__(self):
        self.peak, self._stop = self._rss(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def one(args) -> dict:
    """Run a single configuration in this process."""
    from calib_lib.compress import METHODS, compress
    from calib_lib.evaluate import perplexity
    from calib_lib.models import load_model
    model, tokenizer = load_model(args.model, log=lambda *a: None)
    cal = calibration(args, tokenizer)
    params = json.loads(args.params)
    # Every parameter, defaults included (the order above all): a record says exactly what ran.
    recorded = METHODS[args.method](**params).params() if args.method in METHODS else params
    row = {"method": args.method, "params": recorded, "batch_size": args.batch_size, "calibration": cal.metadata()["spec"],
           "calibration_fingerprint": cal.fingerprint}
    row["rss_before_mib"] = round(PeakRSS._rss() / 2**20)
    if args.method != "dense":
        started = time.time()
        with PeakRSS() as memory:
            report = compress(model, args.method, cal.input_ids, batch_size=args.batch_size, progress=False,
                              **params)
        row["compress_seconds"] = round(time.time() - started, 1)
        row["damping_retries"] = report["damping_retries"]
        row["compress_peak_rss_mib"] = round(memory.peak / 2**20)
        counted = [v for v in report["layers"].values() if "avg_bits" in v]     # spqr: storage per weight
        if counted:
            weights = sum(v["weights"] for v in counted)
            row["avg_bits"] = round(sum(v["avg_bits"] * v["weights"] for v in counted) / weights, 3)
            row["outlier_share"] = round(sum(v["outliers"] for v in counted) / weights, 5)
    row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if args.ppl:
        text_id, windows = eval_windows(tokenizer, args)
        started = time.time()
        result = perplexity(model, windows, progress=False)
        row.update(eval_text=text_id, perplexity=round(result.perplexity, 3),
                   scored_tokens=result.scored_tokens, eval_seconds=round(time.time() - started, 1))
    return row


def unit_seconds(args) -> float:
    from calib_lib.models import load_model
    model, tokenizer = load_model(args.model, log=lambda *a: None)
    ids = calibration(args, tokenizer).input_ids
    started = time.time()
    with torch.no_grad():
        for start in range(0, ids.shape[0], 8):
            model(input_ids=ids[start:start + 8], use_cache=False)
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--source", default="auto", help="calibration source (auto: c4 with the mirror, else news)")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--ppl", action="store_true", help="also report perplexity after compression")
    parser.add_argument("--methods", default="", help="comma-separated method names to keep (default: all)")
    parser.add_argument("--settings", default="",
                        help="comma-separated settings to keep, as the report writes them: 50%%, 2:4, 3-bit g128, "
                             "4-bit g128 (default: all)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="calibration sequences per forward in the driver (changes only float rounding)")
    parser.add_argument("--sequential", choices=["layer", "block"],
                        help="one order for the layer-wise methods (default: both, block then layer)")
    parser.add_argument("--awq-search-samples", default="all",
                        help="comma-separated AWQ search caps, each run as its own row: all (the published "
                             "default: every calibration sequence) or N (the first N sequences, a labelled variant)")
    parser.add_argument("--out", default="benchmarks/compress-results.jsonl")
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        print(json.dumps(one(args)))
        return
    from report import fmt_params
    keep = set(filter(None, args.methods.split(",")))
    settings = set(filter(None, (s.strip() for s in args.settings.split(","))))
    unit = unit_seconds(args)
    from calib_lib.runs.runner import cpu_info
    machine = {"cpu": platform.processor() or platform.machine(), **cpu_info(), "cores": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    print(f"unit (one forward of {args.num_samples} x {args.seq_len} tokens): {unit:.1f} s on {machine}", flush=True)
    from calib_lib.compress import METHODS
    from calib_lib.compress.methods import LayerwiseMethod
    other_order = {}                          # (method, setting) -> perplexity in the order run before
    for method, params in CONFIGS:
        if method != "dense" and ((keep and method not in keep) or (settings and fmt_params(method, params) not in settings)):
            continue
        # Layer-wise methods run in both orders unless --sequential names one: each line shows the other's perplexity.
        layerwise = issubclass(METHODS.find(method) or object, LayerwiseMethod)
        orders = ([args.sequential] if args.sequential else ["block", "layer"]) if layerwise else [None]
        for order in orders:
            for extra in _variants(args, method):
                run_one(args, method, dict(params, sequential=order, **extra) if order else dict(params, **extra),
                        unit, machine, other_order)


def _variants(args, method) -> list[dict]:
    """Extra parameters, one row each: AWQ's search caps (``{}`` is the published default)."""
    if method != "awq":
        return [{}]
    caps = [c.strip() for c in args.awq_search_samples.split(",") if c.strip()]
    bad = [c for c in caps if c != "all" and not (c.isdigit() and int(c) >= 1)]
    if bad:
        raise SystemExit(f"--awq-search-samples takes 'all' or integers >= 1, got {bad}: e.g. all,8,4")
    return [{} if c == "all" else {"search_samples": int(c)} for c in caps]


def run_one(args, method, params, unit, machine, other_order) -> None:
    """Benchmark one configuration in its own process; append its row to --out and print it."""
    from report import fmt_params
    setting = fmt_params(method, {k: v for k, v in params.items() if k != "sequential"})
    cmd = [sys.executable, __file__, "--method", method, "--params", json.dumps(params),
           "--model", args.model, "--source", args.source, "--num-samples", str(args.num_samples),
           "--seq-len", str(args.seq_len), "--eval-windows", str(args.eval_windows)]
    cmd += ["--batch-size", str(args.batch_size)]
    if args.ppl:
        cmd.append("--ppl")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{method} {params} FAILED:\n{proc.stderr[-3000:]}", flush=True)
        return
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    if "perplexity" in row and "sequential" in params:
        previous = other_order.get((method, setting))
        if previous:
            row["perplexity_other_order"] = previous
        other_order[(method, setting)] = {"sequential": params["sequential"], "perplexity": row["perplexity"]}
    row.update(unit_seconds=round(unit, 1), machine=machine, model=args.model)
    if "compress_seconds" in row:
        row["ratio"] = round(row["compress_seconds"] / unit, 2)
    with open(args.out, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps({k: row.get(k) for k in ("method", "params", "compress_seconds", "ratio",
                                              "compress_peak_rss_mib", "avg_bits", "perplexity",
                                              "perplexity_other_order")}), flush=True)


if __name__ == "__main__":
    main()
