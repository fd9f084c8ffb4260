"""The ``calib`` command line. Every verb calls a calib_lib function; no logic lives here.

Errors take one path (``main``): an anticipated failure (``UserError``, a file or storage error) is
printed as one line, ``calib: <message>``, with exit code 2; anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations

import argparse
import errno
import json
import sys
import time
import warnings
from pathlib import Path

from .errors import InvalidInput, UserError
from .files import atomic_write_text, check_writable

_PACKAGE = Path(__file__).resolve().parent

# How to fix a file-system error, by errno (the message names the path).
_OS_FIXES = {
    errno.EACCES: "check its permissions or choose another location",
    errno.EPERM: "check its permissions or choose another location",
    errno.EEXIST: "a file stands where a directory is needed: move it or choose another path",
    errno.ENOTDIR: "part of the path is a file, not a directory: choose another path",
    errno.EISDIR: "it is a directory: give a file path",
    errno.ENOENT: "check the path",
    errno.ENOSPC: "the disk is full: free space or choose another location",
    errno.EROFS: "the file system is read-only: choose another location",
}


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
        entry = EMBEDDED.find(name)
        if not isinstance(entry, GGUFModel):
            print(f"calib: {name!r} is not an embedded GGUF model; choose from "
                  f"{[n for n, e in EMBEDDED.items() if isinstance(e, GGUFModel)]}", file=sys.stderr)
            return 2
        print(prepare_embedded(entry, force=args.force))
    return 0


def cmd_eval_ppl(args) -> int:
    from .evaluate import perplexity
    from .evaluate.suite import evaluation_windows
    from .models import load_model
    model, tokenizer = load_model(args.model)
    # The very windows evaluate() scores (same held-out order and seed), so the two agree on a text.
    windows = evaluation_windows(args.text, tokenizer, args.seq_len, args.windows, args.seed)
    started = time.time()
    result = perplexity(model, windows)
    summary = {k: v for k, v in result.to_dict().items() if not k.startswith("window_")}   # not the per-window lists
    out = {"model": args.model, "text": args.text, **summary,
           "seconds": round(time.time() - started, 1)}
    print(json.dumps(out, indent=2))
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate, get_suite
    from .models import load_model
    if args.json:
        check_writable(args.json, "--json")          # before the evaluation, not after it
    from .evaluate.fidelity import model_identity
    from .evaluate.suite import ensure_dense_references
    suite = get_suite(args.suite)
    model, tokenizer = load_model(args.model)
    started = time.time()
    # the model is dense here: with kl_to_dense it is its own reference (KL 0, top-1 agreement 1), and the
    # references it leaves in the cache serve every compressed run of this model on the same suite
    model_id = model_identity(args.model, "float32")
    ensure_dense_references(model, tokenizer, suite, model_id)
    records = evaluate(model, tokenizer, suite, model_id=model_id)
    print(f"{'kind':<10} {'name':<15} {'metric':<11} {'value':>10} {'stderr':>8} {'n':>7} {'seconds':>8}")
    for r in records:
        if r["metric"] == "skipped":
            print(f"{r['kind']:<10} {r['name']:<15} skipped: {r.get('note') or 'no reason recorded'}")
            continue
        stderr = f"{r['stderr']:.4f}" if r.get("stderr") is not None else "-"
        print(f"{r['kind']:<10} {r['name']:<15} {r['metric']:<11} {r['value']:>10.4f} {stderr:>8} "
              f"{r['n']:>7} {r.get('seconds', 0):>8.1f}")
    print(f"suite {suite.name} on {args.model}: {time.time() - started:.0f} s")
    if args.json:
        atomic_write_text(args.json, json.dumps(records, indent=2))
    return 0


def _specs_from(path: str, single: bool):
    from .runs import expand_grid, load_yaml, parse_spec
    data = load_yaml(path)
    return [parse_spec(data)] if single else expand_grid(data)


def _first_error_line(store, spec) -> str:
    """The first line of a failed run's recorded error (its traceback stays in the store)."""
    error = str((store.get(spec.key) or {}).get("error") or "")
    return next(iter(error.strip().splitlines()), "no error recorded")


ARCHIVE_HELP = ("folder of archived runs, one immutable <key>.zip per finished run, to commit to git; the store "
                "imports the runs it lacks on opening, and a sweep writes each finished run there first. Default: "
                "the folder 'runs' beside the store file when it exists (so results/quick/runs for "
                "results/quick/runs.sqlite), else none")


def _add_archive_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--archive", metavar="DIR", help=ARCHIVE_HELP)
    group.add_argument("--no-archive", action="store_true", help="use the store file alone, even if a runs "
                                                                  "folder stands beside it")


def _archive_of(args) -> Path | None:
    """--archive; else the ``runs`` folder beside the store when there is one (only an existing folder, so
    that a store elsewhere never starts an archive nobody asked for)."""
    if args.no_archive:
        return None
    if args.archive:
        return Path(args.archive)
    beside = Path(args.store).parent / "runs"
    return beside if beside.is_dir() else None


def cmd_run(args) -> int:
    from .runs import Store, run_specs, status
    specs = _specs_from(args.spec, single=args.verb == "run")
    store = Store(args.store, archive=_archive_of(args))
    started = time.time()
    summary = run_specs(specs, store, backend=args.backend, address=args.address)
    print(f"{summary['total']} runs: {summary['cached']} already in {args.store}, {summary['done']} done now, "
          f"{summary['failed']} failed ({time.time() - started:.1f} s)")
    for spec in status(specs, store)["failed"]:
        print(f"failed  {spec.label()}: {_first_error_line(store, spec)}")
    return 1 if summary["failed"] else 0


def cmd_status(args) -> int:
    from .runs import Store, status
    specs = _specs_from(args.spec, single=False)
    store = Store(args.store, read_only=True, archive=_archive_of(args))
    state = status(specs, store)
    print(f"done {len(state['done'])}  pending {len(state['pending'])}  failed {len(state['failed'])}  "
          f"(of {len(specs)} in {args.spec})")
    if args.verbose:
        for name, group in state.items():
            for spec in group:
                reason = f": {_first_error_line(store, spec)}" if name == "failed" else ""
                print(f"{name:<8} {spec.key[:12]}  {spec.label()}{reason}")
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


def cmd_store_migrate(args) -> int:
    from .runs.migrate import migrate
    for path in args.paths:
        result = migrate(path)
        if result["already"]:
            print(f"{path}: already uses version keys; nothing to do")
        else:
            print(f"{path}: {result['migrated']} run(s) re-keyed, {result['stale']} stale and "
                  f"{result['failed']} failed run(s) dropped; backup: {result['backup']}")
    return 0


def cmd_store_export(args) -> int:
    from .runs import Store
    archive = Path(args.archive) if args.archive else Path(args.store).parent / "runs"
    store = Store(args.store, read_only=True)            # exporting leaves the store file as it is
    written = store.export_archive(archive)
    done = store.count().get("done", 0)
    print(f"{args.store}: {written} run file(s) written to {archive}, {done - written} of its {done} finished "
          "run(s) were there already")
    return 0


def cmd_study(args) -> int:
    import time

    from .notebooks import REPO, execute_notebooks
    started = time.time()
    if args.verdicts:
        return _study_verdicts(args, REPO)
    if args.plan or args.runs_only:
        from . import study
        results_dir = _results_dir(args, REPO)
        # --model X: the profile as the notebooks run it for X (every grid), not X as a second findings model
        profile = study.get_profile(args.profile, model=args.model)
        models = [args.model] if args.model else None
        frame = study.plan(profile, models)
        if args.plan:
            store = study.stored_results(results_dir)
            summary = study.plan_summary(frame, store)
            print(summary.to_string(index=False, na_rep="?", float_format=lambda hours: f"{hours:.1f}"))
            print(f"{len(frame)} runs in all, {int(summary['done'].sum())} done (tier 0: the dense model, baselines "
                  "and the claims' pair of methods; 1: other methods; 2: grids only notebooks 01-05 read; 3: 09's selectors, "
                  "after every model; 4: 08's summaries, last)")
            known = summary["hours_left"].dropna()
            unknown = summary.loc[summary["hours_left"].isna(), "runs"].sum() - summary.loc[
                summary["hours_left"].isna(), "done"].sum()
            print(f"hours_left: ~{known.sum():.1f} hours of this kind of machine for the missing runs whose model "
                  "and kind have finished runs (the median wall time of finished runs of the same model, method and "
                  "kind)" + (f"; {int(unknown)} more run(s) (?) have no finished run of their model and kind to "
                             "estimate from yet" if unknown else ""))
            return 0
        store = study.results_store(results_dir)
        summary = study.run_plan(profile, store, models=models, backend=args.backend or profile.backend,
                                 address=args.address, limit=args.limit)
        print(f"{args.profile}: {summary['total']} runs asked for, {summary['cached']} already in {results_dir / 'runs'}, "
              f"{summary['done']} done now, {summary['failed']} failed ({summary['seconds']:.0f} s)")
        return 0 if not summary["failed"] else 1
    _refuse_foreground_sweep(args, REPO)
    _refuse_reading_nothing(args, REPO)
    rows = execute_notebooks(args.profile, only=args.only, results_dir=args.results_dir, figures_dir=args.figures_dir,
                   model=args.model, backend=args.backend, html=not args.no_html)
    for row in rows:
        print(f"{row['notebook']:<22} {row['seconds']:>8.1f} s  {row['executed']}")
    print(f"{len(rows)} notebook(s) in {time.time() - started:.1f} s")
    return 0


def _results_dir(args, repo: Path) -> Path:
    """The profile's results folder: ``--results-dir``, default ``results/<profile>`` of the checkout."""
    return Path(args.results_dir or repo / "results" / args.profile)


def _refuse_foreground_sweep(args, repo: Path) -> None:
    """A profile meant to be swept first (``Profile.sweep_first``: standard, paper) would have its notebooks
    compute the runs they miss one after the other in the foreground, for hours: refused while any run the
    chosen notebooks read (``study.notebook_keys``) is missing, naming the background sweep, unless
    ``--allow-runs``."""
    from . import study
    from .notebooks import notebook_names
    profile = study.get_profile(args.profile, model=args.model)
    if not profile.sweep_first or args.allow_runs:
        return
    needed = study.notebook_keys(profile, notebook_names(args.only), args.model)
    results_dir = _results_dir(args, repo)
    if needed <= {path.stem for path in (results_dir / "runs").glob("*.zip")}:    # by name: no store opened
        return
    store = study.stored_results(results_dir)
    states = store.status(sorted(needed)) if store is not None else {}
    missing = {key for key in needed if states.get(key) != "done"}
    if not missing:
        return
    frame = study.plan(profile, [args.model] if args.model else None)
    frame = frame[frame["key"].isin(missing)]
    known = study.planning.estimated_seconds(frame, store)
    hours = known.sum() / 3600
    unknown = len(missing) - int(known.notna().sum())
    cost = ("" if not known.notna().any() else
            f" (~{hours:.1f} hours on this kind of machine{' and more' if unknown else ''})")
    raise InvalidInput(f"{len(missing)} of the {len(needed)} runs these {args.profile} notebooks read are not in "
                       f"{results_dir / 'runs'}{cost}: compute them first in the background with `calib study "
                       f"--profile {args.profile} --runs-only` (resumable; --verdicts reads interim verdicts), or "
                       "pass --allow-runs to let the notebooks compute them in the foreground")


def _refuse_reading_nothing(args, repo: Path) -> None:
    """Only the notebooks that read the store (00_overview, 10_explore) chosen, on a folder with no runs: one
    line here rather than a failed cell (they refuse such a folder: ``results_store(existing=True)``)."""
    from . import study
    from .notebooks import READS_ONLY, notebook_names
    results_dir, names = _results_dir(args, repo), notebook_names(args.only)
    if set(names) <= set(READS_ONLY) and not study.holds_runs(results_dir):
        raise InvalidInput(f"no runs in {results_dir} for {', '.join(names)} to read: check "
                           f"--results-dir, or compute them first (`calib study --profile {args.profile}`)")


def _study_verdicts(args, repo: Path) -> int:
    """``calib study --verdicts``: the verdicts a partial (or finished) sweep supports, read-only."""
    import pandas as pd

    from . import findings, study
    if args.plan or args.runs_only or args.only:
        raise InvalidInput("--verdicts reads the store only: drop --plan, --runs-only and --only")
    profile = study.get_profile(args.profile)
    results_dir = _results_dir(args, repo)
    if not (results_dir / "runs").is_dir():
        raise InvalidInput(f"no run files in {results_dir / 'runs'}: compute some first with "
                           f"`calib study --profile {args.profile} --runs-only`")
    store = study.results_store(results_dir, read_only=True)
    models = [args.model] if args.model else list(profile.findings_models)
    inputs = [findings.verdict_inputs(profile, model, store, run=False) for model in models]
    print(pd.concat([item.completeness for item in inputs], ignore_index=True).to_string(index=False))
    for item in inputs:
        if item.note:
            print(f"{item.model}: {item.note}")
        for row in findings.model_verdicts(item).itertuples():
            print(f"\n{item.model} {row.claim}: {row.verdict}\n  {row.summary}")
            if row.what_would_decide:
                print(f"  would decide: {row.what_would_decide}")
    print(f"\nRead from {results_dir / 'runs'} ({args.profile} profile); a claim whose runs are missing is "
          "untestable until they are stored. 06_findings gives the same verdicts with figures once every run is there.")
    return 0


def cmd_sensitivity(args) -> int:
    from .notebooks import sensitivity_report
    result = sensitivity_report(args.model, args.method, args.budget, args.sources, results_dir=args.results_dir,
                                out=args.out, html=not args.no_html, dry_run=args.dry_run)
    if result["report"]:
        print(f"report: {result['html'] or result['report']} ({result['seconds']:.0f} s)")
    return 0


def cmd_data_sources(args) -> int:
    from .data import source_table
    rows = source_table()
    print(f"{'id':<13} {'domain':<16} {'available':<9} backend / why not")
    for r in rows:
        print(f"{r['id']:<13} {r['domain']:<16} {'yes' if r['available'] else 'no':<9} {r['backend_or_reason']}")
    return 0


def cmd_data_sample(args) -> int:
    from .data import get_source, load_eval_text
    from .data.diagnostics import diagnostics
    from .data.sampling import CalibrationSpec, export_set, sample
    from .models import load_model
    spec = CalibrationSpec(source=args.source, num_samples=args.num_samples, seq_len=args.seq_len,
                           seed=args.seed, set_index=args.set_index, strategy=args.strategy,
                           path=args.path, text_field=args.text_field, t_init=args.t_init,
                           t_final=args.t_final, schedule_steps=args.schedule_steps,
                           stopword_first=args.stopword_first)
    if args.out:
        check_writable(args.out, "--out")             # before the model is loaded and the set sampled
    model, tokenizer = load_model(args.model)
    cal = sample(spec, tokenizer, model)
    fingerprint = export_set(cal, args.out, tokenizer) if args.out else cal.fingerprint
    reference = args.reference
    if reference == "auto":
        reference = "wikitext2" if get_source("wikitext2").availability()[0] else "wikipedia"
    ref_ids = None
    if reference != "none":
        ref_ids = tokenizer(load_eval_text(reference)[:400_000], return_tensors="pt").input_ids[0]
    report = {**cal.metadata(), "out": args.out, "diagnostics_reference": reference,
              "diagnostics": diagnostics(cal.input_ids, len(tokenizer), ref_ids)}
    report["fingerprint"] = fingerprint
    print(json.dumps(report, indent=2))
    return 0



def _default_reference(reference: str) -> str | None:
    """--reference: 'auto' is wikitext2 where it is available, else wikipedia; 'none' is no reference."""
    if reference == "auto":
        from .data import get_source
        return "wikitext2" if get_source("wikitext2").availability()[0] else "wikipedia"
    return None if reference == "none" else reference


def cmd_export_set(args) -> int:
    from .data.sampling import CalibrationSpec
    from .export import ID_COLUMNS, check_export_folder, export_calibration_set
    from .models import load_model
    spec = CalibrationSpec(source=args.source, num_samples=args.num_samples, seq_len=args.seq_len,
                           seed=args.seed, set_index=args.set_index, strategy=args.strategy,
                           path=args.path, text_field=args.text_field, t_init=args.t_init,
                           t_final=args.t_final, schedule_steps=args.schedule_steps,
                           stopword_first=args.stopword_first)
    check_export_folder(args.out, "--out")            # before the model is loaded and the set sampled
    model, tokenizer = load_model(args.model)
    card = export_calibration_set(spec, tokenizer, args.out, model=model, reference=_default_reference(args.reference))
    n, seq_len = card["shape"]
    print(f"{args.out}: {n} x {seq_len} tokens from {card['source']['id']} (licence: {card['source']['license']}), "
          f"fingerprint {card['fingerprint'][:16]}; datasets.load_from_disk(...).select_columns({list(ID_COLUMNS)}) "
          "is the dataset for llm-compressor's oneshot and GPTQModel's quantize (README.md there says how)")
    return 0


def cmd_export_model(args) -> int:
    from .export import check_export_folder, export_model
    spec = _specs_from(args.spec, single=True)[0]
    check_export_folder(args.out, "--out")            # before the model is loaded and compressed
    card = export_model(spec, args.out)
    print(f"{args.out}: {spec.label()} (run {spec.key}), {card['weights']['dtype']} safetensors with its "
          "tokenizer and calibration card; AutoModelForCausalLM.from_pretrained reloads it")
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

    data = verbs.add_parser("data", help="calibration sources and sets").add_subparsers(
        dest="action", required=True)
    p = data.add_parser("sources", help="source ids, domains, availability here and why not")
    p.set_defaults(func=cmd_data_sources)
    p = data.add_parser("sample", help="sample a calibration set, write it as jsonl, print diagnostics")
    p.add_argument("--source", required=True)
    p.add_argument("--num-samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set-index", type=int, default=0)
    p.add_argument("--strategy", default="document-window", choices=["document-window", "concat-chunk"])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", help="write the set here (jsonl: ids and decoded text)")
    p.add_argument("--path", help="custom source: a .txt/.jsonl/.parquet file, exported set or hub dataset id")
    p.add_argument("--text-field", default="text")
    p.add_argument("--t-init", type=float, default=1.0)
    p.add_argument("--t-final", type=float, default=1.0)
    p.add_argument("--schedule-steps", type=int, default=10)
    p.add_argument("--stopword-first", action="store_true")
    p.add_argument("--reference", default="auto",
                   help="source whose held-out text the unigram KL/JS compare against ('none' to skip)")
    p.set_defaults(func=cmd_data_sample)

    export = verbs.add_parser("export", help="what production tools read: a calibration set as a datasets "
                                             "folder, a compressed model as a transformers checkpoint, each "
                                             "with a calibration card").add_subparsers(dest="action", required=True)
    p = export.add_parser("set", help="sample a calibration set and write it as a Hugging Face datasets folder "
                                      "(input_ids, attention_mask, text) with its calibration card")
    p.add_argument("--source", required=True)
    p.add_argument("--num-samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set-index", type=int, default=0)
    p.add_argument("--strategy", default="document-window", choices=["document-window", "concat-chunk"])
    p.add_argument("--model", default="smollm2-135m", help="the model whose tokenizer the ids are for")
    p.add_argument("--out", required=True, help="a new or empty folder")
    p.add_argument("--path", help="custom source: a .txt/.jsonl/.parquet file, exported set or hub dataset id")
    p.add_argument("--text-field", default="text")
    p.add_argument("--t-init", type=float, default=1.0)
    p.add_argument("--t-final", type=float, default=1.0)
    p.add_argument("--schedule-steps", type=int, default=10)
    p.add_argument("--stopword-first", action="store_true")
    p.add_argument("--reference", default="auto",
                   help="source whose held-out text the card's unigram KL/JS compare against ('none' to skip)")
    p.set_defaults(func=cmd_export_set)
    p = export.add_parser("model", help="compress the model of a run spec (YAML) as its run does and save it "
                                        "with save_pretrained, its tokenizer and its calibration card")
    p.add_argument("--spec", required=True, help="one run spec, as `calib run` takes")
    p.add_argument("--out", required=True, help="a new or empty folder")
    p.set_defaults(func=cmd_export_model)

    p = verbs.add_parser("ppl", help="perplexity of a model on an evaluation text")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--text", default="wikitext2", help="evaluation text id (see calib_lib.data.corpora)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--windows", type=int, default=32)
    p.add_argument("--seed", type=int, default=1234, help="held-out document order (every suite's default: 1234)")
    p.set_defaults(func=cmd_eval_ppl)

    p = verbs.add_parser("eval", help="evaluate a (dense) model on a suite: perplexity and zero-shot tasks")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--suite", default="quick", help="tiny | quick | full")
    p.add_argument("--json", help="also write the records to this file")
    p.set_defaults(func=cmd_eval)

    for verb, what in (("run", "run one spec (YAML)"), ("sweep", "run every point of a grid (YAML)")):
        p = verbs.add_parser(verb, help=what)
        p.add_argument("spec")
        p.add_argument("--store", default="results/calib.sqlite")
        p.add_argument("--backend", default="local", choices=["local", "ray"])
        p.add_argument("--address", help="join this Ray cluster (default: start a local one)")
        _add_archive_options(p)
        p.set_defaults(func=cmd_run)
    p = verbs.add_parser("status", help="done / pending / failed runs of a grid")
    p.add_argument("spec")
    p.add_argument("--store", default="results/calib.sqlite")
    p.add_argument("-v", "--verbose", action="store_true")
    _add_archive_options(p)
    p.set_defaults(func=cmd_status)

    store = verbs.add_parser("store", help="results store maintenance").add_subparsers(dest="action", required=True)
    p = store.add_parser("migrate", help="re-key a store written with code-digest run keys (keeps a backup)")
    p.add_argument("paths", nargs="+", metavar="STORE")
    p.set_defaults(func=cmd_store_migrate)
    p = store.add_parser("export", help="write every finished run of a store into its archive folder, one "
                                        "<key>.zip per run (to commit them; the store file is left unchanged)")
    p.add_argument("--store", required=True, help="e.g. results/quick/runs.sqlite")
    p.add_argument("--archive", metavar="DIR", help="default: the folder 'runs' beside the store (created)")
    p.set_defaults(func=cmd_store_export)

    p = verbs.add_parser("study", help="execute the study notebooks with papermill (+ HTML and figures)")
    p.add_argument("--profile", default="quick", help="tiny | quick | standard | paper")
    p.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="e.g. 03_source_domain (default: all)")
    p.add_argument("--model", help="override the profile's model")
    p.add_argument("--backend", choices=["local", "ray"], help="override the profile's sweep backend")
    p.add_argument("--results-dir", help="executed notebooks, HTML, runs.sqlite (default results/<profile>)")
    p.add_argument("--figures-dir", help="default figures/ for quick, figures/<profile>/ for the others")
    p.add_argument("--no-html", action="store_true")
    p.add_argument("--plan", action="store_true",
                   help="print every run the profile's notebooks need, in the order --runs-only computes them, and "
                        "how many are done; start nothing")
    p.add_argument("--runs-only", action="store_true",
                   help="compute the missing runs of the plan (resumable: kill and restart at will), execute no "
                        "notebook; then `calib study` reads them without starting a run")
    p.add_argument("--verdicts", action="store_true",
                   help="the six claims' verdicts from the runs stored so far (each model of the profile's findings, "
                        "or --model), with how many of each grid's runs are there; start nothing, write nothing")
    p.add_argument("--allow-runs", action="store_true",
                   help="let the notebooks of a profile meant to be swept first (standard, paper) compute its missing "
                        "runs themselves, in the foreground (refused by default: use --runs-only in the background)")
    p.add_argument("--limit", type=int, help="with --runs-only: at most this many missing runs, in plan order")
    p.add_argument("--address", help="with --runs-only --backend ray: join this Ray cluster (default: a local one)")
    p.set_defaults(func=cmd_study)

    p = verbs.add_parser("sensitivity", help="does the calibration data matter for this model? run a designed grid "
                                             "(sources x non-overlapping sets, random tokens, sample counts, noise "
                                             "floor, dense and data-free baselines) and render one HTML report")
    p.add_argument("--model", required=True, help="an embedded name (calib model list), a local checkpoint folder or "
                                                  "a Hugging Face hub id")
    p.add_argument("--method", required=True, action="append", metavar="NAME[:key=value,...]",
                   help="a method that reads calibration data, e.g. wanda, sparsegpt, gptq, awq, "
                        "gptq:bits=4,group_size=128, wanda:n=2,m=4 (repeat for several)")
    p.add_argument("--budget", default="quick", help="quick (minutes on a CPU) | standard (hours) | tiny (a check)")
    p.add_argument("--sources", nargs="+", metavar="SOURCE",
                   help="real calibration sources to compare (default: the budget's; 'available': every one here)")
    p.add_argument("--results-dir", default="results/sensitivity",
                   help="store of the runs (runs/, one file per run) and default folder of the report")
    p.add_argument("--out", help="the report notebook (.ipynb; the HTML goes beside it); default "
                                 "<results-dir>/<model>-<method>-<budget>.ipynb")
    p.add_argument("--no-html", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the grid's cost and stop")
    p.set_defaults(func=cmd_sensitivity)

    p = verbs.add_parser("generate", help="greedy continuation of a prompt")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.set_defaults(func=cmd_generate)
    return parser


def user_message(err: BaseException) -> str | None:
    """The one-line message for an anticipated failure, or None for a bug (which keeps its traceback)."""
    if isinstance(err, UserError):
        message = str(err)
    elif isinstance(err, OSError):
        if err.filename is None:             # raised with a full message of its own
            message = str(err)
        else:
            fix = _OS_FIXES.get(err.errno)
            message = f"{err.filename}: {err.strerror or type(err).__name__}" + (f" ({fix})" if fix else "")
    else:
        return None
    return " ".join(message.split())


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    """calib_lib's own warnings (skipped null texts, say) read as the command's; others as usual."""
    if Path(filename).resolve().is_relative_to(_PACKAGE):
        print(f"calib: warning: {message}", file=sys.stderr)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():              # restores showwarning for callers of main()
        warnings.showwarning = _show_warning
        try:
            return args.func(args)
        except KeyboardInterrupt:
            finished = (" Every finished run is in the store; run the same command again to finish only the "
                        "missing ones." if args.verb in ("run", "sweep", "study") else "")
            print(f"calib: interrupted.{finished}", file=sys.stderr)
            return 130
        except Exception as err:
            message = user_message(err)
            if message is None:
                raise
            print(f"calib: {message}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
