"""Render benchmark jsonl files (from compress.py) as a markdown table.

    python benchmarks/report.py benchmarks/smollm2-32x512.jsonl
"""
import json
import sys


def fmt_params(method: str, params: dict) -> str:
    """The method's own label without its name ('50%', '3-bit g128 (layer order)'). Records written before
    2026-11-25 hold only the parameters given on the command line: their order is the file's (see RESULTS.md)."""
    from calib_lib.compress import METHODS
    if method not in METHODS:
        return ""
    label = METHODS[method](**params).label()
    return label[len(method) + 1:]


def main(paths):
    print("| method | setting | compress s | unit s | ratio | RSS before / peak during compress MiB | process peak RSS MiB | perplexity | other order | eval text (scored tokens) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for path in paths:
        for line in open(path):
            r = json.loads(line)
            cell = lambda k, f="{}": f.format(r[k]) if r.get(k) is not None else "-"
            ppl = f"{r['perplexity']:.2f}" if "perplexity" in r else "-"
            other = r.get("perplexity_other_order")
            other = f"{other['perplexity']:.2f} ({other['sequential']})" if other else "-"
            text = f"{r['eval_text']} ({r['scored_tokens']})" if "eval_text" in r else "-"
            print(f"| {r['method']} | {fmt_params(r['method'], r['params'])} | {cell('compress_seconds')} | "
                  f"{cell('unit_seconds')} | {cell('ratio')} | {cell('rss_before_mib')} / {cell('compress_peak_rss_mib')} | {cell('peak_rss_mib')} | {ppl} | {other} | {text} |")


if __name__ == "__main__":
    main(sys.argv[1:])
