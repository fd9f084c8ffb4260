"""Task evaluation speed: lm-eval's HFLM against PackedLM on identical documents, one block per model.

For each model, in separate processes (so that each peak RSS is its own): the suite's tasks through
``run_tasks`` with HFLM, then with PackedLM, then a plain forward (``model(input_ids)``, full logits) of as
many tokens as PackedLM forwarded, in rows of its mean row length and batches of its mean rows per batch.
Printed: seconds for the suite (task loading included) and for scoring alone (lm.loglikelihood), the
speed-up, tokens forwarded per second (real tokens; padded in brackets), the plain forward's tokens per
second and PackedLM's share of it, peak RSS (ru_maxrss, model loading included) and how far the two
evaluations' per-document results are apart (log-likelihood of every choice, greedy flags, metrics).
Rows are appended to --out as jsonl.

    python benchmarks/evaluate.py                                  # both models, ten tasks, 25 documents each
    python benchmarks/evaluate.py --models smollm2-135m --limit 40 --out benchmarks/evaluate.jsonl

Needs CALIB_MIRROR (the tasks' data offline) and the models prepared (``calib model prepare NAME``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from calib_lib.runs.runner import cpu_info

DEFAULT_MODELS = ("smollm2-135m", "gemma3-270m")


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _count_tokens(model) -> dict:
    """Tokens each forward of ``model`` is given: all of them (``padded``), and up to each row's last
    non-zero token (``real``: both HFLM and PackedLM pad with token 0, which no task text encodes to)."""
    counts = {"forwards": 0, "padded": 0, "real": 0, "paused": False}

    def hook(module, args, kwargs):
        if counts["paused"]:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        nonzero = (ids != 0).int()
        last = ids.shape[1] - nonzero.flip(1).argmax(1)           # one past each row's last non-zero token
        counts["forwards"] += 1
        counts["padded"] += ids.numel()
        counts["real"] += int(torch.where(nonzero.any(1), last, 0).sum())

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return counts


def evaluate_worker(args) -> dict:
    """One model, one mode (hflm or packed), in this process."""
    import calib_lib.evaluate.fast_lm as fast_lm
    from calib_lib.evaluate.tasks import run_tasks
    from calib_lib.models import load_model

    model, tokenizer = load_model(args.worker, log=lambda *a: None)
    rss_loaded = _rss_mib()
    counts = _count_tokens(model)
    made, scoring, check = [], [0.0], [0.0]
    make_lm = fast_lm.make_lm

    def capturing_make_lm(*a, **k):
        # run_tasks builds its lm inside; keep it (for PackedLM's counters) and time its scoring calls
        lm = make_lm(*a, **k)
        if hasattr(lm, "packing_enabled"):
            # PackedLM's one-time self-check (a few forwards of ~20 tokens), timed apart and not counted
            counts["paused"], started = True, time.perf_counter()
            lm.packing_enabled()
            counts["paused"], check[0] = False, time.perf_counter() - started
        score = lm.loglikelihood

        def timed(requests, *sa, **sk):
            started = time.perf_counter()
            try:
                return score(requests, *sa, **sk)
            finally:
                scoring[0] += time.perf_counter() - started
        lm.loglikelihood = timed
        made.append(lm)
        return lm

    fast_lm.make_lm = capturing_make_lm
    started = time.perf_counter()
    results, seconds, blocks = run_tasks(model, tokenizer, args.tasks, limit=args.limit, seed=args.seed,
                                         packed=args.mode == "packed")
    suite = time.perf_counter() - started
    lm = made[0]
    del counts["paused"]
    return {
        "mode": args.mode, "suite_seconds": suite, "scoring_seconds": scoring[0], "check_seconds": check[0],
        "task_seconds": seconds,
        "tokens": counts, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mib": rss_loaded, "batch_size": lm.batch_size,
        "packed_stats": getattr(lm, "stats", None),
        "packing": lm.packing_enabled() if hasattr(lm, "packing_enabled") else None,
        "metrics": [[r.task, r.metric, r.value] for r in results],
        "documents": {b.name: {c: np.asarray(b.columns[c]).tolist()
                               for c in ("doc_id", "choice_loglik", "choice_greedy", "choice_tokens")}
                      for b in blocks},
    }


def plain_worker(args) -> dict:
    """A plain forward (full logits) of ``--plain-tokens`` tokens in rows of ``--row-length`` tokens,
    ``--rows-per-batch`` rows a forward: what the model does per second without any evaluation around it."""
    from calib_lib.models import load_model
    model, _ = load_model(args.worker, log=lambda *a: None)
    vocab = model.get_output_embeddings().weight.shape[0]
    length, rows = args.row_length, args.rows_per_batch
    forwards = max(1, math.ceil(args.plain_tokens / (length * rows)))
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(vocab // 8, vocab // 2, (rows, length), generator=generator) for _ in range(forwards)]
    with torch.no_grad():
        model(input_ids=batches[0][:1, :16], use_cache=False)            # warm-up, not timed
        started = time.perf_counter()
        for ids in batches:
            model(input_ids=ids, use_cache=False)
        seconds = time.perf_counter() - started
    return {"mode": "plain", "seconds": seconds, "tokens": forwards * rows * length, "row_length": length,
            "rows_per_batch": rows, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run(args, model: str, mode: str, *extra) -> dict:
    command = [sys.executable, __file__, "--worker", model, "--mode", mode, "--limit", str(args.limit),
               "--seed", str(args.seed), "--tasks", *args.tasks, *extra]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{model} {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(hflm: dict, packed: dict) -> dict:
    """How far PackedLM's per-document results are from HFLM's: choice log-likelihoods (absolute and
    relative), greedy flags, token counts, metrics."""
    worst_abs = worst_rel = 0.0
    greedy = tokens = choices = 0
    for task, theirs in hflm["documents"].items():
        ours = packed["documents"][task]
        assert ours["doc_id"] == theirs["doc_id"], f"{task}: different documents"
        a, b = np.asarray(ours["choice_loglik"]), np.asarray(theirs["choice_loglik"])
        worst_abs = max(worst_abs, float(np.max(np.abs(a - b))))
        worst_rel = max(worst_rel, float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))))
        greedy += int(np.sum(np.asarray(ours["choice_greedy"]) != np.asarray(theirs["choice_greedy"])))
        tokens += int(np.sum(np.asarray(ours["choice_tokens"]) != np.asarray(theirs["choice_tokens"])))
        choices += len(b)
    metrics = {(t, m): v for t, m, v in hflm["metrics"]}
    # accuracies must be equal (the same choices won); LAMBADA's perplexity is a continuous function of
    # the log-likelihoods
    differing = [f"{t} {m}: {v} vs {metrics[(t, m)]}" for t, m, v in packed["metrics"]
                 if not (v == metrics[(t, m)]
                         or (m == "perplexity" and math.isclose(v, metrics[(t, m)], rel_tol=1e-5)))]
    return {"choices": choices, "max_abs_loglik_diff": worst_abs, "max_rel_loglik_diff": worst_rel,
            "greedy_mismatches": greedy, "token_count_mismatches": tokens, "metric_mismatches": differing}


def benchmark(args, model: str) -> dict:
    hflm = _run(args, model, "hflm")
    packed = _run(args, model, "packed")
    stats = packed["packed_stats"]
    row_length = max(1, round(stats["tokens"] / max(1, stats["rows"])))
    rows_per_batch = max(1, round(stats["rows"] / max(1, stats["batches"])))
    plain = _run(args, model, "plain", "--row-length", str(row_length), "--rows-per-batch", str(rows_per_batch),
                 "--plain-tokens", str(args.plain_tokens or packed["tokens"]["real"]))
    plain_rate = plain["tokens"] / plain["seconds"]
    row = {"model": model, "tasks": args.tasks, "limit": args.limit, "seed": args.seed,
           "machine": {"cpu": platform.processor() or platform.machine(), **cpu_info(), "cores": os.cpu_count(),
                       "torch_threads": torch.get_num_threads()},
           "hflm": {k: v for k, v in hflm.items() if k != "documents"},
           "packed": {k: v for k, v in packed.items() if k != "documents"}, "plain": plain,
           "speedup_suite": hflm["suite_seconds"] / packed["suite_seconds"],
           "speedup_scoring": hflm["scoring_seconds"] / packed["scoring_seconds"],
           "plain_tokens_per_second": plain_rate,
           "packed_share_of_plain": packed["tokens"]["real"] / packed["scoring_seconds"] / plain_rate,
           "agreement": compare(hflm, packed)}
    return row


def report(row: dict) -> str:
    h, p, a = row["hflm"], row["packed"], row["agreement"]
    lines = [f"== {row['model']}: {len(row['tasks'])} tasks x {row['limit']} documents "
             f"({a['choices']} choices), {row['machine']['torch_threads']} threads"]
    for name, r in (("HFLM", h), ("PackedLM", p)):
        t, seconds = r["tokens"], r["scoring_seconds"]
        lines.append(f"{name:9s} suite {r['suite_seconds']:7.1f} s   scoring {seconds:7.1f} s   "
                     f"tokens forwarded {t['real']:6d} ({t['padded']:6d} padded) in {t['forwards']:4d} forwards   "
                     f"{t['real'] / seconds:6.0f} tok/s ({t['padded'] / seconds:.0f} padded)   "
                     f"peak RSS {r['peak_rss_mib']:6.0f} MiB (after load {r['rss_after_load_mib']:.0f})")
    lines.append(f"speed-up  suite {row['speedup_suite']:.2f}x   scoring {row['speedup_scoring']:.2f}x")
    pl = row["plain"]
    lines.append(f"plain forward {pl['tokens']} tokens ({pl['rows_per_batch']} x {pl['row_length']} a forward) "
                 f"{row['plain_tokens_per_second']:.0f} tok/s, peak RSS {pl['peak_rss_mib']:.0f} MiB; "
                 f"PackedLM scoring at {100 * row['packed_share_of_plain']:.0f}% of it")
    lines.append(f"agreement  max |loglik diff| {a['max_abs_loglik_diff']:.3g} "
                 f"(relative {a['max_rel_loglik_diff']:.2g})   "
                 f"greedy mismatches {a['greedy_mismatches']}   token-count mismatches {a['token_count_mismatches']}   "
                 f"metric mismatches {len(a['metric_mismatches'])} {a['metric_mismatches'] or ''}")
    lines.append(f"packing check passed: {p['packing']} ({p['check_seconds']:.2f} s, in the suite's time); "
                 f"PackedLM work: {p['packed_stats']}")
    return "\n".join(lines)


def main() -> None:
    from calib_lib.evaluate.tasks import TASKS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--limit", type=int, default=25, help="documents per task (the same ones for both)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--plain-tokens", type=int, default=0,
                        help="tokens of the plain forward (default: as many as PackedLM forwarded)")
    parser.add_argument("--out", help="append one json row per model to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["hflm", "packed", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--row-length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rows-per-batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import logging
        logging.disable(logging.WARNING)            # HFLM's notes on in-memory models
        print(json.dumps(plain_worker(args) if args.mode == "plain" else evaluate_worker(args)))
        return
    if not os.environ.get("CALIB_MIRROR"):
        raise SystemExit("set CALIB_MIRROR to the offline mirror: the tasks' documents come from it")
    for model in args.models:
        row = benchmark(args, model)
        print(report(row), flush=True)
        if args.out:
            with open(args.out, "a") as handle:
                handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
