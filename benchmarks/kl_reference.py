"""How much of the dense model's distribution the reference must keep: its KL estimates against the exact KL.

The dense model's next-token distributions are cached per scored position as the top-k log-probabilities, the
remaining mass implied, optionally with m tokens sampled from the tail (``calib_lib/evaluate/fidelity.py``).
With m = 0 the remainder is merged into one category (a lower bound on the KL); with m > 0 the tail's share is
estimated from the samples (no bias, some noise). This script compresses SmolLM2-135M crudely in a few ways,
computes the exact KL over the full vocabulary (float64) on windows of WikiText-2 (wikipedia without the
mirror), and prints, per compression and setting, mean KL and its 99th percentile over tokens next to the exact
numbers, their relative errors, and the reference's storage per window (raw arrays, and the compressed npz the
cache writes). Sampled settings are drawn with several seeds: their errors are shown per seed.

    CALIB_MIRROR=/work/shared/offline-mirror .venv/bin/python benchmarks/kl_reference.py
    .venv/bin/python benchmarks/kl_reference.py --windows 4 --merged 8,32 --sampled 32+32 --configs magnitude-50
"""
from __future__ import annotations

import argparse
import copy
import io
import os
import platform
import time

import numpy as np
import torch

# name -> (method, parameters): crude data-free compressions of increasing damage
CONFIGS = {
    "rtn-4bit-g128": ("rtn", {"bits": 4, "group_size": 128}),
    "rtn-3bit-g128": ("rtn", {"bits": 3, "group_size": 128}),
    "magnitude-50": ("magnitude", {"sparsity": 0.5}),
}


def eval_windows(tokenizer, num_windows: int, seq_len: int):
    from calib_lib.data import get_source, load_eval_text
    from calib_lib.evaluate import make_windows
    text_id = "wikitext2" if get_source("wikitext2").availability()[0] else "wikipedia"
    ids = tokenizer(load_eval_text(text_id), return_tensors="pt").input_ids[0]
    return text_id, make_windows(ids, seq_len, num_windows)


def npz_bytes(reference) -> int:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **reference.arrays())
    return len(buffer.getvalue())


def references(dense_logits, windows, text_id, merged, sampled, seeds):
    """{(k, m, seed): DenseReference} from the dense logits: every merged k from one top-max(k) reference (its
    first k columns), every sampled (k, m) per seed."""
    from calib_lib.evaluate.fidelity import DenseReference, reference_slices, sample_offsets, windows_digest
    digest = windows_digest(windows)

    def build(k, m, seed):
        offsets = sample_offsets(digest, seed, *dense_logits.shape[:2]) if m else None
        arrays = [a.numpy() for a in reference_slices(dense_logits, k, m, offsets)]
        return DenseReference("dense", text_id, digest, k, *arrays, seed=seed)
    out = {}
    if merged:
        widest = build(max(merged), 0, 0)
        out.update({(k, 0, 0): widest.top(k) for k in merged})
    for k, m in sampled:
        out.update({(k, m, seed): build(k, m, seed) for seed in seeds})
    return out


def pct(a, b) -> str:
    return f"{(a - b) / b:+.2%}"


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--merged", default="8,16,32,64,128,1024,8192", help="k of the merged bound (m = 0)")
    parser.add_argument("--sampled", default="16+16,32+32,16+48,64+64,32+96", help="k+m settings with tail samples")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of each sampled setting")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of: {', '.join(CONFIGS)}")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    from calib_lib.compress import compress
    from calib_lib.evaluate.fidelity import exact_kl, score_logits
    from calib_lib.models import load_model

    merged = sorted(int(k) for k in args.merged.split(",") if k)
    sampled = [tuple(int(x) for x in s.split("+")) for s in args.sampled.split(",") if s]
    seeds = list(range(args.seeds))
    started = time.time()
    dense, tokenizer = load_model(args.model, log=lambda *a: None)
    text_id, windows = eval_windows(tokenizer, args.windows, args.seq_len)
    batches = range(0, len(windows), args.batch_size)
    # Dense logits for the exact KL and every reference: [n, seq_len - 1, vocab] fp32 (0.8 GB at 8 x 512 x 49k).
    dense_logits = torch.cat([dense(input_ids=windows[s:s + args.batch_size], use_cache=False).logits[:, :-1]
                              for s in batches])
    refs = references(dense_logits, windows, text_id, merged, sampled, seeds)
    scored = windows.shape[0] * (windows.shape[1] - 1)
    print(f"# {args.model} on {text_id}: {args.windows} windows x {args.seq_len} tokens ({scored} scored tokens), "
          f"vocabulary {dense_logits.shape[-1]}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.machine()}, {os.cpu_count()} cores")
    rows = []
    for name in args.configs.split(","):
        method, params = CONFIGS[name]
        model = copy.deepcopy(dense)
        compress(model, method, None, progress=False, **params)
        exact, estimates, top1 = [], {key: [] for key in refs}, []
        for s in batches:
            logits = model(input_ids=windows[s:s + args.batch_size], use_cache=False).logits[:, :-1]
            exact.append(exact_kl(dense_logits[s:s + args.batch_size], logits).numpy().ravel())
            for key, ref in refs.items():
                scores = score_logits(logits, None, **ref.slices(s, s + args.batch_size))
                estimates[key].append(scores.kl.numpy().ravel())
            top1.append(scores.top1.numpy().ravel())
        exact = np.concatenate(exact)
        rows.append((name, exact, {key: np.concatenate(v) for key, v in estimates.items()}, np.concatenate(top1).mean()))
        del model

    print()
    print("## Merged remainder (m = 0): a lower bound")
    print()
    print("| compression | k | mean KL exact | mean KL (k) | error | p99 KL exact | p99 KL (k) | error | top-1 agreement "
          "| bytes/window raw | bytes/window npz |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, exact, est, agreement in rows:
        e_mean, e_p99 = exact.mean(), np.percentile(exact, 99)
        for k in merged:
            kl, ref = est[(k, 0, 0)], refs[(k, 0, 0)]
            print(f"| {name} | {k} | {e_mean:.5f} | {kl.mean():.5f} | {pct(kl.mean(), e_mean)} | {e_p99:.4f} "
                  f"| {np.percentile(kl, 99):.4f} | {pct(np.percentile(kl, 99), e_p99)} | {agreement:.4f} "
                  f"| {ref.nbytes // args.windows:,} | {npz_bytes(ref) // args.windows:,} |")
    if sampled:
        print()
        print(f"## Top-k plus m tail samples: unbiased (errors for seeds {', '.join(map(str, seeds))})")
        print()
        print("| compression | k + m | mean KL exact | mean KL error | p99 KL exact | p99 KL error "
              "| token error std | bytes/window raw | bytes/window npz |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, exact, est, _ in rows:
            e_mean, e_p99 = exact.mean(), np.percentile(exact, 99)
            for k, m in sampled:
                kls = [est[(k, m, seed)] for seed in seeds]
                ref = refs[(k, m, seeds[0])]
                print(f"| {name} | {k} + {m} | {e_mean:.5f} | {' '.join(pct(kl.mean(), e_mean) for kl in kls)} "
                      f"| {e_p99:.4f} | {' '.join(pct(np.percentile(kl, 99), e_p99) for kl in kls)} "
                      f"| {np.mean([np.std(kl - exact) for kl in kls]):.4f} "
                      f"| {ref.nbytes // args.windows:,} | {npz_bytes(ref) // args.windows:,} |")
    print()
    print(f"# {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
