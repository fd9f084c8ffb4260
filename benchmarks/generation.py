"""Summary generation cost: seconds per document and generated tokens per second, per model and dataset.

For each model (dense, as a run's model after compression costs the same to run) and each summarization
dataset, ``--documents`` documents (the seeded subset a suite would take) are summarised with the settings of a
profile's ``summary_eval`` (standard by default): greedy decoding, batched, with the KV cache. Printed and
appended to --out as jsonl: prompt tokens per document, the share truncated, generation seconds, seconds per
document, generated tokens per second, scoring seconds (metrics, entities; NLI where available), peak RSS.

    python benchmarks/generation.py                                   # both models, standard settings
    python benchmarks/generation.py --models smollm2-135m --profile quick --documents 12

Run it alone: two heavy jobs on two cores halve each other's speed.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from dataclasses import replace
from datetime import date

import torch

from calib_lib.runs.runner import cpu_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--out", default=None, help="append one json line per (model, dataset)")
    args = parser.parse_args()

    from calib_lib.evaluate.summarization import SummarizationEval, score_summaries
    from calib_lib.models import load_model
    from calib_lib.study import get_profile
    cfg = replace(SummarizationEval(**get_profile(args.profile).summary_eval), documents=args.documents)
    for name in args.models:
        model, tokenizer = load_model(name, log=lambda *a: None)
        started = time.time()
        _, _, costs = score_summaries(model, tokenizer, cfg, model_name=name)
        for dataset, cost in costs.items():
            row = {"date": date.today().isoformat(), "model": name, "dataset": dataset, "profile": args.profile,
                   "documents": cost["documents"], "max_input_tokens": cfg.max_input_tokens,
                   "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size, "prompt": cost["prompt"],
                   "prompt_tokens_per_document": round(cost["prompt_tokens"] / cost["documents"], 1),
                   "truncated": cost["truncated"], "generation_seconds": round(cost["seconds"], 2),
                   "seconds_per_document": round(cost["seconds_per_document"], 3),
                   "generated_tokens_per_second": round(cost["generated_tokens_per_second"], 2),
                   "scoring_seconds": round(cost["scoring_seconds"], 2), "threads": torch.get_num_threads(),
                   "cpu": platform.processor() or platform.machine(), **cpu_info(),
                   "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
            print(json.dumps(row))
            if args.out:
                with open(args.out, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
        print(f"{name}: {time.time() - started:.1f} s in all")


if __name__ == "__main__":
    main()
