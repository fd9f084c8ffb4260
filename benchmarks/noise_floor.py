"""Does the replicate spread cover the float noise between machines? (issue #16, item 4)

Committed runs of ``results/quick/runs.sqlite`` were computed on another machine of this kind (or in an
earlier session). For a few of them this script recomputes, here, the same configuration (its spec, its
calibration set, its perplexity windows; tasks left out: only perplexity is compared) at the spec's own
batch size and as replicates that differ only in float order (``runs.spec.replicates``: the driver's batch
size). It prints, per configuration and text: the committed perplexity, the rerun, the replicates, the
replicate range and where the committed value falls. If the committed values fall inside (or near) the
replicate range, the replicates measure the noise a store otherwise serves as if it were the result.

    python benchmarks/noise_floor.py --out benchmarks/noise-floor.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# (model, method name, bits or sparsity, source, num_samples, seq_len): among them the configuration whose
# GPTQ 3-bit perplexity moved by 28% between two machines (wikipedia, 64 x 32)
DEFAULT_CASES = ("gptq:wikipedia:64:32", "gptq:news:16:128", "wanda:wikipedia:16:128")


def committed(store_path: Path, case: str) -> dict:
    from calib_lib.runs import Store
    method, source, num_samples, seq_len = case.split(":")
    for run in Store(store_path, read_only=True).records():
        spec, cal = run["spec"], run["spec"].get("calibration") or {}
        if (spec["model"] == "smollm2-135m" and spec["method"]["name"] == method and cal.get("source") == source
                and cal.get("num_samples") == int(num_samples) and cal.get("seq_len") == int(seq_len)
                and cal.get("set_index") == 0 and cal.get("strategy", "document-window") == "document-window"):
            return run
    raise SystemExit(f"no committed run for {case} in {store_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default=str(REPO / "results" / "quick" / "runs.sqlite"))
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), help="method:source:num_samples:seq_len")
    parser.add_argument("--replicates", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from calib_lib.runs.runner import execute
    from calib_lib.runs.spec import parse_spec, replicates, spec_data

    for case in args.cases:
        run = committed(Path(args.store), case)
        data = spec_data(run["spec"])
        suite = {**data["eval"], "tasks": []}                      # perplexity only: what the floor is about
        spec = parse_spec({**data, "eval": suite})
        stored = {m["name"]: m["value"] for m in run["metrics"] if m["metric"] == "perplexity"}
        rows = []
        for member in replicates(spec, args.replicates):
            started = time.time()
            record = execute(member)
            ppl = {m["name"]: m["value"] for m in record["metrics"] if m["metric"] == "perplexity"}
            rows.append({"replicate": member.replicate, "batch_size": member.batch_size, "ppl": ppl,
                         "seconds": round(time.time() - started, 1)})
        for text, then in stored.items():
            values = [r["ppl"][text] for r in rows]
            logs = [math.log(v) for v in values]
            low, high = min(values), max(values)
            line = {"case": case, "text": text, "committed": then, "rerun": values[0], "replicates": values[1:],
                    "batch_sizes": [r["batch_size"] for r in rows],
                    "replicate_range_rel": high / low - 1, "rerun_vs_committed_rel": values[0] / then - 1,
                    "log_sd": float(np.std(logs, ddof=1)),
                    "committed_inside": low <= then <= high,
                    "committed_outside_by_rel": 0.0 if low <= then <= high else min(abs(then / low - 1), abs(then / high - 1)),
                    "seconds": [r["seconds"] for r in rows]}
            print(json.dumps(line), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
